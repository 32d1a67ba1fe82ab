//! The filesystem core: every operation as an async method returning `FsResult`, with no
//! FUSE types in it, so it runs (and is tested) without a kernel mount.
//!
//! Paths map to object names one to one (`a/b.txt` is the object `a/b.txt`). Directories are
//! name prefixes plus an optional `dir` marker object that keeps an empty directory alive.
//! Writes go to a local staging file and are uploaded whole on flush/fsync/close.

mod at;
mod dirs;
mod history;
mod inodes;
pub mod journal;
mod links;
mod passthrough;
mod read;
pub mod stats;
mod stream;
mod write;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dos_cache::{BlockCache, StagingArea};
use dos_protocol::{
    ContentHash, EntryKind, ListQuery, ObjectName, PosixAttrs, VersionRecord, WriteAttributes,
    now_ns,
};
use dos_store::{ObjectStore, PostOutcome, StoreError};

use crate::error::{FsError, FsResult};
pub use history::version_file_name;
use inodes::Inodes;
pub use inodes::{NodeKey, ROOT_INO};
pub use passthrough::{Opened, PASSTHROUGH_MIN_BYTES, PASSTHROUGH_WAIT, PassthroughFile};
pub use read::ReadBudget;
pub use stats::report as stats_report;
use write::Staged;

/// How long attributes and listings fetched from the store are trusted (close-to-open, and
/// changes made through REST show within this).
pub const ATTR_TTL: Duration = Duration::from_secs(1);
/// The control folder at the root: `.dosfs/history/…`, `.dosfs/at/…`, `.dosfs/stats`.
pub const CONTROL_DIR: &str = ".dosfs";
/// The extended attribute whose read verifies a file's stored content in full and repairs it
/// (what `dosfs check` reads); not listed by listxattr, so `getfattr -d` never runs it.
pub const CHECK_XATTR: &str = "user.dosfs.check";
/// Cached attribute entries past which the expired ones are dropped.
const ENTRY_PURGE_AT: usize = 4096;
/// Cached attribute entries at most.
const ENTRY_CAP: usize = 65_536;
/// An attribute change (or a save of the same bytes) this soon after this mount made a
/// version of the file replaces that version instead of adding one: `tar`, `cp -p` and
/// `rsync` set times and modes right after a file's close, and the history should show one
/// version per save. The store only does so when the version is still the latest and holds
/// the same content.
pub const FOLD_WINDOW: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl Kind {
    fn of(k: EntryKind) -> Self {
        match k {
            EntryKind::File => Kind::File,
            EntryKind::Dir => Kind::Dir,
            EntryKind::Symlink => Kind::Symlink,
            EntryKind::Fifo => Kind::Fifo,
            EntryKind::Socket => Kind::Socket,
            EntryKind::CharDevice => Kind::CharDevice,
            EntryKind::BlockDevice => Kind::BlockDevice,
        }
    }
}

/// Who asks for an operation (the FUSE request's credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (read only where a rule needs them: a chown of the group).
    pub groups: Vec<u32>,
}

impl Caller {
    pub fn root() -> Self {
        Self {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
        }
    }

    pub fn is_root(&self) -> bool {
        self.uid == 0
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// What a `setattr` changes (`None`: left as it is). Times are nanoseconds since the epoch;
/// the adapter turns `UTIME_NOW` into the current time and `UTIME_OMIT` into `None`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime_ns: Option<i64>,
    pub mtime_ns: Option<i64>,
}

impl SetAttr {
    pub fn size(size: u64) -> Self {
        Self {
            size: Some(size),
            ..Self::default()
        }
    }

    pub fn mode(mode: u32) -> Self {
        Self {
            mode: Some(mode),
            ..Self::default()
        }
    }

    pub fn mtime(mtime_ns: i64) -> Self {
        Self {
            mtime_ns: Some(mtime_ns),
            ..Self::default()
        }
    }
}

/// Attributes of one node, as the adapter reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits (with setuid, setgid and sticky).
    pub perm: u32,
    pub mtime_ns: i64,
    /// Access time (dosfs is `noatime`: reads do not change it).
    pub atime_ns: i64,
    /// When data or attributes last changed.
    pub ctime_ns: i64,
    /// Owner and group; `None`: not recorded (the adapter shows the mounting user's).
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Device number of a device node.
    pub rdev: u32,
    pub hash: Option<ContentHash>,
    pub version: Option<u64>,
    /// Under `.dosfs`: nothing there can be changed.
    pub read_only: bool,
    /// Deleted while still open (link count 0).
    pub unlinked: bool,
    /// The hard-link group of a file with several names (see `links`).
    pub link: Option<u64>,
    /// Names of a file (a directory shows 2).
    pub nlink: u32,
}

impl Attr {
    /// A read-only node of `.dosfs` (history, stats), owned by the mounting user.
    pub(crate) fn read_only(ino: u64, kind: Kind, size: u64, perm: u32, mtime_ns: i64) -> Self {
        Self {
            ino,
            kind,
            size,
            perm,
            mtime_ns,
            atime_ns: mtime_ns,
            ctime_ns: mtime_ns,
            uid: None,
            gid: None,
            rdev: 0,
            hash: None,
            version: None,
            read_only: true,
            unlinked: false,
            link: None,
            nlink: 1,
        }
    }
}

/// What the store says one path is.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// A file or symlink version, or a directory marker.
    Object(VersionRecord),
    /// A directory that exists only because names live under it.
    ImpliedDir,
}

/// The longest path a symlink may hold (Linux's `PATH_MAX`, with its NUL).
const PATH_MAX: usize = 4095;

/// What the kernel should drop after a change made elsewhere (see [`FsCore::changed`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalidate {
    /// The attributes and cached pages of an inode.
    Inode(u64),
    /// The name `name` in directory `parent` (a positive or negative entry).
    Entry { parent: u64, name: String },
}

/// A node about to be made by `create_object`.
struct New {
    kind: EntryKind,
    mode: u32,
    rdev: u32,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub name: String,
    pub kind: Kind,
}

