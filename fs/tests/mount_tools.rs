//! Real-tool scenarios on a real dosfs mount (SPEC §2, §6; issue 4 "Tests"): cp -a, rsync -a,
//! tar, shell appends, sed -i, editor-style saves, mv of directories, dd conv=notrunc, ls -l of
//! 10,000 entries, history and restore (also through the CLI), remount, symlinks, hard links,
//! rmdir, REST-side changes, kill -9 of the daemon.
//!
//! Each test mounts its own embedded store (port 0), so tests run in parallel. Everything is
//! checked byte for byte through the mount and through REST.
//!
//! Needs: /dev/fuse, fusermount3 (fuse3), rsync, tar, diff, dd, sed, getfattr (attr).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use dos_protocol::{ContentHash, EntryKind};

/// Builds a tree of `n` files under `dir`: nested folders, sizes 0..~3 KB (some empty), a few
/// modes and fixed past mtimes, symlinks, plus one empty folder. Returns the relative paths of the files.
fn make_tree(dir: &Path, n: usize, seed: u64) -> Vec<String> {
    let mut files = Vec::with_capacity(n);
    for i in 0..n {
        let sub = format!("d{:02}/s{}", i % 20, (i / 20) % 3);
        let ext = ["txt", "dat", "c", "json"][i % 4];
        let rel = format!("{sub}/f{i:04}.{ext}");
        let p = dir.join(&rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        // Every 50th file is empty (real trees have them: __init__.py, .keep, lock files).
        let size = if i % 50 == 7 {
            0
        } else {
            (i * 37 + seed as usize) % 3000
        };
        std::fs::write(&p, pseudo_random(seed * 100_000 + i as u64, size)).unwrap();
        let mode = match i % 11 {
            0 => 0o600,
            1 => 0o755,
            2 => 0o444,
            _ => 0o644,
        };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let t = UNIX_EPOCH + Duration::new(1_600_000_000 + i as u64 * 61, (i as u32) * 1_000);
        std::fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
        files.push(rel);
    }
    std::fs::create_dir_all(dir.join("empty/inner")).unwrap();
    std::os::unix::fs::symlink("f0000.txt", dir.join("d00/s0/link-to-f0000")).unwrap();
    std::os::unix::fs::symlink("../../d01", dir.join("d00/s0/link-to-d01")).unwrap();
    files.sort();
    files
}

/// Asserts mode bits, size and mtime (to the nanosecond) of `rel` match in two trees.
fn assert_same_attrs(a: &Path, b: &Path, rel: &str) {
    assert_same_attrs_ns(a, b, rel, true);
}

/// Same, with mtimes compared to the second only when `ns` is false (tar archives keep
/// whole seconds).
fn assert_same_attrs_ns(a: &Path, b: &Path, rel: &str, ns: bool) {
    let ma = std::fs::symlink_metadata(a.join(rel)).unwrap();
    let mb = std::fs::symlink_metadata(b.join(rel)).unwrap();
    assert_eq!(
        ma.mode() & 0o7777,
        mb.mode() & 0o7777,
        "mode of {rel}: source {:o}, mount {:o}",
        ma.mode() & 0o7777,
        mb.mode() & 0o7777
    );
    assert_eq!(ma.len(), mb.len(), "size of {rel}");
    let nsec = |m: &std::fs::Metadata| if ns { m.mtime_nsec() } else { 0 };
    assert_eq!(
        (ma.mtime(), nsec(&ma)),
        (mb.mtime(), nsec(&mb)),
        "mtime of {rel} (source vs mount)"
    );
}

fn errno(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().map(|e| e.raw_os_error().unwrap_or(-1))
}

fn versions_hashes(rest: &Rest, name: &str) -> Vec<Option<ContentHash>> {
    rest.versions(name).into_iter().map(|v| v.hash).collect()
}

/// `.dosfs/history/<rel>/` of a mount, sorted.
fn history(m: &Mount, rel: &str) -> Vec<String> {
    list_dir(&m.path(&format!(".dosfs/history/{rel}")))
}

fn is_version_file_name(name: &str, ext: &str) -> bool {
    // v000001_20261126T171315Z[.ext]
    let b = name.as_bytes();
    name.len() == 1 + 6 + 1 + 16 + ext.len()
        && b[0] == b'v'
        && b[1..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'_'
        && b[8..16].iter().all(u8::is_ascii_digit)
        && b[16] == b'T'
        && b[17..23].iter().all(u8::is_ascii_digit)
        && b[23] == b'Z'
        && &name[24..] == ext
}

#[test]
fn cp_a_tree_of_1000_files() {
    let m = Mount::new();
    let work = tempdir();
    let src = work.path().join("src");
    let files = make_tree(&src, 1000, 1);

    let t = Instant::now();
    sh(
        work.path(),
        &format!("cp -a {} {}", src.display(), m.path("tree").display()),
    );
    eprintln!("cp -a of 1,000 files into the mount: {:?}", t.elapsed());

    sh(
        work.path(),
        &format!("diff -r {} {}", src.display(), m.path("tree").display()),
    );
    assert_eq!(walk_files(&m.path("tree")), files);
    for rel in &files {
        assert_same_attrs(&src, &m.path("tree"), rel);
    }
    assert!(
        m.path("tree/empty/inner").is_dir(),
        "empty folders are copied"
    );

    // A sample through REST, and one folder's listing.
    let rest = m.rest();
    for rel in files.iter().step_by(37) {
        let want = std::fs::read(src.join(rel)).unwrap();
        let got = rest
            .get(&format!("tree/{rel}"))
            .unwrap_or_else(|| panic!("REST has no tree/{rel}"));
        assert!(
            got == want,
            "REST bytes of tree/{rel} differ from the source"
        );
        let v = rest.versions(&format!("tree/{rel}"));
        let last = v.last().unwrap();
        assert_eq!(
            last.hash,
            Some(ContentHash::of(&want)),
            "latest hash of tree/{rel}"
        );
        assert_eq!(last.kind, EntryKind::File);
    }
    assert_eq!(rest.names_in("tree/d07/s1"), list_dir(&src.join("d07/s1")));
    assert_eq!(rest.names_in("tree"), list_dir(&src));

    // And back out again: the copy out of the mount is identical too.
    let back = work.path().join("back");
    sh(
        work.path(),
        &format!("cp -a {} {}", m.path("tree").display(), back.display()),
    );
    sh(
        work.path(),
        &format!("diff -r {} {}", src.display(), back.display()),
    );

    // mv of the whole tree (metadata only), then rm -rf of it.
    let t = Instant::now();
    sh(&m.mp, "mv tree tree2");
    eprintln!("mv of the 1,000-file tree: {:?}", t.elapsed());
    sh(
        work.path(),
        &format!("diff -r {} {}", src.display(), m.path("tree2").display()),
    );
    assert_eq!(rest.names_in(""), vec!["tree2".to_string()]);
    let t = Instant::now();
    sh(&m.mp, "rm -rf tree2");
    eprintln!("rm -rf of the 1,000-file tree: {:?}", t.elapsed());
    assert_eq!(list_dir(&m.mp), Vec::<String>::new());
    let (entries, prefixes) = rest.list_all("", None);
    assert!(
        entries.is_empty() && prefixes.is_empty(),
        "after rm -rf the store still lists {} names, e.g. {:?}",
        entries.len(),
        entries.first().map(|e| e.name.as_str().to_string())
    );
}

#[test]
fn rsync_a_twice() {
    require_tool("rsync");
    let m = Mount::new();
    let rest = m.rest();
    let work = tempdir();
    let src = work.path().join("src");
    let files = make_tree(&src, 200, 2);
    let dst = m.path("mirror");

    let rsync = |extra: &str| {
        sh(
            work.path(),
            &format!(
                "rsync -a --stats {extra} {}/ {}/",
                src.display(),
                dst.display()
            ),
        )
    };
    let first = rsync("");
    eprintln!("first rsync:\n{first}");
    sh(
        work.path(),
        &format!("diff -r {} {}", src.display(), dst.display()),
    );
    for rel in &files {
        assert_same_attrs(&src, &dst, rel);
    }
    let before: Vec<_> = files
        .iter()
        .map(|rel| versions_hashes(&rest, &format!("mirror/{rel}")))
        .collect();
    // No temporary names of rsync are left.
    for rel in files.iter().step_by(17) {
        let dir = Path::new(rel).parent().unwrap().to_str().unwrap();
        assert_eq!(
            rest.names_in(&format!("mirror/{dir}")),
            list_dir(&src.join(dir)),
            "REST listing of mirror/{dir}"
        );
    }

    // Second run: nothing to transfer, nothing changes in the store.
    let second = rsync("-i");
    assert!(
        second.contains("Number of regular files transferred: 0"),
        "second rsync -a transferred files:\n{second}"
    );
    let itemized: Vec<&str> = second.lines().filter(|l| l.starts_with(">f")).collect();
    assert!(
        itemized.is_empty(),
        "second rsync itemized files: {itemized:?}"
    );
    sh(
        work.path(),
        &format!("diff -r {} {}", src.display(), dst.display()),
    );
    let after: Vec<_> = files
        .iter()
        .map(|rel| versions_hashes(&rest, &format!("mirror/{rel}")))
        .collect();
    for ((rel, b), a) in files.iter().zip(&before).zip(&after) {
        assert_eq!(b, a, "versions of mirror/{rel} changed by a no-op rsync");
    }

    // One changed file: only it is transferred, and it is exact.
    let changed = &files[5];
    std::fs::write(src.join(changed), b"changed content\n").unwrap();
    let third = rsync("-i");
    assert!(
        third.contains("Number of regular files transferred: 1"),
        "third rsync:\n{third}"
    );
    assert_eq!(read(&dst.join(changed)), b"changed content\n");
    assert_eq!(
        rest.get(&format!("mirror/{changed}")).unwrap(),
        b"changed content\n"
    );
    sh(
        work.path(),
        &format!("diff -r {} {}", src.display(), dst.display()),
    );
}

#[test]
fn tar_c_and_x() {
    let m = Mount::new();
    let work = tempdir();
    let src = work.path().join("src");
    let mut files = make_tree(&src, 120, 3);
    // A larger file spanning several cache blocks, and a symlink.
    std::fs::write(
        src.join("big.bin"),
        pseudo_random(99, 3 * 1024 * 1024 + 12345),
    )
    .unwrap();
    files.push("big.bin".into());
    std::os::unix::fs::symlink("d01/s0/f0001.dat", src.join("link")).unwrap();
    let w = work.path().display();
    sh(
        work.path(),
        &format!("tar -C {} -cf {w}/in.tar .", src.display()),
    );

    // tar x into the mount.
    let t = m.path("t");
    std::fs::create_dir(&t).unwrap();
    sh(
        work.path(),
        &format!("tar -C {} -xf {w}/in.tar", t.display()),
    );
    sh(
        work.path(),
        &format!("diff -r --no-dereference {} {}", src.display(), t.display()),
    );
    // tar's own comparison: contents, sizes, modes, mtimes, link targets.
    let d = sh_out(
        work.path(),
        &format!("tar -C {} -df {w}/in.tar", t.display()),
    );
    assert!(
        d.status.success(),
        "tar -d against the mount found differences:\n{}{}",
        String::from_utf8_lossy(&d.stdout),
        String::from_utf8_lossy(&d.stderr)
    );
    assert_eq!(
        std::fs::read_link(t.join("link")).unwrap(),
        Path::new("d01/s0/f0001.dat")
    );
    let rest = m.rest();
    assert!(rest.get("t/big.bin").unwrap() == read(&src.join("big.bin")));
    // One version per extracted file: the times and modes tar sets after each close fold
    // into the version of that save.
    for f in &files {
        let v = rest.versions(&format!("t/{f}"));
        assert_eq!(v.len(), 1, "t/{f} has {} versions: {v:?}", v.len());
    }

    // tar c of the tree in the mount, extracted elsewhere.
    sh(
        work.path(),
        &format!("tar -C {} -cf {w}/out.tar .", t.display()),
    );
    let x = work.path().join("x");
    std::fs::create_dir(&x).unwrap();
    sh(
        work.path(),
        &format!("tar -C {} -xf {w}/out.tar", x.display()),
    );
    sh(
        work.path(),
        &format!("diff -r --no-dereference {} {}", src.display(), x.display()),
    );
    for rel in &files {
        assert_same_attrs_ns(&src, &t, rel, false);
        assert_same_attrs_ns(&src, &x, rel, false);
    }
    // Same members with the same modes, sizes and times in both archives.
    let listing = |tar: &str| {
        let out = sh(work.path(), &format!("tar -tvf {w}/{tar} --full-time"));
        let mut lines: Vec<String> = out
            .lines()
            .filter(|l| !l.ends_with(" ./"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        lines.sort();
        lines
    };
    assert_eq!(listing("in.tar"), listing("out.tar"));
}

#[test]
fn echo_append_loop() {
    let m = Mount::new();
    let f = m.path("notes.log");
    let t = Instant::now();
    sh(
        &m.mp,
        "for i in $(seq 1 50); do echo \"line $i\" >> notes.log; done",
    );
    eprintln!("50 appends: {:?}", t.elapsed());
    let want: String = (1..=50).map(|i| format!("line {i}\n")).collect();
    assert_eq!(String::from_utf8(read(&f)).unwrap(), want);
    let rest = m.rest();
    assert_eq!(rest.get("notes.log").unwrap(), want.as_bytes());

    // Every append is a version holding the first N lines. The shell's `>>` on a new file
    // opens it and closes a duplicate descriptor before writing; that close is a close, so
    // the empty file it leaves is durable and is version 1 (a documented consequence of
    // upload-on-close).
    let versions = rest.versions("notes.log");
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        (1..=51).collect::<Vec<u64>>(),
        "one version for the creation and one per append"
    );
    for v in &versions {
        let lines = v.version - 1;
        let prefix: String = (1..=lines).map(|i| format!("line {i}\n")).collect();
        assert_eq!(v.size, prefix.len() as u64, "size of version {}", v.version);
        assert_eq!(v.hash, Some(ContentHash::of(prefix.as_bytes())));
    }
    let h = history(&m, "notes.log");
    assert_eq!(h.len(), 51, "history of notes.log: {h:?}");
    for (i, name) in h.iter().enumerate() {
        assert!(is_version_file_name(name, ".log"), "history name {name}");
        assert!(
            name.starts_with(&format!("v{:06}_", i + 1)),
            "history order: {h:?}"
        );
    }
    for i in [1usize, 25, 50] {
        let want: String = (1..=i).map(|k| format!("line {k}\n")).collect();
        let p = m.path(&format!(".dosfs/history/notes.log/{}", h[i]));
        assert_eq!(
            String::from_utf8(read(&p)).unwrap(),
            want,
            "history version {}",
            i + 1
        );
    }
}

#[test]
fn sed_in_place() {
    let m = Mount::new();
    let original: String = (1..=100).map(|i| format!("row {i}\n")).collect();
    std::fs::write(m.path("data.txt"), &original).unwrap();
    std::fs::set_permissions(m.path("data.txt"), std::fs::Permissions::from_mode(0o640)).unwrap();
    sh(
        &m.mp,
        "sed -i -e 's/^row 5$/ROW FIVE/' -e '/^row 7$/d' data.txt",
    );
    let want: String = (1..=100)
        .filter(|i| *i != 7)
        .map(|i| {
            if i == 5 {
                "ROW FIVE\n".to_string()
            } else {
                format!("row {i}\n")
            }
        })
        .collect();
    assert_eq!(String::from_utf8(read(&m.path("data.txt"))).unwrap(), want);
    assert_eq!(
        std::fs::metadata(m.path("data.txt")).unwrap().mode() & 0o7777,
        0o640,
        "sed -i keeps the mode"
    );
    let rest = m.rest();
    assert_eq!(rest.get("data.txt").unwrap(), want.as_bytes());
    assert_eq!(
        rest.names_in(""),
        vec!["data.txt".to_string()],
        "no sed temp file left"
    );
    assert_eq!(list_dir(&m.mp), vec!["data.txt".to_string()]);

    // The history has the original and the edited file (maybe a chmod-only version between).
    let live: Vec<_> = versions_hashes(&rest, "data.txt");
    assert_eq!(
        live.first().unwrap(),
        &Some(ContentHash::of(original.as_bytes()))
    );
    assert_eq!(
        live.last().unwrap(),
        &Some(ContentHash::of(want.as_bytes()))
    );
    let h = history(&m, "data.txt");
    assert!(h.len() >= 2, "history of data.txt: {h:?}");
    assert_eq!(
        read(&m.path(&format!(".dosfs/history/data.txt/{}", h[0]))),
        original.as_bytes()
    );
    assert_eq!(
        read(&m.path(&format!(".dosfs/history/data.txt/{}", h[h.len() - 1]))),
        want.as_bytes()
    );
}

#[test]
fn editor_style_save() {
    let m = Mount::new();
    let old = b"first draft\n".to_vec();
    let new = b"second draft, saved the way editors do\n".to_vec();
    std::fs::create_dir(m.path("docs")).unwrap();
    std::fs::write(m.path("docs/doc.txt"), &old).unwrap();

    // Write a temporary file next to it, fsync it, rename it over the original.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(m.path("docs/.doc.txt.swp")).unwrap();
        f.write_all(&new).unwrap();
        f.sync_all().unwrap();
    }
    std::fs::rename(m.path("docs/.doc.txt.swp"), m.path("docs/doc.txt")).unwrap();

    assert_eq!(read(&m.path("docs/doc.txt")), new);
    assert_eq!(list_dir(&m.path("docs")), vec!["doc.txt".to_string()]);
    let rest = m.rest();
    assert_eq!(rest.get("docs/doc.txt").unwrap(), new);
    assert_eq!(rest.get("docs/.doc.txt.swp"), None, "the temp name is gone");
    assert_eq!(rest.names_in("docs"), vec!["doc.txt".to_string()]);

    let h = history(&m, "docs/doc.txt");
    assert_eq!(h.len(), 2, "history of doc.txt: {h:?}");
    assert!(h.iter().all(|n| is_version_file_name(n, ".txt")), "{h:?}");
    assert_eq!(
        read(&m.path(&format!(".dosfs/history/docs/doc.txt/{}", h[0]))),
        old
    );
    assert_eq!(
        read(&m.path(&format!(".dosfs/history/docs/doc.txt/{}", h[1]))),
        new
    );

    // Same again with a shell tool chain (vim-like: write, then mv -f).
    sh(
        &m.path("docs"),
        "printf 'third\\n' > doc.txt.tmp && dd if=/dev/null of=doc.txt.tmp conv=fsync,notrunc status=none && mv -f doc.txt.tmp doc.txt",
    );
    assert_eq!(read(&m.path("docs/doc.txt")), b"third\n");
    let h = history(&m, "docs/doc.txt");
    assert_eq!(h.len(), 3, "history of doc.txt: {h:?}");
    assert_eq!(
        read(&m.path(&format!(".dosfs/history/docs/doc.txt/{}", h[2]))),
        b"third\n"
    );
}

#[test]
fn mv_of_a_directory() {
    let m = Mount::new();
    let work = tempdir();
    let src = work.path().join("proj");
    for (i, rel) in [
        "a/one.txt",
        "a/two.bin",
        "a/deep/three.txt",
        "b/four.txt",
        "five.txt",
    ]
    .iter()
    .enumerate()
    {
        let p = src.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, pseudo_random(i as u64 + 7, 1000 + i * 5000)).unwrap();
    }
    std::fs::create_dir_all(src.join("empty")).unwrap();
    sh(
        work.path(),
        &format!("cp -r {} {}", src.display(), m.path("proj").display()),
    );
    sh(
        work.path(),
        &format!("diff -r {} {}", src.display(), m.path("proj").display()),
    );

    sh(&m.mp, "mv proj moved");
    assert_eq!(errno(std::fs::metadata(m.path("proj"))), Some(libc::ENOENT));
    sh(
        work.path(),
        &format!("diff -r {} {}", src.display(), m.path("moved").display()),
    );
    assert!(m.path("moved/empty").is_dir(), "the empty folder moved too");
    assert_eq!(list_dir(&m.mp), vec!["moved".to_string()]);

    let rest = m.rest();
    let files = walk_files(&src);
    for rel in &files {
        assert_eq!(
            rest.get(&format!("proj/{rel}")),
            None,
            "proj/{rel} still live"
        );
        assert!(
            rest.get(&format!("moved/{rel}")).unwrap() == read(&src.join(rel)),
            "REST moved/{rel}"
        );
    }
    assert_eq!(rest.names_in(""), vec!["moved".to_string()]);
    assert_eq!(rest.names_in("moved"), list_dir(&src));
    assert_eq!(rest.names_in("moved/a"), list_dir(&src.join("a")));

    // Into another folder, under a new name.
    std::fs::create_dir(m.path("archive")).unwrap();
    sh(&m.mp, "mv moved archive/2024");
    sh(
        work.path(),
        &format!(
            "diff -r {} {}",
            src.display(),
            m.path("archive/2024").display()
        ),
    );
    assert_eq!(
        errno(std::fs::metadata(m.path("moved"))),
        Some(libc::ENOENT)
    );
    assert_eq!(rest.names_in("archive/2024"), list_dir(&src));
}

#[test]
fn history_of_files_in_a_moved_or_deleted_folder() {
    let m = Mount::new();
    std::fs::create_dir_all(m.path("proj/a")).unwrap();
    std::fs::write(m.path("proj/a/one.txt"), b"one\n").unwrap();
    sh(&m.mp, "mv proj moved");
    // The old name was deleted by the move; its history stays reachable (SPEC §6 history).
    let h = history(&m, "proj/a/one.txt");
    assert_eq!(
        h.len(),
        1,
        "history of proj/a/one.txt after mv proj moved: {h:?}"
    );
    assert_eq!(
        read(&m.path(&format!(".dosfs/history/proj/a/one.txt/{}", h[0]))),
        b"one\n"
    );
    sh(&m.mp, "rm -r moved");
    let h = history(&m, "moved/a/one.txt");
    assert_eq!(
        h.len(),
        1,
        "history of moved/a/one.txt after rm -r moved: {h:?}"
    );
    assert_eq!(
        read(&m.path(&format!(".dosfs/history/moved/a/one.txt/{}", h[0]))),
        b"one\n"
    );
}

#[test]
fn dd_notrunc_into_the_middle() {
    let m = Mount::new();
    let size = 3 * 1024 * 1024 + 777;
    let mut want = pseudo_random(42, size);
    std::fs::write(m.path("disk.img"), &want).unwrap();
    let work = tempdir();
    let patch = pseudo_random(43, 5000);
    std::fs::write(work.path().join("patch"), &patch).unwrap();

    // 5,000 bytes at offset 1,048,000: across the first 1 MiB block boundary.
    sh(
        work.path(),
        &format!(
            "dd if=patch of={} bs=1000 seek=1048 conv=notrunc status=none",
            m.path("disk.img").display()
        ),
    );
    want[1_048_000..1_053_000].copy_from_slice(&patch);
    let got = read(&m.path("disk.img"));
    assert_eq!(got.len(), want.len(), "dd conv=notrunc changed the size");
    assert!(
        got == want,
        "bytes after dd conv=notrunc differ (first at {:?})",
        first_diff(&got, &want)
    );
    let rest = m.rest();
    assert!(rest.get("disk.img").unwrap() == want, "REST bytes after dd");

    // A small write at the very end and one past the end (a hole, zero-filled).
    sh(
        work.path(),
        &format!(
            "printf 'END' | dd of={} bs=1 seek={} conv=notrunc status=none",
            m.path("disk.img").display(),
            size - 3
        ),
    );
    want[size - 3..].copy_from_slice(b"END");
    sh(
        work.path(),
        &format!(
            "printf 'TAIL' | dd of={} bs=1 seek={} conv=notrunc status=none",
            m.path("disk.img").display(),
            size + 100
        ),
    );
    want.resize(size + 100, 0);
    want.extend_from_slice(b"TAIL");
    let got = read(&m.path("disk.img"));
    assert!(
        got == want,
        "bytes after tail writes differ (first at {:?})",
        first_diff(&got, &want)
    );
    assert!(rest.get("disk.img").unwrap() == want);
    assert_eq!(
        std::fs::metadata(m.path("disk.img")).unwrap().len(),
        want.len() as u64
    );
}

fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or_else(|| (a.len() != b.len()).then(|| a.len().min(b.len())))
}

