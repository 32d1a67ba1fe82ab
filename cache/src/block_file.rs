//! The on-disk format of one cached block: where its file lives and what its header says.
//!
//! A block file is `blocks/<first 2 hex chars>/<64 hex chars of the key>.<block index>` and holds
//! a fixed [`HEADER_LEN`]-byte header followed by the payload. All integers are little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `DOSB` |
//! | 2 | format version (1) |
//! | 2 | reserved, zero |
//! | 8 | block size of the cache that wrote it |
//! | 32 | content key |
//! | 8 | block index |
//! | 8 | payload length |
//! | 4 | crc32c of the payload |
//!
//! Every field is checked against what the reader asked for, so a renamed, truncated, torn or
//! bit-flipped file is rejected instead of served. Files are written to a temporary name in the
//! same directory and renamed into place, so a reader never sees a half-written block.

use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use tempfile::NamedTempFile;

use crate::ContentKey;

pub(crate) const HEADER_LEN: usize = 68;
const MAGIC: [u8; 4] = *b"DOSB";
const VERSION: u16 = 1;
/// Prefix of files being written; any left behind by a crash are removed by the next `open`.
const TEMP_PREFIX: &str = ".tmp-";

/// One block of one object.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct BlockId {
    pub(crate) key: ContentKey,
    pub(crate) block: u64,
}

impl BlockId {
    /// Name of the directory, under `blocks/`, that holds this block's file.
    pub(crate) fn shard(&self) -> String {
        hex::encode(&self.key[..1])
    }

    /// Path of this block's file relative to `blocks/`.
    pub(crate) fn relative_path(&self) -> PathBuf {
        let name = format!("{}.{}", hex::encode(self.key), self.block);
        [self.shard(), name].iter().collect()
    }

    /// The block named by file `name` in shard directory `shard`, if that is exactly the
    /// canonical name [`BlockId::relative_path`] would give it.
    pub(crate) fn from_file_name(shard: &str, name: &str) -> Option<Self> {
        let (hex_key, block) = name.split_once('.')?;
        let mut key = [0u8; 32];
        hex::decode_to_slice(hex_key, &mut key).ok()?;
        let id = Self {
            key,
            block: block.parse().ok()?,
        };
        (id.relative_path() == Path::new(shard).join(name)).then_some(id)
    }
}

/// Why a block file was rejected.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Corruption {
    #[error("file is shorter than a block header")]
    Truncated,
    #[error("bad magic number")]
    BadMagic,
    #[error("unsupported format version {0}")]
    Version(u16),
    #[error("written with block size {found}, the cache uses {expected}")]
    BlockSize { found: u64, expected: u64 },
    #[error("header names another block")]
    WrongBlock,
    #[error("header says {header} payload bytes, file holds {file}")]
    Length { header: u64, file: u64 },
    #[error("payload checksum mismatch")]
    Checksum,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("block file is missing")]
    Missing,
    #[error("corrupt block file: {0}")]
    Corrupt(#[from] Corruption),
    #[error(transparent)]
    Io(io::Error),
}

impl From<io::Error> for ReadError {
    fn from(err: io::Error) -> Self {
        match err.kind() {
            io::ErrorKind::NotFound => Self::Missing,
            io::ErrorKind::UnexpectedEof => Self::Corrupt(Corruption::Truncated),
            _ => Self::Io(err),
        }
    }
}

struct Header {
    block_size: u64,
    id: BlockId,
    len: u64,
    crc: u32,
}

impl Header {
    fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        let fields: [&[u8]; 8] = [
            &MAGIC,
            &VERSION.to_le_bytes(),
            &0u16.to_le_bytes(),
            &self.block_size.to_le_bytes(),
            &self.id.key,
            &self.id.block.to_le_bytes(),
            &self.len.to_le_bytes(),
            &self.crc.to_le_bytes(),
        ];
        let mut pos = 0;
        for field in fields {
            out[pos..pos + field.len()].copy_from_slice(field);
            pos += field.len();
        }
        out
    }

    fn decode(buf: &[u8; HEADER_LEN]) -> Result<Self, Corruption> {
        let mut reader = FieldReader { buf, pos: 0 };
        if reader.take::<4>() != MAGIC {
            return Err(Corruption::BadMagic);
        }
        let version = u16::from_le_bytes(reader.take());
        let reserved = u16::from_le_bytes(reader.take());
        if version != VERSION || reserved != 0 {
            return Err(Corruption::Version(version));
        }
        Ok(Self {
            block_size: u64::from_le_bytes(reader.take()),
            id: BlockId {
                key: reader.take(),
                block: u64::from_le_bytes(reader.take()),
            },
            len: u64::from_le_bytes(reader.take()),
            crc: u32::from_le_bytes(reader.take()),
        })
    }

    /// Checks everything but the checksum against the expected block and the file's length.
    fn check(&self, id: &BlockId, block_size: u64, file_len: u64) -> Result<(), Corruption> {
        if self.block_size != block_size {
            return Err(Corruption::BlockSize {
                found: self.block_size,
                expected: block_size,
            });
        }
        if self.id != *id {
            return Err(Corruption::WrongBlock);
        }
        let payload_len = file_len.saturating_sub(HEADER_LEN as u64);
        if self.len != payload_len || self.len > block_size {
            return Err(Corruption::Length {
                header: self.len,
                file: payload_len,
            });
        }
        Ok(())
    }
}

struct FieldReader<'a> {
    buf: &'a [u8; HEADER_LEN],
    pos: usize,
}

impl FieldReader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        out.copy_from_slice(&self.buf[self.pos..self.pos + N]);
        self.pos += N;
        out
    }
}

