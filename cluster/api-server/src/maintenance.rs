//! Maintenance jobs: scrub, retention and orphan collection. Each runs in the background on a
//! configurable interval and on demand (`POST /maintenance/JOB`, `dos-server maintain`); a job
//! never runs twice at once on one API server, and every job is safe to run on several API
//! servers at once (each step is idempotent and guarded by the metadata engine).
//!
//! - **scrub** walks every content record: each data server reads its shard of the object
//!   whole and checks every checksum (a corrupt shard is quarantined there); missing, corrupt
//!   and unreachable shards are rebuilt (onto the same server, or a live server holding no
//!   shard of the object); then the object is decoded and its SHA-256 compared with its name.
//! - **retention** keeps the newest `keep` versions of every name (delete markers count) and
//!   never deletes a name's latest version; the data they referenced is left to `orphans`.
//! - **orphans** deletes content records no version references and nobody wrote or used by
//!   dedup within the grace period (atomically, in the metadata engine), then their shards;
//!   then shards no content record names, older than the grace period. Shards go to the data
//!   server's `garbage/`, which is emptied a day later.
//! - **drain** (of one data server) and **rebalance** move shards between data servers (see
//!   [`crate::moves`]); they run on demand only, and stop when whoever asked goes away (a run
//!   again continues, since they work from the placement records).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dos_metadata::VersionsFrom;
use dos_protocol::{ContentHash, ServerId, ServerInfo, now_ns};
use dos_transport::ShardError;
use dos_worker::Supervisor;
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::core::Core;
use crate::error::{ApiError, ApiResult};
use crate::metrics as m;
use crate::placement;

/// Which job.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Job {
    Scrub,
    Retention,
    Orphans,
    /// Move every shard off this data server (named by its id, or by the address its
    /// heartbeats announce).
    Drain(ServerId),
    /// Move shards from the fullest data servers to the emptiest.
    Rebalance,
}

/// The longest server name `drain:NAME` takes.
const MAX_SERVER_NAME: usize = 256;

impl Job {
    /// `scrub`, `retention`, `orphans`, `rebalance`, or `drain:SERVER` (the path segment of
    /// `POST /maintenance/JOB`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "scrub" => Some(Self::Scrub),
            "retention" => Some(Self::Retention),
            "orphans" => Some(Self::Orphans),
            "rebalance" => Some(Self::Rebalance),
            _ => {
                let server = s.strip_prefix("drain:")?.trim();
                let fine = !server.is_empty()
                    && server.len() <= MAX_SERVER_NAME
                    && !server.chars().any(char::is_control);
                fine.then(|| Self::Drain(ServerId(server.to_string())))
            }
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Scrub => "scrub",
            Self::Retention => "retention",
            Self::Orphans => "orphans",
            Self::Drain(_) => "drain",
            Self::Rebalance => "rebalance",
        }
    }

    /// A run that stops when whoever started it stops watching (drop of its [`Running`]):
    /// a long move of data is not left running unattended, and running it again continues.
    pub fn stops_unwatched(&self) -> bool {
        matches!(self, Self::Drain(_) | Self::Rebalance)
    }
}

impl std::fmt::Display for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Drain(server) => write!(f, "drain of {server}"),
            other => f.write_str(other.as_str()),
        }
    }
}

/// Intervals of the background runs; `None` turns a job's background run off.
#[derive(Debug, Clone)]
pub struct MaintenanceConfig {
    pub scrub_every: Option<Duration>,
    pub orphans_every: Option<Duration>,
    /// Content and shards younger than this are never collected.
    pub orphans_grace: Duration,
    /// Off by default: deleting history is the owner's decision.
    pub retention_every: Option<Duration>,
    pub keep_versions: u64,
    /// The least grace a requested orphan collection may give (`grace_secs` below it is
    /// refused): a slip of the hand cannot delete content a write is using.
    pub min_orphans_grace: Duration,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            scrub_every: Some(Duration::from_secs(24 * 3600)),
            orphans_every: Some(Duration::from_secs(6 * 3600)),
            orphans_grace: Duration::from_secs(3600),
            retention_every: None,
            keep_versions: 5,
            min_orphans_grace: Duration::from_secs(600),
        }
    }
}

