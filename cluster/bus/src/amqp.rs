//! The RabbitMQ engine of the [`Bus`] (`lapin`).
//!
//! Topology: three durable fanout exchanges, `apiServers` (data servers publish heartbeats, API
//! servers listen), `dataServers` (API servers broadcast locate requests, data servers
//! answer) and `dosChanges` (API servers publish every change they make; API servers relay
//! them to the mounts that follow them). Every listener consumes through its own exclusive,
//! auto-delete, server-named queue.
//!
//! One [`AmqpBus`] holds **one** connection with two long-lived channels:
//! - the *publish* channel carries every publish (heartbeats, locate broadcasts, locate
//!   answers) and the consumer of RabbitMQ's direct reply-to pseudo-queue
//!   (`amq.rabbitmq.reply-to`). Direct reply-to requires the asker to publish on the very
//!   channel that consumes it, in no-ack mode, and that consumer must exist before the first
//!   request goes out: it is started when the connection is (re)established, before the bus
//!   is handed out, so no queue is declared per locate;
//! - the *subscribe* channel carries the heartbeat consumer and one consumer per active locate
//!   responder.
//!
//! A supervisor task watches the connection (consumer streams ending, connection events, a
//! periodic status check). When it drops it reconnects with an exponential backoff
//! ([`AmqpConfig::reconnect_min`] doubling to [`AmqpConfig::reconnect_max`]), re-declares the
//! exchanges, restarts the reply and heartbeat consumers and re-subscribes every responder
//! that is still wanted. While disconnected, publishing fails at once with
//! [`BusError::Unavailable`]; every broker operation is bounded by a timeout.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use async_trait::async_trait;
use dos_protocol::{Change, ContentHash, LocateReply, ServerId, ServerInfo};

use crate::seal::{Sealer, is_host_port};
use dos_worker::{Supervisor, Worker, WorkerError};
use futures::StreamExt;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, Consumer, Event, ExchangeKind,
};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, info, warn};

use crate::{Bus, BusError, HEARTBEAT_EXPIRY, LiveSet, LocateResponder, Subscription};

/// Exchange the data servers' heartbeats go to.
pub const API_EXCHANGE: &str = "apiServers";
/// Exchange the locate broadcasts go to.
pub const DATA_EXCHANGE: &str = "dataServers";
/// Exchange the changes API servers make go to.
pub const CHANGES_EXCHANGE: &str = "dosChanges";
/// RabbitMQ's direct reply-to pseudo-queue.
pub const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// Broker of a default local installation.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

const JSON: &str = "application/json";
/// What sealed messages are for (see [`crate::seal`]).
const HEARTBEAT: &str = "heartbeat";
const LOCATE: &str = "locate";
const REPLY: &str = "reply";
const CHANGE: &str = "change";
/// How often the supervisor double-checks that the connection and channels are still open.
const HEALTH_CHECK: Duration = Duration::from_secs(1);

/// How to reach the broker and how patient to be with it.
#[derive(Clone)]
pub struct AmqpConfig {
    /// `amqp://user:password@host:port/vhost` (vhost `/` is written `%2f`).
    pub url: String,
    /// A data server silent for this long leaves [`Bus::live_servers`].
    pub heartbeat_expiry: Duration,
    /// Name of the heartbeat exchange (default `apiServers`).
    pub api_exchange: String,
    /// Name of the locate exchange (default `dataServers`).
    pub data_exchange: String,
    /// Name of the changes exchange (default `dosChanges`).
    pub changes_exchange: String,
    /// Bound on establishing the TCP + AMQP connection.
    pub connect_timeout: Duration,
    /// Bound on every other broker operation (declare, consume, publish).
    pub op_timeout: Duration,
    /// First delay before reconnecting; doubles after each failed attempt...
    pub reconnect_min: Duration,
    /// ...up to this.
    pub reconnect_max: Duration,
    /// AMQP heartbeat in seconds, used when `url` does not set `?heartbeat=`; detects a dead
    /// peer on a silent TCP connection.
    pub amqp_heartbeat_secs: u16,
    /// The cluster secret: every message sent is sealed with it and every message received
    /// must be (see [`crate::seal`]); `None` sends and accepts unsigned messages.
    pub secret: Option<Vec<u8>>,
}

