//! The contract every [`MetadataStore`] engine must pass. Engines call [`run_all`] from their
//! tests with a factory that returns a fresh, empty store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;

use dos_protocol::{
    BLOCK_SIZE, BlockHashes, ContentHash, EntryKind, ObjectName, PosixAttrs, ServerId,
};

use crate::{ContentRecord, ListQuery, MetadataStore, NewVersion, PlacementMove, VersionsFrom};

fn name(s: &str) -> ObjectName {
    ObjectName::new(s).unwrap()
}

/// Adds a live version of `content` under `name`.
pub async fn put<S: MetadataStore>(store: &S, name: &ObjectName, content: &[u8]) -> u64 {
    store
        .add_version(
            name,
            NewVersion {
                size: content.len() as u64,
                hash: Some(ContentHash::of(content)),
                mtime_ns: 1_000,
                mode: 0o644,
                kind: EntryKind::File,
                posix: PosixAttrs::default(),
                ctime_ns: 1_001,
            },
        )
        .await
        .unwrap()
        .version
}

async fn delete<S: MetadataStore>(store: &S, name: &ObjectName) -> u64 {
    store
        .add_version(name, NewVersion::delete_marker(2_000))
        .await
        .unwrap()
        .version
}

/// Runs every contract case, each on a fresh store from `factory`.
pub async fn run_all<S, F, Fut>(factory: F)
where
    S: MetadataStore,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    versions_are_consecutive(&factory().await).await;
    delete_markers(&factory().await).await;
    versions_listing_pages(&factory().await).await;
    listing_groups_and_pages(&factory().await).await;
    contents_round_trip(&factory().await).await;
    placement_moves_are_conditional(&factory().await).await;
    content_and_version_together(&factory().await).await;
    known_content_versions(&factory().await).await;
    contents_are_enumerated(&factory().await).await;
    old_versions_can_be_deleted_never_the_latest(&factory().await).await;
    only_unused_untouched_contents_are_deleted(&factory().await).await;
    concurrent_writers_get_unique_versions(Arc::new(factory().await)).await;
    listing_at_a_moment(&factory().await).await;
    changes_newest_first(&factory().await).await;
}

/// Adds a version of `content` (`None`: a delete marker) made at `ctime`.
async fn put_at<S: MetadataStore>(store: &S, n: &str, content: Option<&[u8]>, ctime: i64) -> u64 {
    let new = match content {
        Some(c) => NewVersion {
            size: c.len() as u64,
            hash: Some(ContentHash::of(c)),
            mtime_ns: ctime - 1,
            mode: 0o640,
            kind: EntryKind::File,
            posix: PosixAttrs::default(),
            ctime_ns: ctime,
        },
        None => NewVersion::delete_marker(ctime),
    };
    store.add_version(&name(n), new).await.unwrap().version
}

/// The tree of the contract's time-travel cases: written at 10, changed at 20 and 30.
async fn history_tree<S: MetadataStore>(store: &S) {
    put_at(store, "d/a", Some(b"a1"), 10).await;
    put_at(store, "d/b", Some(b"b1"), 10).await;
    put_at(store, "d/sub/c", Some(b"c1"), 10).await;
    put_at(store, "top", Some(b"t1"), 10).await;
    put_at(store, "d/a", Some(b"a2"), 20).await;
    put_at(store, "d/b", None, 20).await;
    put_at(store, "d/new", Some(b"n1"), 20).await;
    put_at(store, "d/sub/c", None, 30).await;
    put_at(store, "d/b", Some(b"b3"), 30).await;
}

