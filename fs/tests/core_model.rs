//! Reference-model property test of the filesystem core, without a kernel or a mount:
//! proptest draws sequences of operations (create and write at an offset, truncate, rename,
//! unlink, mkdir, rmdir, chmod, symlink, and a put or delete made behind the core's back
//! through the store itself), runs each on an [`FsCore`] and on a model of what POSIX and
//! dosfs's semantics say, and after every step compares the result (value or errno) and then
//! the whole tree (names, kinds, sizes, modes, contents, link targets).
//!
//! The same body runs on two stores: the in-memory one (many cases, fast) and the embedded
//! cluster called in process (real shards on disk, fewer cases). Path-level checks the kernel
//! would make before calling a filesystem (the parent is a directory, the target exists) are
//! made by the harness, as the kernel does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dos_cache::{BlockCache, CacheConfig, StagingArea};
use dos_protocol::{ObjectName, WriteAttributes};
use dos_store::ObjectStore;
use dos_store::memory::MemoryStore;
use dosfs::core::{Caller, FsConfig, FsCore, Kind, ROOT_INO, SetAttr};
use dosfs::error::FsError;
use proptest::prelude::*;

// ----- the model ---------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { data: Vec<u8>, mode: u32 },
    Dir { mode: u32 },
    Symlink { target: String },
}

/// Paths to nodes; the root is implicit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Model(BTreeMap<String, Node>);

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

impl Model {
    fn get(&self, path: &str) -> Option<&Node> {
        self.0.get(path)
    }

    fn is_dir(&self, path: &str) -> bool {
        path.is_empty() || matches!(self.get(path), Some(Node::Dir { .. }))
    }

    /// The errno the kernel gives before asking the filesystem, if the parent is unusable:
    /// an ancestor that is missing (ENOENT) or not a directory (ENOTDIR).
    fn parent_errno(&self, path: &str) -> Option<i32> {
        let parent = parent_of(path);
        if parent.is_empty() {
            return None;
        }
        let mut prefix = String::new();
        for part in parent.split('/') {
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            match self.get(&prefix) {
                None => return Some(libc::ENOENT),
                Some(Node::Dir { .. }) => {}
                Some(_) => return Some(libc::ENOTDIR),
            }
        }
        None
    }

    fn children(&self, dir: &str) -> impl Iterator<Item = &String> {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.0
            .keys()
            .filter(move |k| k.starts_with(&prefix) && !k[prefix.len()..].contains('/'))
    }

    fn is_empty_dir(&self, dir: &str) -> bool {
        self.children(dir).next().is_none()
    }
}

// ----- operations --------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// open (creating, truncating if asked), pwrite at `offset`, close.
    Write {
        path: String,
        offset: u64,
        len: usize,
        seed: u8,
        truncate: bool,
    },
    Truncate {
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
    Chmod {
        path: String,
        mode: u32,
    },
    Symlink {
        path: String,
        target: String,
    },
    /// A new version written through the store, not the core (another client).
    RemotePut {
        path: String,
        len: usize,
        seed: u8,
    },
    /// A delete made through the store, not the core.
    RemoteDelete {
        path: String,
    },
}

fn path() -> impl Strategy<Value = String> {
    let name = prop::sample::select(vec!["a", "b", "c"]);
    prop::collection::vec(name, 1..=3).prop_map(|parts| parts.join("/"))
}

fn len() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..3000,
        1 => 1_040_000usize..1_060_000,
    ]
}

fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        3 => 0u64..5000,
        1 => 1_048_000u64..1_049_000,
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (path(), offset(), len(), any::<u8>(), any::<bool>()).prop_map(
            |(path, offset, len, seed, truncate)| Op::Write { path, offset, len, seed, truncate }
        ),
        2 => (path(), prop_oneof![Just(0u64), 0u64..4000, 1_048_570u64..1_048_590])
            .prop_map(|(path, size)| Op::Truncate { path, size }),
        3 => (path(), path()).prop_map(|(from, to)| Op::Rename { from, to }),
        2 => path().prop_map(|path| Op::Unlink { path }),
        4 => path().prop_map(|path| Op::Mkdir { path }),
        2 => path().prop_map(|path| Op::Rmdir { path }),
        1 => (path(), prop::sample::select(vec![0o600u32, 0o644, 0o755, 0o700]))
            .prop_map(|(path, mode)| Op::Chmod { path, mode }),
        1 => (path(), "[a-z]{1,8}").prop_map(|(path, target)| Op::Symlink { path, target }),
        2 => (path(), 0usize..2000, any::<u8>()).prop_map(|(path, len, seed)| Op::RemotePut { path, len, seed }),
        1 => path().prop_map(|path| Op::RemoteDelete { path }),
    ]
}

