//! The data servers of the embedded cluster, called in process: a [`ShardTransport`] that
//! hands requests straight to each server's [`ShardStore`] (through the same
//! [`shards`](crate::shards) functions the HTTP interface uses), so shard bytes move as
//! `Bytes`, never through a socket. Each data server keeps its own folder and identity, and
//! one that is stopped answers like a host that is gone.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use dos_protocol::shard::{ShardEntry, TempStatus};
use dos_protocol::{ContentHash, ServerId, ServerInfo};
use dos_transport::{PieceStream, ShardBody, ShardError, ShardTransport};
use futures::StreamExt;

use crate::shards::{self, BODY_IDLE_TIMEOUT, Source, WriteError};
use crate::store::format::FormatError;
use crate::store::{ShardStore, ShardStoreError};

/// The registry of in-process data servers, by id.
#[derive(Default)]
pub struct LocalShards {
    servers: RwLock<HashMap<ServerId, Arc<ShardStore>>>,
}

impl LocalShards {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub(crate) fn register(&self, id: ServerId, store: Arc<ShardStore>) {
        self.servers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, store);
    }

    pub(crate) fn unregister(&self, id: &ServerId) {
        self.servers
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    fn store(&self, server: &ServerInfo) -> Result<Arc<ShardStore>, ShardError> {
        self.servers
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&server.id)
            .cloned()
            .ok_or_else(|| ShardError::Unreachable(format!("data server {} is stopped", server.id)))
    }
}

fn store_error(e: ShardStoreError) -> ShardError {
    match e {
        ShardStoreError::NotFound(_) => ShardError::NotFound,
        ShardStoreError::BadRequest(m) => ShardError::Refused(m),
        ShardStoreError::OffsetMismatch { length, .. } => {
            ShardError::OffsetMismatch { received: length }
        }
        ShardStoreError::Corrupt(_) => ShardError::Corrupt,
        ShardStoreError::TooNew(_) => ShardError::TooNew,
        ShardStoreError::Busy(m) => ShardError::Failed(m),
        ShardStoreError::Io(e) if e.kind() == std::io::ErrorKind::StorageFull => ShardError::Full,
        ShardStoreError::Io(e) => ShardError::Failed(e.to_string()),
    }
}

fn write_error(e: WriteError) -> ShardError {
    match e {
        WriteError::Store(e) => store_error(e),
        WriteError::Body(m) => ShardError::Unreachable(m),
        WriteError::TooLong => ShardError::Refused(e.to_string()),
        WriteError::Stalled(d) => ShardError::Timeout(d),
        WriteError::Task(m) => ShardError::Failed(m),
    }
}

fn format_error(e: FormatError) -> ShardError {
    match e {
        FormatError::Corrupt(_) => ShardError::Corrupt,
        FormatError::Io(e) => ShardError::Failed(e.to_string()),
    }
}

async fn read(
    store: Arc<ShardStore>,
    source: Source,
    start: u64,
    end: u64,
) -> Result<ShardBody, ShardError> {
    if start >= end {
        return Ok(Box::pin(futures::stream::empty()));
    }
    let opened = shards::open(&store, source).await.map_err(store_error)?;
    if start >= opened.total {
        return Err(ShardError::Refused("range not satisfiable".into()));
    }
    let read = opened.stream(start, end).await.map_err(store_error)?;
    Ok(Box::pin(read.body.map(|r| r.map_err(format_error))))
}

#[async_trait]
impl ShardTransport for LocalShards {
    async fn create_temp(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        length: Option<u64>,
    ) -> Result<String, ShardError> {
        let store = self.store(server)?;
        let hash = *hash;
        shards::blocking(move || store.create_temp(&hash, shard, length))
            .await
            .map_err(store_error)
    }

    async fn write_temp(
        &self,
        server: &ServerInfo,
        id: &str,
        offset: u64,
        body: PieceStream,
    ) -> Result<TempStatus, ShardError> {
        let store = self.store(server)?;
        let body = body.map(Ok::<_, Infallible>);
        shards::write_stream(&store, id, offset, body, BODY_IDLE_TIMEOUT)
            .await
            .map_err(write_error)
    }

    async fn temp_status(&self, server: &ServerInfo, id: &str) -> Result<TempStatus, ShardError> {
        let store = self.store(server)?;
        let id = id.to_string();
        shards::blocking(move || store.temp_status(&id))
            .await
            .map_err(store_error)
    }

    async fn commit(
        &self,
        server: &ServerInfo,
        id: &str,
        length: u64,
        hash: &ContentHash,
    ) -> Result<(), ShardError> {
        let store = self.store(server)?;
        let (id, hash) = (id.to_string(), *hash);
        shards::blocking(move || store.commit(&id, length, Some(hash)))
            .await
            .map_err(store_error)
    }

    async fn abort(&self, server: &ServerInfo, id: &str) -> Result<(), ShardError> {
        let store = self.store(server)?;
        let id = id.to_string();
        shards::blocking(move || store.abort(&id))
            .await
            .map_err(store_error)
    }

    async fn put_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        raw: bytes::Bytes,
    ) -> Result<(), ShardError> {
        let store = self.store(server)?;
        let hash = *hash;
        shards::blocking(move || store.put_whole(&hash, shard, &raw))
            .await
            .map_err(store_error)
    }

    async fn read_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        let store = self.store(server)?;
        let source = Source::Shard { hash: *hash, shard };
        read(store, source, start, end).await
    }

    async fn read_temp(
        &self,
        server: &ServerInfo,
        id: &str,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        let store = self.store(server)?;
        let source = Source::Temp { id: id.to_string() };
        read(store, source, start, end).await
    }

    async fn remove_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        min_age: Option<Duration>,
    ) -> Result<(), ShardError> {
        let store = self.store(server)?;
        let hash = *hash;
        shards::blocking(move || store.remove_shard(&hash, shard, min_age))
            .await
            .map_err(store_error)
    }

    async fn verify_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
    ) -> Result<u64, ShardError> {
        let store = self.store(server)?;
        let hash = *hash;
        shards::blocking(move || store.verify_shard(&hash, shard))
            .await
            .map_err(store_error)
    }

    async fn list_shards(
        &self,
        server: &ServerInfo,
        after: Option<(ContentHash, u8)>,
        limit: usize,
    ) -> Result<Vec<ShardEntry>, ShardError> {
        let store = self.store(server)?;
        shards::blocking(move || store.list_shards(after, limit.clamp(1, 10_000)))
            .await
            .map_err(store_error)
    }

    async fn set_draining(&self, server: &ServerInfo, draining: bool) -> Result<(), ShardError> {
        self.store(server)?.set_draining(draining);
        Ok(())
    }
}
