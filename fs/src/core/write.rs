//! Writes: a file opened for writing lives in a local staging file (never evicted from the
//! cache); flush, fsync and the last close upload it whole and return once the new version
//! is durable. A small file goes in one PUT; a larger one is POSTed first, so content the
//! store already has sends no bytes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dos_cache::StagingFile;
use dos_protocol::{ContentHash, EntryKind, PosixAttrs, VersionRecord, WriteAttributes, now_ns};
use dos_store::{Content, PostOutcome, StoreError, UploadId, UploadProgress};
use sha2::{Digest, Sha256};

use super::journal::Record;
use super::passthrough::Opened;
use super::stream::Streaming;
use super::{Attr, Caller, Entry, FsCore, Handle, Kind, NodeKey, SetAttr, lock};
use crate::error::{FsError, FsResult};
use std::collections::HashMap;

pub struct Staged {
    /// The name it will be uploaded under (follows renames while open).
    pub(crate) path: String,
    file: StagingFile,
    /// Bumped by every change, so an upload only clears `dirty` for what it sent.
    generation: u64,
    /// Bytes differ from the stored version (or attributes changed).
    dirty: bool,
    mode: u32,
    mtime_ns: Option<i64>,
    /// Owner, group and access time it will be uploaded with.
    pub(crate) posix: PosixAttrs,
    /// Staged for a name that did not exist (until `create` takes note of it).
    made: bool,
    /// When its data or attributes last changed (its ctime until it is uploaded).
    ctime_ns: i64,
    /// Open handles on it.
    pub(crate) opens: usize,
    /// Deleted while open: never uploaded.
    pub unlinked: bool,
    /// Held for the whole of an upload, so that unlink and rename wait for one in flight.
    pub(crate) uploading: Arc<tokio::sync::Mutex<()>>,
    /// Closes of it in the write-back journal not uploaded yet: it stays staged (so reads,
    /// `stat` and listings see it) until they are.
    pub(crate) journaled: usize,
    /// Every write since it was staged empty (created or truncated) went at the end: it may
    /// stream to the store while written (see `stream`). `seq_end` is its size then.
    sequential: bool,
    seq_end: u64,
    /// The upload that follows the writes, once started.
    stream: Option<Streaming>,
}

impl Staged {
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty
    }
}

/// The write-back uploader's bookkeeping.
#[derive(Default)]
pub struct UploadState {
    /// Journal records being uploaded now (by the uploader, an unmount or a rename).
    in_flight: std::collections::HashSet<u64>,
    /// Paths whose upload failed: not tried again before the instant, with the back-off.
    retry: HashMap<String, (std::time::Instant, std::time::Duration)>,
}

/// Back-off of a failed write-back upload: doubling from 0.5 s to 30 s.
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);
/// Files waiting in the write-back journal before a close waits for the uploads.
const WRITEBACK_MAX_PENDING: usize = 4096;
/// Write-back uploads of different files at once.
const UPLOADS_AT_ONCE: usize = 4;

pub fn staged_attr(ino: u64, staged: &Arc<Mutex<Staged>>) -> FsResult<Attr> {
    let s = lock(staged);
    let size = s.file.file().metadata()?.len();
    let mtime_ns = s.mtime_ns.unwrap_or(s.ctime_ns);
    Ok(Attr {
        ino,
        kind: Kind::File,
        size,
        perm: s.mode,
        mtime_ns,
        atime_ns: s.posix.atime_ns.unwrap_or(mtime_ns),
        ctime_ns: s.ctime_ns,
        uid: s.posix.uid,
        gid: s.posix.gid,
        rdev: 0,
        hash: None,
        version: None,
        read_only: false,
        unlinked: s.unlinked,
        link: s.posix.link,
        nlink: 1,
    })
}

