/// An inclusive byte range `[start, end]` within an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// This range applied to an object of `size` bytes: cut at the end, `Ok(None)` when it
    /// covers the whole object, [`RangeError::Unsatisfiable`] when it starts at or past the end.
    pub fn within(self, size: u64) -> Result<Option<ByteRange>, RangeError> {
        if self.start >= size || self.start > self.end {
            return Err(RangeError::Unsatisfiable);
        }
        let end = self.end.min(size - 1);
        if self.start == 0 && end == size - 1 {
            return Ok(None);
        }
        Ok(Some(ByteRange {
            start: self.start,
            end,
        }))
    }

    /// `Content-Range` header value for an object of `size` bytes.
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{}", self.start, self.end, size)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    /// The header is well formed but no byte of the object is in it: 416.
    #[error("range not satisfiable")]
    Unsatisfiable,
}

/// Parses a `Range` header against an object of `size` bytes (RFC 9110 §14).
///
/// Returns `Ok(None)` when the whole object should be sent: no header, a header that is not a
/// single `bytes=` range (multiple ranges, other units and malformed values are ignored, as
/// the RFC allows), or a range that covers the whole object from byte 0. Returns
/// `Err(Unsatisfiable)` for a syntactically valid range that selects nothing.
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<ByteRange>, RangeError> {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Ok(None);
    };
    let spec = spec.trim();
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (first, last) = (first.trim(), last.trim());
    let parse = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    let range = if first.is_empty() {
        // Suffix range: the last n bytes.
        let Some(n) = parse(last) else {
            return Ok(None);
        };
        if n == 0 || size == 0 {
            return Err(RangeError::Unsatisfiable);
        }
        ByteRange {
            start: size.saturating_sub(n),
            end: size - 1,
        }
    } else {
        let Some(start) = parse(first) else {
            return Ok(None);
        };
        let end = if last.is_empty() {
            None
        } else {
            match parse(last) {
                Some(e) if e >= start => Some(e),
                _ => return Ok(None),
            }
        };
        if start >= size {
            return Err(RangeError::Unsatisfiable);
        }
        ByteRange {
            start,
            end: end.map_or(size - 1, |e| e.min(size - 1)),
        }
    };
    if range.start == 0 && range.end == size - 1 {
        return Ok(None);
    }
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(start: u64, end: u64) -> Result<Option<ByteRange>, RangeError> {
        Ok(Some(ByteRange { start, end }))
    }

    #[test]
    fn forms() {
        assert_eq!(parse_range(Some("bytes=10-19"), 100), r(10, 19));
        assert_eq!(parse_range(Some("bytes=10-"), 100), r(10, 99));
        assert_eq!(parse_range(Some("bytes=-10"), 100), r(90, 99));
        assert_eq!(parse_range(Some("bytes=-1000"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=0-"), 100), Ok(None));
        assert_eq!(parse_range(Some("bytes=90-1000"), 100), r(90, 99));
        assert_eq!(parse_range(Some("bytes=010-"), 100), r(10, 99));
        assert_eq!(parse_range(None, 100), Ok(None));
    }

    #[test]
    fn unsatisfiable() {
        for h in ["bytes=100-", "bytes=100-200", "bytes=-0"] {
            assert_eq!(
                parse_range(Some(h), 100),
                Err(RangeError::Unsatisfiable),
                "{h}"
            );
        }
        assert_eq!(
            parse_range(Some("bytes=0-"), 0),
            Err(RangeError::Unsatisfiable)
        );
    }

    #[test]
    fn ignored() {
        for h in [
            "items=1-2",
            "bytes=5-1",
            "bytes=a-b",
            "bytes=1-2,4-5",
            "bytes=-",
            "bytes",
        ] {
            assert_eq!(parse_range(Some(h), 100), Ok(None), "{h}");
        }
    }

    #[test]
    fn within() {
        let r = |start, end| ByteRange { start, end };
        assert_eq!(r(10, 19).within(100), Ok(Some(r(10, 19))));
        assert_eq!(r(90, 1000).within(100), Ok(Some(r(90, 99))));
        assert_eq!(r(0, 99).within(100), Ok(None));
        assert_eq!(r(0, 500).within(100), Ok(None));
        assert_eq!(r(100, 200).within(100), Err(RangeError::Unsatisfiable));
        assert_eq!(r(0, 0).within(0), Err(RangeError::Unsatisfiable));
    }

    proptest! {
        #[test]
        fn ranges_stay_inside(h in "bytes=[0-9]{0,4}-[0-9]{0,4}", size in 0u64..5000) {
            if let Ok(Some(r)) = parse_range(Some(&h), size) {
                prop_assert!(r.start <= r.end && r.end < size);
            }
        }
    }
}
