//! The shard file format.
//!
//! ```text
//! header   64 B   magic "DOSSHRD1" | format u32 | shard u32 | piece size u32 | 12 B zero
//!                 | object hash 32 B
//! record*         stored len u32 | raw len u32 | flags u32 | crc32c(raw) u32 | payload
//! index           one u64 file offset per record (committed files only)
//! trailer  32 B   pieces u64 | raw length u64 | crc32c(index) u32 | 4 B zero | magic "DOSSEND1"
//! ```
//!
//! One record holds one piece (`PIECE_SIZE` raw bytes, the last may be shorter), lz4-compressed
//! when that saves at least 1/8. The CRC covers the raw bytes, so every byte served is checked,
//! and the index lets a read start at any piece without touching the ones before it.

use std::io::{self, Read, Seek, SeekFrom, Write};

use dos_protocol::{ContentHash, PIECE_SIZE};

pub const HEADER_LEN: u64 = 64;
pub const RECORD_HEADER_LEN: usize = 16;
pub const TRAILER_LEN: u64 = 32;
const MAGIC: &[u8; 8] = b"DOSSHRD1";
const END_MAGIC: &[u8; 8] = b"DOSSEND1";
const FORMAT: u32 = 1;
const FLAG_LZ4: u32 = 1;
/// Largest payload a valid record can have (lz4's worst case is a little over the input).
const MAX_STORED: usize = PIECE_SIZE + PIECE_SIZE / 64 + 64;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// The bytes on disk are not what was written: quarantine, never serve.
    #[error("corrupt shard: {0}")]
    Corrupt(String),
}

fn corrupt(what: impl Into<String>) -> FormatError {
    FormatError::Corrupt(what.into())
}

pub fn write_header(out: &mut impl Write, hash: &ContentHash, shard: u8) -> io::Result<()> {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&FORMAT.to_le_bytes());
    h[12..16].copy_from_slice(&u32::from(shard).to_le_bytes());
    h[16..20].copy_from_slice(&(PIECE_SIZE as u32).to_le_bytes());
    h[32..64].copy_from_slice(&hash.0);
    out.write_all(&h)
}

/// Rewrites the content hash in the header of `file` (a shard streamed before its hash was
/// known).
pub fn set_header_hash(file: &std::fs::File, hash: &ContentHash) -> io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(file, &hash.0, 32)
}

pub fn read_header(input: &mut impl Read) -> Result<(ContentHash, u8), FormatError> {
    let mut h = [0u8; HEADER_LEN as usize];
    input.read_exact(&mut h).map_err(short_as_corrupt)?;
    if &h[..8] != MAGIC {
        return Err(corrupt("bad magic"));
    }
    if u32::from_le_bytes([h[8], h[9], h[10], h[11]]) != FORMAT {
        return Err(corrupt("unknown format version"));
    }
    if u32::from_le_bytes([h[16], h[17], h[18], h[19]]) != PIECE_SIZE as u32 {
        return Err(corrupt("piece size differs from this build's"));
    }
    let shard = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    let shard = u8::try_from(shard).map_err(|_| corrupt("bad shard index"))?;
    let mut hash = [0u8; 32];
    hash.copy_from_slice(&h[32..64]);
    Ok((ContentHash(hash), shard))
}

fn short_as_corrupt(e: io::Error) -> FormatError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        corrupt("file is shorter than its structure says")
    } else {
        FormatError::Io(e)
    }
}

/// Whether to try compressing the next piece: after a piece that did not compress, the
/// next 1, 2, 4 … 64 pieces are stored raw without trying, so incompressible data costs
/// almost no CPU.
#[derive(Debug, Default, Clone)]
pub struct CompressionPolicy {
    skip: u32,
    backoff: u32,
}

impl CompressionPolicy {
    fn should_try(&mut self) -> bool {
        if self.skip > 0 {
            self.skip -= 1;
            false
        } else {
            true
        }
    }

