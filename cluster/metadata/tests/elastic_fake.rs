//! The Elasticsearch engine against the in-test fake server.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;

use axum::http::Method;
use common::fake_es::FakeEs;
use dos_metadata::elastic::ElasticStore;
use dos_metadata::{ListQuery, MetadataError, MetadataStore, NewVersion, VersionsFrom, contract};
use dos_protocol::{ContentHash, EntryKind, ObjectName};
use serde_json::json;

fn name(s: &str) -> ObjectName {
    ObjectName::new(s).unwrap()
}

/// A fresh fake with the indices created, and a store on it.
async fn fresh() -> (FakeEs, ElasticStore) {
    let fake = FakeEs::start().await;
    let store = ElasticStore::connect(&fake.url).unwrap();
    store.create_indices().await.unwrap();
    (fake, store)
}

fn unavailable<T: std::fmt::Debug>(r: Result<T, MetadataError>) -> String {
    match r {
        Err(MetadataError::Unavailable(m)) => m,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn contract_on_fake() {
    contract::run_all(|| async {
        // The fake keeps serving after its handle is dropped, until the test's runtime ends.
        let (_fake, store) = fresh().await;
        store
    })
    .await;
}

#[tokio::test]
async fn contract_with_prefix_and_wait_for_refresh() {
    // The fake is immediately consistent, so this only checks that the other options build
    // valid requests.
    let fake = FakeEs::start().await;
    let url = fake.url.clone();
    let counter = std::sync::atomic::AtomicU32::new(0);
    contract::run_all(|| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let url = url.clone();
        async move {
            let store = ElasticStore::connect_with_options(
                &url,
                dos_metadata::elastic::ElasticOptions {
                    index_prefix: format!("run{n}-"),
                    write_refresh: dos_metadata::elastic::WriteRefresh::WaitFor,
                    ..Default::default()
                },
            )
            .unwrap();
            store.create_indices().await.unwrap();
            store
        }
    })
    .await;
    let requests = fake.requests();
    assert!(requests.iter().any(|r| r.contains("refresh=wait_for")));
    assert!(requests.iter().any(|r| r.starts_with("PUT /run5-metadata")));
}

#[tokio::test]
async fn create_indices_is_idempotent() {
    let fake = FakeEs::start().await;
    let store = ElasticStore::connect_with_prefix(&fake.url, "t-").unwrap();
    assert_eq!(store.index_names(), ["t-metadata", "t-heads", "t-contents"]);
    assert_eq!(
        store.create_indices().await.unwrap(),
        vec![
            "created index t-metadata",
            "created index t-heads",
            "created index t-contents"
        ]
    );
    assert_eq!(
        store.create_indices().await.unwrap(),
        vec![
            "index t-metadata already exists",
            "index t-heads already exists",
            "index t-contents already exists"
        ]
    );
    store.check_indices().await.unwrap();
}

/// A contents index made before block hashes were recorded is refused until setup adds the
/// field; its records then read with no block hashes, and new ones keep theirs.
#[tokio::test]
async fn setup_adds_the_fields_an_older_index_lacks() {
    let fake = FakeEs::start().await;
    let store = ElasticStore::connect(&fake.url).unwrap();
    store.create_indices().await.unwrap();
    fake.create_index_raw(
        "contents",
        json!({
            "hash": { "type": "keyword" },
            "size": { "type": "long" },
            "placement": { "type": "keyword" },
            "touched": { "type": "long" },
        }),
    );
    let store = ElasticStore::connect(&fake.url).unwrap();
    match store.check_indices().await {
        Err(MetadataError::Corrupt(m)) => assert!(m.contains("dos-server setup"), "{m}"),
        other => panic!("{other:?}"),
    }
    let lines = store.create_indices().await.unwrap();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("contents gained fields blake3_blocks")),
        "{lines:?}"
    );
    store.check_indices().await.unwrap();
    let rec = dos_metadata::ContentRecord {
        hash: ContentHash::of(b"c"),
        size: 3 << 20,
        placement: vec![dos_protocol::ServerId("s".into())],
        blocks: dos_protocol::BlockHashes::new(vec![ContentHash::of(b"b"); 3]),
    };
    store.put_content(&rec).await.unwrap();
    assert_eq!(store.get_content(&rec.hash).await.unwrap(), Some(rec));
}

