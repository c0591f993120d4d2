//! Jail configuration, as written in `jails.d/*.toml`.
//!
//! Option names follow fail2ban's where the meaning is the same.
//!
//! ```toml
//! [auth-bruteforce]
//! filter = "auth-failure"
//! logpath = "/var/log/nginx/access.log"
//! format = "combined"
//! maxretry = 100
//! findtime = "60s"
//! bantime = "1h"
//! ```

use crate::config::de::{BanDuration, ConfigDuration, OneOrMany};
use crate::parse::wrap::Wrap;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// What a jail acts on when it fires.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Ban the client address (or its prefix).
    #[default]
    Address,
    /// Revoke the API key id.
    Key,
}

/// Severity carried into incident records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    #[default]
    Medium,
    High,
    Critical,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        })
    }
}

/// Where a jail counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    #[default]
    Local,
    Fleet,
}

/// Where to start reading a file with no saved position.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    #[default]
    End,
    Findtime,
    Start,
}

fn yes() -> bool {
    true
}

/// One jail. Unset options take `[defaults]` from `portcullis.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JailConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Name of a filter in `filters.d/`.
    pub filter: Spanned<String>,
    /// Log files (globs allowed) this jail reads in the daemon.
    pub logpath: Option<OneOrMany<String>>,
    /// A syslog socket this jail reads, beside or instead of `logpath`:
    /// `unix:/run/portcullis/NAME.sock`, `udp:ADDR:PORT` or `tcp:ADDR:PORT`.
    pub syslog: Option<Spanned<String>>,
    /// Only the messages of this tag (app-name) on the `syslog` socket.
    pub syslog_tag: Option<String>,
    /// Entries of the systemd journal: `{ unit = "envoy.service" }` or
    /// `{ identifier = "nginx" }` (and optionally `directory`).
    pub journal: Option<Spanned<crate::watch::journal::JournalSpec>>,
    /// Name of a built-in format or one under `[formats]`. Default: `[defaults] format`.
    pub format: Option<Spanned<String>>,
    /// Container-runtime wrapping of the lines: `none`, `cri` or `docker`.
    #[serde(default)]
    pub wrap: Wrap,
    /// What is counted per: `"client"` (default), `"api_key"`, any field name, or two of them.
    pub key: Option<Spanned<OneOrMany<String>>>,
    /// Group IPv4 clients by this prefix length (32 = per address).
    pub ipv4_prefix: Option<u8>,
    /// Group IPv6 clients by this prefix length (64 = per /64).
    pub ipv6_prefix: Option<u8>,
    /// Matches (or distinct values) within `findtime` that fire the jail.
    pub maxretry: Option<u32>,
    pub findtime: Option<ConfigDuration>,
    /// How long a ban lasts: a duration or `"permanent"`.
    pub bantime: Option<BanDuration>,
    /// Each repeat ban of a target lasts this many times longer (fail2ban's
    /// `bantime.increment` with `bantime.factor`). Default 1: no escalation.
    pub bantime_factor: Option<f64>,
    /// Upper bound for escalated bans (fail2ban's `bantime.maxtime`).
    pub bantime_max: Option<ConfigDuration>,
    /// Log "would ban" and act on nothing.
    pub dry_run: Option<bool>,
    /// Actions run on ban and unban: `log` and names under `[actions]`.
    pub action: Option<OneOrMany<Spanned<String>>>,
    /// `fleet`: also count matches across the fleet in Redis (needs `[fleet]`);
    /// the jail then fires on the fleet total too. Default `local`.
    #[serde(default)]
    pub scope: Scope,
    /// Where the daemon starts reading a file it has no saved position for:
    /// `end` (default), `start`, or `findtime` (only lines from the last `findtime`).
    pub read_from: Option<ReadFrom>,
    /// Count distinct values of this field per key instead of matches.
    pub distinct: Option<Spanned<String>>,
    #[serde(default)]
    pub target: TargetKind,
    #[serde(default)]
    pub severity: Severity,
    /// Most keys tracked at once; the stalest are evicted past it.
    pub max_tracked: Option<usize>,
    /// The firewall drops only traffic to these ports (names, numbers,
    /// ranges) of `protocol`; default: every port.
    pub ports: Option<Spanned<Vec<crate::act::firewall::scope::PortSpec>>>,
    /// `tcp` (default) or `udp`, with `ports`.
    pub protocol: Option<Spanned<crate::act::firewall::scope::Protocol>>,
}
