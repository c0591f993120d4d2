//! `denylist`: revoked API-key ids, or banned addresses, in a file the
//! proxy reads, rewritten atomically (temp file, fsync, rename), then a
//! reload command, debounced so a burst of bans causes one reload.
//!
//! Addresses matter behind a load balancer or CDN: there the packets come
//! from the balancer, so a kernel drop of the client's address matches
//! nothing. nginx's realip module knows the client (`set_real_ip_from`,
//! `real_ip_header X-Forwarded-For`, `real_ip_recursive on`), and a `geo`
//! block on `$remote_addr` (CIDR-native: IPv6 /64 bans work) refuses it.
//!
//! ```toml
//! [actions.nginx-keys]
//! type = "denylist"
//! path = "/etc/nginx/portcullis/revoked.map"
//! format = "nginx_map"             # or "lines": one id per line, for Envoy or anything else
//! reload = ["/usr/sbin/nginx", "-s", "reload"]
//! debounce = "500ms"
//! ```
//!
//! With nginx: `map $http_x_api_key_id $portcullis_revoked { default 0; include
//! /etc/nginx/portcullis/revoked.map; }` and `if ($portcullis_revoked) { return 403; }`.
//! For addresses, `format = "nginx_geo"`: `geo $portcullis_banned { default 0;
//! include /etc/nginx/portcullis/banned.geo; }` and `if ($portcullis_banned)
//! { return 403; }`.
//!
//! Key ids are untrusted text. For nginx they are quoted and escaped, and
//! prefixed where nginx's `map` would read them as a regex (`~`) or a keyword;
//! an id with a control character (a newline could end the entry) cannot be
//! written safely into either format and is refused with an error, never written.

use super::{Action, Change};
use crate::config::de::ConfigDuration;
use crate::decide::Ban;
use crate::detect::Target;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenylistConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub format: DenylistFormat,
    /// argv run after the file changed (no shell).
    pub reload: Option<Vec<String>>,
    /// Wait this long for more changes before writing and reloading. Default 500ms.
    pub debounce: Option<ConfigDuration>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenylistFormat {
    /// `"key_id" 1;` lines for an nginx `map` include.
    #[default]
    NginxMap,
    /// `203.0.113.5/32 1;` lines for an nginx `geo` include: addresses and
    /// prefixes.
    NginxGeo,
    /// One id, address or prefix per line.
    Lines,
}

/// The nginx `map` entry for a key id, or why it cannot be written.
pub fn nginx_entry(key: &str) -> Result<String, String> {
    if key.is_empty() || key.chars().any(char::is_control) {
        return Err(format!(
            "refusing key id {key:?}: empty or contains control characters"
        ));
    }
    // `map` reads `~...` as a regex and these words as parameters; a leading
    // backslash (which map strips) makes them literal.
    let special = ["default", "hostnames", "include", "volatile"].contains(&key);
    let prefixed = if special || key.starts_with('~') || key.starts_with('\\') {
        format!("\\{key}")
    } else {
        key.to_string()
    };
    let escaped = prefixed.replace('\\', "\\\\").replace('"', "\\\"");
    Ok(format!("\"{escaped}\" 1;"))
}

/// The plain-format line for a key id, or why it cannot be written.
pub fn plain_entry(key: &str) -> Result<String, String> {
    if key.is_empty() || key.chars().any(char::is_control) || key.trim() != key {
        return Err(format!(
            "refusing key id {key:?}: empty, surrounding spaces, or control characters"
        ));
    }
    Ok(key.to_string())
}

pub struct DenylistAction {
    name: String,
    config: DenylistConfig,
    /// Listed key id or address → the jails holding it.
    keys: Mutex<BTreeMap<Target, BTreeSet<String>>>,
}

impl DenylistAction {
    pub fn new(name: &str, config: DenylistConfig) -> DenylistAction {
        DenylistAction {
            name: name.to_string(),
            config,
            keys: Mutex::new(BTreeMap::new()),
        }
    }

    /// The line for a target, or why this format cannot hold it.
    fn entry(&self, target: &Target) -> Result<String, String> {
        match (self.config.format, target) {
            (DenylistFormat::NginxMap, Target::Key(k)) => nginx_entry(k),
            (DenylistFormat::Lines, Target::Key(k)) => plain_entry(k),
            (DenylistFormat::NginxGeo, Target::Address(net)) => Ok(format!("{net} 1;")),
            (DenylistFormat::Lines, Target::Address(_)) => Ok(target.to_string()),
            (DenylistFormat::NginxMap, Target::Address(_)) => Err(
                "a `nginx_map` deny-list holds API-key ids; ban addresses with \
                 `format = \"nginx_geo\"` or the `firewall` action"
                    .into(),
            ),
            (DenylistFormat::NginxGeo, Target::Key(_)) => Err(
                "a `nginx_geo` deny-list holds addresses; revoke keys with `format = \"nginx_map\"`"
                    .into(),
            ),
        }
    }