/// What a job has done so far; the last report of a run is its summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub job: Option<Job>,
    pub done: bool,
    pub elapsed_ms: u64,
    /// Named counts (see each job), in name order.
    pub counts: BTreeMap<&'static str, u64>,
    /// Work planned and finished so far, for a progress bar (jobs that know it ahead: drain
    /// and rebalance count shards).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub work: Option<Work>,
    /// Shard bytes moved per second since the run started, in MiB (drain, rebalance).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mib_per_sec: Option<f64>,
    /// What the run concluded, in one line (drain: whether the server still holds anything
    /// needed; rebalance: the spread of shards over servers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<String>,
    /// The first problems met, one line each.
    pub errors: Vec<String>,
}

/// Units of work of a run: planned (it may grow while the run finds more) and finished.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Work {
    pub total: u64,
    pub finished: u64,
    /// What is counted: `shards` (drain, rebalance), `objects` (scrub), `versions`
    /// (retention), `steps` (orphans: each content record, then each data server's scan).
    pub unit: &'static str,
}

const MAX_ERRORS: usize = 50;

/// A job's live report, shared with whoever watches it.
#[derive(Clone, Default)]
pub struct Progress(Arc<Mutex<Report>>);

impl Progress {
    fn new(job: Job) -> Self {
        Self(Arc::new(Mutex::new(Report {
            job: Some(job),
            ..Report::default()
        })))
    }

    pub(crate) fn update(&self, f: impl FnOnce(&mut Report)) {
        let mut r = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut r);
        if let Some(work) = r.work {
            let job = r.job.as_ref().map_or("", Job::as_str);
            metrics::gauge!(m::MAINTENANCE_WORK_TOTAL, "job" => job).set(work.total as f64);
            metrics::gauge!(m::MAINTENANCE_WORK_FINISHED, "job" => job).set(work.finished as f64);
        }
    }

    pub(crate) fn add(&self, what: &'static str, n: u64) {
        self.update(|r| {
            *r.counts.entry(what).or_default() += n;
            let job = r.job.as_ref().map_or("", Job::as_str);
            metrics::counter!(m::MAINTENANCE_ITEMS, "job" => job, "count" => what).increment(n);
        });
    }

    /// Sets count `what` to `n`.
    pub(crate) fn set(&self, what: &'static str, n: u64) {
        self.update(|r| {
            r.counts.insert(what, n);
        });
    }

    /// Plans `total` units of work (`unit`), none finished yet.
    pub(crate) fn plan(&self, total: u64, unit: &'static str) {
        self.update(|r| {
            r.work = Some(Work {
                total,
                finished: 0,
                unit,
            })
        });
    }

    /// `n` more units finished (the total grows with them if the run found more than it
    /// planned).
    pub(crate) fn advance(&self, n: u64) {
        self.update(|r| {
            if let Some(w) = &mut r.work {
                w.finished += n;
                w.total = w.total.max(w.finished);
            }
        });
    }

    pub(crate) fn error(&self, line: String) {
        tracing::warn!(error = %line, "maintenance");
        self.update(|r| {
            *r.counts.entry("errors").or_default() += 1;
            let job = r.job.as_ref().map_or("", Job::as_str);
            metrics::counter!(m::MAINTENANCE_ITEMS, "job" => job, "count" => "errors").increment(1);
            if r.errors.len() < MAX_ERRORS {
                r.errors.push(line);
            }
        });
    }

    pub fn snapshot(&self) -> Report {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The maintenance jobs of one API server: at most one run of each job at a time here; runs
/// belong to the server's supervisor (shutdown stops them between two objects).
pub struct Maintenance {
    core: Arc<Core>,
    workers: Arc<Supervisor>,
    running: Mutex<BTreeMap<Job, (Progress, CancellationToken)>>,
}

/// What a started job gives its watcher.
pub struct Running {
    pub progress: Progress,
    /// Resolves when the run is over (also if it was stopped by shutdown).
    pub finished: oneshot::Receiver<()>,
    /// Stops the run when this is dropped, for jobs that [stop unwatched](Job::stops_unwatched).
    _stop: StopOnDrop,
}

/// Takes a run off the running list when dropped: at its end, or when it panicked (a job
/// that cannot be started again would answer 409 until the server restarts).
struct Finished<'a> {
    running: &'a Mutex<BTreeMap<Job, (Progress, CancellationToken)>>,
    job: &'a Job,
}

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(self.job);
    }
}

/// Cancels its token when dropped (a watcher that went away stops its run).
struct StopOnDrop(Option<CancellationToken>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.cancel();
        }
    }
}

/// Parameters of one run.
#[derive(Debug, Clone, Copy)]
pub struct JobParams {
    pub keep: u64,
    pub grace: Duration,
}

