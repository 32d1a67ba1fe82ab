//! Reads: from the local block cache when the content is there, else streamed from the API
//! server a window of blocks at a time; sequential readers get the next window fetched ahead.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use dos_protocol::ContentHash;

use super::{FsCore, Handle, NodeKey};
use crate::error::{FsError, FsResult};

pub struct ReadHandle {
    /// Object name and the version pinned at open (close-to-open).
    pub name: String,
    pub version: u64,
    pub hash: ContentHash,
    pub size: u64,
    /// End of the last read, to spot sequential access.
    pub last_end: u64,
    pub prefetching: Arc<std::sync::atomic::AtomicBool>,
}

impl FsCore {
    /// Opens `ino` for reading (a file of the namespace or a history version).
    pub(crate) async fn open_read(&self, ino: u64) -> FsResult<u64> {
        let (name, pinned) = match self.node(ino)? {
            NodeKey::Path(p) => (p, None),
            NodeKey::HistoryVersion(p, v) => (p, Some(v)),
            _ => return Err(FsError::IsDir),
        };
        if name.is_empty() {
            return Err(FsError::IsDir);
        }
        if pinned.is_none()
            && let Some(fh) = self.open_staged_for_read(&name)
        {
            return Ok(fh);
        }
        // Close-to-open: every open asks the store which version is current.
        let meta = self.client.head(&name, pinned).await?;
        if meta.kind == dos_protocol::EntryKind::Dir {
            return Err(FsError::IsDir);
        }
        if pinned.is_none() {
            self.remember(&name, super::Entry::Object(meta.to_record()));
        }
        Ok(self.new_handle(Handle::Read(ReadHandle {
            name,
            version: meta.version,
            hash: meta.hash,
            size: meta.size,
            last_end: 0,
            prefetching: Arc::default(),
        })))
    }

    pub async fn read(&self, fh: u64, offset: u64, len: u32) -> FsResult<Bytes> {
        let h = self.handle(fh)?;
        let mut h = h.lock().await;
        match &mut *h {
            Handle::Read(r) => self.read_object(r, offset, len).await,
            Handle::Write { staged, .. } => super::write::read_staged(staged, offset, len),
            Handle::Dir(_) => Err(FsError::IsDir),
        }
    }

    async fn read_object(&self, r: &mut ReadHandle, offset: u64, len: u32) -> FsResult<Bytes> {
        if offset >= r.size || len == 0 {
            return Ok(Bytes::new());
        }
        let end = (offset + u64::from(len)).min(r.size);
        let bs = self.cache.block_size() as u64;
        let sequential = offset == r.last_end;
        r.last_end = end;
        let first = offset / bs;
        let last = (end - 1) / bs;
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for b in first..=last {
            let block = match self.cache.get(&r.hash.0, b) {
                Some(block) => block,
                None => {
                    let window = if sequential {
                        self.config.read_ahead_blocks.max(1)
                    } else {
                        1
                    };
                    fetch_blocks(self, &r.name, r.version, r.hash, r.size, b, window).await?
                }
            };
            let block_start = b * bs;
            let from = offset.saturating_sub(block_start) as usize;
            let to = ((end - block_start) as usize).min(block.len());
            if from < to {
                out.extend_from_slice(&block[from..to]);
            }
        }
        if sequential {
            self.prefetch(r, last + 1);
        }
        Ok(out.freeze())
    }

    /// Starts fetching the next window in the background when it is not cached yet.
    fn prefetch(&self, r: &ReadHandle, from_block: u64) {
        use std::sync::atomic::Ordering;
        let bs = self.cache.block_size() as u64;
        let blocks = r.size.div_ceil(bs);
        let window = self.config.read_ahead_blocks;
        let Some(first_missing) = (from_block..(from_block + window).min(blocks))
            .find(|b| self.cache.get(&r.hash.0, *b).is_none())
        else {
            return;
        };
        if r.prefetching.swap(true, Ordering::AcqRel) {
            return;
        }
        let (client, cache) = (self.client.clone(), self.cache.clone());
        let (name, version, hash, size) = (r.name.clone(), r.version, r.hash, r.size);
        let flag = r.prefetching.clone();
        tokio::spawn(async move {
            let res = fetch_into_cache(
                &client,
                &cache,
                &name,
                version,
                hash,
                size,
                first_missing,
                window,
            )
            .await;
            if let Err(e) = res {
                tracing::debug!(%name, error = %e, "prefetch failed");
            }
            flag.store(false, Ordering::Release);
        });
    }
}

/// Fetches blocks `[first, first + count)` of a version into the cache and returns block
/// `first`.
async fn fetch_blocks(
    core: &FsCore,
    name: &str,
    version: u64,
    hash: ContentHash,
    size: u64,
    first: u64,
    count: u64,
) -> FsResult<Bytes> {
    let first_block = fetch_into_cache(
        &core.client,
        &core.cache,
        name,
        version,
        hash,
        size,
        first,
        count,
    )
    .await?;
    Ok(first_block)
}

#[allow(clippy::too_many_arguments)]
async fn fetch_into_cache(
    client: &dos_client::Client,
    cache: &dos_cache::BlockCache,
    name: &str,
    version: u64,
    hash: ContentHash,
    size: u64,
    first: u64,
    count: u64,
) -> FsResult<Bytes> {
    let bs = cache.block_size() as u64;
    let start = first * bs;
    let end = ((first + count) * bs).min(size);
    let range = format!("bytes={start}-{}", end - 1);
    let mut stream = client.get_stream(name, Some(version), Some(&range)).await?;
    if stream.meta.hash != hash {
        // The version is immutable; a different hash means the store is confused.
        return Err(FsError::Store(dos_client::ClientError::InvalidInput(
            format!("{name} version {version} changed its content"),
        )));
    }
    let mut buf = BytesMut::with_capacity(bs as usize);
    let mut block = first;
    let mut first_block = None;
    let mut put = |block: u64, data: Bytes| -> FsResult<()> {
        if let Err(e) = cache.put(&hash.0, block, &data) {
            tracing::warn!(error = %e, "cache put failed");
        }
        if first_block.is_none() {
            first_block = Some(data);
        }
        Ok(())
    };
    while let Some(chunk) = stream.next_chunk().await {
        buf.extend_from_slice(&chunk?);
        while buf.len() as u64 >= bs {
            put(block, buf.split_to(bs as usize).freeze())?;
            block += 1;
        }
    }
    if !buf.is_empty() {
        put(block, buf.freeze())?;
    }
    first_block.ok_or_else(|| {
        FsError::Store(dos_client::ClientError::InvalidInput(format!(
            "{name}: empty answer to a range read"
        )))
    })
}