pub struct FsConfig {
    pub read_ahead_blocks: u64,
    /// What reads may hold in memory besides the cache's memory tier (see [`ReadBudget`]).
    pub read_memory_bytes: u64,
    pub uid: u32,
    pub gid: u32,
    /// How long attributes and listings fetched from the store are trusted ([`ATTR_TTL`] in
    /// a mount; tests that change the store behind the core's back set zero).
    pub attr_ttl: Duration,
    /// A file written in order from its first byte starts streaming to the store once it
    /// is longer than this (see `stream`); `None`: every file is uploaded at its close.
    pub stream_after: Option<u64>,
    /// Where the token of the store's REST API is kept, when the mount made it (shown in
    /// `.dosfs/stats` for the `dosfs` commands that use REST).
    pub token_file: Option<std::path::PathBuf>,
    /// The CA the mount trusts for an https:// API server (shown in `.dosfs/stats` too).
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Files streaming to the store at once (each holds one upload request open).
const STREAMS_AT_ONCE: usize = 8;

impl FsConfig {
    pub fn new(uid: u32, gid: u32) -> Self {
        Self {
            read_ahead_blocks: 16,
            read_memory_bytes: 64 << 20,
            uid,
            gid,
            attr_ttl: ATTR_TTL,
            stream_after: Some(1 << 20),
            token_file: None,
            tls_ca: None,
        }
    }
}

pub(crate) enum Handle {
    Read(read::ReadHandle),
    Write {
        staged: Arc<Mutex<Staged>>,
    },
    Dir(Vec<DirEntry>),
    /// Contents made at open (`.dosfs/stats`).
    Static(bytes::Bytes),
}

pub struct FsCore {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) cache: BlockCache,
    pub(crate) staging: StagingArea,
    pub(crate) config: FsConfig,
    pub(crate) reads: read::ReadBudget,
    inodes: Mutex<Inodes>,
    entries: Mutex<HashMap<String, (Instant, Entry)>>,
    last_purge: Mutex<Instant>,
    staged: Mutex<HashMap<String, Arc<Mutex<Staged>>>>,
    /// Files deleted while open for writing, by inode, until their last close.
    orphans: Mutex<HashMap<u64, Arc<Mutex<Staged>>>>,
    /// The last version of names deleted while open only for reading, by inode, until the
    /// last handle goes: `fstat` of the open file keeps answering (link count 0).
    pub(crate) unlinked_open: Mutex<HashMap<u64, VersionRecord>>,
    /// The versions this mount made lately, by path: what a following attribute change
    /// folds into (see [`FOLD_WINDOW`]).
    /// Deletes are kept too (`true`), so that the change feed's echo of them is known as
    /// this mount's own; nothing folds into a delete marker.
    saves: Mutex<HashMap<String, (Instant, u64, bool)>>,
    /// When this mount last added, removed or renamed an entry of each directory (ns): its
    /// mtime and ctime from then on, unless its record was changed later (see `dir_time`).
    dir_times: Mutex<HashMap<String, i64>>,
    /// Records of hard-link groups read lately, by group (see `links`).
    groups: Mutex<HashMap<u64, (Instant, links::Group)>>,
    /// Held while a link group's record is read and rewritten.
    group_changes: tokio::sync::Mutex<()>,
    /// The write-back journal (`--writeback`), if on.
    pub(crate) journal: Option<Arc<journal::Journal>>,
    pub(crate) journal_changed: tokio::sync::Notify,
    /// Journal records being uploaded now, and when a failed path may be tried again.
    pub(crate) uploads: Mutex<write::UploadState>,
    /// Slots for uploads that overlap the writes, and what they did.
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    pub(crate) stream_stats: Arc<stream::StreamStats>,
    /// FUSE operations served and bytes read and written (`.dosfs/stats`).
    pub ops: Arc<stats::OpCounters>,
    handles: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Handle>>>>,
    next_fh: Mutex<u64>,
    started_ns: i64,
    /// Open modes by inode and handle (FUSE passthrough rules, see `passthrough`).
    io: Mutex<passthrough::IoModes>,
    /// Signalled whenever an open mode is given back.
    io_changed: tokio::sync::Notify,
    /// Whether passthrough opens may be offered (the adapter enables it at init).
    passthrough: AtomicBool,
    /// Whether large uncached files may be opened with direct I/O (the adapter enables it at
    /// init when the kernel keeps shared mmap of such files working).
    direct_io: AtomicBool,
    /// What the tree was at moments, as listed under `.dosfs/at` (see `at`).
    at_entries: Mutex<at::AtEntries>,
    /// Listing requests made of the store (`.dosfs/stats`).
    listings: std::sync::atomic::AtomicU64,
    /// Subdirectory counts of directories, for their link counts (see `dirs`).
    subdirs: Mutex<dirs::SubdirCounts>,
    /// Listings made for those counts, for the `readdir` that follows (see `dirs`).
    recent: Mutex<dirs::RecentListings>,
    /// Whether the store's change feed is being followed now (see [`Self::set_following`]).
    following: AtomicBool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `parent/name`, or `name` under the root.
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

/// The object name of a namespace path.
pub(crate) fn object_name(path: &str) -> FsResult<ObjectName> {
    ObjectName::new(path).map_err(|e| FsError::Invalid(format!("{path:?}: {e}")))
}

/// The attributes a version gives its node.
fn object_attr(ino: u64, r: &VersionRecord) -> Attr {
    Attr {
        ino,
        kind: Kind::of(r.kind),
        size: if r.kind == EntryKind::Dir { 0 } else { r.size },
        perm: r.mode & 0o7777,
        mtime_ns: r.mtime_ns,
        atime_ns: r.posix.atime_ns.unwrap_or(r.mtime_ns),
        ctime_ns: r.ctime_ns,
        uid: r.posix.uid,
        gid: r.posix.gid,
        rdev: r.posix.rdev,
        hash: r.hash,
        version: Some(r.version),
        read_only: false,
        unlinked: false,
        link: r.posix.link,
        nlink: 1,
    }
}

/// A listing of at most one child of directory `path` (is it empty? does it exist?).
fn first_child(path: &str) -> ListQuery {
    ListQuery {
        prefix: format!("{path}/"),
        delimiter: Some('/'),
        cursor: None,
        limit: 1,
        at: None,
    }
}

fn check_name(name: &str) -> FsResult<()> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(FsError::Invalid(format!("bad name {name:?}")));
    }
    if name.len() > 255 {
        return Err(FsError::NameTooLong);
    }
    Ok(())
}

