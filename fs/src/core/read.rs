//! Reads: from the local block cache when the content is there, else streamed from the API
//! server. A miss starts one streaming range request for a window of blocks (16 MiB for a
//! sequential reader, one block otherwise); the reader waits only for the block it needs,
//! the rest arrive in the background, and a sequential reader starts the next window while
//! half of the current one is still ahead of it. A block is kept as the pieces the socket
//! reads produced (no copy to assemble it); it goes into the cache in order on one blocking
//! thread per window and stays in its window until the reader takes it, so a reader never
//! reads back from the disk cache what it just received.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use dos_cache::{BlockBytes, BlockCache};
use dos_protocol::{ByteRange, ContentHash, ObjectName};
use dos_store::{ObjectStore, StoreError};

use super::passthrough::{Opened, PassthroughFile};
use super::{FsCore, Handle, NodeKey, lock};
use crate::error::{FsError, FsResult};

/// Windows a handle keeps at most; older ones are dropped (their blocks are in the cache).
const MAX_WINDOWS: usize = 4;

/// One streaming fetch of blocks `[first, end)`.
struct Window {
    first: u64,
    end: u64,
    received: Mutex<Received>,
    /// Set when the stream ended (with the error, if it failed).
    done: Mutex<Option<Result<(), StoreError>>>,
    notify: tokio::sync::Notify,
}

struct Received {
    /// Blocks received and not yet taken by the reader.
    blocks: HashMap<u64, BlockBytes>,
    /// Blocks before this one have arrived (in order: the answer is one stream).
    next: u64,
}

pub struct ReadHandle {
    /// Object name and the version pinned at open (close-to-open).
    pub name: String,
    pub version: u64,
    pub hash: ContentHash,
    pub size: u64,
    /// End of the last read, to spot sequential access.
    pub last_end: u64,
    /// The last two blocks reads were served from, newest first: a kernel read is 128 or
    /// 256 KiB, so the next few come from them without a lookup, and a read the kernel issued
    /// out of order still finds its block without reading it back from the disk cache.
    recent: [Option<(u64, BlockBytes)>; 2],
    windows: Vec<Arc<Window>>,
}

impl FsCore {
    /// Opens `ino` for reading (a file of the namespace or a history version).
    pub(crate) async fn open_read(&self, ino: u64) -> FsResult<Opened> {
        let (name, pinned) = match self.node(ino)? {
            NodeKey::Path(p) => (p, None),
            NodeKey::HistoryVersion(p, v) => (p, Some(v)),
            _ => return Err(FsError::IsDir),
        };
        if name.is_empty() {
            return Err(FsError::IsDir);
        }
        if pinned.is_none() && self.staged_of(&name).is_some() {
            let reserved = self.reserve_normal(ino).await?;
            if let Some(fh) = self.open_staged_for_read(&name) {
                reserved.bind(fh);
                return Ok(Opened {
                    fh,
                    passthrough: None,
                    direct_io: false,
                });
            }
        }
        // Close-to-open: every open asks the store which version is current.
        let meta = self.store.head(&super::object_name(&name)?, pinned).await?;
        if meta.kind == dos_protocol::EntryKind::Dir {
            return Err(FsError::IsDir);
        }
        let hash = meta.hash.ok_or(FsError::NotFound)?;
        if pinned.is_none() {
            self.remember(&name, super::Entry::Object(meta.clone()));
        }
        let handle = Handle::Read(ReadHandle {
            name,
            version: meta.version,
            hash,
            size: meta.size,
            last_end: 0,
            recent: [None, None],
            windows: Vec::new(),
        });
        if let Some(file) = self.passthrough_file(hash, meta.size).await
            && let Some(reserved) = self.reserve_passthrough(ino, hash)
        {
            let fh = self.new_handle(handle);
            reserved.bind(fh);
            return Ok(Opened {
                fh,
                passthrough: Some(PassthroughFile { ino, hash, file }),
                direct_io: false,
            });
        }
        let reserved = self.reserve_normal(ino).await?;
        let fh = self.new_handle(handle);
        reserved.bind(fh);
        Ok(Opened {
            fh,
            passthrough: None,
            direct_io: meta.size >= super::passthrough::DIRECT_IO_MIN_BYTES
                && self.direct_io.load(std::sync::atomic::Ordering::Relaxed),
        })
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
        if first == last {
            // The usual case (kernel reads of 128 KiB inside a 1 MiB block): no copy.
            let block = self.block(r, first, sequential).await?;
            let from = (offset - first * bs) as usize;
            let to = (end - first * bs) as usize;
            if sequential {
                self.read_ahead(r, last);
            }
            return Ok(block.slice(from, to));
        }
        let mut out = BytesMut::with_capacity((end - offset) as usize);
        for b in first..=last {
            let block = self.block(r, b, sequential).await?;
            let block_start = b * bs;
            let from = offset.saturating_sub(block_start) as usize;
            let to = (end - block_start) as usize;
            out.extend_from_slice(&block.slice(from, to));
        }
        if sequential {
            self.read_ahead(r, last);
        }
        Ok(out.freeze())
    }

