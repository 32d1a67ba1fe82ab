//! Faults between the API server and its data servers, injected with the fault-injecting
//! shard transport around the embedded cluster's in-process transport: a shard upload that
//! breaks off mid-stream, a data server that refuses to create an upload, a commit that never
//! answers, a data server that answers garbage, read streams that stall or fail. Writes fail
//! cleanly (one line, 503, no version, nothing left claimed); reads return exact bytes while
//! four shards answer and fail cleanly when fewer do; nothing hangs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use dos_client::reqwest::StatusCode;
use dos_client::{Client, ContentHash};
use dos_server::local::LocalCluster;
use dos_transport::ShardError;
use dos_transport::faults::{Fault, Faults, FaultyTransport, Op};

const MIB: usize = 1 << 20;

/// An embedded cluster whose API server reaches its data servers through `faults`, with short
/// deadlines so that a hung call fails within a second.
async fn faulty_cluster() -> (LocalCluster, Client, Faults, tempfile::TempDir) {
    faulty_cluster_of(6).await
}

async fn faulty_cluster_of(
    data_servers: usize,
) -> (LocalCluster, Client, Faults, tempfile::TempDir) {
    let faults = Faults::default();
    let f = faults.clone();
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = start_with(&dir.path().join("root"), move |c| {
        c.data_servers = data_servers;
        c.shard_stall_timeout = Duration::from_millis(500);
        c.shard_call_timeout = Duration::from_secs(1);
        c.transport_layer = Some(Arc::new(move |inner| {
            Arc::new(FaultyTransport::new(inner, f.clone()))
        }));
    })
    .await;
    (cluster, client, faults, dir)
}

/// An embedded cluster of seven data servers (one spare) behind the fault-injecting
/// transport, with the production deadlines.
async fn seven_with_production_deadlines() -> (LocalCluster, Client, Faults, tempfile::TempDir) {
    let faults = Faults::default();
    let f = faults.clone();
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) = start_with(&dir.path().join("root"), move |c| {
        c.data_servers = 7;
        c.transport_layer = Some(Arc::new(move |inner| {
            Arc::new(FaultyTransport::new(inner, f.clone()))
        }));
    })
    .await;
    (cluster, client, faults, dir)
}

/// The id of the first data server.
fn first_server(cluster: &LocalCluster) -> dos_protocol::ServerId {
    cluster.data_servers()[0].clone().unwrap().id
}

/// A PUT of `len` bytes that the fault makes fail within `limit`: 503 with a one-line
/// message naming no server, and no version. Returns the content's hash.
async fn assert_put_fails(client: &Client, name: &str, len: usize, limit: Duration) -> ContentHash {
    let body = data(len, 7);
    let hash = ContentHash::of(&body);
    let started = Instant::now();
    let err = client
        .put_bytes(name, body, &attrs())
        .await
        .expect_err("the PUT must fail");
    assert!(
        started.elapsed() < limit,
        "the PUT took {:?}",
        started.elapsed()
    );
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{err}");
    let message = err.server_message().unwrap_or_default().to_string();
    assert!(
        !message.contains("127.0.0.1") && !message.contains("local:"),
        "{message}"
    );
    assert!(message.contains("nothing was stored"), "{message}");
    assert_eq!(client.versions(name).await.unwrap(), vec![]);
    hash
}

