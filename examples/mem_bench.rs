//! dosfs memory benchmark: the daemon's peak and settled memory, and the throughput, for a
//! cold read of a large file, a large write, parallel cold readers, a walk of many files and
//! a `tar x` of many small files, under each memory budget asked for (and, with `--old`, an
//! older dosfs binary without one, for the cost of the bound).
//!
//! Peak: the daemon's `VmHWM` after `clear_refs` reset it at the start of the workload (the
//! exact resident peak). Settled: its anonymous memory (`RssAnon`) after `--settle` seconds
//! of idling. Idle: the same just before the workload. Runs as root (drop_caches,
//! clear_refs, FUSE).
//!
//! ```text
//! cargo build --release -p dosfs && cargo build --release -p dos-examples --example mem_bench
//! ./target/release/examples/mem_bench --budgets 256M,64M
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;

/// The daemon's memory under its budget, workload by workload.
#[derive(Parser)]
struct Args {
    /// Memory budgets to measure (`dosfs mount --memory-size`).
    #[arg(long, value_delimiter = ',', default_value = "256M,64M")]
    budgets: Vec<String>,
    /// An older dosfs binary (no `--memory-size`) measured the same way, as "before".
    #[arg(long)]
    old: Option<PathBuf>,
    #[arg(long, default_value = "target/release/dosfs")]
    dosfs: PathBuf,
    /// Parent of the run's directory (store, caches, source files).
    #[arg(long, default_value = "/tmp")]
    dir: PathBuf,
    /// Size of the large read and write, MiB.
    #[arg(long, default_value_t = 4096)]
    large_mib: u64,
    /// Parallel readers, and the size of each one's file, MiB.
    #[arg(long, default_value_t = 8)]
    readers: usize,
    #[arg(long, default_value_t = 512)]
    reader_mib: u64,
    /// Files of the walk.
    #[arg(long, default_value_t = 100_000)]
    walk_files: usize,
    /// Files of the tar x.
    #[arg(long, default_value_t = 10_000)]
    tar_files: usize,
    /// Seconds of idling before the settled figure.
    #[arg(long, default_value_t = 30)]
    settle: u64,
}

fn sh(cmd: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let status = Command::new("sh").arg("-c").arg(cmd).status()?;
    if !status.success() {
        bail!("`{cmd}` failed: {status}");
    }
    Ok(start.elapsed())
}