#[tokio::test]
async fn an_index_with_the_original_mapping_is_refused() {
    let fake = FakeEs::start().await;
    // The original system's mapping: a 32-bit size.
    fake.create_index_raw(
        "metadata",
        json!({
            "name": { "type": "keyword" },
            "version": { "type": "integer" },
            "size": { "type": "integer" },
            "hash": { "type": "keyword" },
        }),
    );
    let store = ElasticStore::connect(&fake.url).unwrap();
    match store.create_indices().await {
        Err(MetadataError::Corrupt(m)) => assert!(m.contains("metadata"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        store.get_version(&name("a"), None).await,
        Err(MetadataError::Corrupt(_))
    ));
}

#[tokio::test]
async fn missing_indices_are_unavailable_not_empty() {
    let fake = FakeEs::start().await;
    let store = ElasticStore::connect(&fake.url).unwrap();
    let m = unavailable(store.get_version(&name("a"), None).await);
    assert!(m.contains("dos-server setup"), "{m}");
    unavailable(
        store
            .list(&ListQuery {
                limit: 10,
                ..Default::default()
            })
            .await,
    );
    unavailable(store.list_versions(&VersionsFrom::All(None), 10).await);
    // Nothing was written (no auto-created index).
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.contains("_create") || r.contains("_doc"))
    );
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let store = ElasticStore::connect(&format!("http://{addr}")).unwrap();
    let a = name("a");
    unavailable(store.get_version(&a, None).await);
    unavailable(store.get_version(&a, Some(1)).await);
    unavailable(store.add_version(&a, NewVersion::delete_marker(0)).await);
    unavailable(
        store
            .list(&ListQuery {
                limit: 10,
                ..Default::default()
            })
            .await,
    );
    unavailable(store.list_versions(&VersionsFrom::Name(a, 0), 10).await);
    unavailable(store.get_content(&ContentHash::of(b"x")).await);
    unavailable(store.create_indices().await);
}

#[tokio::test]
async fn server_errors_are_unavailable_never_not_found() {
    let (fake, store) = fresh().await;
    let a = name("a");
    contract::put(&store, &a, b"x").await;
    fake.fail_when(|_, _| Some(503));
    unavailable(store.get_version(&a, None).await);
    unavailable(store.get_version(&name("never"), None).await);
    unavailable(store.get_version(&a, Some(1)).await);
    unavailable(store.get_content(&ContentHash::of(b"x")).await);
    unavailable(
        store
            .list(&ListQuery {
                limit: 10,
                ..Default::default()
            })
            .await,
    );
    unavailable(
        store
            .list_versions(&VersionsFrom::Name(a.clone(), 0), 10)
            .await,
    );
    fake.fail_when(|_, _| Some(500));
    unavailable(store.add_version(&a, NewVersion::delete_marker(0)).await);
    // A 404 that is not a document's `found: false` (here: a proxy or a missing index) is
    // not "not found" either.
    fake.fail_when(|_, _| Some(404));
    unavailable(store.get_version(&a, Some(1)).await);
    fake.stop_failing();
    assert_eq!(
        store.get_version(&a, None).await.unwrap().unwrap().version,
        1
    );
}

const TRICKY: &[&str] = &[
    "a",
    "a*",
    "a?",
    "*",
    "?",
    "a:b",
    "name:a",
    "a/b",
    "a b",
    "a%2Fb",
    "a+b",
    "a_1",
    "a_1_2",
    "#hash",
    "x/ünïcødé/日本語 ファイル",
    "q=name:a&size=1",
    "(a OR b)",
    "a\\b",
    "\"quoted\"",
    "emoji/😀",
];

