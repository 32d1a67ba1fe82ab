use std::net::SocketAddr;
use std::path::PathBuf;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dos_api_server::maintenance::MaintenanceConfig;
use dos_api_server::{ApiConfig, ApiServer};
use dos_bus::amqp::{AmqpBus, AmqpConfig};
use dos_data_server::{DataServer, DataServerConfig, Interface};
use dos_metadata::MetadataStore;
use dos_metadata::elastic::ElasticStore;
use dos_metadata::sqlite::SqliteStore;
use dos_server::local::{LocalCluster, LocalConfig, ShardPath};
use dos_transport::http::HttpTransport;

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
    #[command(flatten)]
    pub logging: dos_server::LogArgs,
    /// Record no metrics and answer 404 at /metrics (to measure what they cost).
    #[arg(long, global = true, env = "DOS_NO_METRICS")]
    pub no_metrics: bool,
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
        /// The bearer token clients must send (`Authorization: Bearer TOKEN`). Without it,
        /// the token in ROOT/token (created on first start, readable only by its owner).
        #[arg(long, env = "DOS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Serve every request without a token: any local user can then read, change and
        /// delete everything.
        #[arg(long, conflicts_with = "token")]
        no_token: bool,
        /// The token that runs retention and orphan collection over REST [default: the one
        /// in ROOT/admin-token, created on first start, private].
        #[arg(
            long,
            env = "DOS_ADMIN_TOKEN",
            hide_env_values = true,
            conflicts_with = "no_token"
        )]
        admin_token: Option<String>,
        #[command(flatten)]
        maintenance: MaintenanceArgs,
        /// Uploads untouched this long are deleted; shards removed by orphan collection stay
        /// in garbage/ this long.
        #[arg(long, env = "DOS_TEMP_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
        temp_ttl: Duration,
        /// How the API server reaches its six data servers: function calls in this process
        /// (`in-process`), or HTTP on loopback ports, as a cluster of processes does (`http`).
        #[arg(long, env = "DOS_SHARD_PATH", value_enum, default_value_t = ShardPathArg::InProcess)]
        shard_path: ShardPathArg,
        /// How many data servers (ROOT/data1 … dataN; at least six). Raising it on a used
        /// root adds empty servers (`maintain --rebalance` spreads data onto them); with
        /// seven or more, `maintain --drain` can empty one.
        #[arg(long, env = "DOS_DATA_SERVERS", default_value_t = 6, value_parser = clap::value_parser!(u16).range(6..=64))]
        data_servers: u16,
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
        /// The one token that runs retention and orphan collection over REST (without it,
        /// and with --token, they are refused over REST).
        #[arg(long, env = "DOS_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// File holding the admin token (private to its owner).
        #[arg(long, env = "DOS_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
        admin_token_file: Option<PathBuf>,
        #[command(flatten)]
        tls: ServeTlsArgs,
        /// CA certificate (PEM) that signed the data servers' certificates: with it, every
        /// call to a data server is HTTPS and checked against it.
        #[arg(long, env = "DOS_TLS_CA")]
        tls_ca: Option<PathBuf>,
        #[command(flatten)]
        maintenance: MaintenanceArgs,
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
        /// Cluster secret (hex, at least 16 bytes): only requests signed by API servers
        /// holding the same secret are served. Required, unless --secret-file or --insecure.
        #[arg(long, env = "DOS_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// File holding the cluster secret in hex (private to its owner, as an API server's
        /// --secret-file).
        #[arg(long, env = "DOS_SECRET_FILE", conflicts_with = "secret")]
        secret_file: Option<PathBuf>,
        /// Serve every request unsigned: anyone who reaches the port can read, write and
        /// delete shards. For trying things out on a private network only.
        #[arg(long, conflicts_with_all = ["secret", "secret_file"])]
        insecure: bool,
        /// Uploads untouched this long are deleted; shards removed by orphan collection stay
        /// in garbage/ this long.
        #[arg(long, env = "DOS_TEMP_TTL", default_value = "24h", value_parser = humantime::parse_duration)]
        temp_ttl: Duration,
        #[command(flatten)]
        tls: ServeTlsArgs,
    },
    /// Run maintenance jobs now on an API server, showing progress and a summary: retention,
    /// then orphan collection, drain, rebalance and scrub (in that order when several are
    /// asked for). Exits with status 1 if any job reports errors.
    Maintain {
        #[command(flatten)]
        access: ApiAccess,
        /// Verify every object's SHA-256 and every shard; rebuild missing or corrupt shards.
        #[arg(long)]
        scrub: bool,
        /// Keep only the newest N (default 5) versions of every name; the latest is never deleted.
        #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "5")]
        retention: Option<u64>,
        /// Collect data that no version references.
        #[arg(long)]
        orphans: bool,
        /// With --orphans: leave content written or used more recently than this
        /// (default: the server's --orphans-grace). `0s` for tests only.
        #[arg(long, value_parser = humantime::parse_duration)]
        grace: Option<Duration>,
        /// Copy every shard this data server holds (its id, as in its STORAGE_ROOT/server-id,
        /// or the host:port it announces) to live servers holding no shard of the object,
        /// until it holds nothing anyone needs and can be removed. Ctrl-C stops it; running
        /// it again continues.
        #[arg(long, value_name = "SERVER_ID")]
        drain: Option<String>,
        /// Move shards from the fullest data servers to the emptiest (after adding servers)
        /// until every server holds about as many. Ctrl-C stops it; running it again
        /// continues.
        #[arg(long)]
        rebalance: bool,
    },
    /// Show what an API server sees of the cluster (its `/status`, also shown as a page at
    /// `/ui`): live and down data servers, redundancy, maintenance jobs, request rates.
    Status {
        #[command(flatten)]
        access: ApiAccess,
        /// Print the `/status` JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Declare the RabbitMQ exchanges and create the Elasticsearch indices (idempotent).
    Setup {
        #[arg(long, env = "RABBITMQ_SERVER", default_value = DEFAULT_AMQP)]
        rabbitmq: String,
        #[arg(long, env = "ES_SERVER")]
        es_server: Option<String>,
    },
}

