//! Causal versions: the hybrid logical clock that timestamps writes ([`hlc`]) and the dotted
//! version vector sets that track a key's siblings across replicas ([`dvv`]).
//!
//! The engine stores a version as an opaque blob in each record; this module gives that blob
//! its meaning. Replica-side apply (merge an incoming object with the local one) builds on
//! [`dvv::DvvSet::sync`]; the coordinator's write on [`dvv::DvvSet::update`].

pub mod dvv;
pub mod hlc;

pub use dvv::{
    ActorId, DvvError, DvvSet, VersionVector, SIBLINGS_MAX, SIBLINGS_WARN, TRANSACTION_EPOCH_BIT,
};
pub use hlc::{ClockError, ClockHandle, Hlc, HlcTimestamp, PhysicalClock, SystemClock};
