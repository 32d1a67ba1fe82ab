//! The embedded single-machine cluster: one API server and six data servers in one process,
//! each data server with its own folder and identity, metadata in SQLite and the in-process
//! bus. No service to install. The API server calls its data servers in process (shard bytes
//! move as `Bytes`); with [`ShardPath::Http`] each data server listens on loopback instead,
//! as in a cluster of processes. The REST listener serves clients either way, and
//! [`LocalCluster::store`] hands a client in this process (dosfs) the same store without HTTP.
//!
//! ```text
//! ROOT/metadata.sqlite   versions, listings, placement
//! ROOT/secret            signs upload tokens and requests to data servers
//! ROOT/data1 … data6     the data servers' STORAGE_ROOTs
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use dos_api_server::maintenance::MaintenanceConfig;
use dos_api_server::{ApiConfig, ApiServer, Core, InProcessStore, Maintenance};
use dos_bus::memory::MemoryBus;
use dos_data_server::{DataServer, DataServerConfig, Interface, LocalShards};
use dos_metadata::sqlite::SqliteStore;
use dos_protocol::TOTAL_SHARDS;
use dos_transport::ShardTransport;
use dos_transport::http::HttpTransport;

/// How the API server reaches the embedded data servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ShardPath {
    /// Function calls (the default).
    #[default]
    InProcess,
    /// HTTP on loopback, each data server on its own port (as in a cluster of processes).
    Http,
}

/// Wraps the transport the cluster built (tests inject faults with it).
pub type TransportLayer =
    Arc<dyn Fn(Arc<dyn ShardTransport>) -> Arc<dyn ShardTransport> + Send + Sync>;

#[derive(Clone)]
pub struct LocalConfig {
    pub root: PathBuf,
    /// Address of the API server.
    pub listen: SocketAddr,
    /// Bearer token required from clients, if any.
    pub token: Option<String>,
    /// The token that runs retention and orphan collection over REST (see
    /// `ApiConfig::admin_token`).
    pub admin_token: Option<String>,
    /// How many data servers (at least six).
    pub data_servers: usize,
    /// A request body idle for this long is cut off with 408.
    pub body_idle_timeout: std::time::Duration,
    /// How slowly a request body may arrive (see `ApiConfig::body_pace`).
    pub body_pace: dos_api_server::pipeline::write::BodyPace,
    /// Connections at once and the request head deadline of every HTTP listener.
    pub conn_limits: dos_worker::http::ConnLimits,
    /// Requests the API server serves at once (see `ApiConfig::max_in_flight`).
    pub max_in_flight: usize,
    /// Background scrub, retention and orphan collection.
    pub maintenance: MaintenanceConfig,
    /// Uploads untouched this long are deleted (and removed shards leave garbage/).
    pub temp_ttl: std::time::Duration,
    /// In process (default) or HTTP on loopback.
    pub shard_path: ShardPath,
    /// A shard stream silent for this long is replaced by another shard.
    pub shard_stall_timeout: std::time::Duration,
    /// A shard upload's create, commit or abort taking longer fails.
    pub shard_call_timeout: std::time::Duration,
    /// Applied to the shard transport before the API server uses it (fault injection).
    pub transport_layer: Option<TransportLayer>,
    /// Data servers keep shards of at most one piece in pack files (default); off, every
    /// shard is a file of its own (tests that damage shard files on disk).
    pub pack_small: bool,
    /// This process's metrics, served at `/metrics` by the API server and (over HTTP) by
    /// each data server.
    pub metrics: Option<dos_worker::http::Metrics>,
}

impl std::fmt::Debug for LocalConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalConfig")
            .field("root", &self.root)
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("data_servers", &self.data_servers)
            .field("shard_path", &self.shard_path)
            .finish_non_exhaustive()
    }
}

