//! `dosfs mount --writeback` through a real mount: closes are durable in the local journal,
//! files are visible at once, uploads follow; a kill -9 with files pending loses none of
//! them (the next mount uploads them, one version each); unlink and rename of pending files
//! do what they do without write-back; `user.dosfs.state` and `dosfs status` tell pending
//! from durable.
//!
//! Needs: /dev/fuse, fusermount3 (fuse3), getfattr (attr).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::*;

/// The tests of this file run one at a time: a process another test starts inherits (and
/// on exec closes) every open descriptor of this process, and each such close is a FUSE
/// flush, which uploads (or journals) a file the test keeps open on purpose.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn state(p: &std::path::Path) -> String {
    let out = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.dosfs.state"])
        .arg(p)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn fd_state(f: &std::fs::File) -> String {
    let mut buf = [0u8; 64];
    let n = rustix::fs::fgetxattr(f, "user.dosfs.state", &mut buf).unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

/// Files written quickly while the uploader works (whatever is still in the journal at the
/// kill); the next test makes 1,000 files pending for certain.
#[test]
fn kill_9_while_uploading_loses_nothing() {
    let _serial = serial();
    require_tool("getfattr");
    let dir = tempdir();
    let root = dir.path().to_path_buf();
    let mut m = Mount::start_with(&root, &["--writeback"]);
    let n = 1000;
    std::fs::create_dir(m.path("w")).unwrap();
    for i in 0..n {
        std::fs::write(
            m.path(&format!("w/f{i:04}")),
            pseudo_random(i, 100 + i as usize * 7),
        )
        .unwrap();
    }
    // Visible at once, from the mount, whatever the uploads did so far.
    assert_eq!(list_dir(&m.path("w")).len(), n as usize);
    assert_eq!(read(&m.path("w/f0999")), pseudo_random(999, 100 + 999 * 7));
    m.kill9();
    let _ = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&m.mp)
        .output();
    drop(m);
    // The next mount uploads what the journal holds before it is live.
    let m = Mount::start_with(&root, &["--writeback"]);
    let rest = m.rest();
    for i in 0..n {
        let name = format!("w/f{i:04}");
        let want = pseudo_random(i, 100 + i as usize * 7);
        assert!(rest.get(&name).as_deref() == Some(&want[..]), "{name}");
        assert_eq!(rest.versions(&name).len(), 1, "{name}: one version");
    }
    assert_eq!(
        pending_count(&m),
        0,
        "the journal is empty once the mount is live"
    );
}

#[test]
fn pending_files_behave_like_stored_ones() {
    let _serial = serial();
    require_tool("getfattr");
    let m = Mount::new_with(&["--writeback"]);
    std::fs::write(m.path("a.txt"), b"first").unwrap();
    std::fs::write(m.path("b.txt"), b"second").unwrap();
    std::fs::write(m.path("gone.txt"), b"deleted before its upload").unwrap();
    std::fs::remove_file(m.path("gone.txt")).unwrap();
    std::fs::rename(m.path("b.txt"), m.path("c.txt")).unwrap();
    assert_eq!(read(&m.path("a.txt")), b"first");
    assert_eq!(read(&m.path("c.txt")), b"second");
    assert!(!m.path("b.txt").exists() && !m.path("gone.txt").exists());
    let rest = m.rest();
    // Uploaded in the background.
    assert!(
        wait_until(Duration::from_secs(20), || rest.get("a.txt").as_deref()
            == Some(&b"first"[..]))
        .is_some(),
        "a.txt reached the store"
    );
    assert!(
        wait_until(Duration::from_secs(20), || state(&m.path("a.txt"))
            == "durable")
        .is_some()
    );
    assert_eq!(rest.get("c.txt").as_deref(), Some(&b"second"[..]));
    assert_eq!(rest.get("b.txt"), None);
    assert_eq!(rest.get("gone.txt"), None);
    // dosfs status lists nothing pending once it drained.
    let out = std::process::Command::new(DOSFS)
        .arg("status")
        .arg(&m.mp)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with("0 file(s) pending"), "{text}");
}

#[test]
fn umount_waits_until_the_journal_is_empty() {
    let _serial = serial();
    let dir = tempdir();
    let root = dir.path().to_path_buf();
    let mut m = Mount::start_with(&root, &["--writeback"]);
    for i in 0..300u64 {
        std::fs::write(m.path(&format!("u{i:03}")), pseudo_random(i, 3000)).unwrap();
    }
    m.unmount();
    // Mounted again without write-back: everything is in the store.
    let m = Mount::start_in(&root);
    let rest = m.rest();
    for i in 0..300u64 {
        assert!(rest.get(&format!("u{i:03}")).as_deref() == Some(&pseudo_random(i, 3000)[..]));
    }
}

