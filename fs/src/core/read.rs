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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::passthrough::{Opened, PassthroughFile};
use super::{FsCore, Handle, NodeKey, lock};
use crate::error::{FsError, FsResult};

/// Windows a handle keeps at most; older ones are dropped (their blocks are in the cache).
const MAX_WINDOWS: usize = 4;

/// Blocks that may wait in a cache writer's queue per window: the stream waits for the
/// disk beyond that, instead of piling blocks up in memory.
const CACHE_QUEUE: usize = 2;

/// What reads may hold in memory, besides the cache's memory tier: blocks waiting in windows
/// for their reader, and streams from the store at once. Past it, reads slow down (a block
/// that finds no room goes only to the disk cache, where its reader finds it; a new stream
/// waits for a running one to end) rather than grow the daemon.
pub struct ReadBudget {
    held: Arc<Semaphore>,
    held_total: usize,
    streams: Arc<Semaphore>,
    streams_total: usize,
}

impl ReadBudget {
    /// A budget of `bytes` for reads of `block_size` blocks: a quarter of it for blocks held
    /// in windows, and one stream per 16 MiB of it (at least two of each).
    pub fn new(bytes: u64, block_size: usize) -> Self {
        let held = ((bytes / 4) / block_size.max(1) as u64).max(2) as usize;
        let streams = (bytes / (16 << 20)).clamp(2, 64) as usize;
        Self {
            held: Arc::new(Semaphore::new(held)),
            held_total: held,
            streams: Arc::new(Semaphore::new(streams)),
            streams_total: streams,
        }
    }

    /// (blocks held in windows now, at most)
    pub fn held(&self) -> (usize, usize) {
        (
            self.held_total - self.held.available_permits(),
            self.held_total,
        )
    }

    /// (streams from the store now, at most)
    pub fn streams(&self) -> (usize, usize) {
        (
            self.streams_total - self.streams.available_permits(),
            self.streams_total,
        )
    }
}

/// One streaming fetch of blocks `[first, end)`.
struct Window {
    first: u64,
    end: u64,
    /// The block a reader is waiting for (a window started on demand): it is always kept
    /// for that reader, whatever the budget, so every read makes progress.
    demand: Option<u64>,
    received: Mutex<Received>,
    /// Set when the stream ended (with the error, if it failed).
    done: Mutex<Option<Result<(), StoreError>>>,
    notify: tokio::sync::Notify,
}

struct Received {
    /// Blocks received and not yet taken by the reader, each with its share of the budget.
    blocks: HashMap<u64, (BlockBytes, Option<OwnedSemaphorePermit>)>,
    /// Blocks before this one have arrived (in order: the answer is one stream).
    next: u64,
    /// Blocks before this one have been handed to the cache (written, or refused by it).
    cached: u64,
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
            NodeKey::At(at, p) => {
                let v = self.version_at(at, &p).await?.version;
                (p, Some(v))
            }
            NodeKey::Stats => {
                let fh = self.new_handle(Handle::Static(super::stats::report(self)));
                // Its size is unknown to the kernel: direct I/O reads to the end.
                return Ok(Opened {
                    fh,
                    passthrough: None,
                    direct_io: true,
                });
            }
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
            Handle::Static(b) => {
                let start = (offset as usize).min(b.len());
                let end = start.saturating_add(len as usize).min(b.len());
                Ok(b.slice(start..end))
            }
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
                self.start_window(r, b, count, true);
                continue;
            };
            let notified = w.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (arrived, cached) = {
                let mut received = lock(&w.received);
                if let Some((block, _share)) = received.blocks.remove(&b) {
                    // A reader moving forward will not come back for the ones well before.
                    received.blocks.retain(|&k, _| k + 1 >= b);
                    return Ok(block);
                }
                (b < received.next, b < received.cached)
            };
            let done = lock(&w.done).clone();
            if arrived && !cached && done.is_none() {
                // It arrived when the budget was full: it is on its way to the disk cache,
                // where this read finds it once written.
                notified.await;
                continue;
            }
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
                self.start_window(r, from, window, false);
            }
        }
    }

    /// Starts a window of `count` blocks from `first`; `demand`: a reader waits for `first`.
    fn start_window(&self, r: &mut ReadHandle, first: u64, count: u64, demand: bool) {
        let bs = self.cache.block_size() as u64;
        let blocks = r.size.div_ceil(bs);
        let end = (first + count).min(blocks).max(first + 1);
        let w = Arc::new(Window {
            first,
            end,
            demand: demand.then_some(first),
            received: Mutex::new(Received {
                blocks: HashMap::new(),
                next: first,
                cached: first,
            }),
            done: Mutex::new(None),
            notify: tokio::sync::Notify::new(),
        });
        r.windows.push(w.clone());
        let (store, cache) = (self.store.clone(), self.cache.clone());
        let (held, streams) = (self.reads.held.clone(), self.reads.streams.clone());
        let (name, version, hash, size) = (r.name.clone(), r.version, r.hash, r.size);
        tokio::spawn(async move {
            // One of the streams the budget allows; the others run on meanwhile, since none
            // waits for a reader (see `stream_window`).
            let result = match streams.acquire_owned().await {
                Ok(_slot) => {
                    let budget = held;
                    stream_window(&*store, &cache, &w, &budget, &name, version, hash, size).await
                }
                Err(_) => Err(StoreError::Internal("the read budget is closed".into())),
            };
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
    budget: &Arc<Semaphore>,
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
    // One blocking thread per window writes its blocks to the cache in order (writers of one
    // cache file would only contend for its lock); the queue to it is short, so a slow disk
    // slows the stream instead of filling memory.
    let (to_cache, mut queued) = tokio::sync::mpsc::channel::<(u64, BlockBytes)>(CACHE_QUEUE);
    let writer = {
        let (cache, w) = (cache.clone(), w.clone());
        tokio::task::spawn_blocking(move || {
            while let Some((block, data)) = queued.blocking_recv() {
                if let Err(e) = cache.put_shared(&hash.0, block, data, Some(size)) {
                    tracing::warn!(error = %e, "cache put failed");
                }
                lock(&w.received).cached = block + 1;
                w.notify.notify_waiters();
            }
        })
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
                hand_over(w, budget, &to_cache, block, std::mem::take(&mut pending)).await;
                block += 1;
            }
        }
    }
    if !pending.is_empty() {
        hand_over(w, budget, &to_cache, block, pending).await;
    }
    drop(to_cache);
    // The window is done once its blocks are in the cache (or refused by it).
    if let Err(e) = writer.await {
        tracing::warn!(error = %e, "cache writer failed");
    }
    Ok(())
}

/// A block of a window has arrived: kept for the reader if the budget has room (or the reader
/// is waiting for it), else only the disk cache gets it; either way it goes on to the cache
/// writer (waiting while its queue is full).
async fn hand_over(
    w: &Window,
    budget: &Arc<Semaphore>,
    to_cache: &tokio::sync::mpsc::Sender<(u64, BlockBytes)>,
    block: u64,
    data: BlockBytes,
) {
    {
        let share = budget.clone().try_acquire_owned().ok();
        let mut received = lock(&w.received);
        if share.is_some() || w.demand == Some(block) {
            received.blocks.insert(block, (data.clone(), share));
        }
        received.next = block + 1;
    }
    w.notify.notify_waiters();
    if to_cache.send((block, data)).await.is_err() {
        tracing::warn!(block, "the cache writer stopped; the block is not cached");
    }
}
