//! `--log-format json`: one JSON object per log line, and one request's id (the client's
//! `x-request-id`) on the API server's lines and on the data servers' lines it caused.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dos-server");

/// Log lines (JSON) whose target starts with `target` and whose request span has id `id`.
fn lines_of<'a>(
    log: &'a [serde_json::Value],
    target: &str,
    id: &str,
) -> Vec<&'a serde_json::Value> {
    log.iter()
        .filter(|l| l["target"].as_str().is_some_and(|t| t.starts_with(target)))
        .filter(|l| l["span"]["id"].as_str() == Some(id))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn one_request_id_is_on_the_api_and_the_data_server_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("log");
    let mut child = Command::new(BIN)
        .args([
            "local",
            "--no-token",
            "--shard-path",
            "http",
            "--log-format",
            "json",
        ])
        .arg("--root")
        .arg(dir.path().join("root"))
        .args(["--listen", "127.0.0.1:0"])
        .env(
            "RUST_LOG",
            "info,dos_api_server=debug,dos_data_server=debug",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // The client library leaves the choice of TLS provider to the program.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = dos_client::reqwest::Client::new();
    // The address it bound, from its own line (port 0: no race for a free port).
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if let Some(addr) = text
            .split("dos-server: serving http://")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
        {
            break addr.to_owned();
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the server exited ({status}) before serving:\n{text}");
        }
        assert!(
            Instant::now() < deadline,
            "the server did not start within 30 s:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let url = format!("http://{addr}/objects/traced");
    while http
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the server does not answer /health"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = vec![7u8; 100_000];
    let digest = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(&body))
    };
    let resp = http
        .put(&url)
        .header("digest", format!("SHA-256={digest}"))
        .header("x-request-id", "trace-put-1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-request-id"], "trace-put-1");
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let text = std::fs::read_to_string(&log_path).unwrap();
    // Every line is a JSON object but the command's own messages to its user.
    let log: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.starts_with("dos-server: "))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!log.is_empty());
    let api = lines_of(&log, "dos_api_server", "trace-put-1");
    let data = lines_of(&log, "dos_data_server", "trace-put-1");
    assert!(!api.is_empty(), "no API server line with the id:\n{text}");
    // The six shard writes of the PUT, each logged by the data server that took it.
    assert!(
        data.len() >= 6,
        "{} data server lines with the id:\n{text}",
        data.len()
    );
}
