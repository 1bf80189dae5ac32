//! A bounded cache of manifest reference closures, so a sync grant's many requests (one per
//! child manifest and blob) do not each walk the graph on disk.
//!
//! A closure depends only on which manifests are linked into the repository (content is
//! addressed by digest and never changes), so every change to a manifest link or removal of
//! a blob calls [`ClosureCache::invalidate`], which makes every entry stale at once. The cache
//! must never serve a closure computed before such a change, and never grow past its
//! capacity.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

type Key = (String, String);

struct Entry {
    generation: u64,
    references: Option<Arc<Vec<String>>>,
}

struct State {
    entries: HashMap<Key, Entry>,
    /// Insertion order, for eviction; may hold keys already replaced (skipped on eviction).
    order: VecDeque<Key>,
}

/// Closures keyed by (repository, manifest digest), at most `capacity` of them.
pub(crate) struct ClosureCache {
    capacity: usize,
    generation: AtomicU64,
    state: Mutex<State>,
}

impl ClosureCache {
    pub(crate) fn new(capacity: usize) -> Self {
        ClosureCache {
            capacity: capacity.max(1),
            generation: AtomicU64::new(0),
            state: Mutex::new(State {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
        }
    }

    /// Makes every cached closure stale.
    pub(crate) fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The cached closure of (`repository`, `digest`), or `compute()`'s, which is cached.
    /// `compute` runs without the cache's lock held.
    pub(crate) fn get_or_compute(
        &self,
        repository: &str,
        digest: &str,
        compute: impl FnOnce() -> Option<Vec<String>>,
    ) -> Option<Vec<String>> {
        let key = (repository.to_string(), digest.to_string());
        let generation = self.generation.load(Ordering::SeqCst);
        {
            let state = self.lock();
            if let Some(entry) = state.entries.get(&key) {
                if entry.generation == generation {
                    return entry.references.as_ref().map(|r| r.as_ref().clone());
                }
            }
        }
        let references = compute().map(Arc::new);
        let mut state = self.lock();
        // Stale entries go first, then the oldest.
        if state.entries.len() >= self.capacity {
            state.entries.retain(|_, e| e.generation == generation);
        }
        while state.entries.len() >= self.capacity {
            match state.order.pop_front() {
                Some(old) => {
                    state.entries.remove(&old);
                }
                None => break,
            }
        }
        if state.order.len() > self.capacity.saturating_mul(4) {
            let State { entries, order } = &mut *state;
            order.retain(|k| entries.contains_key(k));
        }
        state.order.push_back(key.clone());
        // Computed against `generation`: a change made meanwhile leaves this entry stale.
        state.entries.insert(
            key,
            Entry {
                generation,
                references: references.clone(),
            },
        );
        references.map(|r| r.as_ref().clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is a plain map; a panic elsewhere cannot leave it inconsistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn hits_until_invalidated_and_stays_bounded() {
        let cache = ClosureCache::new(2);
        let walks = Cell::new(0);
        let walk = || {
            walks.set(walks.get() + 1);
            Some(vec!["sha256:c".to_string()])
        };
        assert_eq!(
            cache.get_or_compute("r", "a", walk),
            Some(vec!["sha256:c".into()])
        );
        assert_eq!(
            cache.get_or_compute("r", "a", walk),
            Some(vec!["sha256:c".into()])
        );
        assert_eq!(walks.get(), 1, "second lookup is a hit");
        cache.invalidate();
        cache.get_or_compute("r", "a", walk);
        assert_eq!(walks.get(), 2, "invalidated: walked again");
        for d in ["b", "c", "d", "e"] {
            cache.get_or_compute("r", d, walk);
        }
        assert!(cache.len() <= 2, "bounded: {}", cache.len());
        assert_eq!(cache.get_or_compute("r", "missing", || None), None);
    }
}