/// Serving HTTPS instead of HTTP.
#[derive(clap::Args, Clone, Debug)]
struct ServeTlsArgs {
    /// Serve HTTPS only, with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "DOS_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM, private to its owner); needs --tls-cert.
    #[arg(long, env = "DOS_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl ServeTlsArgs {
    fn config(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(
                dos_server::tls::server_config(cert, key).context("TLS certificate")?,
            )),
            _ => Ok(None),
        }
    }
}

/// The client side of TLS: the CA in `path`, when given.
fn tls_ca(path: Option<&std::path::Path>) -> anyhow::Result<Option<rustls::ClientConfig>> {
    path.map(|p| dos_server::tls::client_config(p).context("TLS CA certificate"))
        .transpose()
}

/// Background maintenance of an API server.
#[derive(clap::Args, Clone, Debug)]
struct MaintenanceArgs {
    /// How often to scrub every object in the background (e.g. 12h, 7d; `off` disables).
    #[arg(long, env = "DOS_SCRUB_EVERY", default_value = "24h", value_parser = parse_every)]
    scrub_every: Every,
    /// How often to collect unreferenced data in the background (`off` disables).
    #[arg(long, env = "DOS_ORPHANS_EVERY", default_value = "6h", value_parser = parse_every)]
    orphans_every: Every,
    /// Content written or used by a dedup write more recently than this is never collected.
    #[arg(long, env = "DOS_ORPHANS_GRACE", default_value = "1h", value_parser = humantime::parse_duration)]
    orphans_grace: Duration,
    /// How often to apply version retention in the background (`off`, the default, keeps
    /// every version).
    #[arg(long, env = "DOS_RETENTION_EVERY", default_value = "off", value_parser = parse_every)]
    retention_every: Every,
    /// Versions of each name kept by background retention.
    #[arg(long, env = "DOS_KEEP_VERSIONS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    keep_versions: u64,
    /// The least grace an orphan collection asked for over REST may give.
    #[arg(long, env = "DOS_MIN_ORPHANS_GRACE", default_value = "10m", value_parser = humantime::parse_duration)]
    min_orphans_grace: Duration,
}

impl MaintenanceArgs {
    fn config(&self) -> MaintenanceConfig {
        MaintenanceConfig {
            scrub_every: self.scrub_every.0,
            orphans_every: self.orphans_every.0,
            orphans_grace: self.orphans_grace,
            retention_every: self.retention_every.0,
            keep_versions: self.keep_versions,
            min_orphans_grace: self.min_orphans_grace,
        }
    }
}

