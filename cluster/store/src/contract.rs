//! The contract every [`ObjectStore`] implementation passes: one test body per behaviour,
//! run against the memory store here and against the HTTP and in-process stores of a real
//! embedded cluster in `dos-server`'s tests ([`object_store_contract!`](crate::object_store_contract)
//! generates the test functions).
//!
//! Each body starts from an empty store and panics with a message on the first deviation.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bytes::Bytes;
use dos_protocol::{
    BLOCK_SIZE, ByteRange, ContentHash, EntryKind, ListQuery, ObjectName, PosixAttrs,
    WriteAttributes, now_ns,
};
use futures::TryStreamExt;

use crate::{Content, ObjectStore, PostOutcome, StoreError, UploadBody, UploadProgress, once};

/// Generates one `#[tokio::test]` per contract body, each on a fresh store made by `$setup`
/// (an async fn returning `(store, guard)`; the guard lives until the test ends).
#[macro_export]
macro_rules! object_store_contract {
    ($setup:path) => {
        $crate::object_store_contract!(@tests $setup;
            put_get_head, digest_mismatch_stores_nothing, versions_and_delete_markers,
            post_known_content_and_resumable_uploads, listings, restore_makes_a_new_version,
            attributes_round_trip, ranges, empty_objects, streamed_uploads,
            redundancy_and_check_of_healthy_content);
    };
    (@tests $setup:path; $($test:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $test() {
                let (store, _guard) = $setup().await;
                $crate::contract::$test(&*store).await;
            }
        )*
    };
}

fn name(s: &str) -> ObjectName {
    ObjectName::new(s).unwrap()
}

/// Deterministic bytes, distinct per seed.
pub fn pattern(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect::<Vec<u8>>()
        .into()
}

fn attrs() -> WriteAttributes {
    WriteAttributes::default()
}

