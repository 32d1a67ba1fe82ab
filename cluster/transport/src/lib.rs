//! What an API server needs of a data server: the [`ShardTransport`] trait.
//!
//! Implementations:
//!
//! - [`http::HttpTransport`]: HTTP to data servers on other hosts or processes (cluster
//!   mode), signed with the cluster secret, with bounded timeouts and retries of what is safe
//!   to repeat;
//! - `dos_data_server::LocalShards`: the data servers of the embedded cluster, called in
//!   process (shard bytes move as `Bytes`, not through sockets);
//! - [`faults::FaultyTransport`] (feature `test-util`): any transport with failures, delays,
//!   stalls and garbage injected, for the pipelines' fault tests.
//!
//! The API server and the data servers never depend on each other; this crate and
//! `dos_protocol::shard` are what they share.

#[cfg(feature = "test-util")]
pub mod faults;
pub mod http;
pub mod request_id;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dos_protocol::shard::{ShardEntry, TempStatus};
use dos_protocol::{ContentHash, ServerInfo};
use futures::Stream;

/// Why a call to a data server failed. Messages may name the server; they are for logs, and
/// the API server does not pass them on to its clients.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    /// No such shard or upload on that server.
    #[error("no such shard or upload")]
    NotFound,
    /// The shard failed verification (the data server quarantined it).
    #[error("the shard failed verification")]
    Corrupt,
    /// A conditional removal found the shard written too recently.
    #[error("the shard was written too recently to be removed")]
    TooNew,
    /// A write did not start where the upload stands.
    #[error("the write does not follow the {received} bytes the upload holds")]
    OffsetMismatch { received: u64 },
    /// The data server's disk is full.
    #[error("the data server's disk is full")]
    Full,
    /// The data server refused the request as malformed.
    #[error("refused: {0}")]
    Refused(String),
    /// The request was not signed with the cluster secret.
    #[error("the request was not signed with this cluster's secret")]
    Denied,
    /// The server could not be reached, or the connection broke.
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// No answer within the call's deadline.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// An answer that is not what the interface promises.
    #[error("malformed answer: {0}")]
    Malformed(String),
    /// The data server failed on its side.
    #[error("the data server failed: {0}")]
    Failed(String),
}

impl ShardError {
    /// The server answered, and has no good copy (missing, or corrupt and quarantined).
    pub fn is_missing(&self) -> bool {
        matches!(self, ShardError::NotFound | ShardError::Corrupt)
    }

    /// The server did not answer (down, cut off, too slow).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ShardError::Unreachable(_) | ShardError::Timeout(_))
    }
}