    fn record(&mut self, compressed: bool) {
        if compressed {
            self.backoff = 0;
        } else {
            self.backoff = (self.backoff * 2).clamp(1, 64);
            self.skip = self.backoff;
        }
    }
}

/// One piece encoded as a record: its header, and its payload (the compressed bytes, or the
/// raw piece itself, uncopied).
pub struct Record<'a> {
    pub header: [u8; RECORD_HEADER_LEN],
    pub payload: std::borrow::Cow<'a, [u8]>,
}

impl Record<'_> {
    pub fn len(&self) -> usize {
        RECORD_HEADER_LEN + self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Encodes one piece as a record; returns the bytes to append.
pub fn encode_record(raw: &[u8], policy: &mut CompressionPolicy) -> Vec<u8> {
    let rec = encode_record_parts(raw, policy);
    let mut out = Vec::with_capacity(rec.len());
    out.extend_from_slice(&rec.header);
    out.extend_from_slice(&rec.payload);
    out
}

/// Encodes one piece as a record without copying an incompressible piece.
pub fn encode_record_parts<'a>(raw: &'a [u8], policy: &mut CompressionPolicy) -> Record<'a> {
    let crc = crc32c::crc32c(raw);
    let mut compressed = None;
    if raw.len() >= 4096 && policy.should_try() {
        let c = lz4_flex::block::compress(raw);
        let worth = c.len() <= raw.len() - raw.len() / 8;
        policy.record(worth);
        if worth {
            compressed = Some(c);
        }
    }
    let (flags, payload) = match compressed {
        Some(c) => (FLAG_LZ4, std::borrow::Cow::Owned(c)),
        None => (0, std::borrow::Cow::Borrowed(raw)),
    };
    let mut header = [0u8; RECORD_HEADER_LEN];
    header[0..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..8].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    header[8..12].copy_from_slice(&flags.to_le_bytes());
    header[12..16].copy_from_slice(&crc.to_le_bytes());
    Record { header, payload }
}

/// Reads the record at the reader's position and returns its verified raw bytes.
pub fn read_record(input: &mut impl Read) -> Result<Vec<u8>, FormatError> {
    let mut h = [0u8; RECORD_HEADER_LEN];
    input.read_exact(&mut h).map_err(short_as_corrupt)?;
    let stored = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let raw_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let flags = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let crc = u32::from_le_bytes([h[12], h[13], h[14], h[15]]);
    if stored > MAX_STORED || raw_len > PIECE_SIZE || flags & !FLAG_LZ4 != 0 {
        return Err(corrupt("bad record header"));
    }
    // Read straight into spare capacity (no zero-filling of a buffer about to be overwritten).
    let mut payload = Vec::with_capacity(stored);
    (&mut *input)
        .take(stored as u64)
        .read_to_end(&mut payload)
        .map_err(short_as_corrupt)?;
    if payload.len() != stored {
        return Err(corrupt("file is shorter than its structure says"));
    }
    let raw = if flags & FLAG_LZ4 != 0 {
        let raw = lz4_flex::block::decompress(&payload, raw_len)
            .map_err(|_| corrupt("lz4 payload does not decompress"))?;
        if raw.len() != raw_len {
            return Err(corrupt("lz4 payload has the wrong length"));
        }
        raw
    } else {
        if stored != raw_len {
            return Err(corrupt("raw record length mismatch"));
        }
        payload
    };
    if crc32c::crc32c(&raw) != crc {
        return Err(corrupt("piece checksum mismatch"));
    }
    Ok(raw)
}

/// Reads only the header of the record at the reader's position and skips its payload;
/// returns its raw length. Used to rebuild the state of a temp file after a restart.
pub fn skip_record(input: &mut (impl Read + Seek)) -> Result<usize, FormatError> {
    let mut h = [0u8; RECORD_HEADER_LEN];
    input.read_exact(&mut h).map_err(short_as_corrupt)?;
    let stored = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let raw_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if stored > MAX_STORED || raw_len > PIECE_SIZE {
        return Err(corrupt("bad record header"));
    }
    input.seek(SeekFrom::Current(stored as i64))?;
    Ok(raw_len)
}

