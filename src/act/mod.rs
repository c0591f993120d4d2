//! The act stage: what a ban or its end does in the world.
//!
//! One trait, [`Action`], applied to batches of [`Change`]s. Actions run off
//! the engine thread (see [`Dispatcher`]), so a slow or failing action never
//! delays detection; each batch's outcome comes back to be logged and counted.
//! This build has `log` and `exec`; firewall, deny-list, webhook and mail
//! actions come with their issues.

mod exec;

pub use exec::{ExecAction, ExecConfig};

use crate::decide::Ban;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A ban starting or ending.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Add(Ban),
    Remove { ban: Ban, reason: &'static str },
}

impl Change {
    pub fn ban(&self) -> &Ban {
        match self {
            Change::Add(b) | Change::Remove { ban: b, .. } => b,
        }
    }
}

pub trait Action: Send + Sync {
    fn name(&self) -> &str;
    /// Applies a batch. An error names what failed; the batch is not retried here.
    fn apply(&self, batch: &[Change]) -> Result<(), String>;
}

/// Writes each change to the log (the journal under systemd).
pub struct LogAction;

impl Action for LogAction {
    fn name(&self) -> &str {
        "log"
    }

    fn apply(&self, batch: &[Change]) -> Result<(), String> {
        if batch.len() > 20 {
            let adds = batch.iter().filter(|c| matches!(c, Change::Add(_))).count();
            tracing::info!(
                adds,
                removes = batch.len() - adds,
                "applied a batch of ban changes"
            );
            return Ok(());
        }
        for c in batch {
            let b = c.ban();
            match c {
                Change::Add(_) => tracing::warn!(
                    jail = %b.jail, target = %b.target, count = b.count, offence = b.offence,
                    expires = ?b.expires, manual = b.manual, "ban"
                ),
                Change::Remove { reason, .. } => {
                    tracing::info!(jail = %b.jail, target = %b.target, reason, "unban")
                }
            }
        }
        Ok(())
    }
}

/// Outcome of one action on one batch.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub action: String,
    pub changes: usize,
    pub result: Result<(), String>,
}

/// Runs actions on their own threads and reports outcomes through `report`.
pub struct Dispatcher {
    actions: BTreeMap<String, Arc<dyn Action>>,
    report: Arc<dyn Fn(Outcome) + Send + Sync>,
}

impl Dispatcher {
    pub fn new(
        actions: BTreeMap<String, Arc<dyn Action>>,
        report: Arc<dyn Fn(Outcome) + Send + Sync>,
    ) -> Dispatcher {
        Dispatcher { actions, report }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.actions.keys().map(String::as_str)
    }

    /// Sends each change to the actions its jail uses (`actions_of(jail)`).
    pub fn dispatch<'a>(&self, changes: &[Change], actions_of: impl Fn(&str) -> &'a [String]) {
        let mut per_action: BTreeMap<&str, Vec<Change>> = BTreeMap::new();
        for c in changes {
            for a in actions_of(&c.ban().jail) {
                per_action.entry(a.as_str()).or_default().push(c.clone());
            }
        }
        for (name, batch) in per_action {
            let Some(action) = self.actions.get(name).cloned() else {
                tracing::error!(action = name, "unknown action; changes not applied");
                continue;
            };
            let report = self.report.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("action-{name}"))
                .spawn(move || {
                    let result = action.apply(&batch);
                    report(Outcome {
                        action: action.name().to_string(),
                        changes: batch.len(),
                        result,
                    });
                });
            if let Err(e) = spawned {
                tracing::error!(action = name, "cannot start action thread: {e}");
            }
        }
    }
}
