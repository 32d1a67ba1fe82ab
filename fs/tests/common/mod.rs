//! Shared harness of the dosfs integration tests: a real FUSE mount of `dosfs` on an embedded
//! store in a temporary folder, shell helpers, and a small REST client to check what the store
//! holds.
//!
//! Every mount uses `--listen 127.0.0.1:0`, so tests run in parallel. The [`Mount`] guard always
//! unmounts and kills its child, also when a test panics, so no test leaves a mount behind.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dos_protocol::{ContentHash, ListPage, VersionRecord, encode_path};

pub const DOSFS: &str = env!("CARGO_BIN_EXE_dosfs");

/// How long a mount may take to come up (the embedded store starts first).
const MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

/// A live dosfs mount. `root` holds `mnt/` (the mount point), `store/` (`--data-dir`),
/// `cache/` (`--cache-dir`) and `dosfs.log` (the child's output).
pub struct Mount {
    pub mp: PathBuf,
    pub root: PathBuf,
    pub url: String,
    child: Option<Child>,
    /// Owns `root` when this mount created it; dropped after the unmount.
    _dir: Option<tempfile::TempDir>,
}

/// A fresh temporary folder for a test (data dir, mount point, local comparison trees).
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("dosfs-test-")
        .tempdir()
        .expect("tempdir")
}

impl Mount {
    /// Mounts a new, empty store in its own temporary folder.
    pub fn new() -> Mount {
        let dir = tempdir();
        let root = dir.path().to_path_buf();
        let mut m = Mount::start_in(&root);
        m._dir = Some(dir);
        m
    }

    /// Mounts the store kept in `root` (created if needed); used to remount the same data.
    pub fn start_in(root: &Path) -> Mount {
        Mount::start_with(root, &[])
    }

    /// Mounts a new, empty store with extra `dosfs mount` flags (e.g. `--cache-size 8M`).
    pub fn new_with(args: &[&str]) -> Mount {
        let dir = tempdir();
        let root = dir.path().to_path_buf();
        let mut m = Mount::start_with(&root, args);
        m._dir = Some(dir);
        m
    }

