//! One shape for background jobs.
//!
//! A [`Worker`] is a named job that runs until its cancellation token fires or its work is
//! done (the repair queue, the maintenance schedules, heartbeats, temp expiry, the locate
//! responder, uploads in the background). A [`Supervisor`] owns the workers of one server:
//! it gives each a child of its cancellation token, logs a worker that fails or panics and
//! runs it again after a back-off (so a bug in one job is a log line and a restart, not a
//! job silently gone), and at shutdown cancels them all and waits for them up to a deadline,
//! aborting (and naming) the ones that do not stop in time.
//!
//! ```
//! # async fn demo() {
//! use std::time::Duration;
//! use dos_worker::{Supervisor, every};
//!
//! let supervisor = Supervisor::new();
//! supervisor.spawn(every("tick", Duration::from_secs(5), || async { /* one round */ }));
//! let report = supervisor.shutdown(Duration::from_secs(10)).await;
//! assert!(report.aborted.is_empty());
//! # }
//! ```

pub mod http;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::future::BoxFuture;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Why a run of a worker ended badly (it is run again after a back-off).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct WorkerError(pub String);

impl WorkerError {
    pub fn new(message: impl std::fmt::Display) -> Self {
        Self(message.to_string())
    }
}

/// A background job. `run` may be called again after it failed or panicked, so state that
/// must survive a restart lives in `self` (behind locks that a panic does not poison, such
/// as tokio's).
#[async_trait]
pub trait Worker: Send + Sync + 'static {
    /// A short name for logs ("repair", "heartbeat").
    fn name(&self) -> &str;

    /// Works until `cancel` fires (then returns promptly) or the work is finished (`Ok`).
    async fn run(&self, cancel: CancellationToken) -> Result<(), WorkerError>;
}

/// First wait before a failed worker runs again; it doubles up to [`MAX_BACKOFF`] and starts
/// over once a run lasted longer than that.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

struct Entry {
    name: String,
    task: JoinHandle<()>,
}

/// Owns a server's workers.
pub struct Supervisor {
    cancel: CancellationToken,
    entries: Mutex<Vec<Entry>>,
    restarts: Arc<AtomicU64>,
}

/// What [`Supervisor::shutdown`] found.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// Workers that stopped within the deadline.
    pub stopped: usize,
    /// Workers that did not and were aborted.
    pub aborted: Vec<String>,
}

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Self {
        Self::with_token(CancellationToken::new())
    }

    /// A supervisor whose workers also stop when `cancel` fires.
    pub fn with_token(cancel: CancellationToken) -> Self {
        Self {
            cancel,
            entries: Mutex::default(),
            restarts: Arc::default(),
        }
    }

    /// The token every worker's token is a child of.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// How many times a worker was run again after failing or panicking.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Starts `worker` and keeps it running until shutdown or until it finishes.
    pub fn spawn(&self, worker: Arc<dyn Worker>) {
        let name = worker.name().to_string();
        let cancel = self.cancel.clone();
        let restarts = self.restarts.clone();
        let task = tokio::spawn(supervise(worker, cancel, restarts));
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|e| !e.task.is_finished());
        entries.push(Entry { name, task });
    }

    /// Owns a task that runs once (a listener, say): it gets no restart, but shutdown waits
    /// for it like for the workers. `f` receives the cancellation token to stop on.
    pub fn spawn_once<F, Fut>(&self, name: impl Into<String>, f: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let task = tokio::spawn(f(self.cancel.child_token()));
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries.retain(|e| !e.task.is_finished());
        entries.push(Entry {
            name: name.into(),
            task,
        });
    }

    /// Names of the workers still running.
    pub fn running(&self) -> Vec<String> {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|e| !e.task.is_finished())
            .map(|e| e.name.clone())
            .collect()
    }

    /// Cancels every worker and waits up to `deadline` for them to stop; the ones still
    /// running then are aborted and named in the report.
    pub async fn shutdown(&self, deadline: Duration) -> ShutdownReport {
        self.cancel.cancel();
        let entries =
            std::mem::take(&mut *self.entries.lock().unwrap_or_else(PoisonError::into_inner));
        let until = tokio::time::Instant::now() + deadline;
        let mut report = ShutdownReport::default();
        for mut e in entries {
            match tokio::time::timeout_at(until, &mut e.task).await {
                Ok(_) => report.stopped += 1,
                Err(_) => {
                    tracing::warn!(worker = %e.name, ?deadline, "worker did not stop in time; aborted");
                    e.task.abort();
                    report.aborted.push(e.name);
                }
            }
        }
        report
    }
}

