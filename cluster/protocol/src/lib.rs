//! The wire vocabulary shared by every dos process.
//!
//! Everything here is pure: no I/O, no async runtime. API servers, data servers, the bus, the
//! metadata engines and the filesystem all speak in these types, so a name, a hash, a range or a
//! version means the same thing everywhere.

mod blocks;
mod hash;
mod layout;
mod name;
mod range;
mod record;
pub mod shard;
pub mod signature;
mod time;

pub use blocks::{BlockHashes, Expected, block_hash};
pub use hash::{ContentHash, HashParseError, parse_digest_header};
pub use layout::{
    BLOCK_SIZE, DATA_SHARDS, PARITY_SHARDS, PIECE_SIZE, TOTAL_SHARDS, block_count, piece_len,
    shard_len,
};
pub use name::{MAX_NAME_BYTES, NameError, ObjectName, encode_path, valid_percent_utf8};
pub use range::{ByteRange, RangeError, parse_range};
pub use record::{
    Change, ChangeCursor, ChangeEvent, ChangeWhat, CheckReport, EntryKind, ListEntry, ListPage,
    ListQuery, LocateReply, LogEntry, LogPage, PosixAttrs, Redundancy, ServerId, ServerInfo,
    ServerStats, VersionRecord, WriteAttributes,
};
pub use time::{format_rfc3339_ns, now_ns, parse_moment, parse_rfc3339_ns};

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
    /// `file`, `dir`, `symlink`, `fifo`, `socket`, `chardev` or `blockdev`.
    pub const KIND: &str = "x-dos-kind";
    /// Owner (decimal user id) stored with a version; absent when not recorded.
    pub const UID: &str = "x-dos-uid";
    /// Group (decimal group id) stored with a version; absent when not recorded.
    pub const GID: &str = "x-dos-gid";
    /// Device number (decimal) of a `chardev` or `blockdev` version.
    pub const RDEV: &str = "x-dos-rdev";
    /// Access time (RFC 3339 with nanoseconds) stored with a version, when set.
    pub const ATIME: &str = "x-dos-atime";
    /// The hard-link group (decimal) a version's name belongs to, when it has other names.
    pub const LINK: &str = "x-dos-link";
    /// On an answer: when the version was made (RFC 3339 with nanoseconds): its ctime.
    pub const CTIME: &str = "x-dos-ctime";
    /// On a PUT or POST: the version the new one replaces (see
    /// [`WriteAttributes::supersedes`](crate::WriteAttributes)).
    pub const SUPERSEDES: &str = "x-dos-supersedes";
    /// The version a response refers to.
    pub const VERSION: &str = "x-dos-version";
    /// Signature of an internal request (API server to data server).
    pub const SIGNATURE: &str = "x-dos-signature";
    /// Hex SHA-256 of an internal request's body when it is sent whole (a whole shard),
    /// covered by the signature and checked by the data server.
    pub const BODY_SHA256: &str = "x-dos-body-sha256";
    /// On an error answer: what kind of failure it is, one of [`crate::error_kind`]'s names,
    /// so that clients branch on a kind instead of parsing the message.
    pub const ERROR: &str = "x-dos-error";
    /// On a 416 answer to an upload: the bytes the upload has accepted.
    pub const ACCEPTED: &str = "x-dos-accepted";
    /// The id of one client request: made by the API server (or taken from the client's,
    /// when it has the form of one), returned to the client, sent to data servers, logged.
    pub const REQUEST_ID: &str = "x-request-id";
    /// `x-dos-upload: stream` on `POST /objects/NAME`: opens an upload of content whose
    /// digest and size are not known yet (sent without `Digest` and `Size`).
    pub const UPLOAD: &str = "x-dos-upload";
}

/// The kinds of failure an API server names in the [`headers::ERROR`] header.
pub mod error_kind {
    pub const NOT_FOUND: &str = "not-found";
    pub const INVALID: &str = "invalid";
    pub const DIGEST_MISMATCH: &str = "digest-mismatch";
    pub const OFFSET_MISMATCH: &str = "offset-mismatch";
    pub const EXPIRED: &str = "expired";
    pub const DENIED: &str = "denied";
    pub const CONFLICT: &str = "conflict";
    pub const BUSY: &str = "busy";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const TIMEOUT: &str = "timeout";
    pub const INTERNAL: &str = "internal";
}