pub fn set_staged(staged: &Arc<Mutex<Staged>>, set: &SetAttr) -> FsResult<()> {
    let mut s = lock(staged);
    let now = now_ns();
    if s.mtime_ns.is_none() {
        // The data last changed at the last change so far: this one is of attributes.
        s.mtime_ns = Some(s.ctime_ns);
    }
    if let Some(m) = set.mode {
        s.mode = m & 0o7777;
    }
    if set.uid.is_some() {
        s.posix.uid = set.uid;
    }
    if set.gid.is_some() {
        s.posix.gid = set.gid;
    }
    if set.atime_ns.is_some() {
        s.posix.atime_ns = set.atime_ns;
    }
    if let Some(size) = set.size {
        s.file.file().set_len(size)?;
        // A stream carries the bytes up to here: gone with them (a cut to zero starts over).
        s.stream = None;
        s.sequential = size == 0;
        s.seq_end = 0;
    }
    if let Some(t) = set.mtime_ns {
        s.mtime_ns = Some(t);
    } else if set.size.is_some() {
        // A truncate changes the data: its mtime is now (kept, not the upload's time).
        s.mtime_ns = Some(now);
    }
    s.ctime_ns = now;
    s.dirty = true;
    s.generation += 1;
    Ok(())
}

pub fn read_staged(staged: &Arc<Mutex<Staged>>, offset: u64, len: u32) -> FsResult<Bytes> {
    let s = lock(staged);
    let mut buf = vec![0u8; len as usize];
    let mut got = 0;
    while got < buf.len() {
        let n = s
            .file
            .file()
            .read_at(&mut buf[got..], offset + got as u64)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    buf.truncate(got);
    Ok(Bytes::from(buf))
}

/// SHA-256 of `len` bytes of `file` from `offset`.
fn hash_range(file: &File, offset: u64, len: u64) -> std::io::Result<ContentHash> {
    let mut f = file.try_clone()?;
    f.seek(SeekFrom::Start(offset))?;
    let mut f = f.take(len);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        got += n as u64;
    }
    if got != len {
        return Err(std::io::Error::other(format!(
            "{got} of {len} bytes could be read"
        )));
    }
    Ok(ContentHash(hasher.finalize().into()))
}

/// Files up to this size are sent in one PUT (read into memory, hashed on the way);
/// larger ones are hashed first and POSTed, so content the store has sends no bytes.
const SMALL_FILE: u64 = 1 << 20;

/// How many times one upload is resumed after losing its connection.
const UPLOAD_RESUMES: u32 = 3;

/// `size` bytes of `file` from `offset` (a small file), read whole.
fn read_whole(file: &File, offset: u64, size: u64) -> std::io::Result<Content> {
    let mut buf = vec![0u8; size as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(Content::from_bytes(buf))
}

/// The attributes a file's bytes are stored with.
struct FileMeta {
    mode: u32,
    mtime_ns: i64,
    posix: PosixAttrs,
}

/// When [`FsCore::upload_if`] uploads a dirty staged file.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Upload {
    Always,
    /// Only if no handle has it open (a last release racing with a new open).
    UnlessOpen,
}

impl FsCore {
    pub(crate) fn staged_of(&self, path: &str) -> Option<Arc<Mutex<Staged>>> {
        lock(&self.staged).get(path).cloned()
    }

