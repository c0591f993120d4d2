//! `webhook`: calls a gateway or IAM admin API (or a cloud firewall) on ban
//! and unban. Requests go through a queue persisted in the state store, so an
//! API outage loses nothing: they are retried with backoff and delivered when
//! it comes back, also across a daemon restart.
//!
//! ```toml
//! [actions.iam]
//! type = "webhook"
//! method = "POST"
//! url = "https://iam.internal/v1/keys/{target}/revoke"
//! headers = { "Content-Type" = "application/json" }
//! body = '{"key_id": "{target}", "jail": "{jail}", "incident": "{incident}"}'
//! token_file = "/etc/portcullis/iam-token"      # sent as `Authorization: Bearer ...`
//! unban = { method = "POST", url = "https://iam.internal/v1/keys/{target}/reinstate" }
//! timeout = "5s"
//! ```
//!
//! Placeholders: `{target}`, `{kind}` (`address`/`key`), `{jail}`,
//! `{incident}`, `{bantime}` (seconds, 0 = permanent). Values are untrusted:
//! percent-encoded in the URL, JSON-escaped in the body (so the body template
//! is JSON), and refused in headers if they hold a control character.

use super::{Action, Change};
use crate::config::de::ConfigDuration;
use crate::detect::Target;
use crate::state::{Store, Table, Write};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    #[serde(default = "post")]
    pub method: String,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    /// A bearer token, read from this file (not from the config).
    pub token_file: Option<PathBuf>,
    /// The request that undoes a ban; none: unbans call nothing.
    pub unban: Option<UnbanRequest>,
    /// Per attempt. Default 10s.
    pub timeout: Option<ConfigDuration>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnbanRequest {
    #[serde(default = "post")]
    pub method: String,
    pub url: String,
    pub body: Option<String>,
}

fn post() -> String {
    "POST".into()
}

/// A request waiting for delivery (persisted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pending {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<String>,
    pub attempts: u32,
}

