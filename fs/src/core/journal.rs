//! The write-back journal (`dosfs mount --writeback`): a close or fsync of a file is made
//! durable here, locally, and uploaded to the store later.
//!
//! ```text
//! <cache-dir>/writeback/<n, 16 digits>.log    records, append only
//! <cache-dir>/writeback/<n, 16 digits>.done   seqs of its records uploaded since (u64 LE)
//!
//! record   72 B  "DOSWBRC3" | seq u64 | mode u32 | path len u32 | mtime ns i64 | size u64
//!                | journaled ns i64 | uid u32 | gid u32 | atime ns i64 | link group u64
//!                (u32::MAX, i64::MIN, u64::MAX: not recorded; the 64 B "DOSWBRC2" header
//!                of an older version, without the link group, and its 48 B "DOSWBRC1",
//!                without the last four, are read too)
//!          path bytes, then the file's bytes, then 8 B: CRC32C(header, path, bytes) u32
//!                | "END!"
//! ```
//!
//! A close appends its record under one lock and returns after an `fdatasync` that covers
//! it; one `fdatasync` covers every record appended before it started (group commit). Each
//! process start appends to a new log. At start the logs are read in order: a record is
//! pending unless its seq is in its log's `.done`; a torn or damaged tail of the last log is
//! cut off (no close returned for it). An uploaded record's seq is appended to `.done`
//! without a sync: after a crash it may be uploaded again (at least once; a replayed record
//! whose bytes and attributes are already the name's latest version is not stored twice). A
//! sealed log whose records are all uploaded is deleted with its `.done`.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use dos_protocol::PosixAttrs;

const MAGIC: &[u8; 8] = b"DOSWBRC3";
/// Records written before owners were kept: 48 B headers.
const MAGIC_V1: &[u8; 8] = b"DOSWBRC1";
const HEADER_V1_LEN: usize = 48;
/// Records written before hard links were kept: 64 B headers.
const MAGIC_V2: &[u8; 8] = b"DOSWBRC2";
const HEADER_V2_LEN: usize = 64;
const END: &[u8; 4] = b"END!";
const HEADER_LEN: usize = 72;
const NO_ID: u32 = u32::MAX;
const NO_LINK: u64 = u64::MAX;
const NO_TIME: i64 = i64::MIN;
/// The active log takes no new record past this size.
const ROLL_AT: u64 = 64 << 20;

/// One close of a file, waiting for its upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// The name it is uploaded under.
    pub path: String,
    pub mode: u32,
    pub mtime_ns: i64,
    /// Owner, group, access time and link group (no device number: only regular files are
    /// journaled).
    pub posix: PosixAttrs,
    pub size: u64,
    /// When the close was made durable here (ns since the epoch).
    pub journaled_ns: i64,
    log: u64,
    /// Where the file's bytes start in the log.
    data_at: u64,
}

struct Log {
    file: Arc<File>,
    /// End of the whole records written.
    written: u64,
    /// End of what an `fdatasync` covered.
    synced: u64,
    done: Option<File>,
    /// Records of this log not uploaded yet.
    live: usize,
}

#[derive(Default)]
struct State {
    logs: BTreeMap<u64, Log>,
    active: u64,
    records: BTreeMap<u64, Record>,
    next_seq: u64,
}