async fn get_all(store: &dyn ObjectStore, n: &ObjectName, version: Option<u64>) -> Bytes {
    store
        .get(n, version, None)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

pub async fn put_get_head(store: &dyn ObjectStore) {
    let n = name("c/put/one");
    let body = pattern(BLOCK_SIZE + 4321, 1);
    let rec = store.put_bytes(&n, &attrs(), body.clone()).await.unwrap();
    assert_eq!((rec.version, rec.size), (1, body.len() as u64));
    assert_eq!(rec.hash, Some(ContentHash::of(&body)));
    assert_eq!((rec.kind, rec.mode), (EntryKind::File, 0o644));
    let head = store.head(&n, None).await.unwrap();
    assert_eq!(head, rec, "head answers the version put made");
    assert_eq!(store.head(&n, Some(1)).await.unwrap(), rec);
    let read = store.get(&n, None, None).await.unwrap();
    assert_eq!((read.record.clone(), read.range), (rec.clone(), None));
    assert_eq!(read.bytes().await.unwrap(), body);
    let missing = store.head(&name("c/put/none"), None).await.err();
    assert!(
        matches!(missing, Some(StoreError::NotFound(_))),
        "{missing:?}"
    );
    let missing = store.get(&name("c/put/none"), None, None).await.err();
    assert!(
        matches!(missing, Some(StoreError::NotFound(_))),
        "{missing:?}"
    );
    let missing = store.head(&n, Some(2)).await.err();
    assert!(
        matches!(missing, Some(StoreError::NotFound(_))),
        "{missing:?}"
    );
}

pub async fn digest_mismatch_stores_nothing(store: &dyn ObjectStore) {
    let n = name("c/bad/digest");
    let body = pattern(1000, 2);
    let wrong = Content {
        hash: ContentHash::of(b"something else"),
        size: body.len() as u64,
        body: once(body.clone()),
    };
    let err = store.put(&n, &attrs(), wrong).await.unwrap_err();
    assert_eq!(err, StoreError::DigestMismatch);
    let short = Content {
        hash: ContentHash::of(&body),
        size: body.len() as u64 + 1,
        body: once(body.clone()),
    };
    assert!(store.put(&n, &attrs(), short).await.is_err());
    assert!(store.head(&n, None).await.unwrap_err().is_not_found());
    assert_eq!(store.all_versions(&n).await.unwrap(), vec![]);
}

pub async fn versions_and_delete_markers(store: &dyn ObjectStore) {
    let n = name("c/ver/x");
    let (a, b) = (pattern(10, 3), pattern(20, 4));
    store.put_bytes(&n, &attrs(), a.clone()).await.unwrap();
    store.put_bytes(&n, &attrs(), b.clone()).await.unwrap();
    let marker = store.delete(&n).await.unwrap();
    assert_eq!((marker.version, marker.hash, marker.size), (3, None, 0));
    assert!(store.head(&n, None).await.unwrap_err().is_not_found());
    assert!(store.get(&n, None, None).await.unwrap_err().is_not_found());
    assert!(store.head(&n, Some(3)).await.unwrap_err().is_not_found());
    assert_eq!(get_all(store, &n, Some(1)).await, a);
    assert_eq!(get_all(store, &n, Some(2)).await, b);
    let all = store.all_versions(&n).await.unwrap();
    let numbers: Vec<u64> = all.iter().map(|v| v.version).collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert!(all[2].is_delete_marker());
    assert!(
        store.delete(&n).await.unwrap_err().is_not_found(),
        "already deleted"
    );
    assert!(
        store
            .delete(&name("c/ver/never"))
            .await
            .unwrap_err()
            .is_not_found()
    );
    assert_eq!(
        store.all_versions(&name("c/ver/never")).await.unwrap(),
        vec![]
    );
    let again = store.put_bytes(&n, &attrs(), a.clone()).await.unwrap();
    assert_eq!(again.version, 4);
    assert_eq!(get_all(store, &n, None).await, a);
}

pub async fn post_known_content_and_resumable_uploads(store: &dyn ObjectStore) {
    let known = pattern(5000, 5);
    let rec = store
        .put_bytes(&name("c/post/a"), &attrs(), known.clone())
        .await
        .unwrap();
    let hash = rec.hash.unwrap();
    match store
        .post(&name("c/post/b"), hash, known.len() as u64, &attrs())
        .await
        .unwrap()
    {
        PostOutcome::Stored(v) => assert_eq!((v.version, v.hash), (1, Some(hash))),
        other => panic!("known content must make a version at once: {other:?}"),
    }
    assert_eq!(get_all(store, &name("c/post/b"), None).await, known);
    let wrong_size = store.post(&name("c/post/c"), hash, 1, &attrs()).await;
    assert!(
        matches!(wrong_size, Err(StoreError::Invalid(_))),
        "{wrong_size:?}"
    );

    // A new content in two parts: the first keeps whole blocks only.
    let body = pattern(2 * BLOCK_SIZE + 777, 6);
    let n = name("c/post/upload");
    let PostOutcome::Upload(id) = store
        .post(&n, ContentHash::of(&body), body.len() as u64, &attrs())
        .await
        .unwrap()
    else {
        panic!("new content must open an upload")
    };
    assert_eq!(store.upload_status(&id).await.unwrap(), 0);
    let first = body.slice(..BLOCK_SIZE + 100);
    let p = store
        .upload(&id, 0, first.len() as u64, once(first))
        .await
        .unwrap();
    assert_eq!(
        p,
        UploadProgress::Partial {
            accepted: BLOCK_SIZE as u64
        }
    );
    assert_eq!(store.upload_status(&id).await.unwrap(), BLOCK_SIZE as u64);
    let wrong = store.upload(&id, 5, 1, once(body.slice(5..6))).await;
    assert!(
        matches!(wrong, Err(StoreError::OffsetMismatch { offset: 5, accepted }) if accepted == BLOCK_SIZE as u64),
        "{wrong:?}"
    );
    let rest = body.slice(BLOCK_SIZE..);
    let done = store
        .upload(&id, BLOCK_SIZE as u64, rest.len() as u64, once(rest))
        .await
        .unwrap();
    let UploadProgress::Done(v) = done else {
        panic!("the last byte must finish the upload: {done:?}")
    };
    assert_eq!((v.version, v.size), (1, body.len() as u64));
    assert_eq!(get_all(store, &n, None).await, body);

    // Wrong bytes for the announced digest: no version.
    let n = name("c/post/liar");
    let claimed = pattern(3000, 7);
    let PostOutcome::Upload(id) = store
        .post(&n, ContentHash::of(&claimed), 3000, &attrs())
        .await
        .unwrap()
    else {
        panic!("new content must open an upload")
    };
    let err = store
        .upload(&id, 0, 3000, once(pattern(3000, 8)))
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::DigestMismatch);
    assert_eq!(store.all_versions(&n).await.unwrap(), vec![]);
}

