use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `println!` for the commands' output: a reader that went away (`dosfs stats M | head`)
/// ends the command quietly instead of a panic.
macro_rules! out {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("dosfs: writing the output: {e}");
        }
    }};
}

use anyhow::{Context, anyhow, bail};
use clap::{Parser, Subcommand};
use dosfs::mount::{MountOptions, mounted_at, unmount};

/// dosfs: files on the dos object store. Every file is an object, every save a new version,
/// every version reachable under MOUNTPOINT/.dosfs/history/.
#[derive(Parser)]
#[command(name = "dosfs", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    pub logging: dos_server::LogArgs,
}

// Parsed once per run: the size of the mount's variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Mount the store. Without --api, starts an embedded store (API on 127.0.0.1:23333).
    Mount {
        /// An existing, empty directory.
        mountpoint: PathBuf,
        /// API server of a running cluster, e.g. http://127.0.0.1:23333; or several,
        /// comma-separated (`URL,URL,…`): requests are spread over them, and one that cannot
        /// reach its server goes to the next (a cluster of several API servers keeps its
        /// metadata in Elasticsearch).
        #[arg(long, env = "DOS_API")]
        api: Option<String>,
        /// Bearer token for the API server. With the embedded store: the token its REST API
        /// requires [default: the one in DATA_DIR/token, created on first mount, private].
        #[arg(long, env = "DOS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// CA certificate (PEM) to trust for an https:// API server [default: the system's
        /// roots].
        #[arg(long, env = "DOS_TLS_CA", requires = "api")]
        tls_ca: Option<PathBuf>,
        /// Embedded store: serve its REST API without a token (any local user can then read,
        /// change and delete everything).
        #[arg(long, conflicts_with_all = ["token", "api"])]
        no_token: bool,
        /// Data of the embedded store [default: ~/.local/share/dosfs].
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// API address of the embedded store.
        #[arg(long, default_value = "127.0.0.1:23333")]
        listen: SocketAddr,
        /// Local cache and write staging [default: ~/.cache/dosfs].
        #[arg(long)]
        cache_dir: Option<PathBuf>,
        /// Disk budget of the read cache, e.g. 512M, 4G.
        #[arg(long, default_value = "4G", value_parser = parse_size)]
        cache_size: u64,
        /// Memory budget of the daemon for what it holds of file contents: half for the
        /// cache's memory tier, a quarter for blocks waiting for their readers; reads slow
        /// down rather than grow past it (at least 16M).
        #[arg(long, default_value = "256M", value_parser = parse_memory_size)]
        memory_size: u64,
        /// Write-back: close and fsync return once the file is durable in a local journal
        /// (CACHE_DIR/writeback); uploads follow in the background, retried until the store
        /// takes them. Without it, close returns once the version is durable in the store.
        #[arg(long)]
        writeback: bool,
        /// Stay attached to the terminal instead of serving in the background.
        #[arg(long)]
        foreground: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (FUSE operations, cache,
        /// uploads; and the embedded store's servers). Off by default.
        #[arg(long, value_name = "ADDR")]
        metrics: Option<SocketAddr>,
        /// The cluster's RabbitMQ (amqp://user:password@host:port/vhost): hear of changes
        /// made elsewhere from the broker itself rather than through the API server. Needs
        /// the cluster secret when the cluster has one (DOS_SECRET or --secret-file), which
        /// makes this host as trusted as an API server.
        #[arg(long, env = "DOS_BROKER", requires = "api", value_name = "URL")]
        broker: Option<String>,
        /// With --broker: the cluster secret, as hex.
        #[arg(long, env = "DOS_SECRET", hide_env_values = true)]
        secret: Option<String>,
        /// With --broker: a file holding the cluster secret.
        #[arg(long, env = "DOS_SECRET_FILE", conflicts_with = "secret")]
        secret_file: Option<PathBuf>,
    },
    /// Unmount (uploads anything pending first; waits for the daemon to stop).
    Umount { mountpoint: PathBuf },
    /// Show a mount's activity live, per second: FUSE operations by kind, bytes read and
    /// written, the cache's hit ratio, pending uploads (from MOUNTPOINT/.dosfs/stats).
    ///
    /// On a terminal the screen is redrawn in place every interval (Ctrl-C stops it);
    /// otherwise one line per interval is printed. Rates count what the daemon served: reads
    /// that the kernel's page cache answers do not reach it.
    #[command(
        after_help = "Examples:\n  dosfs stats /mnt/dos\n  dosfs stats /mnt/dos --interval 5 --count 12 > activity.log\n  dosfs stats /mnt/dos --all    # the daemon's memory, cache and tables, once"
    )]
    Stats {
        mountpoint: PathBuf,
        /// Seconds between samples (fractions allowed, e.g. 0.5).
        #[arg(long, default_value = "1", value_parser = parse_interval)]
        interval: f64,
        /// Stop after this many samples [default: run until interrupted].
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Print everything the daemon reports once, as a table (memory by use, the cache,
        /// reads in progress, tables, operation counters since the mount).
        #[arg(long, conflicts_with_all = ["json", "interval", "count"])]
        all: bool,
        /// Print MOUNTPOINT/.dosfs/stats once, as it is (JSON).
        #[arg(long, conflicts_with_all = ["interval", "count"])]
        json: bool,
    },
    /// Read every regular file under the paths through the mount, so that its blocks are in
    /// the dosfs cache for the next reader.
    ///
    /// Folders are walked (symbolic links are not followed, .dosfs is skipped). A progress
    /// bar (bytes and files) is shown when stderr is a terminal. A file that cannot be read
    /// is reported and counted; the command then exits with status 1. The cache is bounded
    /// (`mount --cache-size`, 4G by default, least recently used blocks are evicted past it):
    /// it keeps whole files only while what is warmed fits in it, and a warmup larger than
    /// the cache pushes out what it read first.
    #[command(after_help = "Example:\n  dosfs warmup /mnt/dos/models /mnt/dos/data/train.csv")]
    Warmup {
        /// Files or folders inside a dosfs mount.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Verify the stored content of every regular file under the paths in full, and repair
    /// it: every shard is read whole and its checksums checked by its data server, missing,
    /// corrupt or unreachable shards are rebuilt, the object is decoded and its SHA-256
    /// compared with its hash.
    ///
    /// Prints a line for each file repaired, still bad or not checked, then a summary; a
    /// progress bar is shown when stderr is a terminal. Exits with status 1 when a file is
    /// still bad (unreadable, a SHA-256 mismatch, shards no server can take now) or could
    /// not be checked. Files not uploaded yet are listed and skipped. For a cheap look at one
    /// file: `getfattr -n user.dosfs.redundancy FILE`.
    #[command(after_help = "Examples:
  dosfs check /mnt/dos/photos
  getfattr -n user.dosfs.redundancy /mnt/dos/photos/a.jpg")]
    Check {
        /// Files or folders inside a dosfs mount.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Run a short benchmark in a fresh temporary folder under PATH and print a table: one
    /// big file written sequentially (with fsync) and read back, small files created and
    /// written, stat'ed and removed. Removes everything it made.
    #[command(after_help = "Example:\n  dosfs bench /mnt/dos --big-size 256 --small-count 500")]
    Bench {
        /// A folder, on a dosfs mount or any other file system [default: the current
        /// folder].
        path: Option<PathBuf>,
        /// Size of the big file, in MiB.
        #[arg(long, value_name = "MIB", default_value_t = 64)]
        big_size: u64,
        /// Number of small files (4 KiB each).
        #[arg(long, value_name = "N", default_value_t = 100)]
        small_count: usize,
    },
    /// List the files a write-back mount has not uploaded yet, with sizes and ages.
    Status { mountpoint: PathBuf },
    /// List every version of a file in a dosfs mount.
    Versions {
        path: PathBuf,
        #[arg(long, env = "DOS_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Make version N of a file its latest version again (--version), or make a file or a
    /// whole folder what it was at a moment (--at): changed files get their old content and
    /// attributes back, files deleted since come back, files made since are deleted. Moves
    /// no data (new versions point at the old content); prints what it changed and the
    /// moment to restore to for undoing it.
    #[command(group(clap::ArgGroup::new("what").required(true).args(["version", "at"])))]
    Restore {
        /// A file or folder inside a dosfs mount (the mount point itself: the whole tree,
        /// with --at).
        path: PathBuf,
        /// The version number (see `dosfs versions`).
        #[arg(long)]
        version: Option<u64>,
        /// The moment: 2026-12-01T08:30:00Z (RFC 3339, UTC or with an offset, with
        /// fractions of a second), 2026-12-01 (its midnight UTC), 2026-12-01T08:30 (UTC),
        /// 20261201T083000Z, or @UNIX_SECONDS.
        #[arg(long, value_name = "TIME", value_parser = dos_protocol::parse_moment)]
        at: Option<i64>,
        #[arg(long, env = "DOS_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// List the changes under a file or folder of a dosfs mount, newest first: time,
    /// version, what happened (written, deleted, renamed, restored) and name.
    Log {
        /// A file or folder inside a dosfs mount [default: the current folder].
        path: Option<PathBuf>,
        /// Only changes made at or after this moment (the forms of `restore --at`).
        #[arg(long, value_name = "TIME", value_parser = dos_protocol::parse_moment)]
        since: Option<i64>,
        /// Stop after this many changes.
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, env = "DOS_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let m = match s[i..]
                .to_ascii_uppercase()
                .trim_end_matches("IB")
                .trim_end_matches('B')
            {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1u64 << 40,
                other => return Err(format!("unknown size unit {other:?}")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("bad size {s:?}"))
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.05..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "{s:?} is not a number of seconds between 0.05 and 86400"
        )),
    }
}

fn parse_memory_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    if n < 16 << 20 {
        return Err(format!(
            "{s} is too small: the memory budget must be at least 16M"
        ));
    }
    Ok(n)
}

fn home_dir(var: &str, fallback: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("dosfs")
}

/// What a mount's daemon reports about itself (`MOUNTPOINT/.dosfs/stats`).
fn mount_stats(mountpoint: &Path) -> anyhow::Result<serde_json::Value> {
    let path = mountpoint.join(".dosfs").join("stats");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is it a dosfs mount?)", path.display()))?;
    serde_json::from_str(&text).context("the daemon's stats are not JSON")
}

/// Whether `pid` runs (a zombie waiting to be reaped counts as gone).
fn process_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let log_format = cli.logging.log_format;
    match cli.command {
        Command::Mount {
            mountpoint,
            api,
            token,
            tls_ca,
            no_token,
            data_dir,
            listen,
            cache_dir,
            cache_size,
            memory_size,
            writeback,
            foreground,
            metrics,
            broker,
            secret,
            secret_file,
        } => {
            let opts = MountArgs {
                mount: MountOptions {
                    mountpoint: mountpoint.clone(),
                    cache_dir: cache_dir.unwrap_or_else(|| home_dir("XDG_CACHE_HOME", ".cache")),
                    cache_size,
                    memory_size,
                    writeback,
                    metrics: None,
                },
                api,
                token,
                tls_ca,
                no_token,
                data_dir: data_dir.unwrap_or_else(|| home_dir("XDG_DATA_HOME", ".local/share")),
                listen,
                broker,
                secret,
                secret_file,
            };
            for dir in [&opts.data_dir, &opts.mount.cache_dir] {
                dos_server::secret::private_dir(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            if foreground {
                let mut opts = opts;
                if let Some(addr) = metrics {
                    opts.mount.metrics = Some((addr, dos_server::metrics::install()?));
                }
                let connect = connect(&opts);
                dosfs::mount::run(opts.mount, connect, |mp| {
                    eprintln!("dosfs: mounted at {}", mp.display());
                })
            } else {
                daemonize(&opts, metrics, log_format)
            }
        }
        Command::Umount { mountpoint } => {
            let mp = mountpoint
                .canonicalize()
                .map_err(|e| anyhow!("{}: {e}", mountpoint.display()))?;
            if mounted_at(&mp).is_none() {
                bail!("{} is not mounted", mp.display());
            }
            // The daemon to wait for, as it says itself.
            let pid = mount_stats(&mp)
                .ok()
                .and_then(|v| v["process"]["pid"].as_u64())
                .and_then(|p| u32::try_from(p).ok());
            if !unmount(&mp) {
                bail!(
                    "could not unmount {} (is a file still open there? see `fuser -m {}`)",
                    mp.display(),
                    mp.display()
                );
            }
            if let Some(pid) = pid {
                // Wait for the daemon to finish its uploads and stop its store.
                if !wait_for(Duration::from_secs(120), || !process_alive(pid)) {
                    bail!(
                        "unmounted {} here, but its daemon (pid {pid}) has not stopped after 120 s: the kernel keeps the file system while a copy of the mount lives on (in the mount namespace of a process started after the mount with `ip netns exec`, `unshare -m` or a container); it stops when the last copy goes",
                        mp.display()
                    );
                }
            }
            eprintln!("dosfs: unmounted {}", mp.display());
            Ok(())
        }
        Command::Status { mountpoint } => {
            let v = mount_stats(&mountpoint)?;
            let wb = &v["writeback"];
            if wb["enabled"] != true {
                out!("write-back is off: every close is durable in the store when it returns");
                return Ok(());
            }
            let files = wb["files"].as_array().cloned().unwrap_or_default();
            out!(
                "{} file(s) pending upload, {} bytes",
                wb["pending"].as_u64().unwrap_or(0),
                wb["pending_bytes"].as_u64().unwrap_or(0)
            );
            for f in files {
                out!(
                    "{:>12}  {:>6} s  {}",
                    f["size"].as_u64().unwrap_or(0),
                    f["age_secs"].as_u64().unwrap_or(0),
                    f["path"].as_str().unwrap_or("?")
                );
            }
            Ok(())
        }
        Command::Stats {
            mountpoint,
            interval,
            count,
            all,
            json,
        } => {
            if json || all {
                let path = mountpoint.join(".dosfs").join("stats");
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("{} (is this a dosfs mount?)", path.display()))?;
                if json {
                    print!("{text}");
                    return Ok(());
                }
                let v: serde_json::Value =
                    serde_json::from_str(&text).context("the daemon's stats are not JSON")?;
                print_stats(&v);
                return Ok(());
            }
            use std::io::IsTerminal as _;
            dosfs::tools::top::run(
                &mountpoint,
                Duration::from_secs_f64(interval),
                count,
                std::io::stdout().is_terminal(),
            )
        }
        Command::Warmup { paths } => {
            use std::io::IsTerminal as _;
            let summary = dosfs::tools::warmup::run(&paths, std::io::stderr().is_terminal());
            out!("{}", summary.line());
            if summary.errors > 0 {
                bail!("{} file(s) or folder(s) could not be read", summary.errors);
            }
            Ok(())
        }
        Command::Check { paths } => {
            use std::io::IsTerminal as _;
            let summary =
                dosfs::tools::check::run(&paths, std::io::stderr().is_terminal(), &mut |line| {
                    out!("{line}")
                });
            out!("{}", summary.line());
            if summary.failed() {
                bail!(
                    "{} file(s) still bad, {} could not be checked",
                    summary.bad,
                    summary.errors
                );
            }
            Ok(())
        }
        Command::Bench {
            path,
            big_size,
            small_count,
        } => {
            let dir = path.unwrap_or_else(|| PathBuf::from("."));
            let big = big_size
                .checked_mul(1 << 20)
                .ok_or_else(|| anyhow!("--big-size {big_size} is too large"))?;
            let steps = dosfs::tools::bench::run(&dir, big, small_count)?;
            out!("{}", dosfs::tools::bench::table(&steps).trim_end());
            Ok(())
        }
        Command::Versions { path, token } => {
            let (client, name) = locate_in_mount(&path, token, false)?;
            let rt = tokio::runtime::Runtime::new()?;
            let versions = rt.block_on(client.versions(&name))?;
            if versions.is_empty() {
                bail!("{} has no versions", path.display());
            }
            out!(
                "{:>8}  {:>12}  {:<30}  SHA-256",
                "VERSION",
                "SIZE",
                "TIME (UTC)"
            );
            for v in versions {
                let hash = v
                    .hash
                    .map_or_else(|| "(deleted)".to_string(), |h| h.to_base64());
                out!(
                    "{:>8}  {:>12}  {:<30}  {}",
                    v.version,
                    v.size,
                    dos_protocol::format_rfc3339_ns(v.mtime_ns),
                    hash
                );
            }
            Ok(())
        }
        Command::Restore {
            path,
            at: Some(at),
            token,
            ..
        } => restore_at(&path, at, token),
        Command::Log {
            path,
            since,
            limit,
            token,
        } => print_log(
            &path.unwrap_or_else(|| PathBuf::from(".")),
            since,
            limit,
            token,
        ),
        Command::Restore {
            path,
            version: Some(version),
            token,
            ..
        } => {
            let (client, name) = locate_in_mount(&path, token, false)?;
            let rt = tokio::runtime::Runtime::new()?;
            let rec = rt.block_on(async {
                let v = client.head(&name, Some(version)).await?;
                let attrs = dos_protocol::WriteAttributes {
                    kind: v.kind,
                    mode: Some(v.mode),
                    mtime_ns: Some(dos_protocol::now_ns()),
                    supersedes: None,
                    posix: v.posix,
                };
                client.post(&name, v.hash, v.size, &attrs).await
            })?;
            match rec {
                dos_client::PostOutcome::Created(r) => {
                    out!(
                        "restored {} version {version} as version {}",
                        path.display(),
                        r.version
                    );
                    // The mount sees changes made through REST within a second: return once
                    // it shows this one, so that the next command reads the restored file.
                    if !mount_shows(&path, r.version, r.size, Duration::from_secs(3)) {
                        eprintln!(
                            "dosfs: the mount does not show version {} of {} yet (is it open for writing?)",
                            r.version,
                            path.display()
                        );
                    }
                    Ok(())
                }
                dos_client::PostOutcome::Upload(_) => {
                    bail!("the content of version {version} is no longer stored")
                }
            }
        }
        Command::Restore { .. } => bail!("give --version N or --at TIME"),
    }
}

/// `dosfs restore PATH --at TIME`.
fn restore_at(path: &Path, at: i64, token: Option<String>) -> anyhow::Result<()> {
    let (client, name) = locate_in_mount(path, token, true)?;
    let rt = tokio::runtime::Runtime::new()?;
    let done = rt.block_on(dosfs::restore::restore_tree(&client, &name, at))?;
    for a in &done.actions {
        out!("{a}");
    }
    let when = dos_protocol::format_rfc3339_ns(at);
    match done.undo_at {
        None => out!(
            "{} is as it was at {when}: nothing to change",
            path.display()
        ),
        Some(undo) => {
            out!(
                "{} changes; {} is as it was at {when}",
                done.actions.len(),
                path.display()
            );
            out!(
                "undo: dosfs restore {} --at {}",
                path.display(),
                dos_protocol::format_rfc3339_ns(undo)
            );
        }
    }
    if done
        .actions
        .iter()
        .any(|a| matches!(a, dosfs::restore::Action::Lost { .. }))
    {
        bail!("some files could not be restored: their content is no longer stored");
    }
    Ok(())
}

/// `dosfs log [PATH] [--since TIME]`: page after page, printed as they come.
fn print_log(
    path: &Path,
    since: Option<i64>,
    limit: Option<usize>,
    token: Option<String>,
) -> anyhow::Result<()> {
    let (client, name) = locate_in_mount(path, token, true)?;
    // The changes of the name itself and of every name under it (a folder, also one that
    // is deleted now); the listing by prefix also brings siblings such as `NAME.bak`, left
    // out here.
    let under = format!("{name}/");
    let ours = |n: &str| name.is_empty() || n == name || n.starts_with(&under);
    let rt = tokio::runtime::Runtime::new()?;
    out!(
        "{:<30}  {:>8}  {:<8}  NAME",
        "TIME (UTC)",
        "VERSION",
        "WHAT"
    );
    let mut shown = 0usize;
    let mut cursor: Option<String> = None;
    loop {
        let page = rt.block_on(client.log(&name, since, cursor.as_deref(), Some(1000)))?;
        for c in page.changes.iter().filter(|c| ours(c.name.as_str())) {
            if limit.is_some_and(|l| shown >= l) {
                return Ok(());
            }
            let other = match (&c.from, &c.to) {
                (Some(from), _) => format!(" (from {from})"),
                (_, Some(to)) => format!(" (to {to})"),
                _ => String::new(),
            };
            out!(
                "{:<30}  {:>8}  {:<8}  {}{other}",
                dos_protocol::format_rfc3339_ns(c.time_ns),
                c.version,
                c.what.as_str(),
                c.name
            );
            shown += 1;
        }
        match page.next_cursor {
            Some(next) if cursor.as_deref() != Some(next.as_str()) => cursor = Some(next),
            _ => return Ok(()),
        }
    }
}

/// The stats report as a table: bytes in MiB, counts as they are.
fn print_stats(v: &serde_json::Value) {
    let Some(sections) = v.as_object() else {
        return;
    };
    for (section, fields) in sections {
        out!("{section}");
        for (name, value) in fields.as_object().into_iter().flatten() {
            let shown = match (name.ends_with("_bytes"), value.as_u64()) {
                (true, Some(b)) => format!("{:.1} MiB", b as f64 / (1 << 20) as f64),
                _ => value.to_string(),
            };
            let label = name.trim_end_matches("_bytes").replace('_', " ");
            out!("  {label:<24} {shown}");
        }
    }
}

/// Waits until `path`, seen through the mount, is version `version` of `size` bytes (its
/// `user.dosfs.version` xattr, and its size, so that the kernel's attributes are fresh too).
fn mount_shows(path: &Path, version: u64, size: u64, timeout: Duration) -> bool {
    wait_for(timeout, || {
        let mut buf = [0u8; 24];
        let current = rustix::fs::getxattr(path, "user.dosfs.version", &mut buf[..])
            .ok()
            .and_then(|n| std::str::from_utf8(&buf[..n]).ok()?.parse::<u64>().ok());
        current == Some(version) && std::fs::metadata(path).is_ok_and(|m| m.len() == size)
    })
}

/// Polls `done` every 50 ms until it holds (true) or `timeout` passes (false).
fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The API client and object name of a path inside a dosfs mount.
/// `root`: the mount point itself may be given (its name is "").
fn locate_in_mount(
    path: &Path,
    token: Option<String>,
    root: bool,
) -> anyhow::Result<(dos_client::Client, String)> {
    let abs = std::path::absolute(path)?;
    let mounts = std::fs::read_to_string("/proc/self/mounts")?;
    let mut best: Option<(PathBuf, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 3 || !(f[2] == "fuse.dosfs" || f[2] == "fuse") {
            continue;
        }
        let Some(url) = f[0].strip_prefix("dosfs:") else {
            continue;
        };
        let mp = PathBuf::from(f[1].replace("\\040", " "));
        if abs.starts_with(&mp)
            && best
                .as_ref()
                .is_none_or(|(b, _)| mp.as_os_str().len() > b.as_os_str().len())
        {
            best = Some((mp, url.to_string()));
        }
    }
    let (mp, url) =
        best.ok_or_else(|| anyhow!("{} is not inside a dosfs mount", path.display()))?;
    let rel = abs.strip_prefix(&mp).context("path outside its mount")?;
    let name = rel
        .to_str()
        .ok_or_else(|| anyhow!("path is not UTF-8"))?
        .to_string();
    if name.is_empty() && !root {
        bail!("give a file inside the mount, not the mount point");
    }
    // Without a token given, the one the mount's embedded store requires, from the file
    // the daemon names (private to the user who mounted); the CA it trusts, if any.
    let stats = mount_stats(&mp)?;
    let token = match token {
        Some(t) => Some(t),
        None => match stats["store"]["token_file"].as_str() {
            Some(file) => Some(
                dos_server::secret::read_private(Path::new(file))
                    .with_context(|| format!("reading the mount's token in {file}"))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        },
    };
    let mut b = dos_client::Client::builder(url);
    if let Some(t) = token {
        b = b.token(t);
    }
    if let Some(ca) = stats["store"]["tls_ca"].as_str() {
        b = b.tls(dos_server::tls::client_config(Path::new(ca)).context("the mount's TLS CA")?);
    }
    Ok((b.build()?, name))
}

/// What `dosfs mount` was asked for.
struct MountArgs {
    mount: MountOptions,
    /// Remote API server; `None` starts the embedded cluster.
    api: Option<String>,
    token: Option<String>,
    /// CA to trust for an https:// API server.
    tls_ca: Option<PathBuf>,
    /// The embedded store's REST API needs no token.
    no_token: bool,
    /// Where the embedded cluster keeps its data.
    data_dir: PathBuf,
    /// REST address of the embedded cluster.
    listen: SocketAddr,
    /// The cluster's RabbitMQ, to follow changes from directly.
    broker: Option<String>,
    /// The cluster secret (hex), or a file holding it, for the broker's sealed messages.
    secret: Option<String>,
    secret_file: Option<PathBuf>,
}

/// The cluster secret the broker's messages are sealed with, if one was given.
fn broker_secret(args: &MountArgs) -> anyhow::Result<Option<Vec<u8>>> {
    if let Some(hex) = args.secret.as_deref().filter(|s| !s.is_empty()) {
        return Ok(Some(
            dos_server::secret::parse_hex(hex).context("DOS_SECRET")?,
        ));
    }
    match &args.secret_file {
        Some(path) => Ok(Some(
            dos_server::secret::load_existing(path)
                .with_context(|| format!("secret file {}", path.display()))?,
        )),
        None => Ok(None),
    }
}

/// Changes heard from the cluster's broker (`--broker`): the mount connects to it when first
/// followed (a broker down at mount time is tried again later), and a stream ends when the
/// connection is lost, so the mount knows to rely on its attribute TTL until it is back.
fn broker_feed(url: String, secret: Option<Vec<u8>>) -> dosfs::mount::Feed {
    use dos_bus::Bus;
    use futures::StreamExt;
    let bus: Arc<tokio::sync::OnceCell<Arc<dos_bus::amqp::AmqpBus>>> = Arc::default();
    Arc::new(move || {
        let (bus, url, secret) = (bus.clone(), url.clone(), secret.clone());
        Box::pin(async move {
            let bus = bus
                .get_or_try_init(|| async {
                    let mut config = dos_bus::amqp::AmqpConfig::new(url);
                    config.secret = secret;
                    dos_bus::amqp::AmqpBus::connect(config).await.map(Arc::new)
                })
                .await
                .map_err(|e| {
                    // Said at warn level: a wrong URL or password shows in the log, not only
                    // as changes that take the TTL to show.
                    tracing::warn!(error = %e, "cannot follow changes on RabbitMQ (--broker); until it can, changes made elsewhere show within the attribute TTL");
                    anyhow!("{e}")
                })?
                .clone();
            if !bus.is_connected() {
                bail!("not connected to RabbitMQ (reconnecting)");
            }
            tracing::info!("following changes on RabbitMQ");
            let watch = bus.clone();
            let lost = async move {
                while watch.is_connected() {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            };
            let stream: dos_store::ChangeStream = Box::pin(bus.changes().take_until(lost));
            Ok(stream)
        })
    })
}

/// How the mount reaches its store: the composition root of `dosfs`. With `--api`, over
/// HTTP to that API server; without, an embedded cluster started in this process, which
/// the mount calls directly while its REST listener serves other clients.
fn connect(args: &MountArgs) -> dosfs::mount::Connect {
    let (api, token, no_token, data_dir, listen) = (
        args.api.clone(),
        args.token.clone(),
        args.no_token,
        args.data_dir.clone(),
        args.listen,
    );
    let tls_ca = args.tls_ca.clone();
    let metrics = args.mount.metrics.as_ref().map(|(_, m)| m.clone());
    let broker = args.broker.clone();
    let secret = broker_secret(args);
    Box::new(move || {
        Box::pin(async move {
            let feed = match broker {
                Some(url) => Some(broker_feed(url, secret?)),
                None => None,
            };
            match api {
                Some(url) => {
                    let url = url.trim_end_matches('/').to_string();
                    let mut builder = dos_client::Client::builder(url.clone());
                    if let Some(t) = &token {
                        builder = builder.token(t.clone());
                    }
                    if let Some(ca) = &tls_ca {
                        builder = builder
                            .tls(dos_server::tls::client_config(ca).context("TLS CA certificate")?);
                    }
                    let client = builder.build().context("building the HTTP client")?;
                    client
                        .health(Duration::from_secs(10))
                        .await
                        .map_err(|e| anyhow!("cannot reach the API server(s) at {url}: {e}"))?;
                    Ok(dosfs::mount::Backend {
                        store: std::sync::Arc::new(client),
                        url,
                        token_file: None,
                        tls_ca,
                        stop: None,
                        feed,
                    })
                }
                None => {
                    let mut token_file = None;
                    let token = match token {
                        Some(t) => Some(t),
                        None if no_token => {
                            eprintln!(
                                "dosfs: WARNING: --no-token: every user of this machine can read, change and delete all data through {listen}"
                            );
                            None
                        }
                        None => {
                            let path = data_dir.join("token");
                            let t = dos_server::secret::load_or_create_token(&path)
                                .with_context(|| format!("token file {}", path.display()))?;
                            token_file = Some(path);
                            Some(t)
                        }
                    };
                    // Retention and orphan collection over REST take their own token.
                    let admin_token = match &token_file {
                        Some(_) => Some(
                            dos_server::secret::load_or_create_token(&data_dir.join("admin-token"))
                                .context("the admin token file")?,
                        ),
                        None => None,
                    };
                    let mut config = dos_server::local::LocalConfig::new(data_dir.clone(), listen);
                    config.token = token;
                    config.admin_token = admin_token;
                    // The embedded servers' families are rendered by --metrics too.
                    config.metrics = metrics;
                    let cluster = dos_server::local::LocalCluster::start(config)
                        .await
                        .with_context(|| {
                            format!(
                                "cannot start the embedded store in {} on {listen}",
                                data_dir.display()
                            )
                        })?;
                    Ok(dosfs::mount::Backend {
                        store: std::sync::Arc::new(cluster.store()),
                        url: format!("http://{}", cluster.api_addr()),
                        token_file,
                        tls_ca: None,
                        stop: Some(Box::pin(cluster.shutdown())),
                        feed,
                    })
                }
            }
        })
    })
}

/// Starts `dosfs mount --foreground` in the background and returns once the mount is live.
fn daemonize(
    args: &MountArgs,
    metrics: Option<SocketAddr>,
    log_format: dos_server::LogFormat,
) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt;
    let opts = &args.mount;
    let mp = dosfs::mount::preflight(&opts.mountpoint)?;
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let log_path = args.data_dir.join("dosfs.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let exe = std::env::current_exe()?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("mount")
        .arg(&mp)
        .arg("--foreground")
        .arg("--data-dir")
        .arg(&args.data_dir)
        .arg("--listen")
        .arg(args.listen.to_string())
        .arg("--cache-dir")
        .arg(&opts.cache_dir)
        .arg("--cache-size")
        .arg(opts.cache_size.to_string())
        .arg("--memory-size")
        .arg(opts.memory_size.to_string());
    if opts.writeback {
        cmd.arg("--writeback");
    }
    if let Some(addr) = metrics {
        cmd.arg("--metrics").arg(addr.to_string());
    }
    if log_format == dos_server::LogFormat::Json {
        cmd.arg("--log-format").arg("json");
    }
    if let Some(api) = &args.api {
        cmd.arg("--api").arg(api);
    }
    if let Some(broker) = &args.broker {
        cmd.arg("--broker").arg(broker);
    }
    if let Some(secret) = &args.secret {
        cmd.env("DOS_SECRET", secret);
    }
    if let Some(file) = &args.secret_file {
        cmd.arg("--secret-file").arg(file);
    }
    if let Some(t) = &args.token {
        cmd.env("DOS_TOKEN", t);
    }
    if args.no_token {
        cmd.arg("--no-token");
    }
    let mut child = cmd
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the dosfs daemon")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if mounted_at(&mp).is_some() {
            eprintln!(
                "dosfs: mounted at {} (pid {}, log {})",
                mp.display(),
                child.id(),
                log_path.display()
            );
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last: Vec<&str> = log.lines().rev().take(3).collect();
            bail!(
                "the dosfs daemon exited ({status}): {}",
                last.into_iter().rev().collect::<Vec<_>>().join(" | ")
            );
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!(
                "the mount did not come up within 60 s; see {}",
                log_path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
