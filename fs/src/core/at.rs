//! `.dosfs/at/<time>/`: the whole tree as it was at a moment, read-only. Any time a person
//! types can be entered (the forms of [`dos_protocol::parse_moment`]); `.dosfs/at` itself
//! lists nothing.
//!
//! A folder there is listed with the store's listing at that moment (`ListQuery::at`), one
//! request per page of 1,000 entries, and every entry of a page is remembered, so the
//! `stat` of each that `ls -l`, `diff -r` or `cp -a` makes next asks the store nothing. A
//! file opened there reads the version that was current then, through the block cache like
//! any other content. What a moment in the past shows cannot change (only retention, which
//! removes old versions, could), so its entries are kept longer than those of now.

use std::time::{Duration, Instant};

use dos_protocol::{EntryKind, ListQuery, VersionRecord, now_ns};

use super::{Attr, CONTROL_DIR, DirEntry, Entry, FsCore, Kind, NodeKey, join, lock};
use crate::error::{FsError, FsResult};

pub const AT_DIR: &str = "at";

/// How long an answer about a moment asked at least [`SETTLED`] after it is trusted.
const PAST_TTL: Duration = Duration::from_secs(600);
/// Every version made by a moment is in the store's listings this long after it (a
/// version's time is given when the store makes it, just before its metadata commit). An
/// answer asked for sooner is trusted for the attribute TTL only, like one about now.
const SETTLED: i64 = 2_000_000_000;
/// Remembered entries at most (past it they are all dropped and asked for again).
const AT_ENTRY_CAP: usize = 200_000;
/// Entries per listing request.
const PAGE: usize = 1000;

/// Remembered entries of the tree at moments: `(moment, path)` → what it was then, until
/// when.
pub(crate) type AtEntries = std::collections::HashMap<(i64, String), (Instant, Entry)>;

impl FsCore {
    fn remember_at(&self, at: i64, path: &str, entry: Entry) {
        let ttl = if now_ns().saturating_sub(at) >= SETTLED {
            PAST_TTL
        } else {
            self.config.attr_ttl
        };
        let mut entries = lock(&self.at_entries);
        if entries.len() >= AT_ENTRY_CAP {
            entries.clear();
        }
        entries.insert((at, path.to_string()), (Instant::now() + ttl, entry));
    }

    fn remembered_at(&self, at: i64, path: &str) -> Option<Entry> {
        lock(&self.at_entries)
            .get(&(at, path.to_string()))
            .filter(|(until, _)| Instant::now() < *until)
            .map(|(_, e)| e.clone())
    }

    /// What `path` was at `at`.
    async fn entry_at(&self, at: i64, path: &str) -> FsResult<Entry> {
        if path.is_empty() {
            return Ok(Entry::ImpliedDir);
        }
        if let Some(e) = self.remembered_at(at, path) {
            return Ok(e);
        }
        // The name itself sorts first among the names it begins; a folder shows as a prefix.
        let page = self
            .list_page(&ListQuery {
                prefix: path.to_string(),
                delimiter: Some('/'),
                cursor: None,
                limit: 1,
                at: Some(at),
            })
            .await?;
        let dir_prefix = format!("{path}/");
        let entry = if let Some(rec) = page.entries.into_iter().find(|r| r.name.as_str() == path) {
            Entry::Object(rec)
        } else if page.prefixes.contains(&dir_prefix) {
            Entry::ImpliedDir
        } else {
            let page = self
                .list_page(&ListQuery {
                    prefix: dir_prefix,
                    delimiter: Some('/'),
                    cursor: None,
                    limit: 1,
                    at: Some(at),
                })
                .await?;
            if page.entries.is_empty() && page.prefixes.is_empty() {
                return Err(FsError::NotFound);
            }
            Entry::ImpliedDir
        };
        self.remember_at(at, path, entry.clone());
        Ok(entry)
    }

    fn attr_at(&self, at: i64, path: &str, entry: &Entry) -> Attr {
        let ino = self.ino_of(NodeKey::At(at, path.to_string()));
        match entry {
            Entry::ImpliedDir => Attr::read_only(ino, Kind::Dir, 0, 0o755, at),
            Entry::Object(rec) => Attr {
                read_only: true,
                ..super::object_attr(ino, rec)
            },
        }
    }

