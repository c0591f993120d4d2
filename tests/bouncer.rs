//! The bouncer API (`[bouncer_api]`) served to CrowdSec's own bouncers:
//! Debian's `crowdsec-firewall-bouncer` (nftables mode, in a network
//! namespace the test makes) and `crowdsec-custom-bouncer` (running a
//! script), unchanged, polling a real daemon.
//!
//! The bouncers come from Debian's packages, unpacked (never installed:
//! installing starts their services on the host) into
//! `$PORTCULLIS_CROWDSEC_BOUNCERS` (default
//! `/var/cache/portcullis-ci/crowdsec-bouncers`); `.ci/run` does that. In CI
//! (`CI` set) a missing bouncer fails the test.

mod common;
use common::net::*;
use common::*;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const KEY: &str = "pc-test-key-5f2b8c0d9e1a4b7c";
const WRONG_KEY: &str = "pc-test-key-000000000000wrong";

/// A daemon whose jail `auth` feeds the bouncer API on `listen`.
fn config(tag: &str, listen: &str) -> TempDir {
    config_with(tag, listen, "")
}

/// The same with more `[bouncer_api]` keys (`extra`, TOML lines).
fn config_with(tag: &str, listen: &str, extra: &str) -> TempDir {
    let dir = Daemon::config(tag, 3, "action = [\"log\", \"bouncer_api\"]\n");
    let key = dir.write("conf/bouncers/firewall.key", &format!("{KEY}\n"));
    add_to_main(
        &dir,
        "",
        &format!(
            "[bouncer_api]\nlisten = \"{listen}\"\napi_key_files = [\"{}\"]\n{extra}",
            key.display()
        ),
    );
    dir
}

/// A GET on the API over plain TCP: (status, body).
fn get(port: u16, target: &str, key: Option<&str>) -> (u16, serde_json::Value) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let key = key.map_or(String::new(), |k| format!("X-Api-Key: {k}\r\n"));
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nUser-Agent: test-bouncer/1\r\n{key}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap())
}

