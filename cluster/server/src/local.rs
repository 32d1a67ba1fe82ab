//! The embedded single-machine cluster: one API server and six data servers in one process,
//! each data server with its own folder and HTTP listener, metadata in SQLite and the
//! in-process bus. No service to install.
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
use dos_api_server::{ApiConfig, ApiServer, Core};
use dos_bus::memory::MemoryBus;
use dos_data_server::{DataServer, DataServerConfig};
use dos_metadata::sqlite::SqliteStore;
use dos_protocol::TOTAL_SHARDS;

#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub root: PathBuf,
    /// Address of the API server.
    pub listen: SocketAddr,
    /// Bearer token required from clients, if any.
    pub token: Option<String>,
    /// How many data servers (at least six).
    pub data_servers: usize,
    /// A request body idle for this long is cut off with 408.
    pub body_idle_timeout: std::time::Duration,
    /// Background scrub, retention and orphan collection.
    pub maintenance: MaintenanceConfig,
    /// Uploads untouched this long are deleted (and removed shards leave garbage/).
    pub temp_ttl: std::time::Duration,
}

impl LocalConfig {
    pub fn new(root: PathBuf, listen: SocketAddr) -> Self {
        Self {
            root,
            listen,
            token: None,
            data_servers: TOTAL_SHARDS,
            body_idle_timeout: std::time::Duration::from_secs(60),
            maintenance: MaintenanceConfig::default(),
            temp_ttl: std::time::Duration::from_secs(24 * 3600),
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
    #[error("a cluster needs at least {TOTAL_SHARDS} data servers, not {0}")]
    TooFewDataServers(usize),
}

pub struct LocalCluster {
    api: ApiServer,
    secret: Vec<u8>,
    bus: Arc<MemoryBus>,
    data: Vec<Option<DataServer>>,
    roots: Vec<PathBuf>,
    temp_ttl: std::time::Duration,
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
        let roots: Vec<PathBuf> = (1..=config.data_servers)
            .map(|i| config.root.join(format!("data{i}")))
            .collect();
        let mut data = Vec::new();
        for r in &roots {
            data.push(Some(
                start_data(r.clone(), bus.clone(), &secret, config.temp_ttl).await?,
            ));
        }
        let api_secret = secret.clone();
        let mut api_config = ApiConfig::new(secret.clone());
        api_config.token = config.token.clone();
        api_config.body_idle_timeout = config.body_idle_timeout;
        api_config.maintenance = config.maintenance.clone();
        let api = ApiServer::start(config.listen, api_config, Arc::new(meta), bus.clone())
            .await
            .map_err(LocalError::Api)?;
        Ok(Self {
            api,
            secret: api_secret,
            bus,
            data,
            roots,
            temp_ttl: config.temp_ttl,
        })
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api.addr
    }

    pub fn api_core(&self) -> Arc<Core> {
        self.api.core()
    }

    /// The data servers' storage folders, in order.
    pub fn data_roots(&self) -> Vec<PathBuf> {
        self.roots.clone()
    }

    /// Stops data server `i` (it stops answering and leaves the live set at once).
    pub async fn stop_data_server(&mut self, i: usize) {
        if let Some(ds) = self.data.get_mut(i).and_then(Option::take) {
            ds.shutdown().await;
        }
    }

    /// Starts data server `i` again on its folder.
    pub async fn start_data_server(&mut self, i: usize) -> Result<(), LocalError> {
        if let Some(slot) = self.data.get_mut(i)
            && slot.is_none()
        {
            *slot = Some(
                start_data(
                    self.roots[i].clone(),
                    self.bus.clone(),
                    &self.secret,
                    self.temp_ttl,
                )
                .await?,
            );
        }
        Ok(())
    }

    /// Stops the API server, then every data server.
    pub async fn shutdown(self) {
        self.api.shutdown().await;
        for ds in self.data.into_iter().flatten() {
            ds.shutdown().await;
        }
    }
}

async fn start_data(
    root: PathBuf,
    bus: Arc<MemoryBus>,
    secret: &[u8],
    temp_ttl: std::time::Duration,
) -> Result<DataServer, LocalError> {
    let listen: SocketAddr = ([127, 0, 0, 1], 0).into();
    let mut config = DataServerConfig::new(root, listen);
    config.secret = Some(secret.to_vec());
    config.temp_ttl = temp_ttl;
    Ok(DataServer::start(config, bus).await?)
}
