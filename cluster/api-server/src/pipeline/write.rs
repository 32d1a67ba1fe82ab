//! The write side: shard uploads on six (or, for repair, fewer) data servers, fed by a body
//! streamed through SHA-256 and the Reed-Solomon encoder, or by a decoder rebuilding lost
//! shards; then committed, every one durably, or abandoned.
//!
//! [`store_content`] is the one path from "pieces to write" to "shards committed" that a PUT
//! and a repair take; a resumable upload takes the same steps ([`Uploads::write`] for each
//! part, [`Uploads::commit`] at the end), spread over several requests.
//!
//! A data server that does not create an upload, or store a whole shard, within the write
//! deadline ([`Deadlines::write`], derived from the answer times seen) is suspect, and its
//! shard goes to a live server holding no shard of the content instead (a whole shard is
//! raced: the first server to store it keeps it), so a write succeeds while six servers
//! answer.
//!
//! A server that goes silent (or is lost) in the middle of a streamed upload (content over
//! 1 MiB) is given up once it has not taken a piece or finished its stream within the give-up
//! deadline ([`Deadlines::give_up`]), or committed within the write deadline, when a spare server is there to take its shard and at most two shards
//! are given up ([`Losses`]): the other uploads go on and are committed, and the caller
//! rebuilds the lost shards from them onto spare servers before it records the content
//! (`repair::replace_lost`), so the content is recorded with six committed shards. With no
//! spare, a silent server fails the upload after the stall deadline, as before.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use dos_erasure::Codec;
use dos_protocol::shard::{MAX_WHOLE_SHARD, TempStatus};
use dos_protocol::{BLOCK_SIZE, BlockHashes, ContentHash, PIECE_SIZE, ServerInfo, TOTAL_SHARDS};
use dos_transport::{ShardError, ShardTransport};
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt, future};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::sync::mpsc::OwnedPermit;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::AbortOnDropHandle;

use crate::error::{ApiError, ApiResult};
use crate::health::ServerHealth;

/// One shard upload: which shard, where, and the data server's upload id.
#[derive(Debug, Clone)]
pub struct ShardTarget {
    pub shard: u8,
    pub server: ServerInfo,
    pub temp_id: String,
}

/// A set of shard uploads of one content.
pub struct Uploads {
    shards: Arc<dyn ShardTransport>,
    /// Bound on each create, commit and abort call, and on a piece waiting for its upload.
    deadlines: Deadlines,
    pub targets: Vec<ShardTarget>,
    /// Uploads given up during this request (their servers silent or gone).
    losses: Arc<Losses>,
}

/// The shards of one content whose uploads were given up, and how many may be: at most the
/// parity count, and no more than there are spare servers to rebuild them on.
#[derive(Debug, Default)]
pub struct Losses {
    budget: usize,
    lost: Mutex<Vec<u8>>,
}

impl Losses {
    fn new(budget: usize) -> Self {
        Self {
            budget: budget.min(dos_protocol::PARITY_SHARDS),
            lost: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.lost
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `more` uploads could be given up still.
    pub fn can_lose(&self, more: usize) -> bool {
        self.lock().len() + more <= self.budget
    }

    /// Gives up `shards` (all of them, or none when the budget does not allow it).
    pub fn try_lose(&self, shards: &[u8]) -> bool {
        let mut lost = self.lock();
        let new: Vec<u8> = shards
            .iter()
            .copied()
            .filter(|s| !lost.contains(s))
            .collect();
        if lost.len() + new.len() > self.budget {
            return false;
        }
        lost.extend(new);
        true
    }

    pub fn is_lost(&self, shard: u8) -> bool {
        self.lock().contains(&shard)
    }

    /// The shards given up, in shard order.
    pub fn lost(&self) -> Vec<u8> {
        let mut l = self.lock().clone();
        l.sort_unstable();
        l
    }
}

/// How long shard calls may take before they count as failed, and where a shard goes
/// instead when its server misses the write deadline.
#[derive(Debug, Clone)]
pub struct Deadlines {
    /// Creating, committing or abandoning an upload.
    pub call: Duration,
    /// A piece waiting for its upload stream to take it.
    pub stall: Duration,
    /// Answer times and suspects.
    pub health: Arc<ServerHealth>,
    /// Live servers that may take a shard instead of one that missed its deadline (each at
    /// most once; the targets themselves are skipped), suspects last.
    spares: Arc<Mutex<Vec<ServerInfo>>>,
}

impl Deadlines {
    pub fn of(core: &crate::core::Core) -> Self {
        let mut live = core.bus.live_servers();
        core.health.suspects_last(&mut live);
        core.draining.last(&mut live, &core.bus.draining_servers());
        Self {
            call: core.config.shard_call_timeout,
            stall: core.config.shard_stall_timeout,
            health: core.health.clone(),
            spares: Arc::new(Mutex::new(live)),
        }
    }

    /// These deadlines with no server but `servers` taking a shard instead (repair: the
    /// other live servers may hold shards of the content already).
    pub fn without_spares(self) -> Self {
        Self {
            spares: Arc::default(),
            ..self
        }
    }

    /// How long creating an upload or storing a whole shard may take before another server
    /// is asked: a few hedge deadlines (a write fsyncs), at least a second.
    pub fn write(&self) -> Duration {
        (self.health.hedge_after() * 4).clamp(Duration::from_secs(1), self.call)
    }

    /// How long a stream may take no piece, or go on after the others ended, before it is
    /// given up when a spare can take its shard: twice the hedge deadline, 0.5 s at least,
    /// the write deadline at most (a commit, which fsyncs, gets the write deadline).
    pub fn give_up(&self) -> Duration {
        (self.health.hedge_after() * 2).clamp(Duration::from_millis(500), self.write())
    }

    /// How many live servers hold none of `targets`' shards (could take a lost one).
    fn spares_left(&self, targets: &[ServerInfo]) -> usize {
        self.spares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|s| !targets.iter().any(|t| t.id == s.id))
            .count()
    }

    /// A live server holding none of `targets`' shards, for a shard whose server missed
    /// its deadline; never the same twice.
    fn spare(&self, targets: &[ServerInfo]) -> Option<ServerInfo> {
        let mut spares = self
            .spares
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let i = spares
            .iter()
            .position(|s| !targets.iter().any(|t| t.id == s.id))?;
        Some(spares.remove(i))
    }
}

/// `call`, or [`ShardError::Timeout`] after `limit`.
async fn within<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, ShardError>>,
) -> Result<T, ShardError> {
    tokio::time::timeout(limit, call)
        .await
        .unwrap_or(Err(ShardError::Timeout(limit)))
}

