//! Model-based random test: the same seeded sequence of file operations (create/write at an
//! offset, append, truncate, rename, unlink, mkdir, rmdir, read, stat, readdir, chmod) runs on a
//! plain local directory (the model) and on a dosfs mount; after every step the results (bytes,
//! attributes, errno) and then the whole trees (listings, kinds, sizes, modes, contents) must
//! be equal.
//!
//! Deterministic: each test has a fixed seed, printed on failure with the operations so far.
//! Reproduce or explore with `DOSFS_MODEL_SEED=<seed> DOSFS_MODEL_OPS=<n> cargo test -p dosfs
//! --test model -- model_from_env --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::fmt;
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use common::*;
use dos_protocol::ContentHash;

/// splitmix64: small, fast, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// open(O_WRONLY|O_CREAT [|O_TRUNC]), pwrite at `offset`, close.
    Write {
        path: String,
        offset: u64,
        len: usize,
        seed: u64,
        truncate: bool,
    },
    /// open(O_WRONLY|O_CREAT|O_APPEND), write, close.
    Append {
        path: String,
        len: usize,
        seed: u64,
    },
    /// open(O_WRONLY), ftruncate, close.
    Truncate {
        path: String,
        size: u64,
    },
    /// truncate(2) on a path, no open file.
    TruncatePath {
        path: String,
        size: u64,
    },
    Rename {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    Mkdir {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Read {
        path: String,
    },
    Stat {
        path: String,
    },
    ReadDir {
        path: String,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Symlink {
        target: String,
        path: String,
    },
    Readlink {
        path: String,
    },
    /// Two handles on one file: write through the first, read through the second while the
    /// first is still open, close both.
    WriteWhileOpen {
        path: String,
        offset: u64,
        len: usize,
        seed: u64,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Write {
                path,
                offset,
                len,
                seed,
                truncate,
            } => write!(
                f,
                "write {path} offset={offset} len={len} seed={seed}{}",
                if *truncate { " O_TRUNC" } else { "" }
            ),
            Op::Append { path, len, seed } => write!(f, "append {path} len={len} seed={seed}"),
            Op::Truncate { path, size } => write!(f, "ftruncate {path} {size}"),
            Op::TruncatePath { path, size } => write!(f, "truncate {path} {size}"),
            Op::Rename { from, to } => write!(f, "rename {from} -> {to}"),
            Op::Unlink { path } => write!(f, "unlink {path}"),
            Op::Mkdir { path } => write!(f, "mkdir {path}"),
            Op::Rmdir { path } => write!(f, "rmdir {path}"),
            Op::Read { path } => write!(f, "read {path}"),
            Op::Stat { path } => write!(f, "stat {path}"),
            Op::ReadDir { path } => write!(f, "readdir {path:?}"),
            Op::Chmod { path, mode } => write!(f, "chmod {mode:o} {path}"),
            Op::Symlink { target, path } => write!(f, "symlink {path} -> {target}"),
            Op::Readlink { path } => write!(f, "readlink {path}"),
            Op::WriteWhileOpen {
                path,
                offset,
                len,
                seed,
            } => write!(
                f,
                "write-while-open {path} offset={offset} len={len} seed={seed}"
            ),
        }
    }
}

const NAMES: [&str; 6] = ["a", "b", "c.txt", "d", "e.log", "f"];

/// A path of depth 1 to 3 over a tiny alphabet, so operations collide often: files where
/// folders are wanted and the other way round, renames onto existing names, and so on.
fn any_path(rng: &mut Rng) -> String {
    let depth = match rng.below(10) {
        0..=4 => 1,
        5..=8 => 2,
        _ => 3,
    };
    (0..depth)
        .map(|_| NAMES[rng.below(NAMES.len() as u64) as usize])
        .collect::<Vec<_>>()
        .join("/")
}

/// Every path in the model tree, and its folders ("" is the root).
fn model_paths(model: &Path) -> (Vec<String>, Vec<String>) {
    fn go(root: &Path, dir: &Path, all: &mut Vec<String>, dirs: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            all.push(rel.clone());
            if p.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                dirs.push(rel);
                go(root, &p, all, dirs);
            }
        }
    }
    let (mut all, mut dirs) = (Vec::new(), vec![String::new()]);
    go(model, model, &mut all, &mut dirs);
    (all, dirs)
}