    /// The staging file of `path`, creating it (with the current content unless `truncate`).
    /// With `open`, counts an open handle on it, in the same step as finding it: a last
    /// release running meanwhile then sees the file reopened and leaves it (and its upload)
    /// to the new handle, instead of uploading a state nobody closed, such as the empty file
    /// an `O_TRUNC` open leaves before its writes.
    /// A file made now takes `new_owner` (the creator's ids; `None`: not recorded).
    pub(crate) async fn stage(
        &self,
        path: &str,
        truncate: bool,
        open: bool,
        new_owner: Option<PosixAttrs>,
    ) -> FsResult<Arc<Mutex<Staged>>> {
        let found = {
            let map = lock(&self.staged);
            map.get(path).cloned().inspect(|s| {
                if open {
                    lock(s).opens += 1;
                }
            })
        };
        if let Some(s) = found {
            if truncate {
                set_staged(&s, &SetAttr::size(0))?;
            }
            return Ok(s);
        }
        let mut file = self.staging.create()?;
        let mut mode = 0o644;
        let mut dirty = truncate;
        let mut sequential = truncate;
        let mut posix = new_owner.unwrap_or_default();
        let mut ctime_ns = now_ns();
        let mut mtime_ns = None;
        let mut made = false;
        match self.entry(path).await {
            Ok(Entry::Object(rec)) if rec.kind == EntryKind::File => {
                mode = rec.mode;
                posix = rec.posix;
                if !truncate {
                    ctime_ns = rec.ctime_ns;
                    mtime_ns = Some(rec.mtime_ns);
                }
                if !truncate && rec.size > 0 {
                    self.download_into(&rec, file.file_mut()).await?;
                }
                sequential |= rec.size == 0;
            }
            Ok(Entry::Object(rec)) if rec.kind.is_special() => {
                return Err(FsError::NotSupported(
                    "FIFOs, sockets and device nodes hold no data here",
                ));
            }
            Ok(_) => return Err(FsError::IsDir),
            Err(FsError::NotFound) => {
                dirty = true;
                sequential = true;
                made = true;
            }
            Err(e) => return Err(e),
        }
        let staged = Arc::new(Mutex::new(Staged {
            path: path.to_string(),
            generation: 0,
            file,
            dirty,
            mode,
            mtime_ns,
            posix,
            made,
            ctime_ns,
            opens: 0,
            unlinked: false,
            uploading: Arc::default(),
            journaled: 0,
            sequential,
            seq_end: 0,
            stream: None,
        }));
        let mut map = lock(&self.staged);
        // Another opener may have staged it meanwhile: share theirs.
        let staged = map.entry(path.to_string()).or_insert(staged).clone();
        if open {
            lock(&staged).opens += 1;
        }
        Ok(staged)
    }

    /// Copies a version's bytes into a staging file (editing an existing file).
    async fn download_into(&self, rec: &VersionRecord, file: &mut File) -> FsResult<()> {
        let mut read = self.store.get(&rec.name, Some(rec.version), None).await?;
        let mut f = file.try_clone()?;
        f.seek(SeekFrom::Start(0))?;
        while let Some(chunk) = futures::StreamExt::next(&mut read.body).await {
            // Blocking writes of staged bytes; the staging file is local and small writes
            // go to the page cache.
            f.write_all(&chunk?)?;
        }
        Ok(())
    }

    pub async fn open(&self, ino: u64, write: bool, truncate: bool) -> FsResult<Opened> {
        if !write {
            return self.open_read(ino).await;
        }
        let path = match self.node(ino)? {
            NodeKey::Path(p) if !p.is_empty() => p,
            NodeKey::Path(_) => return Err(FsError::IsDir),
            _ => return Err(FsError::ReadOnly("file history cannot be changed")),
        };
        let reserved = self.reserve_normal(ino).await?;
        let staged = self.stage(&path, truncate, true, None).await?;
        let fh = self.new_handle(Handle::Write { staged });
        reserved.bind(fh);
        Ok(Opened {
            fh,
            passthrough: None,
            direct_io: false,
        })
    }

    /// A read-only open of a file that is being written here reads the staged bytes.
    pub(crate) fn open_staged_for_read(&self, path: &str) -> Option<u64> {
        let staged = {
            let map = lock(&self.staged);
            let staged = map.get(path)?.clone();
            lock(&staged).opens += 1;
            staged
        };
        Some(self.new_handle(Handle::Write { staged }))
    }