/// A streamed PUT that fails: as above, and no committed shard of the content anywhere.
async fn assert_put_fails_cleanly(cluster: &LocalCluster, client: &Client, name: &str, len: usize) {
    let hash = assert_put_fails(client, name, len, Duration::from_secs(10)).await;
    assert!(
        shard_files(cluster, &hash).is_empty(),
        "no shard of a failed PUT stays committed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shard_upload_that_breaks_off_fails_the_put_cleanly() {
    let (cluster, client, faults, _dir) = faulty_cluster().await;
    faults
        .on(Op::WriteTemp, Fault::CutWrite { after: 300_000 })
        .server(&first_server(&cluster))
        .times(1)
        .apply();
    assert_put_fails_cleanly(&cluster, &client, "cut/upload", 3 * MIB).await;
    // The next PUT goes through, and its bytes come back.
    let body = data(3 * MIB, 8);
    client
        .put_bytes("cut/after", body.clone(), &attrs())
        .await
        .unwrap();
    assert!(client.get("cut/after", None).await.unwrap() == body[..]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_upload_fails_the_put_and_abandons_the_others() {
    let (cluster, client, faults, _dir) = faulty_cluster().await;
    faults
        .on(Op::CreateTemp, Fault::Fail(ShardError::Full))
        .server(&first_server(&cluster))
        .times(1)
        .apply();
    assert_put_fails_cleanly(&cluster, &client, "refused/upload", 2 * MIB).await;
    assert!(
        faults.calls(Op::Abort) >= 5,
        "the five uploads created are abandoned"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_that_never_answers_fails_the_put_within_its_deadline() {
    let (cluster, client, faults, _dir) = faulty_cluster().await;
    faults
        .on(Op::Commit, Fault::Hang)
        .server(&first_server(&cluster))
        .times(1)
        .apply();
    let body = data(2 * MIB, 9);
    let started = Instant::now();
    let err = client
        .put_bytes("hung/commit", body, &attrs())
        .await
        .expect_err("a commit that never answers fails the PUT");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{err}");
    assert_eq!(client.versions("hung/commit").await.unwrap(), vec![]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_data_server_that_stops_taking_its_shard_fails_the_put_within_its_deadline() {
    let (cluster, client, faults, _dir) = faulty_cluster().await;
    faults
        .on(Op::WriteTemp, Fault::Hang)
        .server(&first_server(&cluster))
        .times(1)
        .apply();
    assert_put_fails_cleanly(&cluster, &client, "hung/write", 8 * MIB).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_whole_shard_refused_or_unanswered_fails_a_small_put_cleanly() {
    let (cluster, client, faults, _dir) = faulty_cluster().await;
    faults
        .on(Op::PutShard, Fault::Fail(ShardError::Full))
        .server(&first_server(&cluster))
        .times(1)
        .apply();
    // Shards the other servers stored are orphans no record names (the orphan job
    // collects them after its grace period).
    assert_put_fails(&client, "small/refused", 50_000, Duration::from_secs(10)).await;
    faults
        .on(Op::PutShard, Fault::Hang)
        .server(&first_server(&cluster))
        .times(1)
        .apply();
    assert_put_fails(&client, "small/hung", 50_000, Duration::from_secs(5)).await;
    // One request per data server, and nothing to create, commit or abandon.
    let (creates, commits) = (faults.calls(Op::CreateTemp), faults.calls(Op::Commit));
    client
        .put_bytes("small/fine", data(50_000, 4), &attrs())
        .await
        .unwrap();
    assert_eq!(faults.calls(Op::CreateTemp), creates);
    assert_eq!(faults.calls(Op::Commit), commits);
    assert!(client.get("small/fine", None).await.unwrap() == data(50_000, 4)[..]);
    cluster.shutdown().await;
}

/// Stores an object to read back under faults.
async fn stored(client: &Client, name: &str, len: usize) -> Vec<u8> {
    let body = data(len, 11);
    client
        .put_bytes(name, body.clone(), &attrs())
        .await
        .unwrap();
    body
}

#[tokio::test(flavor = "multi_thread")]
async fn garbage_and_stalls_on_reads_are_replaced_by_parity() {
    let (cluster, client, faults, _dir) = faulty_cluster().await;
    let body = stored(&client, "read/obj", 5 * MIB + 123).await;
    // Shard 0 answers garbage (too short for what was asked); shard 1's stream stalls after
    // one piece: the reader gets parity instead of both, in time, byte for byte.
    faults
        .on(Op::ReadShard, Fault::GarbageRead { len: 1000 })
        .shard(0)
        .times(1)
        .apply();
    faults
        .on(Op::ReadShard, Fault::StallRead { after: 256 * 1024 })
        .shard(1)
        .times(1)
        .apply();
    let started = Instant::now();
    let got = client.get("read/obj", None).await.unwrap();
    assert!(got == body[..], "exact bytes despite garbage and a stall");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A range in the middle, with a stall right at the start of shard 2.
    faults
        .on(Op::ReadShard, Fault::StallRead { after: 0 })
        .shard(2)
        .times(1)
        .apply();
    let (_, part) = client
        .get_range("read/obj", None, "bytes=3000000-4000000")
        .await
        .unwrap();
    assert!(part == body[3_000_000..=4_000_000]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_need_four_shards_and_fail_cleanly_with_three() {
    let (cluster, client, faults, _dir) = faulty_cluster().await;
    let body = stored(&client, "quorum/obj", 2 * MIB + 5).await;
    for shard in [0, 4] {
        faults
            .on(
                Op::ReadShard,
                Fault::Fail(ShardError::Unreachable("cut off".into())),
            )
            .shard(shard)
            .apply();
    }
    assert!(client.get("quorum/obj", None).await.unwrap() == body[..]);
    faults
        .on(
            Op::ReadShard,
            Fault::Fail(ShardError::Unreachable("cut off".into())),
        )
        .shard(1)
        .apply();
    let err = client.get("quorum/obj", None).await.unwrap_err();
    assert_eq!(err.status(), Some(StatusCode::SERVICE_UNAVAILABLE), "{err}");
    assert!(
        err.server_message()
            .unwrap_or_default()
            .contains("3 of the 4"),
        "{err}"
    );
    faults.clear();
    assert!(client.get("quorum/obj", None).await.unwrap() == body[..]);
    cluster.shutdown().await;
}

/// The data server holding shard `shard` of `hash` (shard files on disk say where).
fn holder_of(cluster: &LocalCluster, hash: &ContentHash, shard: u8) -> dos_protocol::ServerId {
    let (server, _, _) = shard_files(cluster, hash)
        .into_iter()
        .find(|(_, s, _)| *s == shard)
        .expect("the shard is stored");
    cluster.data_servers()[server].clone().unwrap().id
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lying_data_server_causes_a_degraded_read_and_a_repair_never_wrong_bytes() {
    // Seven data servers: a spare exists for the shard the liar holds.
    let (cluster, client, faults, _dir) = faulty_cluster_of(7).await;
    let big = stored(&client, "lie/big", 5 * MIB + 123).await;
    let small = data(100_000, 3);
    client
        .put_bytes("lie/small", small.clone(), &attrs())
        .await
        .unwrap();
    // The same checks hold for content stored by the two other upload paths: a resumable
    // upload sent in three parts, and a streamed upload of unknown length.
    let parts = data(3 * MIB + 77, 21);
    let parts_hash = ContentHash::of(&parts);
    let loc = match client
        .post("lie/parts", parts_hash, parts.len() as u64, &attrs())
        .await
        .unwrap()
    {
        dos_client::PostOutcome::Upload(loc) => loc,
        dos_client::PostOutcome::Created(_) => panic!("new content needs an upload"),
    };
    for (from, to) in [(0, MIB), (MIB, 2 * MIB), (2 * MIB, parts.len())] {
        client
            .upload_chunk(&loc, from as u64, parts[from..to].to_vec())
            .await
            .unwrap();
    }
    let streamed = data(2 * MIB + 999, 22);
    let loc = client.open_upload("lie/streamed", &attrs()).await.unwrap();
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = streamed
        .chunks(100_000)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let got = client
        .stream_upload(&loc, futures::stream::iter(chunks))
        .await
        .unwrap();
    client
        .finish_upload(&got.location, got.hash, &attrs())
        .await
        .unwrap();
    let big_hash = ContentHash::of(&big);
    let small_hash = ContentHash::of(&small);
    for (name, body) in [("lie/parts", &parts), ("lie/streamed", &streamed)] {
        let l = holder_of(&cluster, &ContentHash::of(body), 3);
        faults
            .on(Op::ReadShard, Fault::LieRead)
            .server(&l)
            .shard(3)
            .apply();
        assert!(client.get(name, None).await.unwrap() == body[..], "{name}");
    }
    // A rule names a server and a shard index, whatever the object: these two must not add
    // liars to the objects below.
    faults.clear();
    // The holders of shard 0 of each answer every read with well-formed, wrong bytes (their
    // own checksums pass: this is past them). The big object has up to two liars.
    let liar = holder_of(&cluster, &big_hash, 0);
    let small_liar = holder_of(&cluster, &small_hash, 0);
    for l in [&liar, &small_liar] {
        faults.on(Op::ReadShard, Fault::LieRead).server(l).apply();
    }
    assert!(
        client.get("lie/big", None).await.unwrap() == big[..],
        "exact bytes"
    );
    assert!(client.get("lie/small", None).await.unwrap() == small[..]);
    let (_, part) = client
        .get_range("lie/big", None, "bytes=1048570-3145800")
        .await
        .unwrap();
    assert!(part == big[1_048_570..=3_145_800], "a range across blocks");
    let (_, tail) = client
        .get_range("lie/big", None, "bytes=-100")
        .await
        .unwrap();
    assert!(tail == big[big.len() - 100..]);

    // The repair rebuilds shard 0 on a server that is not the liar, and reads stop asking it.
    let rebuilt = wait_until(Duration::from_secs(20), || async {
        shard_files(&cluster, &big_hash)
            .iter()
            .filter(|(_, s, _)| *s == 0)
            .count()
            == 2
    })
    .await;
    assert!(rebuilt, "shard 0 was rebuilt on a spare server");
    // Once the new placement is recorded, reads stop asking the liar.
    let asked_no_more = wait_until(Duration::from_secs(10), || async {
        let asked = faults.calls_to(Op::ReadShard, &liar);
        let got = client.get("lie/big", None).await.unwrap();
        assert!(got == big[..]);
        faults.calls_to(Op::ReadShard, &liar) == asked
    })
    .await;
    assert!(
        asked_no_more,
        "the repaired object is no longer read from the liar"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_lying_data_servers_fail_the_read_and_serve_no_wrong_byte() {
    let (cluster, client, faults, _dir) = faulty_cluster().await;
    for (name, len) in [("liars/one-block", 300_000), ("liars/blocks", 3 * MIB + 1)] {
        let body = stored(&client, name, len).await;
        let hash = ContentHash::of(&body);
        for shard in [0, 2, 5] {
            let l = holder_of(&cluster, &hash, shard);
            faults.on(Op::ReadShard, Fault::LieRead).server(&l).apply();
        }
        match client.get(name, None).await {
            Ok(got) => panic!(
                "{name}: a read with three liars returned {} bytes (right: {})",
                got.len(),
                got == body[..]
            ),
            Err(e) => {
                // Either a clean 503 before the body, or a body cut off before its end.
                if let Some(status) = e.status() {
                    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {e}");
                }
            }
        }
        // A streamed read gets only right bytes before it is cut off.
        let resp = client
            .request(
                dos_client::reqwest::Method::GET,
                &format!("/objects/{name}"),
            )
            .send()
            .await;
        if let Ok(resp) = resp {
            let mut got = Vec::new();
            let mut stream = resp.bytes_stream();
            use futures::StreamExt as _;
            while let Some(Ok(chunk)) = stream.next().await {
                got.extend_from_slice(&chunk);
            }
            assert!(got.len() < body.len(), "{name}: cut off");
            assert!(got == body[..got.len()], "{name}: no wrong byte");
        }
        faults.clear();
        assert!(client.get(name, None).await.unwrap() == body[..]);
    }
    cluster.shutdown().await;
}

/// Issue 15: a data server whose link went silent (every call hangs) costs no read or write
/// more than a moment, with the production deadlines (10 s stall, 120 s calls): reads race
/// its shards with parity after the hedge deadline, writes give its shard to the seventh
/// server, and from the first miss on it is suspect, so later requests do not wait for it.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_data_server_stalls_no_read_or_write() {
    let (cluster, client, faults, _dir) = seven_with_production_deadlines().await;
    let mut objects = Vec::new();
    for (i, len) in [100_000, 5 * MIB + 3, 1, 3 * MIB]
        .into_iter()
        .cycle()
        .take(12)
        .enumerate()
    {
        let name = format!("silent/before/{i}");
        objects.push((name.clone(), stored(&client, &name, len).await));
    }
    let silent = first_server(&cluster);
    for op in [
        Op::CreateTemp,
        Op::WriteTemp,
        Op::Commit,
        Op::PutShard,
        Op::ReadShard,
    ] {
        faults.on(op, Fault::Hang).server(&silent).apply();
    }
    let limit = Duration::from_secs(2);
    let mut slowest = (Duration::ZERO, String::new());
    let mut note = |what: String, took: Duration| {
        if took > slowest.0 {
            slowest = (took, what);
        }
    };
    for round in 0..2 {
        for (name, body) in &objects {
            let started = Instant::now();
            let got = client.get(name, None).await.unwrap();
            assert!(got == body[..], "{name}: exact bytes");
            note(format!("GET {name} (round {round})"), started.elapsed());
        }
        for (i, len) in [100_000, 3 * MIB + 1, 700_000].into_iter().enumerate() {
            let name = format!("silent/after/{round}/{i}");
            let body = data(len, 40 + i as u64);
            let started = Instant::now();
            client
                .put_bytes(&name, body.clone(), &attrs())
                .await
                .unwrap_or_else(|e| panic!("PUT {name} with six servers answering: {e}"));
            note(format!("PUT {name}"), started.elapsed());
            assert!(client.get(&name, None).await.unwrap() == body[..]);
        }
    }
    eprintln!("slowest operation with a silent server: {slowest:?}");
    assert!(slowest.0 < limit, "{slowest:?}");
    cluster.shutdown().await;
}

/// Issue 15: a data server that goes silent in the middle of a streamed upload (it took a
/// few MiB, then nothing more, and never answers) costs no write more than a moment with
/// production deadlines when a seventh server is there: its upload is given up, the other
/// five are committed and its shard is rebuilt from them on the seventh before the version
/// is made. The same for a commit that never answers, for the declared resumable upload
/// (POST, PUT /temp) and for the streamed one (x-dos-upload: stream). Every object ends with
/// its six shards on six distinct servers.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_server_silent_mid_stream_costs_no_upload() {
    let (cluster, client, faults, _dir) = seven_with_production_deadlines().await;
    let limit = Duration::from_secs(2);
    let check = |name: &str, body: &[u8], took: Duration| {
        let hash = ContentHash::of(body);
        let files = shard_files(&cluster, &hash);
        let mut shards: Vec<u8> = files.iter().map(|(_, s, _)| *s).collect();
        shards.sort();
        assert_eq!(
            shards,
            vec![0, 1, 2, 3, 4, 5],
            "{name}: one copy of each shard"
        );
        let mut servers: Vec<usize> = files.iter().map(|(s, _, _)| *s).collect();
        servers.sort();
        servers.dedup();
        assert_eq!(servers.len(), 6, "{name}: six distinct servers");
        eprintln!("{name}: {took:?}");
        assert!(took < limit, "{name} took {took:?}");
    };
    let stall = || {
        faults
            .on(
                Op::WriteTemp,
                Fault::StallWrite {
                    after: 2 * MIB as u64,
                },
            )
            .times(1)
            .apply()
    };

    // A PUT of 24 MiB (streamed; each shard takes 6 MiB).
    stall();
    let body = data(24 * MIB + 5, 71);
    let started = Instant::now();
    let hash = ContentHash::of(&body);
    let stream = futures::stream::iter(
        body.chunks(MIB)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    client
        .put_stream("mid/put", hash, Some(body.len() as u64), stream, &attrs())
        .await
        .unwrap_or_else(|e| panic!("PUT with six servers answering: {e}"));
    check("PUT", &body, started.elapsed());
    assert!(client.get("mid/put", None).await.unwrap() == body[..]);
    faults.clear();

    // A commit that never answers.
    faults.on(Op::Commit, Fault::Hang).times(1).apply();
    let body = data(5 * MIB + 1, 72);
    let started = Instant::now();
    client
        .put_bytes("mid/commit", body.clone(), &attrs())
        .await
        .unwrap_or_else(|e| panic!("PUT with a hung commit: {e}"));
    check("PUT, hung commit", &body, started.elapsed());
    assert!(client.get("mid/commit", None).await.unwrap() == body[..]);
    faults.clear();

    // A declared resumable upload sent in one PUT /temp.
    stall();
    let body = data(16 * MIB + 9, 73);
    let hash = ContentHash::of(&body);
    let started = Instant::now();
    let dos_client::PostOutcome::Upload(location) = client
        .post("mid/resumable", hash, body.len() as u64, &attrs())
        .await
        .unwrap()
    else {
        panic!("new content needs an upload");
    };
    let done = client
        .upload_chunk(&location, 0, body.clone())
        .await
        .unwrap_or_else(|e| panic!("PUT /temp with six servers answering: {e}"));
    assert!(
        matches!(done, dos_client::UploadProgress::Done(_)),
        "{done:?}"
    );
    check("resumable upload", &body, started.elapsed());
    assert!(client.get("mid/resumable", None).await.unwrap() == body[..]);
    faults.clear();

    // A declared upload in two parts: the server goes silent in the first; the second part
    // finds it still silent and does without it.
    let body = data(12 * MIB, 75);
    let hash = ContentHash::of(&body);
    let dos_client::PostOutcome::Upload(location) = client
        .post("mid/parts", hash, body.len() as u64, &attrs())
        .await
        .unwrap()
    else {
        panic!("new content needs an upload");
    };
    let writes_before = faults.called(Op::WriteTemp).len();
    faults
        .on(Op::WriteTemp, Fault::StallWrite { after: MIB as u64 })
        .times(1)
        .apply();
    let started = Instant::now();
    let first = client
        .upload_chunk(&location, 0, body[..8 * MIB].to_vec())
        .await
        .unwrap_or_else(|e| panic!("first part: {e}"));
    // The server whose stream stalled stays silent for everything.
    let silent = faults.called(Op::WriteTemp)[writes_before].clone();
    for op in [
        Op::WriteTemp,
        Op::TempStatus,
        Op::Commit,
        Op::ReadTemp,
        Op::Abort,
    ] {
        faults.on(op, Fault::Hang).server(&silent).apply();
    }
    assert!(
        matches!(first, dos_client::UploadProgress::Partial { accepted, .. } if accepted == 8 * MIB as u64),
        "{first:?}"
    );
    let rest = client
        .upload_chunk(&location, 8 * MIB as u64, body[8 * MIB..].to_vec())
        .await
        .unwrap_or_else(|e| panic!("second part: {e}"));
    assert!(
        matches!(rest, dos_client::UploadProgress::Done(_)),
        "{rest:?}"
    );
    let took = started.elapsed();
    faults.clear();
    // Two requests, each may wait the write deadline once for the silent server.
    check("upload in two parts", &body, took / 2);
    assert!(client.get("mid/parts", None).await.unwrap() == body[..]);

    // A streamed upload of unknown size (x-dos-upload: stream), then its POST.
    stall();
    let body = data(9 * MIB + 77, 74);
    let started = Instant::now();
    let location = client.open_upload("mid/open", &attrs()).await.unwrap();
    let stream = futures::stream::iter(
        body.chunks(MIB)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    let streamed = client
        .stream_upload(&location, stream)
        .await
        .unwrap_or_else(|e| panic!("streamed upload: {e}"));
    client
        .finish_upload(&streamed.location, ContentHash::of(&body), &attrs())
        .await
        .unwrap_or_else(|e| panic!("finishing the streamed upload: {e}"));
    check("streamed upload", &body, started.elapsed());
    assert!(client.get("mid/open", None).await.unwrap() == body[..]);
    faults.clear();
    cluster.shutdown().await;
}

/// A data server behind a slow link (it takes every piece, each a little late) does not
/// pace a streamed upload: once the request has waited for that stream alone for longer
/// than the give-up deadline, and for most of the time, the stream is given up and its
/// shard rebuilt on the seventh server. Without this a 24 MiB PUT takes 24 × 150 ms.
#[tokio::test(flavor = "multi_thread")]
async fn a_data_server_behind_a_slow_link_does_not_pace_the_upload() {
    let (cluster, client, faults, _dir) = seven_with_production_deadlines().await;
    let per_piece = Duration::from_millis(150);
    faults
        .on(Op::WriteTemp, Fault::SlowWrite { per_piece })
        .times(1)
        .apply();
    let body = data(24 * MIB + 3, 76);
    let hash = ContentHash::of(&body);
    let started = Instant::now();
    let stream = futures::stream::iter(
        body.chunks(MIB)
            .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
            .collect::<Vec<_>>(),
    );
    client
        .put_stream("slow/put", hash, Some(body.len() as u64), stream, &attrs())
        .await
        .unwrap_or_else(|e| panic!("PUT with one slow server: {e}"));
    let took = started.elapsed();
    let slow = faults.called(Op::WriteTemp)[0].clone();
    let files = shard_files(&cluster, &hash);
    let mut shards: Vec<u8> = files.iter().map(|(_, s, _)| *s).collect();
    shards.sort();
    assert_eq!(shards, vec![0, 1, 2, 3, 4, 5], "one copy of each shard");
    let mut servers: Vec<usize> = files.iter().map(|(s, _, _)| *s).collect();
    servers.sort();
    servers.dedup();
    assert_eq!(servers.len(), 6, "six distinct servers");
    let ids: Vec<_> = cluster
        .data_servers()
        .iter()
        .map(|s| s.clone().unwrap().id)
        .collect();
    assert!(
        files.iter().all(|(s, _, _)| ids[*s] != slow),
        "the slow server's shard went to the spare"
    );
    eprintln!("PUT of 24 MiB with one slow server: {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "the slow server paced the upload: {took:?}"
    );
    assert!(client.get("slow/put", None).await.unwrap() == body[..]);
}
