//! What this API server has seen of each data server's answers: how long they take, and
//! which servers missed a deadline lately (*suspects*). A server whose link silently went
//! (a partition, a hung disk, a frozen VM) is noticed by the first request that waits for
//! it, not 15 s later by heartbeat silence: from then on every request tries it last, new
//! content is placed elsewhere while six other servers are live, and its first good answer
//! clears it.
//!
//! The deadlines come from the answers seen: a shard request that has not answered within a
//! few times the usual answer time is raced (reads) or replaced (writes) by another server.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dos_protocol::{ServerId, ServerInfo};

/// Deadlines are never shorter than this (a loaded machine answers in tens of ms).
pub const HEDGE_FLOOR: Duration = Duration::from_millis(300);
/// ... nor longer than this (the stall a user may feel at most before a shard is raced).
pub const HEDGE_CEILING: Duration = Duration::from_millis(1200);
/// How many times the smoothed answer time a request waits before hedging.
const HEDGE_FACTOR: f64 = 4.0;
/// Weight of a new observation in the smoothed answer time.
const EWMA_WEIGHT: f64 = 0.1;
/// A suspect that answered nothing is tried again after this (it may be back).
const SUSPECT_FOR: Duration = Duration::from_secs(30);

#[derive(Debug, Default)]
struct State {
    /// When it last missed a deadline; `None`: not suspect.
    suspect_since: Option<Instant>,
    /// Smoothed answer time of its shard calls, in seconds; `None`: none seen yet.
    answer_secs: Option<f64>,
}

#[derive(Debug, Default)]
pub struct ServerHealth {
    servers: Mutex<HashMap<ServerId, State>>,
}

/// The usual answer time assumed before any answer was seen.
const FIRST_ANSWER_SECS: f64 = 0.02;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ServerHealth {
    /// How long a shard call may go unanswered before another server is asked too: a few
    /// times the usual answer time, within [`HEDGE_FLOOR`, `HEDGE_CEILING`]. The usual
    /// answer time is the median of the servers' smoothed ones, so that one slow server
    /// (the one to hedge against) does not lengthen every deadline.
    pub fn hedge_after(&self) -> Duration {
        let mut times: Vec<f64> = lock(&self.servers)
            .values()
            .filter_map(|s| s.answer_secs)
            .collect();
        let usual = if times.is_empty() {
            FIRST_ANSWER_SECS
        } else {
            times.sort_by(f64::total_cmp);
            times[(times.len() - 1) / 2]
        };
        Duration::from_secs_f64(usual * HEDGE_FACTOR).clamp(HEDGE_FLOOR, HEDGE_CEILING)
    }

    /// `server` answered a shard call in `took`: it is not suspect (any more).
    pub fn answered(&self, server: &ServerId, took: Duration) {
        let took = took.as_secs_f64().min(HEDGE_CEILING.as_secs_f64());
        let mut servers = lock(&self.servers);
        let s = servers.entry(server.clone()).or_default();
        let avg = s.answer_secs.get_or_insert(took);
        *avg += (took - *avg) * EWMA_WEIGHT;
        if s.suspect_since.take().is_some() {
            tracing::info!(server = %server, "data server answers again; no longer suspect");
        }
    }

    /// `server` missed a deadline: suspect from now on, for every request.
    pub fn missed(&self, server: &ServerId) {
        let mut servers = lock(&self.servers);
        let s = servers.entry(server.clone()).or_default();
        if s.suspect_since.is_none() {
            tracing::warn!(server = %server, "data server missed a deadline; suspect");
        }
        s.suspect_since = Some(Instant::now());
    }

    pub fn is_suspect(&self, server: &ServerId) -> bool {
        lock(&self.servers)
            .get(server)
            .and_then(|s| s.suspect_since)
            .is_some_and(|t| t.elapsed() < SUSPECT_FOR)
    }

    /// `servers` with the suspects moved to the end (otherwise in the same order).
    pub fn suspects_last(&self, servers: &mut [ServerInfo]) {
        servers.sort_by_key(|s| self.is_suspect(&s.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(i: u8) -> ServerInfo {
        ServerInfo {
            id: ServerId(format!("s{i}")),
            addr: format!("127.0.0.1:{}", 1000 + u16::from(i)),
        }
    }

    #[test]
    fn a_missed_deadline_makes_a_suspect_until_it_answers() {
        let h = ServerHealth::default();
        let mut list: Vec<ServerInfo> = (0..4).map(server).collect();
        h.missed(&list[1].id);
        assert!(h.is_suspect(&list[1].id));
        h.suspects_last(&mut list);
        let order: Vec<&str> = list.iter().map(|s| s.id.0.as_str()).collect();
        assert_eq!(order, ["s0", "s2", "s3", "s1"]);
        h.answered(&ServerId("s1".into()), Duration::from_millis(5));
        assert!(!h.is_suspect(&ServerId("s1".into())));
    }

    #[test]
    fn the_hedge_deadline_follows_answer_times_within_bounds() {
        let h = ServerHealth::default();
        assert_eq!(h.hedge_after(), HEDGE_FLOOR);
        for _ in 0..200 {
            h.answered(&ServerId("s".into()), Duration::from_millis(250));
        }
        let d = h.hedge_after();
        assert!(d > HEDGE_FLOOR && d <= HEDGE_CEILING, "{d:?}");
        for _ in 0..200 {
            h.answered(&ServerId("s".into()), Duration::from_secs(30));
        }
        assert_eq!(h.hedge_after(), HEDGE_CEILING);
    }

    #[test]
    fn one_slow_server_does_not_lengthen_the_deadline() {
        let h = ServerHealth::default();
        for _ in 0..200 {
            for i in 0..6 {
                h.answered(&ServerId(format!("s{i}")), Duration::from_millis(100));
            }
            h.answered(&ServerId("slow".into()), Duration::from_secs(1));
        }
        let d = h.hedge_after();
        assert!(
            d >= Duration::from_millis(390) && d <= Duration::from_millis(410),
            "{d:?}"
        );
    }
}
