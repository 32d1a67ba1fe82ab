use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{ContentHash, ObjectName, format_rfc3339_ns, parse_rfc3339_ns};

/// What a version of a name is. Directories are name prefixes; a `dir` version is the marker
/// that keeps an empty directory alive. A symlink's content is its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    #[default]
    File,
    Dir,
    Symlink,
    /// A named pipe (metadata only: no content).
    Fifo,
    /// A UNIX socket's name (metadata only).
    Socket,
    /// A character device node; its number is [`PosixAttrs::rdev`] (metadata only).
    #[serde(rename = "chardev")]
    CharDevice,
    /// A block device node; its number is [`PosixAttrs::rdev`] (metadata only).
    #[serde(rename = "blockdev")]
    BlockDevice,
}

impl EntryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::File => "file",
            EntryKind::Dir => "dir",
            EntryKind::Symlink => "symlink",
            EntryKind::Fifo => "fifo",
            EntryKind::Socket => "socket",
            EntryKind::CharDevice => "chardev",
            EntryKind::BlockDevice => "blockdev",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "file" => Some(EntryKind::File),
            "dir" => Some(EntryKind::Dir),
            "symlink" => Some(EntryKind::Symlink),
            "fifo" => Some(EntryKind::Fifo),
            "socket" => Some(EntryKind::Socket),
            "chardev" => Some(EntryKind::CharDevice),
            "blockdev" => Some(EntryKind::BlockDevice),
            _ => None,
        }
    }

    pub fn default_mode(self) -> u32 {
        match self {
            EntryKind::File => 0o644,
            EntryKind::Dir => 0o755,
            EntryKind::Symlink => 0o777,
            EntryKind::Fifo
            | EntryKind::Socket
            | EntryKind::CharDevice
            | EntryKind::BlockDevice => 0o644,
        }
    }

    /// A FIFO, socket or device node: a name with attributes and no content.
    pub fn is_special(self) -> bool {
        matches!(
            self,
            EntryKind::Fifo | EntryKind::Socket | EntryKind::CharDevice | EntryKind::BlockDevice
        )
    }
}

/// The POSIX attributes a version keeps besides its kind, mode and mtime: what dosfs needs to
/// show a file as a local filesystem would. A client that sets none of them (curl) leaves
/// them out, and dosfs shows such a version as owned by the mounting user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct PosixAttrs {
    /// Owner (user id); `None`: not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    /// Group id; `None`: not recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    /// Device number of a character or block device node (0 otherwise).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u32,
    /// Access time as last set (reads do not change it: dosfs is `noatime`); `None`: the
    /// mtime.
    #[serde(
        rename = "atime",
        default,
        skip_serializing_if = "Option::is_none",
        with = "opt_rfc3339"
    )]
    pub atime_ns: Option<i64>,
    /// The hard-link group this name belongs to (dosfs's inode number of the file, shared
    /// by all its names); `None`: the name is the file's only one. See ARCHITECTURE.md,
    /// "Hard links".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<u64>,
}

impl PosixAttrs {
    /// Nothing recorded (what a writer that sets none of them sends).
    pub fn is_unset(&self) -> bool {
        *self == Self::default()
    }

    /// These, or `earlier` when these are unset (attributes given at the end of an upload
    /// replace those given at its start).
    pub fn or(self, earlier: Self) -> Self {
        if self.is_unset() { earlier } else { self }
    }
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// Attributes a writer may set on a new version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriteAttributes {
    pub kind: EntryKind,
    /// Permission bits; `None` means the kind's default.
    pub mode: Option<u32>,
    /// Nanoseconds since the epoch; `None` means now.
    pub mtime_ns: Option<i64>,
    /// The version this one replaces in the history: if it is the version right before the
    /// new one and holds the same content, it is removed once the new one is stored. A
    /// client folds attribute changes into the save they follow with it (dosfs: `tar`'s
    /// `utimens` and `chmod` after a file's close give one version, not three).
    pub supersedes: Option<u64>,
    /// Owner, group, device number and access time.
    pub posix: PosixAttrs,
}

/// One version of a name. A delete marker has `hash: None` and size 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    pub name: ObjectName,
    pub version: u64,
    pub size: u64,
    #[serde(with = "opt_hash")]
    pub hash: Option<ContentHash>,
    #[serde(rename = "mtime", with = "rfc3339")]
    pub mtime_ns: i64,
    pub mode: u32,
    pub kind: EntryKind,
    #[serde(flatten)]
    pub posix: PosixAttrs,
    /// When this version was made (the store's clock): POSIX's ctime, since every change
    /// of a file's data or attributes makes a version.
    #[serde(rename = "ctime", with = "rfc3339", default)]
    pub ctime_ns: i64,
}

