//! Open-file semantics that ordinary programs rely on: several descriptors on one file, a file
//! renamed or unlinked while open, mmap, O_EXCL. Each scenario runs on a plain local directory
//! and on a dosfs mount, and what the program observes must be the same (the local directory
//! is the reference). The results are then checked in the store through REST.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use common::*;

/// A scenario's observations: one line per thing it saw (bytes, sizes, errors).
type Seen = Vec<String>;

fn note<T: std::fmt::Debug>(seen: &mut Seen, what: &str, r: std::io::Result<T>) {
    seen.push(match r {
        Ok(v) => format!("{what}: {v:?}"),
        Err(e) => format!("{what}: error {e}"),
    });
}

fn read_all(p: &Path) -> std::io::Result<String> {
    std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn names(dir: &Path) -> Vec<String> {
    list_dir(dir)
}

/// Runs `scenario` on a local directory and on a fresh folder of the mount; asserts both saw
/// the same. Returns the mount (still mounted) and the folder name used in it.
fn same_on_both(name: &str, scenario: impl Fn(&Path) -> Seen) -> Mount {
    let work = tempdir();
    let local = work.path().join(name);
    std::fs::create_dir(&local).unwrap();
    let want = scenario(&local);
    let m = Mount::new();
    let dir = m.path(name);
    std::fs::create_dir(&dir).unwrap();
    let got = scenario(&dir);
    assert_eq!(
        want.join("\n"),
        got.join("\n"),
        "scenario {name}: a local directory (left) and the dosfs mount (right) differ"
    );
    m
}

#[test]
fn read_only_open_sees_unflushed_writes_of_a_new_file() {
    let m = same_on_both("newfile", |d| {
        let mut seen = Seen::new();
        let mut w = std::fs::File::create(d.join("log.txt")).unwrap();
        w.write_all(b"first line\n").unwrap();
        // Another program (tail, a reader thread) opens it while the writer still has it open.
        note(
            &mut seen,
            "reader opens the new file",
            read_all(&d.join("log.txt")),
        );
        note(
            &mut seen,
            "stat size",
            std::fs::metadata(d.join("log.txt")).map(|m| m.len()),
        );
        w.write_all(b"second line\n").unwrap();
        note(&mut seen, "reader again", read_all(&d.join("log.txt")));
        drop(w);
        note(&mut seen, "after close", read_all(&d.join("log.txt")));
        seen
    });
    assert_eq!(
        m.rest().get("newfile/log.txt").unwrap(),
        b"first line\nsecond line\n"
    );
}

#[test]
fn read_only_open_sees_unflushed_writes_of_an_existing_file() {
    let m = same_on_both("existing", |d| {
        let mut seen = Seen::new();
        std::fs::write(d.join("f.txt"), b"hello world\n").unwrap();
        let w = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("f.txt"))
            .unwrap();
        w.write_all_at(b"HELLO", 0).unwrap();
        note(
            &mut seen,
            "read-only open while the writer is open",
            read_all(&d.join("f.txt")),
        );
        // A reader opened before the write, reading after it.
        let mut r = std::fs::File::open(d.join("f.txt")).unwrap();
        w.write_all_at(b"WORLD", 6).unwrap();
        let mut s = String::new();
        note(
            &mut seen,
            "earlier reader reads",
            r.read_to_string(&mut s).map(|_| s.clone()),
        );
        drop(w);
        note(&mut seen, "after close", read_all(&d.join("f.txt")));
        seen
    });
    assert_eq!(m.rest().get("existing/f.txt").unwrap(), b"HELLO WORLD\n");
}

#[test]
fn rename_while_open_for_writing() {
    let m = same_on_both("renamed", |d| {
        let mut seen = Seen::new();
        let mut w = std::fs::File::create(d.join("download.part")).unwrap();
        w.write_all(b"part one, ").unwrap();
        std::fs::rename(d.join("download.part"), d.join("download.iso")).unwrap();
        w.write_all(b"part two").unwrap();
        note(&mut seen, "names while open", Ok(names(d)));
        drop(w);
        note(&mut seen, "names after close", Ok(names(d)));
        note(&mut seen, "new name", read_all(&d.join("download.iso")));
        note(&mut seen, "old name", read_all(&d.join("download.part")));
        seen
    });
    let rest = m.rest();
    assert_eq!(
        rest.get("renamed/download.iso").unwrap(),
        b"part one, part two"
    );
    assert_eq!(
        rest.get("renamed/download.part"),
        None,
        "the old name must stay deleted"
    );
}