impl Uploads {
    /// Creates an upload of each `(shard, server)`, all at once; on any failure the ones
    /// created are abandoned and the error is returned.
    pub async fn create(
        shards: &Arc<dyn ShardTransport>,
        deadlines: Deadlines,
        hash: &ContentHash,
        servers: &[(u8, ServerInfo)],
        shard_length: Option<u64>,
    ) -> ApiResult<Self> {
        let all: Vec<ServerInfo> = servers.iter().map(|(_, s)| s.clone()).collect();
        let (all, d) = (&all, &deadlines);
        let results = future::join_all(servers.iter().map(|(shard, server)| async move {
            let mut server = server.clone();
            loop {
                let started = Instant::now();
                let created = within(
                    d.write(),
                    shards.create_temp(&server, hash, *shard, shard_length),
                )
                .await;
                match created {
                    Ok(temp_id) => {
                        d.health.answered(&server.id, started.elapsed());
                        return Ok(ShardTarget {
                            shard: *shard,
                            server,
                            temp_id,
                        });
                    }
                    Err(e) => {
                        if matches!(e, ShardError::Timeout(_)) {
                            d.health.missed(&server.id);
                        }
                        match d.spare(all) {
                            Some(spare) => {
                                tracing::warn!(%hash, shard, server = %server.id, instead = %spare.id, error = %e, "upload not created; another server takes the shard");
                                server = spare;
                            }
                            None => {
                                tracing::warn!(%hash, shard, server = %server.id, error = %e, "upload not created");
                                return Err(e);
                            }
                        }
                    }
                }
            }
        }))
        .await;
        let mut targets = Vec::new();
        let mut failure = None;
        for r in results {
            match r {
                Ok(t) => targets.push(t),
                Err(e) => failure = Some(e),
            }
        }
        let uploads = Self::resume(shards, deadlines.clone(), targets);
        if let Some(e) = failure {
            uploads.abort().await;
            return Err(ApiError::ShardWrite(e));
        }
        Ok(uploads)
    }

    /// Uploads created earlier (a resumable upload's token names them).
    pub fn resume(
        shards: &Arc<dyn ShardTransport>,
        deadlines: Deadlines,
        targets: Vec<ShardTarget>,
    ) -> Self {
        let servers: Vec<ServerInfo> = targets.iter().map(|t| t.server.clone()).collect();
        let losses = Arc::new(Losses::new(deadlines.spares_left(&servers)));
        Self {
            shards: shards.clone(),
            deadlines,
            targets,
            losses,
        }
    }

    /// Marks `shards` given up (a token says so); false when the budget does not allow it.
    pub fn given_up(&self, shards: &[u8]) -> bool {
        self.losses.try_lose(shards)
    }

    /// The uploads not given up.
    pub fn kept(&self) -> impl Iterator<Item = &ShardTarget> {
        self.targets
            .iter()
            .filter(|t| !self.losses.is_lost(t.shard))
    }

    /// The shards whose uploads were given up (to be rebuilt from the others once they are
    /// committed), in shard order.
    pub fn lost(&self) -> Vec<u8> {
        self.losses.lost()
    }

    /// Raw shard bytes that every upload not given up holds (the least of what each says).
    /// An upload whose server does not answer within the write deadline, is unreachable or
    /// no longer has it (a data server that restarted) is given up when the loss budget
    /// allows; else that is the error. `NotFound` when no upload is left at all (finished,
    /// expired or abandoned).
    pub async fn held(&self) -> Result<u64, ShardError> {
        let limit = if self.losses.can_lose(1) {
            self.deadlines.write()
        } else {
            self.deadlines.call
        };
        let kept: Vec<&ShardTarget> = self.kept().collect();
        let statuses = future::join_all(kept.iter().map(|t| async move {
            let started = Instant::now();
            let s = within(limit, self.shards.temp_status(&t.server, &t.temp_id)).await;
            match &s {
                Ok(_) => self
                    .deadlines
                    .health
                    .answered(&t.server.id, started.elapsed()),
                Err(ShardError::Timeout(_)) => self.deadlines.health.missed(&t.server.id),
                Err(_) => {}
            }
            s
        }))
        .await;
        let mut min = u64::MAX;
        let mut failed = Vec::new();
        let mut missing = 0;
        let mut first_error = None;
        for (t, s) in kept.iter().zip(statuses) {
            match s {
                Ok(s) => min = min.min(s.received),
                Err(e) => {
                    if e.is_missing() {
                        missing += 1;
                    }
                    if !(e.is_missing() || e.is_unreachable()) {
                        return Err(e);
                    }
                    tracing::warn!(shard = t.shard, server = %t.server.id, error = %e, "shard upload does not answer");
                    failed.push(t.shard);
                    first_error.get_or_insert(e);
                }
            }
        }
        if missing == kept.len() {
            return Err(ShardError::NotFound);
        }
        if let Some(e) = first_error
            && !self.losses.try_lose(&failed)
        {
            return Err(e);
        }
        Ok(min)
    }

