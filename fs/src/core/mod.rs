//! The filesystem core: every operation as an async method returning `FsResult`, with no
//! FUSE types in it, so it runs (and is tested) without a kernel mount.
//!
//! Paths map to object names one to one (`a/b.txt` is the object `a/b.txt`). Directories are
//! name prefixes plus an optional `dir` marker object that keeps an empty directory alive.
//! Writes go to a local staging file and are uploaded whole on flush/fsync/close.

mod history;
mod inodes;
pub mod journal;
mod passthrough;
mod read;
mod stats;
mod stream;
mod write;

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use dos_cache::{BlockCache, StagingArea};
use dos_protocol::{
    ContentHash, EntryKind, ListQuery, ObjectName, VersionRecord, WriteAttributes, now_ns,
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
/// The control folder at the root: `.dosfs/history/…`.
pub const CONTROL_DIR: &str = ".dosfs";
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
}

/// Attributes of one node, as the adapter reports them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// Permission bits.
    pub perm: u32,
    pub mtime_ns: i64,
    pub hash: Option<ContentHash>,
    pub version: Option<u64>,
    /// Under `.dosfs`: nothing there can be changed.
    pub read_only: bool,
    /// Deleted while still open (link count 0).
    pub unlinked: bool,
}

/// What the store says one path is.
#[derive(Debug, Clone)]
pub(crate) enum Entry {
    /// A file or symlink version, or a directory marker.
    Object(VersionRecord),
    /// A directory that exists only because names live under it.
    ImpliedDir,
}

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
    /// The versions this mount made lately, by path: what a following attribute change
    /// folds into (see [`FOLD_WINDOW`]).
    saves: Mutex<HashMap<String, (Instant, u64)>>,
    /// The write-back journal (`--writeback`), if on.
    pub(crate) journal: Option<Arc<journal::Journal>>,
    pub(crate) journal_changed: tokio::sync::Notify,
    /// Journal records being uploaded now, and when a failed path may be tried again.
    pub(crate) uploads: Mutex<write::UploadState>,
    /// Slots for uploads that overlap the writes, and what they did.
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
    pub(crate) stream_stats: Arc<stream::StreamStats>,
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

