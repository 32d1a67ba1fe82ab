//! Helpers shared by the black-box tests of the embedded cluster: start a cluster on a fresh
//! folder, wait for conditions, make deterministic data, find and damage shard files, and
//! send raw HTTP requests that an URL library would normalise.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dos_client::reqwest::{Method, Response, StatusCode};
use dos_client::{Client, ContentHash, WriteAttributes};
use dos_server::local::{LocalCluster, LocalConfig, ShardPath};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

tokio::task_local! {
    /// The shard path the clusters a test starts use (see [`on_both_shard_paths!`]).
    static SHARD_PATH: ShardPath;
}

/// Runs `test` with every cluster it starts on shard path `path`.
pub async fn with_shard_path<F: Future>(path: ShardPath, test: F) -> F::Output {
    SHARD_PATH.scope(path, test).await
}

/// The shard path of the test running now (in process unless the test says otherwise).
pub fn shard_path() -> ShardPath {
    SHARD_PATH.try_with(|p| *p).unwrap_or_default()
}

/// Runs each listed test body (an `async fn` of the test file) twice: once on a cluster whose
/// API server calls its data servers in process, once over HTTP on loopback, as two test
/// functions `in_process::NAME` and `http::NAME`.
#[macro_export]
macro_rules! on_both_shard_paths {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        mod in_process {
            $(
                $(#[$attr])*
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    $crate::common::with_shard_path(
                        dos_server::local::ShardPath::InProcess,
                        super::$name(),
                    )
                    .await
                }
            )*
        }
        mod http {
            $(
                $(#[$attr])*
                #[tokio::test(flavor = "multi_thread")]
                async fn $name() {
                    $crate::common::with_shard_path(dos_server::local::ShardPath::Http, super::$name())
                        .await
                }
            )*
        }
    };
}

/// Starts an embedded cluster in a fresh temporary folder. The cluster root's name contains
/// dots on purpose (a `.` in STORAGE_ROOT must not break shard verification).
pub async fn start() -> (LocalCluster, Client, TempDir) {
    let dir = tempfile::tempdir().expect("temporary folder");
    let root = dir.path().join("cluster.root.v1");
    let (cluster, client) = start_at(&root).await;
    (cluster, client, dir)
}

/// Starts an embedded cluster on `root` (new or used before) and a client of its API server.
pub async fn start_at(root: &Path) -> (LocalCluster, Client) {
    start_with(root, |_| {}).await
}

/// Starts an embedded cluster on `root` with a changed configuration; the client carries
/// the configured bearer token, if any.
pub async fn start_with(
    root: &Path,
    change: impl FnOnce(&mut LocalConfig),
) -> (LocalCluster, Client) {
    let mut config = LocalConfig::new(root.to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.shard_path = shard_path();
    // These tests find and damage shard files on disk: every shard gets a file. The pack
    // files of small shards have tests of their own (`packs.rs`, and the store's).
    config.pack_small = false;
    // Tests collect orphans at once.
    config.maintenance.min_orphans_grace = Duration::ZERO;
    change(&mut config);
    let token = config.token.clone();
    let cluster = LocalCluster::start(config)
        .await
        .expect("embedded cluster starts");
    let mut builder = Client::builder(format!("http://{}", cluster.api_addr()))
        .connect_timeout(Duration::from_secs(5));
    if let Some(token) = token {
        builder = builder.token(token);
    }
    (cluster, builder.build().expect("client"))
}

/// Polls `cond` every 100 ms until it is true or `timeout` passed; returns the last result.
pub async fn wait_until<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Deterministic pseudo-random bytes, distinct for each seed (the workload's pattern).
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    dos_client::workload::pattern(len, seed)
}

pub fn attrs() -> WriteAttributes {
    WriteAttributes::default()
}

/// Committed shard files of `hash` in one data root: `objects/<2 hex>/<hex>.<i>`.
pub fn shard_files_in(root: &Path, hash: &ContentHash) -> Vec<(u8, PathBuf)> {
    let hex = hash.to_hex();
    let dir = root.join("objects").join(&hex[..2]);
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return out;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(rest) = name.strip_prefix(&format!("{hex}."))
            && let Ok(i) = rest.parse::<u8>()
        {
            out.push((i, e.path()));
        }
    }
    out.sort();
    out
}

/// Committed shard files of `hash` across the cluster: (data server index, shard, path).
pub fn shard_files(cluster: &LocalCluster, hash: &ContentHash) -> Vec<(usize, u8, PathBuf)> {
    let mut out = Vec::new();
    for (server, root) in cluster.data_roots().iter().enumerate() {
        for (shard, path) in shard_files_in(root, hash) {
            out.push((server, shard, path));
        }
    }
    out
}

/// Shard indices present across the cluster, sorted, with repeats.
pub fn shard_indices(cluster: &LocalCluster, hash: &ContentHash) -> Vec<u8> {
    let mut v: Vec<u8> = shard_files(cluster, hash)
        .into_iter()
        .map(|(_, s, _)| s)
        .collect();
    v.sort();
    v
}

