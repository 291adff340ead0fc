//! The queue of appends waiting for room in the pending buffer: first come, first served.

use std::collections::VecDeque;
use std::task::Waker;

/// Appends waiting for room in the pending buffer, by ticket: first come, first served. A
/// newcomer does not pass anyone already waiting (without this, writers that loop on puts took
/// every freed byte and one writer waited a whole 6 s benchmark run).
#[derive(Debug, Default)]
pub(super) struct SpaceQueue {
    pub(super) next_ticket: u64,
    /// Tickets waiting, oldest first, with the waker of each (once it has polled).
    pub(super) waiting: VecDeque<(u64, Option<Waker>)>,
}

impl SpaceQueue {
    pub(super) fn take_ticket(&mut self) -> u64 {
        let t = self.next_ticket;
        self.next_ticket += 1;
        self.waiting.push_back((t, None));
        t
    }

    pub(super) fn is_head(&self, ticket: u64) -> bool {
        self.waiting.front().is_some_and(|&(t, _)| t == ticket)
    }

    pub(super) fn set_waker(&mut self, ticket: u64, waker: &Waker) {
        if let Some(entry) = self.waiting.iter_mut().find(|(t, _)| *t == ticket) {
            entry.1 = Some(waker.clone());
        }
    }

    /// Removes a ticket (served, or its append was dropped) and wakes the new head, which may
    /// fit in the room left.
    pub(super) fn remove(&mut self, ticket: u64) {
        self.waiting.retain(|&(t, _)| t != ticket);
        self.wake_head();
    }

    pub(super) fn wake_head(&self) {
        if let Some((_, Some(w))) = self.waiting.front() {
            w.wake_by_ref();
        }
    }

    pub(super) fn wake_all(&self) {
        for (_, w) in &self.waiting {
            if let Some(w) = w {
                w.wake_by_ref();
            }
        }
    }
}