impl AmqpConfig {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            heartbeat_expiry: HEARTBEAT_EXPIRY,
            api_exchange: API_EXCHANGE.into(),
            data_exchange: DATA_EXCHANGE.into(),
            changes_exchange: CHANGES_EXCHANGE.into(),
            connect_timeout: Duration::from_secs(5),
            op_timeout: Duration::from_secs(5),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            amqp_heartbeat_secs: 10,
            secret: None,
        }
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self::new(DEFAULT_URL)
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact(&self.url))
            .field("heartbeat_expiry", &self.heartbeat_expiry)
            .field("api_exchange", &self.api_exchange)
            .field("data_exchange", &self.data_exchange)
            .field("changes_exchange", &self.changes_exchange)
            .field("connect_timeout", &self.connect_timeout)
            .field("op_timeout", &self.op_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .field("amqp_heartbeat_secs", &self.amqp_heartbeat_secs)
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// The URL with its password replaced by `***`, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

/// Declares the two durable fanout exchanges (idempotent), for `dos-server setup`.
pub async fn declare_topology(url: &str) -> Result<(), BusError> {
    declare_topology_with(&AmqpConfig::new(url)).await
}

/// [`declare_topology`] with the exchange names and timeouts of `config`.
pub async fn declare_topology_with(config: &AmqpConfig) -> Result<(), BusError> {
    let uri = parse_uri(config)?;
    let conn = connect_raw(config, &uri)
        .await
        .map_err(|e| unreachable_broker(config, &e))?;
    let result = timeout(config.op_timeout, declare_exchanges(&conn, config))
        .await
        .unwrap_or_else(|_| Err("timed out declaring exchanges".into()));
    let _ = timeout(config.op_timeout, conn.close(200, "OK".into())).await;
    result.map_err(|e| BusError::Unavailable(format!("RabbitMQ at {}: {e}", redact(&config.url))))
}

/// The RabbitMQ [`Bus`]. Cheap to clone; the connection closes when the last clone drops.
#[derive(Clone)]
pub struct AmqpBus {
    shared: Arc<Shared>,
    _stop: Arc<DropGuard>,
}

struct Shared {
    config: AmqpConfig,
    uri: AMQPUri,
    live: LiveSet,
    /// Seals what is sent and checks what arrives.
    sealer: Sealer,
    session: Mutex<Option<Arc<Session>>>,
    /// Locates waiting for replies, by correlation id.
    pending: Mutex<HashMap<String, mpsc::UnboundedSender<LocateReply>>>,
    /// Active locate responders, re-subscribed after each reconnection.
    responders: Mutex<HashMap<u64, Arc<ResponderEntry>>>,
    next_responder: AtomicU64,
    generation: AtomicU64,
    /// Heartbeats dropped for an address that is not `host:port`.
    bad_addresses: AtomicU64,
    /// Changes heard on the changes exchange, for this process's subscribers.
    changes: tokio::sync::broadcast::Sender<crate::ChangeEvent>,
    shutdown: CancellationToken,
    /// Owns the connection keeper and every consumer (their tokens are children of
    /// `shutdown`).
    workers: Supervisor,
}

/// One established connection and what hangs off it.
struct Session {
    generation: u64,
    conn: Connection,
    publish: Channel,
    subscribe: Channel,
    /// Cancelled when this connection is found broken or the bus shuts down.
    dead: CancellationToken,
    /// Set by the first [`Session::fail`], so a lost connection is logged once.
    failed: AtomicBool,
}

struct ResponderEntry {
    server: ServerInfo,
    responder: Arc<dyn LocateResponder>,
    /// Cancelled when the [`Subscription`] drops.
    cancel: CancellationToken,
    /// Generation of the session this responder is consuming on (0: none yet).
    subscribed: tokio::sync::Mutex<u64>,
}

impl Session {
    fn fail(&self, why: &str) {
        if !self.dead.is_cancelled() && !self.failed.swap(true, Ordering::SeqCst) {
            warn!(
                generation = self.generation,
                "RabbitMQ connection lost: {why}"
            );
            self.dead.cancel();
        }
    }

    fn healthy(&self) -> bool {
        self.conn.status().connected()
            && self.publish.status().connected()
            && self.subscribe.status().connected()
    }
}

impl AmqpBus {
    /// Connects to the broker, declares the exchanges and starts listening for heartbeats.
    /// Fails at once if the broker cannot be reached; later outages are survived.
    pub async fn connect(config: AmqpConfig) -> Result<AmqpBus, BusError> {
        let uri = parse_uri(&config)?;
        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            live: LiveSet::new(config.heartbeat_expiry),
            sealer: Sealer::new(config.secret.clone()),
            config,
            uri,
            session: Mutex::new(None),
            pending: Mutex::default(),
            responders: Mutex::default(),
            next_responder: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            bad_addresses: AtomicU64::new(0),
            changes: tokio::sync::broadcast::channel(crate::CHANGE_BACKLOG).0,
            shutdown: shutdown.clone(),
            workers: Supervisor::with_token(shutdown.clone()),
        });
        let session = open_session(&shared)
            .await
            .map_err(|e| unreachable_broker(&shared.config, &e))?;
        info!(
            url = %redact(&shared.config.url),
            "connected to RabbitMQ"
        );
        shared.set_session(Some(session));
        metrics::counter!(crate::RECONNECTS_METRIC).increment(0);
        shared
            .workers
            .spawn(Arc::new(ConnectionKeeper(Arc::downgrade(&shared))));
        Ok(AmqpBus {
            shared,
            _stop: Arc::new(shutdown.drop_guard()),
        })
    }

    /// The API-side view of live data servers (shared, cheap to clone).
    pub fn live_set(&self) -> &LiveSet {
        &self.shared.live
    }

    /// Whether the bus currently has an open connection to the broker.
    pub fn is_connected(&self) -> bool {
        self.shared.current().is_ok()
    }

    /// Publishes `message` as JSON, sealed for `purpose`, to fanout `exchange`.
    async fn publish_sealed<T: serde::Serialize + Sync>(
        &self,
        exchange: &str,
        purpose: &str,
        message: &T,
    ) -> Result<(), BusError> {
        let session = self.shared.current()?;
        let body = serde_json::to_vec(message)
            .map_err(|e| BusError::Unavailable(format!("cannot encode a {purpose}: {e}")))?;
        let body = self.shared.sealer.seal(purpose, &body);
        let props = BasicProperties::default().with_content_type(JSON.into());
        let deadline = Instant::now() + self.shared.config.op_timeout;
        self.shared
            .publish(&session, exchange, "", &body, props, deadline)
            .await
    }

    /// Messages dropped because they were unsigned, forged, stale, replayed or named an
    /// address that is not `host:port`.
    pub fn rejected_messages(&self) -> u64 {
        self.shared.sealer.rejected() + self.shared.bad_addresses.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Bus for AmqpBus {
    async fn announce(
        &self,
        server: &ServerInfo,
        draining: bool,
        stats: Option<dos_protocol::ServerStats>,
    ) -> Result<(), BusError> {
        let exchange = &self.shared.config.api_exchange;
        let beat = Heartbeat {
            server: server.clone(),
            draining,
            stats,
        };
        self.publish_sealed(exchange, HEARTBEAT, &beat).await
    }

    async fn serve_locate(
        &self,
        server: ServerInfo,
        responder: Arc<dyn LocateResponder>,
    ) -> Result<Subscription, BusError> {
        let id = self.shared.next_responder.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ResponderEntry {
            server,
            responder,
            cancel: CancellationToken::new(),
            subscribed: tokio::sync::Mutex::new(0),
        });
        // Registered before looking at the session: either this call or the supervisor's
        // re-subscription after a reconnect sees it.
        self.shared
            .responders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, entry.clone());
        let subscription = {
            let weak: Weak<Shared> = Arc::downgrade(&self.shared);
            let cancel = entry.cancel.clone();
            Subscription::new(move || {
                cancel.cancel();
                if let Some(shared) = weak.upgrade() {
                    shared
                        .responders
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .remove(&id);
                }
            })
        };
        match self.shared.current() {
            Ok(session) => {
                if let Err(e) = self.shared.ensure_subscribed(&session, &entry).await {
                    // Dropping the subscription unregisters the responder.
                    drop(subscription);
                    return Err(e);
                }
            }
            Err(_) => warn!(
                server = %entry.server.id,
                "RabbitMQ unavailable: locate responder will start once reconnected"
            ),
        }
        Ok(subscription)
    }

    fn live_servers(&self) -> Vec<ServerInfo> {
        self.shared.live.live()
    }

    fn draining_servers(&self) -> Vec<ServerId> {
        self.shared.live.draining()
    }

    fn server_stats(&self) -> Vec<(ServerId, dos_protocol::ServerStats)> {
        self.shared.live.stats()
    }

    async fn locate(
        &self,
        hash: &ContentHash,
        timeout: Duration,
    ) -> Result<Vec<LocateReply>, BusError> {
        let deadline = Instant::now() + timeout;
        let session = self.shared.current()?;
        let correlation = uuid::Uuid::new_v4().simple().to_string();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let _pending = PendingGuard::register(&self.shared, correlation.clone(), tx);

        let body = serde_json::to_vec(hash)
            .map_err(|e| BusError::Unavailable(format!("cannot encode locate: {e}")))?;
        let body = self
            .shared
            .sealer
            .seal(&format!("{LOCATE} {correlation}"), &body);
        let props = BasicProperties::default()
            .with_content_type(JSON.into())
            .with_reply_to(DIRECT_REPLY_TO.into())
            .with_correlation_id(correlation.as_str().into());
        let publish_deadline = deadline.min(Instant::now() + self.shared.config.op_timeout);
        self.shared
            .publish(
                &session,
                &self.shared.config.data_exchange,
                "",
                &body,
                props,
                publish_deadline,
            )
            .await?;

        let mut answered = HashSet::new();
        let mut found = Vec::new();
        loop {
            let reply = tokio::select! {
                reply = timeout_at(deadline, rx.recv()) => match reply {
                    Ok(Some(reply)) => reply,
                    _ => break,
                },
                // The replies would come on the lost connection's reply consumer: give up
                // rather than report "nobody holds it" after waiting out the timeout.
                _ = session.dead.cancelled() => {
                    return Err(BusError::Unavailable(
                        "RabbitMQ connection lost during locate".into(),
                    ));
                }
            };
            // Only live servers are believed, at the address their heartbeats give.
            let Some(server) = self
                .shared
                .live
                .live()
                .into_iter()
                .find(|s| s.id == reply.server.id)
            else {
                debug!(server = %reply.server.id, "locate reply from a server not live dropped");
                continue;
            };
            let reply = LocateReply { server, ..reply };
            if !answered.insert(reply.server.id.clone()) {
                continue;
            }
            if !reply.shards.is_empty() {
                found.push(reply);
            }
            let live = self.shared.live.live();
            if !live.is_empty() && live.iter().all(|s| answered.contains(&s.id)) {
                break;
            }
        }
        debug!(
            hash = %hash,
            answered = answered.len(),
            holders = found.len(),
            "locate done"
        );
        Ok(found)
    }

    async fn publish_change(&self, change: &Change) -> Result<(), BusError> {
        let exchange = &self.shared.config.changes_exchange;
        self.publish_sealed(exchange, CHANGE, change).await
    }

    fn changes(&self) -> crate::ChangeStream {
        crate::change_stream(self.shared.changes.subscribe())
    }
}

