//! An API server: stateless, faces clients over REST, stores each object as Reed-Solomon 4+2
//! shards on six data servers, keeps metadata in a [`dos_metadata::MetadataStore`], finds
//! data servers over a [`dos_bus::Bus`] and talks to them through a
//! [`dos_transport::ShardTransport`].
//!
//! - [`core`]: the shared context (engines, codec, configuration); plain data.
//! - [`objects`], [`resumable`]: what requests do. [`placement`]: where shards go and who
//!   holds them. [`probe`]: asking every shard's holders, with a quorum result. [`health`]:
//!   answer times and suspect data servers, which set the deadlines of shard calls.
//! - [`pipeline`]: bytes between a body and six shard streams. [`stream`]: bodies going out.
//! - [`timeline`]: the change log (`GET /log`), each version told as written, deleted,
//!   renamed or restored.
//! - [`check`]: how healthy one content is, on demand (the cheap redundancy check and the
//!   full verify-and-repair that the scrub job runs on each content).
//! - [`repair`] and [`maintenance`]: the background work, run by a supervisor; [`moves`]:
//!   drain and rebalance, the maintenance jobs that move shards between data servers.
//! - `http`: the thin axum adapter (the only module that knows HTTP); [`in_process`]: the same
//!   operations as an [`dos_store::ObjectStore`] for a client in this process.
//! - [`error`]: every failure, and its status, in one table.

pub mod check;
pub mod core;
pub mod error;
pub mod health;
mod http;
pub mod in_process;
pub mod maintenance;
pub mod metrics;
pub mod moves;
pub mod objects;
pub mod pipeline;
pub mod placement;
pub mod probe;
pub mod repair;
pub mod resumable;
pub mod status;
pub mod stream;
pub mod timeline;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dos_bus::Bus;
use dos_metadata::MetadataStore;
use dos_transport::ShardTransport;
use dos_worker::Supervisor;
use tokio::net::TcpListener;

pub use crate::core::{ApiConfig, Core};
pub use crate::in_process::InProcessStore;
pub use crate::maintenance::Maintenance;

// The codec and the on-disk layout must agree on the shape of an object.
const _: () = assert!(
    dos_erasure::DATA_SHARDS == dos_protocol::DATA_SHARDS
        && dos_erasure::TOTAL_SHARDS == dos_protocol::TOTAL_SHARDS
);

/// Hashes that may wait for repair at once.
const REPAIR_QUEUE: usize = 10_000;
/// How long shutdown waits for requests in flight and background work.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

/// A running API server: its listener and its workers (repair, maintenance schedules and
/// runs), all owned by one supervisor.
pub struct ApiServer {
    pub addr: SocketAddr,
    core: Arc<Core>,
    maintenance: Arc<Maintenance>,
    workers: Arc<Supervisor>,
}

impl ApiServer {
    /// Binds `listen` and serves until [`shutdown`](Self::shutdown).
    pub async fn start(
        listen: SocketAddr,
        config: ApiConfig,
        meta: Arc<dyn MetadataStore>,
        bus: Arc<dyn Bus>,
        shards: Arc<dyn ShardTransport>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}"))
        })?;
        let addr = listener.local_addr()?;
        let (repairs, inbox) = repair::queue(REPAIR_QUEUE);
        let timed = config.metrics.is_some();
        let meta: Arc<dyn MetadataStore> = if timed {
            Arc::new(dos_metadata::timed::Timed::new(meta))
        } else {
            meta
        };
        let core = Arc::new(Core {
            meta,
            bus,
            shards,
            codec: dos_erasure::Codec::new(),
            config,
            repairs,
            received: Default::default(),
            health: Default::default(),
            draining: Default::default(),
        });
        let workers = Arc::new(Supervisor::new());
        workers.spawn(Arc::new(repair::RepairWorker::new(
            inbox,
            Arc::downgrade(&core),
        )));
        if let Some(m) = &core.config.metrics {
            metrics::register();
            workers.spawn(m.upkeep_worker());
        }
        let maintenance = Maintenance::new(core.clone(), workers.clone());
        maintenance.schedule();
        // Who is live, noted every heartbeat interval, so that a data server that stops is
        // shown as down by `/status` even if nobody asked before.
        let seen = Arc::new(status::Seen::default());
        let (note, bus) = (seen.clone(), core.bus.clone());
        workers.spawn(dos_worker::every(
            "status: live data servers",
            dos_bus::HEARTBEAT_INTERVAL,
            move || {
                note.note(&bus.live_servers());
                std::future::ready(())
            },
        ));
        let app = http::router(http::AppState {
            core: core.clone(),
            maintenance: maintenance.clone(),
            seen,
        });
        let (limits, tls) = (core.config.conn_limits, core.config.tls.clone());
        workers.spawn_once("http listener", move |cancel| {
            dos_worker::http::serve(listener, app, cancel, limits, tls, "API")
        });
        tracing::info!(%addr, "API server started");
        Ok(Self {
            addr,
            core,
            maintenance,
            workers,
        })
    }

    pub fn core(&self) -> Arc<Core> {
        self.core.clone()
    }

    pub fn maintenance(&self) -> Arc<Maintenance> {
        self.maintenance.clone()
    }

    /// An [`dos_store::ObjectStore`] over this server's core, for a client in this process.
    pub fn in_process_store(&self) -> InProcessStore {
        InProcessStore::new(self.core.clone())
    }

    /// Stops accepting requests, lets those in flight finish, and stops the workers (up to
    /// 10 s; what is still running then is aborted and logged).
    pub async fn shutdown(self) {
        let report = self.workers.shutdown(SHUTDOWN_DEADLINE).await;
        if !report.aborted.is_empty() {
            tracing::warn!(aborted = ?report.aborted, "API server work did not stop in time");
        }
    }
}
