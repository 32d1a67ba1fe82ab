//! `.dosfs/history/<path>/`: every version of a file as a read-only file named
//! `v<6-digit version>_<UTC time>[.<ext>]`, still there after the file is deleted.
//! `.dosfs/history/<dir>/` mirrors the namespace so it can be browsed.

use std::time::{Duration, UNIX_EPOCH};

use dos_protocol::{EntryKind, VersionRecord};

use super::{Attr, DirEntry, FsCore, Kind, NodeKey, join};
use crate::error::{FsError, FsResult};

pub const HISTORY_DIR: &str = "history";

/// `v000003_20261126T171315Z.txt` for version 3 of `notes.txt`.
pub fn version_file_name(path: &str, rec: &VersionRecord) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(rec.mtime_ns.max(0) as u64);
    let stamp: String = humantime::format_rfc3339_seconds(t)
        .to_string()
        .chars()
        .filter(|c| *c != '-' && *c != ':')
        .collect();
    let file = path.rsplit('/').next().unwrap_or(path);
    let ext = match file.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() && !ext.is_empty() => format!(".{ext}"),
        _ => String::new(),
    };
    format!("v{:06}_{stamp}{ext}", rec.version)
}

fn parse_version(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('v')?.split('_').next()?;
    if digits.len() < 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

fn dir_attr(ino: u64, mtime_ns: i64) -> Attr {
    Attr::read_only(ino, Kind::Dir, 0, 0o555, mtime_ns)
}

pub fn control_attr(core: &FsCore, key: NodeKey) -> Attr {
    dir_attr(core.ino_of(key), core.started_ns)
}

/// File versions of `path` (no delete markers, no directory markers).
async fn file_versions(core: &FsCore, path: &str) -> FsResult<Vec<VersionRecord>> {
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let all = core.store.all_versions(&super::object_name(path)?).await?;
    Ok(all
        .into_iter()
        .filter(|v| v.hash.is_some() && v.kind != EntryKind::Dir && !v.kind.is_special())
        .collect())
}

fn version_attr(core: &FsCore, path: &str, rec: &VersionRecord) -> Attr {
    let ino = core.ino_of(NodeKey::HistoryVersion(path.to_string(), rec.version));
    let kind = if rec.kind == EntryKind::Symlink {
        Kind::Symlink
    } else {
        Kind::File
    };
    Attr {
        ctime_ns: rec.ctime_ns,
        uid: rec.posix.uid,
        gid: rec.posix.gid,
        hash: rec.hash,
        version: Some(rec.version),
        ..Attr::read_only(ino, kind, rec.size, 0o444, rec.mtime_ns)
    }
}

pub async fn getattr(core: &FsCore, key: NodeKey) -> FsResult<Attr> {
    match &key {
        NodeKey::AtRoot | NodeKey::At(..) => super::at::getattr(core, key).await,
        NodeKey::Control | NodeKey::History(_) => Ok(control_attr(core, key)),
        NodeKey::Stats => Ok(super::stats::attr(core)),
        NodeKey::HistoryVersion(path, v) => {
            let rec = core
                .store
                .head(&super::object_name(path)?, Some(*v))
                .await?;
            Ok(version_attr(core, path, &rec))
        }
        NodeKey::Path(_) => Err(FsError::Invalid("not a history node".into())),
    }
}

/// The node `name` in a `.dosfs` folder: its key and attributes.
pub async fn lookup(core: &FsCore, parent: NodeKey, name: &str) -> FsResult<(NodeKey, Attr)> {
    match parent {
        NodeKey::Control if name == HISTORY_DIR => {
            let key = NodeKey::History(String::new());
            Ok((key.clone(), control_attr(core, key)))
        }
        NodeKey::Control if name == super::stats::STATS_FILE => {
            Ok((NodeKey::Stats, super::stats::attr(core)))
        }
        NodeKey::Control if name == super::at::AT_DIR => {
            let key = NodeKey::AtRoot;
            Ok((key.clone(), control_attr(core, key)))
        }
        NodeKey::AtRoot | NodeKey::At(..) => super::at::lookup(core, parent, name).await,
        NodeKey::History(dir) => {
            let versions = file_versions(core, &dir).await?;
            if !versions.is_empty() {
                // `dir` is a file: its children are its versions.
                let v = parse_version(name).ok_or(FsError::NotFound)?;
                let rec = versions
                    .iter()
                    .find(|r| r.version == v && version_file_name(&dir, r) == name)
                    .ok_or(FsError::NotFound)?;
                let key = NodeKey::HistoryVersion(dir.clone(), rec.version);
                return Ok((key, version_attr(core, &dir, rec)));
            }
            // Any path can be entered: a folder that was moved or deleted still leads to the
            // history of the files that were in it.
            let key = NodeKey::History(join(&dir, name));
            Ok((key.clone(), control_attr(core, key)))
        }
        _ => Err(FsError::NotFound),
    }
}

pub async fn read_dir(core: &FsCore, key: NodeKey) -> FsResult<Vec<DirEntry>> {
    match key {
        NodeKey::Control => Ok(vec![
            DirEntry {
                ino: core.ino_of(NodeKey::History(String::new())),
                name: HISTORY_DIR.into(),
                kind: Kind::Dir,
            },
            DirEntry {
                ino: core.ino_of(NodeKey::Stats),
                name: super::stats::STATS_FILE.into(),
                kind: Kind::File,
            },
            DirEntry {
                ino: core.ino_of(NodeKey::AtRoot),
                name: super::at::AT_DIR.into(),
                kind: Kind::Dir,
            },
        ]),
        NodeKey::AtRoot | NodeKey::At(..) => super::at::read_dir(core, key).await,
        NodeKey::History(dir) => {
            let versions = file_versions(core, &dir).await?;
            if !versions.is_empty() {
                return Ok(versions
                    .iter()
                    .map(|r| {
                        let a = version_attr(core, &dir, r);
                        DirEntry {
                            ino: a.ino,
                            name: version_file_name(&dir, r),
                            kind: a.kind,
                        }
                    })
                    .collect());
            }
            // A directory: its live children, each one a history folder.
            let children = core.list_children(&dir).await?;
            Ok(children
                .into_iter()
                .map(|c| DirEntry {
                    ino: core.ino_of(NodeKey::History(join(&dir, &c.name))),
                    name: c.name,
                    kind: Kind::Dir,
                })
                .collect())
        }
        _ => Err(FsError::NotDir),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dos_protocol::{ContentHash, ObjectName};

    #[test]
    fn names() {
        let rec = VersionRecord {
            name: ObjectName::new("d/notes.txt").unwrap(),
            version: 3,
            size: 1,
            hash: Some(ContentHash::of(b"x")),
            mtime_ns: 1_795_713_195_000_000_000,
            mode: 0o644,
            kind: EntryKind::File,
            posix: Default::default(),
            ctime_ns: 1_795_713_195_000_000_000,
        };
        let n = version_file_name("d/notes.txt", &rec);
        assert_eq!(n, "v000003_20261126T171315Z.txt");
        assert_eq!(parse_version(&n), Some(3));
        assert_eq!(
            version_file_name("Makefile", &rec),
            "v000003_20261126T171315Z"
        );
        assert_eq!(
            version_file_name(".bashrc", &rec),
            "v000003_20261126T171315Z"
        );
        assert_eq!(parse_version("x"), None);
    }
}
