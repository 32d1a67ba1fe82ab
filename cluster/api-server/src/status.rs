//! What `GET /status` (and the `/ui` page over it) shows: the data servers this API server
//! hears (and those it heard and no longer does), redundancy figures, running maintenance
//! jobs and request counts and rates. Everything is read from what the server already
//! holds (the bus's live set, the repair queue, the maintenance runs, the metrics it
//! renders): a status never waits on a data server.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dos_protocol::{ServerId, ServerInfo};
use serde::Serialize;

use crate::core::Core;
use crate::maintenance::{Maintenance, Report};

/// The status page's answer.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Seconds since the Unix epoch when this was made.
    pub time: u64,
    /// How long a data server may be silent before it is no longer live, in seconds.
    pub heartbeat_expiry_secs: u64,
    pub live: Vec<LiveServer>,
    /// Servers this API server heard since it started and hears no more.
    pub down: Vec<DownServer>,
    pub redundancy: Redundancy,
    /// Maintenance jobs running on this API server now, with their progress.
    pub maintenance: Vec<Report>,
    /// Requests this API server served (absent when it records no metrics).
    pub requests: Option<Requests>,
}

#[derive(Debug, Serialize)]
pub struct LiveServer {
    pub id: String,
    pub addr: String,
    /// Its last heartbeat said it is being drained (or a drain runs here).
    pub draining: bool,
    /// It missed a deadline lately (see `health`): tried last, given no new shards.
    pub suspect: bool,
    /// Shards it holds, and its storage folder's file system, as its last heartbeat said
    /// (every heartbeat carries them); absent until it sent one.
    pub shards: Option<u64>,
    pub disk_used_bytes: Option<u64>,
    pub disk_free_bytes: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct DownServer {
    pub id: String,
    pub addr: String,
    /// When this API server last saw it live, in seconds since the Unix epoch.
    pub last_seen: u64,
}

#[derive(Debug, Serialize)]
pub struct Redundancy {
    /// Contents queued for repair or being repaired.
    pub repairs_queued: usize,
    /// Shards rebuilt by this API server since it started (absent without metrics).
    pub shards_rebuilt: Option<u64>,
    /// Reads that needed parity (absent without metrics).
    pub degraded_reads: Option<u64>,
}

#[derive(Debug, Serialize, Clone, Copy, Default, PartialEq)]
pub struct Requests {
    /// Since the server started (requests for `/status` and `/ui` not counted).
    pub total: u64,
    /// Answers with a 4xx status.
    pub client_errors: u64,
    /// Answers with a 5xx status.
    pub server_errors: u64,
    /// Per second since the previous status (0 on the first).
    pub per_sec: f64,
    pub errors_per_sec: f64,
}

/// What the status remembers between two calls: who was seen, and the last request counts.
#[derive(Default)]
pub struct Seen {
    inner: Mutex<SeenInner>,
}

#[derive(Default)]
struct SeenInner {
    servers: BTreeMap<ServerId, (ServerInfo, u64)>,
    last: Option<(Instant, Requests)>,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Seen {
    /// Notes the live servers (also called where the server looks at them anyway, so a
    /// server that dies before anyone asked for a status is still shown as down).
    pub fn note(&self, live: &[ServerInfo]) {
        let now = now_secs();
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for s in live {
            inner.servers.insert(s.id.clone(), (s.clone(), now));
        }
    }

    /// The status as this API server sees it now.
    pub fn status(&self, core: &Core, maintenance: &Maintenance) -> Status {
        let live_servers = core.bus.live_servers();
        self.note(&live_servers);
        let draining_bus = core.bus.draining_servers();
        let text = core.config.metrics.as_ref().map(|m| m.render());
        // What each server holds, as its last heartbeat said (separate processes and the
        // embedded cluster alike); a server that sent none yet shows no figures.
        let stats = core.bus.server_stats();
        let of = |id: &ServerId| stats.iter().find(|(s, _)| s == id).map(|(_, st)| *st);
        let live = live_servers
            .iter()
            .map(|s| {
                let st = of(&s.id);
                LiveServer {
                    id: s.id.0.clone(),
                    addr: s.addr.clone(),
                    draining: draining_bus.contains(&s.id) || core.draining.contains(&s.id),
                    suspect: core.health.is_suspect(&s.id),
                    shards: st.map(|x| x.shards),
                    disk_used_bytes: st.map(|x| x.disk_used_bytes),
                    disk_free_bytes: st.map(|x| x.disk_free_bytes),
                }
            })
            .collect();
        let counts = text.as_deref().map(request_counts);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let down = inner
            .servers
            .iter()
            .filter(|(id, _)| !live_servers.iter().any(|s| &s.id == *id))
            .map(|(_, (s, seen))| DownServer {
                id: s.id.0.clone(),
                addr: s.addr.clone(),
                last_seen: *seen,
            })
            .collect();
        let requests = counts.map(|mut now| {
            let at = Instant::now();
            if let Some((then, before)) = inner.last {
                let secs = at.duration_since(then).as_secs_f64();
                if secs > 0.0 {
                    let errors = |r: &Requests| r.client_errors + r.server_errors;
                    now.per_sec = now.total.saturating_sub(before.total) as f64 / secs;
                    now.errors_per_sec = errors(&now).saturating_sub(errors(&before)) as f64 / secs;
                }
            }
            inner.last = Some((at, now));
            now
        });
        drop(inner);
        let value = |name: &str| text.as_deref().map(|t| metric_sum(t, name));
        Status {
            time: now_secs(),
            heartbeat_expiry_secs: dos_bus::HEARTBEAT_EXPIRY.as_secs(),
            live,
            down,
            redundancy: Redundancy {
                repairs_queued: core.repairs.pending(),
                shards_rebuilt: value(crate::metrics::SHARDS_REBUILT),
                degraded_reads: value(crate::metrics::DEGRADED_READS),
            },
            maintenance: maintenance.running().into_iter().map(|(_, r)| r).collect(),
            requests,
        }
    }
}

/// The sum over every label set of the family `name` in a Prometheus text.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(sample_value)
        .sum()
}

fn sample_value(line: &str) -> Option<u64> {
    let v: f64 = line.rsplit(' ').next()?.parse().ok()?;
    (v.is_finite() && v >= 0.0).then_some(v as u64)
}

/// The value of label `label` in a sample line.
fn label<'a>(line: &'a str, label: &str) -> Option<&'a str> {
    let pat = format!("{label}=\"");
    let start = line.find(&pat)? + pat.len();
    let len = line[start..].find('"')?;
    Some(&line[start..start + len])
}

