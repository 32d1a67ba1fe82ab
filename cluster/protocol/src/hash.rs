use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

/// SHA-256 of an object's bytes: its identity in the store.
///
/// On the wire (REST, JSON) it is standard Base64 with padding, as in `Digest: SHA-256=…`;
/// on disk it is lower-case hex, which is safe in any file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContentHash(pub [u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HashParseError {
    #[error("missing Digest header (expected 'SHA-256=<base64>')")]
    Missing,
    #[error("malformed Digest header (expected 'SHA-256=<base64 of 32 bytes>')")]
    Malformed,
}

impl ContentHash {
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }

    pub fn from_base64(s: &str) -> Result<Self, HashParseError> {
        let bytes = STANDARD
            .decode(s.trim())
            .map_err(|_| HashParseError::Malformed)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| HashParseError::Malformed)?;
        Ok(Self(arr))
    }

    pub fn from_hex(s: &str) -> Result<Self, HashParseError> {
        let mut arr = [0u8; 32];
        hex::decode_to_slice(s, &mut arr).map_err(|_| HashParseError::Malformed)?;
        Ok(Self(arr))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The value of a `Digest` header for this hash.
    pub fn digest_header(&self) -> String {
        format!("SHA-256={}", self.to_base64())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_base64())
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for ContentHash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::from_base64(&s).map_err(serde::de::Error::custom)
    }
}

/// Parses a `Digest` header (RFC 3230): a comma-separated list of `algorithm=value`; the
/// algorithm name is case-insensitive and only SHA-256 is understood.
pub fn parse_digest_header(value: Option<&str>) -> Result<ContentHash, HashParseError> {
    let value = value.ok_or(HashParseError::Missing)?;
    for item in value.split(',') {
        let item = item.trim();
        if let Some((alg, b64)) = item.split_once('=')
            && alg.trim().eq_ignore_ascii_case("sha-256")
        {
            return ContentHash::from_base64(b64);
        }
    }
    Err(HashParseError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trip() {
        let h = ContentHash::of(b"hello");
        assert_eq!(parse_digest_header(Some(&h.digest_header())), Ok(h));
        assert_eq!(
            parse_digest_header(Some(&format!("md5=abc, sha-256={}", h.to_base64()))),
            Ok(h)
        );
        assert_eq!(ContentHash::from_hex(&h.to_hex()), Ok(h));
    }

    proptest::proptest! {
        /// Any header value: never a panic, and a parsed hash always round-trips.
        #[test]
        fn digest_parsing_never_panics(v in "\\PC{0,80}") {
            if let Ok(h) = parse_digest_header(Some(&v)) {
                proptest::prop_assert_eq!(parse_digest_header(Some(&h.digest_header())), Ok(h));
            }
        }
    }

    #[test]
    fn digest_rejects_bad_input() {
        assert_eq!(parse_digest_header(None), Err(HashParseError::Missing));
        for bad in [
            "",
            "SHA-256=",
            "SHA-256=abc",
            "MD5=xyz",
            "SHA-256=!!!!",
            "sha256",
        ] {
            assert_eq!(
                parse_digest_header(Some(bad)),
                Err(HashParseError::Malformed),
                "{bad}"
            );
        }
    }
}
