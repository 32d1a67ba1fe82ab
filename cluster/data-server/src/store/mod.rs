//! Shard storage on one data server's disk, with no HTTP in it.
//!
//! ```text
//! STORAGE_ROOT/server-id          this server's stable identity
//! STORAGE_ROOT/objects/ab/<hex hash>.<shard>   committed shards (see `format`)
//! STORAGE_ROOT/packs/<seq>.pack, <seq>.dead     shards of at most one piece (see `pack`)
//! STORAGE_ROOT/temp/<id>.json, <id>.part       uploads in progress
//! STORAGE_ROOT/quarantine/…       shards that failed verification (never deleted)
//! STORAGE_ROOT/garbage/…          shards removed by the orphan collector
//! ```
//!
//! All methods block (file I/O, compression, checksums): async callers run them on a blocking
//! thread.

pub mod format;
pub mod pack;
mod temp;

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use dos_protocol::{ContentHash, PIECE_SIZE, TOTAL_SHARDS};
use format::{FormatError, ShardIndex};

pub use dos_protocol::shard::{ShardEntry, TempStatus};

#[derive(Debug, thiserror::Error)]
pub enum ShardStoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("offset {offset} does not follow the {length} bytes already received")]
    OffsetMismatch { offset: u64, length: u64 },
    #[error("shard failed verification and was quarantined: {0}")]
    Corrupt(String),
    /// A conditional removal found the shard newer than allowed.
    #[error("{0}")]
    TooNew(String),
    /// Too much in progress here now; retry later.
    #[error("{0}")]
    Busy(String),
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
}

impl From<FormatError> for ShardStoreError {
    fn from(e: FormatError) -> Self {
        match e {
            FormatError::Io(e) => ShardStoreError::Io(e),
            FormatError::Corrupt(m) => ShardStoreError::Corrupt(m),
        }
    }
}

pub struct ShardStore {
    root: PathBuf,
    /// Which shard indices of each hash this server holds: what locate answers.
    index: RwLock<HashMap<ContentHash, Vec<u8>>>,
    temps: Mutex<HashMap<String, std::sync::Arc<Mutex<temp::TempUpload>>>>,
    packs: pack::Packs,
    /// Whether [`put_whole`](Self::put_whole) packs (else it writes a shard file).
    pack_small: bool,
    /// Being drained: its heartbeats ask every API server for no new shards. Kept in memory
    /// only: a restart puts the server back in service.
    draining: std::sync::atomic::AtomicBool,
    /// Woken when `draining` changes, so that a heartbeat says so at once.
    draining_changed: tokio::sync::Notify,
    /// What the server counts (set once it knows its id).
    counters: std::sync::OnceLock<crate::metrics::ShardCounters>,
}

fn is_valid_shard(shard: u8) -> bool {
    usize::from(shard) < TOTAL_SHARDS
}

