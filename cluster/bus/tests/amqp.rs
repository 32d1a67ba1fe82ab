//! The RabbitMQ engine against a real broker. Skipped unless `RABBITMQ_SERVER` holds the
//! broker's URL (e.g. `amqp://guest:guest@127.0.0.1:5672/%2f`); these tests never start it.
//!
//! Every test uses its own pair of exchanges so tests running at once (or other test binaries
//! on the same broker) do not hear each other. The broker-restart test also needs
//! `DOS_TEST_BROKER_RESTART=1` and should run alone (`--test-threads=1`): it stops the broker.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use dos_bus::amqp::{AmqpBus, AmqpConfig, declare_topology, declare_topology_with};
use dos_bus::{Bus, LocateResponder, Subscription};
use dos_protocol::{ContentHash, ServerId, ServerInfo};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

fn broker_url(test: &str) -> Option<String> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "dos_bus=info".into()),
        )
        .with_test_writer()
        .try_init();
    match std::env::var("RABBITMQ_SERVER") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!("note: RABBITMQ_SERVER is unset; skipping {test}");
            None
        }
    }
}

/// A config whose exchanges belong to this test alone.
fn isolated(url: &str) -> AmqpConfig {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut config = AmqpConfig::new(url);
    config.api_exchange = format!("dos-test-{}-apiServers", &tag[..12]);
    config.data_exchange = format!("dos-test-{}-dataServers", &tag[..12]);
    config.changes_exchange = format!("dos-test-{}-dosChanges", &tag[..12]);
    // As in a cluster: every message sealed with the cluster secret.
    config.secret = Some(SECRET.to_vec());
    config
}

const SECRET: &[u8] = b"the cluster secret of these tests";

