//! Fleet mode against a real redis-server on loopback, with several daemons,
//! each with its own config and state.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

struct Redis {
    service: Service,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Redis {
        Redis::start_with(port, &[])
    }

    fn start_with(port: u16, extra: &[&str]) -> Redis {
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(extra);
        Redis {
            service: Service::start(&mut cmd, port, "redis-server"),
            port,
        }
    }

    fn kill(&mut self) {
        self.service.stop();
    }
}

/// A daemon in fleet `fleet` as `host`; `jail_extra` goes into jail `auth`.
fn host(redis: u16, fleet: &str, host: &str, maxretry: u32, jail_extra: &str) -> Daemon {
    let dir = Daemon::config(&format!("fleet-{host}"), maxretry, jail_extra);
    add_to_main(
        &dir,
        "",
        &format!(
            "[fleet]\nurl = \"redis://127.0.0.1:{redis}/0\"\nname = \"{fleet}\"\nhost = \"{host}\"\n"
        ),
    );
    Daemon::start(dir)
}

fn origins(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = d
        .json(&["bans"])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            format!(
                "{} from {}",
                b["target"]["value"].as_str().unwrap(),
                b["origin"].as_str().unwrap_or("self")
            )
        })
        .collect();
    v.sort();
    v
}

fn within_a_second(cond: impl Fn() -> bool, what: &str) {
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(1) {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("not within a second: {what}");
}

#[test]
fn a_ban_on_a_reaches_b_and_an_unban_on_b_reaches_a() {
    let redis = Redis::start(free_port());
    let fleet = format!("f{}", std::process::id());
    let a = host(redis.port, &fleet, "a", 5, "");
    let b = host(redis.port, &fleet, "b", 5, "");
    assert!(
        a.cli(&["ban", "198.51.100.5", "--jail", "auth"])
            .status
            .success()
    );
    within_a_second(|| origins(&b) == ["198.51.100.5 from a"], "the ban on b");
    assert_eq!(origins(&a), ["198.51.100.5 from self"]);
    let human = stdout(&b.cli(&["bans"]));
    assert!(human.contains("from a"), "{human}");
    assert!(b.cli(&["unban", "198.51.100.5"]).status.success());
    within_a_second(|| a.bans().is_empty(), "the unban on a");
    let st = b.json(&["status"]);
    assert_eq!(st["fleet"]["link_up"], true, "{st}");
    assert_eq!(st["fleet"]["host"], "b");
}

#[test]
fn an_attack_split_over_three_hosts_is_banned_fleet_wide() {
    let redis = Redis::start(free_port());
    let fleet = format!("g{}", std::process::id());
    let hosts: Vec<Daemon> = ["x", "y", "z"]
        .iter()
        .map(|h| host(redis.port, &fleet, h, 9, "scope = \"fleet\"\n"))
        .collect();
    // 3 matches per host: each below its local threshold of 9, 9 in the fleet.
    for (i, h) in hosts.iter().enumerate() {
        h.append(
            &(0..3)
                .map(|_| attack_line("203.0.113.99"))
                .collect::<String>(),
        );
        h.wait_matches("auth", 3);
        if i < 2 {
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                hosts.iter().all(|h| h.bans().is_empty()),
                "no ban before the fleet total reaches 9"
            );
        }
    }
    for h in &hosts {
        wait_for(
            || h.bans().iter().any(|b| b.contains("203.0.113.99")),
            "the fleet-wide ban on every host",
        );
    }
}

#[test]
fn with_redis_down_local_detection_bans_and_the_fleet_catches_up() {
    let port = free_port();
    let mut redis = Redis::start(port);
    let fleet = format!("h{}", std::process::id());
    let a = host(port, &fleet, "a", 3, "");
    let b = host(port, &fleet, "b", 3, "");
    redis.kill();
    a.append(
        &(0..3)
            .map(|_| attack_line("203.0.113.77"))
            .collect::<String>(),
    );
    wait_for(|| a.bans().len() == 1, "a local ban while Redis is down");
    wait_for(
        || a.json(&["status"])["fleet"]["link_up"] == false,
        "the link reported down",
    );
    assert!(b.bans().is_empty());
    let _redis = Redis::start(port);
    wait_for(
        || origins(&b) == ["203.0.113.77 from a"],
        "the decision made meanwhile reaching b",
    );

    // A host started now catches up from the stream.
    let c = host(port, &fleet, "c", 3, "");
    wait_for(
        || origins(&c) == ["203.0.113.77 from a"],
        "the late host catching up",
    );
}

#[test]
fn fleet_state_is_in_metrics() {
    let redis = Redis::start(free_port());
    let fleet = format!("m{}", std::process::id());
    let mport = free_port();
    let dir = Daemon::config("fleet-metrics", 3, "");
    add_to_main(
        &dir,
        "",
        &format!(
            "[fleet]\nurl = \"redis://127.0.0.1:{}/0\"\nname = \"{fleet}\"\nhost = \"m\"\n[metrics]\nlisten = \"127.0.0.1:{mport}\"\n",
            redis.port
        ),
    );
    let a = host(redis.port, &fleet, "a", 3, "");
    let m = Daemon::start(dir);
    assert!(
        a.cli(&["ban", "192.0.2.77", "--jail", "auth"])
            .status
            .success()
    );
    wait_for(|| m.bans().len() == 1, "the remote ban");
    let scrape = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let text = scrape();
    assert!(text.contains("portcullis_fleet_link_up 1"), "{text}");
    assert!(text.contains("portcullis_fleet_applied_total 1"), "{text}");
    assert!(
        text.contains("portcullis_fleet_lag_milliseconds "),
        "{text}"
    );
}

#[test]
fn password_is_read_from_a_file() {
    let port = free_port();
    let _redis = Redis::start_with(port, &["--requirepass", "s3cret"]);
    let fleet = format!("p{}", std::process::id());
    let daemon = |h: &str, password: &str| {
        let dir = Daemon::config(&format!("fleet-pw-{h}"), 5, "");
        let pw = dir.write("redis-password", &format!("{password}\n"));
        add_to_main(
            &dir,
            "",
            &format!(
                "[fleet]\nurl = \"redis://127.0.0.1:{port}/0\"\nname = \"{fleet}\"\nhost = \"{h}\"\npassword_file = \"{}\"\n",
                pw.display()
            ),
        );
        Daemon::start(dir)
    };
    let a = daemon("a", "s3cret");
    let wrong = daemon("w", "nope");
    assert!(
        a.cli(&["ban", "192.0.2.9", "--jail", "auth"])
            .status
            .success()
    );
    wait_for(
        || a.json(&["status"])["fleet"]["published"] == 1,
        "a publication with the right password",
    );
    std::thread::sleep(Duration::from_millis(500));
    let st = wrong.json(&["status"]);
    assert_eq!(st["fleet"]["link_up"], false, "{st}");
    assert!(wrong.bans().is_empty());
}
