//! Inode numbers: one per node while the kernel knows it, kept stable across renames, and
//! given back when the kernel forgets the node (so a walk of a million files does not keep
//! a million entries).
//!
//! A node's number is derived from its key (a hash; the next free number on a collision),
//! so a listing can report the number a later lookup will give without taking a table
//! entry: only lookups the kernel counts (and forgets) enter the table.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

pub const ROOT_INO: u64 = 1;

/// What an inode stands for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeKey {
    /// A path of the namespace ("" is the root).
    Path(String),
    /// `/.dosfs`
    Control,
    /// `/.dosfs/history/<path>` ("" is `/.dosfs/history` itself).
    History(String),
    /// One version of a file under its history folder.
    HistoryVersion(String, u64),
    /// `/.dosfs/stats`
    Stats,
}

pub struct Inodes {
    by_key: HashMap<NodeKey, u64>,
    by_ino: HashMap<u64, NodeKey>,
    /// Lookups the kernel holds on each inode (`forget` gives them back).
    lookups: HashMap<u64, u64>,
}

/// The number `key` gets when it is free: a 63-bit hash, never 0 or the root's.
fn preferred(key: &NodeKey) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() >> 1).max(ROOT_INO + 1)
}

impl Default for Inodes {
    fn default() -> Self {
        Self::new()
    }
}

impl Inodes {
    pub fn new() -> Self {
        let mut s = Self {
            by_key: HashMap::new(),
            by_ino: HashMap::new(),
            lookups: HashMap::new(),
        };
        s.by_key.insert(NodeKey::Path(String::new()), ROOT_INO);
        s.by_ino.insert(ROOT_INO, NodeKey::Path(String::new()));
        s
    }

    /// The number of `key`, entering it in the table.
    pub fn ino(&mut self, key: NodeKey) -> u64 {
        if let Some(i) = self.by_key.get(&key) {
            return *i;
        }
        let i = self.free_number(&key);
        self.by_key.insert(key.clone(), i);
        self.by_ino.insert(i, key);
        i
    }

    /// The number `key` has, or would get now, without entering it (for listings).
    pub fn peek(&self, key: &NodeKey) -> u64 {
        self.by_key
            .get(key)
            .copied()
            .unwrap_or_else(|| self.free_number(key))
    }

    fn free_number(&self, key: &NodeKey) -> u64 {
        let mut i = preferred(key);
        while self.by_ino.contains_key(&i) {
            i = (i + 1).max(ROOT_INO + 1) & (u64::MAX >> 1);
        }
        i
    }

    pub fn key(&self, ino: u64) -> Option<NodeKey> {
        self.by_ino.get(&ino).cloned()
    }

    /// The kernel took one more reference on `key` (an entry reply): its number.
    pub fn looked_up(&mut self, key: NodeKey) -> u64 {
        let i = self.ino(key);
        *self.lookups.entry(i).or_default() += 1;
        i
    }

    /// The kernel dropped `n` references on `ino`; at zero the number is given back and the
    /// node's key returned (its cached attributes may go too).
    pub fn forget(&mut self, ino: u64, n: u64) -> Option<NodeKey> {
        if ino == ROOT_INO {
            return None;
        }
        let left = self.lookups.get_mut(&ino)?;
        *left = left.saturating_sub(n);
        if *left > 0 {
            return None;
        }
        self.lookups.remove(&ino);
        let key = self.by_ino.remove(&ino)?;
        if self.by_key.get(&key) == Some(&ino) {
            self.by_key.remove(&key);
        }
        Some(key)
    }

    /// Up to `n` paths the kernel holds, other than the root: what to ask it to forget when
    /// the table is over its cap.
    pub fn some_paths(&self, n: usize) -> Vec<String> {
        self.lookups
            .keys()
            .filter_map(|i| match self.by_ino.get(i) {
                Some(NodeKey::Path(p)) if !p.is_empty() => Some(p.clone()),
                _ => None,
            })
            .take(n)
            .collect()
    }

    /// Inodes the table holds (the root included).
    pub fn count(&self) -> usize {
        self.by_ino.len()
    }

    /// Forgets which inode `path` has (it was deleted): a new file there gets a new inode,
    /// while the old number still resolves for handles that are open on it.
    pub fn detach(&mut self, path: &str) {
        self.by_key.remove(&NodeKey::Path(path.to_string()));
    }

    /// Moves `from` (and everything under it) to `to`, keeping inode numbers.
    pub fn rename(&mut self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        let moved: Vec<(NodeKey, u64)> = self
            .by_key
            .iter()
            .filter_map(|(k, i)| match k {
                NodeKey::Path(p) if p == from || p.starts_with(&prefix) => Some((k.clone(), *i)),
                _ => None,
            })
            .collect();
        // Whatever was at the destination is gone now: its numbers stay valid for the kernel
        // (which may still hold them) but no longer name a path.
        let to_prefix = format!("{to}/");
        let replaced: Vec<NodeKey> = self
            .by_key
            .keys()
            .filter(|k| matches!(k, NodeKey::Path(p) if p == to || p.starts_with(&to_prefix)))
            .cloned()
            .collect();
        for k in replaced {
            self.by_key.remove(&k);
        }
        for (k, i) in moved {
            let NodeKey::Path(p) = &k else { continue };
            let new = NodeKey::Path(format!("{to}{}", &p[from.len()..]));
            self.by_key.remove(&k);
            self.by_key.insert(new.clone(), i);
            self.by_ino.insert(i, new);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> NodeKey {
        NodeKey::Path(s.into())
    }

    #[test]
    fn rename_keeps_numbers() {
        let mut t = Inodes::new();
        let a = t.ino(p("a"));
        let ab = t.ino(p("a/b"));
        t.ino(p("c"));
        t.rename("a", "c");
        assert_eq!(t.key(a), Some(p("c")));
        assert_eq!(t.key(ab), Some(p("c/b")));
        assert_eq!(t.ino(p("c/b")), ab);
    }

    #[test]
    fn listings_predict_numbers_and_forget_gives_them_back() {
        let mut t = Inodes::new();
        let seen = t.peek(&p("x"));
        assert_eq!(t.count(), 1, "a peek enters nothing");
        assert_eq!(t.looked_up(p("x")), seen);
        assert_eq!(t.looked_up(p("x")), seen);
        assert_eq!(t.forget(seen, 1), None, "one reference left");
        assert_eq!(t.forget(seen, 1), Some(p("x")));
        assert_eq!(t.count(), 1);
        assert_eq!(t.key(seen), None);
        assert_eq!(t.forget(ROOT_INO, 1), None, "the root stays");
    }

    #[test]
    fn a_walk_of_many_files_leaves_nothing_behind() {
        let mut t = Inodes::new();
        let inos: Vec<u64> = (0..10_000)
            .map(|i| t.looked_up(p(&format!("d/{i}"))))
            .collect();
        let distinct: std::collections::HashSet<_> = inos.iter().collect();
        assert_eq!(distinct.len(), inos.len());
        for i in inos {
            t.forget(i, 1);
        }
        assert_eq!(t.count(), 1);
    }
}