fn values(v: &serde_json::Value) -> Vec<String> {
    let mut out: Vec<String> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|d| d["value"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn stream_and_live_answers_follow_bans_unbans_and_reloads() {
    let port = free_port();
    let d = Daemon::start(config("bouncer-api", &format!("127.0.0.1:{port}")));
    // Nothing yet; a startup poll is the whole (empty) list.
    let (code, v) = get(port, "/v1/decisions/stream?startup=true", Some(KEY));
    assert_eq!(code, 200);
    assert_eq!(v, serde_json::json!({"new": [], "deleted": []}));

    for _ in 0..3 {
        d.append(&attack_line("203.0.113.9"));
    }
    wait_for(|| !d.bans().is_empty(), "the ban");
    wait_for(
        || !values(&get(port, "/v1/decisions?ip=203.0.113.9", Some(KEY)).1).is_empty(),
        "the decision to be served",
    );
    let (_, v) = get(port, "/v1/decisions/stream", Some(KEY));
    let new = &v["new"].as_array().unwrap()[0];
    assert_eq!(values(&v["new"]), vec!["203.0.113.9"]);
    assert!(v["deleted"].as_array().unwrap().is_empty());
    assert_eq!(new["scope"], "Ip");
    assert_eq!(new["type"], "ban");
    assert_eq!(new["scenario"], "auth");
    assert_eq!(new["origin"], "portcullis");
    // bantime 1h, just begun: 1h0m0s or 59mNNs.
    let dur = new["duration"].as_str().unwrap();
    assert!(dur == "1h0m0s" || dur.starts_with("59m"), "{dur}");

    // Polled already: nothing new; live mode answers null for others.
    let (_, v) = get(port, "/v1/decisions/stream", Some(KEY));
    assert!(values(&v["new"]).is_empty() && values(&v["deleted"]).is_empty());
    assert_eq!(
        get(port, "/v1/decisions?ip=203.0.113.10", Some(KEY)).1,
        serde_json::Value::Null
    );

    // Wrong or no key: 403, nothing else.
    let (code, v) = get(port, "/v1/decisions/stream?startup=true", Some(WRONG_KEY));
    assert_eq!(
        (code, v["message"].as_str()),
        (403, Some("access forbidden"))
    );
    assert_eq!(get(port, "/v1/decisions?ip=203.0.113.9", None).0, 403);

    // A reload changes nothing a bouncer sees.
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (_, v) = get(port, "/v1/decisions/stream", Some(KEY));
    assert!(
        values(&v["new"]).is_empty() && values(&v["deleted"]).is_empty(),
        "{v}"
    );

    // An unban is a deletion at the next poll.
    let out = d.cli(&["unban", "203.0.113.9"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(
        || {
            get(port, "/v1/decisions?ip=203.0.113.9", Some(KEY))
                .1
                .is_null()
        },
        "the decision to end",
    );
    let (_, v) = get(port, "/v1/decisions/stream", Some(KEY));
    assert_eq!(values(&v["deleted"]), vec!["203.0.113.9"]);
    assert!(values(&v["new"]).is_empty());

    let status = d.json(&["status"]);
    let b = &status["bouncer_api"];
    assert_eq!(b["decisions"], 0);
    assert_eq!(b["forbidden"], 2);
    let who = b["bouncers"][0]["bouncer"].as_str().unwrap();
    assert!(
        who.starts_with("firewall test-bouncer/1 127.0.0.1"),
        "{who}"
    );
    let text = stdout(&d.cli(&["status"]));
    assert!(text.contains("bouncer API on 127.0.0.1:"), "{text}");
}

#[test]
fn a_reload_reads_new_keys_and_the_old_ones_stop_working() {
    let port = free_port();
    let d = Daemon::start(config("bouncer-keys", &format!("127.0.0.1:{port}")));
    assert_eq!(get(port, "/v1/decisions/stream", Some(KEY)).0, 200);
    d.dir.write(
        "conf/bouncers/firewall.key",
        "pc-test-key-rotated-0123456789\n",
    );
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(get(port, "/v1/decisions/stream", Some(KEY)).0, 403);
    assert_eq!(
        get(
            port,
            "/v1/decisions/stream",
            Some("pc-test-key-rotated-0123456789")
        )
        .0,
        200
    );
    // A bad key file is a refused reload: the running keys stay.
    d.dir.write("conf/bouncers/firewall.key", "short\n");
    let out = d.cli(&["reload"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("firewall.key"), "{}", stderr(&out));
    assert_eq!(
        get(
            port,
            "/v1/decisions/stream",
            Some("pc-test-key-rotated-0123456789")
        )
        .0,
        200
    );
}

/// Where Debian's bouncer packages are unpacked, or `None` (skip) outside CI.
fn bouncers() -> Option<PathBuf> {
    let dir = PathBuf::from(
        std::env::var("PORTCULLIS_CROWDSEC_BOUNCERS")
            .unwrap_or_else(|_| "/var/cache/portcullis-ci/crowdsec-bouncers".into()),
    );
    let present = ["crowdsec-firewall-bouncer", "crowdsec-custom-bouncer"]
        .iter()
        .all(|b| dir.join("usr/bin").join(b).exists());
    if present {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the bouncer tests: unpack Debian's crowdsec-firewall-bouncer and \
         crowdsec-custom-bouncer into {} (see .ci/run)",
        dir.display()
    );
    eprintln!(
        "skipping: Debian's CrowdSec bouncers are not unpacked in {}",
        dir.display()
    );
    None
}

/// A bouncer process, killed when dropped; its output goes to `log`.
struct Bouncer {
    child: Child,
    log: PathBuf,
}

impl Bouncer {
    fn start(prefix: &[&str], bin: PathBuf, config: PathBuf, log: PathBuf) -> Bouncer {
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(prefix.first().map_or(bin.as_os_str(), |p| p.as_ref()))
            .args(prefix.iter().skip(1))
            .args(if prefix.is_empty() { None } else { Some(&bin) })
            .arg("-c")
            .arg(&config)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Bouncer { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        // SIGTERM first: the firewall bouncer removes its tables on the way out.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The firewall bouncer's config, as its package ships it, pointed at us.
fn firewall_bouncer_yaml(key: &str, api: &str, table: &str, dir: &std::path::Path) -> String {
    format!(
        "mode: nftables
pid_dir: {}/
update_frequency: 1s
daemonize: false
log_mode: stdout
log_level: debug
api_url: {api}
api_key: {key}
insecure_skip_verify: false
disable_ipv6: false
deny_action: DROP
deny_log: false
supported_decisions_types:
  - ban
blacklists_ipv4: {table}-blacklists
blacklists_ipv6: {table}6-blacklists
nftables:
  ipv4:
    enabled: true
    set-only: false
    table: {table}
    chain: {table}-chain
  ipv6:
    enabled: true
    set-only: false
    table: {table}6
    chain: {table}6-chain
prometheus:
  enabled: false
",
        dir.display()
    )
}

/// The elements of a bouncer's set in `ns` (its own tables, family ip).
fn bouncer_set(ns: &str, table: &str) -> String {
    let out = sh(&[
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "list",
        "set",
        "ip",
        table,
        &format!("{table}-blacklists"),
    ]);
    stdout(&out)
}

#[test]
fn debian_firewall_bouncer_enforces_bans_in_the_kernel() {
    if !prerequisites() {
        return;
    }
    let Some(pkgs) = bouncers() else { return };
    let mut net = Net::new();
    net.start_http();
    let dir = config("bouncer-fw", "127.0.0.1:8081");
    let d = Daemon::start_in(dir, &["ip", "netns", "exec", &net.srv]);
    let bin = pkgs.join("usr/bin/crowdsec-firewall-bouncer");

    // A bouncer with a wrong key is refused: it says 403 and enforces nothing.
    let bad_cfg = d.dir.write(
        "bad-bouncer.yaml",
        &firewall_bouncer_yaml(WRONG_KEY, "http://127.0.0.1:8081/", "csbad", d.dir.path()),
    );
    let bad = Bouncer::start(
        &["ip", "netns", "exec", &net.srv],
        bin.clone(),
        bad_cfg,
        d.dir.path().join("bad-bouncer.log"),
    );
    wait_for(
        || bad.log().contains("access forbidden"),
        "the wrong-key bouncer to be refused",
    );
    assert!(!bouncer_set(&net.srv, "csbad").contains("192.0.2"));
    drop(bad);

    let cfg = d.dir.write(
        "bouncer.yaml",
        &firewall_bouncer_yaml(KEY, "http://127.0.0.1:8081/", "crowdsec", d.dir.path()),
    );
    let fw = Bouncer::start(
        &["ip", "netns", "exec", &net.srv],
        bin,
        cfg,
        d.dir.path().join("bouncer.log"),
    );
    wait_for(
        || bouncer_set(&net.srv, "crowdsec").contains("crowdsec-blacklists"),
        "the bouncer's table",
    );
    assert!(net.get("192.0.2.2", "192.0.2.1"));

    for _ in 0..3 {
        d.append(&attack_line("192.0.2.2"));
    }
    wait_for(|| !d.bans().is_empty(), "the ban");
    let banned = Instant::now();
    wait_for(
        || bouncer_set(&net.srv, "crowdsec").contains("192.0.2.2"),
        "the bouncer to add the address",
    );
    // Its poll interval is 1 s; allow one more for the round trip.
    assert!(
        banned.elapsed() < Duration::from_millis(2500),
        "enforced after {:?}",
        banned.elapsed()
    );
    assert!(
        !net.get("192.0.2.2", "192.0.2.1"),
        "the banned client still gets through"
    );
    assert!(
        net.get("192.0.2.4", "192.0.2.1"),
        "another client is dropped too"
    );

    let out = d.cli(&["unban", "192.0.2.2"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(
        || !bouncer_set(&net.srv, "crowdsec").contains("192.0.2.2"),
        "the bouncer to remove the address",
    );
    assert!(net.get("192.0.2.2", "192.0.2.1"));
    assert!(fw.log().contains("1 decision added"), "{}", fw.log());
}

#[test]
fn debian_custom_bouncer_runs_its_script_on_ban_and_unban() {
    let Some(pkgs) = bouncers() else { return };
    let port = free_port();
    let d = Daemon::start(config("bouncer-custom", &format!("127.0.0.1:{port}")));
    let calls = d.dir.path().join("calls.txt");
    let script = d.dir.write(
        "record.sh",
        &format!(
            "#!/bin/sh\necho \"$1 $2 $3 $4 $5\" >> {}\n",
            calls.display()
        ),
    );
    sh(&["chmod", "755", script.to_str().unwrap()]);
    let yaml = |key: &str| {
        format!(
            "bin_path: {}
feed_via_stdin: false
total_retries: 0
scenarios_containing: []
scenarios_not_containing: []
origins: []
piddir: {}
update_frequency: 1s
cache_retention_duration: 10s
daemonize: false
log_mode: stdout
log_level: debug
api_url: http://127.0.0.1:{port}/
api_key: {key}
prometheus:
  enabled: false
",
            script.display(),
            d.dir.path().display()
        )
    };
    let bin = pkgs.join("usr/bin/crowdsec-custom-bouncer");
    let bad_cfg = d.dir.write("bad.yaml", &yaml(WRONG_KEY));
    let bad = Bouncer::start(&[], bin.clone(), bad_cfg, d.dir.path().join("bad.log"));
    wait_for(
        || bad.log().contains("access forbidden"),
        "the wrong-key bouncer to be refused",
    );
    drop(bad);

    let cfg = d.dir.write("custom.yaml", &yaml(KEY));
    let _custom = Bouncer::start(&[], bin, cfg, d.dir.path().join("custom.log"));
    let read = || std::fs::read_to_string(&calls).unwrap_or_default();
    for _ in 0..3 {
        d.append(&attack_line("203.0.113.9"));
    }
    wait_for(|| read().contains("add 203.0.113.9"), "the script's add");
    let add = read();
    let fields: Vec<&str> = add.lines().next().unwrap().split(' ').collect();
    assert_eq!(fields[0..2], ["add", "203.0.113.9"], "{add}");
    let secs: u64 = fields[2].parse().unwrap();
    assert!((3500..=3600).contains(&secs), "{add}");
    assert_eq!(fields[3], "auth", "the scenario is the jail: {add}");
    assert!(fields[4].starts_with('{'), "the decision as JSON: {add}");
    assert!(add.contains("\"scenario\":\"auth\""), "{add}");
    let out = d.cli(&["unban", "203.0.113.9"]);
    assert!(out.status.success(), "{}", stderr(&out));
    wait_for(|| read().contains("del 203.0.113.9"), "the script's del");
    // The wrong-key bouncer never reached the script.
    assert_eq!(read().matches("add ").count(), 1, "{}", read());
}

/// With `tls_cert`/`tls_key` the API speaks HTTPS only, and a real bouncer
/// that trusts the certificate polls it.
#[test]
fn tls_serves_https_to_a_real_bouncer() {
    let Some(pkgs) = bouncers() else { return };
    let port = free_port();
    let certs = TempDir::new("bouncer-tls-certs");
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let out = sh(&[
        "openssl",
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "openssl: {}", stderr(&out));
    let d = Daemon::start(config_with(
        "bouncer-tls",
        &format!("127.0.0.1:{port}"),
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
    ));
    let url = format!("https://127.0.0.1:{port}/v1/decisions/stream?startup=true");
    let header = format!("X-Api-Key: {KEY}");
    let cacert = cert.to_str().unwrap();
    assert_eq!(curl_status(&["--cacert", cacert, "-H", &header, &url]), 200);
    assert_eq!(curl_status(&["--cacert", cacert, &url]), 403);
    // Plain HTTP gets no answer.
    let plain = format!("http://127.0.0.1:{port}/v1/decisions/stream");
    assert_eq!(curl_status(&["-H", &header, &plain]), 0);

    let calls = d.dir.path().join("calls.txt");
    let script = d.dir.write(
        "record.sh",
        &format!("#!/bin/sh\necho \"$1 $2\" >> {}\n", calls.display()),
    );
    sh(&["chmod", "755", script.to_str().unwrap()]);
    let cfg = d.dir.write(
        "custom.yaml",
        &format!(
            "bin_path: {}
piddir: {}
update_frequency: 1s
daemonize: false
log_mode: stdout
log_level: debug
api_url: https://127.0.0.1:{port}/
api_key: {KEY}
ca_cert_path: {}
prometheus:
  enabled: false
",
            script.display(),
            d.dir.path().display(),
            cert.display()
        ),
    );
    let custom = Bouncer::start(
        &[],
        pkgs.join("usr/bin/crowdsec-custom-bouncer"),
        cfg,
        d.dir.path().join("custom.log"),
    );
    for _ in 0..3 {
        d.append(&attack_line("203.0.113.9"));
    }
    wait_for(
        || {
            std::fs::read_to_string(&calls)
                .unwrap_or_default()
                .contains("add 203.0.113.9")
        },
        "the bouncer to get the ban over HTTPS",
    );
    assert!(!custom.log().contains("certificate"), "{}", custom.log());
}

/// A restart forgets every bouncer's cursor; what they hold from before is
/// not forgotten: a ban that does not come back after the restart (here,
/// the jail no longer feeds the API) is a deletion at their next poll.
#[test]
fn a_restart_tells_bouncers_what_ended_while_it_was_down() {
    let port = free_port();
    let mut d = Daemon::start(config("bouncer-restart", &format!("127.0.0.1:{port}")));
    get(port, "/v1/decisions/stream?startup=true", Some(KEY));
    for ip in ["203.0.113.9", "203.0.113.10"] {
        for _ in 0..3 {
            d.append(&attack_line(ip));
        }
    }
    wait_for(
        || values(&get(port, "/v1/decisions", Some(KEY)).1).len() == 2,
        "both decisions to be served",
    );
    let (_, v) = get(port, "/v1/decisions/stream", Some(KEY));
    assert_eq!(values(&v["new"]), vec!["203.0.113.10", "203.0.113.9"]);
    d.stop();
    let jail = d.dir.path().join("conf/jails.d/auth.toml");
    let text = std::fs::read_to_string(&jail).unwrap();
    std::fs::write(&jail, text.replace("\"bouncer_api\"", "\"log\"")).unwrap();
    d.spawn();
    let (_, v) = get(port, "/v1/decisions/stream", Some(KEY));
    assert_eq!(
        values(&v["deleted"]),
        vec!["203.0.113.10", "203.0.113.9"],
        "{v}"
    );
    assert!(values(&v["new"]).is_empty(), "{v}");
    // Told once.
    let (_, v) = get(port, "/v1/decisions/stream", Some(KEY));
    assert!(values(&v["deleted"]).is_empty(), "{v}");
}

/// A TCP connection to 127.0.0.1:`port` from `src` (another loopback address).
fn connect_from(src: std::net::Ipv4Addr, port: u16) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let addr = |ip: std::net::Ipv4Addr, port: u16| libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        };
        let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
        let local = addr(src, 0);
        assert_eq!(
            libc::bind(fd, &local as *const _ as *const libc::sockaddr, len),
            0
        );
        let remote = addr(std::net::Ipv4Addr::LOCALHOST, port);
        assert_eq!(
            libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len),
            0
        );
        std::net::TcpStream::from_raw_fd(fd)
    }
}

/// Slow clients cannot keep a bouncer from being answered: not by holding
/// every connection with an unfinished request from many addresses, nor by
/// announcing a body they never send, nor by holding idle connections from
/// the bouncer's own address. One address holds at most 8 connections:
/// a ninth pushes out the one of them that waited longest.
#[test]
fn slow_clients_cannot_starve_the_bouncers() {
    let port = free_port();
    let _d = Daemon::start(config("bouncer-slow", &format!("127.0.0.1:{port}")));
    let mut held = Vec::new();
    let from = |host: u8| connect_from(std::net::Ipv4Addr::new(127, 0, 0, host), port);
    for host in 2..12u8 {
        for _ in 0..8 {
            let mut s = from(host);
            s.write_all(b"GET /v1/decisions/stream HTTP/1.1\r\n")
                .unwrap();
            held.push(s);
        }
    }
    for host in 12..20u8 {
        for _ in 0..8 {
            let mut s = from(host);
            s.write_all(b"POST /v1/usage-metrics HTTP/1.1\r\nContent-Length: 1000000\r\n\r\n")
                .unwrap();
            held.push(s);
        }
    }
    for _ in 0..8 {
        held.push(from(1));
    }
    std::thread::sleep(Duration::from_millis(200));
    for _ in 0..3 {
        let t = Instant::now();
        let (code, _) = get(port, "/v1/decisions/stream?startup=true", Some(KEY));
        assert_eq!(code, 200);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "answered after {:?}",
            t.elapsed()
        );
    }
    // A ninth connection from one address closes its oldest idle one.
    let mut first = from(20);
    first
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let rest: Vec<_> = (0..8).map(|_| from(20)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut b = [0u8; 1];
    match first.read(&mut b) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the oldest connection was kept: {other:?}"),
    }
    drop((held, rest));
}
