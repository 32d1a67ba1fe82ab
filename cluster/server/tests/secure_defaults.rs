//! Secure defaults of the `dos-server` binary (issue 17): a data server does not start without
//! the cluster secret, secret and token files must be private and long enough, and the
//! embedded store requires the bearer token it makes, keeping its folders private.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dos-server");

/// Runs `dos-server ARGS` with no secret or token in its environment; it must exit within
/// 20 s (every case here fails before it would serve).
fn run(args: &[&str]) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("DOS_SECRET")
        .env_remove("DOS_SECRET_FILE")
        .env_remove("DOS_TOKEN")
        .env("RABBITMQ_SERVER", "amqp://guest:guest@127.0.0.1:9/%2f")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("dos-server {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// The one line a failed start printed.
fn refused(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "dos-server {args:?} started");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    err
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_data_server_needs_a_private_secret_of_sixteen_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let root = root.to_str().unwrap();
    let data = |extra: &[&str]| {
        let mut args = vec!["data", "--listen", "127.0.0.1:0", "--storage-root", root];
        args.extend_from_slice(extra);
        refused(&args)
    };
    let err = data(&[]);
    assert!(err.contains("needs the cluster secret"), "{err}");
    assert!(err.contains("--insecure"), "{err}");
    assert!(!Path::new(root).exists(), "nothing made before refusing");

    let open = dir.path().join("open-secret");
    write_mode(&open, &"ab".repeat(32), 0o644);
    let err = data(&["--secret-file", open.to_str().unwrap()]);
    assert!(err.contains("chmod 600"), "{err}");

    let short = dir.path().join("short-secret");
    write_mode(&short, "abcdef", 0o600);
    let err = data(&["--secret-file", short.to_str().unwrap()]);
    assert!(err.contains("at least 16"), "{err}");

    let err = data(&["--secret", "abcd"]);
    assert!(err.contains("at least 16"), "{err}");

    // The token file of `maintain` must be private too.
    let token = dir.path().join("token");
    write_mode(&token, &"t".repeat(40), 0o640);
    let err = refused(&[
        "maintain",
        "--token-file",
        token.to_str().unwrap(),
        "--scrub",
    ]);
    assert!(err.contains("chmod 600"), "{err}");
}

