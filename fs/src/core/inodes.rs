//! Inode numbers: one per node for the life of the mount, kept stable across renames.

use std::collections::HashMap;

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
}

pub struct Inodes {
    by_key: HashMap<NodeKey, u64>,
    by_ino: HashMap<u64, NodeKey>,
    next: u64,
}

impl Inodes {
    pub fn new() -> Self {
        let mut s = Self {
            by_key: HashMap::new(),
            by_ino: HashMap::new(),
            next: ROOT_INO + 1,
        };
        s.by_key.insert(NodeKey::Path(String::new()), ROOT_INO);
        s.by_ino.insert(ROOT_INO, NodeKey::Path(String::new()));
        s
    }

    pub fn ino(&mut self, key: NodeKey) -> u64 {
        if let Some(i) = self.by_key.get(&key) {
            return *i;
        }
        let i = self.next;
        self.next += 1;
        self.by_key.insert(key.clone(), i);
        self.by_ino.insert(i, key);
        i
    }

    pub fn key(&self, ino: u64) -> Option<NodeKey> {
        self.by_ino.get(&ino).cloned()
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
        // Whatever was at the destination is gone now.
        let to_prefix = format!("{to}/");
        let replaced: Vec<NodeKey> = self
            .by_key
            .keys()
            .filter(|k| matches!(k, NodeKey::Path(p) if p == to || p.starts_with(&to_prefix)))
            .cloned()
            .collect();
        for k in replaced {
            if let Some(i) = self.by_key.remove(&k) {
                self.by_ino.remove(&i);
            }
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

    #[test]
    fn rename_keeps_numbers() {
        let mut t = Inodes::new();
        let a = t.ino(NodeKey::Path("a".into()));
        let ab = t.ino(NodeKey::Path("a/b".into()));
        let c = t.ino(NodeKey::Path("c".into()));
        t.rename("a", "c");
        assert_eq!(t.key(a), Some(NodeKey::Path("c".into())));
        assert_eq!(t.key(ab), Some(NodeKey::Path("c/b".into())));
        assert_eq!(t.key(c), None);
        assert_eq!(t.ino(NodeKey::Path("c/b".into())), ab);
    }
}