/// Every file under each data root's `quarantine/` folder.
pub fn quarantined(cluster: &LocalCluster) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for root in cluster.data_roots() {
        collect_files(&root.join("quarantine"), &mut out);
    }
    out
}

/// Every file under `dir`, recursively.
pub fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            collect_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Flips 16 bytes at `offset` of a file (default: its middle).
pub fn corrupt_at(path: &Path, offset: Option<u64>) {
    let mut bytes = std::fs::read(path).expect("read shard file");
    assert!(bytes.len() > 32, "{} too short to corrupt", path.display());
    let at = offset.map_or(bytes.len() / 2, |o| o as usize);
    for b in &mut bytes[at..at + 16] {
        *b ^= 0xA5;
    }
    std::fs::write(path, bytes).expect("write shard file");
}

/// Asserts the status of an answer (not to HEAD) and, for failures, that the body is one
/// non-empty line saying what failed. Returns the body.
pub async fn expect_status(resp: Response, want: StatusCode, what: &str) -> Vec<u8> {
    let status = resp.status();
    let body = resp.bytes().await.expect("body").to_vec();
    assert_eq!(
        status,
        want,
        "{what}: expected {want}, got {status}; body: {}",
        String::from_utf8_lossy(&body)
    );
    if !status.is_success() {
        assert_one_line(&body, what);
    }
    body
}

pub fn assert_one_line(body: &[u8], what: &str) {
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim_end_matches('\n').trim_end_matches('\r');
    assert!(
        !trimmed.trim().is_empty(),
        "{what}: an error answer must say what failed, got an empty body"
    );
    assert!(
        !trimmed.contains('\n'),
        "{what}: an error answer must be one line, got {text:?}"
    );
}

/// `method path` with the given headers and body, through the client (bearer token included).
pub async fn send(
    client: &Client,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Response {
    let mut rb = client.request(method, path);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    if let Some(b) = body {
        rb = rb.body(b);
    }
    rb.send().await.expect("request answered")
}

/// A raw HTTP/1.1 request written to the socket as is (no path normalisation), answered
/// with (status, head, body).
pub async fn raw_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(req.as_bytes()).await.expect("write");
    stream.write_all(body).await.expect("write body");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("raw request answered in time")
        .expect("read answer");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("answer has a head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, head, answer[split + 4..].to_vec())
}

/// The value of a header in a raw answer's head.
pub fn raw_header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// A raw HTTP/1.1 request whose body is sent with `Transfer-Encoding: chunked` (no
/// `Content-Length`), one chunk per element of `chunks`.
pub async fn raw_http_chunked(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    chunks: &[&[u8]],
) -> (u16, String, Vec<u8>) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("Transfer-Encoding: chunked\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    for chunk in chunks.iter().filter(|c| !c.is_empty()) {
        stream
            .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .expect("write chunk size");
        stream.write_all(chunk).await.expect("write chunk");
        stream.write_all(b"\r\n").await.expect("write chunk end");
    }
    stream
        .write_all(b"0\r\n\r\n")
        .await
        .expect("write last chunk");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut answer))
        .await
        .expect("raw request answered in time")
        .expect("read answer");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("answer has a head");
    let head = String::from_utf8_lossy(&answer[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    (status, head, answer[split + 4..].to_vec())
}

/// Runs maintenance `job` over REST to its end and returns its last report (which must say
/// it is done).
pub async fn run_job(
    client: &Client,
    job: &str,
    keep: Option<u64>,
    grace: Option<Duration>,
) -> serde_json::Value {
    use futures::TryStreamExt as _;
    let mut reports = client.maintenance(job, keep, grace).await.unwrap();
    let mut last = None;
    while let Some(r) = reports.try_next().await.unwrap() {
        last = Some(r);
    }
    let last = last.expect("at least one report");
    assert_eq!(last["done"], true, "{last}");
    last
}

/// A count of a maintenance report (0 when absent).
pub fn count(report: &serde_json::Value, what: &str) -> u64 {
    report["counts"][what].as_u64().unwrap_or(0)
}

/// PUTs one object of each size in `sizes` under `prefix/<i>` (deterministic bytes from
/// `seed + i`); returns (name, hash, bytes) of each.
pub async fn store_objects(
    client: &Client,
    prefix: &str,
    sizes: &[usize],
    seed: u64,
) -> Vec<(String, ContentHash, Vec<u8>)> {
    let mut objects = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let bytes = data(*size, seed + i as u64);
        let name = format!("{prefix}/{i}");
        client
            .put_bytes(&name, bytes.clone(), &attrs())
            .await
            .unwrap();
        objects.push((name, ContentHash::of(&bytes), bytes));
    }
    objects
}

/// `GET URL/metrics` of a server (no token), parsed with a Prometheus text-format parser.
pub async fn scrape_metrics(url: &str) -> prometheus_parse::Scrape {
    let text = dos_client::reqwest::get(format!("{url}/metrics"))
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .text()
        .await
        .unwrap();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("Prometheus text format")
}