#[test]
fn rename_of_the_folder_of_an_open_file() {
    let m = same_on_both("dirmove", |d| {
        let mut seen = Seen::new();
        std::fs::create_dir(d.join("a")).unwrap();
        let mut w = std::fs::File::create(d.join("a/f.txt")).unwrap();
        w.write_all(b"before ").unwrap();
        std::fs::rename(d.join("a"), d.join("b")).unwrap();
        w.write_all(b"after").unwrap();
        drop(w);
        note(&mut seen, "names", Ok(names(d)));
        note(&mut seen, "b/f.txt", read_all(&d.join("b/f.txt")));
        note(&mut seen, "a/f.txt", read_all(&d.join("a/f.txt")));
        seen
    });
    let rest = m.rest();
    assert_eq!(rest.get("dirmove/b/f.txt").unwrap(), b"before after");
    assert_eq!(rest.get("dirmove/a/f.txt"), None);
}

#[test]
fn unlinked_open_file_stays_usable() {
    let m = same_on_both("unlinked", |d| {
        let mut seen = Seen::new();
        // The tmpfile pattern: create, unlink, keep using the descriptor.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(d.join("scratch"))
            .unwrap();
        f.write_all(b"scratch data").unwrap();
        std::fs::remove_file(d.join("scratch")).unwrap();
        note(&mut seen, "names after unlink", Ok(names(d)));
        note(&mut seen, "write after unlink", f.write_all(b" and more"));
        note(&mut seen, "seek", f.seek(SeekFrom::Start(0)));
        let mut s = String::new();
        note(
            &mut seen,
            "read after unlink",
            f.read_to_string(&mut s).map(|_| s.clone()),
        );
        note(&mut seen, "fstat size", f.metadata().map(|m| m.len()));
        drop(f);
        note(&mut seen, "names after close", Ok(names(d)));
        // An existing (uploaded) file unlinked while a reader has it open.
        std::fs::write(d.join("old.txt"), b"still readable").unwrap();
        let mut r = std::fs::File::open(d.join("old.txt")).unwrap();
        std::fs::remove_file(d.join("old.txt")).unwrap();
        let mut s = String::new();
        note(
            &mut seen,
            "reader of an unlinked file",
            r.read_to_string(&mut s).map(|_| s.clone()),
        );
        seen
    });
    let rest = m.rest();
    assert_eq!(
        rest.get("unlinked/scratch"),
        None,
        "an unlinked file is never uploaded"
    );
    assert_eq!(rest.get("unlinked/old.txt"), None);
}

#[test]
fn two_writers_on_one_file() {
    let m = same_on_both("twowriters", |d| {
        let mut seen = Seen::new();
        std::fs::write(d.join("f"), b"0123456789").unwrap();
        let a = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("f"))
            .unwrap();
        let b = std::fs::OpenOptions::new()
            .write(true)
            .open(d.join("f"))
            .unwrap();
        a.write_all_at(b"AA", 0).unwrap();
        b.write_all_at(b"BB", 8).unwrap();
        drop(a);
        note(&mut seen, "after the first close", read_all(&d.join("f")));
        b.write_all_at(b"CC", 4).unwrap();
        drop(b);
        note(&mut seen, "after both", read_all(&d.join("f")));
        seen
    });
    assert_eq!(m.rest().get("twowriters/f").unwrap(), b"AA23CC67BB");
}

#[test]
fn exclusive_create_and_modes() {
    let m = same_on_both("excl", |d| {
        let mut seen = Seen::new();
        note(
            &mut seen,
            "O_EXCL new",
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(d.join("lock"))
                .map(|_| ()),
        );
        note(
            &mut seen,
            "O_EXCL existing",
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(d.join("lock"))
                .map(|_| ())
                .map_err(|e| std::io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(0))),
        );
        note(
            &mut seen,
            "create with mode 0600",
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(d.join("private"))
                .and_then(|f| f.metadata())
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777),
        );
        note(
            &mut seen,
            "mode after close",
            std::fs::metadata(d.join("private"))
                .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777),
        );
        note(&mut seen, "names", Ok(names(d)));
        seen
    });
    let v = m.rest().versions("excl/private");
    assert_eq!(v.last().unwrap().mode & 0o777, 0o600);
}

#[test]
fn mmap_shared_write() {
    // Python's mmap module: the simplest mmap client at hand (the tests forbid unsafe code).
    require_tool("python3");
    let m = Mount::new();
    std::fs::write(m.path("m.bin"), vec![0u8; 10_000]).unwrap();
    sh(
        &m.mp,
        "python3 -c 'import mmap\nf=open(\"m.bin\",\"r+b\")\nm=mmap.mmap(f.fileno(),0)\nm[100:105]=b\"HELLO\"\nm.flush()\nm.close()\nf.close()'",
    );
    let mut want = vec![0u8; 10_000];
    want[100..105].copy_from_slice(b"HELLO");
    assert!(read(&m.path("m.bin")) == want);
    assert!(m.rest().get("m.bin").unwrap() == want);
}

