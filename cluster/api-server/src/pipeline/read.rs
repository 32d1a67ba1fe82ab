//! The read side: any four good shards give the object back, block by block, starting at the
//! block that holds the first byte asked for. A shard that fails (missing, corrupt, its server
//! gone) is replaced by another one mid-stream and reported for repair.

use bytes::Bytes;
use dos_erasure::Codec;
use dos_protocol::{BLOCK_SIZE, ContentHash, DATA_SHARDS, PIECE_SIZE, ServerInfo, TOTAL_SHARDS};
use dos_protocol::{piece_len, shard_len};
use futures::future;

use crate::error::{ApiError, ApiResult};
use crate::shard_client::{PieceReader, Segments, ShardClient, ShardError};

/// Why a shard could not be read: decides whether repair writes it back to the same server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardFault {
    /// Its server answered but has no good copy (missing or corrupt): rebuild there.
    Missing(ServerInfo),
    /// No live server could be reached for it: rebuild elsewhere if a spare server exists.
    Unreachable,
}

struct Active {
    reader: PieceReader,
    addr: String,
}

/// Decodes blocks `[first_block, end_block)` of one object.
pub struct Decoder {
    client: ShardClient,
    codec: Codec,
    hash: ContentHash,
    size: u64,
    /// Live holders of each shard, tried in order.
    holders: Vec<Vec<ServerInfo>>,
    active: Vec<Option<Active>>,
    /// Shards given up on.
    failed: Vec<Option<ShardFault>>,
    next_block: u64,
    end_block: u64,
}

impl Decoder {
    /// Opens enough shard streams to decode blocks `[first_block, end_block)`: the four data
    /// shards when they are healthy (no decoding needed then), parity for any that is not.
    /// Fails before any byte is produced when fewer than four shards can be opened.
    pub async fn open(
        client: ShardClient,
        codec: Codec,
        hash: ContentHash,
        size: u64,
        holders: Vec<Vec<ServerInfo>>,
        first_block: u64,
        end_block: u64,
    ) -> ApiResult<Self> {
        let mut d = Self {
            client,
            codec,
            hash,
            size,
            holders,
            active: (0..TOTAL_SHARDS).map(|_| None).collect(),
            failed: vec![None; TOTAL_SHARDS],
            next_block: first_block,
            end_block,
        };
        d.fill(first_block).await?;
        Ok(d)
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
        let end = shard_len(self.size).min(self.end_block * PIECE_SIZE as u64);
        loop {
            let need = DATA_SHARDS.saturating_sub(self.active_count());
            if need == 0 {
                return Ok(());
            }
            let candidates: Vec<usize> = (0..TOTAL_SHARDS)
                .filter(|i| self.active[*i].is_none() && self.failed[*i].is_none())
                .take(need)
                .collect();
            if candidates.is_empty() {
                return Err(ApiError::ShardsUnavailable {
                    available: self.active_count(),
                });
            }
            let opened = future::join_all(candidates.iter().map(|&i| {
                let holders = self.holders[i].clone();
                let client = self.client.clone();
                let hash = self.hash;
                async move { open_any(&client, &hash, i as u8, &holders, start, end).await }
            }))
            .await;
            for (i, r) in candidates.into_iter().zip(opened) {
                match r {
                    Ok(a) => self.active[i] = Some(a),
                    Err(fault) => self.failed[i] = Some(fault),
                }
            }
        }
    }

    /// Reads the pieces of `block` from the active streams, replacing any stream that fails
    /// by another shard opened at this block, until four pieces are in hand.
    async fn read_pieces(&mut self, block: u64) -> ApiResult<Vec<Option<Segments>>> {
        let plen = piece_len(self.size, block);
        let mut pieces: Vec<Option<Segments>> = vec![None; TOTAL_SHARDS];
        loop {
            let reads = future::join_all(self.active.iter_mut().zip(pieces.iter()).map(
                |(slot, have)| async move {
                    match (slot, have) {
                        (Some(a), None) => Some(a.reader.read_segments(plen, &a.addr).await),
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
                        tracing::warn!(hash = %self.hash, shard = i, error = %e, "shard read failed mid-stream");
                        let addr = self.active[i].take().map(|a| a.addr);
                        self.failed[i] = Some(fault_of(&e, addr.as_deref(), &self.holders[i]));
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

    /// The object bytes of the next block, as consecutive segments, or `None` after the last.
    pub async fn next_block(&mut self) -> ApiResult<Option<Vec<Bytes>>> {
        if self.next_block >= self.end_block {
            return Ok(None);
        }
        let block = self.next_block;
        let pieces = self.read_pieces(block).await?;
        self.next_block += 1;
        let len = (self.size - block * BLOCK_SIZE as u64).min(BLOCK_SIZE as u64) as usize;
        assemble(self.codec.clone(), pieces, len).await.map(Some)
    }

    /// Pieces of every shard for the next block, rebuilding the ones in `want` that are not
    /// read: what repair writes back. Returns `None` after the last block.
    pub async fn next_pieces(&mut self, want: &[u8]) -> ApiResult<Option<Vec<Bytes>>> {
        if self.next_block >= self.end_block {
            return Ok(None);
        }
        let block = self.next_block;
        let pieces = self.read_pieces(block).await?;
        self.next_block += 1;
        let codec = self.codec.clone();
        let want = want.to_vec();
        tokio::task::spawn_blocking(move || {
            let mut owned: Vec<Option<Vec<u8>>> = pieces
                .into_iter()
                .map(|p| p.map(|b| b.contiguous().to_vec()))
                .collect();
            codec
                .reconstruct(&mut owned)
                .map_err(|e| ApiError::Internal(format!("decoding failed: {e}")))?;
            Ok(Some(
                want.iter()
                    .map(|&i| Bytes::from(owned[usize::from(i)].take().unwrap_or_default()))
                    .collect(),
            ))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("decoder failed: {e}")))?
    }
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

fn fault_of(e: &ShardError, addr: Option<&str>, holders: &[ServerInfo]) -> ShardFault {
    let server = addr.and_then(|a| holders.iter().find(|s| s.addr == a));
    match (e, server) {
        (ShardError::Status { status, .. }, Some(s)) if *status == 404 => {
            ShardFault::Missing(s.clone())
        }
        // A stream cut mid-body: the data server found a corrupt piece (and quarantined the
        // shard) or went away. Repair probes again before writing anything.
        (ShardError::Transport { .. } | ShardError::Malformed { .. }, Some(s)) => {
            ShardFault::Missing(s.clone())
        }
        _ => ShardFault::Unreachable,
    }
}

/// Opens shard `shard` on the first holder that serves it.
async fn open_any(
    client: &ShardClient,
    hash: &ContentHash,
    shard: u8,
    holders: &[ServerInfo],
    start: u64,
    end: u64,
) -> Result<Active, ShardFault> {
    let mut fault = ShardFault::Unreachable;
    for s in holders {
        match client.read_shard(&s.addr, hash, shard, start, end).await {
            Ok(body) => {
                return Ok(Active {
                    reader: PieceReader::new(body),
                    addr: s.addr.clone(),
                });
            }
            Err(e) => {
                tracing::warn!(%hash, shard, server = %s.addr, error = %e, "shard unavailable");
                if e.is_not_found() {
                    fault = ShardFault::Missing(s.clone());
                }
            }
        }
    }
    Err(fault)
}

impl Decoder {
    pub fn hash(&self) -> ContentHash {
        self.hash
    }
}