#[tokio::test]
async fn tricky_names_round_trip_and_never_match_each_other() {
    let (fake, store) = fresh().await;
    let long = format!("long/{}", "é".repeat(500)); // 1005 bytes: a hashed id
    let long2 = format!("long/{}x", "é".repeat(499));
    let mut names: Vec<String> = TRICKY.iter().map(|s| s.to_string()).collect();
    names.push(long.clone());
    names.push(long2.clone());
    names.push(format!("#{}", &long[1..]));
    for (i, n) in names.iter().enumerate() {
        let n = name(n);
        // A different number of versions per name, so a mix-up shows.
        for j in 0..=(i % 3) {
            contract::put(&store, &n, format!("{n}#{j}").as_bytes()).await;
        }
    }
    for (i, n) in names.iter().enumerate() {
        let on = name(n);
        let last = (i % 3) as u64 + 1;
        let latest = store.get_version(&on, None).await.unwrap().unwrap();
        assert_eq!(latest.name, on);
        assert_eq!(latest.version, last, "{n}");
        assert_eq!(
            latest.hash,
            Some(ContentHash::of(format!("{n}#{}", last - 1).as_bytes()))
        );
        let first = store.get_version(&on, Some(1)).await.unwrap().unwrap();
        assert_eq!(
            first.hash,
            Some(ContentHash::of(format!("{n}#0").as_bytes()))
        );
        assert_eq!(store.get_version(&on, Some(last + 1)).await.unwrap(), None);
        let versions = store
            .list_versions(&VersionsFrom::Name(on.clone(), 0), 100)
            .await
            .unwrap();
        assert_eq!(versions.len() as u64, last, "{n}");
        assert!(versions.iter().all(|v| v.name == on), "{n}: {versions:?}");
    }
    // Names that were never written but look like patterns over the ones that were.
    for n in ["a**", "b*", "a?c", "a/", "na", "a b c", "*a", "a_"] {
        if let Ok(on) = ObjectName::new(n) {
            assert_eq!(store.get_version(&on, None).await.unwrap(), None, "{n}");
            assert!(
                store
                    .list_versions(&VersionsFrom::Name(on, 0), 10)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }
    // A flat listing has every name exactly once, in byte order.
    let page = store
        .list(&ListQuery {
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    let listed: Vec<String> = page
        .entries
        .iter()
        .map(|e| e.name.as_str().to_string())
        .collect();
    let mut expected = names.clone();
    expected.sort();
    assert_eq!(listed, expected);
    // Prefix listings treat `*` and `?` literally.
    let star = store
        .list(&ListQuery {
            prefix: "a*".into(),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        star.entries
            .iter()
            .map(|e| e.name.as_str())
            .collect::<Vec<_>>(),
        vec!["a*"]
    );
    // Every version of every name, paged two at a time.
    let mut all = Vec::new();
    let mut from = VersionsFrom::All(None);
    loop {
        let page = store.list_versions(&from, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        from = VersionsFrom::All(Some((last.name.clone(), last.version)));
        all.extend(page.into_iter().map(|v| (v.name.into_string(), v.version)));
    }
    let distinct: BTreeSet<_> = all.iter().cloned().collect();
    assert_eq!(distinct.len(), all.len());
    let expected_total: usize = (0..names.len()).map(|i| i % 3 + 1).sum();
    assert_eq!(all.len(), expected_total);

    // Names only ever went into document-id paths (percent-encoded) or JSON bodies.
    for r in fake.requests() {
        let (_, query) = r.split_once('?').unwrap_or((&r, ""));
        for param in query.split('&').filter(|p| !p.is_empty()) {
            let key = param.split('=').next().unwrap();
            assert!(
                matches!(
                    key,
                    "refresh" | "if_seq_no" | "if_primary_term" | "allow_partial_search_results"
                ),
                "unexpected query parameter in {r}"
            );
        }
        assert!(!r.contains(' ') || r.matches(' ').count() == 1, "{r}");
    }
    // Ids: `<name>_<version>`, or a hash key for the long and '#' names.
    let ids = fake.doc_ids("metadata");
    assert!(ids.contains(&"a*_1".to_string()));
    assert!(ids.contains(&"x/ünïcødé/日本語 ファイル_1".to_string()));
    assert!(ids.iter().all(|id| id.len() <= 512));
    assert!(!ids.iter().any(|id| id.starts_with("#hash")));
}

#[tokio::test]
async fn an_interrupted_write_is_found_and_the_head_repaired() {
    let (fake, store) = fresh().await;
    let a = name("dir/a");
    assert_eq!(contract::put(&store, &a, b"one").await, 1);
    // The version write succeeds, the head update fails.
    fake.fail_when(|method, path| {
        (method != Method::GET && path.starts_with("/heads/")).then_some(503)
    });
    unavailable(
        store
            .add_version(
                &a,
                NewVersion {
                    size: 3,
                    hash: Some(ContentHash::of(b"two")),
                    mtime_ns: 5,
                    mode: 0o600,
                    kind: EntryKind::File,
                    posix: Default::default(),
                    ctime_ns: 5,
                },
            )
            .await,
    );
    fake.stop_failing();
    // Another writer that died after its version write: version 3 exists without a head.
    fake.put_doc_raw(
        "metadata",
        "dir/a_3",
        json!({
            "name": "dir/a", "version": 3, "size": 5,
            "hash": ContentHash::of(b"three").to_base64(),
            "mtime": 7, "mode": 420, "kind": "file",
        }),
    );
    let latest = store.get_version(&a, None).await.unwrap().unwrap();
    assert_eq!(latest.version, 3);
    assert_eq!(latest.hash, Some(ContentHash::of(b"three")));
    // The head was repaired, so listings show version 3 too.
    let page = store
        .list(&ListQuery {
            prefix: "dir/".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].version, 3);
    assert_eq!(contract::put(&store, &a, b"four").await, 4);
    let versions = store
        .list_versions(&VersionsFrom::Name(a.clone(), 0), 10)
        .await
        .unwrap();
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    // The same for a name whose very first head write failed.
    let b = name("b");
    fake.fail_when(|method, path| {
        (method != Method::GET && path.starts_with("/heads/")).then_some(503)
    });
    unavailable(store.add_version(&b, NewVersion::delete_marker(1)).await);
    fake.stop_failing();
    let latest = store.get_version(&b, None).await.unwrap().unwrap();
    assert_eq!(latest.version, 1);
    assert!(latest.is_delete_marker());
    assert_eq!(contract::put(&store, &b, b"x").await, 2);
}

#[tokio::test]
async fn out_of_range_values_are_bad_requests() {
    let (_fake, store) = fresh().await;
    let r = store
        .add_version(
            &name("huge"),
            NewVersion {
                size: u64::MAX,
                hash: Some(ContentHash::of(b"x")),
                mtime_ns: 0,
                mode: 0o644,
                kind: EntryKind::File,
                posix: Default::default(),
                ctime_ns: 0,
            },
        )
        .await;
    assert!(matches!(r, Err(MetadataError::BadRequest(_))), "{r:?}");
    assert_eq!(store.get_version(&name("huge"), None).await.unwrap(), None);
    assert!(matches!(
        store.get_version(&name("a"), Some(u64::MAX)).await,
        Err(MetadataError::BadRequest(_))
    ));
    assert_eq!(store.get_version(&name("a"), Some(0)).await.unwrap(), None);
}

#[tokio::test]
async fn listing_pages_without_a_result_window() {
    // More versions and names than one search page, walked with search_after.
    let (_fake, store) = fresh().await;
    for i in 0..30 {
        contract::put(&store, &name(&format!("d/{i:03}")), b"x").await;
    }
    let n = name("many");
    for i in 0..25 {
        contract::put(&store, &n, format!("{i}").as_bytes()).await;
    }
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = store
            .list_versions(&VersionsFrom::Name(n.clone(), after), 4)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = last.version;
        got.extend(page.iter().map(|v| v.version));
    }
    assert_eq!(got, (1..=25).collect::<Vec<u64>>());
    let mut keys = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(&ListQuery {
                prefix: "d/".into(),
                delimiter: Some('/'),
                cursor: cursor.clone(),
                limit: 7,
                at: None,
            })
            .await
            .unwrap();
        keys.extend(page.entries.iter().map(|e| e.name.as_str().to_string()));
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(
        keys,
        (0..30).map(|i| format!("d/{i:03}")).collect::<Vec<_>>()
    );
    assert!(matches!(
        store
            .list(&ListQuery {
                delimiter: Some('é'),
                limit: 1,
                ..Default::default()
            })
            .await,
        Err(MetadataError::BadRequest(_))
    ));
}

#[tokio::test]
async fn the_fake_refuses_what_it_does_not_know() {
    // The engine must not lean on fake behaviour: unknown query shapes and parameters are
    // refused, and strict mappings are enforced.
    use elasticsearch::http::transport::Transport;
    use elasticsearch::{Elasticsearch, IndexParts, SearchParts};
    let (fake, _store) = fresh().await;
    let client = Elasticsearch::new(Transport::single_node(&fake.url).unwrap());
    let status = |r: elasticsearch::http::response::Response| r.status_code().as_u16();
    let r = client
        .search(SearchParts::Index(&["metadata"]))
        .body(json!({ "query": { "wildcard": { "name": "a*" } } }))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 400);
    let r = client
        .search(SearchParts::Index(&["metadata"]))
        .q("name:a")
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 400);
    let r = client
        .search(SearchParts::Index(&["metadata"]))
        .body(json!({ "from": 10, "size": 10 }))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 400);
    let r = client
        .index(IndexParts::IndexId("metadata", "x_1"))
        .body(json!({ "name": "x", "size": u64::MAX }))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 400);
    let r = client
        .index(IndexParts::IndexId("metadata", "x_1"))
        .body(json!({ "name": "x", "surprise": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 400);
    let r = client
        .index(IndexParts::IndexId("nosuchindex", "x_1"))
        .body(json!({ "name": "x" }))
        .send()
        .await
        .unwrap();
    assert_eq!(status(r), 404);
}

#[tokio::test]
async fn requests_of_one_write_and_one_read() {
    let (fake, store) = fresh().await;
    let n = name("dir/a b*");
    // The mappings are checked once, before the first use (here by `check_indices`).
    store.check_indices().await.unwrap();
    let before = fake.requests().len();
    contract::put(&store, &n, b"x").await;
    let latest = store.get_version(&n, None).await.unwrap().unwrap();
    assert_eq!(latest.version, 1);
    let requests = fake.requests()[before..].to_vec();
    assert_eq!(
        requests,
        vec![
            // add_version: head, create-only version write, head create.
            "GET /heads/_doc/dir%2Fa%20b*",
            "POST /metadata/_create/dir%2Fa%20b*_1?refresh=true",
            "POST /heads/_create/dir%2Fa%20b*?refresh=true",
            // latest: head, then the probe for a version past it.
            "GET /heads/_doc/dir%2Fa%20b*",
            "GET /metadata/_doc/dir%2Fa%20b*_2",
        ],
        "{requests:#?}"
    );
}

/// A folder of 10,000 names listed at a moment is a few searches (pages of 1,000), not one
/// per name; names deleted or made after the moment change nothing.
#[tokio::test]
async fn listing_10000_names_at_a_moment_is_a_few_searches() {
    let (fake, store) = fresh().await;
    let store = std::sync::Arc::new(store);
    let version = |ctime: i64, hash: Option<ContentHash>| NewVersion {
        size: u64::from(hash.is_some()),
        hash,
        mtime_ns: ctime,
        mode: 0o644,
        kind: EntryKind::File,
        posix: Default::default(),
        ctime_ns: ctime,
    };
    let n = 10_000;
    let mut tasks = Vec::new();
    for w in 0..16 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(16) {
                let h = Some(ContentHash::of(b"x"));
                store
                    .add_version(&name(&format!("big/f{i:05}")), version(10, h))
                    .await
                    .unwrap();
                if i % 100 == 0 {
                    // Deleted after the moment.
                    store
                        .add_version(&name(&format!("big/f{i:05}")), version(30, None))
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let searches = || {
        fake.requests()
            .iter()
            .filter(|r| r.contains("_search"))
            .count()
    };
    let before = searches();
    let mut listed = 0;
    let mut cursor = None;
    let mut pages = 0;
    loop {
        let page = store
            .list(&ListQuery {
                prefix: "big/".into(),
                delimiter: Some('/'),
                cursor: cursor.clone(),
                limit: 1000,
                at: Some(20),
            })
            .await
            .unwrap();
        listed += page.entries.len();
        pages += 1;
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let used = searches() - before;
    eprintln!("{listed} names at a moment: {pages} pages, {used} searches");
    assert_eq!(listed, n);
    assert!(used <= 2 * pages, "{used} searches for {pages} pages");
}
