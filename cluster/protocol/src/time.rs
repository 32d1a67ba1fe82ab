use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// RFC 3339 UTC with nanoseconds, e.g. `2026-11-26T17:05:03.123456789Z`.
pub fn format_rfc3339_ns(ns: i64) -> String {
    let t = if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH
    };
    humantime::format_rfc3339_nanos(t).to_string()
}

pub fn parse_rfc3339_ns(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339_weak(s.trim()).ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_nanos()).ok()
}

/// A moment a person types (`.dosfs/at/<time>`, `?at=`, `--at`, `--since`), as nanoseconds
/// since the epoch. Accepted: RFC 3339 (`2026-12-01T08:30:00Z`, with fractions of a second,
/// `T` or a space, `Z` or an offset such as `+02:00`); the same without a zone, meaning UTC
/// (`2026-12-01T08:30:00`, also without the seconds, `2026-12-01T08:30`); a date alone
/// (`2026-12-01`, its midnight UTC); the compact form of history file names
/// (`20261201T083000Z`); and Unix seconds after `@` (`@1795942200`). The error says which
/// forms are accepted.
pub fn parse_moment(s: &str) -> Result<i64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "{s:?} is not a time: use RFC 3339 (2026-12-01T08:30:00Z), a date (2026-12-01), \
             20261201T083000Z or @UNIX_SECONDS"
        )
    };
    if let Some(secs) = s.strip_prefix('@') {
        let secs: i64 = secs.parse().map_err(|_| bad())?;
        return secs.checked_mul(1_000_000_000).ok_or_else(bad);
    }
    let b = s.as_bytes();
    let text = if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        format!("{s}T00:00:00Z")
    } else if b.len() == 16 && b[8] == b'T' && b[15] == b'Z' && !s.contains('-') {
        // 20261201T083000Z
        format!(
            "{}-{}-{}T{}:{}:{}Z",
            &s[0..4],
            &s[4..6],
            &s[6..8],
            &s[9..11],
            &s[11..13],
            &s[13..15]
        )
    } else if b.len() == 16 && b[10] == b'T' && b[13] == b':' {
        format!("{s}:00Z")
    } else {
        s.to_string()
    };
    if !text.is_ascii() {
        return Err(bad());
    }
    // A numeric offset after the time of day (`+02:00`, `-0530`): humantime takes UTC only.
    let (main, offset_secs) = split_offset(&text).ok_or_else(bad)?;
    let ns = parse_rfc3339_ns(main).ok_or_else(bad)?;
    ns.checked_sub(offset_secs * 1_000_000_000).ok_or_else(bad)
}

/// `(time, offset in seconds east of UTC)`; `None` for a malformed offset.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    // The offset can only start after the time of day (past `YYYY-MM-DDTHH:MM`).
    let Some(pos) = s
        .get(16..)
        .and_then(|t| t.rfind(['+', '-']))
        .map(|p| p + 16)
    else {
        return Some((s, 0));
    };
    let (main, off) = s.split_at(pos);
    let sign = if off.starts_with('-') { -1 } else { 1 };
    let digits: String = off[1..].chars().filter(|c| *c != ':').collect();
    if digits.len() != 4 || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let hours: i64 = digits[..2].parse().ok()?;
    let minutes: i64 = digits[2..].parse().ok()?;
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((main, sign * (hours * 3600 + minutes * 60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments() {
        let t = parse_rfc3339_ns("2026-12-01T08:30:00Z").unwrap();
        let midnight = parse_rfc3339_ns("2026-12-01T00:00:00Z").unwrap();
        for (s, want) in [
            ("2026-12-01T08:30:00Z", t),
            ("2026-12-01 08:30:00Z", t),
            ("2026-12-01T08:30:00", t),
            ("2026-12-01T08:30", t),
            ("2026-12-01T10:30:00+02:00", t),
            ("2026-12-01T03:00:00-0530", t),
            ("20261201T083000Z", t),
            ("2026-12-01", midnight),
            ("@1796113800", t),
            ("2026-12-01T08:30:00.5Z", t + 500_000_000),
        ] {
            assert_eq!(parse_moment(s), Ok(want), "{s}");
        }
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-12-01T08:30:00+2",
            "@x",
            "\u{e9}",
        ] {
            let e = parse_moment(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{e}");
        }
    }

    #[test]
    fn round_trip() {
        let ns = 1_795_708_800_123_456_789;
        assert_eq!(parse_rfc3339_ns(&format_rfc3339_ns(ns)), Some(ns));
        assert_eq!(parse_rfc3339_ns("nonsense"), None);
    }
}
