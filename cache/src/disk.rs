//! The disk tier: one checksummed file per block under `blocks/`, indexed by a byte-budgeted LRU.
//!
//! Locking: the index mutex is never held while a block is written or read, only around index
//! changes and the cheap metadata operations that must agree with them (rename into place,
//! unlink of evicted files). So while the lock is held, "in the index" implies "the file was
//! renamed into place and not yet evicted", and a reader that finds the file gone can tell a
//! stale entry (file deleted behind our back) from a block still being written.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use bytes::Bytes;
use tracing::{debug, info, warn};

use crate::block_file::{self, BlockId, ReadError};
use crate::object_file::{self, ObjectFile};
use crate::{BlockBytes, CacheError, ContentKey};

/// Block index standing for a whole object file in the index (no object has 2^64 - 1 blocks).
const OBJECT: u64 = u64::MAX;

fn object_id(key: &ContentKey) -> BlockId {
    BlockId {
        key: *key,
        block: OBJECT,
    }
}

pub(crate) struct DiskTier {
    /// `<cache dir>/blocks`.
    root: PathBuf,
    block_size: u64,
    min_free_bytes: u64,
    index: Mutex<DiskIndex>,
    /// `<cache dir>/objects`: whole objects (see `object_file`).
    objects_dir: PathBuf,
    /// Object files, complete or filling, by key. Each is in the index as one entry (block
    /// [`OBJECT`]) sized for the whole object. Lock order: `index`, then `objects`.
    objects: Mutex<HashMap<ContentKey, Arc<ObjectFile>>>,
    evictions: AtomicU64,
    corruptions: AtomicU64,
    /// Whether the last free-space check found the filesystem below the floor (to log changes
    /// once instead of on every put).
    low_on_space: AtomicBool,
}

type DiskIndex = crate::lru_index::SizedLru<BlockId, ()>;

/// What [`DiskTier::put_in_object`] did with a block.
pub(crate) enum ObjectPut {
    /// Written to the object's content file.
    Written,
    /// Not an object kept as one file (one block, or too large for the budget): keep the
    /// block as a block file.
    Declined,
    /// Could not be written (logged): keep it in memory only.
    Failed,
}

