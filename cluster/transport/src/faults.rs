//! A [`ShardTransport`] wrapper that injects faults, for tests of the write and read
//! pipelines: a call fails or is slow, a shard upload breaks off mid-stream, a commit never
//! answers, a data server answers garbage, a read stream stalls. Each fault can be aimed at
//! one operation, one server and one shard index, for a number of calls or for good.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use dos_protocol::shard::{ShardEntry, TempStatus};
use dos_protocol::{ContentHash, ServerId, ServerInfo};
use futures::StreamExt;

use crate::{PieceStream, ShardBody, ShardError, ShardTransport};

/// The calls of [`ShardTransport`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    CreateTemp,
    WriteTemp,
    TempStatus,
    Commit,
    Abort,
    PutShard,
    ReadShard,
    ReadTemp,
    RemoveShard,
    VerifyShard,
    ListShards,
}

/// What happens to a call a fault applies to.
#[derive(Debug, Clone)]
pub enum Fault {
    /// The call fails at once with this error.
    Fail(ShardError),
    /// The call waits this long first (a slow disk or link), then goes through.
    Delay(Duration),
    /// The call never answers (a silent partition): it waits until the caller gives up.
    Hang,
    /// A write: the upload stream breaks off (the connection is lost) once this many bytes
    /// were sent; the bytes before it may have been written.
    CutWrite { after: u64 },
    /// A write: the upload stream takes this many bytes, then takes nothing more and never
    /// answers (a server whose link went silent in the middle of an upload).
    StallWrite { after: u64 },
    /// A write: the upload stream takes each piece only after this long (a server behind a
    /// slow or lossy link: it never stops, it only falls behind).
    SlowWrite { per_piece: Duration },
    /// A read: the body delivers this many bytes, then nothing more, ever.
    StallRead { after: u64 },
    /// A read: the body delivers this many bytes of garbage (not what was asked), then ends.
    GarbageRead { len: usize },
    /// A read: the body has the right length and shape but every byte is flipped (a lying
    /// data server, or one whose disk changed bytes its own checksums cover).
    LieRead,
}

#[derive(Debug, Clone)]
struct Rule {
    op: Op,
    server: Option<ServerId>,
    shard: Option<u8>,
    fault: Fault,
    remaining: Option<u32>,
}

#[derive(Default)]
struct Inner {
    rules: Vec<Rule>,
    calls: Vec<(Op, ServerId)>,
}

/// The faults in force, shared by the test and the transport.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<Inner>>);

/// A fault being aimed (see [`Faults::on`]).
pub struct Aim<'a> {
    faults: &'a Faults,
    rule: Rule,
}

impl Aim<'_> {
    /// Only calls to this server.
    pub fn server(mut self, id: &ServerId) -> Self {
        self.rule.server = Some(id.clone());
        self
    }

    /// Only calls about this shard index (reads, creates, verifies, removals).
    pub fn shard(mut self, shard: u8) -> Self {
        self.rule.shard = Some(shard);
        self
    }

    /// For the next `n` matching calls only.
    pub fn times(mut self, n: u32) -> Self {
        self.rule.remaining = Some(n);
        self
    }

    /// Puts the fault in force.
    pub fn apply(self) {
        self.faults.inner().rules.push(self.rule);
    }
}

impl Faults {
    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Aims `fault` at calls of `op` (all servers, all shards, every call until narrowed).
    pub fn on(&self, op: Op, fault: Fault) -> Aim<'_> {
        Aim {
            faults: self,
            rule: Rule {
                op,
                server: None,
                shard: None,
                fault,
                remaining: None,
            },
        }
    }

    pub fn clear(&self) {
        self.inner().rules.clear();
    }

    /// Calls of `op` made so far (to any server).
    pub fn calls(&self, op: Op) -> usize {
        self.inner().calls.iter().filter(|(o, _)| *o == op).count()
    }

    /// The servers called with `op` so far, in the order of the calls.
    pub fn called(&self, op: Op) -> Vec<ServerId> {
        self.inner()
            .calls
            .iter()
            .filter(|(o, _)| *o == op)
            .map(|(_, s)| s.clone())
            .collect()
    }

    /// Calls of `op` made so far to `server`.
    pub fn calls_to(&self, op: Op, server: &ServerId) -> usize {
        self.inner()
            .calls
            .iter()
            .filter(|(o, s)| *o == op && s == server)
            .count()
    }

    /// The first fault that applies to this call, counting the call.
    fn take(&self, op: Op, server: &ServerId, shard: Option<u8>) -> Option<Fault> {
        let mut inner = self.inner();
        inner.calls.push((op, server.clone()));
        let rule = inner.rules.iter_mut().find(|r| {
            r.op == op
                && r.server.as_ref().is_none_or(|s| s == server)
                && (r.shard.is_none() || shard.is_none() || r.shard == shard)
                && r.remaining != Some(0)
        })?;
        if let Some(n) = &mut rule.remaining {
            *n -= 1;
        }
        Some(rule.fault.clone())
    }
}