pub struct Journal {
    dir: PathBuf,
    state: Mutex<State>,
    /// Serialises the `fdatasync`s of the active log (group commit).
    sync: Mutex<()>,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn log_path(dir: &Path, n: u64, ext: &str) -> PathBuf {
    dir.join(format!("{n:016}.{ext}"))
}

fn header(rec: &Record) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..8].copy_from_slice(MAGIC);
    h[8..16].copy_from_slice(&rec.seq.to_le_bytes());
    h[16..20].copy_from_slice(&rec.mode.to_le_bytes());
    h[20..24].copy_from_slice(&(rec.path.len() as u32).to_le_bytes());
    h[24..32].copy_from_slice(&rec.mtime_ns.to_le_bytes());
    h[32..40].copy_from_slice(&rec.size.to_le_bytes());
    h[40..48].copy_from_slice(&rec.journaled_ns.to_le_bytes());
    h[48..52].copy_from_slice(&rec.posix.uid.unwrap_or(NO_ID).to_le_bytes());
    h[52..56].copy_from_slice(&rec.posix.gid.unwrap_or(NO_ID).to_le_bytes());
    h[56..64].copy_from_slice(&rec.posix.atime_ns.unwrap_or(NO_TIME).to_le_bytes());
    h[64..72].copy_from_slice(&rec.posix.link.unwrap_or(NO_LINK).to_le_bytes());
    h
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The whole record at the start of `b` (a log read into memory): it and its length.
fn parse(b: &[u8], log: u64, at: u64) -> Option<(Record, usize)> {
    let header_len = match b.get(..8)? {
        m if m == MAGIC => HEADER_LEN,
        m if m == MAGIC_V2 => HEADER_V2_LEN,
        m if m == MAGIC_V1 => HEADER_V1_LEN,
        _ => return None,
    };
    if b.len() < header_len {
        return None;
    }
    let path_len = u32::from_le_bytes(b[20..24].try_into().ok()?) as usize;
    let size = u64_at(b, 32);
    let data_at = header_len + path_len;
    let end = data_at.checked_add(usize::try_from(size).ok()?)?;
    if b.len() < end + 8 || &b[end + 4..end + 8] != END {
        return None;
    }
    let crc = u32::from_le_bytes(b[end..end + 4].try_into().ok()?);
    if crc32c::crc32c(&b[..end]) != crc {
        return None;
    }
    let path = std::str::from_utf8(&b[header_len..data_at])
        .ok()?
        .to_string();
    let posix = if header_len >= HEADER_V2_LEN {
        let id = |v: u32| (v != NO_ID).then_some(v);
        let atime = u64_at(b, 56) as i64;
        let link = if header_len == HEADER_LEN {
            Some(u64_at(b, 64)).filter(|l| *l != NO_LINK)
        } else {
            None
        };
        PosixAttrs {
            uid: id(u32_at(b, 48)),
            gid: id(u32_at(b, 52)),
            rdev: 0,
            atime_ns: (atime != NO_TIME).then_some(atime),
            link,
        }
    } else {
        PosixAttrs::default()
    };
    Some((
        Record {
            seq: u64_at(b, 8),
            path,
            mode: u32::from_le_bytes(b[16..20].try_into().ok()?),
            mtime_ns: u64_at(b, 24) as i64,
            posix,
            size,
            journaled_ns: u64_at(b, 40) as i64,
            log,
            data_at: at + data_at as u64,
        },
        end + 8,
    ))
}

