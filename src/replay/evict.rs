//! Dropping parsed chunks from the caches before their buffers go back to
//! the thread that parsed them, when the two threads share no cache and
//! that makes the next parse faster than the dropping costs.
//!
//! Why: the detecting thread reads every event a parser thread wrote. On
//! cores that share a last-level cache that costs little. On cores that do
//! not (two CCDs of an AMD EPYC, two sockets; this machine's vCPUs in its
//! slower phases, where a cache line takes 150-180 ns from one to the
//! other), each line the detecting thread read stays shared in its cache,
//! and when the parser thread writes the buffer again every one of those
//! lines waits for the other core to give it up. Flushing them right after
//! reading (`clflushopt`, asynchronous) turns those waits into plain misses
//! to memory, which the parser's prefetchers hide. Measured on this machine,
//! two threads, the seed API log of 1,000,000 lines, interleaved runs
//! classed by a core-to-core probe: dropping every chunk took the median
//! with the cores far apart from 240 to 191 ms, but with them near from
//! 171 to 179 ms (the parser's writes then go to memory, where they were
//! in the shared cache).
//!
//! So whether to drop is measured, not assumed: per parser thread, the
//! time it takes to parse a line into dropped buffers and into kept ones,
//! and the detecting thread's time to drop them, each a running average.
//! The cheaper way is used, and the other tried on one chunk in
//! [`EXPLORE_EVERY`] (or [`EXPLORE_RARELY`]), so that a change of placement
//! (the scheduler moving a thread, the host moving a vCPU) is noticed.
//! Measured so: far 244 -> 200 ms, near 175 -> 175 ms (medians of 74 and
//! 717 interleaved runs). Decisions never depend on it: it only changes
//! where memory is cached.

use crate::prefetch::LINE;
use std::time::Duration;

/// One chunk in this many is handled the way the estimates say is slower,
/// to keep that estimate current, while the two are within a quarter of
/// each other. The cost is bounded by a sixteenth of their difference.
const EXPLORE_EVERY: u32 = 16;

/// ... and one in this many when they are further apart: each try then
/// costs more, and one try moves the estimate more (see
/// [`Eviction::parsing_took`]). Measured: with the cores far apart, kept
/// buffers took 400-600 ns a line to parse and dropped ones 240-300; one
/// chunk in 16 kept cost 6 ms of a 191 ms replay.
const EXPLORE_RARELY: u32 = 32;

/// Chunks of each way measured before the estimates are trusted.
const WARM_UP: u32 = 3;

/// Per parser thread: what dropping its chunks costs and saves.
#[derive(Debug, Default)]
pub(super) struct Eviction {
    /// Nanoseconds a line to parse into buffers that were dropped.
    dropped: Average,
    /// ... into buffers that were kept (read by the detecting thread last).
    kept: Average,
    /// Nanoseconds a line for the detecting thread to drop a chunk.
    cost: Average,
    /// Chunks decided so far.
    chunks: u32,
}

impl Eviction {
    /// Whether to drop the chunk just counted (parsed by this thread).
    pub fn choose(&mut self) -> bool {
        if !supported() {
            return false;
        }
        self.chunks = self.chunks.wrapping_add(1);
        if self.dropped.samples < WARM_UP || self.kept.samples < WARM_UP {
            // Both ways, alternately, until each has a few measurements.
            return self.chunks.is_multiple_of(2);
        }
        let drop = self.prefers_dropping();
        drop != self.chunks.is_multiple_of(self.explore_every())
    }

    /// Whether dropping is the cheaper way, as measured so far.
    fn prefers_dropping(&self) -> bool {
        self.dropped.ns + self.cost.ns < self.kept.ns
    }

    fn explore_every(&self) -> u32 {
        let (drop, keep) = (self.dropped.ns + self.cost.ns, self.kept.ns);
        if drop.max(keep) > 1.25 * drop.min(keep) {
            EXPLORE_RARELY
        } else {
            EXPLORE_EVERY
        }
    }

    /// The detecting thread took `took` to drop a chunk of `lines` lines.
    pub fn dropping_took(&mut self, took: Duration, lines: usize) {
        self.cost.add(took, lines, 0.25);
    }

    /// The parser thread took `took` to read and parse `lines` lines into
    /// buffers that had been dropped (`dropped`) or kept. A try of the way
    /// not preferred weighs twice a sample of the preferred one: they are
    /// few, and after a change of placement they are what has to move.
    pub fn parsing_took(&mut self, dropped: bool, took: Duration, lines: usize) {
        let tried = dropped != self.prefers_dropping();
        let weight = if tried { 0.5 } else { 0.25 };
        if dropped {
            self.dropped.add(took, lines, weight)
        } else {
            self.kept.add(took, lines, weight)
        }
    }
}

/// A running average of nanoseconds per line.
#[derive(Debug, Default)]
struct Average {
    ns: f64,
    samples: u32,
}

