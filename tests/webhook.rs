//! The webhook action against a local HTTP server standing in for an IAM API:
//! it records every request it gets.

mod common;
use common::*;
use std::process::Command;

const IAM: &str = r#"
import http.server, json, sys
log = sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get('Content-Length', 0))
        body = self.rfile.read(n).decode()
        with open(log, 'a') as f:
            f.write(json.dumps({'method': 'POST', 'path': self.path, 'auth': self.headers.get('Authorization'), 'body': body}) + '\n')
        self.send_response(200); self.end_headers(); self.wfile.write(b'{}')
    def log_message(self, *a): pass
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

struct Iam {
    /// Kept for its Drop: the server stops with the test.
    _service: Service,
    log: std::path::PathBuf,
}

impl Iam {
    fn start(port: u16, log: std::path::PathBuf) -> Iam {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", IAM, &port.to_string()]).arg(&log);
        Iam {
            _service: Service::start(&mut cmd, port, "the IAM stand-in"),
            log,
        }
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

fn setup(tag: &str, port: u16) -> Daemon {
    let dir = Daemon::config(tag, 3, "action = [\"log\", \"iam\"]\n");
    let token = dir.write("iam-token", "s3cret-token\n");
    add_to_main(
        &dir,
        "",
        &format!(
            "[actions.iam]\ntype = \"webhook\"\nmethod = \"POST\"\nurl = \"http://127.0.0.1:{port}/v1/keys/{{target}}/revoke\"\nheaders = {{ \"Content-Type\" = \"application/json\" }}\nbody = '{{\"key_id\": \"{{target}}\", \"jail\": \"{{jail}}\", \"incident\": \"{{incident}}\"}}'\ntoken_file = \"{}\"\ntimeout = \"1s\"\n",
            token.display()
        ),
    );
    Daemon::start(dir)
}

#[test]
fn revocations_are_delivered_with_the_right_body() {
    let port = free_port();
    let d = setup("hook-up", port);
    let iam = Iam::start(port, d.dir.path().join("iam.log"));
    assert!(
        d.cli(&["ban", "key:key/1\"x", "--jail", "auth"])
            .status
            .success()
    );
    wait_for(|| iam.requests().len() == 1, "the revocation request");
    let r = &iam.requests()[0];
    assert_eq!(r["path"], "/v1/keys/key%2F1%22x/revoke");
    assert_eq!(r["auth"], "Bearer s3cret-token");
    let body: serde_json::Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["key_id"], "key/1\"x");
    assert_eq!(body["jail"], "auth");
    let incident = body["incident"].as_str().unwrap();
    assert_eq!(
        d.json(&["incidents", "show", incident])["target"]["value"],
        "key/1\"x"
    );
}

#[test]
fn an_outage_queues_and_a_restart_loses_nothing() {
    let port = free_port();
    let mut d = setup("hook-down", port);
    // The API is down: revocations queue.
    assert!(
        d.cli(&["ban", "key:k-1", "--jail", "auth"])
            .status
            .success()
    );
    assert!(
        d.cli(&["ban", "key:k-2", "--jail", "auth"])
            .status
            .success()
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The daemon restarts (hard) while the API is still down.
    d.kill9();
    d.spawn();
    let iam = Iam::start(port, d.dir.path().join("iam.log"));
    let t = std::time::Instant::now();
    while iam.requests().len() < 2 && t.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let log = std::fs::read_to_string(d.dir.path().join("daemon.log")).unwrap_or_default();
    assert_eq!(
        iam.requests().len(),
        2,
        "both queued revocations after the API came back; daemon log:\n{log}"
    );
    let paths: Vec<String> = iam
        .requests()
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        paths,
        ["/v1/keys/k-1/revoke", "/v1/keys/k-2/revoke"],
        "in order, each once"
    );
}