/// Removes a locate's entry from the reply map however the locate ends.
struct PendingGuard<'a> {
    shared: &'a Shared,
    correlation: String,
}

impl<'a> PendingGuard<'a> {
    fn register(
        shared: &'a Shared,
        correlation: String,
        tx: mpsc::UnboundedSender<LocateReply>,
    ) -> Self {
        shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(correlation.clone(), tx);
        Self {
            shared,
            correlation,
        }
    }
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.correlation);
    }
}

impl Shared {
    fn set_session(&self, session: Option<Arc<Session>>) {
        *self.session.lock().unwrap_or_else(PoisonError::into_inner) = session;
    }

    fn current(&self) -> Result<Arc<Session>, BusError> {
        let session = self
            .session
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        match session {
            Some(s) if !s.dead.is_cancelled() => Ok(s),
            _ => Err(BusError::Unavailable(format!(
                "not connected to RabbitMQ at {} (reconnecting)",
                redact(&self.config.url)
            ))),
        }
    }

    async fn publish(
        &self,
        session: &Session,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
        deadline: Instant,
    ) -> Result<(), BusError> {
        let exchange = ShortString::try_new(exchange)
            .map_err(|e| BusError::Unavailable(format!("bad exchange name: {e}")))?;
        let routing_key = ShortString::try_new(routing_key)
            .map_err(|e| BusError::Unavailable(format!("bad routing key: {e}")))?;
        let publish = async {
            session
                .publish
                .basic_publish(
                    exchange,
                    routing_key,
                    BasicPublishOptions::default(),
                    body,
                    props,
                )
                .await?
                .await
        };
        match timeout_at(deadline, publish).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => {
                session.fail(&format!("publish failed: {e}"));
                Err(BusError::Unavailable(format!("publish to RabbitMQ: {e}")))
            }
            // Not a reason to reconnect on its own (the broker may be applying flow control);
            // a really dead connection is caught by the supervisor.
            Err(_) => Err(BusError::Unavailable(
                "publish to RabbitMQ timed out".into(),
            )),
        }
    }

    /// Starts `entry`'s consumer on `session` unless it already runs there.
    async fn ensure_subscribed(
        self: &Arc<Self>,
        session: &Arc<Session>,
        entry: &Arc<ResponderEntry>,
    ) -> Result<(), BusError> {
        let mut subscribed = entry.subscribed.lock().await;
        if *subscribed == session.generation || entry.cancel.is_cancelled() {
            return Ok(());
        }
        let consumer = timeout(
            self.config.op_timeout,
            consume_fanout(&session.subscribe, &self.config.data_exchange),
        )
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
        .map_err(|e| {
            session.fail(&format!("cannot subscribe locate responder: {e}"));
            BusError::Unavailable(format!("cannot subscribe to locate broadcasts: {e}"))
        })?;
        *subscribed = session.generation;
        debug!(
            server = %entry.server.id,
            generation = session.generation,
            "locate responder subscribed"
        );
        let (shared, session, entry) = (self.clone(), session.clone(), entry.clone());
        self.workers
            .spawn_once("rabbitmq locate responder", move |_| {
                run_responder(shared, session, entry, consumer)
            });
        Ok(())
    }

    fn dispatch_reply(&self, delivery: &lapin::message::Delivery) {
        let Some(correlation) = delivery.properties.correlation_id().as_ref() else {
            warn!("locate reply without correlation id dropped");
            return;
        };
        let data = match self
            .sealer
            .open_bound(&format!("{REPLY} {}", correlation.as_str()), &delivery.data)
        {
            Ok(d) => d,
            Err(why) => {
                warn!("locate reply dropped: {why}");
                return;
            }
        };
        let reply: LocateReply = match serde_json::from_slice(data) {
            Ok(r) => r,
            Err(e) => {
                warn!("malformed locate reply dropped: {e}");
                return;
            }
        };
        let pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        match pending.get(correlation.as_str()) {
            Some(tx) => {
                let _ = tx.send(reply);
            }
            None => debug!(
                server = %reply.server.id,
                "late locate reply dropped (its locate already ended)"
            ),
        }
    }
}

