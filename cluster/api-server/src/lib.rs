//! An API server: stateless, faces clients over REST, stores each object as Reed-Solomon 4+2
//! shards on six data servers, keeps metadata in a [`dos_metadata::MetadataStore`] and finds
//! data servers over a [`dos_bus::Bus`].
//!
//! `http` is the axum adapter; `objects` and `resumable` decide what requests do; `pipeline`
//! streams bytes between clients and shards; `repair` rebuilds lost shards in the background;
//! `maintenance` runs scrub, retention and orphan collection.

mod core;
pub mod error;
mod http;
pub mod maintenance;
pub mod objects;
pub mod pipeline;
pub mod repair;
pub mod resumable;
pub mod shard_client;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dos_bus::Bus;
use dos_metadata::MetadataStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::core::{ApiConfig, Core};
pub use crate::http::accepts_gzip;

/// A running API server.
pub struct ApiServer {
    pub addr: SocketAddr,
    core: Arc<Core>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl ApiServer {
    /// Binds `listen` and serves until [`shutdown`](Self::shutdown).
    pub async fn start(
        listen: SocketAddr,
        config: ApiConfig,
        meta: Arc<dyn MetadataStore>,
        bus: Arc<dyn Bus>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}"))
        })?;
        let addr = listener.local_addr()?;
        let core = Arc::new(Core {
            meta,
            bus,
            shards: shard_client::ShardClient::new(Duration::from_secs(5), Some(&config.secret)),
            codec: dos_erasure::Codec::new(),
            config,
            repair: repair::RepairQueue::default(),
            jobs: maintenance::Jobs::default(),
        });
        let cancel = CancellationToken::new();
        core.repair
            .spawn_worker(Arc::downgrade(&core), cancel.child_token());
        maintenance::spawn_schedules(
            Arc::downgrade(&core),
            &core.config.maintenance,
            cancel.child_token(),
        );
        let app = http::router(core.clone());
        let c = cancel.clone();
        let task = tokio::spawn(async move {
            // Small answers must not wait for delayed ACKs (Nagle).
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
            });
            let serve = axum::serve(listener, app).with_graceful_shutdown(c.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "API listener failed");
            }
        });
        tracing::info!(%addr, "API server started");
        Ok(Self {
            addr,
            core,
            cancel,
            task,
        })
    }

    pub fn core(&self) -> Arc<Core> {
        self.core.clone()
    }

    /// Stops accepting requests, lets those in flight finish, and stops the workers.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(e) = self.task.await {
            tracing::warn!(error = %e, "API server task ended abnormally");
        }
    }
}