fn drop_caches() {
    // Both fail only without root, which the mount itself already needed.
    let _ = Command::new("sync").status();
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3\n");
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

struct Mounted {
    child: Child,
    mp: PathBuf,
}

impl Mounted {
    fn start(bin: &Path, root: &Path, budget: Option<&str>, tag: &str) -> anyhow::Result<Self> {
        let mp = root.join("mnt");
        std::fs::create_dir_all(&mp)?;
        let mut cmd = Command::new(bin);
        cmd.arg("mount")
            .arg(&mp)
            .arg("--no-token")
            .arg("--foreground")
            .arg("--data-dir")
            .arg(root.join("store"))
            .arg("--cache-dir")
            .arg(root.join(format!("cache-{tag}")))
            .arg("--listen")
            .arg("127.0.0.1:0");
        if let Some(b) = budget {
            cmd.arg("--memory-size").arg(b);
        }
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting dosfs")?;
        let m = Self { child, mp };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string("/proc/self/mounts")?
            .contains(&format!(" {} fuse", m.mp.display()))
        {
            if Instant::now() > deadline {
                bail!("the mount did not come up");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(m)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("fusermount3").arg("-u").arg(&self.mp).status();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One workload's figures, MiB and a throughput.
struct Row {
    workload: String,
    config: String,
    idle: f64,
    peak: f64,
    settled: f64,
    throughput: String,
}

/// Runs `work` on the mount, measuring the daemon's memory around it.
fn measure(
    m: &Mounted,
    settle: u64,
    workload: &str,
    config: &str,
    work: impl FnOnce(&Path) -> anyhow::Result<String>,
) -> anyhow::Result<Row> {
    let pid = m.pid();
    drop_caches();
    std::thread::sleep(Duration::from_secs(2));
    let idle = status_kib(pid, "RssAnon") as f64 / 1024.0;
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").context("clear_refs (root?)")?;
    let throughput = work(&m.mp)?;
    let peak = status_kib(pid, "VmHWM") as f64 / 1024.0;
    std::thread::sleep(Duration::from_secs(settle));
    let settled = status_kib(pid, "RssAnon") as f64 / 1024.0;
    let row = Row {
        workload: workload.into(),
        config: config.into(),
        idle,
        peak,
        settled,
        throughput,
    };
    eprintln!(
        "{workload} [{config}]: idle {idle:.0}, peak {peak:.0}, settled {settled:.0} MiB; {}",
        row.throughput
    );
    Ok(row)
}

fn mib_s(mib: u64, d: Duration) -> String {
    format!("{:.0} MiB/s", mib as f64 / d.as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let root = args.dir.join(format!("mem-bench-{}", std::process::id()));
    std::fs::create_dir_all(&root)?;
    let result = run(&args, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn run(args: &Args, root: &Path) -> anyhow::Result<()> {
    let src = root.join("src");
    std::fs::create_dir_all(&src)?;
    eprintln!("making the source files");
    sh(&format!(
        "head -c {}M /dev/urandom > {}/large",
        args.large_mib,
        src.display()
    ))?;
    // The tree for tar x: files of 1 to 8 KiB in 100 folders.
    let tree = src.join("tree");
    for i in 0..args.tar_files {
        let d = tree.join(format!("d{:03}", i % 100));
        std::fs::create_dir_all(&d)?;
        let len = 1024 * (1 + i % 8);
        std::fs::write(d.join(format!("f{i}")), vec![(i % 251) as u8; len])?;
    }
    sh(&format!(
        "tar -C {} -cf {}/tree.tar tree",
        src.display(),
        src.display()
    ))?;

    let mut configs: Vec<(String, PathBuf, Option<String>)> = args
        .budgets
        .iter()
        .map(|b| {
            (
                format!("--memory-size {b}"),
                args.dosfs.clone(),
                Some(b.clone()),
            )
        })
        .collect();
    if let Some(old) = &args.old {
        configs.push(("before (no budget)".into(), old.clone(), None));
    }

    // The files read by every configuration are written once.
    {
        let m = Mounted::start(&args.dosfs, root, None, "setup")?;
        eprintln!(
            "writing {} readers' files and {} walk files",
            args.readers, args.walk_files
        );
        for r in 0..args.readers {
            sh(&format!(
                "head -c {}M /dev/urandom > {}/r && cp {}/r {}/r{r}",
                args.reader_mib,
                src.display(),
                src.display(),
                m.mp.display()
            ))?;
        }
        let walk = m.mp.join("walk");
        std::fs::create_dir_all(&walk)?;
        for d in 0..100 {
            std::fs::create_dir_all(walk.join(format!("d{d:02}")))?;
        }
        // Empty files: the walk measures names and attributes, not contents.
        for i in 0..args.walk_files {
            std::fs::File::create(walk.join(format!("d{:02}/f{i}", i % 100)))?;
        }
    }

    let mut rows = Vec::new();
    for (n, (config, bin, budget)) in configs.iter().enumerate() {
        let m = Mounted::start(bin, root, budget.as_deref(), &format!("c{n}"))?;
        let large = args.large_mib;
        let target = format!("large-{n}");
        rows.push(measure(
            &m,
            args.settle,
            "write of the large file",
            config,
            |mp| {
                let d = sh(&format!(
                    "dd if={}/large of={}/{target} bs=1M conv=fsync status=none",
                    src.display(),
                    mp.display()
                ))?;
                Ok(mib_s(large, d))
            },
        )?);
        rows.push(measure(
            &m,
            args.settle,
            "cold read of the large file",
            config,
            |mp| {
                let d = sh(&format!("cat {}/{target} > /dev/null", mp.display()))?;
                Ok(mib_s(large, d))
            },
        )?);
        let (readers, each) = (args.readers, args.reader_mib);
        rows.push(measure(
            &m,
            args.settle,
            "parallel cold readers",
            config,
            |mp| {
                let cmd: Vec<String> = (0..readers)
                    .map(|r| format!("cat {}/r{r} > /dev/null &", mp.display()))
                    .collect();
                let d = sh(&format!("{} wait", cmd.join(" ")))?;
                Ok(mib_s(readers as u64 * each, d))
            },
        )?);
        let files = args.walk_files;
        rows.push(measure(
            &m,
            args.settle,
            "walk of the files",
            config,
            |mp| {
                let d = sh(&format!(
                    "find {}/walk -type f -printf '%s\\n' | wc -l > /dev/null",
                    mp.display()
                ))?;
                Ok(format!("{:.0} files/s", files as f64 / d.as_secs_f64()))
            },
        )?);
        let tar = args.tar_files;
        rows.push(measure(&m, args.settle, "tar x", config, |mp| {
            let dest = mp.join(format!("tar-{n}"));
            std::fs::create_dir_all(&dest)?;
            let d = sh(&format!(
                "tar -C {} -xf {}/tree.tar",
                dest.display(),
                src.display()
            ))?;
            Ok(format!("{:.0} files/s", tar as f64 / d.as_secs_f64()))
        })?);
    }

    println!(
        "\n| workload | configuration | idle anon MiB | peak resident MiB | settled anon MiB ({} s) | throughput |",
        args.settle
    );
    println!("|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {} |",
            r.workload, r.config, r.idle, r.peak, r.settled, r.throughput
        );
    }
    println!(
        "\nlarge file {} MiB; {} readers of {} MiB; walk {} files; tar x {} files",
        args.large_mib, args.readers, args.reader_mib, args.walk_files, args.tar_files
    );
    Ok(())
}