    /// Streams what `feed` sends into the uploads not given up, from raw shard offset
    /// `offset`, and waits until every data server has written it (or its upload was given
    /// up, see [`Losses`]).
    pub async fn write<T, F, Fut>(&self, offset: u64, feed: F) -> ApiResult<T>
    where
        F: FnOnce(ShardWriters) -> Fut,
        Fut: Future<Output = ApiResult<(T, ShardWriters)>>,
    {
        let writers = ShardWriters::open(
            &self.shards,
            &self.targets,
            offset,
            &self.deadlines,
            self.losses.clone(),
        );
        let (value, writers) = feed(writers).await?;
        writers.finish().await?;
        Ok(value)
    }

    /// The servers with the shard each took, in shard order (given up ones included: see
    /// [`lost`](Self::lost)).
    pub fn placed(&self) -> Vec<(u8, ServerInfo)> {
        self.targets
            .iter()
            .map(|t| (t.shard, t.server.clone()))
            .collect()
    }

    /// Commits every upload not given up durably as shards of `hash`. A commit that fails,
    /// or is still unanswered the write deadline after the ones that could not be given up,
    /// is given up when the loss budget allows; else it fails the whole.
    pub async fn commit(&self, shard_length: u64, hash: &ContentHash) -> ApiResult<()> {
        let commits = self
            .kept()
            .map(|t| {
                let call = within(
                    self.deadlines.call,
                    self.shards
                        .commit(&t.server, &t.temp_id, shard_length, hash),
                );
                (
                    t.shard,
                    Box::pin(async move { call.await.map(drop) }) as BoxCall<'_>,
                )
            })
            .collect();
        let outlasted = settle(commits, &self.losses, self.deadlines.write(), "commit")
            .await
            .map_err(ApiError::ShardWrite)?;
        for t in self.targets.iter().filter(|t| outlasted.contains(&t.shard)) {
            self.deadlines.health.missed(&t.server.id);
        }
        self.forget_lost();
        Ok(())
    }

    /// Abandons, in the background, the uploads given up (their servers may answer later or
    /// never; the temp files expire otherwise).
    fn forget_lost(&self) {
        for t in self.targets.iter().filter(|t| self.losses.is_lost(t.shard)) {
            let (shards, t, limit) = (self.shards.clone(), t.clone(), self.deadlines.call);
            tokio::spawn(async move {
                let _ = within(limit, shards.abort(&t.server, &t.temp_id)).await;
            });
        }
    }

    /// Abandons every upload; failures only mean the temp files expire later.
    pub async fn abort(&self) {
        self.forget_lost();
        future::join_all(self.kept().map(|t| async move {
            let abort = self.shards.abort(&t.server, &t.temp_id);
            if let Err(e) = within(self.deadlines.call, abort).await {
                tracing::debug!(server = %t.server.id, error = %e, "abandoning an upload failed; it will expire");
            }
        }))
        .await;
    }

    /// The servers, in shard order.
    pub fn servers(&self) -> Vec<ServerInfo> {
        self.targets.iter().map(|t| t.server.clone()).collect()
    }
}

/// Where the shards of content just stored went.
#[derive(Debug, Clone, Default)]
pub struct Committed {
    /// The server of each shard, in shard order.
    pub placed: Vec<(u8, ServerInfo)>,
    /// Shards whose uploads were given up: the others are committed, these are to be
    /// rebuilt from them (`repair::replace_lost`) before the content is recorded.
    pub lost: Vec<u8>,
}

/// Stores shards `servers` of content `hash`: creates the uploads, streams what `feed` sends
/// (it returns its result and the raw length every shard ends up with), commits every one
/// durably; on any failure abandons them all. The path of a PUT and of a repair. Returns
/// `feed`'s result and where each shard went (a server that missed its deadline was
/// replaced, see [`Deadlines::write`]; one that went silent mid-stream was given up, see
/// [`Losses`]).
///
/// Shards of a known length of at most [`MAX_WHOLE_SHARD`] (objects up to 1 MiB) are
/// gathered here and sent whole, one request per data server that writes and commits them
/// (and packs them there); nothing is created before the bytes are complete, so a failed
/// request leaves nothing to abandon but shards no record names (orphans, collected later).
pub async fn store_content<T, F, Fut>(
    shards: &Arc<dyn ShardTransport>,
    deadlines: Deadlines,
    hash: &ContentHash,
    servers: &[(u8, ServerInfo)],
    shard_length: Option<u64>,
    feed: F,
) -> ApiResult<(T, Committed)>
where
    F: FnOnce(ShardWriters) -> Fut,
    Fut: Future<Output = ApiResult<((T, u64), ShardWriters)>>,
{
    if let Some(len) = shard_length
        && len <= MAX_WHOLE_SHARD as u64
    {
        let writers = ShardWriters::whole(shards, deadlines, hash, servers, len);
        let ((value, _), writers) = feed(writers).await?;
        let placed = writers.finish().await?;
        let lost = Vec::new();
        return Ok((value, Committed { placed, lost }));
    }
    let uploads = Uploads::create(shards, deadlines, hash, servers, shard_length).await?;
    let stored = async {
        let (value, length) = uploads.write(0, feed).await?;
        uploads.commit(length, hash).await?;
        let (placed, lost) = (uploads.placed(), uploads.lost());
        Ok((value, Committed { placed, lost }))
    }
    .await;
    match stored {
        Ok(value) => Ok(value),
        Err(e) => {
            uploads.abort().await;
            Err(e)
        }
    }
}

