//! `GET /status`, the `/ui` page over it (in headless Chromium) and `dos-server status`, on
//! an embedded cluster with a token: `/status` is 401 without it; its JSON, the CLI's
//! tables and the page's DOM list every live data server; a data server stopped shows as
//! down within the heartbeat window (15 s), in the JSON, the CLI and the page. The page's
//! part is skipped, with a message, when `chromium` is not installed. The page's screenshot
//! is left in the target's temporary folder (`status-page.png`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

const TOKEN: &str = "status-page-test-token";

async fn status(url: &str) -> Value {
    let resp = reqwest::Client::new()
        .get(format!("{url}/status"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

fn ids(v: &Value, key: &str) -> Vec<String> {
    v[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

/// `dos-server status` against `url` with `args`: (success, stdout, stderr).
async fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dos-server"))
        .args(["status", "--api", url])
        .args(args)
        .env_remove("DOS_TOKEN")
        .env_remove("DOS_TOKEN_FILE")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn chromium() -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join("chromium"))
        .find(|p| p.is_file())
}

/// Headless Chromium on `url` with `args` (after the common flags); its stdout.
async fn run_chromium(bin: &Path, profile: &Path, args: &[String], url: &str) -> String {
    let child = tokio::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--virtual-time-budget=6000",
            "--window-size=1100,900",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(90), child)
        .await
        .expect("chromium finishes within 90 s")
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_json_cli_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = dos_server::metrics::install().expect("exporter installs");
    let (mut cluster, client) = common::start_with(&dir.path().join("c"), |c| {
        c.token = Some(TOKEN.into());
        c.metrics = Some(metrics);
    })
    .await;
    let url = format!("http://{}", cluster.api_addr());
    let servers: Vec<String> = cluster
        .data_servers()
        .into_iter()
        .flatten()
        .map(|s| s.id.0)
        .collect();
    assert_eq!(servers.len(), 6);
    assert!(
        common::wait_until(Duration::from_secs(20), || async {
            client.health(Duration::from_secs(2)).await.ok() == Some(6)
        })
        .await,
        "six data servers live"
    );
    client
        .put_bytes("a/one", b"hello".to_vec(), &common::attrs())
        .await
        .unwrap();
    let _ = client.get("a/missing", None).await;

    // Without the token: 401 for the data, the page itself is served.
    let plain = reqwest::Client::new();
    let resp = plain.get(format!("{url}/status")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    // The API server's /metrics is behind the token too.
    let resp = plain.get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(resp.status(), 401, "/metrics without the token");
    let resp = plain
        .get(format!("{url}/metrics"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "/metrics with the token");
    assert!(resp.text().await.unwrap().contains("# TYPE "));
    let resp = plain.get(format!("{url}/ui")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let html = resp.text().await.unwrap();
    assert!(html.contains("fetch(\"/status\"") && !html.contains("live-server\" data-id"));
    let (ok, _, err) = cli(&url, &[]).await;
    assert!(!ok, "status without the token fails");
    assert_eq!(err.trim().lines().count(), 1, "one-line error: {err}");

    // The JSON.
    let s = status(&url).await;
    let mut live = ids(&s, "live");
    live.sort();
    let mut want = servers.clone();
    want.sort();
    assert_eq!(live, want);
    assert!(ids(&s, "down").is_empty());
    // The embedded cluster renders its data servers' figures too (refreshed every 5 s).
    assert!(
        common::wait_until(Duration::from_secs(15), || async {
            status(&url).await["live"]
                .as_array()
                .unwrap()
                .iter()
                .all(|srv| {
                    srv["shards"].is_u64() && srv["disk_free_bytes"].as_u64().unwrap_or(0) > 0
                })
        })
        .await,
        "shard counts and disk figures of every data server"
    );
    assert_eq!(s["heartbeat_expiry_secs"], 15);
    assert_eq!(s["redundancy"]["repairs_queued"], 0);
    assert!(s["redundancy"]["shards_rebuilt"].is_u64());
    let req = &s["requests"];
    assert!(req["total"].as_u64().unwrap() >= 2, "{req}");
    assert!(req["client_errors"].as_u64().unwrap() >= 1, "{req}");
    assert!(s["maintenance"].as_array().unwrap().is_empty());

    // The CLI.
    let (ok, out, err) = cli(&url, &["--token", TOKEN]).await;
    assert!(ok, "{err}");
    println!("dos-server status:\n{out}");
    for id in &servers {
        assert!(
            out.lines().any(|l| l.contains(id) && l.contains("live")),
            "{id} live in:\n{out}"
        );
    }
    for section in ["DATA SERVERS", "REDUNDANCY", "MAINTENANCE", "REQUESTS"] {
        assert!(out.contains(section), "{section} in:\n{out}");
    }

    let browser = chromium();
    let profile = tempfile::tempdir().unwrap();
    let page = format!("{url}/ui#token={TOKEN}");
    match &browser {
        None => println!("SKIPPED the page's part: chromium is not installed"),
        Some(bin) => {
            let dom = run_chromium(bin, profile.path(), &["--dump-dom".into()], &page).await;
            for id in &servers {
                assert!(
                    dom.contains(&format!("live-server\" data-id=\"{id}\"")),
                    "{id} live in the page:\n{dom}"
                );
            }
            assert!(dom.contains("Repairs queued"), "{dom}");
        }
    }

    // A data server stops: down within the heartbeat window.
    let gone = cluster.data_servers()[0].clone().unwrap().id.0;
    cluster.stop_data_server(0).await;
    assert!(
        common::wait_until(Duration::from_secs(20), || async {
            ids(&status(&url).await, "down") == vec![gone.clone()]
        })
        .await,
        "{gone} shown as down within the heartbeat window"
    );
    assert!(!ids(&status(&url).await, "live").contains(&gone));
    let (ok, out, err) = cli(&url, &["--token", TOKEN]).await;
    assert!(ok, "{err}");
    assert!(
        out.lines().any(|l| l.contains(&gone) && l.contains("DOWN")),
        "{gone} down in:\n{out}"
    );
    println!("dos-server status, one data server stopped:\n{out}");
    if let Some(bin) = &browser {
        let dom = run_chromium(bin, profile.path(), &["--dump-dom".into()], &page).await;
        assert!(
            dom.contains(&format!("down-server\" data-id=\"{gone}\"")),
            "{gone} down in the page:\n{dom}"
        );
        for id in servers.iter().filter(|id| **id != gone) {
            assert!(dom.contains(&format!("live-server\" data-id=\"{id}\"")));
        }
        let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
        let _ = std::fs::remove_file(&shot);
        let arg = format!("--screenshot={}", shot.display());
        run_chromium(bin, profile.path(), &[arg], &page).await;
        assert!(shot.is_file(), "screenshot at {}", shot.display());
        println!("screenshot: {}", shot.display());
    }
    cluster.shutdown().await;
}
