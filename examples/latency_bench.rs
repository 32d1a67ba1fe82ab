//! Latency benchmark: p50 and p99 of PUT of new 1 KiB content and of GET, over N requests
//! each, on the embedded cluster and on a cluster of processes over RabbitMQ, side by side.
//!
//! ```text
//! cargo build --release -p dos-server
//! cargo run --release -p dos-examples --example latency_bench -- --requests 1000
//! ```
//! Cluster mode needs a RabbitMQ broker (`RABBITMQ_SERVER`, default the local guest account);
//! it runs in a private vhost made with rabbitmqctl. Its metadata is the embedded SQLite
//! engine (no Elasticsearch server can be installed here).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use sha2::Digest;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    #[arg(long, default_value = "target/release/dos-server")]
    server: PathBuf,
    #[arg(long, default_value = "/tmp/dos-latency")]
    dir: PathBuf,
}

struct Procs(Vec<Child>);

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = Command::new("kill").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }
}

fn port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

async fn measure(url: &str, n: usize, label: &str) -> anyhow::Result<()> {
    dos_client::install_crypto_provider();
    let http = reqwest::Client::new();
    for _ in 0..200 {
        let ok = match http.get(format!("{url}/health")).send().await {
            Ok(r) => {
                r.json::<serde_json::Value>()
                    .await
                    .ok()
                    .and_then(|v| v["live_data_servers"].as_u64())
                    .unwrap_or(0)
                    >= 6
            }
            Err(_) => false,
        };
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seed = 0x1234_5678_9ABC_DEF1u64 ^ n as u64 ^ label.len() as u64;
    let mut puts = Vec::with_capacity(n);
    for i in 0..n {
        let mut body = vec![0u8; 1024];
        for c in body.chunks_exact_mut(8) {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            c.copy_from_slice(&seed.to_le_bytes());
        }
        let digest = base64_sha256(&body);
        let start = Instant::now();
        let r = http
            .put(format!("{url}/objects/lat/{i}"))
            .header("digest", format!("SHA-256={digest}"))
            .body(body)
            .send()
            .await?;
        if !r.status().is_success() {
            bail!("PUT failed: {}", r.status());
        }
        r.bytes().await?;
        puts.push(start.elapsed());
    }
    let mut gets = Vec::with_capacity(n);
    for i in 0..n {
        let start = Instant::now();
        let r = http.get(format!("{url}/objects/lat/{i}")).send().await?;
        if !r.status().is_success() {
            bail!("GET failed: {}", r.status());
        }
        r.bytes().await?;
        gets.push(start.elapsed());
    }
    puts.sort();
    gets.sort();
    println!(
        "| {label} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
        pct(&puts, 0.5),
        pct(&puts, 0.99),
        pct(&gets, 0.5),
        pct(&gets, 0.99)
    );
    Ok(())
}

fn base64_sha256(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let h: [u8; 32] = sha2::Sha256::digest(b).into();
    let mut out = String::new();
    for chunk in h.chunks(3) {
        let n =
            chunk.iter().fold(0u32, |acc, &x| (acc << 8) | u32::from(x)) << (8 * (3 - chunk.len()));
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(T[((n >> (18 - 6 * k)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.server.exists() {
        bail!(
            "{} not found: cargo build --release -p dos-server",
            args.server.display()
        );
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    println!(
        "{} requests each; new 1 KiB content per PUT; {} cores",
        args.requests,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!();
    println!("| mode | PUT p50 | PUT p99 | GET p50 | GET p99 |");
    println!("|---|---|---|---|---|");

    let p = port()?;
    let embedded = Procs(vec![
        Command::new(&args.server)
            .args([
                "local",
                "--no-token",
                "--listen",
                &format!("127.0.0.1:{p}"),
                "--root",
            ])
            .arg(args.dir.join("embedded"))
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .context("starting dos-server local")?,
    ]);
    measure(
        &format!("http://127.0.0.1:{p}"),
        args.requests,
        "embedded (in-process bus, SQLite)",
    )
    .await?;
    drop(embedded);

    let base = std::env::var("RABBITMQ_SERVER")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let vhost = format!("dos-bench-{}", std::process::id());
    let ok = Command::new("rabbitmqctl")
        .args(["add_vhost", &vhost])
        .stdout(Stdio::null())
        .status()?
        .success()
        && Command::new("rabbitmqctl")
            .args(["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])
            .stdout(Stdio::null())
            .status()?
            .success();
    if !ok {
        println!("| cluster | (no RabbitMQ: skipped) | | | |");
        return Ok(());
    }
    let amqp = format!(
        "{}/{vhost}",
        base.rsplit_once('/').map_or(base.as_str(), |(b, _)| b)
    );
    let secret = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let setup = Command::new(&args.server)
        .arg("setup")
        .env("RABBITMQ_SERVER", &amqp)
        .output()?;
    if !setup.status.success() {
        bail!("setup failed: {}", String::from_utf8_lossy(&setup.stderr));
    }
    let mut procs = Procs(Vec::new());
    for i in 1..=6 {
        procs.0.push(
            Command::new(&args.server)
                .arg("data")
                .env("RABBITMQ_SERVER", &amqp)
                .env("LISTEN_ADDRESS", "127.0.0.1:0")
                .env("STORAGE_ROOT", args.dir.join(format!("data{i}")))
                .env("DOS_SECRET", secret)
                .env("RUST_LOG", "warn")
                .stderr(Stdio::null())
                .spawn()?,
        );
    }
    let p = port()?;
    procs.0.push(
        Command::new(&args.server)
            .arg("api")
            .env("RABBITMQ_SERVER", &amqp)
            .env("LISTEN_ADDRESS", format!("127.0.0.1:{p}"))
            .env("DOS_METADATA_DB", args.dir.join("metadata.sqlite"))
            .env("DOS_SECRET", secret)
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()?,
    );
    let r = measure(
        &format!("http://127.0.0.1:{p}"),
        args.requests,
        "cluster (RabbitMQ, 7 processes)",
    )
    .await;
    drop(procs);
    let _ = Command::new("rabbitmqctl")
        .args(["delete_vhost", &vhost])
        .stdout(Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(&args.dir);
    r
}
