//! The contract suite against a real Elasticsearch, when `ES_SERVER` is set (for example
//! `ES_SERVER=http://127.0.0.1:9200 cargo test -p dos-metadata --test elastic_real`). Each store
//! gets its own index prefix, and the indices are deleted afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use dos_metadata::elastic::ElasticStore;
use dos_metadata::{MetadataStore, contract};
use dos_protocol::ObjectName;

fn server() -> Option<String> {
    match std::env::var("ES_SERVER") {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            eprintln!(
                "note: ES_SERVER is not set; skipping the tests against a real Elasticsearch"
            );
            None
        }
    }
}

fn run_prefix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("dostest-{}-{nanos}-", std::process::id())
}

/// Deletes the indices of a test store (exact names: wildcard deletes are often disabled).
async fn delete_indices(url: &str, names: &[String]) {
    use elasticsearch::Elasticsearch;
    use elasticsearch::http::transport::Transport;
    use elasticsearch::indices::IndicesDeleteParts;
    let client = Elasticsearch::new(Transport::single_node(url).unwrap());
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    match client
        .indices()
        .delete(IndicesDeleteParts::Index(&names))
        .send()
        .await
    {
        Ok(r) if r.status_code().is_success() => {}
        other => eprintln!("note: could not delete test indices {names:?}: {other:?}"),
    }
}

#[tokio::test]
async fn contract_on_real_elasticsearch() {
    let Some(url) = server() else { return };
    let base = run_prefix();
    let made: Arc<Mutex<Vec<String>>> = Arc::default();
    let counter = std::sync::atomic::AtomicU32::new(0);
    contract::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (url, base, made) = (url.clone(), base.clone(), made.clone());
        async move {
            let store = ElasticStore::connect_with_prefix(&url, &format!("{base}{n}-")).unwrap();
            made.lock()
                .unwrap()
                .extend(store.index_names().iter().map(|s| s.to_string()));
            let done = store.create_indices().await.unwrap();
            assert!(
                done.iter().all(|l| l.starts_with("created index")),
                "{done:?}"
            );
            store
        }
    })
    .await;
    let names = made.lock().unwrap().clone();
    delete_indices(&url, &names).await;
}

#[tokio::test]
async fn tricky_names_on_real_elasticsearch() {
    let Some(url) = server() else { return };
    let store =
        ElasticStore::connect_with_prefix(&url, &format!("{}names-", run_prefix())).unwrap();
    store.create_indices().await.unwrap();
    let names = [
        "a",
        "a*",
        "a?",
        "*",
        "a:b",
        "name:a",
        "a/b",
        "a b",
        "a%2Fb",
        "(a OR b)",
        "#h",
        "x/ünïcødé/日本語",
        &"é".repeat(500),
    ];
    for (i, n) in names.iter().enumerate() {
        let on = ObjectName::new(*n).unwrap();
        for _ in 0..=(i % 2) {
            contract::put(&store, &on, n.as_bytes()).await;
        }
    }
    for (i, n) in names.iter().enumerate() {
        let on = ObjectName::new(*n).unwrap();
        let latest = store.get_version(&on, None).await.unwrap().unwrap();
        assert_eq!(latest.name, on);
        assert_eq!(latest.version, (i % 2) as u64 + 1, "{n}");
    }
    assert!(
        store
            .get_version(&ObjectName::new("b*").unwrap(), None)
            .await
            .unwrap()
            .is_none()
    );
    let names: Vec<String> = store.index_names().iter().map(|s| s.to_string()).collect();
    delete_indices(&url, &names).await;
}
