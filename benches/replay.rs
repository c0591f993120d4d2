//! Benchmarks of the offline pipeline (parse + detect), single-threaded:
//!
//! 1. lines/s of replay over a 1,000,000-line nginx `combined` log with five jails;
//! 2. peak heap with 1,000,000 distinct tracked addresses in one jail.
//!
//! `cargo bench --bench replay`. Figures go to stdout; nothing is asserted on time.

#[path = "support/genlog.rs"]
mod genlog;

use portcullis::config::{Config, embedded};
use portcullis::replay::{Replay, Selection};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

/// Counts live and peak heap bytes.
struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let now = LIVE.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new > l.size() {
                let now = LIVE.fetch_add(new - l.size(), Ordering::Relaxed) + new - l.size();
                PEAK.fetch_max(now, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(l.size() - new, Ordering::Relaxed);
            }
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

const FIVE_JAILS: [&str; 5] = [
    "auth-bruteforce",
    "scanner",
    "rate-limit-flood",
    "server-error-probing",
    "bad-user-agent",
];

fn throughput() {
    let n = 1_000_000;
    let mut log = Vec::new();
    genlog::generate(n, &mut log);
    let config = Config::load(&embedded::files()).expect("built-in config");
    let sel = Selection {
        jails: FIVE_JAILS.iter().map(|s| s.to_string()).collect(),
        format: Some("combined".into()),
        wrap: None,
    };
    let mut best = f64::MAX;
    let mut decisions = 0;
    for _ in 0..5 {
        let mut replay = Replay::new(&config, &sel).unwrap();
        let t = Instant::now();
        let mut d = 0;
        replay.read("bench", &log[..], |_, _| d += 1).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        decisions = d;
        let s = replay.summary();
        assert_eq!(s.formats["combined"].parsed, n as u64, "every line parses");
    }
    println!(
        "replay, 5 jails, {n} combined lines ({:.0} MB): best of 5 {:.3} s = {:.0} lines/s ({:.0} MB/s), {decisions} decisions",
        log.len() as f64 / 1e6,
        best,
        n as f64 / best,
        log.len() as f64 / 1e6 / best
    );
}

fn tracked_memory() {
    let n = 1_000_000u32;
    let main = "[defaults]\nformat = \"combined\"\nmax_tracked = 2000000\n";
    let files = portcullis::config::ConfigFiles {
        main: portcullis::config::SourceFile {
            name: "bench.toml".into(),
            text: main.into(),
        },
        jails: vec![portcullis::config::SourceFile {
            name: "jails.toml".into(),
            text: "[auth]\nfilter = \"auth\"\nmaxretry = 100\nfindtime = \"1h\"\n".into(),
        }],
        filters: vec![portcullis::config::SourceFile {
            name: "f.toml".into(),
            text: "[auth]\nstatus = 401\n".into(),
        }],
    };
    let config = Config::load(&files).unwrap();
    let mut replay = Replay::new(&config, &Selection::default()).unwrap();
    let source = replay.add_source("bench").unwrap();
    let mut line = String::new();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    for i in 0..n {
        use std::fmt::Write;
        line.clear();
        let ip = std::net::Ipv4Addr::from(0x0b00_0000u32 + i);
        write!(
            line,
            "{ip} - - [22/Nov/2026:08:00:00 +0000] \"POST /v1/login HTTP/1.1\" 401 0 \"-\" \"x\""
        )
        .unwrap();
        replay.line(source, 0, line.as_bytes());
    }
    let s = replay.summary();
    let tracked = s.jails["auth"].tracked;
    assert_eq!(tracked, n as usize);
    let peak = PEAK.load(Ordering::Relaxed) - before;
    let live = LIVE.load(Ordering::Relaxed) - before;
    println!(
        "{tracked} distinct tracked addresses: peak heap {:.1} MB, live {:.1} MB ({:.0} bytes/key live)",
        peak as f64 / 1e6,
        live as f64 / 1e6,
        live as f64 / tracked as f64
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing useful. Run both ways.
    throughput();
    tracked_memory();
}