#[test]
fn ls_l_of_10000_entries() {
    let m = Mount::new();
    let rest = m.rest();
    let content = b"one content shared by ten thousand names\n".to_vec();
    rest.put("seed/blob", &content);
    let hash = ContentHash::of(&content);
    let n = 10_000usize;

    // POST with Digest and Size: known content, so each name costs one metadata write.
    let t = Instant::now();
    let statuses: Vec<u16> = rest.block_on(async {
        use futures::StreamExt;
        futures::stream::iter(0..n)
            .map(|i| {
                let url = rest.object_url(&format!("big/f{i:05}.txt"));
                let req = rest
                    .http()
                    .post(url)
                    .header("digest", hash.digest_header())
                    .header("size", content.len().to_string());
                async move { req.send().await.map(|r| r.status().as_u16()).unwrap_or(0) }
            })
            .buffer_unordered(16)
            .collect()
            .await
    });
    let bad: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        bad.is_empty(),
        "{} POSTs failed, e.g. {:?}",
        bad.len(),
        &bad[..bad.len().min(5)]
    );
    eprintln!("created {n} names through REST POST in {:?}", t.elapsed());

    let out_file = m.root.join("ls.out");
    let cold = Instant::now();
    sh(&m.mp, &format!("ls -l big > {}", out_file.display()));
    let cold = cold.elapsed();
    let listing = std::fs::read_to_string(&out_file).unwrap();
    let lines: Vec<&str> = listing.lines().filter(|l| l.starts_with('-')).collect();
    assert_eq!(lines.len(), n, "ls -l big shows {} files", lines.len());
    let warm = Instant::now();
    sh(&m.mp, "ls -l big > /dev/null");
    let warm = warm.elapsed();
    eprintln!("ls -l of {n} entries: {cold:?} (first), {warm:?} (again); target < 1 s");
    for l in lines.iter().step_by(997) {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f[0], "-rw-r--r--", "{l}");
        assert_eq!(f[4], content.len().to_string(), "size in {l}");
    }
    assert!(lines[0].ends_with(" f00000.txt") && lines[n - 1].ends_with(" f09999.txt"));
    assert_eq!(read(&m.path("big/f04321.txt")), content);
    assert!(
        cold < Duration::from_secs(60),
        "ls -l of {n} entries took {cold:?}"
    );
}

