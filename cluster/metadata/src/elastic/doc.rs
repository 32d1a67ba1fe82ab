//! The documents the Elasticsearch engine stores, their ids and the index mappings.

use std::borrow::Cow;

use dos_protocol::{
    BlockHashes, ContentHash, EntryKind, ObjectName, PosixAttrs, ServerId, VersionRecord,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{ContentRecord, MetadataError};

/// Elasticsearch refuses `_id`s longer than 512 bytes.
pub(crate) const MAX_ID_BYTES: usize = 512;

/// Longest name used verbatim in ids: room is left for `_` and the 20 digits of a `u64`.
const MAX_VERBATIM_NAME: usize = MAX_ID_BYTES - 21;

/// The part of every id that stands for `name`: the name itself, or — when it is too long for
/// an `_id`, or starts with `#` — `#` followed by the hex SHA-256 of the name. Verbatim keys
/// never start with `#`, so the two forms cannot collide; the stored `name` field is checked
/// on every read all the same.
pub(crate) fn name_key(name: &str) -> Cow<'_, str> {
    if name.len() <= MAX_VERBATIM_NAME && !name.starts_with('#') {
        Cow::Borrowed(name)
    } else {
        Cow::Owned(format!("#{}", ContentHash::of(name.as_bytes()).to_hex()))
    }
}

/// `_id` of version `version` of `name` in the `metadata` index: `<name>_<version>`.
pub(crate) fn version_id(name: &str, version: u64) -> String {
    format!("{}_{version}", name_key(name))
}

/// `_id` of the head document of `name` in the `heads` index.
pub(crate) fn head_id(name: &str) -> Cow<'_, str> {
    name_key(name)
}

/// `_id` of a content document: the hex of its hash.
pub(crate) fn content_id(hash: &ContentHash) -> String {
    hash.to_hex()
}

/// One version, as stored in the `metadata` index (and, with `live`, in `heads`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VersionDoc {
    pub name: String,
    pub version: u64,
    pub size: u64,
    /// Base64 SHA-256, `""` for a delete marker.
    pub hash: String,
    /// Nanoseconds since the epoch.
    pub mtime: i64,
    pub mode: u32,
    pub kind: String,
    /// Owner, group (absent: not recorded), device number (absent: 0), access time (ns,
    /// absent: not set) and ctime (ns, absent in versions made before it was kept: the
    /// mtime).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub atime: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctime: Option<i64>,
    /// The hard-link group, bit for bit as a signed long (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<i64>,
}

fn is_zero(v: &u32) -> bool {
    *v == 0
}

/// The latest version of a name, as stored in the `heads` index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct HeadDoc {
    #[serde(flatten)]
    pub doc: VersionDoc,
    /// False when the latest version is a delete marker; listings read only live heads.
    pub live: bool,
}

/// Size and shard placement of a content hash, as stored in the `contents` index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContentDoc {
    /// Base64 SHA-256 (also in the `_id` as hex); the sort key of content enumeration.
    #[serde(default)]
    pub hash: String,
    pub size: u64,
    pub placement: Vec<ServerId>,
    /// When the content was last written or used by a dedup write (ns); the orphan
    /// collector leaves it alone for a grace period after that.
    #[serde(default)]
    pub touched: i64,
    /// Base64 of the concatenated block hashes (see [`dos_protocol::BlockHashes`]); empty
    /// for content of one block and content stored before they were recorded.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blake3_blocks: String,
}

fn long(what: &str, v: u64) -> Result<u64, MetadataError> {
    if i64::try_from(v).is_ok() {
        Ok(v)
    } else {
        Err(MetadataError::BadRequest(format!(
            "{what} {v} does not fit a 64-bit signed long"
        )))
    }
}

impl VersionDoc {
    pub fn from_record(rec: &VersionRecord) -> Result<Self, MetadataError> {
        if i32::try_from(rec.mode).is_err() {
            return Err(MetadataError::BadRequest(format!(
                "mode {:#o} is out of range",
                rec.mode
            )));
        }
        Ok(Self {
            name: rec.name.as_str().to_string(),
            version: long("version", rec.version)?,
            size: long("size", rec.size)?,
            hash: rec.hash.map(|h| h.to_base64()).unwrap_or_default(),
            mtime: rec.mtime_ns,
            mode: rec.mode,
            kind: rec.kind.as_str().to_string(),
            uid: rec.posix.uid,
            gid: rec.posix.gid,
            rdev: rec.posix.rdev,
            atime: rec.posix.atime_ns,
            ctime: Some(rec.ctime_ns),
            link: rec.posix.link.map(|l| l as i64),
        })
    }