impl Maintenance {
    pub fn new(core: Arc<Core>, workers: Arc<Supervisor>) -> Arc<Self> {
        Arc::new(Self {
            core,
            workers,
            running: Mutex::default(),
        })
    }

    pub fn config(&self) -> &MaintenanceConfig {
        &self.core.config.maintenance
    }

    /// Starts `job`, or 409 when it is already running here. Scrub, retention and orphans run
    /// to the end even if nobody watches; drain and rebalance stop when the [`Running`]
    /// returned is dropped (or by [`stop`](Self::stop)).
    pub fn start(self: &Arc<Self>, job: Job, params: JobParams) -> ApiResult<Running> {
        let progress = Progress::new(job.clone());
        let user_stop = CancellationToken::new();
        {
            let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
            if running.contains_key(&job) {
                return Err(ApiError::Conflict(format!(
                    "a {job} run is already in progress on this API server"
                )));
            }
            running.insert(job.clone(), (progress.clone(), user_stop.clone()));
        }
        let (done_tx, finished) = oneshot::channel();
        let (this, p) = (self.clone(), progress.clone());
        let stop_on_drop = StopOnDrop(job.stops_unwatched().then(|| user_stop.clone()));
        self.workers
            .spawn_once(format!("{job} run"), move |cancel| async move {
                // Whatever happens to the run (a panic too), it is no longer running here.
                let _done = Finished {
                    running: &this.running,
                    job: &job,
                };
                let core = &this.core;
                let started = Instant::now();
                let running = metrics::gauge!(m::MAINTENANCE_RUNNING, "job" => job.as_str());
                running.set(1.0);
                // Stopped by shutdown (`cancel`) or by whoever asked (`user_stop`), always
                // between two steps.
                let stop = cancel.child_token();
                let work = async {
                    match &job {
                        Job::Scrub => scrub(core, &p, &stop).await,
                        Job::Retention => retention(core, params.keep, &p, &stop).await,
                        Job::Orphans => orphans(core, params.grace, &p, &stop).await,
                        Job::Drain(server) => {
                            crate::moves::drain(core, server, &p, &stop, started).await
                        }
                        Job::Rebalance => crate::moves::rebalance(core, &p, &stop, started).await,
                    }
                };
                tokio::pin!(work);
                let result = tokio::select! {
                    r = &mut work => r,
                    _ = user_stop.cancelled() => {
                        stop.cancel();
                        work.await
                    }
                };
                if let Err(e) = result {
                    p.error(format!("stopped: {}", e.public_message()));
                }
                if cancel.is_cancelled() {
                    p.error("stopped: the server is shutting down".into());
                } else if user_stop.is_cancelled() {
                    p.error("stopped before the end; run it again to continue".into());
                }
                p.update(|r| {
                    r.done = true;
                    r.elapsed_ms = started.elapsed().as_millis() as u64;
                });
                let report = p.snapshot();
                tracing::info!(job = %job, counts = ?report.counts, "maintenance run finished");
                let result = if cancel.is_cancelled() || user_stop.is_cancelled() {
                    "stopped"
                } else if report.errors.is_empty() {
                    "ok"
                } else {
                    "errors"
                };
                let name = job.as_str();
                running.set(0.0);
                metrics::counter!(m::MAINTENANCE_RUNS, "job" => name, "result" => result)
                    .increment(1);
                metrics::gauge!(m::MAINTENANCE_LAST_SUCCESS, "job" => name)
                    .set(if result == "ok" { 1.0 } else { 0.0 });
                metrics::gauge!(m::MAINTENANCE_LAST_FINISHED, "job" => name)
                    .set(dos_protocol::now_ns() as f64 / 1e9);
                drop(_done);
                // Nobody may be waiting.
                let _ = done_tx.send(());
            });
        Ok(Running {
            progress,
            finished,
            _stop: stop_on_drop,
        })
    }

    /// Asks a run of `job` on this server to stop between two steps; `false` when none runs.
    pub fn stop(&self, job: &Job) -> bool {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        match running.get(job) {
            Some((_, stop)) => {
                stop.cancel();
                true
            }
            None => false,
        }
    }