/// A listing of at most one child of directory `path` (is it empty? does it exist?).
fn first_child(path: &str) -> ListQuery {
    ListQuery {
        prefix: format!("{path}/"),
        delimiter: Some('/'),
        cursor: None,
        limit: 1,
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
            saves: Mutex::default(),
            journal: None,
            journal_changed: tokio::sync::Notify::new(),
            uploads: Mutex::default(),
            streams: Arc::new(tokio::sync::Semaphore::new(STREAMS_AT_ONCE)),
            stream_stats: Arc::default(),
            handles: Mutex::default(),
            next_fh: Mutex::new(1),
            started_ns: now_ns(),
            io: Mutex::default(),
            io_changed: tokio::sync::Notify::new(),
            passthrough: AtomicBool::new(false),
            direct_io: AtomicBool::new(false),
        }
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
        let mut saves = lock(&self.saves);
        if saves.len() >= ENTRY_PURGE_AT {
            saves.retain(|_, (at, _)| at.elapsed() < FOLD_WINDOW);
        }
        saves.insert(path.to_string(), (Instant::now(), rec.version));
    }

    /// The version of `path` a new version made now may replace (see [`FOLD_WINDOW`]).
    pub(crate) fn fold_into(&self, path: &str) -> Option<u64> {
        lock(&self.saves)
            .get(path)
            .filter(|(at, _)| at.elapsed() < FOLD_WINDOW)
            .map(|(_, v)| *v)
    }

    fn forget_save(&self, path: &str) {
        lock(&self.saves).remove(path);
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
        let page = self.store.list(&first_child(path)).await?;
        if page.entries.is_empty() && page.prefixes.is_empty() {
            self.forget_entry(path);
            return Err(FsError::NotFound);
        }
        self.remember(path, Entry::ImpliedDir);
        Ok(Entry::ImpliedDir)
    }

    fn attr_of(&self, ino: u64, entry: &Entry) -> Attr {
        match entry {
            Entry::ImpliedDir => Attr {
                ino,
                kind: Kind::Dir,
                size: 0,
                perm: 0o755,
                mtime_ns: self.started_ns,
                hash: None,
                version: None,
                read_only: false,
                unlinked: false,
            },
            Entry::Object(r) => Attr {
                ino,
                kind: match r.kind {
                    EntryKind::File => Kind::File,
                    EntryKind::Dir => Kind::Dir,
                    EntryKind::Symlink => Kind::Symlink,
                },
                size: if r.kind == EntryKind::Dir { 0 } else { r.size },
                perm: r.mode & 0o7777,
                mtime_ns: r.mtime_ns,
                hash: r.hash,
                version: Some(r.version),
                read_only: false,
                unlinked: false,
            },
        }
    }

    /// Attributes of a namespace path, with a file being written shown as staged.
    async fn path_attr(&self, path: &str) -> FsResult<Attr> {
        let ino = self.ino_of(NodeKey::Path(path.to_string()));
        if let Some(staged) = self.staged_of(path) {
            return write::staged_attr(ino, &staged);
        }
        let entry = self.entry(path).await?;
        Ok(self.attr_of(ino, &entry))
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
        if let Ok(h) = self.handle(fh) {
            match &*h.lock().await {
                Handle::Write { staged, .. } => return write::staged_attr(ino, staged),
                Handle::Read(r) => {
                    if let Ok(rec) = self
                        .store
                        .head(&object_name(&r.name)?, Some(r.version))
                        .await
                    {
                        return Ok(self.attr_of(ino, &Entry::Object(rec)));
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
        self.list_children(&path).await
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
                .store
                .list(&ListQuery {
                    prefix: prefix.clone(),
                    delimiter: Some('/'),
                    cursor: cursor.clone(),
                    limit: 1000,
                })
                .await?;
            for rec in page.entries {
                let name = rec.name.as_str()[prefix.len()..].to_string();
                let full = rec.name.as_str().to_string();
                if path.is_empty() && name == CONTROL_DIR {
                    continue;
                }
                let entry = Entry::Object(rec);
                let ino = self.ino_of(NodeKey::Path(full.clone()));
                let kind = self.attr_of(ino, &entry).kind;
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

    pub async fn mkdir(&self, parent: u64, name: &str, mode: u32) -> FsResult<Attr> {
        self.create_object(
            parent,
            name,
            bytes::Bytes::new(),
            EntryKind::Dir,
            mode & 0o7777,
        )
        .await
    }

    /// Stores a new, not yet existing name with `content` (a directory marker or a symlink).
    async fn create_object(
        &self,
        parent: u64,
        name: &str,
        content: bytes::Bytes,
        kind: EntryKind,
        mode: u32,
    ) -> FsResult<Attr> {
        let path = self.child_path(parent, name)?;
        match self.entry(&path).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        let attrs = WriteAttributes {
            kind,
            mode: Some(mode),
            mtime_ns: Some(now_ns()),
            supersedes: None,
        };
        let rec = self
            .store
            .put_bytes(&object_name(&path)?, &attrs, content)
            .await?;
        let ino = self.entered(NodeKey::Path(path.clone()));
        self.saved(&path, &rec);
        let entry = Entry::Object(rec);
        self.remember(&path, entry.clone());
        Ok(self.attr_of(ino, &entry))
    }

    /// True when nothing lives under directory `path`.
    async fn is_empty_dir(&self, path: &str) -> FsResult<bool> {
        let page = self.store.list(&first_child(path)).await?;
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
        Ok(())
    }

    pub async fn unlink(&self, parent: u64, name: &str) -> FsResult<()> {
        let path = self.child_path(parent, name)?;
        if let Some(staged) = self.staged_of(&path) {
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
        match self.entry(&path).await {
            Ok(Entry::Object(r)) if r.kind == EntryKind::Dir => return Err(FsError::IsDir),
            Ok(Entry::ImpliedDir) => return Err(FsError::IsDir),
            Ok(_) => {}
            Err(FsError::NotFound) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        match self.store.delete(&object_name(&path)?).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => return Err(FsError::NotFound),
            Err(e) => return Err(e.into()),
        }
        self.forget_entry(&path);
        self.forget_save(&path);
        Ok(())
    }

    pub async fn symlink(&self, parent: u64, name: &str, target: &str) -> FsResult<Attr> {
        let content = bytes::Bytes::copy_from_slice(target.as_bytes());
        self.create_object(parent, name, content, EntryKind::Symlink, 0o777)
            .await
    }

    pub async fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
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
            let target_dir = matches!(t, Entry::ImpliedDir)
                || matches!(t, Entry::Object(r) if r.kind == EntryKind::Dir);
            match (is_dir, target_dir) {
                (true, false) => return Err(FsError::NotDir),
                (false, true) => return Err(FsError::IsDir),
                (true, true) if !self.is_empty_dir(&to).await? => return Err(FsError::NotEmpty),
                _ => {}
            }
        }
        if is_dir {
            // Every name under the directory, then the directory marker itself.
            let (names, _) = self.store.list_all(&format!("{from}/"), None).await?;
            for rec in &names {
                let rest = &rec.name.as_str()[from.len()..];
                self.copy_version(rec, &format!("{to}{rest}"), None).await?;
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
        }
        self.forget_entry(&from);
        self.forget_entry(&to);
        self.restage(&from, &to);
        lock(&self.inodes).rename(&from, &to);
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
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// chmod, utimens, truncate.
    pub async fn setattr(
        &self,
        ino: u64,
        mode: Option<u32>,
        size: Option<u64>,
        mtime_ns: Option<i64>,
    ) -> FsResult<Attr> {
        let path = self.writable_path(ino)?;
        if path.is_empty() {
            return self.getattr(ino).await;
        }
        if let Some(staged) = self.staged_of(&path) {
            write::set_staged(&staged, mode, size, mtime_ns)?;
            if lock(&staged).opens == 0 {
                // Closed already (its last upload may still be running): settle it now.
                self.settle(&staged).await?;
            }
            return write::staged_attr(ino, &staged);
        }
        let entry = self.entry(&path).await?;
        let Entry::Object(rec) = entry else {
            // An implied directory has nothing to keep attributes in; make it a marker.
            if mode.is_some() || mtime_ns.is_some() {
                let rec = self
                    .store
                    .put_bytes(
                        &object_name(&path)?,
                        &WriteAttributes {
                            kind: EntryKind::Dir,
                            mode: mode.map(|m| m & 0o7777),
                            mtime_ns,
                            supersedes: None,
                        },
                        bytes::Bytes::new(),
                    )
                    .await?;
                self.remember(&path, Entry::Object(rec));
            }
            return self.getattr(ino).await;
        };
        if let Some(size) = size
            && rec.kind == EntryKind::File
            && size != rec.size
        {
            // Truncate a file nobody has open: stage it, cut it, upload it.
            let staged = self.stage(&path, false, false).await?;
            write::set_staged(&staged, mode, Some(size), mtime_ns)?;
            self.settle(&staged).await?;
            return self.getattr(ino).await;
        }
        let new_mode = mode.map(|m| m & 0o7777).unwrap_or(rec.mode);
        let new_mtime = mtime_ns.unwrap_or(rec.mtime_ns);
        if new_mode != rec.mode || new_mtime != rec.mtime_ns {
            let mut changed = rec.clone();
            changed.mode = new_mode;
            changed.mtime_ns = new_mtime;
            let fold = self.fold_into(&path).filter(|v| *v == rec.version);
            self.copy_version(&changed, &path, fold).await?;
        }
        self.getattr(ino).await
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

    pub async fn getxattr(&self, ino: u64, name: &str) -> FsResult<Vec<u8>> {
        let attr = self.getattr(ino).await?;
        if name == "user.dosfs.state"
            && let Ok(NodeKey::Path(p)) = self.node(ino)
            && !p.is_empty()
            && attr.kind == Kind::File
        {
            return Ok(self.state_of(&p).as_bytes().to_vec());
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
        failures
    }
}
