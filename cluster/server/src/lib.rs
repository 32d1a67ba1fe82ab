//! Composition of dos servers: the embedded single-machine cluster ([`local`]) that
//! `dos-server local` and `dosfs mount` run, and the pieces the `dos-server` binary wires.

pub mod local;
pub mod metrics;
pub mod secret;
pub mod tls;
