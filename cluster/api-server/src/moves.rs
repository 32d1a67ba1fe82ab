//! Moving shards between data servers: **drain** sends every shard a data server holds to
//! live servers holding no shard of the same object, so that the server can be removed;
//! **rebalance** moves shards from the fullest servers to the emptiest after servers were
//! added. Both are maintenance jobs (see [`crate::maintenance`]) and work from the placement
//! records, so a run that was stopped is continued by running it again.
//!
//! One move keeps redundancy intact throughout:
//!
//! 1. the shard is copied to its new server and committed there (its raw bytes streamed from
//!    the old server, which checks every piece's CRC as it reads; or, when the old copy
//!    cannot be read, rebuilt from four other shards through repair's decoder, which checks
//!    every block against its recorded hash);
//! 2. the placement slot moves with the conditional update repair uses
//!    ([`MetadataStore::update_placement`](dos_metadata::MetadataStore::update_placement)):
//!    only if it still names the old server, so a concurrent repair or move is never
//!    overwritten (when it lost, the new copy is removed again);
//! 3. only then is the old copy removed. A read that began with the old placement finds it
//!    gone at worst, and reads another shard instead.
//!
//! A server being drained is in [`Draining`]: rebuilt shards and moves go elsewhere, and new
//! content is placed elsewhere while six other servers are live (`placement`, `pipeline`).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::BytesMut;
use dos_metadata::{ContentRecord, PlacementMove};
use dos_protocol::{
    ContentHash, DATA_SHARDS, PIECE_SIZE, ServerId, ServerInfo, TOTAL_SHARDS, shard_len,
};
use dos_transport::ShardError;
use futures::StreamExt as _;
use rand::seq::SliceRandom as _;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::error::{ApiError, ApiResult};
use crate::maintenance::{Progress, Work};
use crate::pipeline::write::{Deadlines, store_content};
use crate::placement;

/// Objects whose shards move at once.
const OBJECTS_AT_ONCE: usize = 4;
/// A run goes over the records at most this many times (writes may place shards on a
/// server being drained meanwhile when too few others are live, or when another API server
/// does not know of the drain).
const MAX_PASSES: usize = 5;
/// Content records read per page.
const PAGE: usize = 500;

/// Data servers being drained by this API server: they take new and rebuilt shards only
/// when no other server can (until this API server restarts).
#[derive(Debug, Default)]
pub struct Draining(Mutex<BTreeSet<ServerId>>);

