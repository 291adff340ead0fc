//! `dynacore-runtime`: the thin runtime layer. Every executor, task, timer, direct-I/O file and
//! socket Dynacore uses goes through here.
//!
//! Dynacore pins `glommio = "=0.9.0"`, which is unmaintained upstream. This is the only crate of
//! the workspace that names glommio, so moving to a maintained fork (or another io_uring
//! runtime) is a change to this crate alone.
//!
//! Layout:
//! * [`exec`] — executors (pinned or not), tasks, task queues, timers, the heartbeat;
//! * [`file`] — direct-I/O files ([`File`]), directory sync, rename and remove;
//! * [`net`] — TCP listeners and streams, UDP sockets;
//! * [`tls`] — TLS on those streams (rustls): acceptors, connectors, configurations from PEM files.
//!
//! Everything is re-exported at the top level: callers write `dynacore_runtime::spawn`, never
//! the module path.
//!
//! INVARIANT: every function here (except [`spawn_executor`] and [`Executor::new_unbound`])
//! must be called from inside an executor thread; the values it returns are `!Send` and never
//! leave that thread.
#![deny(unsafe_code)]

pub mod exec;
pub mod file;
pub mod net;
pub mod tls;

pub use exec::*;
pub use file::*;
pub use net::*;