impl LocalConfig {
    pub fn new(root: PathBuf, listen: SocketAddr) -> Self {
        Self {
            root,
            listen,
            token: None,
            admin_token: None,
            data_servers: TOTAL_SHARDS,
            body_idle_timeout: std::time::Duration::from_secs(60),
            body_pace: Default::default(),
            conn_limits: Default::default(),
            max_in_flight: 1024,
            maintenance: MaintenanceConfig::default(),
            temp_ttl: std::time::Duration::from_secs(24 * 3600),
            shard_path: ShardPath::default(),
            shard_stall_timeout: std::time::Duration::from_secs(10),
            shard_call_timeout: std::time::Duration::from_secs(120),
            transport_layer: None,
            pack_small: true,
            metrics: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("storage root {path}")]
    Root {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("metadata")]
    Metadata(#[from] dos_metadata::MetadataError),
    #[error("data server")]
    DataServer(#[from] dos_data_server::StartError),
    #[error("API server: {0}")]
    Api(std::io::Error),
    #[error("shard transport: {0}")]
    Transport(dos_transport::ShardError),
    #[error("a cluster needs at least {TOTAL_SHARDS} data servers, not {0}")]
    TooFewDataServers(usize),
}

pub struct LocalCluster {
    api: ApiServer,
    data: Vec<Option<DataServer>>,
    start: DataStart,
}

/// What starting (or restarting) a data server of the cluster needs.
struct DataStart {
    /// The cluster's folder (a data server added later gets `ROOT/dataN` in it).
    root: PathBuf,
    roots: Vec<PathBuf>,
    bus: Arc<MemoryBus>,
    secret: Vec<u8>,
    temp_ttl: std::time::Duration,
    pack_small: bool,
    conn_limits: dos_worker::http::ConnLimits,
    metrics: Option<dos_worker::http::Metrics>,
    /// The in-process registry, or `None` for HTTP.
    local: Option<Arc<LocalShards>>,
}

impl DataStart {
    async fn start(&self, i: usize) -> Result<DataServer, LocalError> {
        let interface = match &self.local {
            Some(local) => Interface::InProcess(local.clone()),
            None => Interface::Http(([127, 0, 0, 1], 0).into()),
        };
        let mut config = DataServerConfig::new(self.roots[i].clone(), interface);
        config.secret = Some(self.secret.clone());
        config.temp_ttl = self.temp_ttl;
        config.pack_small = self.pack_small;
        config.conn_limits = self.conn_limits;
        config.metrics = self.metrics.clone();
        Ok(DataServer::start(config, self.bus.clone()).await?)
    }
}

impl LocalCluster {
    pub async fn start(config: LocalConfig) -> Result<Self, LocalError> {
        if config.data_servers < TOTAL_SHARDS {
            return Err(LocalError::TooFewDataServers(config.data_servers));
        }
        let root = config.root.clone();
        let root_err = |source| LocalError::Root {
            path: root.clone(),
            source,
        };
        std::fs::create_dir_all(&config.root).map_err(root_err)?;
        let secret =
            crate::secret::load_or_create(&config.root.join("secret")).map_err(root_err)?;
        let meta = SqliteStore::open(&config.root.join("metadata.sqlite"))?;
        let bus = Arc::new(MemoryBus::default());
        let (local, transport): (_, Arc<dyn ShardTransport>) = match config.shard_path {
            ShardPath::InProcess => {
                let local = LocalShards::new();
                (Some(local.clone()), local)
            }
            ShardPath::Http => (
                None,
                Arc::new(
                    HttpTransport::new(std::time::Duration::from_secs(5), Some(&secret))
                        .map_err(LocalError::Transport)?,
                ),
            ),
        };
        let transport = match &config.transport_layer {
            Some(layer) => layer(transport),
            None => transport,
        };
        let start = DataStart {
            root: config.root.clone(),
            roots: (1..=config.data_servers)
                .map(|i| config.root.join(format!("data{i}")))
                .collect(),
            bus: bus.clone(),
            secret: secret.clone(),
            temp_ttl: config.temp_ttl,
            pack_small: config.pack_small,
            conn_limits: config.conn_limits,
            metrics: config.metrics.clone(),
            local,
        };
        let mut data = Vec::new();
        for i in 0..config.data_servers {
            data.push(Some(start.start(i).await?));
        }
        let mut api_config = ApiConfig::new(secret);
        api_config.token = config.token.clone();
        api_config.admin_token = config.admin_token.clone();
        api_config.body_idle_timeout = config.body_idle_timeout;
        api_config.body_pace = config.body_pace;
        api_config.conn_limits = config.conn_limits;
        api_config.max_in_flight = config.max_in_flight;
        api_config.maintenance = config.maintenance.clone();
        api_config.shard_stall_timeout = config.shard_stall_timeout;
        api_config.shard_call_timeout = config.shard_call_timeout;
        api_config.metrics = config.metrics.clone();
        let api = ApiServer::start(config.listen, api_config, Arc::new(meta), bus, transport)
            .await
            .map_err(LocalError::Api)?;
        Ok(Self { api, data, start })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.addr
    }

    pub fn api_core(&self) -> Arc<Core> {
        self.api.core()
    }

    /// The API server's maintenance jobs (to start, watch and stop runs in process).
    pub fn maintenance(&self) -> Arc<Maintenance> {
        self.api.maintenance()
    }

    /// The store, for a client in this process: the API server's core called directly.
    pub fn store(&self) -> InProcessStore {
        self.api.in_process_store()
    }

    /// The data servers' storage folders, in order.
    pub fn data_roots(&self) -> Vec<PathBuf> {
        self.start.roots.clone()
    }

    /// The data servers' identities and addresses, in order (`None` for a stopped one).
    pub fn data_servers(&self) -> Vec<Option<dos_protocol::ServerInfo>> {
        self.data
            .iter()
            .map(|d| d.as_ref().map(|d| d.info.clone()))
            .collect()
    }

    /// Stops data server `i` (it stops answering and leaves the live set at once).
    pub async fn stop_data_server(&mut self, i: usize) {
        if let Some(ds) = self.data.get_mut(i).and_then(Option::take) {
            ds.shutdown().await;
        }
    }

    /// Starts data server `i` again on its folder.
    pub async fn start_data_server(&mut self, i: usize) -> Result<(), LocalError> {
        if self.data.get(i).is_some_and(Option::is_none) {
            let ds = self.start.start(i).await?;
            self.data[i] = Some(ds);
        }
        Ok(())
    }

    /// Adds a data server on a new folder, `ROOT/dataN` (N = how many there were, plus one),
    /// and starts it; it is live at once. Returns its index. A cluster started later on the
    /// same root with `data_servers` = N keeps it.
    pub async fn add_data_server(&mut self) -> Result<usize, LocalError> {
        let i = self.start.roots.len();
        self.start
            .roots
            .push(self.start.root.join(format!("data{}", i + 1)));
        match self.start.start(i).await {
            Ok(ds) => {
                self.data.push(Some(ds));
                Ok(i)
            }
            Err(e) => {
                self.start.roots.pop();
                Err(e)
            }
        }
    }

    /// Stops the API server, then every data server.
    pub async fn shutdown(self) {
        self.api.shutdown().await;
        for ds in self.data.into_iter().flatten() {
            ds.shutdown().await;
        }
    }
}
