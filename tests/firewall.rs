//! Enforcement on real packets: network namespaces made by the test, a veth
//! pair, an HTTP server and the daemon (with its nft or ipset) in one
//! namespace, a client in the other. Addresses are documentation ranges,
//! inside those namespaces only.
//!
//! Needs root, `ip`, `nft`, `ipset`, `iptables`, `curl` and `python3`;
//! `.ci/run` installs them, and in CI (`CI` set) a missing one fails the test.

mod common;
use common::net::*;
use common::*;
use std::process::Command;
use std::time::Duration;

/// A daemon in the server namespace with the firewall action.
fn daemon(net: &Net, tag: &str, jail_extra: &str, firewall: &str) -> Daemon {
    let dir = Daemon::config(
        tag,
        3,
        &format!("action = [\"log\", \"firewall\"]\n{jail_extra}"),
    );
    let main = std::fs::read_to_string(dir.path().join("conf/portcullis.toml")).unwrap();
    let main = main.replace(
        "ignore = [\"127.0.0.1\"]",
        "ignore = [\"127.0.0.1\", \"192.0.2.3\"]",
    );
    dir.write("conf/portcullis.toml", &main);
    add_to_main(&dir, "", &format!("[firewall]\n{firewall}\n"));
    Daemon::start_in(dir, &["ip", "netns", "exec", &net.srv])
}

#[test]
fn nft_ban_drops_unban_restores_and_expiry_removes() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.start_http();
    let d = daemon(
        &net,
        "nft-basic",
        "bantime = \"4s\"\n",
        "backend = \"nftables\"",
    );
    assert!(
        net.get("192.0.2.2", "192.0.2.1"),
        "reachable before any ban"
    );
    d.append(&(0..3).map(|_| attack_line("192.0.2.2")).collect::<String>());
    wait_for(
        || !net.get("192.0.2.2", "192.0.2.1"),
        "packets from the banned client to be dropped",
    );
    assert_eq!(net.nft_elements("addr4"), ["192.0.2.2"]);
    assert!(
        net.get("192.0.2.4", "192.0.2.1"),
        "another client still gets through"
    );

    assert!(d.cli(&["unban", "192.0.2.2"]).status.success());
    wait_for(
        || net.get("192.0.2.2", "192.0.2.1"),
        "a response after unban",
    );
    assert!(net.nft_elements("addr4").is_empty());

    // Banned again; after its 4 s the element is gone and traffic flows.
    d.append(&(0..3).map(|_| attack_line("192.0.2.2")).collect::<String>());
    wait_for(|| !net.get("192.0.2.2", "192.0.2.1"), "the second ban");
    wait_for(
        || net.nft_elements("addr4").is_empty(),
        "the element to expire",
    );
    assert!(net.get("192.0.2.2", "192.0.2.1"));
    let ruleset = stdout(&net.nft(&["list", "table", "inet", "portcullis"]));
    assert!(
        ruleset.contains("ip saddr @addr4 counter packets"),
        "{ruleset}"
    );
}

/// Counts successful TCP connects from `src` during `secs` seconds.
fn prober(net: &Net, src: &str, secs: f64) -> std::process::Child {
    let code = format!(
        "import socket,time\nok=0\nend=time.time()+{secs}\nwhile time.time()<end:\n s=socket.socket()\n s.settimeout(0.05)\n s.bind(('{src}',0))\n try:\n  s.connect(('192.0.2.1',8080)); ok+=1\n except Exception: pass\n s.close()\n time.sleep(0.01)\nprint(ok)\n"
    );
    Command::new("ip")
        .args(["netns", "exec", &net.cli, "python3", "-c", &code])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn nft_kill9_keeps_enforcing_and_restarts_leave_no_gap() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.start_http();
    let mut d = daemon(&net, "nft-restart", "", "backend = \"nftables\"");
    assert!(
        d.cli(&["ban", "192.0.2.2", "--jail", "auth"])
            .status
            .success()
    );
    wait_for(
        || !net.get("192.0.2.2", "192.0.2.1"),
        "the manual ban to drop packets",
    );

    d.kill9();
    assert!(
        !net.get("192.0.2.2", "192.0.2.1"),
        "still dropped with the daemon killed"
    );
    d.spawn();
    assert_eq!(
        net.nft_elements("addr4"),
        ["192.0.2.2"],
        "reconciled without duplicates"
    );

    // Clean stop + start while a prober hammers the server: not one connect gets through.
    let probe = prober(&net, "192.0.2.2", 3.0);
    std::thread::sleep(Duration::from_millis(300));
    d.stop();
    assert_eq!(
        net.nft_elements("addr4"),
        ["192.0.2.2"],
        "bans stay in place when stopped"
    );
    d.spawn();
    let out = probe.wait_with_output().unwrap();
    assert_eq!(
        stdout(&out).trim(),
        "0",
        "connections that got through during stop/start"
    );
    assert!(
        net.get("192.0.2.4", "192.0.2.1"),
        "other clients unaffected"
    );
}