#[test]
fn the_embedded_store_requires_its_token_and_keeps_its_files_private() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .args(["local", "--root", root.to_str().unwrap()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env_remove("DOS_TOKEN")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(&mut child);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    dos_client::install_crypto_provider();
    let http = reqwest::Client::new();
    let status = |token: Option<&str>| {
        let mut rb = http.get(format!("{base}/versions/"));
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        rt.block_on(rb.send()).map(|r| r.status().as_u16())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(None).is_err() {
        assert!(Instant::now() < deadline, "dos-server local did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let token_file = root.join("token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let token = std::fs::read_to_string(&token_file).unwrap();
    assert_eq!(status(None).unwrap(), 401);
    assert_eq!(status(Some("not the token")).unwrap(), 401);
    assert_eq!(status(Some(token.trim())).unwrap(), 200);
    // A write, so that shards, packs and metadata exist; then nothing under ROOT is
    // readable by anyone else.
    let put = http
        .put(format!("{base}/objects/private.txt"))
        .bearer_auth(token.trim())
        .header(
            "Digest",
            dos_protocol::ContentHash::of(b"mine").digest_header(),
        )
        .body("mine");
    assert_eq!(rt.block_on(put.send()).unwrap().status().as_u16(), 200);
    let mut todo = vec![root.clone()];
    let mut files = 0;
    while let Some(d) = todo.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            } else {
                let mode = meta.permissions().mode() & 0o777;
                assert_eq!(mode & 0o077, 0, "{} is {mode:03o}", e.path().display());
                files += 1;
            }
        }
    }
    assert!(files > 6, "only {files} files under the root");
    drop(child);
}

/// Signatures between API and data servers (loopback HTTP data servers): a signed request
/// works once; sent again (a replay), sent to another data server, with another Range, or with
/// another body than the one it was signed for, it is refused; redirects are not followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_internal_requests_work_once_for_one_server_range_and_body() {
    use dos_protocol::signature::{Request, sign, unix_secs};
    let dir = tempfile::tempdir().unwrap();
    let mut config = dos_server::local::LocalConfig::new(
        dir.path().join("root"),
        "127.0.0.1:0".parse().unwrap(),
    );
    config.shard_path = dos_server::local::ShardPath::Http;
    let cluster = dos_server::local::LocalCluster::start(config)
        .await
        .unwrap();
    let secret = hex::decode(
        std::fs::read_to_string(dir.path().join("root/secret"))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let servers: Vec<_> = cluster.data_servers().into_iter().flatten().collect();
    let (a, b) = (&servers[0], &servers[1]);
    dos_client::install_crypto_provider();
    let http = reqwest::Client::new();
    let send = |server: &dos_protocol::ServerInfo,
                method: reqwest::Method,
                path: &str,
                sig: &str,
                range: Option<&str>,
                digest: Option<&str>,
                body: Vec<u8>| {
        let mut rb = http
            .request(method, format!("http://{}{path}", server.addr))
            .header(dos_protocol::headers::SIGNATURE, sig)
            .body(body);
        if let Some(r) = range {
            rb = rb.header("range", r);
        }
        if let Some(d) = digest {
            rb = rb.header(dos_protocol::headers::BODY_SHA256, d);
        }
        async move { rb.send().await.unwrap().status().as_u16() }
    };
    let list = "/shards?limit=1";
    let for_a = |range: Option<&'static str>, digest: Option<&str>, method: &str, path: &str| {
        sign(
            &secret,
            &Request {
                method,
                path_and_query: path,
                server_id: &a.id.0,
                range,
                body_sha256: digest,
            },
            unix_secs(),
        )
    };
    let get = reqwest::Method::GET;
    let sig = for_a(None, None, "GET", list);
    assert_eq!(
        send(a, get.clone(), list, &sig, None, None, vec![]).await,
        200
    );
    assert_eq!(
        send(a, get.clone(), list, &sig, None, None, vec![]).await,
        403,
        "replayed"
    );
    let sig = for_a(None, None, "GET", list);
    assert_eq!(
        send(b, get.clone(), list, &sig, None, None, vec![]).await,
        403,
        "another server"
    );

    // A whole shard: stored with its signed body; another body under that signature is not.
    let shard = b"shard bytes".to_vec();
    let hash = dos_protocol::ContentHash::of(b"some content");
    let path = dos_protocol::shard::paths::shard(&hash, 0);
    let digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&shard));
    let put = reqwest::Method::PUT;
    let sig = for_a(None, Some(&digest), "PUT", &path);
    let other = b"other bytes".to_vec();
    assert_eq!(
        send(a, put.clone(), &path, &sig, None, Some(&digest), other).await,
        400,
        "a body other than the signed one"
    );
    let sig = for_a(None, Some(&digest), "PUT", &path);
    assert_eq!(
        send(
            a,
            put.clone(),
            &path,
            &sig,
            None,
            Some(&digest),
            shard.clone()
        )
        .await,
        201
    );
    let sig = for_a(None, None, "PUT", &path);
    assert_eq!(
        send(a, put, &path, &sig, None, Some(&digest), shard).await,
        403,
        "a digest header the signature does not cover"
    );

    // Ranges: the signed one is served, another one under the same signature is not.
    let sig = for_a(Some("bytes=0-3"), None, "GET", &path);
    assert_eq!(
        send(a, get.clone(), &path, &sig, Some("bytes=0-9"), None, vec![]).await,
        403
    );
    let sig = for_a(Some("bytes=0-3"), None, "GET", &path);
    assert_eq!(
        send(a, get, &path, &sig, Some("bytes=0-3"), None, vec![]).await,
        206
    );
    cluster.shutdown().await;
}

/// A "data server" that answers with a redirect is not followed: the call fails, and the
/// address it points to (which would receive the signature) hears nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirecting_data_server_is_not_followed() {
    use dos_transport::ShardTransport as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let hits = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let target_addr = target.local_addr().unwrap();
    let sink = axum::Router::new().fallback(move || {
        counted.fetch_add(1, Ordering::SeqCst);
        async { "stolen" }
    });
    tokio::spawn(async move { axum::serve(target, sink).await });
    let liar = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let liar_addr = liar.local_addr().unwrap();
    let redirect = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::TEMPORARY_REDIRECT,
            [("location", format!("http://{target_addr}/elsewhere"))],
        )
    });
    tokio::spawn(async move { axum::serve(liar, redirect).await });
    let shards =
        dos_transport::http::HttpTransport::new(Duration::from_secs(2), Some(&[9u8; 32])).unwrap();
    let server = dos_protocol::ServerInfo {
        id: dos_protocol::ServerId("liar".into()),
        addr: liar_addr.to_string(),
    };
    let hash = dos_protocol::ContentHash::of(b"x");
    assert!(shards.read_shard(&server, &hash, 0, 0, 10).await.is_err());
    assert!(shards.remove_shard(&server, &hash, 0, None).await.is_err());
    assert!(shards.list_shards(&server, None, 10).await.is_err());
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a redirect was followed");
}