/// An interval, or `off`.
#[derive(Clone, Copy, Debug)]
struct Every(Option<Duration>);

fn parse_every(s: &str) -> Result<Every, String> {
    if s == "off" || s == "never" {
        return Ok(Every(None));
    }
    let d = humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 30m, 6h, 7d or off)"))?;
    if d.is_zero() {
        return Err("an interval must be longer than zero; use `off` to disable".into());
    }
    Ok(Every(Some(d)))
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum ShardPathArg {
    InProcess,
    Http,
}

impl From<ShardPathArg> for ShardPath {
    fn from(a: ShardPathArg) -> Self {
        match a {
            ShardPathArg::InProcess => ShardPath::InProcess,
            ShardPathArg::Http => ShardPath::Http,
        }
    }
}

const DEFAULT_AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let metrics = || -> anyhow::Result<_> {
        Ok(match cli.no_metrics {
            true => None,
            false => Some(dos_server::metrics::install()?),
        })
    };
    match cli.command {
        Command::Local {
            root,
            listen,
            token,
            no_token,
            admin_token,
            maintenance,
            temp_ttl,
            shard_path,
            data_servers,
        } => {
            dos_server::secret::private_dir(&root)
                .with_context(|| format!("creating {}", root.display()))?;
            let token = match token.filter(|t| !t.is_empty()) {
                Some(t) => Some(t),
                None if no_token => {
                    eprintln!(
                        "dos-server: WARNING: --no-token: every user of this machine can read, change and delete all data through {listen}"
                    );
                    None
                }
                None => {
                    let path = root.join("token");
                    let t = dos_server::secret::load_or_create_token(&path)
                        .with_context(|| format!("token file {}", path.display()))?;
                    eprintln!(
                        "dos-server: clients need the bearer token in {} (curl -H \"Authorization: Bearer $(cat {})\")",
                        path.display(),
                        path.display()
                    );
                    Some(t)
                }
            };
            let admin_token = match admin_token.filter(|t| !t.is_empty()) {
                Some(t) => Some(t),
                None if no_token => None,
                None => {
                    let path = root.join("admin-token");
                    Some(
                        dos_server::secret::load_or_create_token(&path)
                            .with_context(|| format!("token file {}", path.display()))?,
                    )
                }
            };
            let mut config = LocalConfig::new(root, listen);
            config.temp_ttl = temp_ttl;
            config.token = token;
            config.admin_token = admin_token;
            config.maintenance = maintenance.config();
            config.shard_path = shard_path.into();
            config.data_servers = usize::from(data_servers);
            config.metrics = metrics()?;
            run_local(config).await
        }
        Command::Api {
            listen,
            rabbitmq,
            es_server,
            metadata_db,
            secret,
            secret_file,
            token,
            admin_token,
            admin_token_file,
            tls,
            tls_ca: ca,
            maintenance,
        } => {
            let secret = match secret {
                Some(hex_secret) => parse_secret(&hex_secret)?,
                None => dos_server::secret::load_or_create(&secret_file)
                    .with_context(|| format!("secret file {}", secret_file.display()))?,
            };
            let meta = metadata_engine(es_server, &metadata_db)?;
            let mut config = ApiConfig::new(secret);
            config.token = token.filter(|t| !t.is_empty());
            config.admin_token = match admin_token_file {
                Some(path) => Some(
                    dos_server::secret::read_private(&path)
                        .with_context(|| format!("admin token file {}", path.display()))?
                        .trim()
                        .to_string(),
                ),
                None => admin_token.filter(|t| !t.is_empty()),
            };
            config.maintenance = maintenance.config();
            config.tls = tls.config()?;
            config.metrics = metrics()?;
            let ca = tls_ca(ca.as_deref())?;
            run_api(listen, config, meta, &rabbitmq, ca).await
        }
        Command::Data {
            listen,
            storage_root,
            advertise,
            rabbitmq,
            secret,
            secret_file,
            insecure,
            temp_ttl,
            tls,
        } => {
            let secret = match (secret.filter(|s| !s.is_empty()), secret_file) {
                (Some(hex_secret), _) => Some(parse_secret(&hex_secret)?),
                (None, Some(path)) => Some(
                    dos_server::secret::load_existing(&path)
                        .with_context(|| format!("secret file {}", path.display()))?,
                ),
                (None, None) if insecure => {
                    eprintln!(
                        "dos-server: WARNING: --insecure: this data server serves every request unsigned; anyone who reaches {listen} can read, overwrite and delete its shards"
                    );
                    None
                }
                (None, None) => anyhow::bail!(
                    "a data server needs the cluster secret of its API servers: DOS_SECRET (hex, at least 16 bytes) or --secret-file; --insecure serves every request unsigned"
                ),
            };
            dos_server::secret::private_dir(&storage_root)
                .with_context(|| format!("creating {}", storage_root.display()))?;
            let mut config = DataServerConfig::new(storage_root, Interface::Http(listen));
            config.advertise = advertise.filter(|a| !a.is_empty());
            config.secret = secret;
            config.temp_ttl = temp_ttl;
            config.tls = tls.config()?;
            config.metrics = metrics()?;
            run_data(config, &rabbitmq).await
        }
        Command::Maintain {
            access,
            scrub,
            retention,
            orphans,
            grace,
            drain,
            rebalance,
        } => {
            let (api, client) = access.open()?;
            let jobs = MaintainJobs {
                scrub,
                retention,
                orphans,
                grace,
                drain,
                rebalance,
            };
            run_maintain(&api, client, jobs).await
        }
        Command::Status { access, json } => {
            let (api, client) = access.open()?;
            run_status(&api, client, json).await
        }
        Command::Setup {
            rabbitmq,
            es_server,
        } => run_setup(&rabbitmq, es_server).await,
    }
}