#[test]
fn nft_ipv6_prefix_ban_covers_the_64_only() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.start_http();
    let d = daemon(&net, "nft-v6", "", "backend = \"nftables\"");
    assert!(net.get("2001:db8:1::3", "2001:db8:1::1"));
    d.append(
        &(0..3)
            .map(|_| attack_line("2001:db8:1::2"))
            .collect::<String>(),
    );
    wait_for(|| !net.get("2001:db8:1::2", "2001:db8:1::1"), "the /64 ban");
    assert!(
        !net.get("2001:db8:1::3", "2001:db8:1::1"),
        "another address of the same /64 is dropped"
    );
    assert!(
        net.get("2001:db8:2::2", "2001:db8:2::1"),
        "the neighbour /64 gets through"
    );
    assert_eq!(net.nft_elements("net6"), ["2001:db8:1::/64"]);
}

#[test]
fn nft_allowlisted_address_is_never_dropped() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.start_http();
    let d = daemon(&net, "nft-allow", "", "backend = \"nftables\"");
    d.append(
        &(0..10)
            .map(|_| attack_line("192.0.2.3"))
            .collect::<String>(),
    );
    wait_for(
        || d.jail("auth")["ignored"] == 10,
        "the allowlisted matches",
    );
    assert!(d.bans().is_empty());
    assert!(net.get("192.0.2.3", "192.0.2.1"));
    let out = d.cli(&["ban", "192.0.2.0/24", "--jail", "auth"]);
    assert!(
        !out.status.success(),
        "a prefix covering an allowlisted address is refused"
    );
    // Even an element forced into the set by hand: the allow rule comes first.
    assert!(
        net.nft(&[
            "add",
            "element",
            "inet",
            "portcullis",
            "addr4",
            "{ 192.0.2.3 }",
        ])
        .status
        .success()
    );
    assert!(net.get("192.0.2.3", "192.0.2.1"));
}

/// An `ignore_file` change reaches the kernel's accept sets within 2 s,
/// without a reload, on both backends.
fn allowlist_file_reaches_the_kernel(backend: &str) {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.start_http();
    let dir = Daemon::config(
        &format!("allowfile-{backend}"),
        3,
        "action = [\"log\", \"firewall\"]\n",
    );
    let allow = dir.write("conf/allow.txt", "192.0.2.4\n");
    add_to_main(
        &dir,
        &format!("ignore_file = \"{}\"\n", allow.display()),
        &format!("[firewall]\nbackend = \"{backend}\"\n"),
    );
    let d = Daemon::start_in(dir, &["ip", "netns", "exec", &net.srv]);
    let accepted = || -> String {
        if backend == "nftables" {
            net.nft_elements("allow4").join(" ")
        } else {
            stdout(&sh(&[
                "ip",
                "netns",
                "exec",
                &net.srv,
                "ipset",
                "list",
                "portcullis-allow4",
            ]))
        }
    };
    wait_for(
        || accepted().contains("192.0.2.4"),
        "the file's address in the accept set",
    );
    // 192.0.2.2 is banned, then allowlisted by the file: it gets through.
    d.append(&(0..3).map(|_| attack_line("192.0.2.2")).collect::<String>());
    wait_for(|| !net.get("192.0.2.2", "192.0.2.1"), "the ban");
    let t0 = std::time::Instant::now();
    std::fs::write(&allow, "192.0.2.2\n").unwrap();
    wait_for(
        || net.get("192.0.2.2", "192.0.2.1"),
        "the allowlisted address through",
    );
    assert!(
        t0.elapsed() <= Duration::from_secs(2),
        "took {:?}",
        t0.elapsed()
    );
    assert!(!accepted().contains("192.0.2.4"), "{}", accepted());
    let _ = &d;
}

#[test]
fn nft_allowlist_file_reaches_the_kernel() {
    allowlist_file_reaches_the_kernel("nftables");
}

#[test]
fn ipset_allowlist_file_reaches_the_kernel() {
    allowlist_file_reaches_the_kernel("ipset");
}

