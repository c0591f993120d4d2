//! Syslog sources against a real nginx writing its access log with
//! `access_log syslog:server=...,tag=...`: over a unix datagram socket the
//! daemon makes, and over UDP. A credential-stuffing burst is banned; lines
//! of another tag on the same socket are not counted.
//!
//! Needs `nginx` and `curl` (`.ci/run` installs them); in CI a missing one
//! fails the test.

mod common;
use common::*;
use std::process::Command;

fn have_nginx() -> bool {
    if Command::new("nginx").arg("-v").output().is_ok() {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "CI must have nginx");
    eprintln!("skipping: no nginx");
    false
}

/// A real nginx on 127.0.0.1:PORT: `/login` answers 401 and logs to the
/// syslog `server` with tag `api`; `/other` answers 401 and logs with tag
/// `other`; stopped when dropped.
struct Nginx {
    dir: std::path::PathBuf,
    port: u16,
}

impl Nginx {
    fn start(dir: &std::path::Path, server: &str) -> Nginx {
        let port = free_port();
        let d = dir.display();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n \
                 client_body_temp_path {d}/tmp;\n proxy_temp_path {d}/tmp;\n fastcgi_temp_path {d}/tmp;\n \
                 uwsgi_temp_path {d}/tmp;\n scgi_temp_path {d}/tmp;\n \
                 server {{\n  listen 127.0.0.1:{port};\n  \
                 location /login {{ access_log syslog:server={server},tag=api combined; return 401; }}\n  \
                 location /other {{ access_log syslog:server={server},tag=other combined; return 401; }}\n \
                 }}\n}}\n"
            ),
        )
        .unwrap();
        let out = Command::new("nginx")
            .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
            .output()
            .unwrap();
        assert!(out.status.success(), "nginx: {}", stderr(&out));
        Nginx {
            dir: dir.to_path_buf(),
            port,
        }
    }

    /// A GET of `path` from `src` (a loopback address): its status.
    fn get(&self, src: &str, path: &str) -> u16 {
        curl_status(&[
            "--interface",
            src,
            &format!("http://127.0.0.1:{}{path}", self.port),
        ])
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let d = self.dir.display().to_string();
        let _ = Command::new("nginx")
            .args(["-p", &d, "-c", &format!("{d}/nginx.conf"), "-s", "stop"])
            .output();
    }
}

/// A daemon whose jail `auth` reads syslog source `listen`, tag `api`.
fn daemon(tag: &str, listen: &str) -> Daemon {
    let dir = Daemon::config(
        tag,
        3,
        &format!("syslog = \"{listen}\"\nsyslog_tag = \"api\"\n"),
    );
    // nginx's workers run as another user: they must be able to write.
    add_to_main(&dir, "", "[syslog]\nsocket_mode = \"0666\"\n");
    Daemon::start(dir)
}

