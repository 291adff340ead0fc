//! What clients talk to. Each core runs both servers on its own executor:
//! * the binary protocol: [`binary_server`] moves frames, [`binary_dispatch`] answers one
//!   request body through the core (sans sockets);
//! * the HTTP API: [`http_codec`] reads heads and writes responses (sans IO), [`http_server`]
//!   serves connections with it;
//! * the Redis protocol (RESP2/3): [`resp_codec`] reads commands and writes replies (sans IO),
//!   [`resp_server`] serves connections with it and runs the commands;
//! * `listen` — what both do with connections: accept, refuse over the limit, close politely.

pub mod binary_dispatch;
pub mod binary_server;
pub mod http_codec;
pub mod http_server;
mod listen;
pub mod resp_codec;
mod resp_commands;
mod resp_data;
mod resp_keyspace;
pub mod resp_server;
