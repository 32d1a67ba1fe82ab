//! The change log (`GET /log`): the versions made under a prefix, newest first, each told as
//! what happened to its name: written, deleted, renamed or restored.
//!
//! A version does not record why it was made, so the kind is read from the history around
//! it: a version whose content its name had before, but not just before, is a restore; a
//! delete marker is a rename when, at most [`RENAME_WINDOW_NS`] before it and on the same
//! page, another name of the same kind got the (non-empty, not a folder marker's) content the
//! deleted name last had, after the deleted name got it, content that name never had before (a rename is such a pair: dosfs makes the new name first, then
//! deletes the old one; the closest such version is taken); anything else is a write or a
//! delete. The two halves are paired when they are on one page, or the delete is on a page and
//! the new name among the next [`LOOKAHEAD`] changes; a new name whose delete is on the page
//! before shows as written.

use std::collections::HashMap;

use dos_metadata::VersionsFrom;
use dos_protocol::{
    ChangeCursor, ChangeWhat, ContentHash, EntryKind, LogEntry, LogPage, ObjectName, VersionRecord,
};

use crate::core::Core;
use crate::error::{ApiError, ApiResult};

/// How long before the delete of a rename's old name its new name may have been made.
pub const RENAME_WINDOW_NS: i64 = 2_000_000_000;

/// The control namespace of dosfs (hard-link records), left out unless asked for.
const CONTROL_PREFIX: &str = ".dosfs/";

/// One page of the change log under `prefix`, made at or after `since` (ns), after `cursor`
/// (a page's `next_cursor`).
pub async fn page(
    core: &Core,
    prefix: &str,
    since: Option<i64>,
    cursor: Option<&str>,
    limit: usize,
) -> ApiResult<LogPage> {
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::BadRequest("limit must be 1 to 10000".into()));
    }
    let before = match cursor {
        None => None,
        Some(c) => Some(
            ChangeCursor::decode(c)
                .ok_or_else(|| ApiError::BadRequest(format!("bad log cursor {c:?}")))?,
        ),
    };
    let recs = core
        .meta
        .list_changes(prefix, since, before.as_ref(), limit)
        .await?;
    let next_cursor = (recs.len() == limit)
        .then(|| recs.last().map(|r| ChangeCursor::of(r).encode()))
        .flatten();
    let hide_control = !prefix.starts_with(CONTROL_PREFIX);
    let mut recs: Vec<VersionRecord> = recs
        .into_iter()
        .filter(|r| !(hide_control && r.name.as_str().starts_with(CONTROL_PREFIX)))
        .collect();
    let shown = recs.len();
    // The new halves of renames whose delete is on this page may be on the next one: a few
    // of the changes after the page are read too (and not shown).
    if let Some(last) = next_cursor.as_ref().and(recs.last()) {
        let after = ChangeCursor::of(last);
        let cutoff = last.ctime_ns - RENAME_WINDOW_NS;
        let more = core
            .meta
            .list_changes(prefix, since, Some(&after), LOOKAHEAD)
            .await?;
        recs.extend(more.into_iter().filter(|r| r.ctime_ns >= cutoff));
    }
    let mut histories = Histories::default();
    let mut previous = Vec::with_capacity(recs.len());
    for r in &recs {
        previous.push(histories.before(core, r).await?);
    }
    let mut changes = describe(&recs, &previous);
    changes.truncate(shown);
    Ok(LogPage {
        changes,
        next_cursor,
    })
}

/// Changes read past the end of a page to find the new halves of its renames.
const LOOKAHEAD: usize = 64;

/// Every version of the names a page touches, read once per page.
#[derive(Default)]
struct Histories {
    by_name: HashMap<ObjectName, Vec<VersionRecord>>,
}

impl Histories {
    /// The versions of `rec`'s name made before it, oldest first.
    async fn before(&mut self, core: &Core, rec: &VersionRecord) -> ApiResult<Vec<VersionRecord>> {
        if !self.by_name.contains_key(&rec.name) {
            let mut all = Vec::new();
            let mut after = 0;
            loop {
                let from = VersionsFrom::Name(rec.name.clone(), after);
                let batch = core.meta.list_versions(&from, 1000).await?;
                let Some(last) = batch.last() else { break };
                after = last.version;
                let full = batch.len() == 1000;
                all.extend(batch);
                if !full {
                    break;
                }
            }
            self.by_name.insert(rec.name.clone(), all);
        }
        Ok(self.by_name[&rec.name]
            .iter()
            .filter(|v| v.version < rec.version)
            .cloned()
            .collect())
    }
}

/// The log entries of `recs` (newest first), given the versions before each.
fn describe(recs: &[VersionRecord], previous: &[Vec<VersionRecord>]) -> Vec<LogEntry> {
    let mut out: Vec<LogEntry> = recs
        .iter()
        .zip(previous)
        .map(|(r, before)| LogEntry {
            time_ns: r.ctime_ns,
            name: r.name.clone(),
            version: r.version,
            what: plain_kind(r, before),
            kind: r.kind,
            size: r.size,
            from: None,
            to: None,
        })
        .collect();
    // Versions that gave a name content it never had, by that content: the new halves of
    // renames.
    let mut arrivals: HashMap<ContentHash, Vec<usize>> = HashMap::new();
    for (i, (r, before)) in recs.iter().zip(previous).enumerate() {
        // Folder markers and empty files all hold the same (empty) content: never paired.
        if let Some(h) = r.hash
            && r.size > 0
            && r.kind != EntryKind::Dir
            && out[i].what == ChangeWhat::Written
            && before.iter().all(|p| p.hash != Some(h))
        {
            arrivals.entry(h).or_default().push(i);
        }
    }
    for (i, (r, before)) in recs.iter().zip(previous).enumerate() {
        let Some(last) = before.last().filter(|_| r.hash.is_none()) else {
            continue;
        };
        let Some(gone) = last.hash else { continue };
        let partner = arrivals.get(&gone).and_then(|c| {
            c.iter()
                .copied()
                .filter(|&j| {
                    let b = &recs[j];
                    // Made after the old name got the content, before it was deleted.
                    b.name != r.name
                        && b.kind == last.kind
                        && out[j].from.is_none()
                        && b.ctime_ns >= last.ctime_ns
                        && b.ctime_ns <= r.ctime_ns
                        && r.ctime_ns - b.ctime_ns <= RENAME_WINDOW_NS
                })
                .max_by_key(|&j| recs[j].ctime_ns)
        });
        if let Some(j) = partner {
            out[i].what = ChangeWhat::Renamed;
            out[i].to = Some(recs[j].name.clone());
            out[j].what = ChangeWhat::Renamed;
            out[j].from = Some(r.name.clone());
        }
    }
    out
}