impl VersionRecord {
    pub fn is_delete_marker(&self) -> bool {
        self.hash.is_none()
    }
}

/// A change an API server made: a new version of `name` (a delete marker when `deleted`).
/// Published on the bus to every subscriber (mounts invalidate what they cached of it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub name: ObjectName,
    pub version: u64,
    pub kind: EntryKind,
    #[serde(default)]
    pub deleted: bool,
}

impl Change {
    pub fn of(rec: &VersionRecord) -> Self {
        Self {
            name: rec.name.clone(),
            version: rec.version,
            kind: rec.kind,
            deleted: rec.is_delete_marker(),
        }
    }
}

/// What a follower of changes hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeEvent {
    Changed(Change),
    /// Changes were lost (the follower fell behind, or a broker connection was re-made):
    /// whatever it cached may be stale.
    Missed,
}

/// One entry of a listing page: the latest live version of a name.
pub type ListEntry = VersionRecord;

/// One page of `GET /list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ListPage {
    /// Names under the prefix (not containing the delimiter after the prefix), ascending.
    pub entries: Vec<ListEntry>,
    /// Distinct `prefix + segment + delimiter` groups, ascending.
    pub prefixes: Vec<String>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A request for one page of `GET /list`: the latest live version of every name under a
/// prefix.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListQuery {
    /// Only names starting with this string.
    pub prefix: String,
    /// Group names by the first occurrence of this character after the prefix (normally '/').
    pub delimiter: Option<char>,
    /// Resume after this key (the `next_cursor` of the previous page).
    pub cursor: Option<String>,
    /// Entries plus prefixes per page, 1..=10,000.
    pub limit: usize,
    /// List the tree as it was at this moment (ns since the epoch) instead of now: each
    /// name's latest version made at or before it (by its ctime), if that is not a delete
    /// marker. `None`: now.
    pub at: Option<i64>,
}

/// What one change of a name was, in a change log (`GET /log`, `dosfs log`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeWhat {
    /// New content or attributes.
    Written,
    /// A delete marker.
    Deleted,
    /// The name was renamed: this version is its new name's (`from` says the old), or the
    /// delete marker of its old one (`to` says the new).
    Renamed,
    /// The content an earlier version of this name had, back again (a restore).
    Restored,
}

impl ChangeWhat {
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeWhat::Written => "written",
            ChangeWhat::Deleted => "deleted",
            ChangeWhat::Renamed => "renamed",
            ChangeWhat::Restored => "restored",
        }
    }
}

/// One change in a change log: version `version` of `name`, made at `time_ns`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    #[serde(rename = "time", with = "rfc3339")]
    pub time_ns: i64,
    pub name: ObjectName,
    pub version: u64,
    pub what: ChangeWhat,
    pub kind: EntryKind,
    pub size: u64,
    /// A rename: the name this one came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ObjectName>,
    /// A rename: the name the old one went to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<ObjectName>,
}

/// One page of `GET /log`, newest change first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LogPage {
    pub changes: Vec<LogEntry>,
    /// Pass as `cursor` to get the next (older) page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Where a page of changes newest first resumes: after this (ctime, name, version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeCursor {
    pub ctime_ns: i64,
    pub name: ObjectName,
    pub version: u64,
}

impl ChangeCursor {
    pub fn of(rec: &VersionRecord) -> Self {
        Self {
            ctime_ns: rec.ctime_ns,
            name: rec.name.clone(),
            version: rec.version,
        }
    }

    /// `CTIME.VERSION.NAME` (the name last: it may hold dots).
    pub fn encode(&self) -> String {
        format!("{}.{}.{}", self.ctime_ns, self.version, self.name.as_str())
    }

    pub fn decode(s: &str) -> Option<Self> {
        let mut parts = s.splitn(3, '.');
        let ctime_ns = parts.next()?.parse().ok()?;
        let version = parts.next()?.parse().ok()?;
        let name = ObjectName::new(parts.next()?).ok()?;
        Some(Self {
            ctime_ns,
            name,
            version,
        })
    }
}

/// A data server's stable identity, kept in its storage folder; placement records it, so a
/// server that comes back on another address still owns its shards.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ServerId(pub String);

impl std::fmt::Display for ServerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A live data server as heartbeats announce it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ServerInfo {
    pub id: ServerId,
    /// `host:port` to reach its HTTP interface.
    pub addr: String,
}

/// What a data server holds and has room for, as its heartbeats tell every API server
/// (shown by `/status` and `dos-server status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ServerStats {
    /// Committed shards it holds.
    pub shards: u64,
    /// Bytes used and free on the file system of its storage folder (free: what it may
    /// still write).
    pub disk_used_bytes: u64,
    pub disk_free_bytes: u64,
}

