//! A cluster of hosts on this machine (`scripts/netns-cluster.sh`): every `dos-server data`
//! and `dos-server api` in its own network namespace with its own address on a bridge, the
//! broker and the in-test Elasticsearch on the bridge address of this machine, faults
//! between hosts made with the script (cut, delay) and with signals (SIGSTOP, SIGKILL).
//!
//! Include next to `procs` and `fake_es` (`#[path = "common/netns.rs"] mod netns;`). Needs
//! root, `ip`, `tc` and `RABBITMQ_SERVER`; [`NetCluster::start`] says "skipped: …" and gives
//! `None` otherwise. Dropping the cluster (also when a test panics) kills every process,
//! removes every namespace, veth and the bridge, and deletes the broker user and vhost.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::fake_es::FakeEs;
use super::procs::{BIN, Env, Proc, SECRET, rabbitmqctl};

/// The harness script.
pub const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/netns-cluster.sh"
);
/// Where data servers listen in their namespace.
pub const DATA_PORT: u16 = 23334;
/// Where API servers listen in their namespace.
pub const API_PORT: u16 = 23333;

/// The `dos-server` the hosts run: this build's, or `DOS_SERVER_BIN` (to compare builds).
pub fn server_bin() -> String {
    std::env::var("DOS_SERVER_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// Cluster numbers (bridge `dosbrC`, subnet 198.18.C.0/24) taken by this test process.
static TAKEN: Mutex<BTreeSet<u8>> = Mutex::new(BTreeSet::new());

/// One host: its namespace's name in the script, its address, and the server running there.
pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub proc: Option<Proc>,
}

/// N data servers and M API servers, each on a host of its own.
pub struct NetCluster {
    /// The script's cluster number: subnet 198.18.C.0/24.
    pub number: u8,
    /// This machine's address on the bridge (the broker and the metadata server are here).
    pub gateway: Ipv4Addr,
    /// `data1`, `data2`, …: `dos-server data` on DATA_PORT, shards in `dir/dataI`.
    pub data: Vec<Host>,
    /// `api1`, …: `dos-server api` on API_PORT.
    pub api: Vec<Host>,
    /// Broker URL (through the bridge, as the run's own user), metadata URL, logs and data.
    pub env: Env,
    /// The broker user made for this run (guest may only connect from loopback).
    user: String,
    es: FakeEs,
    dir: tempfile::TempDir,
}

/// Why a cluster of hosts cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root (network namespaces need it)".into());
    }
    for tool in ["ip", "tc"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` not found (apt-get install iproute2)"));
        }
    }
    if std::env::var("RABBITMQ_SERVER").is_err() {
        return Some("RABBITMQ_SERVER is not set (no broker to test against)".into());
    }
    None
}

/// A free cluster number: none this process holds and no bridge of that name on the
/// machine (another run's, or one left behind).
fn take_number() -> u8 {
    let mut taken = TAKEN.lock().unwrap();
    let start = std::process::id() % 254;
    for k in 0..254u32 {
        // 1..=254: cluster 0 is left for trying things by hand.
        let c = ((start + k) % 254 + 1) as u8;
        if !taken.contains(&c) && !Path::new(&format!("/sys/class/net/dosbr{c}")).exists() {
            taken.insert(c);
            return c;
        }
    }
    panic!("no free cluster number (run scripts/netns-cluster.sh down --all?)");
}

/// The broker's port in an `amqp://user:pass@host:port/vhost` URL (5672 when none).
fn broker_port(url: &str) -> u16 {
    let after_scheme = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = after_scheme.split('/').next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    host_port
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(5672)
}

impl NetCluster {
    /// Brings up `data` data hosts and `api` API hosts, runs `dos-server setup`, starts a
    /// server on each and waits until every API server sees every data server. `None` (and a
    /// "skipped: …" line) when this machine cannot run it.
    pub async fn start(data: usize, api: usize) -> Option<Self> {
        if let Some(why) = missing_prerequisite() {
            eprintln!("skipped: {why}");
            return None;
        }
        let base = std::env::var("RABBITMQ_SERVER").unwrap();
        let number = take_number();
        let gateway = Ipv4Addr::new(198, 18, number, 1);
        let dir = tempfile::tempdir().expect("temporary directory");

        let names: Vec<String> = (1..=data)
            .map(|i| format!("data{i}"))
            .chain((1..=api).map(|j| format!("api{j}")))
            .collect();
        let mut args = vec!["up".to_string()];
        args.extend(names.iter().cloned());
        // From here on, whatever fails, the guard removes what the script made.
        let guard = Down(number);
        let out = script(number, &args);
        assert!(
            out.status.success(),
            "netns-cluster.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addrs: Vec<(String, Ipv4Addr)> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let (h, a) = l.split_once(' ')?;
                Some((h.to_string(), a.trim().parse().ok()?))
            })
            .collect();
        let addr_of = |name: &str| {
            addrs
                .iter()
                .find(|(h, _)| h == name)
                .map(|(_, a)| *a)
                .unwrap_or_else(|| panic!("netns-cluster.sh up printed no address for {name}"))
        };

        let es = FakeEs::start_on(SocketAddr::from((gateway, 0))).await;
        let mut env = Env::private(&base, &es.url, dir.path());
        let user = format!("dos-netns-{}-{number}", std::process::id());
        let password = format!("{:016x}", rand::random::<u64>());
        assert!(
            rabbitmqctl(&["add_user", &user, &password]),
            "rabbitmqctl add_user failed"
        );
        env.amqp = format!(
            "amqp://{user}:{password}@{gateway}:{}/{}",
            broker_port(&base),
            env.vhost
        );
        let cluster_user = user.clone();
        let mut cluster = Self {
            number,
            gateway,
            data: Vec::new(),
            api: Vec::new(),
            env,
            user,
            es,
            dir,
        };
        std::mem::forget(guard); // the cluster's Drop takes over
        assert!(
            rabbitmqctl(&[
                "set_permissions",
                "-p",
                &cluster.env.vhost,
                &cluster_user,
                ".*",
                ".*",
                ".*"
            ]),
            "rabbitmqctl set_permissions failed"
        );
        let out = cluster.env.setup();
        assert!(
            out.status.success(),
            "dos-server setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        for i in 1..=data {
            let name = format!("data{i}");
            cluster.spawn_data(&name, addr_of(&name));
        }
        for j in 1..=api {
            let name = format!("api{j}");
            let ip = addr_of(&name);
            let proc = cluster.spawn_api(&name, ip);
            cluster.api.push(Host {
                name,
                ip,
                proc: Some(proc),
            });
        }
        for j in 0..api {
            cluster
                .wait_live(j, data, Duration::from_secs(60))
                .await
                .unwrap_or_else(|seen| {
                    panic!(
                        "api{}: {seen} of {data} data servers live after 60 s",
                        j + 1
                    )
                });
        }
        Some(cluster)
    }

    /// Starts `dos-server data` on `host` (already up, at `ip`), its shards in `dir/HOST`.
    fn spawn_data(&mut self, name: &str, ip: Ipv4Addr) {
        let root = self.dir.path().join(name);
        let proc = self.spawn_in(
            name,
            &["data"],
            &[
                ("LISTEN_ADDRESS", format!("{ip}:{DATA_PORT}")),
                ("STORAGE_ROOT", root.display().to_string()),
            ],
        );
        self.data.push(Host {
            name: name.to_string(),
            ip,
            proc: Some(proc),
        });
    }

    /// Brings up more hosts (no server on them yet) and returns their addresses.
    pub fn up(&self, hosts: &[&str]) -> Vec<Ipv4Addr> {
        let mut args = vec!["up"];
        args.extend_from_slice(hosts);
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = script(self.number, &args);
        assert!(
            out.status.success(),
            "netns-cluster.sh up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let printed = String::from_utf8_lossy(&out.stdout).to_string();
        hosts
            .iter()
            .map(|h| {
                printed
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{h} "))?.trim().parse().ok())
                    .unwrap_or_else(|| panic!("netns-cluster.sh up printed no address for {h}"))
            })
            .collect()
    }

    /// A new host `dataN` with a data server on it; returns its index in `data`.
    pub fn add_data(&mut self) -> usize {
        let name = format!("data{}", self.data.len() + 1);
        let ip = self.up(&[&name])[0];
        self.spawn_data(&name, ip);
        self.data.len() - 1
    }

    /// Starts the API server on `api[j]`'s host again (after [`kill`](Self::kill)).
    pub fn restart_api(&mut self, j: usize) {
        let name = self.api[j].name.clone();
        let proc = self.spawn_api(&name, self.api[j].ip);
        self.api[j].proc = Some(proc);
    }

    fn spawn_api(&self, name: &str, ip: Ipv4Addr) -> Proc {
        self.spawn_in(
            name,
            &["api"],
            &[("LISTEN_ADDRESS", format!("{ip}:{API_PORT}"))],
        )
    }

    /// The network namespace of `host`, for `nsenter --net=…`: a program run that way uses
    /// the host's network but this machine's mounts, so a FUSE mount it makes is seen here
    /// (`ip netns exec` gives it a mount namespace of its own).
    pub fn netns_path(&self, host: &str) -> PathBuf {
        PathBuf::from(format!("/run/netns/dos{}-{host}", self.number))
    }

    /// Runs `dos-server ARGS` in `host`'s namespace with the run's broker, metadata, secret,
    /// and its log in `dir/HOST.log`.
    pub fn spawn_in(&self, host: &str, args: &[&str], envs: &[(&str, String)]) -> Proc {
        let log = std::fs::File::create(self.log_path(host)).unwrap();
        // `nsenter --net` rather than the script's `exec` (`ip netns exec`): the server gets
        // the host's network but no mount namespace of its own, which would keep a copy of
        // every FUSE mount made before it (and its daemon alive after the unmount). nsenter
        // execs: the child's PID is the server's, for SIGSTOP and SIGKILL.
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path(host).display()))
            .arg("--")
            .arg(server_bin())
            .args(args)
            .env("RABBITMQ_SERVER", &self.env.amqp)
            .env("ES_SERVER", &self.env.es)
            .env("DOS_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().unwrap(),
            name: host.to_string(),
        }
    }

    pub fn log_path(&self, host: &str) -> PathBuf {
        self.dir.path().join(format!("{host}.log"))
    }

    pub fn log(&self, host: &str) -> String {
        std::fs::read_to_string(self.log_path(host)).unwrap_or_default()
    }

    /// Shard folder of data server `i` (0-based).
    pub fn data_root(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.data[i].name)
    }

    /// URL of API server `j` (0-based), reached from this (the root) namespace.
    pub fn api_url(&self, j: usize) -> String {
        format!("http://{}:{API_PORT}", self.api[j].ip)
    }

    pub fn client(&self, j: usize) -> dos_client::Client {
        dos_client::Client::builder(self.api_url(j))
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    /// Live data servers as API server `j` sees them (0 when it does not answer in 5 s).
    pub async fn live(&self, j: usize) -> usize {
        self.env.live(&self.api_url(j)).await
    }

    /// Waits until API server `j` sees exactly `n` live data servers; `Err(last count)`
    /// after `timeout`. Returns how long it took.
    pub async fn wait_live(
        &self,
        j: usize,
        n: usize,
        timeout: Duration,
    ) -> Result<Duration, usize> {
        let start = Instant::now();
        loop {
            let seen = self.live(j).await;
            if seen == n {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                return Err(seen);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The data server (0-based index) that listens on `addr` (`IP:PORT`), if any.
    pub fn data_index(&self, addr: &str) -> Option<usize> {
        let ip: Ipv4Addr = addr
            .rsplit_once(':')
            .map_or(addr, |(a, _)| a)
            .parse()
            .ok()?;
        self.data.iter().position(|h| h.ip == ip)
    }

    /// Runs the script on this cluster; panics when it fails.
    pub fn run(&self, args: &[&str]) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let out = script(self.number, &args);
        assert!(
            out.status.success(),
            "netns-cluster.sh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every IP packet to and from `host` vanishes from now on.
    pub fn cut(&self, host: &str) {
        self.run(&["cut", host]);
    }

    pub fn restore(&self, host: &str) {
        self.run(&["restore", host]);
    }

    /// Every packet to `host` waits `ms` ms. `Err` (what the script said) when this machine
    /// can delay neither with netem nor with the NFQUEUE delayer.
    pub fn delay(&self, host: &str, ms: u64) -> Result<(), String> {
        let out = script(self.number, &["delay".into(), host.into(), ms.to_string()]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// Removes any delay and cut of `host`.
    pub fn clear(&self, host: &str) {
        self.run(&["clear", host]);
    }

    /// SIGSTOP: the process stops; its kernel still accepts connections and ACKs bytes.
    pub fn pause(&self, proc: &Proc) {
        signal(proc, rustix::process::Signal::STOP);
    }

    /// SIGCONT.
    pub fn resume(&self, proc: &Proc) {
        signal(proc, rustix::process::Signal::CONT);
    }

    /// kill -9 of the server on `host` (data or API), waiting for it to be gone.
    pub fn kill(&mut self, host: &str) {
        let h = self
            .data
            .iter_mut()
            .chain(self.api.iter_mut())
            .find(|h| h.name == host)
            .unwrap_or_else(|| panic!("no host {host}"));
        if let Some(mut p) = h.proc.take() {
            p.child.kill().unwrap();
            p.child.wait().unwrap();
        }
    }
}

fn signal(proc: &Proc, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(proc.child.id() as i32).expect("a child's PID");
    rustix::process::kill_process(pid, sig)
        .unwrap_or_else(|e| panic!("{sig:?} to {}: {e}", proc.name));
}

fn script(number: u8, args: &[String]) -> Output {
    Command::new(SCRIPT)
        .arg("-c")
        .arg(number.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/netns-cluster.sh")
}

/// Removes cluster `C` (everything the script made for it) when dropped.
struct Down(u8);

impl Drop for Down {
    fn drop(&mut self) {
        let out = script(self.0, &["down".into()]);
        if !out.status.success() {
            eprintln!(
                "netns-cluster.sh -c {} down: {}",
                self.0,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        TAKEN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.0);
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The servers' last words, for whoever reads the failed test's output.
            for h in self.data.iter().chain(self.api.iter()) {
                let log = self.log(&h.name);
                let lines: Vec<&str> = log.lines().collect();
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                eprintln!("--- {}.log (last lines) ---\n{tail}", h.name);
            }
        }
        // Proc's Drop is kill -9 and wait (a stopped process dies of SIGKILL too).
        for h in self.data.iter_mut().chain(self.api.iter_mut()) {
            h.proc.take();
        }
        drop(Down(self.number));
        rabbitmqctl(&["delete_user", &self.user]);
        // Then the fields: `env` deletes the vhost, the temporary folder goes.
    }
}