/// Written, deleted or restored, from the name's own history.
fn plain_kind(rec: &VersionRecord, before: &[VersionRecord]) -> ChangeWhat {
    let Some(hash) = rec.hash else {
        return ChangeWhat::Deleted;
    };
    let Some((last, older)) = before.split_last() else {
        return ChangeWhat::Written;
    };
    if last.hash != Some(hash) && older.iter().any(|v| v.hash == Some(hash)) {
        ChangeWhat::Restored
    } else {
        ChangeWhat::Written
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dos_protocol::PosixAttrs;

    fn v(name: &str, version: u64, content: Option<&[u8]>, t: i64) -> VersionRecord {
        VersionRecord {
            name: ObjectName::new(name).unwrap(),
            version,
            size: content.map_or(0, |c| c.len() as u64),
            hash: content.map(ContentHash::of),
            mtime_ns: t,
            mode: 0o644,
            kind: EntryKind::File,
            posix: PosixAttrs::default(),
            ctime_ns: t,
        }
    }

    #[test]
    fn kinds_of_change() {
        let a1 = v("a", 1, Some(b"1"), 10);
        let a2 = v("a", 2, Some(b"2"), 20);
        let a3 = v("a", 3, Some(b"1"), 30);
        let a4 = v("a", 4, None, 40);
        let a5 = v("a", 5, Some(b"1"), 50);
        let b1 = v("b", 1, Some(b"1"), 39);
        // Newest first: a's restore after its delete, a's delete with b's arrival (a
        // rename), a's restore of v1's content, a's overwrite, a's first write.
        let recs = vec![
            a5.clone(),
            a4.clone(),
            b1.clone(),
            a3.clone(),
            a2.clone(),
            a1.clone(),
        ];
        let previous = vec![
            vec![a1.clone(), a2.clone(), a3.clone(), a4.clone()],
            vec![a1.clone(), a2.clone(), a3.clone()],
            vec![],
            vec![a1.clone(), a2.clone()],
            vec![a1.clone()],
            vec![],
        ];
        let got: Vec<(ChangeWhat, Option<String>, Option<String>)> = describe(&recs, &previous)
            .into_iter()
            .map(|e| {
                (
                    e.what,
                    e.from.map(|n| n.as_str().to_string()),
                    e.to.map(|n| n.as_str().to_string()),
                )
            })
            .collect();
        use ChangeWhat::*;
        assert_eq!(
            got,
            vec![
                (Restored, None, None),
                (Renamed, None, Some("b".into())),
                (Renamed, Some("a".into()), None),
                (Restored, None, None),
                (Written, None, None),
                (Written, None, None),
            ]
        );
        // Far apart in time, or the new name made after the delete: a delete and a write,
        // not a rename.
        let late_b = v("b", 1, Some(b"1"), 40 + 2 * RENAME_WINDOW_NS);
        let got = describe(
            &[late_b, a4.clone()],
            &[vec![], vec![a1.clone(), a2.clone(), a3.clone()]],
        );
        assert_eq!((got[0].what, got[1].what), (Written, Deleted));
        let after_b = v("b", 1, Some(b"1"), 41);
        let got = describe(
            &[after_b, a4.clone()],
            &[vec![], vec![a1.clone(), a2.clone(), a3.clone()]],
        );
        assert_eq!((got[0].what, got[1].what), (Written, Deleted));
        // A name that got the content before the deleted one did is not where it went.
        let c1 = v("c", 1, Some(b"1"), 5);
        let got = describe(
            &[a4.clone(), c1],
            &[vec![a1.clone(), a2.clone(), a3.clone()], vec![]],
        );
        assert_eq!((got[0].what, got[1].what), (Deleted, Written));
        // A name that had the content before is restored, not the far end of a rename.
        let b2 = v("b", 2, Some(b"1"), 39);
        let b1_other = v("b", 1, Some(b"1"), 5);
        let got = describe(&[a4, b2], &[vec![a1, a2, a3], vec![b1_other.clone()]]);
        assert_eq!((got[0].what, got[1].what), (Deleted, Written));
        // Empty content (and folder markers) is everyone's: no rename is read from it.
        let e1 = v("e", 1, Some(b"x"), 1);
        let e2 = v("e", 2, None, 40);
        let f1 = v("f", 1, Some(b""), 39);
        let e1_empty = VersionRecord {
            size: 0,
            hash: Some(ContentHash::of(b"")),
            ..e1
        };
        let got = describe(&[e2, f1], &[vec![e1_empty], vec![]]);
        assert_eq!((got[0].what, got[1].what), (Deleted, Written));
    }
}
