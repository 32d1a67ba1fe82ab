//! The object-store contract (`dos_store::contract`) on the real store, through both
//! implementations a client can use: over HTTP (`dos_client::Client` against the embedded
//! cluster's REST listener) and in process (`dos_api_server::InProcessStore`, the embedded
//! default of `dosfs mount`), each on both shard paths between the API server and its data
//! servers. The memory store runs the same bodies in `dos-store`'s own tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;

use dos_server::local::{LocalCluster, ShardPath};
use dos_store::ObjectStore;

/// Keeps the cluster (and its folder) alive for the test.
struct Guard(Option<LocalCluster>, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            // Dropped at the end of a test: stop the servers on a runtime of their own.
            std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Runtime::new() {
                    rt.block_on(c.shutdown());
                }
            })
            .join()
            .ok();
        }
    }
}

async fn cluster(path: ShardPath) -> (LocalCluster, dos_client::Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let (cluster, client) =
        common::start_with(&dir.path().join("root"), |c| c.shard_path = path).await;
    (cluster, client, dir)
}

mod http_client_in_process_shards {
    use super::*;
    async fn setup() -> (Arc<dyn ObjectStore>, Guard) {
        let (c, client, dir) = cluster(ShardPath::InProcess).await;
        (Arc::new(client), Guard(Some(c), dir))
    }
    dos_store::object_store_contract!(setup);
}

mod in_process_store_in_process_shards {
    use super::*;
    async fn setup() -> (Arc<dyn ObjectStore>, Guard) {
        let (c, _client, dir) = cluster(ShardPath::InProcess).await;
        (Arc::new(c.store()), Guard(Some(c), dir))
    }
    dos_store::object_store_contract!(setup);
}

mod http_client_http_shards {
    use super::*;
    async fn setup() -> (Arc<dyn ObjectStore>, Guard) {
        let (c, client, dir) = cluster(ShardPath::Http).await;
        (Arc::new(client), Guard(Some(c), dir))
    }
    dos_store::object_store_contract!(setup);
}

mod in_process_store_http_shards {
    use super::*;
    async fn setup() -> (Arc<dyn ObjectStore>, Guard) {
        let (c, _client, dir) = cluster(ShardPath::Http).await;
        (Arc::new(c.store()), Guard(Some(c), dir))
    }
    dos_store::object_store_contract!(setup);
}