pub async fn listings(store: &dyn ObjectStore) {
    for n in ["l/a/1", "l/a/2", "l/a/b/3", "l/b", "l/c/d", "l/gone"] {
        store
            .put_bytes(&name(n), &attrs(), pattern(3, 9))
            .await
            .unwrap();
    }
    store.delete(&name("l/gone")).await.unwrap();
    let page = |prefix: &str, limit, cursor: Option<String>| ListQuery {
        prefix: prefix.into(),
        delimiter: Some('/'),
        cursor,
        limit,
        at: None,
    };
    let p = store.list(&page("l/", 100, None)).await.unwrap();
    let names: Vec<&str> = p.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["l/b"]);
    assert_eq!(p.prefixes, ["l/a/", "l/c/"]);
    assert_eq!(p.next_cursor, None);
    let p = store.list(&page("l/a/", 100, None)).await.unwrap();
    let names: Vec<&str> = p.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["l/a/1", "l/a/2"]);
    assert_eq!(p.prefixes, ["l/a/b/"]);
    // One item a page: the same items, in order, then no cursor.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let p = store.list(&page("l/", 1, cursor.clone())).await.unwrap();
        assert_eq!(p.entries.len() + p.prefixes.len(), 1, "{p:?}");
        seen.extend(p.entries.iter().map(|e| e.name.to_string()));
        seen.extend(p.prefixes.iter().cloned());
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
        assert!(seen.len() < 10, "the cursor must advance");
    }
    assert_eq!(seen, ["l/a/", "l/b", "l/c/"]);
    // No delimiter: every live name under the prefix.
    let (all, prefixes) = store.list_all("l/", None).await.unwrap();
    let names: Vec<&str> = all.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["l/a/1", "l/a/2", "l/a/b/3", "l/b", "l/c/d"]);
    assert!(prefixes.is_empty());
    let bad = store.list(&page("l/", 0, None)).await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");
}

/// Stored content answers six healthy shards, and a full check finds it whole and rebuilds
/// nothing; a hash the store does not hold is not found.
pub async fn redundancy_and_check_of_healthy_content(store: &dyn ObjectStore) {
    for (i, len) in [0usize, 1, 300_000, 3 << 20].into_iter().enumerate() {
        let body = pattern(len, 40 + i as u64);
        let hash = ContentHash::of(&body);
        store
            .put_bytes(&name(&format!("c/redundancy/{i}")), &attrs(), body)
            .await
            .unwrap();
        let r = store.redundancy(&hash).await.unwrap();
        assert_eq!(
            (r.healthy, r.total, r.repair_queued),
            (6, 6, false),
            "{len} B"
        );
        assert_eq!(r.to_string(), "6/6");
        let report = store.check(&hash).await.unwrap();
        assert_eq!(report.size, len as u64);
        assert!(
            report.is_healthy() && report.shards_rebuilt.is_empty(),
            "{report:?}"
        );
    }
    let unknown = ContentHash::of(b"never stored here");
    assert!(store.redundancy(&unknown).await.unwrap_err().is_not_found());
    assert!(store.check(&unknown).await.unwrap_err().is_not_found());
}

pub async fn restore_makes_a_new_version(store: &dyn ObjectStore) {
    let n = name("c/restore/f");
    let (a, b) = (pattern(100, 10), pattern(200, 11));
    let mode = WriteAttributes {
        mode: Some(0o600),
        ..attrs()
    };
    store.put_bytes(&n, &mode, a.clone()).await.unwrap();
    store.put_bytes(&n, &attrs(), b).await.unwrap();
    let restored = store.restore(&n, 1).await.unwrap();
    assert_eq!(restored.version, 3);
    assert_eq!(restored.hash, Some(ContentHash::of(&a)));
    assert_eq!(restored.mode, 0o600);
    assert_eq!(get_all(store, &n, None).await, a);
    store.delete(&n).await.unwrap();
    assert!(store.restore(&n, 4).await.unwrap_err().is_not_found());
    assert!(store.restore(&n, 99).await.unwrap_err().is_not_found());
    assert_eq!(store.restore(&n, 2).await.unwrap().version, 5);
}

