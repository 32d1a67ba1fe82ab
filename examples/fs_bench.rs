//! dosfs benchmark: cp of large files into and out of the mount (cold and cached), next to the
//! same cp on a local directory and on a passthrough FUSE filesystem (`bindfs -o big_writes`),
//! plus 10,000 × 4 KiB file creations and `ls -l` of 10,000 entries, in one run. For the
//! targets it compares, against the embedded store the mount started (curl): `cp in` with a
//! REST PUT of a file as large (other random content, its SHA-256 computed before the clock
//! starts); cold reads through the mount with cold REST GETs of the same object and to the
//! same sink: `cat` and a GET to /dev/null (the store's raw throughput), `cp out` and a GET
//! into the out directory; and dosfs's cached reads with bindfs's. Each size is measured
//! `--rounds` times (a new file each round, so every dosfs read is cold again); the tables
//! give the median and the range.
//!
//! ```text
//! apt-get install bindfs fuse3
//! cargo build --release -p dosfs -p dos-server && cargo build --release -p dos-examples --examples
//! cargo run --release -p dos-examples --example fs_bench -- --sizes-mib 256,1024
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use dos_protocol::ContentHash;
use sha2::Digest;

#[derive(Parser)]
struct Args {
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    sizes_mib: Vec<u64>,
    #[arg(long, default_value = "/tmp/dosfs-bench")]
    dir: PathBuf,
    #[arg(long, default_value = "target/release/dosfs")]
    dosfs: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    files: usize,
    /// Rounds per size (the tables give the median and the range).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Where `cp out` writes (default: `DIR/out`); e.g. /dev/shm when the disk is short of space.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Serve the mount's Prometheus metrics on this address while it runs (`dosfs mount
    /// --metrics`; off by default, as in dosfs), to measure what metrics cost.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

fn drop_caches() {
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
}

fn sh(cmd: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = Command::new("sh").arg("-c").arg(cmd).status()?;
    if !status.success() {
        bail!("`{cmd}` failed: {status}");
    }
    Ok(start.elapsed())
}

fn rate(mib: u64, d: Duration) -> f64 {
    mib as f64 / d.as_secs_f64()
}

/// The speed of a dosfs run taking `ours` in % of a reference run taking `reference`.
fn pct(reference: Duration, ours: Duration) -> f64 {
    100.0 * reference.as_secs_f64() / ours.as_secs_f64()
}

/// `median unit (min–max)` of `values`, or `-` if there are none.
fn spread(values: &[f64], unit: &str) -> String {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match (v.first(), v.last()) {
        (Some(lo), Some(hi)) if v.len() > 1 => {
            format!("{:.0} {unit} ({lo:.0}–{hi:.0})", v[v.len() / 2])
        }
        (Some(x), _) => format!("{x:.0} {unit}"),
        _ => "-".into(),
    }
}

/// Cold reads of one new object thrown away, through REST and through the mount: writes
/// `mib` MiB of new random content as `NAME-null` in the mount `dir`, then times a REST GET to
/// /dev/null and `cat` to /dev/null, caches dropped before each. Returns (GET, cat).
fn null_sink_pair(
    src_dir: &Path,
    dir: &Path,
    api: &str,
    mib: u64,
    name: &str,
) -> anyhow::Result<(Duration, Duration)> {
    let src = src_dir.join("null-src");
    let name = format!("{name}-null");
    let dst = dir.join(&name);
    sh(&format!("head -c {mib}M /dev/urandom > {}", src.display()))?;
    sh(&format!("cp {} {}", src.display(), dst.display()))?;
    drop_caches();
    let get = sh(&format!(
        "curl -sf -o /dev/null http://{api}/objects/{name}"
    ))?;
    drop_caches();
    let cat = sh(&format!("cat {} > /dev/null", dst.display()))?;
    let _ = std::fs::remove_file(&dst);
    let _ = std::fs::remove_file(&src);
    Ok((get, cat))
}

fn is_mounted(p: &Path) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split(' ').nth(4) == Some(&*p.to_string_lossy()))
        })
        .unwrap_or(false)
}

struct Mount {
    path: PathBuf,
    child: Option<Child>,
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.path)
            .status();
        if let Some(c) = &mut self.child {
            let _ = c.wait();
        }
    }
}

