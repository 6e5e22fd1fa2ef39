//! A map that forgets its oldest entries past a capacity: what keeps every cache of container
//! attribution bounded over days of process and pod churn.
use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

/// Insertion order decides age; replacing a value keeps its age.
pub(super) struct Bounded<K, V> {
    map: HashMap<K, V>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Clone + Eq + Hash, V> Bounded<K, V> {
    pub(super) fn new(capacity: usize) -> Self {
        Self { map: HashMap::new(), order: VecDeque::new(), capacity: capacity.max(1) }
    }

    pub(super) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    /// Forgets `key` now; its place in the age order is reclaimed when it would have expired.
    pub(super) fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }

    /// Inserts or replaces; a replaced entry keeps its age.
    pub(super) fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key.clone(), value).is_none() {
            self.order.push_back(key);
            while self.order.len() > self.capacity {
                if let Some(oldest) = self.order.pop_front() {
                    self.map.remove(&oldest);
                }
            }
        }
    }
}