impl DiskTier {
    /// Opens the tier rooted at `root`, indexing the block files a previous run left there (see
    /// [`scan`]) and enforcing the budget and the free-space floor.
    pub(crate) fn open(
        root: PathBuf,
        objects_dir: PathBuf,
        block_size: u64,
        budget: u64,
        min_free_bytes: u64,
    ) -> Result<Self, CacheError> {
        for dir in [&root, &objects_dir] {
            fs::create_dir_all(dir).map_err(|source| CacheError::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let mut found = scan(&root, block_size)?;
        let mut objects = HashMap::new();
        for (object, modified) in scan_objects(&objects_dir, block_size)? {
            found.push(Found {
                id: object_id(&object.key),
                size: object.footprint(),
                modified,
            });
            objects.insert(object.key, Arc::new(object));
        }
        found.sort_by_key(|block| block.modified);
        let tier = Self {
            root,
            block_size,
            min_free_bytes,
            index: Mutex::new(DiskIndex::new(budget)),
            objects_dir,
            objects: Mutex::new(objects),
            evictions: AtomicU64::new(0),
            corruptions: AtomicU64::new(0),
            low_on_space: AtomicBool::new(false),
        };
        {
            let mut index = tier.lock();
            for block in found {
                // Oldest first, so the budget evicts the least recently used.
                let evicted = index.insert(block.id, (), block.size);
                tier.remove_evicted(evicted);
            }
        }
        tier.check_free_space();
        let (bytes, blocks) = tier.usage();
        info!(root = %tier.root.display(), blocks, bytes, "opened disk block cache");
        Ok(tier)
    }

    /// Reads a block if it is indexed. A file that fails validation is deleted, counted as a
    /// corruption and reported as a miss.
    pub(crate) fn get(&self, id: &BlockId) -> Option<Bytes> {
        if let Some(object) = self.object(&id.key).filter(|o| o.has(id.block)) {
            self.lock().promote(&object_id(&id.key));
            return match object.read_block(id.block) {
                Ok(data) => Some(data),
                Err(err) => {
                    self.drop_object(&object, &err);
                    None
                }
            };
        }
        if !self.lock().promote(id) {
            return None;
        }
        let path = self.path(id);
        match block_file::read(&path, id, self.block_size) {
            Ok(data) => Some(data),
            Err(ReadError::Missing) => {
                let mut index = self.lock();
                // Evicted since we looked, or deleted behind our back: forget it in the latter
                // case (a concurrent put may have re-created it meanwhile).
                if !path.exists() && index.remove(id).is_some() {
                    warn!(path = %path.display(), "cached block file disappeared");
                }
                None
            }
            Err(ReadError::Corrupt(why)) => {
                warn!(path = %path.display(), %why, "removing corrupt cached block");
                self.corruptions.fetch_add(1, Ordering::Relaxed);
                let mut index = self.lock();
                index.remove(id);
                remove_file(&path);
                None
            }
            Err(ReadError::Io(err)) => {
                warn!(path = %path.display(), error = %err, "failed to read cached block");
                None
            }
        }
    }

    /// Marks a block recently used (it was served from memory).
    pub(crate) fn promote(&self, id: &BlockId) {
        let mut index = self.lock();
        if !index.promote(id) {
            index.promote(&object_id(&id.key));
        }
    }

    fn object(&self, key: &ContentKey) -> Option<Arc<ObjectFile>> {
        self.lock_objects().get(key).cloned()
    }

    fn lock_objects(&self) -> MutexGuard<'_, HashMap<ContentKey, Arc<ObjectFile>>> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Forgets an object file that failed a read or a check, and deletes it.
    fn drop_object(&self, object: &Arc<ObjectFile>, err: &ReadError) {
        let path = object.obj_path();
        match err {
            ReadError::Corrupt(why) => {
                warn!(path = %path.display(), %why, "removing corrupt cached object");
                self.corruptions.fetch_add(1, Ordering::Relaxed);
            }
            ReadError::Missing => warn!(path = %path.display(), "cached object file disappeared"),
            ReadError::Io(err) => {
                warn!(path = %path.display(), error = %err, "failed to read cached object");
                return;
            }
        }
        let mut index = self.lock();
        let mut objects = self.lock_objects();
        if objects
            .get(&object.key)
            .is_some_and(|o| Arc::ptr_eq(o, object))
        {
            objects.remove(&object.key);
            index.remove(&object_id(&object.key));
            remove_file(&object.sum_path());
            remove_file(&path);
        }
    }

    /// Stores block `id` of an object of `size` bytes in the object's single content file
    /// (created on its first block), so that once every block is there the object can be read
    /// as one file. Objects of one block, or too large for a quarter of the budget, are left
    /// to the caller to keep as block files ([`Self::put`]). Never fails, like `put`: trouble
    /// is logged and reported as [`ObjectPut::Failed`].
    pub(crate) fn put_in_object(&self, id: BlockId, size: u64, data: &BlockBytes) -> ObjectPut {
        let footprint = object_file::footprint(size, self.block_size);
        let blocks = size.div_ceil(self.block_size);
        let large_enough = blocks >= 2 && id.block < blocks;
        let small_enough = {
            let index = self.lock();
            index.fits(footprint.saturating_mul(4))
        };
        if !large_enough || !small_enough {
            return ObjectPut::Declined;
        }
        let object = match self.object(&id.key) {
            Some(object) if object.size == size => object,
            Some(_) => return ObjectPut::Declined,
            None => {
                if !self.check_free_space() {
                    return ObjectPut::Failed;
                }
                let created = {
                    let mut objects = self.lock_objects();
                    if let Some(object) = objects.get(&id.key) {
                        Ok((object.clone(), false))
                    } else {
                        ObjectFile::create(&self.objects_dir, &id.key, size, self.block_size).map(
                            |object| {
                                let object = Arc::new(object);
                                objects.insert(id.key, object.clone());
                                (object, true)
                            },
                        )
                    }
                };
                match created {
                    Ok((object, true)) => {
                        let mut index = self.lock();
                        let evicted = index.insert(object_id(&id.key), (), footprint);
                        self.remove_evicted(evicted);
                        object
                    }
                    Ok((object, false)) => object,
                    Err(err) => {
                        warn!(
                            dir = %self.objects_dir.display(),
                            error = %err,
                            "failed to create cached object, keeping blocks in memory only"
                        );
                        return ObjectPut::Failed;
                    }
                }
            }
        };
        match object.write_block(id.block, data) {
            Ok(complete) => {
                if complete {
                    self.complete(&object);
                }
                ObjectPut::Written
            }
            Err(err) => {
                warn!(
                    path = %object.obj_path().display(),
                    error = %err,
                    "failed to write cached block, keeping it in memory only"
                );
                ObjectPut::Failed
            }
        }
    }

    /// Writes the checksum file of an object that just got its last block.
    fn complete(&self, object: &Arc<ObjectFile>) {
        let temp = match object.write_sum() {
            Ok(temp) => temp,
            Err(err) => {
                warn!(dir = %self.objects_dir.display(), error = %err, "failed to write object checksums");
                return;
            }
        };
        let _index = self.lock();
        let objects = self.lock_objects();
        // Evicted meanwhile: its content file is gone, so no checksum file either.
        if !objects
            .get(&object.key)
            .is_some_and(|o| Arc::ptr_eq(o, object))
        {
            return;
        }
        if let Err(err) = temp.persist(object.sum_path()) {
            warn!(error = %err.error, "failed to store object checksums");
        }
    }

    /// The complete content file of object `key` (`size` bytes), opened read-only after every
    /// block was checked, or `None` if the object is not cached as one file (or failed the
    /// check, which deletes it). Counts as a use.
    pub(crate) fn object_file(&self, key: &ContentKey, size: u64) -> Option<fs::File> {
        let object = self
            .object(key)
            .filter(|o| o.size == size && o.is_complete())?;
        self.lock().promote(&object_id(key));
        match object.open_verified() {
            Ok(file) => {
                if let Err(err) = fs::File::open(object.sum_path())
                    .and_then(|sum| sum.set_modified(SystemTime::now()))
                {
                    debug!(error = %err, "could not update object checksum file mtime");
                }
                Some(file)
            }
            Err(err) => {
                self.drop_object(&object, &err);
                None
            }
        }
    }

    /// Stores a block, evicting least recently used ones to stay within the budget. Never
    /// fails: when the block cannot be written it just stays memory-only.
    pub(crate) fn put(&self, id: BlockId, data: &[u8]) {
        let size = block_file::file_len(data.len());
        {
            let mut index = self.lock();
            // Content is immutable: a block already on disk is already right.
            if !index.fits(size) || index.promote(&id) {
                return;
            }
        }
        if !self.check_free_space() {
            return;
        }
        let shard = self.root.join(id.shard());
        let temp = match fs::create_dir_all(&shard)
            .and_then(|()| block_file::write_temp(&shard, &id, self.block_size, data))
        {
            Ok(temp) => temp,
            Err(err) => {
                warn!(
                    dir = %shard.display(),
                    error = %err,
                    "failed to write cached block, keeping it in memory only"
                );
                return;
            }
        };
        let path = self.path(&id);
        let mut index = self.lock();
        if let Err(err) = temp.persist(&path) {
            warn!(
                path = %path.display(),
                error = %err.error,
                "failed to store cached block, keeping it in memory only"
            );
            return;
        }
        let evicted = index.insert(id, (), size);
        self.remove_evicted(evicted);
    }

    /// Whether every block of an object of `size` bytes is on disk.
    /// Whether block `id` is on disk (as a block file or in its object's file), without
    /// reading or checking it and without touching the LRU order.
    pub(crate) fn contains(&self, id: &BlockId) -> bool {
        self.object(&id.key).is_some_and(|o| o.has(id.block)) || self.lock().peek_size(id).is_some()
    }

    pub(crate) fn contains_all(&self, key: &ContentKey, size: u64) -> bool {
        if self
            .object(key)
            .is_some_and(|o| o.size == size && o.is_complete())
        {
            return true;
        }
        let index = self.lock();
        (0..size.div_ceil(self.block_size)).all(|block| {
            let payload = (size - block * self.block_size).min(self.block_size);
            let expected = block_file::HEADER_LEN as u64 + payload;
            index.peek_size(&BlockId { key: *key, block }) == Some(expected)
        })
    }

    /// (bytes, blocks) held, headers included.
    pub(crate) fn usage(&self) -> (u64, u64) {
        let index = self.lock();
        (index.used(), index.len() as u64)
    }

    pub(crate) fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    pub(crate) fn corruptions(&self) -> u64 {
        self.corruptions.load(Ordering::Relaxed)
    }

    fn path(&self, id: &BlockId) -> PathBuf {
        self.root.join(id.relative_path())
    }

    fn lock(&self) -> MutexGuard<'_, DiskIndex> {
        // The index is consistent after every method of `SizedLru`; at worst a panic between
        // an index change and the matching file operation leaves an entry whose file is gone,
        // which `get` repairs.
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Deletes the files of evicted blocks. Call with the index lock held.
    fn remove_evicted(&self, evicted: Vec<(BlockId, ())>) {
        if evicted.is_empty() {
            return;
        }
        debug!(blocks = evicted.len(), "evicting cached blocks from disk");
        self.evictions
            .fetch_add(evicted.len() as u64, Ordering::Relaxed);
        for (id, ()) in evicted {
            if id.block == OBJECT {
                if let Some(object) = self.lock_objects().remove(&id.key) {
                    remove_file(&object.sum_path());
                    remove_file(&object.obj_path());
                }
            } else {
                remove_file(&self.path(&id));
            }
        }
    }

    /// Returns whether the filesystem has at least `min_free_bytes` available. When it has not,
    /// evicts least recently used blocks worth the shortfall (the cache yields space to
    /// everything else on the filesystem) and returns false.
    fn check_free_space(&self) -> bool {
        if self.min_free_bytes == 0 {
            return true;
        }
        let available = match available_space(&self.root) {
            Ok(available) => available,
            Err(err) => {
                warn!(
                    dir = %self.root.display(),
                    error = %err,
                    "cannot read free space of the cache filesystem"
                );
                return true;
            }
        };
        let low = available < self.min_free_bytes;
        if self.low_on_space.swap(low, Ordering::Relaxed) != low {
            if low {
                warn!(
                    available,
                    floor = self.min_free_bytes,
                    "cache filesystem is low on space, caching in memory only"
                );
            } else {
                info!(
                    available,
                    "cache filesystem has space again, caching on disk"
                );
            }
        }
        if low {
            let shortfall = self.min_free_bytes - available;
            let mut index = self.lock();
            let target = index.used().saturating_sub(shortfall);
            let evicted = index.evict_to(target);
            self.remove_evicted(evicted);
        }
        !low
    }
}

fn available_space(path: &Path) -> io::Result<u64> {
    let stat = rustix::fs::statvfs(path)?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

fn remove_file(path: &Path) {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => warn!(path = %path.display(), error = %err, "failed to remove cache file"),
    }
}

/// A valid block file found by [`scan`].
struct Found {
    id: BlockId,
    size: u64,
    modified: SystemTime,
}

/// Lists the valid block files under `root`, least recently used (oldest mtime) first.
///
/// Anything else is logged and cleaned up, never an error: temporary files of interrupted
/// writes, files with an unexpected name or a header that does not match their name (e.g. a
/// different block size) are deleted; unexpected directories are left alone. Only failing to
/// list `root` itself is an error. Payload checksums are verified on read, not here, so opening
/// costs one small read per block.
fn scan(root: &Path, block_size: u64) -> Result<Vec<Found>, CacheError> {
    let entries = fs::read_dir(root).map_err(|source| CacheError::Io {
        path: root.to_path_buf(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                warn!(dir = %root.display(), error = %err, "failed to list cache directory");
                continue;
            }
        };
        let path = entry.path();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        match entry.file_name().to_str() {
            Some(shard) if is_dir && is_shard_name(shard) => {
                scan_shard(&path, shard, block_size, &mut found);
            }
            _ if is_dir => {
                warn!(dir = %path.display(), "ignoring unexpected directory in the block cache")
            }
            _ => remove_stray(&path, "not in a block directory"),
        }
    }
    found.sort_by_key(|block| block.modified);
    Ok(found)
}

fn scan_shard(dir: &Path, shard: &str, block_size: u64, found: &mut Vec<Found>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) => {
            warn!(dir = %dir.display(), error = %err, "failed to list cache directory");
            return;
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                warn!(dir = %dir.display(), error = %err, "failed to list cache directory");
                continue;
            }
        };
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            warn!(dir = %path.display(), "ignoring unexpected directory in the block cache");
            continue;
        }
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|name| BlockId::from_file_name(shard, name))
        else {
            remove_stray(&path, "not a block file name");
            continue;
        };
        match block_file::check_header(&path, &id, block_size) {
            Ok(metadata) => found.push(Found {
                id,
                size: metadata.len(),
                modified: metadata.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            }),
            Err(ReadError::Missing) => {}
            Err(ReadError::Corrupt(why)) => {
                warn!(path = %path.display(), %why, "removing invalid cached block");
                remove_file(&path);
            }
            Err(ReadError::Io(err)) => {
                warn!(path = %path.display(), error = %err, "skipping unreadable cached block");
            }
        }
    }
}

