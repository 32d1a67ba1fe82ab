//! `dosfs restore PATH --at TIME`: makes every name under a folder (or one file) what it was
//! at a moment, with new versions that point at the old content (POST by hash: no bytes
//! move), delete markers for the names made since, and the names deleted since back.
//!
//! It is undoable the same way: every version it makes is dated by the store after the
//! moment [`Restored::undo_at`] names, so restoring to that moment gives back the tree as it
//! was before the restore.

use dos_protocol::{ListQuery, ObjectName, VersionRecord, WriteAttributes};
use dos_store::{ObjectStore, PostOutcome, StoreError, StoreResult};

/// The control namespace (hard-link records): never restored or deleted by a restore.
const CONTROL_PREFIX: &str = ".dosfs/";

/// What a restore did to one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// It had other content or attributes: version `version` now has those of `from`.
    Restored {
        name: ObjectName,
        from: u64,
        version: u64,
    },
    /// It was deleted since: version `version` brings back version `from`.
    BroughtBack {
        name: ObjectName,
        from: u64,
        version: u64,
    },
    /// It was made since: deleted (version `version` is the delete marker).
    Deleted { name: ObjectName, version: u64 },
    /// Its content is no longer stored (removed by retention): left as it is.
    Lost { name: ObjectName, from: u64 },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Restored {
                name,
                from,
                version,
            } => write!(
                f,
                "restored     {name} (version {from} again, as {version})"
            ),
            Action::BroughtBack {
                name,
                from,
                version,
            } => write!(
                f,
                "brought back {name} (version {from} again, as {version})"
            ),
            Action::Deleted { name, version } => {
                write!(
                    f,
                    "deleted      {name} (made since; delete marker {version})"
                )
            }
            Action::Lost { name, from } => write!(
                f,
                "not restored {name}: the content of its version {from} is no longer stored"
            ),
        }
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    pub actions: Vec<Action>,
    /// The moment just before the first version the restore made (ns): restoring to it
    /// undoes the restore. `None` when nothing changed.
    pub undo_at: Option<i64>,
}

/// Every name at `path` or under `path/` as of `at` (`None`: now), in name order, without the
/// control namespace. `path` "" is the whole tree.
async fn tree(
    store: &dyn ObjectStore,
    path: &str,
    at: Option<i64>,
) -> StoreResult<Vec<VersionRecord>> {
    let mut out = Vec::new();
    if !path.is_empty() {
        let page = store
            .list(&ListQuery {
                prefix: path.to_string(),
                delimiter: Some('/'),
                cursor: None,
                limit: 1,
                at,
            })
            .await?;
        out.extend(page.entries.into_iter().filter(|r| r.name.as_str() == path));
    }
    let mut query = ListQuery {
        prefix: if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        },
        delimiter: None,
        cursor: None,
        limit: 1000,
        at,
    };
    loop {
        let page = store.list(&query).await?;
        out.extend(
            page.entries
                .into_iter()
                .filter(|r| !r.name.as_str().starts_with(CONTROL_PREFIX)),
        );
        match page.next_cursor {
            Some(next) if query.cursor.as_deref() == Some(next.as_str()) => {
                return Err(StoreError::Integrity(
                    "listing cursor did not advance".into(),
                ));
            }
            Some(next) => query.cursor = Some(next),
            None => return Ok(out),
        }
    }
}

/// Whether two versions hold the same content and attributes.
fn same(a: &VersionRecord, b: &VersionRecord) -> bool {
    (a.hash, a.kind, a.mode, a.mtime_ns, a.posix) == (b.hash, b.kind, b.mode, b.mtime_ns, b.posix)
}

/// Makes `path` (a file, or a folder and everything under it; "" the whole tree) what it
/// was at `at`. Stops at the first failure of the store; what was done until then is done
/// (and undoable).
pub async fn restore_tree(store: &dyn ObjectStore, path: &str, at: i64) -> StoreResult<Restored> {
    let then = tree(store, path, Some(at)).await?;
    let now = tree(store, path, None).await?;
    let current: std::collections::HashMap<&ObjectName, &VersionRecord> =
        now.iter().map(|r| (&r.name, r)).collect();
    let mut done = Restored::default();
    let mut first_ctime: Option<i64> = None;
    let mut made = |rec: &VersionRecord| {
        first_ctime = Some(first_ctime.map_or(rec.ctime_ns, |t: i64| t.min(rec.ctime_ns)));
    };
    for old in &then {
        let present = current.get(&old.name).copied();
        if present.is_some_and(|p| same(p, old)) {
            continue;
        }
        let Some(hash) = old.hash else { continue };
        let attrs = WriteAttributes {
            kind: old.kind,
            mode: Some(old.mode),
            mtime_ns: Some(old.mtime_ns),
            supersedes: None,
            posix: old.posix,
        };
        match store.post(&old.name, hash, old.size, &attrs).await? {
            PostOutcome::Stored(rec) => {
                made(&rec);
                let (name, from, version) = (old.name.clone(), old.version, rec.version);
                done.actions.push(match present {
                    Some(_) => Action::Restored {
                        name,
                        from,
                        version,
                    },
                    None => Action::BroughtBack {
                        name,
                        from,
                        version,
                    },
                });
            }
            PostOutcome::Upload(_) => done.actions.push(Action::Lost {
                name: old.name.clone(),
                from: old.version,
            }),
        }
    }
    let before: std::collections::HashSet<&ObjectName> = then.iter().map(|r| &r.name).collect();
    for rec in now.iter().filter(|r| !before.contains(&r.name)) {
        match store.delete(&rec.name).await {
            Ok(marker) => {
                made(&marker);
                done.actions.push(Action::Deleted {
                    name: rec.name.clone(),
                    version: marker.version,
                });
            }
            // Deleted meanwhile by someone else: what the restore wanted.
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e),
        }
    }
    done.undo_at = first_ctime.map(|t| t - 1);
    Ok(done)
}