    /// Creates (or truncates, as `open(O_CREAT|O_TRUNC)` does) file `name`, owned by
    /// `caller` when it is new.
    pub async fn create(
        &self,
        parent: u64,
        name: &str,
        mode: u32,
        caller: &Caller,
    ) -> FsResult<(Attr, u64)> {
        let path = self.child_path(parent, name)?;
        let ino = self.ino_of(NodeKey::Path(path.clone()));
        let (owner, mode) = self.new_owner(&path, caller, mode & 0o7777, false).await?;
        let reserved = self.reserve_normal(ino).await?;
        let staged = self.stage(&path, true, true, Some(owner)).await?;
        let made = {
            let mut s = lock(&staged);
            let made = std::mem::take(&mut s.made);
            if made {
                s.mode = mode;
            }
            made
        };
        if made {
            self.dir_changed(&path);
        }
        let mut attr = staged_attr(ino, &staged)?;
        let fh = self.new_handle(Handle::Write { staged });
        reserved.bind(fh);
        // Entered last: the kernel holds the node only if the create succeeded.
        attr.ino = self.entered(NodeKey::Path(path));
        Ok((attr, fh))
    }

    pub async fn write(&self, fh: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        let h = self.handle(fh)?;
        let h = h.lock().await;
        let Handle::Write { staged, .. } = &*h else {
            return Err(FsError::BadHandle);
        };
        let mut s = lock(staged);
        s.file.file().write_all_at(data, offset)?;
        s.dirty = true;
        s.generation += 1;
        s.mtime_ns = None;
        s.ctime_ns = now_ns();
        if s.sequential && offset == s.seq_end {
            s.seq_end += data.len() as u64;
            match &s.stream {
                Some(st) => st.wrote(s.seq_end),
                None => self.maybe_stream(&mut s),
            }
        } else if s.sequential {
            // Written elsewhere than at the end: the close uploads it whole.
            s.sequential = false;
            s.stream = None;
        }
        Ok(data.len() as u32)
    }

    /// Starts streaming a staged file written in order, once it is long enough and a
    /// stream slot is free (with write-back, closes never wait for the store: no stream).
    fn maybe_stream(&self, s: &mut Staged) {
        let Some(after) = self.config.stream_after else {
            return;
        };
        if s.seq_end <= after || self.journal.is_some() || s.unlinked {
            return;
        }
        let Ok(slot) = self.streams.clone().try_acquire_owned() else {
            return;
        };
        let (Ok(name), Ok(file)) = (super::object_name(&s.path), s.file.file().try_clone()) else {
            return;
        };
        let attrs = WriteAttributes {
            kind: EntryKind::File,
            mode: Some(s.mode),
            mtime_ns: None,
            supersedes: None,
            posix: s.posix,
        };
        s.stream = Some(Streaming::start(
            self.store.clone(),
            name,
            attrs,
            file,
            s.seq_end,
            slot,
            self.stream_stats.clone(),
        ));
    }

    /// Finishes the stream of a staged file as its next version: the tail is sent, the
    /// store's digest is checked against this side's, and the version made durable.
    async fn finish_stream(
        &self,
        stream: Streaming,
        path: &str,
        size: u64,
        meta: &FileMeta,
    ) -> FsResult<VersionRecord> {
        let streamed = stream.finish(size).await?;
        let attrs = WriteAttributes {
            kind: EntryKind::File,
            mode: Some(meta.mode),
            mtime_ns: Some(meta.mtime_ns),
            supersedes: None,
            posix: meta.posix,
        };
        let rec = self
            .store
            .finish_upload(&streamed.received.upload, streamed.hash, &attrs)
            .await?;
        self.saved(path, &rec);
        Ok(rec)
    }

    /// flush (every close) and fsync: upload if anything changed.
    pub async fn flush(&self, fh: u64) -> FsResult<()> {
        let h = self.handle(fh)?;
        let staged = match &*h.lock().await {
            Handle::Write { staged } => staged.clone(),
            _ => return Ok(()),
        };
        self.upload(&staged).await
    }

    pub async fn release(&self, fh: u64) -> FsResult<()> {
        self.forget_io(fh);
        let Some(h) = self.take_handle(fh) else {
            return Ok(());
        };
        let staged = match &*h.lock().await {
            Handle::Write { staged } => staged.clone(),
            _ => return Ok(()),
        };
        let last = {
            let mut s = lock(&staged);
            s.opens = s.opens.saturating_sub(1);
            s.opens == 0
        };
        if !last {
            return Ok(());
        }
        let result = self.settle(&staged).await;
        if lock(&staged).unlinked {
            lock(&self.orphans).retain(|_, s| !Arc::ptr_eq(s, &staged));
        }
        result
    }

