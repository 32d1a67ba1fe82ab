//! A client that stops sending in the middle of an upload is cut off with 408 after the
//! configured idle time; nothing is stored and the server keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use dos_client::Client;
use dos_protocol::{ContentHash, WriteAttributes};
use dos_server::local::{LocalCluster, LocalConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread")]
async fn stalled_upload_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.body_idle_timeout = Duration::from_secs(1);
    let cluster = LocalCluster::start(config).await.unwrap();
    let addr = cluster.api_addr();
    let body = vec![7u8; 100_000];
    let digest = ContentHash::of(&body).digest_header();

    for path in ["/objects/stalled", "/objects/stalled-chunked"] {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let framing = if path.ends_with("chunked") {
            "Transfer-Encoding: chunked\r\n".to_string()
        } else {
            format!("Content-Length: {}\r\n", body.len())
        };
        let head = format!("PUT {path} HTTP/1.1\r\nHost: x\r\nDigest: {digest}\r\n{framing}\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        if path.ends_with("chunked") {
            s.write_all(b"3e8\r\n").await.unwrap();
        }
        s.write_all(&body[..1000]).await.unwrap();
        // …and then nothing.
        let start = Instant::now();
        let mut answer = vec![0u8; 512];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
            .await
            .expect("the server answers a stalled upload")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 408"), "{path}: {answer}");
        assert!(answer.contains("stalled"), "{path}: {answer}");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    let client = Client::new(format!("http://{addr}")).unwrap();
    for name in ["stalled", "stalled-chunked"] {
        assert!(
            client.versions(name).await.unwrap().is_empty(),
            "{name} has no version"
        );
    }
    // Still serving.
    let v = client
        .put_bytes("after", body.clone(), &WriteAttributes::default())
        .await
        .unwrap();
    assert_eq!(v.version, 1);
    assert_eq!(client.get("after", None).await.unwrap(), body);
    cluster.shutdown().await;
}

/// A body that trickles in (a few bytes at a time, never idle long enough for the idle
/// timeout) is cut off once it arrives slower than the minimum rate; other clients are
/// served meanwhile, and nothing is stored.
#[tokio::test(flavor = "multi_thread")]
async fn trickling_body_is_cut_off_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.body_idle_timeout = Duration::from_secs(60);
    config.body_pace = dos_api_server::pipeline::write::BodyPace {
        min_rate: 10_000,
        grace: Duration::from_secs(1),
    };
    let cluster = LocalCluster::start(config).await.unwrap();
    let addr = cluster.api_addr();
    let body = vec![7u8; 100_000];
    let digest = ContentHash::of(&body).digest_header();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT /objects/trickle HTTP/1.1\r\nHost: x\r\nDigest: {digest}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let start = Instant::now();
    let client = Client::new(format!("http://{addr}")).unwrap();
    let mut answer = Vec::new();
    let mut served = false;
    for chunk in body.chunks(100) {
        // 100 bytes every 50 ms: 2 KB/s, far under the minimum.
        if s.write_all(chunk).await.is_err() {
            // The server answered and closed: the answer is there to read.
            let mut buf = vec![0u8; 512];
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await
            {
                answer.extend_from_slice(&buf[..n]);
            }
            break;
        }
        if !served {
            let t = Instant::now();
            client
                .put_bytes("other", b"meanwhile".to_vec(), &WriteAttributes::default())
                .await
                .unwrap();
            assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
            served = true;
        }
        let mut buf = vec![0u8; 512];
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
            answer.extend_from_slice(&buf[..n]);
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "never cut off");
    }
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("slower than"), "{answer}");
    assert!(client.versions("trickle").await.unwrap().is_empty());
    cluster.shutdown().await;
}

/// Slow heads: hundreds of connections that send half a request head and then nothing are
/// cut off after the header deadline, and other clients are served within a second all along;
/// past the connection cap, new connections wait for a slot instead of using up descriptors.
#[tokio::test(flavor = "multi_thread")]
async fn slow_heads_are_cut_off_and_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.conn_limits = dos_worker::http::ConnLimits {
        max_connections: 400,
        header_read_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let cluster = LocalCluster::start(config).await.unwrap();
    let addr = cluster.api_addr();
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    let client = Client::new(format!("http://{addr}")).unwrap();
    let t = Instant::now();
    client.health(Duration::from_secs(5)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // After the deadline every slow connection is closed by the server.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut closed = 0;
    for s in &mut slow {
        let mut buf = [0u8; 256];
        match tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1,
            Err(_) => {}
        }
    }
    assert_eq!(closed, slow.len(), "slow heads still open");
    drop(slow);

    // The cap: 400 idle connections take every slot; one more waits until the deadline
    // frees slots, then is served.
    let mut idle = Vec::new();
    for _ in 0..400 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
        idle.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    let served = client.health(Duration::from_secs(10)).await;
    assert!(served.is_ok(), "{served:?}");
    let waited = t.elapsed();
    assert!(
        waited > Duration::from_millis(500) && waited < Duration::from_secs(6),
        "waited {waited:?} for a slot"
    );
    drop(idle);
    cluster.shutdown().await;
}

/// Unread responses: clients that ask for a large object and never read the answer hold
/// request slots only until the write deadline; then their connections are closed and other
/// clients are served again.
#[tokio::test(flavor = "multi_thread")]
async fn unread_responses_free_their_slots_after_the_write_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = LocalConfig::new(dir.path().to_path_buf(), "127.0.0.1:0".parse().unwrap());
    config.max_in_flight = 8;
    config.conn_limits = dos_worker::http::ConnLimits {
        write_timeout: Duration::from_secs(1),
        ..Default::default()
    };
    let cluster = LocalCluster::start(config).await.unwrap();
    let addr = cluster.api_addr();
    let client = Client::new(format!("http://{addr}")).unwrap();
    let big: Vec<u8> = (0..48u32 << 20).map(|i| (i % 251) as u8).collect();
    client
        .put_bytes("big", big, &WriteAttributes::default())
        .await
        .unwrap();
    client
        .put_bytes("small", b"small".to_vec(), &WriteAttributes::default())
        .await
        .unwrap();
    let mut unread = Vec::new();
    for _ in 0..8 {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /objects/big HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        unread.push(s);
    }
    // The eight slots are held while the answers are being sent…
    tokio::time::sleep(Duration::from_millis(300)).await;
    let held = client.get("small", None).await;
    assert_eq!(
        held.as_ref().err().and_then(|e| e.status()),
        Some(dos_client::reqwest::StatusCode::SERVICE_UNAVAILABLE),
        "all slots busy: {held:?}"
    );
    // …and freed once the answers have waited for their readers past the deadline.
    let t = Instant::now();
    let served = loop {
        match client.get("small", None).await {
            Ok(b) => break b,
            Err(_) if t.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("never served again: {e}"),
        }
    };
    assert_eq!(&served[..], b"small");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(unread);
    cluster.shutdown().await;
}