    pub fn into_record(self) -> Result<VersionRecord, MetadataError> {
        let corrupt = |what: &str| {
            MetadataError::Corrupt(format!(
                "{what} of version {} of {:?} in Elasticsearch",
                self.version, self.name
            ))
        };
        let hash = if self.hash.is_empty() {
            None
        } else {
            Some(ContentHash::from_base64(&self.hash).map_err(|_| corrupt("hash"))?)
        };
        Ok(VersionRecord {
            name: ObjectName::new(self.name.clone()).map_err(|_| corrupt("name"))?,
            version: self.version,
            size: self.size,
            hash,
            mtime_ns: self.mtime,
            mode: self.mode,
            kind: EntryKind::parse(&self.kind).ok_or_else(|| corrupt("kind"))?,
            posix: PosixAttrs {
                uid: self.uid,
                gid: self.gid,
                rdev: self.rdev,
                atime_ns: self.atime,
                link: self.link.map(|l| l as u64),
            },
            ctime_ns: self.ctime.unwrap_or(self.mtime),
        })
    }
}

impl ContentDoc {
    pub fn from_record(rec: &ContentRecord) -> Result<Self, MetadataError> {
        crate::check_blocks(rec)?;
        Ok(Self {
            hash: rec.hash.to_base64(),
            size: long("size", rec.size)?,
            placement: rec.placement.clone(),
            touched: dos_protocol::now_ns(),
            blake3_blocks: rec.blocks.to_base64(),
        })
    }

    pub fn into_record(self, hash: ContentHash) -> Result<ContentRecord, MetadataError> {
        let blocks = BlockHashes::from_base64(&self.blake3_blocks)
            .filter(|b| b.fits(self.size))
            .ok_or_else(|| {
                MetadataError::Corrupt(format!("block hashes of {hash} in Elasticsearch"))
            })?;
        Ok(ContentRecord {
            hash,
            size: self.size,
            placement: self.placement,
            blocks,
        })
    }
}

/// Field name and Elasticsearch type of every field of a version document.
const VERSION_FIELDS: &[(&str, &str)] = &[
    ("name", "keyword"),
    ("version", "long"),
    ("size", "long"),
    ("hash", "keyword"),
    ("mtime", "long"),
    ("mode", "integer"),
    ("kind", "keyword"),
    ("uid", "long"),
    ("gid", "long"),
    ("rdev", "long"),
    ("atime", "long"),
    ("ctime", "long"),
    ("link", "long"),
];

const HEAD_EXTRA_FIELDS: &[(&str, &str)] = &[("live", "boolean")];

const CONTENT_FIELDS: &[(&str, &str)] = &[
    ("hash", "keyword"),
    ("size", "long"),
    ("placement", "keyword"),
    ("touched", "long"),
    ("blake3_blocks", "binary"),
];

/// Which of the three indices; the expected fields of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexKind {
    Metadata,
    Heads,
    Contents,
}

impl IndexKind {
    pub const ALL: [IndexKind; 3] = [IndexKind::Metadata, IndexKind::Heads, IndexKind::Contents];

