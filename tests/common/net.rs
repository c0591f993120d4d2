//! Two network namespaces joined by a veth pair, for tests that need real
//! packets (the firewall, bouncers, a two-tier nginx). Addresses are
//! documentation ranges, inside those namespaces only.

use super::*;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn sh(args: &[&str]) -> Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

pub fn must(args: &[&str]) {
    let out = sh(args);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
}

/// Whether this machine can run these tests; in CI it must.
pub fn prerequisites() -> bool {
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "nft", "ipset", "iptables", "curl", "python3"]
        .iter()
        .all(|t| {
            Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if root && tools {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must run the firewall tests: need root and ip, nft, ipset, iptables, curl, python3"
    );
    eprintln!("skipping: needs root and ip, nft, ipset, iptables, curl, python3");
    false
}

/// Two namespaces joined by a veth pair; removed on drop.
pub struct Net {
    pub srv: String,
    pub cli: String,
    http: Option<std::process::Child>,
    /// More listeners, by [`Net::listen`].
    listeners: Vec<std::process::Child>,
}

impl Net {
    pub fn new() -> Net {
        let id = format!(
            "{}{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let (srv, cli) = (format!("pcs{id}"), format!("pcc{id}"));
        let (vs, vc) = (format!("vs{id}"), format!("vc{id}"));
        must(&["ip", "netns", "add", &srv]);
        must(&["ip", "netns", "add", &cli]);
        let net = Net {
            srv: srv.clone(),
            cli: cli.clone(),
            http: None,
            listeners: Vec::new(),
        };
        must(&[
            "ip", "link", "add", &vs, "type", "veth", "peer", "name", &vc,
        ]);
        must(&["ip", "link", "set", &vs, "netns", &srv]);
        must(&["ip", "link", "set", &vc, "netns", &cli]);
        for (ns, dev, addrs) in [
            (
                &srv,
                &vs,
                vec!["192.0.2.1/24", "2001:db8:1::1/64", "2001:db8:2::1/64"],
            ),
            (
                &cli,
                &vc,
                vec![
                    "192.0.2.2/24",
                    "192.0.2.3/24",
                    "192.0.2.4/24",
                    "2001:db8:1::2/64",
                    "2001:db8:1::3/64",
                    "2001:db8:2::2/64",
                ],
            ),
        ] {
            for a in addrs {
                let mut args = vec![
                    "ip", "netns", "exec", ns, "ip", "addr", "add", a, "dev", dev,
                ];
                if a.contains(':') {
                    args.push("nodad");
                }
                must(&args);
            }
            must(&["ip", "netns", "exec", ns, "ip", "link", "set", dev, "up"]);
            must(&["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
        }
        net
    }

    pub fn start_http(&mut self) {
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.srv,
                "python3",
                "-m",
                "http.server",
                "8080",
                "--bind",
                "::",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.http = Some(child);
        wait_for(|| self.get("192.0.2.2", "192.0.2.1"), "the HTTP server");
    }

    /// One more HTTP server in the server namespace, on `port`.
    pub fn listen(&mut self, port: u16) {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.srv, "python3", "-m", "http.server"])
            .args([&port.to_string(), "--bind", "::"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.listeners.push(child);
        wait_for(
            || self.get_port("192.0.2.2", "192.0.2.1", port),
            "the second HTTP server",
        );
    }

    /// An HTTP GET from `src` in the client namespace; true on a 200.
    pub fn get(&self, src: &str, dst: &str) -> bool {
        self.get_port(src, dst, 8080)
    }

    pub fn get_port(&self, src: &str, dst: &str, port: u16) -> bool {
        let url = if dst.contains(':') {
            format!("http://[{dst}]:{port}/")
        } else {
            format!("http://{dst}:{port}/")
        };
        self.status(src, &url, "0.5") == "200"
    }

    /// The HTTP status of a GET of `url` from `src` in the client namespace
    /// (`000` when nothing answered within `max_time` seconds).
    pub fn status(&self, src: &str, url: &str, max_time: &str) -> String {
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            &self.cli,
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            max_time,
            "--interface",
            src,
            url,
        ]);
        stdout(&out)
    }

    /// Runs `nft ARGS` in the server namespace.
    pub fn nft(&self, args: &[&str]) -> Output {
        let mut all = vec!["ip", "netns", "exec", &self.srv, "nft"];
        all.extend_from_slice(args);
        sh(&all)
    }

    pub fn nft_elements(&self, set: &str) -> Vec<String> {
        nft_elements(&self.srv, set)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for mut h in self.http.take().into_iter().chain(self.listeners.drain(..)) {
            let _ = h.kill();
            let _ = h.wait();
        }
        let _ = sh(&["ip", "netns", "del", &self.srv]);
        let _ = sh(&["ip", "netns", "del", &self.cli]);
    }
}
