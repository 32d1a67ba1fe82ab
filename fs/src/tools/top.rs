//! `dosfs stats MOUNTPOINT`: samples `MOUNTPOINT/.dosfs/stats` every interval and shows what
//! changed per second: FUSE operations by kind, bytes read and written, the cache's hit
//! ratio, uploads pending. Redraws in place on a terminal, one line per sample otherwise.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::Value;

/// Reads and parses the stats file of the mount at `mountpoint`.
pub fn read_stats(mountpoint: &Path) -> anyhow::Result<Value> {
    let path = mountpoint.join(".dosfs").join("stats");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {} (is it a dosfs mount?)", path.display()))?;
    serde_json::from_str(&text).context("the daemon's stats are not JSON")
}

fn num(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// What changed between two reports, per second.
pub struct Rates {
    pub ops: f64,
    /// Operations per second by kind, busiest first (kinds that did not move left out).
    pub by_kind: Vec<(String, f64)>,
    pub read_bytes: f64,
    pub written_bytes: f64,
    pub hits: f64,
    pub misses: f64,
    /// Files waiting for their upload (write-back) and their bytes, uploads streaming now.
    pub pending: u64,
    pub pending_bytes: u64,
    pub uploading: u64,
}

impl Rates {
    pub fn between(before: &Value, after: &Value, secs: f64) -> Rates {
        let secs = secs.max(1e-3);
        let rate = |path: &[&str]| num(after, path).saturating_sub(num(before, path)) as f64 / secs;
        let mut by_kind: Vec<(String, f64)> = after["operations"]["by_kind"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| (k.clone(), rate(&["operations", "by_kind", k])))
            .filter(|(_, r)| *r > 0.0)
            .collect();
        by_kind.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Rates {
            ops: rate(&["operations", "total"]),
            by_kind,
            read_bytes: rate(&["operations", "read_bytes"]),
            written_bytes: rate(&["operations", "written_bytes"]),
            hits: rate(&["cache", "hits"]),
            misses: rate(&["cache", "misses"]),
            pending: num(after, &["writeback", "pending"]),
            pending_bytes: num(after, &["writeback", "pending_bytes"]),
            uploading: num(after, &["streamed_uploads", "active"]),
        }
    }

    /// The share of block lookups that found their block, as `97.5%` (`-` without lookups).
    pub fn hit_ratio(&self) -> String {
        let all = self.hits + self.misses;
        if all > 0.0 {
            format!("{:.1}%", 100.0 * self.hits / all)
        } else {
            "-".to_string()
        }
    }

    /// One plain line: `ops/s 120 (read 100 getattr 20) | read 12.0 MiB/s | ...`.
    pub fn line(&self) -> String {
        let kinds: Vec<String> = self
            .by_kind
            .iter()
            .map(|(k, r)| format!("{k} {r:.0}"))
            .collect();
        format!(
            "ops/s {:.0} ({}) | read {}/s | write {}/s | cache hits {} ({:.0}/s, misses {:.0}/s) | pending uploads {} ({}), uploading {}",
            self.ops,
            if kinds.is_empty() {
                "-".to_string()
            } else {
                kinds.join(" ")
            },
            super::mib(self.read_bytes),
            super::mib(self.written_bytes),
            self.hit_ratio(),
            self.hits,
            self.misses,
            self.pending,
            super::size(self.pending_bytes),
            self.uploading,
        )
    }

    /// The full screen of the terminal view.
    fn screen(&self, mountpoint: &Path, now: &Value, interval: Duration) -> String {
        let mut s = format!(
            "dosfs stats {} (every {:.1} s, pid {}; Ctrl-C to stop)\n\n",
            mountpoint.display(),
            interval.as_secs_f64(),
            num(now, &["process", "pid"])
        );
        s += &format!(
            "  {:<22} {:>12}\n",
            "FUSE operations/s",
            format!("{:.0}", self.ops)
        );
        for (k, r) in &self.by_kind {
            s += &format!("    {k:<20} {:>12}\n", format!("{r:.0}"));
        }
        s += &format!(
            "\n  {:<22} {:>12}\n  {:<22} {:>12}\n",
            "read/s",
            super::mib(self.read_bytes),
            "written/s",
            super::mib(self.written_bytes)
        );
        s += &format!(
            "\n  {:<22} {:>12}\n  {:<22} {:>12}\n  {:<22} {:>12}\n",
            "cache hit ratio",
            self.hit_ratio(),
            "cache hits/s",
            format!("{:.0}", self.hits),
            "cache misses/s",
            format!("{:.0}", self.misses)
        );
        s += &format!(
            "  {:<22} {:>12}\n  {:<22} {:>12}\n",
            "cache memory",
            super::size(num(now, &["cache", "memory_bytes"])),
            "cache disk",
            super::size(num(now, &["cache", "disk_bytes"]))
        );
        s += &format!(
            "\n  {:<22} {:>12}\n  {:<22} {:>12}\n  {:<22} {:>12}\n",
            "pending uploads",
            self.pending,
            "pending bytes",
            super::size(self.pending_bytes),
            "uploading now",
            self.uploading
        );
        s
    }
}

/// Samples every `interval`, `count` times (forever without), printing each sample's rates.
/// `live`: redraw a screen in place (a terminal) instead of one line per sample.
pub fn run(
    mountpoint: &Path,
    interval: Duration,
    count: Option<u64>,
    live: bool,
) -> anyhow::Result<()> {
    let mut before = read_stats(mountpoint)?;
    let mut at = Instant::now();
    let mut out = std::io::stdout();
    let mut shown = 0u64;
    while count.is_none_or(|c| shown < c) {
        std::thread::sleep(interval);
        let now = read_stats(mountpoint)?;
        let secs = at.elapsed().as_secs_f64();
        at = Instant::now();
        let rates = Rates::between(&before, &now, secs);
        let text = if live {
            // Home, clear the screen, draw.
            format!("\x1b[H\x1b[2J{}", rates.screen(mountpoint, &now, interval))
        } else {
            format!("{} {}\n", clock(), rates.line())
        };
        if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                return Ok(());
            }
            return Err(e).context("writing the output");
        }
        before = now;
        shown += 1;
    }
    Ok(())
}

/// The time of day, UTC, `HH:MM:SS`.
fn clock() -> String {
    let secs = dos_protocol::now_ns().div_euclid(1_000_000_000);
    let day = secs.rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", day / 3600, day % 3600 / 60, day % 60)
}