/// A listing at a moment shows each name's newest version made by then, leaves out names
/// deleted then or not yet made, groups and pages like the listing of now.
pub async fn listing_at_a_moment<S: MetadataStore>(store: &S) {
    history_tree(store).await;
    let q = |prefix: &str, at: Option<i64>, cursor: Option<String>, limit| ListQuery {
        prefix: prefix.into(),
        delimiter: Some('/'),
        cursor,
        limit,
        at,
    };
    let shown = |p: dos_protocol::ListPage| {
        let mut out: Vec<String> = p
            .entries
            .iter()
            .map(|e| format!("{}@{}", e.name, e.version))
            .collect();
        out.extend(p.prefixes);
        out
    };
    let at = |prefix: &'static str, t: i64| {
        let query = q(prefix, Some(t), None, 100);
        async move { shown(store.list(&query).await.unwrap()) }
    };
    assert!(at("", 5).await.is_empty(), "nothing was made by 5");
    assert_eq!(at("", 10).await, ["top@1", "d/"]);
    assert_eq!(at("d/", 10).await, ["d/a@1", "d/b@1", "d/sub/"]);
    assert_eq!(at("d/", 15).await, ["d/a@1", "d/b@1", "d/sub/"]);
    assert_eq!(at("d/", 20).await, ["d/a@2", "d/new@1", "d/sub/"]);
    assert_eq!(at("d/", 29).await, ["d/a@2", "d/new@1", "d/sub/"]);
    assert_eq!(at("d/", 30).await, ["d/a@2", "d/b@3", "d/new@1"]);
    assert_eq!(
        at("d/", i64::MAX).await,
        shown(store.list(&q("d/", None, None, 100)).await.unwrap()),
        "the end of time is now"
    );
    let page = store.list(&q("d/", Some(20), None, 100)).await.unwrap();
    let a = &page.entries[0];
    assert_eq!(
        (a.hash, a.mode, a.ctime_ns),
        (Some(ContentHash::of(b"a2")), 0o640, 20)
    );
    // Pages of one, resumed by cursor.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(&q("d/", Some(20), cursor.clone(), 1))
            .await
            .unwrap();
        let next = page.next_cursor.clone();
        seen.extend(shown(page));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["d/a@2", "d/new@1", "d/sub/"]);
    // A name with many versions, pages smaller than its history.
    for (i, t) in (40..45).enumerate() {
        put_at(store, "s/m", Some(format!("m{i}").as_bytes()), t).await;
    }
    put_at(store, "s/n", Some(b"n"), 40).await;
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = store
            .list(&q("s/", Some(42), cursor.clone(), 1))
            .await
            .unwrap();
        let next = page.next_cursor.clone();
        seen.extend(shown(page));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, ["s/m@3", "s/n@1"]);
    // Flat (no delimiter).
    let flat = store
        .list(&ListQuery {
            delimiter: None,
            ..q("d/", Some(10), None, 100)
        })
        .await
        .unwrap();
    assert_eq!(shown(flat), ["d/a@1", "d/b@1", "d/sub/c@1"]);
}

/// Changes under a prefix come newest first (by ctime, then name and version, descending),
/// delete markers included, from a moment on, in pages that resume after a cursor.
pub async fn changes_newest_first<S: MetadataStore>(store: &S) {
    history_tree(store).await;
    let all = |recs: Vec<dos_protocol::VersionRecord>| -> Vec<String> {
        recs.iter()
            .map(|r| format!("{}@{}:{}", r.name, r.version, r.ctime_ns))
            .collect()
    };
    let want = [
        "d/sub/c@2:30",
        "d/b@3:30",
        "d/new@1:20",
        "d/b@2:20",
        "d/a@2:20",
        "d/sub/c@1:10",
        "d/b@1:10",
        "d/a@1:10",
    ];
    let got = store.list_changes("d/", None, None, 100).await.unwrap();
    assert_eq!(all(got), want);
    let since = store.list_changes("d/", Some(20), None, 100).await.unwrap();
    assert_eq!(all(since), want[..5]);
    let top = store.list_changes("top", None, None, 100).await.unwrap();
    assert_eq!(all(top), ["top@1:10"]);
    let mut paged = Vec::new();
    let mut before: Option<dos_protocol::ChangeCursor> = None;
    loop {
        let page = store
            .list_changes("d/", None, before.as_ref(), 3)
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        before = Some(dos_protocol::ChangeCursor::of(last));
        paged.extend(all(page));
    }
    assert_eq!(paged, want);
    let everything = store.list_changes("", None, None, 100).await.unwrap();
    assert_eq!(everything.len(), 9);
}

