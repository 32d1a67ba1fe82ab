//! A client of several API servers (`URL,URL,…`, what `dosfs mount --api` takes): requests
//! go to the servers in turn, one that cannot be reached is passed over, and nothing fails
//! while one answers (issue 15). The process-level case, kill -9 of one of two API servers
//! under load, is in `cluster_mode.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::*;
use dos_client::Client;

/// A port nothing listens on (bound, then released).
fn dead_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_api_server_in_the_list_fails_no_request() {
    let (cluster, _, _dir) = start().await;
    let live = format!("http://{}", cluster.api_addr());
    let client = Client::builder(format!("{},{live}/", dead_url()))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    assert_eq!(client.base_urls().len(), 2);
    let started = Instant::now();
    for i in 0..20u64 {
        let name = format!("failover/{i}");
        let body = data(1000 + i as usize, i);
        client
            .put_bytes(&name, body.clone(), &attrs())
            .await
            .unwrap();
        assert_eq!(client.get(&name, None).await.unwrap(), body);
        assert_eq!(
            client.versions(&name).await.unwrap().len(),
            1,
            "one version, not two"
        );
    }
    // The dead server is passed over after its first refusal, not asked every time.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // A resumable upload made through the list finishes through it.
    let body = data(3 << 20, 77);
    let got = client
        .resumable_upload(
            "failover/big",
            dos_client::UploadSource::Bytes(body.clone().into()),
            1 << 20,
            &attrs(),
        )
        .await;
    assert!(got.is_ok(), "{got:?}");
    assert_eq!(client.get("failover/big", None).await.unwrap(), body);
    for bad in ["http://a,ftp://b", "http://ok,", "http://x?y"] {
        assert!(Client::new(bad).is_err(), "{bad} is refused");
    }
    cluster.shutdown().await;
}
