//! Wiring of one data server: storage, its interface (an HTTP listener, or registration with
//! the in-process transport of the embedded cluster), and its workers (heartbeat, locate
//! responder, expiry of abandoned uploads and of removed shards), owned by one supervisor.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dos_bus::{Bus, HEARTBEAT_INTERVAL, LocateResponder, Subscription};
use dos_protocol::{ContentHash, ServerId, ServerInfo};
use dos_worker::Supervisor;
use tokio::net::TcpListener;

use crate::http::{AppState, router};
use crate::local::LocalShards;
use crate::store::{ShardStore, ShardStoreError};

/// How the API servers reach this data server.
#[derive(Clone)]
pub enum Interface {
    /// HTTP on this address (port 0 picks a free port): cluster mode.
    Http(SocketAddr),
    /// Called in process through this registry: the embedded cluster.
    InProcess(Arc<LocalShards>),
}

#[derive(Clone)]
pub struct DataServerConfig {
    /// Folder holding this server's shards (`STORAGE_ROOT`).
    pub root: PathBuf,
    pub interface: Interface,
    /// Address announced to API servers (`ADVERTISE_ADDRESS`); defaults to the bound address
    /// (or, in process, to `local:<folder name>`).
    pub advertise: Option<String>,
    /// Uploads untouched for this long are deleted.
    pub temp_ttl: Duration,
    /// Cluster secret: when set, only requests signed with it are served (HTTP).
    pub secret: Option<Vec<u8>>,
    /// Whole small shards go to pack files (see `store::pack`); off, each is a file.
    pub pack_small: bool,
    /// Connections at once and the request head deadline (HTTP).
    pub conn_limits: dos_worker::http::ConnLimits,
    /// When set, the HTTP interface speaks only TLS with this certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// This process's metrics, served at `/metrics` (HTTP; 404 without).
    pub metrics: Option<dos_worker::http::Metrics>,
}

