//! `exec`: runs a command per change, from an argv template. No shell is
//! involved, values are checked against a strict character set (and may not
//! start with `-`), and the command is killed after `timeout`, so nothing an
//! attacker writes into a log can become an argument of its choosing.
//!
//! ```toml
//! [actions.hook]
//! type = "exec"
//! ban = ["/usr/local/bin/block", "{target}", "--for", "{bantime}"]
//! unban = ["/usr/local/bin/unblock", "{target}"]
//! timeout = "10s"
//! ```

use super::{Action, Change};
use crate::config::de::ConfigDuration;
use crate::detect::Target;
use serde::Deserialize;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// argv run when a ban starts. Placeholders: `{target}`, `{kind}`
    /// (`address`/`key`), `{jail}`, `{bantime}` (seconds, `0` = permanent), `{count}`.
    pub ban: Vec<String>,
    /// argv run when a ban ends (same placeholders).
    pub unban: Option<Vec<String>>,
    pub timeout: Option<ConfigDuration>,
}

pub struct ExecAction {
    name: String,
    config: ExecConfig,
}

/// Whether a value can go into an argument: no shell metacharacters, no
/// whitespace, no leading `-`.
fn safe(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 256
        && !v.starts_with('-')
        && v.bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._:/@+=-".contains(&c))
}

impl ExecAction {
    pub fn new(name: &str, config: ExecConfig) -> Result<ExecAction, String> {
        if config.ban.is_empty() {
            return Err(format!("action `{name}`: `ban` needs at least the program"));
        }
        Ok(ExecAction {
            name: name.to_string(),
            config,
        })
    }

    /// The argv for one change, or why it cannot be built safely.
    pub fn argv(&self, change: &Change) -> Result<Option<Vec<String>>, String> {
        let (template, ban) = match change {
            Change::Add(b) => (&self.config.ban, b),
            Change::Remove { ban, .. } => match &self.config.unban {
                Some(t) => (t, ban),
                None => return Ok(None),
            },
        };
        let target = match &ban.target {
            Target::Address(_) => ban.target.to_string(),
            Target::Key(k) => k.clone(),
        };
        if !safe(&target) || !safe(&ban.jail) {
            return Err(format!(
                "refusing to pass {:?} (jail {:?}) to a command: unsafe characters",
                target, ban.jail
            ));
        }
        let kind = if matches!(ban.target, Target::Address(_)) {
            "address"
        } else {
            "key"
        };
        let bantime = ban
            .expires
            .map_or(0, |e| (e - ban.since).max(0))
            .to_string();
        let count = ban.count.to_string();
        let values = [
            ("target", target.as_str()),
            ("kind", kind),
            ("jail", ban.jail.as_str()),
            ("bantime", bantime.as_str()),
            ("count", count.as_str()),
        ];
        let argv = template
            .iter()
            .map(|a| super::webhook::fill(a, &values, str::to_string))
            .collect();
        Ok(Some(argv))
    }

    fn run(&self, argv: &[String]) -> Result<(), String> {
        let timeout = self.config.timeout.map_or(Duration::from_secs(10), |t| t.0);
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
        let start = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("{} exited with {status}", argv[0])),
                Ok(None) if start.elapsed() >= timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("{} timed out after {timeout:?}; killed", argv[0]));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => return Err(format!("waiting for {}: {e}", argv[0])),
            }
        }
    }
}

impl Action for ExecAction {
    fn name(&self) -> &str {
        &self.name
    }

    fn refuses(&self, ban: &crate::decide::Ban) -> Option<String> {
        self.argv(&Change::Add(ban.clone())).err()
    }

    fn apply(&self, batch: &[Change]) -> Result<(), String> {
        let mut errors = Vec::new();
        for c in batch {
            match self.argv(c) {
                Ok(Some(argv)) => {
                    if let Err(e) = self.run(&argv) {
                        errors.push(e);
                    }
                }
                Ok(None) => {}
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::Ban;

    fn ban(target: Target) -> Ban {
        Ban {
            jail: "auth".into(),
            target,
            since: 100,
            expires: Some(160),
            count: 5,
            offence: 1,
            manual: false,
            incident: None,
            origin: None,
        }
    }

    fn action(ban: &[&str]) -> ExecAction {
        let config = ExecConfig {
            ban: ban.iter().map(|s| s.to_string()).collect(),
            unban: None,
            timeout: None,
        };
        ExecAction::new("t", config).unwrap()
    }

    #[test]
    fn fills_placeholders() {
        let a = action(&[
            "/bin/echo",
            "{kind}:{target}",
            "{jail}",
            "{bantime}",
            "{count}",
        ]);
        let argv = a
            .argv(&Change::Add(ban(Target::parse("2001:db8::/64").unwrap())))
            .unwrap()
            .unwrap();
        assert_eq!(
            argv,
            ["/bin/echo", "address:2001:db8::/64", "auth", "60", "5"]
        );
        let remove = Change::Remove {
            ban: ban(Target::parse("192.0.2.1").unwrap()),
            reason: "expired",
        };
        assert_eq!(a.argv(&remove).unwrap(), None, "no unban template");
    }

    #[test]
    fn refuses_hostile_key_ids() {
        let a = action(&["/bin/echo", "{target}"]);
        for k in ["-rf", "a b", "a;b", "$(id)", "a\nb", "k`x`", ""] {
            let c = Change::Add(ban(Target::Key(k.into())));
            assert!(a.argv(&c).is_err(), "{k:?} must be refused");
        }
        assert!(
            a.argv(&Change::Add(ban(Target::Key("key_7f3a.prod".into()))))
                .is_ok()
        );
    }

    #[test]
    fn runs_and_times_out() {
        assert!(
            action(&["/bin/true"])
                .apply(&[Change::Add(ban(Target::parse("192.0.2.1").unwrap()))])
                .is_ok()
        );
        let err =
            action(&["/bin/false"]).apply(&[Change::Add(ban(Target::parse("192.0.2.1").unwrap()))]);
        assert!(err.unwrap_err().contains("exited with"));
        let mut slow = action(&["/bin/sleep", "5"]);
        slow.config.timeout = Some(ConfigDuration(Duration::from_millis(100)));
        let t = Instant::now();
        let err = slow
            .apply(&[Change::Add(ban(Target::parse("192.0.2.1").unwrap()))])
            .unwrap_err();
        assert!(err.contains("timed out"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