pub async fn versions_are_consecutive<S: MetadataStore>(store: &S) {
    let a = name("dir/a");
    assert_eq!(store.get_version(&a, None).await.unwrap(), None);
    assert_eq!(put(store, &a, b"one").await, 1);
    assert_eq!(put(store, &a, b"two").await, 2);
    assert_eq!(put(store, &name("dir/b"), b"x").await, 1);
    let latest = store.get_version(&a, None).await.unwrap().unwrap();
    assert_eq!(latest.version, 2);
    assert_eq!(latest.hash, Some(ContentHash::of(b"two")));
    assert_eq!(latest.size, 3);
    assert_eq!(latest.mode, 0o644);
    assert_eq!(latest.mtime_ns, 1_000);
    assert_eq!(
        (latest.ctime_ns, latest.posix),
        (1_001, PosixAttrs::default())
    );
    let first = store.get_version(&a, Some(1)).await.unwrap().unwrap();
    assert_eq!(first.hash, Some(ContentHash::of(b"one")));
    assert_eq!(store.get_version(&a, Some(3)).await.unwrap(), None);
    // Sizes are 64-bit.
    let big = store
        .add_version(
            &name("big"),
            NewVersion {
                size: 5 << 30,
                hash: Some(ContentHash::of(b"big")),
                mtime_ns: 0,
                mode: 0o4600,
                kind: EntryKind::BlockDevice,
                // Owner, device number and times round-trip (u32::MAX: ids are unsigned).
                posix: PosixAttrs {
                    uid: Some(u32::MAX - 1),
                    gid: Some(0),
                    rdev: u32::MAX,
                    atime_ns: Some(-3),
                    // Link groups are u64 and kept bit for bit.
                    link: Some(u64::MAX - 5),
                },
                ctime_ns: 1_700_000_000_123_456_789,
            },
        )
        .await
        .unwrap();
    assert_eq!(
        store.get_version(&name("big"), None).await.unwrap(),
        Some(big)
    );
}

pub async fn delete_markers<S: MetadataStore>(store: &S) {
    let a = name("a");
    put(store, &a, b"one").await;
    assert_eq!(delete(store, &a).await, 2);
    let latest = store.get_version(&a, None).await.unwrap().unwrap();
    assert!(latest.is_delete_marker());
    assert_eq!(latest.size, 0);
    assert!(store.get_version(&a, Some(1)).await.unwrap().is_some());
    let page = store
        .list(&ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(page.entries.is_empty(), "deleted names are not listed");
    assert_eq!(put(store, &a, b"three").await, 3);
    let page = store
        .list(&ListQuery {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page.entries.len(), 1);
    assert_eq!(page.entries[0].version, 3);
}

pub async fn versions_listing_pages<S: MetadataStore>(store: &S) {
    for n in ["b", "a", "c"] {
        for i in 0..3 {
            put(store, &name(n), format!("{n}{i}").as_bytes()).await;
        }
    }
    delete(store, &name("b")).await;
    let b = store
        .list_versions(&VersionsFrom::Name(name("b"), 0), 100)
        .await
        .unwrap();
    assert_eq!(
        b.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert!(b[3].is_delete_marker());
    let after = store
        .list_versions(&VersionsFrom::Name(name("b"), 2), 1)
        .await
        .unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].version, 3);
    assert!(
        store
            .list_versions(&VersionsFrom::Name(name("zzz"), 0), 10)
            .await
            .unwrap()
            .is_empty()
    );
    // All versions, in pages of 2, in (name, version) order.
    let mut all = Vec::new();
    let mut from = VersionsFrom::All(None);
    loop {
        let page = store.list_versions(&from, 2).await.unwrap();
        if page.is_empty() {
            break;
        }
        let last = page.last().unwrap();
        from = VersionsFrom::All(Some((last.name.clone(), last.version)));
        all.extend(page.into_iter().map(|v| (v.name.into_string(), v.version)));
    }
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted);
    assert_eq!(all.len(), 10);
}

