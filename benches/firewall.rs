//! The real daemon in a network namespace made here, with the `firewall`
//! action. Needs root and nft. `cargo bench --bench firewall`.
//!
//! 1. 10,000 distinct addresses crossing their thresholds at once (one write
//!    of 10,000 attack lines): time until the nftables set holds them all.
//! 2. Latency, 300 trials: append of one threshold line -> its address is an
//!    element of the set (looked up over netlink every 50 µs from inside the
//!    namespace), p50 / p99.

#[path = "support/shared.rs"]
mod shared;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        println!("firewall bench: needs root (network namespaces, nft); not run");
        return;
    }
    let ns = format!("pcbench{}", std::process::id());
    let dir = std::env::temp_dir().join(&ns);
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["conf/jails.d", "conf/filters.d", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let d = dir.display();
    std::fs::write(dir.join("conf/portcullis.toml"), format!(
        "state_dir = \"{d}/state\"\ncontrol_socket = \"{d}/ctl.sock\"\nmax_bans_per_minute = 100000\n[firewall]\nbackend = \"nftables\"\n[defaults]\nformat = \"combined\"\n"
    )).unwrap();
    std::fs::write(dir.join("conf/filters.d/f.toml"), "[auth]\nstatus = 401\n").unwrap();
    std::fs::write(dir.join("conf/jails.d/j.toml"), format!(
        "[auth]\nfilter = \"auth\"\nlogpath = \"{d}/logs/access.log\"\nmaxretry = 1\naction = [\"firewall\"]\n"
    )).unwrap();
    std::fs::write(dir.join("logs/access.log"), "").unwrap();
    assert!(
        Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap()
            .success()
    );
    let mut daemon = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            env!("CARGO_BIN_EXE_portcullis"),
            "run",
            "--config",
        ])
        .arg(dir.join("conf"))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let count = || -> usize {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                "nft",
                "-j",
                "list",
                "set",
                "inet",
                "portcullis",
                "addr4",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v["nftables"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["set"]["elem"].as_array())
            .map(Vec::len)
            .sum()
    };
    shared::wait_ready(&dir.join("ctl.sock"));
    let lines = shared::offender_lines(10_000);
    let t = Instant::now();
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("logs/access.log"))
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    while count() < 10_000 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "not all bans arrived"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = t.elapsed();
    println!(
        "10,000 distinct addresses over threshold at once: all in the nft set after {:.0} ms (poll resolution ~ms)",
        elapsed.as_secs_f64() * 1e3
    );
    latency(&ns, &dir);
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Append of the threshold line -> element in the kernel set, 300 trials.
fn latency(ns: &str, dir: &std::path::Path) {
    // This thread joins the namespace to look elements up over netlink.
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("logs/access.log"))
        .unwrap();
    let mut samples = Vec::new();
    for i in 0..300u32 {
        let ip = std::net::Ipv4Addr::from(0xcb00_7100 + i);
        let net = ipnet::IpNet::from(std::net::IpAddr::V4(ip));
        let line = format!(
            "{ip} - - [22/Nov/2026:08:00:00 +0000] \"POST /login HTTP/1.1\" 401 0 \"-\" \"b\"\n"
        );
        let t = Instant::now();
        log.write_all(line.as_bytes()).unwrap();
        while !portcullis::act::nft_netlink::has_element("portcullis", "addr4", &net).unwrap() {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "{ip} not in the set within 5 s"
            );
            std::thread::sleep(Duration::from_micros(50));
        }
        samples.push(t.elapsed());
        std::thread::sleep(Duration::from_millis(10));
    }
    shared::print_latency(
        "append threshold line -> element in the nft set",
        &mut samples,
    );
}
