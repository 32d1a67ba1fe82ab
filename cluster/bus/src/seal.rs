//! Authenticated bus messages. Anyone who can publish to the broker could otherwise announce a
//! data server (and so receive shard uploads and serve reads) or answer a locate. With the
//! cluster secret, every message is sealed:
//!
//! ```text
//! mac (32) | unix seconds (8, LE) | nonce (16) | body
//! mac = HMAC-SHA-256(secret, "dos-bus-v1" | purpose | seconds | nonce | body)
//! ```
//!
//! where `purpose` names what the message is for (`heartbeat`, `locate <correlation>`,
//! `reply <correlation>`), so that a message cannot be replayed as another kind or into
//! another locate. A receiver drops (and counts) a message whose MAC does not verify, whose
//! time is more than [`WINDOW`] away from its own clock, or whose nonce it has seen within the
//! window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far a message's time may be from the receiver's clock (and how long nonces are kept).
pub const WINDOW: Duration = Duration::from_secs(120);
const HEADER: usize = 32 + 8 + 16;
const DOMAIN: &[u8] = b"dos-bus-v1";
/// Nonces remembered at most (a flood of valid messages cannot grow memory past this).
const MAX_NONCES: usize = 200_000;

/// Seals and opens bus messages with the cluster secret (or passes them through without one).
pub struct Sealer {
    secret: Option<Vec<u8>>,
    seen: Mutex<HashMap<[u8; 16], u64>>,
    rejected: AtomicU64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("secret", &self.secret.as_ref().map(|_| "<set>"))
            .field("rejected", &self.rejected.load(Ordering::Relaxed))
            .finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Sealer {
    pub fn new(secret: Option<Vec<u8>>) -> Self {
        Self {
            secret,
            seen: Mutex::default(),
            rejected: AtomicU64::new(0),
        }
    }

    /// Whether messages are sealed.
    pub fn is_sealed(&self) -> bool {
        self.secret.is_some()
    }

    /// Messages dropped because they were unsigned, forged, stale or replayed.
    pub fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }

    fn mac(secret: &[u8], purpose: &str, header: &[u8], body: &[u8]) -> Hmac<Sha256> {
        // HMAC takes a key of any length.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
        mac.update(DOMAIN);
        mac.update(&(purpose.len() as u64).to_le_bytes());
        mac.update(purpose.as_bytes());
        mac.update(header);
        mac.update(body);
        mac
    }

    /// `body`, sealed for `purpose` (unchanged without a secret).
    pub fn seal(&self, purpose: &str, body: &[u8]) -> Vec<u8> {
        let Some(secret) = &self.secret else {
            return body.to_vec();
        };
        let mut header = Vec::with_capacity(24);
        header.extend_from_slice(&unix_now().to_le_bytes());
        header.extend_from_slice(&rand::random::<[u8; 16]>());
        let tag = Self::mac(secret, purpose, &header, body)
            .finalize()
            .into_bytes();
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(&tag);
        out.extend_from_slice(&header);
        out.extend_from_slice(body);
        out
    }

