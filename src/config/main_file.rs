//! `portcullis.toml`: global settings, jail defaults and custom log formats.
//!
//! ```toml
//! state_dir = "/var/lib/portcullis"
//! ignore = ["127.0.0.1/8", "::1"]
//! trusted_proxies = ["10.0.0.0/8"]
//!
//! [defaults]
//! findtime = "10m"
//! bantime = "1h"
//!
//! [formats.api_audit]
//! nginx = '$remote_addr - $remote_user [$time_local] "$request" ...'
//! ```

use super::ConfigError;
use super::de::{BanDuration, Cidr, ConfigDuration, OneOrMany};
use crate::parse::template::Escape;
use crate::parse::{FormatSpec, envoy, nginx};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use toml::Spanned;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MainConfig {
    /// Where bans, offsets and incidents are kept. Default `/var/lib/portcullis`.
    pub state_dir: Option<PathBuf>,
    /// Addresses and networks never acted on (fail2ban's `ignoreip`).
    #[serde(default, alias = "ignoreip")]
    pub ignore: Vec<Cidr>,
    /// API key ids never revoked.
    #[serde(default)]
    pub ignore_keys: Vec<String>,
    /// Proxies whose X-Forwarded-For is believed (right-most untrusted hop wins).
    #[serde(default)]
    pub trusted_proxies: Vec<Cidr>,
    /// Files of more trusted proxies (a CDN's ranges), one address or CIDR
    /// a line; re-read when they change.
    pub trusted_proxies_file: Option<super::de::OneOrMany<PathBuf>>,
    /// Files of more addresses never acted on (fail2ban's `ignoreip =
    /// file:`); re-read when they change.
    pub ignore_file: Option<super::de::OneOrMany<PathBuf>>,
    /// Formats without a peer address (Envoy's default text format) take the
    /// client from X-Forwarded-For's right-most hop. That is only safe when the
    /// proxy appends the connecting address to the header (Envoy
    /// `use_remote_address: true`); this says so, and a jail using such a
    /// format is refused without it.
    #[serde(default)]
    pub forwarded_for_has_peer: bool,
    /// Longer lines are counted and skipped. Default 262144 (what a stock
    /// nginx can write; see `DEFAULT_MAX_LINE`).
    pub max_line_bytes: Option<usize>,
    /// Every jail logs "would ban" and acts on nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Bans applied per minute at most, over all jails; decisions past it are
    /// held (and an alert logged) until the rate allows. Default 300.
    pub max_bans_per_minute: Option<usize>,
    /// The control socket. Default `/run/portcullis/control.sock`.
    pub control_socket: Option<PathBuf>,
    /// A group (name or gid) whose members may use the control socket (mode 0660).
    /// Default: root only (mode 0600).
    pub control_group: Option<String>,
    /// Fleet mode: share bans and counters with other hosts through Redis.
    pub fleet: Option<crate::fleet::FleetConfig>,
    /// The opt-in Prometheus endpoint.
    pub metrics: Option<crate::daemon::metrics::MetricsConfig>,
    /// Enforcement in the kernel: the `firewall` action (nftables or ipset).
    pub firewall: Option<crate::act::FirewallConfig>,
    /// How the daemon makes the unix sockets of jails' `syslog` sources.
    pub syslog: Option<SyslogMain>,
    /// MaxMind DB files for the enriched fields (`country`, `region`, `asn`, `as_org`).
    pub geoip: Option<crate::enrich::GeoConfig>,
    /// CrowdSec bouncers poll bans from here: the `bouncer_api` action.
    pub bouncer_api: Option<crate::act::bouncer::BouncerApiConfig>,
    /// Named actions usable in a jail's `action`.
    #[serde(default)]
    pub actions: BTreeMap<String, ActionConfig>,
    #[serde(default)]
    pub defaults: Defaults,
    /// Custom formats by name, usable as a jail's `format`.
    #[serde(default)]
    pub formats: BTreeMap<String, FormatConfig>,
}

/// `[syslog]`: who may write to the daemon's unix syslog sockets.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyslogMain {
    /// Octal mode, default `"0660"`.
    pub socket_mode: Option<String>,
    /// A group (name or gid) that may write, e.g. nginx's `www-data`.
    pub socket_group: Option<String>,
}

impl SyslogMain {
    /// The mode and group, or what is wrong with them.
    pub fn access(&self) -> Result<crate::watch::syslog::UnixAccess, String> {
        let mode = match &self.socket_mode {
            None => 0o660,
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                .ok()
                .filter(|m| *m <= 0o777)
                .ok_or_else(|| {
                    format!("[syslog] socket_mode `{m}`: use an octal mode such as \"0660\"")
                })?,
        };
        let gid = self
            .socket_group
            .as_deref()
            .map(crate::control::server::group_id)
            .transpose()?;
        Ok(crate::watch::syslog::UnixAccess { mode, gid })
    }
}

