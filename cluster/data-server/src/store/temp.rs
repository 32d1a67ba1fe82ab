//! Uploads in progress: `temp/<id>.json` (what is being uploaded) and `temp/<id>.part`
//! (header and records received so far). Writes are piece by piece; a commit appends the
//! index, fsyncs, renames into `objects/` and fsyncs the directory.
//!
//! A `.part` file is open only while a call uses it (an upload waiting for its next bytes
//! holds no descriptor), and a data server keeps at most [`MAX_TEMP_UPLOADS`] uploads at once:
//! a flood of `POST`s cannot use up its descriptors, and past the cap new uploads are refused
//! (503) until old ones finish or expire.

use std::collections::hash_map::Entry;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use dos_protocol::{ContentHash, PIECE_SIZE};
use serde::{Deserialize, Serialize};

use super::format::{self, CompressionPolicy, FormatError};
use super::{ShardStore, ShardStoreError, is_valid_shard, sync_dir};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TempMeta {
    hash: String,
    shard: u8,
    /// Raw length the shard will have once complete, when known at creation. An upload of
    /// unknown length is closed by its first short piece or by the length given at commit.
    length: Option<u64>,
}

/// Uploads in progress a data server keeps at most.
pub const MAX_TEMP_UPLOADS: usize = 10_000;

pub(super) struct TempUpload {
    meta: TempMeta,
    hash: ContentHash,
    /// The `.part` file, opened by each call that uses it.
    part: PathBuf,
    /// File offset of each record received.
    offsets: Vec<u64>,
    /// Raw bytes received.
    received: u64,
    /// File length (end of the last record).
    end: u64,
    policy: CompressionPolicy,
}

use dos_protocol::shard::{TempStatus, UNKNOWN_CONTENT, valid_temp_id as valid_id};

impl TempUpload {
    /// The `.part` file, open for this call.
    fn open(&self) -> io::Result<File> {
        OpenOptions::new().read(true).write(true).open(&self.part)
    }
}

impl ShardStore {
    fn temp_path(&self, id: &str, ext: &str) -> PathBuf {
        self.root.join("temp").join(format!("{id}.{ext}"))
    }

