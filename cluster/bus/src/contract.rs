//! The contract every [`Bus`] engine must pass, run from each engine's tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dos_protocol::{ContentHash, ServerId, ServerInfo};

use crate::{Bus, LocateResponder};

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

fn server(i: usize) -> ServerInfo {
    ServerInfo {
        id: ServerId(format!("contract-{i}")),
        addr: format!("127.0.0.1:{}", 40000 + i),
    }
}

/// Waits (bounded) until `cond` holds, for engines that deliver asynchronously.
async fn eventually<F: Fn() -> bool>(cond: F) -> bool {
    for _ in 0..100 {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

pub async fn run_all<B, F, Fut>(factory: F)
where
    B: Bus,
    F: Fn() -> Fut,
    Fut: Future<Output = B>,
{
    heartbeats_make_servers_live(&factory().await).await;
    heartbeats_carry_the_drain_mark(&factory().await).await;
    heartbeats_carry_what_servers_hold(&factory().await).await;
    locate_finds_holders(&factory().await).await;
    concurrent_locates_do_not_mix(&factory().await).await;
    dropped_subscription_stops_answering(&factory().await).await;
    changes_reach_subscribers(&factory().await).await;
}

/// A published change reaches every subscriber, in order.
pub async fn changes_reach_subscribers<B: Bus>(bus: &B) {
    use futures::StreamExt;
    let mut a = bus.changes();
    let mut b = bus.changes();
    let change = |v: u64| dos_protocol::Change {
        name: dos_protocol::ObjectName::new("contract/changed").unwrap(),
        version: v,
        kind: dos_protocol::EntryKind::File,
        deleted: v == 2,
    };
    // Engines that deliver through a broker may start with a `Missed` (they just connected).
    async fn next(s: &mut crate::ChangeStream) -> Option<Option<crate::ChangeEvent>> {
        let fut = async {
            loop {
                match s.next().await {
                    Some(crate::ChangeEvent::Missed) => continue,
                    other => return other,
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), fut).await.ok()
    }
    // A broker may need a moment before a new queue is bound.
    tokio::time::sleep(Duration::from_millis(200)).await;
    bus.publish_change(&change(1)).await.unwrap();
    bus.publish_change(&change(2)).await.unwrap();
    for s in [&mut a, &mut b] {
        for v in [1, 2] {
            assert_eq!(
                next(s).await.expect("a change arrives in time"),
                Some(crate::ChangeEvent::Changed(change(v)))
            );
        }
    }
}

pub async fn heartbeats_make_servers_live<B: Bus>(bus: &B) {
    for i in 0..3 {
        bus.heartbeat(&server(i)).await.unwrap();
    }
    assert!(
        eventually(|| bus.live_servers().len() >= 3).await,
        "three heartbeats should make three live servers"
    );
    let live = bus.live_servers();
    for i in 0..3 {
        assert!(live.contains(&server(i)));
    }
}

/// What a heartbeat says a server holds reaches the API side; a heartbeat without it keeps
/// the last figures heard.
pub async fn heartbeats_carry_what_servers_hold<B: Bus>(bus: &B) {
    let stats = dos_protocol::ServerStats {
        shards: 12,
        disk_used_bytes: 3 << 30,
        disk_free_bytes: 5 << 30,
    };
    bus.heartbeat(&server(0)).await.unwrap();
    bus.announce(&server(1), false, Some(stats)).await.unwrap();
    assert!(
        eventually(|| bus.server_stats() == vec![(server(1).id, stats)]).await,
        "the stats of the one server that sent them: {:?}",
        bus.server_stats()
    );
    bus.heartbeat(&server(1)).await.unwrap();
    let later = dos_protocol::ServerStats {
        shards: 13,
        ..stats
    };
    bus.announce(&server(0), false, Some(later)).await.unwrap();
    assert!(
        eventually(|| bus.server_stats() == vec![(server(0).id, later), (server(1).id, stats)])
            .await,
        "{:?}",
        bus.server_stats()
    );
}

/// A server that announces it is being drained is live and listed as draining, until a
/// heartbeat says otherwise; plain heartbeats say "in service".
pub async fn heartbeats_carry_the_drain_mark<B: Bus>(bus: &B) {
    bus.heartbeat(&server(0)).await.unwrap();
    bus.announce(&server(1), true, None).await.unwrap();
    assert!(
        eventually(|| bus.live_servers().len() >= 2 && !bus.draining_servers().is_empty()).await,
        "both servers live, one draining"
    );
    assert_eq!(bus.draining_servers(), vec![server(1).id]);
    bus.announce(&server(1), false, None).await.unwrap();
    bus.announce(&server(0), true, None).await.unwrap();
    assert!(
        eventually(|| bus.draining_servers() == vec![server(0).id]).await,
        "the marks follow the last heartbeats: {:?}",
        bus.draining_servers()
    );
    assert!(bus.live_servers().contains(&server(1)));
}

pub async fn locate_finds_holders<B: Bus>(bus: &B) {
    let h = ContentHash::of(b"located");
    let other = ContentHash::of(b"nobody has this");
    let mut subs = Vec::new();
    for i in 0..3 {
        bus.heartbeat(&server(i)).await.unwrap();
        let shards = if i == 2 { vec![] } else { vec![i as u8, 5] };
        subs.push(
            bus.serve_locate(server(i), Arc::new(Holds(h, shards)))
                .await
                .unwrap(),
        );
    }
    eventually(|| bus.live_servers().len() >= 3).await;
    let mut replies = bus.locate(&h, Duration::from_secs(2)).await.unwrap();
    replies.sort_by(|a, b| a.server.id.cmp(&b.server.id));
    assert_eq!(replies.len(), 2, "{replies:?}");
    assert_eq!(replies[0].server, server(0));
    assert_eq!(replies[0].shards, vec![0, 5]);
    assert_eq!(replies[1].shards, vec![1, 5]);
    assert!(
        bus.locate(&other, Duration::from_millis(500))
            .await
            .unwrap()
            .is_empty()
    );
    drop(subs);
}

/// Two locates in flight at once each get only the answers to their own hash.
pub async fn concurrent_locates_do_not_mix<B: Bus>(bus: &B) {
    let a = ContentHash::of(b"concurrent a");
    let b = ContentHash::of(b"concurrent b");
    let mut subs = Vec::new();
    for (i, hash, shards) in [(0, a, vec![1u8]), (1, b, vec![2u8, 3])] {
        bus.heartbeat(&server(i)).await.unwrap();
        subs.push(
            bus.serve_locate(server(i), Arc::new(Holds(hash, shards)))
                .await
                .unwrap(),
        );
    }
    eventually(|| bus.live_servers().len() >= 2).await;
    for _ in 0..5 {
        let (ra, rb) = tokio::join!(
            bus.locate(&a, Duration::from_secs(2)),
            bus.locate(&b, Duration::from_secs(2))
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert_eq!(ra.len(), 1, "{ra:?}");
        assert_eq!(ra[0].server, server(0));
        assert_eq!(ra[0].shards, vec![1]);
        assert_eq!(rb.len(), 1, "{rb:?}");
        assert_eq!(rb[0].server, server(1));
        assert_eq!(rb[0].shards, vec![2, 3]);
    }
    drop(subs);
}

/// Once its subscription is dropped, a responder no longer answers.
pub async fn dropped_subscription_stops_answering<B: Bus>(bus: &B) {
    let h = ContentHash::of(b"dropped subscription");
    bus.heartbeat(&server(0)).await.unwrap();
    let sub = bus
        .serve_locate(server(0), Arc::new(Holds(h, vec![4])))
        .await
        .unwrap();
    eventually(|| !bus.live_servers().is_empty()).await;
    let found = bus.locate(&h, Duration::from_secs(2)).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    drop(sub);
    let mut silent = false;
    for _ in 0..20 {
        if bus
            .locate(&h, Duration::from_millis(300))
            .await
            .unwrap()
            .is_empty()
        {
            silent = true;
            break;
        }
    }
    assert!(silent, "a dropped subscription still answers locates");
}
