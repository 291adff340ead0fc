//! `dynacore-loadgen`: the benchmark harness (YCSB workloads, open and closed loop,
//! HdrHistogram latencies, side-by-side runs against Redis-protocol servers).
//!
//! Being built by its issue: so far [`workload`], YCSB's core workloads A–F (operation mixes
//! and key distributions), [`recording`], latencies without coordinated omission, and
//! [`resp`], the Redis protocol's commands and replies, all sans IO. The drivers, the `loadgen` binary and its reports come
//! next; see the README's status table.
#![forbid(unsafe_code)]

pub mod recording;
pub mod resp;
pub mod run;
pub mod workload;