#[test]
fn history_after_overwrite_delete_and_restore() {
    require_tool("getfattr");
    let m = Mount::new();
    let rest = m.rest();
    std::fs::create_dir(m.path("h")).unwrap();
    let f = m.path("h/report.md");
    std::fs::write(&f, b"version one\n").unwrap();
    std::fs::write(&f, b"version two, longer\n").unwrap();
    std::fs::remove_file(&f).unwrap();
    assert_eq!(errno(std::fs::metadata(&f)), Some(libc::ENOENT));
    assert_eq!(rest.get("h/report.md"), None);

    // .dosfs is hidden from ls -a of the root but can be entered.
    let ls = sh(&m.mp, "ls -a");
    assert!(
        !ls.lines().any(|l| l == ".dosfs"),
        "ls -a shows .dosfs:\n{ls}"
    );
    sh(&m.mp, "cd .dosfs/history && ls h >/dev/null");

    let h = history(&m, "h/report.md");
    assert_eq!(h.len(), 2, "history after delete: {h:?}");
    assert!(h.iter().all(|n| is_version_file_name(n, ".md")), "{h:?}");
    assert!(
        h[0].starts_with("v000001_") && h[1].starts_with("v000002_"),
        "{h:?}"
    );
    let v1 = m.path(&format!(".dosfs/history/h/report.md/{}", h[0]));
    let v2 = m.path(&format!(".dosfs/history/h/report.md/{}", h[1]));
    assert_eq!(read(&v1), b"version one\n");
    assert_eq!(read(&v2), b"version two, longer\n");
    // Read-only.
    let md = std::fs::metadata(&v1).unwrap();
    assert_eq!(md.mode() & 0o222, 0, "history files are read-only");
    assert_eq!(
        errno(std::fs::OpenOptions::new().write(true).open(&v1)),
        Some(libc::EROFS),
        "opening a history file for writing"
    );
    assert_eq!(
        errno(std::fs::remove_file(&v1)),
        Some(libc::EROFS),
        "rm of a history file"
    );
    // xattrs on a history file too.
    let x = sh(
        &m.mp,
        &format!(
            "getfattr --only-values -n user.dosfs.version {}",
            v2.display()
        ),
    );
    assert_eq!(x.trim(), "2");

    // Restore with cp: no bytes move, a new version with the old content.
    sh(&m.mp, &format!("cp {} h/report.md", v1.display()));
    assert_eq!(read(&f), b"version one\n");
    let versions = rest.versions("h/report.md");
    let summary: Vec<(u64, Option<ContentHash>)> =
        versions.iter().map(|v| (v.version, v.hash)).collect();
    assert_eq!(
        summary,
        vec![
            (1, Some(ContentHash::of(b"version one\n"))),
            (2, Some(ContentHash::of(b"version two, longer\n"))),
            (3, None),
            (4, Some(ContentHash::of(b"version one\n"))),
        ],
        "versions of h/report.md after overwrite, delete and restore"
    );
    assert_eq!(history(&m, "h/report.md").len(), 3);
}