fn bytes_of(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// What an operation answered: nothing, or an errno.
type Outcome = Result<(), i32>;

fn errno(e: FsError) -> i32 {
    e.errno()
}

// ----- the model's answers -----------------------------------------------------------------

/// Applies `op` to the model; `None` when the operation is not one to compare (the harness
/// would do what no kernel asks of a filesystem, or the store could not represent it).
fn apply(m: &mut Model, op: &Op) -> Option<Outcome> {
    match op {
        Op::Write {
            path,
            offset,
            len,
            seed,
            truncate,
        } => {
            if let Some(e) = m.parent_errno(path) {
                return Some(Err(e));
            }
            let (mut data, mode) = match m.get(path) {
                Some(Node::File { data, mode }) => (data.clone(), *mode),
                Some(Node::Dir { .. }) => return Some(Err(libc::EISDIR)),
                // Writing through a symlink follows it: not modelled.
                Some(Node::Symlink { .. }) => return None,
                None => (Vec::new(), 0o644),
            };
            if *truncate {
                data.clear();
            }
            let end = *offset as usize + len;
            // A write of no bytes changes nothing (POSIX; the kernel does not even pass it on).
            if data.len() < end && *len > 0 {
                data.resize(end, 0);
            }
            if *len > 0 {
                data[*offset as usize..end].copy_from_slice(&bytes_of(*len, *seed));
            }
            m.0.insert(path.clone(), Node::File { data, mode });
            Some(Ok(()))
        }
        Op::Truncate { path, size } => match m.0.get_mut(path) {
            Some(Node::File { data, .. }) => {
                data.resize(*size as usize, 0);
                Some(Ok(()))
            }
            _ => None,
        },
        Op::Rename { from, to } => {
            if m.parent_errno(from).is_some() || m.parent_errno(to).is_some() {
                return None;
            }
            let src = m.get(from).cloned()?;
            if from == to {
                return Some(Ok(()));
            }
            if to.starts_with(&format!("{from}/")) {
                return Some(Err(libc::EINVAL));
            }
            let src_dir = matches!(src, Node::Dir { .. });
            match m.get(to) {
                Some(Node::Dir { .. }) if !src_dir => return Some(Err(libc::EISDIR)),
                Some(Node::Dir { .. }) if !m.is_empty_dir(to) => {
                    return Some(Err(libc::ENOTEMPTY));
                }
                Some(Node::File { .. } | Node::Symlink { .. }) if src_dir => {
                    return Some(Err(libc::ENOTDIR));
                }
                _ => {}
            }
            m.0.remove(to);
            let moved: Vec<(String, Node)> =
                m.0.iter()
                    .filter(|(k, _)| *k == from || k.starts_with(&format!("{from}/")))
                    .map(|(k, v)| (format!("{to}{}", &k[from.len()..]), v.clone()))
                    .collect();
            m.0.retain(|k, _| k != from && !k.starts_with(&format!("{from}/")));
            m.0.extend(moved);
            Some(Ok(()))
        }
        Op::Unlink { path } => {
            if let Some(e) = m.parent_errno(path) {
                return Some(Err(e));
            }
            match m.get(path) {
                None => Some(Err(libc::ENOENT)),
                Some(Node::Dir { .. }) => Some(Err(libc::EISDIR)),
                Some(_) => {
                    m.0.remove(path);
                    Some(Ok(()))
                }
            }
        }
        Op::Mkdir { path } => {
            if let Some(e) = m.parent_errno(path) {
                return Some(Err(e));
            }
            if m.get(path).is_some() {
                return Some(Err(libc::EEXIST));
            }
            m.0.insert(path.clone(), Node::Dir { mode: 0o755 });
            Some(Ok(()))
        }
        Op::Rmdir { path } => {
            if let Some(e) = m.parent_errno(path) {
                return Some(Err(e));
            }
            match m.get(path) {
                None => Some(Err(libc::ENOENT)),
                Some(Node::Dir { .. }) if !m.is_empty_dir(path) => Some(Err(libc::ENOTEMPTY)),
                Some(Node::Dir { .. }) => {
                    m.0.remove(path);
                    Some(Ok(()))
                }
                Some(_) => Some(Err(libc::ENOTDIR)),
            }
        }
        Op::Chmod { path, mode } => match m.0.get_mut(path) {
            Some(Node::File { mode: m0, .. } | Node::Dir { mode: m0 }) => {
                *m0 = *mode;
                Some(Ok(()))
            }
            // chmod follows a symlink: not modelled.
            _ => None,
        },
        Op::Symlink { path, target } => {
            if let Some(e) = m.parent_errno(path) {
                return Some(Err(e));
            }
            if m.get(path).is_some() {
                return Some(Err(libc::EEXIST));
            }
            m.0.insert(
                path.clone(),
                Node::Symlink {
                    target: target.clone(),
                },
            );
            Some(Ok(()))
        }
        Op::RemotePut { path, len, seed } => {
            // Only where the namespace stays a tree: the parent is a directory, the path is
            // not one.
            if !m.is_dir(parent_of(path)) || m.is_dir(path) {
                return None;
            }
            m.0.insert(
                path.clone(),
                Node::File {
                    data: bytes_of(*len, *seed),
                    mode: 0o644,
                },
            );
            Some(Ok(()))
        }
        Op::RemoteDelete { path } => match m.get(path) {
            Some(Node::File { .. } | Node::Symlink { .. }) => {
                m.0.remove(path);
                Some(Ok(()))
            }
            _ => None,
        },
    }
}

// ----- the core's answers ------------------------------------------------------------------

struct Harness {
    core: Arc<FsCore>,
    store: Arc<dyn ObjectStore>,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new(store: Arc<dyn ObjectStore>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let cache = BlockCache::open(CacheConfig {
            memory_bytes: 8 << 20,
            disk_bytes: 64 << 20,
            min_free_disk_bytes: 0,
            ..CacheConfig::new(dir.path().join("blocks"))
        })
        .unwrap();
        let staging = StagingArea::new(dir.path()).unwrap();
        let mut config = FsConfig::new(0, 0);
        // Changes made through the store show at once (no attribute cache to wait out).
        config.attr_ttl = Duration::ZERO;
        let core = Arc::new(FsCore::new(store.clone(), cache, staging, config));
        Self {
            core,
            store,
            _dir: dir,
        }
    }

    /// The inode of `path`, walking lookups from the root as the kernel does.
    async fn ino(&self, path: &str) -> Result<(u64, Kind), i32> {
        let mut ino = ROOT_INO;
        let mut kind = Kind::Dir;
        if path.is_empty() {
            return Ok((ino, kind));
        }
        for part in path.split('/') {
            if kind != Kind::Dir {
                return Err(libc::ENOTDIR);
            }
            let a = self.core.lookup(ino, part).await.map_err(errno)?;
            ino = a.ino;
            kind = a.kind;
        }
        Ok((ino, kind))
    }

    /// The parent's inode and the last name, with the kernel's checks on the parent.
    async fn parent(&self, path: &str) -> Result<(u64, String), i32> {
        let (parent, name) = match path.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", path),
        };
        let (ino, kind) = self.ino(parent).await?;
        if kind != Kind::Dir {
            return Err(libc::ENOTDIR);
        }
        Ok((ino, name.to_string()))
    }

    async fn run(&self, op: &Op) -> Outcome {
        match op {
            Op::Write {
                path,
                offset,
                len,
                seed,
                truncate,
            } => {
                let (parent, name) = self.parent(path).await?;
                let fh = match self.core.lookup(parent, &name).await {
                    Ok(a) if a.kind == Kind::Dir => return Err(libc::EISDIR),
                    Ok(a) => {
                        self.core
                            .open(a.ino, true, *truncate)
                            .await
                            .map_err(errno)?
                            .fh
                    }
                    Err(e) if e.errno() == libc::ENOENT => {
                        self.core
                            .create(parent, &name, 0o644, &Caller::root())
                            .await
                            .map_err(errno)?
                            .1
                    }
                    Err(e) => return Err(errno(e)),
                };
                let data = bytes_of(*len, *seed);
                let written = self.core.write(fh, *offset, &data).await.map_err(errno);
                let flushed = self.core.flush(fh).await.map_err(errno);
                let released = self.core.release(fh).await.map_err(errno);
                written?;
                flushed?;
                released
            }
            Op::Truncate { path, size } => {
                let (ino, _) = self.ino(path).await?;
                self.core
                    .setattr(ino, &SetAttr::size(*size), &Caller::root())
                    .await
                    .map(drop)
                    .map_err(errno)
            }
            Op::Rename { from, to } => {
                let (p, n) = self.parent(from).await?;
                let (np, nn) = self.parent(to).await?;
                self.ino(from).await?;
                self.core.rename(p, &n, np, &nn, false).await.map_err(errno)
            }
            Op::Unlink { path } => {
                let (p, n) = self.parent(path).await?;
                self.core.lookup(p, &n).await.map_err(errno)?;
                self.core.unlink(p, &n).await.map_err(errno)
            }
            Op::Mkdir { path } => {
                let (p, n) = self.parent(path).await?;
                if self.core.lookup(p, &n).await.is_ok() {
                    return Err(libc::EEXIST);
                }
                self.core
                    .mkdir(p, &n, 0o755, &Caller::root())
                    .await
                    .map(drop)
                    .map_err(errno)
            }
            Op::Rmdir { path } => {
                let (p, n) = self.parent(path).await?;
                self.core.lookup(p, &n).await.map_err(errno)?;
                self.core.rmdir(p, &n).await.map_err(errno)
            }
            Op::Chmod { path, mode } => {
                let (ino, _) = self.ino(path).await?;
                self.core
                    .setattr(ino, &SetAttr::mode(*mode), &Caller::root())
                    .await
                    .map(drop)
                    .map_err(errno)
            }
            Op::Symlink { path, target } => {
                let (p, n) = self.parent(path).await?;
                if self.core.lookup(p, &n).await.is_ok() {
                    return Err(libc::EEXIST);
                }
                self.core
                    .symlink(p, &n, target, &Caller::root())
                    .await
                    .map(drop)
                    .map_err(errno)
            }
            Op::RemotePut { path, len, seed } => {
                let name = ObjectName::new(path.as_str()).unwrap();
                self.store
                    .put_bytes(
                        &name,
                        &WriteAttributes::default(),
                        Bytes::from(bytes_of(*len, *seed)),
                    )
                    .await
                    .map(drop)
                    .map_err(|e| panic!("remote put of {path}: {e}"))
            }
            Op::RemoteDelete { path } => {
                let name = ObjectName::new(path.as_str()).unwrap();
                self.store
                    .delete(&name)
                    .await
                    .map(drop)
                    .map_err(|e| panic!("remote delete of {path}: {e}"))
            }
        }
    }

    async fn read_file(&self, ino: u64) -> Vec<u8> {
        let fh = self.core.open(ino, false, false).await.unwrap().fh;
        let mut out = Vec::new();
        loop {
            let chunk = self
                .core
                .read(fh, out.len() as u64, 128 << 10)
                .await
                .unwrap();
            if chunk.is_empty() {
                break;
            }
            out.extend_from_slice(&chunk);
        }
        self.core.release(fh).await.unwrap();
        out
    }

    /// The whole tree as the core shows it.
    async fn tree(&self) -> Model {
        let mut model = Model::default();
        let mut dirs = vec![(String::new(), ROOT_INO)];
        while let Some((dir, ino)) = dirs.pop() {
            let fh = self.core.opendir(ino).await.unwrap();
            let mut names = Vec::new();
            self.core
                .dir_entries(ino, fh, 0, |_, _, _, name| {
                    if name != "." && name != ".." {
                        names.push(name.to_string());
                    }
                    false
                })
                .await
                .unwrap();
            self.core.releasedir(fh);
            for name in names {
                let path = if dir.is_empty() {
                    name.clone()
                } else {
                    format!("{dir}/{name}")
                };
                let a = self.core.lookup(ino, &name).await.unwrap();
                let node = match a.kind {
                    Kind::Dir => {
                        dirs.push((path.clone(), a.ino));
                        Node::Dir { mode: a.perm }
                    }
                    Kind::File => {
                        let data = self.read_file(a.ino).await;
                        assert_eq!(data.len() as u64, a.size, "{path}: size and bytes");
                        Node::File { data, mode: a.perm }
                    }
                    Kind::Symlink => Node::Symlink {
                        target: String::from_utf8(self.core.readlink(a.ino).await.unwrap())
                            .unwrap(),
                    },
                    other => panic!("{path}: the model makes no {other:?}"),
                };
                model.0.insert(path, node);
            }
        }
        model
    }
}