/// Mostly names that exist or whose folder exists (so most operations do something), some
/// entirely random ones (so errors are exercised too).
fn random_path(rng: &mut Rng, model: &Path) -> String {
    let (all, dirs) = model_paths(model);
    let roll = rng.below(100);
    if roll < 40 && !all.is_empty() {
        all[rng.below(all.len() as u64) as usize].clone()
    } else if roll < 85 {
        let dir = &dirs[rng.below(dirs.len() as u64) as usize];
        let name = NAMES[rng.below(NAMES.len() as u64) as usize];
        if dir.is_empty() {
            name.to_string()
        } else {
            format!("{dir}/{name}")
        }
    } else {
        any_path(rng)
    }
}

fn random_len(rng: &mut Rng) -> usize {
    match rng.below(40) {
        0 => 0,
        // Past a 1 MiB cache block now and then.
        1 => 1_048_576 + rng.below(70_000) as usize,
        2..=5 => rng.below(70_000) as usize,
        _ => rng.below(3_000) as usize,
    }
}

fn gen_op(rng: &mut Rng, model: &Path) -> Op {
    let path = random_path(rng, model);
    let size = std::fs::metadata(model.join(&path))
        .map(|m| m.len())
        .unwrap_or(0);
    match rng.below(100) {
        0..=17 => Op::Write {
            offset: if rng.chance(70) {
                rng.below(size + 1)
            } else {
                size + rng.below(5000)
            },
            len: random_len(rng),
            seed: rng.next() % 1_000_000,
            truncate: rng.chance(20),
            path,
        },
        18..=25 => Op::Append {
            len: random_len(rng),
            seed: rng.next() % 1_000_000,
            path,
        },
        26..=30 => Op::Truncate {
            size: match rng.below(3) {
                0 => 0,
                1 => rng.below(size + 1),
                _ => size + rng.below(3000),
            },
            path,
        },
        31..=33 => Op::TruncatePath {
            size: rng.below(size + 2000),
            path,
        },
        34..=43 => Op::Rename {
            from: path,
            to: random_path(rng, model),
        },
        44..=50 => Op::Unlink { path },
        51..=60 => Op::Mkdir { path },
        61..=66 => Op::Rmdir { path },
        67..=78 => Op::Read { path },
        79..=86 => Op::Stat { path },
        87..=91 => Op::ReadDir {
            path: if rng.chance(30) { String::new() } else { path },
        },
        92..=93 => Op::Symlink {
            target: if rng.chance(50) {
                NAMES[rng.below(NAMES.len() as u64) as usize].to_string()
            } else {
                format!("../{}", any_path(rng))
            },
            path,
        },
        94 => Op::Readlink { path },
        95 => Op::Chmod {
            mode: [0o600, 0o644, 0o640, 0o755][rng.below(4) as usize],
            path,
        },
        _ => Op::WriteWhileOpen {
            offset: rng.below(size + 1),
            len: rng.below(3000) as usize + 1,
            seed: rng.next() % 1_000_000,
            path,
        },
    }
}

/// Outcome of one operation: a summary of what it returned, or the errno.
type Outcome = Result<String, i32>;

fn errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn summary(bytes: &[u8]) -> String {
    format!(
        "{} bytes sha256 {}",
        bytes.len(),
        ContentHash::of(bytes).to_hex()
    )
}

fn stat_line(md: &std::fs::Metadata) -> String {
    let ft = md.file_type();
    if ft.is_dir() {
        format!("dir {:o}", md.mode() & 0o7777)
    } else if ft.is_file() {
        format!("file {} {:o}", md.len(), md.mode() & 0o7777)
    } else if ft.is_symlink() {
        format!("symlink {}", md.len())
    } else {
        format!("other {:?}", ft)
    }
}