#[test]
fn cli_versions_and_restore() {
    let m = Mount::new();
    let rest = m.rest();
    std::fs::create_dir(m.path("h")).unwrap();
    let f = m.path("h/report.md");
    std::fs::write(&f, b"version one\n").unwrap();
    std::fs::write(&f, b"version two, longer\n").unwrap();
    std::fs::remove_file(&f).unwrap();
    let h = history(&m, "h/report.md");
    sh(
        &m.mp,
        &format!("cp .dosfs/history/h/report.md/{} h/report.md", h[0]),
    );
    assert_eq!(rest.versions("h/report.md").len(), 4);

    // dosfs versions PATH
    let out = std::process::Command::new(DOSFS)
        .arg("versions")
        .arg(&f)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "dosfs versions {} failed: {}",
        f.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "dosfs versions output:\n{stdout}");
    assert!(
        rows[2].contains("(deleted)"),
        "delete marker row: {}",
        rows[2]
    );
    assert!(rows[0].contains(&ContentHash::of(b"version one\n").to_base64()));

    let out = std::process::Command::new(DOSFS)
        .args(["restore", "--version", "2"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dosfs restore --version 2 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(rest.get("h/report.md").unwrap(), b"version two, longer\n");
    // The command returns once the mount shows the restored file, also over a file the
    // mount has just looked at (whose attributes it caches for a second).
    assert_eq!(std::fs::read(&f).unwrap(), b"version two, longer\n");
    assert_eq!(rest.versions("h/report.md").len(), 5);
    let out = std::process::Command::new(DOSFS)
        .args(["restore", "--version", "1"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(out.status.success());
    let xattr = std::process::Command::new("getfattr")
        .args(["--only-values", "-n", "user.dosfs.version"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&xattr.stdout), "6");
    assert_eq!(std::fs::metadata(&f).unwrap().len(), 12);
    assert_eq!(std::fs::read(&f).unwrap(), b"version one\n");

    // Outside any mount: one clear line.
    let out = std::process::Command::new(DOSFS)
        .arg("versions")
        .arg(m.root.join("dosfs.log"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not inside a dosfs mount"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn remount_keeps_contents_empty_dirs_modes_and_mtimes() {
    let work = tempdir();
    let root = work.path().join("m");
    std::fs::create_dir(&root).unwrap();
    let mut m = Mount::start_in(&root);
    let big = pseudo_random(5, 2 * 1024 * 1024 + 3);
    std::fs::write(m.path("big.bin"), &big).unwrap();
    std::fs::write(m.path("secret.txt"), b"top secret\n").unwrap();
    std::fs::create_dir_all(m.path("empty/nested/deeper")).unwrap();
    std::fs::create_dir(m.path("private")).unwrap();
    std::fs::write(m.path("private/note"), b"n\n").unwrap();
    std::fs::write(m.path("empty.txt"), b"").unwrap();
    std::os::unix::fs::symlink("secret.txt", m.path("ln")).unwrap();
    sh(
        &m.mp,
        "chmod 600 secret.txt && chmod 700 private && chmod 755 big.bin \
         && touch -d '2001-02-03 04:05:06.123456789' secret.txt \
         && touch -d '1999-12-31 23:59:59' big.bin empty.txt \
         && touch -d '2010-10-10 10:10:10' empty/nested",
    );
    let snapshot = |mp: &Path| {
        let mut out = Vec::new();
        for rel in [
            "big.bin",
            "secret.txt",
            "empty.txt",
            "private",
            "private/note",
            "empty",
            "empty/nested",
            "empty/nested/deeper",
            "ln",
        ] {
            let md = std::fs::symlink_metadata(mp.join(rel))
                .unwrap_or_else(|e| panic!("stat {rel}: {e}"));
            let kind = if md.is_dir() {
                "dir"
            } else if md.file_type().is_symlink() {
                "link"
            } else {
                "file"
            };
            let mtime = if kind == "link" {
                (0, 0)
            } else {
                (md.mtime(), md.mtime_nsec())
            };
            out.push(format!(
                "{rel} {kind} {:o} {} {:?}",
                md.mode() & 0o7777,
                if kind == "file" { md.len() } else { 0 },
                mtime
            ));
        }
        out
    };
    let before = snapshot(&m.mp);
    assert!(before[1].contains(" 600 "), "{}", before[1]);
    assert!(
        before[1].contains("(981173106, 123456789)"),
        "{}",
        before[1]
    );
    m.unmount();

    let m = Mount::start_in(&root);
    let after = snapshot(&m.mp);
    assert_eq!(before, after, "attributes after remount");
    assert!(read(&m.path("big.bin")) == big);
    assert_eq!(read(&m.path("secret.txt")), b"top secret\n");
    assert_eq!(read(&m.path("private/note")), b"n\n");
    assert_eq!(read(&m.path("empty.txt")), b"");
    assert_eq!(
        list_dir(&m.path("empty/nested/deeper")),
        Vec::<String>::new()
    );
    assert_eq!(
        std::fs::read_link(m.path("ln")).unwrap(),
        Path::new("secret.txt")
    );
    assert_eq!(
        list_dir(&m.mp),
        [
            "big.bin",
            "empty",
            "empty.txt",
            "ln",
            "private",
            "secret.txt"
        ]
        .map(String::from)
        .to_vec()
    );
}

#[test]
fn symlinks() {
    let m = Mount::new();
    std::fs::create_dir(m.path("dir")).unwrap();
    std::fs::write(m.path("dir/target.txt"), b"pointed at\n").unwrap();
    sh(
        &m.mp,
        "ln -s dir/target.txt rel && ln -s dir dirlink && ln -s /nonexistent/x dangling",
    );
    sh(
        &m.mp,
        &format!("ln -s {} abs", m.path("dir/target.txt").display()),
    );
    assert_eq!(sh(&m.mp, "readlink rel").trim(), "dir/target.txt");
    assert_eq!(sh(&m.mp, "readlink dangling").trim(), "/nonexistent/x");
    assert_eq!(sh(&m.mp, "cat rel"), "pointed at\n");
    assert_eq!(sh(&m.mp, "cat abs"), "pointed at\n");
    assert_eq!(sh(&m.mp, "ls dirlink/").trim(), "target.txt");
    assert_eq!(
        errno(std::fs::metadata(m.path("dangling"))),
        Some(libc::ENOENT)
    );
    let md = std::fs::symlink_metadata(m.path("rel")).unwrap();
    assert!(md.file_type().is_symlink());
    assert_eq!(
        md.len(),
        "dir/target.txt".len() as u64,
        "a symlink's size is its target's length"
    );
    let ls = sh(&m.mp, "ls -l rel");
    assert!(
        ls.starts_with('l') && ls.trim_end().ends_with("rel -> dir/target.txt"),
        "{ls}"
    );

    let rest = m.rest();
    let v = rest.versions("rel");
    assert_eq!(v.last().unwrap().kind, EntryKind::Symlink);
    assert_eq!(rest.get("rel").unwrap(), b"dir/target.txt");

    // rm removes the link, not the target; a symlink to a symlink resolves.
    sh(&m.mp, "ln -s rel relrel && cat relrel >/dev/null && rm rel");
    assert_eq!(read(&m.path("dir/target.txt")), b"pointed at\n");
    assert_eq!(
        errno(std::fs::symlink_metadata(m.path("rel"))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        errno(std::fs::metadata(m.path("relrel"))),
        Some(libc::ENOENT)
    );
    // ln -s over an existing name fails with EEXIST.
    assert_eq!(
        errno(std::os::unix::fs::symlink("x", m.path("abs"))),
        Some(libc::EEXIST)
    );
    // mv of a symlink keeps it a symlink.
    sh(&m.mp, "mv abs moved-abs");
    assert_eq!(
        std::fs::read_link(m.path("moved-abs")).unwrap(),
        m.path("dir/target.txt")
    );
}

/// link(2) where Linux refuses it: onto an existing name (EEXIST), of a directory (EPERM);
/// nothing changes.
#[test]
fn hard_link_errors_change_nothing() {
    let m = Mount::new();
    std::fs::write(m.path("a"), b"a\n").unwrap();
    std::fs::write(m.path("b"), b"b\n").unwrap();
    std::fs::create_dir(m.path("d")).unwrap();
    let e = std::fs::hard_link(m.path("a"), m.path("b")).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EEXIST),
        "link onto a name: {e}"
    );
    let e = std::fs::hard_link(m.path("d"), m.path("d2")).unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::EPERM),
        "link of a directory: {e}"
    );
    assert_eq!(errno(std::fs::metadata(m.path("d2"))), Some(libc::ENOENT));
    assert_eq!(read(&m.path("a")), b"a\n");
    assert_eq!(read(&m.path("b")), b"b\n");
    assert_eq!(std::fs::metadata(m.path("a")).unwrap().nlink(), 1);
    assert_eq!(m.rest().get("d2"), None);
}

#[test]
fn rmdir_of_non_empty_is_enotempty() {
    let m = Mount::new();
    std::fs::create_dir_all(m.path("d/sub")).unwrap();
    std::fs::write(m.path("d/f"), b"x").unwrap();
    assert_eq!(
        errno(std::fs::remove_dir(m.path("d"))),
        Some(libc::ENOTEMPTY)
    );
    let out = sh_out(&m.mp, "rmdir d");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Directory not empty"));
    assert_eq!(read(&m.path("d/f")), b"x");
    std::fs::remove_file(m.path("d/f")).unwrap();
    // Still not empty: the empty subfolder.
    assert_eq!(
        errno(std::fs::remove_dir(m.path("d"))),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        errno(std::fs::remove_dir(m.path("d/nope"))),
        Some(libc::ENOENT)
    );
    std::fs::write(m.path("d/file"), b"y").unwrap();
    assert_eq!(
        errno(std::fs::remove_dir(m.path("d/file"))),
        Some(libc::ENOTDIR)
    );
    assert_eq!(
        errno(std::fs::remove_file(m.path("d/sub"))),
        Some(libc::EISDIR)
    );
    std::fs::remove_file(m.path("d/file")).unwrap();
    std::fs::remove_dir(m.path("d/sub")).unwrap();
    std::fs::remove_dir(m.path("d")).unwrap();
    assert_eq!(errno(std::fs::metadata(m.path("d"))), Some(libc::ENOENT));
    assert_eq!(list_dir(&m.mp), Vec::<String>::new());
    assert_eq!(m.rest().names_in(""), Vec::<String>::new());

    // A folder that exists only because a REST object lives under it.
    m.rest().put("implied/x/y.txt", b"y");
    assert_eq!(
        errno(std::fs::remove_dir(m.path("implied"))),
        Some(libc::ENOTEMPTY)
    );
    // rm -r works on the mount.
    sh(&m.mp, "rm -r implied");
    assert_eq!(
        errno(std::fs::metadata(m.path("implied"))),
        Some(libc::ENOENT)
    );
    assert_eq!(m.rest().get("implied/x/y.txt"), None);
}

#[test]
fn rest_changes_show_in_the_mount() {
    let m = Mount::new();
    let rest = m.rest();
    let limit = Duration::from_secs(2);

    // A file seen (and cached) by the mount, then changed through REST.
    std::fs::write(m.path("shared.txt"), b"from the mount\n").unwrap();
    assert_eq!(read(&m.path("shared.txt")), b"from the mount\n");
    sh(&m.mp, "ls -l > /dev/null");
    rest.put("shared.txt", b"changed through REST, longer than before\n");
    let took = wait_until(limit, || {
        std::fs::read(m.path("shared.txt")).ok().as_deref()
            == Some(b"changed through REST, longer than before\n".as_slice())
    });
    eprintln!("REST overwrite visible after {took:?}");
    assert!(
        took.is_some(),
        "REST overwrite not visible within {limit:?}"
    );
    let md = std::fs::metadata(m.path("shared.txt")).unwrap();
    assert_eq!(md.len(), 41, "size after the REST overwrite");

    // A new file through REST, in a listed folder.
    std::fs::create_dir(m.path("inbox")).unwrap();
    assert_eq!(list_dir(&m.path("inbox")), Vec::<String>::new());
    rest.put("inbox/new.txt", b"new\n");
    let took = wait_until(limit, || {
        list_dir(&m.path("inbox")) == vec!["new.txt".to_string()]
            && std::fs::read(m.path("inbox/new.txt")).ok().as_deref() == Some(b"new\n".as_slice())
    });
    eprintln!("REST create visible after {took:?}");
    assert!(took.is_some(), "REST create not visible within {limit:?}");

    // A name the mount looked up and found missing, then created through REST.
    assert_eq!(
        errno(std::fs::metadata(m.path("later.txt"))),
        Some(libc::ENOENT)
    );
    rest.put("later.txt", b"later\n");
    let took = wait_until(limit, || std::fs::read(m.path("later.txt")).is_ok());
    eprintln!("REST create of a negatively looked-up name visible after {took:?}");
    assert!(
        took.is_some(),
        "REST create of a name looked up before not visible within {limit:?}"
    );
    assert_eq!(read(&m.path("later.txt")), b"later\n");

    // A delete through REST.
    assert_eq!(rest.delete("inbox/new.txt"), 200);
    let took = wait_until(limit, || {
        std::fs::metadata(m.path("inbox/new.txt")).is_err() && list_dir(&m.path("inbox")).is_empty()
    });
    eprintln!("REST delete visible after {took:?}");
    assert!(took.is_some(), "REST delete not visible within {limit:?}");
}

#[test]
fn xattrs_name_hash_and_version() {
    require_tool("getfattr");
    let m = Mount::new();
    let body = pseudo_random(11, 100_000);
    std::fs::write(m.path("x.bin"), &body).unwrap();
    std::fs::write(m.path("x.bin"), &body[..50_000]).unwrap();
    let p = m.path("x.bin");
    let sha = sh(
        &m.mp,
        &format!(
            "getfattr --only-values -n user.dosfs.sha256 {}",
            p.display()
        ),
    );
    assert_eq!(sha, sha256_b64(&body[..50_000]));
    let ver = sh(
        &m.mp,
        &format!(
            "getfattr --only-values -n user.dosfs.version {}",
            p.display()
        ),
    );
    // Exactly one version per close, none for the empty file an O_TRUNC open leaves before
    // its writes (a late release of the previous handle once uploaded that one).
    let versions = m.rest().versions("x.bin");
    assert_eq!(
        versions.iter().map(|v| v.size).collect::<Vec<_>>(),
        [100_000, 50_000]
    );
    let last = versions.last().unwrap().clone();
    assert_eq!(ver, last.version.to_string());
    let all = sh(&m.mp, &format!("getfattr -d {}", p.display()));
    assert!(
        all.contains("user.dosfs.sha256=")
            && all.contains(&format!("user.dosfs.version=\"{}\"", last.version)),
        "{all}"
    );
    assert_eq!(last.hash.unwrap().to_base64(), sha);
}

#[test]
fn back_to_back_overwrites_make_one_version_each() {
    // `echo > f` style overwrites in a row: each open truncates while the kernel may still be
    // releasing the previous handle; every close is one version, and no empty one sneaks in.
    let m = Mount::new();
    let p = m.path("log.txt");
    let mut want = Vec::new();
    for i in 0..40 {
        let body = format!("line {i}\n").repeat(i + 1);
        std::fs::write(&p, &body).unwrap();
        want.push(body.len() as u64);
    }
    let got: Vec<u64> = m
        .rest()
        .versions("log.txt")
        .iter()
        .map(|v| v.size)
        .collect();
    assert_eq!(got, want);
}

#[test]
fn kill_9_then_unmount_and_remount_loses_nothing_acknowledged() {
    use std::io::Write;
    let work = tempdir();
    let root = work.path().join("m");
    std::fs::create_dir(&root).unwrap();

    // 1. A closed file and an fsynced (still open) file, then kill -9.
    let mut m = Mount::start_in(&root);
    let closed = pseudo_random(21, 1_500_000);
    std::fs::write(m.path("closed.bin"), &closed).unwrap();
    std::fs::create_dir(m.path("dir")).unwrap();
    let synced = pseudo_random(22, 70_000);
    let mut f = std::fs::File::create(m.path("dir/synced.bin")).unwrap();
    f.write_all(&synced).unwrap();
    f.sync_all().unwrap();
    m.kill9();
    drop(f); // close on a dead mount: fails silently, nothing acknowledged
    assert!(
        is_mountpoint(&m.mp),
        "the dead mount is still there after kill -9"
    );
    let out = std::process::Command::new("fusermount3")
        .arg("-u")
        .arg(&m.mp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "fusermount3 -u after kill -9: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mountpoint(&m.mp));
    drop(m);

    // 2. Remount: everything acknowledged is there. Write again, kill -9, `dosfs umount`.
    let mut m = Mount::start_in(&root);
    assert!(
        read(&m.path("closed.bin")) == closed,
        "closed file after kill -9 and remount"
    );
    assert!(
        read(&m.path("dir/synced.bin")) == synced,
        "fsynced file after kill -9 and remount"
    );
    std::fs::write(m.path("second.txt"), b"second mount\n").unwrap();
    m.kill9();
    let out = std::process::Command::new(DOSFS)
        .arg("umount")
        .arg(&m.mp)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dosfs umount after kill -9: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!is_mountpoint(&m.mp), "dosfs umount cleared the dead mount");
    drop(m);

    let m = Mount::start_in(&root);
    assert!(read(&m.path("closed.bin")) == closed);
    assert!(read(&m.path("dir/synced.bin")) == synced);
    assert_eq!(read(&m.path("second.txt")), b"second mount\n");
    let rest = m.rest();
    assert!(rest.get("closed.bin").unwrap() == closed);
    assert_eq!(rest.versions("second.txt").len(), 1);
}

#[test]
fn ctime_mtime_follow_writes_and_utimens() {
    // cp -p and touch round-trip through the version metadata.
    let m = Mount::new();
    let work = tempdir();
    let src = work.path().join("p.txt");
    std::fs::write(&src, b"keep my times\n").unwrap();
    sh(
        work.path(),
        "chmod 604 p.txt && touch -d '2005-05-05 05:05:05.5' p.txt",
    );
    sh(
        work.path(),
        &format!("cp -p p.txt {}", m.path("p.txt").display()),
    );
    assert_same_attrs(work.path(), &m.mp, "p.txt");
    let last = m.rest().versions("p.txt").pop().unwrap();
    assert_eq!(last.mode & 0o7777, 0o604);
    assert_eq!(last.mtime_ns, 1_115_269_505_500_000_000);

    // A write moves the mtime to now.
    let before = SystemTime::now() - Duration::from_secs(5);
    sh(&m.mp, "echo more >> p.txt");
    let mt = std::fs::metadata(m.path("p.txt"))
        .unwrap()
        .modified()
        .unwrap();
    assert!(mt > before, "mtime after a write: {mt:?}");
    assert_eq!(read(&m.path("p.txt")), b"keep my times\nmore\n");
    assert_eq!(
        std::fs::metadata(m.path("p.txt")).unwrap().mode() & 0o7777,
        0o604
    );
}

/// Total size of the files under `dir` (recursively).
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    // The cache evicts while we look: a file gone between listing and stat counts as 0.
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(md) if md.is_dir() => tree_bytes(&e.path()),
            Ok(md) => md.len(),
            Err(_) => 0,
        })
        .sum()
}

