//! Per-key counters: matches in a sliding window, or distinct values.
//!
//! Both are exact at one-second resolution, the resolution of nginx's
//! `$time_local`. A key's window ends at the newest event time seen for it;
//! an event is inside when `end - t < findtime` (a half-open span of exactly
//! `findtime` seconds). Out-of-order lines count in their own second if they
//! still fall inside the window, and are dropped as late otherwise.

use super::fingerprint::TextKey;
use smallvec::SmallVec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    sec: u32,
    count: u32,
}

/// What a jail counts per key.
pub trait Counter: Default {
    /// Records one match at `sec` (with the distinct-counted value, for
    /// distinct counters); returns the count inside the window. `nested`:
    /// the values are regions (see [`DistinctValues`]).
    fn add(&mut self, sec: u32, value: Option<TextKey>, findtime: u32, nested: bool) -> u32;
    /// Second of the newest match held.
    fn newest(&self) -> u32;
    /// Second of the oldest match held.
    fn oldest(&self) -> u32;
    /// Matches (or values) it holds that count toward a window ending at `now`.
    fn live(&self, now: u32, findtime: u32) -> u32;
    /// Whether nothing it holds can count toward a window ending at `now`.
    fn is_stale(&self, now: u32, findtime: u32) -> bool {
        expired(self.newest(), now, findtime)
    }
}

/// Match counts per second, oldest first. Two seconds fit inline, so a key
/// seen once (the common case under a spoofed flood) costs no heap. The total
/// is summed when needed: at most `maxretry` buckets, and it keeps the
/// counter at 24 bytes.
#[derive(Clone, Debug, Default)]
pub struct SlidingWindow {
    buckets: SmallVec<[Bucket; 2]>,
}

/// Whether second `sec` is outside a window of `findtime` seconds ending at `end`.
fn expired(sec: u32, end: u32, findtime: u32) -> bool {
    end - sec.min(end) >= findtime
}

impl SlidingWindow {
    fn total(&self) -> u32 {
        self.buckets.iter().map(|b| b.count).sum()
    }
}

impl Counter for SlidingWindow {
    fn add(&mut self, sec: u32, _value: Option<TextKey>, findtime: u32, _nested: bool) -> u32 {
        let end = self.newest().max(sec);
        if expired(sec, end, findtime) {
            return self.total();
        }
        match self.buckets.last_mut() {
            Some(b) if b.sec == sec => b.count += 1,
            Some(b) if b.sec > sec => match self.buckets.binary_search_by_key(&sec, |b| b.sec) {
                Ok(i) => self.buckets[i].count += 1,
                Err(i) => self.buckets.insert(i, Bucket { sec, count: 1 }),
            },
            _ => self.buckets.push(Bucket { sec, count: 1 }),
        }
        let stale = self
            .buckets
            .iter()
            .take_while(|b| expired(b.sec, end, findtime))
            .count();
        if stale > 0 {
            self.buckets.drain(..stale);
        }
        self.total()
    }

    fn live(&self, now: u32, findtime: u32) -> u32 {
        self.buckets
            .iter()
            .filter(|b| !expired(b.sec, now, findtime))
            .map(|b| b.count)
            .sum()
    }

    fn newest(&self) -> u32 {
        self.buckets.last().map_or(0, |b| b.sec)
    }

    fn oldest(&self) -> u32 {
        self.buckets.first().map_or(0, |b| b.sec)
    }
}

/// Distinct values of a field per key (as fingerprints, see
/// `detect::fingerprint`), each with the last second it was seen. Holds at
/// most the threshold's number of values: the jail fires at that point. One
/// value fits inline, so the common key (one client) costs no heap.
///
/// Regions are nested values (`fingerprint::nested`: a country, and a
/// subdivision or none): a country alone (an address the database places
/// in `US` only) is not a region apart from a subdivision of it (`US-CA`)
/// in the window, since it may well be the same place. So `US` and `US-CA`
/// count once, and a database replaced by one with subdivisions mid-window
/// does not count each address twice; `US-CA` and `US-MA` count twice. A
/// key holds at most twice the threshold's values (the uncounted countries
/// beside the counted regions).
#[derive(Clone, Debug, Default)]
pub struct DistinctValues {
    values: SmallVec<[(TextKey, u32); 1]>,
}

impl DistinctValues {
    /// The regions held: a country alone counts only while no subdivision
    /// of it is in the window (each keeps its own time, so a country-only
    /// sighting never keeps a subdivision alive, nor the reverse).
    fn regions(&self) -> u32 {
        // Sorted countries that have a subdivision here: O(n log n) in the
        // values a key holds, whatever its `maxretry`.
        let mut with_sub: SmallVec<[u64; 8]> = self
            .values
            .iter()
            .filter(|(v, _)| !v.is_parent_only())
            .map(|(v, _)| v.parent())
            .collect();
        with_sub.sort_unstable();
        let alone = self
            .values
            .iter()
            .filter(|(v, _)| v.is_parent_only() && with_sub.binary_search(&v.parent()).is_err())
            .count();
        (with_sub.len() + alone) as u32
    }
}