pub async fn listing_groups_and_pages<S: MetadataStore>(store: &S) {
    for n in [
        "top", "d/1", "d/2", "d/sub/x", "d/sub/y", "d/sub2/z", "d0", "e/f", "d/zz",
    ] {
        put(store, &name(n), n.as_bytes()).await;
    }
    delete(store, &name("d/2")).await;
    let q = |prefix: &str, cursor: Option<String>, limit| ListQuery {
        prefix: prefix.into(),
        delimiter: Some('/'),
        cursor,
        limit,
        at: None,
    };
    let root = store.list(&q("", None, 100)).await.unwrap();
    let names: Vec<_> = root.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["d0", "top"]);
    assert_eq!(root.prefixes, vec!["d/", "e/"]);
    assert_eq!(root.next_cursor, None);

    let d = store.list(&q("d/", None, 100)).await.unwrap();
    let names: Vec<_> = d.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, vec!["d/1", "d/zz"]);
    assert_eq!(d.prefixes, vec!["d/sub/", "d/sub2/"]);
    assert_eq!(d.entries[0].hash, Some(ContentHash::of(b"d/1")));

    // Page through d/ one key at a time: same keys, same order.
    let mut keys = Vec::new();
    let mut cursor = None;
    for _ in 0..10 {
        let page = store.list(&q("d/", cursor.clone(), 1)).await.unwrap();
        keys.extend(page.entries.iter().map(|e| e.name.as_str().to_string()));
        keys.extend(page.prefixes.iter().cloned());
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
    }
    assert_eq!(keys, vec!["d/1", "d/sub/", "d/sub2/", "d/zz"]);

    // No delimiter: a flat listing of everything under the prefix.
    let flat = store
        .list(&ListQuery {
            prefix: "d/".into(),
            delimiter: None,
            cursor: None,
            limit: 100,
            at: None,
        })
        .await
        .unwrap();
    assert_eq!(flat.entries.len(), 5);
    assert!(flat.prefixes.is_empty());
    let distinct: BTreeSet<_> = flat.entries.iter().map(|e| e.name.clone()).collect();
    assert_eq!(distinct.len(), 5);
}

pub async fn contents_round_trip<S: MetadataStore>(store: &S) {
    let h = ContentHash::of(b"content");
    assert_eq!(store.get_content(&h).await.unwrap(), None);
    let rec = ContentRecord {
        hash: h,
        size: 7,
        placement: (0..6).map(|i| ServerId(format!("s{i}"))).collect(),
        blocks: BlockHashes::default(),
    };
    store.put_content(&rec).await.unwrap();
    assert_eq!(store.get_content(&h).await.unwrap(), Some(rec.clone()));
    let moved = ContentRecord {
        placement: (0..6).map(|i| ServerId(format!("t{i}"))).collect(),
        ..rec
    };
    store.put_content(&moved).await.unwrap();
    assert_eq!(store.get_content(&h).await.unwrap(), Some(moved));

    // Content of three blocks keeps the hash of each through every operation.
    let big = ContentRecord {
        hash: ContentHash::of(b"big"),
        size: 2 * BLOCK_SIZE as u64 + 1,
        placement: (0..6).map(|i| ServerId(format!("s{i}"))).collect(),
        blocks: BlockHashes::new((0..3u8).map(|i| ContentHash::of(&[i])).collect()),
    };
    store.put_content(&big).await.unwrap();
    assert_eq!(
        store.get_content(&big.hash).await.unwrap(),
        Some(big.clone())
    );
    let mv = PlacementMove {
        shard: 2,
        from: ServerId("s2".into()),
        to: ServerId("x".into()),
    };
    assert!(store.update_placement(&big.hash, &[mv]).await.unwrap());
    let got = store.get_content(&big.hash).await.unwrap().unwrap();
    assert_eq!(
        got.blocks, big.blocks,
        "a placement change keeps the block hashes"
    );
    let touched = store.touch_content(&big.hash).await.unwrap().unwrap();
    assert_eq!(touched.blocks, big.blocks);
    let listed = store.list_contents(None, 100).await.unwrap();
    let found = listed.iter().find(|c| c.hash == big.hash).unwrap();
    assert_eq!(found.blocks, big.blocks);
    // Hashes that cannot belong to the size are refused and change nothing.
    let wrong = ContentRecord {
        hash: ContentHash::of(b"wrong"),
        blocks: BlockHashes::new(vec![ContentHash::of(b"0")]),
        ..big
    };
    assert!(store.put_content(&wrong).await.is_err());
    assert_eq!(store.get_content(&wrong.hash).await.unwrap(), None);
}

