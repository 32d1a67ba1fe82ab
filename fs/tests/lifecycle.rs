//! Mount lifecycle from the command line (SPEC §2): background mount and `dosfs umount`,
//! SIGTERM, one-line errors for a bad mount point or one already mounted, `df`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Every folder under `dir` (and `dir`) is 0700 and every file 0600 or stricter: nothing
/// the daemon keeps is readable by other users.
fn assert_private(dir: &std::path::Path) -> usize {
    use std::os::unix::fs::PermissionsExt;
    let mut todo = vec![dir.to_path_buf()];
    let mut seen = 0;
    while let Some(d) = todo.pop() {
        let mode = std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} is {mode:03o}", d.display());
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                todo.push(e.path());
            } else {
                let mode = meta.permissions().mode() & 0o777;
                assert_eq!(mode & 0o077, 0, "{} is {mode:03o}", e.path().display());
                seen += 1;
            }
        }
    }
    seen
}

#[test]
fn background_mount_then_umount() {
    let work = tempdir();
    let root = work.path().canonicalize().unwrap();
    let mp = root.join("mnt");
    std::fs::create_dir(&mp).unwrap();
    let t = Instant::now();
    let out = Command::new(DOSFS)
        .arg("mount")
        .arg(&mp)
        .arg("--data-dir")
        .arg(root.join("store"))
        .arg("--cache-dir")
        .arg(root.join("cache"))
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    // Whatever happens next, do not leave the mount behind.
    struct Guard(std::path::PathBuf);
    impl Drop for Guard {
        fn drop(&mut self) {
            if is_mountpoint(&self.0) {
                let _ = Command::new("fusermount3").arg("-uz").arg(&self.0).status();
            }
        }
    }
    let _guard = Guard(mp.clone());
    assert!(
        out.status.success(),
        "dosfs mount (background) failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("background mount returned after {:?}", t.elapsed());
    // It returns once the mount is live.
    let url = mount_url(&mp).expect("mounted when `dosfs mount` returns");
    std::fs::write(mp.join("f.txt"), b"background\n").unwrap();
    // The embedded store's REST API wants the token the mount made, private to its user;
    // the daemon's folders and files are private too.
    let token = std::fs::read_to_string(root.join("store/token")).unwrap();
    let rest = Rest::with_token(&url, Some(token.trim()));
    assert_eq!(rest.get("f.txt").unwrap(), b"background\n");
    let anonymous = Rest::new(&url);
    let status = anonymous.block_on(async {
        anonymous
            .http()
            .get(anonymous.object_url("f.txt"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 401, "a request without the token");
    // Read it back through the mount, so that the cache holds it too.
    assert_eq!(std::fs::read(mp.join("f.txt")).unwrap(), b"background\n");
    assert!(assert_private(&root.join("store")) > 0);
    assert_private(&root.join("cache"));

    let out = Command::new(DOSFS).arg("umount").arg(&mp).output().unwrap();
    assert!(
        out.status.success(),
        "dosfs umount: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mountpoint(&mp), "still mounted after dosfs umount");
    // The daemon stopped: its API port is closed.
    let closed = wait_until(Duration::from_secs(10), || {
        std::net::TcpStream::connect(url.trim_start_matches("http://")).is_err()
    });
    assert!(
        closed.is_some(),
        "the daemon's API server still answers after umount"
    );
    // And `dosfs umount` of something not mounted is a clear one-line error.
    let out = Command::new(DOSFS).arg("umount").arg(&mp).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("not mounted"), "{err}");
}

#[test]
fn sigterm_unmounts_and_keeps_data() {
    let work = tempdir();
    let root = work.path().join("m");
    std::fs::create_dir(&root).unwrap();
    let m = Mount::start_in(&root);
    std::fs::write(m.path("kept.txt"), b"kept across SIGTERM\n").unwrap();
    std::fs::create_dir(m.path("empty")).unwrap();
    let pid = m.pid().unwrap();
    sh(&root, &format!("kill -TERM {pid}"));
    let gone = wait_until(Duration::from_secs(30), || {
        !std::path::Path::new(&format!("/proc/{pid}/cmdline")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.split(' ').nth(2) == Some("Z"))
    });
    assert!(gone.is_some(), "dosfs did not exit within 30 s of SIGTERM");
    assert!(!is_mountpoint(&m.mp), "SIGTERM left the mount behind");
    drop(m);
    let m = Mount::start_in(&root);
    assert_eq!(read(&m.path("kept.txt")), b"kept across SIGTERM\n");
    assert!(m.path("empty").is_dir());
}

#[test]
fn mount_errors_are_one_clear_line() {
    let work = tempdir();
    let run = |mp: &std::path::Path| {
        let out = Command::new(DOSFS)
            .arg("mount")
            .arg(mp)
            .arg("--foreground")
            .arg("--data-dir")
            .arg(work.path().join("store"))
            .arg("--cache-dir")
            .arg(work.path().join("cache"))
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(!out.status.success(), "mount of {} succeeded", mp.display());
        String::from_utf8_lossy(&out.stderr).trim().to_string()
    };
    let missing = work.path().join("missing");
    let err = run(&missing);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("missing"), "names the mount point: {err}");

    std::fs::write(work.path().join("file"), b"").unwrap();
    let err = run(&work.path().join("file"));
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("not a directory"), "{err}");

    // Already mounted.
    let m = Mount::new();
    let err = run(&m.mp);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("already"), "{err}");
    // The existing mount is unharmed.
    std::fs::write(m.path("x"), b"x").unwrap();
    assert_eq!(read(&m.path("x")), b"x");
}

#[test]
fn df_and_control_folder() {
    let m = Mount::new();
    let out = sh(&m.mp, "df -P .");
    assert!(out.lines().count() == 2, "df: {out}");
    // `.dosfs` is reserved: it cannot be created, written or removed.
    let e = std::fs::write(m.path(".dosfs/x"), b"x").unwrap_err();
    assert!(
        matches!(
            e.raw_os_error(),
            Some(libc::EROFS) | Some(libc::EPERM) | Some(libc::EACCES)
        ),
        "writing into .dosfs: {e}"
    );
    assert!(std::fs::remove_dir(m.path(".dosfs/history")).is_err());
    assert!(std::fs::rename(m.path(".dosfs"), m.path("elsewhere")).is_err());
    assert!(m.path(".dosfs/history").is_dir());
    assert!(!list_dir(&m.mp).contains(&".dosfs".to_string()));
}