#[test]
fn mmap_and_small_reads_of_a_large_uncached_file() {
    // Large files that are not cached are opened with direct I/O (no page cache): shared and
    // private read-only mmap, small unaligned reads and reads of several MiB at once must
    // still see exactly the content.
    require_tool("python3");
    let m = Mount::new();
    let data = pseudo_random(91, 12 * 1024 * 1024 + 777);
    m.rest().put("big.bin", &data);
    let script = r#"python3 - <<'PY'
import hashlib, mmap, os
f = open("big.bin", "rb")
for flags in (mmap.MAP_SHARED, mmap.MAP_PRIVATE):
    m = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
    print(hashlib.sha256(m[:]).hexdigest(), m[5_000_000:5_000_004].hex())
    m.close()
fd = os.open("big.bin", os.O_RDONLY)
parts = [os.pread(fd, 4093, off) for off in range(0, os.fstat(fd).st_size, 4093)]
print(hashlib.sha256(b"".join(parts)).hexdigest())
big = [os.pread(fd, 5_000_000, off) for off in range(0, os.fstat(fd).st_size, 5_000_000)]
print(hashlib.sha256(b"".join(big)).hexdigest())
PY"#;
    let out = sh(&m.mp, script);
    let want = sha256_hex(&data);
    let mid = data[5_000_000..5_000_004]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>();
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            format!("{want} {mid}").as_str(),
            format!("{want} {mid}").as_str(),
            want.as_str(),
            want.as_str()
        ]
    );
}

#[test]
fn large_file_in_and_out() {
    let m = Mount::new();
    let work = tempdir();
    let src = work.path().join("big.bin");
    std::fs::write(&src, pseudo_random(77, 48 * 1024 * 1024 + 4321)).unwrap();
    let t = std::time::Instant::now();
    sh(
        work.path(),
        &format!("cp big.bin {}", m.path("big.bin").display()),
    );
    let t_in = t.elapsed();
    let t = std::time::Instant::now();
    sh(
        work.path(),
        &format!("cp {} out.bin", m.path("big.bin").display()),
    );
    let t_out = t.elapsed();
    eprintln!("48 MiB: cp in {t_in:?}, cp out {t_out:?}");
    sh(
        work.path(),
        &format!("cmp big.bin {}", m.path("big.bin").display()),
    );
    sh(work.path(), "cmp big.bin out.bin");
    // Random reads at odd offsets across block boundaries.
    let want = std::fs::read(&src).unwrap();
    let f = std::fs::File::open(m.path("big.bin")).unwrap();
    for (i, off) in [0usize, 1, 1_048_575, 1_048_576, 5_000_001, want.len() - 10]
        .iter()
        .enumerate()
    {
        let mut buf = vec![0u8; 70_000.min(want.len() - off)];
        f.read_exact_at(&mut buf, *off as u64).unwrap();
        assert!(buf == want[*off..off + buf.len()], "read {i} at {off}");
    }
    let rest = m.rest();
    assert!(rest.get("big.bin").unwrap() == want);
}

#[test]
fn parallel_writers() {
    // xargs -P: several files written at once through the same mount.
    let m = Mount::new();
    let work = tempdir();
    for i in 0..40 {
        std::fs::write(
            work.path().join(format!("f{i:02}")),
            pseudo_random(1000 + i, 10_000 + i as usize * 3_000),
        )
        .unwrap();
    }
    std::fs::create_dir(m.path("par")).unwrap();
    sh(
        work.path(),
        &format!(
            "ls f* | xargs -P 8 -I{{}} cp {{}} {}/",
            m.path("par").display()
        ),
    );
    sh(
        work.path(),
        &format!("diff -r . {}", m.path("par").display()),
    );
    let rest = m.rest();
    for i in 0..40u64 {
        assert!(
            rest.get(&format!("par/f{i:02}")).unwrap()
                == pseudo_random(1000 + i, 10_000 + i as usize * 3_000)
        );
    }
}

