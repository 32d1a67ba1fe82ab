//! How servers find each other: data servers announce themselves with heartbeats, and API
//! servers ask "who holds shards of this hash?" (locate). API servers also publish every
//! change they make ([`Change`]), which mounts follow to keep their caches coherent.
//!
//! [`Bus`] is the one trait; [`memory::MemoryBus`] is the in-process engine of
//! `dos-server local` and [`amqp::AmqpBus`] the RabbitMQ engine of a cluster. The live set and
//! its expiry rule ([`LiveSet`]) are shared by engines.

pub mod amqp;
#[cfg(any(test, feature = "test-util"))]
pub mod contract;
mod live;
pub mod memory;

/// Times the connection to the message broker was lost and made again (counter).
pub const RECONNECTS_METRIC: &str = "dos_bus_reconnects_total";
pub mod seal;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dos_protocol::{Change, ContentHash, LocateReply, ServerId, ServerInfo, ServerStats};

pub use live::{HEARTBEAT_EXPIRY, HEARTBEAT_INTERVAL, LiveSet};

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("message bus unavailable: {0}")]
    Unavailable(String),
}

/// What a data server answers to a locate broadcast.
pub trait LocateResponder: Send + Sync + 'static {
    /// Indices of the shards of `hash` this server holds (empty: none; the asker then knows
    /// this server answered and need not wait for it).
    fn shards_of(&self, hash: &ContentHash) -> Vec<u8>;
}

pub use dos_protocol::ChangeEvent;

/// Changes as they are published, until dropped.
pub type ChangeStream = std::pin::Pin<Box<dyn futures::Stream<Item = ChangeEvent> + Send>>;

/// Changes a subscriber may fall behind by before it hears [`ChangeEvent::Missed`].
pub const CHANGE_BACKLOG: usize = 4096;

/// A broadcast of changes within one process (what every engine hands its subscribers).
pub fn change_stream(rx: tokio::sync::broadcast::Receiver<ChangeEvent>) -> ChangeStream {
    use futures::StreamExt;
    Box::pin(
        tokio_stream::wrappers::BroadcastStream::new(rx).map(|item| match item {
            Ok(e) => e,
            Err(tokio_stream::wrappers::errors::BroadcastStreamRecvError::Lagged(_)) => {
                ChangeEvent::Missed
            }
        }),
    )
}

/// Ends a subscription when dropped.
pub struct Subscription(Option<Box<dyn FnOnce() + Send + Sync>>);

impl Subscription {
    pub fn new(on_drop: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(Some(Box::new(on_drop)))
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Data-server side: announces `server` as alive (and in service). Called every
    /// [`HEARTBEAT_INTERVAL`].
    async fn heartbeat(&self, server: &ServerInfo) -> Result<(), BusError> {
        self.announce(server, false, None).await
    }

    /// Data-server side: announces `server` as alive, whether it is being drained (API
    /// servers then give it no new shards while six others are live), and what it holds.
    async fn announce(
        &self,
        server: &ServerInfo,
        draining: bool,
        stats: Option<ServerStats>,
    ) -> Result<(), BusError>;

    /// Data-server side: answers locate broadcasts for `server` until the subscription drops.
    async fn serve_locate(
        &self,
        server: ServerInfo,
        responder: Arc<dyn LocateResponder>,
    ) -> Result<Subscription, BusError>;

    /// API side: data servers heard from within [`HEARTBEAT_EXPIRY`].
    fn live_servers(&self) -> Vec<ServerInfo>;

    /// API side: the live servers whose last heartbeat said they are being drained.
    fn draining_servers(&self) -> Vec<ServerId>;

    /// API side: what live servers hold and have room for, as their heartbeats said.
    fn server_stats(&self) -> Vec<(ServerId, ServerStats)>;

    /// API side: asks every data server which shards of `hash` it holds. Returns once every
    /// live server has answered or `timeout` has passed, with the non-empty answers.
    async fn locate(
        &self,
        hash: &ContentHash,
        timeout: Duration,
    ) -> Result<Vec<LocateReply>, BusError>;

    /// API side: tells every subscriber (of every API server) of `change`. Best effort: a
    /// subscriber that misses it still sees it within its attribute TTL.
    async fn publish_change(&self, change: &Change) -> Result<(), BusError>;

    /// The changes published from now on, by any API server on this bus.
    fn changes(&self) -> ChangeStream;
}
