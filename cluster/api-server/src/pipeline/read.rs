//! The read side: any four good shards give the object back, block by block, starting at the
//! block that holds the first byte asked for. A shard that fails (missing, corrupt, its
//! server gone, or silent for longer than the stall deadline) is replaced by another one
//! mid-stream and reported for repair.
//!
//! Reads hedge: a shard stream that has not opened, or has not delivered its piece of a
//! block, within the hedge deadline ([`ServerHealth::hedge_after`], a few times the usual
//! answer time) is raced by another shard; the first four complete win, and a server that
//! was outrun is suspect (tried last) from then on. A silent server costs a read about the
//! hedge deadline, not the stall deadline.
//!
//! No data server is trusted with the bytes: every decoded block is checked against the hash
//! recorded when it was written (see [`BlockHashes`]) before any of it leaves. A block that
//! does not match is read from every shard, the four that give the recorded hash are found,
//! and the shards that disagree are dropped and reported for repair (the read carries on,
//! degraded); with fewer than four right shards the read fails, never serving wrong bytes.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dos_erasure::Codec;
use dos_protocol::{
    BLOCK_SIZE, BlockHashes, ContentHash, DATA_SHARDS, Expected, PIECE_SIZE, ServerInfo,
    TOTAL_SHARDS,
};
use dos_protocol::{piece_len, shard_len};
use dos_transport::{ShardBody, ShardError, ShardTransport};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

use crate::error::{ApiError, ApiResult};
use crate::health::ServerHealth;
use crate::placement::{Holders, ShardFault};
use crate::probe::probe;

/// What a decoder reads: which object, its holders, and how long a shard stream may stay
/// silent.
pub struct ReadPlan {
    pub hash: ContentHash,
    pub size: u64,
    pub holders: Holders,
    /// Blocks `[first, end)`.
    pub first_block: u64,
    pub end_block: u64,
    pub stall_timeout: Duration,
    /// What each block must hash to.
    pub blocks: BlockHashes,
    /// Answer times and suspects: the hedge deadline, and which holders to try last.
    pub health: Arc<ServerHealth>,
}

impl ReadPlan {
    fn expected(&self, block: u64) -> Option<Expected> {
        self.blocks.expected(&self.hash, self.size, block)
    }

    /// Object bytes in block `block`.
    fn block_len(&self, block: u64) -> usize {
        (self.size - block * BLOCK_SIZE as u64).min(BLOCK_SIZE as u64) as usize
    }
}

struct Active {
    reader: PieceReader,
    server: ServerInfo,
}

/// Decodes blocks `[first_block, end_block)` of one object.
pub struct Decoder {
    shards: Arc<dyn ShardTransport>,
    codec: Codec,
    plan: ReadPlan,
    active: Vec<Option<Active>>,
    /// Shards given up on.
    failed: Vec<Option<ShardFault>>,
    next_block: u64,
}

impl Decoder {
    /// Opens enough shard streams to decode the plan's blocks: the four data shards when
    /// they are healthy (no decoding needed then), parity for any that is not. Fails before
    /// any byte is produced when fewer than four shards can be opened.
    pub async fn open(
        shards: Arc<dyn ShardTransport>,
        codec: Codec,
        mut plan: ReadPlan,
    ) -> ApiResult<Self> {
        let first = plan.first_block;
        for holders in &mut plan.holders {
            plan.health.suspects_last(holders);
        }
        let mut d = Self {
            shards,
            codec,
            active: (0..TOTAL_SHARDS).map(|_| None).collect(),
            failed: vec![None; TOTAL_SHARDS],
            next_block: first,
            plan,
        };
        d.fill(first).await?;
        Ok(d)
    }

    pub fn hash(&self) -> ContentHash {
        self.plan.hash
    }

    /// Whether a parity shard stands in for a data shard (one failed, or was passed over
    /// as slow or on a suspect server): the content may need a repair, which probes first.
    pub fn degraded(&self) -> bool {
        self.active[..DATA_SHARDS].iter().any(Option::is_none) || !self.faults().is_empty()
    }