pub async fn placement_moves_are_conditional<S: MetadataStore>(store: &S) {
    let h = ContentHash::of(b"placed");
    let s = |i: &str| ServerId(i.to_string());
    let mv = |shard, from: &str, to: &str| PlacementMove {
        shard,
        from: s(from),
        to: s(to),
    };
    assert!(
        !store
            .update_placement(&h, &[mv(0, "a", "b")])
            .await
            .unwrap(),
        "no record"
    );
    let rec = ContentRecord {
        hash: h,
        size: 7,
        placement: ["a", "b", "c", "d", "e", "f"].map(s).to_vec(),
        blocks: BlockHashes::default(),
    };
    store.put_content(&rec).await.unwrap();
    assert!(
        store
            .update_placement(&h, &[mv(1, "b", "x"), mv(5, "f", "y")])
            .await
            .unwrap()
    );
    let placement = store.get_content(&h).await.unwrap().unwrap().placement;
    assert_eq!(placement, ["a", "x", "c", "d", "e", "y"].map(s).to_vec());
    // A move from a server the slot no longer names changes nothing, not even the others.
    assert!(
        !store
            .update_placement(&h, &[mv(0, "a", "z"), mv(1, "b", "z")])
            .await
            .unwrap()
    );
    assert!(
        !store
            .update_placement(&h, &[mv(9, "a", "z")])
            .await
            .unwrap(),
        "no such slot"
    );
    let again = store.get_content(&h).await.unwrap().unwrap().placement;
    assert_eq!(again, placement);
}

pub async fn content_and_version_together<S: MetadataStore>(store: &S) {
    let n = name("together");
    put(store, &n, b"first").await;
    let h = ContentHash::of(b"second");
    let rec = ContentRecord {
        hash: h,
        size: 6,
        placement: (0..6).map(|i| ServerId(format!("s{i}"))).collect(),
        blocks: BlockHashes::default(),
    };
    let v = store
        .add_version_with_content(
            &n,
            NewVersion {
                size: 6,
                hash: Some(h),
                mtime_ns: 5,
                mode: 0o600,
                kind: EntryKind::File,
                posix: PosixAttrs::default(),
                ctime_ns: 6,
            },
            &rec,
        )
        .await
        .unwrap();
    assert_eq!((v.version, v.hash), (2, Some(h)));
    assert_eq!(store.get_content(&h).await.unwrap(), Some(rec));
    assert_eq!(store.get_version(&n, None).await.unwrap(), Some(v));
}

pub async fn known_content_versions<S: MetadataStore>(store: &S) {
    let n = name("known");
    let h = ContentHash::of(b"stored once");
    let new = NewVersion {
        size: 11,
        hash: Some(h),
        mtime_ns: 7,
        mode: 0o644,
        kind: EntryKind::File,
        posix: PosixAttrs {
            uid: Some(7),
            gid: None,
            rdev: 0,
            atime_ns: None,
            link: None,
        },
        ctime_ns: 8,
    };
    // No such content: nothing is added.
    assert_eq!(
        store.add_known_version(&n, new.clone()).await.unwrap(),
        None
    );
    assert_eq!(store.get_version(&n, None).await.unwrap(), None);
    let rec = ContentRecord {
        hash: h,
        size: 11,
        placement: (0..6).map(|i| ServerId(format!("s{i}"))).collect(),
        blocks: BlockHashes::default(),
    };
    store.put_content(&rec).await.unwrap();
    let v = store
        .add_known_version(&n, new.clone())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((v.version, v.hash, v.mode), (1, Some(h), 0o644));
    let w = store.add_known_version(&n, new).await.unwrap().unwrap();
    assert_eq!(w.version, 2);
    // Used now: the orphan collector keeps it even with a cutoff of "now".
    assert!(!store.delete_unused_content(&h, 1).await.unwrap());
    assert_eq!(store.get_content(&h).await.unwrap(), Some(rec));
}

