//! Real `dos-server` processes for the process-level tests (cluster mode and faults): spawn
//! with logs in the test folder, kill -9 on drop, a private RabbitMQ vhost per run.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dos-server");
pub const SECRET: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

pub struct Proc {
    pub child: Child,
    pub name: String,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn rabbitmqctl(args: &[&str]) -> bool {
    match rabbitmqctl_output(args) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("rabbitmqctl {}: {e}", args.join(" "));
            false
        }
    }
}

fn rabbitmqctl_output(args: &[&str]) -> Result<(), String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Starts the broker's application again after `stop_app`, retrying for up to 60 s: on a
/// loaded machine `start_app` can fail while the node is still finishing the stop.
pub fn restart_broker_app() -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match rabbitmqctl_output(&["start_app"]) {
            Ok(()) => return rabbitmqctl(&["await_startup"]),
            Err(e) if Instant::now() < deadline => {
                eprintln!("rabbitmqctl start_app failed, retrying: {e}");
                std::thread::sleep(Duration::from_secs(2));
            }
            Err(e) => {
                eprintln!("rabbitmqctl start_app: {e}");
                return false;
            }
        }
    }
}

/// Starts the broker's application when dropped, so a test that fails between `stop_app` and
/// `start_app` does not leave the broker down for the tests after it.
pub struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl").arg("start_app").output();
    }
}

/// A private broker vhost, an in-test Elasticsearch and a scratch directory for a cluster of
/// processes; `None` (the test says it is skipped) when `RABBITMQ_SERVER` is not set. Keep the
/// fake server and the directory alive as long as the processes.
pub async fn cluster_env() -> Option<(super::fake_es::FakeEs, tempfile::TempDir, Env)> {
    let Ok(base) = std::env::var("RABBITMQ_SERVER") else {
        eprintln!("skipped: RABBITMQ_SERVER is not set (no broker to test against)");
        return None;
    };
    let es = super::fake_es::FakeEs::start().await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let env = Env::private(&base, &es.url, dir.path());
    Some((es, dir, env))
}

pub struct Env {
    pub amqp: String,
    pub es: String,
    pub dir: PathBuf,
    pub vhost: String,
    /// When set, every server speaks only TLS with certificates of a CA made for the run.
    pub tls: Option<Tls>,
}

/// A CA made for one run and one certificate it signed for 127.0.0.1 and localhost, which
/// every server of the run serves with.
pub struct Tls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Tls {
    pub fn make(dir: &Path) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "dos test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        let tls = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server.key"),
        };
        std::fs::write(&tls.ca, ca_cert.pem()).unwrap();
        std::fs::write(&tls.cert, cert.pem()).unwrap();
        std::fs::write(&tls.key, key.serialize_pem()).unwrap();
        std::fs::set_permissions(&tls.key, std::fs::Permissions::from_mode(0o600)).unwrap();
        tls
    }

    /// What a client of the run trusts: its CA only.
    pub fn client_config(&self) -> rustls::ClientConfig {
        dos_server::tls::client_config(&self.ca).unwrap()
    }
}

impl Env {
    /// An environment on a new private vhost of the broker at `base` (so this run hears no
    /// other test's servers), with metadata at `es` and logs and data in `dir`.
    pub fn private(base: &str, es: &str, dir: &Path) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let vhost = format!("dos-test-{}-{n}", std::process::id());
        assert!(
            rabbitmqctl(&["add_vhost", &vhost]),
            "rabbitmqctl add_vhost failed"
        );
        assert!(rabbitmqctl(&[
            "set_permissions",
            "-p",
            &vhost,
            "guest",
            ".*",
            ".*",
            ".*"
        ]));
        let prefix = base.rsplit_once('/').map_or(base, |(p, _)| p);
        Self {
            amqp: format!("{prefix}/{vhost}"),
            es: es.to_string(),
            dir: dir.to_path_buf(),
            vhost,
            tls: None,
        }
    }

    /// This environment with TLS between every server and for its clients.
    pub fn with_tls(mut self) -> Self {
        self.tls = Some(Tls::make(&self.dir.join("tls")));
        self
    }

    /// The URL of an API server of this environment on `port`.
    pub fn url(&self, port: u16) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}")
    }

    /// A client of the API server at `url`, trusting the run's CA.
    pub fn client(&self, url: &str) -> dos_client::Client {
        let mut b = dos_client::Client::builder(url);
        if let Some(tls) = &self.tls {
            b = b.tls(tls.client_config());
        }
        b.build().unwrap()
    }

    /// Live data servers as the API server at `url` sees them (0 when it does not answer).
    pub async fn live(&self, url: &str) -> usize {
        self.client(url)
            .health(Duration::from_secs(5))
            .await
            .map_or(0, |n| n as usize)
    }

    pub fn spawn(&self, name: &str, args: &[&str], envs: &[(&str, String)]) -> Proc {
        let log = std::fs::File::create(self.dir.join(format!("{name}.log"))).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("RABBITMQ_SERVER", &self.amqp)
            .env("ES_SERVER", &self.es)
            .env("DOS_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        if let Some(tls) = &self.tls {
            cmd.env("DOS_TLS_CERT", &tls.cert)
                .env("DOS_TLS_KEY", &tls.key)
                .env("DOS_TLS_CA", &tls.ca);
        }
        for (k, v) in envs {
            cmd.env(k, v);
        }
        Proc {
            child: cmd.spawn().unwrap(),
            name: name.to_string(),
        }
    }

    pub fn data(&self, i: usize) -> Proc {
        let root = self.dir.join(format!("data{i}"));
        self.spawn(
            &format!("data{i}"),
            &["data"],
            &[
                ("LISTEN_ADDRESS", "127.0.0.1:0".into()),
                ("STORAGE_ROOT", root.display().to_string()),
            ],
        )
    }

    pub fn api(&self, name: &str, port: u16) -> Proc {
        self.spawn(
            name,
            &["api"],
            &[("LISTEN_ADDRESS", format!("127.0.0.1:{port}"))],
        )
    }

    /// Runs `dos-server setup` (exchanges and indices) for this environment.
    pub fn setup(&self) -> std::process::Output {
        Command::new(BIN)
            .arg("setup")
            .env("RABBITMQ_SERVER", &self.amqp)
            .env("ES_SERVER", &self.es)
            .output()
            .unwrap()
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        rabbitmqctl(&["delete_vhost", &self.vhost]);
    }
}

pub async fn live(url: &str) -> usize {
    dos_client::install_crypto_provider();
    let Ok(resp) = reqwest::get(format!("{url}/health")).await else {
        return 0;
    };
    let Ok(v) = resp.json::<serde_json::Value>().await else {
        return 0;
    };
    v["live_data_servers"].as_u64().unwrap_or(0) as usize
}

pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond().await {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out after {timeout:?} waiting for: {what}");
}
