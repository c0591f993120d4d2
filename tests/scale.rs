//! Linear cost in the number of bans: 200,000 distinct clients each cross
//! their threshold once (parse, detect, and the ledger's decision per line),
//! and the time for the last 10 % of bans must be within 2x of the first
//! 10 %. A path that rescans what was already banned (the "already fired"
//! map did, once) makes the last tenth about ten times dearer than the first.
//!
//! Timing ratios on a shared machine are noisy, so the experiment runs up to
//! three times and passes when one run is within bounds; a quadratic path
//! fails all three by a wide margin. (The firewall's share of the same
//! property, `plan` over a growing set of held addresses, is a unit test in
//! `src/act/firewall.rs`.)

use portcullis::config::{Config, ConfigFiles, SourceFile};
use portcullis::decide::{Ledger, Policy, Verdict};
use portcullis::parse::addr::NetSet;
use portcullis::replay::{Replay, Selection};
use std::time::{Duration, Instant};

const BANS: u32 = 200_000;

fn config() -> Config {
    let files = ConfigFiles {
        main: SourceFile {
            name: "portcullis.toml".into(),
            text: "[defaults]\nformat = \"combined\"\nmax_tracked = 1000000\n".into(),
        },
        main_local: None,
        ignored: Vec::new(),
        jails: vec![SourceFile {
            name: "jails.toml".into(),
            text: "[auth]\nfilter = \"auth\"\nmaxretry = 1\nfindtime = \"1h\"\nbantime = \"1h\"\n"
                .into(),
        }],
        filters: vec![SourceFile {
            name: "f.toml".into(),
            text: "[auth]\nstatus = 401\n".into(),
        }],
    };
    Config::load(&files).unwrap()
}

/// Time per tenth of the bans, one run.
fn run(config: &Config) -> Vec<Duration> {
    let mut replay = Replay::new(config, &Selection::default()).unwrap();
    let source = replay.add_source("scale").unwrap();
    let mut ledger = Ledger::new(NetSet::default(), Vec::new(), usize::MAX);
    let policy = Policy {
        bantime: Duration::from_secs(3600),
        factor: 1.0,
        max: None,
        dry_run: false,
    };
    let now = 1_795_334_400; // 2026-11-22T08:00:00Z, the lines' time
    let mut tenths = Vec::new();
    let mut banned = 0u32;
    let mut offset = 0u64;
    for tenth in 0..10u32 {
        let t = Instant::now();
        for i in tenth * BANS / 10..(tenth + 1) * BANS / 10 {
            let ip = std::net::Ipv4Addr::from(0x0a00_0000 + i);
            let line = format!(
                "{ip} - - [22/Nov/2026:08:00:00 +0000] \"POST /login HTTP/1.1\" 401 0 \"-\" \"s\""
            );
            replay.line(source, offset, line.as_bytes());
            offset += line.len() as u64 + 1;
            for d in replay.take_decisions() {
                if matches!(ledger.decide(d, &policy, now), Verdict::Banned(_)) {
                    banned += 1;
                }
            }
            // The store writes the engine would commit, dropped here.
            let _ = ledger.take_writes();
        }
        tenths.push(t.elapsed());
    }
    assert_eq!(banned, BANS, "every client is banned once");
    assert_eq!(ledger.stats().active, BANS as usize);
    tenths
}

#[test]
fn the_last_bans_cost_what_the_first_did() {
    let config = config();
    let mut runs = Vec::new();
    for _ in 0..3 {
        let tenths = run(&config);
        let (first, last) = (tenths[0], tenths[9]);
        let ratio = last.as_secs_f64() / first.as_secs_f64();
        eprintln!(
            "{BANS} bans: first tenth {:.0} ms, last tenth {:.0} ms, ratio {ratio:.2}",
            first.as_secs_f64() * 1e3,
            last.as_secs_f64() * 1e3
        );
        runs.push(ratio);
        if ratio <= 2.0 {
            return;
        }
    }
    panic!("the cost per ban grows with the number of bans: last/first tenth {runs:?}");
}
