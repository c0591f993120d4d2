//! Fleet mode against redis-server on loopback, with the real daemons:
//!
//! 1. lines/s per host with every line counted in the fleet (a `scope =
//!    "fleet"` jail whose filter matches every line), against the same host
//!    counting locally only; the fleet run is timed until Redis has every count;
//! 2. publish-to-applied latency of decisions from host A to host B, p50/p99
//!    over 300 bans.
//!
//! `cargo bench --bench fleet`. Needs redis-server.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "portcullis-fleetbench-{tag}-{}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    for sub in ["conf/jails.d", "conf/filters.d", "logs"] {
        std::fs::create_dir_all(d.join(sub)).unwrap();
    }
    d
}

fn daemon(d: &std::path::Path, fleet: Option<(u16, &str, &str)>, scope: &str) -> Proc {
    let p = d.display();
    let fleet = fleet.map_or(String::new(), |(port, name, host)| {
        format!(
            "[fleet]\nurl = \"redis://127.0.0.1:{port}/0\"\nname = \"{name}\"\nhost = \"{host}\"\n"
        )
    });
    std::fs::write(
        d.join("conf/portcullis.toml"),
        format!("state_dir = \"{p}/state\"\ncontrol_socket = \"{p}/ctl.sock\"\n{fleet}[defaults]\nformat = \"combined\"\n"),
    )
    .unwrap();
    std::fs::write(d.join("conf/filters.d/f.toml"), "[auth]\nstatus = 401\n").unwrap();
    std::fs::write(
        d.join("conf/jails.d/j.toml"),
        format!("[auth]\nfilter = \"auth\"\nlogpath = \"{p}/logs/access.log\"\nmaxretry = 1000000000\nfindtime = \"10m\"\nscope = \"{scope}\"\n"),
    )
    .unwrap();
    std::fs::write(d.join("logs/access.log"), "").unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(d.join("conf"))
        .env("PORTCULLIS_LOG", "warn")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while status(d).is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child)
}

fn status(d: &std::path::Path) -> Option<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["status", "--json", "--socket"])
        .arg(d.join("ctl.sock"))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

/// Appends `n` attack lines from 5,000 addresses and returns the seconds until `done` holds.
fn run(d: &std::path::Path, n: u64, done: impl Fn(&serde_json::Value) -> bool) -> f64 {
    let lines: String = (0..n)
        .map(|i| {
            format!(
                "{} - - [22/Nov/2026:08:{:02}:{:02} +0000] \"POST /login HTTP/1.1\" 401 0 \"-\" \"b\"\n",
                std::net::Ipv4Addr::from(0x0a00_0000 + (i % 5000) as u32),
                (i / 60_000) % 60,
                (i / 1000) % 60
            )
        })
        .collect();
    let t = Instant::now();
    std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("logs/access.log"))
        .unwrap();
    std::fs::write(d.join("logs/access.log"), lines).unwrap();
    loop {
        if status(d).is_some_and(|s| done(&s)) {
            return t.elapsed().as_secs_f64();
        }
        assert!(t.elapsed() < Duration::from_secs(120), "did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn main() {
    let port = free_port();
    let _redis = Proc(
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server"),
    );
    std::thread::sleep(Duration::from_millis(300));
    let name = format!("bench{}", std::process::id());
    let n = 500_000u64;

    let local_dir = dir("local");
    let local = daemon(&local_dir, None, "local");
    let local_s = run(&local_dir, n, |s| {
        s["jails"][0]["lines"].as_u64() == Some(n)
    });
    drop(local);

    let fleet_dir = dir("fleet");
    let fleet = daemon(&fleet_dir, Some((port, &name, "f")), "fleet");
    let read_at = std::cell::Cell::new(None::<Instant>);
    let t0 = Instant::now();
    let fleet_s = run(&fleet_dir, n, |s| {
        if read_at.get().is_none() && s["jails"][0]["lines"].as_u64() == Some(n) {
            read_at.set(Some(Instant::now()));
        }
        s["fleet"]["counted"].as_u64() == Some(n)
    });
    if let Some(r) = read_at.get() {
        println!(
            "fleet run: all lines read and counted locally after {:.2} s, all counts in Redis after {:.2} s",
            (r - t0).as_secs_f64(),
            fleet_s
        );
    }
    drop(fleet);
    println!(
        "throughput, {n} matching lines: local-only {:.0} lines/s, fleet-counted {:.0} lines/s ({:.0}% of local)",
        n as f64 / local_s,
        n as f64 / fleet_s,
        100.0 * local_s / fleet_s
    );

    let (a_dir, b_dir) = (dir("a"), dir("b"));
    let _a = daemon(&a_dir, Some((port, &name, "a")), "local");
    let _b = daemon(&b_dir, Some((port, &name, "b")), "local");
    let bans = 300u32;
    for i in 0..bans {
        let ip = std::net::Ipv4Addr::from(0xc612_0000 + i).to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["ban", &ip, "--jail", "auth", "--socket"])
            .arg(a_dir.join("ctl.sock"))
            .output()
            .unwrap();
        assert!(out.status.success());
    }
    let t = Instant::now();
    let lags = loop {
        let s = status(&b_dir).unwrap();
        if s["fleet"]["applied"].as_u64() == Some(bans as u64) {
            break s["fleet"]["recent_lags_ms"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_i64().unwrap())
                .collect::<Vec<_>>();
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not all bans applied"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut lags = lags;
    lags.sort();
    let pct = |p: f64| lags[((lags.len() as f64 * p) as usize).min(lags.len() - 1)];
    println!(
        "publish-to-applied over {} bans (host a -> Redis stream -> host b ledger): p50 {} ms, p99 {} ms, max {} ms",
        lags.len(),
        pct(0.5),
        pct(0.99),
        lags.last().unwrap()
    );
    for d in [local_dir, fleet_dir, a_dir, b_dir] {
        let _ = std::fs::remove_dir_all(d);
    }
}