impl std::fmt::Debug for DataServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataServerConfig")
            .field("root", &self.root)
            .field("advertise", &self.advertise)
            .field("temp_ttl", &self.temp_ttl)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("tls", &self.tls.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl DataServerConfig {
    pub fn new(root: PathBuf, interface: Interface) -> Self {
        Self {
            root,
            interface,
            advertise: None,
            temp_ttl: Duration::from_secs(24 * 3600),
            secret: None,
            pack_small: true,
            conn_limits: Default::default(),
            tls: None,
            metrics: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open storage folder {path}")]
    Storage {
        path: PathBuf,
        source: ShardStoreError,
    },
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("message bus")]
    Bus(#[from] dos_bus::BusError),
}

/// A running data server.
pub struct DataServer {
    pub info: ServerInfo,
    pub store: Arc<ShardStore>,
    workers: Supervisor,
    _locate: Subscription,
    local: Option<Arc<LocalShards>>,
}

struct Responder(Arc<ShardStore>);

impl LocateResponder for Responder {
    fn shards_of(&self, hash: &ContentHash) -> Vec<u8> {
        self.0.shards_of(hash)
    }
}

/// Reads `root/server-id`, creating it on first start.
fn server_id(root: &std::path::Path) -> std::io::Result<ServerId> {
    let path = root.join("server-id");
    match std::fs::read_to_string(&path) {
        Ok(s) if !s.trim().is_empty() => Ok(ServerId(s.trim().to_string())),
        Ok(_) => Err(std::io::Error::other(format!(
            "{} is empty",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = format!("ds-{}", uuid::Uuid::new_v4().simple());
            let tmp = root.join("server-id.tmp");
            std::fs::write(&tmp, &id)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            Ok(ServerId(id))
        }
        Err(e) => Err(e),
    }
}

impl DataServer {
    pub async fn start(config: DataServerConfig, bus: Arc<dyn Bus>) -> Result<Self, StartError> {
        let root = config.root.clone();
        let storage_err = |source| StartError::Storage {
            path: root.clone(),
            source,
        };
        let (store, id) = tokio::task::spawn_blocking({
            let root = config.root.clone();
            move || -> Result<_, ShardStoreError> {
                let store = ShardStore::open_with(&root, config.pack_small)?;
                let id = server_id(&root)?;
                Ok((store, id))
            }
        })
        .await
        .map_err(|e| storage_err(ShardStoreError::Io(std::io::Error::other(e))))?
        .map_err(storage_err)?;
        let store = Arc::new(store);
        store.count_as(&id.0);
        let workers = Supervisor::new();
        let (addr, local) = match &config.interface {
            Interface::Http(listen) => {
                let listener =
                    TcpListener::bind(listen)
                        .await
                        .map_err(|source| StartError::Listen {
                            addr: *listen,
                            source,
                        })?;
                let bound = listener.local_addr().map_err(|source| StartError::Listen {
                    addr: *listen,
                    source,
                })?;
                if config.secret.is_none() {
                    tracing::warn!("no cluster secret: this data server accepts unsigned requests");
                }
                let app = router(AppState {
                    store: store.clone(),
                    id: id.0.clone(),
                    secret: config.secret.as_deref().map(Arc::from),
                    nonces: Arc::default(),
                    metrics: config.metrics.clone(),
                });
                let (limits, tls) = (config.conn_limits, config.tls.clone());
                workers.spawn_once("http listener", move |cancel| {
                    dos_worker::http::serve(listener, app, cancel, limits, tls, "data server")
                });
                (bound.to_string(), None)
            }
            Interface::InProcess(local) => {
                local.register(id.clone(), store.clone());
                let name = config
                    .root
                    .file_name()
                    .map_or_else(|| id.0.clone(), |n| n.to_string_lossy().into_owned());
                (format!("local:{name}"), Some(local.clone()))
            }
        };
        let info = ServerInfo {
            id,
            addr: config.advertise.clone().unwrap_or(addr),
        };

        let locate = bus
            .serve_locate(info.clone(), Arc::new(Responder(store.clone())))
            .await?;
        let first = current_stats(store.clone()).await;
        bus.announce(&info, store.is_draining(), first).await?;
        let (b, i, s) = (bus.clone(), info.clone(), store.clone());
        // Every HEARTBEAT_INTERVAL, and at once when the drain mark changes.
        workers.spawn(dos_worker::from_fn("heartbeat", move |cancel| {
            let (b, i, s) = (b.clone(), i.clone(), s.clone());
            async move {
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
                        _ = s.draining_changed() => {}
                    }
                    let stats = current_stats(s.clone()).await;
                    if let Err(e) = b.announce(&i, s.is_draining(), stats).await {
                        tracing::warn!(error = %e, "heartbeat not sent");
                    }
                }
            }
        }));
        let (s, i) = (store.clone(), info.id.0.clone());
        workers.spawn(dos_worker::every(
            "metrics",
            HEARTBEAT_INTERVAL,
            move || {
                let (s, i) = (s.clone(), i.clone());
                async move { refresh_metrics(s, i).await }
            },
        ));
        if let Some(m) = &config.metrics {
            workers.spawn(m.upkeep_worker());
        }
        let (s, ttl) = (store.clone(), config.temp_ttl);
        let period = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
        workers.spawn(dos_worker::every("temp expiry", period, move || {
            let s = s.clone();
            async move { expire(s, ttl).await }
        }));
        let s = store.clone();
        workers.spawn(dos_worker::every(
            "pack compaction",
            COMPACT_EVERY,
            move || {
                let s = s.clone();
                async move { compact(s).await }
            },
        ));
        tracing::info!(id = %info.id, addr = %info.addr, root = %config.root.display(), "data server started");
        Ok(Self {
            info,
            store,
            workers,
            _locate: locate,
            local,
        })
    }

    /// Stops serving and waits (up to 10 s) for the listener and workers to finish.
    pub async fn shutdown(self) {
        if let Some(local) = &self.local {
            local.unregister(&self.info.id);
        }
        let report = self.workers.shutdown(Duration::from_secs(10)).await;
        if !report.aborted.is_empty() {
            tracing::warn!(aborted = ?report.aborted, "data server workers did not stop in time");
        }
    }
}

/// How often sealed packs are checked for compaction.
const COMPACT_EVERY: Duration = Duration::from_secs(300);

/// One round of pack compaction (packs whose entries are mostly removed are rewritten).
async fn compact(store: Arc<ShardStore>) {
    match tokio::task::spawn_blocking(move || store.compact_packs()).await {
        Ok(Ok(done)) if done.packs > 0 => {
            tracing::info!(
                packs = done.packs,
                moved = done.moved,
                reclaimed = done.reclaimed_bytes,
                corrupt = done.corrupt.len(),
                "packs compacted"
            )
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "pack compaction failed"),
        Err(e) => tracing::warn!(error = %e, "pack compaction task failed"),
    }
}

/// One round of expiry: uploads untouched for `ttl`, and shards in `garbage/` for longer.
async fn expire(store: Arc<ShardStore>, ttl: Duration) {
    let swept =
        tokio::task::spawn_blocking(move || (store.expire_temps(ttl), store.expire_garbage(ttl)))
            .await;
    match swept {
        Ok((temps, garbage)) => {
            match temps {
                Ok(n) if n > 0 => tracing::info!(removed = n, "expired temp uploads"),
                Err(e) => tracing::warn!(error = %e, "temp expiry failed"),
                _ => {}
            }
            match garbage {
                Ok(n) if n > 0 => {
                    tracing::info!(removed = n, "emptied removed shards from garbage/")
                }
                Err(e) => tracing::warn!(error = %e, "garbage expiry failed"),
                _ => {}
            }
        }
        Err(e) => tracing::warn!(error = %e, "expiry task failed"),
    }
}

/// What the store holds and has room for, for a heartbeat (statvfs, on a blocking thread).
async fn current_stats(store: Arc<ShardStore>) -> Option<dos_protocol::ServerStats> {
    tokio::task::spawn_blocking(move || crate::metrics::stats(&store))
        .await
        .ok()
        .flatten()
}

/// Sets the gauges of the store and its file system (statvfs, on a blocking thread).
pub(crate) async fn refresh_metrics(store: Arc<ShardStore>, id: String) {
    if let Err(e) = tokio::task::spawn_blocking(move || crate::metrics::refresh(&store, &id)).await
    {
        tracing::warn!(error = %e, "metrics refresh failed");
    }
}