    /// The body of a message sealed for `purpose`, once (a replay is dropped), or why it is
    /// dropped (counted). For heartbeats: a replayed one would keep a dead server live.
    pub fn open<'a>(&self, purpose: &str, data: &'a [u8]) -> Result<&'a [u8], &'static str> {
        self.open_with(purpose, data, true)
    }

    /// Like [`open`](Self::open), without remembering the nonce: for messages bound to one
    /// locate (its correlation id is in `purpose`), which several responders of one process
    /// receive and whose replays change nothing (answers are counted once per server).
    pub fn open_bound<'a>(&self, purpose: &str, data: &'a [u8]) -> Result<&'a [u8], &'static str> {
        self.open_with(purpose, data, false)
    }

    fn open_with<'a>(
        &self,
        purpose: &str,
        data: &'a [u8],
        once: bool,
    ) -> Result<&'a [u8], &'static str> {
        let Some(secret) = &self.secret else {
            return Ok(data);
        };
        let result = self.check(secret, purpose, data, once);
        if result.is_err() {
            self.rejected.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn check<'a>(
        &self,
        secret: &[u8],
        purpose: &str,
        data: &'a [u8],
        once: bool,
    ) -> Result<&'a [u8], &'static str> {
        if data.len() < HEADER {
            return Err("not signed");
        }
        let (tag, rest) = data.split_at(32);
        let (header, body) = rest.split_at(24);
        Self::mac(secret, purpose, header, body)
            .verify_slice(tag)
            .map_err(|_| "bad signature")?;
        let mut secs = [0u8; 8];
        secs.copy_from_slice(&header[..8]);
        let secs = u64::from_le_bytes(secs);
        let now = unix_now();
        if secs.abs_diff(now) > WINDOW.as_secs() {
            return Err("outside the time window");
        }
        if !once {
            return Ok(body);
        }
        let mut nonce = [0u8; 16];
        nonce.copy_from_slice(&header[8..]);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= MAX_NONCES {
            seen.retain(|_, at| at.abs_diff(now) <= WINDOW.as_secs());
            if seen.len() >= MAX_NONCES {
                return Err("too many messages in the window");
            }
        }
        if seen.insert(nonce, secs).is_some() {
            return Err("replayed");
        }
        Ok(body)
    }
}

/// Whether `addr` is `host:port` and nothing else (no scheme, user, path or query): what a
/// data server may announce as its address.
pub fn is_host_port(addr: &str) -> bool {
    let Some((host, port)) = addr.rsplit_once(':') else {
        return false;
    };
    if port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    if port.parse::<u16>().is_err() {
        return false;
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_messages_open_once_for_their_purpose() {
        let s = Sealer::new(Some(vec![7; 32]));
        let m = s.seal("heartbeat", b"{\"id\":\"a\"}");
        assert_eq!(s.open("heartbeat", &m), Ok(&b"{\"id\":\"a\"}"[..]));
        assert_eq!(s.open("heartbeat", &m), Err("replayed"));
        let m = s.seal("reply 1", b"x");
        assert_eq!(s.open("reply 2", &m), Err("bad signature"));
        assert_eq!(s.open("heartbeat", b"{\"id\":\"a\"}"), Err("not signed"));
        let other = Sealer::new(Some(vec![8; 32]));
        assert_eq!(
            s.open("heartbeat", &other.seal("heartbeat", b"x")),
            Err("bad signature")
        );
        let mut flipped = s.seal("heartbeat", b"abc");
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert_eq!(s.open("heartbeat", &flipped), Err("bad signature"));
        assert_eq!(s.rejected(), 5);
        let open = Sealer::new(None);
        assert_eq!(open.seal("heartbeat", b"x"), b"x");
    }

    #[test]
    fn stale_messages_are_dropped() {
        let s = Sealer::new(Some(vec![7; 32]));
        let old = unix_now() - WINDOW.as_secs() - 5;
        let mut header = old.to_le_bytes().to_vec();
        header.extend_from_slice(&[1; 16]);
        let tag = Sealer::mac(&[7; 32], "heartbeat", &header, b"x")
            .finalize()
            .into_bytes();
        let mut m = tag.to_vec();
        m.extend_from_slice(&header);
        m.push(b'x');
        assert_eq!(s.open("heartbeat", &m), Err("outside the time window"));
    }

    #[test]
    fn addresses_are_host_and_port_only() {
        for ok in [
            "10.0.0.1:23334",
            "data-3.example:80",
            "[::1]:9000",
            "localhost:1",
        ] {
            assert!(is_host_port(ok), "{ok}");
        }
        for bad in [
            "evil.example/x:80",
            "http://h:1",
            "h:1/path",
            "user@h:1",
            "h",
            ":80",
            "h:99999",
            "h:1?x",
            "[zz]:1",
            "h :1",
        ] {
            assert!(!is_host_port(bad), "{bad}");
        }
    }
}