#[test]
fn cache_bound_holds_under_twice_its_size() {
    const BUDGET: u64 = 8 << 20;
    let m = Mount::new_with(&["--cache-size", "8M"]);
    let rest = m.rest();
    // 16 MiB of content the mount has never seen (put through REST), read twice over.
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("ws/f{i}"),
                pseudo_random(500 + i, 4 * 1024 * 1024 + 999),
            )
        })
        .collect();
    for (name, body) in &files {
        rest.put(name, body);
    }
    let blocks = m.root.join("cache/blocks");
    let mut peak = 0;
    for round in 0..2 {
        for (name, body) in &files {
            let got = read(&m.path(name));
            assert!(got == *body, "round {round}: bytes of {name}");
            peak = peak.max(tree_bytes(&blocks));
        }
    }
    // Random reads across the working set.
    for (i, (name, body)) in files.iter().cycle().take(40).enumerate() {
        let f = std::fs::File::open(m.path(name)).unwrap();
        let off = (i * 1_234_567) % (body.len() - 10_000);
        let mut buf = vec![0u8; 10_000];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut buf, off as u64).unwrap();
        assert!(
            buf == body[off..off + 10_000],
            "random read {i} of {name} at {off}"
        );
        peak = peak.max(tree_bytes(&blocks));
    }
    std::thread::sleep(Duration::from_millis(500));
    let end = tree_bytes(&blocks);
    eprintln!("cache budget {BUDGET} bytes: peak on disk {peak}, at the end {end}");
    // One block of slack for a block being written while the budget is enforced.
    let bound = BUDGET + dos_protocol::BLOCK_SIZE as u64;
    assert!(
        peak <= bound,
        "disk cache peaked at {peak} bytes, budget {BUDGET}"
    );
    assert!(
        end <= BUDGET,
        "disk cache holds {end} bytes, budget {BUDGET}"
    );
}

