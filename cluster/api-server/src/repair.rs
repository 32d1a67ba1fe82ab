//! Real-time repair: reads that find a missing or corrupt shard hand the content hash to this
//! queue and carry on; a background worker rebuilds the shard from four good ones and writes
//! it back (to the server that lost it, or to a live server holding no shard of the object),
//! then records the new placement. The reader is never slowed or blocked by it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use dos_metadata::ContentRecord;
use dos_protocol::{ContentHash, ServerInfo, TOTAL_SHARDS, block_count, shard_len};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::error::{ApiError, ApiResult};
use crate::pipeline::read::{Decoder, ShardFault};
use crate::pipeline::write::{ShardWriters, abort_uploads, commit_uploads, create_uploads};

/// Hashes waiting for repair; a hash already queued or in progress is not queued twice.
#[derive(Clone)]
pub struct RepairQueue {
    tx: mpsc::Sender<ContentHash>,
    pending: Arc<Mutex<HashSet<ContentHash>>>,
    rx: Arc<Mutex<Option<mpsc::Receiver<ContentHash>>>>,
}

impl Default for RepairQueue {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(10_000);
        Self {
            tx,
            pending: Arc::default(),
            rx: Arc::new(Mutex::new(Some(rx))),
        }
    }
}

/// What one repair did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairOutcome {
    pub rebuilt: Vec<u8>,
}

impl RepairQueue {
    /// Queues `hash`; drops the request (logged) when the queue is full.
    pub fn request(&self, hash: ContentHash) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.insert(hash) && self.tx.try_send(hash).is_err() {
            pending.remove(&hash);
            tracing::warn!(%hash, "repair queue full; the scrub job will catch it");
        }
    }

    /// Runs the worker until `cancel`. Holds the core weakly so it never keeps it alive.
    pub fn spawn_worker(&self, core: Weak<Core>, cancel: CancellationToken) {
        let Some(mut rx) = self
            .rx
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        else {
            return;
        };
        let pending = self.pending.clone();
        tokio::spawn(async move {
            loop {
                let hash = tokio::select! {
                    _ = cancel.cancelled() => break,
                    h = rx.recv() => match h { Some(h) => h, None => break },
                };
                let Some(core) = core.upgrade() else { break };
                match repair(&core, &hash).await {
                    Ok(o) if !o.rebuilt.is_empty() => {
                        tracing::info!(%hash, shards = ?o.rebuilt, "shards rebuilt")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%hash, error = %e, "repair failed"),
                }
                pending
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&hash);
            }
        });
    }
}

/// Checks every shard of `hash` and rebuilds the ones that are missing or corrupt.
pub async fn repair(core: &Core, hash: &ContentHash) -> ApiResult<RepairOutcome> {
    let Some(content) = core.meta.get_content(hash).await? else {
        return Ok(RepairOutcome::default());
    };
    let holders = core.holders(&content).await;
    // Probe every shard: a data server verifies a shard's header, index and first piece
    // before it answers.
    let probes = futures::future::join_all((0..TOTAL_SHARDS).map(|i| {
        let holders = holders[i].clone();
        async move {
            for s in &holders {
                match core.shards.read_shard(&s.addr, hash, i as u8, 0, 1).await {
                    Ok(_) => return Ok(s.clone()),
                    Err(e) if e.is_not_found() => return Err(ShardFault::Missing(s.clone())),
                    Err(_) => {}
                }
            }
            Err(ShardFault::Unreachable)
        }
    }))
    .await;
    let size_zero = content.size == 0;
    let mut bad = Vec::new();
    let mut holding: Vec<ServerInfo> = Vec::new();
    for (i, p) in probes.iter().enumerate() {
        match p {
            // An empty shard cannot be probed by a ranged read; trust the holder.
            Ok(s) => holding.push(s.clone()),
            Err(_) if size_zero && !holders[i].is_empty() => holding.push(holders[i][0].clone()),
            Err(f) => bad.push((i as u8, f.clone())),
        }
    }
    if bad.is_empty() {
        return Ok(RepairOutcome::default());
    }
    rebuild(core, &content, holders, &bad, &holding).await
}

/// Rebuilds `bad` shards of `content` and records where they now live.
pub async fn rebuild(
    core: &Core,
    content: &ContentRecord,
    holders: Vec<Vec<ServerInfo>>,
    bad: &[(u8, ShardFault)],
    holding: &[ServerInfo],
) -> ApiResult<RepairOutcome> {
    let hash = content.hash;
    // Targets: the server that lost the shard if it is alive, else a live server that holds
    // no shard of this object.
    let live = core.bus.live_servers();
    let mut used: Vec<ServerInfo> = holding.to_vec();
    let mut targets = Vec::new();
    for (shard, fault) in bad {
        let target = match fault {
            ShardFault::Missing(s) if live.contains(s) => Some(s.clone()),
            _ => live
                .iter()
                .find(|s| !used.iter().any(|u| u.id == s.id))
                .cloned(),
        };
        match target {
            Some(t) => {
                used.push(t.clone());
                targets.push((*shard, t));
            }
            None => {
                tracing::info!(%hash, shard, "no live server can take this shard now; repair postponed")
            }
        }
    }
    if targets.is_empty() {
        return Ok(RepairOutcome::default());
    }
    let len = shard_len(content.size);
    let uploads = create_uploads(&core.shards, &hash, &targets, Some(len)).await?;
    let want: Vec<u8> = uploads.iter().map(|u| u.shard).collect();
    let result = async {
        let mut decoder = Decoder::open(
            core.shards.clone(),
            core.codec.clone(),
            hash,
            content.size,
            holders,
            0,
            block_count(content.size),
        )
        .await?;
        let mut writers = ShardWriters::open(&core.shards, &uploads, 0);
        while let Some(pieces) = decoder.next_pieces(&want).await? {
            writers.send(pieces).await?;
        }
        writers.finish().await?;
        commit_uploads(&core.shards, &uploads, len).await
    }
    .await;
    if let Err(e) = result {
        abort_uploads(&core.shards, &uploads).await;
        return Err(e);
    }
    // Record the new placement (re-read, so a concurrent change is not lost).
    let mut record = core
        .meta
        .get_content(&hash)
        .await?
        .ok_or_else(|| ApiError::Internal("content record vanished during repair".into()))?;
    for u in &uploads {
        if let Some(slot) = record.placement.get_mut(usize::from(u.shard)) {
            *slot = u.server.id.clone();
        }
    }
    core.meta.put_content(&record).await?;
    Ok(RepairOutcome { rebuilt: want })
}
