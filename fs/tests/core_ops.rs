//! The filesystem core without a kernel, on the in-memory store: inode lifetimes follow the
//! kernel's `forget`, and failures of the store reach applications as the errno they mean
//! (a lost connection is EIO, an overloaded store EAGAIN, a file changed underneath ESTALE,
//! a timeout ETIMEDOUT), injected with the fault-injecting store.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dos_cache::{BlockCache, CacheConfig, StagingArea};
use dos_protocol::{ObjectName, WriteAttributes};
use dos_store::faults::{Faults, FaultyStore, Op};
use dos_store::memory::MemoryStore;
use dos_store::{ObjectStore, StoreError};
use dosfs::core::{Caller, FsConfig, FsCore, ROOT_INO, SetAttr};

struct Fixture {
    core: FsCore,
    memory: MemoryStore,
    faults: Faults,
    _dir: tempfile::TempDir,
}

fn fixture() -> Fixture {
    fixture_with(|_| None)
}

/// A fixture whose core gets the write-back journal `journal` makes in the fixture's folder.
fn fixture_with(
    journal: impl FnOnce(&std::path::Path) -> Option<dosfs::core::journal::Journal>,
) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(CacheConfig {
        min_free_disk_bytes: 0,
        ..CacheConfig::new(dir.path().join("blocks"))
    })
    .unwrap();
    let staging = StagingArea::new(dir.path()).unwrap();
    let memory = MemoryStore::new();
    let faults = Faults::default();
    let store = Arc::new(FaultyStore::new(memory.clone(), faults.clone()));
    let mut config = FsConfig::new(0, 0);
    config.attr_ttl = Duration::ZERO;
    let mut core = FsCore::new(store, cache, staging, config);
    if let Some(j) = journal(dir.path()) {
        core = core.with_journal(j);
    }
    Fixture {
        core,
        memory,
        faults,
        _dir: dir,
    }
}