#[test]
fn ipset_backend_drops_and_unbans() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.start_http();
    let d = daemon(&net, "ipset", "", "backend = \"ipset\"");
    d.append(&(0..3).map(|_| attack_line("192.0.2.2")).collect::<String>());
    wait_for(
        || !net.get("192.0.2.2", "192.0.2.1"),
        "the ipset ban to drop packets",
    );
    let list = stdout(&sh(&[
        "ip",
        "netns",
        "exec",
        &net.srv,
        "ipset",
        "list",
        "portcullis-addr4",
    ]));
    assert!(list.contains("192.0.2.2 timeout"), "{list}");
    assert!(net.get("192.0.2.4", "192.0.2.1"));
    d.append(
        &(0..3)
            .map(|_| attack_line("2001:db8:1::2"))
            .collect::<String>(),
    );
    wait_for(
        || !net.get("2001:db8:1::3", "2001:db8:1::1"),
        "the IPv6 /64 ban through ip6tables",
    );
    assert!(d.cli(&["unban", "192.0.2.2"]).status.success());
    wait_for(
        || net.get("192.0.2.2", "192.0.2.1"),
        "a response after unban",
    );
}

/// A jail with `ports = [80]` drops the banned client's port 80 only: port
/// 22 (a second listener) still answers it. Reloaded without `ports`, the
/// same ban drops both, and the scoped set is gone (nftables) or no longer
/// referenced by a rule (ipset).
fn port_scoped_ban(backend: &str) {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.listen(80);
    net.listen(22);
    let d = daemon(
        &net,
        &format!("ports-{backend}"),
        "ports = [\"http\"]\n",
        &format!("backend = \"{backend}\""),
    );
    let (banned, other) = ("192.0.2.2", "192.0.2.4");
    d.append(&(0..3).map(|_| attack_line(banned)).collect::<String>());
    wait_for(
        || !net.get_port(banned, "192.0.2.1", 80),
        "port 80 dropped for the banned client",
    );
    assert!(
        net.get_port(banned, "192.0.2.1", 22),
        "port 22 still answers the banned client"
    );
    assert!(
        net.get_port(other, "192.0.2.1", 80),
        "another client keeps port 80"
    );
    // IPv6 too: a /64 ban, port-scoped.
    d.append(
        &(0..3)
            .map(|_| attack_line("2001:db8:1::2"))
            .collect::<String>(),
    );
    wait_for(
        || !net.get_port("2001:db8:1::3", "2001:db8:1::1", 80),
        "port 80 dropped for the banned /64",
    );
    assert!(net.get_port("2001:db8:1::3", "2001:db8:1::1", 22));

    // The same jail without `ports`: the ban drops everything.
    let jail = d.dir.path().join("conf/jails.d/auth.toml");
    let text = std::fs::read_to_string(&jail).unwrap();
    std::fs::write(&jail, text.replace("ports = [\"http\"]\n", "")).unwrap();
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(
        || !net.get_port(banned, "192.0.2.1", 22),
        "port 22 dropped too once the jail bans every port",
    );
    assert!(!net.get_port(banned, "192.0.2.1", 80));
    assert!(net.get_port(other, "192.0.2.1", 22));
    if backend == "nftables" {
        let table = stdout(&net.nft(&["list", "table", "inet", "portcullis"]));
        assert!(
            !table.contains("_p"),
            "a scoped set outlived its jail:\n{table}"
        );
    } else {
        let rules = stdout(&sh(&[
            "ip", "netns", "exec", &net.srv, "iptables", "-S", "INPUT",
        ]));
        assert!(!rules.contains("multiport"), "{rules}");
    }
}

#[test]
fn nft_port_scoped_ban_spares_other_ports() {
    port_scoped_ban("nftables");
}

#[test]
fn ipset_port_scoped_ban_spares_other_ports() {
    port_scoped_ban("ipset");
}

#[test]
fn nft_ten_thousand_addresses_at_once_are_all_in_the_set() {
    if !prerequisites() {
        return;
    }
    let net = Net::new();
    let dir = Daemon::config("nft-10k", 1, "action = [\"log\", \"firewall\"]\n");
    add_to_main(
        &dir,
        "max_bans_per_minute = 20000\n",
        "[firewall]\nbackend = \"nftables\"\n",
    );
    let d = Daemon::start_in(dir, &["ip", "netns", "exec", &net.srv]);
    let lines: String = (0..10_000u32)
        .map(|i| attack_line(&std::net::Ipv4Addr::from(0xc612_0000 + i).to_string()))
        .collect();
    let t = std::time::Instant::now();
    d.append(&lines);
    wait_for(
        || net.nft_elements("addr4").len() == 10_000,
        "10,000 elements in the set",
    );
    eprintln!(
        "10,000 bans in the nft set after {:?} (see benches/firewall.rs for the figure)",
        t.elapsed()
    );
    assert_eq!(d.bans().len(), 10_000);
}

