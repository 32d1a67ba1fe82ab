//! The data servers' interface: the types and paths API servers and data servers exchange,
//! defined once for both sides.
//!
//! | Request | Effect |
//! |---|---|
//! | `POST /temp?hash=HEX&shard=I[&length=N]` | starts an upload (length may be unknown): [`TempCreated`] |
//! | `GET /temp/ID` | [`TempStatus`] |
//! | `PATCH /temp/ID?offset=N` (body) | writes whole pieces from raw offset N; a trailing partial piece that does not end the shard is dropped: [`TempStatus`] |
//! | `GET /temp/ID/data` (Range) | verified raw bytes received so far |
//! | `PUT /temp/ID?length=N` | commits durably once exactly N raw bytes were received |
//! | `DELETE /temp/ID` | abandons |
//! | `GET /shards/HEX/I` (Range) | verified raw bytes of a committed shard |
//! | `DELETE /shards/HEX/I[?min_age_secs=S]` | moves the shard to `garbage/` (412 when written less than S seconds ago) |
//! | `POST /shards/HEX/I/verify` | reads the whole shard checking every checksum: [`Verified`], or 404 (missing, or corrupt and now quarantined) |
//! | `GET /shards?after=HEX.I&limit=N` | committed shards in order: `[`[`ShardEntry`]`]` |
//! | `GET /health` | `{"id": …}` |

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ContentHash;

/// Progress of a shard upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempStatus {
    /// Raw shard bytes received and written.
    pub received: u64,
    /// Raw length the shard will have, when known.
    pub length: Option<u64>,
}

/// One committed shard on a data server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub hash: ContentHash,
    pub shard: u8,
    /// Seconds since the shard was last written.
    pub age_secs: u64,
}

/// Answer to `POST /temp`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TempCreated {
    pub id: String,
}

/// Answer to `POST /shards/HEX/I/verify`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verified {
    /// Raw length of the shard, every piece checked.
    pub length: u64,
}

/// The largest shard a data server takes whole in one request (`PUT /shards/H/S`,
/// [`put_shard`](../../dos_transport/trait.ShardTransport.html)); longer shards are uploaded
/// through a temp upload, piece by piece.
pub const MAX_WHOLE_SHARD: usize = crate::PIECE_SIZE;

/// The hash a shard upload is created under when the content's hash is not known yet (an
/// object streamed while it is written): such an upload is committed under the hash given
/// at commit, which the API server computed from the bytes.
pub const UNKNOWN_CONTENT: ContentHash = ContentHash([0; 32]);

/// Whether `id` has the form of an upload id (32 hex digits): checked before it reaches a
/// file path.
pub fn valid_temp_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The request paths (with their query strings) of the interface.
pub mod paths {
    use super::*;

    pub fn create_temp(hash: &ContentHash, shard: u8, length: Option<u64>) -> String {
        match length {
            Some(l) => format!("/temp?hash={}&shard={shard}&length={l}", hash.to_hex()),
            None => format!("/temp?hash={}&shard={shard}", hash.to_hex()),
        }
    }

    /// `PUT /draining/true` or `/draining/false`.
    pub fn draining(draining: bool) -> String {
        format!("/draining/{draining}")
    }

    pub fn temp(id: &str) -> String {
        format!("/temp/{id}")
    }

    pub fn write_temp(id: &str, offset: u64) -> String {
        format!("/temp/{id}?offset={offset}")
    }

    pub fn commit_temp(id: &str, length: u64, hash: &ContentHash) -> String {
        format!("/temp/{id}?length={length}&hash={}", hash.to_hex())
    }

    pub fn temp_data(id: &str) -> String {
        format!("/temp/{id}/data")
    }

    pub fn shard(hash: &ContentHash, shard: u8) -> String {
        format!("/shards/{}/{shard}", hash.to_hex())
    }

    pub fn remove_shard(hash: &ContentHash, shard: u8, min_age: Option<Duration>) -> String {
        match min_age {
            Some(age) => format!(
                "/shards/{}/{shard}?min_age_secs={}",
                hash.to_hex(),
                age.as_secs()
            ),
            None => shard_path(hash, shard),
        }
    }

    fn shard_path(hash: &ContentHash, shard: u8) -> String {
        format!("/shards/{}/{shard}", hash.to_hex())
    }

    pub fn verify_shard(hash: &ContentHash, shard: u8) -> String {
        format!("/shards/{}/{shard}/verify", hash.to_hex())
    }

    pub fn list_shards(after: Option<(ContentHash, u8)>, limit: usize) -> String {
        match after {
            Some((hash, shard)) => format!("/shards?limit={limit}&after={}.{shard}", hash.to_hex()),
            None => format!("/shards?limit={limit}"),
        }
    }

    /// Parses the `after` cursor of `GET /shards` (`HEX.I`).
    pub fn parse_after(cursor: &str) -> Option<(ContentHash, u8)> {
        let (hash, shard) = cursor.rsplit_once('.')?;
        Some((ContentHash::from_hex(hash).ok()?, shard.parse().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip() {
        let h = ContentHash::of(b"x");
        let p = paths::list_shards(Some((h, 4)), 10);
        let after = p.split("after=").nth(1).unwrap();
        assert_eq!(paths::parse_after(after), Some((h, 4)));
        assert_eq!(paths::parse_after("zz.1"), None);
        assert!(valid_temp_id(&"a".repeat(32)));
        assert!(!valid_temp_id("../etc/passwd"));
    }
}
