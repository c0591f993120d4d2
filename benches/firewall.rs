//! Time for 10,000 distinct addresses crossing their thresholds at once to be
//! in the nftables set: the real daemon in a network namespace made here,
//! 10,000 attack lines appended in one write, `nft` polled until the set holds
//! them all. Needs root and nft. `cargo bench --bench firewall`.

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
    let start = Instant::now();
    // Ready when the engine answers (the socket exists a little earlier).
    let ready = || {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["status", "--socket"])
            .arg(dir.join("ctl.sock"))
            .output()
            .is_ok_and(|o| o.status.success())
    };
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "daemon did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines: String = (0..10_000u32)
        .map(|i| {
            format!(
                "{} - - [22/Nov/2026:08:00:00 +0000] \"POST /login HTTP/1.1\" 401 0 \"-\" \"b\"\n",
                std::net::Ipv4Addr::from(0xc612_0000 + i)
            )
        })
        .collect();
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
    let _ = daemon.kill();
    let _ = daemon.wait();
    let _ = Command::new("ip").args(["netns", "del", &ns]).status();
    let _ = std::fs::remove_dir_all(&dir);
}