fn wait_mounted(p: &Path) -> anyhow::Result<()> {
    for _ in 0..300 {
        if is_mounted(p) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{} did not mount", p.display())
}

/// A free local port for the embedded store's API server, so curl can reach it.
/// A REST PUT of `mib` MiB of new random content as `NAME-put` (the store has never seen it,
/// so every byte is stored), the `Digest` header computed before the clock starts. Returns the
/// PUT's time.
fn rest_put(src_dir: &Path, api: &str, mib: u64, name: &str) -> anyhow::Result<Duration> {
    let src = src_dir.join("put-src");
    sh(&format!("head -c {mib}M /dev/urandom > {}", src.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut std::fs::File::open(&src)?, &mut hasher)?;
    let hash = ContentHash(hasher.finalize().into());
    drop_caches();
    let put = sh(&format!(
        "curl -sf -o /dev/null -T {} -H 'Digest: {}' http://{api}/objects/{name}-put",
        src.display(),
        hash.digest_header()
    ))?;
    let _ = std::fs::remove_file(&src);
    Ok(put)
}

/// Bytes free on the filesystem holding `dir` (`df`).
fn free_bytes(dir: &Path) -> anyhow::Result<u64> {
    let out = Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(dir)
        .output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .with_context(|| format!("df {} gave no free space figure", dir.display()))
}

/// Removes the benchmark's directory when the run ends, however it ends (declared before the
/// mounts, so it is dropped after they are unmounted).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg(args.dir.join("mnt"))
        .status();
    let _ = Command::new("fusermount3")
        .arg("-u")
        .arg(args.dir.join("bind"))
        .status();
    let _ = std::fs::remove_dir_all(&args.dir);
    for d in [
        "src",
        "local",
        "mnt",
        "bind",
        "bind-backing",
        "out",
        "store",
        "cache",
    ] {
        std::fs::create_dir_all(args.dir.join(d))?;
    }
    let _cleanup = RemoveOnDrop(args.dir.clone());
    // The store keeps every version, so nothing written is freed before the end: per round
    // and size three new objects (`cp in`, the PUT, the /dev/null one) at 1.5× for 4+2
    // shards, the read cache (at most 8 GiB), and the working copies of one file.
    let total_mib: u64 = args.sizes_mib.iter().sum();
    let largest_mib = args.sizes_mib.iter().copied().max().unwrap_or(0);
    let rounds_mib = total_mib * args.rounds.max(1) as u64;
    let need = (rounds_mib * 9 / 2 + (rounds_mib * 2).min(8 << 10) + 4 * largest_mib) << 20;
    let free = free_bytes(&args.dir)?;
    if free < need {
        bail!(
            "{} has {} MiB free; this run needs about {} MiB (fewer --rounds or --sizes-mib, \
             or another --dir)",
            args.dir.display(),
            free >> 20,
            need >> 20
        );
    }
    let d = |s: &str| args.dir.join(s);
    let mnt = d("mnt");
    let api = format!("127.0.0.1:{}", free_port()?);
    let child = Command::new(&args.dosfs)
        .arg("mount")
        .arg(&mnt)
        .arg("--no-token")
        .arg("--foreground")
        .arg("--data-dir")
        .arg(d("store"))
        .arg("--cache-dir")
        .arg(d("cache"))
        .args(["--listen", &api, "--cache-size", "8G"])
        .args(args.metrics.iter().flat_map(|a| ["--metrics", a.as_str()]))
        .stdout(Stdio::null())
        .spawn()
        .context("starting dosfs")?;
    let dos = Mount {
        path: mnt.clone(),
        child: Some(child),
    };
    wait_mounted(&mnt)?;
    let bind_ok = Command::new("bindfs")
        .args(["-o", "big_writes"])
        .arg(d("bind-backing"))
        .arg(d("bind"))
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let bind = Mount {
        path: d("bind"),
        child: None,
    };
    println!(
        "machine: {} cores; dir {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.dir.display()
    );
    println!();
    println!("| size | target | cp in | cp out (cold) | cp out (cached) |");
    println!("|---|---|---|---|---|");
    let mut ratios = Vec::new();
    let rounds = args.rounds.max(1);
    for mib in &args.sizes_mib {
        let mut targets = vec![("local dir", d("local")), ("dosfs", mnt.clone())];
        if bind_ok {
            targets.push(("bindfs -o big_writes", d("bind")));
        }
        // Per target: (cp in, cold, cached) rates of every round.
        let mut rates: Vec<Vec<[f64; 3]>> = vec![Vec::new(); targets.len()];
        // Rates: REST GET and dosfs cold `cat` to /dev/null (of one object), REST GET and
        // dosfs cold `cp` into the out directory (of another); then the ratios.
        let (mut get_null, mut cat_null, mut get_out, mut cp_out) =
            (vec![], vec![], vec![], vec![]);
        let (mut cold_vs_get, mut cold_vs_get_out, mut cached_vs_bind) = (vec![], vec![], vec![]);
        // Rates: REST PUT and dosfs `cp in`; then the ratio.
        let (mut put, mut cp_in, mut in_vs_put) = (vec![], vec![], vec![]);
        for round in 0..rounds {
            let src = d("src").join(format!("f{mib}"));
            sh(&format!(
                "head -c {}M /dev/urandom > {}",
                mib,
                src.display()
            ))?;
            let mut rest_out = None;
            let (mut dosfs_cold, mut dosfs_warm, mut bind_warm) = (None, None, None);
            for (t, (label, dir)) in targets.iter().enumerate() {
                let name = format!("f{mib}-{round}");
                let dst = dir.join(&name);
                drop_caches();
                let t_in = sh(&format!("cp {} {}", src.display(), dst.display()))?;
                if *label == "dosfs" {
                    let p = rest_put(&d("src"), &api, *mib, &name)?;
                    put.push(rate(*mib, p));
                    cp_in.push(rate(*mib, t_in));
                    in_vs_put.push(pct(p, t_in));
                    // A REST GET saving the object where `cp out` will write it.
                    drop_caches();
                    let out = args.out_dir.clone().unwrap_or_else(|| d("out")).join("o");
                    rest_out = Some(sh(&format!(
                        "curl -sf -o {} http://{api}/objects/{name}",
                        out.display()
                    ))?);
                    let _ = std::fs::remove_file(&out);
                    // Another object (other content, so its blocks are not cached), read cold
                    // to /dev/null through REST and through the mount.
                    let (g, c) = null_sink_pair(&d("src"), dir, &api, *mib, &name)?;
                    get_null.push(rate(*mib, g));
                    cat_null.push(rate(*mib, c));
                    cold_vs_get.push(pct(g, c));
                }
                drop_caches();
                let out = args.out_dir.clone().unwrap_or_else(|| d("out")).join("o");
                let t_cold = sh(&format!("cp {} {}", dst.display(), out.display()))?;
                let _ = std::fs::remove_file(&out);
                let t_warm = sh(&format!("cp {} {}", dst.display(), out.display()))?;
                sh(&format!("cmp {} {}", src.display(), out.display()))?;
                let _ = std::fs::remove_file(&out);
                let _ = std::fs::remove_file(&dst);
                match *label {
                    "dosfs" => (dosfs_cold, dosfs_warm) = (Some(t_cold), Some(t_warm)),
                    "bindfs -o big_writes" => bind_warm = Some(t_warm),
                    _ => {}
                }
                rates[t].push([rate(*mib, t_in), rate(*mib, t_cold), rate(*mib, t_warm)]);
            }
            if let (Some(get), Some(cold)) = (rest_out, dosfs_cold) {
                get_out.push(rate(*mib, get));
                cp_out.push(rate(*mib, cold));
                cold_vs_get_out.push(pct(get, cold));
            }
            if let (Some(warm), Some(bind)) = (dosfs_warm, bind_warm) {
                cached_vs_bind.push(pct(bind, warm));
            }
            let _ = std::fs::remove_file(&src);
        }
        for (t, (label, _)) in targets.iter().enumerate() {
            let col =
                |i: usize| spread(&rates[t].iter().map(|r| r[i]).collect::<Vec<_>>(), "MiB/s");
            println!(
                "| {mib} MiB | {label} | {} | {} | {} |",
                col(0),
                col(1),
                col(2)
            );
        }
        ratios.push((
            *mib,
            [
                put,
                cp_in,
                in_vs_put,
                get_null,
                cat_null,
                cold_vs_get,
                get_out,
                cp_out,
                cold_vs_get_out,
                cached_vs_bind,
            ],
        ));
    }
    println!();
    println!(
        "| size | REST PUT | dosfs `cp` in | ratio | \
         REST GET → /dev/null | dosfs `cat` → /dev/null | ratio | \
         REST GET → out dir | dosfs `cp` → out dir | ratio | dosfs cached / bindfs cached |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (
        mib,
        [
            put,
            cp_in,
            r_in,
            get_null,
            cat_null,
            r_null,
            get_out,
            cp_out,
            r_out,
            cached,
        ],
    ) in ratios
    {
        println!(
            "| {mib} MiB | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            spread(&put, "MiB/s"),
            spread(&cp_in, "MiB/s"),
            spread(&r_in, "%"),
            spread(&get_null, "MiB/s"),
            spread(&cat_null, "MiB/s"),
            spread(&r_null, "%"),
            spread(&get_out, "MiB/s"),
            spread(&cp_out, "MiB/s"),
            spread(&r_out, "%"),
            spread(&cached, "%")
        );
    }
    println!();
    let many = mnt.join("many");
    std::fs::create_dir_all(&many)?;
    let start = Instant::now();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut buf = vec![0u8; 4096];
    for i in 0..args.files {
        for c in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            c.copy_from_slice(&state.to_le_bytes());
        }
        std::fs::write(many.join(format!("f{i}")), &buf)?;
    }
    let t = start.elapsed();
    println!(
        "{} × 4 KiB file creations (new content each, write + close): {:.1} s, {:.0} files/s",
        args.files,
        t.as_secs_f64(),
        args.files as f64 / t.as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(1100));
    let t = sh(&format!("ls -l {} > /dev/null", many.display()))?;
    println!(
        "ls -l of {} entries (cold attribute cache): {:.2} s",
        args.files,
        t.as_secs_f64()
    );
    let t = sh(&format!("ls -l {} > /dev/null", many.display()))?;
    println!(
        "ls -l of {} entries (again): {:.2} s",
        args.files,
        t.as_secs_f64()
    );
    drop(dos);
    drop(bind);
    Ok(())
}
