//! Coherent mounts without a kernel (issue 15): two cores on one store, each trusting what
//! it fetched for the full attribute TTL; a change made through one (or over REST) reaches
//! the other through the store's change feed at once, and what the other's kernel should
//! drop is named. The same through real mounts is in `mount_tools.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use dos_cache::{BlockCache, CacheConfig, StagingArea};
use dos_protocol::{ChangeEvent, ObjectName, WriteAttributes};
use dos_store::ObjectStore;
use dos_store::memory::MemoryStore;
use dosfs::core::{Caller, FsConfig, FsCore, Invalidate, ROOT_INO};
use futures::StreamExt;

fn core_on(store: &MemoryStore, dir: &std::path::Path) -> FsCore {
    let cache = BlockCache::open(CacheConfig {
        min_free_disk_bytes: 0,
        ..CacheConfig::new(dir.join("blocks"))
    })
    .unwrap();
    let staging = StagingArea::new(dir).unwrap();
    // The mount's own TTL: without the feed, a change would take up to this to show.
    let mut config = FsConfig::new(0, 0);
    config.attr_ttl = Duration::from_secs(60);
    FsCore::new(Arc::new(store.clone()), cache, staging, config)
}

/// Two mounts' cores on one store.
struct Two {
    store: MemoryStore,
    a: FsCore,
    b: FsCore,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

fn two_mounts() -> Two {
    let store = MemoryStore::new();
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (core_on(&store, da.path()), core_on(&store, db.path()));
    Two {
        store,
        a,
        b,
        _dirs: (da, db),
    }
}

async fn write(core: &FsCore, parent: u64, name: &str, data: &[u8]) -> u64 {
    let ino = match core.lookup(parent, name).await {
        Ok(a) => a.ino,
        Err(_) => {
            let (a, fh) = core
                .create(parent, name, 0o644, &Caller::root())
                .await
                .unwrap();
            core.release(fh).await.unwrap();
            a.ino
        }
    };
    let fh = core.open(ino, true, true).await.unwrap().fh;
    core.write(fh, 0, data).await.unwrap();
    core.flush(fh).await.unwrap();
    core.release(fh).await.unwrap();
    ino
}

/// Feeds `core` the changes of `feed` made so far; returns what it says to invalidate.
async fn drain(core: &FsCore, feed: &mut dos_store::ChangeStream) -> Vec<Invalidate> {
    let mut out = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(100), feed.next()).await {
        out.extend(core.changed(&e));
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_made_elsewhere_shows_at_once() {
    let Two { store, a, b, _dirs } = two_mounts();
    let mut feed_a = a.changes().await.unwrap();
    let mut feed_b = b.changes().await.unwrap();
    let d = a
        .mkdir(ROOT_INO, "d", 0o755, &Caller::root())
        .await
        .unwrap();
    write(&a, d.ino, "f", b"one").await;
    assert!(
        drain(&a, &mut feed_a).await.is_empty(),
        "a mount ignores its own changes"
    );

    // b looks at the file, then a rewrites it: b's cached size would be trusted for 60 s.
    let bd = b.lookup(ROOT_INO, "d").await.unwrap();
    let bf = b.lookup(bd.ino, "f").await.unwrap();
    assert_eq!(bf.size, 3);
    write(&a, d.ino, "f", b"one two three").await;
    let drop = drain(&b, &mut feed_b).await;
    assert!(drop.contains(&Invalidate::Inode(bf.ino)), "{drop:?}");
    assert!(
        drop.contains(&Invalidate::Entry {
            parent: bd.ino,
            name: "f".into()
        }),
        "{drop:?}"
    );
    assert_eq!(b.getattr(bf.ino).await.unwrap().size, 13, "no TTL wait");

    // A name made over REST, in a directory b has not seen: the entries that may be cached
    // as missing are named (the new directory's in the root).
    let missing = b.lookup(ROOT_INO, "new").await;
    assert!(missing.is_err());
    store
        .put_bytes(
            &ObjectName::new("new/x").unwrap(),
            &WriteAttributes::default(),
            bytes::Bytes::from_static(b"rest"),
        )
        .await
        .unwrap();
    let drop = drain(&b, &mut feed_b).await;
    assert!(
        drop.contains(&Invalidate::Entry {
            parent: ROOT_INO,
            name: "new".into()
        }),
        "{drop:?}"
    );
    let new = b.lookup(ROOT_INO, "new").await.unwrap();
    assert_eq!(b.lookup(new.ino, "x").await.unwrap().size, 4);

    // A delete elsewhere: b stops finding the name at once.
    drain(&a, &mut feed_a).await;
    a.unlink(d.ino, "f").await.unwrap();
    drain(&b, &mut feed_b).await;
    assert!(b.lookup(bd.ino, "f").await.is_err(), "deleted elsewhere");
    // The mount that deleted it knows the echo of its own delete (and of a rename's and an
    // rmdir's) and drops nothing for it.
    write(&a, d.ino, "g", b"g").await;
    a.rename(d.ino, "g", ROOT_INO, "g2", false).await.unwrap();
    a.unlink(ROOT_INO, "g2").await.unwrap();
    a.rmdir(ROOT_INO, "d").await.unwrap();
    let own = drain(&a, &mut feed_a).await;
    assert!(own.is_empty(), "a mount ignores its own deletes: {own:?}");

    // Missed changes: everything cached is fetched again.
    assert!(b.changed(&ChangeEvent::Missed).is_empty());
    assert_eq!(b.entry_count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_listing_for_a_link_count_serves_the_readdir_after_it_until_a_change() {
    let Two { a, b, _dirs, .. } = two_mounts();
    let mut feed_b = b.changes().await.unwrap();
    let root = Caller::root();
    for dir in ["d", "e"] {
        let d = a.mkdir(ROOT_INO, dir, 0o755, &root).await.unwrap();
        a.mkdir(d.ino, "sub", 0o755, &root).await.unwrap();
        write(&a, d.ino, "f1", b"1").await;
    }
    drain(&b, &mut feed_b).await;
    let names =
        |l: Vec<dosfs::core::DirEntry>| -> Vec<String> { l.into_iter().map(|e| e.name).collect() };

    // A walk: the lookup lists the folder for its link count, the readdir uses that listing.
    let before = b.listings();
    let d = b.lookup(ROOT_INO, "d").await.unwrap();
    assert_eq!(d.nlink, 3);
    assert_eq!(names(b.read_dir(d.ino).await.unwrap()), ["f1", "sub"]);
    assert_eq!(
        b.listings() - before,
        1,
        "one listing for the lookup and the readdir"
    );
    // Once only: the next readdir lists again.
    b.read_dir(d.ino).await.unwrap();
    assert_eq!(b.listings() - before, 2);

    // A file made here between the lookup and the readdir is listed.
    b.forget(d.ino, 1);
    b.changed(&ChangeEvent::Missed);
    let d = b.lookup(ROOT_INO, "d").await.unwrap();
    let (_, fh) = b.create(d.ino, "new", 0o644, &root).await.unwrap();
    b.release(fh).await.unwrap();
    assert_eq!(
        names(b.read_dir(d.ino).await.unwrap()),
        ["f1", "new", "sub"]
    );

    // A file made elsewhere between them is listed once the feed tells of it.
    let e = b.lookup(ROOT_INO, "e").await.unwrap();
    let ae = a.lookup(ROOT_INO, "e").await.unwrap();
    write(&a, ae.ino, "f2", b"2").await;
    drain(&b, &mut feed_b).await;
    assert_eq!(names(b.read_dir(e.ino).await.unwrap()), ["f1", "f2", "sub"]);
}