/// `inner` with [`Faults`] applied.
pub struct FaultyTransport<T> {
    inner: T,
    faults: Faults,
}

impl<T: ShardTransport> FaultyTransport<T> {
    pub fn new(inner: T, faults: Faults) -> Self {
        Self { inner, faults }
    }
}

/// Applies the part of a fault that comes before the call: fails, waits or hangs. Returns
/// the fault again when it acts on the call's body instead.
async fn before(fault: Option<Fault>) -> Result<Option<Fault>, ShardError> {
    match fault {
        None => Ok(None),
        Some(Fault::Fail(e)) => Err(e),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            Ok(None)
        }
        Some(Fault::Hang) => std::future::pending().await,
        Some(other) => Ok(Some(other)),
    }
}

fn shape_read(body: ShardBody, fault: Option<Fault>) -> ShardBody {
    match fault {
        Some(Fault::StallRead { after }) => {
            let limited = limit(body, after);
            Box::pin(limited.chain(futures::stream::pending()))
        }
        Some(Fault::GarbageRead { len }) => {
            let junk: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31) ^ 0xA5)
                .collect();
            Box::pin(futures::stream::once(async move { Ok(Bytes::from(junk)) }))
        }
        Some(Fault::LieRead) => Box::pin(
            body.map(|chunk| chunk.map(|c| Bytes::from(c.iter().map(|b| !b).collect::<Vec<u8>>()))),
        ),
        _ => body,
    }
}

/// The first `n` bytes of `body`.
fn limit(body: ShardBody, n: u64) -> ShardBody {
    Box::pin(futures::stream::unfold(
        (body, n),
        |(mut body, left)| async move {
            if left == 0 {
                return None;
            }
            match body.next().await? {
                Ok(mut chunk) => {
                    if chunk.len() as u64 > left {
                        chunk.truncate(left as usize);
                    }
                    let rest = left - chunk.len() as u64;
                    Some((Ok(chunk), (body, rest)))
                }
                Err(e) => Some((Err(e), (body, 0))),
            }
        },
    ))
}

#[async_trait]
impl<T: ShardTransport> ShardTransport for FaultyTransport<T> {
    async fn create_temp(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        length: Option<u64>,
    ) -> Result<String, ShardError> {
        match before(self.faults.take(Op::CreateTemp, &server.id, Some(shard))).await? {
            Some(Fault::GarbageRead { .. }) => Err(ShardError::Malformed("garbage".into())),
            _ => self.inner.create_temp(server, hash, shard, length).await,
        }
    }

    async fn write_temp(
        &self,
        server: &ServerInfo,
        id: &str,
        offset: u64,
        body: PieceStream,
    ) -> Result<TempStatus, ShardError> {
        match before(self.faults.take(Op::WriteTemp, &server.id, None)).await? {
            Some(Fault::CutWrite { after }) => {
                // The upload carries `after` bytes, then the connection is lost.
                let cut = futures::stream::unfold((body, after), |(mut body, left)| async move {
                    if left == 0 {
                        return None;
                    }
                    let mut piece = body.next().await?;
                    if piece.len() as u64 > left {
                        piece.truncate(left as usize);
                    }
                    let rest = left - piece.len() as u64;
                    Some((piece, (body, rest)))
                });
                match self
                    .inner
                    .write_temp(server, id, offset, Box::pin(cut))
                    .await
                {
                    Ok(_) => Err(ShardError::Unreachable(
                        "connection lost during the upload".into(),
                    )),
                    Err(e) => Err(e),
                }
            }
            Some(Fault::StallWrite { after }) => {
                // `after` bytes go through; then the stream is never read again.
                let stalled =
                    futures::stream::unfold((body, after), |(mut body, left)| async move {
                        if left == 0 {
                            futures::future::pending::<()>().await;
                        }
                        let mut piece = body.next().await?;
                        if piece.len() as u64 > left {
                            piece.truncate(left as usize);
                        }
                        let rest = left - piece.len() as u64;
                        Some((piece, (body, rest)))
                    });
                self.inner
                    .write_temp(server, id, offset, Box::pin(stalled))
                    .await?;
                futures::future::pending().await
            }
            Some(Fault::SlowWrite { per_piece }) => {
                let slow = body.then(move |piece| async move {
                    tokio::time::sleep(per_piece).await;
                    piece
                });
                self.inner
                    .write_temp(server, id, offset, Box::pin(slow))
                    .await
            }
            Some(Fault::GarbageRead { .. }) => Err(ShardError::Malformed("garbage".into())),
            _ => self.inner.write_temp(server, id, offset, body).await,
        }
    }

