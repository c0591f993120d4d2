//! Pieces several benches use (each bench includes this file with `#[path]`
//! and uses some of it).
#![allow(dead_code)]

use portcullis::decide::Ban;
use portcullis::detect::Target;
use portcullis::state::{Store, Table, Write};
use std::path::Path;
use std::time::Duration;

/// Writes a store at `dir` holding `n` active bans of jail `auth`, on
/// 10.0.0.0 + i, each with an hour left after `now`.
pub fn store_with_bans(dir: &Path, n: u32, now: i64) {
    let store = Store::open(dir).unwrap();
    let writes: Vec<Write> = (0..n)
        .map(|i| {
            let ban = Ban {
                jail: "auth".into(),
                target: Target::parse(&std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
                    .unwrap(),
                since: now,
                expires: Some(now + 3600),
                count: 5,
                offence: 1,
                manual: false,
                incident: None,
                origin: None,
            };
            Write::put(Table::Bans, ban.key(), &ban)
        })
        .collect();
    store.apply(&writes).unwrap();
}

/// Prints `what`'s p50, p99 and max over `samples`.
pub fn print_latency(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "latency ({what}), {} trials: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        samples.len(),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(samples[samples.len() - 1])
    );
}

/// Waits until the daemon's engine answers on `socket` (the socket exists a
/// little earlier); panics after 10 s.
pub fn wait_ready(socket: &Path) {
    let start = std::time::Instant::now();
    while !std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["status", "--socket"])
        .arg(socket)
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One failed login (`combined`) from each of `n` distinct addresses
/// (198.18.0.0 upwards, the benchmarking range).
pub fn offender_lines(n: u32) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{} - - [22/Nov/2026:08:00:00 +0000] \"POST /login HTTP/1.1\" 401 0 \"-\" \"b\"\n",
                std::net::Ipv4Addr::from(0xc612_0000 + i)
            )
        })
        .collect()
}

/// The (target, time) of each ban the daemon logs on `stderr` (`<rfc3339>
/// WARN ban jail=J target=IP ...`), as they come.
pub fn bans_logged(
    stderr: std::process::ChildStderr,
) -> std::sync::mpsc::Receiver<(String, std::time::SystemTime)> {
    use std::io::BufRead;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if let (Some(ts), Some(pos)) = (l.split_whitespace().next(), l.find("target=")) {
                let target = l[pos + 7..]
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_string();
                if let Ok(t) = chrono::DateTime::parse_from_rfc3339(ts) {
                    let _ = tx.send((target, std::time::SystemTime::from(t)));
                }
            }
        }
    });
    rx
}

/// CPU time (user + system, in clock ticks) process `pid` has used.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}