    /// Block `b` of the handle's version: one of the last two served, arriving in a window,
    /// cached, or fetched now.
    async fn block(&self, r: &mut ReadHandle, b: u64, sequential: bool) -> FsResult<BlockBytes> {
        if let Some((_, block)) = r.recent.iter().flatten().find(|(i, _)| *i == b) {
            return Ok(block.clone());
        }
        let block = self.find_block(r, b, sequential).await?;
        r.recent.rotate_right(1);
        r.recent[0] = Some((b, block.clone()));
        Ok(block)
    }

    async fn find_block(
        &self,
        r: &mut ReadHandle,
        b: u64,
        sequential: bool,
    ) -> FsResult<BlockBytes> {
        loop {
            r.windows.retain(|w| {
                let behind = sequential && w.end <= b;
                let exhausted = lock(&w.done).is_some() && lock(&w.received).blocks.is_empty();
                !behind && !exhausted
            });
            if r.windows.len() > MAX_WINDOWS {
                r.windows.drain(..r.windows.len() - MAX_WINDOWS);
            }
            let window = r
                .windows
                .iter()
                .find(|w| w.first <= b && b < w.end)
                .cloned();
            let Some(w) = window else {
                if let Some(block) = self.cache.get(&r.hash.0, b) {
                    return Ok(block.into());
                }
                let count = if sequential {
                    self.config.read_ahead_blocks.max(1)
                } else {
                    1
                };
                self.start_window(r, b, count);
                continue;
            };
            let notified = w.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let arrived = {
                let mut received = lock(&w.received);
                if let Some(block) = received.blocks.remove(&b) {
                    // A reader moving forward will not come back for the ones well before.
                    received.blocks.retain(|&k, _| k + 1 >= b);
                    return Ok(block);
                }
                b < received.next
            };
            let done = lock(&w.done).clone();
            if arrived || done.is_some() {
                // Taken earlier (and so in the cache, or about to be), or never coming.
                r.windows.retain(|x| !Arc::ptr_eq(x, &w));
                if let Some(block) = self.cache.get(&r.hash.0, b) {
                    return Ok(block.into());
                }
                match done {
                    Some(Err(e)) => return Err(FsError::Store(e)),
                    Some(Ok(())) if !arrived => {
                        return Err(FsError::Store(StoreError::Integrity(format!(
                            "{}: block {b} missing from the answer",
                            r.name
                        ))));
                    }
                    // Fetch it again.
                    _ => continue,
                }
            }
            notified.await;
        }
    }