/// Raw shard bytes coming from a data server.
pub type ShardBody = Pin<Box<dyn Stream<Item = Result<Bytes, ShardError>> + Send>>;
/// Pieces going to a data server; the upload request ends when the stream ends.
pub type PieceStream = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// The calls an API server makes to a data server. A server is named by its [`ServerInfo`]
/// (its id and, for HTTP, its address).
#[async_trait]
pub trait ShardTransport: Send + Sync + 'static {
    /// Starts an upload of shard `shard` of `hash`, `length` raw bytes long when known.
    async fn create_temp(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        length: Option<u64>,
    ) -> Result<String, ShardError>;

    /// Writes the pieces of `body` into upload `id` from raw offset `offset`; returns once
    /// the data server has written everything the stream carried.
    async fn write_temp(
        &self,
        server: &ServerInfo,
        id: &str,
        offset: u64,
        body: PieceStream,
    ) -> Result<TempStatus, ShardError>;

    async fn temp_status(&self, server: &ServerInfo, id: &str) -> Result<TempStatus, ShardError>;

    /// Commits upload `id` as a shard of `hash` durably (fsynced, renamed, directory fsynced)
    /// once it holds exactly `length` raw bytes. `hash` is the one the upload was created
    /// under, or any for one created under
    /// [`UNKNOWN_CONTENT`](dos_protocol::shard::UNKNOWN_CONTENT).
    async fn commit(
        &self,
        server: &ServerInfo,
        id: &str,
        length: u64,
        hash: &ContentHash,
    ) -> Result<(), ShardError>;

    /// Abandons upload `id`.
    async fn abort(&self, server: &ServerInfo, id: &str) -> Result<(), ShardError>;

    /// Stores a whole shard of at most [`MAX_WHOLE_SHARD`](dos_protocol::shard::MAX_WHOLE_SHARD)
    /// raw bytes in one call: written and committed durably when this returns (the data
    /// server packs it; see `dos_data_server::store::pack`). Safe to repeat.
    async fn put_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        raw: Bytes,
    ) -> Result<(), ShardError>;

    /// Raw bytes `[start, end)` of a committed shard, verified by the data server. The first
    /// piece is checked before this returns, so an error here means the shard is unusable
    /// from `start`; a piece that fails later ends the body with an error.
    async fn read_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError>;

    /// Raw bytes `[start, end)` of an upload in progress.
    async fn read_temp(
        &self,
        server: &ServerInfo,
        id: &str,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError>;

    /// Moves a shard to the data server's `garbage/`, unless it was written less than
    /// `min_age` ago ([`ShardError::TooNew`]).
    async fn remove_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        min_age: Option<Duration>,
    ) -> Result<(), ShardError>;

    /// Has the data server read a whole shard and check every checksum; its raw length.
    async fn verify_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
    ) -> Result<u64, ShardError>;

    /// One page of the committed shards a data server holds, after `after`.
    async fn list_shards(
        &self,
        server: &ServerInfo,
        after: Option<(ContentHash, u8)>,
        limit: usize,
    ) -> Result<Vec<ShardEntry>, ShardError>;

    /// Marks the data server as being drained (or not): its heartbeats then tell every API
    /// server to give it no new shards.
    async fn set_draining(&self, server: &ServerInfo, draining: bool) -> Result<(), ShardError>;
}

/// A shared transport is a transport (so wrappers such as the fault injector take
/// `Arc<dyn …>`).
#[async_trait]
impl<T: ShardTransport + ?Sized> ShardTransport for std::sync::Arc<T> {
    async fn create_temp(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        length: Option<u64>,
    ) -> Result<String, ShardError> {
        (**self).create_temp(server, hash, shard, length).await
    }

    async fn write_temp(
        &self,
        server: &ServerInfo,
        id: &str,
        offset: u64,
        body: PieceStream,
    ) -> Result<TempStatus, ShardError> {
        (**self).write_temp(server, id, offset, body).await
    }

    async fn temp_status(&self, server: &ServerInfo, id: &str) -> Result<TempStatus, ShardError> {
        (**self).temp_status(server, id).await
    }

    async fn commit(
        &self,
        server: &ServerInfo,
        id: &str,
        length: u64,
        hash: &ContentHash,
    ) -> Result<(), ShardError> {
        (**self).commit(server, id, length, hash).await
    }

    async fn abort(&self, server: &ServerInfo, id: &str) -> Result<(), ShardError> {
        (**self).abort(server, id).await
    }

    async fn put_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        raw: Bytes,
    ) -> Result<(), ShardError> {
        (**self).put_shard(server, hash, shard, raw).await
    }

    async fn read_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        (**self).read_shard(server, hash, shard, start, end).await
    }

    async fn read_temp(
        &self,
        server: &ServerInfo,
        id: &str,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        (**self).read_temp(server, id, start, end).await
    }

    async fn remove_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        min_age: Option<Duration>,
    ) -> Result<(), ShardError> {
        (**self).remove_shard(server, hash, shard, min_age).await
    }

    async fn verify_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
    ) -> Result<u64, ShardError> {
        (**self).verify_shard(server, hash, shard).await
    }

    async fn list_shards(
        &self,
        server: &ServerInfo,
        after: Option<(ContentHash, u8)>,
        limit: usize,
    ) -> Result<Vec<ShardEntry>, ShardError> {
        (**self).list_shards(server, after, limit).await
    }

    async fn set_draining(&self, server: &ServerInfo, draining: bool) -> Result<(), ShardError> {
        (**self).set_draining(server, draining).await
    }
}