#[test]
fn nft_remove_on_stop_and_reject_verdict() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.start_http();
    let mut d = daemon(
        &net,
        "nft-remove",
        "",
        "backend = \"nftables\"\nverdict = \"reject\"\nremove_on_stop = true",
    );
    assert!(
        d.cli(&["ban", "192.0.2.2", "--jail", "auth"])
            .status
            .success()
    );
    wait_for(|| !net.get("192.0.2.2", "192.0.2.1"), "the ban");
    let table = stdout(&net.nft(&["list", "table", "inet", "portcullis"]));
    assert!(
        table.contains("counter packets") && table.contains("reject"),
        "{table}"
    );
    d.stop();
    let out = net.nft(&["list", "table", "inet", "portcullis"]);
    assert!(
        !out.status.success(),
        "the table is removed at a clean stop"
    );
    assert!(net.get("192.0.2.2", "192.0.2.1"));
}

#[test]
fn missing_nft_is_a_clear_error_at_start() {
    let dir = Daemon::config("no-nft", 3, "action = [\"firewall\"]\n");
    add_to_main(&dir, "", "[firewall]\nbackend = \"nftables\"\n");
    let out = bin()
        .args(["run", "--config"])
        .arg(dir.path().join("conf"))
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`nft` not found: install the `nftables` package"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn fleet_ban_on_one_host_is_enforced_by_another_hosts_firewall() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.start_http();
    // Redis and both daemons live in the server namespace; host b enforces.
    let port = 16379;
    let mut redis = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.srv,
            "redis-server",
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let fleet_section = |host: &str| {
        format!(
            "[fleet]\nurl = \"redis://127.0.0.1:{port}/0\"\nname = \"fw{}\"\nhost = \"{host}\"\n",
            std::process::id()
        )
    };
    let a_dir = Daemon::config("fleet-fw-a", 5, "");
    add_to_main(&a_dir, "", &fleet_section("a"));
    let a = Daemon::start_in(a_dir, &["ip", "netns", "exec", &net.srv]);
    let b_dir = Daemon::config("fleet-fw-b", 5, "action = [\"log\", \"firewall\"]\n");
    add_to_main(
        &b_dir,
        "",
        &format!("{}[firewall]\nbackend = \"nftables\"\n", fleet_section("b")),
    );
    let b = Daemon::start_in(b_dir, &["ip", "netns", "exec", &net.srv]);

    assert!(net.get("192.0.2.2", "192.0.2.1"));
    let t = std::time::Instant::now();
    assert!(
        a.cli(&["ban", "192.0.2.2", "--jail", "auth"])
            .status
            .success()
    );
    wait_for(
        || net.nft_elements("addr4") == ["192.0.2.2"],
        "host a's ban in host b's nftables set",
    );
    let elapsed = t.elapsed();
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert!(
        !net.get("192.0.2.2", "192.0.2.1"),
        "dropped by host b's firewall"
    );
    assert!(b.cli(&["unban", "192.0.2.2"]).status.success());
    wait_for(
        || a.bans().is_empty() && net.get("192.0.2.2", "192.0.2.1"),
        "the unban everywhere",
    );
    let _ = redis.kill();
    let _ = redis.wait();
}

/// Runs `fault` (a command) in the server namespace: traffic from the banned
/// 192.0.2.2 passes right after, is dropped again within 5 s, and the repair
/// is the `drifts`-th one counted.
fn repaired_within_five_seconds(net: &Net, d: &Daemon, fault: &[&str], drifts: u64) {
    let mut all = vec!["ip", "netns", "exec", &net.srv];
    all.extend_from_slice(fault);
    must(&all);
    assert!(
        net.get("192.0.2.2", "192.0.2.1"),
        "traffic passes right after {fault:?}"
    );
    let t = std::time::Instant::now();
    wait_for(
        || !net.get("192.0.2.2", "192.0.2.1"),
        &format!("the ban to be repaired after {fault:?}"),
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "repaired after {:?}",
        t.elapsed()
    );
    wait_for(
        || d.json(&["status"])["actions"]["firewall"]["drifts"] == drifts,
        "the drift to be counted",
    );
}

/// Issue 10, finding 1: `nft flush ruleset` (what restarting Debian's
/// nftables service does), a flushed set or a deleted table is noticed and
/// repaired within 5 s, logged once per event, counted and shown in `status`.
#[test]
fn nft_changes_behind_our_back_are_repaired_within_five_seconds() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.start_http();
    let d = daemon(&net, "nft-drift", "", "backend = \"nftables\"");
    assert!(
        d.cli(&["ban", "192.0.2.2", "--jail", "auth"])
            .status
            .success()
    );
    wait_for(
        || !net.get("192.0.2.2", "192.0.2.1"),
        "the ban to drop packets",
    );
    let events: [&[&str]; 4] = [
        &["flush", "ruleset"],
        &["flush", "set", "inet", "portcullis", "addr4"],
        &["delete", "table", "inet", "portcullis"],
        &["flush", "chain", "inet", "portcullis", "input"],
    ];
    for (n, args) in events.iter().enumerate() {
        let mut all = vec!["nft"];
        all.extend_from_slice(args);
        repaired_within_five_seconds(&net, &d, &all, n as u64 + 1);
    }
    // New bans work after the repairs.
    d.append(&(0..3).map(|_| attack_line("192.0.2.4")).collect::<String>());
    wait_for(
        || !net.get("192.0.2.4", "192.0.2.1"),
        "a new ban after the repairs",
    );
    let human = stdout(&d.cli(&["status"]));
    assert!(
        human.contains("action firewall: enforcement changed behind our back 4 time(s)"),
        "{human}"
    );
    let log = std::fs::read_to_string(
        d.dir
            .path()
            .join(format!("daemon-{}.log", std::process::id())),
    )
    .unwrap();
    assert_eq!(
        log.matches("enforcement changed behind").count(),
        4,
        "logged once per event"
    );
}

