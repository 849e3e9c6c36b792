//! A map whose entries expire by timestamp, in time proportional to what
//! expires: entries are also queued in insertion order, so expiring pops
//! from the front instead of scanning everything (a `retain` over millions
//! of dedupe keys stalled the write pipeline for hundreds of milliseconds).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

pub struct ExpiringMap<K, V> {
    map: HashMap<K, (V, u64)>,
    /// (timestamp, key) in insertion order. A key removed or inserted again
    /// leaves a stale entry here, skipped when it reaches the front.
    order: VecDeque<(u64, K)>,
}

impl<K: Hash + Eq + Clone, V> Default for ExpiringMap<K, V> {
    fn default() -> Self {
        ExpiringMap {
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Inserts with timestamp `ts`. Timestamps are expected in
    /// non-decreasing order; one out of order only expires later.
    pub fn insert(&mut self, key: K, value: V, ts: u64) {
        self.order.push_back((ts, key.clone()));
        self.map.insert(key, (value, ts));
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    pub fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }

    /// Drops the entries with a timestamp before `before`.
    pub fn expire(&mut self, before: u64) {
        while let Some((ts, _)) = self.order.front() {
            if *ts >= before {
                break;
            }
            let Some((ts, key)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|(_, t)| *t == ts) {
                self.map.remove(&key);
            }
        }
    }

    /// Drops the oldest entries until at most `max` are left; returns how
    /// many went.
    pub fn shrink_to(&mut self, max: usize) -> usize {
        let mut dropped = 0;
        while self.map.len() > max {
            let Some((ts, key)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&key).is_some_and(|(_, t)| *t == ts) {
                self.map.remove(&key);
                dropped += 1;
            }
        }
        dropped
    }

    /// Values with their timestamps.
    pub fn values(&self) -> impl Iterator<Item = (&V, u64)> {
        self.map.values().map(|(v, ts)| (v, *ts))
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_only_what_is_older() {
        let mut m = ExpiringMap::new();
        m.insert("a", 1, 10);
        m.insert("b", 2, 20);
        m.insert("c", 3, 30);
        m.expire(20);
        assert_eq!(m.get(&"a"), None);
        assert_eq!(m.get(&"b"), Some(&2));
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn a_key_inserted_again_lives_by_its_new_timestamp() {
        let mut m = ExpiringMap::new();
        m.insert("a", 1, 10);
        m.insert("a", 2, 30);
        m.expire(20);
        assert_eq!(m.get(&"a"), Some(&2));
        m.remove(&"a");
        m.expire(40);
        assert!(m.is_empty());
        assert!(m.order.is_empty());
    }

    #[test]
    fn shrink_to_drops_the_oldest_live_entries() {
        let mut m = ExpiringMap::new();
        m.insert("a", 1, 10);
        m.insert("b", 2, 20);
        m.remove(&"a");
        m.insert("c", 3, 30);
        m.insert("d", 4, 40);
        // "a" is gone already: its stale queue entry costs nothing.
        assert_eq!(m.shrink_to(2), 1);
        assert_eq!(m.get(&"b"), None);
        assert_eq!((m.get(&"c"), m.get(&"d")), (Some(&3), Some(&4)));
        assert_eq!(m.shrink_to(5), 0);
    }
}