    /// The index name without the configurable prefix.
    pub fn base_name(self) -> &'static str {
        match self {
            IndexKind::Metadata => "metadata",
            IndexKind::Heads => "heads",
            IndexKind::Contents => "contents",
        }
    }

    pub fn fields(self) -> Vec<(&'static str, &'static str)> {
        match self {
            IndexKind::Metadata => VERSION_FIELDS.to_vec(),
            IndexKind::Heads => VERSION_FIELDS
                .iter()
                .chain(HEAD_EXTRA_FIELDS)
                .copied()
                .collect(),
            IndexKind::Contents => CONTENT_FIELDS.to_vec(),
        }
    }

    /// The body of `PUT /<index>`: a strict mapping, so that a stray field or a type that
    /// does not fit is refused instead of silently changing the mapping.
    pub fn create_body(self) -> Value {
        let properties: serde_json::Map<String, Value> = self
            .fields()
            .into_iter()
            .map(|(field, ty)| (field.to_string(), json!({ "type": ty })))
            .collect();
        json!({
            "mappings": {
                "dynamic": "strict",
                "properties": properties,
            }
        })
    }

    /// The fields of this index kind that `mappings` does not map at all.
    pub fn missing_fields(self, mappings: &Value) -> Vec<(&'static str, &'static str)> {
        let properties = mappings.get("properties");
        self.fields()
            .into_iter()
            .filter(|(field, _)| properties.and_then(|p| p.get(field)).is_none())
            .collect()
    }

    /// Checks the `mappings` object of an existing index: every field must exist with the
    /// expected type (an index made by the original system, with an `integer` size or a
    /// `text` hash, is refused).
    pub fn check_mappings(self, index: &str, mappings: &Value) -> Result<(), MetadataError> {
        let properties = mappings.get("properties");
        for (field, ty) in self.fields() {
            let found = properties
                .and_then(|p| p.get(field))
                .and_then(|f| f.get("type"))
                .and_then(Value::as_str);
            match found {
                Some(t) if t == ty => {}
                Some(t) => {
                    return Err(MetadataError::Corrupt(format!(
                        "Elasticsearch index {index}: field {field} is mapped as {t}, \
                         expected {ty}; reindex into a new index"
                    )));
                }
                None => {
                    return Err(MetadataError::Corrupt(format!(
                        "Elasticsearch index {index}: field {field} is not mapped \
                         (expected {ty}); run `dos-server setup` to add it to an index made \
                         by an older version, or was the index made by another program?"
                    )));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ids() {
        assert_eq!(version_id("a/b c", 3), "a/b c_3");
        assert_eq!(head_id("a*"), "a*");
        let long = "x".repeat(600);
        let id = version_id(&long, u64::MAX);
        assert!(id.starts_with('#') && id.len() <= MAX_ID_BYTES, "{id}");
        assert_eq!(head_id(&long), head_id(&long));
        assert_ne!(head_id(&long), head_id(&"x".repeat(601)));
        // A name starting with '#' is hashed too, so it cannot pose as a hashed key.
        let hashed = head_id(&long).into_owned();
        assert_ne!(head_id(&hashed), hashed);
        assert!(head_id(&hashed).starts_with('#'));
        let edge = "y".repeat(MAX_VERBATIM_NAME);
        assert!(version_id(&edge, u64::MAX).len() <= MAX_ID_BYTES);
        assert_eq!(name_key(&edge), edge);
    }

    #[test]
    fn version_doc_round_trip() {
        let rec = VersionRecord {
            name: ObjectName::new("ä/b").unwrap(),
            version: 7,
            size: 5 << 30,
            hash: Some(ContentHash::of(b"x")),
            mtime_ns: -5,
            mode: 0o755,
            kind: EntryKind::Dir,
            posix: PosixAttrs {
                uid: Some(0),
                gid: Some(u32::MAX),
                rdev: 0,
                atime_ns: Some(3),
                link: None,
            },
            ctime_ns: 9,
        };
        let doc = VersionDoc::from_record(&rec).unwrap();
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["size"], json!(5u64 << 30));
        assert_eq!(json["hash"], json!(ContentHash::of(b"x").to_base64()));
        let back: VersionDoc = serde_json::from_value(json).unwrap();
        assert_eq!(back.into_record().unwrap(), rec);
        let marker = VersionRecord { hash: None, ..rec };
        let doc = VersionDoc::from_record(&marker).unwrap();
        assert_eq!(doc.hash, "");
        assert_eq!(doc.into_record().unwrap(), marker);
        let too_big = VersionRecord {
            size: u64::MAX,
            ..marker
        };
        assert!(matches!(
            VersionDoc::from_record(&too_big),
            Err(MetadataError::BadRequest(_))
        ));
    }

    #[test]
    fn head_doc_is_flat() {
        let head = HeadDoc {
            doc: VersionDoc {
                name: "a".into(),
                version: 1,
                size: 0,
                hash: String::new(),
                mtime: 0,
                mode: 0,
                kind: "file".into(),
                uid: None,
                gid: None,
                rdev: 0,
                atime: None,
                ctime: Some(1),
                link: None,
            },
            live: false,
        };
        let json = serde_json::to_value(&head).unwrap();
        assert_eq!(json["live"], json!(false));
        assert_eq!(json["name"], json!("a"));
        assert_eq!(serde_json::from_value::<HeadDoc>(json).unwrap(), head);
    }

    /// A version written before the POSIX fields has none of them: no owner, and its mtime
    /// as ctime.
    #[test]
    fn older_version_docs_read_without_the_posix_fields() {
        let json = json!({"name": "a", "version": 1, "size": 0, "hash": "", "mtime": 7,
            "mode": 420, "kind": "file"});
        let rec = serde_json::from_value::<VersionDoc>(json)
            .unwrap()
            .into_record()
            .unwrap();
        assert_eq!((rec.posix, rec.ctime_ns), (PosixAttrs::default(), 7));
    }

    #[test]
    fn mapping_check() {
        let body = IndexKind::Metadata.create_body();
        IndexKind::Metadata
            .check_mappings("metadata", &body["mappings"])
            .unwrap();
        let mut old = body["mappings"].clone();
        old["properties"]["size"] = json!({"type": "integer"});
        let err = IndexKind::Metadata
            .check_mappings("metadata", &old)
            .unwrap_err();
        assert!(err.to_string().contains("size"), "{err}");
        assert!(
            IndexKind::Heads
                .check_mappings("heads", &body["mappings"])
                .is_err(),
            "heads needs `live`"
        );
    }
}
