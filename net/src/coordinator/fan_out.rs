//! The shape every coordinated request shares: ask several replicas at once and take their
//! answers as they come until all answered or the deadline passed ([`Answers`]); answer the
//! client as soon as that is decided and let the rest go on in the background, counted as
//! work of the core so that a clean shutdown waits for it ([`answer_early`]).

use std::future::Future;
use std::time::Instant;

use dynacore_runtime as runtime;

use crate::core::Core;
use crate::storage::replica::StoreError;

/// What [`Answers::next`] found.
#[derive(Debug)]
pub(crate) enum Next<R> {
    /// Target `i` answered.
    Answer(usize, R),
    /// Every target answered.
    AllIn,
    /// The deadline passed first.
    Expired,
}

/// The answers of requests sent to several targets at once, each in its own task. Dropping
/// it cancels the requests still running (and frees what they hold).
pub(crate) struct Answers<R> {
    rx: flume::Receiver<(usize, R)>,
    deadline: Instant,
    _asking: Vec<runtime::Task<()>>,
}

impl<R> std::fmt::Debug for Answers<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answers")
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl<R: 'static> Answers<R> {
    /// Runs `ask(i, target)` for each target that `skip` does not rule out, each in a task of
    /// its own (so that a slow one holds up none of the others).
    pub(crate) fn spawn<T, F, Fut>(
        targets: impl IntoIterator<Item = T>,
        deadline: Instant,
        mut skip: impl FnMut(usize, &T) -> bool,
        ask: F,
    ) -> Answers<R>
    where
        F: Fn(usize, T) -> Fut,
        Fut: Future<Output = R> + 'static,
    {
        let (tx, rx) = flume::unbounded();
        let mut tasks = Vec::new();
        for (i, target) in targets.into_iter().enumerate() {
            if skip(i, &target) {
                continue;
            }
            let (asking, tx) = (ask(i, target), tx.clone());
            tasks.push(runtime::spawn(async move {
                let _ = tx.send((i, asking.await));
            }));
        }
        Answers {
            rx,
            deadline,
            _asking: tasks,
        }
    }

    /// The next answer, or `None` once every target answered or the deadline passed (then
    /// `on_expiry` runs first: the targets still silent count as failed).
    pub(crate) async fn next_or(&mut self, on_expiry: impl FnOnce()) -> Option<(usize, R)> {
        match self.next().await {
            Next::Answer(i, r) => Some((i, r)),
            Next::AllIn => None,
            Next::Expired => {
                on_expiry();
                None
            }
        }
    }

    /// The next answer, or why none will come.
    pub(crate) async fn next(&mut self) -> Next<R> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        match runtime::timeout(left, self.rx.recv_async()).await {
            Some(Ok((i, r))) => Next::Answer(i, r),
            Some(Err(_)) => Next::AllIn,
            None => Next::Expired,
        }
    }
}

/// The client's answer, given once by the background work that decides it.
#[derive(Debug)]
pub(crate) struct Decision<T>(Option<flume::Sender<Result<T, StoreError>>>);

impl<T> Decision<T> {
    /// Whether the answer is still to be given.
    pub(crate) fn is_open(&self) -> bool {
        self.0.is_some()
    }

    /// Gives the answer (only the first one counts).
    pub(crate) fn give(&mut self, answer: Result<T, StoreError>) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(answer);
        }
    }
}

/// Runs `work` in a background task that holds the core's admission (a clean shutdown waits
/// for it) and returns the answer it gives through its [`Decision`], while it goes on after.
pub(crate) async fn answer_early<T, Fut>(
    core: &Core,
    what: &str,
    work: impl FnOnce(Decision<T>) -> Fut,
) -> Result<T, StoreError>
where
    T: 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (tx, rx) = flume::bounded(1);
    let admission = core.shared().hold();
    let running = work(Decision(Some(tx)));
    runtime::spawn_detached(async move {
        let _admission = admission;
        running.await;
    });
    match rx.recv_async().await {
        Ok(answer) => answer,
        Err(_) => Err(StoreError::Internal(format!(
            "the {what}'s coordinator stopped without an answer"
        ))),
    }
}