pub async fn attributes_round_trip(store: &dyn ObjectStore) {
    let owned = PosixAttrs {
        uid: Some(65534),
        gid: Some(65533),
        rdev: 0,
        atime_ns: Some(1_600_000_000_000_000_007),
        link: Some(0x1234_5678_9abc),
    };
    let device = PosixAttrs {
        uid: Some(0),
        gid: Some(0),
        rdev: (8 << 8) | 1,
        atime_ns: None,
        link: None,
    };
    let cases = [
        (
            "c/attr/file",
            EntryKind::File,
            Some(0o640),
            &b"x"[..],
            owned,
        ),
        (
            "c/attr/dir",
            EntryKind::Dir,
            Some(0o700),
            &b""[..],
            PosixAttrs::default(),
        ),
        (
            "c/attr/link",
            EntryKind::Symlink,
            None,
            &b"../target"[..],
            owned,
        ),
        (
            "c/attr/fifo",
            EntryKind::Fifo,
            Some(0o4755),
            &b""[..],
            owned,
        ),
        (
            "c/attr/sock",
            EntryKind::Socket,
            Some(0o755),
            &b""[..],
            owned,
        ),
        (
            "c/attr/chr",
            EntryKind::CharDevice,
            Some(0o600),
            &b""[..],
            device,
        ),
        (
            "c/attr/blk",
            EntryKind::BlockDevice,
            Some(0o600),
            &b""[..],
            device,
        ),
    ];
    for (n, kind, mode, content, posix) in cases {
        let a = WriteAttributes {
            kind,
            mode,
            mtime_ns: Some(1_700_000_000_123_456_789),
            supersedes: None,
            posix,
        };
        let before = now_ns();
        let rec = store
            .put_bytes(&name(n), &a, Bytes::copy_from_slice(content))
            .await
            .unwrap();
        let after = now_ns();
        let head = store.head(&name(n), None).await.unwrap();
        assert_eq!(head, rec);
        assert_eq!(head.kind, kind, "{n}");
        assert_eq!(head.mode, mode.unwrap_or(kind.default_mode()), "{n}");
        assert_eq!(head.mtime_ns, 1_700_000_000_123_456_789, "{n}");
        assert_eq!(head.posix, posix, "{n}");
        // Microseconds of slack: REST carries times to the nanosecond, clocks may differ
        // by rounding between the test and the store only.
        assert!(
            (before - 1_000..=after + 1_000).contains(&head.ctime_ns),
            "{n}: the ctime is when the version was made"
        );
        assert_eq!(get_all(store, &name(n), None).await, content, "{n}");
        let listed = store
            .list(&ListQuery {
                prefix: n.to_string(),
                delimiter: Some('/'),
                cursor: None,
                limit: 10,
                at: None,
            })
            .await
            .unwrap();
        assert_eq!(
            listed.entries,
            vec![head.clone()],
            "{n}: listings carry the same"
        );
        let versions = store.all_versions(&name(n)).await.unwrap();
        assert_eq!(versions.last(), Some(&head), "{n}: so do version lists");
    }
    let list = store.all_versions(&name("c/attr/dir")).await.unwrap();
    assert_eq!(list[0].kind, EntryKind::Dir);
}

pub async fn ranges(store: &dyn ObjectStore) {
    let n = name("c/range/obj");
    let body = pattern(3 * BLOCK_SIZE + 5, 12);
    store.put_bytes(&n, &attrs(), body.clone()).await.unwrap();
    let size = body.len() as u64;
    for (start, end) in [
        (0, 0),
        (10, 19),
        (BLOCK_SIZE as u64 - 3, BLOCK_SIZE as u64 + 3),
        (2 * BLOCK_SIZE as u64, size - 1),
        (size - 1, size - 1),
    ] {
        let read = store
            .get(&n, None, Some(ByteRange { start, end }))
            .await
            .unwrap();
        assert_eq!(read.range, Some(ByteRange { start, end }));
        assert_eq!(read.len(), end - start + 1);
        let bytes = read.bytes().await.unwrap();
        assert_eq!(
            bytes,
            body.slice(start as usize..=end as usize),
            "{start}-{end}"
        );
    }
    // Past the end: cut; covering everything: the whole object.
    let read = store
        .get(
            &n,
            None,
            Some(ByteRange {
                start: size - 2,
                end: size + 100,
            }),
        )
        .await
        .unwrap();
    assert_eq!(
        read.range,
        Some(ByteRange {
            start: size - 2,
            end: size - 1
        })
    );
    assert_eq!(read.bytes().await.unwrap(), body.slice(size as usize - 2..));
    let whole = store
        .get(
            &n,
            None,
            Some(ByteRange {
                start: 0,
                end: size,
            }),
        )
        .await
        .unwrap();
    assert_eq!(whole.range, None);
    assert_eq!(whole.bytes().await.unwrap(), body);
    let past = store
        .get(
            &n,
            None,
            Some(ByteRange {
                start: size,
                end: size + 1,
            }),
        )
        .await;
    assert!(matches!(past, Err(StoreError::Invalid(_))), "{past:?}");
}

