//! Signatures of internal requests: data servers accept only requests an API server of their
//! cluster signed with the cluster secret.
//!
//! Header `x-dos-signature: v2.<unix seconds>.<nonce, 32 hex>.<hex HMAC-SHA256>` over
//! `v2 \n METHOD \n path?query \n seconds \n nonce \n target server id \n Range \n body SHA-256`
//! (the last two `-` when absent). So a captured request cannot be sent to another data
//! server, with another range, or with another body (a whole shard's body is named by
//! [`BODY_SHA256`](crate::headers::BODY_SHA256), which the data server checks), and a data
//! server refuses a nonce it has seen (see [`NonceCache`]). A signature older or newer than
//! [`MAX_SKEW_SECS`] is refused.

use std::collections::HashMap;
use std::sync::Mutex;

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const MAX_SKEW_SECS: u64 = 300;

/// What a signature covers besides the time and the nonce.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    pub path_and_query: &'a str,
    /// The id of the data server the request is for.
    pub server_id: &'a str,
    /// The `Range` header, if any.
    pub range: Option<&'a str>,
    /// Hex SHA-256 of the body, when it is sent whole.
    pub body_sha256: Option<&'a str>,
}

fn mac(secret: &[u8], req: &Request<'_>, secs: u64, nonce: &str) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    for part in [
        "v2",
        req.method,
        req.path_and_query,
        &secs.to_string(),
        nonce,
        req.server_id,
        req.range.unwrap_or("-"),
        req.body_sha256.unwrap_or("-"),
    ] {
        m.update(part.as_bytes());
        m.update(b"\n");
    }
    Some(m)
}

/// The header value signing `req` at `now_secs`, with a fresh random nonce.
pub fn sign(secret: &[u8], req: &Request<'_>, now_secs: u64) -> String {
    let nonce = hex::encode(rand::random::<[u8; 16]>());
    let sig = mac(secret, req, now_secs, &nonce)
        .map(|m| hex::encode(m.finalize().into_bytes()))
        .unwrap_or_default();
    format!("v2.{now_secs}.{nonce}.{sig}")
}

/// The nonce of `header` when it is a valid, fresh signature of `req` (the caller refuses a
/// nonce it has seen, see [`NonceCache`]).
pub fn verify(
    secret: &[u8],
    req: &Request<'_>,
    header: Option<&str>,
    now_secs: u64,
) -> Option<[u8; 16]> {
    let mut parts = header?.trim().split('.');
    let (Some("v2"), Some(secs), Some(nonce), Some(sig), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let secs = secs.parse::<u64>().ok()?;
    if secs.abs_diff(now_secs) > MAX_SKEW_SECS {
        return None;
    }
    let nonce_bytes: [u8; 16] = hex::decode(nonce).ok()?.try_into().ok()?;
    let sig = hex::decode(sig).ok()?;
    mac(secret, req, secs, nonce)?.verify_slice(&sig).ok()?;
    Some(nonce_bytes)
}

/// Nonces of signatures accepted within the last [`MAX_SKEW_SECS`]: a request seen once is
/// refused when sent again (a replay), however fresh its signature.
#[derive(Default)]
pub struct NonceCache {
    seen: Mutex<HashMap<[u8; 16], u64>>,
}

/// Nonces a cache holds at most; past it, expired ones go, and if none has expired the
/// request is refused (a flood of valid requests cannot grow memory without bound).
const MAX_NONCES: usize = 1 << 20;

impl NonceCache {
    /// Records `nonce` (signed at about `now_secs`); false if it was seen before or the cache
    /// is full of fresh nonces.
    pub fn first_use(&self, nonce: [u8; 16], now_secs: u64) -> bool {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= MAX_NONCES {
            seen.retain(|_, at| at.abs_diff(now_secs) <= 2 * MAX_SKEW_SECS);
            if seen.len() >= MAX_NONCES {
                return false;
            }
        }
        seen.insert(nonce, now_secs).is_none()
    }
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

    fn req<'a>(method: &'a str, path: &'a str) -> Request<'a> {
        Request {
            method,
            path_and_query: path,
            server_id: "ds-1",
            range: None,
            body_sha256: None,
        }
    }

    #[test]
    fn signs_and_verifies() {
        let r = req("GET", "/shards/ab/0");
        let h = sign(b"k", &r, 1000);
        assert!(verify(b"k", &r, Some(&h), 1000).is_some());
        assert!(verify(b"k", &r, Some(&h), 1200).is_some());
        assert!(verify(b"k", &r, Some(&h), 2000).is_none(), "stale");
        assert!(verify(b"other", &r, Some(&h), 1000).is_none());
        assert!(verify(b"k", &req("DELETE", "/shards/ab/0"), Some(&h), 1000).is_none());
        assert!(verify(b"k", &req("GET", "/shards/ab/1"), Some(&h), 1000).is_none());
        let elsewhere = Request {
            server_id: "ds-2",
            ..r
        };
        assert!(
            verify(b"k", &elsewhere, Some(&h), 1000).is_none(),
            "another server"
        );
        let ranged = Request {
            range: Some("bytes=0-9"),
            ..r
        };
        assert!(
            verify(b"k", &ranged, Some(&h), 1000).is_none(),
            "another range"
        );
        let body = Request {
            body_sha256: Some("00"),
            ..r
        };
        assert!(
            verify(b"k", &body, Some(&h), 1000).is_none(),
            "another body"
        );
        assert!(verify(b"k", &r, None, 1000).is_none());
        assert!(verify(b"k", &r, Some("garbage"), 1000).is_none());
        // The old form (no nonce, nothing bound) is refused.
        assert!(verify(b"k", &r, Some("1000.abcd"), 1000).is_none());
    }

    #[test]
    fn a_nonce_is_used_once() {
        let r = req("PATCH", "/temp/x?offset=0");
        let h = sign(b"k", &r, 1000);
        let cache = NonceCache::default();
        let n = verify(b"k", &r, Some(&h), 1000).unwrap();
        assert!(cache.first_use(n, 1000));
        assert!(!cache.first_use(n, 1001), "a replay");
        let again = sign(b"k", &r, 1000);
        assert_ne!(again, h, "every signature has its own nonce");
        assert!(cache.first_use(verify(b"k", &r, Some(&again), 1000).unwrap(), 1000));
    }
}
