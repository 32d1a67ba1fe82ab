//! The wire vocabulary shared by every dos process.
//!
//! Everything here is pure: no I/O, no async runtime. API servers, data servers, the bus, the
//! metadata engines and the filesystem all speak in these types, so a name, a hash, a range or a
//! version means the same thing everywhere.

mod hash;
mod layout;
mod name;
mod range;
mod record;
pub mod signature;
mod time;

pub use hash::{ContentHash, HashParseError, parse_digest_header};
pub use layout::{
    BLOCK_SIZE, DATA_SHARDS, PARITY_SHARDS, PIECE_SIZE, TOTAL_SHARDS, block_count, piece_len,
    shard_len,
};
pub use name::{MAX_NAME_BYTES, NameError, ObjectName, encode_path, valid_percent_utf8};
pub use range::{ByteRange, RangeError, parse_range};
pub use record::{
    EntryKind, ListEntry, ListPage, LocateReply, ServerId, ServerInfo, VersionRecord,
    WriteAttributes,
};
pub use time::{format_rfc3339_ns, now_ns, parse_rfc3339_ns};

/// HTTP header names used between dos processes and by clients.
pub mod headers {
    /// `Digest: SHA-256=<base64>` (RFC 3230), required on PUT and POST of objects.
    pub const DIGEST: &str = "digest";
    /// Declared object size on `POST /objects/NAME`.
    pub const SIZE: &str = "size";
    /// Permission bits (octal, e.g. `644`) stored with a version.
    pub const MODE: &str = "x-dos-mode";
    /// Modification time (RFC 3339 with nanoseconds) stored with a version.
    pub const MTIME: &str = "x-dos-mtime";
    /// `file`, `dir` or `symlink`.
    pub const KIND: &str = "x-dos-kind";
    /// The version a response refers to.
    pub const VERSION: &str = "x-dos-version";
    /// Signature of an internal request (API server to data server).
    pub const SIGNATURE: &str = "x-dos-signature";
}
