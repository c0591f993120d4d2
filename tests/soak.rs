//! The soak test of issue 10: a steady stream for 60 s while everything that
//! happens to a production host happens to the daemon: rotation in all three
//! styles, three `kill -9` and restarts, `nft flush ruleset`, and a full state
//! disk that is freed again.
//!
//! Exactness is checked through detection. Each attacker sends exactly
//! `maxretry` failures in a burst of 7 s, each decoy one fewer, and bursts
//! cross every disruption: a lost line leaves an attacker unbanned, a line
//! counted twice bans a decoy or changes a ban's count. At the end the
//! ledger and the kernel set hold exactly the attackers, each at `maxretry`.
//!
//! About 75 s, root only: `cargo test --test soak -- --ignored` (`.ci/run`
//! runs it). Windows are 8 s; each restart comes 3-4 s after a rotation (so
//! bursts straddle both), and no window reaches back past the previous file
//! (the documented limit: a restart re-reads `PATH.1`, not `PATH.2`, nor a
//! deleted file).

mod common;
use common::*;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MAXRETRY: usize = 12;

enum Rotate {
    Rename,
    Copytruncate,
    Delete,
}

/// Writes like nginx: one open file, reopened only after a rotation (and
/// 200 ms late, as nginx reopens on its signal).
fn writer(path: PathBuf, lines: Vec<(Duration, String)>, cmds: mpsc::Receiver<Rotate>) {
    let open = |p: &PathBuf| {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(p)
            .unwrap()
    };
    let mut f = open(&path);
    let start = Instant::now();
    let one = |n: u32| {
        let mut p = path.clone().into_os_string();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    let mut reopen_at: Option<Instant> = None;
    for (at, line) in lines {
        while start.elapsed() < at {
            std::thread::sleep(Duration::from_millis(2));
        }
        if let Ok(cmd) = cmds.try_recv() {
            if one(1).exists() {
                std::fs::rename(one(1), one(2)).unwrap();
            }
            match cmd {
                Rotate::Rename => {
                    std::fs::rename(&path, one(1)).unwrap();
                    std::fs::write(&path, "").unwrap();
                    reopen_at = Some(Instant::now() + Duration::from_millis(200));
                }
                Rotate::Copytruncate => {
                    std::fs::copy(&path, one(1)).unwrap();
                    std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(&path)
                        .unwrap();
                }
                Rotate::Delete => {
                    std::fs::remove_file(&path).unwrap();
                    std::fs::write(&path, "").unwrap();
                    reopen_at = Some(Instant::now() + Duration::from_millis(200));
                }
            }
        }
        if reopen_at.is_some_and(|t| Instant::now() >= t) {
            f = open(&path);
            reopen_at = None;
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let now = chrono::DateTime::from_timestamp(secs, 0)
            .unwrap()
            .format("%d/%b/%Y:%H:%M:%S +0000");
        f.write_all(line.replace("TIME", &now.to_string()).as_bytes())
            .unwrap();
    }
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap()
}

struct Cleanup {
    ns: String,
    mount: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

#[test]
#[ignore = "75 s soak; `.ci/run` runs it with --ignored"]
fn sixty_seconds_of_rotations_restarts_flushes_and_a_full_disk() {
    assert!(unsafe { libc::geteuid() } == 0, "the soak test needs root");
    let ns = format!("pcsoak{}", std::process::id() % 100_000);
    assert!(sh(&["ip", "netns", "add", &ns]).status.success());
    let dir = Daemon::config(
        "soak",
        MAXRETRY as u32,
        "action = [\"log\", \"firewall\"]\nfindtime = \"8s\"\n",
    );
    // `findtime` given twice: keep the jail's last one only.
    let jail = std::fs::read_to_string(dir.path().join("conf/jails.d/auth.toml")).unwrap();
    dir.write(
        "conf/jails.d/auth.toml",
        &jail.replace("findtime = \"1h\"\n", ""),
    );
    add_to_main(&dir, "", "[firewall]\nbackend = \"nftables\"\n");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let _cleanup = Cleanup {
        ns: ns.clone(),
        mount: state.clone(),
    };
    assert!(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
            .arg(&state)
            .status()
            .unwrap()
            .success()
    );
    let mut d = Daemon::start_in(dir, &["ip", "netns", "exec", &ns]);

    // The stream: bursts of MAXRETRY (attackers) or MAXRETRY - 1 (decoys)
    // failures over 7 s, starting every 0.7 s, among steady benign lines:
    // bursts straddle a rotation and the restart after it.
    let mut lines: Vec<(Duration, String)> = Vec::new();
    let (mut attackers, mut decoys) = (Vec::new(), Vec::new());
    let mut n = 0;
    let mut line = |ip: &str, status: u16| {
        n += 1;
        format!("{ip} - - [TIME] \"POST /v1/login?n={n} HTTP/1.1\" {status} 0 \"-\" \"curl/8\"\n")
    };
    for k in 0..76u32 {
        let ip = format!("198.18.{}.{}", k / 200, k % 200 + 1);
        let count = if k % 2 == 0 { MAXRETRY } else { MAXRETRY - 1 };
        let start = Duration::from_millis(700 * k as u64);
        for i in 0..count {
            let at = start + Duration::from_millis(7000 * i as u64 / count as u64);
            lines.push((at, line(&ip, 401)));
        }
        if k % 2 == 0 {
            attackers.push(ip);
        } else {
            decoys.push(ip);
        }
    }
    for i in 0..3000u64 {
        lines.push((Duration::from_millis(20 * i), line("198.19.0.1", 200)));
    }
    lines.sort_by_key(|(at, _)| *at);
    let written = lines.len();
    let (tx, rx) = mpsc::channel();
    let log = d.log_path();
    let w = std::thread::spawn(move || writer(log, lines, rx));

    let t0 = Instant::now();
    let at = |secs: u64| {
        while t0.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let filler = state.join("filler");
    at(5);
    tx.send(Rotate::Rename).unwrap();
    at(8);
    d.kill9();
    d.spawn();
    at(14);
    assert!(
        sh(&["ip", "netns", "exec", &ns, "nft", "flush", "ruleset"])
            .status
            .success()
    );
    at(18);
    assert!(
        d.json(&["status"])["actions"]["firewall"]["drifts"] == 1,
        "the flush was noticed and repaired"
    );
    at(21);
    tx.send(Rotate::Copytruncate).unwrap();
    at(25);
    d.kill9();
    d.spawn();
    at(30);
    tx.send(Rotate::Delete).unwrap();
    at(35);
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output()
        .unwrap();
    at(40);
    std::fs::remove_file(&filler).unwrap();
    wait_for(
        || d.json(&["status"])["store"]["unsaved_writes"] == 0,
        "the store to take what waited",
    );
    at(46);
    d.kill9();
    d.spawn();
    at(53);
    tx.send(Rotate::Rename).unwrap();
    w.join().unwrap();

    // Everything read, everything decided.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && d.bans().len() < attackers.len() {
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let bans = d.bans();
    let mut want: Vec<String> = attackers
        .iter()
        .map(|a| format!("auth {a} {MAXRETRY}"))
        .collect();
    want.sort();
    assert_eq!(
        bans, want,
        "{written} lines written: exactly the attackers, each at maxretry"
    );
    let status = d.json(&["status"]);
    let j = &status["jails"][0];
    assert_eq!(j["unparsed"], 0, "{j}");
    // The kernel holds exactly the ledger's bans.
    let kernel = nft_elements(&ns, "addr4");
    let mut want_kernel = attackers.clone();
    want_kernel.sort();
    assert_eq!(kernel, want_kernel);
    assert_eq!(decoys.len(), attackers.len());
}
