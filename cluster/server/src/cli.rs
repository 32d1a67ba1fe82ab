use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dos_api_server::{ApiConfig, ApiServer};
use dos_bus::amqp::{AmqpBus, AmqpConfig};
use dos_data_server::{DataServer, DataServerConfig};
use dos_metadata::MetadataStore;
use dos_metadata::elastic::ElasticStore;
use dos_metadata::sqlite::SqliteStore;
use dos_server::local::{LocalCluster, LocalConfig};

/// dos: an erasure-coded, versioned, deduplicating object store.
#[derive(Parser)]
#[command(
    name = "dos-server",
    version,
    about = "dos: an erasure-coded, versioned, deduplicating object store.",
    long_about = None
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster in this process: an API server and six data servers, metadata in
    /// an embedded SQLite database, no services needed.
    Local {
        /// Folder for all data (metadata, secret, data1 … data6). Created if missing.
        #[arg(long, env = "DOS_ROOT", default_value = "./dos-data")]
        root: PathBuf,
        /// Address of the REST API.
        #[arg(long, env = "LISTEN_ADDRESS", default_value = "127.0.0.1:23333")]
        listen: SocketAddr,
        /// Require `Authorization: Bearer TOKEN` on every request.
        #[arg(long, env = "DOS_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Run one API server of a cluster: finds data servers over RabbitMQ, keeps metadata in
    /// Elasticsearch (or, without ES_SERVER, in an embedded database: one API server only).
    Api {
        #[arg(long, env = "LISTEN_ADDRESS", default_value = "127.0.0.1:23333")]
        listen: SocketAddr,
        #[arg(long, env = "RABBITMQ_SERVER", default_value = DEFAULT_AMQP)]
        rabbitmq: String,
        /// Elasticsearch URL, e.g. http://127.0.0.1:9200.
        #[arg(long, env = "ES_SERVER")]
        es_server: Option<String>,
        /// Embedded metadata database, used when no Elasticsearch is given.
        #[arg(long, env = "DOS_METADATA_DB", default_value = "./metadata.sqlite")]
        metadata_db: PathBuf,
        /// Cluster secret (hex) that signs upload tokens; every API server of a cluster must
        /// share it. Without it, the secret is read from (or created in) --secret-file.
        #[arg(long, env = "DOS_SECRET", hide_env_values = true)]
        secret: Option<String>,
        #[arg(long, env = "DOS_SECRET_FILE", default_value = "./dos-secret")]
        secret_file: PathBuf,
        /// Require `Authorization: Bearer TOKEN` on every request.
        #[arg(long, env = "DOS_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Run one data server of a cluster.
    Data {
        #[arg(long, env = "LISTEN_ADDRESS", default_value = "127.0.0.1:23334")]
        listen: SocketAddr,
        /// Folder for this server's shards.
        #[arg(long, env = "STORAGE_ROOT", default_value = "./data")]
        storage_root: PathBuf,
        /// Address announced to API servers (default: the listen address).
        #[arg(long, env = "ADVERTISE_ADDRESS")]
        advertise: Option<String>,
        #[arg(long, env = "RABBITMQ_SERVER", default_value = DEFAULT_AMQP)]
        rabbitmq: String,
        /// Cluster secret (hex): when set, only requests signed by API servers holding the
        /// same secret are served.
        #[arg(long, env = "DOS_SECRET", hide_env_values = true)]
        secret: Option<String>,
    },
    /// Declare the RabbitMQ exchanges and create the Elasticsearch indices (idempotent).
    Setup {
        #[arg(long, env = "RABBITMQ_SERVER", default_value = DEFAULT_AMQP)]
        rabbitmq: String,
        #[arg(long, env = "ES_SERVER")]
        es_server: Option<String>,
    },
}

const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Local {
            root,
            listen,
            token,
        } => {
            let mut config = LocalConfig::new(root.clone(), listen);
            config.token = token.filter(|t| !t.is_empty());
            let cluster = LocalCluster::start(config)
                .await
                .with_context(|| format!("cannot start the local cluster in {}", root.display()))?;
            eprintln!(
                "dos-server: serving http://{} (data in {}); Ctrl-C stops",
                cluster.api_addr(),
                root.display()
            );
            shutdown_signal().await;
            eprintln!("dos-server: shutting down");
            cluster.shutdown().await;
            Ok(())
        }
        Command::Api {
            listen,
            rabbitmq,
            es_server,
            metadata_db,
            secret,
            secret_file,
            token,
        } => {
            let secret = match secret {
                Some(hex_secret) => hex::decode(hex_secret.trim())
                    .ok()
                    .filter(|s| s.len() >= 16)
                    .context("DOS_SECRET must be at least 16 bytes of hex")?,
                None => dos_server::secret::load_or_create(&secret_file)
                    .with_context(|| format!("secret file {}", secret_file.display()))?,
            };
            let meta: Arc<dyn MetadataStore> = match es_server.filter(|s| !s.is_empty()) {
                Some(url) => Arc::new(
                    ElasticStore::connect(&url)
                        .with_context(|| format!("Elasticsearch at {url}"))?,
                ),
                None => {
                    eprintln!(
                        "dos-server: no ES_SERVER: metadata in {} (run only ONE API server this way)",
                        metadata_db.display()
                    );
                    Arc::new(
                        SqliteStore::open(&metadata_db).with_context(|| {
                            format!("metadata database {}", metadata_db.display())
                        })?,
                    )
                }
            };
            let bus = AmqpBus::connect(AmqpConfig::new(rabbitmq.clone()))
                .await
                .context("connecting to RabbitMQ")?;
            let mut config = ApiConfig::new(secret);
            config.token = token.filter(|t| !t.is_empty());
            let api = ApiServer::start(listen, config, meta, Arc::new(bus))
                .await
                .context("starting the API server")?;
            eprintln!("dos-server: API server on http://{}", api.addr);
            shutdown_signal().await;
            api.shutdown().await;
            Ok(())
        }
        Command::Data {
            listen,
            storage_root,
            advertise,
            rabbitmq,
            secret,
        } => {
            let secret = secret
                .map(|s| {
                    hex::decode(s.trim())
                        .ok()
                        .filter(|s| s.len() >= 16)
                        .context("DOS_SECRET must be at least 16 bytes of hex")
                })
                .transpose()?;
            let bus = AmqpBus::connect(AmqpConfig::new(rabbitmq.clone()))
                .await
                .context("connecting to RabbitMQ")?;
            let mut config = DataServerConfig::new(storage_root, listen);
            config.advertise = advertise.filter(|a| !a.is_empty());
            config.secret = secret;
            let ds = DataServer::start(config, Arc::new(bus))
                .await
                .context("starting the data server")?;
            eprintln!(
                "dos-server: data server {} on {} ({})",
                ds.info.id,
                ds.info.addr,
                ds.store.root().display()
            );
            shutdown_signal().await;
            ds.shutdown().await;
            Ok(())
        }
        Command::Setup {
            rabbitmq,
            es_server,
        } => {
            dos_bus::amqp::declare_topology(&rabbitmq)
                .await
                .context("connecting to RabbitMQ")?;
            println!("RabbitMQ: exchanges apiServers and dataServers (fanout, durable) declared");
            match es_server.filter(|s| !s.is_empty()) {
                Some(url) => {
                    let es = ElasticStore::connect(&url)
                        .with_context(|| format!("Elasticsearch at {url}"))?;
                    for line in es.create_indices().await.context("creating indices")? {
                        println!("Elasticsearch: {line}");
                    }
                }
                None => println!("Elasticsearch: ES_SERVER not set, nothing to create"),
            }
            Ok(())
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