    /// Writes the file atomically and runs the reload command.
    fn write_and_reload(&self, keys: &BTreeMap<Target, BTreeSet<String>>) -> Result<(), String> {
        let mut text = String::from(match self.config.format {
            DenylistFormat::NginxMap => {
                "# Written by portcullis; do not edit. Revoked API-key ids.\n"
            }
            DenylistFormat::NginxGeo => "# Written by portcullis; do not edit. Banned addresses.\n",
            DenylistFormat::Lines => "",
        });
        for k in keys.keys() {
            // Refused ids never reach `keys` (see `apply`).
            text.push_str(&self.entry(k)?);
            text.push('\n');
        }
        let path = &self.config.path;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let tmp = dir.join(format!(
            ".{}.tmp-{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("denylist"),
            std::process::id()
        ));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|e| format!("writing {}: {e}", path.display()))?;
        if let Some(argv) = &self.config.reload {
            let out = std::process::Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
            if !out.status.success() {
                return Err(format!(
                    "{} failed: {}",
                    argv.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        Ok(())
    }
}

impl Action for DenylistAction {
    fn name(&self) -> &str {
        &self.name
    }

    fn coalesce(&self) -> Duration {
        self.config
            .debounce
            .map_or(Duration::from_millis(500), |d| d.0)
    }

    fn refuses(&self, ban: &Ban) -> Option<String> {
        self.entry(&ban.target).err()
    }

    fn repairs_by_reconcile(&self) -> bool {
        true
    }

    fn check(&self) -> Result<(), String> {
        match &self.config.reload {
            Some(argv) if argv.is_empty() => Err("`reload` needs at least the program".into()),
            _ => Ok(()),
        }
    }

    fn reconcile(&self, active: &[&Ban]) -> Result<(), String> {
        let mut keys = self.keys.lock().map_err(|_| "denylist state poisoned")?;
        keys.clear();
        let adds: Vec<Change> = active.iter().map(|b| Change::Add((*b).clone())).collect();
        let refused = self.fold(&mut keys, &adds);
        self.write_and_reload(&keys)?;
        if refused.is_empty() {
            Ok(())
        } else {
            Err(refused.join("; "))
        }
    }

    fn apply(&self, batch: &[Change]) -> Result<(), String> {
        let mut keys = self.keys.lock().map_err(|_| "denylist state poisoned")?;
        let before = keys.clone();
        let refused = self.fold(&mut keys, batch);
        if *keys != before {
            self.write_and_reload(&keys)?;
        }
        if refused.is_empty() {
            Ok(())
        } else {
            Err(refused.join("; "))
        }
    }
}

impl DenylistAction {
    /// Applies changes to the key set; returns the refusals.
    fn fold(
        &self,
        keys: &mut BTreeMap<Target, BTreeSet<String>>,
        changes: &[Change],
    ) -> Vec<String> {
        let mut refused = Vec::new();
        for c in changes {
            let k = &c.ban().target;
            match c {
                Change::Add(b) => match self.entry(k) {
                    Ok(_) => {
                        keys.entry(k.clone()).or_default().insert(b.jail.clone());
                    }
                    Err(e) => refused.push(e),
                },
                Change::Remove { ban, .. } => {
                    if let Some(jails) = keys.get_mut(k) {
                        jails.remove(&ban.jail);
                        if jails.is_empty() {
                            keys.remove(k);
                        }
                    }
                }
            }
        }
        refused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_escaping() {
        assert_eq!(nginx_entry("key_1").unwrap(), r#""key_1" 1;"#);
        assert_eq!(nginx_entry(r#"a"b"#).unwrap(), r#""a\"b" 1;"#);
        assert_eq!(nginx_entry(r"a\b").unwrap(), r#""a\\b" 1;"#);
        assert_eq!(nginx_entry("~.*").unwrap(), r#""\\~.*" 1;"#);
        assert_eq!(nginx_entry("default").unwrap(), r#""\\default" 1;"#);
        assert_eq!(nginx_entry(r"\x").unwrap(), r#""\\\\x" 1;"#);
        assert_eq!(nginx_entry("a;b}{$x").unwrap(), r#""a;b}{$x" 1;"#);
        assert!(nginx_entry("a\nb").is_err());
        assert!(nginx_entry("").is_err());
        assert!(plain_entry("a\rb").is_err());
        assert!(plain_entry(" a").is_err());
    }

    #[test]
    fn each_format_holds_its_own_targets() {
        let action = |format| {
            DenylistAction::new(
                "d",
                DenylistConfig {
                    path: "/nonexistent".into(),
                    format,
                    reload: None,
                    debounce: None,
                },
            )
        };
        let host = Target::parse("203.0.113.7").unwrap();
        let net = Target::parse("2001:db8:1::/64").unwrap();
        let key = Target::Key("k1".into());
        let geo = action(DenylistFormat::NginxGeo);
        assert_eq!(geo.entry(&host).unwrap(), "203.0.113.7/32 1;");
        assert_eq!(geo.entry(&net).unwrap(), "2001:db8:1::/64 1;");
        assert!(geo.entry(&key).is_err());
        let map = action(DenylistFormat::NginxMap);
        assert!(map.entry(&host).is_err());
        let lines = action(DenylistFormat::Lines);
        assert_eq!(lines.entry(&host).unwrap(), "203.0.113.7");
        assert_eq!(lines.entry(&net).unwrap(), "2001:db8:1::/64");
        assert_eq!(lines.entry(&key).unwrap(), "k1");
    }
}
