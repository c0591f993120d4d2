//! The `bouncer_api` action: Portcullis's bans served to CrowdSec bouncers.
//!
//! CrowdSec's enforcement points ("bouncers": nftables/iptables, nginx,
//! HAProxy, Traefik, Cloudflare, AWS WAF, custom scripts) all poll one small
//! HTTP API of CrowdSec's Local API. Serving it lets any of them enforce what
//! Portcullis decides, unchanged, including at a CDN's edge where our own
//! firewall never sees a packet:
//!
//! - `GET /v1/decisions/stream?startup=true|false` (stream-mode bouncers):
//!   the decisions new and deleted since the bouncer's last poll, or all of
//!   them at its startup;
//! - `GET /v1/decisions?ip=…` (live-mode bouncers): the decisions covering an
//!   address or range, or `null`.
//!
//! Both need an `X-Api-Key` header holding one of the keys in
//! `api_key_files`; anything else gets 403. A jail's address bans become
//! decisions of scope `Ip` (a /32 or /128) or `Range`, type `ban`, scenario
//! the jail's name, duration the time left. Key revocations have no bouncer
//! scope and are refused by this action (recorded, never fatal).
//!
//! ```toml
//! [bouncer_api]
//! listen = "127.0.0.1:8080"
//! api_key_files = ["/etc/portcullis/bouncers/firewall.key"]
//! # tls_cert = "/etc/portcullis/tls/api.pem"
//! # tls_key = "/etc/portcullis/tls/api.key"
//! ```

mod book;
mod http;

pub use book::{Book, Filter, Query, go_duration};
pub use http::spawn;

use super::{Action, Change};
use crate::config::ConfigError;
use crate::decide::Ban;
use crate::now_secs;
use crate::state::{Store, Table, Write};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

/// The `origin` of every decision served (bouncers may filter on it).
pub const ORIGIN: &str = "portcullis";
/// Shortest key accepted: a key is the only thing between the internet and
/// the list of everyone banned (and a bouncer's view of it).
pub const MIN_KEY_LEN: usize = 16;

/// `[bouncer_api]` in `portcullis.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BouncerApiConfig {
    /// Where bouncers connect, e.g. `127.0.0.1:8080` (CrowdSec's port).
    /// Read at start; a change needs a restart.
    pub listen: SocketAddr,
    /// Files of one API key each (what a bouncer's `api_key` holds); the
    /// file's name without extension names the bouncer in `status` and the
    /// log. Re-read at reload.
    pub api_key_files: Vec<PathBuf>,
    /// PEM certificate chain: serve HTTPS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// One bouncer's key.
#[derive(Clone)]
struct Key {
    name: String,
    secret: Vec<u8>,
}

/// The API keys bouncers may present.
#[derive(Clone, Default)]
pub struct Keys(Vec<Key>);

impl std::fmt::Debug for Keys {
    /// Names only: a key never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|k| &k.name))
            .finish()
    }
}

impl Keys {
    /// Reads every file; each bad one is an error naming it.
    pub fn load(files: &[PathBuf]) -> Result<Keys, Vec<ConfigError>> {
        let mut keys = Vec::new();
        let mut errors = Vec::new();
        let error = |path: &Path, message: String| ConfigError {
            file: path.display().to_string(),
            line: 0,
            col: 0,
            message,
        };
        if files.is_empty() {
            errors.push(error(
                Path::new("[bouncer_api]"),
                "`api_key_files` is empty: no bouncer could connect; name at least one file \
                 holding a key (e.g. `openssl rand -hex 32 > /etc/portcullis/bouncers/NAME.key`)"
                    .into(),
            ));
        }
        for path in files {
            match read_key(path) {
                Ok(secret) => {
                    let name = path
                        .file_stem()
                        .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
                    // The name identifies the bouncer (status, its cursor).
                    if name.is_empty()
                        || !name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
                    {
                        errors.push(error(
                            path,
                            "the file name names the bouncer: use letters, digits, `.`, `_` and `-`"
                                .into(),
                        ));
                    } else if keys.iter().any(|k: &Key| k.name == name) {
                        errors.push(error(
                            path,
                            format!("another key file is also named `{name}`; give each bouncer its own name"),
                        ));
                    }
                    if keys.iter().any(|k: &Key| k.secret == secret) {
                        errors.push(error(
                            path,
                            "holds the same key as another file; give each bouncer its own".into(),
                        ));
                    }
                    keys.push(Key { name, secret });
                }
                Err(e) => errors.push(error(path, e)),
            }
        }
        if errors.is_empty() {
            Ok(Keys(keys))
        } else {
            Err(errors)
        }
    }

