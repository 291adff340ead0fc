//! The ring book as the whole node shares it: every core may read it, merge a peer's book into
//! it or change this node's entry; each change is republished as the [`ClusterState`] every
//! core routes by, its digest is handed to the gossip driver (which announces it, so that peers
//! whose books differ sync), and the book is saved to the `RING` file by a thread of its own
//! (an fsync on an executor would stall every request of its core; the latest book is written,
//! intermediate ones may be skipped, and [`RingKeeper::flush`] writes what is pending at
//! shutdown).

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::cluster::membership::SharedMembers;
use crate::cluster::{ClusterState, RingBook, RingMember, SharedCluster};

/// The node's ring book, shared (see the module documentation).
#[derive(Clone, Debug)]
pub struct RingKeeper(Arc<KeeperInner>);

#[derive(Debug)]
struct KeeperInner {
    book: Mutex<RingBook>,
    cluster: SharedCluster,
    members: SharedMembers,
    replication_factor: u8,
    digest: flume::Sender<u64>,
    /// The latest book not yet written, and the saver thread's wake-up.
    pending: Arc<Mutex<Option<(PathBuf, String)>>>,
    wake: flume::Sender<()>,
}

impl RingKeeper {
    /// Keeps `book`, publishing into `cluster` (with liveness from `members`); the receiver
    /// gets the book's digest after every change.
    #[must_use]
    pub fn new(
        book: RingBook,
        cluster: SharedCluster,
        members: SharedMembers,
        replication_factor: u8,
    ) -> (RingKeeper, flume::Receiver<u64>) {
        let (digest, digests) = flume::bounded(1);
        let pending: Arc<Mutex<Option<(PathBuf, String)>>> = Arc::new(Mutex::new(None));
        let (wake, woken) = flume::bounded::<()>(1);
        {
            let pending = pending.clone();
            let spawned = std::thread::Builder::new()
                .name("dynacore-ring-save".to_owned())
                .spawn(move || {
                    while woken.recv().is_ok() {
                        write_pending(&pending);
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start the ring book's saver: saving inline");
            }
        }
        let keeper = RingKeeper(Arc::new(KeeperInner {
            book: Mutex::new(book),
            cluster,
            members,
            replication_factor,
            digest,
            pending,
            wake,
        }));
        (keeper, digests)
    }

    fn lock(&self) -> MutexGuard<'_, RingBook> {
        match self.0.book.lock() {
            Ok(b) => b,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Reads the book.
    pub fn read<R>(&self, f: impl FnOnce(&RingBook) -> R) -> R {
        f(&self.lock())
    }

    /// Changes the book with `f` (which says whether it changed anything); a change is saved,
    /// republished and announced. Returns what `f` said.
    pub fn edit(&self, f: impl FnOnce(&mut RingBook) -> bool) -> bool {
        let mut book = self.lock();
        if !f(&mut book) {
            return false;
        }
        match book.file_text() {
            Ok(Some(file)) => {
                *lock(&self.0.pending) = Some(file);
                if self.0.wake.try_send(()).is_err() && self.0.wake.is_disconnected() {
                    write_pending(&self.0.pending);
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot encode the ring"),
        }
        self.publish_locked(&book);
        let _ = self.0.digest.try_send(book.digest());
        true
    }

    /// Merges a peer's entries; `true` if that changed the book.
    pub fn merge(&self, entries: &[RingMember]) -> bool {
        self.edit(|b| b.merge(entries))
    }

    /// Rebuilds the cluster state (liveness changed).
    pub fn republish(&self) {
        let book = self.lock();
        self.publish_locked(&book);
    }

    fn publish_locked(&self, book: &RingBook) {
        let members = self.0.members.read().ok().and_then(|m| m.clone());
        let own = book.own().id.clone();
        let own = u64::from_str_radix(&own, 16)
            .map(dynacore_proto::ring::NodeId)
            .unwrap_or(dynacore_proto::ring::NodeId(0));
        self.0.cluster.set(ClusterState::build(
            own,
            book,
            members.as_ref(),
            self.0.replication_factor,
        ));
    }

    /// The book's digest.
    #[must_use]
    pub fn digest(&self) -> u64 {
        self.lock().digest()
    }

    /// See [`RingBook::ring_epochs`].
    #[must_use]
    pub fn ring_epochs(&self) -> u64 {
        self.lock().ring_epochs()
    }

    /// The book's entries, encoded for a peer (JSON).
    #[must_use]
    pub fn encoded(&self) -> Vec<u8> {
        serde_json::to_vec(&self.lock().entries()).unwrap_or_default()
    }
}

impl RingKeeper {
    /// Writes the book now if a change of it is not yet on disk (at shutdown).
    pub fn flush(&self) {
        write_pending(&self.0.pending);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Writes the latest pending book, if any.
fn write_pending(pending: &Mutex<Option<(PathBuf, String)>>) {
    let Some((path, text)) = lock(pending).take() else {
        return;
    };
    if let Err(e) = crate::cluster::ring_book::write_file(&path, &text) {
        tracing::error!(error = %e, "cannot record the ring");
    }
}

/// Decodes a peer's encoded book.
///
/// # Errors
/// What does not parse.
pub fn decode_book(bytes: &[u8]) -> Result<Vec<RingMember>, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("a peer's ring book does not parse: {e}"))
}
