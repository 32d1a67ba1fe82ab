//! The HTTP abuse run: malformed and huge headers, invalid UTF-8 and percent-encoding, `..`
//! in every position, stalled bodies, wrong Content-Length, forged tokens, missing and wrong
//! bearer tokens, written byte for byte to the socket. Every request must get a 4xx (or, for
//! a head the HTTP parser cannot read at all, a closed connection), the server must keep
//! serving, and nothing stored may change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use dos_client::{Client, ContentHash};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOKEN: &str = "abuse-test-token";

/// Writes `request` as is, half-closes unless `keep_open`, and returns the status of the
/// answer, or `None` when the server closed the connection without one.
async fn raw(addr: SocketAddr, request: &[u8], keep_open: bool) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // A server may answer and close before reading everything: ignore write errors.
    let _ = stream.write_all(request).await;
    if !keep_open {
        let _ = stream.shutdown().await;
    }
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("the server answers or closes within 20 s");
    if read.is_err() && answer.is_empty() {
        return None;
    }
    let head = String::from_utf8_lossy(&answer);
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok())
}

fn request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut r = format!("{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
    for (k, v) in headers {
        r.push_str(&format!("{k}: {v}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    r.extend_from_slice(body);
    r
}

fn authorized(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let auth = format!("Bearer {TOKEN}");
    let len = body.len().to_string();
    let mut all = vec![
        ("Authorization", auth.as_str()),
        ("Content-Length", len.as_str()),
    ];
    all.extend_from_slice(headers);
    request(method, path, &all, body)
}

/// Everything the store holds, as (name, version, hash) lines, plus the committed shard files.
async fn state(client: &Client, roots: &[std::path::PathBuf]) -> (Vec<String>, Vec<String>) {
    let versions = client
        .all_versions()
        .await
        .unwrap()
        .iter()
        .map(|v| format!("{} {} {:?}", v.name, v.version, v.hash))
        .collect();
    let mut shards = Vec::new();
    for r in roots {
        let mut files = Vec::new();
        collect_files(&r.join("objects"), &mut files);
        shards.extend(files.iter().map(|p| p.display().to_string()));
    }
    shards.sort();
    (versions, shards)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = start_with(&dir.path().join("c"), |c| {
        c.token = Some(TOKEN.into());
        c.body_idle_timeout = Duration::from_secs(2);
    })
    .await;
    let addr = cluster.api_addr();
    let kept = data(300_000, 3);
    client
        .put_bytes("kept/a", kept.clone(), &attrs())
        .await
        .unwrap();
    client
        .put_bytes("kept/b", &b"small"[..], &attrs())
        .await
        .unwrap();
    let before = state(&client, &cluster.data_roots()).await;

    let body = b"payload".to_vec();
    let digest = ContentHash::of(&body).digest_header();
    let digest = digest.as_str();
    let long_name = "n".repeat(dos_client::dos_protocol::MAX_NAME_BYTES + 1);
    let huge_value = "v".repeat(200_000);
    let many_headers: Vec<(String, String)> =
        (0..300).map(|i| (format!("x-h{i}"), "1".into())).collect();
    let many: Vec<(&str, &str)> = many_headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();

    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    let mut case = |what: &str, bytes: Vec<u8>| cases.push((what.to_string(), bytes));
    // Access control.
    case(
        "GET without token",
        request("GET", "/objects/kept/a", &[], b""),
    );
    case(
        "PUT without token",
        request(
            "PUT",
            "/objects/evil",
            &[("Digest", digest), ("Content-Length", "7")],
            &body,
        ),
    );
    for auth in [
        "Bearer wrong",
        "Bearer ",
        "bearer abuse-test-token",
        "Basic YWJ1c2U6dGVzdA==",
        "Bearer abuse-test-token-and-more",
    ] {
        case(
            &format!("DELETE with Authorization {auth:?}"),
            request("DELETE", "/objects/kept/a", &[("Authorization", auth)], b""),
        );
        case(
            &format!("maintenance with Authorization {auth:?}"),
            request(
                "POST",
                "/maintenance/retention?keep=1",
                &[("Authorization", auth)],
                b"",
            ),
        );
    }
    // Names: `..` and `.` in every position, bad percent-encoding, invalid UTF-8, too long.
    for path in [
        "/objects/..",
        "/objects/../kept/a",
        "/objects/kept/../x",
        "/objects/kept/..",
        "/objects/./x",
        "/objects/x/.",
        "/objects/%2e%2e/x",
        "/objects/x/%2E%2E",
        "/objects/x/%2e%2e/y",
        "/objects/..%2fx",
        "/objects/x%2f..%2fy",
        "/objects/a//b",
        "/objects//a",
        "/objects/a%",
        "/objects/a%2",
        "/objects/a%zz",
        "/objects/%ff%fe",
        "/objects/%c0%ae%c0%ae/x",
        "/objects/a%00b",
        "/objects/%0a",
    ] {
        case(
            &format!("PUT {path}"),
            authorized("PUT", path, &[("Digest", digest)], &body),
        );
        case(&format!("GET {path}"), authorized("GET", path, &[], b""));
        let versions = path.replacen("/objects/", "/versions/", 1);
        case(
            &format!("GET {versions}"),
            authorized("GET", &versions, &[], b""),
        );
    }
    case(
        "PUT of a name over the limit",
        authorized(
            "PUT",
            &format!("/objects/{long_name}"),
            &[("Digest", digest)],
            &body,
        ),
    );
    // Content checks of hashes that are not 64 hex digits, or not stored.
    let unknown = ContentHash::of(b"not stored").to_hex();
    for path in [
        "/contents/xyz/redundancy".to_string(),
        "/contents/xyz/check".to_string(),
        format!("/contents/{}/redundancy", &unknown[..63]),
        format!("/contents/{unknown}/redundancy"),
        format!("/contents/{unknown}/check"),
    ] {
        let method = if path.ends_with("/check") {
            "POST"
        } else {
            "GET"
        };
        case(
            &format!("{method} {path}"),
            authorized(method, &path, &[], b""),
        );
    }
    // Raw invalid UTF-8 and control bytes in the request line.
    let mut bad_utf8 =
        b"GET /objects/\xff\xfe HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ".to_vec();
    bad_utf8.extend_from_slice(TOKEN.as_bytes());
    bad_utf8.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    case("raw invalid UTF-8 in the path", bad_utf8);
    case("garbage request line", b"HELLO\r\n\r\n".to_vec());
    case("binary junk", (0u8..=255).cycle().take(4096).collect());
    case(
        "request line without version",
        b"GET /objects/kept/a\r\n\r\n".to_vec(),
    );
    // Headers: huge, too many, malformed, invalid values.
    case(
        "a 200 kB header",
        authorized("GET", "/objects/kept/a", &[("X-Big", &huge_value)], b""),
    );
    case(
        "300 headers",
        authorized("GET", "/objects/kept/a", &many, b""),
    );
    case(
        "header without colon",
        b"GET /objects/kept/a HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_vec(),
    );
    let mut bad_header =
        b"PUT /objects/evil HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
            .to_vec();
    bad_header.extend_from_slice(TOKEN.as_bytes());
    bad_header.extend_from_slice(b"\r\nx-dos-kind: \xff\xfe\r\nContent-Length: 7\r\nDigest: ");
    bad_header.extend_from_slice(digest.as_bytes());
    bad_header.extend_from_slice(b"\r\n\r\npayload");
    case("invalid UTF-8 header value", bad_header);
    for (k, v) in [
        ("Digest", "SHA-256=not base64!"),
        ("Digest", "MD5=abc"),
        ("Digest", ""),
        ("x-dos-mode", "zzz"),
        ("x-dos-mode", "99999999999"),
        ("x-dos-mtime", "yesterday"),
        ("x-dos-kind", "door"),
        ("x-dos-uid", "-1"),
        ("x-dos-uid", "4294967296"),
        ("x-dos-gid", "wheel"),
        ("x-dos-rdev", "259"),
        ("x-dos-atime", "yesterday"),
        ("x-dos-link", "-2"),
    ] {
        let headers: Vec<(&str, &str)> = if k == "Digest" {
            vec![(k, v)]
        } else {
            vec![("Digest", digest), (k, v)]
        };
        case(
            &format!("PUT with {k}: {v:?}"),
            authorized("PUT", "/objects/evil", &headers, &body),
        );
    }
    // Wrong Content-Length.
    case(
        "Content-Length not a number",
        request(
            "PUT",
            "/objects/evil",
            &[
                ("Authorization", &format!("Bearer {TOKEN}")),
                ("Digest", digest),
                ("Content-Length", "abc"),
            ],
            &body,
        ),
    );
    // Content-Length with chunked framing: hyper follows RFC 9112 (chunked wins, connection
    // closed after the answer); a broken chunked body must then be refused.
    case(
        "Content-Length with a malformed chunked body",
        request(
            "PUT",
            "/objects/evil",
            &[
                ("Authorization", &format!("Bearer {TOKEN}")),
                ("Digest", digest),
                ("Content-Length", "7"),
                ("Transfer-Encoding", "chunked"),
            ],
            b"zz\r\npayload\r\n0\r\n\r\n",
        ),
    );
    case(
        "malformed chunked body",
        request(
            "PUT",
            "/objects/evil",
            &[
                ("Authorization", &format!("Bearer {TOKEN}")),
                ("Digest", digest),
                ("Transfer-Encoding", "chunked"),
            ],
            b"7\r\npayload-too-long\r\n0\r\n\r\n",
        ),
    );
    case(
        "Content-Length larger than the body, then EOF",
        request(
            "PUT",
            "/objects/evil",
            &[
                ("Authorization", &format!("Bearer {TOKEN}")),
                ("Digest", digest),
                ("Content-Length", "1000"),
            ],
            &body,
        ),
    );
    case(
        "Content-Length shorter than the body",
        request(
            "PUT",
            "/objects/evil",
            &[
                ("Authorization", &format!("Bearer {TOKEN}")),
                ("Digest", digest),
                ("Content-Length", "3"),
            ],
            &body,
        ),
    );
    // Forged and malformed upload tokens, bad queries, wrong methods.
    for path in [
        "/temp/garbage",
        "/temp/AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "/temp/%ff",
        "/temp/..",
    ] {
        case(
            &format!("PUT {path}"),
            authorized("PUT", path, &[("Range", "bytes=0-")], &body),
        );
    }
    for path in [
        "/objects/kept/a?version=abc",
        "/objects/kept/a?version=-1",
        "/objects/kept/a?version=99999999999999999999999",
        "/list?limit=abc",
        "/list?limit=-5",
        "/list?cursor=%ff",
        "/list?prefix=%ff",
        "/list?delimiter=ab",
        "/locate/%ff",
        "/maintenance/..",
        "/nothing/here",
    ] {
        case(&format!("GET {path}"), authorized("GET", path, &[], b""));
    }
    case(
        "PATCH an object",
        authorized("PATCH", "/objects/kept/a", &[], &body),
    );
    // (A syntactically invalid Range is ignored, as RFC 9110 says; one past the end is 416.)
    case(
        "Range past the end",
        authorized(
            "GET",
            "/objects/kept/a",
            &[("Range", "bytes=9999999-")],
            b"",
        ),
    );

    let total = cases.len();
    let mut closed = 0;
    for (what, bytes) in cases {
        // The write side stays open (a half-close makes hyper drop the request, by design).
        match raw(addr, &bytes, true).await {
            Some(status) => assert!(
                (400..500).contains(&status),
                "{what}: answered {status}, want a 4xx"
            ),
            None => {
                eprintln!("[abuse] closed without an answer: {what}");
                closed += 1
            }
        }
    }
    // Stalled bodies: the connection is cut with 408 after the idle timeout.
    for n in 0..3 {
        let mut stalled = authorized(
            "PUT",
            &format!("/objects/stalled{n}"),
            &[("Digest", digest)],
            b"",
        );
        // Replace the Content-Length of 0 by a promise that is never kept.
        let text = String::from_utf8(stalled.clone()).unwrap();
        stalled = text
            .replace("Content-Length: 0", "Content-Length: 1000000")
            .into_bytes();
        stalled.extend_from_slice(&data(10_000, n));
        let status = raw(addr, &stalled, true).await;
        assert!(
            status.is_none() || status == Some(408),
            "stalled body: {status:?}"
        );
    }
    eprintln!(
        "[abuse] {total} hostile requests: all 4xx ({closed} closed by the HTTP parser without an \
         answer), 3 stalled bodies cut off"
    );

    // Still serving, and nothing changed.
    assert!(client.get("kept/a", None).await.unwrap() == kept[..]);
    assert_eq!(state(&client, &cluster.data_roots()).await, before);
    cluster.shutdown().await;
}