    /// Starts an upload of shard `shard` of `hash`, `length` raw bytes long.
    pub fn create_temp(
        &self,
        hash: &ContentHash,
        shard: u8,
        length: Option<u64>,
    ) -> Result<String, ShardStoreError> {
        if !is_valid_shard(shard) {
            return Err(ShardStoreError::BadRequest(format!(
                "no shard index {shard}"
            )));
        }
        if self
            .temps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            >= MAX_TEMP_UPLOADS
        {
            return Err(ShardStoreError::Busy(format!(
                "{MAX_TEMP_UPLOADS} uploads are in progress here; retry once some finish"
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let meta = TempMeta {
            hash: hash.to_hex(),
            shard,
            length,
        };
        let part = self.temp_path(&id, "part");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&part)?;
        format::write_header(&mut file, hash, shard)?;
        drop(file);
        let json = serde_json::to_vec(&meta)
            .map_err(|e| ShardStoreError::BadRequest(format!("temp metadata: {e}")))?;
        fs::write(self.temp_path(&id, "json"), json)?;
        let upload = TempUpload {
            meta,
            hash: *hash,
            part,
            offsets: Vec::new(),
            received: 0,
            end: format::HEADER_LEN,
            policy: CompressionPolicy::default(),
        };
        self.temps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), Arc::new(Mutex::new(upload)));
        Ok(id)
    }

    /// The upload `id`, loaded from disk if this process has not seen it yet.
    fn temp(&self, id: &str) -> Result<Arc<Mutex<TempUpload>>, ShardStoreError> {
        let not_found = || ShardStoreError::NotFound(format!("upload {id}"));
        if !valid_id(id) {
            return Err(not_found());
        }
        let mut temps = self.temps.lock().unwrap_or_else(PoisonError::into_inner);
        match temps.entry(id.to_string()) {
            Entry::Occupied(e) => Ok(e.get().clone()),
            Entry::Vacant(v) => {
                let json = match fs::read(self.temp_path(id, "json")) {
                    Ok(j) => j,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
                    Err(e) => return Err(e.into()),
                };
                let upload = self.load_temp(id, &json)?;
                Ok(v.insert(Arc::new(Mutex::new(upload))).clone())
            }
        }
    }

    /// Rebuilds an upload's state from its files after a restart. A torn last record is cut.
    fn load_temp(&self, id: &str, json: &[u8]) -> Result<TempUpload, ShardStoreError> {
        let bad = |m: &str| ShardStoreError::Corrupt(format!("upload {id}: {m}"));
        let meta: TempMeta = serde_json::from_slice(json).map_err(|_| bad("bad metadata"))?;
        let hash = ContentHash::from_hex(&meta.hash).map_err(|_| bad("bad hash"))?;
        let part = self.temp_path(id, "part");
        let mut file = OpenOptions::new().read(true).write(true).open(&part)?;
        let (h, s) = format::read_header(&mut file)?;
        if h != hash || s != meta.shard {
            return Err(bad("header does not match metadata"));
        }
        let len = file.seek(SeekFrom::End(0))?;
        let mut pos = format::HEADER_LEN;
        file.seek(SeekFrom::Start(pos))?;
        let mut offsets = Vec::new();
        let mut received = 0u64;
        while pos < len {
            match format::skip_record(&mut file) {
                Ok(raw) => {
                    let next = file.stream_position()?;
                    if next > len {
                        break;
                    }
                    offsets.push(pos);
                    received += raw as u64;
                    pos = next;
                }
                Err(FormatError::Io(e)) => return Err(e.into()),
                Err(FormatError::Corrupt(_)) => break,
            }
        }
        file.set_len(pos)?;
        Ok(TempUpload {
            meta,
            hash,
            part,
            offsets,
            received,
            end: pos,
            policy: CompressionPolicy::default(),
        })
    }

    pub fn temp_status(&self, id: &str) -> Result<TempStatus, ShardStoreError> {
        let t = self.temp(id)?;
        let t = t.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(TempStatus {
            received: t.received,
            length: t.meta.length,
        })
    }

    /// Writes `piece` at raw offset `offset` of upload `id`. The offset must be a piece
    /// boundary no later than what was received; an earlier one first drops what follows it
    /// (so a retried piece replaces a torn one). A piece must be whole unless it ends the shard.
    pub fn write_piece(
        &self,
        id: &str,
        offset: u64,
        piece: &[u8],
    ) -> Result<TempStatus, ShardStoreError> {
        let t = self.temp(id)?;
        let mut t = t.lock().unwrap_or_else(PoisonError::into_inner);
        if offset > t.received || !offset.is_multiple_of(PIECE_SIZE as u64) {
            return Err(ShardStoreError::OffsetMismatch {
                offset,
                length: t.received,
            });
        }
        let end = offset + piece.len() as u64;
        if let Some(length) = t.meta.length
            && end > length
        {
            return Err(ShardStoreError::BadRequest(format!(
                "write ends at {end}, past the declared length {length}"
            )));
        }
        if piece.is_empty()
            || (piece.len() != PIECE_SIZE && t.meta.length.is_some_and(|l| end != l))
        {
            return Err(ShardStoreError::BadRequest(
                "a piece must be whole unless it ends the shard".into(),
            ));
        }
        if t.meta.length.is_none()
            && !t.received.is_multiple_of(PIECE_SIZE as u64)
            && offset == t.received
        {
            return Err(ShardStoreError::BadRequest(
                "the upload already ended with a short piece".into(),
            ));
        }
        let file = t.open()?;
        if offset < t.received {
            let keep = (offset / PIECE_SIZE as u64) as usize;
            let cut = t.offsets[keep];
            file.set_len(cut)?;
            t.offsets.truncate(keep);
            t.end = cut;
            t.received = offset;
        }
        let record = format::encode_record_parts(piece, &mut t.policy);
        let at = t.end;
        // Header and payload written where they go, the payload not copied into a buffer.
        file.write_all_at(&record.header, at)?;
        file.write_all_at(&record.payload, at + format::RECORD_HEADER_LEN as u64)?;
        t.offsets.push(at);
        t.end = at + record.len() as u64;
        t.received = end;
        Ok(TempStatus {
            received: t.received,
            length: t.meta.length,
        })
    }

    /// Verified raw bytes of piece `k` of an upload in progress.
    pub fn read_temp_piece(&self, id: &str, k: usize) -> Result<Vec<u8>, ShardStoreError> {
        let t = self.temp(id)?;
        let t = t.lock().unwrap_or_else(PoisonError::into_inner);
        let offset = *t
            .offsets
            .get(k)
            .ok_or_else(|| ShardStoreError::BadRequest(format!("piece {k} not received")))?;
        let mut file = t.open()?;
        file.seek(SeekFrom::Start(offset))?;
        Ok(format::read_record(&mut file)?)
    }

    /// Makes upload `id` a committed shard of `hash` (the hash it was created under, or any
    /// hash for an upload created under [`UNKNOWN_CONTENT`]; `None`: the one it was created
    /// under), durably: index appended, file fsynced, renamed into `objects/`, directory
    /// fsynced. Only then is the shard located.
    pub fn commit(
        &self,
        id: &str,
        length: u64,
        hash: Option<ContentHash>,
    ) -> Result<(), ShardStoreError> {
        let t = self.temp(id)?;
        let mut t = t.lock().unwrap_or_else(PoisonError::into_inner);
        if t.received != length || t.meta.length.is_some_and(|l| l != length) {
            return Err(ShardStoreError::BadRequest(format!(
                "upload has {} bytes, commit asks for {length}",
                t.received
            )));
        }
        let hash = hash.unwrap_or(t.hash);
        if hash == UNKNOWN_CONTENT || (hash != t.hash && t.hash != UNKNOWN_CONTENT) {
            return Err(ShardStoreError::BadRequest(format!(
                "upload {id} cannot be committed as content {hash}"
            )));
        }
        let mut file = t.open()?;
        if hash != t.hash {
            // Streamed content: its hash is known now; the header says it from here on.
            format::set_header_hash(&file, &hash)?;
            t.hash = hash;
        }
        let at = t.end;
        file.seek(SeekFrom::Start(at))?;
        let (offsets, received) = (t.offsets.clone(), t.received);
        format::write_index(&mut file, &offsets, received)?;
        file.sync_all()?;
        drop(file);
        let dest = self.shard_path(&t.hash, t.meta.shard);
        let fan = dest
            .parent()
            .map(PathBuf::from)
            .ok_or_else(|| ShardStoreError::BadRequest("bad shard path".into()))?;
        fs::create_dir_all(&fan)?;
        fs::rename(self.temp_path(id, "part"), &dest)?;
        sync_dir(&fan)?;
        self.index_add(t.hash, t.meta.shard);
        drop(t);
        self.forget_temp(id);
        self.count(|c| &c.written);
        Ok(())
    }

    /// Abandons upload `id`.
    pub fn abort(&self, id: &str) -> Result<(), ShardStoreError> {
        if !valid_id(id) {
            return Err(ShardStoreError::NotFound(format!("upload {id}")));
        }
        self.forget_temp(id);
        remove_if_exists(&self.temp_path(id, "part"))?;
        Ok(())
    }

    fn forget_temp(&self, id: &str) {
        self.temps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        if let Err(e) = remove_if_exists(&self.temp_path(id, "json")) {
            tracing::warn!(id, error = %e, "could not remove temp metadata");
        }
    }
}

fn remove_if_exists(path: &std::path::Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Deletes uploads whose files were not modified for `ttl`.
pub(super) fn expire(store: &ShardStore, ttl: Duration) -> io::Result<usize> {
    let now = SystemTime::now();
    let mut removed = 0;
    for entry in fs::read_dir(store.root.join("temp"))? {
        let path = entry?.path();
        let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        let modified = path.metadata().and_then(|m| m.modified()).unwrap_or(now);
        let age = now.duration_since(modified).unwrap_or_default();
        // An upload is live while either of its files is fresh.
        let fresh = |ext| {
            store
                .temp_path(id, ext)
                .metadata()
                .and_then(|m| m.modified())
                .map(|m| now.duration_since(m).unwrap_or_default() < ttl)
                .unwrap_or(false)
        };
        if age >= ttl && !fresh("part") && !fresh("json") {
            store
                .temps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(id);
            remove_if_exists(&path)?;
            removed += 1;
            tracing::info!(path = %path.display(), "expired temp file removed");
        }
    }
    Ok(removed)
}
