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
    locate_finds_holders(&factory().await).await;
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
