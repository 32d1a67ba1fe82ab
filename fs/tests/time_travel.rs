//! Time travel on a real dosfs mount (issue 16): `.dosfs/at/<time>/` shows the tree of each
//! moment, `dosfs restore PATH --at TIME` brings a folder back (moving no bytes) and is
//! undone by restoring to the moment it names, `dosfs log` and `GET /log` list every change
//! newest first, and the listing of a folder of 10,000 entries at a moment is a few requests.
//!
//! Needs: /dev/fuse, fusermount3 (fuse3), diff, cp, find.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{DOSFS, Mount, sh, tempdir, wait_until};
use dos_protocol::{ChangeWhat, ContentHash, LogPage, format_rfc3339_ns, now_ns};

fn at(m: &Mount, t: i64) -> PathBuf {
    m.mp.join(".dosfs/at").join(format_rfc3339_ns(t))
}

/// A moment after everything done so far and before anything done next.
fn moment() -> i64 {
    std::thread::sleep(Duration::from_millis(20));
    let t = now_ns();
    std::thread::sleep(Duration::from_millis(20));
    t
}

/// Every node under `dir`: path, type, mode, and for all but folders size and mtime (ns).
fn shape(dir: &Path) -> String {
    sh(
        dir,
        "{ find . -type d -printf '%p %y %m\\n'; \
           find . ! -type d -printf '%p %y %m %s %T@\\n'; } | sort",
    )
}

/// `diff -r` of two trees (symlinks compared as links): empty when they are the same.
fn diff(a: &Path, b: &Path) -> String {
    let out = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
}

fn assert_same_tree(got: &Path, want: &Path) {
    assert_eq!(
        diff(got, want),
        "",
        "{} vs {}",
        got.display(),
        want.display()
    );
    assert_eq!(
        shape(got),
        shape(want),
        "{} vs {}",
        got.display(),
        want.display()
    );
}

/// Bytes in the data servers' shard files and packs: what new content would grow.
fn shard_bytes(store: &Path) -> u64 {
    fn walk(p: &Path, inside: bool, total: &mut u64) {
        let Ok(rd) = std::fs::read_dir(p) else { return };
        for e in rd.flatten() {
            let path = e.path();
            let name = e.file_name().to_string_lossy().to_string();
            let ty = e.file_type().unwrap();
            if ty.is_dir() {
                walk(&path, inside || name == "objects" || name == "packs", total);
            } else if inside && ty.is_file() {
                *total += e.metadata().unwrap().len();
            }
        }
    }
    let mut total = 0;
    walk(store, false, &mut total);
    total
}