/// The same for the ipset backend: a flushed set or flushed iptables chain.
#[test]
fn ipset_changes_behind_our_back_are_repaired_within_five_seconds() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.start_http();
    let d = daemon(&net, "ipset-drift", "", "backend = \"ipset\"");
    assert!(
        d.cli(&["ban", "192.0.2.2", "--jail", "auth"])
            .status
            .success()
    );
    wait_for(
        || !net.get("192.0.2.2", "192.0.2.1"),
        "the ban to drop packets",
    );
    let events: [&[&str]; 2] = [
        &["ipset", "flush", "portcullis-addr4"],
        &["iptables", "-F", "INPUT"],
    ];
    for (n, args) in events.iter().enumerate() {
        repaired_within_five_seconds(&net, &d, args, n as u64 + 1);
    }
}

/// Issue 10, findings 2 and 3: a state file that is lost, or corrupted, never
/// empties the kernel. A lost one: the kernel's elements (with their
/// remaining time and, from the element comment, their jail) are adopted
/// into a new ledger. A corrupted one: a clear error naming the file and
/// `--recover`, never a panic; with `--recover` the file is moved aside and
/// the ledger rebuilt from the kernel.
#[test]
fn a_lost_or_corrupted_store_never_empties_the_kernel() {
    if !prerequisites() {
        return;
    }
    let mut net = Net::new();
    net.start_http();
    let mut d = daemon(&net, "nft-lost", "", "backend = \"nftables\"");
    assert!(
        d.cli(&["ban", "192.0.2.2", "--jail", "auth"])
            .status
            .success()
    );
    d.append(&(0..3).map(|_| attack_line("192.0.2.4")).collect::<String>());
    wait_for(
        || !net.get("192.0.2.2", "192.0.2.1") && !net.get("192.0.2.4", "192.0.2.1"),
        "both bans to drop packets",
    );
    let check_adopted = |d: &Daemon| {
        let bans = d.json(&["bans"]);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut targets: Vec<&str> = bans
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                assert_eq!(b["jail"], "auth", "{b}");
                assert_eq!(b["origin"], "kernel", "{b}");
                let left = b["expires"].as_i64().unwrap() - now;
                assert!((3000..=3600).contains(&left), "{b}");
                b["target"]["value"].as_str().unwrap()
            })
            .collect();
        targets.sort();
        assert_eq!(targets, ["192.0.2.2", "192.0.2.4"]);
    };
    // Lost.
    d.stop();
    let state = d.dir.path().join("state/state.redb");
    std::fs::rename(&state, d.dir.path().join("lost.redb")).unwrap();
    d.spawn();
    assert!(
        !net.get("192.0.2.2", "192.0.2.1"),
        "still dropped after the start"
    );
    assert!(!net.get("192.0.2.4", "192.0.2.1"));
    check_adopted(&d);
    // Corrupted: every page after the header overwritten.
    d.stop();
    let mut bytes = std::fs::read(&state).unwrap();
    for b in bytes.iter_mut().skip(4096) {
        *b = 0xab;
    }
    std::fs::write(&state, bytes).unwrap();
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        &net.srv,
        env!("CARGO_BIN_EXE_portcullis"),
        "run",
        "--config",
        d.dir.path().join("conf").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(state.to_str().unwrap()) && err.contains("--recover"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        !net.get("192.0.2.2", "192.0.2.1"),
        "still dropped meanwhile"
    );
    d.spawn_with(&["--recover"]);
    check_adopted(&d);
    let aside = std::fs::read_dir(d.dir.path().join("state"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.redb.corrupt-")
        });
    assert!(aside, "the corrupted file is kept aside");
}