fn parse_uri(config: &AmqpConfig) -> Result<AMQPUri, BusError> {
    let mut uri = AMQPUri::from_str(&config.url).map_err(|e| {
        BusError::Unavailable(format!("invalid RabbitMQ URL {}: {e}", redact(&config.url)))
    })?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(config.amqp_heartbeat_secs);
    }
    if uri.query.connection_timeout.is_none() {
        uri.query.connection_timeout =
            Some(u64::try_from(config.connect_timeout.as_millis()).unwrap_or(u64::MAX));
    }
    Ok(uri)
}

fn unreachable_broker(config: &AmqpConfig, e: &str) -> BusError {
    BusError::Unavailable(format!(
        "cannot connect to RabbitMQ at {}: {e}",
        redact(&config.url)
    ))
}

async fn connect_raw(config: &AmqpConfig, uri: &AMQPUri) -> Result<Connection, String> {
    let props = ConnectionProperties::default().with_connection_name(
        format!("dos-bus pid {}", std::process::id())
            .into_bytes()
            .into(),
    );
    match timeout(
        config.connect_timeout,
        Connection::connect_uri(uri.clone(), props),
    )
    .await
    {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", config.connect_timeout)),
    }
}

/// Declares the durable fanout exchanges. An exchange that already exists with other
/// properties is used as it is (checked passively) rather than failing the connection.
async fn declare_exchanges(conn: &Connection, config: &AmqpConfig) -> Result<(), String> {
    for name in [
        &config.api_exchange,
        &config.data_exchange,
        &config.changes_exchange,
    ] {
        let name = ShortString::try_new(name.as_str()).map_err(|e| e.to_string())?;
        let channel = conn.create_channel().await.map_err(|e| e.to_string())?;
        let declared = channel
            .exchange_declare(
                name.clone(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        match declared {
            Ok(()) => {
                let _ = channel.close(200, "OK".into()).await;
            }
            Err(e) => {
                // The failed declare closed that channel; check on a fresh one.
                let check = conn.create_channel().await.map_err(|e| e.to_string())?;
                check
                    .exchange_declare(
                        name.clone(),
                        ExchangeKind::Fanout,
                        ExchangeDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|_| format!("cannot declare exchange {name}: {e}"))?;
                warn!("exchange {name} exists with other properties ({e}); using it as it is");
                let _ = check.close(200, "OK".into()).await;
            }
        }
    }
    Ok(())
}

/// An exclusive, auto-delete, server-named queue bound to `exchange`, consumed without acks.
async fn consume_fanout(channel: &Channel, exchange: &str) -> Result<Consumer, String> {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    let exchange = ShortString::try_new(exchange).map_err(|e| e.to_string())?;
    channel
        .queue_bind(
            queue.name().clone(),
            exchange,
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
    channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())
}

/// Connects, declares the topology and starts the reply and heartbeat consumers.
async fn open_session(shared: &Arc<Shared>) -> Result<Arc<Session>, String> {
    let config = &shared.config;
    let conn = connect_raw(config, &shared.uri).await?;
    let setup = async {
        declare_exchanges(&conn, config).await?;
        let publish = conn.create_channel().await.map_err(|e| e.to_string())?;
        let subscribe = conn.create_channel().await.map_err(|e| e.to_string())?;
        // Direct reply-to: consume (no-ack) on the channel that will publish the requests.
        let replies = publish
            .basic_consume(
                DIRECT_REPLY_TO.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("cannot consume {DIRECT_REPLY_TO}: {e}"))?;
        let heartbeats = consume_fanout(&subscribe, &config.api_exchange)
            .await
            .map_err(|e| format!("cannot listen for heartbeats: {e}"))?;
        let changes = consume_fanout(&subscribe, &config.changes_exchange)
            .await
            .map_err(|e| format!("cannot listen for changes: {e}"))?;
        Ok::<_, String>((publish, subscribe, replies, heartbeats, changes))
    };
    let (publish, subscribe, replies, heartbeats, changes) =
        match timeout(config.op_timeout, setup).await {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => {
                let _ = timeout(config.op_timeout, conn.close(200, "OK".into())).await;
                return Err(e);
            }
            Err(_) => {
                let _ = timeout(config.op_timeout, conn.close(200, "OK".into())).await;
                return Err("timed out setting up channels and consumers".into());
            }
        };
    let session = Arc::new(Session {
        generation: shared.generation.fetch_add(1, Ordering::Relaxed) + 1,
        conn,
        publish,
        subscribe,
        dead: shared.shutdown.child_token(),
        failed: AtomicBool::new(false),
    });
    let (sh, se) = (shared.clone(), session.clone());
    shared
        .workers
        .spawn_once("rabbitmq locate replies", move |_| {
            run_replies(sh, se, replies)
        });
    let (sh, se) = (shared.clone(), session.clone());
    shared.workers.spawn_once("rabbitmq heartbeats", move |_| {
        run_heartbeats(sh, se, heartbeats)
    });
    // Changes made while no session was up were not heard: subscribers drop their caches.
    let _ = shared.changes.send(crate::ChangeEvent::Missed);
    let (sh, se) = (shared.clone(), session.clone());
    shared
        .workers
        .spawn_once("rabbitmq changes", move |_| run_changes(sh, se, changes));
    Ok(session)
}

/// Waits for the next delivery (`None`: stop consuming); ends the session if the stream broke.
async fn next_delivery(
    session: &Session,
    consumer: &mut Consumer,
    what: &str,
) -> Option<lapin::message::Delivery> {
    let item = tokio::select! {
        _ = session.dead.cancelled() => return None,
        item = consumer.next() => item,
    };
    match item {
        Some(Ok(delivery)) => Some(delivery),
        Some(Err(e)) => {
            session.fail(&format!("{what} consumer: {e}"));
            None
        }
        None => {
            session.fail(&format!("{what} consumer cancelled by the broker"));
            None
        }
    }
}

async fn run_replies(shared: Arc<Shared>, session: Arc<Session>, mut consumer: Consumer) {
    while let Some(delivery) = next_delivery(&session, &mut consumer, "reply").await {
        shared.dispatch_reply(&delivery);
    }
}

/// What a heartbeat says: the server (as before the drain mark: a heartbeat of an older
/// data server reads as one in service) and whether it is being drained.
#[derive(serde::Serialize, serde::Deserialize)]
struct Heartbeat {
    #[serde(flatten)]
    server: ServerInfo,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    draining: bool,
    /// What it holds (absent from data servers older than this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stats: Option<dos_protocol::ServerStats>,
}

async fn run_heartbeats(shared: Arc<Shared>, session: Arc<Session>, mut consumer: Consumer) {
    while let Some(delivery) = next_delivery(&session, &mut consumer, "heartbeat").await {
        let data = match shared.sealer.open(HEARTBEAT, &delivery.data) {
            Ok(d) => d,
            Err(why) => {
                warn!(
                    rejected = shared.sealer.rejected(),
                    "heartbeat dropped: {why} (data servers need the cluster secret of the API servers)"
                );
                continue;
            }
        };
        match serde_json::from_slice::<Heartbeat>(data).map(|b| (b.server, b.draining, b.stats)) {
            Ok((server, draining, stats))
                if !server.id.0.trim().is_empty() && is_host_port(&server.addr) =>
            {
                shared.live.record_as(&server, draining, stats);
            }
            Ok((server, _, _)) if !server.addr.trim().is_empty() => {
                shared.bad_addresses.fetch_add(1, Ordering::Relaxed);
                warn!(
                    ?server,
                    "heartbeat with an address that is not host:port dropped"
                );
            }
            Ok((server, _, _)) => warn!(?server, "heartbeat without id or address dropped"),
            Err(e) => warn!(
                body = ?String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(200)]),
                "malformed heartbeat dropped: {e}"
            ),
        }
    }
}