pub async fn empty_objects(store: &dyn ObjectStore) {
    let n = name("c/empty/f");
    let rec = store.put_bytes(&n, &attrs(), Bytes::new()).await.unwrap();
    assert_eq!((rec.size, rec.hash), (0, Some(ContentHash::of(b""))));
    assert_eq!(get_all(store, &n, None).await, Bytes::new());
    let versions: Vec<_> = store
        .versions(&n)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(versions.len(), 1);
    // Known empty content through post: a version at once.
    match store
        .post(&name("c/empty/g"), ContentHash::of(b""), 0, &attrs())
        .await
        .unwrap()
    {
        PostOutcome::Stored(v) => assert_eq!(v.size, 0),
        other => panic!("{other:?}"),
    }
}

/// `body` in chunks of uneven sizes, as a writer produces them.
fn in_chunks(body: &Bytes, chunk: usize) -> UploadBody {
    let chunks: Vec<std::io::Result<Bytes>> = (0..body.len())
        .step_by(chunk)
        .map(|i| Ok(body.slice(i..(i + chunk).min(body.len()))))
        .collect();
    Box::pin(futures::stream::iter(chunks))
}

pub async fn streamed_uploads(store: &dyn ObjectStore) {
    let open_attrs = WriteAttributes {
        mode: Some(0o600),
        ..attrs()
    };
    for (i, len) in [3 * BLOCK_SIZE + 123, 2 * BLOCK_SIZE, 10, 0]
        .into_iter()
        .enumerate()
    {
        let n = name(&format!("c/stream/{i}"));
        let body = pattern(len, 40 + i as u64);
        let id = store.open_upload(&n, &open_attrs).await.unwrap();
        let got = store
            .stream_upload(&id, in_chunks(&body, 100_003))
            .await
            .unwrap();
        assert_eq!((got.hash, got.size), (ContentHash::of(&body), len as u64));
        // Received, not yet a version.
        assert_eq!(store.all_versions(&n).await.unwrap(), vec![], "{len} bytes");
        let at = WriteAttributes {
            mtime_ns: Some(1_700_000_000_123_456_789),
            ..attrs()
        };
        let v = store
            .finish_upload(&got.upload, got.hash, &at)
            .await
            .unwrap();
        assert_eq!((v.version, v.size, v.hash), (1, len as u64, Some(got.hash)));
        assert_eq!((v.mode, v.mtime_ns), (0o600, 1_700_000_000_123_456_789));
        assert_eq!(get_all(store, &n, None).await, body, "{len} bytes");
    }

    // The same content again (stored already): a version of it.
    let body = pattern(3 * BLOCK_SIZE + 123, 40);
    let n = name("c/stream/again");
    let id = store.open_upload(&n, &attrs()).await.unwrap();
    let got = store
        .stream_upload(&id, in_chunks(&body, 1 << 20))
        .await
        .unwrap();
    let v = store
        .finish_upload(&got.upload, got.hash, &attrs())
        .await
        .unwrap();
    assert_eq!(v.hash, Some(ContentHash::of(&body)));
    assert_eq!(get_all(store, &n, None).await, body);

    // The sender's digest differs from what arrived: no version, and the upload is gone.
    let n = name("c/stream/liar");
    let id = store.open_upload(&n, &attrs()).await.unwrap();
    let got = store
        .stream_upload(&id, in_chunks(&pattern(5000, 50), 999))
        .await
        .unwrap();
    let err = store
        .finish_upload(&got.upload, ContentHash::of(b"something else"), &attrs())
        .await
        .unwrap_err();
    assert_eq!(err, StoreError::DigestMismatch);
    assert!(
        store
            .finish_upload(&got.upload, got.hash, &attrs())
            .await
            .is_err()
    );
    assert_eq!(store.all_versions(&n).await.unwrap(), vec![]);

    // A body that fails part way: an error, no version.
    let n = name("c/stream/broken");
    let id = store.open_upload(&n, &attrs()).await.unwrap();
    let good = pattern(BLOCK_SIZE + 5, 51);
    let broken: UploadBody = Box::pin(futures::stream::iter(vec![
        Ok(good),
        Err(std::io::Error::other("the writer went away")),
    ]));
    assert!(store.stream_upload(&id, broken).await.is_err());
    assert_eq!(store.all_versions(&n).await.unwrap(), vec![]);
}
