//! A directory's link count: 2 plus its subdirectories, as POSIX and ext4 give it.
//!
//! The store has no count of a folder's subfolders, so it is found by listing the folder
//! (all its pages) and kept here, by path:
//! - a count found by a listing is trusted for the attribute TTL, or for
//!   [`FOLLOWED_TTL`] while the mount follows the store's change feed (a change made elsewhere
//!   then drops the counts of the folders it may have changed at once, see
//!   `FsCore::changed`, and a missed change drops them all);
//! - this mount's own mkdir, rmdir and directory renames adjust the counts they change, so a
//!   `tar x` or `mkdir -p` costs no listing (a new directory starts at 0);
//! - a listing that overlaps one of those changes is not kept (it may predate it);
//! - at most [`CAP`] directories are kept; past it the table is cleared (the next stat of each
//!   lists again).
//!
//! A listing that fails gives no count: the directory then shows 2 links, as before any
//! subfolder was known, rather than failing the `stat`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::DirEntry;

/// How long a listed count is trusted while the change feed is followed.
pub(crate) const FOLLOWED_TTL: Duration = Duration::from_secs(60);
/// Directories whose counts are kept at most.
const CAP: usize = 65_536;

#[derive(Default)]
pub(crate) struct SubdirCounts {
    counts: HashMap<String, (Instant, u32)>,
    /// Moves on every change this mount makes to a count (see [`Self::store`]).
    generation: u64,
}

impl SubdirCounts {
    /// The subdirectory count of `dir`, if known within `ttl`.
    pub(crate) fn get(&self, dir: &str, ttl: Duration) -> Option<u32> {
        self.counts
            .get(dir)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, n)| *n)
    }

    /// To be taken before listing a directory, and given to [`Self::store`] with its count.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// `dir` has `n` subdirectories, as a listing started at `generation` found. Dropped when
    /// this mount changed a count meanwhile (the listing may not show that change).
    pub(crate) fn store(&mut self, dir: &str, n: u32, generation: u64) {
        if generation != self.generation {
            return;
        }
        self.insert(dir, n);
    }

    fn insert(&mut self, dir: &str, n: u32) {
        if self.counts.len() >= CAP && !self.counts.contains_key(dir) {
            self.counts.clear();
        }
        self.counts.insert(dir.to_string(), (Instant::now(), n));
    }

    /// This mount made directory `dir` (empty): its parent has one more.
    pub(crate) fn made(&mut self, dir: &str) {
        self.generation += 1;
        self.adjust(parent_of(dir), 1);
        self.insert(dir, 0);
    }

    /// This mount removed directory `dir`: its parent has one fewer.
    pub(crate) fn removed(&mut self, dir: &str) {
        self.generation += 1;
        self.adjust(parent_of(dir), -1);
        self.forget_tree(dir);
    }

    /// This mount renamed directory `from` to `to`, replacing a directory there when
    /// `replaced`. The moved directory keeps its count; what was below `from` is listed again.
    pub(crate) fn renamed(&mut self, from: &str, to: &str, replaced: bool) {
        self.generation += 1;
        let moved = self.counts.get(from).copied();
        self.forget_tree(from);
        self.forget_tree(to);
        self.adjust(parent_of(from), -1);
        if !replaced {
            self.adjust(parent_of(to), 1);
        }
        if let Some(c) = moved {
            self.counts.insert(to.to_string(), c);
        }
    }

    /// A name in `name`'s place changed elsewhere: its ancestors' counts may be wrong now (a
    /// new name may have made folders appear, a deleted one made them go). `name`'s own count
    /// is left.
    pub(crate) fn changed_elsewhere(&mut self, name: &str) {
        self.generation += 1;
        let mut dir = name;
        while !dir.is_empty() {
            dir = parent_of(dir);
            self.counts.remove(dir);
        }
    }

    /// Forgets `dir`'s count and those below it.
    pub(crate) fn forget(&mut self, dir: &str) {
        self.generation += 1;
        self.forget_tree(dir);
    }

    /// Forgets every count (a change may have been missed).
    pub(crate) fn clear(&mut self) {
        self.generation += 1;
        self.counts.clear();
    }

    fn adjust(&mut self, dir: &str, by: i64) {
        if let Some((_, n)) = self.counts.get_mut(dir) {
            *n = u32::try_from((i64::from(*n) + by).max(0)).unwrap_or(u32::MAX);
        }
    }

    fn forget_tree(&mut self, dir: &str) {
        let below = format!("{dir}/");
        self.counts
            .retain(|k, _| k != dir && !k.starts_with(&below));
    }
}

