//! The control stage: a Unix socket speaking JSON lines, and the CLI client.
//!
//! One request per line, one response per line:
//!
//! ```text
//! → {"cmd":"bans","jail":null}
//! ← {"ok":true,"data":[{"jail":"auth-bruteforce","target":{"kind":"address","value":"203.0.113.10"},...}]}
//! ```
//!
//! Any tool can speak it (`socat - UNIX-CONNECT:/run/portcullis/control.sock`).
//! The socket is mode 0600 (0660 with `control_group`), and the daemon checks
//! each peer's credentials too: root, the daemon's own user, or the group.

pub mod cli;
pub mod client;
pub mod server;
pub mod view;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Every jail, or one.
    Status { jail: Option<String> },
    /// Active bans, optionally of one jail.
    Bans { jail: Option<String> },
    /// Removes bans of `target` (an address, a CIDR covering addresses, or
    /// `key:ID`), or every ban with `all`; in one jail or all.
    Unban {
        target: Option<String>,
        jail: Option<String>,
        all: bool,
    },
    /// Bans by hand; `duration` like `"1h"`, none for the jail's `bantime`.
    Ban {
        target: String,
        jail: String,
        duration: Option<String>,
    },
    /// Re-reads the config; an invalid one is refused and the running one kept.
    Reload,
    /// Removes every ban.
    Flush,
    /// Incident summaries, newest first; `since` like `"24h"`.
    Incidents { since: Option<String> },
    /// One incident, complete.
    Incident { id: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Response {
        Response {
            ok: true,
            error: None,
            data,
        }
    }

    pub fn err(msg: impl Into<String>) -> Response {
        Response {
            ok: false,
            error: Some(msg.into()),
            data: serde_json::Value::Null,
        }
    }
}