/// Fills a template in one pass; `escape` prepares each value for where it
/// goes. Values are never scanned again, so a key id `k{jail}` stays
/// `k{jail}` instead of picking up the jail's name.
pub(crate) fn fill(
    template: &str,
    values: &[(&str, &str)],
    escape: impl Fn(&str) -> String,
) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let name = &after[..close];
            values
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (close, *v))
        });
        match value {
            Some((close, v)) => {
                out.push_str(&escape(v));
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn url_escape(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn json_escape(v: &str) -> String {
    let quoted = serde_json::to_string(v).expect("strings serialise");
    quoted[1..quoted.len() - 1].to_string()
}

pub struct WebhookAction {
    name: String,
    config: WebhookConfig,
    token: Option<String>,
    store: Arc<Store>,
    wake: std::sync::Mutex<Sender<()>>,
}

fn queue_key(action: &str, seq: u64) -> String {
    format!("{action}\u{1f}{seq:020}")
}

impl WebhookAction {
    pub fn new(
        name: &str,
        config: WebhookConfig,
        store: Arc<Store>,
    ) -> Result<WebhookAction, String> {
        let token = match &config.token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| format!("action `{name}`: reading {}: {e}", f.display()))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let timeout = config.timeout.map_or(Duration::from_secs(10), |t| t.0);
        let (n, s) = (name.to_string(), store.clone());
        std::thread::Builder::new()
            .name(format!("webhook-{name}"))
            .spawn(move || deliver(&n, &s, rx, timeout))
            .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
        // Deliver whatever a previous run left queued.
        let _ = tx.send(());
        Ok(WebhookAction {
            name: name.to_string(),
            config,
            token,
            store,
            wake: std::sync::Mutex::new(tx),
        })
    }

    /// The request for one change, or why it cannot be built safely.
    pub fn request(&self, change: &Change) -> Result<Option<Pending>, String> {
        let b = change.ban();
        let (method, url, body) = match change {
            Change::Add(_) => (&self.config.method, &self.config.url, &self.config.body),
            Change::Remove { .. } => match &self.config.unban {
                Some(u) => (&u.method, &u.url, &u.body),
                None => return Ok(None),
            },
        };
        let target = match &b.target {
            Target::Address(_) => b.target.to_string(),
            Target::Key(k) => k.clone(),
        };
        let kind = if matches!(b.target, Target::Key(_)) {
            "key"
        } else {
            "address"
        };
        let bantime = b.expires.map_or(0, |e| (e - b.since).max(0)).to_string();
        let incident = b.incident.clone().unwrap_or_default();
        let values = [
            ("target", target.as_str()),
            ("kind", kind),
            ("jail", b.jail.as_str()),
            ("incident", &incident),
            ("bantime", &bantime),
        ];
        let mut headers = Vec::new();
        for (k, v) in &self.config.headers {
            let v = fill(v, &values, |s| s.to_string());
            if v.chars().any(char::is_control) {
                return Err(format!(
                    "refusing header {k}: a value holds a control character"
                ));
            }
            headers.push((k.clone(), v));
        }
        if let Some(t) = &self.token {
            headers.push(("Authorization".into(), format!("Bearer {t}")));
        }
        Ok(Some(Pending {
            method: method.clone(),
            url: fill(url, &values, url_escape),
            headers,
            body: body.as_ref().map(|t| fill(t, &values, json_escape)),
            attempts: 0,
        }))
    }
}

impl Action for WebhookAction {
    fn name(&self) -> &str {
        &self.name
    }

    /// Persists the requests, then wakes the delivery thread: returns at once.
    fn apply(&self, batch: &[Change]) -> Result<(), String> {
        let mut writes = Vec::new();
        let mut errors = Vec::new();
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        for (i, c) in batch.iter().enumerate() {
            match self.request(c) {
                Ok(Some(p)) => writes.push(Write::put(
                    Table::Webhooks,
                    queue_key(&self.name, base + i as u64),
                    &p,
                )),
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        self.store.apply(&writes)?;
        let _ = self.wake.lock().map(|w| w.send(()));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    /// Bans re-applied at start were sent when they happened; the queue resumes on its own.
    fn reconcile(&self, _active: &[&crate::decide::Ban]) -> Result<(), String> {
        Ok(())
    }
}

/// Sends queued requests in order; on failure, retries with backoff.
fn deliver(name: &str, store: &Store, wake: Receiver<()>, timeout: Duration) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let prefix = format!("{name}\u{1f}");
    // Backoff of this run: 1 s, doubling per failed round, at most 30 s.
    let mut backoff = Duration::ZERO;
    let mut failures = 0u32;
    loop {
        let wait = if backoff.is_zero() {
            Duration::from_secs(60)
        } else {
            backoff
        };
        match wake.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let queue: Vec<(String, Pending)> = match store.load(Table::Webhooks) {
            Ok(q) => q
                .into_iter()
                .filter(|(k, _)| k.starts_with(&prefix))
                .collect(),
            Err(e) => {
                tracing::error!(action = name, "cannot read the webhook queue: {e}");
                continue;
            }
        };
        backoff = Duration::ZERO;
        for (key, mut p) in queue {
            match send(&agent, &p) {
                Ok(()) => {
                    failures = 0;
                    let _ = store.apply(&[Write::Delete(Table::Webhooks, key)]);
                }
                Err(e) => {
                    p.attempts += 1;
                    failures += 1;
                    backoff = Duration::from_secs(1 << (failures - 1).min(5))
                        .min(Duration::from_secs(30));
                    tracing::warn!(
                        action = name,
                        url = p.url,
                        attempts = p.attempts,
                        retry_in_secs = backoff.as_secs(),
                        "webhook not delivered: {e}"
                    );
                    let _ = store.apply(&[Write::put(Table::Webhooks, key, &p)]);
                    // In order: later requests wait for this one.
                    break;
                }
            }
        }
    }
}

fn send(agent: &ureq::Agent, p: &Pending) -> Result<(), String> {
    let mut req = ureq::http::Request::builder()
        .method(p.method.as_str())
        .uri(&p.url);
    for (k, v) in &p.headers {
        req = req.header(k, v);
    }
    let req = req
        .body(p.body.clone().unwrap_or_default())
        .map_err(|e| e.to_string())?;
    let resp = agent.run(req).map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped_for_url_and_json() {
        let vals = [("target", r#"k/"1 &x"#)];
        assert_eq!(
            fill("https://h/keys/{target}", &vals, url_escape),
            "https://h/keys/k%2F%221%20%26x"
        );
        assert_eq!(
            fill(r#"{"k":"{target}"}"#, &vals, json_escape),
            r#"{"k":"k/\"1 &x"}"#
        );
        let nl = [("target", "a\nb\"}")];
        let body = fill(r#"{"k":"{target}"}"#, &nl, json_escape);
        // Finding 10: a value is never expanded again.
        let braces = [("target", "k{jail}"), ("jail", "keys")];
        assert_eq!(
            fill("{target}/{jail}/{nope}", &braces, |v| v.to_string()),
            "k{jail}/keys/{nope}"
        );
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["k"],
            "a\nb\"}"
        );
    }
}