/// Requests by status class from the rendered request family.
fn request_counts(text: &str) -> Requests {
    let mut r = Requests::default();
    let prefix = format!("{}{{", crate::metrics::REQUESTS);
    for line in text.lines().filter(|l| l.starts_with(&prefix)) {
        if matches!(label(line, "route"), Some("/status" | "/ui")) {
            continue;
        }
        let Some(n) = sample_value(line) else {
            continue;
        };
        r.total += n;
        match label(line, "status").and_then(|s| s.parse::<u16>().ok()) {
            Some(400..=499) => r.client_errors += n,
            Some(500..=599) => r.server_errors += n,
            _ => {}
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_requests_by_class() {
        let text = "# TYPE dos_api_requests_total counter\n\
            dos_api_requests_total{route=\"/objects/{*name}\",method=\"GET\",status=\"200\"} 7\n\
            dos_api_requests_total{route=\"/objects/{*name}\",method=\"GET\",status=\"404\"} 2\n\
            dos_api_requests_total{route=\"/objects/{*name}\",method=\"PUT\",status=\"503\"} 1\n\
            dos_api_requests_total{route=\"/status\",method=\"GET\",status=\"200\"} 50\n\
            dos_api_shards_rebuilt_total 3\n";
        let r = request_counts(text);
        assert_eq!((r.total, r.client_errors, r.server_errors), (10, 2, 1));
        assert_eq!(metric_sum(text, "dos_api_shards_rebuilt_total"), 3);
        assert_eq!(metric_sum(text, "dos_api_shards_rebuilt"), 0);
    }
}