fn apply(root: &Path, op: &Op) -> Outcome {
    let p = |rel: &str| root.join(rel);
    let r: std::io::Result<String> = (|| match op {
        Op::Write {
            path,
            offset,
            len,
            seed,
            truncate,
        } => {
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(*truncate)
                .mode(0o644)
                .open(p(path))?;
            f.write_all_at(&pseudo_random(*seed, *len), *offset)?;
            drop(f);
            Ok(String::new())
        }
        Op::Append { path, len, seed } => {
            let mut f = std::fs::OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o644)
                .open(p(path))?;
            f.write_all(&pseudo_random(*seed, *len))?;
            drop(f);
            Ok(String::new())
        }
        Op::Truncate { path, size } => {
            let f = std::fs::OpenOptions::new().write(true).open(p(path))?;
            f.set_len(*size)?;
            drop(f);
            Ok(String::new())
        }
        Op::TruncatePath { path, size } => {
            // truncate(1) without -c would create; use the syscall semantics: no create.
            let out = std::process::Command::new("truncate")
                .arg("--no-create")
                .arg("-s")
                .arg(size.to_string())
                .arg(p(path))
                .output()?;
            if out.status.success() {
                Ok(String::new())
            } else {
                // truncate(1) prints strerror; map the few we can meet back to errno.
                let msg = String::from_utf8_lossy(&out.stderr).to_string();
                let e = [
                    ("Is a directory", libc::EISDIR),
                    ("Not a directory", libc::ENOTDIR),
                    ("No such file or directory", libc::ENOENT),
                ]
                .iter()
                .find(|(m, _)| msg.contains(m))
                .map_or(-2, |(_, e)| *e);
                Err(std::io::Error::from_raw_os_error(e))
            }
        }
        Op::Rename { from, to } => std::fs::rename(p(from), p(to)).map(|()| String::new()),
        Op::Unlink { path } => std::fs::remove_file(p(path)).map(|()| String::new()),
        Op::Mkdir { path } => {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o755)
                .create(p(path))
                .map(|()| String::new())
        }
        Op::Rmdir { path } => std::fs::remove_dir(p(path)).map(|()| String::new()),
        Op::Read { path } => std::fs::read(p(path)).map(|b| summary(&b)),
        Op::Stat { path } => std::fs::symlink_metadata(p(path)).map(|m| stat_line(&m)),
        Op::ReadDir { path } => {
            let mut names = Vec::new();
            for e in std::fs::read_dir(p(path))? {
                let e = e?;
                let kind = if e.file_type()?.is_dir() { "/" } else { "" };
                names.push(format!("{}{kind}", e.file_name().to_string_lossy()));
            }
            names.sort();
            Ok(names.join(" "))
        }
        Op::Symlink { target, path } => {
            std::os::unix::fs::symlink(target, p(path)).map(|()| String::new())
        }
        Op::Readlink { path } => std::fs::read_link(p(path)).map(|t| t.display().to_string()),
        Op::Chmod { path, mode } => {
            std::fs::set_permissions(p(path), std::fs::Permissions::from_mode(*mode))
                .map(|()| String::new())
        }
        Op::WriteWhileOpen {
            path,
            offset,
            len,
            seed,
        } => {
            let w = std::fs::OpenOptions::new().write(true).open(p(path))?;
            let data = pseudo_random(*seed, *len);
            w.write_all_at(&data, *offset)?;
            // A second descriptor opened for reading and writing sees the written bytes.
            let r = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(p(path))?;
            let mut buf = vec![0u8; *len];
            let n = r.read_at(&mut buf, *offset)?;
            drop(r);
            w.sync_all()?;
            drop(w);
            Ok(format!("read back {}", summary(&buf[..n])))
        }
    })();
    r.map_err(errno)
}

/// The whole tree under `root`: one line per node with kind, mode, size and content hash.
fn snapshot(root: &Path) -> Vec<String> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let md = std::fs::symlink_metadata(&path)
                .unwrap_or_else(|err| panic!("stat {rel} (listed in its folder): {err}"));
            if md.is_dir() {
                out.push(format!("{rel}/ {:o}", md.mode() & 0o7777));
                go(root, &path, out);
            } else if md.file_type().is_symlink() {
                let target =
                    std::fs::read_link(&path).unwrap_or_else(|err| panic!("readlink {rel}: {err}"));
                out.push(format!("{rel} -> {}", target.display()));
            } else {
                let bytes = std::fs::read(&path)
                    .unwrap_or_else(|err| panic!("read {rel} (listed in its folder): {err}"));
                assert_eq!(
                    bytes.len() as u64,
                    md.len(),
                    "{rel}: stat size and bytes read differ"
                );
                out.push(format!(
                    "{rel} {:o} {}",
                    md.mode() & 0o7777,
                    summary(&bytes)
                ));
            }
        }
    }
    let mut out = Vec::new();
    go(root, root, &mut out);
    out
}

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ENOENT => "ENOENT",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::EINVAL => "EINVAL",
        libc::EIO => "EIO",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EROFS => "EROFS",
        libc::EBADF => "EBADF",
        libc::ENOTCONN => "ENOTCONN",
        _ => return format!("errno {e}"),
    };
    format!("{name} ({e})")
}