impl Journal {
    /// Opens (creating) the journal in `dir`, loads what it holds and starts a new log.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut ns: Vec<u64> = Vec::new();
        for e in fs::read_dir(dir)? {
            let path = e?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            match name.strip_suffix(".log").map(str::parse::<u64>) {
                Some(Ok(n)) => ns.push(n),
                _ if name.ends_with(".done") => {}
                _ => {
                    tracing::warn!(path = %path.display(), "stray file in the write-back journal, ignored")
                }
            }
        }
        ns.sort_unstable();
        let mut st = State::default();
        let newest = ns.last().copied();
        for n in &ns {
            let bytes = fs::read(log_path(dir, *n, "log"))?;
            let done: std::collections::HashSet<u64> = fs::read(log_path(dir, *n, "done"))
                .unwrap_or_default()
                .chunks_exact(8)
                .map(|c| u64_at(c, 0))
                .collect();
            let mut at = 0usize;
            let mut live = 0;
            while let Some((rec, len)) = parse(&bytes[at..], *n, at as u64) {
                st.next_seq = st.next_seq.max(rec.seq + 1);
                if !done.contains(&rec.seq) {
                    live += 1;
                    st.records.insert(rec.seq, rec);
                }
                at += len;
            }
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(log_path(dir, *n, "log"))?;
            if at < bytes.len() {
                if Some(*n) == newest {
                    tracing::warn!(
                        log = n,
                        offset = at,
                        "torn end of the write-back journal cut off"
                    );
                    file.set_len(at as u64)?;
                    file.sync_all()?;
                } else {
                    tracing::error!(
                        log = n,
                        offset = at,
                        "unreadable end of a write-back log; what follows it is not uploaded"
                    );
                }
            }
            st.logs.insert(
                *n,
                Log {
                    file: Arc::new(file),
                    written: at as u64,
                    synced: at as u64,
                    done: None,
                    live,
                },
            );
        }
        st.next_seq = st.next_seq.max(1);
        let journal = Self {
            dir: dir.to_path_buf(),
            state: Mutex::new(st),
            sync: Mutex::new(()),
        };
        {
            let mut st = journal.lock();
            let active = newest.map_or(1, |n| n + 1);
            journal.start_log(&mut st, active)?;
            let finished: Vec<u64> = st
                .logs
                .iter()
                .filter(|(n, l)| **n != active && l.live == 0)
                .map(|(n, _)| *n)
                .collect();
            for n in finished {
                journal.delete_log(&mut st, n)?;
            }
        }
        Ok(journal)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn start_log(&self, st: &mut State, n: u64) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(log_path(&self.dir, n, "log"))?;
        sync_dir(&self.dir)?;
        st.logs.insert(
            n,
            Log {
                file: Arc::new(file),
                written: 0,
                synced: 0,
                done: None,
                live: 0,
            },
        );
        st.active = n;
        Ok(())
    }

    fn delete_log(&self, st: &mut State, n: u64) -> io::Result<()> {
        st.logs.remove(&n);
        fs::remove_file(log_path(&self.dir, n, "log"))?;
        match fs::remove_file(log_path(&self.dir, n, "done")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        Ok(())
    }

    /// Makes the current bytes of `src` (`size` of them) durable as a record for `path`.
    /// Blocking.
    pub fn add(
        &self,
        src: &File,
        path: &str,
        mode: u32,
        mtime_ns: i64,
        posix: PosixAttrs,
        size: u64,
    ) -> io::Result<Record> {
        let (file, end, rec) = {
            let mut st = self.lock();
            let active_size = st.logs.get(&st.active).map_or(0, |l| l.written);
            if active_size > 0 && active_size + size > ROLL_AT {
                let next = st.active + 1;
                self.start_log(&mut st, next)?;
            }
            let seq = st.next_seq;
            st.next_seq += 1;
            let active = st.active;
            let log = st
                .logs
                .get_mut(&active)
                .ok_or_else(|| io::Error::other("no active write-back log"))?;
            let at = log.written;
            let mut rec = Record {
                seq,
                path: path.to_string(),
                mode,
                mtime_ns,
                posix,
                size,
                journaled_ns: dos_protocol::now_ns(),
                log: active,
                data_at: at + (HEADER_LEN + path.len()) as u64,
            };
            let h = header(&rec);
            let mut crc = crc32c::crc32c(&h);
            crc = crc32c::crc32c_append(crc, path.as_bytes());
            let write = (|| {
                log.file.write_all_at(&h, at)?;
                log.file
                    .write_all_at(path.as_bytes(), at + HEADER_LEN as u64)?;
                let mut from = src.try_clone()?;
                from.seek(SeekFrom::Start(0))?;
                let mut pos = rec.data_at;
                let mut left = size;
                let mut buf = vec![0u8; (1 << 20).min(size.max(1) as usize)];
                while left > 0 {
                    let want = left.min(buf.len() as u64) as usize;
                    let n = from.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::other(format!(
                            "the staged file ended {left} bytes short of {size}"
                        )));
                    }
                    crc = crc32c::crc32c_append(crc, &buf[..n]);
                    log.file.write_all_at(&buf[..n], pos)?;
                    pos += n as u64;
                    left -= n as u64;
                }
                let mut tail = [0u8; 8];
                tail[..4].copy_from_slice(&crc.to_le_bytes());
                tail[4..].copy_from_slice(END);
                log.file.write_all_at(&tail, pos)?;
                Ok(pos + 8)
            })();
            let end = match write {
                Ok(end) => end,
                Err(e) => {
                    // Nothing past `at` counts: cut what may have been written.
                    let _ = log.file.set_len(at);
                    return Err(e);
                }
            };
            log.written = end;
            log.live += 1;
            rec.journaled_ns = dos_protocol::now_ns().max(rec.journaled_ns);
            st.records.insert(seq, rec.clone());
            (
                st.logs.get(&active).map(|l| l.file.clone()),
                (active, end),
                rec,
            )
        };
        if let Some(file) = file {
            self.sync_to(&file, end)?;
        }
        Ok(rec)
    }

    /// Makes log `end.0` durable up to `end.1`; one `fdatasync` covers every record written
    /// before it started.
    fn sync_to(&self, file: &File, (n, end): (u64, u64)) -> io::Result<()> {
        let synced = |st: &State| st.logs.get(&n).is_none_or(|l| l.synced >= end);
        if synced(&self.lock()) {
            return Ok(());
        }
        let _one = self.sync.lock().unwrap_or_else(PoisonError::into_inner);
        let upto = {
            let st = self.lock();
            if synced(&st) {
                return Ok(());
            }
            st.logs.get(&n).map_or(end, |l| l.written)
        };
        file.sync_data()?;
        if let Some(l) = self.lock().logs.get_mut(&n) {
            l.synced = l.synced.max(upto);
        }
        Ok(())
    }

    /// The bytes of record `seq`: the log file, where they start, how many.
    pub fn data(&self, seq: u64) -> io::Result<(File, u64, u64)> {
        let st = self.lock();
        let rec = st
            .records
            .get(&seq)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such record"))?;
        let log = st
            .logs
            .get(&rec.log)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "its log is gone"))?;
        Ok((log.file.try_clone()?, rec.data_at, rec.size))
    }

    /// Marks a record uploaded (or its file deleted). Not synced: after a crash it may be
    /// uploaded again. Blocking.
    pub fn remove(&self, seq: u64) -> io::Result<()> {
        let mut st = self.lock();
        let Some(rec) = st.records.remove(&seq) else {
            return Ok(());
        };
        let active = st.active;
        let finished = {
            let Some(log) = st.logs.get_mut(&rec.log) else {
                return Ok(());
            };
            if log.done.is_none() {
                log.done = Some(
                    OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(log_path(&self.dir, rec.log, "done"))?,
                );
            }
            if let Some(d) = log.done.as_mut() {
                d.write_all(&seq.to_le_bytes())?;
            }
            log.live = log.live.saturating_sub(1);
            log.live == 0 && rec.log != active
        };
        if finished {
            self.delete_log(&mut st, rec.log)?;
        }
        Ok(())
    }

    /// Whether `seq` is still waiting.
    pub fn contains(&self, seq: u64) -> bool {
        self.lock().records.contains_key(&seq)
    }

    /// Every record waiting, oldest first.
    pub fn pending(&self) -> Vec<Record> {
        self.lock().records.values().cloned().collect()
    }

    /// The records waiting for `path` (with `below`, also for names under `path/`).
    pub fn pending_for(&self, path: &str, below: bool) -> Vec<Record> {
        let prefix = format!("{path}/");
        self.lock()
            .records
            .values()
            .filter(|r| {
                r.path == path || (below && (path.is_empty() || r.path.starts_with(&prefix)))
            })
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Log files on disk (for tests).
    pub fn log_count(&self) -> usize {
        self.lock().logs.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A record of the format before owners (v1, 48 B header) is read, with no owner; a
    /// record keeps owner, group, atime and link group across a reopen.
    #[test]
    fn v1_records_are_read_and_new_ones_keep_owners() {
        let dir = tempfile::tempdir().unwrap();
        let wb = dir.path().join("writeback");
        fs::create_dir_all(&wb).unwrap();
        let (path, body) = ("a/old.txt", b"old bytes");
        let mut rec = Vec::new();
        rec.extend_from_slice(MAGIC_V1);
        rec.extend_from_slice(&7u64.to_le_bytes());
        rec.extend_from_slice(&0o640u32.to_le_bytes());
        rec.extend_from_slice(&(path.len() as u32).to_le_bytes());
        rec.extend_from_slice(&42i64.to_le_bytes());
        rec.extend_from_slice(&(body.len() as u64).to_le_bytes());
        rec.extend_from_slice(&43i64.to_le_bytes());
        assert_eq!(rec.len(), HEADER_V1_LEN);
        rec.extend_from_slice(path.as_bytes());
        rec.extend_from_slice(body);
        let crc = crc32c::crc32c(&rec);
        rec.extend_from_slice(&crc.to_le_bytes());
        rec.extend_from_slice(END);
        fs::write(log_path(&wb, 0, "log"), &rec).unwrap();

        let j = Journal::open(&wb).unwrap();
        let old = j.pending();
        assert_eq!(old.len(), 1);
        assert_eq!((old[0].seq, old[0].mode, old[0].mtime_ns), (7, 0o640, 42));
        assert_eq!(
            (old[0].path.as_str(), old[0].posix),
            (path, PosixAttrs::default())
        );

        let src = dir.path().join("src");
        fs::write(&src, b"new").unwrap();
        let posix = PosixAttrs {
            uid: Some(1000),
            gid: Some(0),
            rdev: 0,
            atime_ns: Some(-5),
            link: Some(77),
        };
        j.add(&File::open(&src).unwrap(), "b", 0o600, 9, posix, 3)
            .unwrap();
        drop(j);
        let j = Journal::open(&wb).unwrap();
        let all = j.pending();
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[1].posix, posix);
        let unset = all.iter().find(|r| r.path == "a/old.txt").unwrap();
        assert_eq!(unset.posix, PosixAttrs::default());
    }
}
