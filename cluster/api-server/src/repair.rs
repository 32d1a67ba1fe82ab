//! Real-time repair: reads that find a missing or corrupt shard hand the content hash to the
//! [`RepairQueue`] and carry on; the [`RepairWorker`] rebuilds the shard from four good ones
//! and writes it back (to the server that lost it, or to a live server holding no shard of
//! the object), then records the new placement with a conditional update that never
//! overwrites a concurrent change. The reader is never slowed or blocked by it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use async_trait::async_trait;
use dos_metadata::{ContentRecord, PlacementMove};
use dos_protocol::{BlockHashes, ContentHash, ServerInfo, block_count, shard_len};
use dos_worker::{Worker, WorkerError};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::error::{ApiError, ApiResult};
use crate::pipeline::read::{Decoder, ReadPlan};
use crate::pipeline::write::{Committed, Deadlines, store_content};
use crate::placement::{self, Holders, ShardFault};

/// Shards a read found serving wrong bytes, with their servers.
pub type WrongShards = Vec<(u8, ServerInfo)>;

/// Hashes waiting for repair, each with the shards found serving wrong bytes; a hash already
/// queued or in progress is not queued twice (its wrong shards are added to the entry).
#[derive(Clone)]
pub struct RepairQueue {
    tx: mpsc::Sender<ContentHash>,
    pending: Arc<Mutex<HashMap<ContentHash, WrongShards>>>,
}

/// The receiving end of the queue, handed to the worker.
pub struct RepairInbox {
    rx: mpsc::Receiver<ContentHash>,
    pending: Arc<Mutex<HashMap<ContentHash, WrongShards>>>,
}

/// A queue and its inbox; at most `capacity` hashes wait.
pub fn queue(capacity: usize) -> (RepairQueue, RepairInbox) {
    let (tx, rx) = mpsc::channel(capacity);
    let pending = Arc::<Mutex<HashMap<ContentHash, WrongShards>>>::default();
    (
        RepairQueue {
            tx,
            pending: pending.clone(),
        },
        RepairInbox { rx, pending },
    )
}

impl RepairQueue {
    /// Queues `hash`; drops the request (logged) when the queue is full.
    pub fn request(&self, hash: ContentHash) {
        self.request_with(hash, Vec::new());
    }

    /// Queues `hash`, whose shards `wrong` served bytes that do not match the recorded
    /// hashes (repair rebuilds them whatever their servers say about them).
    pub fn request_with(&self, hash: ContentHash, wrong: WrongShards) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = pending.get_mut(&hash) {
            for w in wrong {
                if !known.contains(&w) {
                    known.push(w);
                }
            }
            return;
        }
        pending.insert(hash, wrong);
        if self.tx.try_send(hash).is_err() {
            pending.remove(&hash);
            tracing::warn!(%hash, "repair queue full; the scrub job will catch it");
        }
    }

    /// Whether `hash` is queued or being repaired.
    pub fn is_pending(&self, hash: &ContentHash) -> bool {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains_key(hash)
    }

    /// Hashes queued or being repaired.
    pub fn pending(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// Works through the repair queue. Holds the core weakly so it never keeps it alive.
pub struct RepairWorker {
    inbox: tokio::sync::Mutex<RepairInbox>,
    core: Weak<Core>,
}

impl RepairWorker {
    pub fn new(inbox: RepairInbox, core: Weak<Core>) -> Self {
        Self {
            inbox: tokio::sync::Mutex::new(inbox),
            core,
        }
    }
}

#[async_trait]
impl Worker for RepairWorker {
    fn name(&self) -> &str {
        "repair"
    }

    async fn run(&self, cancel: CancellationToken) -> Result<(), WorkerError> {
        let mut inbox = self.inbox.lock().await;
        loop {
            let hash = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                h = inbox.rx.recv() => match h { Some(h) => h, None => return Ok(()) },
            };
            let Some(core) = self.core.upgrade() else {
                return Ok(());
            };
            let wrong = inbox
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&hash)
                .cloned()
                .unwrap_or_default();
            let result = match repair(&core, &hash, &wrong).await {
                Ok(o) if !o.rebuilt.is_empty() => {
                    tracing::info!(%hash, shards = ?o.rebuilt, "shards rebuilt");
                    "rebuilt"
                }
                Ok(_) => "healthy",
                Err(e) => {
                    tracing::warn!(%hash, error = %e, "repair failed");
                    "failed"
                }
            };
            metrics::counter!(crate::metrics::REPAIRS, "result" => result).increment(1);
            inbox
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&hash);
        }
    }
}

/// What one repair did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RepairOutcome {
    pub rebuilt: Vec<u8>,
}

/// Checks every shard of `hash` and rebuilds the ones that are missing or corrupt, and the
/// ones in `wrong` (found serving wrong bytes by a read; their servers' checks pass).
pub async fn repair(
    core: &Core,
    hash: &ContentHash,
    wrong: &[(u8, ServerInfo)],
) -> ApiResult<RepairOutcome> {
    let Some(content) = core.meta.get_content(hash).await? else {
        return Ok(RepairOutcome::default());
    };
    let mut holders = placement::holders(core, &content).await;
    if content.size == 0 {
        // Empty shards cannot be probed by a ranged read; a holder that answers is trusted.
        return Ok(RepairOutcome::default());
    }
    let probed = crate::check::quick_probe(core, hash, &holders).await;
    let mut bad = probed.bad.clone();
    let mut holding = probed.holding();
    for (shard, server) in wrong {
        // Not read from that server again (its own checks would pass).
        if let Some(h) = holders.get_mut(usize::from(*shard)) {
            h.retain(|s| s.id != server.id);
        }
        if !bad.iter().any(|(s, _)| s == shard) {
            bad.push((*shard, ShardFault::Wrong(server.clone())));
        }
        if !holding.iter().any(|s| s.id == server.id) {
            holding.push(server.clone());
        }
    }
    if bad.is_empty() {
        return Ok(RepairOutcome::default());
    }
    rebuild(core, &content, holders, &bad, &holding).await
}

