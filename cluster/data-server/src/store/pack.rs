//! Packed small shards: a shard of at most one piece is appended to a pack file instead of
//! getting a file of its own, so many shards written together share one `fdatasync` and a
//! 1 KiB shard costs about 1 KiB on disk instead of a 4 KiB block plus an inode.
//!
//! ```text
//! STORAGE_ROOT/packs/<seq, 16 hex>.pack   header, then entries, append only
//! STORAGE_ROOT/packs/<seq, 16 hex>.dead   offsets of the pack's entries removed since
//!
//! pack header  16 B  magic "DOSPAKF1" | format u32 | 4 B zero
//! entry        56 B  magic "DOSPACK1" | object hash 32 B | shard u32 | written (unix s) u64
//!                    | crc32c(these 52 B + the record header) u32
//!              then one record of the shard file format (16 B header + payload, the CRC
//!              of the raw bytes in its header): the whole shard
//! dead entry   16 B  entry offset u64 | crc32c(offset) u32 | "DEAD"
//! ```
//!
//! Rules: appends are made under one lock, so a pack is always a run of whole entries
//! followed at most by one torn one; an append is acknowledged only after an `fdatasync`
//! that covers it, and concurrent appends share one (group commit). Every process start
//! appends to a new pack; the pack that was being appended to when the process died is the
//! only one with a torn tail, which the start cuts off. An entry whose header fails its CRC
//! in the middle of a pack is skipped up to the next valid entry (its shard is then missing
//! here, and scrub rebuilds it). A shard written again supersedes the older entry (the later
//! entry wins at start). Removing a shard appends its offset to the pack's `.dead` file; a
//! sealed pack that is mostly dead is compacted: its live entries are copied, verified, to
//! the current pack, made durable, and only then is the old pack deleted. Readers hold the
//! pack's open file, so a compaction never pulls a file from under a read.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use dos_protocol::{ContentHash, PIECE_SIZE};

use super::format::{self, CompressionPolicy, FormatError, RECORD_HEADER_LEN};
use super::sync_dir;

/// Shards up to this raw length are packed; longer ones get files of their own.
pub const MAX_PACKED: usize = PIECE_SIZE;
/// A pack takes no new entries past this size.
const ROLL_AT: u64 = 64 << 20;
const FILE_MAGIC: &[u8; 8] = b"DOSPAKF1";
const FILE_HEADER_LEN: u64 = 16;
const FORMAT: u32 = 1;
const ENTRY_MAGIC: &[u8; 8] = b"DOSPACK1";
pub const ENTRY_HEADER_LEN: usize = 56;
const DEAD_LEN: usize = 16;
const DEAD_MAGIC: &[u8; 4] = b"DEAD";
/// A sealed pack is compacted once this share of its entry bytes is dead.
pub const COMPACT_DEAD_SHARE: f64 = 0.5;

/// Where a packed shard is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub pack: u64,
    pub offset: u64,
    /// Entry length (header, record header, payload).
    pub len: u64,
    /// When the shard was first written (kept by compaction), unix seconds.
    pub written: u64,
}

type Key = (ContentHash, u8);

struct PackFile {
    file: File,
    /// End of the entries written (all whole).
    written: AtomicU64,
    /// End of what an `fdatasync` has covered.
    synced: AtomicU64,
    sync: Mutex<()>,
}

struct Pack {
    file: Arc<PackFile>,
    /// Bytes of entries that are removed, superseded or unreadable.
    dead: u64,
    dead_log: Option<File>,
}

#[derive(Default)]
struct State {
    packs: BTreeMap<u64, Pack>,
    active: u64,
    locs: HashMap<Key, Loc>,
}

/// The packs of one data server.
pub struct Packs {
    dir: PathBuf,
    state: Mutex<State>,
}

