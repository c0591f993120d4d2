//! The cost of geo enrichment, end to end as a user times it: `portcullis
//! replay` (the real binary, a real file) over 1,000,000 lines of the seed's
//! `api_audit` format whose clients are public addresses (the generated
//! log's 10/8 clients moved to 81/8, 40,000 of them), with and without the
//! region jail:
//!
//! - with: the replay bench's five jails plus `leaked-api-key-regions`
//!   (`distinct = "region"` over a GeoLite2-City database), so every line
//!   with an API key is enriched;
//! - without enrichment, the same six jails with the sixth counting
//!   `distinct = "client"` instead (the same jail, no lookups): the cost of
//!   enrichment itself;
//! - and the five jails alone: what the sixth jail costs in all.
//!
//! The three are run in turn, best of 5 each, so that a busy moment of a
//! shared machine does not fall on one of them only.
//!
//! Needs the databases `.ci/run` fetches (`$PORTCULLIS_GEOIP_DIR`, default
//! `/var/cache/portcullis-ci/geoip`). `cargo bench --bench geo`. Figures go
//! to stdout; nothing is asserted on time.

#[path = "support/genlog.rs"]
#[allow(dead_code)] // `generate` (combined) is the replay bench's
mod genlog;

use std::path::{Path, PathBuf};
use std::time::Instant;

const FIVE: [&str; 5] = [
    "auth-bruteforce",
    "scanner",
    "rate-limit-flood",
    "server-error-probing",
    "leaked-api-key",
];

/// The wall time of one `portcullis replay` with `jails`, and its decisions.
fn replay(conf: &Path, log: &Path, threads: usize, jails: &[&str]) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut decisions = 0;
    for _ in 0..1 {
        let t = Instant::now();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["replay", "--json", "--config"])
            .arg(conf)
            .args(["--threads", &threads.to_string()])
            .args(jails.iter().flat_map(|j| ["--jail", j]))
            .arg(log)
            .output()
            .unwrap();
        best = best.min(t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        decisions = out.stdout.split(|&b| b == b'\n').count() - 2;
    }
    (best, decisions)
}

fn main() {
    let geo = PathBuf::from(
        std::env::var("PORTCULLIS_GEOIP_DIR")
            .unwrap_or_else(|_| "/var/cache/portcullis-ci/geoip".into()),
    );
    let city = geo.join("GeoLite2-City.mmdb");
    if !city.is_file() {
        println!(
            "geo bench: no {} (run .ci/run's fetch, or set PORTCULLIS_GEOIP_DIR)",
            city.display()
        );
        return;
    }
    let n = 1_000_000;
    let mut log = Vec::new();
    genlog::generate_api_audit(n, &mut log);
    // Public clients: every line starting "10." becomes "81.".
    let mut at_start = true;
    for i in 0..log.len() {
        if at_start && log[i..].starts_with(b"10.") {
            log[i] = b'8';
            log[i + 1] = b'1';
        }
        at_start = log[i] == b'\n';
    }
    let dir = std::env::temp_dir().join(format!("portcullis-bench-geo-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let log_path = dir.join("api.log");
    std::fs::write(&log_path, &log).unwrap();
    // The repository's config with a [geoip] section.
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let conf = dir.join("conf");
    for sub in ["jails.d", "filters.d"] {
        std::fs::create_dir_all(conf.join(sub)).unwrap();
        for e in std::fs::read_dir(repo.join(sub)).unwrap() {
            let p = e.unwrap().path();
            std::fs::copy(&p, conf.join(sub).join(p.file_name().unwrap())).unwrap();
        }
    }
    // `[geoip]` goes after the main file's top-level keys, before its first table.
    let main = std::fs::read_to_string(repo.join("portcullis.toml")).unwrap();
    let (head, rest) = main.split_once("\n[firewall]").unwrap();
    std::fs::write(
        conf.join("portcullis.toml"),
        format!(
            "{head}\n[geoip]\ncountry_db = \"{}\"\n\n[firewall]{rest}",
            city.display()
        ),
    )
    .unwrap();
    // The region jail as shipped, and the same jail counting clients.
    let bundled = std::fs::read_to_string(repo.join("jails.d/api-host.toml")).unwrap();
    let regions = bundled
        .split_once("[leaked-api-key-regions]")
        .unwrap()
        .1
        .to_string();
    std::fs::write(
        conf.join("jails.d/bench.toml"),
        format!(
            "[leaked-api-key-clients]{}",
            regions.replace("distinct = \"region\"", "distinct = \"client\"")
        ),
    )
    .unwrap();
    let with: Vec<&str> = FIVE
        .iter()
        .copied()
        .chain(["leaked-api-key-regions"])
        .collect();
    let without: Vec<&str> = FIVE
        .iter()
        .copied()
        .chain(["leaked-api-key-clients"])
        .collect();
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    for threads in [1, cores] {
        let mut best = [(f64::MAX, 0); 3];
        for _ in 0..5 {
            for (b, jails) in best.iter_mut().zip([&with[..], &without[..], &FIVE[..]]) {
                let (t, d) = replay(&conf, &log_path, threads, jails);
                if t < b.0 {
                    *b = (t, d);
                }
            }
        }
        let [(enriched, d1), (plain6, d2), (plain5, d3)] = best;
        let rate = |t: f64| n as f64 / t / 1e6;
        println!(
            "portcullis replay, api_audit with public clients, {n} lines, {threads} thread(s), best of 5: \
             + leaked-api-key-regions (every keyed line enriched, GeoLite2-City) {:.2} M lines/s ({d1} decisions) \
             = {:.0} % of the same jail counting clients ({:.2} M lines/s, {d2} decisions), \
             {:.0} % of the five jails alone ({:.2} M lines/s, {d3} decisions)",
            rate(enriched),
            100.0 * plain6 / enriched,
            rate(plain6),
            100.0 * plain5 / enriched,
            rate(plain5),
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