/// A lost store is rebuilt from the kernel with each ban under its own
/// jail, whatever characters the jail's name has (the element comment holds
/// a cleaned form of it).
#[test]
fn a_lost_store_gives_bans_back_to_jails_with_unusual_names() {
    if !prerequisites() {
        return;
    }
    let net = Net::new();
    let dir = Daemon::config("nft-adopt-names", 3, "action = [\"log\", \"firewall\"]\n");
    let jails = dir.path().join("conf/jails.d/auth.toml");
    let mut text = std::fs::read_to_string(&jails).unwrap();
    let d0 = dir.path().display().to_string();
    text.push_str(&format!(
        "\n[\"api ü \\\" weird\"]\nfilter = \"auth\"\nlogpath = \"{d0}/logs/other.log\"\naction = [\"log\", \"firewall\"]\n"
    ));
    std::fs::write(&jails, text).unwrap();
    add_to_main(&dir, "", "[firewall]\nbackend = \"nftables\"\n");
    let mut d = Daemon::start_in(dir, &["ip", "netns", "exec", &net.srv]);
    let weird = "api ü \" weird";
    assert!(
        d.cli(&["ban", "192.0.2.2", "--jail", weird])
            .status
            .success()
    );
    assert!(
        d.cli(&["ban", "192.0.2.4", "--jail", "auth"])
            .status
            .success()
    );
    wait_for(|| net.nft_elements("addr4").len() == 2, "both in the set");
    d.stop();
    let state = d.dir.path().join("state/state.redb");
    std::fs::rename(&state, d.dir.path().join("lost.redb")).unwrap();
    d.spawn();
    let mut got: Vec<(String, String)> = d
        .json(&["bans"])
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["target"]["value"].as_str().unwrap().to_string(),
                b["jail"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("192.0.2.2".to_string(), weird.to_string()),
            ("192.0.2.4".to_string(), "auth".to_string()),
        ]
    );
}

/// The verifier's netlink lookups (`src/act/nft_netlink.rs`), which replace
/// `nft get element` and `nft list chain` (both read every element of every
/// set first): right answers for present and missing addresses, a prefix in
/// an interval set, 100,000 elements looked up at once, a missing set or
/// table, and the sets a chain's rules look up.
#[test]
fn netlink_lookups_answer_like_nft() {
    if !prerequisites() {
        return;
    }
    let net = Net::new();
    let mut script = String::from(
        "add table inet pt\n\
         add set inet pt a4 { type ipv4_addr; flags timeout; }\n\
         add set inet pt n6 { type ipv6_addr; flags interval, timeout; }\n\
         add chain inet pt input { type filter hook input priority 0; }\n\
         add rule inet pt input ip saddr @a4 drop\n\
         add rule inet pt input ip6 saddr @n6 counter drop\n\
         add element inet pt n6 { 2001:db8:5::/64 timeout 1h }\n",
    );
    for chunk in (0..100_000u32).collect::<Vec<_>>().chunks(1000) {
        let elems: Vec<String> = chunk
            .iter()
            .map(|i| format!("{} timeout 1h", std::net::Ipv4Addr::from(0x0a00_0000 + i)))
            .collect();
        script.push_str(&format!(
            "add element inet pt a4 {{ {} }}\n",
            elems.join(", ")
        ));
    }
    let mut nft = Command::new("ip")
        .args(["netns", "exec", &net.srv, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    nft.stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(nft.wait().unwrap().success());
    let ns = format!("/var/run/netns/{}", net.srv);
    // setns changes only the calling thread: a thread of its own.
    std::thread::spawn(move || {
        use portcullis::act::nft_netlink::{chain_lookups, has_all, has_element, table_exists};
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(ns).unwrap();
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        let v4 = |i: u32| {
            ipnet::IpNet::from(std::net::IpAddr::from(std::net::Ipv4Addr::from(
                0x0a00_0000 + i,
            )))
        };
        let all: Vec<ipnet::IpNet> = (0..100_000).map(v4).collect();
        assert_eq!(has_all("pt", "a4", &all), Ok(true));
        assert_eq!(has_element("pt", "a4", &v4(99_999)), Ok(true));
        assert_eq!(has_element("pt", "a4", &v4(100_000)), Ok(false));
        let mut one_missing = all.clone();
        one_missing.push(v4(200_000));
        assert_eq!(has_all("pt", "a4", &one_missing), Ok(false));
        assert_eq!(
            has_element("pt", "n6", &"2001:db8:5::/64".parse().unwrap()),
            Ok(true)
        );
        assert_eq!(
            has_element("pt", "n6", &"2001:db8:6::/64".parse().unwrap()),
            Ok(false)
        );
        assert_eq!(has_element("pt", "nope", &v4(1)), Ok(false));
        assert_eq!(has_element("nope", "a4", &v4(1)), Ok(false));
        assert_eq!(table_exists("pt"), Ok(true));
        assert_eq!(table_exists("nope"), Ok(false));
        let mut sets = chain_lookups("pt", "input").unwrap();
        sets.sort();
        assert_eq!(sets, vec!["a4".to_string(), "n6".to_string()]);
        assert_eq!(chain_lookups("pt", "nochain"), Ok(vec![]));
        assert_eq!(chain_lookups("nope", "input"), Ok(vec![]));
    })
    .join()
    .unwrap();
}

/// An nginx started by the test under a prefix, in the server namespace;
/// stopped when dropped.
struct NsNginx {
    ns: String,
    dir: std::path::PathBuf,
    pid: i32,
}

impl NsNginx {
    fn start(ns: &str, dir: &std::path::Path, http: &str) -> NsNginx {
        let d = dir.display();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n access_log off;\n client_body_temp_path {d}/tmp;\n proxy_temp_path {d}/tmp;\n fastcgi_temp_path {d}/tmp;\n uwsgi_temp_path {d}/tmp;\n scgi_temp_path {d}/tmp;\n{http}\n}}\n"
            ),
        )
        .unwrap();
        let mut nginx = NsNginx {
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            pid: 0,
        };
        let args = nginx.args(&[]);
        let out = sh(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "nginx: {}", stderr(&out));
        nginx.pid = nginx_pid(&dir.join("nginx.pid"));
        nginx
    }

    /// `ip netns exec NS nginx -p DIR -c DIR/nginx.conf EXTRA...`
    fn args(&self, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = ["ip", "netns", "exec", &self.ns, "nginx", "-p"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(self.dir.display().to_string());
        a.push("-c".into());
        a.push(self.dir.join("nginx.conf").display().to_string());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }
}

