//! Cluster mode with real processes: `dos-server setup`, six `dos-server data` and two
//! `dos-server api` processes on loopback, a real RabbitMQ broker (each run in its own vhost)
//! and, for metadata, the in-test Elasticsearch fake shared by both API servers.
//!
//! Needs `RABBITMQ_SERVER` (CI sets it); skipped with a note otherwise. One test, run
//! scenario by scenario, because it restarts the broker.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../metadata/tests/common/fake_es.rs"]
#[allow(dead_code, clippy::all)]
mod fake_es;
#[path = "common/procs.rs"]
mod procs;

use procs::*;

use std::path::Path;
use std::time::{Duration, Instant};

use dos_client::{Client, PostOutcome, UploadProgress};
use dos_protocol::{ContentHash, WriteAttributes};

fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s as u8
        })
        .collect()
}

fn attrs() -> WriteAttributes {
    WriteAttributes::default()
}

fn shard_ids_in(root: &Path) -> usize {
    let mut n = 0;
    if let Ok(fans) = std::fs::read_dir(root.join("objects")) {
        for f in fans.flatten() {
            n += std::fs::read_dir(f.path()).map(|d| d.count()).unwrap_or(0);
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_of_processes() {
    let Some((es, _dir, env)) = cluster_env().await else {
        return;
    };
    // Every server of this cluster speaks only TLS, with certificates of a CA made for the
    // run: the API servers call the data servers over HTTPS and check their certificates.
    let env = env.with_tls();

    // setup: exchanges and indices, idempotent.
    for _ in 0..2 {
        let out = env.setup();
        assert!(
            out.status.success(),
            "setup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("RabbitMQ") && said.contains("Elasticsearch"),
            "{said}"
        );
    }

    let mut datas: Vec<Option<Proc>> = (1..=6).map(|i| Some(env.data(i))).collect();
    let (p1, p2) = (free_port(), free_port());
    let mut api1 = Some(env.api("api1", p1));
    let _api2 = env.api("api2", p2);
    let (u1, u2) = (env.url(p1), env.url(p2));
    wait_for(
        "six live data servers on both API servers",
        Duration::from_secs(30),
        || async { env.live(&u1).await >= 6 && env.live(&u2).await >= 6 },
    )
    .await;
    let c1 = env.client(&u1);
    let c2 = env.client(&u2);
    // Plain HTTP to a TLS port, and TLS trusting only the system's roots, get nowhere.
    let plain = Client::new(format!("http://127.0.0.1:{p1}")).unwrap();
    assert!(plain.health(Duration::from_secs(5)).await.is_err());
    let untrusting = Client::new(u1.clone()).unwrap();
    let err = untrusting.health(Duration::from_secs(5)).await.unwrap_err();
    eprintln!("a client without the CA: {err}");
    // A data server, too, answers nothing but TLS.
    let log = env.log("data2");
    let data_addr: std::net::SocketAddr = log
        .split("dos-server: data server ")
        .nth(1)
        .and_then(|rest| rest.split(" on ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .expect("the data server says where it listens");
    dos_client::install_crypto_provider();
    let tls_data = reqwest::Client::builder()
        .tls_backend_preconfigured(env.tls.as_ref().unwrap().client_config())
        .build()
        .unwrap()
        .get(format!("https://{data_addr}/health"))
        .send()
        .await
        .unwrap();
    assert!(
        tls_data.status().is_success(),
        "over TLS its health answers: {}",
        tls_data.status()
    );
    let plain_data = reqwest::get(format!("http://{data_addr}/health")).await;
    assert!(
        plain_data.is_err(),
        "plain HTTP to a TLS data server: {plain_data:?}"
    );

    // Round trips; a write on one API server is read at once on the other.
    let mut stored = Vec::new();
    for (i, size) in [0usize, 1, 70_000, 3 << 20].into_iter().enumerate() {
        let body = data(size, i as u64);
        let name = format!("rt/{i}");
        let v = c1.put_bytes(&name, body.clone(), &attrs()).await.unwrap();
        assert_eq!(v.version, 1);
        assert_eq!(
            c2.get(&name, None).await.unwrap(),
            body,
            "read-after-write across API servers"
        );
        stored.push((name, body));
    }

    // /status of either API server shows every data server (separate processes) with what
    // it holds and its disk, from their heartbeats: 3 non-empty objects, 6 shards each.
    wait_for(
        "/status shows each data server's shards and disk",
        Duration::from_secs(20),
        || async {
            let Ok(s) = c2.status(Duration::from_secs(5)).await else {
                return false;
            };
            let live = s["live"].as_array().cloned().unwrap_or_default();
            let shards: u64 = live.iter().filter_map(|l| l["shards"].as_u64()).sum();
            live.len() == 6
                && live.iter().all(|l| {
                    l["shards"].is_u64()
                        && l["disk_free_bytes"].as_u64() > Some(0)
                        && l["disk_used_bytes"].as_u64() > Some(0)
                })
                && shards >= 18
        },
    )
    .await;

    // A resumable upload started on one API server finishes on the other.
    let body = data((2 << 20) + 12_345, 99);
    let PostOutcome::Upload(location) = c1
        .post(
            "resumed",
            ContentHash::of(&body),
            body.len() as u64,
            &attrs(),
        )
        .await
        .unwrap()
    else {
        panic!("new content must open an upload")
    };
    let first = c1
        .upload_chunk(&location, 0, body[..1_500_000].to_vec())
        .await
        .unwrap();
    assert!(
        matches!(
            first,
            UploadProgress::Partial {
                accepted: 1_048_576,
                ..
            }
        ),
        "{first:?}"
    );
    assert_eq!(c2.upload_status(&location).await.unwrap(), 1_048_576);
    let done = c2
        .upload_chunk(&location, 1_048_576, body[1_048_576..].to_vec())
        .await
        .unwrap();
    assert!(matches!(done, UploadProgress::Done(_)), "{done:?}");
    assert_eq!(c1.get("resumed", None).await.unwrap(), body);
    stored.push(("resumed".into(), body));

    // One request followed end to end: the client's request id comes back, and the API server
    // and the data server that lost a shard both log it.
    let (name, body) = &stored[3];
    let hash = ContentHash::of(body);
    let lost = (1..=6)
        .flat_map(|i| {
            let dir = env
                .dir
                .join(format!("data{i}/objects/{}", &hash.to_hex()[..2]));
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(move |e| (i, e.path()))
        })
        .find(|(_, p)| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".0"))
        })
        .expect("shard 0 of the 3 MiB object is on disk");
    std::fs::remove_file(&lost.1).unwrap();
    let resp = c1
        .request(reqwest::Method::GET, &format!("/objects/{name}"))
        .header("x-request-id", "trace-me-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-me-1");
    assert_eq!(&resp.bytes().await.unwrap()[..], &body[..], "degraded read");
    let data_log = format!("data{}", lost.0);
    wait_for(
        "both sides log the request id",
        Duration::from_secs(10),
        || {
            let seen =
                env.log("api1").contains("trace-me-1") && env.log(&data_log).contains("trace-me-1");
            async move { seen }
        },
    )
    .await;

    // kill -9 of one data server: reads stay exact at once; writes get 503 once it expired.
    let victim = datas[0].take().unwrap();
    let victim_root = env.dir.join("data1");
    let victim_name = victim.name.clone();
    drop(victim); // SIGKILL
    for (name, body) in &stored {
        assert_eq!(
            &c1.get(name, None).await.unwrap(),
            body,
            "degraded read of {name}"
        );
    }
    let took = wait_for(
        "PUT answers 503 with five live servers",
        Duration::from_secs(30),
        || {
            let c1 = c1.clone();
            async move {
                match c1.put_bytes("five", data(1000, 5), &attrs()).await {
                    Err(e) => e.status().map(|s| s.as_u16()) == Some(503),
                    Ok(_) => false,
                }
            }
        },
    )
    .await;
    eprintln!("{victim_name} killed: PUT refused after {took:?}");

    // A seventh data server joins: writes work again within seconds.
    let _seventh = env.data(7);
    let took = wait_for(
        "PUT succeeds with a seventh server",
        Duration::from_secs(30),
        || {
            let c1 = c1.clone();
            async move { c1.put_bytes("seven", data(5000, 7), &attrs()).await.is_ok() }
        },
    )
    .await;
    eprintln!("seventh data server: writes back after {took:?}");
    assert_eq!(c2.get("seven", None).await.unwrap(), data(5000, 7));

    // The killed server restarts on its old folder and serves its shards again.
    let held = shard_ids_in(&victim_root);
    assert!(held > 0, "the first data server held shards");
    datas[0] = Some(env.data(1));
    let id = std::fs::read_to_string(victim_root.join("server-id")).unwrap();
    let announce = format!("data server {} on ", id.trim());
    wait_for(
        "the restarted server is up with its old id",
        Duration::from_secs(30),
        || {
            let found = env.log("data1").contains(&announce);
            async move { found }
        },
    )
    .await;
    let addr = env
        .log("data1")
        .split(&announce)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    // Its shards are located at its new address once it has heart-beaten.
    wait_for(
        "locate finds the restarted server",
        Duration::from_secs(30),
        || {
            let (c1, addr) = (c1.clone(), addr.clone());
            async move {
                let mut any = false;
                for n in ["rt/0", "rt/1", "rt/2", "rt/3", "resumed"] {
                    if let Ok(map) = c1.locate(n, None).await {
                        any |= map.values().any(|a| *a == addr);
                    }
                }
                any
            }
        },
    )
    .await;
    for (name, body) in &stored {
        assert_eq!(&c2.get(name, None).await.unwrap(), body);
    }

    // Broker restart: the cluster serves again within 30 s, no server restarted.
    let _restart = StartAppOnDrop;
    assert!(rabbitmqctl(&["stop_app"]));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(restart_broker_app(), "rabbitmqctl start_app");
    let took = wait_for(
        "writes after the broker came back",
        Duration::from_secs(30),
        || {
            let c1 = c1.clone();
            async move {
                c1.put_bytes(
                    &format!("after-broker-{}", Instant::now().elapsed().as_nanos()),
                    data(777, 11),
                    &attrs(),
                )
                .await
                .is_ok()
            }
        },
    )
    .await;
    eprintln!("broker restarted: cluster writes again after {took:?}");
    // Past the heartbeat expiry, writes still work only if heartbeats resumed over the
    // reconnected broker.
    tokio::time::sleep(Duration::from_secs(17)).await;
    assert!(
        env.live(&u1).await >= 6,
        "heartbeats resumed after the broker restart"
    );
    c2.put_bytes("after-expiry", data(4321, 12), &attrs())
        .await
        .expect("writes after the expiry window");
    for (name, body) in &stored {
        assert_eq!(&c2.get(name, None).await.unwrap(), body);
    }

    // One client of both API servers (`URL,URL`): kill -9 of one under a stream of writes
    // and reads fails no operation, and loses nothing (issue 15).
    let both = env.client(&format!("{u1},{u2}"));
    let worker = {
        let both = both.clone();
        tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..60u64 {
                let name = format!("failover/{i}");
                let body = data(20_000 + i as usize * 1000, 100 + i);
                both.put_bytes(&name, body.clone(), &attrs())
                    .await
                    .map_err(|e| format!("PUT {name}: {e}"))?;
                let got = both
                    .get(&name, None)
                    .await
                    .map_err(|e| format!("GET {name}: {e}"))?;
                if got != body {
                    return Err(format!("{name}: wrong bytes"));
                }
                written.push(name);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok::<_, String>(written)
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(api1.take()); // SIGKILL, under load
    let written = worker
        .await
        .unwrap()
        .expect("no operation fails when one of two API servers dies");
    assert_eq!(written.len(), 60);
    for name in &written {
        assert!(c2.head(name, None).await.is_ok(), "{name} is kept");
    }
    drop(datas);
    drop(es);
}