/// A large file written in order reaches the store while it is written: before its close,
/// the mount's counters show most of its bytes streamed; after it, REST has it byte for byte
/// in one version. A file of the same size patched in the middle while open is uploaded
/// whole instead, also exact.
#[test]
fn a_large_sequential_write_streams_to_the_store_before_its_close() {
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let m = Mount::new();
    let data = pseudo_random(31, 24 << 20);
    let stats =
        || -> serde_json::Value { serde_json::from_slice(&read(&m.path(".dosfs/stats"))).unwrap() };
    let mut f = std::fs::File::create(m.path("big.bin")).unwrap();
    for chunk in data.chunks(1 << 20) {
        f.write_all(chunk).unwrap();
    }
    let streamed = wait_until(Duration::from_secs(30), || {
        stats()["streamed_uploads"]["bytes"].as_u64().unwrap_or(0) >= 20 << 20
    });
    assert!(
        streamed.is_some(),
        "not streamed before the close: {}",
        stats()
    );
    drop(f);
    assert_eq!(m.rest().get("big.bin").as_deref(), Some(&data[..]));
    assert_eq!(m.rest().versions("big.bin").len(), 1);
    assert_eq!(stats()["streamed_uploads"]["finished"], 1);

    let mut want = pseudo_random(32, 6 << 20);
    let mut f = std::fs::File::create(m.path("patched.bin")).unwrap();
    f.write_all(&want).unwrap();
    f.write_all_at(b"patch", 3 << 20).unwrap();
    want[3 << 20..(3 << 20) + 5].copy_from_slice(b"patch");
    drop(f);
    assert_eq!(m.rest().get("patched.bin").as_deref(), Some(&want[..]));
    assert_eq!(read(&m.path("patched.bin")), want);
}

