//! Signatures of internal requests: data servers accept only requests an API server of their
//! cluster signed with the cluster secret.
//!
//! Header `x-dos-signature: <unix seconds>.<hex HMAC-SHA256(secret, "METHOD\npath?query\nsecs")>`.
//! A signature older or newer than [`MAX_SKEW_SECS`] is refused.

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const MAX_SKEW_SECS: u64 = 300;

fn mac(secret: &[u8], method: &str, path_and_query: &str, secs: u64) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    m.update(method.as_bytes());
    m.update(b"\n");
    m.update(path_and_query.as_bytes());
    m.update(b"\n");
    m.update(secs.to_string().as_bytes());
    Some(m)
}

/// The header value signing `method path_and_query` at `now_secs`.
pub fn sign(secret: &[u8], method: &str, path_and_query: &str, now_secs: u64) -> String {
    let sig = mac(secret, method, path_and_query, now_secs)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("{now_secs}.{sig}")
}

/// Whether `header` is a valid, fresh signature of `method path_and_query`.
pub fn verify(
    secret: &[u8],
    method: &str,
    path_and_query: &str,
    header: Option<&str>,
    now_secs: u64,
) -> bool {
    let Some((secs, sig)) = header.and_then(|h| h.trim().split_once('.')) else {
        return false;
    };
    let Ok(secs) = secs.parse::<u64>() else {
        return false;
    };
    if secs.abs_diff(now_secs) > MAX_SKEW_SECS {
        return false;
    }
    let Ok(sig) = hex::decode(sig) else {
        return false;
    };
    mac(secret, method, path_and_query, secs).is_some_and(|m| m.verify_slice(&sig).is_ok())
}

/// Seconds since the Unix epoch, now.
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_verifies() {
        let h = sign(b"k", "GET", "/shards/ab/0", 1000);
        assert!(verify(b"k", "GET", "/shards/ab/0", Some(&h), 1000));
        assert!(verify(b"k", "GET", "/shards/ab/0", Some(&h), 1200));
        assert!(
            !verify(b"k", "GET", "/shards/ab/0", Some(&h), 2000),
            "stale"
        );
        assert!(!verify(b"other", "GET", "/shards/ab/0", Some(&h), 1000));
        assert!(!verify(b"k", "DELETE", "/shards/ab/0", Some(&h), 1000));
        assert!(!verify(b"k", "GET", "/shards/ab/1", Some(&h), 1000));
        assert!(!verify(b"k", "GET", "/shards/ab/0", None, 1000));
        assert!(!verify(b"k", "GET", "/shards/ab/0", Some("garbage"), 1000));
    }
}
