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

    let out = dosfs("warmup", &[&m.path("tree")], &[]);
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
    let out = dosfs(
        "warmup",
        &[&m.path("tree/sub0"), &m.path("no-such-file")],
        &[],
    );
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
    let json = dosfs("stats", &[&m.mp], &["--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let ops = &v["operations"];
    assert!(ops["by_kind"]["write"].as_u64().unwrap() > 0, "{ops}");
    assert!(ops["written_bytes"].as_u64().unwrap() >= 1 << 20, "{ops}");
    assert!(ops["total"].as_u64().unwrap() >= ops["by_kind"]["write"].as_u64().unwrap());
    let all = dosfs("stats", &[&m.mp], &["--all"]);
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
    let out = dosfs("bench", &[&m.path("nothing-here")], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// The stdout of a `dosfs` run that must have succeeded (else both outputs in the failure).
/// Runs `dosfs CMD PATHS… FLAGS…`.
fn dosfs(cmd: &str, paths: &[&std::path::Path], flags: &[&str]) -> std::process::Output {
    Command::new(DOSFS)
        .arg(cmd)
        .args(paths)
        .args(flags)
        .output()
        .unwrap()
}

fn succeeded(out: &std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `user.dosfs.redundancy` of a file, read through the mount.
fn redundancy(path: &std::path::Path) -> String {
    let mut buf = [0u8; 128];
    let n = rustix::fs::getxattr(path, "user.dosfs.redundancy", &mut buf[..])
        .unwrap_or_else(|e| panic!("getxattr {}: {e}", path.display()));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The committed shard files of content `hex` in the embedded store under `root`
/// (shards over 256 KiB are files of their own, `HEX.N`).
fn shard_files(root: &std::path::Path, hex: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                // Removed and quarantined shards are not committed ones.
                if name != "garbage" && name != "quarantine" {
                    dirs.push(p);
                }
            } else if name
                .strip_prefix(&format!("{hex}."))
                .is_some_and(|rest| rest.parse::<u8>().is_ok())
            {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn redundancy_xattr_and_check_find_and_repair_lost_shards() {
    let m = Mount::new();
    std::fs::create_dir(m.path("keep")).unwrap();
    let body = pseudo_random(31, 3 << 20);
    std::fs::write(m.path("keep/a.bin"), &body).unwrap();
    std::fs::write(m.path("keep/b.txt"), b"small and healthy").unwrap();
    let a = m.path("keep/a.bin");
    assert_eq!(redundancy(&a), "6/6");
    let listed = sh(&m.mp, "getfattr -d keep/a.bin");
    assert!(listed.contains("user.dosfs.redundancy=\"6/6\""), "{listed}");

    let hex = dos_protocol::ContentHash::of(&body).to_hex();
    let store = m.root.join("store");
    let files = shard_files(&store, &hex);
    assert_eq!(files.len(), 6, "{files:?}");

    // One shard file removed: the cheap check sees five and queues a repair, which puts
    // the sixth back.
    std::fs::remove_file(&files[2]).unwrap();
    assert_eq!(redundancy(&a), "5/6 (repair queued)");
    assert!(
        wait_until(std::time::Duration::from_secs(20), || redundancy(&a)
            == "6/6")
        .is_some(),
        "the queued repair did not bring back the sixth shard: {}",
        redundancy(&a)
    );
    assert_eq!(shard_files(&store, &hex).len(), 6);

    // One shard removed and one corrupted in its middle (which only a full read finds):
    // `dosfs check` rebuilds both and says so.
    let files = shard_files(&store, &hex);
    std::fs::remove_file(&files[0]).unwrap();
    let mut bytes = std::fs::read(&files[4]).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&files[4], &bytes).unwrap();
    let out = dosfs("check", &[&m.path("keep")], &[]);
    let stdout = succeeded(&out);
    assert!(
        stdout.contains("repaired  ") && stdout.contains("keep/a.bin: shards ["),
        "{stdout}"
    );
    assert!(
        stdout.contains("checked 2 files, ")
            && stdout.contains(
                ": 1 healthy, 1 repaired (2 shards rebuilt), 0 bad, 0 not uploaded yet, 0 errors"
            ),
        "{stdout}"
    );
    assert_eq!(shard_files(&store, &hex).len(), 6);
    let out = dosfs("check", &[&m.path("keep")], &[]);
    let stdout = succeeded(&out);
    assert!(
        stdout.contains(": 2 healthy, 0 repaired (0 shards rebuilt), 0 bad"),
        "{stdout}"
    );
    assert!(read(&a) == body);

    // A path that is not there: reported, exit status 1.
    let out = dosfs("check", &[&m.path("keep/none")], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("error     ") && stdout.contains("1 errors"),
        "{stdout}"
    );
}