async fn supervise(worker: Arc<dyn Worker>, cancel: CancellationToken, restarts: Arc<AtomicU64>) {
    let mut backoff = FIRST_BACKOFF;
    loop {
        let started = Instant::now();
        let (w, c) = (worker.clone(), cancel.child_token());
        let outcome = tokio::spawn(async move { w.run(c).await }).await;
        if cancel.is_cancelled() {
            return;
        }
        match outcome {
            Ok(Ok(())) => {
                tracing::debug!(worker = worker.name(), "worker finished");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(worker = worker.name(), error = %e, ?backoff, "worker failed; running it again")
            }
            Err(e) if e.is_panic() => {
                let panic = e.into_panic();
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(worker = worker.name(), panic = %message, ?backoff, "worker panicked; running it again");
            }
            Err(_) => return,
        }
        restarts.fetch_add(1, Ordering::Relaxed);
        if started.elapsed() > MAX_BACKOFF {
            backoff = FIRST_BACKOFF;
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A worker made of a function of its cancellation token.
pub struct FnWorker<F> {
    name: String,
    f: F,
}

#[async_trait]
impl<F> Worker for FnWorker<F>
where
    F: Fn(CancellationToken) -> BoxFuture<'static, Result<(), WorkerError>> + Send + Sync + 'static,
{
    fn name(&self) -> &str {
        &self.name
    }

    async fn run(&self, cancel: CancellationToken) -> Result<(), WorkerError> {
        (self.f)(cancel).await
    }
}

/// A worker that runs `f(cancel)` (again after a failure or panic).
pub fn from_fn<F, Fut>(name: impl Into<String>, f: F) -> Arc<dyn Worker>
where
    F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), WorkerError>> + Send + 'static,
{
    Arc::new(FnWorker {
        name: name.into(),
        f: move |c| -> BoxFuture<'static, Result<(), WorkerError>> { Box::pin(f(c)) },
    })
}

/// A worker that runs `round()` every `period`, the first time one period after it starts.
/// A round is not interrupted by cancellation; the wait between rounds is.
pub fn every<F, Fut>(name: impl Into<String>, period: Duration, round: F) -> Arc<dyn Worker>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let round = Arc::new(round);
    from_fn(name, move |cancel| {
        let round = round.clone();
        async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tick.tick() => round().await,
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[tokio::test(start_paused = true)]
    async fn periodic_rounds_and_prompt_shutdown() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let s = Supervisor::new();
        let r = rounds.clone();
        s.spawn(every("count", Duration::from_secs(1), move || {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
            }
        }));
        tokio::time::sleep(Duration::from_millis(3500)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 3);
        let report = s.shutdown(Duration::from_secs(1)).await;
        assert_eq!((report.stopped, report.aborted.len()), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_worker_is_run_again() {
        let runs = Arc::new(AtomicUsize::new(0));
        let s = Supervisor::new();
        let r = runs.clone();
        s.spawn(from_fn("flaky", move |cancel| {
            let r = r.clone();
            async move {
                let n = r.fetch_add(1, Ordering::SeqCst);
                if n < 2 {
                    panic!("run {n} fails");
                }
                cancel.cancelled().await;
                Ok(())
            }
        }));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "two panics, then a run that lasts"
        );
        assert_eq!(s.restarts(), 2);
        assert_eq!(s.running(), vec!["flaky".to_string()]);
        let report = s.shutdown(Duration::from_secs(1)).await;
        assert!(report.aborted.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failures_are_retried_and_finished_workers_are_not() {
        let runs = Arc::new(AtomicUsize::new(0));
        let s = Supervisor::new();
        let r = runs.clone();
        s.spawn(from_fn("once-fails", move |_| {
            let r = r.clone();
            async move {
                if r.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(WorkerError::new("first run fails"))
                } else {
                    Ok(())
                }
            }
        }));
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 2);
        assert!(s.running().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn workers_that_ignore_cancellation_are_aborted_at_the_deadline() {
        let s = Supervisor::new();
        s.spawn(from_fn("stubborn", |_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        }));
        s.spawn(from_fn("polite", |cancel| async move {
            cancel.cancelled().await;
            Ok(())
        }));
        tokio::task::yield_now().await;
        let report = s.shutdown(Duration::from_secs(2)).await;
        assert_eq!(report.stopped, 1);
        assert_eq!(report.aborted, vec!["stubborn".to_string()]);
    }
}
