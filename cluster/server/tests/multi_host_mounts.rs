//! dosfs mounts on a cluster of hosts (issue 15): seven `dos-server data` and two
//! `dos-server api`, each in its own network namespace (`scripts/netns-cluster.sh`, helpers in
//! `common/netns.rs`), and two `dosfs mount`s on hosts of their own, `mount1` listing the
//! API servers as `api1,api2` and `mount2` as `api2,api1`; `mount1` follows changes through
//! its API server, `mount2` on RabbitMQ directly (`--broker`). The mounts run with their host's
//! network (`nsenter --net`) and this machine's mounts, so the test reaches both through the
//! file system while their traffic crosses the bridge.
//!
//! In turn, on the one cluster:
//! 1. a file written through one mount is read with its new bytes through the other, in both
//!    directions; the time from the writer's close to the reader's `stat` seeing the new size
//!    is printed (p50, p99) and bounded (300 ms for 95 % of the rounds, 1 s for all);
//! 2. kill -9 of `api1` while `cp -r` and `tar x` write through `mount1` and another `cp -r`
//!    through `mount2`: every command succeeds and every tree is exact through both mounts;
//!    changes still reach `mount1` (its change feed moved to `api2`);
//! 3. a drain of one data server while `cp -r` and `tar x` write through both mounts, then the
//!    server removed: scrub rebuilds nothing (every object has six healthy shards elsewhere)
//!    and every tree reads back exact;
//! 4. two data servers added and a rebalance: shard counts within 10 % of each other.
//!
//! Needs root, `ip`, `tc`, `nsenter`, `RABBITMQ_SERVER` and the `dosfs` binary next to
//! `dos-server` (`cargo test --workspace` builds it; or `DOSFS_BIN=path`); skipped with a note
//! otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../metadata/tests/common/fake_es.rs"]
#[allow(dead_code, clippy::all)]
mod fake_es;
#[path = "common/netns.rs"]
mod netns;
#[path = "common/procs.rs"]
mod procs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use dos_client::Client;
use dos_client::workload::pattern;
use futures::TryStreamExt as _;
use netns::NetCluster;

const DATA: usize = 7;

/// A progress line with the time since the test started.
macro_rules! say {
    ($started:expr, $($arg:tt)*) => {
        eprintln!("[mounts {:>6.1?}] {}", $started.elapsed(), format!($($arg)*))
    };
}

/// The `dosfs` binary: `DOSFS_BIN`, or the one cargo built next to `dos-server`.
fn dosfs_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("DOSFS_BIN") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(procs::BIN).parent()?.join("dosfs");
    p.exists().then_some(p)
}

fn is_mounted(mp: &Path) -> bool {
    let mp = mp.display().to_string();
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| {
            let mut f = l.split(' ');
            let _source = f.next();
            f.next() == Some(mp.as_str()) && f.next().is_some_and(|t| t.starts_with("fuse"))
        })
}

