use dos_protocol::{
    ByteRange, ContentHash, EntryKind, ObjectName, PosixAttrs, VersionRecord, headers,
    parse_rfc3339_ns,
};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, ETAG, HeaderMap};

use crate::ClientError;

/// What the headers of a GET or HEAD answer say about one version of an object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub name: ObjectName,
    pub version: u64,
    /// Size of the whole object (not of a partial answer).
    pub size: u64,
    /// SHA-256 of the whole object, from the `ETag`.
    pub hash: ContentHash,
    /// Permission bits.
    pub mode: u32,
    /// Nanoseconds since the epoch.
    pub mtime_ns: i64,
    pub kind: EntryKind,
    /// Owner, group, device number, access time (absent headers: not recorded).
    pub posix: PosixAttrs,
    /// When the version was made.
    pub ctime_ns: i64,
    /// For a 206 answer, the bytes of the object the body carries.
    pub range: Option<ByteRange>,
}

impl ObjectMeta {
    /// The version record these headers describe.
    pub fn to_record(&self) -> VersionRecord {
        VersionRecord {
            name: self.name.clone(),
            version: self.version,
            size: self.size,
            hash: Some(self.hash),
            mtime_ns: self.mtime_ns,
            mode: self.mode,
            kind: self.kind,
            posix: self.posix,
            ctime_ns: self.ctime_ns,
        }
    }

    /// Number of body bytes the answer these headers came with carries.
    pub fn body_len(&self) -> u64 {
        self.range.map_or(self.size, |r| r.len())
    }

    /// Reads the metadata headers of an object answer. `encoded` says the body is
    /// content-encoded, so `Content-Length` is not the object size and is not required.
    pub(crate) fn from_headers(
        name: ObjectName,
        status: StatusCode,
        h: &HeaderMap,
        url: &str,
        encoded: bool,
    ) -> Result<Self, ClientError> {
        let bad = |m: String| ClientError::invalid_response(url, m);
        let text = |key: &str| -> Result<&str, ClientError> {
            h.get(key)
                .ok_or_else(|| bad(format!("missing {key} header")))?
                .to_str()
                .map_err(|_| bad(format!("{key} header is not ASCII")))
                .map(str::trim)
        };
        let version = text(headers::VERSION)?
            .parse::<u64>()
            .map_err(|_| bad(format!("bad {} header", headers::VERSION)))?;
        let etag = text(ETAG.as_str())?;
        let etag = etag.strip_prefix("W/").unwrap_or(etag).trim_matches('"');
        let hash = ContentHash::from_base64(etag).map_err(|_| bad(format!("bad ETag {etag:?}")))?;
        let mode_text = text(headers::MODE)?;
        let mode = u32::from_str_radix(mode_text, 8)
            .map_err(|_| bad(format!("bad {} header {mode_text:?}", headers::MODE)))?;
        let mtime_text = text(headers::MTIME)?;
        let mtime_ns = parse_rfc3339_ns(mtime_text)
            .ok_or_else(|| bad(format!("bad {} header {mtime_text:?}", headers::MTIME)))?;
        let kind_text = text(headers::KIND)?;
        let kind = EntryKind::parse(kind_text)
            .ok_or_else(|| bad(format!("bad {} header {kind_text:?}", headers::KIND)))?;
        let optional = |key: &str| -> Result<Option<&str>, ClientError> {
            h.get(key)
                .map(|v| {
                    v.to_str()
                        .map(str::trim)
                        .map_err(|_| bad(format!("{key} header is not ASCII")))
                })
                .transpose()
        };
        let id = |key: &str| -> Result<Option<u32>, ClientError> {
            optional(key)?
                .map(|t| {
                    t.parse()
                        .map_err(|_| bad(format!("bad {key} header {t:?}")))
                })
                .transpose()
        };
        let time = |key: &str| -> Result<Option<i64>, ClientError> {
            optional(key)?
                .map(|t| parse_rfc3339_ns(t).ok_or_else(|| bad(format!("bad {key} header {t:?}"))))
                .transpose()
        };
        let posix = PosixAttrs {
            uid: id(headers::UID)?,
            gid: id(headers::GID)?,
            rdev: id(headers::RDEV)?.unwrap_or(0),
            atime_ns: time(headers::ATIME)?,
            link: optional(headers::LINK)?
                .map(|t| {
                    t.parse()
                        .map_err(|_| bad(format!("bad {} header {t:?}", headers::LINK)))
                })
                .transpose()?,
        };
        let ctime_ns = time(headers::CTIME)?.unwrap_or(mtime_ns);
        let (size, range) = if status == StatusCode::PARTIAL_CONTENT {
            let cr = text(CONTENT_RANGE.as_str())?;
            let (range, size) =
                parse_content_range(cr).ok_or_else(|| bad(format!("bad Content-Range {cr:?}")))?;
            (size, Some(range))
        } else if encoded {
            (0, None)
        } else {
            let cl = text(CONTENT_LENGTH.as_str())?;
            let size = cl
                .parse::<u64>()
                .map_err(|_| bad(format!("bad Content-Length {cl:?}")))?;
            (size, None)
        };
        Ok(ObjectMeta {
            name,
            version,
            size,
            hash,
            mode,
            mtime_ns,
            kind,
            posix,
            ctime_ns,
            range,
        })
    }
}

/// `bytes a-b/size` → (range, size).
pub(crate) fn parse_content_range(v: &str) -> Option<(ByteRange, u64)> {
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (span, size) = rest.split_once('/')?;
    let (a, b) = span.trim().split_once('-')?;
    let start: u64 = a.trim().parse().ok()?;
    let end: u64 = b.trim().parse().ok()?;
    let size: u64 = size.trim().parse().ok()?;
    (start <= end && end < size).then_some((ByteRange { start, end }, size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 10-19/100"),
            Some((ByteRange { start: 10, end: 19 }, 100))
        );
        assert_eq!(parse_content_range("bytes 10-100/100"), None);
        assert_eq!(parse_content_range("bytes */100"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
    }
}