pub async fn concurrent_writers_get_unique_versions<S: MetadataStore>(store: Arc<S>) {
    let n = name("contended");
    let mut tasks = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        let n = n.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..10 {
                got.push(put(&*store, &n, format!("{w}-{i}").as_bytes()).await);
            }
            got
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort();
    assert_eq!(all, (1..=80).collect::<Vec<u64>>());
}

fn content(bytes: &[u8]) -> ContentRecord {
    ContentRecord {
        hash: ContentHash::of(bytes),
        size: bytes.len() as u64,
        placement: (0..6).map(|i| ServerId(format!("s{i}"))).collect(),
        blocks: BlockHashes::default(),
    }
}

pub async fn contents_are_enumerated<S: MetadataStore>(store: &S) {
    assert!(store.list_contents(None, 10).await.unwrap().is_empty());
    let mut expected = BTreeSet::new();
    for i in 0..7 {
        let rec = content(format!("c{i}").as_bytes());
        store.put_content(&rec).await.unwrap();
        expected.insert(rec.hash);
    }
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.list_contents(after.as_ref(), 3).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        after = page.last().map(|r| r.hash);
        seen.extend(page.into_iter().map(|r| {
            assert_eq!(r.placement.len(), 6);
            r.hash
        }));
    }
    assert_eq!(seen.len(), 7, "every record exactly once");
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), expected);
}

pub async fn old_versions_can_be_deleted_never_the_latest<S: MetadataStore>(store: &S) {
    let n = name("kept");
    for i in 0..4 {
        put(store, &n, format!("v{i}").as_bytes()).await;
    }
    assert!(!store.delete_version(&n, 4).await.unwrap(), "latest stays");
    assert!(store.delete_version(&n, 2).await.unwrap());
    assert!(!store.delete_version(&n, 2).await.unwrap(), "already gone");
    assert!(!store.delete_version(&n, 99).await.unwrap());
    assert!(!store.delete_version(&name("none"), 1).await.unwrap());
    assert_eq!(store.get_version(&n, Some(2)).await.unwrap(), None);
    let left: Vec<u64> = store
        .list_versions(&VersionsFrom::Name(n.clone(), 0), 10)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(left, vec![1, 3, 4]);
    // Numbering carries on after the latest, never reusing a deleted number.
    assert_eq!(put(store, &n, b"v5").await, 5);
    assert_eq!(
        store.get_version(&n, None).await.unwrap().unwrap().version,
        5
    );
    // A delete marker as the latest protects itself, not the versions before it.
    delete(store, &n).await;
    assert!(!store.delete_version(&n, 6).await.unwrap());
    assert!(store.delete_version(&n, 5).await.unwrap());
}

pub async fn only_unused_untouched_contents_are_deleted<S: MetadataStore>(store: &S) {
    let used = content(b"used");
    let unused = content(b"unused");
    store.put_content(&used).await.unwrap();
    store.put_content(&unused).await.unwrap();
    put(store, &name("holder"), b"used").await;
    let later = dos_protocol::now_ns() + 1_000_000_000;
    // Written after the cut-off: kept.
    assert!(!store.delete_unused_content(&unused.hash, 0).await.unwrap());
    // Referenced by a version: kept.
    assert!(
        !store
            .delete_unused_content(&used.hash, later)
            .await
            .unwrap()
    );
    // Touched after the cut-off: kept.
    let cut = dos_protocol::now_ns();
    std::thread::sleep(std::time::Duration::from_millis(2));
    assert_eq!(
        store.touch_content(&unused.hash).await.unwrap(),
        Some(unused.clone())
    );
    assert!(
        !store
            .delete_unused_content(&unused.hash, cut)
            .await
            .unwrap()
    );
    assert_eq!(
        store
            .touch_content(&ContentHash::of(b"absent"))
            .await
            .unwrap(),
        None
    );
    // Unused and untouched since the cut-off: deleted, once.
    assert!(
        store
            .delete_unused_content(&unused.hash, later)
            .await
            .unwrap()
    );
    assert!(
        !store
            .delete_unused_content(&unused.hash, later)
            .await
            .unwrap()
    );
    assert_eq!(store.get_content(&unused.hash).await.unwrap(), None);
    assert_eq!(store.get_content(&used.hash).await.unwrap(), Some(used));
}