/// A jail's syslog source, from `status --json`.
fn syslog_source(jail: &serde_json::Value) -> serde_json::Value {
    jail["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["syslog"].is_object())
        .unwrap_or_else(|| panic!("no syslog source: {jail}"))
        .clone()
}

fn banned_through(d: &Daemon, nginx: &Nginx) {
    // Another tag on the same socket: answered, logged, never counted.
    for _ in 0..5 {
        assert_eq!(nginx.get("127.0.0.4", "/other"), 401);
    }
    for _ in 0..3 {
        assert_eq!(nginx.get("127.0.0.3", "/login"), 401);
    }
    wait_for(
        || d.bans() == ["auth 127.0.0.3 3"],
        "the ban from syslog lines",
    );
    let jail = d.jail("auth");
    assert_eq!(jail["matches"], 3, "{jail}");
    let src = syslog_source(&jail);
    assert_eq!(src["syslog"]["received"], 8, "{jail}");
    assert_eq!(src["syslog"]["dropped"], 0, "{jail}");
    assert_eq!(src["parse"]["parsed"], 3, "{jail}");
    // The table names the last decision's target.
    let table = stdout(&d.cli(&["status"]));
    assert!(table.contains("127.0.0.3"), "{table}");
}

#[test]
fn nginx_over_a_unix_socket_is_banned_and_other_tags_are_not_counted() {
    if !have_nginx() {
        return;
    }
    let tmp = TempDir::new("syslog-unix-nginx");
    let sock = tmp.path().join("nginx-syslog.sock");
    let d = daemon("syslog-unix", &format!("unix:{}", sock.display()));
    assert!(sock.exists());
    let nginx = Nginx::start(tmp.path(), &format!("unix:{}", sock.display()));
    banned_through(&d, &nginx);
}

#[test]
fn nginx_over_udp_is_banned_and_other_tags_are_not_counted() {
    if !have_nginx() {
        return;
    }
    let tmp = TempDir::new("syslog-udp-nginx");
    let port = free_port();
    let d = daemon("syslog-udp", &format!("udp:127.0.0.1:{port}"));
    let nginx = Nginx::start(tmp.path(), &format!("127.0.0.1:{port}"));
    banned_through(&d, &nginx);
}

/// Octet-counted and newline-framed messages over TCP, as rsyslog and
/// syslog-ng forward them; a stray socket file is replaced, anything else
/// at the path is refused at start.
#[test]
fn tcp_framing_and_socket_paths() {
    use std::io::Write;
    let port = free_port();
    let metrics = free_port();
    let dir = Daemon::config(
        "syslog-tcp",
        3,
        &format!("syslog = \"tcp:127.0.0.1:{port}\"\nsyslog_tag = \"api\"\n"),
    );
    add_to_main(
        &dir,
        "",
        &format!("[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"),
    );
    let d = Daemon::start(dir);
    let line = |n: u32| {
        format!(
            "<190>Nov 24 02:00:0{n} web1 api: 198.51.100.7 - - [24/Nov/2026:02:00:0{n} +0000] \"POST /login HTTP/1.1\" 401 0 \"-\" \"x\""
        )
    };
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let one = line(1);
    write!(s, "{} {one}", one.len()).unwrap();
    writeln!(s, "{}", line(2)).unwrap();
    // Another tag: not this jail's.
    writeln!(s, "{}", line(3).replace(" api: ", " other: ")).unwrap();
    let three = line(3);
    write!(s, "{} {three}", three.len()).unwrap();
    s.flush().unwrap();
    wait_for(|| d.bans() == ["auth 198.51.100.7 3"], "the ban over TCP");
    // Counted in the metrics like a file's lines.
    let out = Command::new("curl")
        .args(["-s", &format!("http://127.0.0.1:{metrics}/metrics")])
        .output()
        .unwrap();
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.starts_with("portcullis_lines_parsed_total{")
                && l.contains(&format!("source=\"syslog tcp:127.0.0.1:{port} tag api\""))
                && l.ends_with(" 3")),
        "{text}"
    );
    assert!(
        text.contains("portcullis_syslog_dropped_datagrams_total{socket=\"tcp:"),
        "{text}"
    );
    drop(d);

    let tmp = TempDir::new("syslog-path");
    let not_a_socket = tmp.write("regular.sock", "x");
    let dir = Daemon::config(
        "syslog-bad-path",
        3,
        &format!("syslog = \"unix:{}\"\n", not_a_socket.display()),
    );
    let err = fails("run", &dir);
    assert!(err.contains("is not a socket"), "{err}");
}