/// A data server's answer to a locate broadcast: which shards of the hash it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocateReply {
    pub server: ServerInfo,
    pub shards: Vec<u8>,
}

mod opt_hash {
    use super::*;

    pub fn serialize<S: Serializer>(h: &Option<ContentHash>, s: S) -> Result<S::Ok, S::Error> {
        match h {
            Some(h) => h.serialize(s),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ContentHash>, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            Ok(None)
        } else {
            ContentHash::from_base64(&s)
                .map(Some)
                .map_err(serde::de::Error::custom)
        }
    }
}

mod rfc3339 {
    use super::*;

    pub fn serialize<S: Serializer>(ns: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_rfc3339_ns(*ns))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = String::deserialize(d)?;
        parse_rfc3339_ns(&s).ok_or_else(|| serde::de::Error::custom("bad RFC 3339 time"))
    }
}

mod opt_rfc3339 {
    use super::*;

    pub fn serialize<S: Serializer>(ns: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match ns {
            Some(ns) => s.serialize_str(&format_rfc3339_ns(*ns)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => parse_rfc3339_ns(&s)
                .map(Some)
                .ok_or_else(|| serde::de::Error::custom("bad RFC 3339 time")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_json() {
        let rec = VersionRecord {
            name: ObjectName::new("a/b").unwrap(),
            version: 3,
            size: 0,
            hash: None,
            mtime_ns: 1_000_000_001,
            mode: 0o644,
            kind: EntryKind::File,
            posix: PosixAttrs::default(),
            ctime_ns: 1_000_000_002,
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert!(!json.contains("uid"), "unset owners are left out: {json}");
        assert!(json.contains(r#""hash":"""#), "{json}");
        assert!(
            json.contains(r#""mtime":"1970-01-01T00:00:01.000000001Z""#),
            "{json}"
        );
        let back: VersionRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        let rec = VersionRecord {
            kind: EntryKind::CharDevice,
            posix: PosixAttrs {
                uid: Some(65534),
                gid: Some(0),
                rdev: 0x0103,
                atime_ns: Some(7),
                link: None,
            },
            ..rec
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains(r#""kind":"chardev""#), "{json}");
        assert!(json.contains(r#""uid":65534"#), "{json}");
        let back: VersionRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
    }

    #[test]
    fn change_cursors_round_trip() {
        let c = ChangeCursor {
            ctime_ns: -5,
            name: ObjectName::new("a.b/c.d").unwrap(),
            version: 7,
        };
        assert_eq!(ChangeCursor::decode(&c.encode()), Some(c));
        assert_eq!(ChangeCursor::decode("x.1.a"), None);
        assert_eq!(ChangeCursor::decode("1.1"), None);
    }

    #[test]
    fn kinds_round_trip_through_their_names() {
        for k in [
            EntryKind::File,
            EntryKind::Dir,
            EntryKind::Symlink,
            EntryKind::Fifo,
            EntryKind::Socket,
            EntryKind::CharDevice,
            EntryKind::BlockDevice,
        ] {
            assert_eq!(EntryKind::parse(k.as_str()), Some(k));
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
        }
        assert_eq!(EntryKind::parse("door"), None);
    }
}

/// How many of a content's shards are healthy where they are recorded, from a cheap check
/// (each holder checks its shard's header, index and first piece; nothing is read whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redundancy {
    pub healthy: u8,
    pub total: u8,
    /// Damage was found (now or before) and a repair is waiting or running.
    pub repair_queued: bool,
}

impl std::fmt::Display for Redundancy {
    /// `6/6`, `5/6 (repair queued)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.healthy, self.total)?;
        if self.repair_queued {
            f.write_str(" (repair queued)")?;
        }
        Ok(())
    }
}

/// What a full check of one content found and did: every shard read whole and its
/// checksums verified by its data server, bad ones rebuilt, then the object decoded and
/// its SHA-256 compared with its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CheckReport {
    pub size: u64,
    /// Shards whose data server verified them whole, before any repair.
    pub shards_verified: u8,
    /// Shards found missing, corrupt or unreachable, and rebuilt.
    pub shards_rebuilt: Vec<u8>,
    /// Shards found bad that no live server could take now (left for later).
    pub shards_postponed: u8,
    /// The decoded bytes hash to the content's SHA-256 (false too when it could not be
    /// decoded: fewer than four good shards).
    pub sha256_ok: bool,
    /// Fewer than four good shards: the object cannot be read now.
    pub unreadable: bool,
}

impl CheckReport {
    /// Nothing is wrong any more (what was found bad was rebuilt).
    pub fn is_healthy(&self) -> bool {
        self.sha256_ok && !self.unreadable && self.shards_postponed == 0
    }
}