    /// The name of the key `presented` is, compared in constant time with
    /// every key (a wrong key's bytes never shorten the answer).
    pub fn check(&self, presented: &[u8]) -> Option<&str> {
        let mut found = None;
        for k in &self.0 {
            if constant_time_eq(&k.secret, presented) {
                found = Some(k.name.as_str());
            }
        }
        found
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A key file: one line of at least [`MIN_KEY_LEN`] printable characters.
fn read_key(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it ({e})"))?;
    if !meta.is_file() {
        return Err("not a regular file; it must hold one API key".into());
    }
    if meta.len() > 4096 {
        return Err("larger than 4 KiB; it must hold one API key".into());
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it ({e})"))?;
    let key = text.trim();
    if key.is_empty() {
        return Err("empty; it must hold one API key (e.g. `openssl rand -hex 32`)".into());
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the key must be one line of printable ASCII without spaces (what an HTTP header can carry)"
                .into(),
        );
    }
    if key.len() < MIN_KEY_LEN {
        return Err(format!(
            "the key is {} characters; use at least {MIN_KEY_LEN} (e.g. `openssl rand -hex 32`)",
            key.len()
        ));
    }
    Ok(key.as_bytes().to_vec())
}

/// Key files others may read (a warning for `check`: the key gives the list
/// of everyone banned).
pub fn readable_by_others(cfg: &BouncerApiConfig) -> Vec<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    cfg.api_key_files
        .iter()
        .filter(|p| std::fs::metadata(p).is_ok_and(|m| m.permissions().mode() & 0o004 != 0))
        .cloned()
        .collect()
}

/// The TLS server config, when `tls_cert` and `tls_key` are set.
pub fn tls_config(cfg: &BouncerApiConfig) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (cert, key) = match (&cfg.tls_cert, &cfg.tls_key) {
        (None, None) => return Ok(None),
        (Some(c), Some(k)) => (c, k),
        _ => return Err("[bouncer_api]: `tls_cert` and `tls_key` go together".into()),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect())
        .map_err(|e| format!("[bouncer_api] tls_cert {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "[bouncer_api] tls_cert {}: no PEM certificate in it",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("[bouncer_api] tls_key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("[bouncer_api] TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("[bouncer_api] tls_cert and tls_key: {e}"))?;
    Ok(Some(Arc::new(config)))
}

/// What the action, the HTTP server and the engine share: the decisions and
/// the keys. Made once at start, so bouncers' cursors survive reloads.
pub struct Api {
    pub listen: SocketAddr,
    /// Whether the store's record of what bouncers hold was read in.
    restored: std::sync::atomic::AtomicBool,
    book: Mutex<Book>,
    keys: RwLock<Keys>,
    forbidden: AtomicU64,
    last_forbidden_log: Mutex<Option<std::time::Instant>>,
}

impl Api {
    pub fn new(listen: SocketAddr, keys: Keys, id_base: i64) -> Api {
        Api {
            listen,
            restored: Default::default(),
            book: Mutex::new(Book::new(id_base)),
            keys: RwLock::new(keys),
            forbidden: AtomicU64::new(0),
            last_forbidden_log: Mutex::new(None),
        }
    }

    /// New keys (a reload); a bouncer whose key went away gets 403 from now on.
    pub fn set_keys(&self, keys: Keys) {
        if let Ok(mut k) = self.keys.write() {
            *k = keys;
        }
    }

    /// Withdraws every decision: the section was removed at a reload.
    /// Bouncers keep their keys until a restart closes the port, so they
    /// hear of the deletions rather than keep every ban for its term.
    pub fn close(&self) {
        self.book().reconcile(std::iter::empty(), now_secs());
    }

    /// Reads the store's record of what bouncers may hold from before this
    /// start (once, before the first reconcile).
    pub fn restore(&self, store: &Store) {
        if self.restored.swap(true, Ordering::SeqCst) {
            return;
        }
        let records: Vec<(String, Held)> = match store.load(Table::Bouncer) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("bouncer API: cannot read what bouncers held before: {e}");
                return;
            }
        };
        let held = records.into_iter().filter_map(|(k, h)| {
            let net: ipnet::IpNet = k.parse().ok()?;
            Some((net, Arc::from(h.scenario.as_str()), h.until, h.id))
        });
        self.book().restore(held, now_secs());
    }

    /// Writes what changed in what bouncers may hold to the store.
    fn persist(&self, store: &Store) {
        let changes = self.book().take_persist();
        if changes.is_empty() {
            return;
        }
        let writes: Vec<Write> = changes
            .into_iter()
            .map(|(net, held)| match held {
                Some((scenario, until, id)) => Write::put(
                    Table::Bouncer,
                    net.to_string(),
                    &Held {
                        scenario: scenario.to_string(),
                        until,
                        id,
                    },
                ),
                None => Write::Delete(Table::Bouncer, net.to_string()),
            })
            .collect();
        if let Err(e) = store.apply(&writes) {
            tracing::warn!("bouncer API: cannot record what bouncers hold: {e}");
        }
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The key's name, or `None` (counted, and logged at most once a minute).
    pub(super) fn authenticate(
        &self,
        presented: Option<&[u8]>,
        peer: std::net::IpAddr,
    ) -> Option<String> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = presented.and_then(|p| keys.check(p)) {
            return Some(name.to_string());
        }
        let n = self.forbidden.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self
            .last_forbidden_log
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed().as_secs() >= 60) {
            *last = Some(std::time::Instant::now());
            tracing::warn!(
                %peer,
                refused_so_far = n,
                "bouncer API: refused a request with {} API key (403)",
                if presented.is_some() { "a wrong" } else { "no" }
            );
        }
        None
    }

