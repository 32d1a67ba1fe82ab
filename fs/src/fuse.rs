//! The fuser adapter: the only module that touches fuser's request and reply types. Each
//! callback hands the matching [`FsCore`] operation to the tokio runtime as a task that
//! replies when it is done, turning an [`FsError`] into its errno; the fuser threads only
//! read requests and never wait for the store. So the work in progress (uploads at close,
//! reads from the store) is as many tasks as the kernel sends requests, not a fixed number
//! of threads that all block on uploads.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, KernelConfig, LockOwner, OpenAccMode, OpenFlags, RenameFlags, ReplyAttr,
    ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs,
    ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use crate::core::{ATTR_TTL, Attr, Caller, FsCore, Kind, Opened, PassthroughFile, SetAttr};
use crate::error::FsError;

pub struct DosFs {
    core: Arc<FsCore>,
    rt: tokio::runtime::Handle,
    ids: Ids,
    backing: Arc<Mutex<Backing>>,
}

/// The owner every node is shown with.
#[derive(Clone, Copy)]
struct Ids {
    uid: u32,
    gid: u32,
}

/// Backing files registered with the kernel for passthrough opens: one per inode and content
/// at a time (the kernel wants every passthrough open of an inode on the same backing file),
/// each kept alive by the handles that use it.
#[derive(Default)]
struct Backing {
    by_content: HashMap<(u64, [u8; 32]), Weak<BackingId>>,
    by_handle: HashMap<u64, Arc<BackingId>>,
}

fn backing(b: &Mutex<Backing>) -> std::sync::MutexGuard<'_, Backing> {
    b.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The backing id for a passthrough open, shared with the other open handles of the same
/// inode and content, or registered now.
fn backing_for(
    b: &Mutex<Backing>,
    reply: &ReplyOpen,
    p: &PassthroughFile,
) -> std::io::Result<Arc<BackingId>> {
    let mut backing = backing(b);
    let key = (p.ino, p.hash.0);
    if let Some(id) = backing.by_content.get(&key).and_then(Weak::upgrade) {
        return Ok(id);
    }
    let id = Arc::new(reply.open_backing(&p.file)?);
    backing.by_content.retain(|_, w| w.strong_count() > 0);
    backing.by_content.insert(key, Arc::downgrade(&id));
    Ok(id)
}

/// Inodes the daemon holds before it asks the kernel to drop some entries (which makes the
/// kernel forget the inodes it does not use).
pub const INODE_CAP: usize = 200_000;

/// Keeps the inode table under [`INODE_CAP`]: every few seconds, when over it, asks the
/// kernel to drop entries it holds (`FUSE_NOTIFY_INVAL_ENTRY`), so their forgets follow.
pub async fn cap_inodes(
    core: Arc<FsCore>,
    notifier: fuser::Notifier,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let victims = core.entries_over_cap(INODE_CAP);
        if victims.is_empty() {
            continue;
        }
        let n = victims.len();
        let notifier = notifier.clone();
        // Notifications write to /dev/fuse: off the async workers.
        let sent = tokio::task::spawn_blocking(move || {
            victims
                .iter()
                .filter(|(parent, name)| {
                    notifier
                        .inval_entry(INodeNo(*parent), OsStr::new(name))
                        .is_ok()
                })
                .count()
        })
        .await
        .unwrap_or(0);
        tracing::info!(
            over_cap = n,
            sent,
            "asked the kernel to drop entries (inode cap)"
        );
    }
}

