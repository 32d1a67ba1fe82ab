//! The daemon's memory under its budget, read from /proc (a memory figure, not a timing):
//! with `--memory-size 64M`, cold reads of a file much larger than the budget, two at once,
//! peak at most 64 MiB above the budget, and the daemon gives what they took back once idle.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

/// A field of /proc/PID/status, in MiB.
fn status_mib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    kb / 1024
}

#[test]
fn cold_reads_stay_within_the_memory_budget_and_memory_is_given_back() {
    let m = Mount::new_with(&["--memory-size", "64M"]);
    let pid = m.pid().expect("the daemon's pid");
    let len = 192 << 20;
    let body = pseudo_random(11, len);
    std::fs::write(m.path("big"), &body).unwrap();
    let idle = status_mib(pid, "RssAnon");
    // Peak counted from here on (writes to clear_refs need the process's owner: root here).
    let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let p = m.path("big");
            std::thread::spawn(move || read(&p))
        })
        .collect();
    for r in readers {
        assert!(r.join().unwrap() == body, "the bytes read back");
    }
    let peak = status_mib(pid, "VmHWM");
    eprintln!("[memory] idle {idle} MiB anonymous, peak {peak} MiB resident (reset: {reset})");
    if reset {
        assert!(
            peak <= 64 + 64 + idle.max(16),
            "peak {peak} MiB with a 64 MiB budget (idle {idle} MiB anonymous)"
        );
    }
    let settled = wait_until(Duration::from_secs(40), || {
        status_mib(pid, "RssAnon") <= idle + 64
    });
    assert!(
        settled.is_some(),
        "still {} MiB anonymous 40 s after the reads (idle {idle})",
        status_mib(pid, "RssAnon")
    );
    // The daemon's own report says what it holds.
    let stats: serde_json::Value = serde_json::from_slice(&read(&m.path(".dosfs/stats"))).unwrap();
    assert_eq!(stats["cache"]["memory_budget_bytes"], 32 << 20, "{stats}");
    assert!(
        stats["process"]["rss_bytes"].as_u64().unwrap() > 0,
        "{stats}"
    );
    assert!(
        stats["reads"]["blocks_held_bytes"].as_u64().unwrap()
            <= stats["reads"]["blocks_held_budget_bytes"].as_u64().unwrap(),
        "{stats}"
    );
}
