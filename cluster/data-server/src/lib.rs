//! A data server: keeps shards on its disk and serves them over HTTP to API servers.
//!
//! [`store`] owns the disk (no HTTP); [`http`] is the thin axum adapter; [`server`] wires the
//! store, the HTTP listener and the bus workers (heartbeat, locate responder, temp expiry).

pub mod http;
pub mod server;
pub mod store;

pub use server::{DataServer, DataServerConfig, StartError};