async fn run_changes(shared: Arc<Shared>, session: Arc<Session>, mut consumer: Consumer) {
    while let Some(delivery) = next_delivery(&session, &mut consumer, "change").await {
        let data = match shared.sealer.open(CHANGE, &delivery.data) {
            Ok(d) => d,
            Err(why) => {
                warn!(rejected = shared.sealer.rejected(), "change dropped: {why}");
                continue;
            }
        };
        match serde_json::from_slice::<Change>(data) {
            Ok(change) => {
                let _ = shared.changes.send(crate::ChangeEvent::Changed(change));
            }
            Err(e) => warn!("malformed change dropped: {e}"),
        }
    }
}

async fn run_responder(
    shared: Arc<Shared>,
    session: Arc<Session>,
    entry: Arc<ResponderEntry>,
    mut consumer: Consumer,
) {
    loop {
        let next = tokio::select! {
            biased;
            _ = entry.cancel.cancelled() => break,
            next = next_delivery(&session, &mut consumer, "locate") => next,
        };
        let Some(delivery) = next else {
            return;
        };
        // A dropped subscription answers nothing more, even before the broker hears of it.
        if entry.cancel.is_cancelled() {
            break;
        }
        answer_locate(&shared, &session, &entry, &delivery).await;
    }
    // Unsubscribed: cancelling the only consumer deletes the auto-delete queue.
    let tag = consumer.tag();
    let _ = timeout(
        shared.config.op_timeout,
        session
            .subscribe
            .basic_cancel(tag, BasicCancelOptions::default()),
    )
    .await;
    debug!(server = %entry.server.id, "locate responder stopped");
}