/// Removes a test's exchanges (they are durable, so they would outlive the test).
async fn delete_exchanges(config: &AmqpConfig) {
    let Ok(conn) = Connection::connect(&config.url, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = conn.create_channel().await {
        for name in [
            &config.api_exchange,
            &config.data_exchange,
            &config.changes_exchange,
        ] {
            let _ = channel
                .exchange_delete(name.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
    }
    let _ = conn.close(200, "OK".into()).await;
}

fn server(name: &str, port: u16) -> ServerInfo {
    ServerInfo {
        id: ServerId(name.into()),
        addr: format!("127.0.0.1:{port}"),
    }
}

struct Holds(ContentHash, Vec<u8>);

impl LocateResponder for Holds {
    fn shards_of(&self, hash: &ContentHash) -> Vec<u8> {
        if *hash == self.0 {
            self.1.clone()
        } else {
            vec![]
        }
    }
}

/// A consumer of everything published to `exchange`, on a queue of its own (what anyone
/// with access to the broker can set up).
async fn listen_to(channel: &lapin::Channel, exchange: &str) -> lapin::Consumer {
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
}

async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract() {
    let Some(url) = broker_url("contract") else {
        return;
    };
    let config = isolated(&url);
    dos_bus::contract::run_all(|| {
        let config = config.clone();
        async move { AmqpBus::connect(config).await.unwrap() }
    })
    .await;
    delete_exchanges(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declare_topology_is_idempotent() {
    let Some(url) = broker_url("declare_topology_is_idempotent") else {
        return;
    };
    declare_topology(&url).await.unwrap();
    declare_topology(&url).await.unwrap();
    let config = isolated(&url);
    declare_topology_with(&config).await.unwrap();
    declare_topology_with(&config).await.unwrap();
    // A bus connects fine to exchanges that already exist.
    let bus = AmqpBus::connect(config.clone()).await.unwrap();
    assert!(bus.is_connected());
    drop(bus);
    delete_exchanges(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locate_returns_once_every_live_server_answered() {
    let Some(url) = broker_url("locate_returns_once_every_live_server_answered") else {
        return;
    };
    let config = isolated(&url);
    let api = AmqpBus::connect(config.clone()).await.unwrap();
    let held = ContentHash::of(b"held by two");
    let nobody = ContentHash::of(b"held by nobody");
    let mut data = Vec::new();
    let mut subs: Vec<Subscription> = Vec::new();
    for i in 0..3u8 {
        let bus = AmqpBus::connect(config.clone()).await.unwrap();
        let me = server(&format!("fast-{i}"), 41000 + u16::from(i));
        let shards = if i == 2 { vec![] } else { vec![i, 3 + i] };
        subs.push(
            bus.serve_locate(me.clone(), Arc::new(Holds(held, shards)))
                .await
                .unwrap(),
        );
        bus.heartbeat(&me).await.unwrap();
        data.push(bus);
    }
    wait_for("three live servers", Duration::from_secs(5), || {
        api.live_servers().len() == 3
    })
    .await;

    let mut worst = Duration::ZERO;
    for round in 0..10 {
        for (hash, expect) in [(held, 2), (nobody, 0)] {
            let started = Instant::now();
            let replies = api.locate(&hash, Duration::from_secs(2)).await.unwrap();
            let took = started.elapsed();
            worst = worst.max(took);
            assert_eq!(replies.len(), expect, "round {round}: {replies:?}");
            assert!(
                took < Duration::from_millis(400),
                "round {round}: locate took {took:?} with every live server answering"
            );
        }
    }
    eprintln!("locate with 3 live responders: worst of 20 = {worst:?}");
    drop(subs);
    drop(data);
    drop(api);
    delete_exchanges(&config).await;
}

/// Publishes raw bodies to an exchange, bypassing the bus; the channel is in confirm mode, so
/// a publish the broker refused (closing the channel) fails here instead of passing silently.
async fn publish_raw(
    channel: &lapin::Channel,
    exchange: &str,
    body: &[u8],
    props: BasicProperties,
) {
    let confirmation = channel
        .basic_publish(
            exchange.into(),
            "".into(),
            BasicPublishOptions::default(),
            body,
            props,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(confirmation.is_ack(), "{confirmation:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dropped() {
    let Some(url) = broker_url("malformed_messages_are_dropped") else {
        return;
    };
    let config = isolated(&url);
    let api = AmqpBus::connect(config.clone()).await.unwrap();
    let data = AmqpBus::connect(config.clone()).await.unwrap();
    let me = server("sane", 42000);
    let h = ContentHash::of(b"still works");
    let _sub = data
        .serve_locate(me.clone(), Arc::new(Holds(h, vec![0, 1])))
        .await
        .unwrap();

    // A rogue "data server" that answers every locate with garbage, and with a well-formed
    // answer under a correlation id nobody asked for.
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let rogue = conn.create_channel().await.unwrap();
    let mut requests = listen_to(&rogue, &config.data_exchange).await;
    let rogue_pub = rogue.clone();
    let rogue_task = tokio::spawn(async move {
        while let Some(Ok(delivery)) = requests.next().await {
            let Some(reply_to) = delivery.properties.reply_to().clone() else {
                continue;
            };
            let correlation = delivery.properties.correlation_id().clone();
            let mut props = BasicProperties::default();
            if let Some(c) = correlation {
                props = props.with_correlation_id(c);
            }
            for body in [&b"not json"[..], b"{\"server\":1}", b"\xff\xfe"] {
                let _ = rogue_pub
                    .basic_publish(
                        "".into(),
                        reply_to.clone(),
                        BasicPublishOptions::default(),
                        body,
                        props.clone(),
                    )
                    .await;
            }
            let stray = serde_json::to_vec(&dos_protocol::LocateReply {
                server: server("stray", 1),
                shards: vec![9],
            })
            .unwrap();
            let _ = rogue_pub
                .basic_publish(
                    "".into(),
                    reply_to.clone(),
                    BasicPublishOptions::default(),
                    &stray,
                    BasicProperties::default().with_correlation_id("not-a-locate".into()),
                )
                .await;
        }
    });

    let raw = conn.create_channel().await.unwrap();
    raw.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    // Direct reply-to needs a consumer on the publishing channel.
    let _raw_replies = raw
        .basic_consume(
            "amq.rabbitmq.reply-to".into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let junk: [&[u8]; 7] = [
        b"garbage",
        b"\"a bare string\"",
        b"{\"id\":\"\",\"addr\":\"\"}",
        b"{\"id\":\"x\"}",
        b"\xff\xfe\x00",
        b"[1,2,3]",
        b"",
    ];
    for body in junk {
        publish_raw(&raw, &config.api_exchange, body, BasicProperties::default()).await;
        publish_raw(
            &raw,
            &config.data_exchange,
            body,
            BasicProperties::default(),
        )
        .await;
        publish_raw(
            &raw,
            &config.data_exchange,
            body,
            BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to".into()),
        )
        .await;
    }
    // Well-formed requests without a reply address, or with one that leads nowhere.
    let request = serde_json::to_vec(&h).unwrap();
    publish_raw(
        &raw,
        &config.data_exchange,
        &request,
        BasicProperties::default(),
    )
    .await;
    for reply_to in ["", "no-such-queue", "amq.rabbitmq.reply-to.bogus"] {
        publish_raw(
            &raw,
            &config.data_exchange,
            &request,
            BasicProperties::default()
                .with_reply_to(reply_to.into())
                .with_correlation_id("junk".into()),
        )
        .await;
    }

    data.heartbeat(&me).await.unwrap();
    wait_for("the sane server", Duration::from_secs(5), || {
        api.live_servers().contains(&me)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.live_servers(), vec![me.clone()], "junk became a server");

    for _ in 0..3 {
        let replies = api.locate(&h, Duration::from_secs(2)).await.unwrap();
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0].server, me);
        assert_eq!(replies[0].shards, vec![0, 1]);
    }
    assert!(api.is_connected() && data.is_connected());
    data.heartbeat(&me).await.unwrap();

    rogue_task.abort();
    let _ = conn.close(200, "OK".into()).await;
    drop((api, data));
    delete_exchanges(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_servers_expire_and_come_back() {
    let Some(url) = broker_url("silent_servers_expire_and_come_back") else {
        return;
    };
    let mut config = isolated(&url);
    config.heartbeat_expiry = Duration::from_secs(1);
    let api = AmqpBus::connect(config.clone()).await.unwrap();
    let data = AmqpBus::connect(config.clone()).await.unwrap();
    let me = server("expiring", 43000);
    let other = server("steady", 43001);

    data.heartbeat(&me).await.unwrap();
    data.heartbeat(&other).await.unwrap();
    wait_for("both live", Duration::from_secs(5), || {
        api.live_servers().len() == 2
    })
    .await;
    // `other` keeps beating, `me` falls silent.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1600) {
        data.heartbeat(&other).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(api.live_servers(), vec![other.clone()]);
    data.heartbeat(&me).await.unwrap();
    wait_for("the server to come back", Duration::from_secs(5), || {
        api.live_servers().contains(&me)
    })
    .await;
    drop((api, data));
    delete_exchanges(&config).await;
}

/// Restarts the broker's application when dropped, so a failed test does not leave it down.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .output();
    }
}

async fn rabbitmqctl(arg: &'static str) {
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("rabbitmqctl").arg(arg).output()
    })
    .await
    .unwrap()
    .unwrap();
    assert!(
        out.status.success(),
        "rabbitmqctl {arg}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_broker_restart() {
    let Some(url) = broker_url("survives_broker_restart") else {
        return;
    };
    if std::env::var("DOS_TEST_BROKER_RESTART").as_deref() != Ok("1") {
        eprintln!("note: DOS_TEST_BROKER_RESTART is not 1; skipping survives_broker_restart");
        return;
    }
    let config = isolated(&url);
    let api = AmqpBus::connect(config.clone()).await.unwrap();
    let data = AmqpBus::connect(config.clone()).await.unwrap();
    let me = server("restarted", 44000);
    let h = ContentHash::of(b"survives restart");
    let _sub = data
        .serve_locate(me.clone(), Arc::new(Holds(h, vec![2])))
        .await
        .unwrap();
    data.heartbeat(&me).await.unwrap();
    wait_for("live before restart", Duration::from_secs(5), || {
        !api.live_servers().is_empty()
    })
    .await;
    assert_eq!(
        api.locate(&h, Duration::from_secs(2)).await.unwrap().len(),
        1
    );

    let _restart = StartAppOnDrop;
    let stopped = Instant::now();
    rabbitmqctl("stop_app").await;
    eprintln!("stop_app took {:?}", stopped.elapsed());

    // While the broker is down, calls fail fast instead of hanging.
    wait_for("the bus to notice", Duration::from_secs(15), || {
        !data.is_connected() && !api.is_connected()
    })
    .await;
    let t = Instant::now();
    assert!(data.heartbeat(&me).await.is_err());
    assert!(api.locate(&h, Duration::from_secs(2)).await.is_err());
    let fail_fast = t.elapsed();
    assert!(fail_fast < Duration::from_millis(100), "{fail_fast:?}");
    eprintln!("heartbeat + locate while down failed in {fail_fast:?}");

    let restarted = Instant::now();
    rabbitmqctl("start_app").await;
    eprintln!("start_app took {:?}", restarted.elapsed());

    let recovered = Instant::now();
    loop {
        assert!(
            recovered.elapsed() < Duration::from_secs(30),
            "not recovered within 30 s after start_app"
        );
        if data.heartbeat(&me).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Ok(found) = api.locate(&h, Duration::from_millis(500)).await
                && found.len() == 1
                && found[0].server == me
                && found[0].shards == vec![2]
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "heartbeats and locate work again {:?} after start_app returned",
        recovered.elapsed()
    );
    assert!(api.live_servers().contains(&me));
    drop((api, data));
    delete_exchanges(&config).await;
}

/// An attacker who can publish to the broker (but lacks the cluster secret) forges
/// heartbeats (new ids, a real server's id at its own address, a valid-looking one sealed with
/// another secret), replays a captured real heartbeat, announces a non-`host:port` address
/// sealed with the right secret, and answers locates claiming a real server's id with more
/// shards. None of it changes the live set or a locate's answer, and every message is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_replayed_messages_change_nothing() {
    let Some(url) = broker_url("forged_and_replayed_messages_change_nothing") else {
        return;
    };
    let config = isolated(&url);
    let api = AmqpBus::connect(config.clone()).await.unwrap();
    let data = AmqpBus::connect(config.clone()).await.unwrap();
    let real = server("real", 42100);
    let h = ContentHash::of(b"held by the real server");
    let _sub = data
        .serve_locate(real.clone(), Arc::new(Holds(h, vec![1])))
        .await
        .unwrap();

    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap();
    let rogue = conn.create_channel().await.unwrap();
    // The attacker listens to both exchanges: it sees heartbeats (to replay them) and
    // locate requests (to answer them).
    let mut heartbeats = listen_to(&rogue, &config.api_exchange).await;
    let mut requests = listen_to(&rogue, &config.data_exchange).await;
    let rogue_pub = rogue.clone();
    let wrong = dos_bus::seal::Sealer::new(Some(b"not the cluster secret!!".to_vec()));
    let rogue_task = tokio::spawn(async move {
        while let Some(Ok(delivery)) = requests.next().await {
            let (Some(reply_to), Some(correlation)) = (
                delivery.properties.reply_to().clone(),
                delivery.properties.correlation_id().clone(),
            ) else {
                continue;
            };
            let lie = serde_json::to_vec(&dos_protocol::LocateReply {
                server: ServerInfo {
                    id: ServerId("real".into()),
                    addr: "198.18.0.66:80".into(),
                },
                shards: vec![0, 1, 2, 3, 4, 5],
            })
            .unwrap();
            let forged = wrong.seal(&format!("reply {}", correlation.as_str()), &lie);
            for body in [lie, forged] {
                let _ = rogue_pub
                    .basic_publish(
                        "".into(),
                        reply_to.clone(),
                        BasicPublishOptions::default(),
                        &body,
                        BasicProperties::default().with_correlation_id(correlation.clone()),
                    )
                    .await;
            }
        }
    });

    data.heartbeat(&real).await.unwrap();
    wait_for("the real server", Duration::from_secs(5), || {
        api.live_servers().contains(&real)
    })
    .await;
    let captured = tokio::time::timeout(Duration::from_secs(5), heartbeats.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap()
        .data;

    let raw = conn.create_channel().await.unwrap();
    raw.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let fake = |id: &str, addr: &str| {
        serde_json::to_vec(&ServerInfo {
            id: ServerId(id.into()),
            addr: addr.into(),
        })
        .unwrap()
    };
    let right = dos_bus::seal::Sealer::new(Some(SECRET.to_vec()));
    let wrong = dos_bus::seal::Sealer::new(Some(b"not the cluster secret!!".to_vec()));
    let forged: Vec<Vec<u8>> = vec![
        fake("fake-1", "198.18.0.66:80"),
        fake("real", "198.18.0.66:80"),
        wrong.seal("heartbeat", &fake("fake-2", "198.18.0.66:80")),
        wrong.seal("heartbeat", &fake("real", "198.18.0.66:80")),
        right.seal("locate x", &fake("fake-3", "198.18.0.66:80")),
        captured.clone(),
        captured,
        right.seal("heartbeat", &fake("fake-4", "198.18.0.66/x:80")),
        right.seal("heartbeat", &fake("fake-5", "http://198.18.0.66:80")),
    ];
    let before = api.rejected_messages();
    for body in &forged {
        publish_raw(&raw, &config.api_exchange, body, BasicProperties::default()).await;
    }
    wait_for(
        "every forged message counted",
        Duration::from_secs(5),
        || api.rejected_messages() >= before + forged.len() as u64,
    )
    .await;
    assert_eq!(api.rejected_messages(), before + forged.len() as u64);
    assert_eq!(
        api.live_servers(),
        vec![real.clone()],
        "a forged server is live"
    );

    // Locates: only the real server's sealed answer counts, at its heartbeat's address.
    for _ in 0..3 {
        let replies = api.locate(&h, Duration::from_secs(2)).await.unwrap();
        assert_eq!(replies.len(), 1, "{replies:?}");
        assert_eq!(replies[0].server, real);
        assert_eq!(replies[0].shards, vec![1]);
    }
    // The attacker's two answers to each of the three locates, counted as they arrive.
    wait_for("the forged answers counted", Duration::from_secs(5), || {
        api.rejected_messages() >= before + forged.len() as u64 + 6
    })
    .await;

    // A server without the secret is not heard at all.
    let mut open = config.clone();
    open.secret = None;
    let unsealed = AmqpBus::connect(open).await.unwrap();
    unsealed
        .heartbeat(&server("no-secret", 42101))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(api.live_servers(), vec![real.clone()]);

    rogue_task.abort();
    let _ = conn.close(200, "OK".into()).await;
    drop((api, data, unsealed));
    delete_exchanges(&config).await;
}
