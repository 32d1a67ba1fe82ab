//! POSIX semantics of the filesystem core, without a kernel, on the in-memory store:
//! ownership and its rules, special files, timestamps and name limits (issue 13). The same
//! behaviour through a real mount is what the C pjdfstest checks in CI (`fs/pjdfstest`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use dos_cache::{BlockCache, CacheConfig, StagingArea};
use dos_protocol::{EntryKind, ObjectName};
use dos_store::ObjectStore;
use dos_store::memory::MemoryStore;
use dosfs::core::{Attr, Caller, FsConfig, FsCore, Kind, ROOT_INO, SetAttr};

struct Fixture {
    core: FsCore,
    memory: MemoryStore,
    _dir: tempfile::TempDir,
}

/// A core mounted by root (uid 0), as pjdfstest runs it.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cache = BlockCache::open(CacheConfig {
        min_free_disk_bytes: 0,
        ..CacheConfig::new(dir.path().join("blocks"))
    })
    .unwrap();
    let staging = StagingArea::new(dir.path()).unwrap();
    let memory = MemoryStore::new();
    let mut config = FsConfig::new(0, 0);
    config.attr_ttl = Duration::ZERO;
    let core = FsCore::new(Arc::new(memory.clone()), cache, staging, config);
    Fixture {
        core,
        memory,
        _dir: dir,
    }
}

fn user(uid: u32, gid: u32, groups: &[u32]) -> Caller {
    Caller {
        uid,
        gid,
        groups: groups.to_vec(),
    }
}

fn errno<T: std::fmt::Debug>(r: Result<T, dosfs::error::FsError>) -> i32 {
    r.expect_err("the call should fail").errno()
}

impl Fixture {
    /// An empty file `name` at the root, made by `who` and closed.
    async fn file(&self, name: &str, mode: u32, who: &Caller) -> Attr {
        let (a, fh) = self.core.create(ROOT_INO, name, mode, who).await.unwrap();
        self.core.flush(fh).await.unwrap();
        self.core.release(fh).await.unwrap();
        self.core.getattr(a.ino).await.unwrap()
    }

    async fn head(&self, name: &str) -> dos_protocol::VersionRecord {
        self.memory
            .head(&ObjectName::new(name).unwrap(), None)
            .await
            .unwrap()
    }