/// What a compaction did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Compacted {
    pub packs: usize,
    pub moved: usize,
    pub reclaimed_bytes: u64,
    /// Entries found corrupt while copying (quarantined instead of copied).
    pub corrupt: Vec<(ContentHash, u8)>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pack_path(dir: &Path, seq: u64, ext: &str) -> PathBuf {
    dir.join(format!("{seq:016x}.{ext}"))
}

/// Encodes a whole shard as a pack entry.
pub fn encode_entry(hash: &ContentHash, shard: u8, raw: &[u8], written: u64) -> Vec<u8> {
    let rec = format::encode_record_parts(raw, &mut CompressionPolicy::default());
    let mut out = Vec::with_capacity(ENTRY_HEADER_LEN + rec.len());
    out.extend_from_slice(ENTRY_MAGIC);
    out.extend_from_slice(&hash.0);
    out.extend_from_slice(&u32::from(shard).to_le_bytes());
    out.extend_from_slice(&written.to_le_bytes());
    let crc = entry_crc(&out[..52], &rec.header);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(&rec.header);
    out.extend_from_slice(&rec.payload);
    out
}

fn entry_crc(head: &[u8], record_header: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(head), record_header)
}

/// A parsed entry header: key, when written, whole entry length.
struct EntryHead {
    key: Key,
    written: u64,
    len: u64,
}

/// Parses the entry header at the start of `bytes` (which holds at least the entry header
/// and the record header); `None` when it is not a valid entry header.
fn parse_head(bytes: &[u8]) -> Option<EntryHead> {
    if bytes.len() < ENTRY_HEADER_LEN + RECORD_HEADER_LEN || &bytes[..8] != ENTRY_MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(bytes[52..56].try_into().ok()?);
    let record_header = &bytes[ENTRY_HEADER_LEN..ENTRY_HEADER_LEN + RECORD_HEADER_LEN];
    if entry_crc(&bytes[..52], record_header) != crc {
        return None;
    }
    let hash = ContentHash(bytes[8..40].try_into().ok()?);
    let shard = u8::try_from(u32::from_le_bytes(bytes[40..44].try_into().ok()?)).ok()?;
    let written = u64::from_le_bytes(bytes[44..52].try_into().ok()?);
    let stored = u32::from_le_bytes(record_header[0..4].try_into().ok()?) as u64;
    if stored > (MAX_PACKED + MAX_PACKED / 64 + 64) as u64 {
        return None;
    }
    Some(EntryHead {
        key: (hash, shard),
        written,
        len: (ENTRY_HEADER_LEN + RECORD_HEADER_LEN) as u64 + stored,
    })
}

/// Verifies a whole entry read back from a pack and returns the shard's raw bytes.
fn decode_entry(bytes: &[u8], key: &Key) -> Result<Vec<u8>, FormatError> {
    let head =
        parse_head(bytes).ok_or_else(|| FormatError::Corrupt("bad pack entry header".into()))?;
    if head.key != *key {
        return Err(FormatError::Corrupt(
            "pack entry names another shard".into(),
        ));
    }
    if head.len != bytes.len() as u64 {
        return Err(FormatError::Corrupt("pack entry is short".into()));
    }
    format::read_record(&mut &bytes[ENTRY_HEADER_LEN..])
}

