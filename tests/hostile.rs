//! Hostile input (README "Safety"): every byte of a request line, header,
//! user name and key id is written by an attacker. Each test drives the real
//! binary; where nginx writes the log or reads the deny-list, a real nginx on
//! loopback does (started here, clients bound to 127.0.0.N so each is its own
//! address).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The seed's audit format, as nginx is configured with it.
const API_AUDIT: &str = r#"'$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent "$http_referer" "$http_user_agent" $request_length $request_time $upstream_response_time $http_x_api_key_id'"#;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// A real nginx writing `api_audit` lines to `DIR/logs/access.log`:
/// `/login` answers 401, everything else is proxied to an upstream group whose
/// first server is down (so `$upstream_response_time` is often a list), and a
/// key id in `DIR/revoked.map` gets 403.
struct Nginx {
    dir: PathBuf,
    port: u16,
    pid: i32,
}

impl Nginx {
    fn start(dir: &Path) -> Nginx {
        let (port, live, dead) = (free_port(), free_port(), free_port());
        let d = dir.display();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        if !dir.join("revoked.map").exists() {
            std::fs::write(dir.join("revoked.map"), "").unwrap();
        }
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n\
                 log_format api_audit {API_AUDIT};\n access_log {d}/logs/access.log api_audit;\n\
                 client_body_temp_path {d}/tmp;\n proxy_temp_path {d}/tmp;\n fastcgi_temp_path {d}/tmp;\n\
                 uwsgi_temp_path {d}/tmp;\n scgi_temp_path {d}/tmp;\n\
                 map $http_x_api_key_id $portcullis_revoked {{ default 0; include {d}/revoked.map; }}\n\
                 upstream app {{ server 127.0.0.1:{dead} max_fails=0; server 127.0.0.1:{live} max_fails=0; }}\n\
                 server {{ listen 127.0.0.1:{live}; access_log off; location / {{ return 200 \"app\\n\"; }} }}\n\
                 server {{\n  listen 127.0.0.1:{port};\n  location /login {{ return 401; }}\n\
                 location / {{ if ($portcullis_revoked) {{ return 403; }} proxy_pass http://app; proxy_next_upstream error; }}\n }}\n}}\n"
            ),
        )
        .unwrap();
        let mut n = Nginx {
            dir: dir.to_path_buf(),
            port,
            pid: 0,
        };
        n.run(&[]);
        wait_for(|| n.get("127.0.0.1", "/", &[]) == 200, "nginx to answer");
        n.pid = nginx_pid(&dir.join("nginx.pid"));
        n
    }

    fn run(&self, signal: &[&str]) -> bool {
        Command::new("nginx")
            .arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .args(signal)
            .output()
            .expect("nginx is installed")
            .status
            .success()
    }

    fn stop(&self) {
        self.run(&["-s", "stop"]);
        wait_for(|| !self.dir.join("nginx.pid").exists(), "nginx to stop");
    }

    /// Starts it again after [`Nginx::stop`]; the new master's pid is kept.
    fn restart(&mut self) -> bool {
        let ok = self.run(&[]);
        if ok {
            self.pid = nginx_pid(&self.dir.join("nginx.pid"));
        }
        ok
    }

    /// A request from `from` (a loopback address); returns the status.
    fn get(&self, from: &str, path: &str, args: &[&str]) -> u16 {
        let url = format!("http://127.0.0.1:{}{path}", self.port);
        let mut all = vec!["--interface", from];
        all.extend_from_slice(args);
        all.push(&url);
        curl_status(&all)
    }

    fn with_key(&self, from: &str, key: &str) -> u16 {
        self.get(from, "/v1/orders", &["-H", &format!("X-Api-Key-Id: {key}")])
    }
}

impl Drop for Nginx {
    /// By pid: the test's directory may be gone by now (the daemon that
    /// owns it is often dropped first), and `nginx -s stop` needs it.
    fn drop(&mut self) {
        stop_nginx(self.pid);
    }
}

/// A daemon config reading nginx's log in `api_audit`, with `main` extras
/// (top-level keys and tables) and `jails` (TOML), filters from the repository.
fn config(dir: &TempDir, main: &str, jails: &str) {
    let d = dir.path().display();
    dir.write(
        "conf/portcullis.toml",
        &format!(
            "state_dir = \"{d}/state\"\ncontrol_socket = \"{d}/ctl.sock\"\nignore = [\"127.0.0.1\"]\n{main}\n[defaults]\nformat = \"api_audit\"\n"
        ),
    );
    for f in ["auth-failure", "api-request"] {
        dir.write(
            &format!("conf/filters.d/{f}.toml"),
            &std::fs::read_to_string(repo().join(format!("filters.d/{f}.toml"))).unwrap(),
        );
    }
    dir.write(
        "conf/jails.d/j.toml",
        &jails.replace("LOG", &format!("{d}/logs/access.log")),
    );
}

fn start(dir: TempDir) -> Daemon {
    if !dir.path().join("logs/access.log").exists() {
        dir.write("logs/access.log", "");
    }
    Daemon::start(dir)
}

fn needs(tools: &[&str]) -> bool {
    let ok = is_root()
        && tools.iter().all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run these tests as root with {tools:?}"
        );
        eprintln!("skipped: needs root and {tools:?}");
    }
    ok
}