/// Appends the index and trailer that make a temp file a committed shard.
pub fn write_index(out: &mut impl Write, offsets: &[u64], raw_len: u64) -> io::Result<()> {
    let mut index = Vec::with_capacity(offsets.len() * 8);
    for o in offsets {
        index.extend_from_slice(&o.to_le_bytes());
    }
    out.write_all(&index)?;
    let mut t = [0u8; TRAILER_LEN as usize];
    t[..8].copy_from_slice(&(offsets.len() as u64).to_le_bytes());
    t[8..16].copy_from_slice(&raw_len.to_le_bytes());
    t[16..20].copy_from_slice(&crc32c::crc32c(&index).to_le_bytes());
    t[24..32].copy_from_slice(END_MAGIC);
    out.write_all(&t)
}

/// The index of a committed shard file.
#[derive(Debug, Clone)]
pub struct ShardIndex {
    pub offsets: Vec<u64>,
    pub raw_len: u64,
}

pub fn read_index(file: &mut (impl Read + Seek)) -> Result<ShardIndex, FormatError> {
    let len = file.seek(SeekFrom::End(0))?;
    if len < HEADER_LEN + TRAILER_LEN {
        return Err(corrupt("file too short for a shard"));
    }
    file.seek(SeekFrom::End(-(TRAILER_LEN as i64)))?;
    let mut t = [0u8; TRAILER_LEN as usize];
    file.read_exact(&mut t).map_err(short_as_corrupt)?;
    if &t[24..32] != END_MAGIC {
        return Err(corrupt("bad trailer magic"));
    }
    let pieces = u64::from_le_bytes(t[..8].try_into().map_err(|_| corrupt("trailer"))?);
    let raw_len = u64::from_le_bytes(t[8..16].try_into().map_err(|_| corrupt("trailer"))?);
    let crc = u32::from_le_bytes(t[16..20].try_into().map_err(|_| corrupt("trailer"))?);
    let index_len = pieces
        .checked_mul(8)
        .filter(|l| *l <= len - HEADER_LEN - TRAILER_LEN)
        .ok_or_else(|| corrupt("index larger than the file"))?;
    if raw_len.div_ceil(PIECE_SIZE as u64) != pieces {
        return Err(corrupt("piece count does not match length"));
    }
    file.seek(SeekFrom::Start(len - TRAILER_LEN - index_len))?;
    let mut index = vec![0u8; index_len as usize];
    file.read_exact(&mut index).map_err(short_as_corrupt)?;
    if crc32c::crc32c(&index) != crc {
        return Err(corrupt("index checksum mismatch"));
    }
    let offsets = index
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect();
    Ok(ShardIndex { offsets, raw_len })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn record_round_trip_and_corruption() {
        let mut policy = CompressionPolicy::default();
        let zeros = vec![0u8; PIECE_SIZE];
        let rec = encode_record(&zeros, &mut policy);
        assert!(rec.len() < 10_000, "zeros compress");
        assert_eq!(read_record(&mut Cursor::new(&rec)).unwrap(), zeros);
        let mut bad = rec.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            read_record(&mut Cursor::new(&bad)),
            Err(FormatError::Corrupt(_))
        ));
        let random: Vec<u8> = (0..PIECE_SIZE as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let rec = encode_record(&random, &mut policy);
        assert_eq!(read_record(&mut Cursor::new(&rec)).unwrap(), random);
        let mut bad = rec;
        bad[100] ^= 0x40;
        assert!(read_record(&mut Cursor::new(&bad)).is_err());
    }

    #[test]
    fn policy_backs_off() {
        let mut p = CompressionPolicy::default();
        assert!(p.should_try());
        p.record(false);
        assert!(!p.should_try());
        assert!(p.should_try());
        p.record(false);
        assert!(!p.should_try() && !p.should_try());
        assert!(p.should_try());
        p.record(true);
        assert!(p.should_try());
    }
}