async fn put(store: &MemoryStore, name: &str, bytes: &'static [u8]) {
    store
        .put_bytes(
            &ObjectName::new(name).unwrap(),
            &WriteAttributes::default(),
            Bytes::from_static(bytes),
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn inodes_and_cached_entries_follow_forget() {
    let f = fixture();
    for i in 0..2000 {
        put(&f.memory, &format!("d/f{i}"), b"x").await;
    }
    let d = f.core.lookup(ROOT_INO, "d").await.unwrap();
    // A listing alone holds no inode.
    let fh = f.core.opendir(d.ino).await.unwrap();
    let mut listed = Vec::new();
    f.core
        .dir_entries(d.ino, fh, 0, |ino, _, _, name| {
            listed.push((ino, name.to_string()));
            false
        })
        .await
        .unwrap();
    f.core.releasedir(fh);
    assert_eq!(listed.len(), 2002);
    assert_eq!(f.core.inode_count(), 2, "the root and d");
    // Looking every entry up (ls -l) gives the numbers the listing showed.
    let mut inos = Vec::new();
    for (ino, name) in listed.iter().skip(2) {
        let a = f.core.lookup(d.ino, name).await.unwrap();
        assert_eq!(a.ino, *ino, "{name}: listing and lookup agree");
        inos.push(a.ino);
    }
    assert_eq!(f.core.inode_count(), 2002);
    // A second lookup is a second reference: one forget keeps the node.
    let again = f.core.lookup(d.ino, "f7").await.unwrap().ino;
    for ino in &inos {
        f.core.forget(*ino, 1);
    }
    assert_eq!(f.core.inode_count(), 3, "f7 is still referenced");
    assert!(f.core.getattr(again).await.is_ok());
    f.core.forget(again, 1);
    f.core.forget(d.ino, 1);
    assert_eq!(f.core.inode_count(), 1, "only the root is left");
    assert!(
        f.core.entry_count() < 100,
        "cached attributes went with their inodes: {}",
        f.core.entry_count()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn store_failures_become_the_errno_they_mean() {
    let f = fixture();
    put(&f.memory, "file", b"content").await;
    let cases = [
        (StoreError::Transport("connection reset".into()), libc::EIO),
        (
            StoreError::Unavailable("2 data servers live".into()),
            libc::EIO,
        ),
        (StoreError::Busy("too many requests".into()), libc::EAGAIN),
        (StoreError::Timeout("no answer".into()), libc::ETIMEDOUT),
        (
            StoreError::Changed("changed underneath".into()),
            libc::ESTALE,
        ),
        (StoreError::Denied("wrong token".into()), libc::EACCES),
    ];
    for (error, errno) in cases {
        f.faults.fail(Op::Head, error.clone());
        let e = f.core.lookup(ROOT_INO, "file").await.unwrap_err();
        assert_eq!(e.errno(), errno, "{error:?} -> {e}");
        f.faults.clear();
    }
    // A close whose upload fails reports EIO, and the next close uploads the bytes: a small
    // file (one PUT) and a large one (its stream, then the whole upload that replaces a
    // failed stream: POST, then the bytes).
    let large: Vec<u8> = (0..2_500_000u32).map(|i| (i / 7) as u8).collect();
    for (name, bytes, ops) in [
        ("new", b"hello".to_vec(), &[Op::Put][..]),
        ("large", large, &[Op::FinishUpload, Op::Post][..]),
    ] {
        let (_, fh) = f
            .core
            .create(ROOT_INO, name, 0o644, &Caller::root())
            .await
            .unwrap();
        f.core.write(fh, 0, &bytes).await.unwrap();
        for op in ops {
            f.faults
                .fail_times(*op, StoreError::Transport("connection lost".into()), 1);
        }
        assert_eq!(f.core.flush(fh).await.unwrap_err().errno(), libc::EIO);
        f.core.flush(fh).await.unwrap();
        f.core.release(fh).await.unwrap();
        let read = f
            .memory
            .get(&ObjectName::new(name).unwrap(), None, None)
            .await
            .unwrap();
        assert!(read.bytes().await.unwrap() == bytes[..], "{name}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_cut_off_by_the_network_is_an_error_not_short_bytes() {
    let f = fixture();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| i as u8).collect();
    f.memory
        .put_bytes(
            &ObjectName::new("big").unwrap(),
            &WriteAttributes::default(),
            Bytes::from(big.clone()),
        )
        .await
        .unwrap();
    let a = f.core.lookup(ROOT_INO, "big").await.unwrap();
    let opened = f.core.open(a.ino, false, false).await.unwrap();
    f.faults
        .cut_reads(100_000, StoreError::Transport("reset".into()), None);
    let mut got = Vec::new();
    let mut failure = None;
    while got.len() < big.len() {
        match f.core.read(opened.fh, got.len() as u64, 128 << 10).await {
            Ok(chunk) if chunk.is_empty() => break,
            Ok(chunk) => got.extend_from_slice(&chunk),
            Err(e) => {
                failure = Some(e.errno());
                break;
            }
        }
    }
    assert_eq!(failure, Some(libc::EIO), "read {} bytes", got.len());
    assert_eq!(&got[..], &big[..got.len()], "what was read is right");
    f.faults.clear();
    f.core.release(opened.fh).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn write_back_journals_closes_and_a_file_deleted_while_pending_never_reaches_the_store() {
    let f = fixture_with(|dir| {
        Some(dosfs::core::journal::Journal::open(&dir.join("writeback")).unwrap())
    });
    let journal_dir = f._dir.path().join("writeback");
    // The store refuses every upload: closes still succeed (the bytes are in the journal).
    f.faults
        .fail(Op::Put, StoreError::Transport("the store is away".into()));
    for name in ["kept", "deleted", "renamed"] {
        let (_, fh) = f
            .core
            .create(ROOT_INO, name, 0o640, &Caller::root())
            .await
            .unwrap();
        f.core.write(fh, 0, name.as_bytes()).await.unwrap();
        f.core.flush(fh).await.unwrap();
        f.core.release(fh).await.unwrap();
    }
    assert_eq!(f.core.journal_len(), 3);
    assert_eq!(f.core.upload_pending().await, 3, "three uploads failed");
    // Seen through the core while pending.
    let kept = f.core.lookup(ROOT_INO, "kept").await.unwrap();
    assert_eq!(kept.size, 4);
    assert_eq!(
        f.core.getxattr(kept.ino, "user.dosfs.state").await.unwrap(),
        b"pending"
    );
    // Deleted while pending: its record goes, it never reaches the store.
    f.core.unlink(ROOT_INO, "deleted").await.unwrap();
    assert_eq!(f.core.journal_len(), 2);
    // A rename needs the store (it copies stored versions): it fails while the store is away.
    assert!(
        f.core
            .rename(ROOT_INO, "renamed", ROOT_INO, "moved", false)
            .await
            .is_err()
    );
    // The store is back: everything left is uploaded, one version each.
    f.faults.clear();
    f.core.drain_journal().await;
    assert_eq!(f.core.journal_len(), 0);
    f.core
        .rename(ROOT_INO, "renamed", ROOT_INO, "moved", false)
        .await
        .unwrap();
    let get = |n: &str| {
        let m = f.memory.clone();
        let n = n.to_string();
        async move {
            match m.get(&ObjectName::new(&n).unwrap(), None, None).await {
                Ok(r) => Some(r.bytes().await.unwrap()),
                Err(_) => None,
            }
        }
    };
    assert_eq!(get("kept").await.as_deref(), Some(&b"kept"[..]));
    assert_eq!(get("moved").await.as_deref(), Some(&b"renamed"[..]));
    assert_eq!(get("deleted").await, None);
    let versions = f
        .memory
        .all_versions(&ObjectName::new("deleted").unwrap())
        .await
        .unwrap();
    assert!(versions.is_empty(), "{versions:?}");
    assert_eq!(
        f.core.getxattr(kept.ino, "user.dosfs.state").await.unwrap(),
        b"durable"
    );
    // The journal's folder holds only the current log.
    let files: Vec<_> = std::fs::read_dir(&journal_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".log"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
}

/// Deterministic bytes.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u64 * 2_654_435_761 % 251) as u8 ^ seed)
        .collect()
}

async fn stored(f: &Fixture, name: &str) -> (Bytes, usize) {
    let n = ObjectName::new(name).unwrap();
    let bytes = f
        .memory
        .get(&n, None, None)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    (bytes, f.memory.all_versions(&n).await.unwrap().len())
}

/// Writes `data` from offset 0 in chunks of 128 KiB (as the kernel sends them).
async fn write_in_order(f: &Fixture, fh: u64, data: &[u8]) {
    for (i, chunk) in data.chunks(128 << 10).enumerate() {
        f.core
            .write(fh, (i * (128 << 10)) as u64, chunk)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_written_in_order_streams_while_it_is_written_and_its_close_finishes_it() {
    let f = fixture();
    let data = pattern((5 << 20) + 17, 1);
    let (_, fh) = f
        .core
        .create(ROOT_INO, "big", 0o640, &Caller::root())
        .await
        .unwrap();
    write_in_order(&f, fh, &data).await;
    // The upload is under way before the close.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while f.faults.calls(Op::StreamUpload) == 0 {
        assert!(std::time::Instant::now() < deadline, "no stream started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(f.faults.calls(Op::FinishUpload), 0);
    f.core.flush(fh).await.unwrap();
    f.core.release(fh).await.unwrap();
    // Finished, never sent whole.
    assert_eq!(f.faults.calls(Op::FinishUpload), 1);
    assert_eq!(f.faults.calls(Op::Post) + f.faults.calls(Op::Put), 0);
    let (bytes, versions) = stored(&f, "big").await;
    assert_eq!(&bytes[..], &data[..]);
    assert_eq!(versions, 1);
    let rec = f
        .memory
        .head(&ObjectName::new("big").unwrap(), None)
        .await
        .unwrap();
    assert_eq!(rec.mode, 0o640);
    let stats: serde_json::Value =
        serde_json::from_slice(&dosfs::core::stats_report(&f.core)).unwrap();
    assert_eq!(stats["streamed_uploads"]["finished"], 1, "{stats}");
    assert_eq!(stats["streamed_uploads"]["bytes"], data.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_out_of_order_truncates_and_failed_streams_upload_the_file_whole() {
    let f = fixture();
    // An overwrite in the middle after the stream started.
    let mut data = pattern(3 << 20, 2);
    let (_, fh) = f
        .core
        .create(ROOT_INO, "patched", 0o644, &Caller::root())
        .await
        .unwrap();
    write_in_order(&f, fh, &data).await;
    f.core.write(fh, 100, b"patch").await.unwrap();
    data[100..105].copy_from_slice(b"patch");
    f.core.flush(fh).await.unwrap();
    f.core.release(fh).await.unwrap();
    assert_eq!(&stored(&f, "patched").await.0[..], &data[..]);
    assert_eq!(f.faults.calls(Op::FinishUpload), 0);

    // Cut short, then written on from there.
    let data = pattern(3 << 20, 3);
    let (attr, fh) = f
        .core
        .create(ROOT_INO, "cut", 0o644, &Caller::root())
        .await
        .unwrap();
    write_in_order(&f, fh, &data).await;
    f.core
        .setattr(attr.ino, &SetAttr::size(1 << 20), &Caller::root())
        .await
        .unwrap();
    f.core.write(fh, 1 << 20, b"end").await.unwrap();
    f.core.flush(fh).await.unwrap();
    f.core.release(fh).await.unwrap();
    let mut want = data[..1 << 20].to_vec();
    want.extend_from_slice(b"end");
    assert_eq!(&stored(&f, "cut").await.0[..], &want[..]);
    assert_eq!(f.faults.calls(Op::FinishUpload), 0);

    // The stream fails, then the store refuses to finish one: the close still stores the
    // file, from the staging file.
    for (op, name) in [(Op::StreamUpload, "failed"), (Op::FinishUpload, "refused")] {
        f.faults
            .fail_times(op, StoreError::Transport("connection reset".into()), 1);
        let data = pattern((2 << 20) + 5, 4);
        let (_, fh) = f
            .core
            .create(ROOT_INO, name, 0o644, &Caller::root())
            .await
            .unwrap();
        write_in_order(&f, fh, &data).await;
        f.core.flush(fh).await.unwrap();
        f.core.release(fh).await.unwrap();
        let (bytes, versions) = stored(&f, name).await;
        assert_eq!(&bytes[..], &data[..], "{name}");
        assert_eq!(versions, 1, "{name}");
    }
    // Small files never stream.
    let opened = f.faults.calls(Op::OpenUpload);
    let (_, fh) = f
        .core
        .create(ROOT_INO, "small", 0o644, &Caller::root())
        .await
        .unwrap();
    write_in_order(&f, fh, &pattern(1 << 20, 5)).await;
    f.core.release(fh).await.unwrap();
    assert_eq!(f.faults.calls(Op::OpenUpload), opened);
}
