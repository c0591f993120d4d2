//! The cost of geo enrichment, end to end as a user times it: `portcullis
//! replay` (the real binary, a real file) over 1,000,000 lines of the seed's
//! `api_audit` format whose clients are public addresses (the generated
//! log's 10/8 clients moved to 81/8, 40,000 of them), with and without the
//! region jail:
//!
//! - without enrichment: the replay bench's five jails;
//! - with: the same five plus `leaked-api-key-regions` (`distinct =
//!   "region"` over a GeoLite2-City database), so every line with an API key
//!   is enriched.
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

/// Best of 3 wall times of `portcullis replay` with `jails`, and its decisions.
fn replay(conf: &Path, log: &Path, threads: usize, jails: &[&str]) -> (f64, usize) {
    let mut best = f64::MAX;
    let mut decisions = 0;
    for _ in 0..3 {
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
    let mut six: Vec<&str> = FIVE.to_vec();
    six.push("leaked-api-key-regions");
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    for threads in [1, cores] {
        let (plain, d1) = replay(&conf, &log_path, threads, &FIVE);
        let (enriched, d2) = replay(&conf, &log_path, threads, &six);
        println!(
            "portcullis replay, api_audit with public clients, {n} lines, {threads} thread(s): \
             5 jails {:.2} M lines/s ({d1} decisions); + leaked-api-key-regions (every keyed \
             line enriched, GeoLite2-City) {:.2} M lines/s ({d2} decisions) = {:.0} % of it",
            n as f64 / plain / 1e6,
            n as f64 / enriched / 1e6,
            100.0 * plain / enriched
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