impl Drop for NsNginx {
    /// By pid: the test's directory may be gone by now, and `nginx -s stop`
    /// needs its config and pid file.
    fn drop(&mut self) {
        stop_nginx(self.pid);
    }
}

/// Behind a load balancer the kernel sees only the balancer, so addresses
/// are banned where the client is known: a real two-tier nginx (a "load
/// balancer" nginx adding X-Forwarded-For, and the API nginx with realip
/// and the `geo` include Portcullis writes). A credential-stuffing client
/// gets 403 while the other client behind the same balancer gets 200; an
/// unban lets it back; an IPv6 /64 ban covers a second address in the /64.
#[test]
fn geo_denylist_bans_clients_behind_a_load_balancer() {
    if !prerequisites() {
        return;
    }
    let net = Net::new();
    let dir = Daemon::config(
        "geo-lb",
        3,
        "format = \"behind_lb\"\naction = [\"log\", \"nginx-geo\"]\n",
    );
    let d_path = dir.path().display().to_string();
    let api_dir = dir.path().join("api");
    std::fs::create_dir_all(&api_dir).unwrap();
    std::fs::write(api_dir.join("banned.geo"), "").unwrap();
    let reload = format!(
        "[\"ip\", \"netns\", \"exec\", \"{}\", \"nginx\", \"-p\", \"{d_path}/api\", \"-c\", \"{d_path}/api/nginx.conf\", \"-s\", \"reload\"]",
        net.srv
    );
    add_to_main(
        &dir,
        "trusted_proxies = [\"127.0.0.1\"]\n",
        &format!(
            "[formats.behind_lb]\nnginx = '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" \"$http_x_forwarded_for\"'\n\
             [actions.nginx-geo]\ntype = \"denylist\"\npath = \"{d_path}/api/banned.geo\"\nformat = \"nginx_geo\"\nreload = {reload}\ndebounce = \"100ms\"\n"
        ),
    );
    // The API tier: realip from the balancer, the geo include, a login that
    // always fails.
    let _api = NsNginx::start(
        &net.srv,
        &api_dir,
        &format!(
            " log_format behind_lb '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" \"$http_x_forwarded_for\"';\n\
             set_real_ip_from 127.0.0.1;\n real_ip_header X-Forwarded-For;\n real_ip_recursive on;\n\
             geo $portcullis_banned {{ default 0; include {d_path}/api/banned.geo; }}\n\
             server {{\n  listen 127.0.0.1:8081;\n  access_log {d_path}/logs/access.log behind_lb;\n\
               location /v1/login {{ if ($portcullis_banned) {{ return 403; }} return 401; }}\n\
               location / {{ if ($portcullis_banned) {{ return 403; }} return 200 \"ok\\n\"; }}\n }}"
        ),
    );
    // The balancer tier: what clients reach, forwarding with X-Forwarded-For.
    let lb_dir = dir.path().join("lb");
    let _lb = NsNginx::start(
        &net.srv,
        &lb_dir,
        " server {\n  listen 192.0.2.1:80;\n  listen [2001:db8:1::1]:80;\n  location / {\n   proxy_pass http://127.0.0.1:8081;\n   proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n  }\n }",
    );
    let d = Daemon::start(dir);
    let status = |src: &str, path: &str| -> String {
        let host = if src.contains(':') {
            "[2001:db8:1::1]"
        } else {
            "192.0.2.1"
        };
        net.status(src, &format!("http://{host}{path}"), "2")
    };
    wait_for(|| status("192.0.2.2", "/") == "200", "both tiers to answer");
    assert_eq!(status("192.0.2.4", "/"), "200");

    // Credential stuffing from one client, through the balancer.
    for _ in 0..3 {
        assert_eq!(status("192.0.2.2", "/v1/login"), "401");
    }
    wait_for(
        || status("192.0.2.2", "/") == "403",
        "the stuffing client refused",
    );
    assert_eq!(
        status("192.0.2.4", "/"),
        "200",
        "the other client still served"
    );
    assert_eq!(
        d.bans(),
        ["auth 192.0.2.2 3"],
        "the client, never the balancer"
    );
    let geo = std::fs::read_to_string(d.dir.path().join("api/banned.geo")).unwrap();
    assert!(geo.contains("192.0.2.2/32 1;"), "{geo}");

    let out = d.cli(&["unban", "192.0.2.2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(
        || status("192.0.2.2", "/") == "200",
        "served again after unban",
    );

    // IPv6: the /64 is banned, a second address in it is refused, another
    // /64 is served.
    for _ in 0..3 {
        assert_eq!(status("2001:db8:1::2", "/v1/login"), "401");
    }
    wait_for(
        || status("2001:db8:1::3", "/") == "403",
        "a second address of the banned /64 refused",
    );
    assert_eq!(status("2001:db8:2::2", "/"), "200");
    let geo = std::fs::read_to_string(d.dir.path().join("api/banned.geo")).unwrap();
    assert!(geo.contains("2001:db8:1::/64 1;"), "{geo}");
}

/// A boot with many bans (past the size where the refill goes straight to
/// the kernel over netlink rather than through `nft`): every address is in
/// its set with its timeout and its jail's comment (what a lost store is
/// rebuilt from), prefixes are in theirs, and packets are dropped.
#[test]
fn nft_boot_refill_of_many_bans_is_complete() {
    if !prerequisites() {
        return;
    }
    use portcullis::decide::Ban;
    use portcullis::detect::Target;
    let mut net = Net::new();
    net.start_http();
    let dir = Daemon::config("nft-refill", 3, "action = [\"log\", \"firewall\"]\n");
    add_to_main(&dir, "", "[firewall]\nbackend = \"nftables\"\n");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ban = |target: &str, expires: Option<i64>| Ban {
        jail: "auth".into(),
        target: Target::parse(target).unwrap(),
        since: now,
        expires,
        count: 3,
        offence: 1,
        manual: false,
        incident: None,
        origin: None,
    };
    let mut bans: Vec<Ban> = (0..30_000u32)
        .map(|i| {
            ban(
                &std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string(),
                Some(now + 3600),
            )
        })
        .collect();
    bans.push(ban("192.0.2.2", Some(now + 3600)));
    bans.push(ban("192.0.2.3", None));
    bans.push(ban("2001:db8:1::/64", Some(now + 3600)));
    let store = portcullis::state::Store::open(&dir.path().join("state")).unwrap();
    let writes: Vec<_> = bans
        .iter()
        .map(|b| portcullis::state::Write::put(portcullis::state::Table::Bans, b.key(), b))
        .collect();
    store.apply(&writes).unwrap();
    drop(store);
    let d = Daemon::start_in(dir, &["ip", "netns", "exec", &net.srv]);
    wait_for(
        || !net.get("192.0.2.2", "192.0.2.1"),
        "the refilled ban to drop packets",
    );
    wait_for(
        || net.nft_elements("addr4").len() == 30_002,
        "all 30,002 addresses in the set",
    );
    assert!(!net.get("192.0.2.3", "192.0.2.1"), "the permanent ban");
    assert!(!net.get("2001:db8:1::2", "2001:db8:1::1"), "the /64");
    assert!(net.get("192.0.2.4", "192.0.2.1"), "an address never banned");
    let out = net.nft(&["-j", "list", "set", "inet", "portcullis", "addr4"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let elems = v["nftables"][1]["set"]["elem"].as_array().unwrap();
    let mut permanent = 0;
    for e in elems {
        let m = &e["elem"];
        assert_eq!(m["comment"], "auth", "{e}");
        match m["timeout"].as_i64() {
            Some(t) => assert!((3590..=3600).contains(&t), "{e}"),
            None => {
                assert_eq!(m["val"], "192.0.2.3", "{e}");
                permanent += 1;
            }
        }
    }
    assert_eq!(permanent, 1);
    // The addresses went over netlink, not through the fallback.
    assert!(
        !d.daemon_log().contains("over netlink failed"),
        "{}",
        d.daemon_log()
    );
}
