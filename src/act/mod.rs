//! The act stage: what a ban or its end does in the world.
//!
//! One trait, [`Action`], applied to batches of [`Change`]s. Actions run off
//! the engine thread (see [`Dispatcher`]), so a slow or failing action never
//! delays detection; each batch's outcome comes back to be logged and counted,
//! and a failing action is retried by the [`supervise::Supervisor`]. A target
//! an action cannot express ([`Action::refuses`]) is skipped by that action
//! alone and recorded; it never fails the batch, the start or a reload.

pub mod bouncer;
pub mod denylist;
pub mod email;
mod exec;
pub mod firewall;
mod libnft;
pub mod nft_netlink;
pub mod supervise;
pub mod webhook;

pub use denylist::{DenylistAction, DenylistConfig};
pub use exec::{ExecAction, ExecConfig};
pub use firewall::{FirewallConfig, IpsetBackend, NftablesBackend};

use crate::decide::Ban;
use crate::detect::Target;
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
    fn reconcile(&self, active: &[&Ban]) -> Result<(), String> {
        let adds: Vec<Change> = active.iter().map(|b| Change::Add((*b).clone())).collect();
        if adds.is_empty() {
            Ok(())
        } else {
            self.apply(&adds)
        }
    }
    /// Why this action cannot express `ban`'s target (a key id an nginx map
    /// cannot hold, an address for a key-only action), or `None`. Such bans
    /// are skipped by this action and recorded as refused, nothing more.
    fn refuses(&self, _ban: &Ban) -> Option<String> {
        None
    }
    /// What this action enforces right now that the ledger may not know of:
    /// read back when the state store is new (lost, moved aside), so that
    /// starting without a store never shrinks enforcement. Each entry is a
    /// target, its expiry (unix seconds; `None` = permanent) and, where the
    /// enforcement point records it, the jail.
    fn adopt(&self) -> Result<Vec<Adopted>, String> {
        Ok(Vec::new())
    }
    /// Checks that what this action enforces is still in place (someone may
    /// have run `nft flush ruleset`); `Err` says what is missing. Called every
    /// few seconds off the engine thread; a failure triggers a reconcile.
    /// Cheap by design: it probes, it does not list every element.
    fn verify(&self) -> Result<(), String> {
        Ok(())
    }
    /// Whether a failed batch is repaired by reconciling the whole ledger
    /// (true where reconcile rewrites state, like a deny-list file or the
    /// kernel sets; false where it would re-run side effects, like commands).
    fn repairs_by_reconcile(&self) -> bool {
        false
    }
    /// At a clean stop.
    fn shutdown(&self) {}

    /// The allowlist (`ignore`, with `ignore_file`) changed: an action that
    /// enforces it too (the firewall's accept sets) updates it.
    fn set_allowlist(&self, _allow: &crate::parse::addr::NetSet) -> Result<(), String> {
        Ok(())
    }
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
    fn reconcile(&self, active: &[&Ban]) -> Result<(), String> {
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
                    expires = %crate::text::expiry(b.expires), manual = b.manual, "ban"
                ),
                Change::Remove { reason, .. } => {
                    tracing::info!(jail = %b.jail, target = %b.target, reason, "unban")
                }
            }
        }
        Ok(())
    }
}

/// A ban found in an enforcement point (see [`Action::adopt`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Adopted {
    pub target: Target,
    pub expires: Option<i64>,
    pub jail: Option<String>,
}

/// A ban an action skipped because it cannot express its target.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub target: Target,
    pub incident: Option<String>,
    pub reason: String,
}

/// Outcome of one action on one batch (or one reconcile).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub action: String,
    pub changes: usize,
    pub result: Result<(), String>,
    /// Incidents the batch touched, with `ban` or `unban`.
    pub incidents: Vec<(String, &'static str)>,
    /// Bans skipped because the action cannot express their target.
    pub refused: Vec<Refusal>,
    /// Whether this was a reconcile (start, reload, repair after a failure).
    pub reconcile: bool,
    /// Whether this was a verification (only failed ones are reported).
    pub verify: bool,
}

/// Splits bans into those `action` can express and those it refuses.
pub fn split_refused<'a>(
    action: &dyn Action,
    bans: impl IntoIterator<Item = &'a Ban>,
) -> (Vec<&'a Ban>, Vec<Refusal>) {
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for b in bans {
        match action.refuses(b) {
            None => ok.push(b),
            Some(reason) => refused.push(Refusal {
                target: b.target.clone(),
                incident: b.incident.clone(),
                reason,
            }),
        }
    }
    (ok, refused)
}

/// The bans a reconcile makes an action hold: those of `all` whose jail is
/// one of `jails`. `all` is shared, so a million restored bans are not copied
/// once per action on the engine thread; each worker picks its own.
pub struct Holding {
    pub all: Arc<[Ban]>,
    pub jails: Vec<String>,
}

impl Holding {
    pub fn bans(&self) -> impl Iterator<Item = &Ban> {
        self.all.iter().filter(|b| self.jails.contains(&b.jail))
    }
}

/// Work for an action's worker thread.
enum Job {
    Batch(Vec<Change>),
    /// Make the world hold exactly these bans (at start and reload, and as a
    /// repair after a failure).
    Reconcile(Holding),
    /// Check that enforcement is still in place.
    Verify,
}