    async fn temp_status(&self, server: &ServerInfo, id: &str) -> Result<TempStatus, ShardError> {
        match before(self.faults.take(Op::TempStatus, &server.id, None)).await? {
            Some(Fault::GarbageRead { .. }) => Err(ShardError::Malformed("garbage".into())),
            _ => self.inner.temp_status(server, id).await,
        }
    }

    async fn commit(
        &self,
        server: &ServerInfo,
        id: &str,
        length: u64,
        hash: &ContentHash,
    ) -> Result<(), ShardError> {
        match before(self.faults.take(Op::Commit, &server.id, None)).await? {
            Some(Fault::GarbageRead { .. }) => Err(ShardError::Malformed("garbage".into())),
            _ => self.inner.commit(server, id, length, hash).await,
        }
    }

    async fn abort(&self, server: &ServerInfo, id: &str) -> Result<(), ShardError> {
        before(self.faults.take(Op::Abort, &server.id, None)).await?;
        self.inner.abort(server, id).await
    }

    async fn put_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        raw: Bytes,
    ) -> Result<(), ShardError> {
        match before(self.faults.take(Op::PutShard, &server.id, Some(shard))).await? {
            Some(Fault::CutWrite { .. }) => Err(ShardError::Unreachable(
                "connection lost during the upload".into(),
            )),
            Some(Fault::GarbageRead { .. }) => Err(ShardError::Malformed("garbage".into())),
            _ => self.inner.put_shard(server, hash, shard, raw).await,
        }
    }

    async fn read_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        let fault = before(self.faults.take(Op::ReadShard, &server.id, Some(shard))).await?;
        let body = self
            .inner
            .read_shard(server, hash, shard, start, end)
            .await?;
        Ok(shape_read(body, fault))
    }

    async fn read_temp(
        &self,
        server: &ServerInfo,
        id: &str,
        start: u64,
        end: u64,
    ) -> Result<ShardBody, ShardError> {
        let fault = before(self.faults.take(Op::ReadTemp, &server.id, None)).await?;
        let body = self.inner.read_temp(server, id, start, end).await?;
        Ok(shape_read(body, fault))
    }

    async fn remove_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
        min_age: Option<Duration>,
    ) -> Result<(), ShardError> {
        before(self.faults.take(Op::RemoveShard, &server.id, Some(shard))).await?;
        self.inner.remove_shard(server, hash, shard, min_age).await
    }

    async fn verify_shard(
        &self,
        server: &ServerInfo,
        hash: &ContentHash,
        shard: u8,
    ) -> Result<u64, ShardError> {
        match before(self.faults.take(Op::VerifyShard, &server.id, Some(shard))).await? {
            Some(Fault::GarbageRead { .. }) => Err(ShardError::Malformed("garbage".into())),
            _ => self.inner.verify_shard(server, hash, shard).await,
        }
    }

    async fn list_shards(
        &self,
        server: &ServerInfo,
        after: Option<(ContentHash, u8)>,
        limit: usize,
    ) -> Result<Vec<ShardEntry>, ShardError> {
        before(self.faults.take(Op::ListShards, &server.id, None)).await?;
        self.inner.list_shards(server, after, limit).await
    }

    async fn set_draining(&self, server: &ServerInfo, draining: bool) -> Result<(), ShardError> {
        self.inner.set_draining(server, draining).await
    }
}
