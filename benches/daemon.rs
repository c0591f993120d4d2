//! Benchmarks of the live daemon (the real binary, real files):
//!
//! 1. restoring 100,000 persisted bans at start (store load + ledger + one batch);
//! 2. latency from appending the threshold line to the decision, p50/p99 over
//!    300 trials (the decision time is the `ban` line the daemon logs);
//! 3. CPU use of the daemon while a writer appends 100,000 (then
//!    1,000,000) lines/s for 5 s, and whether every line was read.
//!
//! `cargo bench --bench daemon`. Figures go to stdout; nothing asserts on time.

#[path = "support/shared.rs"]
mod shared;

use portcullis::decide::{Ban, Ledger};
use portcullis::parse::addr::NetSet;
use portcullis::state::{Store, Table};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn tmp(tag: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("portcullis-bench-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(p.join("conf/jails.d")).unwrap();
    std::fs::create_dir_all(p.join("conf/filters.d")).unwrap();
    std::fs::create_dir_all(p.join("logs")).unwrap();
    p
}

fn restore_100k() {
    let dir = tmp("restore");
    let now = 1_800_000_000;
    shared::store_with_bans(&dir.join("state"), 100_000, now);
    let t = Instant::now();
    let store = Store::open(&dir.join("state")).unwrap();
    let bans: Vec<(String, Ban)> = store.load(Table::Bans).unwrap();
    let mut ledger = Ledger::new(NetSet::default(), vec![], 300);
    let active = ledger.restore(bans, vec![], now + 1);
    let batch: Vec<portcullis::act::Change> = active
        .into_iter()
        .map(portcullis::act::Change::Add)
        .collect();
    let elapsed = t.elapsed();
    assert_eq!(batch.len(), 100_000);
    println!(
        "restore: 100,000 persisted bans loaded and ready to re-apply in {:.0} ms",
        elapsed.as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&dir);
}

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(dir: &Path, maxretry: u32) -> Daemon {
    let d = dir.display();
    std::fs::write(
        dir.join("conf/portcullis.toml"),
        format!("state_dir = \"{d}/state\"\ncontrol_socket = \"{d}/ctl.sock\"\nmax_bans_per_minute = 100000\n[defaults]\nformat = \"combined\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("conf/filters.d/f.toml"), "[auth]\nstatus = 401\n").unwrap();
    std::fs::write(
        dir.join("conf/jails.d/j.toml"),
        format!("[auth]\nfilter = \"auth\"\nlogpath = \"{d}/logs/access.log\"\nmaxretry = {maxretry}\nfindtime = \"1h\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("logs/access.log"), "").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(dir.join("conf"))
        .env("PORTCULLIS_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let daemon = Daemon {
        child,
        dir: dir.to_path_buf(),
    };
    let sock = dir.join("ctl.sock");
    let t = Instant::now();
    // Ready when the engine answers, not merely when the socket exists.
    let ready = || {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["status", "--socket"])
            .arg(&sock)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    while !ready() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    daemon
}

fn line(ip: std::net::Ipv4Addr, status: u16) -> String {
    format!(
        "{ip} - - [22/Nov/2026:08:00:00 +0000] \"POST /v1/login HTTP/1.1\" {status} 0 \"-\" \"bench\"\n"
    )
}

fn latency() {
    let dir = tmp("latency");
    let mut daemon = start(&dir, 1);
    let stderr = daemon.child.stderr.take().unwrap();
    let rx = shared::bans_logged(stderr);
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("logs/access.log"))
        .unwrap();
    let mut samples = Vec::new();
    for i in 0..300u32 {
        let ip = std::net::Ipv4Addr::from(0xc612_0000 + i);
        let t0 = SystemTime::now();
        log.write_all(line(ip, 401).as_bytes()).unwrap();
        let want = ip.to_string();
        loop {
            let (target, at) = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("a ban within 5 s");
            if target == want {
                samples.push(at.duration_since(t0).unwrap_or_default());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    shared::print_latency("append threshold line -> decision logged", &mut samples);
}

fn cpu_at(rate: u64) {
    let dir = tmp("cpu");
    let daemon = start(&dir, 1_000_000);
    let pid = daemon.child.id();
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("logs/access.log"))
        .unwrap();
    let (secs, batch) = (5u64, (rate / 100).max(1_000));
    let batch_text: String = (0..batch)
        .map(|i| line(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32), 401))
        .collect();
    let c0 = shared::cpu_ticks(pid);
    let t0 = Instant::now();
    let mut written = 0u64;
    while written < secs * rate {
        log.write_all(batch_text.as_bytes()).unwrap();
        written += batch;
        let due = Duration::from_secs_f64(written as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let wall = t0.elapsed();
    // Let the daemon finish what was written, then read its counters.
    std::thread::sleep(Duration::from_millis(500));
    let c1 = shared::cpu_ticks(pid);
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["status", "auth", "--json", "--socket"])
        .arg(dir.join("ctl.sock"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let read = status["jails"][0]["lines"].as_u64().unwrap();
    let cpu = (c1 - c0) as f64 / ticks_per_sec;
    println!(
        "cpu: writer appended {written} lines in {:.2} s ({:.0} lines/s); daemon used {:.2} s CPU = {:.1}% of one core; lines read {read} (dropped {})",
        wall.as_secs_f64(),
        written as f64 / wall.as_secs_f64(),
        cpu,
        100.0 * cpu / (wall.as_secs_f64() + 0.5),
        written - read
    );
}

fn main() {
    restore_100k();
    latency();
    cpu_at(100_000);
    cpu_at(1_000_000);
}