async fn answer_locate(
    shared: &Shared,
    session: &Session,
    entry: &ResponderEntry,
    delivery: &lapin::message::Delivery,
) {
    let correlation = delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str().to_string())
        .unwrap_or_default();
    let data = match shared
        .sealer
        .open_bound(&format!("{LOCATE} {correlation}"), &delivery.data)
    {
        Ok(d) => d,
        Err(why) => {
            warn!("locate request dropped: {why}");
            return;
        }
    };
    let hash: ContentHash = match serde_json::from_slice(data) {
        Ok(h) => h,
        Err(e) => {
            warn!(
                body = ?String::from_utf8_lossy(&delivery.data[..delivery.data.len().min(200)]),
                "malformed locate request dropped: {e}"
            );
            return;
        }
    };
    let Some(reply_to) = delivery.properties.reply_to().as_ref() else {
        warn!(%hash, "locate request without reply_to dropped");
        return;
    };
    let reply = LocateReply {
        server: entry.server.clone(),
        shards: entry.responder.shards_of(&hash),
    };
    let body = match serde_json::to_vec(&reply) {
        Ok(b) => shared.sealer.seal(&format!("{REPLY} {correlation}"), &b),
        Err(e) => {
            warn!("cannot encode locate reply: {e}");
            return;
        }
    };
    let mut props = BasicProperties::default().with_content_type(JSON.into());
    if let Some(correlation) = delivery.properties.correlation_id() {
        props = props.with_correlation_id(correlation.clone());
    }
    let deadline = Instant::now() + shared.config.op_timeout;
    if let Err(e) = shared
        .publish(session, "", reply_to.as_str(), &body, props, deadline)
        .await
    {
        warn!(%hash, "locate reply not sent: {e}");
    }
}