    /// Shards found bad so far, for repair.
    pub fn faults(&self) -> Vec<(u8, ShardFault)> {
        self.failed
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.clone().map(|f| (i as u8, f)))
            .collect()
    }

    fn active_count(&self) -> usize {
        self.active.iter().filter(|a| a.is_some()).count()
    }

    /// Shards that are neither active nor given up on, best first: data shards before
    /// parity (no decoding), shards whose holders are all suspect last.
    fn spares(&self) -> VecDeque<u8> {
        let health = &self.plan.health;
        let mut spare: Vec<u8> = (0..TOTAL_SHARDS)
            .filter(|i| self.active[*i].is_none() && self.failed[*i].is_none())
            .map(|i| i as u8)
            .collect();
        spare.sort_by_key(|&i| {
            let suspect = self.plan.holders[usize::from(i)]
                .iter()
                .all(|s| health.is_suspect(&s.id));
            (suspect, i)
        });
        spare.into()
    }

    /// Opens streams (from block `block` on) until four are active. Opens that have not
    /// answered within the hedge deadline are raced by another shard's; the first to open
    /// win, the others are dropped (their servers suspect).
    async fn fill(&mut self, block: u64) -> ApiResult<()> {
        let start = block * PIECE_SIZE as u64;
        let end = shard_len(self.plan.size).min(self.plan.end_block * PIECE_SIZE as u64);
        loop {
            let need = DATA_SHARDS.saturating_sub(self.active_count());
            if need == 0 {
                return Ok(());
            }
            let mut spares = self.spares();
            if spares.is_empty() {
                return Err(ApiError::ShardsUnavailable {
                    available: self.active_count(),
                });
            }
            // Which server each open in flight is waiting for, and since when.
            let asking: Arc<Mutex<Vec<(u8, ServerInfo, Instant)>>> = Arc::default();
            let open = |shard: u8| {
                let (shards, asking) = (self.shards.clone(), asking.clone());
                let (hash, stall, health) = (
                    self.plan.hash,
                    self.plan.stall_timeout,
                    self.plan.health.clone(),
                );
                let holders = self
                    .plan
                    .holders
                    .get(usize::from(shard))
                    .cloned()
                    .unwrap_or_default();
                async move {
                    let r = open_one(
                        &shards, &health, &asking, holders, hash, shard, start, end, stall,
                    )
                    .await;
                    (shard, r)
                }
            };
            let mut pending = FuturesUnordered::new();
            for _ in 0..need {
                if let Some(i) = spares.pop_front() {
                    pending.push(open(i));
                }
            }
            let mut opened = 0;
            let mut hedging = true;
            while opened < need {
                let next = if hedging {
                    match tokio::time::timeout(self.plan.health.hedge_after(), pending.next()).await
                    {
                        Ok(n) => n,
                        Err(_) => {
                            // Slow to open: race one more shard, if one is left.
                            match spares.pop_front() {
                                Some(i) => pending.push(open(i)),
                                None => hedging = false,
                            }
                            continue;
                        }
                    }
                } else {
                    pending.next().await
                };
                match next {
                    None => break,
                    Some((i, Ok((server, body)))) => {
                        self.active[usize::from(i)] = Some(Active {
                            reader: PieceReader::new(body, self.plan.stall_timeout),
                            server,
                        });
                        opened += 1;
                    }
                    Some((i, Err(fault))) => {
                        self.failed[usize::from(i)] = Some(fault);
                        if let Some(j) = spares.pop_front() {
                            pending.push(open(j));
                        }
                    }
                }
            }
            drop(pending);
            // Opens still waiting were outrun: their servers are slow or silent.
            let hedge = self.plan.health.hedge_after();
            let outrun: Vec<(u8, ServerInfo, Instant)> = std::mem::take(
                &mut *asking
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
            for (shard, server, since) in outrun {
                if since.elapsed() >= hedge {
                    tracing::info!(hash = %self.plan.hash, shard, server = %server.id, "shard open outrun by another shard");
                    self.plan.health.missed(&server.id);
                }
            }
        }
    }

    /// Reads the pieces of `block` from the active streams, replacing any stream that fails
    /// by another shard opened at this block, until four pieces are in hand. Streams that
    /// have not delivered their piece within the hedge deadline are replaced too, once per
    /// block and only while a spare shard is left (their servers become suspect).
    async fn read_pieces(&mut self, block: u64) -> ApiResult<Vec<Option<Segments>>> {
        let plen = piece_len(self.plan.size, block);
        let mut pieces: Vec<Option<Segments>> = vec![None; TOTAL_SHARDS];
        if self.active_count() < DATA_SHARDS {
            // Shards were dropped after the last block (they served wrong bytes).
            self.fill(block).await?;
        }
        let mut hedged = false;
        loop {
            let hedge =
                (!hedged && !self.spares().is_empty()).then(|| self.plan.health.hedge_after());
            let health = self.plan.health.clone();
            let mut reads: FuturesUnordered<_> = self
                .active
                .iter_mut()
                .zip(pieces.iter())
                .enumerate()
                .filter_map(|(i, (slot, have))| match (slot, have) {
                    (Some(a), None) => Some({
                        let health = health.clone();
                        async move {
                            let started = Instant::now();
                            let r = a.reader.read_segments(plen).await;
                            if r.is_ok() {
                                health.answered(&a.server.id, started.elapsed());
                            }
                            (i, r)
                        }
                    }),
                    _ => None,
                })
                .collect();
            let deadline = hedge.map(|h| tokio::time::Instant::now() + h);
            let mut done: Vec<(usize, Result<Segments, ShardError>)> = Vec::new();
            let mut slow = false;
            loop {
                let next = match deadline {
                    Some(d) => match tokio::time::timeout_at(d, reads.next()).await {
                        Ok(n) => n,
                        Err(_) => {
                            slow = true;
                            break;
                        }
                    },
                    None => reads.next().await,
                };
                match next {
                    Some(r) => done.push(r),
                    None => break,
                }
            }
            drop(reads);
            let mut lost = false;
            for (i, r) in done {
                match r {
                    Ok(p) => pieces[i] = Some(p),
                    Err(e) => {
                        let server = self.active[i].take().map(|a| a.server);
                        tracing::warn!(hash = %self.plan.hash, shard = i, server = ?server.as_ref().map(|s| &s.id), error = %e, "shard read failed mid-stream");
                        if matches!(e, ShardError::Timeout(_))
                            && let Some(s) = &server
                        {
                            self.plan.health.missed(&s.id);
                        }
                        self.failed[i] = Some(fault_of(&e, server));
                        lost = true;
                    }
                }
            }
            if slow {
                // The streams still owing their piece are dropped (a piece half read cannot
                // be resumed) and raced by spare shards opened at this block.
                hedged = true;
                for (i, (piece, slot)) in pieces.iter().zip(self.active.iter_mut()).enumerate() {
                    if piece.is_none()
                        && let Some(a) = slot.take()
                    {
                        tracing::info!(hash = %self.plan.hash, block, shard = i, server = %a.server.id, "shard stream slow; raced by another shard");
                        self.plan.health.missed(&a.server.id);
                    }
                }
                lost = true;
            }
            if !lost {
                return Ok(pieces);
            }
            // Streams opened now start at this block; the loop reads their piece of it.
            self.fill(block).await?;
        }
    }

    /// The object bytes of the next block, checked against its recorded hash, as consecutive
    /// segments, or `None` after the last.
    pub async fn next_block(&mut self) -> ApiResult<Option<Vec<Bytes>>> {
        match self.next_raw().await? {
            Some(raw) => {
                let right = match raw.expected {
                    Some(want) => matches(want, &raw.data).await?,
                    None => true,
                };
                self.checked(raw, right).await.map(Some)
            }
            None => Ok(None),
        }
    }

    /// The next block as decoded, not yet checked: the caller hashes it (overlapping the
    /// next block's reads, see `stream::object_bytes`) and hands both to
    /// [`checked`](Self::checked) before serving a byte of it.
    pub async fn next_raw(&mut self) -> ApiResult<Option<RawBlock>> {
        if self.next_block >= self.plan.end_block {
            return Ok(None);
        }
        let block = self.next_block;
        let pieces = self.read_pieces(block).await?;
        let len = self.plan.block_len(block);
        let data = assemble(self.codec.clone(), pieces, len).await?;
        self.next_block += 1;
        Ok(Some(RawBlock {
            block,
            data,
            expected: self.plan.expected(block),
        }))
    }

    /// `raw`'s bytes when `right` (they have the recorded hash, or nothing is recorded);
    /// else the right bytes, rebuilt from shards that give the recorded hash (the others are
    /// dropped and reported for repair), or an error.
    pub async fn checked(&mut self, raw: RawBlock, right: bool) -> ApiResult<Vec<Bytes>> {
        match raw.expected {
            Some(want) if !right => {
                let len = self.plan.block_len(raw.block);
                let right = self.recover_at(raw.block, want).await?;
                let right: Vec<Option<Vec<u8>>> = right.into_iter().map(Some).collect();
                let mut out = Vec::with_capacity(len);
                dos_erasure::join_data(&right, len, &mut out);
                Ok(vec![Bytes::from(out)])
            }
            _ => Ok(raw.data),
        }
    }

    /// Block `block` did not hash to `want`: reads its piece from every shard not given up
    /// on (streams of their own, opened at that block), finds four that give the recorded
    /// hash, drops the shards that disagree (reported for repair; the streams of this read
    /// stop using them) and returns the six right pieces.
    async fn recover_at(&mut self, block: u64, want: Expected) -> ApiResult<Vec<Vec<u8>>> {
        tracing::warn!(hash = %self.plan.hash, block, "a block does not match its recorded hash; reading every shard");
        let start = block * PIECE_SIZE as u64;
        let plen = piece_len(self.plan.size, block);
        let end = start + plen as u64;
        let candidates: Vec<u8> = (0..TOTAL_SHARDS)
            .filter(|i| self.failed[*i].is_none())
            .map(|i| i as u8)
            .collect();
        let stall = self.plan.stall_timeout;
        let opened = open_streams(&self.shards, &self.plan, &candidates, start, end).await;
        let mut pieces: Vec<Option<Vec<u8>>> = vec![None; TOTAL_SHARDS];
        let mut servers: Vec<Option<ServerInfo>> = vec![None; TOTAL_SHARDS];
        for (i, server, body) in opened.good {
            match PieceReader::new(body, stall).read(plen).await {
                Ok(p) => {
                    pieces[usize::from(i)] = Some(p.to_vec());
                    servers[usize::from(i)] = Some(server);
                }
                Err(e) => {
                    tracing::info!(shard = i, error = %e, "shard unreadable while checking a block")
                }
            }
        }
        let (codec, len) = (self.codec.clone(), self.plan.block_len(block));
        let found = tokio::task::spawn_blocking(move || {
            codec.recover_block(&pieces, len, |b| want.matches(&[b]))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("decoder failed: {e}")))?;
        let Some(found) = found else {
            tracing::error!(hash = %self.plan.hash, block, "fewer than four shards hold the right bytes of a block");
            return Err(ApiError::Unverifiable { block });
        };
        for i in found.wrong {
            let server = servers[i].take();
            tracing::warn!(hash = %self.plan.hash, block, shard = i, server = ?server.as_ref().map(|s| &s.id), "shard served bytes that do not match the recorded hash; dropped");
            self.active[i] = None;
            self.failed[i] = Some(match server {
                Some(s) => ShardFault::Wrong(s),
                None => ShardFault::Unreachable,
            });
        }
        Ok(found.pieces)
    }

    /// Shards that served wrong bytes, and their servers: repair must not believe their
    /// own checks.
    pub fn wrong_shards(&self) -> Vec<(u8, ServerInfo)> {
        self.failed
            .iter()
            .enumerate()
            .filter_map(|(i, f)| match f {
                Some(ShardFault::Wrong(s)) => Some((i as u8, s.clone())),
                _ => None,
            })
            .collect()
    }

    /// Pieces of every shard for the next block, rebuilding the ones in `want` that are not
    /// read: what repair writes back. Returns `None` after the last block.
    pub async fn next_pieces(&mut self, want: &[u8]) -> ApiResult<Option<Vec<Bytes>>> {
        if self.next_block >= self.plan.end_block {
            return Ok(None);
        }
        let block = self.next_block;
        let pieces = self.read_pieces(block).await?;
        let codec = self.codec.clone();
        let (len, expected) = (self.plan.block_len(block), self.plan.expected(block));
        let decoded = tokio::task::spawn_blocking(move || {
            let mut owned: Vec<Option<Vec<u8>>> = pieces
                .into_iter()
                .map(|p| p.map(|b| b.contiguous().to_vec()))
                .collect();
            codec
                .reconstruct(&mut owned)
                .map_err(|e| ApiError::Internal(format!("decoding failed: {e}")))?;
            let right = expected.is_none_or(|want| {
                let mut data = Vec::with_capacity(len);
                dos_erasure::join_data(&owned, len, &mut data);
                want.matches(&[data])
            });
            let owned: Vec<Vec<u8>> = owned.into_iter().map(Option::unwrap_or_default).collect();
            Ok::<_, ApiError>((owned, right))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("decoder failed: {e}")))??;
        let mut owned = match (decoded, expected) {
            ((owned, true), _) | ((owned, false), None) => owned,
            ((_, false), Some(want)) => self.recover_at(block, want).await?,
        };
        self.next_block += 1;
        Ok(Some(
            want.iter()
                .map(|&i| Bytes::from(std::mem::take(&mut owned[usize::from(i)])))
                .collect(),
        ))
    }
}

