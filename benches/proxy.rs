//! Enforcement at the proxy, end to end on the real binary:
//!
//! 1. 10,000 distinct addresses over threshold at once, through the
//!    `denylist` action with `format = "nginx_geo"`, against a real nginx on
//!    loopback: time from the append until the geo file holds all 10,000 and
//!    nginx has been reloaded, and how many reloads it took.
//!
//! `cargo bench --bench proxy`. Needs `nginx`. Figures go to stdout.

#[path = "support/shared.rs"]
mod shared;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn main() {
    if Command::new("nginx").arg("-v").output().is_err() {
        println!("proxy bench: needs nginx; not run");
        return;
    }
    let dir = std::env::temp_dir().join(format!("pcbench-proxy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["conf/jails.d", "conf/filters.d", "logs", "nginx/tmp"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let d = dir.display();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.join("nginx/banned.geo"), "").unwrap();
    std::fs::write(
        dir.join("nginx/nginx.conf"),
        format!(
            "worker_processes 1;\npid {d}/nginx/nginx.pid;\nerror_log {d}/nginx/error.log;\nevents {{}}\nhttp {{\n access_log off;\n client_body_temp_path {d}/nginx/tmp;\n proxy_temp_path {d}/nginx/tmp;\n fastcgi_temp_path {d}/nginx/tmp;\n uwsgi_temp_path {d}/nginx/tmp;\n scgi_temp_path {d}/nginx/tmp;\n geo $portcullis_banned {{ default 0; include {d}/nginx/banned.geo; }}\n server {{ listen 127.0.0.1:{port}; location / {{ if ($portcullis_banned) {{ return 403; }} return 200; }} }}\n}}\n"
        ),
    )
    .unwrap();
    let nginx = |extra: &[&str]| {
        Command::new("nginx")
            .args([
                "-p",
                &format!("{d}/nginx"),
                "-c",
                &format!("{d}/nginx/nginx.conf"),
            ])
            .args(extra)
            .status()
            .unwrap()
            .success()
    };
    assert!(nginx(&[]), "nginx did not start");
    // The reload command counts itself, then reloads the real nginx.
    let reload = format!(
        "[\"sh\", \"-c\", \"echo >> {d}/reloads && exec nginx -p {d}/nginx -c {d}/nginx/nginx.conf -s reload\"]"
    );
    std::fs::write(
        dir.join("conf/portcullis.toml"),
        format!(
            "state_dir = \"{d}/state\"\ncontrol_socket = \"{d}/ctl.sock\"\nmax_bans_per_minute = 100000\n\
             [actions.geo]\ntype = \"denylist\"\npath = \"{d}/nginx/banned.geo\"\nformat = \"nginx_geo\"\nreload = {reload}\n\
             [defaults]\nformat = \"combined\"\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.join("conf/filters.d/f.toml"), "[auth]\nstatus = 401\n").unwrap();
    std::fs::write(
        dir.join("conf/jails.d/j.toml"),
        format!(
            "[auth]\nfilter = \"auth\"\nlogpath = \"{d}/logs/access.log\"\nmaxretry = 1\naction = [\"geo\"]\n"
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
    // The start's reconcile writes the (empty) file and reloads once.
    let reloads = || {
        std::fs::read_to_string(dir.join("reloads"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    while reloads() < 1 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = reloads();
    let lines = shared::offender_lines(10_000);
    let entries = || {
        std::fs::read_to_string(dir.join("nginx/banned.geo"))
            .map(|s| s.lines().filter(|l| l.ends_with(" 1;")).count())
            .unwrap_or(0)
    };
    let t = Instant::now();
    std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("logs/access.log"))
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    while entries() < 10_000 || reloads() == before {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "not all bans arrived"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let elapsed = t.elapsed();
    // Anything still debounced would show as a second reload.
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "10,000 distinct addresses over threshold at once: all in the nginx geo file, nginx reloaded, after {:.0} ms; {} reload(s)",
        elapsed.as_secs_f64() * 1e3,
        reloads() - before
    );
    let _ = daemon.kill();
    let _ = daemon.wait();
    nginx(&["-s", "stop"]);
    let _ = std::fs::remove_dir_all(&dir);
}