impl Draining {
    fn set(&self) -> std::sync::MutexGuard<'_, BTreeSet<ServerId>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn contains(&self, id: &ServerId) -> bool {
        self.set().contains(id)
    }

    pub fn ids(&self) -> Vec<ServerId> {
        self.set().iter().cloned().collect()
    }

    fn add(&self, id: &ServerId) {
        self.set().insert(id.clone());
    }

    fn remove(&self, id: &ServerId) {
        self.set().remove(id);
    }

    /// `servers` with the ones being drained (by a drain running here, or `heard`: as their
    /// own heartbeats say, whichever API server drains them) moved to the end (otherwise in
    /// the same order), so that taking the first six leaves them out while six others are
    /// live.
    pub fn last(&self, servers: &mut [ServerInfo], heard: &[ServerId]) {
        let set = self.set();
        if !set.is_empty() || !heard.is_empty() {
            servers.sort_by_key(|s| set.contains(&s.id) || heard.contains(&s.id));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// the jobs

/// Drains `server` (an id, or the address a live server announces). Counts: `objects`
/// (records scanned in the last pass), `passes`, `shards_moved`, `bytes_moved`,
/// `shards_rebuilt` (moved by decoding, the old copy being unreadable), `shards_failed`,
/// `moved_by_others` (a concurrent change moved the slot first), `old_copies_left` (moved,
/// but removing the old copy failed), `needed_left` (slots still naming the server at the
/// end: 0 when it holds nothing anyone needs), `files_left` (shards the server still holds,
/// none of them needed when `needed_left` is 0), `errors`.
pub async fn drain(
    core: &Core,
    server: &ServerId,
    p: &Progress,
    cancel: &CancellationToken,
    started: Instant,
) -> ApiResult<()> {
    let live = core.bus.live_servers();
    // The address a live server announces names it too.
    let id = live
        .iter()
        .find(|s| s.id == *server || s.addr == server.0)
        .map_or_else(|| server.clone(), |s| s.id.clone());
    let policy = Policy::Drain(id.clone());
    let mut scan = count(core, &policy, cancel).await?;
    let is_live = live.iter().any(|s| s.id == id);
    if !is_live && scan.work == 0 && !cancel.is_cancelled() {
        return Err(ApiError::NotFound(format!(
            "no live data server is {server} and no placement names it"
        )));
    }
    // This API server places nothing new there from now on, and the server says it is being
    // drained in its heartbeats, to every API server; it stays marked when the drain ends,
    // until it restarts (removed, or back in service).
    core.draining.add(&id);
    let info = live.iter().find(|s| s.id == id);
    let marked = match info {
        Some(info) => mark_draining(core, info, true).await,
        None => false,
    };
    let result = run_passes(core, &policy, &mut scan, p, cancel, started).await;
    if cancel.is_cancelled() {
        // A drain stopped half way gives the server back to new writes until it runs again.
        core.draining.remove(&id);
        if let Some(info) = info {
            mark_draining(core, info, false).await;
        }
        return result;
    }
    if marked && core.bus.draining_servers().contains(&id) {
        // Its heartbeats carry the mark now (and end with its restart).
        core.draining.remove(&id);
    }
    result?;
    p.set("needed_left", scan.work);
    let files = match live.iter().find(|s| s.id == id) {
        Some(s) => match held(core, s).await {
            Ok(n) => Some(n),
            Err(e) => {
                p.error(format!("listing the shards of {id}: {e}"));
                None
            }
        },
        None => None,
    };
    if let Some(n) = files {
        p.set("files_left", n);
    }
    let verdict = if scan.work == 0 {
        let files = match files {
            Some(0) => "it holds no shard".to_string(),
            Some(n) => format!("its {n} shard files are copies no placement names"),
            None => "it is not live".to_string(),
        };
        format!("{id} holds nothing anyone needs ({files}): it can be stopped and removed")
    } else {
        let others = scan.eligible(core).len();
        p.error(if others < TOTAL_SHARDS {
            format!(
                "{} shards still need {id}: only {others} other data servers are live, and an object needs six; add a data server and run the drain again",
                scan.work
            )
        } else {
            format!(
                "{} shards still need {id} (new writes placed them there meanwhile, or their moves failed); run the drain again",
                scan.work
            )
        });
        format!("{id} still holds {} shards that are needed", scan.work)
    };
    p.update(|r| r.verdict = Some(verdict));
    Ok(())
}

/// Moves shards from the fullest live servers to the emptiest until every live server not
/// being drained holds within one shard of the mean, as far as placement allows (an object's
/// six shards stay on six distinct servers); a server holding two shards of one object
/// gives one away. Counts: `objects`, `passes`, `servers`, `shards_moved`, `bytes_moved`,
/// `shards_rebuilt`, `shards_failed`, `moved_by_others`, `old_copies_left`, and the fewest
/// and most shards a server holds before and after (`min_before`, `max_before`,
/// `min_after`, `max_after`), `errors`.
pub async fn rebalance(
    core: &Core,
    p: &Progress,
    cancel: &CancellationToken,
    started: Instant,
) -> ApiResult<()> {
    let policy = Policy::Rebalance;
    let mut scan = count(core, &policy, cancel).await?;
    let (min, max) = scan.spread(core);
    p.set("min_before", min);
    p.set("max_before", max);
    run_passes(core, &policy, &mut scan, p, cancel, started).await?;
    if cancel.is_cancelled() {
        return Ok(());
    }
    let (min, max) = scan.spread(core);
    p.set("min_after", min);
    p.set("max_after", max);
    p.set("servers", scan.eligible(core).len() as u64);
    let spread = if min == 0 {
        if max == 0 {
            "no shards".to_string()
        } else {
            format!("{min}..{max} shards per server")
        }
    } else {
        format!(
            "{min}..{max} shards per server ({:.1} % apart)",
            (max - min) as f64 * 100.0 / min as f64
        )
    };
    p.update(|r| r.verdict = Some(spread));
    Ok(())
}

/// Passes over the records, each moving what `scan` (the last count) found, until nothing is
/// left to move or a pass moved nothing. Leaves the last count in `scan`.
async fn run_passes(
    core: &Core,
    policy: &Policy,
    scan: &mut Scan,
    p: &Progress,
    cancel: &CancellationToken,
    started: Instant,
) -> ApiResult<()> {
    p.update(|r| {
        r.work = Some(Work {
            total: scan.work,
            finished: 0,
            unit: "shards",
        })
    });
    for _ in 0..MAX_PASSES {
        if scan.work == 0 || cancel.is_cancelled() {
            break;
        }
        p.add("passes", 1);
        let moved = pass(core, policy, scan, p, cancel, started).await?;
        if cancel.is_cancelled() {
            break;
        }
        *scan = count(core, policy, cancel).await?;
        // What is left is work too (new writes, moves that failed).
        p.update(|r| {
            if let Some(w) = &mut r.work {
                w.total = w.finished + scan.work;
            }
        });
        if moved == 0 {
            break;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// deciding

/// What a job moves.
#[derive(Debug, Clone)]
enum Policy {
    /// Every slot naming this server.
    Drain(ServerId),
    /// Towards an even count of shards per server.
    Rebalance,
}

/// Shards per server as the records place them, and the moves a pass would make.
#[derive(Debug, Default)]
struct Scan {
    counts: HashMap<ServerId, u64>,
    /// Shards the policy would move now (estimated for rebalance).
    work: u64,
}

impl Scan {
    /// Live servers that may take shards: not being drained.
    fn eligible(&self, core: &Core) -> Vec<ServerInfo> {
        let heard = core.bus.draining_servers();
        core.bus
            .live_servers()
            .into_iter()
            .filter(|s| !core.draining.contains(&s.id) && !heard.contains(&s.id))
            .collect()
    }

    /// The fewest and most shards an eligible server holds.
    fn spread(&self, core: &Core) -> (u64, u64) {
        let counts: Vec<u64> = self
            .eligible(core)
            .iter()
            .map(|s| self.counts.get(&s.id).copied().unwrap_or(0))
            .collect();
        (
            counts.iter().copied().min().unwrap_or(0),
            counts.iter().copied().max().unwrap_or(0),
        )
    }
}

/// Reads every record: shards per server, and how many the policy would move.
async fn count(core: &Core, policy: &Policy, cancel: &CancellationToken) -> ApiResult<Scan> {
    let mut scan = Scan::default();
    let mut after: Option<ContentHash> = None;
    let mut duplicates = 0;
    loop {
        if cancel.is_cancelled() {
            return Ok(scan);
        }
        let page = core.meta.list_contents(after.as_ref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.hash);
        for content in &page {
            for (i, s) in content.placement.iter().enumerate() {
                *scan.counts.entry(s.clone()).or_default() += 1;
                match policy {
                    Policy::Drain(d) if s == d => scan.work += 1,
                    Policy::Rebalance if content.placement[..i].contains(s) => duplicates += 1,
                    _ => {}
                }
            }
        }
    }
    if let Policy::Rebalance = policy {
        let eligible = scan.eligible(core);
        let counts: Vec<u64> = eligible
            .iter()
            .map(|s| scan.counts.get(&s.id).copied().unwrap_or(0))
            .collect();
        scan.work = rebalance_estimate(&counts) + duplicates;
    }
    Ok(scan)
}

/// The moves that bring `counts` within `[floor(mean), ceil(mean)]`.
fn rebalance_estimate(counts: &[u64]) -> u64 {
    let Some((lo, hi)) = bounds(counts) else {
        return 0;
    };
    let over: u64 = counts.iter().map(|c| c.saturating_sub(hi)).sum();
    let under: u64 = counts.iter().map(|c| lo.saturating_sub(*c)).sum();
    over.max(under)
}

/// `floor` and `ceil` of the mean of `counts`.
fn bounds(counts: &[u64]) -> Option<(u64, u64)> {
    let n = counts.len() as u64;
    if n == 0 {
        return None;
    }
    let total: u64 = counts.iter().sum();
    Some((total / n, total.div_ceil(n)))
}

/// One move: the shard in slot `shard`, from `from` to `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Move {
    shard: u8,
    from: ServerId,
    to: ServerInfo,
}

/// The next move for an object placed on `placement`, given shards per server (`counts`)
/// and the servers that may take shards (`eligible`, in order of preference for ties);
/// `avoid` are servers that failed to take a shard of this object.
fn next_move(
    policy: &Policy,
    placement: &[ServerId],
    counts: &HashMap<ServerId, u64>,
    eligible: &[ServerInfo],
    bounds: Option<(u64, u64)>,
    avoid: &[ServerId],
) -> Option<Move> {
    let count = |id: &ServerId| counts.get(id).copied().unwrap_or(0);
    // The least loaded server holding no shard of the object.
    let to = eligible
        .iter()
        .filter(|s| !placement.contains(&s.id) && !avoid.contains(&s.id))
        .min_by_key(|s| count(&s.id))?;
    match policy {
        Policy::Drain(d) => {
            let shard = placement.iter().position(|s| s == d)?;
            Some(Move {
                shard: shard as u8,
                from: d.clone(),
                to: to.clone(),
            })
        }
        Policy::Rebalance => {
            let is_eligible = |id: &ServerId| eligible.iter().any(|s| &s.id == id);
            // A server holding two shards of the object gives one away first.
            if let Some(i) = (0..placement.len())
                .find(|&i| is_eligible(&placement[i]) && placement[..i].contains(&placement[i]))
            {
                return Some(Move {
                    shard: i as u8,
                    from: placement[i].clone(),
                    to: to.clone(),
                });
            }
            let (lo, hi) = bounds?;
            // The fullest server holding a shard of the object.
            let (i, from) = placement
                .iter()
                .enumerate()
                .filter(|(_, s)| is_eligible(s))
                .max_by_key(|(_, s)| count(s))?;
            let (a, b) = (count(from), count(&to.id));
            // Never below floor(mean) for the giver nor above ceil(mean) for the taker, so
            // moves only ever narrow the spread.
            let worth = (a > hi && b < hi) || (b < lo && a > lo);
            worth.then(|| Move {
                shard: i as u8,
                from: from.clone(),
                to: to.clone(),
            })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// moving

/// Shards per server while a pass runs: each move is counted where it goes when it is chosen
/// (so objects moving at once spread out), and given back if it fails.
struct Load {
    counts: Mutex<HashMap<ServerId, u64>>,
    bounds: Option<(u64, u64)>,
}

impl Load {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, u64>> {
        self.counts.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shift(&self, from: &ServerId, to: &ServerId) {
        let mut counts = self.lock();
        let f = counts.entry(from.clone()).or_default();
        *f = f.saturating_sub(1);
        *counts.entry(to.clone()).or_default() += 1;
    }
}

/// One pass over the records; returns the shards moved.
async fn pass(
    core: &Core,
    policy: &Policy,
    scan: &Scan,
    p: &Progress,
    cancel: &CancellationToken,
    started: Instant,
) -> ApiResult<u64> {
    let eligible_counts: Vec<u64> = scan
        .eligible(core)
        .iter()
        .map(|s| scan.counts.get(&s.id).copied().unwrap_or(0))
        .collect();
    let load = Load {
        counts: Mutex::new(scan.counts.clone()),
        bounds: bounds(&eligible_counts),
    };
    let mut moved = 0;
    let mut after: Option<ContentHash> = None;
    p.set("objects", 0);
    loop {
        if cancel.is_cancelled() {
            return Ok(moved);
        }
        let page = core.meta.list_contents(after.as_ref(), PAGE).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.hash);
        let mut eligible = scan.eligible(core);
        // Ties go to servers in random order, suspects last.
        eligible.shuffle(&mut rand::rng());
        core.health.suspects_last(&mut eligible);
        let live = core.bus.live_servers();
        let (load, eligible, live) = (&load, &eligible, &live);
        let results: Vec<u64> = futures::stream::iter(page)
            .map(|content| async move {
                if cancel.is_cancelled() {
                    return 0;
                }
                let n = move_object(
                    core, policy, content, load, eligible, live, p, cancel, started,
                )
                .await;
                p.add("objects", 1);
                n
            })
            .buffer_unordered(OBJECTS_AT_ONCE)
            .collect()
            .await;
        moved += results.iter().sum::<u64>();
    }
    Ok(moved)
}

/// Makes the policy's moves for one object, one after the other; returns how many were made.
#[allow(clippy::too_many_arguments)]
async fn move_object(
    core: &Core,
    policy: &Policy,
    mut content: ContentRecord,
    load: &Load,
    eligible: &[ServerInfo],
    live: &[ServerInfo],
    p: &Progress,
    cancel: &CancellationToken,
    started: Instant,
) -> u64 {
    let mut moved = 0;
    let mut avoid: Vec<ServerId> = Vec::new();
    // At most one move per slot, and a target that failed is not asked again.
    for _ in 0..content.placement.len() * 2 {
        if cancel.is_cancelled() {
            break;
        }
        let chosen = {
            let counts = load.lock();
            next_move(
                policy,
                &content.placement,
                &counts,
                eligible,
                load.bounds,
                &avoid,
            )
        };
        let Some(m) = chosen else { break };
        load.shift(&m.from, &m.to.id);
        let outcome = move_shard(core, &content, &m, live).await;
        p.update(|r| {
            if let Some(w) = &mut r.work {
                w.finished += 1;
                w.total = w.total.max(w.finished);
            }
        });
        match outcome {
            Ok(Moved::Done {
                bytes,
                rebuilt,
                old_left,
            }) => {
                moved += 1;
                p.add("shards_moved", 1);
                p.add("bytes_moved", bytes);
                if rebuilt {
                    p.add("shards_rebuilt", 1);
                }
                if old_left {
                    p.add("old_copies_left", 1);
                }
                let secs = started.elapsed().as_secs_f64().max(1e-3);
                p.update(|r| {
                    let bytes = r.counts.get("bytes_moved").copied().unwrap_or(0);
                    r.mib_per_sec = Some(bytes as f64 / (1 << 20) as f64 / secs);
                });
                if let Some(slot) = content.placement.get_mut(usize::from(m.shard)) {
                    *slot = m.to.id.clone();
                }
            }
            Ok(Moved::ByOthers) => {
                load.shift(&m.to.id, &m.from);
                p.add("moved_by_others", 1);
                // Decide again from what the record says now.
                match core.meta.get_content(&content.hash).await {
                    Ok(Some(now)) => content = now,
                    _ => break,
                }
            }
            Err(e) => {
                load.shift(&m.to.id, &m.from);
                p.add("shards_failed", 1);
                p.error(format!(
                    "{} shard {} from {} to {}: {}",
                    content.hash,
                    m.shard,
                    m.from,
                    m.to.id,
                    e.public_message()
                ));
                avoid.push(m.to.id.clone());
            }
        }
    }
    moved
}

/// What became of one move.
#[derive(Debug)]
enum Moved {
    /// The shard lives on its new server, recorded there (`bytes` long, `rebuilt` from the
    /// others rather than copied); the old copy is gone, or if `old_left` could not be
    /// removed (no record names it now).
    Done {
        bytes: u64,
        rebuilt: bool,
        old_left: bool,
    },
    /// The slot no longer named the old server when the move was recorded: another change
    /// won (and is kept); the new copy was removed again.
    ByOthers,
}

/// Copies the shard, records the move conditionally, then removes the old copy.
async fn move_shard(
    core: &Core,
    content: &ContentRecord,
    m: &Move,
    live: &[ServerInfo],
) -> ApiResult<Moved> {
    let hash = content.hash;
    let len = shard_len(content.size);
    let source = live.iter().find(|s| s.id == m.from);
    let copied = match source {
        Some(src) => copy_raw(core, &hash, m.shard, len, src, &m.to).await,
        None => Err(CopyError::Source(ShardError::Unreachable(
            "the old server is not live".into(),
        ))),
    };
    let rebuilt = match copied {
        Ok(()) => false,
        Err(CopyError::Target(e)) => return Err(e),
        Err(CopyError::Source(e)) => {
            tracing::info!(%hash, shard = m.shard, from = %m.from, error = %e,
                "the old copy cannot be read; rebuilding the shard from the others");
            // The recorded holders that are live; a locate broadcast only when fewer than
            // four are (a drained server that is down would otherwise cost one per object).
            let holders: placement::Holders = content
                .placement
                .iter()
                .map(|id| live.iter().filter(|s| s.id == *id).cloned().collect())
                .collect();
            let holders = if holders.iter().filter(|h| !h.is_empty()).count() >= DATA_SHARDS {
                holders
            } else {
                placement::holders(core, content).await
            };
            crate::repair::rebuild_onto(core, content, holders, &[(m.shard, m.to.clone())]).await?;
            true
        }
    };
    let recorded = core
        .meta
        .update_placement(
            &hash,
            &[PlacementMove {
                shard: m.shard,
                from: m.from.clone(),
                to: m.to.id.clone(),
            }],
        )
        .await?;
    if !recorded {
        let now = core.meta.get_content(&hash).await?;
        let names_new = now
            .as_ref()
            .and_then(|c| c.placement.get(usize::from(m.shard)))
            .is_some_and(|s| *s == m.to.id);
        if !names_new {
            // Nothing names the new copy: take it away again (the record may be gone too,
            // collected meanwhile).
            if let Err(e) = core.shards.remove_shard(&m.to, &hash, m.shard, None).await
                && e != ShardError::NotFound
            {
                tracing::warn!(%hash, shard = m.shard, server = %m.to.id, error = %e,
                    "a copy no record names is left behind");
            }
        }
        return Ok(Moved::ByOthers);
    }
    let old_left = match source {
        None => false,
        Some(src) => match core.shards.remove_shard(src, &hash, m.shard, None).await {
            Ok(()) | Err(ShardError::NotFound) => false,
            Err(e) => {
                tracing::warn!(%hash, shard = m.shard, server = %src.id, error = %e,
                    "moved, but the old copy could not be removed (no record names it)");
                true
            }
        },
    };
    Ok(Moved::Done {
        bytes: len,
        rebuilt,
        old_left,
    })
}

/// Why a raw copy failed: reading the old copy (then rebuild instead), or storing the new.
enum CopyError {
    Source(ShardError),
    Target(ApiError),
}

/// Streams shard `shard` of `hash` (`len` raw bytes) from `from` into a new shard on `to`,
/// committed durably when this returns. The old server checks every piece as it reads.
async fn copy_raw(
    core: &Core,
    hash: &ContentHash,
    shard: u8,
    len: u64,
    from: &ServerInfo,
    to: &ServerInfo,
) -> Result<(), CopyError> {
    let body = if len == 0 {
        None
    } else {
        Some(
            core.shards
                .read_shard(from, hash, shard, 0, len)
                .await
                .map_err(CopyError::Source)?,
        )
    };
    let read_failed = Arc::new(Mutex::new(None::<ShardError>));
    let failed = read_failed.clone();
    let stall = core.config.shard_stall_timeout;
    let stored = store_content(
        &core.shards,
        Deadlines::of(core).without_spares(),
        hash,
        &[(shard, to.clone())],
        Some(len),
        |mut writers| async move {
            let source_err = |e: ShardError| {
                *failed.lock().unwrap_or_else(PoisonError::into_inner) = Some(e.clone());
                ApiError::ShardRead(e)
            };
            let Some(mut body) = body else {
                return Ok((((), 0), writers));
            };
            let mut buf = BytesMut::new();
            let mut copied = 0u64;
            loop {
                let next = tokio::time::timeout(stall, body.next())
                    .await
                    .map_err(|_| source_err(ShardError::Timeout(stall)))?;
                let Some(chunk) = next else { break };
                let chunk = chunk.map_err(source_err)?;
                copied += chunk.len() as u64;
                if copied > len {
                    return Err(source_err(ShardError::Malformed(
                        "the shard is longer than its content needs".into(),
                    )));
                }
                // Whole pieces go on as they came; the rest is cut into pieces here.
                if buf.is_empty() && chunk.len() == PIECE_SIZE {
                    writers.send(vec![chunk]).await?;
                    continue;
                }
                buf.extend_from_slice(&chunk);
                while buf.len() >= PIECE_SIZE {
                    writers
                        .send(vec![buf.split_to(PIECE_SIZE).freeze()])
                        .await?;
                }
            }
            if !buf.is_empty() {
                writers.send(vec![buf.freeze()]).await?;
            }
            if copied != len {
                return Err(source_err(ShardError::Malformed(format!(
                    "the shard ended after {copied} of {len} bytes"
                ))));
            }
            Ok((((), len), writers))
        },
    )
    .await;
    match stored {
        Ok(_) => Ok(()),
        Err(e) => {
            let source = read_failed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            Err(match source {
                Some(s) => CopyError::Source(s),
                None => CopyError::Target(e),
            })
        }
    }
}

/// How many shards `server` holds (committed, whether or not a record names them).
/// Asks `server` to announce that it is being drained (or not). Without it (an older data
/// server, or one that does not answer) only this API server knows, which the drain's
/// further passes make up for.
async fn mark_draining(core: &Core, server: &ServerInfo, draining: bool) -> bool {
    match core.shards.set_draining(server, draining).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(server = %server.id, draining, error = %e, "could not set the drain mark on the data server; other API servers may still place shards there");
            false
        }
    }
}

async fn held(core: &Core, server: &ServerInfo) -> Result<u64, ShardError> {
    let mut after = None;
    let mut n = 0;
    loop {
        let page = core.shards.list_shards(server, after, 1000).await?;
        let Some(last) = page.last() else {
            return Ok(n);
        };
        after = Some((last.hash, last.shard));
        n += page.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: usize) -> ServerId {
        ServerId(format!("s{i}"))
    }

    fn server(i: usize) -> ServerInfo {
        ServerInfo {
            id: id(i),
            addr: format!("h:{i}"),
        }
    }

    #[test]
    fn a_drain_moves_the_slot_to_the_least_loaded_server_holding_nothing() {
        let placement: Vec<ServerId> = (0..6).map(id).collect();
        let eligible: Vec<ServerInfo> = (1..9).map(server).collect();
        let counts: HashMap<ServerId, u64> = (0..9).map(|i| (id(i), 10 - i as u64)).collect();
        let policy = Policy::Drain(id(2));
        let m = next_move(&policy, &placement, &counts, &eligible, None, &[]).unwrap();
        assert_eq!(
            (m.shard, m.from.clone(), m.to.id.clone()),
            (2, id(2), id(8))
        );
        // A target that failed is not chosen again; with none left there is no move.
        let m = next_move(&policy, &placement, &counts, &eligible, None, &[id(8)]).unwrap();
        assert_eq!(m.to.id, id(7));
        assert!(
            next_move(
                &policy,
                &placement,
                &counts,
                &eligible,
                None,
                &[id(6), id(7), id(8)]
            )
            .is_none()
        );
        // Nothing on the drained server: nothing to do.
        let policy = Policy::Drain(id(7));
        assert!(next_move(&policy, &placement, &counts, &eligible, None, &[]).is_none());
    }

    /// Places `objects` objects on servers 0..6, then rebalances onto `servers` servers by
    /// the same decisions the job makes; returns shards per server.
    fn simulate(objects: usize, servers: usize) -> Vec<u64> {
        let mut placements: Vec<Vec<ServerId>> = (0..objects)
            .map(|o| (0..6).map(|i| id((o + i) % 6)).collect())
            .collect();
        let eligible: Vec<ServerInfo> = (0..servers).map(server).collect();
        let mut counts: HashMap<ServerId, u64> = HashMap::new();
        for p in &placements {
            for s in p {
                *counts.entry(s.clone()).or_default() += 1;
            }
        }
        let list: Vec<u64> = (0..servers)
            .map(|i| counts.get(&id(i)).copied().unwrap_or(0))
            .collect();
        let b = bounds(&list);
        let mut moves = 0;
        for p in &mut placements {
            while let Some(m) = next_move(&Policy::Rebalance, p, &counts, &eligible, b, &[]) {
                *counts.get_mut(&m.from).unwrap() -= 1;
                *counts.entry(m.to.id.clone()).or_default() += 1;
                p[usize::from(m.shard)] = m.to.id;
                moves += 1;
                assert!(moves < objects * 6, "rebalance does not end");
            }
        }
        for p in &placements {
            let distinct: BTreeSet<&ServerId> = p.iter().collect();
            assert_eq!(distinct.len(), 6, "an object's shards stay on six servers");
        }
        (0..servers)
            .map(|i| counts.get(&id(i)).copied().unwrap_or(0))
            .collect()
    }

    #[test]
    fn rebalance_evens_out_shard_counts_after_servers_were_added() {
        for (objects, servers) in [(40, 8), (100, 8), (7, 8), (50, 12), (33, 7)] {
            let counts = simulate(objects, servers);
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "{objects} objects on {servers}: {counts:?}");
        }
        assert_eq!(rebalance_estimate(&[40, 40, 40, 40, 40, 40, 0, 0]), 60);
        assert_eq!(rebalance_estimate(&[30, 30, 30]), 0);
    }

    #[test]
    fn rebalance_splits_two_shards_of_one_object_on_one_server() {
        let placement = vec![id(0), id(1), id(2), id(3), id(4), id(0)];
        let eligible: Vec<ServerInfo> = (0..7).map(server).collect();
        let counts: HashMap<ServerId, u64> = (0..7).map(|i| (id(i), 5)).collect();
        let m = next_move(
            &Policy::Rebalance,
            &placement,
            &counts,
            &eligible,
            Some((5, 5)),
            &[],
        )
        .unwrap();
        assert_eq!((m.shard, m.from, m.to.id), (5, id(0), id(5)));
    }

    #[test]
    fn draining_servers_go_last() {
        let d = Draining::default();
        d.add(&id(1));
        let mut list: Vec<ServerInfo> = (0..4).map(server).collect();
        d.last(&mut list, &[]);
        let order: Vec<String> = list.iter().map(|s| s.id.0.clone()).collect();
        assert_eq!(order, ["s0", "s2", "s3", "s1"]);
        // And the ones whose heartbeats say they are drained (by another API server).
        d.last(&mut list, &[id(0)]);
        let order: Vec<String> = list.iter().map(|s| s.id.0.clone()).collect();
        assert_eq!(order, ["s2", "s3", "s0", "s1"]);
        assert!(d.contains(&id(1)) && d.ids() == vec![id(1)]);
        d.remove(&id(1));
        assert!(!d.contains(&id(1)));
    }
}