/// A decoded block not yet checked against its recorded hash (see [`Decoder::next_raw`]).
pub struct RawBlock {
    pub block: u64,
    pub data: Vec<Bytes>,
    /// What it must hash to; `None` when nothing is recorded.
    pub expected: Option<Expected>,
}

/// Opens a stream of raw bytes `[start, end)` of each shard in `candidates` of the plan's
/// content, from the first holder that answers within the stall deadline.
async fn open_streams(
    shards: &Arc<dyn ShardTransport>,
    plan: &ReadPlan,
    candidates: &[u8],
    start: u64,
    end: u64,
) -> crate::probe::Probe<ShardBody> {
    let (hash, stall) = (plan.hash, plan.stall_timeout);
    probe(&plan.holders, candidates, |shard, server| async move {
        let open = shards.read_shard(&server, &hash, shard, start, end);
        match tokio::time::timeout(stall, open).await {
            Ok(body) => body,
            Err(_) => Err(ShardError::Timeout(stall)),
        }
    })
    .await
}

/// Opens a stream of raw bytes `[start, end)` of `shard` from the first of `holders` that
/// answers within the stall deadline, noting in `asking` whom it waits for (so that an
/// open outrun by another can blame its server).
#[allow(clippy::too_many_arguments)]
async fn open_one(
    shards: &Arc<dyn ShardTransport>,
    health: &ServerHealth,
    asking: &Mutex<Vec<(u8, ServerInfo, Instant)>>,
    holders: Vec<ServerInfo>,
    hash: ContentHash,
    shard: u8,
    start: u64,
    end: u64,
    stall: Duration,
) -> Result<(ServerInfo, ShardBody), ShardFault> {
    let set = |who: Option<&ServerInfo>| {
        let mut a = asking
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        a.retain(|(s, _, _)| *s != shard);
        if let Some(server) = who {
            a.push((shard, server.clone(), Instant::now()));
        }
    };
    let mut fault = ShardFault::Unreachable;
    for server in holders {
        set(Some(&server));
        let started = Instant::now();
        let r =
            match tokio::time::timeout(stall, shards.read_shard(&server, &hash, shard, start, end))
                .await
            {
                Ok(r) => r,
                Err(_) => Err(ShardError::Timeout(stall)),
            };
        match r {
            Ok(body) => {
                set(None);
                health.answered(&server.id, started.elapsed());
                return Ok((server, body));
            }
            Err(e) => {
                tracing::info!(shard, server = %server.id, error = %e, "shard unavailable");
                if matches!(e, ShardError::Timeout(_)) {
                    health.missed(&server.id);
                }
                if e.is_missing() && fault == ShardFault::Unreachable {
                    fault = ShardFault::Missing(server);
                }
            }
        }
    }
    set(None);
    Err(fault)
}

