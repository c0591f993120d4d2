//! Restarting with many active bans, end to end: the store holds N bans (one
//! jail, `firewall` action), the real daemon starts in a network namespace
//! made here, and the bench times (from the `run` command)
//!
//! 1. until the control socket answers `status`;
//! 2. until every ban is an element of the nftables set (polled with netlink
//!    lookups of 64 addresses spread over the range, then every address
//!    looked up once, untimed, to prove it);
//!
//! for a kernel that lost its sets (a reboot) and for one that still holds
//! them (a restart of the service). Needs root and nft.
//!
//! `cargo bench --bench scale` (N = 100,000 and 1,000,000), or
//! `cargo bench --bench scale -- 200000` for other sizes.

#[path = "support/shared.rs"]
mod shared;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

struct Netns {
    name: String,
    dir: PathBuf,
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn addr(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0a00_0000 + i)
}

fn setup(n: u32) -> Netns {
    let name = format!("pcscale{}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["conf/jails.d", "conf/filters.d", "logs"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let d = dir.display();
    std::fs::write(
        dir.join("conf/portcullis.toml"),
        format!(
            "state_dir = \"{d}/state\"\ncontrol_socket = \"{d}/ctl.sock\"\n[firewall]\nbackend = \"nftables\"\n[defaults]\nformat = \"combined\"\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("conf/filters.d/f.toml"), "[auth]\nstatus = 401\n").unwrap();
    std::fs::write(
        dir.join("conf/jails.d/j.toml"),
        format!("[auth]\nfilter = \"auth\"\nlogpath = \"{d}/logs/access.log\"\nmaxretry = 1\naction = [\"firewall\"]\n"),
    )
    .unwrap();
    std::fs::write(dir.join("logs/access.log"), "").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    shared::store_with_bans(&dir.join("state"), n, now);
    assert!(
        Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap()
            .success()
    );
    Netns { name, dir }
}

/// Moves this thread into the namespace, so the netlink probes below see
/// its nftables (the daemon is started with `ip netns exec`, the CLI talks
/// over a Unix socket: neither cares where this thread is).
fn enter(ns: &Netns) {
    let f = std::fs::File::open(format!("/var/run/netns/{}", ns.name)).unwrap();
    use std::os::fd::AsRawFd;
    assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
}

fn nets(range: impl Iterator<Item = u32>) -> Vec<ipnet::IpNet> {
    range
        .map(|i| ipnet::IpNet::from(std::net::IpAddr::V4(addr(i))))
        .collect()
}

/// Whether 64 addresses spread over 0..n (first and last included) are all
/// in the set. Netlink element lookups, not `nft get element`, which lists
/// the whole set first (56 s at 1,000,000 elements).
fn sample_present(n: u32) -> bool {
    let picks = nets((0..64u32).map(|k| (k as u64 * (n as u64 - 1) / 63) as u32));
    portcullis::act::nft_netlink::has_all("portcullis", "addr4", &picks).unwrap_or(false)
}

fn start(ns: &Netns) -> Child {
    Command::new("ip")
        .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_portcullis")])
        .args(["run", "--config"])
        .arg(ns.dir.join("conf"))
        .env("PORTCULLIS_LOG", "info")
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(ns.dir.join("daemon.log"))
                .unwrap(),
        )
        .spawn()
        .unwrap()
}

fn stop(mut child: Child) {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
}

fn answers(sock: &Path) -> bool {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["status", "--socket"])
        .arg(sock)
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Starts the daemon and returns (socket answering, all in set) times.
fn timed_start(ns: &Netns, n: u32) -> (Child, Duration, Duration) {
    let sock = ns.dir.join("ctl.sock");
    let t = Instant::now();
    let child = start(ns);
    let (mut socket, mut enforced) = (None, None);
    while socket.is_none() || enforced.is_none() {
        assert!(t.elapsed() < Duration::from_secs(120), "no start in 120 s");
        if socket.is_none() && answers(&sock) {
            socket = Some(t.elapsed());
        }
        if enforced.is_none() && sample_present(n) {
            enforced = Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        portcullis::act::nft_netlink::has_all("portcullis", "addr4", &nets(0..n)).unwrap(),
        "some of the {n} bans are not in the set"
    );
    (child, socket.unwrap(), enforced.unwrap())
}

fn run(n: u32) {
    let ns = setup(n);
    enter(&ns);
    let (child, socket, enforced) = timed_start(&ns, n);
    println!(
        "{n} bans, kernel sets empty (boot): control socket answers after {:.0} ms, all {n} in the nft set after {:.0} ms",
        socket.as_secs_f64() * 1e3,
        enforced.as_secs_f64() * 1e3
    );
    stop(child);
    let (child, socket, enforced) = timed_start(&ns, n);
    println!(
        "{n} bans, kernel sets kept (service restart): control socket answers after {:.0} ms, all {n} in the nft set after {:.0} ms",
        socket.as_secs_f64() * 1e3,
        enforced.as_secs_f64() * 1e3
    );
    stop(child);
    // `SCALE_LOG=path` keeps the daemon's log of the run.
    if let Some(keep) = std::env::var_os("SCALE_LOG") {
        let _ = std::fs::copy(ns.dir.join("daemon.log"), keep);
    }
}

fn main() {
    if unsafe { libc::geteuid() } != 0 {
        println!("scale bench: needs root (network namespaces, nft); not run");
        return;
    }
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![100_000, 1_000_000]
    } else {
        sizes
    };
    for n in sizes {
        run(n);
    }
}