/// Resolves when `session` is broken or the bus shuts down.
async fn wait_until_dead(session: &Session) {
    let mut events = session.conn.events_listener();
    let mut check = tokio::time::interval(HEALTH_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = session.dead.cancelled() => return,
            _ = check.tick() => {
                if !session.healthy() {
                    session.fail("connection or channel closed");
                }
            }
            event = events.next() => match event {
                Some(Event::Error(e)) => session.fail(&e.to_string()),
                Some(other) => debug!(?other, "RabbitMQ connection event"),
                None => {
                    // The event stream ended; rely on the periodic check from now on.
                    session.dead.cancelled().await;
                    return;
                }
            },
        }
    }
}

/// Keeps the bus connected until it shuts down: waits for the session to break, closes it,
/// reconnects with back-off and re-subscribes the locate responders. Run by the bus's
/// supervisor (again, should it panic), holding the bus only weakly.
struct ConnectionKeeper(Weak<Shared>);

#[async_trait]
impl Worker for ConnectionKeeper {
    fn name(&self) -> &str {
        "rabbitmq connection"
    }

    async fn run(&self, cancel: CancellationToken) -> Result<(), WorkerError> {
        loop {
            let Some(shared) = self.0.upgrade() else {
                return Ok(());
            };
            let session = match shared.current() {
                Ok(s) => s,
                Err(_) => match reconnect(&shared, &cancel).await {
                    Some(s) => s,
                    None => return Ok(()),
                },
            };
            tokio::select! {
                _ = wait_until_dead(&session) => {},
                // A dead-but-unnoticed session is still closed when the bus goes away.
                _ = cancel.cancelled() => {},
            }
            session.dead.cancel();
            shared.set_session(None);
            // Graceful close where possible: the broker then drops our exclusive queues at once.
            if session.conn.status().connected() {
                let _ = timeout(
                    shared.config.op_timeout,
                    session.conn.close(200, "OK".into()),
                )
                .await;
            }
            if cancel.is_cancelled() {
                debug!("RabbitMQ bus shut down");
                return Ok(());
            }
        }
    }
}

