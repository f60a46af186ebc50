//! When each client wants the engine's attention next (its `Rtc`'s timeout, an offer coming due), as a min-heap:
//! the engine finds what is due, and how long it may sleep, without looking at every client.
//!
//! A key has at most one deadline; setting a new one leaves the old heap entry behind, skipped when it surfaces
//! (lazy removal), and the heap is rebuilt once such entries outnumber the live ones.
//!
//! ```ignore
//! let mut d = Deadlines::default();
//! d.set(7, now + Duration::from_millis(20));
//! assert_eq!(d.next(), Some(now + Duration::from_millis(20)));
//! assert_eq!(d.pop_due(now), None);
//! ```

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Deadlines by key (a client id), earliest first.
#[derive(Debug)]
pub(crate) struct Deadlines<K> {
    heap: BinaryHeap<Reverse<(Instant, K)>>,
    /// Each key's deadline in force: a heap entry that differs is stale.
    current: HashMap<K, Instant, foldhash::fast::RandomState>,
}

impl<K> Default for Deadlines<K> {
    fn default() -> Self {
        Deadlines {
            heap: BinaryHeap::new(),
            current: HashMap::default(),
        }
    }
}

impl<K: Copy + Ord + Hash> Deadlines<K> {
    /// `key` is due at `at` (instead of any deadline it had).
    pub(crate) fn set(&mut self, key: K, at: Instant) {
        if self.current.insert(key, at) == Some(at) {
            return;
        }
        self.heap.push(Reverse((at, key)));
        if self.heap.len() > 2 * self.current.len() + 64 {
            self.heap = self
                .current
                .iter()
                .map(|(&k, &t)| Reverse((t, k)))
                .collect();
        }
    }

    /// `key` has no deadline any more.
    pub(crate) fn remove(&mut self, key: K) {
        self.current.remove(&key);
    }

    /// The earliest deadline.
    pub(crate) fn next(&mut self) -> Option<Instant> {
        self.drop_stale();
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// A key whose deadline is at or before `now` (earliest first). It has no deadline afterwards: set one again.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<K> {
        self.drop_stale();
        let &Reverse((t, key)) = self.heap.peek()?;
        if t > now {
            return None;
        }
        self.heap.pop();
        self.current.remove(&key);
        Some(key)
    }

    fn drop_stale(&mut self) {
        while let Some(&Reverse((t, key))) = self.heap.peek() {
            if self.current.get(&key) == Some(&t) {
                return;
            }
            self.heap.pop();
        }
    }

    /// Keys with a deadline.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.current.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn due_keys_come_out_earliest_first_and_only_once_due() {
        let now = Instant::now();
        let mut d = Deadlines::default();
        d.set(1u64, now + ms(30));
        d.set(2, now + ms(10));
        d.set(3, now + ms(20));
        assert_eq!(d.next(), Some(now + ms(10)));
        assert_eq!(d.pop_due(now + ms(5)), None, "nothing due yet");
        assert_eq!(d.pop_due(now + ms(25)), Some(2));
        assert_eq!(d.pop_due(now + ms(25)), Some(3));
        assert_eq!(d.pop_due(now + ms(25)), None);
        assert_eq!(d.next(), Some(now + ms(30)));
    }

    #[test]
    fn a_new_deadline_replaces_the_old_one_earlier_or_later() {
        let now = Instant::now();
        let mut d = Deadlines::default();
        d.set(1u64, now + ms(10));
        d.set(1, now + ms(50));
        assert_eq!(
            d.next(),
            Some(now + ms(50)),
            "the old, earlier entry is stale"
        );
        assert_eq!(d.pop_due(now + ms(20)), None);
        d.set(1, now + ms(5));
        assert_eq!(d.pop_due(now + ms(20)), Some(1));
        assert_eq!(
            d.pop_due(now + ms(100)),
            None,
            "popped once, the later stale entry included"
        );
    }

    #[test]
    fn a_removed_key_is_never_due() {
        let now = Instant::now();
        let mut d = Deadlines::default();
        d.set(1u64, now);
        d.set(2, now + ms(1));
        d.remove(1);
        assert_eq!(d.pop_due(now + ms(1)), Some(2));
        assert_eq!(d.pop_due(now + ms(1)), None);
        assert_eq!(d.next(), None);
    }

    #[test]
    fn stale_entries_do_not_pile_up() {
        let now = Instant::now();
        let mut d = Deadlines::default();
        for i in 0..10_000u64 {
            d.set(i % 10, now + ms(i));
        }
        assert_eq!(d.len(), 10);
        assert!(d.heap.len() <= 2 * 10 + 65, "heap holds {}", d.heap.len());
        let mut due = Vec::new();
        while let Some(k) = d.pop_due(now + ms(20_000)) {
            due.push(k);
        }
        due.sort_unstable();
        assert_eq!(due, (0..10).collect::<Vec<_>>());
    }
}
