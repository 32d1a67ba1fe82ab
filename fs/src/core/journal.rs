//! The write-back journal (`dosfs mount --writeback`): a close or fsync of a file is made
//! durable here, locally, and uploaded to the store later.
//!
//! ```text
//! <cache-dir>/writeback/<seq, 16 digits>.data   the bytes of the file at that close
//! <cache-dir>/writeback/<seq, 16 digits>.json   what to store them as (written last)
//! ```
//!
//! A record exists once its `.json` is renamed into place (the `.data` was fsynced before,
//! the folder after), and is uploaded in `seq` order per path; a `.data` without its `.json`
//! is a close that did not finish and is removed at start. A record is removed after the
//! store acknowledged its version, so a crash in between uploads it again (at least once;
//! a replayed record whose content and attributes are already the name's latest version
//! is not stored twice).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};

/// One close of a file, waiting for its upload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Record {
    pub seq: u64,
    /// The name it is uploaded under.
    pub path: String,
    pub mode: u32,
    pub mtime_ns: i64,
    pub size: u64,
    /// When the close was made durable here (ns since the epoch).
    pub journaled_ns: i64,
}

pub struct Journal {
    dir: PathBuf,
    next: AtomicU64,
    records: Mutex<BTreeMap<u64, Record>>,
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Journal {
    /// Opens (creating) the journal in `dir` and loads what it holds.
    pub fn open(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let mut records = BTreeMap::new();
        let mut datas = Vec::new();
        for e in fs::read_dir(dir)? {
            let path = e?.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("json") => match fs::read(&path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
                {
                    Some(r) => {
                        records.insert(r.seq, r);
                    }
                    None => {
                        tracing::warn!(path = %path.display(), "unreadable write-back record left in place")
                    }
                },
                Some("data") => datas.push(path),
                _ => {
                    // A record being written when the process died.
                    if let Err(e) = fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), error = %e, "could not remove a stray write-back file");
                    }
                }
            }
        }
        for d in datas {
            let seq = d
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.parse::<u64>().ok());
            if seq.is_none_or(|s| !records.contains_key(&s)) {
                // Bytes of a close that never got its record: that close did not return.
                if let Err(e) = fs::remove_file(&d) {
                    tracing::warn!(path = %d.display(), error = %e, "could not remove a stray write-back file");
                }
            }
        }
        let next = records.keys().next_back().map_or(1, |s| s + 1);
        Ok(Self {
            dir: dir.to_path_buf(),
            next: AtomicU64::new(next),
            records: Mutex::new(records),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Record>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn data_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016}.data"))
    }

    fn record_path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:016}.json"))
    }

    /// Makes the current bytes of `src` (`size` of them) durable as a record for `path`.
    /// Blocking.
    pub fn add(
        &self,
        src: &File,
        path: &str,
        mode: u32,
        mtime_ns: i64,
        size: u64,
    ) -> io::Result<Record> {
        let seq = self.next.fetch_add(1, Ordering::AcqRel);
        let data = self.data_path(seq);
        let written = (|| {
            let mut from = src.try_clone()?;
            from.seek(SeekFrom::Start(0))?;
            let mut to = File::create(&data)?;
            // copy_file_range underneath: no bytes through this process.
            let copied = io::copy(&mut io::Read::take(&mut from, size), &mut to)?;
            if copied != size {
                return Err(io::Error::other(format!(
                    "the staged file has {copied} of its {size} bytes"
                )));
            }
            to.sync_all()?;
            let rec = Record {
                seq,
                path: path.to_string(),
                mode,
                mtime_ns,
                size,
                journaled_ns: dos_protocol::now_ns(),
            };
            let tmp = self.dir.join(format!("{seq:016}.json.tmp"));
            let mut f = File::create(&tmp)?;
            f.write_all(&serde_json::to_vec(&rec).map_err(io::Error::other)?)?;
            f.sync_all()?;
            fs::rename(&tmp, self.record_path(seq))?;
            sync_dir(&self.dir)?;
            Ok(rec)
        })();
        match written {
            Ok(rec) => {
                self.lock().insert(seq, rec.clone());
                Ok(rec)
            }
            Err(e) => {
                let _ = fs::remove_file(&data);
                let _ = fs::remove_file(self.dir.join(format!("{seq:016}.json.tmp")));
                Err(e)
            }
        }
    }

    /// Removes a record (uploaded, or its file deleted), durably. Blocking.
    pub fn remove(&self, seq: u64) -> io::Result<()> {
        match fs::remove_file(self.record_path(seq)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        sync_dir(&self.dir)?;
        match fs::remove_file(self.data_path(seq)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.lock().remove(&seq);
        Ok(())
    }

    /// Whether `seq` is still waiting.
    pub fn contains(&self, seq: u64) -> bool {
        self.lock().contains_key(&seq)
    }

    /// Every record waiting, oldest first.
    pub fn pending(&self) -> Vec<Record> {
        self.lock().values().cloned().collect()
    }

    /// The records waiting for `path` (or, with `below`, for names under `path/` too).
    pub fn pending_for(&self, path: &str, below: bool) -> Vec<Record> {
        let prefix = format!("{path}/");
        self.lock()
            .values()
            .filter(|r| {
                r.path == path || (below && (path.is_empty() || r.path.starts_with(&prefix)))
            })
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
