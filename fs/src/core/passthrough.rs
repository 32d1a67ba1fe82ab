//! FUSE passthrough for fully cached files, and the per-inode open modes it requires.
//!
//! A read-only open of a stored version whose content the cache holds as one verified file
//! (`BlockCache::object_file`) can be answered with that file as the kernel's backing file:
//! reads then never reach dosfs and go at local-file speed. The kernel (6.9+) imposes one
//! rule per inode: while any open of it is in passthrough mode, every new open of it must be a
//! passthrough open of the same backing file, and while any open is in the normal (cached)
//! mode, no passthrough open is accepted; a violation fails the user's open with EIO. So every
//! open registers its mode here, and:
//!
//! - a read-only open uses passthrough when enabled, the file is at least
//!   [`PASSTHROUGH_MIN_BYTES`], its content is cached as one file, no normal open of the inode
//!   is live and any passthrough open of it is of the same content; otherwise it opens normally;
//! - a normal open (a write, a staged file, content other than what passthrough opens hold)
//!   of an inode with passthrough opens waits up to [`PASSTHROUGH_WAIT`] for them to close
//!   (their release may simply not have arrived yet: the kernel sends it asynchronously after
//!   close), then fails with ETXTBSY, never with the kernel's EIO.
//!
//! Counts are only decremented when release arrives, so this view is never more permissive than
//! the kernel's.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use dos_protocol::ContentHash;

use super::{FsCore, lock};
use crate::error::{FsError, FsResult};

/// Files smaller than this are always read through dosfs (passthrough saves little on them).
pub const PASSTHROUGH_MIN_BYTES: u64 = 8 << 20;
/// How long a normal open waits for passthrough opens of the same inode to be released.
pub const PASSTHROUGH_WAIT: Duration = Duration::from_secs(2);

/// Files at least this large that are not fully cached are read with the kernel's page cache
/// bypassed (see [`Opened::direct_io`]).
pub const DIRECT_IO_MIN_BYTES: u64 = PASSTHROUGH_MIN_BYTES;

/// What [`FsCore::open`] and [`FsCore::create`] hand the adapter.
pub struct Opened {
    pub fh: u64,
    /// Set when the open is to be answered in passthrough mode with this file.
    pub passthrough: Option<PassthroughFile>,
    /// Answer with direct I/O (no kernel page cache): set for read-only opens of large
    /// objects that are not fully cached, which are streamed from the store (when the
    /// kernel allows mmap of such files, see [`FsCore::enable_direct_io`]). Each read then
    /// goes from dosfs straight into the reader's buffer, instead of dosfs filling the page
    /// cache and the reader copying out of it: one copy less per byte, on the path that is
    /// CPU-bound. Smaller files keep the page cache (small reads are batched by the kernel's
    /// read-ahead); fully cached ones are read by the kernel itself (passthrough).
    pub direct_io: bool,
}

pub struct PassthroughFile {
    pub ino: u64,
    pub hash: ContentHash,
    /// The cached content, opened read-only and checked.
    pub file: std::fs::File,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Passthrough(ContentHash),
}

#[derive(Default)]
struct InodeIo {
    normal: u32,
    passthrough: u32,
    hash: Option<ContentHash>,
}

/// Live opens by inode and by handle.
#[derive(Default)]
pub(crate) struct IoModes {
    inodes: HashMap<u64, InodeIo>,
    handles: HashMap<u64, (u64, Mode)>,
}

impl IoModes {
    fn add(&mut self, ino: u64, mode: Mode) {
        let io = self.inodes.entry(ino).or_default();
        match mode {
            Mode::Normal => io.normal += 1,
            Mode::Passthrough(hash) => {
                io.passthrough += 1;
                io.hash = Some(hash);
            }
        }
    }

    fn remove(&mut self, ino: u64, mode: Mode) {
        if let Some(io) = self.inodes.get_mut(&ino) {
            match mode {
                Mode::Normal => io.normal = io.normal.saturating_sub(1),
                Mode::Passthrough(_) => io.passthrough = io.passthrough.saturating_sub(1),
            }
            if io.passthrough == 0 {
                io.hash = None;
            }
            if io.normal == 0 && io.passthrough == 0 {
                self.inodes.remove(&ino);
            }
        }
    }

    fn may_pass_through(&self, ino: u64, hash: ContentHash) -> bool {
        self.inodes
            .get(&ino)
            .is_none_or(|io| io.normal == 0 && (io.passthrough == 0 || io.hash == Some(hash)))
    }

