//! The read side: any four good shards give the object back, block by block, starting at the
//! block that holds the first byte asked for. A shard that fails (missing, corrupt, its
//! server gone, or silent for longer than the stall deadline) is replaced by another one
//! mid-stream and reported for repair.
//!
//! No data server is trusted with the bytes: every decoded block is checked against the hash
//! recorded when it was written (see [`BlockHashes`]) before any of it leaves. A block that
//! does not match is read from every shard, the four that give the recorded hash are found,
//! and the shards that disagree are dropped and reported for repair (the read carries on,
//! degraded); with fewer than four right shards the read fails, never serving wrong bytes.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dos_erasure::Codec;
use dos_protocol::{
    BLOCK_SIZE, BlockHashes, ContentHash, DATA_SHARDS, Expected, PIECE_SIZE, ServerInfo,
    TOTAL_SHARDS,
};
use dos_protocol::{piece_len, shard_len};
use dos_transport::{ShardBody, ShardError, ShardTransport};
use futures::{StreamExt, future};

use crate::error::{ApiError, ApiResult};
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
        plan: ReadPlan,
    ) -> ApiResult<Self> {
        let first = plan.first_block;
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

    /// Opens streams (from block `block` on) until four are active.
    async fn fill(&mut self, block: u64) -> ApiResult<()> {
        let start = block * PIECE_SIZE as u64;
        let end = shard_len(self.plan.size).min(self.plan.end_block * PIECE_SIZE as u64);
        loop {
            let need = DATA_SHARDS.saturating_sub(self.active_count());
            if need == 0 {
                return Ok(());
            }
            let candidates: Vec<u8> = (0..TOTAL_SHARDS)
                .filter(|i| self.active[*i].is_none() && self.failed[*i].is_none())
                .take(need)
                .map(|i| i as u8)
                .collect();
            if candidates.is_empty() {
                return Err(ApiError::ShardsUnavailable {
                    available: self.active_count(),
                });
            }
            let opened = open_streams(&self.shards, &self.plan, &candidates, start, end).await;
            let stall = self.plan.stall_timeout;
            for (i, server, body) in opened.good {
                self.active[usize::from(i)] = Some(Active {
                    reader: PieceReader::new(body, stall),
                    server,
                });
            }
            for (i, fault) in opened.bad {
                self.failed[usize::from(i)] = Some(fault);
            }
        }
    }

    /// Reads the pieces of `block` from the active streams, replacing any stream that fails
    /// by another shard opened at this block, until four pieces are in hand.
    async fn read_pieces(&mut self, block: u64) -> ApiResult<Vec<Option<Segments>>> {
        let plen = piece_len(self.plan.size, block);
        let mut pieces: Vec<Option<Segments>> = vec![None; TOTAL_SHARDS];
        if self.active_count() < DATA_SHARDS {
            // Shards were dropped after the last block (they served wrong bytes).
            self.fill(block).await?;
        }
        loop {
            let reads = future::join_all(self.active.iter_mut().zip(pieces.iter()).map(
                |(slot, have)| async move {
                    match (slot, have) {
                        (Some(a), None) => Some(a.reader.read_segments(plen).await),
                        _ => None,
                    }
                },
            ))
            .await;
            let mut lost = false;
            for (i, r) in reads.into_iter().enumerate() {
                match r {
                    Some(Ok(p)) => pieces[i] = Some(p),
                    Some(Err(e)) => {
                        let server = self.active[i].take().map(|a| a.server);
                        tracing::warn!(hash = %self.plan.hash, shard = i, server = ?server.as_ref().map(|s| &s.id), error = %e, "shard read failed mid-stream");
                        self.failed[i] = Some(fault_of(&e, server));
                        lost = true;
                    }
                    None => {}
                }
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
