//! A map from text-key fingerprints to counters, whose slot is known before
//! the lookup.
//!
//! Why not hashbrown: a jail counting per API key holds tens of thousands of
//! keys, more than a core's L2 cache, so nearly every event's lookup waits
//! for memory (a fifth of a replay's time, measured). The wait can be hidden
//! by fetching the slot a line ahead, while the next line is parsed; that
//! needs the slot's address from the key alone, which hashbrown does not
//! give (its slot depends on the group probe). Here the key is already a
//! keyed pseudo-random 128-bit value ([`super::fingerprint`]), so its first
//! word picks the home slot directly: open addressing, linear probing,
//! entries (key and counter) inline.
//!
//! Linear probing is safe here because nobody can aim keys at a slot: the
//! fingerprint keys never leave the process. The table stays at most 5/8
//! full (a miss probes about four slots on average, a hit two); an all-zero
//! fingerprint marks a free slot ([`super::fingerprint::of`] never makes
//! one).

use super::fingerprint::TextKey;

const EMPTY: TextKey = TextKey::EMPTY;

#[derive(Debug)]
pub struct FpTable<V> {
    slots: Vec<(TextKey, V)>,
    len: usize,
}

impl<V: Default> Default for FpTable<V> {
    fn default() -> Self {
        FpTable {
            slots: Vec::new(),
            len: 0,
        }
    }
}

impl<V: Default> FpTable<V> {
    pub fn len(&self) -> usize {
        self.len
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn home(&self, key: &TextKey) -> usize {
        key.word() as usize & self.mask()
    }

    /// The slot holding `key`, or the free slot ending its probe. The table
    /// must have slots (a power of two of them, never full).
    #[inline]
    fn find(&self, key: &TextKey) -> (usize, bool) {
        debug_assert!(self.slots.len().is_power_of_two());
        let mask = self.mask();
        let mut i = self.home(key);
        loop {
            // SAFETY: `i <= mask < self.slots.len()`.
            let k = unsafe { &self.slots.get_unchecked(i).0 };
            if k == key {
                return (i, true);
            }
            if *k == EMPTY {
                return (i, false);
            }
            i = (i + 1) & mask;
        }
    }

    pub fn contains(&self, key: &TextKey) -> bool {
        self.get(key).is_some()
    }

    pub fn get(&self, key: &TextKey) -> Option<&V> {
        if self.len == 0 {
            return None;
        }
        match self.find(key) {
            (i, true) => Some(&self.slots[i].1),
            _ => None,
        }
    }

    /// Asks the CPU to bring `key`'s home slot (and the next cache line,
    /// where a short probe ends) into the cache, without waiting for it.
    #[inline]
    pub fn prefetch(&self, key: &TextKey) {
        if self.slots.is_empty() {
            return;
        }
        let p = self.slots.as_ptr().wrapping_add(self.home(key));
        crate::prefetch::bytes(p, 128, 2);
    }

    /// The value of `key`, inserted as `V::default()` if absent.
    #[inline]
    pub fn get_or_default(&mut self, key: &TextKey) -> &mut V {
        debug_assert!(*key != EMPTY, "an all-zero fingerprint marks a free slot");
        if (self.len + 1) * 8 > self.slots.len() * 5 {
            self.grow();
        }
        let (i, found) = self.find(key);
        if !found {
            self.slots[i].0 = *key;
            self.len += 1;
        }
        &mut self.slots[i].1
    }

    pub fn remove(&mut self, key: &TextKey) {
        if self.slots.is_empty() {
            return;
        }
        if let (i, true) = self.find(key) {
            self.remove_at(i);
        }
    }

    /// Empties slot `hole` (which holds an entry) by backward shift: entries
    /// after it whose probe passed through it move back into it, so every
    /// probe still ends at a free slot only past its key (no tombstones to
    /// sweep later).
    fn remove_at(&mut self, mut hole: usize) {
        self.len -= 1;
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            if self.slots[j].0 == EMPTY {
                break;
            }
            let home = self.home(&self.slots[j].0);
            // `j` may move to `hole` unless its home lies cyclically in (hole, j].
            let stays = if hole <= j {
                hole < home && home <= j
            } else {
                hole < home || home <= j
            };
            if !stays {
                self.slots.swap(hole, j);
                hole = j;
            }
        }
        self.slots[hole] = (EMPTY, V::default());
    }