    /// Mounts the store kept in `root` with extra `dosfs mount` flags.
    pub fn start_with(root: &Path, args: &[&str]) -> Mount {
        let root = root.canonicalize().expect("canonicalize root");
        let mp = root.join("mnt");
        std::fs::create_dir_all(&mp).unwrap();
        let log_path = root.join("dosfs.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = Command::new(DOSFS)
            .arg("mount")
            .arg(&mp)
            .arg("--foreground")
            .arg("--data-dir")
            .arg(root.join("store"))
            .arg("--cache-dir")
            .arg(root.join("cache"))
            .arg("--listen")
            .arg("127.0.0.1:0")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn dosfs mount");
        let mut m = Mount {
            mp: mp.clone(),
            root: root.clone(),
            url: String::new(),
            child: Some(child),
            _dir: None,
        };
        let deadline = Instant::now() + MOUNT_TIMEOUT;
        loop {
            if let Some(url) = mount_url(&mp) {
                m.url = url;
                return m;
            }
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                panic!(
                    "dosfs mount exited before the mount was live ({status}); log:\n{}",
                    m.log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not become a dosfs mount within {MOUNT_TIMEOUT:?}; log:\n{}",
                    mp.display(),
                    m.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `mnt/<rel>`.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.mp.join(rel)
    }

    /// A REST client for this mount's embedded API server, with the token it requires.
    pub fn rest(&self) -> Rest {
        Rest::with_token(&self.url, Some(&self.token()))
    }

    /// The bearer token the embedded API server requires (`--data-dir`/token).
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.root.join("store").join("token"))
            .expect("the mount's token file")
            .trim()
            .to_string()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("dosfs.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `dosfs umount`, then waits for the child to exit; panics if either fails.
    pub fn unmount(&mut self) {
        // `dosfs umount` waits for the daemon's pid to disappear; our child would stay a
        // zombie (and keep its /proc entry) until we reap it, so reap while umount runs.
        let umount = Command::new(DOSFS)
            .arg("umount")
            .arg(&self.mp)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run dosfs umount");
        let mut reaped = None;
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut umount = umount;
        loop {
            if reaped.is_none()
                && let Some(c) = self.child.as_mut()
                && let Ok(Some(s)) = c.try_wait()
            {
                reaped = Some(s);
                self.child = None;
            }
            if umount.try_wait().expect("wait for dosfs umount").is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "dosfs umount hangs");
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = umount.wait_with_output().expect("dosfs umount output");
        assert!(
            out.status.success(),
            "dosfs umount {} failed: {}\nlog:\n{}",
            self.mp.display(),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        let status = reaped.or_else(|| self.wait_child(Duration::from_secs(60)));
        assert!(
            mount_url(&self.mp).is_none(),
            "{} still mounted after dosfs umount",
            self.mp.display()
        );
        if let Some(status) = status {
            assert!(
                status.success(),
                "dosfs exited with {status} after umount; log:\n{}",
                self.log()
            );
        }
    }

    /// SIGKILL of the dosfs process; the (now dead) mount stays until someone unmounts it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9 dosfs");
            c.wait().unwrap();
        }
    }

    /// Waits for the child to exit (None when there is no child or it does not exit in time,
    /// in which case it is killed).
    fn wait_child(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = child.try_wait().ok().flatten() {
                return Some(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "dosfs did not exit within {timeout:?} after unmount; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            eprintln!(
                "---- dosfs log of {} (last 40 lines) ----\n{}",
                self.mp.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if mount_url(&self.mp).is_some() || is_mountpoint(&self.mp) {
            let ok = Command::new("fusermount3")
                .arg("-u")
                .arg(&self.mp)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("fusermount3")
                    .arg("-uz")
                    .arg(&self.mp)
                    .stderr(Stdio::null())
                    .status();
            }
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unescape_mount_field(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Whether anything at all is mounted at `mp` (dead FUSE mounts included).
pub fn is_mountpoint(mp: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let want = mp.to_string_lossy();
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|f| unescape_mount_field(f) == want)
    })
}

/// The mount's fstype and source at `mp` from /proc/self/mountinfo.
pub fn mount_entry(mp: &Path) -> Option<(String, String)> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let want = mp.to_string_lossy();
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        if fields.get(4).map(|f| unescape_mount_field(f)).as_deref() == Some(&*want) {
            let sep = fields.iter().position(|f| *f == "-")?;
            return Some((
                fields.get(sep + 1)?.to_string(),
                unescape_mount_field(fields.get(sep + 2)?),
            ));
        }
    }
    None
}

/// The API URL of the dosfs mount at `mp` (source `dosfs:http://…` of a FUSE mount).
pub fn mount_url(mp: &Path) -> Option<String> {
    let (fstype, source) = mount_entry(mp)?;
    if fstype != "fuse.dosfs" && fstype != "fuse" {
        return None;
    }
    source.strip_prefix("dosfs:").map(str::to_string)
}

// ---------------------------------------------------------------------------------------------
// Shell helpers

/// Runs `script` with `bash -c` in `cwd`; panics with its output unless it succeeds.
pub fn sh(cwd: &Path, script: &str) -> String {
    let out = sh_out(cwd, script);
    assert!(
        out.status.success(),
        "command failed ({}): {script}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `script` with `bash -c` in `cwd` and returns its output, whatever its status.
pub fn sh_out(cwd: &Path, script: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .current_dir(cwd)
        .env("LC_ALL", "C")
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running bash: {e}"))
}

/// Panics with a clear message when `tool` is not installed (the tests need it; CI installs
/// it).
pub fn require_tool(tool: &str) {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()));
    assert!(
        found,
        "{tool} is not installed; these tests need it (apt-get install -y {tool})"
    );
}

/// Deterministic pseudo-random bytes (xorshift), so contents are reproducible.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Reads a whole file, panicking with the path on failure.
pub fn read(p: &Path) -> Vec<u8> {
    let mut f = std::fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut v = Vec::new();
    f.read_to_end(&mut v)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    v
}

/// Every regular file under `dir`, as paths relative to it, sorted.
pub fn walk_files(dir: &Path) -> Vec<String> {
    fn go(base: &Path, d: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(d)
            .unwrap_or_else(|e| panic!("read_dir {}: {e}", d.display()))
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let ft = e.file_type().unwrap();
            let p = e.path();
            if ft.is_dir() {
                go(base, &p, out);
            } else if ft.is_file() {
                out.push(p.strip_prefix(base).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out);
    out.sort();
    out
}

/// Names in a directory (no `.`/`..`), sorted.
pub fn list_dir(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Polls `f` until it returns true or `timeout` passes; returns how long it took.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if f() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------------------------------------
// REST

/// A blocking REST client for the API server of a mount (reqwest on a private runtime).
pub struct Rest {
    base: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Rest {
    /// A client that sends no token.
    pub fn new(base: &str) -> Rest {
        Rest::with_token(base, None)
    }

    /// A client that sends `Authorization: Bearer TOKEN` on every request.
    pub fn with_token(base: &str, token: Option<&str>) -> Rest {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        Rest {
            base: base.trim_end_matches('/').to_string(),
            http: {
                dos_client::install_crypto_provider();
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(60))
                    .default_headers(headers)
                    .build()
                    .unwrap()
            },
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn object_url(&self, name: &str) -> String {
        format!("{}/objects/{}", self.base, encode_path(name))
    }

    fn send(&self, rb: reqwest::RequestBuilder) -> Response {
        self.rt.block_on(async {
            let resp = rb.send().await.expect("REST request");
            let status = resp.status().as_u16();
            let body = resp.bytes().await.expect("REST body").to_vec();
            Response { status, body }
        })
    }

    /// `GET /objects/NAME`: the bytes, or None on 404.
    pub fn get(&self, name: &str) -> Option<Vec<u8>> {
        let r = self.send(self.http.get(self.object_url(name)));
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!(
                "GET /objects/{name}: {s}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }

    /// `GET /objects/NAME?version=N`.
    pub fn get_version(&self, name: &str, version: u64) -> Option<Vec<u8>> {
        let r = self.send(
            self.http
                .get(format!("{}?version={version}", self.object_url(name))),
        );
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!(
                "GET /objects/{name}?version={version}: {s}: {}",
                String::from_utf8_lossy(&r.body)
            ),
        }
    }

    /// `GET /versions/NAME`, parsed.
    pub fn versions(&self, name: &str) -> Vec<VersionRecord> {
        let r = self.send(
            self.http
                .get(format!("{}/versions/{}", self.base, encode_path(name))),
        );
        assert_eq!(
            r.status,
            200,
            "GET /versions/{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
        String::from_utf8(r.body)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("version line {l}: {e}")))
            .collect()
    }

    /// Every entry and prefix of `GET /list?prefix=…&delimiter=…` over all pages.
    pub fn list_all(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> (Vec<VersionRecord>, Vec<String>) {
        let mut entries = Vec::new();
        let mut prefixes = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut q: Vec<(&str, String)> = vec![("prefix", prefix.to_string())];
            if let Some(d) = delimiter {
                q.push(("delimiter", d.to_string()));
            }
            if let Some(c) = &cursor {
                q.push(("cursor", c.clone()));
            }
            q.push(("limit", "1000".into()));
            let query: Vec<String> = q
                .iter()
                .map(|(k, v)| format!("{k}={}", encode_path(v)))
                .collect();
            let r = self.send(
                self.http
                    .get(format!("{}/list?{}", self.base, query.join("&"))),
            );
            assert_eq!(
                r.status,
                200,
                "GET /list: {}",
                String::from_utf8_lossy(&r.body)
            );
            let page: ListPage = serde_json::from_slice(&r.body).unwrap();
            entries.extend(page.entries);
            prefixes.extend(page.prefixes);
            match page.next_cursor {
                Some(c) if cursor.as_deref() != Some(c.as_str()) => cursor = Some(c),
                _ => break,
            }
        }
        (entries, prefixes)
    }

    /// Names directly under directory `dir` ("" is the root), files and subdirectories alike.
    pub fn names_in(&self, dir: &str) -> Vec<String> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let (entries, prefixes) = self.list_all(&prefix, Some("/"));
        let mut names: Vec<String> = entries
            .iter()
            .map(|e| e.name.as_str()[prefix.len()..].to_string())
            .chain(
                prefixes
                    .iter()
                    .map(|p| p[prefix.len()..].trim_end_matches('/').to_string()),
            )
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// `PUT /objects/NAME` with its Digest; panics unless 200.
    pub fn put(&self, name: &str, body: &[u8]) {
        let r = self.send(
            self.http
                .put(self.object_url(name))
                .header("digest", ContentHash::of(body).digest_header())
                .body(body.to_vec()),
        );
        assert_eq!(
            r.status,
            200,
            "PUT /objects/{name}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }

    /// `DELETE /objects/NAME`; returns the status.
    pub fn delete(&self, name: &str) -> u16 {
        self.send(self.http.delete(self.object_url(name))).status
    }

    /// `POST /objects/NAME` with Digest and Size (dedup); returns the status.
    pub fn post_known(&self, name: &str, hash: &ContentHash, size: u64) -> u16 {
        self.send(
            self.http
                .post(self.object_url(name))
                .header("digest", hash.digest_header())
                .header("size", size.to_string()),
        )
        .status
    }
}

/// The SHA-256 of `bytes` as base64 (what `user.dosfs.sha256` holds).
pub fn sha256_b64(bytes: &[u8]) -> String {
    ContentHash::of(bytes).to_base64()
}

/// The SHA-256 of `bytes` in lowercase hex (what `sha256sum` prints).
pub fn sha256_hex(bytes: &[u8]) -> String {
    ContentHash::of(bytes)
        .0
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