/// Rebuilds `bad` shards of `content` from the good ones and records where they now live.
/// Shards no live server can take now are left for later (postponed).
pub async fn rebuild(
    core: &Core,
    content: &ContentRecord,
    holders: Holders,
    bad: &[(u8, ShardFault)],
    holding: &[ServerInfo],
) -> ApiResult<RepairOutcome> {
    let hash = content.hash;
    // Servers being drained take a rebuilt shard only when no other can.
    let mut live = core.bus.live_servers();
    core.draining.last(&mut live, &core.bus.draining_servers());
    let targets = placement::repair_targets(&live, holding, bad);
    for (shard, _) in bad {
        if !targets.iter().any(|(s, _)| s == shard) {
            tracing::info!(%hash, shard, "no live server can take this shard now; repair postponed");
        }
    }
    if targets.is_empty() {
        return Ok(RepairOutcome::default());
    }
    let want: Vec<u8> = targets.iter().map(|(s, _)| *s).collect();
    rebuild_onto(core, content, holders, &targets).await?;
    // The placement records the new homes only where it still names what this repair read.
    let moves: Vec<PlacementMove> = targets
        .iter()
        .filter_map(|(shard, server)| {
            let from = content.placement.get(usize::from(*shard))?.clone();
            Some(PlacementMove {
                shard: *shard,
                from,
                to: server.id.clone(),
            })
        })
        .collect();
    if !core.meta.update_placement(&hash, &moves).await? {
        if core.meta.get_content(&hash).await?.is_none() {
            return Err(ApiError::Internal(
                "the content record vanished during repair".into(),
            ));
        }
        tracing::info!(%hash, "placement changed during repair; the other change is kept (locate finds these shards)");
    }
    metrics::counter!(crate::metrics::SHARDS_REBUILT).increment(want.len() as u64);
    Ok(RepairOutcome { rebuilt: want })
}

/// Decodes `content` from `holders` and stores each shard of `targets` on its server,
/// committed durably; the placement is left to the caller. The path of repair, and of a
/// drain or rebalance whose old copy cannot be read.
pub async fn rebuild_onto(
    core: &Core,
    content: &ContentRecord,
    holders: Holders,
    targets: &[(u8, ServerInfo)],
) -> ApiResult<()> {
    let hash = content.hash;
    let want: Vec<u8> = targets.iter().map(|(s, _)| *s).collect();
    let plan = ReadPlan {
        hash,
        size: content.size,
        holders,
        first_block: 0,
        end_block: block_count(content.size),
        stall_timeout: core.config.shard_stall_timeout,
        blocks: content.blocks.clone(),
        health: core.health.clone(),
    };
    let length = shard_len(content.size);
    let (shards, codec, w) = (&core.shards, &core.codec, &want);
    store_content(
        shards,
        Deadlines::of(core).without_spares(),
        &hash,
        targets,
        Some(length),
        |mut writers| async move {
            let mut decoder = Decoder::open(shards.clone(), codec.clone(), plan).await?;
            while let Some(pieces) = decoder.next_pieces(w).await? {
                writers.send(pieces).await?;
            }
            Ok((((), length), writers))
        },
    )
    .await?;
    Ok(())
}

/// Content just committed on `committed.placed` but for the `lost` shards (their uploads were
/// given up mid-write): rebuilds those from the committed ones onto live servers holding no
/// shard of it (draining servers and suspects last), before anything records the content, so
/// that it is recorded with six shards. Returns the server of each shard, in shard order.
/// 503 when no spare server is left to take a lost shard (the committed shards are then
/// orphans, collected later).
pub async fn replace_lost(
    core: &Core,
    hash: ContentHash,
    size: u64,
    blocks: &BlockHashes,
    committed: Committed,
) -> ApiResult<Vec<ServerInfo>> {
    let Committed { mut placed, lost } = committed;
    if !lost.is_empty() {
        let mut live = core.bus.live_servers();
        core.health.suspects_last(&mut live);
        core.draining.last(&mut live, &core.bus.draining_servers());
        live.retain(|s| !placed.iter().any(|(_, p)| p.id == s.id));
        if live.len() < lost.len() {
            return Err(ApiError::Unavailable(format!(
                "{} shard uploads were lost and only {} spare data servers are live; nothing was stored",
                lost.len(),
                live.len()
            )));
        }
        let targets: Vec<(u8, ServerInfo)> = lost.iter().copied().zip(live).collect();
        let holders: Holders = placed
            .iter()
            .map(|(shard, server)| {
                if lost.contains(shard) {
                    Vec::new()
                } else {
                    vec![server.clone()]
                }
            })
            .collect();
        let content = ContentRecord {
            hash,
            size,
            placement: placed.iter().map(|(_, s)| s.id.clone()).collect(),
            blocks: blocks.clone(),
        };
        let started = std::time::Instant::now();
        rebuild_onto(core, &content, holders, &targets).await?;
        for (shard, server) in &targets {
            tracing::info!(%hash, shard, server = %server.id, took_ms = started.elapsed().as_millis() as u64, "lost shard upload rebuilt on a spare server");
            if let Some(slot) = placed.iter_mut().find(|(s, _)| s == shard) {
                slot.1 = server.clone();
            }
        }
        metrics::counter!(crate::metrics::SHARDS_REBUILT).increment(targets.len() as u64);
    }
    placed.sort_by_key(|(shard, _)| *shard);
    Ok(placed.into_iter().map(|(_, s)| s).collect())
}