/// Complete objects under `dir` (a `.sum` that checks out and its `.obj`), with the checksum
/// file's mtime; everything else there is debris and removed.
fn scan_objects(dir: &Path, block_size: u64) -> Result<Vec<(ObjectFile, SystemTime)>, CacheError> {
    let entries = fs::read_dir(dir).map_err(|source| CacheError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) => names.push(entry.path()),
            Err(err) => warn!(dir = %dir.display(), error = %err, "failed to list cache directory"),
        }
    }
    let mut found = Vec::new();
    let mut keep = std::collections::HashSet::new();
    for path in &names {
        let Some((key, "sum")) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(object_file::parse_name)
        else {
            continue;
        };
        match ObjectFile::open_complete(dir, &key, block_size) {
            Ok((object, meta)) => {
                keep.insert(object.sum_path());
                keep.insert(object.obj_path());
                found.push((object, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH)));
            }
            Err(ReadError::Io(err)) => {
                warn!(path = %path.display(), error = %err, "skipping unreadable cached object");
            }
            Err(err) => warn!(path = %path.display(), %err, "removing invalid cached object"),
        }
    }
    for path in names {
        if !keep.contains(&path) {
            if path.is_dir() {
                warn!(dir = %path.display(), "ignoring unexpected directory in the object cache");
            } else {
                remove_stray(&path, "not part of a complete cached object");
            }
        }
    }
    Ok(found)
}

fn is_shard_name(name: &str) -> bool {
    name.len() == 2
        && name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn remove_stray(path: &Path, why: &str) {
    info!(path = %path.display(), why, "removing stray file from the block cache");
    remove_file(path);
}