    /// For `status`: what is served and who polls it.
    pub fn status(&self) -> serde_json::Value {
        let book = self.book();
        let bouncers: Vec<serde_json::Value> = book
            .bouncers()
            .into_iter()
            .map(|(who, seen)| serde_json::json!({ "bouncer": who, "last_pull": seen }))
            .collect();
        serde_json::json!({
            "listen": self.listen.to_string(),
            "decisions": book.len(),
            "bouncers": bouncers,
            "forbidden": self.forbidden.load(Ordering::Relaxed),
        })
    }
}

/// A value bouncers may hold, as the store keeps it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Held {
    scenario: String,
    until: i64,
    /// The id bouncers were given (so a deletion after a restart names it).
    #[serde(default)]
    id: i64,
}

/// The action jails name as `bouncer_api`: keeps the book in step with
/// their bans, and the store in step with what bouncers may hold.
pub struct BouncerAction {
    api: Arc<Api>,
    store: Arc<Store>,
}

impl BouncerAction {
    pub fn new(api: Arc<Api>, store: Arc<Store>) -> BouncerAction {
        api.restore(&store);
        BouncerAction { api, store }
    }
}

impl Action for BouncerAction {
    fn name(&self) -> &str {
        "bouncer_api"
    }

    fn apply(&self, batch: &[Change]) -> Result<(), String> {
        let mut book = self.api.book();
        let now = now_secs();
        for c in batch {
            match c {
                Change::Add(b) => book.ban(&b.jail, &b.target, b.expires, now),
                Change::Remove { ban, .. } => book.unban(&ban.jail, &ban.target, now),
            }
        }
        drop(book);
        self.api.persist(&self.store);
        Ok(())
    }

    /// Every few seconds: records what polls changed (renewed terms).
    fn verify(&self) -> Result<(), String> {
        self.api.persist(&self.store);
        Ok(())
    }

    fn shutdown(&self) {
        self.api.persist(&self.store);
    }

    fn reconcile(&self, active: &[&Ban]) -> Result<(), String> {
        self.api.book().reconcile(
            active
                .iter()
                .map(|b| (b.jail.as_str(), &b.target, b.expires)),
            now_secs(),
        );
        self.api.persist(&self.store);
        Ok(())
    }

    fn refuses(&self, ban: &Ban) -> Option<String> {
        matches!(ban.target, crate::detect::Target::Key(_))
            .then(|| "a bouncer decision holds an address or range, not an API key id".into())
    }

    fn repairs_by_reconcile(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests;