/// One shard call (a commit, or an upload stream's end) as [`settle`] waits for it.
type BoxCall<'a> = std::pin::Pin<Box<dyn Future<Output = Result<(), ShardError>> + Send + 'a>>;

/// Waits for one call per shard. A call that fails is given up (`losses`) when the budget
/// allows; once the ones still running could all be given up, they get `grace` more, then
/// are given up (and dropped). Else the first failure that cannot be given up.
/// Returns the shards given up for outlasting the deadline (their servers are suspect).
async fn settle(
    calls: Vec<(u8, BoxCall<'_>)>,
    losses: &Losses,
    grace: Duration,
    what: &str,
) -> Result<Vec<u8>, ShardError> {
    let mut remaining: Vec<u8> = calls.iter().map(|(shard, _)| *shard).collect();
    let mut running: FuturesUnordered<_> = calls
        .into_iter()
        .map(|(shard, call)| async move { (shard, call.await) })
        .collect();
    let mut give_up_at: Option<tokio::time::Instant> = None;
    loop {
        let next = match give_up_at {
            None => running.next().await,
            Some(at) => match tokio::time::timeout_at(at, running.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some((shard, result)) = next else {
            return Ok(Vec::new());
        };
        remaining.retain(|s| *s != shard);
        if let Err(e) = result {
            tracing::warn!(shard, error = %e, "shard {what} failed");
            if !losses.try_lose(&[shard]) {
                return Err(e);
            }
        }
        if give_up_at.is_none() && !remaining.is_empty() && losses.can_lose(remaining.len()) {
            give_up_at = Some(tokio::time::Instant::now() + grace);
        }
    }
    tracing::warn!(shards = ?remaining, "shard {what} unanswered past its deadline; given up");
    if losses.try_lose(&remaining) {
        Ok(remaining)
    } else {
        Err(ShardError::Timeout(grace))
    }
}

/// Streams pieces into a set of uploads, one long request per upload; or, for small
/// shards, gathers them to send each shard whole at the end.
pub struct ShardWriters {
    /// Per target, in shard order: its stream's sender, `None` once given up.
    senders: Vec<Option<mpsc::Sender<Bytes>>>,
    /// Per target: the request streaming into its upload (aborted when dropped).
    tasks: Vec<Option<StreamTask>>,
    /// Per target: its shard and server.
    shards_of: Vec<(u8, ServerInfo)>,
    /// A piece an upload does not take within this fails the write (with no loss allowed).
    stall: Duration,
    deadlines: Option<Deadlines>,
    losses: Arc<Losses>,
    whole: Option<Whole>,
    /// When the streams opened, and per target how long the request waited for its stream
    /// alone (after every other stream had taken its piece): a stream slower than the rest
    /// (a server behind a slow link) shows here even when it never stalls outright.
    opened: Instant,
    alone: Vec<Duration>,
}

type StreamTask = AbortOnDropHandle<Result<TempStatus, ShardError>>;

/// What became of offering one piece to an upload stream.
enum Offer {
    /// Given up before: the piece is dropped.
    Skip,
    Ready(OwnedPermit<Bytes>),
    /// The request ended (its task holds the reason).
    Closed,
    Stalled,
}

async fn offer(tx: Option<mpsc::Sender<Bytes>>, limit: Duration) -> Offer {
    let Some(tx) = tx else { return Offer::Skip };
    match tokio::time::timeout(limit, tx.reserve_owned()).await {
        Ok(Ok(permit)) => Offer::Ready(permit),
        Ok(Err(_)) => Offer::Closed,
        Err(_) => Offer::Stalled,
    }
}

/// Shards gathered in memory (at most [`MAX_WHOLE_SHARD`] each) to be stored in one call.
struct Whole {
    shards: Arc<dyn ShardTransport>,
    deadlines: Deadlines,
    hash: ContentHash,
    targets: Vec<(u8, ServerInfo)>,
    bufs: Vec<BytesMut>,
}

impl ShardWriters {
    /// Starts one streaming request per target not given up, writing from raw shard offset
    /// `offset`.
    fn open(
        shards: &Arc<dyn ShardTransport>,
        targets: &[ShardTarget],
        offset: u64,
        deadlines: &Deadlines,
        losses: Arc<Losses>,
    ) -> Self {
        let mut senders = Vec::new();
        let mut tasks = Vec::new();
        for t in targets {
            if losses.is_lost(t.shard) {
                senders.push(None);
                tasks.push(None);
                continue;
            }
            let (tx, rx) = mpsc::channel(2);
            let shards = shards.clone();
            let (server, id) = (t.server.clone(), t.temp_id.clone());
            let task = tokio::spawn(dos_transport::request_id::carry(async move {
                shards
                    .write_temp(&server, &id, offset, Box::pin(ReceiverStream::new(rx)))
                    .await
                    .inspect_err(
                        |e| tracing::warn!(server = %server.id, error = %e, "shard upload failed"),
                    )
            }));
            tasks.push(Some(AbortOnDropHandle::new(task)));
            senders.push(Some(tx));
        }
        Self {
            senders,
            tasks,
            shards_of: targets
                .iter()
                .map(|t| (t.shard, t.server.clone()))
                .collect(),
            stall: deadlines.stall,
            deadlines: Some(deadlines.clone()),
            losses,
            whole: None,
            opened: Instant::now(),
            alone: vec![Duration::ZERO; targets.len()],
        }
    }

    fn whole(
        shards: &Arc<dyn ShardTransport>,
        deadlines: Deadlines,
        hash: &ContentHash,
        targets: &[(u8, ServerInfo)],
        length: u64,
    ) -> Self {
        Self {
            senders: Vec::new(),
            tasks: Vec::new(),
            shards_of: Vec::new(),
            stall: deadlines.stall,
            deadlines: None,
            losses: Arc::default(),
            whole: Some(Whole {
                shards: shards.clone(),
                deadlines: deadlines.clone(),
                hash: *hash,
                targets: targets.to_vec(),
                bufs: targets
                    .iter()
                    .map(|_| BytesMut::with_capacity(length as usize))
                    .collect(),
            }),
            opened: Instant::now(),
            alone: Vec::new(),
        }
    }

    /// Sends one piece to each upload (`pieces[i]` to the i-th target).
    pub async fn send(&mut self, pieces: Vec<Bytes>) -> ApiResult<()> {
        if let Some(w) = &mut self.whole {
            for (buf, p) in w.bufs.iter_mut().zip(pieces) {
                if buf.len() + p.len() > MAX_WHOLE_SHARD {
                    return Err(ApiError::Internal(
                        "a shard grew past its declared length".into(),
                    ));
                }
                buf.extend_from_slice(&p);
            }
            return Ok(());
        }
        // A stream that takes no piece within the give-up deadline is given up when the
        // loss budget allows (its shard is rebuilt later); else it has the stall deadline.
        let first = match &self.deadlines {
            Some(d) if self.losses.can_lose(1) => d.give_up().min(self.stall),
            _ => self.stall,
        };
        let started = Instant::now();
        let timed = future::join_all(self.senders.iter().map(|tx| async move {
            let o = offer(tx.clone(), first).await;
            (o, started.elapsed())
        }))
        .await;
        let slowest = self.note_waits(&timed);
        let mut offers: Vec<Offer> = timed.into_iter().map(|(o, _)| o).collect();
        if let Some(i) = slowest
            && matches!(offers[i], Offer::Ready(_))
            && self.lags_behind(i)
            && self.losses.try_lose(&[self.shards_of[i].0])
        {
            let (shard, server) = &self.shards_of[i];
            if let Some(d) = &self.deadlines {
                d.health.missed(&server.id);
            }
            tracing::warn!(shard, server = %server.id, waited_ms = self.alone[i].as_millis() as u64, "shard upload lags far behind the others; given up, to be rebuilt on a spare server");
            self.senders[i] = None;
            self.tasks[i] = None;
            offers[i] = Offer::Skip;
        }
        let failed: Vec<usize> = (0..offers.len())
            .filter(|&i| matches!(offers[i], Offer::Closed | Offer::Stalled))
            .collect();
        if !failed.is_empty() {
            let shards: Vec<u8> = failed.iter().map(|&i| self.shards_of[i].0).collect();
            if self.losses.try_lose(&shards) {
                for &i in &failed {
                    let (shard, server) = &self.shards_of[i];
                    if matches!(offers[i], Offer::Stalled)
                        && let Some(d) = &self.deadlines
                    {
                        d.health.missed(&server.id);
                    }
                    tracing::warn!(shard, server = %server.id, "shard upload stopped taking bytes; given up, to be rebuilt on a spare server");
                    self.senders[i] = None;
                    self.tasks[i] = None;
                    offers[i] = Offer::Skip;
                }
            } else if failed.iter().any(|&i| matches!(offers[i], Offer::Closed)) {
                // The permits hold senders: dropped, so that the other streams end.
                drop(offers);
                return Err(self.first_error().await);
            } else {
                // Only stalled streams, and none may be given up: they get the rest of the
                // stall deadline.
                let rest = self.stall.saturating_sub(first);
                for &i in &failed {
                    offers[i] = offer(self.senders[i].clone(), rest).await;
                    match offers[i] {
                        Offer::Closed => {
                            drop(offers);
                            return Err(self.first_error().await);
                        }
                        Offer::Stalled => {
                            // A data server stopped taking its shard: the uploads are given up.
                            self.tasks.clear();
                            return Err(ApiError::ShardWrite(ShardError::Timeout(self.stall)));
                        }
                        _ => {}
                    }
                }
            }
        }
        for (o, p) in offers.into_iter().zip(pieces) {
            if let Offer::Ready(permit) = o {
                permit.send(p);
            }
        }
        Ok(())
    }

    /// Adds what the request waited for the slowest stream alone (past the next slowest) to
    /// that stream's account; returns it. `None` with fewer than two streams (a lone stream
    /// is behind no other).
    fn note_waits(&mut self, timed: &[(Offer, Duration)]) -> Option<usize> {
        let mut order: Vec<usize> = (0..timed.len())
            .filter(|&i| !matches!(timed[i].0, Offer::Skip))
            .collect();
        if order.len() < 2 {
            return None;
        }
        order.sort_by_key(|&i| timed[i].1);
        let slowest = order[order.len() - 1];
        let next = timed[order[order.len() - 2]].1;
        if let Some(a) = self.alone.get_mut(slowest) {
            *a += timed[slowest].1.saturating_sub(next);
        }
        Some(slowest)
    }

    /// Whether stream `i` has kept the request waiting, on its own, past the give-up
    /// deadline and for more than half the time since the streams opened (random
    /// slowness spreads over all streams; a slow server's does not).
    fn lags_behind(&self, i: usize) -> bool {
        let Some(d) = &self.deadlines else {
            return false;
        };
        let alone = self.alone.get(i).copied().unwrap_or_default();
        alone > d.give_up() && alone * 2 > self.opened.elapsed()
    }

    async fn first_error(&mut self) -> ApiError {
        self.senders.clear();
        for t in self.tasks.drain(..).flatten() {
            match t.await {
                Ok(Err(e)) => return ApiError::ShardWrite(e),
                Err(e) => return ApiError::Internal(format!("shard writer failed: {e}")),
                Ok(Ok(_)) => {}
            }
        }
        ApiError::Internal("a shard upload ended early".into())
    }

    /// Ends the streams and waits until every data server has written what it received
    /// (gathered shards: has stored them durably, each raced onto a spare server when its
    /// own misses the write deadline). Returns where each gathered shard went (streamed
    /// ones: nothing; their uploads say).
    async fn finish(mut self) -> ApiResult<Vec<(u8, ServerInfo)>> {
        if let Some(w) = self.whole.take() {
            let Whole {
                shards,
                deadlines,
                hash,
                targets,
                bufs,
            } = w;
            let all: Vec<ServerInfo> = targets.iter().map(|(_, s)| s.clone()).collect();
            let (all, d, shards) = (&all, &deadlines, &shards);
            let results = future::join_all(targets.iter().zip(bufs).map(|((shard, server), buf)| async move {
                put_raced(shards, d, all, &hash, *shard, server.clone(), buf.freeze())
                    .await
                    .map(|s| (*shard, s))
                    .inspect_err(|e| tracing::warn!(%hash, shard, server = %server.id, error = %e, "shard not stored"))
            }))
            .await;
            return results
                .into_iter()
                .collect::<Result<Vec<_>, _>>()
                .map_err(ApiError::ShardWrite);
        }
        self.senders.clear();
        let Some(d) = self.deadlines.clone() else {
            return Ok(Vec::new());
        };
        let ends: Vec<(u8, BoxCall<'static>)> = self
            .tasks
            .drain(..)
            .zip(&self.shards_of)
            .filter_map(|(t, (shard, _))| Some((*shard, t?)))
            .map(|(shard, t)| {
                let end: BoxCall<'static> = Box::pin(async move {
                    match t.await {
                        Ok(r) => r.map(drop),
                        Err(e) => Err(ShardError::Unreachable(format!("shard writer failed: {e}"))),
                    }
                });
                (shard, end)
            })
            .collect();
        let outlasted = settle(ends, &self.losses, d.give_up(), "upload")
            .await
            .map_err(ApiError::ShardWrite)?;
        for (_, server) in self.shards_of.iter().filter(|(s, _)| outlasted.contains(s)) {
            d.health.missed(&server.id);
        }
        Ok(Vec::new())
    }
}

/// Stores a whole shard on `server`; if it has not within the write deadline, on a spare
/// server too, and the first to store it keeps it (the other request is dropped). Returns
/// the server that has it.
async fn put_raced(
    shards: &Arc<dyn ShardTransport>,
    d: &Deadlines,
    targets: &[ServerInfo],
    hash: &ContentHash,
    shard: u8,
    server: ServerInfo,
    raw: Bytes,
) -> Result<ServerInfo, ShardError> {
    let started = Instant::now();
    let first = within(d.call, shards.put_shard(&server, hash, shard, raw.clone()));
    tokio::pin!(first);
    let spare = match tokio::time::timeout(d.write(), &mut first).await {
        Ok(Ok(())) => {
            d.health.answered(&server.id, started.elapsed());
            return Ok(server.clone());
        }
        Ok(Err(e)) => {
            if matches!(e, ShardError::Timeout(_)) {
                d.health.missed(&server.id);
            }
            let Some(spare) = d.spare(targets) else {
                return Err(e);
            };
            tracing::warn!(%hash, shard, server = %server.id, instead = %spare.id, error = %e, "shard not stored; another server takes it");
            return within(d.call, shards.put_shard(&spare, hash, shard, raw))
                .await
                .map(|()| spare);
        }
        Err(_) => {
            d.health.missed(&server.id);
            match d.spare(targets) {
                Some(spare) => spare,
                None => return first.await.map(|()| server.clone()),
            }
        }
    };
    tracing::info!(%hash, shard, server = %server.id, instead = %spare.id, "shard store slow; raced on another server");
    let second = within(d.call, shards.put_shard(&spare, hash, shard, raw));
    tokio::pin!(second);
    tokio::select! {
        r = &mut first => match r {
            Ok(()) => Ok(server.clone()),
            Err(_) => second.await.map(|()| spare.clone()),
        },
        r = &mut second => match r {
            Ok(()) => Ok(spare.clone()),
            Err(_) => first.await.map(|()| server.clone()),
        },
    }
}

/// How slowly a request body may arrive: past `grace`, on average at least `min_rate` bytes
/// a second since its first byte was awaited (a body trickling a byte a minute would
/// otherwise hold its request slot for ever, each byte resetting the idle timeout).
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    pub min_rate: u64,
    pub grace: Duration,
}

impl Default for BodyPace {
    fn default() -> Self {
        Self {
            min_rate: 1024,
            grace: Duration::from_secs(30),
        }
    }
}

/// Reading one request body: the idle timeout and the pace.
pub struct BodyLimits {
    pub idle: Duration,
    pub pace: BodyPace,
    started: std::time::Instant,
    bytes: u64,
}

impl BodyLimits {
    pub fn new(idle: Duration, pace: BodyPace) -> Self {
        Self {
            idle,
            pace,
            started: std::time::Instant::now(),
            bytes: 0,
        }
    }

    /// The limits of the server in `core`, starting now.
    pub fn of(core: &crate::core::Core) -> Self {
        Self::new(core.config.body_idle_timeout, core.config.body_pace)
    }
}

/// The next chunk of a request body, or [`ApiError::BodyStalled`] when the client sent
/// nothing for the idle time, or [`ApiError::BodyTooSlow`] when it sends too slowly.
async fn next_frame<S, E>(
    body: &mut S,
    limits: &mut BodyLimits,
) -> ApiResult<Option<Result<Bytes, E>>>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    let frame = tokio::time::timeout(limits.idle, body.next())
        .await
        .map_err(|_| ApiError::BodyStalled {
            secs: limits.idle.as_secs(),
        })?;
    if let Some(Ok(f)) = &frame {
        limits.bytes += f.len() as u64;
    }
    let elapsed = limits.started.elapsed();
    if frame.is_some()
        && elapsed > limits.pace.grace
        && (limits.bytes as f64) < limits.pace.min_rate as f64 * elapsed.as_secs_f64()
    {
        return Err(ApiError::BodyTooSlow {
            min_rate: limits.pace.min_rate,
        });
    }
    Ok(frame)
}