impl Average {
    /// Moves the average `weight` of the way to this sample.
    fn add(&mut self, took: Duration, lines: usize, weight: f64) {
        if lines == 0 {
            return;
        }
        let x = took.as_nanos() as f64 / lines as f64;
        if self.samples == 0 {
            self.ns = x;
        } else {
            // A chunk whose thread was preempted is one sample, not a
            // change of placement: it moves the average by at most as much
            // as a chunk twice the average would.
            let x = x.min(2.0 * self.ns);
            self.ns += (x - self.ns) * weight;
        }
        self.samples = self.samples.saturating_add(1);
    }
}

/// Drops the memory `len` bytes from `p` from every cache (writing back
/// what was modified). A hint in effect: the memory's contents and every
/// result stay the same. `p..p + len` must be memory this process has
/// mapped (a flush, unlike a prefetch, faults on an unmapped address).
pub(super) fn drop_from_caches(p: *const u8, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if supported() {
        let end = p as usize + len;
        let mut at = p as usize;
        while at < end {
            // SAFETY: `at` is inside `p..p + len`, mapped (the caller's
            // contract); `clflushopt` reads and writes no register but its
            // operand, and changes no memory contents.
            unsafe {
                std::arch::asm!(
                    "clflushopt byte ptr [{0}]",
                    in(reg) at,
                    options(nostack, preserves_flags)
                );
            }
            at = (at & !(LINE - 1)) + LINE;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, len);
}

/// Whether this CPU has `clflushopt` (CPUID leaf 7, EBX bit 23): the
/// asynchronous flush. The older `clflush` is ordered with every other
/// flush and store, too slow for this.
fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            // Leaf 7 is asked for only when the CPU reports it.
            use std::arch::x86_64::{__cpuid, __cpuid_count};
            __cpuid(0).eax >= 7 && __cpuid_count(7, 0).ebx & (1 << 23) != 0
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// `chunks` chunks of a million lines each, parsed in `kept` or
    /// `dropped` ns a line and dropped in `cost`, as `e` chooses; how many
    /// it dropped.
    fn run(e: &mut Eviction, chunks: usize, (kept, dropped, cost): (u64, u64, u64)) -> usize {
        let mut drops = 0;
        for _ in 0..chunks {
            let d = e.choose();
            drops += d as usize;
            if d {
                e.dropping_took(ms(cost), 1_000_000);
            }
            e.parsing_took(d, ms(if d { dropped } else { kept }), 1_000_000);
        }
        drops
    }

    /// Whatever it measures, dropping leaves the bytes as they were.
    #[test]
    fn dropping_changes_no_bytes() {
        let v: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        for (start, len) in [(0, 0), (0, 1), (3, 64), (63, 2), (5, 9_000), (0, 10_000)] {
            drop_from_caches(v[start..].as_ptr(), len);
        }
        assert!(
            v.iter()
                .enumerate()
                .all(|(i, &b)| b == (i as u32 * 7) as u8)
        );
    }

    /// Both ways are measured first; then the cheaper one is used on all
    /// but one chunk in [`EXPLORE_EVERY`] (or [`EXPLORE_RARELY`]),
    /// whichever it is.
    #[test]
    fn uses_the_cheaper_way_and_keeps_measuring_the_other() {
        if !supported() {
            let mut e = Eviction::default();
            assert!(
                (0..100).all(|_| !e.choose()),
                "no flush on this CPU: never drop"
            );
            return;
        }
        // Far cores: kept buffers parse at 200 ns a line, dropped at 120,
        // and dropping costs 10: drop. The ways are far apart: the slower
        // is tried one chunk in 32.
        let drops = run(&mut Eviction::default(), 1_600, (200, 120, 10));
        assert!((1_530..1_570).contains(&drops), "dropped {drops} of 1,600");
        // Near cores: dropping saves less than it costs: keep (the ways
        // within a quarter of each other, the slower tried one in 16).
        let drops = run(&mut Eviction::default(), 1_600, (160, 150, 20));
        assert!((80..120).contains(&drops), "dropped {drops} of 1,600");
    }

    /// The placement changes mid-read (the scheduler moved a thread): the
    /// way measured as cheaper from then on is taken within some chunks.
    #[test]
    fn follows_a_change_of_placement() {
        if !supported() {
            return;
        }
        let mut e = Eviction::default();
        assert!(run(&mut e, 800, (100, 120, 10)) < 100, "near: kept");
        run(&mut e, 200, (250, 120, 10));
        assert!(run(&mut e, 800, (250, 120, 10)) > 700, "far: dropped");
    }

    /// One preempted chunk does not flip the choice.
    #[test]
    fn one_slow_chunk_is_not_a_new_placement() {
        let mut a = Average::default();
        for _ in 0..10 {
            a.add(ms(100), 1_000_000, 0.25);
        }
        a.add(ms(100_000), 1_000_000, 0.25);
        assert!(a.ns < 130.0, "{}", a.ns);
    }
}