/// Runs `ops` on a fresh core over `store` and on the model, comparing after every step.
async fn check(store: Arc<dyn ObjectStore>, ops: &[Op]) -> Result<(), TestCaseError> {
    let h = Harness::new(store);
    let mut model = Model::default();
    for (i, op) in ops.iter().enumerate() {
        let mut next = model.clone();
        let Some(want) = apply(&mut next, op) else {
            continue;
        };
        let got = h.run(op).await;
        prop_assert_eq!(got, want, "step {}: {:?}", i, op);
        model = next;
        let tree = h.tree().await;
        prop_assert!(
            tree == model,
            "step {}: {:?}\ncore:  {:?}\nmodel: {:?}",
            i,
            op,
            summary(&tree),
            summary(&model)
        );
    }
    Ok(())
}

/// The tree without file bytes (their lengths and a checksum instead), for messages.
fn summary(m: &Model) -> Vec<String> {
    m.0.iter()
        .map(|(k, v)| match v {
            Node::File { data, mode } => format!(
                "{k} file {mode:o} {} bytes sum {}",
                data.len(),
                data.iter().map(|b| *b as u64).sum::<u64>()
            ),
            Node::Dir { mode } => format!("{k} dir {mode:o}"),
            Node::Symlink { target } => format!("{k} -> {target}"),
        })
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn core_matches_the_model_on_the_memory_store(ops in prop::collection::vec(op(), 1..40)) {
        runtime().block_on(check(Arc::new(MemoryStore::new()), &ops))?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, ..ProptestConfig::default() })]

    #[test]
    fn core_matches_the_model_on_the_embedded_store(ops in prop::collection::vec(op(), 1..25)) {
        let rt = runtime();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let config = dos_server::local::LocalConfig::new(
                dir.path().join("store"),
                "127.0.0.1:0".parse().unwrap(),
            );
            let cluster = dos_server::local::LocalCluster::start(config).await.unwrap();
            let result = check(Arc::new(cluster.store()), &ops).await;
            cluster.shutdown().await;
            result
        })?;
    }
}
