//! The act stage: what a ban or its end does in the world.
//!
//! One trait, [`Action`], applied to batches of [`Change`]s. Actions run off
//! the engine thread (see [`Dispatcher`]), so a slow or failing action never
//! delays detection; each batch's outcome comes back to be logged and counted.
//! This build has `log` and `exec`; firewall, deny-list, webhook and mail
//! actions come with their issues.

pub mod denylist;
pub mod email;
mod exec;
pub mod firewall;
pub mod webhook;

pub use denylist::{DenylistAction, DenylistConfig};
pub use exec::{ExecAction, ExecConfig};
pub use firewall::{FirewallConfig, IpsetBackend, NftablesBackend};

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
    /// Checks at start that the action can work here (a tool exists, permissions).
    fn check(&self) -> Result<(), String> {
        Ok(())
    }
    /// At start (and reload): makes the world hold exactly `active`, in one batch.
    fn reconcile(&self, active: &[Ban]) -> Result<(), String> {
        let adds: Vec<Change> = active.iter().cloned().map(Change::Add).collect();
        if adds.is_empty() {
            Ok(())
        } else {
            self.apply(&adds)
        }
    }
    /// At a clean stop.
    fn shutdown(&self) {}
    /// How long to wait for more changes before applying a batch (debounce).
    fn coalesce(&self) -> std::time::Duration {
        COALESCE
    }
}

/// Writes each change to the log (the journal under systemd).
pub struct LogAction;

impl Action for LogAction {
    fn name(&self) -> &str {
        "log"
    }

    /// At start, one line: the bans were logged when they began.
    fn reconcile(&self, active: &[Ban]) -> Result<(), String> {
        if !active.is_empty() {
            tracing::info!(bans = active.len(), "active bans restored");
        }
        Ok(())
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
    /// Incidents the batch touched, with `ban` or `unban`.
    pub incidents: Vec<(String, &'static str)>,
}

/// How long a worker waits for more changes before applying a batch, and
/// how many changes one batch holds at most.
const COALESCE: std::time::Duration = std::time::Duration::from_millis(3);
const MAX_BATCH: usize = 20_000;

/// Runs each action on its own worker thread, in order, and reports outcomes
/// through `report`. Changes that arrive close together are applied as one
/// batch (one nft transaction, say); a slow action only delays itself.
pub struct Dispatcher {
    workers: BTreeMap<String, std::sync::mpsc::Sender<Vec<Change>>>,
}

impl Dispatcher {
    pub fn new(
        actions: BTreeMap<String, Arc<dyn Action>>,
        report: Arc<dyn Fn(Outcome) + Send + Sync>,
    ) -> Dispatcher {
        let mut workers = BTreeMap::new();
        for (name, action) in actions {
            let (tx, rx) = std::sync::mpsc::channel::<Vec<Change>>();
            let report = report.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("action-{name}"))
                .spawn(move || {
                    while let Ok(mut batch) = rx.recv() {
                        let deadline = std::time::Instant::now() + action.coalesce();
                        while batch.len() < MAX_BATCH {
                            match rx.recv_timeout(
                                deadline.saturating_duration_since(std::time::Instant::now()),
                            ) {
                                Ok(more) => batch.extend(more),
                                Err(_) => break,
                            }
                        }
                        let incidents = batch
                            .iter()
                            .filter_map(|c| {
                                let kind = if matches!(c, Change::Add(_)) {
                                    "ban"
                                } else {
                                    "unban"
                                };
                                c.ban().incident.clone().map(|i| (i, kind))
                            })
                            .collect();
                        let result = action.apply(&batch);
                        report(Outcome {
                            action: action.name().to_string(),
                            changes: batch.len(),
                            result,
                            incidents,
                        });
                    }
                });
            match spawned {
                Ok(_) => {
                    workers.insert(name, tx);
                }
                Err(e) => tracing::error!(action = name, "cannot start action worker: {e}"),
            }
        }
        Dispatcher { workers }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.workers.keys().map(String::as_str)
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
            match self.workers.get(name) {
                Some(w) => {
                    if w.send(batch).is_err() {
                        tracing::error!(
                            action = name,
                            "action worker is gone; changes not applied"
                        );
                    }
                }
                None => tracing::error!(action = name, "unknown action; changes not applied"),
            }
        }
    }
}