/// fsyncs a directory so that a rename inside it is durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl ShardStore {
    /// Whether this server is being drained (its heartbeats say so).
    pub fn is_draining(&self) -> bool {
        self.draining.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_draining(&self, draining: bool) {
        self.draining
            .store(draining, std::sync::atomic::Ordering::Relaxed);
        self.draining_changed.notify_one();
    }

    /// Returns when [`set_draining`](Self::set_draining) is next called (or was, since the
    /// last return).
    pub async fn draining_changed(&self) {
        self.draining_changed.notified().await;
    }

    /// Opens (creating if needed) the storage folder and rebuilds the locate index from the
    /// committed shards. Stray files are logged and left alone.
    pub fn open(root: &Path) -> Result<Self, ShardStoreError> {
        Self::open_with(root, true)
    }

    /// [`open`](Self::open), choosing whether whole small shards are packed. Packed shards
    /// written before are served either way.
    pub fn open_with(root: &Path, pack_small: bool) -> Result<Self, ShardStoreError> {
        for d in ["objects", "temp", "quarantine", "garbage"] {
            fs::create_dir_all(root.join(d))?;
        }
        let store = Self {
            root: root.to_path_buf(),
            index: RwLock::default(),
            temps: Mutex::default(),
            packs: pack::Packs::open(&root.join("packs"))?,
            pack_small,
            draining: Default::default(),
            draining_changed: tokio::sync::Notify::new(),
            counters: std::sync::OnceLock::new(),
        };
        store.scan()?;
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Counts this store's shard work as server `id`'s (the first call wins).
    pub fn count_as(&self, id: &str) {
        let _ = self.counters.set(crate::metrics::ShardCounters::new(id));
    }

    pub(crate) fn count(
        &self,
        which: impl FnOnce(&crate::metrics::ShardCounters) -> &metrics::Counter,
    ) {
        if let Some(c) = self.counters.get() {
            which(c).increment(1);
        }
    }

    /// How many shards this server holds.
    pub fn shard_count(&self) -> usize {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .map(Vec::len)
            .sum()
    }

    fn scan(&self) -> io::Result<()> {
        let mut index = HashMap::<ContentHash, Vec<u8>>::new();
        let mut strays = 0usize;
        for fan in fs::read_dir(self.root.join("objects"))? {
            let fan = fan?.path();
            if !fan.is_dir() {
                tracing::warn!(path = %fan.display(), "stray file in objects/, ignored");
                strays += 1;
                continue;
            }
            for f in fs::read_dir(&fan)? {
                let path = f?.path();
                match parse_shard_file_name(&path) {
                    Some((hash, shard)) => index.entry(hash).or_default().push(shard),
                    None => {
                        tracing::warn!(path = %path.display(), "stray file in objects/, ignored");
                        strays += 1;
                    }
                }
            }
        }
        for (hash, shard) in self.packs.keys() {
            let e = index.entry(hash).or_default();
            if !e.contains(&shard) {
                e.push(shard);
            }
        }
        for e in index.values_mut() {
            e.sort_unstable();
        }
        let shards: usize = index.values().map(Vec::len).sum();
        tracing::info!(root = %self.root.display(), shards, strays, "shard index rebuilt");
        *self.index.write().unwrap_or_else(PoisonError::into_inner) = index;
        Ok(())
    }

    fn shard_path(&self, hash: &ContentHash, shard: u8) -> PathBuf {
        let hex = hash.to_hex();
        self.root
            .join("objects")
            .join(&hex[..2])
            .join(format!("{hex}.{shard}"))
    }

    /// Shard indices of `hash` held here.
    pub fn shards_of(&self, hash: &ContentHash) -> Vec<u8> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(hash)
            .cloned()
            .unwrap_or_default()
    }

    /// Every (hash, shard) held here, for scrubbing and orphan collection.
    pub fn all_shards(&self) -> Vec<(ContentHash, u8)> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(|(h, s)| s.iter().map(move |s| (*h, *s)))
            .collect()
    }

    fn index_add(&self, hash: ContentHash, shard: u8) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        let e = index.entry(hash).or_default();
        if !e.contains(&shard) {
            e.push(shard);
            e.sort_unstable();
        }
    }

    fn index_remove(&self, hash: &ContentHash, shard: u8) {
        let mut index = self.index.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(e) = index.get_mut(hash) {
            e.retain(|s| *s != shard);
            if e.is_empty() {
                index.remove(hash);
            }
        }
    }

    /// Opens a committed shard for reading, checking its header and index.
    pub fn open_shard(
        &self,
        hash: &ContentHash,
        shard: u8,
    ) -> Result<ShardReader, ShardStoreError> {
        if !is_valid_shard(shard) {
            return Err(ShardStoreError::BadRequest(format!(
                "no shard index {shard}"
            )));
        }
        match self.packs.get(hash, shard) {
            Ok(Some(raw)) => {
                return Ok(ShardReader {
                    body: Body::Packed(raw),
                    hash: *hash,
                    shard,
                });
            }
            Ok(None) => {}
            Err(FormatError::Corrupt(m)) => {
                self.quarantine(hash, shard, &m);
                return Err(ShardStoreError::Corrupt(m));
            }
            Err(FormatError::Io(e)) => return Err(e.into()),
        }
        let path = self.shard_path(hash, shard);
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The file went away behind our back: stop claiming it.
                self.index_remove(hash, shard);
                return Err(ShardStoreError::NotFound(format!("shard {hash}.{shard}")));
            }
            Err(e) => return Err(e.into()),
        };
        let checked = (|| {
            let (h, s) = format::read_header(&mut file)?;
            if h != *hash || s != shard {
                return Err(FormatError::Corrupt("header names another shard".into()));
            }
            format::read_index(&mut file)
        })();
        // Reads go front to back: let the kernel read ahead generously.
        if let Err(e) = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Sequential) {
            tracing::debug!(error = %e, "fadvise");
        }
        match checked {
            Ok(index) => Ok(ShardReader {
                body: Body::File { file, index },
                hash: *hash,
                shard,
            }),
            Err(FormatError::Corrupt(m)) => {
                self.quarantine(hash, shard, &m);
                Err(ShardStoreError::Corrupt(m))
            }
            Err(FormatError::Io(e)) => Err(e.into()),
        }
    }

    /// Moves a shard that failed verification to `quarantine/` and stops claiming it.
    pub fn quarantine(&self, hash: &ContentHash, shard: u8, why: &str) {
        self.count(|c| &c.quarantined);
        let path = self.shard_path(hash, shard);
        let dest = self.quarantine_path(hash, shard);
        if self.packs.contains(hash, shard) {
            let packed = dest.with_extension(format!(
                "{}.packed",
                dest.extension().and_then(|e| e.to_str()).unwrap_or("")
            ));
            match self.packs.take_out(hash, shard, &packed) {
                Ok(_) => {
                    tracing::warn!(%hash, shard, why, dest = %packed.display(), "packed shard quarantined")
                }
                Err(e) => {
                    tracing::error!(%hash, shard, why, error = %e, "could not quarantine a packed shard")
                }
            }
            if !path.exists() {
                self.index_remove(hash, shard);
            }
            return;
        }
        self.index_remove(hash, shard);
        match fs::rename(&path, &dest) {
            Ok(()) => {
                tracing::warn!(%hash, shard, why, dest = %dest.display(), "shard quarantined")
            }
            Err(e) => tracing::error!(%hash, shard, why, error = %e, "could not quarantine shard"),
        }
    }

    fn quarantine_path(&self, hash: &ContentHash, shard: u8) -> PathBuf {
        let stamp = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.root
            .join("quarantine")
            .join(format!("{}.{shard}.{stamp}", hash.to_hex()))
    }

    /// Stores a whole shard of at most [`pack::MAX_PACKED`] bytes in one step, durably (a
    /// packed entry, its `fdatasync` shared with the appends made at the same time), and
    /// locates it. Replaces a copy held already.
    pub fn put_whole(
        &self,
        hash: &ContentHash,
        shard: u8,
        raw: &[u8],
    ) -> Result<(), ShardStoreError> {
        if !is_valid_shard(shard) {
            return Err(ShardStoreError::BadRequest(format!(
                "no shard index {shard}"
            )));
        }
        if raw.len() > pack::MAX_PACKED {
            return Err(ShardStoreError::BadRequest(format!(
                "a whole shard may be at most {} bytes; this one is {} (upload it in pieces)",
                pack::MAX_PACKED,
                raw.len()
            )));
        }
        if !self.pack_small {
            let id = self.create_temp(hash, shard, Some(raw.len() as u64))?;
            let written = (|| {
                if !raw.is_empty() {
                    self.write_piece(&id, 0, raw)?;
                }
                self.commit(&id, raw.len() as u64, None)
            })();
            if written.is_err()
                && let Err(e) = self.abort(&id)
            {
                tracing::warn!(id, error = %e, "could not abandon a failed shard write");
            }
            return written;
        }
        self.packs.put(hash, shard, raw)?;
        self.index_add(*hash, shard);
        self.count(|c| &c.written);
        Ok(())
    }

    /// Compacts the packs that are mostly dead; corrupt entries found on the way are
    /// quarantined.
    pub fn compact_packs(&self) -> Result<pack::Compacted, ShardStoreError> {
        let done = self.packs.compact(pack::COMPACT_DEAD_SHARE, |h, s| {
            let p = self.quarantine_path(h, s);
            p.with_extension(format!(
                "{}.packed",
                p.extension().and_then(|e| e.to_str()).unwrap_or("")
            ))
        })?;
        for (hash, shard) in &done.corrupt {
            if !self.shard_path(hash, *shard).exists() {
                self.index_remove(hash, *shard);
            }
        }
        Ok(done)
    }

    /// Bytes the packs take, and how many of them are dead.
    pub fn pack_usage(&self) -> (u64, u64) {
        self.packs.usage()
    }

    /// Starts a new pack (tests: makes the current one eligible for compaction).
    pub fn roll_pack(&self) -> Result<(), ShardStoreError> {
        Ok(self.packs.roll()?)
    }

    /// Seconds since the shard was last written; `None` when this server does not hold it.
    fn shard_age(&self, hash: &ContentHash, shard: u8) -> io::Result<Option<u64>> {
        if let Some(loc) = self.packs.loc(hash, shard) {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            return Ok(Some(now.saturating_sub(loc.written)));
        }
        match fs::metadata(self.shard_path(hash, shard)) {
            Ok(m) => Ok(Some(m.modified()?.elapsed().map_or(0, |d| d.as_secs()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Up to `limit` committed shards after `after`, in (hash, shard) order, with their ages.
    pub fn list_shards(
        &self,
        after: Option<(ContentHash, u8)>,
        limit: usize,
    ) -> Result<Vec<ShardEntry>, ShardStoreError> {
        let mut all = self.all_shards();
        all.sort_unstable();
        let start = match after {
            Some(a) => all.partition_point(|x| *x <= a),
            None => 0,
        };
        let mut out = Vec::new();
        for (hash, shard) in all.into_iter().skip(start).take(limit) {
            if let Some(age_secs) = self.shard_age(&hash, shard)? {
                out.push(ShardEntry {
                    hash,
                    shard,
                    age_secs,
                });
            }
        }
        Ok(out)
    }

    /// Reads every piece of a shard, checking each checksum; a shard that fails is
    /// quarantined (and `Corrupt` returned). Returns the shard's raw length.
    pub fn verify_shard(&self, hash: &ContentHash, shard: u8) -> Result<u64, ShardStoreError> {
        let mut reader = self.open_shard(hash, shard)?;
        let pieces = reader.len().div_ceil(PIECE_SIZE as u64) as usize;
        for k in 0..pieces {
            match reader.piece(k) {
                Ok(_) => {}
                Err(FormatError::Corrupt(m)) => {
                    self.quarantine(hash, shard, &m);
                    return Err(ShardStoreError::Corrupt(m));
                }
                Err(FormatError::Io(e)) => return Err(e.into()),
            }
        }
        self.count(|c| &c.verified);
        Ok(reader.len())
    }

    /// Moves a shard to `garbage/` (the orphan collector's delete; `garbage/` is emptied
    /// later by [`expire_garbage`](Self::expire_garbage)). With `min_age`, a shard written
    /// more recently than that is kept (`TooNew`): an upload may just have committed it.
    pub fn remove_shard(
        &self,
        hash: &ContentHash,
        shard: u8,
        min_age: Option<Duration>,
    ) -> Result<(), ShardStoreError> {
        if !is_valid_shard(shard) {
            return Err(ShardStoreError::BadRequest(format!(
                "no shard index {shard}"
            )));
        }
        let path = self.shard_path(hash, shard);
        if let Some(min_age) = min_age {
            match self.shard_age(hash, shard)? {
                None => return Err(ShardStoreError::NotFound(format!("shard {hash}.{shard}"))),
                Some(age) if age < min_age.as_secs() => {
                    return Err(ShardStoreError::TooNew(format!(
                        "shard {hash}.{shard} was written {age} s ago; kept"
                    )));
                }
                Some(_) => {}
            }
        }
        let dest = self
            .root
            .join("garbage")
            .join(format!("{}.{shard}", hash.to_hex()));
        let packed =
            self.packs
                .take_out(hash, shard, &dest.with_extension(format!("{shard}.packed")))?;
        if packed && !path.exists() {
            self.index_remove(hash, shard);
            return Ok(());
        }
        self.index_remove(hash, shard);
        match fs::rename(&path, &dest) {
            Ok(()) => {
                // The garbage clock starts now, not when the shard was written.
                if let Err(e) = File::options()
                    .write(true)
                    .open(&dest)
                    .and_then(|f| f.set_modified(SystemTime::now()))
                {
                    tracing::warn!(error = %e, "could not stamp a removed shard");
                }
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ShardStoreError::NotFound(format!("shard {hash}.{shard}")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes files that have been in `garbage/` for longer than `keep`; returns how many.
    pub fn expire_garbage(&self, keep: Duration) -> io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(self.root.join("garbage"))? {
            let entry = entry?;
            let old = entry
                .metadata()?
                .modified()?
                .elapsed()
                .is_ok_and(|age| age > keep);
            if old {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Deletes temp uploads untouched for longer than `ttl`; returns how many.
    pub fn expire_temps(&self, ttl: Duration) -> io::Result<usize> {
        temp::expire(self, ttl)
    }
}

/// `objects/ab/<hex>.<shard>` → (hash, shard).
fn parse_shard_file_name(path: &Path) -> Option<(ContentHash, u8)> {
    let name = path.file_name()?.to_str()?;
    let (hex, shard) = name.split_once('.')?;
    let hash = ContentHash::from_hex(hex).ok()?;
    let shard: u8 = shard.parse().ok()?;
    let fan = path.parent()?.file_name()?.to_str()?;
    (is_valid_shard(shard) && hex.starts_with(fan) && fan.len() == 2).then_some((hash, shard))
}

/// A committed shard opened for verified reads.
pub struct ShardReader {
    body: Body,
    pub hash: ContentHash,
    pub shard: u8,
}

enum Body {
    File {
        file: File,
        index: ShardIndex,
    },
    /// A packed shard, read and verified whole when opened (it is one piece at most).
    Packed(Vec<u8>),
}

impl ShardReader {
    /// Raw (uncompressed) length of the shard.
    pub fn len(&self) -> u64 {
        match &self.body {
            Body::File { index, .. } => index.raw_len,
            Body::Packed(raw) => raw.len() as u64,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Verified raw bytes of piece `k`. Every few pieces, the kernel is asked to start reading
    /// the next ones, so a cold read keeps the disk busy while this piece is checked and sent.
    pub fn piece(&mut self, k: usize) -> Result<Vec<u8>, FormatError> {
        const AHEAD: usize = 8;
        let (file, index) = match &mut self.body {
            Body::File { file, index } => (file, index),
            Body::Packed(raw) if k == 0 => return Ok(raw.clone()),
            Body::Packed(_) => return Err(FormatError::Corrupt(format!("no piece {k}"))),
        };
        if k.is_multiple_of(AHEAD / 2) && k + 1 < index.offsets.len() {
            let from = index.offsets[k + 1];
            let to = index
                .offsets
                .get(k + 1 + AHEAD)
                .copied()
                .unwrap_or(u64::MAX);
            let len = std::num::NonZeroU64::new(to.saturating_sub(from));
            if let Err(e) = rustix::fs::fadvise(&*file, from, len, rustix::fs::Advice::WillNeed) {
                tracing::debug!(error = %e, "fadvise");
            }
        }
        let offset = *index
            .offsets
            .get(k)
            .ok_or_else(|| FormatError::Corrupt(format!("no piece {k}")))?;
        file.seek(SeekFrom::Start(offset))?;
        let raw = format::read_record(file)?;
        let expected = (index.raw_len - k as u64 * PIECE_SIZE as u64).min(PIECE_SIZE as u64);
        if raw.len() as u64 != expected {
            return Err(FormatError::Corrupt(format!(
                "piece {k} has the wrong length"
            )));
        }
        Ok(raw)
    }
}

#[cfg(test)]
mod tests;
