//! A byte-budgeted LRU index: the bookkeeping shared by the memory and disk tiers.
//!
//! Pure data structure, no I/O and no locking. Each entry carries a size in bytes; the sum of
//! the sizes never exceeds the budget once [`SizedLru::insert`] returns. Whatever had to go is
//! handed back to the caller, least recently used first, so the caller can release what the
//! entries stand for (e.g. delete files).

use std::hash::Hash;

use lru::LruCache;

struct Entry<V> {
    value: V,
    size: u64,
}

pub(crate) struct SizedLru<K: Hash + Eq, V> {
    entries: LruCache<K, Entry<V>>,
    used: u64,
    budget: u64,
}

impl<K: Hash + Eq + Clone, V> SizedLru<K, V> {
    pub(crate) fn new(budget: u64) -> Self {
        Self {
            entries: LruCache::unbounded(),
            used: 0,
            budget,
        }
    }

    /// Sum of the sizes of all entries.
    pub(crate) fn used(&self) -> u64 {
        self.used
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether an entry of `size` bytes can be held at all.
    pub(crate) fn fits(&self, size: u64) -> bool {
        size <= self.budget
    }

    /// Looks up `key` for change and marks it most recently used.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.entries.get_mut(key).map(|entry| &mut entry.value)
    }

    /// The least recently used entry, without touching the order.
    pub(crate) fn peek_lru(&self) -> Option<(&K, &V)> {
        self.entries.peek_lru().map(|(k, entry)| (k, &entry.value))
    }

    /// The size of `key`'s entry, without touching the LRU order.
    pub(crate) fn peek_size(&self, key: &K) -> Option<u64> {
        self.entries.peek(key).map(|entry| entry.size)
    }

    /// Marks `key` most recently used; returns whether it was present.
    pub(crate) fn promote(&mut self, key: &K) -> bool {
        self.entries.get(key).is_some()
    }

    /// Inserts (or replaces) `key` as the most recently used entry, then evicts least recently
    /// used entries until the budget holds. Returns the evicted entries, oldest first. An entry
    /// larger than the whole budget is not kept: it comes straight back in the returned list.
    #[must_use = "evicted entries must be released by the caller"]
    pub(crate) fn insert(&mut self, key: K, value: V, size: u64) -> Vec<(K, V)> {
        if !self.fits(size) {
            let mut evicted = Vec::new();
            if let Some(old) = self.remove(&key) {
                evicted.push((key.clone(), old));
            }
            evicted.push((key, value));
            return evicted;
        }
        if let Some(old) = self.entries.put(key, Entry { value, size }) {
            self.used -= old.size;
        }
        self.used += size;
        self.evict_to(self.budget)
    }

    /// Removes `key`, returning its value.
    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        let entry = self.entries.pop(key)?;
        self.used -= entry.size;
        Some(entry.value)
    }

    /// Removes the least recently used entry.
    pub(crate) fn pop_lru(&mut self) -> Option<(K, V, u64)> {
        let (key, entry) = self.entries.pop_lru()?;
        self.used -= entry.size;
        Some((key, entry.value, entry.size))
    }

    /// Evicts least recently used entries until at most `limit` bytes are used.
    #[must_use = "evicted entries must be released by the caller"]
    pub(crate) fn evict_to(&mut self, limit: u64) -> Vec<(K, V)> {
        let mut evicted = Vec::new();
        while self.used > limit {
            match self.pop_lru() {
                Some((key, value, _)) => evicted.push((key, value)),
                None => break,
            }
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn keys(evicted: Vec<(u32, ())>) -> Vec<u32> {
        evicted.into_iter().map(|(key, ())| key).collect()
    }

    #[test]
    fn evicts_least_recently_used_first() {
        let mut lru = SizedLru::new(30);
        assert!(lru.insert(1, (), 10).is_empty());
        assert!(lru.insert(2, (), 10).is_empty());
        assert!(lru.insert(3, (), 10).is_empty());
        assert!(lru.promote(&1));
        assert_eq!(keys(lru.insert(4, (), 15)), vec![2, 3]);
        assert_eq!(lru.used(), 25);
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn replacing_an_entry_does_not_double_count() {
        let mut lru = SizedLru::new(100);
        assert!(lru.insert(1, (), 40).is_empty());
        assert!(lru.insert(1, (), 40).is_empty());
        assert_eq!(lru.used(), 40);
        assert_eq!(lru.peek_size(&1), Some(40));
    }

    #[test]
    fn oversized_entry_is_returned_not_kept() {
        let mut lru = SizedLru::new(10);
        assert!(lru.insert(1, (), 5).is_empty());
        assert_eq!(keys(lru.insert(2, (), 11)), vec![2]);
        assert_eq!(keys(lru.insert(1, (), 11)), vec![1, 1]);
        assert_eq!(lru.used(), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u8, u16),
        Get(u8),
        Remove(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..16, 0u16..400).prop_map(|(k, s)| Op::Insert(k, s)),
            (0u8..16).prop_map(Op::Get),
            (0u8..16).prop_map(Op::Remove),
        ]
    }

    proptest! {
        /// Against a model (a vector ordered from least to most recently used): the budget
        /// always holds, `used` is the sum of the sizes, and eviction follows recency.
        #[test]
        fn matches_recency_model(budget in 0u64..1000, ops in prop::collection::vec(op(), 0..64)) {
            let mut lru = SizedLru::new(budget);
            let mut model: Vec<(u8, u64)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(key, size) => {
                        let size = u64::from(size);
                        model.retain(|(k, _)| *k != key);
                        model.push((key, size));
                        let mut expected = Vec::new();
                        if size > budget {
                            model.pop();
                            expected.push(key);
                        } else {
                            while model.iter().map(|(_, s)| s).sum::<u64>() > budget {
                                expected.push(model.remove(0).0);
                            }
                        }
                        let mut got: Vec<u8> =
                            lru.insert(key, (), size).into_iter().map(|(k, ())| k).collect();
                        // A replaced oversized entry is reported twice (old and new value).
                        got.dedup();
                        prop_assert_eq!(got, expected);
                    }
                    Op::Get(key) => {
                        let present = model.iter().position(|(k, _)| *k == key);
                        if let Some(pos) = present {
                            let entry = model.remove(pos);
                            model.push(entry);
                        }
                        prop_assert_eq!(lru.get_mut(&key).is_some(), present.is_some());
                    }
                    Op::Remove(key) => {
                        let present = model.iter().position(|(k, _)| *k == key);
                        if let Some(pos) = present {
                            model.remove(pos);
                        }
                        prop_assert_eq!(lru.remove(&key).is_some(), present.is_some());
                    }
                }
                prop_assert!(lru.used() <= budget);
                prop_assert_eq!(lru.used(), model.iter().map(|(_, s)| s).sum::<u64>());
                prop_assert_eq!(lru.len(), model.len());
            }
        }
    }
}