/// Defaults for every jail's unset options.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Defaults {
    pub format: Option<String>,
    pub maxretry: Option<u32>,
    pub findtime: Option<ConfigDuration>,
    pub bantime: Option<BanDuration>,
    pub bantime_factor: Option<f64>,
    pub bantime_max: Option<ConfigDuration>,
    pub action: Option<OneOrMany<String>>,
    pub ipv4_prefix: Option<u8>,
    pub ipv6_prefix: Option<u8>,
    pub max_tracked: Option<usize>,
}

/// An action under `[actions.NAME]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ActionConfig {
    /// Runs a command from an argv template (see `act::exec`).
    Exec(crate::act::ExecConfig),
    /// Revoked API-key ids in a file the proxy reads (see `act::denylist`).
    Denylist(crate::act::DenylistConfig),
    /// Incident digests over SMTP (see `act::email`).
    Email(crate::act::email::EmailConfig),
    /// An HTTP call to a gateway, IAM or cloud-firewall API (see `act::webhook`).
    Webhook(crate::act::webhook::WebhookConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EscapeConfig {
    Default,
    Json,
    None,
}

/// A custom format: exactly one of `nginx`, `envoy`, `json`, `regex`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormatConfig {
    /// An nginx `log_format` string, or the whole directive pasted from nginx.conf.
    pub nginx: Option<Spanned<String>>,
    /// nginx's `escape=` for this format. Default: `default`.
    pub escape: Option<EscapeConfig>,
    /// An Envoy format string with `%OPERATOR%`s.
    pub envoy: Option<Spanned<String>>,
    /// JSON lines: event field name → JSON path (or a list, first present wins).
    pub json: Option<Spanned<BTreeMap<String, OneOrMany<String>>>>,
    /// A regex with named captures (`client` and `time` required).
    pub regex: Option<Spanned<String>>,
    /// chrono strftime format of a regex format's `time` capture.
    pub time_format: Option<String>,
    /// nginx variable (default `http_x_api_key_id`) or Envoy request header
    /// (default `x-api-key-id`) that carries the API-key id.
    pub api_key: Option<String>,
}

impl MainConfig {
    pub fn compile_formats(
        &self,
        layers: &super::layers::Layers,
        errors: &mut Vec<ConfigError>,
    ) -> BTreeMap<String, FormatSpec> {
        let mut out = BTreeMap::new();
        for (name, f) in &self.formats {
            let kinds = [
                f.nginx.is_some(),
                f.envoy.is_some(),
                f.json.is_some(),
                f.regex.is_some(),
            ];
            let span = [
                f.nginx.as_ref().map(|s| s.span()),
                f.envoy.as_ref().map(|s| s.span()),
                f.json.as_ref().map(|s| s.span()),
                f.regex.as_ref().map(|s| s.span()),
            ]
            .into_iter()
            .flatten()
            .next()
            .unwrap_or(0..0);
            if kinds.iter().filter(|k| **k).count() != 1 {
                errors.push(layers.error(
                    span,
                    format!(
                        "format `{name}` needs exactly one of `nginx`, `envoy`, `json`, `regex`"
                    ),
                ));
                continue;
            }
            let escape = match f.escape {
                None | Some(EscapeConfig::Default) => Escape::Nginx,
                Some(EscapeConfig::Json) => Escape::Json,
                Some(EscapeConfig::None) => Escape::None,
            };
            let spec: Result<FormatSpec, String> = if let Some(s) = &f.nginx {
                let var = f.api_key.as_deref().unwrap_or("http_x_api_key_id");
                nginx::compile(s.get_ref(), escape, var).map(|(pieces, escape)| {
                    FormatSpec::Template {
                        pieces,
                        escape,
                        bare_dash: false,
                    }
                })
            } else if let Some(s) = &f.envoy {
                let header = f
                    .api_key
                    .as_deref()
                    .unwrap_or("x-api-key-id")
                    .to_ascii_lowercase();
                envoy::compile(s.get_ref(), &header).map(|pieces| FormatSpec::Template {
                    pieces,
                    escape: Escape::None,
                    bare_dash: false,
                })
            } else if let Some(m) = &f.json {
                Ok(FormatSpec::Json(
                    m.get_ref()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.0.clone()))
                        .collect(),
                ))
            } else {
                let s = f.regex.as_ref().expect("one kind is set");
                regex::Regex::new(s.get_ref())
                    .map_err(|e| format!("invalid regex: {e}"))
                    .map(|re| FormatSpec::Regex {
                        re,
                        time_format: f.time_format.clone(),
                    })
            };
            // Compile once for every field, to catch what only shows then.
            let checked = spec.and_then(|s| s.compile(&crate::parse::Wanted::all()).map(|_| s));
            match checked {
                Ok(s) => {
                    out.insert(name.clone(), s);
                }
                Err(e) => errors.push(layers.error(span, format!("format `{name}`: {e}"))),
            }
        }
        out
    }
}
