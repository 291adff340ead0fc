//! `dynacore-loadgen`: the benchmark harness (YCSB workloads, open and closed loop,
//! HdrHistogram latencies, side-by-side runs against Redis-protocol servers).
//!
//! Empty today: it is built by its own issue. See the README's status table.
#![forbid(unsafe_code)]