/// Opens a new session (backing off between attempts), makes it current and re-subscribes
/// the locate responders; `None` when the bus shuts down first.
async fn reconnect(shared: &Arc<Shared>, cancel: &CancellationToken) -> Option<Arc<Session>> {
    let mut delay = shared.config.reconnect_min;
    let mut attempts = 0u32;
    let session = loop {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(delay) => {}
        }
        attempts += 1;
        let attempt = tokio::select! {
            _ = cancel.cancelled() => return None,
            attempt = open_session(shared) => attempt,
        };
        match attempt {
            Ok(s) => break s,
            Err(e) => {
                if attempts == 1 || attempts.is_multiple_of(10) {
                    warn!(attempts, "reconnecting to RabbitMQ failed: {e}");
                } else {
                    debug!(attempts, "reconnecting to RabbitMQ failed: {e}");
                }
                delay = (delay * 2).min(shared.config.reconnect_max);
            }
        }
    };
    info!(
        attempts,
        generation = session.generation,
        "reconnected to RabbitMQ"
    );
    metrics::counter!(crate::RECONNECTS_METRIC).increment(1);
    shared.set_session(Some(session.clone()));
    let entries: Vec<_> = shared
        .responders
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .values()
        .cloned()
        .collect();
    for entry in entries {
        if shared.ensure_subscribed(&session, &entry).await.is_err() {
            break;
        }
    }
    Some(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(redact("amqp://user@host"), "amqp://user@host");
        assert_eq!(redact("nonsense"), "nonsense");
    }

    #[tokio::test]
    async fn unreachable_broker_fails_fast_with_one_line() {
        let mut config = AmqpConfig::new("amqp://guest:pw@127.0.0.1:1/%2f");
        config.connect_timeout = Duration::from_secs(2);
        let started = std::time::Instant::now();
        let err = AmqpBus::connect(config).await.err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("cannot connect to RabbitMQ"), "{err}");
        assert!(!err.contains("pw"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(started.elapsed() < Duration::from_secs(3));
    }

    #[tokio::test]
    async fn bad_url_is_rejected() {
        let err = AmqpBus::connect(AmqpConfig::new("http://nope"))
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("invalid RabbitMQ URL"), "{err}");
    }
}