/// As root, `rsync -a` and `tar -xp` keep owners, groups and a setgid directory; REST shows
/// the owners; other users get what the modes give them (issue 13).
#[test]
fn owners_survive_rsync_a_and_tar_xp() {
    require_tool("rsync");
    require_tool("setpriv");
    let m = Mount::new();
    let work = tempdir();
    let src = work.path().join("src");
    sh(
        work.path(),
        &format!(
            "mkdir -p {s}/d && echo a > {s}/d/f && chown 1000:1000 {s}/d && chmod 2750 {s}/d \
             && chown 1001:1002 {s}/d/f",
            s = src.display()
        ),
    );
    sh(
        work.path(),
        &format!("rsync -a {}/ {}/", src.display(), m.path("r").display()),
    );
    std::fs::create_dir(m.path("t")).unwrap();
    sh(
        work.path(),
        &format!(
            "tar -C {} -cf t.tar d && tar -C {} -xpf t.tar",
            src.display(),
            m.path("t").display()
        ),
    );
    let rest = m.rest();
    for dst in ["r", "t"] {
        let d = std::fs::metadata(m.path(&format!("{dst}/d"))).unwrap();
        assert_eq!(
            (d.uid(), d.gid(), d.mode() & 0o7777),
            (1000, 1000, 0o2750),
            "{dst}/d"
        );
        let f = std::fs::metadata(m.path(&format!("{dst}/d/f"))).unwrap();
        assert_eq!((f.uid(), f.gid()), (1001, 1002), "{dst}/d/f");
        let rec = rest.versions(&format!("{dst}/d/f")).pop().unwrap();
        assert_eq!(
            (rec.posix.uid, rec.posix.gid),
            (Some(1001), Some(1002)),
            "{dst}/d/f over REST"
        );
    }
    let as_user = |uid: &str, args: &[&str]| {
        std::process::Command::new("setpriv")
            .args(["--reuid", uid, "--regid", uid, "--clear-groups"])
            .args(args)
            .output()
            .unwrap()
    };
    let t_d = m.path("t/d");
    let t_d = t_d.to_str().unwrap();
    let other = as_user("1003", &["ls", t_d]);
    assert!(
        !other.status.success(),
        "a stranger may not enter a 2750 directory"
    );
    let owner = as_user("1000", &["ls", t_d]);
    assert!(
        owner.status.success(),
        "its owner lists it: {}",
        String::from_utf8_lossy(&owner.stderr)
    );
}