    async fn chown(&self, ino: u64, uid: Option<u32>, gid: Option<u32>, who: &Caller) -> Attr {
        let set = SetAttr {
            uid,
            gid,
            ..SetAttr::default()
        };
        self.core.setattr(ino, &set, who).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn new_files_belong_to_their_creator_and_the_store_keeps_it() {
    let f = fixture();
    let alice = user(1000, 100, &[]);
    let a = f.file("a", 0o640, &alice).await;
    assert_eq!((a.uid, a.gid, a.perm), (Some(1000), Some(100), 0o640));
    let rec = f.head("a").await;
    assert_eq!((rec.posix.uid, rec.posix.gid), (Some(1000), Some(100)));
    let d = f.core.mkdir(ROOT_INO, "d", 0o755, &alice).await.unwrap();
    assert_eq!((d.uid, d.gid), (Some(1000), Some(100)));
    let l = f.core.symlink(ROOT_INO, "l", "a", &alice).await.unwrap();
    assert_eq!((l.uid, l.gid), (Some(1000), Some(100)));
    // A name written over REST without an owner shows as the mounting user's (the adapter
    // fills in the mount's ids for `None`).
    f.memory
        .put_bytes(
            &ObjectName::new("rest").unwrap(),
            &dos_protocol::WriteAttributes::default(),
            bytes::Bytes::from_static(b"x"),
        )
        .await
        .unwrap();
    let r = f.core.lookup(ROOT_INO, "rest").await.unwrap();
    assert_eq!((r.uid, r.gid), (None, None));
}

#[tokio::test(flavor = "multi_thread")]
async fn only_root_gives_files_away_and_owners_pick_among_their_groups() {
    let f = fixture();
    let root = Caller::root();
    let bob = user(1001, 200, &[201]);
    let a = f.file("a", 0o644, &root).await;
    let a = f.chown(a.ino, Some(1001), Some(200), &root).await;
    assert_eq!((a.uid, a.gid), (Some(1001), Some(200)));
    assert_eq!(f.head("a").await.posix.uid, Some(1001), "kept in the store");
    // The owner may not give the file away, but may move it to a group of its own.
    let give = SetAttr {
        uid: Some(1002),
        ..SetAttr::default()
    };
    assert_eq!(errno(f.core.setattr(a.ino, &give, &bob).await), libc::EPERM);
    let a = f.chown(a.ino, None, Some(201), &bob).await;
    assert_eq!(a.gid, Some(201));
    let foreign = SetAttr {
        gid: Some(300),
        ..SetAttr::default()
    };
    assert_eq!(
        errno(f.core.setattr(a.ino, &foreign, &bob).await),
        libc::EPERM
    );
    // Someone else may do neither, nor change the mode.
    let eve = user(1003, 201, &[]);
    let same_group = SetAttr {
        gid: Some(201),
        ..SetAttr::default()
    };
    // Setting what is already there is allowed (chown -1 -1 succeeds for anyone).
    f.core.setattr(a.ino, &same_group, &eve).await.unwrap();
    assert_eq!(
        errno(f.core.setattr(a.ino, &SetAttr::mode(0o777), &eve).await),
        libc::EPERM
    );
    assert_eq!(f.core.getattr(a.ino).await.unwrap().perm, 0o644);
}

#[tokio::test(flavor = "multi_thread")]
async fn chown_clears_setuid_and_setgid_of_files_not_directories() {
    let f = fixture();
    let root = Caller::root();
    let a = f.file("a", 0o6755, &root).await;
    assert_eq!(a.perm, 0o6755);
    let a = f.chown(a.ino, Some(5), Some(5), &root).await;
    assert_eq!(a.perm, 0o755, "setuid, and setgid with group execute, go");
    let b = f.file("b", 0o6745, &root).await;
    let b = f.chown(b.ino, Some(5), None, &root).await;
    assert_eq!(
        b.perm, 0o2745,
        "setgid without group execute is mandatory locking: kept"
    );
    let d = f.core.mkdir(ROOT_INO, "d", 0o6755, &root).await.unwrap();
    let d = f.chown(d.ino, Some(5), Some(5), &root).await;
    assert_eq!(d.perm, 0o6755, "a directory keeps them");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_setgid_directory_passes_its_group_on() {
    let f = fixture();
    let root = Caller::root();
    let d = f
        .core
        .mkdir(ROOT_INO, "shared", 0o2775, &root)
        .await
        .unwrap();
    let d = f.chown(d.ino, None, Some(500), &root).await;
    assert_eq!((d.perm, d.gid), (0o2775, Some(500)));
    let alice = user(1000, 100, &[]);
    let (file, fh) = f.core.create(d.ino, "f", 0o644, &alice).await.unwrap();
    f.core.release(fh).await.unwrap();
    assert_eq!((file.uid, file.gid), (Some(1000), Some(500)));
    let sub = f.core.mkdir(d.ino, "sub", 0o755, &alice).await.unwrap();
    assert_eq!(
        (sub.gid, sub.perm),
        (Some(500), 0o2755),
        "and its setgid bit"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn fifos_sockets_and_device_nodes_are_names_with_attributes() {
    let f = fixture();
    let root = Caller::root();
    let cases = [
        ("fifo", libc::S_IFIFO, 0, Kind::Fifo, EntryKind::Fifo),
        ("sock", libc::S_IFSOCK, 0, Kind::Socket, EntryKind::Socket),
        (
            "chr",
            libc::S_IFCHR,
            0x0105,
            Kind::CharDevice,
            EntryKind::CharDevice,
        ),
        (
            "blk",
            libc::S_IFBLK,
            0x0801,
            Kind::BlockDevice,
            EntryKind::BlockDevice,
        ),
    ];
    for (name, ty, rdev, kind, stored) in cases {
        let a = f
            .core
            .mknod(ROOT_INO, name, ty | 0o640, rdev, &root)
            .await
            .unwrap();
        assert_eq!(
            (a.kind, a.perm, a.rdev, a.size),
            (kind, 0o640, rdev, 0),
            "{name}"
        );
        let rec = f.head(name).await;
        assert_eq!(
            (rec.kind, rec.posix.rdev, rec.size),
            (stored, rdev, 0),
            "{name}"
        );
        assert_eq!(
            errno(f.core.mknod(ROOT_INO, name, ty | 0o640, rdev, &root).await),
            libc::EEXIST,
            "{name}"
        );
    }
    let ls = f.core.read_dir(ROOT_INO).await.unwrap();
    let kinds: Vec<(String, Kind)> = ls.iter().map(|e| (e.name.clone(), e.kind)).collect();
    assert!(kinds.contains(&("fifo".into(), Kind::Fifo)), "{kinds:?}");
    assert!(
        kinds.contains(&("blk".into(), Kind::BlockDevice)),
        "{kinds:?}"
    );
    // Renamed and removed like any entry, kind and device number kept.
    f.core
        .rename(ROOT_INO, "chr", ROOT_INO, "chr2", false)
        .await
        .unwrap();
    let moved = f.core.lookup(ROOT_INO, "chr2").await.unwrap();
    assert_eq!((moved.kind, moved.rdev), (Kind::CharDevice, 0x0105));
    f.core.unlink(ROOT_INO, "fifo").await.unwrap();
    assert_eq!(errno(f.core.lookup(ROOT_INO, "fifo").await), libc::ENOENT);
    // Only root makes device nodes; anyone a FIFO.
    let alice = user(1000, 100, &[]);
    assert_eq!(
        errno(
            f.core
                .mknod(ROOT_INO, "c2", libc::S_IFCHR | 0o600, 1, &alice)
                .await
        ),
        libc::EPERM
    );
    let p = f
        .core
        .mknod(ROOT_INO, "p2", libc::S_IFIFO | 0o600, 0, &alice)
        .await
        .unwrap();
    assert_eq!(p.uid, Some(1000));
    // They hold no data here: the kernel opens FIFOs and devices itself, never dosfs.
    let sock = f.core.lookup(ROOT_INO, "sock").await.unwrap();
    let opened = f.core.open(sock.ino, true, false).await.map(|o| o.fh);
    assert_eq!(errno(opened), libc::EOPNOTSUPP);
}

#[tokio::test(flavor = "multi_thread")]
async fn ctime_follows_every_change_and_directories_follow_their_entries() {
    let f = fixture();
    let root = Caller::root();
    let a = f.file("a", 0o644, &root).await;
    let dir0 = f.core.getattr(ROOT_INO).await.unwrap();
    let d = f.core.mkdir(ROOT_INO, "d", 0o755, &root).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;

    let after_chmod = f
        .core
        .setattr(a.ino, &SetAttr::mode(0o600), &root)
        .await
        .unwrap();
    assert!(after_chmod.ctime_ns > a.ctime_ns, "chmod moves ctime");
    assert_eq!(after_chmod.mtime_ns, a.mtime_ns, "not mtime");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let after_chown = f.chown(a.ino, Some(7), None, &root).await;
    assert!(
        after_chown.ctime_ns > after_chmod.ctime_ns,
        "chown moves ctime"
    );

    // Entries made, renamed and removed in a directory move its mtime and ctime.
    let (_, fh) = f.core.create(d.ino, "x", 0o644, &root).await.unwrap();
    f.core.release(fh).await.unwrap();
    let d1 = f.core.getattr(d.ino).await.unwrap();
    assert!(
        d1.mtime_ns > d.mtime_ns && d1.ctime_ns > d.ctime_ns,
        "create"
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    f.core.rename(d.ino, "x", d.ino, "y", false).await.unwrap();
    let d2 = f.core.getattr(d.ino).await.unwrap();
    assert!(d2.mtime_ns > d1.mtime_ns, "rename");
    tokio::time::sleep(Duration::from_millis(20)).await;
    f.core.unlink(d.ino, "y").await.unwrap();
    let d3 = f.core.getattr(d.ino).await.unwrap();
    assert!(d3.mtime_ns > d2.mtime_ns, "unlink");
    let root_now = f.core.getattr(ROOT_INO).await.unwrap();
    assert!(
        root_now.mtime_ns > dir0.mtime_ns,
        "mkdir moved the root's too"
    );

    // Times set explicitly win over the entries' changes before them.
    let set = SetAttr {
        atime_ns: Some(1_000_000_007),
        mtime_ns: Some(2_000_000_009),
        ..SetAttr::default()
    };
    let d4 = f.core.setattr(d.ino, &set, &root).await.unwrap();
    assert_eq!((d4.atime_ns, d4.mtime_ns), (1_000_000_007, 2_000_000_009));
    assert!(d4.ctime_ns >= d3.ctime_ns);
}

#[tokio::test(flavor = "multi_thread")]
async fn access_and_modification_times_are_kept_apart_to_the_nanosecond() {
    let f = fixture();
    let root = Caller::root();
    let a = f.file("a", 0o644, &root).await;
    // UTIME_OMIT of the mtime: only the atime moves.
    let only_atime = SetAttr {
        atime_ns: Some(1_234_567_890_123_456_789),
        ..SetAttr::default()
    };
    let got = f.core.setattr(a.ino, &only_atime, &root).await.unwrap();
    assert_eq!(got.atime_ns, 1_234_567_890_123_456_789);
    assert_eq!(got.mtime_ns, a.mtime_ns);
    let rec = f.head("a").await;
    assert_eq!(
        rec.posix.atime_ns,
        Some(1_234_567_890_123_456_789),
        "stored"
    );
    let only_mtime = SetAttr {
        mtime_ns: Some(987_654_321_987_654_321),
        ..SetAttr::default()
    };
    let got = f.core.setattr(a.ino, &only_mtime, &root).await.unwrap();
    assert_eq!(got.mtime_ns, 987_654_321_987_654_321);
    assert_eq!(got.atime_ns, 1_234_567_890_123_456_789, "atime left alone");
    // Before the epoch works too.
    let old = SetAttr::mtime(-1_500_000_000);
    let got = f.core.setattr(a.ino, &old, &root).await.unwrap();
    assert_eq!(got.mtime_ns, -1_500_000_000);
    // Reads do not move the atime (noatime).
    let fh = f.core.open(a.ino, false, false).await.unwrap().fh;
    f.core.read(fh, 0, 10).await.unwrap();
    f.core.release(fh).await.unwrap();
    assert_eq!(
        f.core.getattr(a.ino).await.unwrap().atime_ns,
        1_234_567_890_123_456_789
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn names_past_the_limits_are_refused() {
    let f = fixture();
    let root = Caller::root();
    let long = "x".repeat(256);
    assert_eq!(
        errno(f.core.create(ROOT_INO, &long, 0o644, &root).await),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(f.core.lookup(ROOT_INO, &long).await),
        libc::ENAMETOOLONG
    );
    let fits = "y".repeat(255);
    f.file(&fits, 0o644, &root).await;
    let target = "t/".repeat(2048);
    assert_eq!(
        errno(f.core.symlink(ROOT_INO, "l", &target, &root).await),
        libc::ENAMETOOLONG
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn directory_times_are_stored_at_unmount() {
    let f = fixture();
    let root = Caller::root();
    let d = f.core.mkdir(ROOT_INO, "d", 0o755, &root).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (_, fh) = f.core.create(d.ino, "x", 0o644, &root).await.unwrap();
    f.core.flush(fh).await.unwrap();
    f.core.release(fh).await.unwrap();
    let moved = f.core.getattr(d.ino).await.unwrap().mtime_ns;
    assert!(moved > d.mtime_ns);
    assert_eq!(
        f.head("d").await.mtime_ns,
        d.mtime_ns,
        "in memory until unmount"
    );
    assert!(f.core.flush_all().await.is_empty());
    assert_eq!(f.head("d").await.mtime_ns, moved, "stored at unmount");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_open_for_reading_keeps_answering_after_its_unlink() {
    let f = fixture();
    let root = Caller::root();
    let (a, fh) = f.core.create(ROOT_INO, "a", 0o640, &root).await.unwrap();
    f.core.write(fh, 0, b"still here").await.unwrap();
    f.core.flush(fh).await.unwrap();
    f.core.release(fh).await.unwrap();
    let rfh = f.core.open(a.ino, false, false).await.unwrap().fh;
    f.core.unlink(ROOT_INO, "a").await.unwrap();
    assert_eq!(errno(f.core.lookup(ROOT_INO, "a").await), libc::ENOENT);
    let st = f.core.getattr(a.ino).await.unwrap();
    assert!(st.unlinked, "link count 0");
    assert_eq!((st.size, st.perm), (10, 0o640));
    assert_eq!(f.core.getattr_open(a.ino, rfh).await.unwrap(), st);
    assert_eq!(&f.core.read(rfh, 0, 64).await.unwrap()[..], b"still here");
    f.core.release(rfh).await.unwrap();
    assert_eq!(
        errno(f.core.getattr(a.ino).await),
        libc::ENOENT,
        "gone with its last handle"
    );
}