/// How long a worker waits for more changes before applying a batch (by
/// default not at all: it takes what is already queued, so a lone decision
/// pays no fixed delay, and a burst arriving while a batch is applied becomes
/// the next batch), and how many changes one batch holds at most. Actions
/// that must debounce (a deny-list reloading nginx) set their own wait.
const COALESCE: std::time::Duration = std::time::Duration::ZERO;
const MAX_BATCH: usize = 20_000;

/// Runs each action on its own worker thread, in order, and reports outcomes
/// through `report`. Changes that arrive close together are applied as one
/// batch (one nft transaction, say); a slow action only delays itself.
pub struct Dispatcher {
    workers: BTreeMap<String, std::sync::mpsc::Sender<Job>>,
    actions: BTreeMap<String, Arc<dyn Action>>,
}

/// Runs one job; reports its outcome.
fn run_job(action: &dyn Action, job: Job) -> Outcome {
    match job {
        Job::Verify => Outcome {
            action: action.name().to_string(),
            changes: 0,
            result: action.verify(),
            incidents: Vec::new(),
            refused: Vec::new(),
            reconcile: false,
            verify: true,
        },
        Job::Reconcile(holding) => {
            let (ok, refused) = split_refused(action, holding.bans());
            let t = std::time::Instant::now();
            let result = action.reconcile(&ok);
            if result.is_ok() && !ok.is_empty() {
                tracing::info!(
                    action = action.name(),
                    bans = ok.len(),
                    elapsed_ms = t.elapsed().as_millis() as u64,
                    "re-applied active bans"
                );
            }
            Outcome {
                action: action.name().to_string(),
                changes: ok.len(),
                result,
                incidents: Vec::new(),
                refused,
                reconcile: true,
                verify: false,
            }
        }
        Job::Batch(batch) => {
            let mut refused = Vec::new();
            let batch: Vec<Change> = batch
                .into_iter()
                .filter(|c| match action.refuses(c.ban()) {
                    None => true,
                    Some(reason) => {
                        // Only additions are reported; a refused ban was never applied,
                        // so its removal has nothing to undo.
                        if matches!(c, Change::Add(_)) {
                            refused.push(Refusal {
                                target: c.ban().target.clone(),
                                incident: c.ban().incident.clone(),
                                reason,
                            });
                        }
                        false
                    }
                })
                .collect();
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
            let result = if batch.is_empty() {
                Ok(())
            } else {
                action.apply(&batch)
            };
            Outcome {
                action: action.name().to_string(),
                changes: batch.len(),
                result,
                incidents,
                refused,
                reconcile: false,
                verify: false,
            }
        }
    }
}

impl Dispatcher {
    pub fn new(
        actions: BTreeMap<String, Arc<dyn Action>>,
        report: Arc<dyn Fn(Outcome) + Send + Sync>,
    ) -> Dispatcher {
        let mut workers = BTreeMap::new();
        for (name, action) in &actions {
            let (tx, rx) = std::sync::mpsc::channel::<Job>();
            let report = report.clone();
            let action = action.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("action-{name}"))
                .spawn(move || {
                    let mut next: Option<Job> = None;
                    loop {
                        let job = match next.take() {
                            Some(j) => j,
                            None => match rx.recv() {
                                Ok(j) => j,
                                Err(_) => break,
                            },
                        };
                        let job = match job {
                            Job::Batch(mut batch) => {
                                let deadline = std::time::Instant::now() + action.coalesce();
                                while batch.len() < MAX_BATCH {
                                    match rx.recv_timeout(
                                        deadline
                                            .saturating_duration_since(std::time::Instant::now()),
                                    ) {
                                        Ok(Job::Batch(more)) => batch.extend(more),
                                        Ok(reconcile) => {
                                            next = Some(reconcile);
                                            break;
                                        }
                                        Err(_) => break,
                                    }
                                }
                                Job::Batch(batch)
                            }
                            reconcile => reconcile,
                        };
                        let outcome = run_job(action.as_ref(), job);
                        // A verification that found everything in place is no news.
                        if !(outcome.verify && outcome.result.is_ok()) {
                            report(outcome);
                        }
                    }
                });
            match spawned {
                Ok(_) => {
                    workers.insert(name.clone(), tx);
                }
                Err(e) => tracing::error!(action = name, "cannot start action worker: {e}"),
            }
        }
        Dispatcher { workers, actions }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.workers.keys().map(String::as_str)
    }

    /// Whether a failed batch of `action` is repaired by a reconcile.
    pub fn repairs_by_reconcile(&self, action: &str) -> bool {
        self.actions
            .get(action)
            .is_some_and(|a| a.repairs_by_reconcile())
    }

    /// Asks every action that can be repaired to verify its enforcement.
    pub fn verify(&self) {
        for (name, action) in &self.actions {
            if action.repairs_by_reconcile()
                && let Some(w) = self.workers.get(name)
            {
                let _ = w.send(Job::Verify);
            }
        }
    }

    /// Asks `action` to reconcile with `bans` (a repair), off the engine thread.
    pub fn reconcile(&self, action: &str, holding: Holding) {
        if let Some(w) = self.workers.get(action)
            && w.send(Job::Reconcile(holding)).is_err()
        {
            tracing::error!(action, "action worker is gone; cannot repair");
        }
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
                    if w.send(Job::Batch(batch)).is_err() {
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