/// `replay --wrap syslog` (a capture of raw messages, or a file rsyslog
/// wrote) and `--wrap journal` (`journalctl -o json` output) decide exactly
/// what replaying the bare lines decides.
#[test]
fn replay_of_syslog_and_journal_captures_decides_as_the_bare_lines() {
    let tmp = TempDir::new("syslog-replay");
    let d = tmp.path().display().to_string();
    tmp.write(
        "conf/portcullis.toml",
        "[defaults]\nformat = \"combined\"\n",
    );
    tmp.write("conf/filters.d/f.toml", "[auth]\nstatus = 401\n");
    tmp.write(
        "conf/jails.d/j.toml",
        "[auth]\nfilter = \"auth\"\nmaxretry = 3\nfindtime = \"10m\"\n",
    );
    let mut bare = String::new();
    let mut syslog = String::new();
    let mut journal = String::new();
    for i in 0..200u32 {
        let ip = format!("198.51.100.{}", i % 7);
        let line = format!(
            "{ip} - - [24/Nov/2026:02:{:02}:{:02} +0000] \"POST /login?n={i} HTTP/1.1\" {} 0 \"-\" \"x\"",
            i / 60,
            i % 60,
            if i % 3 == 0 { 200 } else { 401 }
        );
        bare.push_str(&line);
        bare.push('\n');
        syslog.push_str(&format!("<190>Nov 24 02:00:01 web1 api[12]: {line}\n"));
        journal.push_str(
            &serde_json::json!({ "MESSAGE": line, "__CURSOR": format!("s=x;i={i}") }).to_string(),
        );
        journal.push('\n');
    }
    let files = [
        ("bare.log", bare, None),
        ("syslog.log", syslog, Some("syslog")),
        ("journal.json", journal, Some("journal")),
    ];
    let mut results = Vec::new();
    for (name, text, wrap) in &files {
        let path = tmp.write(name, text);
        let mut args = vec!["--config".to_string(), format!("{d}/conf")];
        if let Some(w) = wrap {
            args.extend(["--wrap".to_string(), w.to_string()]);
        }
        args.push(path.display().to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (decisions, summary) = replay_json(&args);
        assert!(!decisions.is_empty(), "{name}: no decisions");
        let formats = summary["formats"].as_object().unwrap();
        assert!(
            formats
                .values()
                .all(|f| f["unparsed"] == 0 && f["parsed"] == 200),
            "{name}: {summary}"
        );
        results.push(decision_keys(&decisions));
    }
    assert_eq!(results[0], results[1], "syslog capture");
    assert_eq!(results[0], results[2], "journal capture");
}

/// The socket path is checked: the control socket's path is a config
/// error, and a socket something listens on is never taken over.
#[test]
fn a_syslog_socket_never_takes_over_another() {
    let tmp = TempDir::new("syslog-takeover");
    let ctl = Daemon::config("syslog-ctl", 3, "");
    let control = ctl.path().join("ctl.sock");
    let jails = ctl.path().join("conf/jails.d/auth.toml");
    let text = std::fs::read_to_string(&jails).unwrap();
    std::fs::write(
        &jails,
        format!("{text}syslog = \"unix:{}\"\n", control.display()),
    )
    .unwrap();
    let err = fails("check", &ctl);
    assert!(err.contains("is the control socket"), "{err}");

    let live = tmp.path().join("live.sock");
    let _listener = std::os::unix::net::UnixDatagram::bind(&live).unwrap();
    let dir = Daemon::config(
        "syslog-live",
        3,
        &format!("syslog = \"unix:{}\"\n", live.display()),
    );
    let err = fails("run", &dir);
    assert!(err.contains("something is listening"), "{err}");
}

/// Idle TCP connections, and lines that merely start with digits, do not
/// keep a sender's messages from being counted.
#[test]
fn idle_tcp_connections_and_digit_lines_do_not_block_senders() {
    use std::io::Write;
    let port = free_port();
    let d = daemon("syslog-tcp-idle", &format!("tcp:127.0.0.1:{port}"));
    let idle: Vec<_> = (0..70)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // A raw access line first (no syslog header): counted as malformed, and
    // the messages after it still arrive.
    writeln!(
        s,
        "203.0.113.77 - - [24/Nov/2026:02:00:01 +0000] \"GET / HTTP/1.1\" 200 0"
    )
    .unwrap();
    for n in 1..=3 {
        writeln!(
            s,
            "<190>Nov 24 02:00:0{n} web1 api: 198.51.100.8 - - [24/Nov/2026:02:00:0{n} +0000] \"POST /login HTTP/1.1\" 401 0 \"-\" \"x\""
        )
        .unwrap();
    }
    wait_for(
        || d.bans() == ["auth 198.51.100.8 3"],
        "the ban despite idle connections",
    );
    let src = syslog_source(&d.jail("auth"));
    assert_eq!(src["syslog"]["malformed"], 1, "{src}");
    drop(idle);
}
