//! `dosfs warmup`, `dosfs stats` (live rates) and `dosfs bench`, run as the built binary
//! against a real mount on the embedded store.
//!
//! Needs: /dev/fuse, fusermount3 (fuse3).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;

fn cache_counters(m: &Mount) -> (u64, u64) {
    let text = std::fs::read_to_string(m.path(".dosfs/stats")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    (
        v["cache"]["hits"].as_u64().unwrap(),
        v["cache"]["misses"].as_u64().unwrap(),
    )
}

#[test]
fn warmup_reads_a_tree_into_the_cache() {
    let m = Mount::new();
    // Written over REST: the mount's cache has none of it.
    let sizes = [0usize, 1, 300_000, 2 << 20];
    let mut total = 0;
    for (i, size) in sizes.iter().enumerate() {
        m.rest().put(
            &format!("tree/sub{}/f{i}.bin", i % 2),
            &pseudo_random(i as u64, *size),
        );
        total += size;
    }
    m.rest().put("elsewhere.bin", &pseudo_random(9, 1 << 20));
    assert!(
        wait_until(std::time::Duration::from_secs(10), || walk_files(
            &m.path("tree")
        )
        .len()
            == 4)
        .is_some()
    );

    let out = Command::new(DOSFS)
        .arg("warmup")
        .arg(m.path("tree"))
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("warmed 4 files, ")
            && stdout.contains(&format!("({total} bytes)"))
            && stdout.contains(", 0 errors"),
        "{stdout}"
    );

    // Read again: every block is found in the cache.
    let (hits, misses) = cache_counters(&m);
    for (i, size) in sizes.iter().enumerate() {
        let data = read(&m.path(&format!("tree/sub{}/f{i}.bin", i % 2)));
        assert_eq!(data.len(), *size);
    }
    let (hits2, misses2) = cache_counters(&m);
    assert!(hits2 > hits, "cache hits did not rise: {hits} -> {hits2}");
    assert_eq!(misses2, misses, "a warmed file missed the cache");

    // A path that cannot be read: reported in one line, counted, exit status 1.
    let out = Command::new(DOSFS)
        .arg("warmup")
        .arg(m.path("tree/sub0"))
        .arg(m.path("no-such-file"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains("warmed 2 files") && stdout.contains(", 1 errors"),
        "{stdout}"
    );
    assert_eq!(
        stderr
            .lines()
            .filter(|l| l.contains("no-such-file"))
            .count(),
        1,
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn stats_prints_a_line_per_sample_while_a_writer_runs() {
    let m = Mount::new();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (stop, dir) = (stop.clone(), m.path(""));
        std::thread::spawn(move || {
            let data = pseudo_random(1, 1 << 20);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                std::fs::write(dir.join(format!("w{}", i % 8)), &data).unwrap();
                i += 1;
            }
        })
    };
    let out = Command::new(DOSFS)
        .arg("stats")
        .arg(&m.mp)
        .args(["--count", "2", "--interval", "1"])
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let stdout = succeeded(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    for line in &lines {
        assert!(
            !line.contains('\x1b'),
            "not a terminal, yet escapes: {line:?}"
        );
        for field in [
            "ops/s ",
            "| read ",
            "| write ",
            "| cache hits ",
            "| pending uploads ",
        ] {
            assert!(line.contains(field), "{field:?} missing in {line:?}");
        }
        // The writer's bytes show as a write rate and as write operations.
        let rate: f64 = line
            .split("| write ")
            .nth(1)
            .and_then(|r| r.split(' ').next())
            .and_then(|r| r.parse().ok())
            .unwrap_or_else(|| panic!("no write rate in {line:?}"));
        assert!(rate > 0.0, "{line}");
        assert!(line.contains(" write "), "{line}");
    }

    // The counters behind the rates, in the file and in the one-off table.
    let json = Command::new(DOSFS)
        .arg("stats")
        .arg(&m.mp)
        .arg("--json")
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let ops = &v["operations"];
    assert!(ops["by_kind"]["write"].as_u64().unwrap() > 0, "{ops}");
    assert!(ops["written_bytes"].as_u64().unwrap() >= 1 << 20, "{ops}");
    assert!(ops["total"].as_u64().unwrap() >= ops["by_kind"]["write"].as_u64().unwrap());
    let all = Command::new(DOSFS)
        .arg("stats")
        .arg(&m.mp)
        .arg("--all")
        .output()
        .unwrap();
    let all = String::from_utf8_lossy(&all.stdout);
    assert!(all.lines().any(|l| l == "operations"), "{all}");

    // Not a mount: one line, no panic.
    let out = Command::new(DOSFS)
        .arg("stats")
        .arg(&m.root)
        .args(["--count", "1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn bench_prints_a_table_and_leaves_nothing_behind() {
    let m = Mount::new();
    let out = Command::new(DOSFS)
        .arg("bench")
        .arg(&m.mp)
        .args(["--big-size", "2", "--small-count", "20"])
        .output()
        .unwrap();
    let stdout = succeeded(&out);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("OPERATION") && lines[0].contains("RATE"),
        "{stdout}"
    );
    for (op, amount, unit) in [
        ("big file write + fsync", "2.0 MiB", "MiB/s"),
        ("big file read", "2.0 MiB", "MiB/s"),
        ("small file create + write", "20 files", "files/s"),
        ("small file stat", "20 files", "files/s"),
        ("small file remove", "20 files", "files/s"),
    ] {
        let row = lines
            .iter()
            .find(|l| l.starts_with(op))
            .unwrap_or_else(|| panic!("no {op:?} row in\n{stdout}"));
        assert!(
            row.contains(amount) && row.ends_with(unit) && row.contains(" s "),
            "{row}"
        );
    }
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(
        list_dir(&m.mp),
        Vec::<String>::new(),
        "bench left files behind"
    );

    // Not a folder: one line, no panic, nothing made.
    let out = Command::new(DOSFS)
        .arg("bench")
        .arg(m.path("nothing-here"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// The stdout of a `dosfs` run that must have succeeded (else both outputs in the failure).
fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
