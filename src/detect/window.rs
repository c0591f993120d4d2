//! Per-key counters: matches in a sliding window, or distinct values.
//!
//! Both are exact at one-second resolution, the resolution of nginx's
//! `$time_local`. A key's window ends at the newest event time seen for it;
//! an event is inside when `end - t < findtime` (a half-open span of exactly
//! `findtime` seconds). Out-of-order lines count in their own second if they
//! still fall inside the window, and are dropped as late otherwise.

use smallvec::SmallVec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bucket {
    sec: u32,
    count: u32,
}

/// Match counts per second, oldest first. Two seconds fit inline, so a key
/// seen once (the common case under a spoofed flood) costs no heap.
#[derive(Clone, Debug, Default)]
pub struct SlidingWindow {
    total: u32,
    buckets: SmallVec<[Bucket; 2]>,
}

/// Whether second `sec` is outside a window of `findtime` seconds ending at `end`.
fn expired(sec: u32, end: u32, findtime: u32) -> bool {
    end - sec.min(end) >= findtime
}

impl SlidingWindow {
    /// Records one match at `sec`; returns the count inside the window.
    pub fn add(&mut self, sec: u32, findtime: u32) -> u32 {
        let end = self.newest().max(sec);
        if expired(sec, end, findtime) {
            return self.total;
        }
        match self.buckets.last_mut() {
            Some(b) if b.sec == sec => b.count += 1,
            Some(b) if b.sec > sec => match self.buckets.binary_search_by_key(&sec, |b| b.sec) {
                Ok(i) => self.buckets[i].count += 1,
                Err(i) => self.buckets.insert(i, Bucket { sec, count: 1 }),
            },
            _ => self.buckets.push(Bucket { sec, count: 1 }),
        }
        self.total += 1;
        let stale = self.buckets.iter().take_while(|b| expired(b.sec, end, findtime)).count();
        if stale > 0 {
            self.total -= self.buckets.drain(..stale).map(|b| b.count).sum::<u32>();
        }
        self.total
    }

    pub fn newest(&self) -> u32 {
        self.buckets.last().map_or(0, |b| b.sec)
    }

    pub fn oldest(&self) -> u32 {
        self.buckets.first().map_or(0, |b| b.sec)
    }
}

/// Distinct values of a field per key, each with the last second it was seen.
/// Holds at most the threshold's number of values: the jail fires at that point.
#[derive(Clone, Debug, Default)]
pub struct DistinctValues {
    values: Vec<(Box<str>, u32)>,
}

impl DistinctValues {
    /// Records `value` at `sec`; returns the number of distinct values inside the window.
    pub fn add(&mut self, value: &str, sec: u32, findtime: u32) -> u32 {
        let end = self.newest().max(sec);
        if expired(sec, end, findtime) {
            return self.values.len() as u32;
        }
        self.values.retain(|(_, s)| !expired(*s, end, findtime));
        match self.values.iter_mut().find(|(v, _)| &**v == value) {
            Some((_, s)) => *s = (*s).max(sec),
            None => self.values.push((value.into(), sec)),
        }
        self.values.len() as u32
    }

    pub fn newest(&self) -> u32 {
        self.values.iter().map(|(_, s)| *s).max().unwrap_or(0)
    }

    pub fn oldest(&self) -> u32 {
        self.values.iter().map(|(_, s)| *s).min().unwrap_or(0)
    }
}

/// One key's state in a jail.
#[derive(Clone, Debug)]
pub enum Counter {
    Window(SlidingWindow),
    Distinct(DistinctValues),
}

impl Counter {
    pub fn newest(&self) -> u32 {
        match self {
            Counter::Window(w) => w.newest(),
            Counter::Distinct(d) => d.newest(),
        }
    }

    pub fn oldest(&self) -> u32 {
        match self {
            Counter::Window(w) => w.oldest(),
            Counter::Distinct(d) => d.oldest(),
        }
    }

    /// Whether nothing it holds can count toward a window ending at `now`.
    pub fn is_stale(&self, now: u32, findtime: u32) -> bool {
        expired(self.newest(), now, findtime)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_is_half_open_findtime() {
        let mut w = SlidingWindow::default();
        assert_eq!(w.add(100, 60), 1);
        assert_eq!(w.add(159, 60), 2); // 159 - 100 = 59 < 60: inside
        assert_eq!(w.add(160, 60), 2); // 100 drops out
        assert_eq!(w.add(160, 60), 3);
        assert_eq!(w.oldest(), 159);
    }

    #[test]
    fn out_of_order_and_late_lines() {
        let mut w = SlidingWindow::default();
        w.add(200, 60);
        assert_eq!(w.add(190, 60), 2); // late but inside: counted in its own second
        assert_eq!(w.add(195, 60), 3);
        assert_eq!(w.buckets.iter().map(|b| b.sec).collect::<Vec<_>>(), vec![190, 195, 200]);
        assert_eq!(w.add(140, 60), 3); // 200 - 140 = 60: too late, dropped
        assert_eq!(w.add(190, 60), 4); // same second as an existing bucket
    }

    #[test]
    fn distinct_counts_values_in_window() {
        let mut d = DistinctValues::default();
        assert_eq!(d.add("a", 10, 300), 1);
        assert_eq!(d.add("a", 11, 300), 1);
        assert_eq!(d.add("b", 12, 300), 2);
        assert_eq!(d.add("c", 310, 300), 3); // a@11 and b@12 are still inside (299, 298 < 300)
        assert_eq!(d.add("d", 312, 300), 2); // a and b out
    }

    #[test]
    fn inline_buckets_are_small() {
        assert!(std::mem::size_of::<Counter>() <= 32, "{}", std::mem::size_of::<Counter>());
    }
}