    /// The version `path` had at `at`, for reading: not a folder.
    pub(crate) async fn version_at(&self, at: i64, path: &str) -> FsResult<VersionRecord> {
        match self.entry_at(at, path).await? {
            Entry::Object(rec) if rec.kind != EntryKind::Dir => Ok(rec),
            _ => Err(FsError::IsDir),
        }
    }

    /// The children of folder `path` as it was at `at`, each remembered.
    async fn children_at(&self, at: i64, path: &str) -> FsResult<Vec<DirEntry>> {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .list_page(&ListQuery {
                    prefix: prefix.clone(),
                    delimiter: Some('/'),
                    cursor: cursor.clone(),
                    limit: PAGE,
                    at: Some(at),
                })
                .await?;
            for rec in page.entries {
                let full = rec.name.as_str().to_string();
                let name = full[prefix.len()..].to_string();
                if path.is_empty() && name == CONTROL_DIR {
                    continue;
                }
                let kind = Kind::of(rec.kind);
                out.push(DirEntry {
                    ino: self.ino_of(NodeKey::At(at, full.clone())),
                    name,
                    kind,
                });
                self.remember_at(at, &full, Entry::Object(rec));
            }
            for p in page.prefixes {
                let full = p.trim_end_matches('/').to_string();
                let name = full[prefix.len()..].to_string();
                if (path.is_empty() && name == CONTROL_DIR)
                    || out.iter().any(|e: &DirEntry| e.name == name)
                {
                    continue;
                }
                out.push(DirEntry {
                    ino: self.ino_of(NodeKey::At(at, full.clone())),
                    name,
                    kind: Kind::Dir,
                });
                if self.remembered_at(at, &full).is_none() {
                    self.remember_at(at, &full, Entry::ImpliedDir);
                }
            }
            match page.next_cursor {
                Some(c) if cursor.as_deref() != Some(c.as_str()) => cursor = Some(c),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out.dedup_by(|a, b| a.name == b.name);
        Ok(out)
    }
}

pub async fn getattr(core: &FsCore, key: NodeKey) -> FsResult<Attr> {
    match key {
        NodeKey::AtRoot => Ok(super::history::control_attr(core, key)),
        NodeKey::At(at, path) => {
            let entry = core.entry_at(at, &path).await?;
            Ok(core.attr_at(at, &path, &entry))
        }
        _ => Err(FsError::Invalid("not a node of .dosfs/at".into())),
    }
}

/// `name` in `parent` (`.dosfs/at`, or a folder of the tree at a moment).
pub async fn lookup(core: &FsCore, parent: NodeKey, name: &str) -> FsResult<(NodeKey, Attr)> {
    let (at, path) = match parent {
        NodeKey::AtRoot => {
            // A name that is not a time is nothing here.
            let at = dos_protocol::parse_moment(name).map_err(|_| FsError::NotFound)?;
            (at, String::new())
        }
        NodeKey::At(at, dir) => {
            if dir.is_empty() && name == CONTROL_DIR {
                return Err(FsError::NotFound);
            }
            (at, join(&dir, name))
        }
        _ => return Err(FsError::NotFound),
    };
    let entry = core.entry_at(at, &path).await?;
    let attr = core.attr_at(at, &path, &entry);
    Ok((NodeKey::At(at, path), attr))
}

pub async fn read_dir(core: &FsCore, key: NodeKey) -> FsResult<Vec<DirEntry>> {
    match key {
        NodeKey::AtRoot => Ok(Vec::new()),
        NodeKey::At(at, path) => {
            if core
                .attr_at(at, &path, &core.entry_at(at, &path).await?)
                .kind
                != Kind::Dir
            {
                return Err(FsError::NotDir);
            }
            core.children_at(at, &path).await
        }
        _ => Err(FsError::NotDir),
    }
}

/// The target of a symlink as it was at `at`.
pub async fn readlink(core: &FsCore, at: i64, path: &str) -> FsResult<Vec<u8>> {
    match core.entry_at(at, path).await? {
        Entry::Object(r) if r.kind == EntryKind::Symlink => {
            let read = core.store.get(&r.name, Some(r.version), None).await?;
            Ok(read.bytes().await?.to_vec())
        }
        _ => Err(FsError::Invalid("not a symlink".into())),
    }
}
