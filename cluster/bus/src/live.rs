use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use dos_protocol::{ServerId, ServerInfo, ServerStats};
use tokio::time::Instant;

/// How often a data server announces itself.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A data server silent for this long is no longer chosen.
pub const HEARTBEAT_EXPIRY: Duration = Duration::from_secs(15);

/// A server as its last heartbeat gave it, when, whether it said it is being drained, and
/// what it holds.
type Heard = (ServerInfo, Instant, bool, Option<ServerStats>);

/// The data servers an API server has heard from recently. Cheap to clone (shared).
#[derive(Clone)]

pub struct LiveSet {
    inner: Arc<Mutex<HashMap<ServerId, Heard>>>,
    expiry: Duration,
}

impl Default for LiveSet {
    fn default() -> Self {
        Self::new(HEARTBEAT_EXPIRY)
    }
}

impl LiveSet {
    pub fn new(expiry: Duration) -> Self {
        Self {
            inner: Arc::default(),
            expiry,
        }
    }

    /// Records a heartbeat of a server in service; a server that moved to another address
    /// is updated.
    pub fn record(&self, server: &ServerInfo) {
        self.record_as(server, false, None);
    }

    /// Records a heartbeat that says whether the server is being drained, and what it holds
    /// (a heartbeat without stats keeps the last ones heard).
    pub fn record_as(&self, server: &ServerInfo, draining: bool, stats: Option<ServerStats>) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let stats = stats.or_else(|| map.get(&server.id).and_then(|h| h.3));
        map.insert(
            server.id.clone(),
            (server.clone(), Instant::now(), draining, stats),
        );
    }

    /// The stats of live servers, as their last heartbeats told them.
    pub fn stats(&self) -> Vec<(ServerId, ServerStats)> {
        let now = Instant::now();
        let map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<(ServerId, ServerStats)> = map
            .iter()
            .filter(|(_, h)| now.duration_since(h.1) <= self.expiry)
            .filter_map(|(id, h)| Some((id.clone(), h.3?)))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Forgets a server at once (it said it is shutting down).
    pub fn remove(&self, id: &ServerId) {
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(id);
    }

    /// Servers heard from within the expiry window, sorted by id; expired ones are dropped.
    pub fn live(&self) -> Vec<ServerInfo> {
        let now = Instant::now();
        let mut map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        map.retain(|_, (_, seen, _, _)| now.duration_since(*seen) <= self.expiry);
        let mut out: Vec<_> = map.values().map(|(s, _, _, _)| s.clone()).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Live servers whose last heartbeat said they are being drained, sorted.
    pub fn draining(&self) -> Vec<ServerId> {
        let now = Instant::now();
        let map = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<ServerId> = map
            .iter()
            .filter(|(_, (_, seen, draining, _))| {
                *draining && now.duration_since(*seen) <= self.expiry
            })
            .map(|(id, _)| id.clone())
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn expires_and_returns() {
        let set = LiveSet::default();
        let s = ServerInfo {
            id: ServerId("a".into()),
            addr: "127.0.0.1:1".into(),
        };
        set.record(&s);
        assert_eq!(set.live(), vec![s.clone()]);
        tokio::time::advance(Duration::from_secs(14)).await;
        assert_eq!(set.live().len(), 1);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(set.live().is_empty());
        set.record(&s);
        assert_eq!(set.live().len(), 1);
    }
}