/// The digests of an object being stored: SHA-256 of all its bytes (its content hash, once
/// finished) and BLAKE3 of each block (recorded so that reads check every block they decode).
#[derive(Clone, Default)]
pub struct ContentDigest {
    pub hasher: Sha256,
    pub blocks: BlockHashes,
}

impl ContentDigest {
    /// Feeds the next whole block (or the object's last, short one).
    pub fn update(&mut self, block: &[u8]) {
        self.hasher.update(block);
        self.blocks.push(dos_protocol::block_hash(block));
    }

    /// The content hash and the block hashes worth recording for `size` bytes.
    pub fn finish(self, size: u64) -> (ContentHash, BlockHashes) {
        (
            ContentHash(self.hasher.finalize().into()),
            self.blocks.for_content(size),
        )
    }
}

/// What streaming a body produced.
pub struct Encoded {
    pub digest: ContentDigest,
    /// Object bytes accepted (whole blocks, plus the final short block when it ends the object).
    pub accepted: u64,
}

/// Streams `body` in blocks through SHA-256 (of the object), BLAKE3 (of each block) and the
/// encoder into `writers` (all six shards, in shard order). `already` bytes of the object were accepted before this body; `total` is
/// the object size when known. A trailing partial block that does not end the object is
/// dropped (the client resends it). Body reading, hashing/encoding (on a blocking thread) and
/// the six uploads run concurrently.
pub async fn encode_stream<S, E>(
    codec: &Codec,
    body: S,
    writers: ShardWriters,
    digest: ContentDigest,
    already: u64,
    total: Option<u64>,
    limits: BodyLimits,
) -> ApiResult<(Encoded, ShardWriters)>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let (block_tx, mut block_rx) = mpsc::channel::<Bytes>(2);
    let codec = codec.clone();
    let encoder = tokio::spawn(dos_transport::request_id::carry(async move {
        let mut writers = writers;
        let ContentDigest {
            mut hasher,
            mut blocks,
        } = digest;
        let mut accepted = 0u64;
        while let Some(block) = block_rx.recv().await {
            accepted += block.len() as u64;
            let codec = codec.clone();
            // Hashing and encoding a block on two threads at once: SHA-256 of the object is
            // the longest step and it is sequential over the object, so it must not wait for
            // the codec; the block's own hash goes with the encoding.
            let hashed = block.clone();
            let hashing = tokio::task::spawn_blocking(move || {
                hasher.update(&hashed);
                hasher
            });
            let encoding = tokio::task::spawn_blocking(move || {
                let mut pieces: [Vec<u8>; TOTAL_SHARDS] = Default::default();
                for p in pieces.iter_mut() {
                    p.reserve_exact(PIECE_SIZE);
                }
                codec.encode_block(&block, &mut pieces);
                (pieces, dos_protocol::block_hash(&block))
            });
            let (h, encoded) = futures::future::join(hashing, encoding).await;
            let failed =
                |e: tokio::task::JoinError| ApiError::Internal(format!("encoder failed: {e}"));
            hasher = h.map_err(failed)?;
            let (pieces, block_hash) = encoded.map_err(failed)?;
            blocks.push(block_hash);
            writers
                .send(pieces.into_iter().map(Bytes::from).collect())
                .await?;
        }
        let digest = ContentDigest { hasher, blocks };
        Ok::<_, ApiError>((Encoded { digest, accepted }, writers))
    }));

    let mut body = body;
    let mut limits = limits;
    let mut buf = BytesMut::with_capacity(BLOCK_SIZE);
    let mut received = already;
    let mut encoder_gone = false;
    let mut read_error = None;
    loop {
        let frame = match next_frame(&mut body, &mut limits).await {
            Ok(Some(Ok(f))) => f,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                read_error = Some(ApiError::BadRequest(format!("reading request body: {e}")));
                break;
            }
            Err(e) => {
                read_error = Some(e);
                break;
            }
        };
        received += frame.len() as u64;
        if let Some(t) = total
            && received > t
        {
            read_error = Some(ApiError::BadRequest(format!(
                "body goes past the declared size of {t} bytes"
            )));
            break;
        }
        buf.extend_from_slice(&frame);
        while buf.len() >= BLOCK_SIZE {
            if block_tx
                .send(buf.split_to(BLOCK_SIZE).freeze())
                .await
                .is_err()
            {
                encoder_gone = true;
                break;
            }
        }
        if encoder_gone {
            break;
        }
    }
    if read_error.is_none() && !encoder_gone && !buf.is_empty() {
        let ends_object = total.is_none_or(|t| received == t);
        if ends_object && block_tx.send(buf.freeze()).await.is_err() {
            encoder_gone = true;
        }
    }
    drop(block_tx);
    let result = encoder
        .await
        .map_err(|e| ApiError::Internal(format!("encoder failed: {e}")))?;
    match (read_error, result) {
        (Some(e), _) => Err(e),
        (None, Err(e)) => Err(e),
        (None, Ok(_)) if encoder_gone => Err(ApiError::Internal("encoder stopped early".into())),
        (None, Ok(r)) => Ok(r),
    }
}