    /// Whether any handle has `ino` open.
    pub(crate) fn is_open(&self, ino: u64) -> bool {
        self.inodes.contains_key(&ino)
    }

    fn has_passthrough(&self, ino: u64) -> bool {
        self.inodes.get(&ino).is_some_and(|io| io.passthrough > 0)
    }
}

/// A mode registered for an inode before the handle exists; dropped without
/// [`Reservation::bind`], it is given back.
pub(crate) struct Reservation<'a> {
    core: &'a FsCore,
    ino: u64,
    mode: Mode,
    bound: bool,
}

impl Reservation<'_> {
    /// Ties the reserved mode to handle `fh`, until [`FsCore::forget_io`].
    pub(crate) fn bind(mut self, fh: u64) {
        self.bound = true;
        lock(&self.core.io)
            .handles
            .insert(fh, (self.ino, self.mode));
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.bound {
            lock(&self.core.io).remove(self.ino, self.mode);
            self.core.io_changed.notify_waiters();
        }
    }
}

impl FsCore {
    /// Called by the adapter once the kernel agreed to passthrough (and we may use it).
    pub fn enable_passthrough(&self) {
        self.passthrough.store(true, Ordering::Relaxed);
    }

    pub fn passthrough_enabled(&self) -> bool {
        self.passthrough.load(Ordering::Relaxed)
    }

    /// Called by the adapter once the kernel agreed to mmap of direct-I/O files
    /// (`FUSE_DIRECT_IO_ALLOW_MMAP`, Linux 6.6+): only then are large uncached files opened
    /// with direct I/O, since without it a shared mmap of them would fail with ENODEV.
    pub fn enable_direct_io(&self) {
        self.direct_io.store(true, Ordering::Relaxed);
    }

    /// Reserves a normal open of `ino`, waiting a little for passthrough opens of it to close.
    pub(crate) async fn reserve_normal(&self, ino: u64) -> FsResult<Reservation<'_>> {
        let deadline = Instant::now() + PASSTHROUGH_WAIT;
        loop {
            let changed = self.io_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut io = lock(&self.io);
                if !io.has_passthrough(ino) {
                    io.add(ino, Mode::Normal);
                    return Ok(Reservation {
                        core: self,
                        ino,
                        mode: Mode::Normal,
                        bound: false,
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, changed).await.is_err() {
                return Err(FsError::Busy(
                    "the file is open for reading in passthrough mode with other content",
                ));
            }
        }
    }

    /// Reserves a passthrough open of `ino` with content `hash` if the kernel would accept it.
    pub(crate) fn reserve_passthrough(
        &self,
        ino: u64,
        hash: ContentHash,
    ) -> Option<Reservation<'_>> {
        let mut io = lock(&self.io);
        if !io.may_pass_through(ino, hash) {
            return None;
        }
        io.add(ino, Mode::Passthrough(hash));
        Some(Reservation {
            core: self,
            ino,
            mode: Mode::Passthrough(hash),
            bound: false,
        })
    }

    /// The cached content file for a passthrough open of `size` bytes of `hash`, if any.
    pub(crate) async fn passthrough_file(
        &self,
        hash: ContentHash,
        size: u64,
    ) -> Option<std::fs::File> {
        if !self.passthrough_enabled() || size < PASSTHROUGH_MIN_BYTES {
            return None;
        }
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || cache.object_file(&hash.0, size))
            .await
            .ok()
            .flatten()
    }

    /// The adapter could not set up passthrough for `fh` (the kernel refused the backing
    /// file): the handle becomes a normal one, and passthrough is not tried again.
    pub fn passthrough_failed(&self, fh: u64) {
        self.passthrough.store(false, Ordering::Relaxed);
        let mut io = lock(&self.io);
        if let Some((ino, mode @ Mode::Passthrough(_))) = io.handles.get(&fh).copied() {
            io.remove(ino, mode);
            io.add(ino, Mode::Normal);
            io.handles.insert(fh, (ino, Mode::Normal));
        }
        drop(io);
        self.io_changed.notify_waiters();
    }

    /// Drops the open mode of a released handle; an inode it leaves with no open handle
    /// stops being kept for `fstat` after an unlink.
    pub(crate) fn forget_io(&self, fh: u64) {
        let mut io = lock(&self.io);
        let mut closed = None;
        if let Some((ino, mode)) = io.handles.remove(&fh) {
            io.remove(ino, mode);
            if !io.is_open(ino) {
                closed = Some(ino);
            }
        }
        drop(io);
        if let Some(ino) = closed {
            lock(&self.unlinked_open).remove(&ino);
        }
        self.io_changed.notify_waiters();
    }
}
