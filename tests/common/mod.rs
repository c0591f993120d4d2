//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod net;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "portcullis-test-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs `portcullis replay --json` and returns (decisions, summary).
pub fn replay_json(args: &[&str]) -> (Vec<serde_json::Value>, serde_json::Value) {
    let out = bin()
        .arg("replay")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "replay failed: {}", stderr(&out));
    let mut decisions = Vec::new();
    let mut summary = serde_json::Value::Null;
    for line in stdout(&out).lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        match v["type"].as_str() {
            Some("decision") => decisions.push(v),
            Some("summary") => summary = v["summary"].clone(),
            other => panic!("unexpected line type {other:?}"),
        }
    }
    (decisions, summary)
}

/// The (jail, target, count, time) of each decision, for exact comparison.
pub fn decision_keys(ds: &[serde_json::Value]) -> Vec<(String, String, u64, String)> {
    let mut v: Vec<_> = ds
        .iter()
        .map(|d| {
            (
                d["jail"].as_str().unwrap().to_string(),
                d["target"].as_str().unwrap().to_string(),
                d["count"].as_u64().unwrap(),
                d["time"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// A daemon under test: its own config, state, socket and log files in a temp dir.
pub struct Daemon {
    pub dir: TempDir,
    pub child: Option<std::process::Child>,
    /// Command prefix, e.g. `ip netns exec NS`.
    prefix: Vec<String>,
}

/// A `combined` line from `ip` with status 401. Each line is distinct (a
/// sequence number in the query), as real lines are by time and content.
pub fn attack_line(ip: &str) -> String {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!(
        "{ip} - - [22/Nov/2026:08:00:00 +0000] \"POST /v1/login?n={n} HTTP/1.1\" 401 0 \"-\" \"curl/8\"\n"
    )
}

impl Daemon {
    /// Writes a config whose jail `auth` reads `DIR/logs/access.log` (401s, `maxretry`).
    pub fn config(tag: &str, maxretry: u32, extra_jail: &str) -> TempDir {
        let dir = TempDir::new(tag);
        let d = dir.path().display().to_string();
        dir.write(
            "conf/portcullis.toml",
            &format!(
                "state_dir = \"{d}/state\"\ncontrol_socket = \"{d}/ctl.sock\"\nignore = [\"127.0.0.1\"]\n[defaults]\nformat = \"combined\"\n"
            ),
        );
        dir.write("conf/filters.d/auth.toml", "[auth]\nstatus = 401\n");
        dir.write(
            "conf/jails.d/auth.toml",
            &format!(
                "[auth]\nfilter = \"auth\"\nlogpath = \"{d}/logs/access.log\"\nmaxretry = {maxretry}\nfindtime = \"1h\"\n{}{extra_jail}",
                if extra_jail.contains("bantime =") { "" } else { "bantime = \"1h\"\n" }
            ),
        );
        dir.write("logs/access.log", "");
        dir
    }

    pub fn start(dir: TempDir) -> Daemon {
        Daemon::start_in(dir, &[])
    }

    /// Starts the daemon under a command prefix (`ip netns exec NS`).
    pub fn start_in(dir: TempDir, prefix: &[&str]) -> Daemon {
        let mut d = Daemon {
            dir,
            child: None,
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
        };
        d.spawn();
        d
    }

    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    /// Starts the daemon with extra `run` arguments (`--recover`).
    pub fn spawn_with(&mut self, extra: &[&str]) {
        let log = std::fs::File::create(
            self.dir
                .path()
                .join(format!("daemon-{}.log", std::process::id())),
        )
        .unwrap();
        let mut cmd = match self.prefix.split_first() {
            Some((program, args)) => {
                let mut c = std::process::Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_portcullis"));
                c
            }
            None => bin(),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(self.dir.path().join("conf"))
            .args(extra)
            .env("PORTCULLIS_LOG", "debug")
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for(
            || self.cli(&["status"]).status.success(),
            "the daemon to answer",
        );
    }

    /// What the daemon has logged so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("daemon-{}.log", std::process::id())),
        )
        .unwrap_or_default()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("logs/access.log")
    }

    pub fn append(&self, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.log_path())
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = bin();
        cmd.args(args)
            .arg("--config")
            .arg(self.dir.path().join("conf"));
        cmd.output().unwrap()
    }

    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a);
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn jail(&self, name: &str) -> serde_json::Value {
        self.json(&["status", name])["jails"][0].clone()
    }

    pub fn bans(&self) -> Vec<String> {
        let v = self.json(&["bans"]);
        let mut out: Vec<String> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|b| {
                format!(
                    "{} {} {}",
                    b["jail"].as_str().unwrap(),
                    b["target"]["value"].as_str().unwrap(),
                    b["count"]
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Waits until jail `name` has counted `n` matches (and fails if it passes `n`).
    pub fn wait_matches(&self, name: &str, n: u64) {
        wait_for(
            || self.jail(name)["matches"].as_u64().unwrap() >= n,
            &format!("{n} matches in {name}"),
        );
        assert_eq!(
            self.jail(name)["matches"].as_u64().unwrap(),
            n,
            "matches in {name}"
        );
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            c.wait().unwrap();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Polls `cond` every 20 ms for up to 10 s.
pub fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(10) {
        if cond() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("timed out waiting for {what}");
}

/// Runs `portcullis CMD --config DIR/conf` (`check` or `run`), which must
/// fail; returns what it said.
pub fn fails(cmd: &str, dir: &TempDir) -> String {
    let out = bin()
        .args([cmd, "--config"])
        .arg(dir.path().join("conf"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "`{cmd}` succeeded: {}", stdout(&out));
    stderr(&out)
}

/// A free TCP port on loopback (for the servers tests start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Adds TOML tables (`[fleet] ...`) to a test config's `portcullis.toml`,
/// before its `[defaults]`; `top` goes at the very top (plain keys).
pub fn add_to_main(dir: &TempDir, top: &str, tables: &str) {
    let path = dir.path().join("conf/portcullis.toml");
    let main = std::fs::read_to_string(&path).unwrap();
    let (head, defaults) = main.split_once("[defaults]").unwrap();
    std::fs::write(path, format!("{top}{head}{tables}\n[defaults]{defaults}")).unwrap();
}

/// A background server a test runs (SMTP, Redis, an HTTP stand-in), killed
/// when dropped.
pub struct Service(Option<std::process::Child>);

impl Service {
    /// Spawns `cmd` with its output discarded and waits until it listens on `port`.
    pub fn start(cmd: &mut std::process::Command, port: u16, what: &str) -> Service {
        let child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
        let service = Service(Some(child));
        wait_for(
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(),
            what,
        );
        service
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The elements of set `set` of table `inet portcullis` in network namespace
/// `ns`, as text (`192.0.2.2`, `2001:db8::/64`), sorted; empty if there is
/// no such set.
pub fn nft_elements(ns: &str, set: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            ns,
            "nft",
            "-j",
            "list",
            "set",
            "inet",
            "portcullis",
            set,
        ])
        .output()
        .unwrap();
    if !out.status.success() {
        return vec![];
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut elems = Vec::new();
    for item in v["nftables"].as_array().unwrap() {
        for e in item["set"]["elem"].as_array().into_iter().flatten() {
            // A bare value, or an object with timeout, expiry and comment.
            let val = if e["elem"].is_object() {
                &e["elem"]["val"]
            } else {
                e
            };
            let text = match val {
                serde_json::Value::String(s) => s.clone(),
                _ if val["prefix"].is_object() => format!(
                    "{}/{}",
                    val["prefix"]["addr"].as_str().unwrap(),
                    val["prefix"]["len"]
                ),
                other => other.to_string(),
            };
            elems.push(text);
        }
    }
    elems.sort();
    elems.dedup();
    elems
}

/// The HTTP status curl gets for `args` (options and URL); 0 if none came.
pub fn curl_status(args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "3",
        ])
        .args(args)
        .output()
        .unwrap();
    stdout(&out).parse().unwrap_or(0)
}

/// The real MaxMind DB files `.ci/run` fetches (`$PORTCULLIS_GEOIP_DIR`,
/// default `/var/cache/portcullis-ci/geoip`): GeoLite2 City, Country, ASN
/// and ip-location-db's `geo-whois-asn-country` (and its IPv4-only build). `None` (the test returns)
/// outside CI when they are missing; in CI (`CI` set) that fails the test.
pub fn geo_dir() -> Option<PathBuf> {
    const FILES: [&str; 5] = [
        "GeoLite2-City.mmdb",
        "GeoLite2-Country.mmdb",
        "GeoLite2-ASN.mmdb",
        "geo-whois-asn-country.mmdb",
        "geo-whois-asn-country-ipv4.mmdb",
    ];
    let dir = PathBuf::from(
        std::env::var("PORTCULLIS_GEOIP_DIR")
            .unwrap_or_else(|_| "/var/cache/portcullis-ci/geoip".into()),
    );
    if FILES.iter().all(|f| dir.join(f).is_file()) {
        return Some(dir);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the geo tests with real databases in {} (see .ci/run)",
        dir.display()
    );
    eprintln!("skipping: no MaxMind DB files in {}", dir.display());
    None
}

/// The pid of the nginx master a test started with `pid DIR/nginx.pid;`,
/// read once it is written: what stops it even after its directory (and so
/// its config and pid file, which `nginx -s stop` needs) is gone.
pub fn nginx_pid(pid_file: &Path) -> i32 {
    let mut pid = 0;
    wait_for(
        || {
            pid = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            pid > 0
        },
        "nginx to write its pid",
    );
    pid
}

/// Stops an nginx master (and so its workers) by pid.
pub fn stop_nginx(pid: i32) {
    if pid > 0 {
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}
