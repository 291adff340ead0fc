//! `dynacore-loadgen`: the benchmark harness — YCSB's core workloads A–F ([`workload`]),
//! latencies without coordinated omission ([`recording`]), drivers for Dynacore's binary
//! protocol and HTTP API and for Redis-protocol servers ([`driver`], [`resp`]), the runner of
//! load and run phases in closed or open loop ([`run`]), and reports: tables, JSON, `.hgrm`
//! and side-by-side comparisons ([`report`]) and plots ([`plot`]).
#![forbid(unsafe_code)]

pub mod cpu;
pub mod driver;
pub mod plot;
pub mod recording;
pub mod report;
pub mod resp;
pub mod run;
pub mod workload;
