//! Syslog sources, end to end on the real binary, through a unix datagram
//! socket as nginx's `access_log syslog:server=unix:...` writes to it:
//!
//! 1. latency: a threshold message sent → the decision in the daemon's log
//!    (its own timestamp), 300 trials;
//! 2. sustained: 100,000 messages/s for 5 s (in bursts of 1,000 every
//!    10 ms), then the messages received, parsed and dropped by the kernel,
//!    and the daemon's CPU.
//!
//! `cargo bench --bench syslog`. Figures go to stdout.

#[path = "support/shared.rs"]
mod shared;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

fn message(ip: std::net::Ipv4Addr, n: u64) -> String {
    format!(
        "<190>Nov 24 02:00:00 web1 api: {ip} - - [24/Nov/2026:02:00:00 +0000] \"POST /v1/login?n={n} HTTP/1.1\" 401 0 \"-\" \"bench\""
    )
}

fn start(dir: &Path, maxretry: u32) -> Child {
    let d = dir.display();
    for sub in ["conf/jails.d", "conf/filters.d"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    std::fs::write(
        dir.join("conf/portcullis.toml"),
        format!("state_dir = \"{d}/state\"\ncontrol_socket = \"{d}/ctl.sock\"\nmax_bans_per_minute = 100000\n[defaults]\nformat = \"combined\"\n"),
    )
    .unwrap();
    std::fs::write(dir.join("conf/filters.d/f.toml"), "[auth]\nstatus = 401\n").unwrap();
    std::fs::write(
        dir.join("conf/jails.d/j.toml"),
        format!("[auth]\nfilter = \"auth\"\nsyslog = \"unix:{d}/syslog.sock\"\nsyslog_tag = \"api\"\nmaxretry = {maxretry}\nfindtime = \"1h\"\n"),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(dir.join("conf"))
        .env("PORTCULLIS_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    shared::wait_ready(&dir.join("ctl.sock"));
    child
}

fn latency(dir: &Path) {
    let mut daemon = start(dir, 1);
    let stderr = daemon.stderr.take().unwrap();
    let rx = shared::bans_logged(stderr);
    let sock = UnixDatagram::unbound().unwrap();
    let path = dir.join("syslog.sock");
    let mut samples = Vec::new();
    for i in 0..300u32 {
        let ip = std::net::Ipv4Addr::from(0xc612_0000 + i);
        let t0 = SystemTime::now();
        sock.send_to(message(ip, i as u64).as_bytes(), &path)
            .unwrap();
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
    shared::print_latency(
        "syslog message (unix socket) -> decision logged",
        &mut samples,
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

fn sustained(dir: &Path, rate: u64) {
    let mut daemon = start(dir, 1_000_000);
    let pid = daemon.id();
    let ticks_per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let sock = UnixDatagram::unbound().unwrap();
    let path = dir.join("syslog.sock");
    let batch = (rate / 100).max(1);
    let msgs: Vec<String> = (0..batch)
        .map(|i| message(std::net::Ipv4Addr::from(0x0a00_0000 + i as u32), i))
        .collect();
    let (c0, t0) = (shared::cpu_ticks(pid), Instant::now());
    let mut sent = 0u64;
    while sent < 5 * rate {
        for m in &msgs {
            // A full socket buffer blocks the sender (unix datagram
            // sockets do not drop for a local sender), like nginx would.
            sock.send_to(m.as_bytes(), &path).unwrap();
        }
        sent += batch;
        let due = Duration::from_secs_f64(sent as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(t0.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let wall = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let c1 = shared::cpu_ticks(pid);
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["status", "auth", "--json", "--socket"])
        .arg(dir.join("ctl.sock"))
        .output()
        .unwrap();
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let src = status["jails"][0]["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["syslog"].is_object())
        .unwrap()
        .clone();
    let cpu = (c1 - c0) as f64 / ticks_per_sec;
    println!(
        "syslog (unix socket): {sent} messages in {:.2} s ({:.0}/s); received {}, parsed {}, dropped by the kernel {}; daemon CPU {:.1}% of one core",
        wall.as_secs_f64(),
        sent as f64 / wall.as_secs_f64(),
        src["syslog"]["received"],
        src["parse"]["parsed"],
        src["syslog"]["dropped"],
        100.0 * cpu / (wall.as_secs_f64() + 0.5),
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
}

fn main() {
    let base = std::env::temp_dir().join(format!("pcbench-syslog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    latency(&base.join("latency"));
    sustained(&base.join("sustained"), 100_000);
    let _ = std::fs::remove_dir_all(&base);
}