/// How a command reaches an API server: its URL, its bearer token (given or in a file) and
/// the CA to trust for https.
#[derive(clap::Args, Debug)]
struct ApiAccess {
    /// The API server.
    #[arg(long, env = "DOS_API", default_value = "http://127.0.0.1:23333")]
    api: String,
    /// Bearer token of the API server, if it requires one.
    #[arg(long, env = "DOS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// File holding the bearer token (`ROOT/token` of `dos-server local`).
    #[arg(long, env = "DOS_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an https:// API server (default: the system's).
    #[arg(long, env = "DOS_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

impl ApiAccess {
    /// The URL, and a client of it with the token (read from its file when one is named)
    /// and the TLS configuration.
    fn open(self) -> anyhow::Result<(String, dos_client::Client)> {
        let token = match self.token_file {
            Some(path) => Some(
                dos_server::secret::read_private(&path)
                    .with_context(|| format!("token file {}", path.display()))?
                    .trim()
                    .to_string(),
            ),
            None => self.token,
        };
        let mut builder = dos_client::Client::builder(self.api.clone());
        if let Some(t) = token.filter(|t| !t.is_empty()) {
            builder = builder.token(t);
        }
        if let Some(tls) = tls_ca(self.tls_ca.as_deref())? {
            builder = builder.tls(tls);
        }
        let client = builder.build().context("API server address")?;
        Ok((self.api, client))
    }
}

/// The cluster secret given as hex: at least 16 bytes.
fn parse_secret(hex_secret: &str) -> anyhow::Result<Vec<u8>> {
    dos_server::secret::parse_hex(hex_secret).context("DOS_SECRET")
}

/// Elasticsearch when a URL is given, else the embedded SQLite database (one API server).
fn metadata_engine(
    es_server: Option<String>,
    metadata_db: &std::path::Path,
) -> anyhow::Result<Arc<dyn MetadataStore>> {
    match es_server.filter(|s| !s.is_empty()) {
        Some(url) => Ok(Arc::new(
            ElasticStore::connect(&url).with_context(|| format!("Elasticsearch at {url}"))?,
        )),
        None => {
            eprintln!(
                "dos-server: no ES_SERVER: metadata in {} (run only ONE API server this way)",
                metadata_db.display()
            );
            Ok(Arc::new(SqliteStore::open(metadata_db).with_context(
                || format!("metadata database {}", metadata_db.display()),
            )?))
        }
    }
}

async fn run_local(config: LocalConfig) -> anyhow::Result<()> {
    let root = config.root.clone();
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

async fn run_api(
    listen: SocketAddr,
    config: ApiConfig,
    meta: Arc<dyn MetadataStore>,
    rabbitmq: &str,
    data_tls: Option<rustls::ClientConfig>,
) -> anyhow::Result<()> {
    let mut bus_config = AmqpConfig::new(rabbitmq.to_string());
    bus_config.secret = Some(config.secret.clone());
    let bus = AmqpBus::connect(bus_config)
        .await
        .context("connecting to RabbitMQ")?;
    let shards = HttpTransport::with_tls(Duration::from_secs(5), Some(&config.secret), data_tls)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let api = ApiServer::start(listen, config, meta, Arc::new(bus), Arc::new(shards))
        .await
        .context("starting the API server")?;
    eprintln!("dos-server: API server on {scheme}://{}", api.addr);
    shutdown_signal().await;
    api.shutdown().await;
    Ok(())
}

async fn run_data(config: DataServerConfig, rabbitmq: &str) -> anyhow::Result<()> {
    let mut bus_config = AmqpConfig::new(rabbitmq.to_string());
    bus_config.secret = config.secret.clone();
    let bus = AmqpBus::connect(bus_config)
        .await
        .context("connecting to RabbitMQ")?;
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

/// What `dos-server maintain` was asked to run.
struct MaintainJobs {
    scrub: bool,
    retention: Option<u64>,
    orphans: bool,
    grace: Option<Duration>,
    drain: Option<String>,
    rebalance: bool,
}

/// `dos-server status`: one `/status` of `api`, printed.
async fn run_status(api: &str, client: dos_client::Client, json: bool) -> anyhow::Result<()> {
    let status = client
        .status(Duration::from_secs(10))
        .await
        .with_context(|| format!("status of {api}"))?;
    if json {
        println!("{status:#}");
    } else {
        print!("{}", dos_server::status::table(&status));
    }
    Ok(())
}

async fn run_maintain(
    api: &str,
    client: dos_client::Client,
    jobs: MaintainJobs,
) -> anyhow::Result<()> {
    let MaintainJobs {
        scrub,
        retention,
        orphans,
        grace,
        drain,
        rebalance,
    } = jobs;
    let drain = drain.map(|d| d.trim().to_string());
    if !scrub && retention.is_none() && !orphans && drain.is_none() && !rebalance {
        anyhow::bail!(
            "nothing to do: give --scrub, --retention [N], --orphans, --drain SERVER_ID and/or --rebalance"
        );
    }
    if retention == Some(0) {
        anyhow::bail!("--retention must keep at least 1 version");
    }
    if drain.as_deref() == Some("") {
        anyhow::bail!("--drain needs the id of a data server (its STORAGE_ROOT/server-id)");
    }
    let mut failed = false;
    if let Some(keep) = retention {
        failed |= run_job(&client, api, "retention", Some(keep), None).await?;
    }
    if orphans {
        failed |= run_job(&client, api, "orphans", None, grace).await?;
    }
    if let Some(server) = drain {
        // The server rides in the job's path segment: `POST /maintenance/drain:ID`.
        failed |= run_job(&client, api, &format!("drain:{server}"), None, None).await?;
    }
    if rebalance {
        failed |= run_job(&client, api, "rebalance", None, None).await?;
    }
    if scrub {
        failed |= run_job(&client, api, "scrub", None, None).await?;
    }
    if failed {
        anyhow::bail!("maintenance finished with errors (listed above)");
    }
    Ok(())
}

async fn run_setup(rabbitmq: &str, es_server: Option<String>) -> anyhow::Result<()> {
    dos_bus::amqp::declare_topology(rabbitmq)
        .await
        .context("connecting to RabbitMQ")?;
    println!("RabbitMQ: exchanges apiServers and dataServers (fanout, durable) declared");
    match es_server.filter(|s| !s.is_empty()) {
        Some(url) => {
            let es =
                ElasticStore::connect(&url).with_context(|| format!("Elasticsearch at {url}"))?;
            for line in es.create_indices().await.context("creating indices")? {
                println!("Elasticsearch: {line}");
            }
        }
        None => println!("Elasticsearch: ES_SERVER not set, nothing to create"),
    }
    Ok(())
}

/// Runs one job, printing its progress on stderr (a bar when stderr is a terminal, a line a
/// second otherwise) and its summary on stdout. `Ok(true)` when the job reported errors.
/// Ctrl-C stops watching: a drain or rebalance stops with it (the server notices the closed
/// connection), the other jobs go on on the server.
async fn run_job(
    client: &dos_client::Client,
    api: &str,
    job: &str,
    keep: Option<u64>,
    grace: Option<Duration>,
) -> anyhow::Result<bool> {
    use futures::TryStreamExt as _;
    use std::io::IsTerminal as _;
    let name = job.replacen(':', " of ", 1);
    let stops_with_us = job.starts_with("drain:") || job == "rebalance";
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        bar.set_style(spinner_style());
        bar.set_prefix(name.clone());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    });
    let mut reports = client
        .maintenance(job, keep, grace)
        .await
        .with_context(|| format!("starting {name} on {api}"))?;
    let mut last = None;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = tokio::select! {
            next = reports.try_next() => next,
            _ = &mut ctrl_c => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                drop(reports);
                if stops_with_us {
                    anyhow::bail!(
                        "{name} stopped (Ctrl-C); what was moved stays moved: run the same command again to continue"
                    );
                }
                anyhow::bail!("stopped watching (Ctrl-C); {name} goes on on {api}");
            }
        };
        let Some(report) = next
            .with_context(|| format!("{name} on {api}: lost the connection (the job goes on)"))?
        else {
            break;
        };
        if report["done"] != serde_json::Value::Bool(true) {
            show_progress(bar.as_ref(), &name, &report);
        }
        last = Some(report);
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let report = last.context("the API server sent no report")?;
    if report["done"] != serde_json::Value::Bool(true) {
        anyhow::bail!(
            "{name} on {api} ended without its last report (see the API server's log); last counts: {}",
            counts_line(&report)
        );
    }
    let secs = report["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
    println!("{name} finished in {secs:.1} s: {}", counts_line(&report));
    if let Some(rate) = report["mib_per_sec"].as_f64() {
        println!("  {rate:.1} MiB/s of shard bytes moved");
    }
    if let Some(verdict) = report["verdict"].as_str() {
        println!("  {verdict}");
    }
    let errors: Vec<&str> = report["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e.as_str()).collect())
        .unwrap_or_default();
    for e in &errors {
        println!("  error: {e}");
    }
    Ok(!errors.is_empty())
}

/// A spinner with the job's name and counts, until its work is known.
fn spinner_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {prefix}: {wide_msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

/// A bar of the work done (counted in `unit`s), with throughput or counts and time left.
fn bar_style(unit: &str) -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(&format!(
        "{{prefix}} [{{bar:30}}] {{pos}}/{{len}} {unit}, {{eta}} left, {{wide_msg}}"
    ))
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
}

/// One progress report: on the bar when there is one, else as a line on stderr.
fn show_progress(bar: Option<&indicatif::ProgressBar>, name: &str, report: &serde_json::Value) {
    let work = report["work"]["total"]
        .as_u64()
        .zip(report["work"]["finished"].as_u64());
    let unit = report["work"]["unit"].as_str().unwrap_or("shards");
    let rate = report["mib_per_sec"]
        .as_f64()
        .map(|r| format!("{r:.1} MiB/s"));
    match bar {
        Some(bar) => {
            if let Some((total, finished)) = work {
                if bar.length().is_none() {
                    bar.set_style(bar_style(unit));
                }
                bar.set_length(total);
                bar.set_position(finished);
                bar.set_message(rate.unwrap_or_else(|| counts_line(report)));
            } else {
                bar.set_message(counts_line(report));
            }
        }
        None => {
            let mut line = format!("{name}: ");
            if let Some((total, finished)) = work {
                line.push_str(&format!("{finished}/{total} {unit}, "));
            }
            if let Some(rate) = rate {
                line.push_str(&format!("{rate}, "));
            }
            line.push_str(&counts_line(report));
            eprintln!("{line}");
        }
    }
}

/// `name value, name value …` of a report's counts.
fn counts_line(report: &serde_json::Value) -> String {
    let counts: Vec<String> = report["counts"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{} {v}", k.replace('_', " ")))
                .collect()
        })
        .unwrap_or_default();
    if counts.is_empty() {
        "nothing yet".into()
    } else {
        counts.join(", ")
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
