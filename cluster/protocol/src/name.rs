use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest object name accepted, in bytes of UTF-8: twice Linux's `PATH_MAX` (4,096), so a
/// mounted tree takes any path a program can give in one call, from a directory itself up
/// to `PATH_MAX` deep (SPEC §3 says 1,024; README, "Names", says why this is more).
pub const MAX_NAME_BYTES: usize = 8192;

/// A validated object name: UTF-8, 1..=[`MAX_NAME_BYTES`] bytes, `/`-separated segments that are neither
/// empty nor `.` nor `..`, no NUL. Names are compared exactly as decoded, so `%41` and `A`
/// name the same object.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectName(String);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NameError {
    #[error("object name is empty")]
    Empty,
    #[error("object name is longer than {MAX_NAME_BYTES} bytes")]
    TooLong,
    #[error("object name is not valid UTF-8 after percent-decoding")]
    NotUtf8,
    #[error("object name contains a NUL byte")]
    Nul,
    /// Line breaks and other control characters would make names unsafe in logs, headers
    /// and line-based tools.
    #[error("object name contains a control character")]
    Control,
    #[error("object name has an empty, '.' or '..' segment")]
    BadSegment,
    #[error("object name has a '%' not followed by two hex digits (write '%' as %25)")]
    BadPercent,
}

impl ObjectName {
    pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
        let name = name.into();
        if name.is_empty() {
            return Err(NameError::Empty);
        }
        if name.len() > MAX_NAME_BYTES {
            return Err(NameError::TooLong);
        }
        if name.contains('\0') {
            return Err(NameError::Nul);
        }
        if name.chars().any(|c| c.is_ascii_control()) {
            return Err(NameError::Control);
        }
        if name
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..")
        {
            return Err(NameError::BadSegment);
        }
        Ok(Self(name))
    }

    /// Decodes the percent-encoded rest of a request path (what follows `/objects/`).
    pub fn from_path(encoded: &str) -> Result<Self, NameError> {
        if encoded.len() > MAX_NAME_BYTES * 3 {
            return Err(NameError::TooLong);
        }
        if !well_formed_percents(encoded) {
            return Err(NameError::BadPercent);
        }
        let decoded = percent_encoding::percent_decode_str(encoded)
            .decode_utf8()
            .map_err(|_| NameError::NotUtf8)?;
        Self::new(decoded.into_owned())
    }

    /// The name percent-encoded for a URL path; `/` stays as it is.
    pub fn to_path(&self) -> String {
        encode_path(&self.0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// True when every `%` in `s` starts a `%XX` escape.
pub fn well_formed_percents(s: &str) -> bool {
    let bytes = s.as_bytes();
    bytes.iter().enumerate().all(|(i, b)| {
        *b != b'%'
            || (bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

/// True when `s` is well-formed percent-encoding of UTF-8 text.
pub fn valid_percent_utf8(s: &str) -> bool {
    well_formed_percents(s)
        && percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .is_ok()
}

/// Percent-encodes a string for a URL path, keeping `/` and unreserved characters.
pub fn encode_path(s: &str) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const PATH: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(s, PATH).to_string()
}

impl fmt::Debug for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ObjectName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for ObjectName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ObjectName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_paths() {
        assert_eq!(ObjectName::from_path("a/b%20c").unwrap().as_str(), "a/b c");
        assert_eq!(ObjectName::from_path("%41").unwrap().as_str(), "A");
        assert_eq!(
            ObjectName::new("é/ü.txt").unwrap().to_path(),
            "%C3%A9/%C3%BC.txt"
        );
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "", "/a", "a/", "a//b", ".", "..", "a/../b", "a/./b", "%2e%2e", "a/%2E", "a%00b", "%ff",
        ] {
            assert!(ObjectName::from_path(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            ObjectName::new("x".repeat(MAX_NAME_BYTES + 1)),
            Err(NameError::TooLong)
        );
        assert!(ObjectName::new("x".repeat(MAX_NAME_BYTES)).is_ok());
    }

    proptest! {
        #[test]
        fn path_encoding_round_trips(s in "\\PC{1,40}") {
            if let Ok(name) = ObjectName::new(s) {
                prop_assert_eq!(ObjectName::from_path(&name.to_path()).unwrap(), name);
            }
        }

        #[test]
        fn from_path_never_panics(s in "\\PC{0,60}") {
            let _ = ObjectName::from_path(&s);
        }
    }
}
