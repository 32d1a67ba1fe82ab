//! A data server: keeps shards on its disk and serves them to API servers.
//!
//! [`store`] owns the disk (no HTTP); [`shards`] is what the server does for a request,
//! however it arrived; [`http`] is the thin axum adapter (cluster mode) and [`local`] the
//! in-process transport of the embedded cluster; [`server`] wires the store, the interface
//! and the workers (heartbeat, locate responder, temp expiry).

pub mod http;
pub mod local;
pub mod metrics;
pub mod server;
pub mod shards;
pub mod store;

pub use local::LocalShards;
pub use server::{DataServer, DataServerConfig, Interface, StartError};
