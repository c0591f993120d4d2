//! API-key revocation against a real nginx on loopback, configured with the
//! map include Portcullis writes.

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

struct Nginx {
    dir: std::path::PathBuf,
    port: u16,
}

impl Nginx {
    fn conf(&self) -> std::path::PathBuf {
        self.dir.join("nginx.conf")
    }

    fn start(dir: &std::path::Path) -> Nginx {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        std::fs::write(dir.join("revoked.map"), "").unwrap();
        std::fs::write(
            dir.join("nginx.conf"),
            format!(
                "worker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n access_log off;\n client_body_temp_path {d}/tmp;\n proxy_temp_path {d}/tmp;\n fastcgi_temp_path {d}/tmp;\n uwsgi_temp_path {d}/tmp;\n scgi_temp_path {d}/tmp;\n map $http_x_api_key_id $portcullis_revoked {{ default 0; include {d}/revoked.map; }}\n server {{\n  listen 127.0.0.1:{port};\n  location / {{ if ($portcullis_revoked) {{ return 403; }} return 200 \"ok\\n\"; }}\n }}\n}}\n"
            ),
        )
        .unwrap();
        std::fs::create_dir_all(dir.join("tmp")).unwrap();
        let nginx = Nginx {
            dir: dir.to_path_buf(),
            port,
        };
        let out = Command::new("nginx")
            .args(["-p"])
            .arg(dir)
            .arg("-c")
            .arg(nginx.conf())
            .output()
            .expect("nginx is installed");
        assert!(
            out.status.success(),
            "nginx failed to start: {}",
            stderr(&out)
        );
        wait_for(|| nginx.status("anything") == 200, "nginx to answer");
        nginx
    }

    fn status(&self, key: &str) -> u16 {
        curl_status(&[
            "-H",
            &format!("X-Api-Key-Id: {key}"),
            &format!("http://127.0.0.1:{}/", self.port),
        ])
    }

    fn test_config(&self) -> bool {
        Command::new("nginx")
            .args(["-t", "-q", "-p"])
            .arg(&self.dir)
            .arg("-c")
            .arg(self.conf())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = Command::new("nginx")
            .args(["-p"])
            .arg(&self.dir)
            .arg("-c")
            .arg(self.conf())
            .args(["-s", "stop"])
            .output();
    }
}

fn api_line(key: &str, n: usize) -> String {
    format!(
        "198.51.100.{} - - [22/Nov/2026:08:00:00 +0000] \"POST /v1/orders?n={n} HTTP/1.1\" 401 0 \"-\" \"k6\" 300 0.010 0.009 {key}\n",
        n % 250 + 1
    )
}

