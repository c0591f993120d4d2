//! A bounded map from key to counter, for one jail.
//!
//! Memory stays bounded under a flood of spoofed addresses: at `max_tracked`
//! keys, inserting a new one first drops every key whose window is empty, and
//! if that frees less than a tenth of the room, the tenth with the *fewest
//! matches in their window* goes too (ties: the stalest first), and with it
//! every key ranking alike (same matches, same newest second) as the last
//! one taken: keys nothing tells apart go together, so what is evicted
//! follows from the counts alone, never from the table's randomly seeded
//! order, and a replay decides the same on every run. Each sweep is O(n)
//! and frees at least n/10 slots, so the cost per insert stays O(1)
//! amortised. The hasher is randomly seeded (foldhash; text keys are keyed
//! fingerprints), so an attacker cannot aim keys at one bucket.
//!
//! The guarantee (Space-Saving's, without its count inheritance, which would
//! let a fresh key start with a stranger's matches): an evicted key had no
//! more matches than at least 90 % of the tracked keys, so with `N` matches
//! held over all tracked keys, **a key holding more than `N / (0.9 ·
//! max_tracked)` matches is never evicted**. A flood of one-match spoofed keys
//! cannot push out an attacker who has matched twice; eviction by staleness
//! alone could, between any two of its matches.

use super::fingerprint::TextKey;
use super::fptable::FpTable;
use super::window::Counter;
use foldhash::fast::RandomState;
use hashbrown::HashMap;
use std::hash::Hash;

/// The map a tracker keeps for its key type: addresses in hashbrown (keyed
/// hasher), fingerprints in an [`FpTable`] (their slot is known ahead, so a
/// lookup can be prefetched).
pub trait Key: Copy + Eq + Hash {
    type Map<C: Default + 'static>: KeyMap<Self, C>;
}

/// What a tracker needs of its map.
pub trait KeyMap<K, C: 'static>: Default {
    fn len(&self) -> usize;
    fn contains(&self, key: &K) -> bool;
    fn get(&self, key: &K) -> Option<&C>;
    fn remove(&mut self, key: &K);
    fn get_or_default(&mut self, key: &K) -> &mut C;
    fn retain(&mut self, keep: impl FnMut(&C) -> bool);
    fn values(&self) -> impl Iterator<Item = &C>;
    /// Brings `key`'s entry toward the cache, without waiting (a hint).
    fn prefetch(&self, _key: &K) {}
}

impl<K: Copy + Eq + Hash, C: Default + 'static> KeyMap<K, C> for HashMap<K, C, RandomState> {
    fn len(&self) -> usize {
        HashMap::len(self)
    }
    fn contains(&self, key: &K) -> bool {
        self.contains_key(key)
    }
    fn get(&self, key: &K) -> Option<&C> {
        HashMap::get(self, key)
    }
    fn remove(&mut self, key: &K) {
        HashMap::remove(self, key);
    }
    fn get_or_default(&mut self, key: &K) -> &mut C {
        self.entry(*key).or_default()
    }
    fn retain(&mut self, mut keep: impl FnMut(&C) -> bool) {
        HashMap::retain(self, |_, c| keep(c))
    }
    fn values(&self) -> impl Iterator<Item = &C> {
        HashMap::values(self)
    }
}

impl<C: Default + 'static> KeyMap<TextKey, C> for FpTable<C> {
    fn len(&self) -> usize {
        FpTable::len(self)
    }
    fn contains(&self, key: &TextKey) -> bool {
        FpTable::contains(self, key)
    }
    fn get(&self, key: &TextKey) -> Option<&C> {
        FpTable::get(self, key)
    }
    fn remove(&mut self, key: &TextKey) {
        FpTable::remove(self, key)
    }
    fn get_or_default(&mut self, key: &TextKey) -> &mut C {
        FpTable::get_or_default(self, key)
    }
    fn retain(&mut self, keep: impl FnMut(&C) -> bool) {
        FpTable::retain(self, keep)
    }
    fn values(&self) -> impl Iterator<Item = &C> {
        FpTable::values(self)
    }
    fn prefetch(&self, key: &TextKey) {
        FpTable::prefetch(self, key)
    }
}

impl Key for TextKey {
    type Map<C: Default + 'static> = FpTable<C>;
}

pub struct Tracker<K: Key, C: Default + 'static> {
    map: K::Map<C>,
    max_tracked: usize,
    findtime: u32,
    /// Keys dropped to stay under `max_tracked` while their window still held matches.
    pub evicted: u64,
}

impl<K: Key, C: Default + 'static> std::fmt::Debug for Tracker<K, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("len", &self.map.len())
            .field("max_tracked", &self.max_tracked)
            .field("evicted", &self.evicted)
            .finish()
    }
}