    /// After the last close: uploads until nothing changed during the upload (a chmod or
    /// utimens may arrive while the last close uploads), then drops the staging file. If the
    /// file is opened again meanwhile, it is left to the new handle, whose close uploads it.
    pub(crate) async fn settle(&self, staged: &Arc<Mutex<Staged>>) -> FsResult<()> {
        loop {
            self.upload_if(staged, Upload::UnlessOpen).await?;
            let uploading = lock(staged).uploading.clone();
            let _guard = uploading.lock().await;
            // The map before the file, as everywhere both are held.
            let mut map = lock(&self.staged);
            let s = lock(staged);
            if s.opens > 0 {
                return Ok(());
            }
            if s.dirty && !s.unlinked {
                continue;
            }
            if s.journaled > 0 && !s.unlinked {
                // Stays visible here until the uploader has stored its closes.
                return Ok(());
            }
            if map.get(&s.path).is_some_and(|m| Arc::ptr_eq(m, staged)) {
                map.remove(&s.path);
            }
            return Ok(());
        }
    }

    /// Moves staged files at `from` (or under `from/`) to `to`, for a rename while open.
    pub(crate) fn restage(&self, from: &str, to: &str) {
        let mut map = lock(&self.staged);
        let prefix = format!("{from}/");
        let moved: Vec<String> = map
            .keys()
            .filter(|k| *k == from || k.starts_with(&prefix))
            .cloned()
            .collect();
        for old in moved {
            if let Some(s) = map.remove(&old) {
                let new = format!("{to}{}", &old[from.len()..]);
                lock(&s).path = new.clone();
                map.insert(new, s);
            }
        }
    }

    /// Uploads a staged file if dirty; returns once the version is durable.
    pub(crate) async fn upload(&self, staged: &Arc<Mutex<Staged>>) -> FsResult<()> {
        self.upload_if(staged, Upload::Always).await
    }

    async fn upload_if(&self, staged: &Arc<Mutex<Staged>>, when: Upload) -> FsResult<()> {
        if !lock(staged).dirty {
            return Ok(());
        }
        let counted = crate::metrics::Uploading::start();
        counted.finish(self.upload_dirty(staged, when).await)
    }