impl Counter for DistinctValues {
    fn add(&mut self, sec: u32, value: Option<TextKey>, findtime: u32, nested: bool) -> u32 {
        let count = |d: &DistinctValues| match nested {
            true => d.regions(),
            false => d.values.len() as u32,
        };
        let Some(value) = value else {
            return count(self);
        };
        let end = self.newest().max(sec);
        if expired(sec, end, findtime) {
            return count(self);
        }
        self.values.retain(|(_, s)| !expired(*s, end, findtime));
        match self.values.iter_mut().find(|(v, _)| *v == value) {
            Some((_, s)) => *s = (*s).max(sec),
            None => self.values.push((value, sec)),
        }
        count(self)
    }

    fn live(&self, now: u32, findtime: u32) -> u32 {
        self.values
            .iter()
            .filter(|(_, s)| !expired(*s, now, findtime))
            .count() as u32
    }

    fn newest(&self) -> u32 {
        self.values.iter().map(|(_, s)| *s).max().unwrap_or(0)
    }

    fn oldest(&self) -> u32 {
        self.values.iter().map(|(_, s)| *s).min().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl SlidingWindow {
        fn add_at(&mut self, sec: u32, findtime: u32) -> u32 {
            self.add(sec, None, findtime, false)
        }
    }

    impl DistinctValues {
        fn add_str(&mut self, v: &str, sec: u32, findtime: u32) -> u32 {
            let v = v.bytes().fold(0u128, |h, b| h * 257 + b as u128);
            self.add(
                sec,
                Some(super::super::fingerprint::of_addr(v)),
                findtime,
                false,
            )
        }

        fn add_region(&mut self, country: &str, sub: Option<&str>, sec: u32) -> u32 {
            let v = super::super::fingerprint::nested(country.as_bytes(), sub.map(str::as_bytes));
            self.add(sec, Some(v), 300, true)
        }
    }

    #[test]
    fn window_is_half_open_findtime() {
        let mut w = SlidingWindow::default();
        assert_eq!(w.add_at(100, 60), 1);
        assert_eq!(w.add_at(159, 60), 2); // 159 - 100 = 59 < 60: inside
        assert_eq!(w.add_at(160, 60), 2); // 100 drops out
        assert_eq!(w.add_at(160, 60), 3);
        assert_eq!(w.oldest(), 159);
    }

    #[test]
    fn out_of_order_and_late_lines() {
        let mut w = SlidingWindow::default();
        w.add_at(200, 60);
        assert_eq!(w.add_at(190, 60), 2); // late but inside: counted in its own second
        assert_eq!(w.add_at(195, 60), 3);
        assert_eq!(
            w.buckets.iter().map(|b| b.sec).collect::<Vec<_>>(),
            vec![190, 195, 200]
        );
        assert_eq!(w.add_at(140, 60), 3); // 200 - 140 = 60: too late, dropped
        assert_eq!(w.add_at(190, 60), 4); // same second as an existing bucket
    }

    #[test]
    fn distinct_counts_values_in_window() {
        let mut d = DistinctValues::default();
        assert_eq!(d.add_str("a", 10, 300), 1);
        assert_eq!(d.add_str("a", 11, 300), 1);
        assert_eq!(d.add_str("b", 12, 300), 2);
        assert_eq!(d.add_str("c", 310, 300), 3); // a@11 and b@12 are still inside (299, 298 < 300)
        assert_eq!(d.add_str("d", 312, 300), 2); // a and b out
    }

    #[test]
    fn a_country_alone_is_not_a_region_apart_from_its_subdivisions() {
        let mut d = DistinctValues::default();
        assert_eq!(d.add_region("US", None, 10), 1);
        assert_eq!(d.add_region("US", Some("CA"), 11), 1); // replaces US
        assert_eq!(d.add_region("US", None, 12), 1);
        assert_eq!(d.add_region("US", Some("MA"), 13), 2);
        assert_eq!(d.add_region("GB", Some("ENG"), 14), 3);
        assert_eq!(d.add_region("GB", None, 15), 3);
        assert_eq!(d.add_region("JP", None, 16), 4);
        // A country-only sighting does not keep a subdivision in the window.
        let mut d = DistinctValues::default();
        assert_eq!(d.add_region("US", Some("CA"), 0), 1);
        assert_eq!(d.add_region("US", None, 250), 1);
        assert_eq!(d.add_region("US", Some("MA"), 400), 1); // CA is out (300 s)
    }

    #[test]
    fn inline_buckets_are_small() {
        assert_eq!(std::mem::size_of::<SlidingWindow>(), 24);
    }
}
