//! Mount lifecycle: reach the store (the caller says how: the binary's composition root
//! starts the embedded cluster or connects to a remote one), open the cache, mount, serve
//! until unmounted or signalled, upload anything pending, stop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use dos_cache::{BlockCache, CacheConfig, StagingArea};
use dos_store::ObjectStore;
use futures::future::BoxFuture;

use crate::core::{FsConfig, FsCore};
use crate::fuse::DosFs;

#[derive(Debug, Clone)]
pub struct MountOptions {
    pub mountpoint: PathBuf,
    pub cache_dir: PathBuf,
    pub cache_size: u64,
    /// The daemon's memory budget for file contents (`--memory-size`).
    pub memory_size: u64,
    /// Closes are durable in a local journal and uploaded in the background (`--writeback`).
    pub writeback: bool,
    /// Where to serve `/metrics` (`--metrics ADDR`), with the exporter the binary installed.
    pub metrics: Option<(std::net::SocketAddr, dos_worker::http::Metrics)>,
}

/// The store a mount talks to.
pub struct Backend {
    pub store: Arc<dyn ObjectStore>,
    /// Where REST clients reach the same store (shown as the mount's source, `dosfs:URL`,
    /// which `dosfs versions` and `dosfs restore` read).
    pub url: String,
    /// The file holding the token the embedded store's REST API requires (shown in
    /// `.dosfs/stats`, so that `dosfs versions` and `dosfs restore` find it).
    pub token_file: Option<PathBuf>,
    /// The CA trusted for an https:// API server (shown in `.dosfs/stats` likewise).
    pub tls_ca: Option<PathBuf>,
    /// Run after the unmount, once everything is uploaded (stops an embedded cluster).
    pub stop: Option<BoxFuture<'static, ()>>,
    /// Where changes made elsewhere are heard, when not from the store itself (`--broker`).
    pub feed: Option<Feed>,
}

/// Opens a stream of the changes made to the store (by anyone), to follow until it ends.
pub type Feed =
    Arc<dyn Fn() -> BoxFuture<'static, anyhow::Result<dos_store::ChangeStream>> + Send + Sync>;

/// How often, and after how long unused, blocks leave the cache's memory tier.
const MEMORY_TRIM_EVERY: Duration = Duration::from_secs(5);
const MEMORY_IDLE: Duration = Duration::from_secs(10);
/// How often the write-back uploader looks at the journal besides being woken by a close
/// (for retries).
const WRITEBACK_POLL: Duration = Duration::from_millis(500);

/// Makes the [`Backend`] on the mount's runtime.
pub type Connect = Box<dyn FnOnce() -> BoxFuture<'static, anyhow::Result<Backend>> + Send>;

/// Mount points currently mounted on this machine (from /proc/self/mountinfo).
pub fn mounted_at(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = path.to_string_lossy();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4).map(|m| unescape(m)) == Some(want.to_string()) {
            // After the "-" separator: fstype, source.
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?;
            let source = fields.get(sep + 2).copied().unwrap_or("");
            return Some(format!("{fstype} {source}"));
        }
    }
    None
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Checks that mounting can work, each failure one clear line.
pub fn preflight(mountpoint: &Path) -> anyhow::Result<PathBuf> {
    let mp = mountpoint
        .canonicalize()
        .map_err(|e| anyhow!("mount point {}: {e}", mountpoint.display()))?;
    if !mp.is_dir() {
        bail!("mount point {} is not a directory", mp.display());
    }
    if let Some(what) = mounted_at(&mp) {
        bail!(
            "{} is already a mount point ({what}); unmount it first",
            mp.display()
        );
    }
    if !Path::new("/dev/fuse").exists() {
        bail!("/dev/fuse is missing: load the fuse module (modprobe fuse) or install fuse3");
    }
    let fusermount = std::process::Command::new("fusermount3")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if fusermount.is_err() && !rustix::process::getuid().is_root() {
        bail!("fusermount3 not found: install fuse3 (apt-get install fuse3)");
    }
    Ok(mp)
}