/// Hashes a body without storing it (a PUT of content the store already has still proves it
/// has the bytes). Returns the hash and the size.
pub async fn hash_stream<S, E>(body: S, limits: BodyLimits) -> ApiResult<(ContentHash, u64)>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    let mut body = body;
    let mut limits = limits;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = BytesMut::new();
    loop {
        let frame = next_frame(&mut body, &mut limits).await?;
        let done = frame.is_none();
        if let Some(f) = frame {
            let f = f.map_err(|e| ApiError::BadRequest(format!("reading request body: {e}")))?;
            size += f.len() as u64;
            buf.extend_from_slice(&f);
        }
        if buf.len() >= BLOCK_SIZE || (done && !buf.is_empty()) {
            let chunk = buf.split().freeze();
            hasher = tokio::task::spawn_blocking(move || {
                hasher.update(&chunk);
                hasher
            })
            .await
            .map_err(|e| ApiError::Internal(format!("hasher failed: {e}")))?;
        }
        if done {
            break;
        }
    }
    Ok((ContentHash(hasher.finalize().into()), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_stay_within_the_parity_count_and_the_spares() {
        // Three spares, but only two shards may be lost.
        let l = Losses::new(3);
        assert!(l.can_lose(2) && !l.can_lose(3));
        assert!(l.try_lose(&[4]));
        // Losing one again costs nothing; two more do not fit, and none is taken.
        assert!(l.try_lose(&[4]));
        assert!(!l.try_lose(&[1, 2]));
        assert_eq!(l.lost(), vec![4]);
        assert!(l.try_lose(&[0]));
        assert_eq!(l.lost(), vec![0, 4]);
        assert!(!l.can_lose(1));
        // No spare: nothing may be lost.
        let none = Losses::new(0);
        assert!(!none.try_lose(&[0]) && none.lost().is_empty());
    }

    #[tokio::test]
    async fn settle_gives_up_a_call_that_outlasts_the_others() {
        let health = Arc::new(ServerHealth::default());
        let d = Deadlines {
            call: Duration::from_secs(120),
            stall: Duration::from_secs(10),
            health,
            spares: Arc::default(),
        };
        let ok = |shard: u8| (shard, Box::pin(async { Ok(()) }) as BoxCall<'static>);
        let hung = |shard: u8| {
            (
                shard,
                Box::pin(futures::future::pending::<Result<(), ShardError>>()) as BoxCall<'static>,
            )
        };
        let failed = |shard: u8| {
            let e = ShardError::Unreachable("gone".into());
            (shard, Box::pin(async move { Err(e) }) as BoxCall<'static>)
        };
        // One hung call of six, one loss allowed: given up after the write deadline.
        let losses = Losses::new(1);
        let calls = vec![ok(0), ok(1), hung(2), ok(3), ok(4), ok(5)];
        let started = tokio::time::Instant::now();
        assert_eq!(
            settle(calls, &losses, d.write(), "test").await.unwrap(),
            vec![2]
        );
        assert_eq!(losses.lost(), vec![2]);
        assert!(started.elapsed() >= d.write());
        // Two failures with one loss allowed: the second fails the whole.
        let losses = Losses::new(1);
        let calls = vec![failed(0), ok(1), failed(2), ok(3)];
        assert!(settle(calls, &losses, d.write(), "test").await.is_err());
        // No loss allowed: a failure is the error.
        let losses = Losses::new(0);
        let calls = vec![ok(0), failed(1)];
        assert!(settle(calls, &losses, d.write(), "test").await.is_err());
    }
}