fn show(o: &Outcome) -> String {
    match o {
        Ok(s) if s.is_empty() => "ok".into(),
        Ok(s) => format!("ok: {s}"),
        Err(e) => format!("error {}", errno_name(*e)),
    }
}

fn run_model(seed: u64, ops: usize) {
    let work = tempdir();
    let store_root = work.path().join("dosfs");
    std::fs::create_dir(&store_root).unwrap();
    let mut m = Mount::start_in(&store_root);
    let model = work.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let mount = m.path("model");
    std::fs::create_dir(&mount).unwrap();

    let mut rng = Rng(seed);
    let mut log: Vec<String> = Vec::new();
    let fail = |log: &[String], step: usize, what: String| -> ! {
        let start = log.len().saturating_sub(40);
        panic!(
            "model test, seed {seed}, step {step}: {what}\n\
             reproduce: DOSFS_MODEL_SEED={seed} DOSFS_MODEL_OPS={} cargo test -p dosfs --test model -- model_from_env --nocapture\n\
             operations {start}..{step}:\n{}",
            step + 1,
            log[start..].join("\n")
        )
    };
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    for step in 0..ops {
        let op = gen_op(&mut rng, &model);
        let want = apply(&model, &op);
        let got = apply(&mount, &op);
        *kinds
            .entry(format!(
                "{} {}",
                op.to_string().split(' ').next().unwrap(),
                if want.is_ok() { "ok" } else { "err" }
            ))
            .or_default() += 1;
        log.push(format!("{step:4}: {op}  =>  {}", show(&want)));
        if want != got {
            fail(
                &log,
                step,
                format!(
                    "`{op}` differs\n  model (local dir): {}\n  dosfs mount:       {}",
                    show(&want),
                    show(&got)
                ),
            );
        }
        let (a, b) = (snapshot(&model), snapshot(&mount));
        if a != b {
            let only_model: Vec<_> = a.iter().filter(|l| !b.contains(l)).collect();
            let only_mount: Vec<_> = b.iter().filter(|l| !a.contains(l)).collect();
            fail(
                &log,
                step,
                format!(
                    "trees differ after `{op}`\n  only in model: {only_model:#?}\n  only in mount: {only_mount:#?}"
                ),
            );
        }
        // Halfway: unmount and mount the same store again; nothing may change.
        if step == ops / 2 {
            m.unmount();
            drop(m);
            m = Mount::start_in(&store_root);
            log.push(format!("{step:4}: (unmount, mount again)"));
            let b = snapshot(&mount);
            if a != b {
                let only_model: Vec<_> = a.iter().filter(|l| !b.contains(l)).collect();
                let only_mount: Vec<_> = b.iter().filter(|l| !a.contains(l)).collect();
                fail(
                    &log,
                    step,
                    format!(
                        "trees differ after a remount\n  only before: {only_model:#?}\n  only after: {only_mount:#?}"
                    ),
                );
            }
        }
    }
    eprintln!("seed {seed}: {ops} operations agree; mix: {kinds:?}");

    // And the store agrees with the mount after it all: every file's bytes through REST.
    let rest = m.rest();
    for rel in walk_files(&model) {
        let want = std::fs::read(model.join(&rel)).unwrap();
        let got = rest.get(&format!("model/{rel}"));
        assert!(
            got.as_deref() == Some(&want[..]),
            "seed {seed}: REST model/{rel}: {:?} bytes, want {} bytes",
            got.map(|g| g.len()),
            want.len()
        );
    }
}

#[test]
fn model_seed_1() {
    run_model(1, 250);
}

#[test]
fn model_seed_2() {
    run_model(0xD05F5, 250);
}

#[test]
fn model_seed_3() {
    run_model(20_251_126, 250);
}

/// `DOSFS_MODEL_SEED` / `DOSFS_MODEL_OPS` from the environment (does nothing without them).
#[test]
fn model_from_env() {
    let Some(seed) = std::env::var("DOSFS_MODEL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let ops = std::env::var("DOSFS_MODEL_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(250);
    run_model(seed, ops);
}