impl Packs {
    /// Opens the packs of `dir` (creating it), rebuilds where every packed shard is, cuts a
    /// torn tail off the newest pack and starts a new pack for this process's appends.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut seqs: Vec<u64> = Vec::new();
        for e in fs::read_dir(dir)? {
            let path = e?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match name
                .strip_suffix(".pack")
                .map(|s| u64::from_str_radix(s, 16))
            {
                Some(Ok(seq)) => seqs.push(seq),
                _ if name.ends_with(".dead") => {}
                _ => tracing::warn!(path = %path.display(), "stray file in packs/, ignored"),
            }
        }
        seqs.sort_unstable();
        let packs = Self {
            dir: dir.to_path_buf(),
            state: Mutex::default(),
        };
        let newest = seqs.last().copied();
        let mut superseded = Vec::new();
        {
            let mut st = lock(&packs.state);
            for seq in &seqs {
                let (pack, entries) = packs.load(*seq, Some(*seq) == newest)?;
                st.packs.insert(*seq, pack);
                for (key, loc) in entries {
                    if let Some(old) = st.locs.insert(key, loc) {
                        superseded.push((key, old));
                    }
                }
            }
            st.active = newest.map_or(1, |n| n + 1);
            let active = st.active;
            let pack = packs.create(active)?;
            st.packs.insert(active, pack);
            for (_, old) in &superseded {
                packs.mark_dead(&mut st, old)?;
            }
            let live: usize = st.locs.len();
            tracing::info!(dir = %dir.display(), packs = st.packs.len(), shards = live, "packs opened");
        }
        Ok(packs)
    }

    fn create(&self, seq: u64) -> io::Result<Pack> {
        let path = pack_path(&self.dir, seq, "pack");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        let mut header = [0u8; FILE_HEADER_LEN as usize];
        header[..8].copy_from_slice(FILE_MAGIC);
        header[8..12].copy_from_slice(&FORMAT.to_le_bytes());
        file.write_all(&header)?;
        file.sync_all()?;
        sync_dir(&self.dir)?;
        Ok(Pack {
            file: Arc::new(PackFile {
                file,
                written: AtomicU64::new(FILE_HEADER_LEN),
                synced: AtomicU64::new(FILE_HEADER_LEN),
                sync: Mutex::new(()),
            }),
            dead: 0,
            dead_log: None,
        })
    }

    /// Reads pack `seq` and its dead list; returns it with its live entries, in order.
    fn load(&self, seq: u64, newest: bool) -> io::Result<(Pack, Vec<(Key, Loc)>)> {
        let path = pack_path(&self.dir, seq, "pack");
        let bytes = fs::read(&path)?;
        let dead_offsets = self.read_dead(seq)?;
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let mut entries = Vec::new();
        let mut dead = 0u64;
        let header_ok = bytes.len() as u64 >= FILE_HEADER_LEN
            && &bytes[..8] == FILE_MAGIC
            && bytes[8..12] == FORMAT.to_le_bytes();
        let mut pos = FILE_HEADER_LEN as usize;
        if !header_ok {
            tracing::error!(path = %path.display(), "pack header is unreadable; its shards are not served (scrub rebuilds them)");
            pos = bytes.len();
        }
        let mut end = pos;
        while pos < bytes.len() {
            match parse_head(&bytes[pos..]) {
                Some(h) if pos as u64 + h.len <= bytes.len() as u64 => {
                    if dead_offsets.contains(&(pos as u64)) {
                        dead += h.len;
                    } else {
                        entries.push((
                            h.key,
                            Loc {
                                pack: seq,
                                offset: pos as u64,
                                len: h.len,
                                written: h.written,
                            },
                        ));
                    }
                    pos += h.len as usize;
                    end = pos;
                }
                _ => {
                    // A torn tail, or a damaged header: look for the next whole entry.
                    let next = (pos + 1..bytes.len()).find(|&p| {
                        bytes[p..].starts_with(ENTRY_MAGIC)
                            && parse_head(&bytes[p..])
                                .is_some_and(|h| p as u64 + h.len <= bytes.len() as u64)
                    });
                    match next {
                        Some(p) => {
                            tracing::error!(path = %path.display(), offset = pos, skipped = p - pos, "damaged pack entry skipped (scrub rebuilds its shard)");
                            dead += (p - pos) as u64;
                            pos = p;
                        }
                        None => break,
                    }
                }
            }
        }
        if end < bytes.len() && header_ok {
            if newest {
                tracing::warn!(path = %path.display(), offset = end, bytes = bytes.len() - end, "torn tail of the last pack cut off");
                file.set_len(end as u64)?;
                file.sync_all()?;
            } else {
                tracing::error!(path = %path.display(), offset = end, "unreadable end of a sealed pack left in place");
                dead += (bytes.len() - end) as u64;
            }
        }
        let len = if newest && header_ok {
            end
        } else {
            bytes.len()
        } as u64;
        Ok((
            Pack {
                file: Arc::new(PackFile {
                    file,
                    written: AtomicU64::new(len),
                    synced: AtomicU64::new(len),
                    sync: Mutex::new(()),
                }),
                dead,
                dead_log: None,
            },
            entries,
        ))
    }

    fn read_dead(&self, seq: u64) -> io::Result<HashSet<u64>> {
        let bytes = match fs::read(pack_path(&self.dir, seq, "dead")) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HashSet::new()),
            Err(e) => return Err(e),
        };
        Ok(bytes
            .chunks_exact(DEAD_LEN)
            .filter_map(|c| {
                let off: [u8; 8] = c[..8].try_into().ok()?;
                let crc = u32::from_le_bytes(c[8..12].try_into().ok()?);
                (&c[12..16] == DEAD_MAGIC && crc32c::crc32c(&off) == crc)
                    .then_some(u64::from_le_bytes(off))
            })
            .collect())
    }

    /// Records `loc` as dead, durably (appended to its pack's dead list and fsynced).
    fn mark_dead(&self, st: &mut State, loc: &Loc) -> io::Result<()> {
        let Some(pack) = st.packs.get_mut(&loc.pack) else {
            return Ok(());
        };
        if pack.dead_log.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(pack_path(&self.dir, loc.pack, "dead"))?;
            pack.dead_log = Some(f);
        }
        let mut rec = [0u8; DEAD_LEN];
        rec[..8].copy_from_slice(&loc.offset.to_le_bytes());
        rec[8..12].copy_from_slice(&crc32c::crc32c(&loc.offset.to_le_bytes()).to_le_bytes());
        rec[12..16].copy_from_slice(DEAD_MAGIC);
        if let Some(log) = pack.dead_log.as_mut() {
            log.write_all(&rec)?;
            log.sync_data()?;
        }
        pack.dead += loc.len;
        Ok(())
    }

    /// Appends entries under the lock (a pack is always whole entries), starting a new pack
    /// when the active one is full. Returns the pack written to and where each entry went.
    fn append(&self, entries: &[(Key, &[u8], u64)]) -> io::Result<(Arc<PackFile>, Vec<Loc>)> {
        let mut st = lock(&self.state);
        let total: u64 = entries.iter().map(|(_, b, _)| b.len() as u64).sum();
        let active = st.active;
        let size = st
            .packs
            .get(&active)
            .map_or(0, |p| p.file.written.load(Ordering::Acquire));
        if size > FILE_HEADER_LEN && size + total > ROLL_AT {
            let next = active + 1;
            let pack = self.create(next)?;
            st.packs.insert(next, pack);
            st.active = next;
        }
        let active = st.active;
        let pf = st
            .packs
            .get(&active)
            .map(|p| p.file.clone())
            .ok_or_else(|| io::Error::other("no active pack"))?;
        let mut at = pf.written.load(Ordering::Acquire);
        let start = at;
        let mut locs = Vec::with_capacity(entries.len());
        let mut buf = Vec::with_capacity(total as usize);
        for (_, bytes, written) in entries {
            locs.push(Loc {
                pack: active,
                offset: at,
                len: bytes.len() as u64,
                written: *written,
            });
            buf.extend_from_slice(bytes);
            at += bytes.len() as u64;
        }
        if let Err(e) = pf.file.write_all_at(&buf, start) {
            // Nothing after `start` counts: cut what may have been written.
            if let Err(cut) = pf.file.set_len(start) {
                tracing::error!(error = %cut, "could not cut a failed pack append");
            }
            return Err(e);
        }
        pf.written.store(at, Ordering::Release);
        Ok((pf, locs))
    }

    /// Makes everything appended to `pf` up to `end` durable; one `fdatasync` covers every
    /// append made before it started.
    fn sync_to(pf: &PackFile, end: u64) -> io::Result<()> {
        if pf.synced.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let _one = lock(&pf.sync);
        if pf.synced.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let upto = pf.written.load(Ordering::Acquire);
        pf.file.sync_data()?;
        pf.synced.fetch_max(upto, Ordering::AcqRel);
        Ok(())
    }

    /// Stores a whole shard, durably, and makes it the one located (an older copy becomes
    /// dead).
    pub fn put(&self, hash: &ContentHash, shard: u8, raw: &[u8]) -> io::Result<()> {
        let written = now_secs();
        let entry = encode_entry(hash, shard, raw, written);
        let key = (*hash, shard);
        let (pf, locs) = self.append(&[(key, &entry, written)])?;
        let loc = locs[0];
        Self::sync_to(&pf, loc.offset + loc.len)?;
        let mut st = lock(&self.state);
        if let Some(old) = st.locs.insert(key, loc) {
            self.mark_dead(&mut st, &old)?;
        }
        Ok(())
    }

    pub fn contains(&self, hash: &ContentHash, shard: u8) -> bool {
        lock(&self.state).locs.contains_key(&(*hash, shard))
    }

    pub fn loc(&self, hash: &ContentHash, shard: u8) -> Option<Loc> {
        lock(&self.state).locs.get(&(*hash, shard)).copied()
    }

    /// Every packed shard, for the locate index at start.
    pub fn keys(&self) -> Vec<Key> {
        lock(&self.state).locs.keys().copied().collect()
    }

    /// The entry bytes of a packed shard, as stored (unverified), with where they were.
    fn read_entry(&self, hash: &ContentHash, shard: u8) -> io::Result<Option<(Loc, Vec<u8>)>> {
        let (loc, pf) = {
            let st = lock(&self.state);
            let Some(loc) = st.locs.get(&(*hash, shard)).copied() else {
                return Ok(None);
            };
            let Some(pack) = st.packs.get(&loc.pack) else {
                return Ok(None);
            };
            (loc, pack.file.clone())
        };
        let mut buf = vec![0u8; loc.len as usize];
        pf.file.read_exact_at(&mut buf, loc.offset)?;
        Ok(Some((loc, buf)))
    }

    /// The verified raw bytes of a packed shard; `Ok(None)` when it is not packed here.
    pub fn get(&self, hash: &ContentHash, shard: u8) -> Result<Option<Vec<u8>>, FormatError> {
        match self.read_entry(hash, shard)? {
            None => Ok(None),
            Some((_, bytes)) => decode_entry(&bytes, &(*hash, shard)).map(Some),
        }
    }

    /// Takes a packed shard out: writes its entry to `dest` (quarantine or garbage), then
    /// marks it dead. `Ok(false)` when it is not packed here.
    pub fn take_out(&self, hash: &ContentHash, shard: u8, dest: &Path) -> io::Result<bool> {
        let Some((loc, bytes)) = self.read_entry(hash, shard)? else {
            return Ok(false);
        };
        fs::write(dest, &bytes)?;
        let mut st = lock(&self.state);
        // Only if it was not written again meanwhile.
        if st.locs.get(&(*hash, shard)) == Some(&loc) {
            st.locs.remove(&(*hash, shard));
            self.mark_dead(&mut st, &loc)?;
        }
        Ok(true)
    }

    /// Bytes the packs take on disk, and the share of them that is dead.
    pub fn usage(&self) -> (u64, u64) {
        let st = lock(&self.state);
        st.packs.values().fold((0, 0), |(size, dead), p| {
            (size + p.file.written.load(Ordering::Acquire), dead + p.dead)
        })
    }

    /// Compacts every sealed pack whose dead share is at least `dead_share`: its live
    /// entries are verified and copied to the active pack, made durable, and the old pack is
    /// deleted. `quarantine` names the file a corrupt entry is moved to.
    pub fn compact(
        &self,
        dead_share: f64,
        quarantine: impl Fn(&ContentHash, u8) -> PathBuf,
    ) -> io::Result<Compacted> {
        let mut done = Compacted::default();
        let candidates: Vec<u64> = {
            let st = lock(&self.state);
            st.packs
                .iter()
                .filter(|(seq, p)| {
                    let body = p.file.written.load(Ordering::Acquire) - FILE_HEADER_LEN;
                    **seq != st.active && (body == 0 || p.dead as f64 >= dead_share * body as f64)
                })
                .map(|(seq, _)| *seq)
                .collect()
        };
        for seq in candidates {
            let (pf, live): (Arc<PackFile>, Vec<(Key, Loc)>) = {
                let st = lock(&self.state);
                let Some(p) = st.packs.get(&seq) else {
                    continue;
                };
                let live = st
                    .locs
                    .iter()
                    .filter(|(_, l)| l.pack == seq)
                    .map(|(k, l)| (*k, *l))
                    .collect();
                (p.file.clone(), live)
            };
            let mut moved: Vec<(Key, Loc, Loc)> = Vec::new();
            let mut batch: Vec<(Key, Vec<u8>, Loc)> = Vec::new();
            let mut batch_bytes = 0u64;
            let last = live.len();
            for (i, (key, old)) in live.into_iter().enumerate() {
                let mut bytes = vec![0u8; old.len as usize];
                pf.file.read_exact_at(&mut bytes, old.offset)?;
                if let Err(e) = decode_entry(&bytes, &key) {
                    tracing::warn!(hash = %key.0, shard = key.1, error = %e, "corrupt packed shard found by compaction; quarantined");
                    fs::write(quarantine(&key.0, key.1), &bytes)?;
                    let mut st = lock(&self.state);
                    if st.locs.get(&key) == Some(&old) {
                        st.locs.remove(&key);
                    }
                    done.corrupt.push(key);
                } else {
                    batch_bytes += old.len;
                    batch.push((key, bytes, old));
                }
                // Copied in batches of about 8 MiB, each made durable with one fdatasync.
                if !batch.is_empty() && (batch_bytes >= 8 << 20 || i + 1 == last) {
                    let entries: Vec<(Key, &[u8], u64)> = batch
                        .iter()
                        .map(|(k, b, old)| (*k, b.as_slice(), old.written))
                        .collect();
                    let (to, locs) = self.append(&entries)?;
                    if let Some(end) = locs.last() {
                        Self::sync_to(&to, end.offset + end.len)?;
                    }
                    for ((key, _, old), new) in batch.drain(..).zip(locs) {
                        moved.push((key, old, new));
                    }
                    batch_bytes = 0;
                }
            }
            let mut st = lock(&self.state);
            for (key, old, new) in &moved {
                if st.locs.get(key) == Some(old) {
                    st.locs.insert(*key, *new);
                } else {
                    // Removed or written again while it was copied: the copy is dead.
                    self.mark_dead(&mut st, new)?;
                }
            }
            if let Some(p) = st.packs.remove(&seq) {
                let kept: u64 = moved.iter().map(|(_, _, new)| new.len).sum();
                done.reclaimed_bytes += p.file.written.load(Ordering::Acquire).saturating_sub(kept);
            }
            drop(st);
            fs::remove_file(pack_path(&self.dir, seq, "pack"))?;
            match fs::remove_file(pack_path(&self.dir, seq, "dead")) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            sync_dir(&self.dir)?;
            done.packs += 1;
            done.moved += moved.len();
            tracing::info!(pack = seq, moved = moved.len(), "pack compacted");
        }
        Ok(done)
    }

    /// Seals the active pack and starts a new one (tests, and compaction of everything).
    pub fn roll(&self) -> io::Result<()> {
        let mut st = lock(&self.state);
        let next = st.active + 1;
        let pack = self.create(next)?;
        st.packs.insert(next, pack);
        st.active = next;
        Ok(())
    }
}