/// Total file size of a block with a `payload_len`-byte payload.
pub(crate) fn file_len(payload_len: usize) -> u64 {
    (HEADER_LEN + payload_len) as u64
}

/// Reads and fully validates the block file at `path`, then bumps its mtime so that a restart
/// sees it as recently used. Returns the payload.
pub(crate) fn read(path: &Path, id: &BlockId, block_size: u64) -> Result<Bytes, ReadError> {
    let mut file = File::open(path)?;
    let file_len = file.metadata()?.len();
    let header = read_header(&mut file)?;
    header.check(id, block_size, file_len)?;
    // `check` bounded the length by the block size, which is a `usize`.
    let len = usize::try_from(header.len).map_err(|_| Corruption::Length {
        header: header.len,
        file: file_len,
    })?;
    let mut payload = vec![0u8; len];
    file.read_exact(&mut payload)?;
    if crc32c::crc32c(&payload) != header.crc {
        return Err(Corruption::Checksum.into());
    }
    if let Err(err) = file.set_modified(SystemTime::now()) {
        tracing::debug!(path = %path.display(), error = %err, "could not update block file mtime");
    }
    Ok(Bytes::from(payload))
}

/// Validates the header of the block file at `path` against the block its name claims, without
/// reading the payload (the checksum is verified on every read instead). Returns the file's
/// metadata.
pub(crate) fn check_header(
    path: &Path,
    id: &BlockId,
    block_size: u64,
) -> Result<Metadata, ReadError> {
    let mut file = File::open(path)?;
    let metadata = file.metadata()?;
    read_header(&mut file)?.check(id, block_size, metadata.len())?;
    Ok(metadata)
}

fn read_header(file: &mut File) -> Result<Header, ReadError> {
    let mut buf = [0u8; HEADER_LEN];
    file.read_exact(&mut buf)?;
    Ok(Header::decode(&buf)?)
}

/// Writes the block to a new temporary file in `dir` (which must exist). The caller renames it
/// into place with [`NamedTempFile::persist`]; dropping it instead removes it.
pub(crate) fn write_temp(
    dir: &Path,
    id: &BlockId,
    block_size: u64,
    payload: &[u8],
) -> io::Result<NamedTempFile> {
    let header = Header {
        block_size,
        id: *id,
        len: payload.len() as u64,
        crc: crc32c::crc32c(payload),
    };
    let mut file = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    file.write_all(&header.encode())?;
    file.write_all(payload)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(block: u64) -> BlockId {
        BlockId {
            key: [0xab; 32],
            block,
        }
    }

    #[test]
    fn file_names_round_trip_and_reject_non_canonical_names() {
        let id = id(17);
        let path = id.relative_path();
        let shard = path.parent().and_then(Path::to_str).unwrap();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap();
        assert_eq!(shard, "ab");
        assert_eq!(name, format!("{}.17", "ab".repeat(32)));
        assert_eq!(BlockId::from_file_name(shard, name), Some(id));

        let upper = format!("{}.17", "AB".repeat(32));
        for (shard, name) in [
            ("cd", name),
            ("ab", &format!("{}.+17", "ab".repeat(32))),
            ("ab", &format!("{}.017", "ab".repeat(32))),
            ("ab", &upper),
            ("ab", &format!("{}.17", "ab".repeat(31))),
            ("ab", ".tmp-abc"),
            ("ab", "ab"),
        ] {
            assert_eq!(BlockId::from_file_name(shard, name), None, "{shard}/{name}");
        }
    }

    #[test]
    fn header_round_trips() {
        let header = Header {
            block_size: 1 << 20,
            id: id(3),
            len: 12345,
            crc: 0xdead_beef,
        };
        let decoded = Header::decode(&header.encode()).unwrap();
        assert_eq!(decoded.block_size, header.block_size);
        assert_eq!(decoded.id, header.id);
        assert_eq!(decoded.len, header.len);
        assert_eq!(decoded.crc, header.crc);
    }

    #[test]
    fn write_then_read_validates_every_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("block");
        write_temp(dir.path(), &id(1), 64, b"hello")
            .unwrap()
            .persist(&path)
            .unwrap();

        assert_eq!(read(&path, &id(1), 64).unwrap(), &b"hello"[..]);
        assert_eq!(check_header(&path, &id(1), 64).unwrap().len(), file_len(5));
        assert!(matches!(
            read(&path, &id(2), 64),
            Err(ReadError::Corrupt(Corruption::WrongBlock))
        ));
        assert!(matches!(
            read(&path, &id(1), 128),
            Err(ReadError::Corrupt(Corruption::BlockSize { .. }))
        ));
        assert!(matches!(
            read(&dir.path().join("absent"), &id(1), 64),
            Err(ReadError::Missing)
        ));

        let mut bytes = std::fs::read(&path).unwrap();
        bytes.push(0);
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read(&path, &id(1), 64),
            Err(ReadError::Corrupt(Corruption::Length { .. }))
        ));
        std::fs::write(&path, &bytes[..10]).unwrap();
        assert!(matches!(
            read(&path, &id(1), 64),
            Err(ReadError::Corrupt(Corruption::Truncated))
        ));
        bytes.pop();
        *bytes.last_mut().unwrap() ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read(&path, &id(1), 64),
            Err(ReadError::Corrupt(Corruption::Checksum))
        ));
        bytes[0] = b'X';
        std::fs::write(&path, &bytes).unwrap();
        assert!(matches!(
            read(&path, &id(1), 64),
            Err(ReadError::Corrupt(Corruption::BadMagic))
        ));
    }
}