const AUTH_JAIL: &str =
    "[auth]\nfilter = \"auth-failure\"\nlogpath = \"LOG\"\nmaxretry = 5\nfindtime = \"10m\"\n";

/// Finding 4: `curl -u 'a [b:pw'` makes nginx write `a [b` unescaped where
/// `$remote_user` stands; the line must still count for its client.
#[test]
fn basic_auth_user_names_cannot_hide_the_client() {
    if !needs(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("hostile-user");
    config(&dir, "", AUTH_JAIL);
    let nginx = Nginx::start(dir.path());
    let d = start(dir);
    for user in [
        "a [b",
        "x [b] [",
        " [ [",
        "a [22/Nov/2026:10:00:00 +0000] b",
        "z",
    ] {
        let status = nginx.get("127.0.0.9", "/login", &["-u", &format!("{user}:pw")]);
        assert_eq!(status, 401);
    }
    wait_for(
        || d.bans().contains(&"auth 127.0.0.9 5".to_string()),
        "the attacker to be banned",
    );
    let j = d.jail("auth");
    assert_eq!(j["unparsed"], 0, "{j}");
    let log = std::fs::read_to_string(d.dir.path().join("logs/access.log")).unwrap();
    assert!(
        log.contains(" - a [b ["),
        "nginx wrote the user name raw: {log}"
    );
}

/// Finding 5: retries make nginx write `$upstream_response_time` as a list
/// (`0.000, 0.001`); the key id after it must still be read as the key id.
#[test]
fn upstream_lists_do_not_shift_the_key_id() {
    if !needs(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("hostile-lists");
    config(
        &dir,
        "",
        "[leaked]\nfilter = \"api-request\"\nlogpath = \"LOG\"\nkey = \"api_key\"\ndistinct = \"client\"\nmaxretry = 5\nfindtime = \"5m\"\ntarget = \"key\"\n",
    );
    let nginx = Nginx::start(dir.path());
    let d = start(dir);
    for n in 11..16 {
        assert_eq!(nginx.with_key(&format!("127.0.0.{n}"), "key_live"), 200);
        assert_eq!(nginx.with_key(&format!("127.0.0.{n}"), "key_live"), 200);
    }
    wait_for(
        || d.bans().iter().any(|b| b.starts_with("leaked key_live ")),
        "key_live to be revoked",
    );
    let log = std::fs::read_to_string(d.dir.path().join("logs/access.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains(", ") && l.ends_with(" key_live")),
        "nginx wrote upstream lists: {log}"
    );
    assert_eq!(d.bans().len(), 1, "{:?}", d.bans());
    assert_eq!(d.jail("leaked")["unparsed"], 0);
}

fn denylist_main(dir: &TempDir, reload: &str) -> String {
    let d = dir.path().display();
    format!(
        "ignore_keys = [\"key_admin\"]\n[actions.nginx-keys]\ntype = \"denylist\"\npath = \"{d}/revoked.map\"\nformat = \"nginx_map\"\ndebounce = \"50ms\"\nreload = [\"sh\", \"-c\", \"{reload}\"]\n[actions.hook]\ntype = \"exec\"\nban = [\"/bin/true\", \"{{target}}\"]\n"
    )
}

const KEY_JAIL: &str = "[keys]\nfilter = \"api-request\"\nlogpath = \"LOG\"\nkey = \"api_key\"\nmaxretry = 3\nfindtime = \"10m\"\ntarget = \"key\"\naction = [\"log\", \"nginx-keys\", \"hook\"]\n";

/// Finding 1: a key id the deny-list (a tab) or the command (`;`) cannot
/// express is skipped by that action, recorded, and never stops a start; an
/// action that fails at start (nginx not running) is retried until it works.
#[test]
fn refused_targets_and_failing_actions_never_stop_the_daemon() {
    if !needs(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("hostile-refused");
    let reload = format!(
        "nginx -p {0} -c {0}/nginx.conf -s reload",
        dir.path().display()
    );
    config(&dir, &denylist_main(&dir, &reload), KEY_JAIL);
    let mut nginx = Nginx::start(dir.path());
    let mut d = start(dir);
    for key in ["a\tb", "a;b", "key_bad"] {
        for n in 0..3 {
            nginx.with_key(&format!("127.0.0.{}", 20 + n), key);
        }
    }
    wait_for(
        || nginx.with_key("127.0.0.30", "key_bad") == 403,
        "key_bad to be revoked at nginx",
    );
    wait_for(|| d.bans().len() == 3, "three revocations in the ledger");
    let health = d.json(&["status"])["actions"].clone();
    assert_eq!(health["nginx-keys"]["refused_targets"], 1, "{health}");
    assert_eq!(health["hook"]["refused_targets"], 2, "{health}");
    assert!(health["nginx-keys"]["failing_since"].is_null(), "{health}");
    // The incident of the tab key says which action refused it and why.
    let incidents = d.json(&["incidents"]);
    let tab = incidents
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["target"]["value"] == "a\tb")
        .expect("an incident for the tab key");
    let refused: Vec<&serde_json::Value> = tab["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["ok"] == false)
        .collect();
    assert!(
        refused
            .iter()
            .any(|a| a["action"] == "nginx-keys"
                && a["error"].as_str().unwrap().starts_with("refused")),
        "{tab}"
    );
    // Human status says it too.
    let human = stdout(&d.cli(&["status"]));
    assert!(
        human.contains("action nginx-keys: 1 target(s) it cannot express"),
        "{human}"
    );
    // Restart: the refused revocations are still in the ledger, and the daemon starts.
    d.stop();
    d.spawn();
    assert_eq!(d.bans().len(), 3);
    // nginx down at start: the deny-list cannot reload; the daemon runs anyway,
    // says so, and repairs the action once nginx is back.
    d.stop();
    nginx.stop();
    d.spawn();
    // The re-apply runs beside the engine: the status says so until it fails.
    wait_for(
        || d.json(&["status"])["actions"]["nginx-keys"]["failing_since"].is_i64(),
        "the deny-list's failed re-apply to show in status",
    );
    let human = stdout(&d.cli(&["status"]));
    assert!(
        human.contains("action nginx-keys: FAILING since"),
        "{human}"
    );
    // Detection goes on meanwhile.
    d.append(&format!("{}\n", audit_line("192.0.2.77", 200, "key_other")));
    d.append(&format!("{}\n", audit_line("192.0.2.78", 200, "key_other")));
    d.append(&format!("{}\n", audit_line("192.0.2.79", 200, "key_other")));
    wait_for(
        || d.bans().len() == 4,
        "detection to go on while an action fails",
    );
    assert!(nginx.restart(), "nginx restarts");
    // Retries back off (1, 2, 4, 8 s ...): allow a few rounds.
    let start = std::time::Instant::now();
    while !d.json(&["status"])["actions"]["nginx-keys"]["failing_since"].is_null() {
        assert!(start.elapsed().as_secs() < 40, "the action did not recover");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let map = std::fs::read_to_string(d.dir.path().join("revoked.map")).unwrap();
    assert!(
        map.contains("key_bad") && map.contains("key_other"),
        "{map}"
    );
    wait_for(
        || nginx.with_key("127.0.0.31", "key_other") == 403,
        "key_other revoked at nginx",
    );
}

fn audit_line(ip: &str, status: u16, key: &str) -> String {
    format!(
        "{ip} - - [23/Nov/2026:10:00:00 +0000] \"GET /v1/orders HTTP/1.1\" {status} 3 \"-\" \"curl/8\" 80 0.001 0.001 {key}"
    )
}

/// Finding 3: nginx's `map` matches key ids ignoring case, so revoking
/// `KEY_ADMIN` there would block `key_admin`, which `ignore_keys` protects.
#[test]
fn ignored_keys_cannot_be_revoked_through_another_case() {
    if !needs(&["nginx", "curl"]) {
        return;
    }
    let dir = TempDir::new("hostile-case");
    let reload = format!(
        "nginx -p {0} -c {0}/nginx.conf -s reload",
        dir.path().display()
    );
    config(&dir, &denylist_main(&dir, &reload), KEY_JAIL);
    // The premise, checked on the real nginx: its map ignores case.
    std::fs::write(dir.path().join("revoked.map"), "\"KEY_PROBE\" 1;\n").unwrap();
    let nginx = Nginx::start(dir.path());
    assert_eq!(nginx.with_key("127.0.0.40", "key_probe"), 403);
    std::fs::write(dir.path().join("revoked.map"), "").unwrap();
    assert!(nginx.run(&["-s", "reload"]));
    wait_for(
        || nginx.with_key("127.0.0.40", "key_probe") == 200,
        "the probe to be lifted",
    );
    let d = start(dir);
    for n in 0..6 {
        assert_eq!(
            nginx.with_key(&format!("127.0.0.{}", 41 + n), "KEY_ADMIN"),
            200
        );
    }
    wait_for(
        || d.jail("keys")["ignored"] == 6,
        "the matches to be seen and ignored",
    );
    assert!(d.bans().is_empty(), "{:?}", d.bans());
    assert_eq!(nginx.with_key("127.0.0.50", "key_admin"), 200);
    let out = d.cli(&["ban", "key:Key_Admin", "--jail", "keys"]);
    assert!(
        !out.status.success() && stderr(&out).contains("allowlisted"),
        "{}",
        stderr(&out)
    );
}

/// Findings 2, 4, 5, 6, 8, 9: `fixtures/hostile/` replayed with its exact
/// decisions (generated by `fixtures/generate.py` from its own layout).
#[test]
fn hostile_fixture_gives_its_exact_decisions() {
    let fx = repo().join("fixtures/hostile");
    let want: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fx.join("expected.json")).unwrap()).unwrap();
    let tmp = TempDir::new("hostile-fixture");
    tmp.write(
        "portcullis.toml",
        &std::fs::read_to_string(fx.join("portcullis.toml")).unwrap(),
    );
    tmp.write(
        "jails.d/hostile.toml",
        &std::fs::read_to_string(fx.join("jails.toml")).unwrap(),
    );
    for f in ["auth-failure", "api-request"] {
        tmp.write(
            &format!("filters.d/{f}.toml"),
            &std::fs::read_to_string(repo().join(format!("filters.d/{f}.toml"))).unwrap(),
        );
    }
    for (file, w) in want.as_object().unwrap() {
        let mut args = vec!["--config".to_string(), tmp.path().display().to_string()];
        for j in w["jails"].as_array().unwrap() {
            args.extend(["--jail".into(), j.as_str().unwrap().to_string()]);
        }
        args.push(fx.join(file).display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (decisions, summary) = replay_json(&args);
        let want_keys = decision_keys(w["decisions"].as_array().unwrap());
        assert_eq!(decision_keys(&decisions), want_keys, "{file}");
        let f = &summary["formats"][w["format"].as_str().unwrap()];
        assert_eq!(f["lines"], w["lines"], "{file}: {f}");
        assert_eq!(f["unparsed"], w["unparsed"], "{file}: {f}");
        let future = f["reasons"]
            .as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.starts_with("time ahead of the clock"))
            .map_or(0, |(_, r)| r["count"].as_u64().unwrap());
        assert_eq!(future, w["future"].as_u64().unwrap(), "{file}: {f}");
    }
}

/// Finding 7: with `max_tracked` full of one-match spoofed keys, an attacker
/// whose matches are far apart is still counted (eviction takes the keys
/// with the fewest matches first), and memory stays bounded.
#[test]
fn an_attacker_survives_a_flood_of_spoofed_keys() {
    let tmp = TempDir::new("hostile-flood");
    tmp.write("portcullis.toml", "[defaults]\nformat = \"combined\"\n");
    tmp.write("filters.d/auth.toml", "[auth]\nstatus = 401\n");
    tmp.write(
        "jails.d/j.toml",
        "[auth]\nfilter = \"auth\"\nmaxretry = 5\nfindtime = \"1h\"\nmax_tracked = 10000\n",
    );
    // Two failures, then one every 12,000 flood lines: more than the map holds.
    let mut log = String::new();
    let line = |ip: &str, sec: u32| {
        format!(
            "{ip} - - [23/Nov/2026:10:{:02}:{:02} +0000] \"POST /login HTTP/1.1\" 401 0 \"-\" \"x\"\n",
            sec / 60,
            sec % 60
        )
    };
    log.push_str(&line("203.0.113.99", 0));
    log.push_str(&line("203.0.113.99", 0));
    let mut n: u64 = 0;
    for round in 0..3u32 {
        for _ in 0..12_000 {
            n += 1;
            let ip = format!("2001:db8:{:x}:{:x}::1", n >> 16, n & 0xffff);
            log.push_str(&line(&ip, 1 + round * 60 + (n % 60) as u32));
        }
        log.push_str(&line("203.0.113.99", 2 + round * 60 + 59));
    }
    let path = tmp.write("flood.log", &log);
    let (decisions, summary) = replay_json(&[
        "--config",
        tmp.path().to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    let keys = decision_keys(&decisions);
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(keys[0].1, "203.0.113.99");
    assert_eq!(keys[0].2, 5);
    let j = &summary["jails"]["auth"];
    assert!(j["tracked"].as_u64().unwrap() <= 10_000, "{j}");
}

/// Finding 12: Envoy's status 0 (client gone) and Traefik 1.x's common log
/// format (bare `-` for an empty quoted field) are read, not refused.
#[test]
fn real_proxy_output_envoy_status_zero_and_traefik_clf() {
    let tmp = TempDir::new("hostile-proxies");
    tmp.write(
        "portcullis.toml",
        "forwarded_for_has_peer = true\n[defaults]\nformat = \"combined\"\n",
    );
    tmp.write("filters.d/gone.toml", "[gone]\nstatus = [0, 401]\n");
    tmp.write(
        "jails.d/j.toml",
        "[envoy-gone]\nfilter = \"gone\"\nformat = \"envoy\"\nmaxretry = 3\n\n[traefik]\nfilter = \"gone\"\nformat = \"traefik_clf\"\nmaxretry = 3\n",
    );
    let envoy: String = (0..3)
        .map(|n| format!("[2026-11-23T10:00:0{n}.000Z] \"GET /reviews/0 HTTP/1.1\" 0 DC 0 0 5 - \"203.0.113.4\" \"curl/8\" \"id{n}\" \"reviews:9080\" \"-\"\n"))
        .collect();
    let traefik: String = (0..3)
        .map(|n| format!("172.17.1.3 - - [23/Nov/2026:10:00:0{n} +0000] \"GET /api HTTP/1.1\" 401 450 - \"curl/7.68.0\" 30{n} - - 25ms\n"))
        .collect();
    let e = tmp.write("envoy.log", &envoy);
    let t = tmp.write("traefik.log", &traefik);
    let cfg = tmp.path().to_str().unwrap();
    let (d, s) = replay_json(&["--config", cfg, "--jail", "envoy-gone", e.to_str().unwrap()]);
    assert_eq!(s["formats"]["envoy"]["unparsed"], 0, "{s}");
    assert_eq!(decision_keys(&d)[0].1, "203.0.113.4");
    let (d, s) = replay_json(&["--config", cfg, "--jail", "traefik", t.to_str().unwrap()]);
    assert_eq!(s["formats"]["traefik_clf"]["unparsed"], 0, "{s}");
    assert_eq!(decision_keys(&d)[0].1, "172.17.1.3");
}

/// Finding 8: a jail on Envoy's peer-less default format is refused until
/// the operator says the proxy appends the peer to X-Forwarded-For.
#[test]
fn peerless_formats_need_an_explicit_assumption() {
    let tmp = TempDir::new("hostile-envoy-check");
    tmp.write("portcullis.toml", "[defaults]\nformat = \"envoy\"\n");
    tmp.write("filters.d/a.toml", "[a]\nstatus = 401\n");
    tmp.write("jails.d/j.toml", "[e]\nfilter = \"a\"\n");
    let out = bin()
        .args(["check", "--config"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("forwarded_for_has_peer = true"),
        "{}",
        stderr(&out)
    );
    tmp.write(
        "portcullis.toml",
        "forwarded_for_has_peer = true\n[defaults]\nformat = \"envoy\"\n",
    );
    let out = bin()
        .args(["check", "--config"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Finding 9: IPv4-mapped prefixes are IPv4 prefixes; a manual ban covering
/// allowlisted addresses through the mapped range is refused.
#[test]
fn mapped_prefixes_cannot_cover_the_allowlist() {
    let dir = Daemon::config("hostile-mapped", 3, "");
    let d = Daemon::start(dir);
    for t in ["::ffff:0:0/96", "::/0", "::ffff:127.0.0.0/104"] {
        let out = d.cli(&["ban", t, "--jail", "auth"]);
        assert!(!out.status.success(), "{t} must be refused");
        // Refused as covering the allowlist, or (a /0) as too wide to ban.
        let err = stderr(&out);
        assert!(
            err.contains("allowlisted") || err.contains("too wide"),
            "{t}: {err}"
        );
    }
    assert!(
        d.cli(&["ban", "::ffff:198.51.100.0/120", "--jail", "auth"])
            .status
            .success()
    );
    assert_eq!(d.bans(), vec!["auth 198.51.100.0/24 0".to_string()]);
}

/// Finding 10: hostile key ids reach a screen escaped, and the printed undo
/// command, run by a shell, unbans exactly that key and runs nothing else.
#[test]
fn printed_commands_are_quoted_and_screens_escaped() {
    let dir = Daemon::config("hostile-screen", 3, "");
    let d = Daemon::start(dir);
    let marker = d.dir.path().join("pwned");
    let evil = format!("k$(touch {})\x1b[31m", marker.display());
    assert!(
        d.cli(&["ban", &format!("key:{evil}"), "--jail", "auth"])
            .status
            .success()
    );
    let bans = stdout(&d.cli(&["bans"]));
    assert!(
        !bans.contains('\x1b') && bans.contains("\\x1b[31m"),
        "{bans}"
    );
    let list = d.json(&["incidents"]);
    let id = list[0]["id"].as_str().unwrap().to_string();
    let shown = stdout(&d.cli(&["incidents", "show", &id]));
    assert!(!shown.contains('\x1b'), "{shown}");
    let undo = shown
        .lines()
        .find_map(|l| l.split_once("undo with: ").map(|(_, c)| c.to_string()))
        .expect("an undo command");
    let cmd = format!(
        "{} --config {}",
        undo.replacen("portcullis", env!("CARGO_BIN_EXE_portcullis"), 1),
        d.dir.path().join("conf").display()
    );
    let out = Command::new("bash").args(["-c", &cmd]).output().unwrap();
    assert!(out.status.success(), "{cmd}: {}", stderr(&out));
    assert!(
        !marker.exists(),
        "the printed command ran a command substitution"
    );
    assert!(d.bans().is_empty(), "{:?}", d.bans());
}

/// Finding 11: idle connections, oversized requests and refused peers cost
/// the daemon bounded memory and CPU; the CLI keeps working; a member of
/// `control_group` through a supplementary group is let in.
#[test]
fn control_socket_survives_floods() {
    if !needs(&["setpriv", "python3"]) {
        return;
    }
    let dir = Daemon::config("hostile-socket", 3, "");
    add_to_main(&dir, "control_group = \"4242\"\n", "");
    let d = Daemon::start_in(dir, &["prlimit", "--nofile=80:80", "--"]);
    let pid = d.child.as_ref().unwrap().id();
    let sock = d.dir.path().join("ctl.sock");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let status = |key: &str| -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        s.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap()
    };
    let cpu = || -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let log = d
        .dir
        .path()
        .join(format!("daemon-{}.log", std::process::id()));
    // 1. 300 idle connections from an allowed peer: more than the fd limit.
    let idle: Vec<std::os::unix::net::UnixStream> = (0..300)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&sock).ok())
        .collect();
    assert!(idle.len() > 100);
    let (cpu0, log0) = (cpu(), std::fs::metadata(&log).unwrap().len());
    std::thread::sleep(std::time::Duration::from_secs(3));
    let ticks = cpu() - cpu0;
    let grown = std::fs::metadata(&log).unwrap().len() - log0;
    assert!(ticks < 60, "the daemon spun: {ticks} ticks in 3 s");
    assert!(grown < 20_000, "the log grew {grown} bytes in 3 s");
    drop(idle);
    wait_for(
        || d.cli(&["status"]).status.success(),
        "the CLI after the flood",
    );
    // 2. A 50 MB request without a newline, from an allowed peer.
    let big = |args: &[&str]| {
        // The daemon answers and closes after at most 1 MiB of it; the answer
        // can then be lost to a reset (the rest was never read), which is fine.
        let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\ntry:\n  s.sendall(b'x'*50_000_000)\nexcept OSError:\n  pass\ntry:\n  print(s.recv(4096).decode())\nexcept OSError as e:\n  print('RESET', e)";
        let mut c = Command::new(args[0]);
        c.args(&args[1..])
            .args(["/usr/bin/python3", "-c", script])
            .arg(&sock);
        stdout(&c.output().unwrap())
    };
    let answer = big(&["env"]);
    assert!(
        answer.contains("request longer than") || answer.starts_with("RESET"),
        "{answer}"
    );
    // 3. The same from a refused peer: answered before anything is read.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let answer = big(&[
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
    ]);
    assert!(
        answer.contains("permission denied") || answer.starts_with("RESET"),
        "{answer}"
    );
    // A small request from a refused peer always gets its answer.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .args(["status", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("uid 65534 may not use"),
        "{}",
        stderr(&out)
    );
    assert!(
        status("VmHWM:") < 100_000,
        "peak RSS {} kB",
        status("VmHWM:")
    );
    // 4. Refused peers in numbers do not lock out the CLI.
    let script = "import socket,sys\nc=[]\nfor i in range(900):\n  s=socket.socket(socket.AF_UNIX)\n  s.connect(sys.argv[1])\n  c.append(s)\nprint(len(c))";
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(d.cli(&["status"]).status.success());
    // 5. control_group through a supplementary group.
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--groups=4242"])
        .arg(env!("CARGO_BIN_EXE_portcullis"))
        .args(["status", "--socket"])
        .arg(&sock)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Long, high-byte headers (each byte written by nginx as `\xHH`) make lines
/// longer than 64 KiB; the default line cap covers what a stock nginx can
/// write, so such lines still count for their client.
#[test]
fn long_escaped_headers_cannot_hide_the_client() {
    let tmp = TempDir::new("hostile-long");
    tmp.write("portcullis.toml", "[defaults]\nformat = \"combined\"\n");
    tmp.write("filters.d/auth.toml", "[auth]\nstatus = 401\n");
    tmp.write(
        "jails.d/j.toml",
        "[auth]\nfilter = \"auth\"\nmaxretry = 3\n",
    );
    let e = |n: usize| "\\x80".repeat(n);
    let log: String = (0..3)
        .map(|n| {
            format!(
                "203.0.113.44 - - [22/Nov/2026:09:25:0{n} +0000] \"POST /v1/login?{} HTTP/1.1\" 401 0 \"{}\" \"{}\"\n",
                e(2000),
                e(8000),
                e(8000)
            )
        })
        .collect();
    assert!(log.len() / 3 > 70_000);
    let path = tmp.write("long.log", &log);
    let (d, s) = replay_json(&[
        "--config",
        tmp.path().to_str().unwrap(),
        path.to_str().unwrap(),
    ]);
    assert_eq!(s["formats"]["combined"]["unparsed"], 0, "{s}");
    assert_eq!(decision_keys(&d)[0].1, "203.0.113.44");
}
