//! Inode numbers: one per node while the kernel knows it, kept stable across renames, and
//! given back when the kernel forgets the node (so a walk of a million files does not keep
//! a million entries).
//!
//! A node's number is derived from its key (a hash; the next free number on a collision),
//! so a listing can report the number a later lookup will give without taking a table
//! entry: only lookups the kernel counts (and forgets) enter the table.
//!
//! The names of a hard-linked file share one number, its link group (the number its first
//! name had when the second was made): each is an alias of the number, which resolves to
//! one of them.

use std::collections::{HashMap, HashSet};
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
    /// `/.dosfs/at`
    AtRoot,
    /// `/.dosfs/at/<time>/<path>`: `path` as it was at the moment (ns; "" is the tree's root).
    At(i64, String),
}

pub struct Inodes {
    by_key: HashMap<NodeKey, u64>,
    by_ino: HashMap<u64, NodeKey>,
    /// Lookups the kernel holds on each inode (`forget` gives them back).
    lookups: HashMap<u64, u64>,
    /// The paths known to share each hard-linked number.
    aliases: HashMap<u64, HashSet<String>>,
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
            aliases: HashMap::new(),
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

    /// The number of `path`, a name of the hard-linked file `link`: `link` itself, unless
    /// another node holds that number in this mount (then the path's own number).
    pub fn linked(&mut self, path: &str, link: u64) -> u64 {
        let key = NodeKey::Path(path.to_string());
        let aliases = self.aliases.entry(link).or_default();
        let free = match self.by_ino.get(&link) {
            None => true,
            Some(NodeKey::Path(p)) => p == path || aliases.contains(p),
            Some(_) => false,
        };
        if !free || link == ROOT_INO {
            if aliases.is_empty() {
                self.aliases.remove(&link);
            }
            return self.ino(key);
        }
        aliases.insert(path.to_string());
        self.by_key.insert(key.clone(), link);
        self.by_ino.entry(link).or_insert(key);
        link
    }

    /// Like [`linked`](Self::linked), with one more reference held by the kernel.
    pub fn looked_up_linked(&mut self, path: &str, link: u64) -> u64 {
        let i = self.linked(path, link);
        *self.lookups.entry(i).or_default() += 1;
        i
    }

    /// `ino` (a hard-linked number) now resolves to `path`, one of its names.
    pub fn repoint(&mut self, ino: u64, path: &str) {
        let key = NodeKey::Path(path.to_string());
        self.aliases
            .entry(ino)
            .or_default()
            .insert(path.to_string());
        self.by_key.insert(key.clone(), ino);
        self.by_ino.insert(ino, key);
    }

    /// The number of `path` if the table holds it (the kernel may know it), else `None`.
    pub fn known(&self, path: &str) -> Option<u64> {
        self.by_key.get(&NodeKey::Path(path.to_string())).copied()
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
        for alias in self.aliases.remove(&ino).unwrap_or_default() {
            let k = NodeKey::Path(alias);
            if self.by_key.get(&k) == Some(&ino) {
                self.by_key.remove(&k);
            }
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
        let key = NodeKey::Path(path.to_string());
        if let Some(ino) = self.by_key.remove(&key) {
            self.unalias(ino, &key);
        }
    }

    /// `key` no longer names hard-linked `ino`: the number resolves to another known name.
    fn unalias(&mut self, ino: u64, key: &NodeKey) {
        let (Some(aliases), NodeKey::Path(path)) = (self.aliases.get_mut(&ino), key) else {
            return;
        };
        aliases.remove(path);
        if self.by_ino.get(&ino) == Some(key)
            && let Some(other) = aliases.iter().next()
        {
            self.by_ino.insert(ino, NodeKey::Path(other.clone()));
        }
    }

    /// The names known to share hard-linked `ino`.
    #[cfg(test)]
    pub fn aliases(&self, ino: u64) -> Vec<String> {
        self.aliases
            .get(&ino)
            .map(|a| a.iter().cloned().collect())
            .unwrap_or_default()
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
            if let Some(i) = self.by_key.remove(&k) {
                self.unalias(i, &k);
            }
        }
        for (k, i) in moved {
            let NodeKey::Path(p) = &k else { continue };
            let new_path = format!("{to}{}", &p[from.len()..]);
            let new = NodeKey::Path(new_path.clone());
            self.by_key.remove(&k);
            self.by_key.insert(new.clone(), i);
            if let Some(aliases) = self.aliases.get_mut(&i) {
                aliases.remove(p);
                aliases.insert(new_path);
                if self.by_ino.get(&i) == Some(&k) {
                    self.by_ino.insert(i, new);
                }
            } else {
                self.by_ino.insert(i, new);
            }
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
    fn hard_linked_names_share_a_number() {
        let mut t = Inodes::new();
        let a = t.looked_up(p("d/a"));
        assert_eq!(t.linked("d/a", a), a);
        assert_eq!(t.looked_up_linked("d/b", a), a);
        assert_eq!(t.ino(p("d/b")), a);
        t.detach("d/a");
        assert_eq!(
            t.key(a),
            Some(p("d/b")),
            "the number resolves to the name left"
        );
        t.rename("d", "e");
        assert_eq!(t.key(a), Some(p("e/b")));
        assert_eq!(t.aliases(a), vec!["e/b".to_string()]);
        // Another node holding the number keeps it: the name gets its own.
        let other = t.looked_up(p("x"));
        assert_ne!(t.linked("y", other), other);
        assert_eq!(t.forget(a, 2), Some(p("e/b")));
        assert!(t.aliases(a).is_empty());
        assert_ne!(t.peek(&p("e/b")), a, "forgotten with its names");
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
