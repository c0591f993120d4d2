//! The bouncer API, end to end on the real binary, as a bouncer sees it:
//!
//! 1. the daemon starts with 100,000 active bans (a store written first) in
//!    a jail that feeds `bouncer_api`; a bouncer's startup poll
//!    (`GET /v1/decisions/stream?startup=true`) over loopback TCP: time from
//!    sending the request to the last byte of the answer, and its size;
//! 2. the steady state: a poll with nothing new, and a poll after one more
//!    ban, with the 100,000 still active (what every bouncer does every
//!    10 s).
//!
//! `cargo bench --bench bouncer`. Figures go to stdout.

#[path = "support/shared.rs"]
mod shared;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const N: u32 = 100_000;
const KEY: &str = "bench-key-0123456789abcdef";

/// One request as a bouncer makes it: (body, time to the last byte).
fn poll(port: u16, who: &str, startup: bool) -> (Vec<u8>, Duration) {
    let t = Instant::now();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let q = if startup { "?startup=true" } else { "" };
    write!(
        s,
        "GET /v1/decisions/stream{q} HTTP/1.1\r\nHost: x\r\nUser-Agent: {who}\r\nX-Api-Key: {KEY}\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let elapsed = t.elapsed();
    let body = out.split_at(memchr_head(&out)).1.to_vec();
    (body, elapsed)
}

fn memchr_head(b: &[u8]) -> usize {
    b.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4
}

fn count_new(body: &[u8]) -> usize {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap();
    v["new"].as_array().unwrap().len()
}

fn main() {
    let dir = std::env::temp_dir().join(format!("pcbench-bouncer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["conf/jails.d", "conf/filters.d", "logs", "state"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let d = dir.display();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    shared::store_with_bans(&dir.join("state"), N, now);
    std::fs::write(dir.join("bouncer.key"), KEY).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        dir.join("conf/portcullis.toml"),
        format!(
            "state_dir = \"{d}/state\"\ncontrol_socket = \"{d}/ctl.sock\"\n\
             [bouncer_api]\nlisten = \"127.0.0.1:{port}\"\napi_key_files = [\"{d}/bouncer.key\"]\n\
             [defaults]\nformat = \"combined\"\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("conf/filters.d/f.toml"), "[auth]\nstatus = 401\n").unwrap();
    std::fs::write(
        dir.join("conf/jails.d/j.toml"),
        format!(
            "[auth]\nfilter = \"auth\"\nlogpath = \"{d}/logs/access.log\"\nmaxretry = 1\naction = [\"bouncer_api\"]\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("logs/access.log"), "").unwrap();
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(dir.join("conf"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    shared::wait_ready(&dir.join("ctl.sock"));
    // The start's reconcile fills the book on the action's worker.
    let t = Instant::now();
    while count_new(&poll(port, "warmup", true).0) < N as usize {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the bans never all arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut startup = Vec::new();
    let mut size = 0;
    for i in 0..5 {
        let (body, took) = poll(port, &format!("bouncer-{i}"), true);
        assert_eq!(count_new(&body), N as usize);
        size = body.len();
        startup.push(took);
    }
    shared::print_latency("startup snapshot of 100,000 decisions", &mut startup);
    println!(
        "startup snapshot size: {} bytes ({:.1} MB, {} bytes a decision)",
        size,
        size as f64 / 1e6,
        size / N as usize
    );

    let mut idle = Vec::new();
    for _ in 0..50 {
        let (body, took) = poll(port, "bouncer-0", false);
        assert_eq!(count_new(&body), 0);
        idle.push(took);
    }
    shared::print_latency("a poll with nothing new, 100,000 active", &mut idle);

    // One more ban between polls: appended, then polled until it shows.
    let mut one = Vec::new();
    for i in 0..20u32 {
        let line = shared::offender_lines(i + 1);
        let last = line.lines().last().unwrap().to_string() + "\n";
        std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("logs/access.log"))
            .unwrap()
            .write_all(last.as_bytes())
            .unwrap();
        loop {
            let (body, took) = poll(port, "bouncer-0", false);
            if count_new(&body) == 1 {
                one.push(took);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    shared::print_latency("a poll carrying one new ban, 100,000 active", &mut one);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
