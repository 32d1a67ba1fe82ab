//! Hard links. Every name of a hard-linked file is an object of its own holding the file's
//! content and attributes (the same content hash, so no byte is stored twice), with the
//! file's link group in its version (`PosixAttrs::link`: the inode number the first name
//! had when the second was made, which all the names show). The group's names are kept in
//! a small object, `.dosfs/links/<group, 16 hex digits>` (a JSON `{"names": [...]}`).
//!
//! - A new version of one name (a write, truncate, chmod, chown, utimens) is copied to the
//!   others at once, so every name reads and stats the same; each name's history shows it.
//! - The link count is the number of the group's names that are live and still carry the
//!   group: a name written or deleted over REST leaves the group (as if a new file had been
//!   put there), and the count follows.
//! - A file's ctime moves when its group changes (link, unlink, rename of a name).
//!
//! The order of each change keeps a crash harmless: a name joins the record before it
//! carries the group, and stops carrying it (deleted, replaced) before it leaves the record,
//! so a name the record lacks never counts, and a recorded name that does not carry the
//! group is skipped.

use std::time::Instant;

use dos_protocol::{EntryKind, VersionRecord, WriteAttributes, now_ns};
use serde::{Deserialize, Serialize};

use super::{Attr, CONTROL_DIR, Entry, FsCore, lock, object_name};
use crate::error::{FsError, FsResult};

/// Names of one file at most (ext4's `EXT4_LINK_MAX`).
pub const LINK_MAX: usize = 65_000;

/// The object that lists the names of link group `id`.
pub(crate) fn group_object(id: u64) -> String {
    format!("{CONTROL_DIR}/links/{id:016x}")
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct GroupDoc {
    names: Vec<String>,
}

/// A link group as recorded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Group {
    pub names: Vec<String>,
    /// When the record last changed (the store's clock, ns): the files' ctime from then on.
    pub changed_ns: i64,
}

impl FsCore {
    /// The record of link group `id` (trusted for one attribute TTL).
    async fn group(&self, id: u64) -> FsResult<Group> {
        if let Some((at, g)) = lock(&self.groups).get(&id)
            && at.elapsed() < self.config.attr_ttl
        {
            return Ok(g.clone());
        }
        let name = object_name(&group_object(id))?;
        let group = match self.store.head(&name, None).await {
            Ok(rec) => {
                let body = self
                    .store
                    .get(&name, Some(rec.version), None)
                    .await?
                    .bytes()
                    .await?;
                let doc: GroupDoc = serde_json::from_slice(&body).map_err(|e| {
                    FsError::Invalid(format!("the record of link group {id:016x}: {e}"))
                })?;
                Group {
                    names: doc.names,
                    changed_ns: rec.ctime_ns,
                }
            }
            Err(e) if e.is_not_found() => Group::default(),
            Err(e) => return Err(e.into()),
        };
        lock(&self.groups).insert(id, (Instant::now(), group.clone()));
        Ok(group)
    }