/// `dosfs mount` in a host's network namespace.
struct NetMount {
    dosfs: PathBuf,
    mp: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl NetMount {
    /// Mounts through `apis`; with `broker`, following changes on the cluster's RabbitMQ
    /// directly (`--broker`, with the cluster secret) instead of through the API server.
    fn start(
        net: &NetCluster,
        dosfs: &Path,
        host: &str,
        root: &Path,
        apis: &[String],
        broker: bool,
    ) -> Self {
        let mp = root.join("mnt");
        std::fs::create_dir_all(&mp).unwrap();
        let log = root.join("dosfs.log");
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new("nsenter");
        if broker {
            cmd.env("DOS_BROKER", &net.env.amqp)
                .env("DOS_SECRET", procs::SECRET);
        }
        let child = cmd
            .arg(format!("--net={}", net.netns_path(host).display()))
            .arg("--")
            .arg(dosfs)
            .arg("mount")
            .arg(&mp)
            .arg("--foreground")
            .arg("--api")
            .arg(apis.join(","))
            .arg("--cache-dir")
            .arg(root.join("cache"))
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("nsenter dosfs mount");
        let mut m = Self {
            dosfs: dosfs.to_path_buf(),
            mp,
            log,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !is_mounted(&m.mp) {
            if let Some(status) = m.child.as_mut().unwrap().try_wait().unwrap() {
                m.child = None;
                panic!("dosfs mount on {host} exited ({status}):\n{}", m.log());
            }
            assert!(
                Instant::now() < deadline,
                "dosfs mount on {host} not live after 30 s:\n{}",
                m.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        m
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.mp.join(rel)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NetMount {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- {} (last lines) ---\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(20)..].join("\n")
            );
        }
        let asked = Instant::now();
        let out = Command::new(&self.dosfs)
            .arg("umount")
            .arg(&self.mp)
            .output();
        if asked.elapsed() > Duration::from_secs(10)
            && let Some(c) = &self.child
        {
            let bt = Command::new("gdb")
                .args([
                    "-p",
                    &c.id().to_string(),
                    "-batch",
                    "-ex",
                    "thread apply all bt 12",
                ])
                .output();
            if let Ok(bt) = bt {
                eprintln!(
                    "--- threads of the dosfs that did not stop ---\n{}",
                    String::from_utf8_lossy(&bt.stdout)
                );
            }
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "dosfs umount {} took {:.1?}: {out:?}\n--- log (last lines) ---\n{}",
                self.mp.display(),
                asked.elapsed(),
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        if let Some(mut c) = self.child.take() {
            let deadline = Instant::now() + Duration::from_secs(30);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if is_mounted(&self.mp) {
            let _ = Command::new("umount").arg("-l").arg(&self.mp).status();
        }
    }
}

/// A tree of `files` files over a few folders, sizes 0 to ~300 KB and a few of 3 MiB, bytes
/// from `seed`.
fn make_tree(root: &Path, files: usize, seed: u64) {
    for i in 0..files {
        let dir = root.join(format!("d{}", i % 8)).join(format!("s{}", i % 3));
        std::fs::create_dir_all(&dir).unwrap();
        let len = if i % 97 == 5 {
            3 << 20
        } else {
            (i * 7919 + seed as usize * 13) % 300_000
        };
        std::fs::write(
            dir.join(format!("f{i}.bin")),
            pattern(len, seed * 100_000 + i as u64),
        )
        .unwrap();
    }
}

fn spawn_sh(script: &str) -> Child {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn sh(script: &str) -> Output {
    Command::new("bash").arg("-c").arg(script).output().unwrap()
}

fn assert_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits for commands started with [`spawn_sh`] and asserts each succeeded.
async fn wait_all(cmds: Vec<(String, Child)>) {
    tokio::task::spawn_blocking(move || {
        for (what, c) in cmds {
            let out = c.wait_with_output().unwrap();
            assert_ok(&what, &out);
        }
    })
    .await
    .unwrap();
}

/// `diff -r a b` is empty.
fn same_tree(what: &str, a: &Path, b: &Path) {
    let out = sh(&format!(
        "diff -r {} {} | head -20",
        a.display(),
        b.display()
    ));
    let diff = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && diff.trim().is_empty(),
        "{what}: trees differ:\n{diff}"
    );
}

fn count_entries(dir: &Path) -> usize {
    let out = sh(&format!("find {} 2>/dev/null | wc -l", dir.display()));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// Writes `body` to `name` through `from` and returns how long after the writer's close the
/// other mount's `stat` shows the new size (then checks its bytes).
fn propagate(from: &NetMount, to: &NetMount, name: &str, body: &[u8]) -> Duration {
    // The reader has the file's attributes cached.
    assert!(std::fs::metadata(to.path(name)).is_ok());
    std::fs::write(from.path(name), body).unwrap();
    let closed = Instant::now();
    loop {
        if std::fs::metadata(to.path(name)).is_ok_and(|m| m.len() == body.len() as u64) {
            break;
        }
        assert!(
            closed.elapsed() < Duration::from_secs(5),
            "{name}: the other mount still has the old size after 5 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = closed.elapsed();
    assert_eq!(std::fs::read(to.path(name)).unwrap(), body, "{name}");
    took
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Rounds of [`propagate`], alternating direction; returns the times sorted.
fn propagation_rounds(a: &NetMount, b: &NetMount, name: &str, rounds: usize) -> Vec<Duration> {
    std::fs::write(a.path(name), b"first").unwrap();
    let start = Instant::now();
    while !std::fs::read(b.path(name)).is_ok_and(|d| d == b"first") {
        assert!(start.elapsed() < Duration::from_secs(10), "{name} not seen");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut took: Vec<Duration> = (0..rounds)
        .map(|r| {
            let body = format!("round {r}: {}", "x".repeat(r * 37));
            let (from, to) = if r % 2 == 0 { (a, b) } else { (b, a) };
            propagate(from, to, name, body.as_bytes())
        })
        .collect();
    took.sort();
    took
}

/// Runs a maintenance job to its end and returns its last report.
async fn job(client: &Client, name: &str) -> serde_json::Value {
    let mut reports = client.maintenance(name, None, None).await.unwrap();
    let mut last = None;
    while let Some(r) = reports.try_next().await.unwrap() {
        last = Some(r);
    }
    let last = last.expect("a report");
    assert_eq!(last["done"], true, "{last}");
    let errors = last["errors"].as_array().map_or(0, Vec::len);
    assert_eq!(errors, 0, "{name}: {last}");
    last
}

fn count(report: &serde_json::Value, what: &str) -> u64 {
    report["counts"][what].as_u64().unwrap_or(0)
}

/// Shards data server `i` holds, as it lists them itself (`GET /shards`, signed with the
/// cluster's secret).
async fn shards_held(net: &NetCluster, i: usize) -> u64 {
    use dos_transport::ShardTransport as _;
    let secret = hex::decode(procs::SECRET).unwrap();
    let shards =
        dos_transport::http::HttpTransport::new(Duration::from_secs(5), Some(&secret)).unwrap();
    let server = dos_protocol::ServerInfo {
        id: dos_protocol::ServerId(
            std::fs::read_to_string(net.data_root(i).join("server-id"))
                .unwrap()
                .trim()
                .to_string(),
        ),
        addr: format!("{}:{}", net.data[i].ip, netns::DATA_PORT),
    };
    let (mut n, mut after) = (0, None);
    loop {
        let page = shards.list_shards(&server, after, 1000).await.unwrap();
        let Some(last) = page.last() else {
            return n;
        };
        after = Some((last.hash, last.shard));
        n += page.len() as u64;
    }
}

async fn live_on_both(net: &NetCluster, n: usize, what: &str) {
    for j in 0..net.api.len() {
        net.wait_live(j, n, Duration::from_secs(60))
            .await
            .unwrap_or_else(|seen| panic!("{what}: api{} sees {seen} of {n} live", j + 1));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_on_two_api_servers_across_hosts() {
    let started = Instant::now();
    let Some(dosfs) = dosfs_bin() else {
        eprintln!(
            "skipped: no dosfs binary next to dos-server (cargo build -p dosfs, or DOSFS_BIN)"
        );
        return;
    };
    let Some(mut net) = NetCluster::start(DATA, 2).await else {
        return;
    };
    net.up(&["mount1", "mount2"]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let (a1, a2) = (net.api_url(0), net.api_url(1));
    let m1 = NetMount::start(
        &net,
        &dosfs,
        "mount1",
        &w.join("m1"),
        &[a1.clone(), a2.clone()],
        false,
    );
    let m2 = NetMount::start(
        &net,
        &dosfs,
        "mount2",
        &w.join("m2"),
        &[a2.clone(), a1.clone()],
        true,
    );
    say!(
        started,
        "cluster {}: {DATA} data, api1 {a1}, api2 {a2}, two mounts, after {:.1?}",
        net.number,
        started.elapsed()
    );

    // 1. A change through one mount shows in the other.
    let took = propagation_rounds(&m1, &m2, "shared.txt", 40);
    let (p50, p95, p99) = (
        percentile(&took, 0.5),
        percentile(&took, 0.95),
        percentile(&took, 0.99),
    );
    say!(
        started,
        "change propagation between mounts on two hosts through two API servers, {} rounds: p50 {p50:.1?}, p95 {p95:.1?}, p99 {p99:.1?}, max {:.1?}",
        took.len(),
        took.last().unwrap()
    );
    assert!(p95 <= Duration::from_millis(300), "p95 {p95:?}: {took:?}");
    assert!(
        m2.log().contains("following changes on RabbitMQ"),
        "mount2 (--broker) did not follow the broker:\n{}",
        m2.log()
    );
    assert!(
        *took.last().unwrap() < Duration::from_secs(1),
        "slowest {took:?}"
    );

    // 2. kill -9 of api1 under cp -r and tar x through mount1 (and a cp -r through mount2).
    let (src, src2, tarred) = (w.join("src"), w.join("src2"), w.join("tarred"));
    make_tree(&src, 240, 1);
    make_tree(&src2, 120, 2);
    make_tree(&tarred, 160, 3);
    assert_ok(
        "tar c",
        &sh(&format!(
            "tar cf {w}/t.tar -C {t} .",
            w = w.display(),
            t = tarred.display()
        )),
    );
    say!(started, "trees made");
    std::fs::create_dir(m1.path("tar")).unwrap();
    let cmds = vec![
        (
            "cp -r through mount1".to_string(),
            spawn_sh(&format!(
                "cp -r {} {}",
                src.display(),
                m1.path("cp").display()
            )),
        ),
        (
            "tar x through mount1".to_string(),
            spawn_sh(&format!(
                "tar xf {}/t.tar -C {}",
                w.display(),
                m1.path("tar").display()
            )),
        ),
        (
            "cp -r through mount2".to_string(),
            spawn_sh(&format!(
                "cp -r {} {}",
                src2.display(),
                m2.path("cp2").display()
            )),
        ),
    ];
    let wait_start = Instant::now();
    while count_entries(&m1.path("cp")) < 40 && wait_start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let done_before = count_entries(&m1.path("cp"));
    net.kill("api1");
    let killed = Instant::now();
    say!(
        started,
        "kill -9 api1 with {done_before} entries of cp -r copied"
    );
    wait_all(cmds).await;
    say!(
        started,
        "cp -r, tar x and cp -r finished {:.1?} after the kill, all succeeded",
        killed.elapsed()
    );
    for (what, a, b) in [
        ("cp -r via mount1, read via mount1", &src, m1.path("cp")),
        ("cp -r via mount1, read via mount2", &src, m2.path("cp")),
        ("tar x via mount1, read via mount2", &tarred, m2.path("tar")),
        ("cp -r via mount2, read via mount1", &src2, m1.path("cp2")),
    ] {
        same_tree(what, a, &b);
    }
    say!(started, "trees compared");
    // mount1 follows changes through api2 now.
    let after_kill = propagation_rounds(&m2, &m1, "after-kill.txt", 6);
    say!(started, "propagation with api1 dead: {after_kill:?}");
    assert!(
        *after_kill.last().unwrap() < Duration::from_secs(1),
        "{after_kill:?}"
    );
    net.restart_api(0);
    live_on_both(&net, DATA, "api1 back").await;

    // 3. Drain the last data server while both mounts write, then remove it.
    let drained = DATA - 1;
    let drained_addr = format!("{}:{}", net.data[drained].ip, netns::DATA_PORT);
    let client = net.client(1);
    let (src3, src4) = (w.join("src3"), w.join("src4"));
    make_tree(&src3, 160, 4);
    make_tree(&src4, 160, 5);
    let cmds = vec![
        (
            "cp -r through mount1 during the drain".to_string(),
            spawn_sh(&format!(
                "cp -r {} {}",
                src3.display(),
                m1.path("cp3").display()
            )),
        ),
        (
            "cp -r through mount2 during the drain".to_string(),
            spawn_sh(&format!(
                "cp -r {} {}",
                src4.display(),
                m2.path("cp4").display()
            )),
        ),
    ];
    say!(started, "drain starts");
    let first = job(&client, &format!("drain:{drained_addr}")).await;
    say!(started, "drain under load: {}", first["counts"]);
    wait_all(cmds).await;
    // What writes placed there meanwhile moves on a second pass.
    let second = job(&client, &format!("drain:{drained_addr}")).await;
    say!(
        started,
        "drain again: {}; {}",
        second["counts"],
        second["verdict"]
    );
    assert_eq!(count(&second, "needed_left"), 0, "{second}");
    assert!(
        second["verdict"]
            .as_str()
            .unwrap_or("")
            .contains("holds nothing anyone needs"),
        "{second}"
    );
    let name = net.data[drained].name.clone();
    net.kill(&name);
    live_on_both(&net, DATA - 1, "drained server removed").await;
    let scrub = job(&client, "scrub").await;
    say!(started, "scrub after the removal: {}", scrub["counts"]);
    assert_eq!(count(&scrub, "shards_rebuilt"), 0, "{scrub}");
    assert_eq!(count(&scrub, "shards_postponed"), 0, "{scrub}");
    for (what, a, b) in [
        ("cp -r during the drain, via mount2", &src3, m2.path("cp3")),
        ("cp -r during the drain, via mount1", &src4, m1.path("cp4")),
        ("cp -r before the drain", &src, m2.path("cp")),
    ] {
        same_tree(what, a, &b);
    }

    say!(started, "trees compared");
    // 4. Two servers join; a rebalance evens the shard counts.
    let added = [net.add_data(), net.add_data()];
    live_on_both(&net, DATA + 1, "two servers added").await;
    let rebalance = job(&net.client(0), "rebalance").await;
    say!(started, "rebalance: {}", rebalance["counts"]);
    let (min, max) = (
        count(&rebalance, "min_after"),
        count(&rebalance, "max_after"),
    );
    assert!(min > 0, "{rebalance}");
    assert!(
        max as f64 <= min as f64 * 1.1,
        "shard counts not within 10 %: {rebalance}"
    );
    // What the servers hold themselves: each at least what the records place there, and
    // the two new ones (which held nothing before) about as much as the others.
    let mut held = Vec::new();
    for i in (0..net.data.len()).filter(|&i| i != drained) {
        held.push((net.data[i].name.clone(), shards_held(&net, i).await));
    }
    say!(
        started,
        "shards each live server holds after the rebalance: {held:?}"
    );
    for (name, n) in &held {
        assert!(
            *n >= min,
            "{name} holds {n} shards, fewer than {min}: {held:?}"
        );
    }
    for i in added {
        let n = held.iter().find(|(h, _)| *h == net.data[i].name).unwrap().1;
        assert!(
            n as f64 <= max as f64 * 1.1,
            "{} holds {n} shards, more than {max} + 10 %",
            net.data[i].name
        );
    }
    same_tree("cp -r after the rebalance", &src, &m1.path("cp"));
    say!(started, "tree compared after the rebalance");
    let scrub = job(&client, "scrub").await;
    assert_eq!(count(&scrub, "shards_rebuilt"), 0, "{scrub}");
    say!(started, "scrub after the rebalance: {}", scrub["counts"]);
    drop((m1, m2));
    say!(started, "unmounted");
    say!(started, "wall time {:.1?}", started.elapsed());
}