/// Listings made for a link count (a `lookup` or `stat` of a directory not counted yet),
/// kept for the `readdir` that usually follows (`find`, `ls -R`, `du` look a folder up and
/// then read it), so that a cold walk lists each folder once:
/// - a listing serves one `readdir` at most, within the attribute TTL;
/// - any entry this mount adds to, removes from or renames in a folder drops its listing, and
///   so does a change elsewhere to a name below it (the feed) or a missed change;
/// - a listing that overlaps such a change is not kept (a generation number);
/// - at most [`RECENT_ENTRIES`] entries are kept in all; past it the older listings go.
#[derive(Default)]
pub(crate) struct RecentListings {
    lists: HashMap<String, (Instant, Vec<DirEntry>)>,
    entries: usize,
    generation: u64,
}

/// Entries of recent listings kept at most.
const RECENT_ENTRIES: usize = 100_000;

impl RecentListings {
    /// To be taken before listing a directory, and given to [`Self::keep`] with the listing.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// `list` is what `dir` held at `generation`.
    pub(crate) fn keep(&mut self, dir: &str, list: &[DirEntry], generation: u64, ttl: Duration) {
        if generation != self.generation || list.len() > RECENT_ENTRIES || ttl.is_zero() {
            return;
        }
        if self.entries + list.len() > RECENT_ENTRIES {
            self.lists.retain(|_, (at, _)| at.elapsed() < ttl);
            self.entries = self.lists.values().map(|(_, l)| l.len()).sum();
            if self.entries + list.len() > RECENT_ENTRIES {
                self.lists.clear();
                self.entries = 0;
            }
        }
        self.entries += list.len();
        if let Some((_, old)) = self
            .lists
            .insert(dir.to_string(), (Instant::now(), list.to_vec()))
        {
            self.entries -= old.len();
        }
    }

    /// The listing of `dir` made within `ttl`, if one was kept (it is then gone).
    pub(crate) fn take(&mut self, dir: &str, ttl: Duration) -> Option<Vec<DirEntry>> {
        let (at, list) = self.lists.remove(dir)?;
        self.entries -= list.len();
        (at.elapsed() < ttl).then_some(list)
    }

    /// What `dir` holds changed (or may have): its listing goes.
    pub(crate) fn forget(&mut self, dir: &str) {
        self.generation += 1;
        if let Some((_, old)) = self.lists.remove(dir) {
            self.entries -= old.len();
        }
    }

    /// `name` changed elsewhere: the listings of every folder above it go (a new name may
    /// have made folders appear in them).
    pub(crate) fn changed_elsewhere(&mut self, name: &str) {
        let mut dir = name;
        while !dir.is_empty() {
            dir = parent_of(dir);
            self.forget(dir);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.generation += 1;
        self.lists.clear();
        self.entries = 0;
    }
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);