/// Follows the store's changes for as long as the mount lives: each change made elsewhere
/// (REST, another mount) drops what this mount and its kernel cached of it
/// (`FUSE_NOTIFY_INVAL_INODE`/`_ENTRY`), so it shows here at once. When the feed breaks
/// (the API server or the broker went), it is followed again with a backoff; meanwhile the
/// attribute TTL bounds how stale anything is.
pub async fn follow_changes(
    core: Arc<FsCore>,
    feed: crate::mount::Feed,
    notifier: fuser::Notifier,
    cancel: tokio_util::sync::CancellationToken,
) {
    use futures::StreamExt;
    let mut backoff = Duration::from_secs(1);
    loop {
        let feed = tokio::select! {
            _ = cancel.cancelled() => return,
            f = feed() => f,
        };
        match feed {
            Ok(mut feed) => {
                tracing::debug!("following the store's changes");
                core.set_following(true);
                backoff = Duration::from_secs(1);
                loop {
                    let event = tokio::select! {
                        _ = cancel.cancelled() => return,
                        e = feed.next() => e,
                    };
                    let Some(event) = event else { break };
                    let drop = core.changed(&event);
                    if drop.is_empty() {
                        continue;
                    }
                    let notifier = notifier.clone();
                    // Notifications write to /dev/fuse: off the async workers. An inode or
                    // entry the kernel no longer has answers ENOENT, which is fine.
                    let _ = tokio::task::spawn_blocking(move || {
                        for d in drop {
                            let _ = match d {
                                crate::core::Invalidate::Inode(ino) => {
                                    notifier.inval_inode(INodeNo(ino), 0, 0)
                                }
                                crate::core::Invalidate::Entry { parent, name } => {
                                    notifier.inval_entry(INodeNo(parent), OsStr::new(&name))
                                }
                            };
                        }
                    })
                    .await;
                }
                core.set_following(false);
                tracing::info!("the store's change feed ended; following it again");
            }
            Err(e) => tracing::debug!(error = %e, "cannot follow the store's changes"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

impl DosFs {
    pub fn new(core: Arc<FsCore>, rt: tokio::runtime::Handle, uid: u32, gid: u32) -> Self {
        Self {
            core,
            rt,
            ids: Ids { uid, gid },
            backing: Arc::default(),
        }
    }

    /// Runs `op(core)` as a task and gives its outcome to `reply`: in a span naming the
    /// operation `kind` and the kernel's request (its id and the caller's pid), timed in
    /// [`metrics::OP_DURATION`](crate::metrics::OP_DURATION).
    fn spawn<T, F, Fut, R>(&self, kind: &'static str, req: &Request, op: F, reply: R)
    where
        F: FnOnce(Arc<FsCore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, FsError>> + Send + 'static,
        T: Send + 'static,
        R: FnOnce(Result<T, Errno>) + Send + 'static,
    {
        use tracing::Instrument as _;
        let core = self.core.clone();
        let ops = self.core.ops.clone();
        let span = tracing::info_span!("fuse", op = kind, id = req.unique().0, pid = req.pid());
        self.rt.spawn(
            async move {
                let started = std::time::Instant::now();
                let result = op(core).await;
                measured(&ops, kind, started, result.is_err());
                reply(result.map_err(to_errno))
            }
            .instrument(span),
        );
    }
}

/// Records one operation of `kind` that started at `started`.
fn measured(
    ops: &crate::core::stats::OpCounters,
    kind: &'static str,
    started: std::time::Instant,
    failed: bool,
) {
    ops.count(kind);
    metrics::histogram!(crate::metrics::OP_DURATION, "op" => kind)
        .record(started.elapsed().as_secs_f64());
    if failed {
        metrics::counter!(crate::metrics::OP_ERRORS, "op" => kind).increment(1);
    }
}

fn to_errno(e: FsError) -> Errno {
    if e.is_expected() {
        tracing::debug!(error = %e, "fs op");
    } else {
        tracing::warn!(error = %e, "fs op failed");
    }
    Errno::from_i32(e.errno())
}

impl Ids {
    fn file_attr(self, a: &Attr) -> FileAttr {
        // A directory has at least its name and its `.` (the core counts its subdirectories'
        // `..` on top where it knows them).
        let nlink = if a.kind == Kind::Dir {
            a.nlink.max(2)
        } else {
            a.nlink
        };
        FileAttr {
            ino: INodeNo(a.ino),
            size: a.size,
            blocks: a.size.div_ceil(512),
            atime: system_time(a.atime_ns),
            mtime: system_time(a.mtime_ns),
            ctime: system_time(a.ctime_ns),
            crtime: system_time(a.mtime_ns),
            kind: file_kind(a.kind),
            perm: (a.perm & 0o7777) as u16,
            nlink: if a.unlinked { 0 } else { nlink },
            // Versions that recorded no owner (written over REST) are the mounting user's.
            uid: a.uid.unwrap_or(self.uid),
            gid: a.gid.unwrap_or(self.gid),
            rdev: a.rdev,
            blksize: 1 << 20,
            flags: 0,
        }
    }

    fn entry(self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.entry(&ATTR_TTL, &self.file_attr(&a), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn attr(self, reply: ReplyAttr, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => reply.attr(&ATTR_TTL, &self.file_attr(&a)),
            Err(e) => reply.error(e),
        }
    }
}

fn empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn name_string(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_owned).ok_or(Errno::EINVAL)
}

/// A time in nanoseconds since the epoch, which may be before it.
fn system_time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

/// Who sent a request. The supplementary groups are read from `/proc` only when `groups`
/// (a rule needs them, and only for a caller other than root).
fn caller(req: &Request, groups: bool) -> Caller {
    let (uid, gid) = (req.uid(), req.gid());
    let groups = if groups && uid != 0 {
        supplementary_groups(req.pid())
    } else {
        Vec::new()
    };
    Caller { uid, gid, groups }
}

/// The `Groups:` line of `/proc/PID/status` (empty when the process is gone).
fn supplementary_groups(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|x| x.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn time_ns(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

fn file_kind(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDevice => FileType::CharDevice,
        Kind::BlockDevice => FileType::BlockDevice,
    }
}

/// Replies with an xattr value: its size when asked with size 0, ERANGE when it does not fit.
fn reply_xattr(reply: ReplyXattr, size: u32, value: Result<Vec<u8>, Errno>) {
    match value {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for DosFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        // Large files streamed from the store are opened with direct I/O only if the kernel
        // keeps shared mmap of them working (6.6+); otherwise they keep the page cache.
        if config
            .add_capabilities(InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP)
            .is_ok()
        {
            self.core.enable_direct_io();
        }
        // Registering a backing file needs CAP_SYS_ADMIN, so only root mounts ask for
        // passthrough. Stack depth 1: backing files on a plain filesystem, and dosfs itself
        // may still be a lower layer of overlayfs.
        if rustix::process::geteuid().is_root() {
            match config.add_capabilities(InitFlags::FUSE_PASSTHROUGH) {
                Ok(()) if config.set_max_stack_depth(1).is_ok() => {
                    self.core.enable_passthrough();
                    tracing::info!("FUSE passthrough available for fully cached files");
                }
                _ => {
                    tracing::info!("the kernel offers no FUSE passthrough; reads go through dosfs")
                }
            }
        }
        Ok(())
    }

    fn destroy(&mut self) {
        let failures = self.rt.block_on(self.core.flush_all());
        for (path, e) in failures {
            tracing::error!(%path, error = %e, "could not upload at unmount");
        }
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = match name_string(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ids = self.ids;
        self.spawn(
            "lookup",
            req,
            move |core| async move { core.lookup(parent.0, &name).await },
            move |r| ids.entry(reply, r),
        );
    }

    /// (fuser's default `batch_forget` calls this for each node.)
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.core.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let ids = self.ids;
        self.spawn(
            "getattr",
            req,
            move |core| async move {
                match fh {
                    Some(fh) => core.getattr_open(ino.0, fh.0).await,
                    None => core.getattr(ino.0).await,
                }
            },
            move |r| ids.attr(reply, r),
        );
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime_ns: atime.map(time_ns),
            mtime_ns: mtime.map(time_ns),
        };
        let caller = caller(req, gid.is_some());
        let ids = self.ids;
        self.spawn(
            "setattr",
            req,
            move |core| async move { core.setattr(ino.0, &set, &caller).await },
            move |r| ids.attr(reply, r),
        );
    }

    fn readlink(&self, req: &Request, ino: INodeNo, reply: ReplyData) {
        self.spawn(
            "readlink",
            req,
            move |core| async move { core.readlink(ino.0).await },
            move |r| match r {
                Ok(t) => reply.data(&t),
                Err(e) => reply.error(e),
            },
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = match name_string(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ids = self.ids;
        let caller = caller(req, false);
        self.spawn(
            "mkdir",
            req,
            move |core| async move { core.mkdir(parent.0, &name, mode & !umask, &caller).await },
            move |r| ids.entry(reply, r),
        );
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = match name_string(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ids = self.ids;
        let caller = caller(req, false);
        let mode = mode & !(umask & 0o7777);
        self.spawn(
            "mknod",
            req,
            move |core| async move { core.mknod(parent.0, &name, mode, rdev, &caller).await },
            move |r| ids.entry(reply, r),
        );
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_string(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(
            "unlink",
            req,
            move |core| async move { core.unlink(parent.0, &name).await },
            move |r| empty(reply, r),
        );
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = match name_string(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(
            "rmdir",
            req,
            move |core| async move { core.rmdir(parent.0, &name).await },
            move |r| empty(reply, r),
        );
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = match (name_string(link_name), target.to_str()) {
            (Ok(n), Some(t)) => (n, t.to_owned()),
            _ => return reply.error(Errno::EINVAL),
        };
        let ids = self.ids;
        let caller = caller(req, false);
        self.spawn(
            "symlink",
            req,
            move |core| async move { core.symlink(parent.0, &name, &target, &caller).await },
            move |r| ids.entry(reply, r),
        );
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.intersects(RenameFlags::RENAME_EXCHANGE | RenameFlags::RENAME_WHITEOUT) {
            reply.error(Errno::EINVAL);
            return;
        }
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        let (name, newname) = match (name_string(name), name_string(newname)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => return reply.error(Errno::EINVAL),
        };
        self.spawn(
            "rename",
            req,
            move |core| async move {
                core.rename(parent.0, &name, newparent.0, &newname, no_replace)
                    .await
            },
            move |r| empty(reply, r),
        );
    }

    fn link(
        &self,
        req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let newname = match name_string(newname) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ids = self.ids;
        self.spawn(
            "link",
            req,
            move |core| async move { core.link(ino.0, newparent.0, &newname).await },
            move |r| ids.entry(reply, r),
        );
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let write = !matches!(flags.acc_mode(), OpenAccMode::O_RDONLY);
        let truncate = flags.0 & libc::O_TRUNC != 0;
        let backing = self.backing.clone();
        let core = self.core.clone();
        self.spawn(
            "open",
            req,
            move |core| async move { core.open(ino.0, write, truncate).await },
            move |r| match r {
                Ok(Opened {
                    fh,
                    passthrough: Some(p),
                    ..
                }) => match backing_for(&backing, &reply, &p) {
                    Ok(id) => {
                        self::backing(&backing).by_handle.insert(fh, id.clone());
                        reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &id);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "FUSE passthrough refused; reading through dosfs from now on");
                        core.passthrough_failed(fh);
                        reply.opened(FileHandle(fh), FopenFlags::empty());
                    }
                },
                Ok(Opened { fh, direct_io, .. }) => {
                    let flags = if direct_io {
                        FopenFlags::FOPEN_DIRECT_IO
                    } else {
                        FopenFlags::empty()
                    };
                    reply.opened(FileHandle(fh), flags)
                }
                Err(e) => reply.error(e),
            },
        );
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.spawn(
            "read",
            req,
            move |core| async move {
                let data = core.read(fh.0, offset, size).await;
                if let Ok(b) = &data {
                    core.ops.read(b.len());
                }
                data
            },
            move |r| match r {
                Ok(b) => reply.data(&b),
                Err(e) => reply.error(e),
            },
        );
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        // A write goes to the local staging file: quick, so it is done here rather than
        // copying the data into a task.
        let _span = tracing::info_span!("fuse", op = "write", id = req.unique().0, pid = req.pid())
            .entered();
        let started = std::time::Instant::now();
        let written = self.rt.block_on(self.core.write(fh.0, offset, data));
        measured(&self.core.ops, "write", started, written.is_err());
        match written {
            Ok(n) => {
                self.core.ops.written(n as usize);
                reply.written(n)
            }
            Err(e) => reply.error(to_errno(e)),
        }
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.spawn(
            "flush",
            req,
            move |core| async move { core.flush(fh.0).await },
            move |r| empty(reply, r),
        );
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let backing = self.backing.clone();
        self.spawn(
            "release",
            req,
            move |core| async move {
                let result = core.release(fh.0).await;
                self::backing(&backing).by_handle.remove(&fh.0);
                result
            },
            move |r| empty(reply, r),
        );
    }

    fn fsync(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.spawn(
            "fsync",
            req,
            move |core| async move { core.flush(fh.0).await },
            move |r| empty(reply, r),
        );
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.spawn(
            "opendir",
            req,
            move |core| async move { core.opendir(ino.0).await },
            move |r| match r {
                Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
                Err(e) => reply.error(e),
            },
        );
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        self.spawn(
            "readdir",
            req,
            move |core| async move {
                let mut reply = reply;
                let r = core
                    .dir_entries(ino.0, fh.0, offset as usize, |ino, next, kind, name| {
                        reply.add(INodeNo(ino), next as u64, file_kind(kind), name)
                    })
                    .await;
                Ok((reply, r))
            },
            |r| {
                if let Ok((reply, r)) = r {
                    match r {
                        Ok(()) => reply.ok(),
                        Err(e) => reply.error(to_errno(e)),
                    }
                }
            },
        );
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.core.releasedir(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // The store has no fixed size; report plenty, in 1 MiB blocks.
        reply.statfs(
            1 << 30,
            1 << 29,
            1 << 29,
            1 << 40,
            1 << 39,
            1 << 20,
            255,
            1 << 20,
        );
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOTSUP);
    }

    fn getxattr(&self, req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let name = match name_string(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        self.spawn(
            "getxattr",
            req,
            move |core| async move { core.getxattr(ino.0, &name).await },
            move |r| reply_xattr(reply, size, r),
        );
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        self.spawn(
            "listxattr",
            req,
            move |core| async move { core.listxattr(ino.0).await },
            move |r| reply_xattr(reply, size, r),
        );
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOTSUP);
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let name = match name_string(name) {
            Ok(n) => n,
            Err(e) => return reply.error(e),
        };
        let ids = self.ids;
        let caller = caller(req, false);
        self.spawn(
            "create",
            req,
            move |core| async move { core.create(parent.0, &name, mode & !umask, &caller).await },
            move |r| match r {
                Ok((a, fh)) => reply.created(
                    &ATTR_TTL,
                    &ids.file_attr(&a),
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::empty(),
                ),
                Err(e) => reply.error(e),
            },
        );
    }
}