    async fn upload_dirty(&self, staged: &Arc<Mutex<Staged>>, when: Upload) -> FsResult<()> {
        let uploading = lock(staged).uploading.clone();
        let _in_flight = uploading.lock().await;
        let (path, file, meta, generation, stream) = {
            let mut s = lock(staged);
            if !s.dirty || s.unlinked || (when == Upload::UnlessOpen && s.opens > 0) {
                return Ok(());
            }
            // A stream carries this state only if every byte came in order and the name
            // is still the one it was opened for.
            let stream = s
                .stream
                .take()
                .filter(|st| s.sequential && st.path == s.path);
            (
                s.path.clone(),
                s.file.file().try_clone()?,
                FileMeta {
                    mode: s.mode,
                    mtime_ns: s.mtime_ns.unwrap_or(s.ctime_ns),
                    posix: s.posix,
                },
                s.generation,
                stream.map(|st| (st, s.seq_end)),
            )
        };
        let path = path.as_str();
        if let Some(journal) = &self.journal {
            // Write-back: durable here now, in the store later. Past a bound of files
            // waiting, a close waits for the uploads (each waiting file holds its staging
            // file open and its bytes twice on the local disk).
            while journal.len() >= WRITEBACK_MAX_PENDING {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            let (j, p) = (journal.clone(), path.to_string());
            let mtime = meta.mtime_ns;
            let size = file.metadata()?.len();
            tokio::task::spawn_blocking(move || {
                j.add(&file, &p, meta.mode, mtime, meta.posix, size)
            })
            .await
            .map_err(|e| FsError::Local(std::io::Error::other(e)))??;
            {
                let mut s = lock(staged);
                s.journaled += 1;
                if s.generation == generation {
                    s.dirty = false;
                    s.mtime_ns = Some(mtime);
                }
            }
            self.journal_changed.notify_one();
            return Ok(());
        }
        let size = file.metadata()?.len();
        let streamed = match stream {
            Some((st, end)) if end == size => {
                match self.finish_stream(st, path, size, &meta).await {
                    Ok(rec) => Some(rec),
                    Err(e) => {
                        // The staging file has every byte: it goes whole instead.
                        tracing::debug!(path, error = %e, "streamed upload failed; uploading whole");
                        None
                    }
                }
            }
            _ => None,
        };
        let rec = match streamed {
            Some(rec) => rec,
            None => self.store_file(path, file, 0, size, &meta).await?,
        };
        {
            let mut s = lock(staged);
            if s.generation == generation {
                s.dirty = false;
                s.mtime_ns = Some(rec.mtime_ns);
                s.ctime_ns = rec.ctime_ns;
            }
        }
        self.remember(path, Entry::Object(rec.clone()));
        self.propagate(&rec).await
    }

    /// Stores the bytes of `file` as the next version of `path`: up to [`SMALL_FILE`] in one
    /// PUT, else POST (known content sends nothing) and a streamed upload. Returns once the
    /// version is durable.
    async fn store_file(
        &self,
        path: &str,
        file: File,
        offset: u64,
        size: u64,
        meta: &FileMeta,
    ) -> FsResult<VersionRecord> {
        let name = super::object_name(path)?;
        let attrs = WriteAttributes {
            kind: EntryKind::File,
            mode: Some(meta.mode),
            mtime_ns: Some(meta.mtime_ns),
            posix: meta.posix,
            // A save right after one of ours (the attributes `tar` sets after a close, a
            // second close of the same bytes) replaces it: one version per save.
            supersedes: self.fold_into(path),
        };
        let rec = if size <= SMALL_FILE {
            // One request: the store answers known content without storing it again.
            let content = tokio::task::spawn_blocking(move || read_whole(&file, offset, size))
                .await
                .map_err(|e| FsError::Local(std::io::Error::other(e)))??;
            self.store.put(&name, &attrs, content).await?
        } else {
            let hash_src = file.try_clone()?;
            let hash = tokio::task::spawn_blocking(move || hash_range(&hash_src, offset, size))
                .await
                .map_err(|e| FsError::Local(std::io::Error::other(e)))??;
            match self.store.post(&name, hash, size, &attrs).await? {
                PostOutcome::Stored(rec) => rec,
                PostOutcome::Upload(upload) => {
                    self.send_bytes(&name, hash, &upload, file, offset, size)
                        .await?
                }
            }
        };
        self.saved(path, &rec);
        Ok(rec)
    }

    /// Uploads one write-back record (unless it is being uploaded already, or was cancelled),
    /// then removes it from the journal. With `replay` (records found at start, or retried
    /// after a failure), a record whose bytes and attributes are already the latest version
    /// is not stored again.
    async fn upload_record(&self, rec: &Record, replay: bool) -> FsResult<()> {
        let counted = crate::metrics::Uploading::start();
        counted.finish(self.upload_journaled(rec, replay).await)
    }

    async fn upload_journaled(&self, rec: &Record, replay: bool) -> FsResult<()> {
        let Some(journal) = self.journal.clone() else {
            return Ok(());
        };
        if !lock(&self.uploads).in_flight.insert(rec.seq) {
            return Ok(());
        }
        let result = async {
            // Serialised with unlink and rename of the same file.
            let staged = self.staged_of(&rec.path);
            let uploading = staged.as_ref().map(|s| lock(s).uploading.clone());
            let _guard = match &uploading {
                Some(u) => Some(u.lock().await),
                None => None,
            };
            if !journal.contains(rec.seq) {
                return Ok(());
            }
            let (file, offset, size) = journal.data(rec.seq)?;
            let mut stored = None;
            if replay {
                let src = file.try_clone()?;
                let hash = tokio::task::spawn_blocking(move || hash_range(&src, offset, size))
                    .await
                    .map_err(|e| FsError::Local(std::io::Error::other(e)))??;
                if let Ok(latest) = self.store.head(&super::object_name(&rec.path)?, None).await
                    && latest.hash == Some(hash)
                    && latest.mode == rec.mode
                    && latest.mtime_ns == rec.mtime_ns
                    && latest.posix == rec.posix
                {
                    stored = Some(latest);
                }
            }
            let v = match stored {
                Some(v) => v,
                None => {
                    let meta = FileMeta {
                        mode: rec.mode,
                        mtime_ns: rec.mtime_ns,
                        posix: rec.posix,
                    };
                    let v = self
                        .store_file(&rec.path, file, offset, size, &meta)
                        .await?;
                    self.propagate(&v).await?;
                    v
                }
            };
            let (j, seq) = (journal.clone(), rec.seq);
            tokio::task::spawn_blocking(move || j.remove(seq))
                .await
                .map_err(|e| FsError::Local(std::io::Error::other(e)))??;
            if let Some(s) = &staged {
                let mut map = lock(&self.staged);
                let mut st = lock(s);
                st.journaled = st.journaled.saturating_sub(1);
                if st.journaled == 0
                    && st.opens == 0
                    && !st.dirty
                    && map.get(&st.path).is_some_and(|m| Arc::ptr_eq(m, s))
                {
                    map.remove(&st.path);
                }
            }
            self.remember(&rec.path, Entry::Object(v));
            Ok(())
        }
        .await;
        lock(&self.uploads).in_flight.remove(&rec.seq);
        result
    }

    /// One pass of the write-back uploader: every waiting record whose file is not backing
    /// off, a few files at once, each file's records in order. Returns how many failed.
    pub async fn upload_pending(&self) -> usize {
        self.upload_pass(false, false).await
    }

    async fn upload_pass(&self, replay: bool, ignore_backoff: bool) -> usize {
        let Some(journal) = &self.journal else {
            return 0;
        };
        let mut by_path: Vec<(String, Vec<Record>)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        {
            let now = std::time::Instant::now();
            let uploads = lock(&self.uploads);
            for rec in journal.pending() {
                if !ignore_backoff
                    && uploads
                        .retry
                        .get(&rec.path)
                        .is_some_and(|(at, _)| *at > now)
                {
                    continue;
                }
                match index.get(&rec.path) {
                    Some(&i) => by_path[i].1.push(rec),
                    None => {
                        index.insert(rec.path.clone(), by_path.len());
                        by_path.push((rec.path.clone(), vec![rec]));
                    }
                }
            }
        }
        let failed = std::sync::atomic::AtomicUsize::new(0);
        futures::StreamExt::for_each_concurrent(
            futures::stream::iter(by_path),
            UPLOADS_AT_ONCE,
            |(path, recs)| {
                let failed = &failed;
                async move {
                    // After a failed attempt the version may have been stored all the same
                    // (the answer was lost): look before storing it again.
                    let check = replay || lock(&self.uploads).retry.contains_key(&path);
                    for rec in &recs {
                        if let Err(e) = self.upload_record(rec, check).await {
                            let mut uploads = lock(&self.uploads);
                            let wait = uploads
                                .retry
                                .get(&path)
                                .map_or(RETRY_FIRST, |(_, d)| (*d * 2).min(RETRY_MAX));
                            tracing::warn!(path, error = %e, retry_in = ?wait, "write-back upload failed; will retry");
                            uploads
                                .retry
                                .insert(path.clone(), (std::time::Instant::now() + wait, wait));
                            failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            return;
                        }
                    }
                    lock(&self.uploads).retry.remove(&path);
                }
            },
        )
        .await;
        failed.into_inner()
    }

    /// Uploads everything the journal holds, retrying with back-off until it is empty (the
    /// start of a mount, unmount, SIGTERM).
    pub async fn drain_journal(&self) {
        let Some(journal) = self.journal.clone() else {
            return;
        };
        let mut wait = RETRY_FIRST;
        while !journal.is_empty() {
            // Every pass looks first: what the journal holds from before may be stored.
            let failed = self.upload_pass(true, true).await;
            if failed > 0 {
                tracing::warn!(pending = journal.len(), retry_in = ?wait, "write-back uploads waiting for the store");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
            } else if !journal.is_empty() {
                // Records in flight elsewhere (the uploader): let them finish.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }

    /// Uploads what the journal holds for `path` and below, now; fails if the store does.
    pub(crate) async fn flush_pending(&self, path: &str) -> FsResult<()> {
        let Some(journal) = self.journal.clone() else {
            return Ok(());
        };
        loop {
            let recs = journal.pending_for(path, true);
            if recs.is_empty() {
                return Ok(());
            }
            for rec in &recs {
                self.upload_record(rec, false).await?;
            }
            if journal.pending_for(path, true).len() == recs.len() {
                // The same records, in flight elsewhere: wait for them.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    }

    /// Drops the journal records of `path` (it is being deleted); the caller holds its
    /// upload lock.
    pub(crate) async fn cancel_journaled(
        &self,
        path: &str,
        staged: &Arc<Mutex<Staged>>,
    ) -> FsResult<()> {
        let Some(journal) = self.journal.clone() else {
            return Ok(());
        };
        for rec in journal.pending_for(path, false) {
            let (j, seq) = (journal.clone(), rec.seq);
            tokio::task::spawn_blocking(move || j.remove(seq))
                .await
                .map_err(|e| FsError::Local(std::io::Error::other(e)))??;
        }
        lock(staged).journaled = 0;
        Ok(())
    }

    /// Sends `size` bytes of `file` from `offset` to `upload`. When the connection is lost
    /// (an API server gone), it asks which bytes the upload holds (another API server
    /// answers: the upload's token is good on any of them) and sends the rest, up to
    /// [`UPLOAD_RESUMES`] times; an upload that ended just before the loss is found by the
    /// version it made.
    async fn send_bytes(
        &self,
        name: &dos_protocol::ObjectName,
        hash: ContentHash,
        upload: &UploadId,
        file: File,
        offset: u64,
        size: u64,
    ) -> FsResult<VersionRecord> {
        let mut from = 0;
        let mut resumes = 0;
        loop {
            let mut part = tokio::fs::File::from_std(file.try_clone()?);
            tokio::io::AsyncSeekExt::seek(&mut part, SeekFrom::Start(offset + from)).await?;
            let body = tokio_util::io::ReaderStream::with_capacity(
                tokio::io::AsyncReadExt::take(part, size - from),
                1 << 20,
            );
            let lost = match self
                .store
                .upload(upload, from, size - from, Box::pin(body))
                .await
            {
                Ok(UploadProgress::Done(rec)) => return Ok(rec),
                // The file shrank while it was sent (a writer truncated it): the next close
                // uploads it again.
                Ok(UploadProgress::Partial { accepted }) => {
                    return Err(FsError::Store(StoreError::Changed(format!(
                        "the staged file changed during its upload ({accepted} of {size} bytes taken)"
                    ))));
                }
                Err(e @ StoreError::Transport(_)) if resumes < UPLOAD_RESUMES => e,
                Err(e) => return Err(e.into()),
            };
            resumes += 1;
            match self.store.upload_status(upload).await {
                Ok(accepted) if accepted <= size => {
                    tracing::info!(%name, accepted, size, error = %lost, "upload lost its connection; resuming");
                    from = accepted;
                }
                Ok(_) => return Err(lost.into()),
                Err(_) => {
                    return match self.store.head(name, None).await {
                        Ok(v) if v.hash == Some(hash) && v.size == size => Ok(v),
                        _ => Err(lost.into()),
                    };
                }
            }
        }
    }
}
