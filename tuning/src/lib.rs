//! `dynacore-tuning`: hardware tuning experiments (raw io_uring device characterisation,
//! parameter sweeps of the engine and server), each written up with its charts.
//!
//! Empty today: it is built by its own issue. See the README's status table.
#![forbid(unsafe_code)]