/// Whether `data` (a block as segments) hashes to `want`, on a blocking thread.
async fn matches(want: Expected, data: &[Bytes]) -> ApiResult<bool> {
    let data = data.to_vec();
    tokio::task::spawn_blocking(move || want.matches(&data))
        .await
        .map_err(|e| ApiError::Internal(format!("hasher failed: {e}")))
}

/// Joins the data pieces of a block, rebuilding missing ones from parity first.
async fn assemble(
    codec: Codec,
    pieces: Vec<Option<Segments>>,
    len: usize,
) -> ApiResult<Vec<Bytes>> {
    if pieces[..DATA_SHARDS].iter().all(Option::is_some) {
        // Healthy block: hand the data pieces on as they arrived, no copy.
        let mut out = Vec::new();
        let mut remaining = len;
        for p in pieces.into_iter().take(DATA_SHARDS).flatten() {
            for seg in p.0 {
                let take = seg.len().min(remaining);
                if take > 0 {
                    out.push(seg.slice(..take));
                }
                remaining -= take;
            }
        }
        return Ok(out);
    }
    tokio::task::spawn_blocking(move || {
        let mut owned: Vec<Option<Vec<u8>>> = pieces
            .into_iter()
            .map(|p| p.map(|b| b.contiguous().to_vec()))
            .collect();
        codec
            .reconstruct_data(&mut owned)
            .map_err(|e| ApiError::Internal(format!("decoding failed: {e}")))?;
        let mut out = Vec::with_capacity(len);
        dos_erasure::join_data(&owned, len, &mut out);
        Ok(vec![Bytes::from(out)])
    })
    .await
    .map_err(|e| ApiError::Internal(format!("decoder failed: {e}")))?
}