/// `dos-server local` in a process of its own, so that the store can go away and come back.
struct Store {
    child: Option<std::process::Child>,
    root: std::path::PathBuf,
    port: u16,
}

impl Store {
    fn start(root: &std::path::Path, port: u16) -> Store {
        let bin = std::path::Path::new(DOSFS).with_file_name("dos-server");
        assert!(
            bin.exists(),
            "{} is missing: build the workspace (cargo test --workspace builds it)",
            bin.display()
        );
        let child = std::process::Command::new(bin)
            .arg("local")
            .arg("--root")
            .arg(root)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let up = wait_until(Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up.is_some(), "dos-server local did not start");
        Store {
            child: Some(child),
            root: root.to_path_buf(),
            port,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The bearer token `dos-server local` made in its root.
    fn token(&self) -> String {
        std::fs::read_to_string(self.root.join("token"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn restart(&mut self) {
        self.kill();
        *self = Store::start(&self.root.clone(), self.port);
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.kill();
    }
}

fn pending_count(m: &Mount) -> u64 {
    let text = std::fs::read_to_string(m.path(".dosfs/stats")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["writeback"]["pending"].as_u64().unwrap()
}

#[test]
fn uploads_wait_for_a_store_that_is_down_and_a_kill_9_loses_nothing() {
    let _serial = serial();
    require_tool("getfattr");
    let dir = tempdir();
    let root = dir.path().to_path_buf();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut store = Store::start(&root.join("store"), port);
    let url = store.url();
    let token = store.token();
    let mut m = Mount::start_with(&root, &["--writeback", "--api", &url, "--token", &token]);
    std::fs::create_dir(m.path("a")).unwrap();
    std::fs::create_dir(m.path("b")).unwrap();
    // Files opened while the store is there; it goes away; their writes and closes still
    // return, and the files wait in the journal.
    let open = |dir: &str, n: u64| -> Vec<std::fs::File> {
        (0..n)
            .map(|i| std::fs::File::create(m.path(&format!("{dir}/f{i:04}"))).unwrap())
            .collect()
    };
    let files = open("a", 200);
    store.kill();
    for (i, mut f) in files.into_iter().enumerate() {
        std::io::Write::write_all(&mut f, &pseudo_random(i as u64, 5000)).unwrap();
        f.sync_all().unwrap();
        if i == 7 {
            // Asked through the descriptor: a path lookup would need the store.
            assert_eq!(fd_state(&f), "pending");
        }
    }
    assert_eq!(pending_count(&m), 200, "{}", m.log());
    // It comes back: the uploads retried with back-off get through.
    store.restart();
    assert!(
        wait_until(Duration::from_secs(60), || pending_count(&m) == 0).is_some(),
        "the journal drained once the store was back"
    );
    let rest = Rest::with_token(&url, Some(&token));
    for i in 0..200u64 {
        let name = format!("a/f{i:04}");
        assert!(
            rest.get(&name).as_deref() == Some(&pseudo_random(i, 5000)[..]),
            "{name}"
        );
        assert_eq!(rest.versions(&name).len(), 1, "{name}");
    }
    // Down again, 1,000 files pending, then kill -9 of the daemon.
    let files = open("b", 1000);
    store.kill();
    for (i, mut f) in files.into_iter().enumerate() {
        let i = i as u64;
        std::io::Write::write_all(&mut f, &pseudo_random(10_000 + i, 100 + i as usize)).unwrap();
    }
    assert_eq!(pending_count(&m), 1000, "{}", m.log());
    m.kill9();
    let _ = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&m.mp)
        .output();
    drop(m);
    store.restart();
    let m = Mount::start_with(&root, &["--writeback", "--api", &url, "--token", &token]);
    assert_eq!(pending_count(&m), 0, "uploaded before the mount went live");
    // A new client: the old one's connections went with the old store process.
    let rest = Rest::with_token(&url, Some(&token));
    for i in 0..1000u64 {
        let name = format!("b/f{i:04}");
        let want = pseudo_random(10_000 + i, 100 + i as usize);
        assert!(rest.get(&name).as_deref() == Some(&want[..]), "{name}");
        let v = rest.versions(&name);
        assert_eq!(v.len(), 1, "{name}: one version, not {v:?}");
        assert_eq!(read(&m.path(&name)), want);
    }
}
