//! Sharing repeated strings (node names, zones) between endpoints.

use std::collections::HashSet;
use std::sync::Arc;

/// Hands out one shared `Arc<str>` per distinct string.
///
/// Every endpoint names its node, and a cluster has far fewer nodes than endpoints: interning turns
/// 200,000 small allocations into a handful. The set only grows; it holds node and zone names, which
/// are few even over a long run.
#[derive(Debug, Default)]
pub struct Interner {
    strings: HashSet<Arc<str>>,
}

impl Interner {
    /// An empty interner.
    pub fn new() -> Self {
        Self::default()
    }

    /// The shared copy of `s`.
    pub fn intern(&mut self, s: &str) -> Arc<str> {
        if let Some(existing) = self.strings.get(s) {
            return Arc::clone(existing);
        }
        let fresh: Arc<str> = Arc::from(s);
        self.strings.insert(Arc::clone(&fresh));
        fresh
    }

    /// How many distinct strings are held.
    pub fn len(&self) -> usize {
        self.strings.len()
    }

    /// Whether none are.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_string_same_allocation() {
        let mut i = Interner::new();
        let a = i.intern("node-a");
        let b = i.intern("node-a");
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(i.len(), 1);
    }
}