    /// Records `names` as link group `id` (none: the record goes).
    async fn write_group(&self, id: u64, names: Vec<String>) -> FsResult<()> {
        let name = object_name(&group_object(id))?;
        let changed_ns = if names.is_empty() {
            match self.store.delete(&name).await {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
            now_ns()
        } else {
            let body = serde_json::to_vec(&GroupDoc {
                names: names.clone(),
            })
            .map_err(|e| FsError::Invalid(format!("link group {id:016x}: {e}")))?;
            let attrs = WriteAttributes {
                kind: EntryKind::File,
                mode: Some(0o600),
                mtime_ns: Some(now_ns()),
                supersedes: None,
                posix: Default::default(),
            };
            self.store
                .put_bytes(&name, &attrs, body.into())
                .await?
                .ctime_ns
        };
        lock(&self.groups).insert(id, (Instant::now(), Group { names, changed_ns }));
        Ok(())
    }

    /// The names of link group `id` that are live and carry the group.
    pub(crate) async fn group_names(&self, id: u64) -> FsResult<Vec<String>> {
        let mut live = Vec::new();
        for name in self.group(id).await?.names {
            if let Some(staged) = self.staged_of(&name) {
                if lock(&staged).posix.link == Some(id) {
                    live.push(name);
                }
                continue;
            }
            match self.entry(&name).await {
                Ok(Entry::Object(r)) if r.posix.link == Some(id) => live.push(name),
                Ok(_) | Err(FsError::NotFound) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(live)
    }

    /// `attr` of `path`, a name of link group `id`: the group's number, its link count and
    /// a ctime moved by the group's last change.
    pub(crate) async fn linked_attr(&self, path: &str, mut attr: Attr, id: u64) -> FsResult<Attr> {
        let names = self.group_names(id).await?;
        let group = self.group(id).await?;
        attr.ino = lock(&self.inodes).linked(path, id);
        attr.nlink = u32::try_from(names.len()).unwrap_or(u32::MAX).max(1);
        attr.ctime_ns = attr.ctime_ns.max(group.changed_ns);
        Ok(attr)
    }

    /// link(2): `to` becomes one more name of the file `ino`.
    pub async fn link(&self, ino: u64, new_parent: u64, new_name: &str) -> FsResult<Attr> {
        let from = self.writable_path(ino)?;
        let to = self.child_path(new_parent, new_name)?;
        let _changes = self.group_changes.lock().await;
        if self.staged_of(&to).is_some() {
            return Err(FsError::Exists);
        }
        match self.entry(&to).await {
            Ok(_) => return Err(FsError::Exists),
            Err(FsError::NotFound) => {}
            Err(e) => return Err(e),
        }
        // The new name shares a stored version: the latest bytes are stored first.
        if let Some(s) = self.staged_of(&from) {
            self.upload(&s).await?;
        }
        self.flush_pending(&from).await?;
        let rec = match self.entry(&from).await? {
            Entry::Object(r) if r.kind != EntryKind::Dir => r,
            _ => return Err(FsError::NotPermitted("a directory cannot be hard-linked")),
        };
        let id = rec.posix.link.unwrap_or(ino);
        let mut names = match rec.posix.link {
            Some(id) => self.group_names(id).await?,
            None => Vec::new(),
        };
        if !names.contains(&from) {
            names.push(from.clone());
        }
        if names.len() >= LINK_MAX {
            return Err(FsError::TooManyLinks);
        }
        names.push(to.clone());
        self.write_group(id, names).await?;
        let mut linked = rec.clone();
        linked.posix.link = Some(id);
        if rec.posix.link.is_none() {
            let fold = self.fold_into(&from).filter(|v| *v == rec.version);
            self.copy_version(&linked, &from, fold).await?;
        }
        self.copy_version(&linked, &to, None).await?;
        {
            let mut inodes = lock(&self.inodes);
            inodes.linked(&from, id);
            inodes.looked_up_linked(&to, id);
        }
        self.dir_changed(&to);
        self.path_attr(&to).await
    }

    /// `rec` is a new version of a name of a hard-linked file: its other names get the
    /// same (no bytes move).
    pub(crate) async fn propagate(&self, rec: &VersionRecord) -> FsResult<()> {
        let Some(id) = rec.posix.link else {
            return Ok(());
        };
        for name in self.group_names(id).await? {
            if name != rec.name.as_str() {
                let fold = self.fold_into(&name);
                self.copy_version(rec, &name, fold).await?;
            }
        }
        Ok(())
    }

    /// `path` (deleted or replaced) no longer carries link group `id`: the record drops
    /// it, and the group's number resolves to a name left. Returns the names left.
    pub(crate) async fn left_group(&self, id: u64, path: &str) -> FsResult<Vec<String>> {
        let _changes = self.group_changes.lock().await;
        let names: Vec<String> = self
            .group_names(id)
            .await?
            .into_iter()
            .filter(|n| n != path)
            .collect();
        self.write_group(id, names.clone()).await?;
        let mut inodes = lock(&self.inodes);
        inodes.detach(path);
        if let Some(other) = names.first()
            && inodes
                .key(id)
                .is_none_or(|k| k == super::NodeKey::Path(path.into()))
        {
            inodes.repoint(id, other);
        }
        Ok(names)
    }

    /// Names of link groups moved by a rename (`moves`: group, old name, new name).
    pub(crate) async fn renamed_in_groups(&self, moves: &[(u64, String, String)]) -> FsResult<()> {
        let _changes = self.group_changes.lock().await;
        let mut ids: Vec<u64> = moves.iter().map(|(id, _, _)| *id).collect();
        ids.sort_unstable();
        ids.dedup();
        for id in ids {
            let mut names = self.group(id).await?.names;
            for (_, from, to) in moves.iter().filter(|(g, _, _)| *g == id) {
                names.retain(|n| n != from && n != to);
                names.push(to.clone());
            }
            self.write_group(id, names).await?;
        }
        Ok(())
    }
}