/// Where repair should rebuild a shard whose stream failed mid-way: a stream cut mid-body
/// means the data server found a corrupt piece (and quarantined the shard), went away, or
/// hung; repair probes again before writing anything.
fn fault_of(e: &ShardError, server: Option<ServerInfo>) -> ShardFault {
    match server {
        Some(s) if !matches!(e, ShardError::Denied) => ShardFault::Missing(s),
        _ => ShardFault::Unreachable,
    }
}

/// A piece as the transport delivered it: consecutive segments, not copied together.
#[derive(Debug, Clone, Default)]
pub struct Segments(pub Vec<Bytes>);

impl Segments {
    pub fn len(&self) -> usize {
        self.0.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One contiguous buffer (no copy when there is a single segment).
    pub fn contiguous(self) -> Bytes {
        if self.0.len() == 1 {
            return self.0.into_iter().next().unwrap_or_default();
        }
        let mut out = bytes::BytesMut::with_capacity(self.len());
        for s in &self.0 {
            out.extend_from_slice(s);
        }
        out.freeze()
    }
}

/// Reads exact-length pieces out of a shard byte stream; a stream that delivers nothing for
/// the stall deadline fails the read.
pub struct PieceReader {
    body: ShardBody,
    pending: VecDeque<Bytes>,
    stall: Duration,
}

impl PieceReader {
    pub fn new(body: ShardBody, stall: Duration) -> Self {
        Self {
            body,
            pending: VecDeque::new(),
            stall,
        }
    }

    /// The next `n` bytes as received (no copy), or an error if the stream fails, stalls or
    /// ends early.
    pub async fn read_segments(&mut self, n: usize) -> Result<Segments, ShardError> {
        let mut out = Vec::new();
        let mut need = n;
        while need > 0 {
            let chunk = match self.pending.pop_front() {
                Some(c) => c,
                None => match tokio::time::timeout(self.stall, self.body.next()).await {
                    Err(_) => return Err(ShardError::Timeout(self.stall)),
                    Ok(Some(Ok(c))) => c,
                    Ok(Some(Err(e))) => return Err(e),
                    Ok(None) => {
                        return Err(ShardError::Malformed("the shard stream ended early".into()));
                    }
                },
            };
            if chunk.len() > need {
                let mut chunk = chunk;
                let rest = chunk.split_off(need);
                self.pending.push_front(rest);
                out.push(chunk);
                need = 0;
            } else {
                need -= chunk.len();
                if !chunk.is_empty() {
                    out.push(chunk);
                }
            }
        }
        Ok(Segments(out))
    }

    /// The next `n` bytes in one buffer.
    pub async fn read(&mut self, n: usize) -> Result<Bytes, ShardError> {
        Ok(self.read_segments(n).await?.contiguous())
    }
}
