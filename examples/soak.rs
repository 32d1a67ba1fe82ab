//! Soak: N concurrent clients mixing PUT, resumable upload, GET and DELETE for T minutes,
//! every read checked byte for byte against what the store acknowledged, then every
//! acknowledged version read back once more. Stops by itself; prints operations, errors by
//! kind, wrong reads (must be 0) and the server's peak RSS. Exit status 1 on any wrong byte
//! or failed final check.
//!
//! ```text
//! cargo build --release -p dos-server
//! cargo run --release -p dos-examples --example soak -- --clients 8 --minutes 10
//! ```
//! By default it starts `dos-server local` on a fresh folder (and measures that process);
//! `--api URL` soaks a running server instead (give `--server-pid` to see its memory).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use dos_client::Client;
use dos_client::workload::{self, Ledger, Tally, WorkloadConfig};
use dos_examples::Server;

#[derive(Parser)]
#[command(about = "Soak the store with a mixed, verified workload for a bounded time.")]
struct Args {
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: u64,
    /// How long the load runs.
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// Largest object, in bytes (most objects are under 64 KiB).
    #[arg(long, default_value_t = 4 << 20)]
    max_size: usize,
    /// Soak this API server instead of starting one.
    #[arg(long, env = "DOS_API")]
    api: Option<String>,
    #[arg(long, env = "DOS_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// With --api: the server's process id, to report its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The dos-server binary started when no --api is given.
    #[arg(long, default_value = "target/release/dos-server")]
    server: PathBuf,
    /// Folder for the started server's data (emptied first).
    #[arg(long, default_value = "/tmp/dos-soak")]
    dir: PathBuf,
}

/// (current, peak) resident memory of a process in MiB, from /proc.
fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map(|kib| kib / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn print_tally(label: &str, t: &Tally, secs: f64) {
    println!(
        "{label}: {} operations in {secs:.0} s ({:.0}/s): {} PUT, {} resumable, {} GET, {} DELETE; \
         {} errors; {} wrong reads",
        t.ops(),
        t.ops() as f64 / secs.max(0.001),
        t.puts,
        t.resumable_puts,
        t.gets,
        t.deletes,
        t.errors,
        t.wrong_bytes
    );
    for (kind, (n, example)) in &t.error_kinds {
        println!("  {n} × {kind}: {example}");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut _server = None;
    let (url, pid) = match &args.api {
        Some(url) => (url.clone(), args.server_pid),
        None => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let _ = std::fs::remove_dir_all(&args.dir);
            std::fs::create_dir_all(&args.dir)?;
            let log = std::fs::File::create(args.dir.join("server.log"))?;
            let child = Command::new(&args.server)
                .args(["local", "--no-token", "--root"])
                .arg(args.dir.join("root"))
                .args(["--listen", &format!("127.0.0.1:{port}")])
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| {
                    format!(
                        "cannot start {} (build it: cargo build --release -p dos-server)",
                        args.server.display()
                    )
                })?;
            let pid = child.id();
            _server = Some(Server(child));
            (format!("http://127.0.0.1:{port}"), Some(pid))
        }
    };
    let mut builder = Client::builder(url.clone()).connect_timeout(Duration::from_secs(5));
    if let Some(t) = args.token.as_ref().filter(|t| !t.is_empty()) {
        builder = builder.token(t.clone());
    }
    let client = builder.build()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client
        .request(reqwest::Method::GET, "/health")
        .send()
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("{url} does not answer");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "soak: {} clients for {} min against {url}, objects up to {} bytes",
        args.clients, args.minutes, args.max_size
    );

    let ledger = Arc::new(Ledger::default());
    let stop = Arc::new(AtomicBool::new(false));
    let config = WorkloadConfig {
        max_size: args.max_size,
        ..WorkloadConfig::default()
    };
    let started = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|i| {
            tokio::spawn(workload::worker(
                client.clone(),
                i,
                config.clone(),
                ledger.clone(),
                stop.clone(),
            ))
        })
        .collect();
    let run_for = Duration::from_secs_f64(args.minutes * 60.0);
    let mut peak_rss = 0.0f64;
    while started.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(10).min(run_for.saturating_sub(started.elapsed())))
            .await;
        let mem = pid.and_then(rss_mib);
        if let Some((rss, _)) = mem {
            peak_rss = peak_rss.max(rss);
        }
        println!(
            "  {:>5.0} s: {} versions acknowledged{}",
            started.elapsed().as_secs_f64(),
            ledger.len(),
            mem.map_or(String::new(), |(rss, _)| format!(
                ", server RSS {rss:.0} MiB"
            ))
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut total = Tally::default();
    for w in workers {
        total.add(&w.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    print_tally("load", &total, secs);

    let check_start = Instant::now();
    let check = workload::verify_all(&client, &ledger, 8).await;
    print_tally(
        "final check of every acknowledged version",
        &check,
        check_start.elapsed().as_secs_f64(),
    );
    if let Some((rss, hwm)) = pid.and_then(rss_mib) {
        println!(
            "server memory: RSS {rss:.0} MiB now, peak {:.0} MiB",
            hwm.max(peak_rss)
        );
    }
    if total.wrong_bytes > 0 || check.wrong_bytes > 0 || check.errors > 0 {
        bail!("the soak found wrong or missing data");
    }
    println!("soak passed: nothing lost, nothing wrong");
    Ok(())
}