#[test]
fn chmod_and_utimens_right_after_close_are_kept() {
    // rsync's receiver: create a temp file 0600 (O_EXCL), write, close, then set its times
    // by path and chmod it through a new descriptor, then rename it over the final name. FUSE sends RELEASE
    // asynchronously, so these can arrive while the close's last upload is still running.
    let m = Mount::new();
    let rest = m.rest();
    let mut lost = Vec::new();
    for i in 0..200u64 {
        let tmp = m.path(&format!(".f{i:03}.XXXXXX"));
        let fin = m.path(&format!("f{i:03}"));
        {
            let mut f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)
                .unwrap();
            // Half of them empty: rsync copies empty files this way too.
            let len = if i % 2 == 0 { 0 } else { 20_000 };
            f.write_all(&pseudo_random(i, len)).unwrap();
        }
        let t = std::time::UNIX_EPOCH + std::time::Duration::new(1_500_000_000 + i, 0);
        let steps = std::fs::File::open(&tmp)
            .and_then(|f| f.set_modified(t))
            .map_err(|e| format!("open O_RDONLY + futimens after close: {e}"))
            .and_then(|()| {
                std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o644))
                    .map_err(|e| format!("chmod: {e}"))
            })
            .and_then(|()| std::fs::rename(&tmp, &fin).map_err(|e| format!("rename: {e}")));
        if let Err(e) = steps {
            lost.push(format!("f{i:03}: {e}"));
            continue;
        }
        let md = std::fs::metadata(&fin).unwrap();
        let mode = std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o777;
        let last = rest.versions(&format!("f{i:03}")).pop().unwrap();
        let want_ns = (1_500_000_000 + i as i64) * 1_000_000_000;
        if mode != 0o644 || last.mode & 0o777 != 0o644 || last.mtime_ns != want_ns {
            lost.push(format!(
                "f{i:03}: stat mode {mode:o}, stored mode {:o}, stored mtime {} (want {want_ns})",
                last.mode & 0o777,
                last.mtime_ns
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of 200 files lost their utimens/chmod made right after close:\n{}",
        lost.len(),
        lost.join("\n")
    );
}

#[test]
fn empty_file_is_durable_when_close_returns() {
    // `touch`, `: > f`, lock and marker files: created and closed without a write. Close must
    // return only once the version is durable (SPEC §6), like for files with bytes.
    let m = Mount::new();
    let rest = m.rest();
    let mut missing = Vec::new();
    for i in 0..30 {
        let name = format!("empty{i:02}");
        drop(
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(m.path(&name))
                .unwrap(),
        );
        if rest.get(&name).is_none() {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "{} of 30 empty files were not in the store when close returned: {missing:?}",
        missing.len()
    );
}

/// A large file whose content is fully cached is read through FUSE passthrough (when the
/// kernel and our privileges allow it): the bytes are the same, and a write open while such a
/// reader is open fails with ETXTBSY after a short wait instead of the kernel's EIO; once the
/// reader is closed, writing works again.
#[test]
fn passthrough_reads_of_fully_cached_files() {
    let m = Mount::new();
    let rest = m.rest();
    let body = pseudo_random(78, 12 * 1024 * 1024 + 123);
    rest.put("big.bin", &body);
    assert!(read(&m.path("big.bin")) == body, "cold read");
    let objects = m.root.join("cache/blocks/objects");
    let complete = wait_until(std::time::Duration::from_secs(10), || {
        std::fs::read_dir(&objects).is_ok_and(|mut d| {
            d.any(|e| e.is_ok_and(|e| e.path().extension().is_some_and(|x| x == "sum")))
        })
    });
    assert!(complete.is_some(), "object never complete in the cache");
    assert!(read(&m.path("big.bin")) == body, "cached read");
    let reader = std::fs::File::open(m.path("big.bin")).unwrap();
    for off in [0usize, 1_048_575, 5_000_001, body.len() - 10] {
        let mut buf = vec![0u8; 70_000.min(body.len() - off)];
        reader.read_exact_at(&mut buf, off as u64).unwrap();
        assert!(buf == body[off..off + buf.len()], "read at {off}");
    }
    // Passthrough needs root (to register a backing file) and Linux 6.9 or later.
    let release = sh(&m.mp, "uname -r");
    let mut version = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse::<u32>().ok());
    let kernel = (version.next().unwrap_or(0), version.next().unwrap_or(0));
    let passthrough = is_root() && kernel >= (6, 9);
    eprintln!("passthrough available: {passthrough}");
    let t = std::time::Instant::now();
    let opened = std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("big.bin"));
    if passthrough {
        let err = opened.expect_err("write open while a passthrough reader is open");
        assert_eq!(err.raw_os_error(), Some(libc::ETXTBSY));
        assert!(t.elapsed() >= std::time::Duration::from_secs(1));
    } else {
        drop(opened.unwrap());
    }
    drop(reader);
    let mut w = std::fs::OpenOptions::new()
        .append(true)
        .open(m.path("big.bin"))
        .unwrap();
    w.write_all(b"tail").unwrap();
    drop(w);
    let mut want = body.clone();
    want.extend_from_slice(b"tail");
    assert!(read(&m.path("big.bin")) == want, "after the append");
    assert!(rest.get("big.bin").unwrap() == want);
}

fn is_root() -> bool {
    sh(Path::new("/"), "id -u").trim() == "0"
}