    /// Keeps only the entries whose value `keep` accepts, in place (a
    /// tracker sweeping under a flood must not need a second table).
    ///
    /// Each dropped entry is removed as [`FpTable::remove`] does, by
    /// backward shift, so the table is sound after every step (clusters at
    /// most 5/8 full are short: a few moves a removal). An earlier version
    /// emptied the dropped slots first and then seated the survivors again
    /// in one walk; an entry seated early could have its probe cut by a
    /// move made later in the walk, and was then lost.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool) {
        for i in 0..self.slots.len() {
            // What a removal shifts back into `i` is judged too (an entry
            // from past the table's end, already kept, is judged again).
            while self.slots[i].0 != EMPTY && !keep(&self.slots[i].1) {
                self.remove_at(i);
            }
        }
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.slots
            .iter()
            .filter(|(k, _)| *k != EMPTY)
            .map(|(_, v)| v)
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, empty_slots(size));
        self.len = 0;
        for (k, v) in old {
            if k != EMPTY {
                *self.get_or_default(&k) = v;
            }
        }
    }
}

fn empty_slots<V: Default>(n: usize) -> Vec<(TextKey, V)> {
    (0..n).map(|_| (EMPTY, V::default())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Against a std map, through inserts, removals (which shift entries
    /// back) and retains, with keys crowded into a small table so that
    /// probes wrap around its end. Keys are made from fixed seeds (the
    /// process's fingerprints differ from run to run, and a key set that
    /// breaks the table must break it in every run): the sweep that seated
    /// survivors again in one walk lost a key for 1 seed in about 100 here.
    #[test]
    fn agrees_with_a_std_map() {
        for seed in 1..=400u64 {
            let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut rng = move || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            };
            let keys: Vec<TextKey> = (0..300)
                .map(|_| TextKey::from_words(rng(), rng() | 1))
                .collect();
            let mut t: FpTable<u32> = FpTable::default();
            let mut m: HashMap<TextKey, u32> = HashMap::new();
            for step in 0..5_000u32 {
                let r = rng();
                let k = keys[(r % 300) as usize];
                match r >> 60 {
                    0..=9 => {
                        *t.get_or_default(&k) += 1;
                        *m.entry(k).or_default() += 1;
                    }
                    10..=14 => {
                        t.remove(&k);
                        m.remove(&k);
                    }
                    _ => {
                        t.retain(|v| v % 3 != 0);
                        m.retain(|_, v| *v % 3 != 0);
                        let lost = m.keys().filter(|k| !t.contains(k)).count();
                        assert_eq!(lost, 0, "seed {seed} step {step}: keys lost by a sweep");
                    }
                }
                assert_eq!(t.len(), m.len(), "seed {seed} step {step}");
                assert_eq!(
                    t.contains(&k),
                    m.contains_key(&k),
                    "seed {seed} step {step}"
                );
            }
            for (k, v) in &m {
                assert_eq!(t.get(k), Some(v), "seed {seed}");
            }
            let mut a: Vec<u32> = t.values().copied().collect();
            let mut b: Vec<u32> = m.values().copied().collect();
            a.sort();
            b.sort();
            assert_eq!(a, b);
            assert!(t.slots.len() * 5 >= t.len() * 8);
        }
    }

    /// Removal keeps every other key findable when probes wrap past the
    /// table's end: keys chosen with the same home slot, the last one.
    #[test]
    fn removal_shifts_back_across_the_end() {
        let mut t: FpTable<u32> = FpTable::default();
        t.get_or_default(&TextKey::from_words(1, 1)); // 16 slots now
        let at_end: Vec<TextKey> = (0..5)
            .map(|i| TextKey::from_words(15 + 16 * i, 1))
            .collect();
        for (i, k) in at_end.iter().enumerate() {
            *t.get_or_default(k) = i as u32 + 10;
        }
        t.remove(&at_end[0]);
        for (i, k) in at_end.iter().enumerate().skip(1) {
            assert!(t.contains(k));
            assert_eq!(*t.get_or_default(k), i as u32 + 10);
        }
        assert!(!t.contains(&at_end[0]));
        assert!(t.contains(&TextKey::from_words(1, 1)));
        assert_eq!(t.len(), 5);
        // A sweep that empties the start of the wrapped cluster keeps the
        // rest findable (they are seated again in place).
        t.retain(|&v| v != 11 && v != 12);
        assert_eq!(t.len(), 3);
        for (i, k) in at_end.iter().enumerate().skip(3) {
            assert_eq!(t.get(k), Some(&(i as u32 + 10)));
        }
        assert!(t.contains(&TextKey::from_words(1, 1)));
        assert!(!t.contains(&at_end[1]) && !t.contains(&at_end[2]));
    }
}
