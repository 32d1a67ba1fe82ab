//! Store benchmark: PUT and GET throughput through REST on `dos-server local`, next to the
//! machine's own disk, the erasure-coding rate and the server's peak memory, in one run.
//!
//! ```text
//! cargo build --release -p dos-server
//! cargo run --release -p dos-examples --example store_bench -- --sizes-mib 256,1024
//! ```
//!
//! Caches are dropped (as root) before every cold read, for the raw disk and for GET alike.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use dos_erasure::Codec;
use dos_examples::Server;
use dos_protocol::{BLOCK_SIZE, ContentHash, TOTAL_SHARDS};
use futures::StreamExt;
use sha2::Digest;

#[derive(Parser)]
struct Args {
    /// Object sizes to measure, MiB.
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    sizes_mib: Vec<u64>,
    /// Folder on the disk under test (the server's root and the raw-disk files go here).
    #[arg(long, default_value = "/tmp/dos-bench")]
    dir: PathBuf,
    /// dos-server binary.
    #[arg(long, default_value = "target/release/dos-server")]
    server: PathBuf,
    /// API address for the bench server.
    #[arg(long, default_value = "127.0.0.1:23399")]
    listen: String,
}

const MIB: f64 = 1024.0 * 1024.0;

fn rate(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / MIB / d.as_secs_f64()
}

fn drop_caches() -> bool {
    let _ = Command::new("sync").status();
    std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok()
}

/// Pseudo-random, incompressible bytes (xorshift), written to `path`.
fn make_file(path: &Path, size: u64) -> anyhow::Result<ContentHash> {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut hasher = sha2::Sha256::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ size;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for chunk in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.flush()?;
    Ok(ContentHash(hasher.finalize().into()))
}

/// Raw sequential write with fsync, then cold read, of `size` bytes in `dir`.
fn raw_disk(dir: &Path, size: u64) -> anyhow::Result<(f64, f64)> {
    let path = dir.join("raw-disk.bin");
    let buf = vec![0x5Au8; 4 << 20];
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    drop(f);
    let write = rate(size, start.elapsed());
    drop_caches();
    let start = Instant::now();
    let mut f = std::fs::File::open(&path)?;
    let mut rbuf = vec![0u8; 4 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut rbuf)?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let read = rate(total, start.elapsed());
    std::fs::remove_file(&path)?;
    Ok((write, read))
}

fn erasure_rates() -> (f64, f64) {
    let codec = Codec::new();
    let block: Vec<u8> = (0..BLOCK_SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let mut pieces: [Vec<u8>; TOTAL_SHARDS] = Default::default();
    let rounds = 512u64;
    let start = Instant::now();
    for _ in 0..rounds {
        codec.encode_block(&block, &mut pieces);
    }
    let encode = rate(rounds * BLOCK_SIZE as u64, start.elapsed());
    let start = Instant::now();
    for _ in 0..rounds {
        let mut opt: Vec<Option<Vec<u8>>> = pieces.iter().cloned().map(Some).collect();
        opt[0] = None;
        opt[3] = None;
        codec.reconstruct_data(&mut opt).ok();
    }
    let rebuild = rate(rounds * BLOCK_SIZE as u64, start.elapsed());
    (encode, rebuild)
}

fn peak_rss_mib(child: &Child) -> f64 {
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.server.exists() {
        bail!(
            "{} not found: cargo build --release -p dos-server first",
            args.server.display()
        );
    }
    let _ = std::fs::remove_dir_all(&args.dir);
    std::fs::create_dir_all(&args.dir)?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores, dir {}", args.dir.display());
    let cold = drop_caches();
    println!(
        "cold reads: {}",
        if cold {
            "page cache dropped before each read"
        } else {
            "NOT dropped (not root): reads may be warm"
        }
    );

    let (enc, rebuild) = erasure_rates();
    println!(
        "erasure 4+2: encode {enc:.0} MiB/s, rebuild of 2 lost data shards {rebuild:.0} MiB/s (one core)"
    );

    let root = args.dir.join("server");
    let child = Command::new(&args.server)
        .args(["local", "--no-token", "--root"])
        .arg(&root)
        .args(["--listen", &args.listen])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting dos-server")?;
    let server = Server(child);
    let base = format!("http://{}", args.listen);
    dos_client::install_crypto_provider();
    let http = reqwest::Client::new();
    for _ in 0..100 {
        if http.get(format!("{base}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    println!();
    println!(
        "| size | raw write+fsync | raw read (cold) | PUT | PUT/raw write | GET (cold) | GET/raw read |"
    );
    println!("|---|---|---|---|---|---|---|");
    for mib in &args.sizes_mib {
        let size = mib << 20;
        let (raw_w, raw_r) = raw_disk(&args.dir, size)?;
        let file = args.dir.join(format!("object-{mib}"));
        let hash = make_file(&file, size)?;
        drop_caches();
        let start = Instant::now();
        let body = tokio::fs::File::open(&file).await?;
        let stream = tokio_util::io::ReaderStream::with_capacity(body, 1 << 20);
        let resp = http
            .put(format!("{base}/objects/bench-{mib}"))
            .header("digest", hash.digest_header())
            .header("content-length", size)
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("PUT failed: {} {}", resp.status(), resp.text().await?);
        }
        let put = rate(size, start.elapsed());
        std::fs::remove_file(&file)?;
        drop_caches();
        let start = Instant::now();
        let resp = http
            .get(format!("{base}/objects/bench-{mib}"))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("GET failed: {}", resp.status());
        }
        let mut got = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            got += chunk?.len() as u64;
        }
        if got != size {
            bail!("GET returned {got} of {size} bytes");
        }
        let get = rate(size, start.elapsed());
        println!(
            "| {mib} MiB | {raw_w:.0} MiB/s | {raw_r:.0} MiB/s | {put:.0} MiB/s | {:.0} % | {get:.0} MiB/s | {:.0} % |",
            100.0 * put / raw_w,
            100.0 * get / raw_r
        );
    }
    println!();
    println!(
        "server peak RSS (VmHWM): {:.1} MiB",
        peak_rss_mib(&server.0)
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&args.dir);
    Ok(())
}
