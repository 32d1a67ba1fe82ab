//! Whole objects on disk: one file holding an object's content exactly as it is, so that it can
//! back a FUSE passthrough open, next to a small file of block checksums.
//!
//! `objects/<64 hex chars of the key>.obj` is the content, written block by block in place
//! (created at its full length, so blocks not yet written are holes). Which blocks are in it,
//! and their crc32c, is kept in memory while it fills; once every block is there,
//! `objects/<key>.sum` is written (to a temporary name, then renamed) and only from then on does
//! the object survive a restart. A `.obj` without a valid `.sum` is debris.
//!
//! `.sum` holds a [`SUM_HEADER_LEN`]-byte header then one crc32c per block, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `DOSO` |
//! | 2 | format version (1) |
//! | 2 | reserved, zero |
//! | 8 | block size of the cache that wrote it |
//! | 32 | content key |
//! | 8 | object size |
//! | 4 × blocks | crc32c of each block |
//!
//! Every block read from the file is checked against its crc; a whole-file open for passthrough
//! checks every block before the file is handed out.

use std::fs::{File, Metadata, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tempfile::NamedTempFile;

use crate::block_file::{Corruption, ReadError};
use crate::{BlockBytes, ContentKey};

pub(crate) const SUM_HEADER_LEN: usize = 56;
const MAGIC: [u8; 4] = *b"DOSO";
const VERSION: u16 = 1;
const TEMP_PREFIX: &str = ".tmp-";

/// An object's content file being filled, or complete.
pub(crate) struct ObjectFile {
    pub(crate) key: ContentKey,
    pub(crate) size: u64,
    block_size: u64,
    dir: PathBuf,
    file: File,
    state: Mutex<State>,
}

struct State {
    /// crc32c of each block that is in the file.
    crcs: Vec<Option<u32>>,
    missing: u64,
    /// The file's modification time and length when its bytes were last known to match
    /// `crcs` (written here with a running checksum, or read back and checked): an open that
    /// finds the file unchanged since hands it out without reading it all again.
    verified: Option<(std::time::SystemTime, u64)>,
}

/// Disk footprint of a complete object of `size` bytes: content plus checksum file.
pub(crate) fn footprint(size: u64, block_size: u64) -> u64 {
    size + SUM_HEADER_LEN as u64 + 4 * size.div_ceil(block_size)
}

fn hex_name(key: &ContentKey, ext: &str) -> String {
    format!("{}.{ext}", hex::encode(key))
}

/// The key named by `<hex>.sum` or `<hex>.obj`, with the extension.
pub(crate) fn parse_name(name: &str) -> Option<(ContentKey, &str)> {
    let (hex_key, ext) = name.split_once('.')?;
    if hex_key.len() != 64 || hex_key.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut key = [0u8; 32];
    hex::decode_to_slice(hex_key, &mut key).ok()?;
    matches!(ext, "obj" | "sum").then_some((key, ext))
}

impl ObjectFile {
    /// Creates (or truncates) the content file of `key` in `dir`, at its full length.
    pub(crate) fn create(
        dir: &Path,
        key: &ContentKey,
        size: u64,
        block_size: u64,
    ) -> io::Result<Self> {
        let path = dir.join(hex_name(key, "obj"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.set_len(size)?;
        let blocks = size.div_ceil(block_size);
        Ok(Self {
            key: *key,
            size,
            block_size,
            dir: dir.to_path_buf(),
            file,
            state: Mutex::new(State {
                crcs: vec![None; usize::try_from(blocks).unwrap_or(usize::MAX)],
                missing: blocks,
                verified: None,
            }),
        })
    }

    /// Opens the complete object `key` a previous run left in `dir`, checking its checksum
    /// file against the block size and the content file's length (block checksums are checked
    /// on reads). Returns it with the checksum file's metadata (its mtime is the last use).
    pub(crate) fn open_complete(
        dir: &Path,
        key: &ContentKey,
        block_size: u64,
    ) -> Result<(Self, Metadata), ReadError> {
        let sum_path = dir.join(hex_name(key, "sum"));
        let mut sum = File::open(&sum_path)?;
        let sum_meta = sum.metadata()?;
        let mut header = [0u8; SUM_HEADER_LEN];
        sum.read_exact(&mut header)?;
        if header[..4] != MAGIC {
            return Err(Corruption::BadMagic.into());
        }
        let version = u16::from_le_bytes([header[4], header[5]]);
        if version != VERSION || header[6..8] != [0, 0] {
            return Err(Corruption::Version(version).into());
        }
        let found_bs = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
        if found_bs != block_size {
            return Err(Corruption::BlockSize {
                found: found_bs,
                expected: block_size,
            }
            .into());
        }
        if header[16..48] != key[..] {
            return Err(Corruption::WrongBlock.into());
        }
        let size = u64::from_le_bytes(header[48..56].try_into().unwrap_or_default());
        let blocks = size.div_ceil(block_size);
        if sum_meta.len() != SUM_HEADER_LEN as u64 + 4 * blocks {
            return Err(Corruption::Length {
                header: size,
                file: sum_meta.len(),
            }
            .into());
        }
        let mut raw = Vec::new();
        sum.read_to_end(&mut raw)?;
        let crcs = raw
            .chunks_exact(4)
            .map(|c| Some(u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let path = dir.join(hex_name(key, "obj"));
        let file = File::open(&path)?;
        let len = file.metadata()?.len();
        if len != size {
            return Err(Corruption::Length {
                header: size,
                file: len,
            }
            .into());
        }
        Ok((
            Self {
                key: *key,
                size,
                block_size,
                dir: dir.to_path_buf(),
                file,
                state: Mutex::new(State {
                    crcs,
                    missing: 0,
                    verified: None,
                }),
            },
            sum_meta,
        ))
    }

    pub(crate) fn obj_path(&self) -> PathBuf {
        self.dir.join(hex_name(&self.key, "obj"))
    }

    pub(crate) fn sum_path(&self) -> PathBuf {
        self.dir.join(hex_name(&self.key, "sum"))
    }

    pub(crate) fn footprint(&self) -> u64 {
        footprint(self.size, self.block_size)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn block_len(&self, block: u64) -> u64 {
        (self.size - block * self.block_size).min(self.block_size)
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.lock().missing == 0
    }

    pub(crate) fn has(&self, block: u64) -> bool {
        self.crc(block).is_some()
    }

    fn crc(&self, block: u64) -> Option<u32> {
        let state = self.lock();
        usize::try_from(block)
            .ok()
            .and_then(|b| state.crcs.get(b).copied().flatten())
    }

    /// Writes block `block` in place, piece by piece. Returns whether this completed the
    /// object. Data of the wrong length for that block is refused (`InvalidInput`).
    pub(crate) fn write_block(&self, block: u64, data: &BlockBytes) -> io::Result<bool> {
        if block >= self.size.div_ceil(self.block_size)
            || data.len() as u64 != self.block_len(block)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "block does not fit the object",
            ));
        }
        if self.has(block) {
            return Ok(false);
        }
        let mut at = block * self.block_size;
        let mut crc = 0;
        for part in data.parts() {
            self.file.write_all_at(part, at)?;
            crc = crc32c::crc32c_append(crc, part);
            at += part.len() as u64;
        }
        let mut state = self.lock();
        let slot = &mut state.crcs[block as usize];
        if slot.is_some() {
            return Ok(false);
        }
        *slot = Some(crc);
        state.missing -= 1;
        let complete = state.missing == 0;
        if complete {
            // Every block was checksummed as it was written: the file is known good as it
            // stands now.
            state.verified = self
                .file
                .metadata()
                .and_then(|m| Ok((m.modified()?, m.len())))
                .ok();
        }
        Ok(complete)
    }

    /// Reads and checks block `block`; `Missing` when it is not in the file yet.
    pub(crate) fn read_block(&self, block: u64) -> Result<Bytes, ReadError> {
        let crc = self.crc(block).ok_or(ReadError::Missing)?;
        let mut data = vec![0u8; self.block_len(block) as usize];
        self.file
            .read_exact_at(&mut data, block * self.block_size)?;
        if crc32c::crc32c(&data) != crc {
            return Err(Corruption::Checksum.into());
        }
        Ok(Bytes::from(data))
    }

    /// Writes the checksum file of a complete object to a temporary name in its directory; the
    /// caller renames it into place with [`NamedTempFile::persist`] to [`Self::sum_path`].
    pub(crate) fn write_sum(&self) -> io::Result<NamedTempFile> {
        let mut out = Vec::with_capacity(SUM_HEADER_LEN + 4 * self.lock().crcs.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&self.size.to_le_bytes());
        for crc in &self.lock().crcs {
            let crc = crc.ok_or_else(|| io::Error::other("object is not complete"))?;
            out.extend_from_slice(&crc.to_le_bytes());
        }
        let mut file = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&self.dir)?;
        file.write_all(&out)?;
        Ok(file)
    }

    /// Opens the complete content file read-only after checking every block against its
    /// checksum (so a file handed out for passthrough holds exactly the object).
    pub(crate) fn open_verified(&self) -> Result<File, ReadError> {
        let (crcs, verified) = {
            let state = self.lock();
            if state.missing != 0 {
                return Err(ReadError::Missing);
            }
            (state.crcs.clone(), state.verified)
        };
        let mut file = File::open(self.obj_path())?;
        let meta = file.metadata()?;
        if meta.len() != self.size {
            return Err(Corruption::Truncated.into());
        }
        let identity = (meta.modified()?, meta.len());
        if verified == Some(identity) {
            // Unchanged since its bytes were last known to match their checksums.
            return Ok(file);
        }
        let mut buf = vec![0u8; self.block_size as usize];
        for (block, crc) in crcs.iter().enumerate() {
            let len = self.block_len(block as u64) as usize;
            file.read_exact(&mut buf[..len])?;
            if Some(crc32c::crc32c(&buf[..len])) != *crc {
                return Err(Corruption::Checksum.into());
            }
        }
        self.lock().verified = Some(identity);
        file.seek(std::io::SeekFrom::Start(0))?;
        Ok(file)
    }
}