    #[test]
    fn local_changes_keep_counts_true_without_listing() {
        let mut c = SubdirCounts::default();
        let g = c.generation();
        c.store("", 0, g);
        c.made("a");
        c.made("b");
        c.made("a/x");
        assert_eq!(c.get("", TTL), Some(2));
        assert_eq!(c.get("a", TTL), Some(1));
        assert_eq!(c.get("a/x", TTL), Some(0));
        c.renamed("a/x", "b/y", false);
        assert_eq!(c.get("a", TTL), Some(0));
        assert_eq!(c.get("b", TTL), Some(1));
        assert_eq!(c.get("b/y", TTL), Some(0));
        assert_eq!(c.get("a/x", TTL), None);
        // Over an empty directory: the target's parent keeps its count.
        c.made("a/z");
        c.renamed("a/z", "b/y", true);
        assert_eq!((c.get("a", TTL), c.get("b", TTL)), (Some(0), Some(1)));
        c.removed("b/y");
        assert_eq!(c.get("b", TTL), Some(0));
        // A count never goes below zero, whatever the order of events.
        c.removed("b/gone");
        assert_eq!(c.get("b", TTL), Some(0));
    }

    #[test]
    fn a_listing_that_overlaps_a_change_is_not_kept() {
        let mut c = SubdirCounts::default();
        let g = c.generation();
        c.made("d");
        c.store("", 0, g);
        assert_eq!(c.get("", TTL), None);
        let g = c.generation();
        c.store("", 1, g);
        assert_eq!(c.get("", TTL), Some(1));
    }

    fn listing(names: &[&str]) -> Vec<DirEntry> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| DirEntry {
                ino: i as u64 + 2,
                name: n.to_string(),
                kind: super::super::Kind::File,
            })
            .collect()
    }

    #[test]
    fn a_recent_listing_serves_one_readdir_until_its_folder_changes() {
        let mut r = RecentListings::default();
        let g = r.generation();
        r.keep("d", &listing(&["a", "b"]), g, TTL);
        assert_eq!(r.take("d", TTL).map(|l| l.len()), Some(2));
        assert!(r.take("d", TTL).is_none(), "one readdir only");
        // A change to the folder between the listing and its keeping: not kept.
        let g = r.generation();
        r.forget("d");
        r.keep("d", &listing(&["a"]), g, TTL);
        assert!(r.take("d", TTL).is_none());
        // Changes elsewhere below a folder drop it; expired listings serve nothing.
        let g = r.generation();
        r.keep("d", &listing(&["a"]), g, TTL);
        r.keep("e", &listing(&["a"]), g, TTL);
        r.changed_elsewhere("d/x/y");
        assert!(r.take("d", TTL).is_none());
        assert!(r.take("e", Duration::ZERO).is_none());
        // The bound on entries kept.
        let g = r.generation();
        let big: Vec<String> = (0..RECENT_ENTRIES / 2 + 1).map(|i| i.to_string()).collect();
        let big: Vec<&str> = big.iter().map(String::as_str).collect();
        r.keep("one", &listing(&big), g, TTL);
        r.keep("two", &listing(&big), g, TTL);
        assert!(r.entries <= RECENT_ENTRIES);
        assert!(r.take("two", TTL).is_some());
        assert_eq!(r.entries, 0);
    }

    #[test]
    fn changes_elsewhere_and_expiry_drop_counts() {
        let mut c = SubdirCounts::default();
        for d in ["", "a", "a/b", "c"] {
            let g = c.generation();
            c.store(d, 1, g);
        }
        // A new file in a/b/x may have made x (and a/b/x's parents) appear.
        c.changed_elsewhere("a/b/x");
        assert_eq!(c.get("a/b", TTL), None);
        assert_eq!(c.get("a", TTL), None);
        assert_eq!(c.get("", TTL), None);
        assert_eq!(c.get("c", TTL), Some(1));
        assert_eq!(c.get("c", Duration::ZERO), None);
        c.forget("c");
        assert_eq!(c.get("c", TTL), None);
        let g = c.generation();
        c.store("a/b/x", 3, g);
        c.changed_elsewhere("a/b/x");
        assert_eq!(c.get("a/b/x", TTL), Some(3));
        c.clear();
        assert_eq!(c.get("c", TTL), None);
    }
}