fn dosfs(args: &[&str]) -> String {
    let out = Command::new(DOSFS).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "dosfs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The moment `dosfs restore` names for undoing it.
fn undo_moment(output: &str) -> String {
    output
        .lines()
        .find_map(|l| l.strip_prefix("undo: dosfs restore "))
        .and_then(|l| l.rsplit_once(" --at "))
        .map(|(_, t)| t.to_string())
        .unwrap_or_else(|| panic!("no undo line in {output}"))
}

fn log_pages(m: &Mount, prefix: &str, limit: usize) -> Vec<dos_protocol::LogEntry> {
    let rest = m.rest();
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!(
            "{}/log?prefix={}&limit={limit}",
            rest.base(),
            dos_protocol::encode_path(prefix)
        );
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={}", dos_protocol::encode_path(c)));
        }
        let page: LogPage = rest.block_on(async {
            let r = rest.http().get(&url).send().await.unwrap();
            assert_eq!(r.status(), 200, "{url}");
            r.json().await.unwrap()
        });
        out.extend(page.changes);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

#[test]
fn the_tree_at_each_moment_restore_and_log() {
    let m = Mount::new();
    let side = tempdir();
    let side = side.path();
    let before_all = moment();

    // Moment 1: a tree.
    sh(
        &m.mp,
        "mkdir -p proj/src proj/docs && echo one > proj/a.txt && echo 'fn main() {}' > proj/src/b.rs \
         && ln -s a.txt proj/link && printf x > proj/docs/c.md && chmod 600 proj/src/b.rs \
         && echo keep > top.txt",
    );
    let t1 = moment();
    sh(&m.mp, &format!("cp -a proj {}/t1", side.display()));

    // Moment 2: overwritten, partly deleted, renamed, added to.
    sh(
        &m.mp,
        "echo changed > proj/a.txt && rm proj/docs/c.md && mv proj/src/b.rs proj/src/b2.rs \
         && echo new > proj/new.txt && mkdir proj/empty && chmod 700 proj/docs",
    );
    let t2 = moment();
    sh(&m.mp, &format!("cp -a proj {}/t2", side.display()));

    // Moment 3: the folder deleted.
    sh(&m.mp, "rm -r proj");
    let t3 = moment();
    assert!(!m.path("proj").exists());

    // Each moment shows exactly its tree; the folder did not exist before, nor after.
    assert_same_tree(&at(&m, t1).join("proj"), &side.join("t1"));
    assert_same_tree(&at(&m, t2).join("proj"), &side.join("t2"));
    assert!(!at(&m, t3).join("proj").exists());
    assert!(!at(&m, before_all).join("proj").exists());
    assert_eq!(
        std::fs::read(at(&m, t3).join("top.txt")).unwrap(),
        b"keep\n"
    );
    // Other spellings of a moment: a date alone is its midnight (before everything here).
    assert!(!m.mp.join(".dosfs/at/2000-01-01/top.txt").exists());
    assert!(m.mp.join(".dosfs/at/2200-01-01/top.txt").exists());
    assert!(!m.mp.join(".dosfs/at/yesterday").exists());
    // Read-only: every write is EROFS.
    let ro = at(&m, t2).join("proj");
    for r in [
        std::fs::write(ro.join("a.txt"), b"x").err(),
        std::fs::write(ro.join("fresh"), b"x").err(),
        std::fs::remove_file(ro.join("new.txt")).err(),
        std::fs::create_dir(ro.join("d")).err(),
        std::fs::rename(ro.join("new.txt"), ro.join("n2")).err(),
    ] {
        assert_eq!(r.and_then(|e| e.raw_os_error()), Some(libc::EROFS));
    }
    // cp -a out of the past.
    sh(
        &m.mp,
        &format!("cp -a {} {}/cp2", ro.display(), side.display()),
    );
    assert_same_tree(&side.join("cp2"), &side.join("t2"));

    // Restore the deleted folder to moment 2: no bytes move.
    let bytes = shard_bytes(&m.root.join("store"));
    assert!(bytes > 0);
    let proj = m.path("proj");
    let proj_s = proj.to_str().unwrap();
    let out = dosfs(&["restore", proj_s, "--at", &format_rfc3339_ns(t2)]);
    eprintln!("{out}");
    assert!(out.contains("brought back proj/a.txt"), "{out}");
    wait_until(Duration::from_secs(5), || {
        diff(&proj, &side.join("t2")).is_empty()
    });
    assert_same_tree(&proj, &side.join("t2"));
    assert_eq!(
        shard_bytes(&m.root.join("store")),
        bytes,
        "a restore moved bytes"
    );

    // Undo: the folder is gone again.
    let undo = undo_moment(&out);
    let out2 = dosfs(&["restore", proj_s, "--at", &undo]);
    assert!(out2.contains("deleted      proj/new.txt"), "{out2}");
    wait_until(Duration::from_secs(5), || !proj.exists());
    assert!(!proj.exists(), "the undo left {}", proj.display());

    // And to moment 1 (renames and overwrites undone), with a date form that has an offset.
    let t1_offset = {
        let s = format_rfc3339_ns(t1 - 3600 * 1_000_000_000);
        s.trim_end_matches('Z').to_string() + "-01:00"
    };
    let out3 = dosfs(&["restore", proj_s, "--at", &t1_offset]);
    wait_until(Duration::from_secs(5), || {
        diff(&proj, &side.join("t1")).is_empty()
    });
    assert_same_tree(&proj, &side.join("t1"));
    assert_eq!(
        shard_bytes(&m.root.join("store")),
        bytes,
        "a restore moved bytes"
    );
    // Restoring to where it already is changes nothing.
    let again = dosfs(&["restore", proj_s, "--at", &t1_offset]);
    assert!(again.contains("nothing to change"), "{again}");
    let _ = out3;

    // The log: every version under proj/, newest first, each kind of change told.
    let log = log_pages(&m, "proj/", 3);
    let rest = m.rest();
    let mut versions: Vec<(String, u64)> = rest
        .versions("")
        .into_iter()
        .filter(|v| v.name.as_str().starts_with("proj/"))
        .map(|v| (v.name.as_str().to_string(), v.version))
        .collect();
    let mut logged: Vec<(String, u64)> = log
        .iter()
        .map(|e| (e.name.as_str().to_string(), e.version))
        .collect();
    versions.sort();
    logged.sort();
    assert_eq!(logged, versions, "the log lists every change once");
    assert!(
        log.windows(2).all(|w| w[0].time_ns >= w[1].time_ns),
        "newest first"
    );
    let find = |name: &str, what: ChangeWhat| {
        log.iter()
            .filter(|e| e.name.as_str() == name && e.what == what)
            .count()
    };
    assert!(find("proj/src/b2.rs", ChangeWhat::Renamed) >= 1, "{log:#?}");
    assert!(find("proj/src/b.rs", ChangeWhat::Renamed) >= 1, "{log:#?}");
    assert!(find("proj/docs/c.md", ChangeWhat::Deleted) >= 1, "{log:#?}");
    assert!(find("proj/a.txt", ChangeWhat::Written) >= 2, "{log:#?}");
    assert!(find("proj/a.txt", ChangeWhat::Restored) >= 2, "{log:#?}");
    let renamed = log
        .iter()
        .find(|e| e.name.as_str() == "proj/src/b2.rs" && e.what == ChangeWhat::Renamed)
        .unwrap();
    assert_eq!(
        renamed.from.as_ref().map(|n| n.as_str()),
        Some("proj/src/b.rs"),
        "{log:#?}"
    );

    // The same through `dosfs log`, also since a moment (only the restores' changes).
    let printed = dosfs(&["log", proj_s]);
    let rows: Vec<&str> = printed.lines().skip(1).collect();
    let with_marker = log.len() + rest.versions("proj").len();
    assert_eq!(
        rows.len(),
        with_marker,
        "the folder's own marker too: {printed}"
    );
    assert!(
        printed.contains("renamed   proj/src/b2.rs (from proj/src/b.rs)"),
        "{printed}"
    );
    let since = dosfs(&["log", proj_s, "--since", &format_rfc3339_ns(t3)]);
    let since_rows: Vec<&str> = since.lines().skip(1).collect();
    assert!(!since_rows.is_empty());
    assert!(
        since_rows
            .iter()
            .all(|r| r.contains("restored") || r.contains("deleted")),
        "{since}"
    );
    let file_log = dosfs(&["log", m.path("proj/a.txt").to_str().unwrap()]);
    assert!(
        file_log.lines().skip(1).all(|l| l.ends_with("proj/a.txt")),
        "{file_log}"
    );
}

#[test]
fn a_folder_of_10000_entries_at_a_moment_is_a_few_requests() {
    let m = Mount::new();
    let rest = m.rest();
    let content = b"one content shared by ten thousand names\n".to_vec();
    rest.put("seed/blob", &content);
    let hash = ContentHash::of(&content);
    let n = 10_000usize;
    let post = |names: Vec<String>| {
        let statuses: Vec<u16> = rest.block_on(async {
            use futures::StreamExt;
            futures::stream::iter(names)
                .map(|name| {
                    let req = rest
                        .http()
                        .post(rest.object_url(&name))
                        .header("digest", hash.digest_header())
                        .header("size", content.len().to_string());
                    async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
                })
                .buffer_unordered(16)
                .collect()
                .await
        });
        assert!(statuses.iter().all(|s| *s == 200));
    };
    post((0..n).map(|i| format!("big/f{i:05}.txt")).collect());
    let t = moment();
    // Afterwards: some deleted, some made; the moment does not see either.
    for i in (0..n).step_by(100) {
        assert_eq!(rest.delete(&format!("big/f{i:05}.txt")), 200);
    }
    post((0..50).map(|i| format!("big/late{i}")).collect());
    // Answers about a moment this recent are final (and kept) from 2 s after it.
    std::thread::sleep(Duration::from_secs(2));

    let stats = || -> u64 {
        let text = std::fs::read_to_string(m.path(".dosfs/stats")).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v["store"]["listings"].as_u64().unwrap()
    };
    let before = stats();
    let started = std::time::Instant::now();
    let listing = sh(&m.mp, &format!("ls -l {}/big", at(&m, t).display()));
    let took = started.elapsed();
    let requests = stats() - before;
    let files: Vec<&str> = listing.lines().filter(|l| l.starts_with('-')).collect();
    assert_eq!(files.len(), n);
    assert!(files[0].ends_with(" f00000.txt"), "{}", files[0]);
    assert!(files.iter().all(|l| !l.contains("late")));
    eprintln!("ls -l of {n} entries at a moment: {requests} listing requests, {took:?}");
    assert!(
        requests <= 15,
        "listing {n} entries at a moment took {requests} listing requests"
    );
    assert_eq!(
        std::fs::read(at(&m, t).join("big/f00100.txt")).unwrap(),
        content
    );
    assert!(!m.path("big/f00100.txt").exists());

    // Over REST: one request for the whole folder.
    let url = format!(
        "{}/list?prefix=big/&delimiter=/&limit=10000&at={}",
        rest.base(),
        dos_protocol::encode_path(&format_rfc3339_ns(t))
    );
    let page: dos_protocol::ListPage = rest.block_on(async {
        rest.http()
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    assert_eq!(page.entries.len(), n);
    assert!(page.next_cursor.is_none());
    // A malformed moment is a 400 with one line, naming the accepted forms.
    let bad = format!("{}/list?prefix=big/&at=soon", rest.base());
    let (status, body) = rest.block_on(async {
        let r = rest.http().get(&bad).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    });
    assert_eq!(status, 400);
    assert!(
        body.contains("RFC 3339") && body.trim().lines().count() == 1,
        "{body}"
    );
}