fn setup(tag: &str) -> (Daemon, Nginx) {
    let dir = Daemon::config(tag, 3, "");
    let nginx = Nginx::start(dir.path());
    // Each reload run is counted, then nginx reloads.
    let counter = dir.path().join("reloads");
    let script = dir.write(
        "reload.sh",
        &format!(
            "#!/bin/sh\necho reload >> {}\nexec nginx -p {} -c {} -s reload\n",
            counter.display(),
            dir.path().display(),
            nginx.conf().display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    add_to_main(
        &dir,
        "max_bans_per_minute = 1000\n",
        &format!(
            "[actions.nginx-keys]\ntype = \"denylist\"\npath = \"{}\"\nformat = \"nginx_map\"\nreload = [\"{}\"]\ndebounce = \"300ms\"\n",
            dir.path().join("revoked.map").display(),
            script.display()
        ),
    );
    dir.write(
        "conf/jails.d/keys.toml",
        &format!(
            "[keys]\nfilter = \"auth\"\nlogpath = \"{}\"\nformat = \"api_audit\"\nkey = \"api_key\"\ntarget = \"key\"\nmaxretry = 3\naction = [\"log\", \"nginx-keys\"]\n",
            dir.path().join("logs/api.log").display()
        ),
    );
    dir.write("logs/api.log", "");
    (Daemon::start(dir), nginx)
}

fn reloads(d: &Daemon) -> usize {
    std::fs::read_to_string(d.dir.path().join("reloads")).map_or(0, |t| t.lines().count())
}

fn append_api(d: &Daemon, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(d.dir.path().join("logs/api.log"))
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn nginx_answers_200_then_403_after_revocation_then_200_after_unban() {
    let (d, nginx) = setup("nginx-revoke");
    assert_eq!(nginx.status("key_live_1"), 200);
    append_api(
        &d,
        &(0..3)
            .map(|n| api_line("key_live_1", n))
            .collect::<String>(),
    );
    wait_for(
        || nginx.status("key_live_1") == 403,
        "nginx to refuse the revoked key",
    );
    assert_eq!(nginx.status("key_live_2"), 200, "other keys still pass");
    assert_eq!(d.bans(), ["keys key_live_1 3"]);
    assert!(d.cli(&["unban", "key:key_live_1"]).status.success());
    wait_for(
        || nginx.status("key_live_1") == 200,
        "the key to be reinstated",
    );
}

#[test]
fn a_burst_of_100_revocations_is_one_reload() {
    let (d, nginx) = setup("nginx-burst");
    wait_for(|| reloads(&d) == 1, "the reload at start (reconcile)");
    let lines: String = (0..100)
        .flat_map(|k| (0..3).map(move |n| api_line(&format!("burst_{k:03}"), k * 3 + n)))
        .collect();
    append_api(&d, &lines);
    wait_for(|| d.bans().len() == 100, "100 revocations");
    wait_for(|| nginx.status("burst_099") == 403, "the last key refused");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(reloads(&d), 2, "one reload for the whole burst");
    assert_eq!(nginx.status("burst_000"), 403);
    let map = std::fs::read_to_string(d.dir.path().join("revoked.map")).unwrap();
    assert_eq!(map.lines().filter(|l| l.ends_with(" 1;")).count(), 100);
}

#[test]
fn hostile_key_ids_are_escaped_or_refused_and_nginx_still_loads() {
    let (d, nginx) = setup("nginx-hostile");
    let hostile = [
        r#"a"b"#,
        "semi;colon",
        "br{ce}s",
        "~.*",
        "default",
        r"back\slash",
        "$host",
        "sp ace",
    ];
    for k in hostile {
        let out = d.cli(&["ban", &format!("key:{k}"), "--jail", "keys"]);
        assert!(out.status.success(), "{k}: {}", stderr(&out));
    }
    wait_for(
        || nginx.status("sp ace") == 403,
        "the hostile keys to be written",
    );
    assert!(nginx.test_config(), "nginx -t accepts the generated file");
    // nginx reloads asynchronously; old workers may answer a moment longer.
    for k in hostile {
        wait_for(
            || nginx.status(k) == 403,
            &format!("{k:?} to be revoked, matched literally"),
        );
    }
    // `~.*` must not have become a regex matching every key.
    assert_eq!(nginx.status("innocent"), 200);
    // A key id with a newline cannot be written safely: refused by this
    // action (recorded as such), never written, and no failure of the action.
    assert!(
        d.cli(&["ban", "key:evil\n\"x\" 1;", "--jail", "keys"])
            .status
            .success()
    );
    wait_for(
        || {
            d.json(&["status"])["actions"]["nginx-keys"]["last_refused"]
                .as_str()
                .is_some_and(|e| e.contains("refusing key id"))
        },
        "the refusal",
    );
    let health = &d.json(&["status"])["actions"]["nginx-keys"];
    assert_eq!(health["refused_targets"], 1, "{health}");
    assert!(health["failing_since"].is_null(), "{health}");
    let map = std::fs::read_to_string(d.dir.path().join("revoked.map")).unwrap();
    assert!(!map.contains("evil"), "{map}");
    assert!(nginx.test_config());
}