impl FsCore {
    pub fn new(
        store: Arc<dyn ObjectStore>,
        cache: BlockCache,
        staging: StagingArea,
        config: FsConfig,
    ) -> Self {
        let reads = read::ReadBudget::new(config.read_memory_bytes, cache.block_size());
        Self {
            store,
            cache,
            staging,
            config,
            reads,
            inodes: Mutex::new(Inodes::new()),
            entries: Mutex::default(),
            last_purge: Mutex::new(Instant::now()),
            staged: Mutex::default(),
            orphans: Mutex::default(),
            unlinked_open: Mutex::default(),
            saves: Mutex::default(),
            dir_times: Mutex::default(),
            groups: Mutex::default(),
            group_changes: tokio::sync::Mutex::new(()),
            journal: None,
            journal_changed: tokio::sync::Notify::new(),
            uploads: Mutex::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(STREAMS_AT_ONCE)),
            stream_stats: Arc::default(),
            ops: Arc::default(),
            handles: Mutex::default(),
            next_fh: Mutex::new(1),
            started_ns: now_ns(),
            io: Mutex::default(),
            io_changed: tokio::sync::Notify::new(),
            passthrough: AtomicBool::new(false),
            direct_io: AtomicBool::new(false),
            at_entries: Mutex::default(),
            listings: std::sync::atomic::AtomicU64::new(0),
            subdirs: Mutex::default(),
            recent: Mutex::default(),
            following: AtomicBool::new(false),
        }
    }

    /// One listing page from the store (each counted: `.dosfs/stats` shows them).
    pub(crate) async fn list_page(&self, query: &ListQuery) -> FsResult<dos_protocol::ListPage> {
        self.listings
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self.store.list(query).await?)
    }

    /// Listing requests made of the store so far.
    pub fn listings(&self) -> u64 {
        self.listings.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Turns write-back on: closes are made durable in `journal` and uploaded later.
    pub fn with_journal(mut self, journal: journal::Journal) -> Self {
        self.journal = Some(Arc::new(journal));
        self
    }

    /// Records the write-back journal holds (0 without write-back).
    pub fn journal_len(&self) -> usize {
        self.journal.as_ref().map_or(0, |j| j.len())
    }

    /// Resolves when a close added a record to the journal.
    pub async fn journal_changed(&self) {
        self.journal_changed.notified().await
    }

    pub fn cache(&self) -> &BlockCache {
        &self.cache
    }

    pub(crate) fn node(&self, ino: u64) -> FsResult<NodeKey> {
        lock(&self.inodes).key(ino).ok_or(FsError::NotFound)
    }

    /// The inode number of `key`, without the kernel holding it (listings, `..`).
    pub(crate) fn ino_of(&self, key: NodeKey) -> u64 {
        lock(&self.inodes).peek(&key)
    }

    /// The inode number of `key`, now held by the kernel once more (an entry reply).
    pub(crate) fn entered(&self, key: NodeKey) -> u64 {
        lock(&self.inodes).looked_up(key)
    }

    /// The kernel forgot `n` references to `ino`: at zero its number and cached attributes
    /// go (so memory follows what the kernel keeps, not what was ever walked).
    pub fn forget(&self, ino: u64, n: u64) {
        let forgotten = lock(&self.inodes).forget(ino, n);
        if let Some(NodeKey::Path(p)) = forgotten {
            self.forget_entry(&p);
        }
    }

    /// When more than `cap` inodes are held: (parent inode, name) of entries the kernel may be
    /// asked to drop (it then forgets those not in use), about a tenth of the cap beyond it.
    pub fn entries_over_cap(&self, cap: usize) -> Vec<(u64, String)> {
        let inodes = lock(&self.inodes);
        let over = inodes.count().saturating_sub(cap);
        if over == 0 {
            return Vec::new();
        }
        inodes
            .some_paths(over + cap / 10)
            .into_iter()
            .map(|p| match p.rsplit_once('/') {
                Some((parent, name)) => (inodes.peek(&NodeKey::Path(parent.into())), name.into()),
                None => (ROOT_INO, p),
            })
            .collect()
    }

    /// Open file and directory handles.
    pub fn handle_count(&self) -> usize {
        lock(&self.handles).len()
    }

    /// Files being written here (staged, not yet settled).
    pub fn staged_count(&self) -> usize {
        lock(&self.staged).len()
    }

    /// Inodes held (for tests and statistics).
    pub fn inode_count(&self) -> usize {
        lock(&self.inodes).count()
    }

    /// Attribute entries cached (for tests and statistics).
    pub fn entry_count(&self) -> usize {
        lock(&self.entries).len()
    }

    /// The namespace path of a normal node, or EROFS-style refusal for `.dosfs` nodes.
    fn writable_path(&self, ino: u64) -> FsResult<String> {
        match self.node(ino)? {
            NodeKey::Path(p) => Ok(p),
            _ => Err(FsError::ReadOnly("file history cannot be changed")),
        }
    }

    fn child_path(&self, parent: u64, name: &str) -> FsResult<String> {
        check_name(name)?;
        let p = self.writable_path(parent)?;
        if p.is_empty() && name == CONTROL_DIR {
            return Err(FsError::NotPermitted(".dosfs is reserved"));
        }
        let path = join(&p, name);
        if path.len() > dos_protocol::MAX_NAME_BYTES {
            return Err(FsError::NameTooLong);
        }
        Ok(path)
    }

    pub(crate) fn remember(&self, path: &str, entry: Entry) {
        let mut entries = lock(&self.entries);
        // Entries are worth keeping for one TTL only: past a few thousand, the expired ones
        // go (at most once a TTL, so a burst does not rescan the map on every insert).
        if entries.len() >= ENTRY_PURGE_AT {
            let mut last = lock(&self.last_purge);
            if last.elapsed() >= self.config.attr_ttl {
                let ttl = self.config.attr_ttl;
                entries.retain(|_, (at, _)| at.elapsed() < ttl);
                *last = Instant::now();
            }
            // Its own cap: these are answers trusted for one TTL, so dropping them all costs
            // no more than a second of lookups.
            if entries.len() >= ENTRY_CAP {
                entries.clear();
            }
        }
        entries.insert(path.to_string(), (Instant::now(), entry));
    }

    /// This mount just made version `rec` of `path`.
    pub(crate) fn saved(&self, path: &str, rec: &VersionRecord) {
        self.note_version(path, rec.version, false);
    }

    fn note_version(&self, path: &str, version: u64, deleted: bool) {
        let mut saves = lock(&self.saves);
        if saves.len() >= ENTRY_PURGE_AT {
            saves.retain(|_, (at, _, _)| at.elapsed() < FOLD_WINDOW);
        }
        saves.insert(path.to_string(), (Instant::now(), version, deleted));
    }

    /// The version of `path` a new version made now may replace (see [`FOLD_WINDOW`]).
    pub(crate) fn fold_into(&self, path: &str) -> Option<u64> {
        lock(&self.saves)
            .get(path)
            .filter(|(at, _, deleted)| !deleted && at.elapsed() < FOLD_WINDOW)
            .map(|(_, v, _)| *v)
    }

    /// This mount deleted `path` (its delete marker is version `version`): a new version
    /// there folds into nothing, and the feed's echo of the delete is this mount's own.
    fn deleted_here(&self, path: &str, version: u64) {
        self.note_version(path, version, true);
    }

    pub(crate) fn forget_entry(&self, path: &str) {
        lock(&self.entries).remove(path);
    }

    fn fresh_entry(&self, path: &str) -> Option<Entry> {
        let entries = lock(&self.entries);
        entries
            .get(path)
            .filter(|(at, _)| at.elapsed() < self.config.attr_ttl)
            .map(|(_, e)| e.clone())
    }

    /// What `path` is in the store right now (within [`ATTR_TTL`]).
    pub(crate) async fn entry(&self, path: &str) -> FsResult<Entry> {
        if path.is_empty() {
            return Ok(Entry::ImpliedDir);
        }
        if let Some(e) = self.fresh_entry(path) {
            return Ok(e);
        }
        match self.store.head(&object_name(path)?, None).await {
            Ok(rec) => {
                let e = Entry::Object(rec);
                self.remember(path, e.clone());
                return Ok(e);
            }
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let page = self.list_page(&first_child(path)).await?;
        if page.entries.is_empty() && page.prefixes.is_empty() {
            self.forget_entry(path);
            return Err(FsError::NotFound);
        }
        self.remember(path, Entry::ImpliedDir);
        Ok(Entry::ImpliedDir)
    }

    fn attr_of(&self, ino: u64, path: &str, entry: &Entry) -> Attr {
        let mut attr = match entry {
            Entry::ImpliedDir => Attr {
                ino,
                kind: Kind::Dir,
                size: 0,
                perm: 0o755,
                mtime_ns: self.started_ns,
                atime_ns: self.started_ns,
                ctime_ns: self.started_ns,
                uid: None,
                gid: None,
                rdev: 0,
                hash: None,
                version: None,
                read_only: false,
                unlinked: false,
                link: None,
                nlink: 1,
            },
            Entry::Object(r) => object_attr(ino, r),
        };
        if attr.kind == Kind::Dir
            && let Some(t) = self.dir_time(path)
            && t > attr.ctime_ns
        {
            attr.mtime_ns = t;
            attr.ctime_ns = t;
        }
        attr
    }

    /// When this mount last changed the entries of directory `path`.
    fn dir_time(&self, path: &str) -> Option<i64> {
        lock(&self.dir_times).get(path).copied()
    }

    /// An entry `path` was added, removed or renamed: its directory's mtime and ctime are
    /// now. Kept in this mount's memory (at most [`ENTRY_CAP`] directories; past it the
    /// older half is dropped, and those show their stored times again).
    pub(crate) fn dir_changed(&self, path: &str) {
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        lock(&self.recent).forget(parent);
        self.touch_dir(parent);
    }

    fn touch_dir(&self, dir: &str) {
        let now = now_ns();
        let mut times = lock(&self.dir_times);
        if times.len() >= ENTRY_CAP && !times.contains_key(dir) {
            let mut all: Vec<i64> = times.values().copied().collect();
            all.sort_unstable();
            let cut = all[all.len() / 2];
            times.retain(|_, t| *t > cut);
        }
        times.insert(dir.to_string(), now);
    }

    /// The owner, group and mode of a node made now at `path` by `caller`: the caller's ids,
    /// or the directory's group when the directory is setgid (a directory made there is
    /// setgid too).
    pub(crate) async fn new_owner(
        &self,
        path: &str,
        caller: &Caller,
        mode: u32,
        is_dir: bool,
    ) -> FsResult<(PosixAttrs, u32)> {
        let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
        let dir = self.path_attr(parent).await?;
        let mut owner = PosixAttrs {
            uid: Some(caller.uid),
            gid: Some(caller.gid),
            rdev: 0,
            atime_ns: None,
            link: None,
        };
        let mut mode = mode;
        if dir.perm & 0o2000 != 0 {
            owner.gid = Some(dir.gid.unwrap_or(self.config.gid));
            if is_dir {
                mode |= 0o2000;
            }
        }
        Ok((owner, mode))
    }

    /// The changes anyone makes to the store, as they happen (see [`Self::changed`]).
    pub async fn changes(&self) -> FsResult<dos_store::ChangeStream> {
        Ok(self.store.changes().await?)
    }

    /// Someone changed the store (`event`, from [`Self::changes`]): what this mount cached of
    /// it goes, and the returned entries and inodes are what the kernel should drop, so the
    /// change shows here at once rather than after the attribute TTL. Changes this mount
    /// made itself, and files it has open for writing, are left alone.
    pub fn changed(&self, event: &dos_protocol::ChangeEvent) -> Vec<Invalidate> {
        let change = match event {
            dos_protocol::ChangeEvent::Missed => {
                // Whatever was cached may be stale: it is asked for again.
                lock(&self.entries).clear();
                lock(&self.groups).clear();
                lock(&self.subdirs).clear();
                lock(&self.recent).clear();
                return Vec::new();
            }
            dos_protocol::ChangeEvent::Changed(c) => c,
        };
        let path = change.name.as_str();
        if let Some(group) = path.strip_prefix(&format!("{CONTROL_DIR}/links/")) {
            if let Ok(id) = u64::from_str_radix(group, 16) {
                lock(&self.groups).remove(&id);
            }
            return Vec::new();
        }
        // This mount made this version, or a later one: nothing here is older than it.
        let ours = lock(&self.saves)
            .get(path)
            .is_some_and(|(_, v, _)| *v >= change.version);
        if ours || self.staged_of(path).is_some() {
            return Vec::new();
        }
        self.forget_entry(path);
        lock(&self.recent).changed_elsewhere(path);
        // A folder marker changes its parent's count, and so may a delete (a delete marker
        // does not say what it deleted); a new name may make the unmarked folders above its
        // own appear.
        if change.kind == EntryKind::Dir || change.deleted {
            let mut subdirs = lock(&self.subdirs);
            subdirs.forget(path);
            subdirs.changed_elsewhere(path);
        } else if change.version == 1 {
            let dir = path.rsplit_once('/').map_or("", |(p, _)| p);
            lock(&self.subdirs).changed_elsewhere(dir);
        }
        let inodes = lock(&self.inodes);
        let mut out = Vec::new();
        if let Some(ino) = inodes.known(path) {
            out.push(Invalidate::Inode(ino));
        }
        // Its entry in its directory (and the directory's times); a new name may have made
        // directories appear, so its ancestors' entries too.
        let mut child = path;
        loop {
            let (parent, name) = child.rsplit_once('/').unwrap_or(("", child));
            if let Some(dir) = inodes.known(parent) {
                out.push(Invalidate::Entry {
                    parent: dir,
                    name: name.to_string(),
                });
                if child == path {
                    out.push(Invalidate::Inode(dir));
                }
            }
            if parent.is_empty() || change.version > 1 {
                break;
            }
            child = parent;
        }
        out
    }

    /// Attributes of a namespace path, with a file being written shown as staged.
    async fn path_attr(&self, path: &str) -> FsResult<Attr> {
        let ino = self.ino_of(NodeKey::Path(path.to_string()));
        let attr = if let Some(staged) = self.staged_of(path) {
            write::staged_attr(ino, &staged)?
        } else {
            let entry = self.entry(path).await?;
            let mut attr = self.attr_of(ino, path, &entry);
            if attr.kind == Kind::Dir {
                attr.nlink = 2 + self.subdir_count(path).await;
            }
            attr
        };
        self.with_links(path, attr).await
    }

    /// How many directories directory `path` holds (see `dirs`); 0 when it cannot be
    /// listed now.
    async fn subdir_count(&self, path: &str) -> u32 {
        let ttl = if self.following.load(Ordering::Relaxed) {
            dirs::FOLLOWED_TTL
        } else {
            self.config.attr_ttl
        };
        if let Some(n) = lock(&self.subdirs).get(path, ttl) {
            return n;
        }
        let generation = lock(&self.subdirs).generation();
        let recent = lock(&self.recent).generation();
        match self.list_children(path).await {
            Ok(children) => {
                lock(&self.recent).keep(path, &children, recent, self.config.attr_ttl);
                self.counted(path, &children, generation)
            }
            Err(e) => {
                tracing::debug!(path, error = %e, "cannot list a directory for its link count");
                0
            }
        }
    }

    /// Keeps the number of directories among `children`, the listing of `path` started at
    /// `generation`.
    fn counted(&self, path: &str, children: &[DirEntry], generation: u64) -> u32 {
        let n = children.iter().filter(|c| c.kind == Kind::Dir).count();
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        lock(&self.subdirs).store(path, n, generation);
        n
    }

    /// The change feed is being followed (`true`) or was lost (`false`): while it is, what
    /// changes elsewhere is heard at once, so directory link counts are trusted for longer.
    pub fn set_following(&self, following: bool) {
        // Counts found before the feed began may miss changes it will not tell of.
        lock(&self.subdirs).clear();
        self.following.store(following, Ordering::Relaxed);
    }

    /// `attr` of `path`, with the number, link count and ctime of its hard-link group.
    async fn with_links(&self, path: &str, attr: Attr) -> FsResult<Attr> {
        match attr.link {
            Some(id) => self.linked_attr(path, attr, id).await,
            None => Ok(attr),
        }
    }

    /// Looks `name` up in `parent`; on success the kernel holds one more reference to the
    /// node (given back by [`forget`](Self::forget)).
    pub async fn lookup(&self, parent: u64, name: &str) -> FsResult<Attr> {
        let (key, mut attr) = match self.node(parent)? {
            NodeKey::Path(p) => {
                if p.is_empty() && name == CONTROL_DIR {
                    let attr = history::control_attr(self, NodeKey::Control);
                    (NodeKey::Control, attr)
                } else {
                    check_name(name)?;
                    let path = join(&p, name);
                    if path.len() > dos_protocol::MAX_NAME_BYTES {
                        return Err(FsError::NameTooLong);
                    }
                    let attr = self.path_attr(&path).await?;
                    if let Some(id) = attr.link {
                        let mut attr = attr;
                        attr.ino = lock(&self.inodes).looked_up_linked(&path, id);
                        return Ok(attr);
                    }
                    (NodeKey::Path(path), attr)
                }
            }
            other => history::lookup(self, other, name).await?,
        };
        attr.ino = self.entered(key);
        Ok(attr)
    }

    /// Attributes through an open handle (fstat): an open file keeps working after unlink.
    pub async fn getattr_open(&self, ino: u64, fh: u64) -> FsResult<Attr> {
        if lock(&self.unlinked_open).contains_key(&ino) {
            return self.getattr(ino).await;
        }
        if let Ok(h) = self.handle(fh) {
            match &*h.lock().await {
                Handle::Write { staged, .. } => {
                    let attr = write::staged_attr(ino, staged)?;
                    let path = lock(staged).path.clone();
                    return self.with_links(&path, attr).await;
                }
                Handle::Read(r) => {
                    if let Ok(rec) = self
                        .store
                        .head(&object_name(&r.name)?, Some(r.version))
                        .await
                    {
                        let attr = self.attr_of(ino, &r.name, &Entry::Object(rec));
                        return self.with_links(&r.name, attr).await;
                    }
                }
                Handle::Dir(_) => {}
                Handle::Static(b) => {
                    let mut a = stats::attr(self);
                    a.ino = ino;
                    a.size = b.len() as u64;
                    return Ok(a);
                }
            }
        }
        self.getattr(ino).await
    }

    pub async fn getattr(&self, ino: u64) -> FsResult<Attr> {
        let orphan = lock(&self.orphans).get(&ino).cloned();
        if let Some(staged) = orphan {
            return write::staged_attr(ino, &staged);
        }
        let unlinked = lock(&self.unlinked_open).get(&ino).cloned();
        if let Some(rec) = unlinked {
            let path = rec.name.as_str().to_string();
            let mut attr = self.attr_of(ino, &path, &Entry::Object(rec));
            attr.unlinked = true;
            return Ok(attr);
        }
        match self.node(ino)? {
            NodeKey::Path(p) => self.path_attr(&p).await,
            other => history::getattr(self, other).await,
        }
    }

    /// Lists a directory (all pages), attributes cached for the lookups `ls -l` makes next.
    pub async fn read_dir(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        let path = match self.node(ino)? {
            NodeKey::Path(p) => p,
            other => return history::read_dir(self, other).await,
        };
        if !path.is_empty() {
            let attr = self.path_attr(&path).await?;
            if attr.kind != Kind::Dir {
                return Err(FsError::NotDir);
            }
        }
        if let Some(children) = lock(&self.recent).take(&path, self.config.attr_ttl) {
            return Ok(children);
        }
        let generation = lock(&self.subdirs).generation();
        let children = self.list_children(&path).await?;
        self.counted(&path, &children, generation);
        Ok(children)
    }

    /// Live children of namespace directory `path`.
    pub(crate) async fn list_children(&self, path: &str) -> FsResult<Vec<DirEntry>> {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut out: Vec<DirEntry> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        // Staged files are looked at before the store's listing as well as after it: one
        // whose upload ends while the listing is read (it leaves the staged files then) is
        // in one of the two.
        let staged_before: Vec<String> = lock(&self.staged)
            .keys()
            .filter(|p| p.starts_with(&prefix))
            .cloned()
            .collect();
        loop {
            let page = self
                .list_page(&ListQuery {
                    prefix: prefix.clone(),
                    delimiter: Some('/'),
                    cursor: cursor.clone(),
                    limit: 1000,
                    at: None,
                })
                .await?;
            for rec in page.entries {
                let name = rec.name.as_str()[prefix.len()..].to_string();
                let full = rec.name.as_str().to_string();
                if path.is_empty() && name == CONTROL_DIR {
                    continue;
                }
                let kind = Kind::of(rec.kind);
                let ino = match rec.posix.link {
                    Some(id) => lock(&self.inodes).linked(&full, id),
                    None => self.ino_of(NodeKey::Path(full.clone())),
                };
                let entry = Entry::Object(rec);
                self.remember(&full, entry);
                if seen.insert(name.clone()) {
                    out.push(DirEntry { ino, name, kind });
                }
            }
            for p in page.prefixes {
                let full = p.trim_end_matches('/').to_string();
                let name = full[prefix.len()..].to_string();
                if path.is_empty() && name == CONTROL_DIR {
                    continue;
                }
                if seen.insert(name.clone()) {
                    let ino = self.ino_of(NodeKey::Path(full.clone()));
                    if self.fresh_entry(&full).is_none() {
                        self.remember(&full, Entry::ImpliedDir);
                    }
                    out.push(DirEntry {
                        ino,
                        name,
                        kind: Kind::Dir,
                    });
                }
            }
            match page.next_cursor {
                Some(c) if cursor.as_deref() != Some(c.as_str()) => cursor = Some(c),
                _ => break,
            }
        }
        // Files created here and not uploaded yet.
        let staged_after: Vec<String> = lock(&self.staged).keys().cloned().collect();
        for p in staged_before.iter().chain(&staged_after) {
            if let Some(name) = p.strip_prefix(&prefix)
                && !name.contains('/')
                && !name.is_empty()
                && seen.insert(name.to_string())
            {
                out.push(DirEntry {
                    ino: lock(&self.inodes).ino(NodeKey::Path(p.clone())),
                    name: name.to_string(),
                    kind: Kind::File,
                });
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    pub(crate) fn new_handle(&self, h: Handle) -> u64 {
        let mut next = lock(&self.next_fh);
        let fh = *next;
        *next += 1;
        lock(&self.handles).insert(fh, Arc::new(tokio::sync::Mutex::new(h)));
        fh
    }

    pub(crate) fn handle(&self, fh: u64) -> FsResult<Arc<tokio::sync::Mutex<Handle>>> {
        lock(&self.handles)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)
    }

    pub(crate) fn take_handle(&self, fh: u64) -> Option<Arc<tokio::sync::Mutex<Handle>>> {
        lock(&self.handles).remove(&fh)
    }

    pub async fn opendir(&self, ino: u64) -> FsResult<u64> {
        let entries = self.read_dir(ino).await?;
        Ok(self.new_handle(Handle::Dir(entries)))
    }

    /// Entries of an open directory from index `offset` on (`.` and `..` come first).
    pub async fn dir_entries(
        &self,
        ino: u64,
        fh: u64,
        offset: usize,
        mut add: impl FnMut(u64, usize, Kind, &str) -> bool,
    ) -> FsResult<()> {
        let h = self.handle(fh)?;
        let h = h.lock().await;
        let Handle::Dir(entries) = &*h else {
            return Err(FsError::BadHandle);
        };
        let parent = self.parent_ino(ino);
        let dots = [(ino, "."), (parent, "..")];
        let total = entries.len() + 2;
        for i in offset..total {
            let full = if i < 2 {
                add(dots[i].0, i + 1, Kind::Dir, dots[i].1)
            } else {
                let e = &entries[i - 2];
                add(e.ino, i + 1, e.kind, &e.name)
            };
            if full {
                break;
            }
        }
        Ok(())
    }

    fn parent_ino(&self, ino: u64) -> u64 {
        match self.node(ino) {
            Ok(NodeKey::Path(p)) => match p.rsplit_once('/') {
                Some((parent, _)) => self.ino_of(NodeKey::Path(parent.to_string())),
                None => ROOT_INO,
            },
            _ => ROOT_INO,
        }
    }

    pub fn releasedir(&self, fh: u64) {
        self.take_handle(fh);
    }

    pub async fn mkdir(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        caller: &Caller,
    ) -> FsResult<Attr> {
        let new = New {
            kind: EntryKind::Dir,
            mode: mode & 0o7777,
            rdev: 0,
        };
        self.create_object(parent, name, bytes::Bytes::new(), new, caller)
            .await
    }

    /// mknod: a FIFO, socket or device node (a name with attributes and no content), or an
    /// empty regular file. `mode` has the file type bits.
    pub async fn mknod(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        rdev: u32,
        caller: &Caller,
    ) -> FsResult<Attr> {
        let kind = match mode & libc::S_IFMT {
            libc::S_IFIFO => EntryKind::Fifo,
            libc::S_IFSOCK => EntryKind::Socket,
            libc::S_IFCHR => EntryKind::CharDevice,
            libc::S_IFBLK => EntryKind::BlockDevice,
            libc::S_IFREG | 0 => EntryKind::File,
            _ => return Err(FsError::Invalid(format!("mknod of file type {mode:#o}"))),
        };
        if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) && !caller.is_root() {
            return Err(FsError::NotPermitted("only root makes device nodes"));
        }
        let rdev = if matches!(kind, EntryKind::CharDevice | EntryKind::BlockDevice) {
            rdev
        } else {
            0
        };
        let new = New {
            kind,
            mode: mode & 0o7777,
            rdev,
        };
        self.create_object(parent, name, bytes::Bytes::new(), new, caller)
            .await
    }

    /// Stores a new, not yet existing name with `content` (a directory marker, a symlink, a
    /// special file, an empty file), owned by `caller`.
    async fn create_object(
        &self,
        parent: u64,
        name: &str,
        content: bytes::Bytes,
        new: New,
        caller: &Caller,
    ) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        if self.staged_of(&path).is_some() {
            return Err(FsError::Exists);
        }
        match self.entry(&path).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let (mut posix, mode) = self
            .new_owner(&path, caller, new.mode, new.kind == EntryKind::Dir)
            .await?;
        posix.rdev = new.rdev;
        let attrs = WriteAttributes {
            kind: new.kind,
            mode: Some(mode),
            mtime_ns: Some(now_ns()),
            supersedes: None,
            posix,
        };
        let rec = self
            .store
            .put_bytes(&object_name(&path)?, &attrs, content)
            .await?;
        let ino = self.entered(NodeKey::Path(path.clone()));
        self.saved(&path, &rec);
        self.dir_changed(&path);
        if new.kind == EntryKind::Dir {
            lock(&self.subdirs).made(&path);
            lock(&self.recent).forget(&path);
        }
        let entry = Entry::Object(rec);
        self.remember(&path, entry.clone());
        let mut attr = self.attr_of(ino, &path, &entry);
        if new.kind == EntryKind::Dir {
            attr.nlink = 2;
        }
        Ok(attr)
    }

    /// Name `path` went from its directory: when that directory has no marker (a folder
    /// made by names written over REST), it may have gone with it, and its parent's
    /// subdirectory count with it.
    fn left_implied_dir(&self, path: &str) {
        let Some((dir, _)) = path.rsplit_once('/') else {
            return;
        };
        if matches!(self.fresh_entry(dir), Some(Entry::ImpliedDir)) {
            lock(&self.subdirs).changed_elsewhere(dir);
        }
    }

    /// True when nothing lives under directory `path`.
    async fn is_empty_dir(&self, path: &str) -> FsResult<bool> {
        let page = self.list_page(&first_child(path)).await?;
        let staged_child = lock(&self.staged)
            .keys()
            .any(|p| p.starts_with(&format!("{path}/")));
        Ok(page.entries.is_empty() && page.prefixes.is_empty() && !staged_child)
    }

    pub async fn rmdir(&self, parent: u64, name: &str) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        let entry = self.entry(&path).await?;
        match &entry {
            Entry::Object(r) if r.kind != EntryKind::Dir => return Err(FsError::NotDir),
            _ => {}
        }
        if !self.is_empty_dir(&path).await? {
            return Err(FsError::NotEmpty);
        }
        if let Entry::Object(_) = entry {
            self.delete_quiet(&path).await?;
        }
        self.forget_entry(&path);
        self.dir_changed(&path);
        lock(&self.dir_times).remove(&path);
        lock(&self.subdirs).removed(&path);
        lock(&self.recent).forget(&path);
        Ok(())
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        let staged = self.staged_of(&path);
        let linked = staged.as_ref().and_then(|s| lock(s).posix.link);
        let staged = match (staged, linked) {
            (Some(s), Some(id)) if self.group_names(id).await?.iter().any(|n| *n != path) => {
                // Other names of the file remain: it is stored now (and so under them all),
                // and goes on under one of them (below).
                self.upload(&s).await?;
                None
            }
            (s, _) => s,
        };
        if let Some(staged) = staged {
            // Open for writing: it will not be uploaded on close. An upload in flight (the
            // release of a just-closed file) finishes first, and is deleted below.
            let uploading = lock(&staged).uploading.clone();
            let _wait = uploading.lock().await;
            // Closes of it waiting in the write-back journal are never uploaded now.
            self.cancel_journaled(&path, &staged).await?;
            lock(&staged).unlinked = true;
            lock(&self.staged).remove(&path);
            self.forget_entry(&path);
            let ino = self.ino_of(NodeKey::Path(path.clone()));
            lock(&self.orphans).insert(ino, staged);
            lock(&self.inodes).detach(&path);
        }
        let rec = match self.entry(&path).await {
            Ok(Entry::Object(r)) if r.kind == EntryKind::Dir => return Err(FsError::IsDir),
            Ok(Entry::ImpliedDir) => return Err(FsError::IsDir),
            Ok(Entry::Object(r)) => r,
            Err(FsError::NotFound) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let marker = match self.store.delete(&object_name(&path)?).await {
            Ok(marker) => marker,
            Err(e) if e.is_not_found() => return Err(FsError::NotFound),
            Err(e) => return Err(e.into()),
        };
        self.left_implied_dir(&path);
        let ino = self.ino_of(NodeKey::Path(path.clone()));
        let left = match rec.posix.link {
            Some(id) => self.left_group(id, &path).await?,
            None => Vec::new(),
        };
        if let Some(other) = left.first() {
            // A hard-linked file lives on under its other names; one open for writing
            // goes on under one of them.
            if self.staged_of(other).is_none() {
                self.restage(&path, other);
            }
        } else if lock(&self.io).is_open(ino) {
            // Open for reading (the staged case is above): the handles keep reading the
            // version they opened, and fstat answers until the last of them goes; the name
            // gets a new inode if it is made again.
            lock(&self.unlinked_open).insert(ino, rec);
            lock(&self.inodes).detach(&path);
        }
        self.forget_entry(&path);
        self.deleted_here(&path, marker.version);
        self.dir_changed(&path);
        Ok(())
    }

    pub async fn symlink(
        &self,
        parent: u64,
        name: &str,
        target: &str,
        caller: &Caller,
    ) -> FsResult<Attr> {
        if target.len() > PATH_MAX {
            return Err(FsError::NameTooLong);
        }
        let content = bytes::Bytes::copy_from_slice(target.as_bytes());
        let new = New {
            kind: EntryKind::Symlink,
            mode: 0o777,
            rdev: 0,
        };
        self.create_object(parent, name, content, new, caller).await
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        if let NodeKey::At(at, path) = self.node(ino)? {
            return at::readlink(self, at, &path).await;
        }
        let path = self.writable_path(ino)?;
        match self.entry(&path).await? {
            Entry::Object(r) if r.kind == EntryKind::Symlink => {
                let read = self
                    .store
                    .get(&object_name(&path)?, Some(r.version), None)
                    .await?;
                Ok(read.bytes().await?.to_vec())
            }
            _ => Err(FsError::Invalid("not a symlink".into())),
        }
    }

    /// Rename: metadata only. The new name gets a version with the same content (no bytes
    /// move), the old name a delete marker; a directory moves name by name.
    pub async fn rename(
        &self,
        parent: u64,
        name: &str,
        new_parent: u64,
        new_name: &str,
        no_replace: bool,
    ) -> FsResult<()> {
        let from = self.child_path(parent, name)?;
        let to = self.child_path(new_parent, new_name)?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(FsError::Invalid(
                "cannot move a directory into itself".into(),
            ));
        }
        // Anything still staged (here or below) is uploaded first, so the move carries the
        // latest bytes; files open for writing follow the rename.
        let staged_below: Vec<_> = lock(&self.staged)
            .iter()
            .filter(|(k, _)| **k == from || k.starts_with(&format!("{from}/")))
            .map(|(_, s)| s.clone())
            .collect();
        for s in &staged_below {
            self.upload(s).await?;
        }
        // With write-back, what the journal holds of them is uploaded now: the move copies
        // stored versions.
        self.flush_pending(&from).await?;
        let entry = self.entry(&from).await?;
        let target = match self.entry(&to).await {
            Ok(e) => Some(e),
            Err(FsError::NotFound) => None,
            Err(e) => return Err(e),
        };
        let is_dir = matches!(&entry, Entry::ImpliedDir)
            || matches!(&entry, Entry::Object(r) if r.kind == EntryKind::Dir);
        if let Some(t) = &target {
            if no_replace {
                return Err(FsError::Exists);
            }
            if let (Entry::Object(a), Entry::Object(b)) = (&entry, t)
                && a.posix.link.is_some()
                && a.posix.link == b.posix.link
            {
                // Two names of the same file: nothing changes (POSIX).
                return Ok(());
            }
            let target_dir = matches!(t, Entry::ImpliedDir)
                || matches!(t, Entry::Object(r) if r.kind == EntryKind::Dir);
            match (is_dir, target_dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.is_empty_dir(&to).await? => return Err(FsError::NotEmpty),
                _ => {}
            }
        }
        // Names of hard-linked files that move: (group, old name, new name).
        let mut moves = Vec::new();
        if is_dir {
            // Every name under the directory, then the directory marker itself.
            let (names, _) = self.store.list_all(&format!("{from}/"), None).await?;
            for rec in &names {
                let rest = &rec.name.as_str()[from.len()..];
                let new = format!("{to}{rest}");
                self.copy_version(rec, &new, None).await?;
                if let Some(id) = rec.posix.link {
                    moves.push((id, rec.name.as_str().to_string(), new));
                }
            }
            if let Entry::Object(r) = &entry {
                self.copy_version(r, &to, None).await?;
            }
            for rec in &names {
                self.delete_quiet(rec.name.as_str()).await?;
                self.forget_entry(rec.name.as_str());
            }
            if let Entry::Object(_) = &entry {
                self.delete_quiet(&from).await?;
            }
        } else {
            let Entry::Object(r) = &entry else {
                return Err(FsError::NotFound);
            };
            self.copy_version(r, &to, None).await?;
            self.delete_quiet(&from).await?;
            self.left_implied_dir(&from);
            if let Some(id) = r.posix.link {
                moves.push((id, from.clone(), to.clone()));
            }
        }
        if !moves.is_empty() {
            self.renamed_in_groups(&moves).await?;
        }
        if let Some(Entry::Object(t)) = &target
            && let Some(id) = t.posix.link
        {
            // The replaced name was one of a hard-linked file's: the others remain.
            self.left_group(id, &to).await?;
        }
        self.forget_entry(&from);
        self.forget_entry(&to);
        self.restage(&from, &to);
        lock(&self.inodes).rename(&from, &to);
        self.dir_changed(&from);
        self.dir_changed(&to);
        if is_dir {
            // A moved directory's ctime changes (its `..` did).
            self.touch_dir(&to);
            lock(&self.subdirs).renamed(&from, &to, target.is_some());
            // Listings kept under the old paths (and over the replaced one) go; this is rare.
            lock(&self.recent).clear();
        }
        Ok(())
    }

    /// A new version of `to` with `rec`'s content and attributes (POST: no bytes move).
    async fn copy_version(
        &self,
        rec: &VersionRecord,
        to: &str,
        supersedes: Option<u64>,
    ) -> FsResult<VersionRecord> {
        let hash = rec.hash.ok_or(FsError::NotFound)?;
        let attrs = WriteAttributes {
            kind: rec.kind,
            mode: Some(rec.mode),
            mtime_ns: Some(rec.mtime_ns),
            supersedes,
            posix: rec.posix,
        };
        match self
            .store
            .post(&object_name(to)?, hash, rec.size, &attrs)
            .await?
        {
            PostOutcome::Stored(v) => {
                self.remember(to, Entry::Object(v.clone()));
                self.saved(to, &v);
                Ok(v)
            }
            PostOutcome::Upload(_) => Err(FsError::Store(StoreError::Changed(format!(
                "the content of {} is no longer stored",
                rec.name
            )))),
        }
    }

    async fn delete_quiet(&self, path: &str) -> FsResult<()> {
        match self.store.delete(&object_name(path)?).await {
            Ok(marker) => {
                self.deleted_here(path, marker.version);
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// chmod, chown, utimens, truncate, with the POSIX rules: only root changes the owner;
    /// the owner (or root) changes the mode, and the group to one of the owner's groups; a
    /// change of owner or group of anything but a directory clears setuid, and setgid when
    /// the group may execute (as Linux does). The kernel (`default_permissions`) checks the
    /// same first; these rules make the core safe on its own.
    pub async fn setattr(&self, ino: u64, set: &SetAttr, caller: &Caller) -> FsResult<Attr> {
        let path = self.writable_path(ino)?;
        let current = self.getattr(ino).await?;
        let set = self.permitted(&current, set, caller)?;
        if path.is_empty() || set == SetAttr::default() {
            // The root has no record to keep attributes in.
            return Ok(current);
        }
        if let Some(staged) = self.staged_of(&path) {
            write::set_staged(&staged, &set)?;
            if lock(&staged).opens == 0 {
                // Closed already (its last upload may still be running): settle it now.
                self.settle(&staged).await?;
            }
            return write::staged_attr(ino, &staged);
        }
        let entry = self.entry(&path).await?;
        let Entry::Object(rec) = entry else {
            // An implied directory has nothing to keep attributes in; make it a marker.
            let base = self.attr_of(ino, &path, &Entry::ImpliedDir);
            let rec = self
                .store
                .put_bytes(
                    &object_name(&path)?,
                    &WriteAttributes {
                        kind: EntryKind::Dir,
                        mode: Some(set.mode.map_or(base.perm, |m| m & 0o7777)),
                        mtime_ns: Some(set.mtime_ns.unwrap_or(base.mtime_ns)),
                        supersedes: None,
                        posix: PosixAttrs {
                            uid: set.uid,
                            gid: set.gid,
                            rdev: 0,
                            atime_ns: set.atime_ns,
                            link: None,
                        },
                    },
                    bytes::Bytes::new(),
                )
                .await?;
            self.remember(&path, Entry::Object(rec));
            return self.getattr(ino).await;
        };
        if set.size.is_some() && rec.kind == EntryKind::File {
            // Truncate a file nobody has open: stage it, cut it, upload it.
            let staged = self.stage(&path, false, false, None).await?;
            let cut = write::set_staged(&staged, &set);
            // Settled either way: a refused length (EFBIG) leaves the file as it was.
            self.settle(&staged).await?;
            cut?;
            return self.getattr(ino).await;
        }
        let mut changed = rec.clone();
        if let Some(m) = set.mode {
            changed.mode = m & 0o7777;
        }
        if let Some(t) = set.mtime_ns {
            changed.mtime_ns = t;
        }
        if set.uid.is_some() {
            changed.posix.uid = set.uid;
        }
        if set.gid.is_some() {
            changed.posix.gid = set.gid;
        }
        if let Some(t) = set.atime_ns {
            // The access time so far was the mtime: keep that one when only atime moves.
            changed.posix.atime_ns = Some(t);
        }
        // Every change makes a version, even to the same values: its ctime moves, as on
        // Linux. One made right after this mount's last save of the file replaces it.
        let fold = self.fold_into(&path).filter(|v| *v == rec.version);
        let made = self.copy_version(&changed, &path, fold).await?;
        self.propagate(&made).await?;
        self.getattr(ino).await
    }

    /// `set` as the rules allow it for `caller` on a node with attributes `current`, with
    /// the setuid and setgid bits a chown clears; or why not.
    fn permitted(&self, current: &Attr, set: &SetAttr, caller: &Caller) -> FsResult<SetAttr> {
        let mut set = set.clone();
        let uid = current.uid.unwrap_or(self.config.uid);
        let gid = current.gid.unwrap_or(self.config.gid);
        let owner = caller.is_root() || caller.uid == uid;
        if set.uid.is_some_and(|u| u != uid) && !caller.is_root() {
            return Err(FsError::NotPermitted("only root changes a file's owner"));
        }
        if let Some(g) = set.gid
            && g != gid
            && !caller.is_root()
            && !(caller.uid == uid && caller.in_group(g))
        {
            return Err(FsError::NotPermitted(
                "the group can be changed only by the owner, to one of its groups",
            ));
        }
        // Anyone who may write a file may clear its setuid and setgid bits: the kernel does
        // so on a write by someone else (it sends the mode without them).
        let only_clears = set
            .mode
            .is_some_and(|m| m & 0o7777 == current.perm & 0o7777 & !0o6000);
        if set.mode.is_some() && !owner && !only_clears {
            return Err(FsError::NotPermitted("only the owner changes the mode"));
        }
        if (set.uid.is_some() || set.gid.is_some()) && current.kind != Kind::Dir {
            let mut mode = set.mode.unwrap_or(current.perm);
            mode &= !0o4000;
            if mode & 0o010 != 0 {
                mode &= !0o2000;
            }
            if mode != set.mode.unwrap_or(current.perm) {
                set.mode = Some(mode);
            }
        }
        if let Some(size) = set.size {
            match current.kind {
                Kind::Dir => return Err(FsError::IsDir),
                Kind::File => {}
                _ => return Err(FsError::Invalid("only regular files have a size".into())),
            }
            if size == current.size && set.mode.is_none() && set.mtime_ns.is_none() {
                // Nothing changes (as on ext4, a truncate to the same size is no change).
                set.size = None;
            }
        }
        Ok(set)
    }

    /// `pending` while the latest bytes of `path` are not in the store yet (open and
    /// changed, or closed into the write-back journal), else `durable`.
    fn state_of(&self, path: &str) -> &'static str {
        let staged_dirty = self.staged_of(path).is_some_and(|s| lock(&s).is_dirty());
        let journaled = self
            .journal
            .as_ref()
            .is_some_and(|j| !j.pending_for(path, false).is_empty());
        if staged_dirty || journaled {
            "pending"
        } else {
            "durable"
        }
    }

    /// `user.dosfs.redundancy`: how many of the six shards of the file's stored content
    /// answer healthy (`6/6`, `5/6 (repair queued)`), from a cheap check. `user.dosfs.check`
    /// (not listed): the stored content verified in full, with what was repaired (JSON, a
    /// [`dos_protocol::CheckReport`]).
    pub async fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        let attr = self.getattr(ino).await?;
        if name == "user.dosfs.state"
            && let Ok(NodeKey::Path(p)) = self.node(ino)
            && !p.is_empty()
            && attr.kind == Kind::File
        {
            return Ok(self.state_of(&p).as_bytes().to_vec());
        }
        if name == CHECK_XATTR && attr.kind == Kind::File {
            // Not listed: reading it verifies the stored content in full (`dosfs check`).
            let hash = attr.hash.ok_or(FsError::NoAttr)?;
            let report = self.store.check(&hash).await?;
            return serde_json::to_vec(&report)
                .map_err(|e| FsError::Invalid(format!("check report: {e}")));
        }
        if name == "user.dosfs.redundancy" && attr.kind == Kind::File {
            let pending = matches!(self.node(ino), Ok(NodeKey::Path(p)) if !p.is_empty() && self.state_of(&p) == "pending");
            let stored = match attr.hash {
                Some(hash) => self.store.redundancy(&hash).await?.to_string(),
                None if pending => return Ok(b"pending upload".to_vec()),
                None => return Err(FsError::NoAttr),
            };
            let told = if pending {
                format!("{stored} (newer bytes pending upload)")
            } else {
                stored
            };
            return Ok(told.into_bytes());
        }
        match name {
            "user.dosfs.sha256" => attr
                .hash
                .map(|h| h.to_base64().into_bytes())
                .ok_or(FsError::NoAttr),
            "user.dosfs.version" => attr
                .version
                .map(|v| v.to_string().into_bytes())
                .ok_or(FsError::NoAttr),
            _ => Err(FsError::NoAttr),
        }
    }

    pub async fn listxattr(&self, ino: u64) -> FsResult<Vec<u8>> {
        let attr = self.getattr(ino).await?;
        let mut out = Vec::new();
        if attr.hash.is_some() {
            out.extend_from_slice(b"user.dosfs.sha256\0");
        }
        if attr.version.is_some() {
            out.extend_from_slice(b"user.dosfs.version\0");
        }
        if attr.kind == Kind::File && attr.hash.is_some() {
            out.extend_from_slice(b"user.dosfs.redundancy\0");
        }
        if attr.kind == Kind::File && !attr.read_only {
            out.extend_from_slice(b"user.dosfs.state\0");
        }
        Ok(out)
    }

    /// Uploads every file still staged (unmount, SIGTERM).
    pub async fn flush_all(&self) -> Vec<(String, FsError)> {
        let staged: Vec<_> = lock(&self.staged)
            .iter()
            .map(|(p, s)| (p.clone(), s.clone()))
            .collect();
        let mut failures = Vec::new();
        for (path, s) in staged {
            if let Err(e) = self.upload(&s).await {
                failures.push((path, e));
            }
        }
        self.drain_journal().await;
        if let Err(e) = self.store_dir_times().await {
            failures.push((String::new(), e));
        }
        failures
    }

    /// Stores the directory times this mount moved (entries added, removed, renamed) in the
    /// directories' records, so that a remount shows them (unmount, SIGTERM). Not done for
    /// each entry: that would be a metadata write per file of a `tar x`.
    pub async fn store_dir_times(&self) -> FsResult<()> {
        let times: Vec<(String, i64)> = lock(&self.dir_times).drain().collect();
        for (dir, t) in times {
            if dir.is_empty() {
                continue;
            }
            let stored = match self.entry(&dir).await {
                Ok(Entry::Object(rec)) if rec.kind == EntryKind::Dir => {
                    if rec.ctime_ns >= t {
                        continue;
                    }
                    let mut changed = rec.clone();
                    changed.mtime_ns = t;
                    self.copy_version(&changed, &dir, None).await.map(drop)
                }
                Ok(Entry::ImpliedDir) => {
                    let attrs = WriteAttributes {
                        kind: EntryKind::Dir,
                        mode: None,
                        mtime_ns: Some(t),
                        supersedes: None,
                        posix: PosixAttrs::default(),
                    };
                    self.store
                        .put_bytes(&object_name(&dir)?, &attrs, bytes::Bytes::new())
                        .await
                        .map(drop)
                        .map_err(FsError::from)
                }
                // Gone, or not a directory any more.
                Ok(_) | Err(FsError::NotFound) => continue,
                Err(e) => Err(e),
            };
            if let Err(e) = stored {
                tracing::warn!(dir, error = %e, "could not store a directory's times");
            }
        }
        Ok(())
    }
}