impl<K: Key, C: Counter + 'static> Tracker<K, C> {
    pub fn new(max_tracked: usize, findtime: u32) -> Tracker<K, C> {
        Tracker {
            map: Default::default(),
            max_tracked: max_tracked.max(1),
            findtime,
            evicted: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn contains(&self, key: &K) -> bool {
        self.map.contains(key)
    }

    pub fn remove(&mut self, key: &K) {
        self.map.remove(key);
    }

    /// See [`KeyMap::prefetch`].
    pub fn prefetch(&self, key: &K) {
        self.map.prefetch(key)
    }

    /// The counter for `key`, created with `new` if absent. `now` is the
    /// current event second, used to judge staleness when room is needed.
    #[inline]
    pub fn counter(&mut self, key: &K, now: u32) -> &mut C {
        if self.map.len() >= self.max_tracked && !self.map.contains(key) {
            self.make_room(now);
        }
        self.map.get_or_default(key)
    }

    fn make_room(&mut self, now: u32) {
        let findtime = self.findtime;
        self.map.retain(|c| !c.is_stale(now, findtime));
        let target = self.max_tracked - self.max_tracked / 10 - 1;
        if self.map.len() <= target {
            return;
        }
        let excess = self.map.len() - target;
        // Rank by (matches in the window, newest match): fewest and stalest first.
        let rank = |c: &C| (c.live(now, findtime) as u64) << 32 | c.newest() as u64;
        let mut ranks: Vec<u64> = self.map.values().map(rank).collect();
        let (_, cutoff, _) = ranks.select_nth_unstable(excess - 1);
        let cutoff = *cutoff;
        // Everything ranked at or below the cutoff goes, the keys sharing the
        // cutoff rank all together: which of them to keep would otherwise
        // follow the table's order, which is randomly seeded, and the same
        // log would decide differently from run to run.
        let before = self.map.len();
        self.map.retain(|c| rank(c) > cutoff);
        self.evicted += (before - self.map.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::window::SlidingWindow;

    impl Key for u128 {
        type Map<C: Default + 'static> = HashMap<u128, C, RandomState>;
    }

    fn add(t: &mut Tracker<u128, SlidingWindow>, key: u128, sec: u32) -> u32 {
        t.counter(&key, sec).add(sec, None, 60, false)
    }

    #[test]
    fn stays_bounded_and_evicts_the_stalest() {
        let mut t: Tracker<u128, SlidingWindow> = Tracker::new(100, 60);
        for k in 0..100u128 {
            add(&mut t, k, 1000 + k as u32 / 10);
        }
        assert_eq!(t.len(), 100);
        // Key 99 is among the freshest; flooding new keys must not evict it first.
        for k in 1000..1050u128 {
            add(&mut t, k, 1010);
            assert!(t.len() <= 100);
        }
        assert!(t.contains(&99));
        assert!(!t.contains(&0));
        assert!(t.evicted > 0);
    }

    /// The flood of finding 7: one-match spoofed keys never push out a key
    /// with more matches, however stale it is.
    #[test]
    fn a_key_with_more_matches_survives_a_flood_of_one_match_keys() {
        let mut t: Tracker<u128, SlidingWindow> = Tracker::new(1000, 60);
        let attacker = u128::MAX;
        add(&mut t, attacker, 0);
        add(&mut t, attacker, 1);
        for k in 0..100_000u128 {
            add(&mut t, k, 2 + (k / 2000) as u32);
            assert!(t.len() <= 1000);
        }
        assert_eq!(add(&mut t, attacker, 55), 3);
        assert!(t.evicted > 90_000);
    }

    /// Keys ranking alike at the cut are evicted together, whatever the
    /// table's order: one key among many that match once in the same second
    /// is not kept or dropped by chance (found by a session attacking the
    /// replay: the same log revoked a key in some runs, not in others).
    #[test]
    fn keys_ranking_alike_at_the_cut_go_together() {
        let mut t: Tracker<u128, SlidingWindow> = Tracker::new(100, 60);
        for k in 0..30u128 {
            add(&mut t, k, 5);
            add(&mut t, k, 5); // two matches: above the cut
        }
        for k in 100..170u128 {
            add(&mut t, k, 5); // one match, all in second 5
        }
        assert_eq!(t.len(), 100);
        add(&mut t, 1000, 6);
        // Every one-match key of second 5 went, none of the others.
        assert_eq!(t.len(), 31);
        assert!((100..170u128).all(|k| !t.contains(&k)));
        assert!((0..30u128).all(|k| t.contains(&k)) && t.contains(&1000));
        assert_eq!(t.evicted, 70);
    }

    #[test]
    fn stale_keys_are_dropped_before_live_ones() {
        let mut t: Tracker<u128, SlidingWindow> = Tracker::new(10, 60);
        for k in 0..10u128 {
            add(&mut t, k, 0);
        }
        add(&mut t, 100, 500); // everything else is outside the window
        assert_eq!(t.len(), 1);
        assert_eq!(t.evicted, 0);
    }

    #[test]
    fn text_keys_count_in_their_table() {
        let mut t: Tracker<TextKey, SlidingWindow> = Tracker::new(10, 60);
        let k1 = crate::detect::fingerprint::of(b"k1");
        t.counter(&k1, 0).add(0, None, 60, false);
        assert_eq!(t.counter(&k1, 0).add(0, None, 60, false), 2);
        assert_eq!(t.len(), 1);
        assert!(t.contains(&k1));
        t.remove(&k1);
        assert!(!t.contains(&k1));
    }
}
