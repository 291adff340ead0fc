//! The state the log's API and its writer task share, and the futures that wait on it: room in
//! the pending buffer (first come, first served), a condition (durability), the writer's work.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::error::{Error, Result};
use crate::record::SeqNo;

use super::format::*;
use super::options::*;
use super::segments::*;
use super::space::*;

#[derive(Default)]
pub(super) struct Shared {
    pub(super) pending: Vec<u8>,
    /// A cleared buffer the writer handed back, reused as the next `pending`.
    pub(super) spare_pending: Option<Vec<u8>>,
    pub(super) pending_count: u32,
    pub(super) pending_first_seq: Option<SeqNo>,
    pub(super) pending_last_seq: SeqNo,
    /// Highest sequence number handed to `append`.
    pub(super) appended_seq: SeqNo,
    /// Highest sequence number known durable (synced, or written with `None` durability).
    pub(super) durable_seq: SeqNo,
    pub(super) fenced: Option<String>,
    pub(super) closing: bool,
    /// The writer task has exited; nothing pending will ever be written.
    pub(super) writer_done: bool,
    pub(super) writer_waker: Option<Waker>,
    /// Tasks waiting for a sequence number to become durable.
    pub(super) waiters: Vec<Waker>,
    /// Appends waiting for room in the pending buffer, served in arrival order.
    pub(super) space: SpaceQueue,
    pub(super) segments: VecDeque<SegmentInfo>,
    /// Released segment files waiting for reuse (at most [`RECYCLE_MAX`]).
    pub(super) recycled: Vec<PathBuf>,
    pub(super) stats: WalStats,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("pending_bytes", &self.pending.len())
            .field("appended_seq", &self.appended_seq)
            .field("durable_seq", &self.durable_seq)
            .field("fenced", &self.fenced)
            .field("closing", &self.closing)
            .field("segments", &self.segments.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(super) fn wake_waiters(&mut self) {
        for w in self.waiters.drain(..) {
            w.wake();
        }
    }

    pub(super) fn wake_all(&mut self) {
        self.wake_waiters();
        self.space.wake_all();
    }

    pub(super) fn fence(&mut self, reason: String) {
        tracing::error!(%reason, "fencing the write-ahead log");
        if self.fenced.is_none() {
            self.fenced = Some(reason);
        }
        self.pending.clear();
        self.pending_count = 0;
        self.pending_first_seq = None;
        self.wake_all();
    }

    pub(super) fn fenced_error(&self) -> Option<Error> {
        self.fenced.as_ref().map(|reason| Error::WalFenced {
            reason: reason.clone(),
        })
    }
}

/// A future that resolves once `ready` holds, or fails once the log is fenced or closed.
pub(super) struct WaitFor<'a, F> {
    pub(super) shared: &'a Rc<RefCell<Shared>>,
    pub(super) ready: F,
}

/// Resolves once the pending buffer has room for this append and no earlier append waits.
pub(super) struct WaitSpace<'a> {
    pub(super) shared: &'a Rc<RefCell<Shared>>,
    pub(super) ticket: Option<u64>,
}

impl Future for WaitSpace<'_> {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let shared = self.shared;
        let mut s = shared.borrow_mut();
        let failed = s
            .fenced_error()
            .or_else(|| s.writer_done.then_some(Error::Closed));
        if let Some(e) = failed {
            if let Some(t) = self.ticket.take() {
                s.space.remove(t);
            }
            return Poll::Ready(Err(e));
        }
        let room = s.pending.len() < PENDING_BYTES_MAX;
        let ticket = match self.ticket {
            None if room && s.space.waiting.is_empty() => return Poll::Ready(Ok(())),
            None => {
                let t = s.space.take_ticket();
                self.ticket = Some(t);
                t
            }
            Some(t) => t,
        };
        if room && s.space.is_head(ticket) {
            self.ticket = None;
            s.space.remove(ticket);
            return Poll::Ready(Ok(()));
        }
        s.space.set_waker(ticket, cx.waker());
        Poll::Pending
    }
}

impl Drop for WaitSpace<'_> {
    fn drop(&mut self) {
        // An append abandoned while waiting must not hold up those behind it.
        if let Some(t) = self.ticket.take() {
            self.shared.borrow_mut().space.remove(t);
        }
    }
}

impl<F: Fn(&Shared) -> bool + Unpin> Future for WaitFor<'_, F> {
    type Output = Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<()>> {
        let mut s = self.shared.borrow_mut();
        if (self.ready)(&s) {
            return Poll::Ready(Ok(()));
        }
        if let Some(e) = s.fenced_error() {
            return Poll::Ready(Err(e));
        }
        if s.writer_done {
            return Poll::Ready(Err(Error::Closed));
        }
        s.waiters.push(cx.waker().clone());
        Poll::Pending
    }
}

/// Resolves when there is pending work, or the log is closing.
pub(super) struct WorkReady<'a> {
    pub(super) shared: &'a Rc<RefCell<Shared>>,
}

impl Future for WorkReady<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.shared.borrow_mut();
        if !s.pending.is_empty() || s.closing {
            return Poll::Ready(());
        }
        s.writer_waker = Some(cx.waker().clone());
        Poll::Pending
    }
}