/// Hard links through the kernel: `ln`, `tar` and `rsync -H` make them, all names share an
/// inode, content and mode, a write through one is read through the other and over REST,
/// and unlink of one keeps the other (issue 13).
#[test]
fn hard_links_work_with_ln_tar_and_rsync() {
    require_tool("rsync");
    let m = Mount::new();
    let work = tempdir();
    let src = work.path().join("src");
    sh(
        work.path(),
        &format!(
            "mkdir -p {s}/d && echo one > {s}/d/a && ln {s}/d/a {s}/b",
            s = src.display()
        ),
    );
    std::fs::create_dir(m.path("t")).unwrap();
    sh(
        work.path(),
        &format!(
            "tar -C {} -cf t.tar d b && tar -C {} -xf t.tar && rsync -aH {}/ {}/",
            src.display(),
            m.path("t").display(),
            src.display(),
            m.path("r").display()
        ),
    );
    let rest = m.rest();
    for dst in ["t", "r"] {
        let a = std::fs::metadata(m.path(&format!("{dst}/d/a"))).unwrap();
        let b = std::fs::metadata(m.path(&format!("{dst}/b"))).unwrap();
        assert_eq!(
            (a.ino(), a.nlink()),
            (b.ino(), 2),
            "{dst}: one file, two names"
        );
        assert_eq!(
            rest.get(&format!("{dst}/b")).as_deref(),
            Some(&b"one\n"[..])
        );
    }
    sh(
        work.path(),
        &format!(
            "echo changed >> {a} && chmod 600 {a}",
            a = m.path("t/d/a").display()
        ),
    );
    let b = m.path("t/b");
    assert_eq!(std::fs::read(&b).unwrap(), b"one\nchanged\n");
    assert_eq!(std::fs::metadata(&b).unwrap().mode() & 0o777, 0o600);
    assert_eq!(rest.get("t/b").as_deref(), Some(&b"one\nchanged\n"[..]));
    sh(
        work.path(),
        &format!("ln {} {}", b.display(), m.path("t/c").display()),
    );
    assert_eq!(std::fs::metadata(&b).unwrap().nlink(), 3);
    std::fs::remove_file(m.path("t/d/a")).unwrap();
    let left = std::fs::metadata(&b).unwrap();
    assert_eq!(left.nlink(), 2);
    assert_eq!(std::fs::read(m.path("t/c")).unwrap(), b"one\nchanged\n");
    assert_eq!(rest.get("t/d/a"), None);
}

/// Coherent mounts (issue 15): a second mount (`--api` to the first's REST) and REST itself
/// see a change made through the first mount within 300 ms, not after the 1 s attribute
/// TTL, and the first mount sees a REST write as fast: the API server publishes every
/// change and the mounts follow them, dropping what their kernels cached.
#[test]
fn a_change_through_one_mount_shows_in_another_at_once() {
    let a = Mount::new();
    let root_b = tempdir();
    let b = Mount::start_with(root_b.path(), &["--api", &a.url, "--token", &a.token()]);
    std::fs::write(a.path("shared.txt"), b"first").unwrap();
    let seen = wait_until(Duration::from_secs(5), || {
        std::fs::read(b.path("shared.txt")).is_ok_and(|d| d == b"first")
    });
    assert!(seen.is_some(), "the second mount sees the file");
    let limit = Duration::from_millis(300);
    let mut took = Vec::new();
    for round in 0..5u8 {
        // The second mount has the file's attributes and pages cached now.
        assert!(std::fs::metadata(b.path("shared.txt")).is_ok());
        let body = format!("round {round}: {}", "x".repeat(usize::from(round) * 100));
        std::fs::write(a.path("shared.txt"), &body).unwrap();
        // What `stat` (ls -l, make, rsync) says, not only what an open reads: an open
        // checks the store anyway (close-to-open), a stat trusts the kernel's cache.
        let t = wait_until(Duration::from_secs(3), || {
            std::fs::metadata(b.path("shared.txt")).is_ok_and(|m| m.len() == body.len() as u64)
        })
        .expect("the second mount's stat sees the new size");
        took.push(t);
        assert_eq!(
            std::fs::read(b.path("shared.txt")).unwrap(),
            body.as_bytes()
        );
    }
    // A name made over REST shows in both mounts (no negative entry kept).
    assert!(std::fs::metadata(a.path("from-rest")).is_err());
    assert!(std::fs::metadata(b.path("from-rest")).is_err());
    a.rest().put("from-rest", b"rest bytes");
    for m in [&a, &b] {
        let t = wait_until(Duration::from_secs(3), || {
            std::fs::metadata(m.path("from-rest")).is_ok_and(|d| d.len() == 10)
        })
        .expect("a REST write shows in the mount");
        took.push(t);
    }
    // And a REST overwrite of a name both mounts have looked at.
    for m in [&a, &b] {
        assert_eq!(std::fs::metadata(m.path("from-rest")).unwrap().len(), 10);
    }
    a.rest().put("from-rest", b"longer rest bytes");
    for m in [&a, &b] {
        let t = wait_until(Duration::from_secs(3), || {
            std::fs::metadata(m.path("from-rest")).is_ok_and(|d| d.len() == 17)
        })
        .expect("a REST overwrite shows in the mount");
        took.push(t);
    }
    took.sort();
    eprintln!("change propagation between mounts: {took:?}");
    assert!(
        took[took.len() / 2] < limit,
        "median {:?}",
        took[took.len() / 2]
    );
    assert!(*took.last().unwrap() < Duration::from_secs(1), "{took:?}");
}