/// Mounts and serves until the filesystem is unmounted or SIGINT/SIGTERM arrives.
/// `ready` is called once the mount is live.
pub fn run(opts: MountOptions, connect: Connect, ready: impl FnOnce(&Path)) -> anyhow::Result<()> {
    let mountpoint = preflight(&opts.mountpoint)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let backend = runtime.block_on(connect())?;
    let url = backend.url.clone();
    let cache = BlockCache::open(CacheConfig {
        memory_bytes: opts.memory_size / 2,
        disk_bytes: opts.cache_size,
        ..CacheConfig::new(opts.cache_dir.join("blocks"))
    })
    .with_context(|| format!("opening the cache in {}", opts.cache_dir.display()))?;
    let staging = StagingArea::new(&opts.cache_dir)
        .with_context(|| format!("opening staging in {}", opts.cache_dir.display()))?;
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let mut fs_config = FsConfig::new(uid, gid);
    fs_config.read_memory_bytes = opts.memory_size / 4;
    fs_config.token_file = backend.token_file.clone();
    fs_config.tls_ca = backend.tls_ca.clone();
    let mut core = FsCore::new(backend.store, cache, staging, fs_config);
    if opts.writeback {
        let dir = opts.cache_dir.join("writeback");
        let journal = crate::core::journal::Journal::open(&dir)
            .with_context(|| format!("opening the write-back journal in {}", dir.display()))?;
        core = core.with_journal(journal);
    }
    let core = Arc::new(core);
    // What a write-back journal holds from before (a crash, a kill) is uploaded before the
    // mount goes live.
    let held = core.journal_len();
    if held > 0 {
        tracing::info!(files = held, "uploading what the write-back journal holds");
        runtime.block_on(core.drain_journal());
    }
    // Memory a burst of reads took is given back once they are over (the blocks stay on
    // disk); see also the allocator's background purging in main.rs.
    let _in_runtime = runtime.enter();
    let workers = dos_worker::Supervisor::new();
    if let Some((addr, metrics)) = opts.metrics.clone() {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("cannot listen on {addr} for --metrics"))?;
        crate::metrics::register();
        workers.spawn(metrics.upkeep_worker());
        let scraped = core.clone();
        let app =
            dos_worker::http::metrics::router(metrics, move || crate::metrics::refresh(&scraped));
        workers.spawn_once("metrics listener", move |cancel| {
            dos_worker::http::serve(listener, app, cancel, Default::default(), None, "metrics")
        });
        tracing::info!(%addr, "serving /metrics");
    }
    let trim = core.clone();
    workers.spawn_once("memory trim", move |cancel| async move {
        let mut tick = tokio::time::interval(MEMORY_TRIM_EVERY);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {
                    let freed = trim.cache().trim_memory(MEMORY_IDLE);
                    if freed > 0 {
                        tracing::debug!(freed, "idle cache memory given back");
                    }
                }
            }
        }
    });
    if opts.writeback {
        let up = core.clone();
        workers.spawn_once("write-back uploads", move |cancel| async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = up.journal_changed() => {}
                    _ = tokio::time::sleep(WRITEBACK_POLL) => {}
                }
                up.upload_pending().await;
            }
        });
    }
    let fs = DosFs::new(core.clone(), runtime.handle().clone(), uid, gid);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("dosfs:{url}")),
        fuser::MountOption::Subtype("dosfs".into()),
        fuser::MountOption::DefaultPermissions,
    ];
    if uid == 0 {
        // Every user may use a mount made by root (the kernel checks their permissions on
        // the owners and modes dosfs reports): `allow_other`, given as fuser's ACL so that
        // fuser, which filters requests by uid itself, does not refuse other users'.
        config.acl = fuser::SessionACL::All;
    }
    // These threads only read requests and hand them to the runtime (see `fuse`): the work
    // in progress is tasks, as many as the kernel sends, not threads.
    config.n_threads = Some(2);
    let session = fuser::spawn_mount(fs, &mountpoint, &config)
        .with_context(|| format!("mounting {}", mountpoint.display()))?;
    let (capped, notifier) = (core.clone(), session.notifier());
    workers.spawn_once("inode cap", move |cancel| {
        crate::fuse::cap_inodes(capped, notifier, cancel)
    });
    let (follower, notifier) = (core.clone(), session.notifier());
    let feed = backend.feed.clone().unwrap_or_else(|| {
        let core = core.clone();
        Arc::new(move || {
            let core = core.clone();
            Box::pin(async move { Ok(core.changes().await?) })
        })
    });
    workers.spawn_once("change follower", move |cancel| {
        crate::fuse::follow_changes(follower, feed, notifier, cancel)
    });
    tracing::info!(mountpoint = %mountpoint.display(), %url, "mounted");
    ready(&mountpoint);

    // Serve until the session ends (fusermount3 -u, dosfs umount) or a signal asks us to
    // unmount ourselves.
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = session.join();
        let _ = done_tx.send(r);
    });
    let mp = mountpoint.clone();
    runtime.spawn(async move {
        wait_for_signal().await;
        tracing::info!("signal received: unmounting");
        // fusermount3 is a process to wait for: off the async workers.
        if let Err(e) = tokio::task::spawn_blocking(move || unmount(&mp)).await {
            tracing::warn!(error = %e, "unmount task failed");
        }
    });
    let ended = done_rx.recv().unwrap_or(Ok(()));
    if let Err(e) = ended {
        tracing::warn!(error = %e, "FUSE session ended with an error");
    }
    let failures = runtime.block_on(core.flush_all());
    for (path, e) in &failures {
        eprintln!("dosfs: could not upload {path}: {e}");
    }
    runtime.block_on(workers.shutdown(Duration::from_secs(5)));
    if let Some(stop) = backend.stop {
        runtime.block_on(stop);
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{} file(s) could not be uploaded", failures.len())
    }
}

/// `fusermount3 -u`, falling back to umount(8) as root.
pub fn unmount(mountpoint: &Path) -> bool {
    let ok = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(mountpoint)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    ok || std::process::Command::new("umount")
        .arg(mountpoint)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}
