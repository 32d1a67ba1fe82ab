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
    f.put_elsewhere("rest").await;
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
    // Paths past Linux's PATH_MAX from the root work (a program gives them relative to a
    // deep directory), up to the store's name limit.
    let (mut dir, mut len, part) = (ROOT_INO, 0, "z".repeat(255));
    while len + 2 * 256 <= dos_protocol::MAX_NAME_BYTES {
        dir = f.core.mkdir(dir, &part, 0o755, &root).await.unwrap().ino;
        len += 256;
    }
    assert!(len > 4096);
    let (deep, fh) = f.core.create(dir, "f", 0o644, &root).await.unwrap();
    f.core.release(fh).await.unwrap();
    assert_eq!(f.core.getattr(deep.ino).await.unwrap().kind, Kind::File);
    let last = f.core.mkdir(dir, &part, 0o755, &root).await.unwrap();
    assert_eq!(
        errno(f.core.mkdir(last.ino, "ab", 0o755, &root).await),
        libc::ENAMETOOLONG,
        "past the store's limit"
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

impl Fixture {
    async fn write_file(&self, ino: u64, data: &[u8]) {
        let fh = self.core.open(ino, true, true).await.unwrap().fh;
        self.core.write(fh, 0, data).await.unwrap();
        self.core.flush(fh).await.unwrap();
        self.core.release(fh).await.unwrap();
    }

    async fn read_file(&self, ino: u64) -> Vec<u8> {
        let fh = self.core.open(ino, false, false).await.unwrap().fh;
        let data = self.core.read(fh, 0, 1 << 20).await.unwrap().to_vec();
        self.core.release(fh).await.unwrap();
        data
    }

    async fn get(&self, name: &str) -> Vec<u8> {
        let read = self
            .memory
            .get(&ObjectName::new(name).unwrap(), None, None)
            .await
            .unwrap();
        read.bytes().await.unwrap().to_vec()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hard_links_share_content_attributes_and_one_inode() {
    let f = fixture();
    let root = Caller::root();
    let d = f.core.mkdir(ROOT_INO, "d", 0o755, &root).await.unwrap();
    let a = f.file("a", 0o644, &root).await;
    f.write_file(a.ino, b"first").await;
    assert_eq!(f.core.getattr(a.ino).await.unwrap().nlink, 1);

    let b = f.core.link(a.ino, d.ino, "b").await.unwrap();
    assert_eq!((b.ino, b.nlink), (a.ino, 2), "one inode, two names");
    assert_eq!(errno(f.core.link(a.ino, d.ino, "b").await), libc::EEXIST);
    assert_eq!(errno(f.core.link(d.ino, ROOT_INO, "dd").await), libc::EPERM);
    let a2 = f.core.lookup(ROOT_INO, "a").await.unwrap();
    assert_eq!((a2.ino, a2.nlink), (a.ino, 2));
    assert!(a2.ctime_ns > a.ctime_ns, "a link changes the file's ctime");

    // A write through one name is read through the other, and over REST under both.
    f.write_file(b.ino, b"second, longer").await;
    assert_eq!(f.read_file(a.ino).await, b"second, longer");
    assert_eq!(f.get("a").await, b"second, longer");
    assert_eq!(f.get("d/b").await, b"second, longer");
    assert_eq!(f.head("a").await.hash, f.head("d/b").await.hash);

    // Attributes too.
    let set = SetAttr {
        mode: Some(0o600),
        uid: Some(65534),
        gid: Some(65533),
        ..SetAttr::default()
    };
    f.core.setattr(a.ino, &set, &root).await.unwrap();
    let seen = f.core.lookup(d.ino, "b").await.unwrap();
    assert_eq!(
        (seen.perm, seen.uid, seen.gid, seen.nlink),
        (0o600, Some(65534), Some(65533), 2)
    );
    assert_eq!(f.head("d/b").await.mode, 0o600);

    // A third name, a rename of one, an unlink of another: the rest stay.
    let c = f.core.link(a.ino, ROOT_INO, "c").await.unwrap();
    assert_eq!(c.nlink, 3);
    f.core
        .rename(d.ino, "b", ROOT_INO, "b2", false)
        .await
        .unwrap();
    let b2 = f.core.lookup(ROOT_INO, "b2").await.unwrap();
    assert_eq!((b2.ino, b2.nlink), (a.ino, 3));
    f.core.unlink(ROOT_INO, "a").await.unwrap();
    let left = f.core.getattr(a.ino).await.unwrap();
    assert_eq!(
        (left.nlink, left.size),
        (2, 14),
        "the inode answers through a name left"
    );
    assert!(left.ctime_ns >= b2.ctime_ns);
    // A rename of one name over another of the same file changes nothing.
    f.core
        .rename(ROOT_INO, "c", ROOT_INO, "b2", false)
        .await
        .unwrap();
    assert_eq!(f.core.lookup(ROOT_INO, "c").await.unwrap().nlink, 2);

    // Renaming another file over a name: that name leaves the file.
    let other = f.file("other", 0o644, &root).await;
    f.core
        .rename(ROOT_INO, "other", ROOT_INO, "c", false)
        .await
        .unwrap();
    let c = f.core.lookup(ROOT_INO, "c").await.unwrap();
    assert_eq!((c.ino, c.nlink), (other.ino, 1));
    let b2 = f.core.lookup(ROOT_INO, "b2").await.unwrap();
    assert_eq!((b2.ino, b2.nlink), (a.ino, 1));
    assert_eq!(f.read_file(b2.ino).await, b"second, longer");

    // A name written over REST (without the group) leaves it too.
    let again = f.core.link(b2.ino, ROOT_INO, "again").await.unwrap();
    assert_eq!(again.nlink, 2);
    f.memory
        .put_bytes(
            &ObjectName::new("again").unwrap(),
            &dos_protocol::WriteAttributes::default(),
            bytes::Bytes::from_static(b"rest"),
        )
        .await
        .unwrap();
    assert_eq!(f.core.getattr(b2.ino).await.unwrap().nlink, 1);
    assert_eq!(f.get("b2").await, b"second, longer");
}

#[tokio::test(flavor = "multi_thread")]
async fn special_files_hard_link_and_moved_directories_keep_their_links() {
    let f = fixture();
    let root = Caller::root();
    let d = f.core.mkdir(ROOT_INO, "d", 0o755, &root).await.unwrap();
    let fifo = f
        .core
        .mknod(d.ino, "p", libc::S_IFIFO | 0o644, 0, &root)
        .await
        .unwrap();
    let q = f.core.link(fifo.ino, ROOT_INO, "q").await.unwrap();
    assert_eq!((q.kind, q.nlink, q.ino), (Kind::Fifo, 2, fifo.ino));
    f.core
        .rename(ROOT_INO, "d", ROOT_INO, "e", false)
        .await
        .unwrap();
    let e = f.core.lookup(ROOT_INO, "e").await.unwrap();
    let p = f.core.lookup(e.ino, "p").await.unwrap();
    assert_eq!(
        (p.ino, p.nlink),
        (fifo.ino, 2),
        "the group follows the move"
    );
    f.core.unlink(ROOT_INO, "q").await.unwrap();
    assert_eq!(f.core.lookup(e.ino, "p").await.unwrap().nlink, 1);
    assert_eq!(f.head("e/p").await.kind, EntryKind::Fifo);
}

impl Fixture {
    /// The change feed tells the core of version `rec`.
    fn heard(&self, rec: &dos_protocol::VersionRecord) {
        let event = dos_protocol::ChangeEvent::Changed(dos_protocol::Change::of(rec));
        self.core.changed(&event);
    }

    /// Writes `name` (one byte, no owner) over REST, behind the core's back.
    async fn put_elsewhere(&self, name: &str) -> dos_protocol::VersionRecord {
        self.memory
            .put_bytes(
                &ObjectName::new(name).unwrap(),
                &dos_protocol::WriteAttributes::default(),
                bytes::Bytes::from_static(b"x"),
            )
            .await
            .unwrap()
    }

    /// Deletes `name` over REST; the core hears of it when it follows the feed.
    async fn delete_elsewhere(&self, name: &str, following: bool) {
        let gone = self
            .memory
            .delete(&ObjectName::new(name).unwrap())
            .await
            .unwrap();
        if following {
            self.heard(&gone);
        }
    }
}

/// `st_nlink` of every directory at the root and of `a` and `b` below it, as `stat` gives them.
async fn dir_links(f: &Fixture, names: &[&str]) -> Vec<u32> {
    let mut out = vec![f.core.getattr(ROOT_INO).await.unwrap().nlink];
    for n in names {
        let (parent, name) = n.rsplit_once('/').unwrap_or(("", n));
        let parent = if parent.is_empty() {
            ROOT_INO
        } else {
            f.core.lookup(ROOT_INO, parent).await.unwrap().ino
        };
        out.push(f.core.lookup(parent, name).await.unwrap().nlink);
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_directory_links_its_subdirectories() {
    // Without the change feed every stat lists (the fixture trusts nothing for long); with
    // it, the counts this mount's own changes keep are used.
    for following in [false, true] {
        let f = fixture();
        f.core.set_following(following);
        let root = Caller::root();
        let a = f.core.mkdir(ROOT_INO, "a", 0o755, &root).await.unwrap();
        assert_eq!(a.nlink, 2, "a new directory has two links");
        let b = f.core.mkdir(ROOT_INO, "b", 0o755, &root).await.unwrap();
        assert_eq!(dir_links(&f, &["a", "b"]).await, [4, 2, 2]);
        f.core.mkdir(a.ino, "s", 0o755, &root).await.unwrap();
        // Files, symlinks and special files are not counted.
        f.file("f", 0o644, &root).await;
        f.core.symlink(a.ino, "l", "s", &root).await.unwrap();
        f.core
            .mknod(a.ino, "p", libc::S_IFIFO | 0o644, 0, &root)
            .await
            .unwrap();
        assert_eq!(dir_links(&f, &["a", "b", "a/s"]).await, [4, 3, 2, 2]);
        // The rename/24.t case: the moved directory's `..` moves with it.
        f.core.rename(a.ino, "s", b.ino, "t", false).await.unwrap();
        assert_eq!(dir_links(&f, &["a", "b", "b/t"]).await, [4, 2, 3, 2]);
        // Onto an empty directory: one goes, one comes.
        f.core.mkdir(a.ino, "u", 0o755, &root).await.unwrap();
        f.core.rename(a.ino, "u", b.ino, "t", false).await.unwrap();
        assert_eq!(dir_links(&f, &["a", "b"]).await, [4, 2, 3]);
        f.core.rmdir(b.ino, "t").await.unwrap();
        assert_eq!(dir_links(&f, &["a", "b"]).await, [4, 2, 2]);
        // A directory moved into another one, with what it holds.
        f.core.mkdir(b.ino, "inner", 0o755, &root).await.unwrap();
        f.core
            .rename(ROOT_INO, "b", a.ino, "b", false)
            .await
            .unwrap();
        assert_eq!(dir_links(&f, &["a", "a/b"]).await, [3, 3, 3]);

        // A folder made elsewhere (over REST, by a name inside it).
        let rec = f.put_elsewhere("a/rest/x").await;
        if following {
            // Not heard of yet: the count kept is still used (no listing per stat) ...
            assert_eq!(dir_links(&f, &["a"]).await, [3, 3]);
            // ... until the feed tells of it.
            f.heard(&rec);
        }
        assert_eq!(dir_links(&f, &["a", "a/rest"]).await, [3, 4, 2]);
        // Its last name deleted over REST: the folder is gone, and so is its link.
        f.delete_elsewhere("a/rest/x", following).await;
        assert_eq!(dir_links(&f, &["a"]).await, [3, 3]);
        // A folder removed elsewhere (its marker deleted over REST: the delete marker does
        // not say it was a folder).
        f.delete_elsewhere("a/b/inner", following).await;
        assert_eq!(dir_links(&f, &["a", "a/b"]).await, [3, 3, 2]);
        // A missed change: every count is found again.
        f.core.changed(&dos_protocol::ChangeEvent::Missed);
        assert_eq!(dir_links(&f, &["a", "a/b"]).await, [3, 3, 2]);
    }
}
