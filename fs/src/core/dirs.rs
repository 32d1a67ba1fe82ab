//! A directory's link count: 2 plus its subdirectories, as POSIX and ext4 give it.
//!
//! The store has no count of a folder's subfolders, so it is found by listing the folder
//! (all its pages) and kept here, by path:
//! - a count found by a listing is trusted for the attribute TTL, or for
//!   [`FOLLOWED_TTL`] while the mount follows the store's change feed (a change made elsewhere
//!   then drops the counts of the changed name's ancestors at once, and a missed change drops
//!   them all);
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