    /// The jobs running on this server now, each with its report so far.
    pub fn running(&self) -> Vec<(Job, Report)> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(job, (p, _))| (job.clone(), p.snapshot()))
            .collect()
    }

    /// Starts the background runs of the jobs whose interval is set, each first one interval
    /// after start.
    pub fn schedule(self: &Arc<Self>) {
        let config = self.config().clone();
        let params = JobParams {
            keep: config.keep_versions,
            grace: config.orphans_grace,
        };
        for (job, every) in [
            (Job::Scrub, config.scrub_every),
            (Job::Orphans, config.orphans_every),
            (Job::Retention, config.retention_every),
        ] {
            let Some(every) = every else { continue };
            let this = self.clone();
            let name = format!("{} schedule", job.as_str());
            self.workers.spawn(dos_worker::every(name, every, move || {
                let (this, job) = (this.clone(), job.clone());
                async move {
                    match this.start(job.clone(), params) {
                        Ok(run) => {
                            // Ends with the run, or when shutdown drops it.
                            let _ = run.finished.await;
                        }
                        Err(e) => {
                            tracing::info!(job = job.as_str(), error = %e, "scheduled run skipped")
                        }
                    }
                }
            }));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// scrub

/// Counts: `objects`, `bytes`, `shards_verified`, `shards_rebuilt`, `shards_postponed` (no
/// live server could take them now), `hash_mismatches`, `unreadable` (fewer than four good
/// shards), `errors`.
async fn scrub(core: &Core, p: &Progress, cancel: &CancellationToken) -> ApiResult<()> {
    p.plan(count_contents(core, cancel).await?, "objects");
    let mut after: Option<ContentHash> = None;
    loop {
        let page = core.meta.list_contents(after.as_ref(), 500).await?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some(last.hash);
        for content in page {
            if cancel.is_cancelled() {
                return Ok(());
            }
            if let Err(e) = scrub_one(core, &content, p).await {
                p.error(format!("{}: {}", content.hash, e.public_message()));
            }
            p.add("objects", 1);
            p.advance(1);
        }
    }
}

async fn scrub_one(
    core: &Core,
    content: &dos_metadata::ContentRecord,
    p: &Progress,
) -> ApiResult<()> {
    let report = crate::check::check(core, content).await?;
    p.add("shards_verified", u64::from(report.shards_verified));
    p.add("shards_rebuilt", report.shards_rebuilt.len() as u64);
    p.add("shards_postponed", u64::from(report.shards_postponed));
    if report.unreadable {
        p.add("unreadable", 1);
        return Err(ApiError::ShardsUnavailable {
            available: usize::from(report.shards_verified),
        });
    }
    if !report.sha256_ok {
        p.add("hash_mismatches", 1);
        return Err(ApiError::Internal(
            "decoded bytes do not match the content hash".into(),
        ));
    }
    p.add("bytes", content.size);
    Ok(())
}

/// How many content records there are now, for a progress bar (a pass over the records,
/// metadata only; 0 if cancelled meanwhile).
async fn count_contents(core: &Core, cancel: &CancellationToken) -> ApiResult<u64> {
    let mut after: Option<ContentHash> = None;
    let mut n = 0u64;
    while !cancel.is_cancelled() {
        let page = core.meta.list_contents(after.as_ref(), 1000).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.hash);
        n += page.len() as u64;
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// retention

/// Counts: `names`, `versions_deleted`, `errors`.
async fn retention(
    core: &Core,
    keep: u64,
    p: &Progress,
    cancel: &CancellationToken,
) -> ApiResult<()> {
    if keep == 0 {
        return Err(ApiError::BadRequest(
            "retention must keep at least one version".into(),
        ));
    }
    // The versions there are now, for a progress bar (metadata only).
    let mut from = VersionsFrom::All(None);
    let mut total = 0u64;
    while !cancel.is_cancelled() {
        let page = core.meta.list_versions(&from, 1000).await?;
        let Some(last) = page.last() else { break };
        from = VersionsFrom::All(Some((last.name.clone(), last.version)));
        total += page.len() as u64;
    }
    p.plan(total, "versions");
    let mut from = VersionsFrom::All(None);
    let mut current: Option<(dos_protocol::ObjectName, Vec<u64>)> = None;
    loop {
        if cancel.is_cancelled() {
            return Ok(());
        }
        let page = core.meta.list_versions(&from, 1000).await?;
        let Some(last) = page.last() else { break };
        from = VersionsFrom::All(Some((last.name.clone(), last.version)));
        for v in page {
            match &mut current {
                Some((name, versions)) if *name == v.name => versions.push(v.version),
                _ => {
                    if let Some((name, versions)) = current.take() {
                        trim(core, &name, versions, keep, p).await;
                    }
                    current = Some((v.name, vec![v.version]));
                }
            }
        }
    }
    if let Some((name, versions)) = current.take() {
        trim(core, &name, versions, keep, p).await;
    }
    Ok(())
}

/// Deletes all but the newest `keep` of `versions` (ascending) of `name`.
async fn trim(
    core: &Core,
    name: &dos_protocol::ObjectName,
    versions: Vec<u64>,
    keep: u64,
    p: &Progress,
) {
    p.add("names", 1);
    p.advance(versions.len() as u64);
    let excess = versions.len().saturating_sub(keep as usize);
    for v in &versions[..excess] {
        match core.meta.delete_version(name, *v).await {
            Ok(true) => p.add("versions_deleted", 1),
            Ok(false) => {}
            Err(e) => p.error(format!("{name} version {v}: {e}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// orphans

/// Counts: `contents_checked`, `contents_deleted`, `shards_removed`, `shards_scanned`,
/// `stray_shards_removed` (shards no content record names), `kept_recent` (written within the
/// grace period), `errors`.
async fn orphans(
    core: &Core,
    grace: Duration,
    p: &Progress,
    cancel: &CancellationToken,
) -> ApiResult<()> {
    let cutoff = now_ns().saturating_sub(i64::try_from(grace.as_nanos()).unwrap_or(i64::MAX));
    let servers = core.bus.live_servers();
    p.plan(
        count_contents(core, cancel).await? + servers.len() as u64,
        "steps",
    );
    // 1. Content records nobody references.
    let mut after: Option<ContentHash> = None;
    loop {
        let page = core.meta.list_contents(after.as_ref(), 500).await?;
        let Some(last) = page.last() else { break };
        after = Some(last.hash);
        for content in page {
            if cancel.is_cancelled() {
                return Ok(());
            }
            p.add("contents_checked", 1);
            p.advance(1);
            match core.meta.delete_unused_content(&content.hash, cutoff).await {
                Ok(true) => {
                    p.add("contents_deleted", 1);
                    remove_all_shards(core, &content, grace, p).await;
                }
                Ok(false) => {}
                Err(e) => p.error(format!(
                    "{}: {}",
                    content.hash,
                    ApiError::from(e).public_message()
                )),
            }
        }
    }
    // 2. Shards on live data servers that no content record names.
    for server in servers {
        if cancel.is_cancelled() {
            return Ok(());
        }
        if let Err(e) = collect_strays(core, &server, grace, p).await {
            p.error(format!("data server {}: {}", server.id, e.public_message()));
        }
        p.advance(1);
    }
    Ok(())
}

/// Removes every copy of every shard of a content whose record was just deleted.
async fn remove_all_shards(
    core: &Core,
    content: &dos_metadata::ContentRecord,
    grace: Duration,
    p: &Progress,
) {
    let mut holders = placement::holders(core, content).await;
    placement::add_located(core, &content.hash, &mut holders).await;
    for (i, servers) in holders.iter().enumerate() {
        for s in servers {
            remove_one(core, s, &content.hash, i as u8, grace, p, "shards_removed").await;
        }
    }
}

async fn remove_one(
    core: &Core,
    server: &ServerInfo,
    hash: &ContentHash,
    shard: u8,
    grace: Duration,
    p: &Progress,
    counter: &'static str,
) {
    match core
        .shards
        .remove_shard(server, hash, shard, Some(grace))
        .await
    {
        Ok(()) => p.add(counter, 1),
        Err(ShardError::NotFound) => {}
        Err(ShardError::TooNew) => p.add("kept_recent", 1),
        Err(e) => p.error(format!("{hash}.{shard} on {}: {e}", server.id)),
    }
}

async fn collect_strays(
    core: &Core,
    server: &ServerInfo,
    grace: Duration,
    p: &Progress,
) -> ApiResult<()> {
    let mut after = None;
    let mut known: Option<(ContentHash, bool)> = None;
    loop {
        let page = core
            .shards
            .list_shards(server, after, 1000)
            .await
            .map_err(ApiError::ShardWrite)?;
        let Some(last) = page.last() else {
            return Ok(());
        };
        after = Some((last.hash, last.shard));
        for entry in page {
            p.add("shards_scanned", 1);
            if entry.age_secs < grace.as_secs() {
                p.add("kept_recent", 1);
                continue;
            }
            let recorded = match known {
                Some((h, r)) if h == entry.hash => r,
                _ => {
                    let r = core.meta.get_content(&entry.hash).await?.is_some();
                    known = Some((entry.hash, r));
                    r
                }
            };
            if !recorded {
                remove_one(
                    core,
                    server,
                    &entry.hash,
                    entry.shard,
                    grace,
                    p,
                    "stray_shards_removed",
                )
                .await;
            }
        }
    }
}
