//! The context every request and job shares: the three engines (metadata, bus, shard
//! transport), the codec, the configuration, the handle of the repair queue and what this
//! API server has learnt of its data servers (answer times, servers being drained). It is plain
//! data: no background work lives in it (the workers belong to the server's supervisor).

use std::sync::Arc;
use std::time::Duration;

use dos_bus::Bus;
use dos_erasure::Codec;
use dos_metadata::MetadataStore;
use dos_transport::ShardTransport;

use crate::maintenance::MaintenanceConfig;
use crate::repair::RepairQueue;

#[derive(Clone)]
pub struct ApiConfig {
    /// Key that signs resumable-upload tokens; every API server of a cluster shares it.
    pub secret: Vec<u8>,
    /// When set, every request needs `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// When set, the only token that runs destructive maintenance (retention, orphan
    /// collection) over REST; it also serves every other request. With a data token but no
    /// admin token, destructive maintenance is refused over REST.
    pub admin_token: Option<String>,
    /// How long a resumable upload token stays valid.
    pub upload_ttl: Duration,
    /// How long a locate broadcast waits for answers.
    pub locate_timeout: Duration,
    /// Requests served at once (their bodies included) before new ones get 503.
    pub max_in_flight: usize,
    /// A request body that sends nothing for this long is cut off (408); what it had sent
    /// stays in temp uploads, which expire.
    pub body_idle_timeout: Duration,
    /// How slowly a request body may arrive on average (past a grace period); slower is
    /// cut off (408).
    pub body_pace: crate::pipeline::write::BodyPace,
    /// A shard stream that delivers nothing for this long is given up and replaced by
    /// another shard (a data server that hangs cannot stall a read for longer).
    pub shard_stall_timeout: Duration,
    /// Creating, committing or abandoning a shard upload that takes longer fails (the
    /// commit of a large shard fsyncs it, so this is generous).
    pub shard_call_timeout: Duration,
    /// Background scrub, retention and orphan collection.
    pub maintenance: MaintenanceConfig,
    /// Connections at once and the request head deadline of the REST listener.
    pub conn_limits: dos_worker::http::ConnLimits,
    /// When set, the REST listener speaks only TLS with this certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// This process's metrics, served at `/metrics` (404 without).
    pub metrics: Option<dos_worker::http::Metrics>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("secret", &"<set>")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("admin_token", &self.admin_token.as_ref().map(|_| "<set>"))
            .field("upload_ttl", &self.upload_ttl)
            .field("locate_timeout", &self.locate_timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("body_idle_timeout", &self.body_idle_timeout)
            .field("body_pace", &self.body_pace)
            .field("shard_stall_timeout", &self.shard_stall_timeout)
            .field("shard_call_timeout", &self.shard_call_timeout)
            .field("maintenance", &self.maintenance)
            .field("conn_limits", &self.conn_limits)
            .field("tls", &self.tls.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl ApiConfig {
    pub fn new(secret: Vec<u8>) -> Self {
        Self {
            secret,
            token: None,
            admin_token: None,
            upload_ttl: Duration::from_secs(24 * 3600),
            locate_timeout: Duration::from_millis(500),
            max_in_flight: 1024,
            body_idle_timeout: Duration::from_secs(60),
            body_pace: Default::default(),
            shard_stall_timeout: Duration::from_secs(10),
            shard_call_timeout: Duration::from_secs(120),
            maintenance: MaintenanceConfig::default(),
            conn_limits: Default::default(),
            tls: None,
            metrics: None,
        }
    }
}

pub struct Core {
    pub meta: Arc<dyn MetadataStore>,
    pub bus: Arc<dyn Bus>,
    pub shards: Arc<dyn ShardTransport>,
    pub codec: Codec,
    pub config: ApiConfig,
    /// Where reads that met a bad shard ask for a repair.
    pub repairs: RepairQueue,
    /// Block hashes of streamed uploads waiting for the request that finishes them.
    pub received: crate::resumable::ReceivedBlocks,
    /// Answer times and suspects among the data servers (see `health`).
    pub health: Arc<crate::health::ServerHealth>,
    /// Data servers being drained (see `moves`): they take new shards only when six others
    /// are not live.
    pub draining: crate::moves::Draining,
}