    /// Starts fetching the window after the last one when the reader is within half a
    /// window of its end.
    fn read_ahead(&self, r: &mut ReadHandle, last_read: u64) {
        let bs = self.cache.block_size() as u64;
        let blocks = r.size.div_ceil(bs);
        let window = self.config.read_ahead_blocks.max(1);
        let furthest = r
            .windows
            .iter()
            .map(|w| w.end)
            .max()
            .unwrap_or(last_read + 1);
        if furthest < blocks && furthest.saturating_sub(last_read) <= window / 2 {
            let from = furthest.max(last_read + 1);
            if !self.cache.contains(&r.hash.0, from) {
                self.start_window(r, from, window);
            }
        }
    }

    fn start_window(&self, r: &mut ReadHandle, first: u64, count: u64) {
        let bs = self.cache.block_size() as u64;
        let blocks = r.size.div_ceil(bs);
        let end = (first + count).min(blocks).max(first + 1);
        let w = Arc::new(Window {
            first,
            end,
            received: Mutex::new(Received {
                blocks: HashMap::new(),
                next: first,
            }),
            done: Mutex::new(None),
            notify: tokio::sync::Notify::new(),
        });
        r.windows.push(w.clone());
        let (store, cache) = (self.store.clone(), self.cache.clone());
        let (name, version, hash, size) = (r.name.clone(), r.version, r.hash, r.size);
        tokio::spawn(async move {
            let result = stream_window(&*store, &cache, &w, &name, version, hash, size).await;
            if let Err(e) = &result {
                tracing::warn!(%name, error = %e, "reading from the store failed");
            }
            *lock(&w.done) = Some(result);
            w.notify.notify_waiters();
        });
    }
}

/// Streams a window's blocks into `w.received` (waking readers at each block) and on into the
/// cache, in order, on one blocking thread per window (writers of one cache file would only
/// contend for its lock). Blocks keep the pieces the socket reads produced: no copy.
#[allow(clippy::too_many_arguments)]
async fn stream_window(
    store: &dyn ObjectStore,
    cache: &BlockCache,
    w: &Arc<Window>,
    name: &str,
    version: u64,
    hash: ContentHash,
    size: u64,
) -> Result<(), StoreError> {
    let bs = cache.block_size() as u64;
    let start = w.first * bs;
    let end = (w.end * bs).min(size);
    let object = ObjectName::new(name).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let range = ByteRange {
        start,
        end: end - 1,
    };
    let mut stream = store.get(&object, Some(version), Some(range)).await?;
    if stream.record.hash != Some(hash) {
        return Err(StoreError::Changed(format!(
            "{name} version {version} changed its content"
        )));
    }
    let expected = if stream.range.is_some() {
        end - start
    } else {
        size
    };
    if stream.range.map_or(start != 0, |r| r.start != start) || stream.len() != expected {
        return Err(StoreError::Integrity(format!(
            "{name}: the store answered other bytes than asked"
        )));
    }
    let (to_cache, queued) = std::sync::mpsc::channel::<(u64, BlockBytes)>();
    let cache = cache.clone();
    tokio::task::spawn_blocking(move || {
        for (block, data) in queued {
            if let Err(e) = cache.put_shared(&hash.0, block, data, Some(size)) {
                tracing::warn!(error = %e, "cache put failed");
            }
        }
    });
    let put = |block: u64, data: BlockBytes| {
        {
            let mut received = lock(&w.received);
            received.blocks.insert(block, data.clone());
            received.next = block + 1;
        }
        w.notify.notify_waiters();
        // The writer only stops when this sender is dropped.
        let _ = to_cache.send((block, data));
    };
    let bs = bs as usize;
    let mut pending = BlockBytes::new();
    let mut block = w.first;
    while let Some(chunk) = futures::StreamExt::next(&mut stream.body).await {
        let mut chunk = chunk?;
        while !chunk.is_empty() {
            let take = (bs - pending.len()).min(chunk.len());
            pending.push(chunk.split_to(take));
            if pending.len() == bs {
                put(block, std::mem::take(&mut pending));
                block += 1;
            }
        }
    }
    if !pending.is_empty() {
        put(block, pending);
    }
    Ok(())
}
