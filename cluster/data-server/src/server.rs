//! Wiring of one data server: storage, HTTP listener, heartbeat and locate on the bus, and
//! expiry of abandoned uploads, all stopped by one cancellation token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use dos_bus::{Bus, HEARTBEAT_INTERVAL, LocateResponder};
use dos_protocol::{ContentHash, ServerId, ServerInfo};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::http::{AppState, router};
use crate::store::{ShardStore, ShardStoreError};

#[derive(Debug, Clone)]
pub struct DataServerConfig {
    /// Folder holding this server's shards (`STORAGE_ROOT`).
    pub root: PathBuf,
    /// Address to bind (`LISTEN_ADDRESS`); port 0 picks a free port.
    pub listen: SocketAddr,
    /// Address announced to API servers (`ADVERTISE_ADDRESS`); defaults to the bound address.
    pub advertise: Option<String>,
    /// Uploads untouched for this long are deleted.
    pub temp_ttl: Duration,
    /// Cluster secret: when set, only requests signed with it are served.
    pub secret: Option<Vec<u8>>,
}

impl DataServerConfig {
    pub fn new(root: PathBuf, listen: SocketAddr) -> Self {
        Self {
            root,
            listen,
            advertise: None,
            temp_ttl: Duration::from_secs(24 * 3600),
            secret: None,
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
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
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
                let store = ShardStore::open(&root)?;
                let id = server_id(&root)?;
                Ok((store, id))
            }
        })
        .await
        .map_err(|e| storage_err(ShardStoreError::Io(std::io::Error::other(e))))?
        .map_err(storage_err)?;
        let store = Arc::new(store);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let bound = listener.local_addr().map_err(|source| StartError::Listen {
            addr: config.listen,
            source,
        })?;
        let info = ServerInfo {
            id,
            addr: config
                .advertise
                .clone()
                .unwrap_or_else(|| bound.to_string()),
        };
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();

        if config.secret.is_none() {
            tracing::warn!("no cluster secret: this data server accepts unsigned requests");
        }
        let app = router(AppState {
            store: store.clone(),
            id: info.id.0.clone(),
            secret: config.secret.as_deref().map(Arc::from),
        });
        let c = cancel.clone();
        tasks.push(tokio::spawn(async move {
            let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "TCP_NODELAY not set");
                }
            });
            let serve = axum::serve(listener, app).with_graceful_shutdown(c.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "data server HTTP listener failed");
            }
        }));

        let subscription = bus
            .serve_locate(info.clone(), Arc::new(Responder(store.clone())))
            .await?;
        bus.heartbeat(&info).await?;
        let (c, b, i) = (cancel.clone(), bus.clone(), info.clone());
        tasks.push(tokio::spawn(async move {
            let _subscription = subscription;
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                tokio::select! {
                    _ = c.cancelled() => break,
                    _ = tick.tick() => {
                        if let Err(e) = b.heartbeat(&i).await {
                            tracing::warn!(error = %e, "heartbeat not sent");
                        }
                    }
                }
            }
        }));

        let (c, s, ttl) = (cancel.clone(), store.clone(), config.temp_ttl);
        tasks.push(tokio::spawn(async move {
            let period = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
            let mut tick = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = c.cancelled() => break,
                    _ = tick.tick() => {
                        let s = s.clone();
                        let swept = tokio::task::spawn_blocking(move || {
                            (s.expire_temps(ttl), s.expire_garbage(ttl))
                        })
                        .await;
                        match swept {
                            Ok((temps, garbage)) => {
                                match temps {
                                    Ok(n) if n > 0 => tracing::info!(removed = n, "expired temp uploads"),
                                    Err(e) => tracing::warn!(error = %e, "temp expiry failed"),
                                    _ => {}
                                }
                                match garbage {
                                    Ok(n) if n > 0 => tracing::info!(removed = n, "emptied removed shards from garbage/"),
                                    Err(e) => tracing::warn!(error = %e, "garbage expiry failed"),
                                    _ => {}
                                }
                            }
                            Err(e) => tracing::warn!(error = %e, "expiry task failed"),
                        }
                    }
                }
            }
        }));
        tracing::info!(id = %info.id, addr = %info.addr, root = %config.root.display(), "data server started");
        Ok(Self {
            info,
            store,
            cancel,
            tasks,
        })
    }

    /// Stops serving and waits for the listener and workers to finish.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for t in self.tasks {
            if let Err(e) = t.await {
                tracing::warn!(error = %e, "data server task ended abnormally");
            }
        }
    }
}
