//! A generic record of what changed between two syncs, with no-op changes dropped.

use std::collections::HashMap;
use std::hash::Hash;

/// The first and the latest value of one key since the last sync.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change<V> {
    /// The value as of the last sync (`None`: the object did not exist).
    pub previous: Option<V>,
    /// The value now (`None`: the object is gone).
    pub current: Option<V>,
}

/// Records `(previous, current)` per key between two syncs and coalesces events.
///
/// Upstream kube-proxy has two copies of this logic (`ServiceChangeTracker`, `EndpointsChangeTracker`)
/// whose return values mean different things; kproxy has one. The rules:
///
/// - the first event for a key fixes `previous`; later events only move `current`;
/// - when `current` comes back to `previous` (add then delete, or an update to an equal value), the
///   key is dropped: there is nothing to sync.
///
/// Values are the *converted* model, not API objects, so an update that changes only metadata the
/// datapath ignores (a `resourceVersion`, an annotation) is a no-op too.
#[derive(Debug)]
pub struct ChangeTracker<K, V> {
    pending: HashMap<K, Change<V>>,
}

impl<K, V> Default for ChangeTracker<K, V> {
    fn default() -> Self {
        Self {
            pending: HashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Ord, V: PartialEq> ChangeTracker<K, V> {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `key` went from `previous` to `current`. Returns whether a change for `key` is
    /// now pending.
    pub fn record(&mut self, key: K, previous: Option<V>, current: Option<V>) -> bool {
        use std::collections::hash_map::Entry;
        match self.pending.entry(key) {
            Entry::Occupied(mut slot) => {
                slot.get_mut().current = current;
                if slot.get().previous == slot.get().current {
                    slot.remove();
                    false
                } else {
                    true
                }
            }
            Entry::Vacant(slot) => {
                if previous == current {
                    false
                } else {
                    slot.insert(Change { previous, current });
                    true
                }
            }
        }
    }

    /// The change pending for `key`, if any.
    pub fn get(&self, key: &K) -> Option<&Change<V>> {
        self.pending.get(key)
    }

    /// How many keys have a pending change.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Takes every pending change, sorted by key so that applying them is deterministic.
    pub fn take(&mut self) -> Vec<(K, Change<V>)> {
        let mut changes: Vec<_> = self.pending.drain().collect();
        changes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_then_delete_is_no_change() {
        let mut t = ChangeTracker::<&str, u32>::new();
        assert!(t.record("a", None, Some(1)));
        assert!(!t.record("a", Some(1), None));
        assert!(t.is_empty());
    }

    #[test]
    fn update_to_equal_value_is_no_change() {
        let mut t = ChangeTracker::<&str, u32>::new();
        assert!(!t.record("a", Some(1), Some(1)));
        assert!(t.is_empty());
    }

    #[test]
    fn updates_coalesce_keeping_first_previous() {
        let mut t = ChangeTracker::<&str, u32>::new();
        t.record("a", Some(1), Some(2));
        t.record("a", Some(2), Some(3));
        assert_eq!(
            t.get(&"a"),
            Some(&Change {
                previous: Some(1),
                current: Some(3)
            })
        );
        // and back to the start: nothing left to do
        t.record("a", Some(3), Some(1));
        assert!(t.is_empty());
    }

    #[test]
    fn take_is_sorted_and_empties() {
        let mut t = ChangeTracker::<&str, u32>::new();
        t.record("b", None, Some(1));
        t.record("a", None, Some(2));
        let keys: Vec<_> = t.take().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["a", "b"]);
        assert!(t.is_empty());
    }
}
