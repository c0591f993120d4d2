//! Supervision of actions: an action that fails is retried with backoff while
//! detection and the other actions go on, and its health is what `status`
//! and the metrics show.
//!
//! The engine owns one [`Supervisor`]. It records every [`Outcome`]; when a
//! reconcile fails (at start, reload or repair: nginx not up yet at boot, the
//! table deleted), or a batch fails for an action whose batches can be
//! repaired by a reconcile ([`Action::repairs_by_reconcile`]), the action is
//! *failing* and [`Supervisor::due`] names it again after 1 s, 2 s, 4 s ... up
//! to a minute, until a reconcile succeeds. Nothing here is ever fatal.
//!
//! [`Action::repairs_by_reconcile`]: super::Action::repairs_by_reconcile

use super::Outcome;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// One action's health, as `status --json` shows it.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ActionHealth {
    pub batches_ok: u64,
    pub batches_failed: u64,
    pub last_error: Option<String>,
    /// Targets this action cannot express (a key id with a tab for an nginx
    /// map, `;` for a command): skipped for this action only.
    pub refused_targets: u64,
    pub last_refused: Option<String>,
    /// Since when (unix seconds) the action has been failing; `None` when healthy.
    pub failing_since: Option<i64>,
    /// Reconcile attempts since it started failing.
    pub retries: u32,
    /// Times enforcement was found changed behind our back (a flushed set, a
    /// deleted table) and repaired; and when (unix seconds) the last was.
    pub drifts: u64,
    pub last_drift: Option<i64>,
    /// Active bans being re-applied (at start or reload), until that
    /// reconcile reports; `None` otherwise.
    pub restoring: Option<usize>,
    #[serde(skip)]
    next_retry: Option<Instant>,
    #[serde(skip)]
    backoff: Duration,
}

impl ActionHealth {
    pub fn failing(&self) -> bool {
        self.failing_since.is_some()
    }
}

#[derive(Debug, Default)]
pub struct Supervisor {
    actions: BTreeMap<String, ActionHealth>,
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

impl Supervisor {
    pub fn health(&self) -> &BTreeMap<String, ActionHealth> {
        &self.actions
    }

    /// Forgets actions no longer configured (after a reload).
    pub fn retain(&mut self, names: &[&str]) {
        self.actions.retain(|n, _| names.contains(&n.as_str()));
    }

    /// An action was asked to re-apply `bans` active bans (start, reload).
    pub fn restoring(&mut self, action: &str, bans: usize) {
        self.actions
            .entry(action.to_string())
            .or_default()
            .restoring = Some(bans);
    }

    /// An action's first reconcile failed (at start or reload).
    pub fn reconcile_failed(&mut self, action: &str, error: String) {
        let h = self.actions.entry(action.to_string()).or_default();
        h.batches_failed += 1;
        h.last_error = Some(error);
        Self::schedule(h);
    }

    /// An action reconciled fine (its failing state, if any, ends).
    pub fn reconciled(&mut self, action: &str) {
        let h = self.actions.entry(action.to_string()).or_default();
        h.batches_ok += 1;
        Self::heal(action, h);
    }

    /// Targets skipped by an action.
    pub fn refused(&mut self, action: &str, n: usize, last: &str) {
        if n == 0 {
            return;
        }
        let h = self.actions.entry(action.to_string()).or_default();
        h.refused_targets += n as u64;
        h.last_refused = Some(last.to_string());
    }

    /// Records a batch's, a reconcile's or a failed verification's outcome.
    pub fn record(&mut self, o: &Outcome, repairs_by_reconcile: bool) {
        let h = self.actions.entry(o.action.clone()).or_default();
        if o.verify {
            if let Err(e) = &o.result {
                Self::drift(&o.action, h, e);
            }
            return;
        }
        if o.reconcile {
            h.restoring = None;
        }
        if let Some(r) = o.refused.last() {
            h.refused_targets += o.refused.len() as u64;
            h.last_refused = Some(format!("{}: {}", r.target, r.reason));
        }
        match &o.result {
            Ok(()) => {
                h.batches_ok += 1;
                if o.reconcile {
                    Self::heal(&o.action, h);
                }
            }
            Err(e) => {
                h.batches_failed += 1;
                h.last_error = Some(e.clone());
                if o.reconcile || repairs_by_reconcile {
                    Self::schedule(h);
                }
            }
        }
    }

    /// Actions whose retry is due now; each is named once per attempt.
    pub fn due(&mut self, now: Instant) -> Vec<String> {
        let mut out = Vec::new();
        for (name, h) in &mut self.actions {
            if h.next_retry.is_some_and(|t| t <= now) {
                h.next_retry = None;
                h.retries += 1;
                out.push(name.clone());
            }
        }
        out
    }

    /// Enforcement changed behind our back: logged once per event (not again
    /// while the repair is pending or failing), counted, repaired at once.
    fn drift(action: &str, h: &mut ActionHealth, what: &str) {
        if h.failing() {
            return;
        }
        h.drifts += 1;
        h.last_drift = Some(unix_now());
        h.last_error = Some(format!("drift: {what}"));
        tracing::error!(
            action,
            "enforcement changed behind portcullis's back ({what}); re-applying every active ban"
        );
        h.failing_since = Some(unix_now());
        h.backoff = FIRST_RETRY;
        h.next_retry = Some(Instant::now());
    }

    fn schedule(h: &mut ActionHealth) {
        if h.failing_since.is_none() {
            h.failing_since = Some(unix_now());
            h.backoff = FIRST_RETRY;
        } else {
            h.backoff = (h.backoff * 2).clamp(FIRST_RETRY, MAX_RETRY);
        }
        // A retry already planned keeps its (earlier) time.
        if h.next_retry.is_none() {
            h.next_retry = Some(Instant::now() + h.backoff);
        }
    }

    fn heal(action: &str, h: &mut ActionHealth) {
        if let Some(since) = h.failing_since.take() {
            tracing::warn!(
                action,
                failing_for_secs = unix_now() - since,
                retries = h.retries,
                "action recovered: active bans re-applied"
            );
        }
        h.retries = 0;
        h.next_retry = None;
        h.backoff = Duration::ZERO;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(reconcile: bool, ok: bool) -> Outcome {
        Outcome {
            action: "a".into(),
            changes: 1,
            result: if ok { Ok(()) } else { Err("down".into()) },
            incidents: vec![],
            refused: vec![],
            reconcile,
            verify: false,
        }
    }

    #[test]
    fn failing_reconcile_is_retried_with_backoff_until_it_works() {
        let mut s = Supervisor::default();
        s.reconcile_failed("a", "nginx -s reload failed".into());
        assert!(s.health()["a"].failing());
        assert!(
            s.due(Instant::now()).is_empty(),
            "not before the first backoff"
        );
        let later = Instant::now() + Duration::from_secs(2);
        assert_eq!(s.due(later), vec!["a".to_string()]);
        assert!(s.due(later).is_empty(), "one retry in flight at a time");
        s.record(&outcome(true, false), false);
        assert_eq!(s.health()["a"].backoff, Duration::from_secs(2));
        s.record(&outcome(true, true), false);
        assert!(!s.health()["a"].failing());
        assert!(s.due(later + MAX_RETRY).is_empty());
    }

    #[test]
    fn drift_is_counted_once_and_repaired_at_once() {
        let mut s = Supervisor::default();
        let mut o = outcome(false, false);
        o.verify = true;
        s.record(&o, true);
        s.record(&o, true);
        assert_eq!(s.health()["a"].drifts, 1);
        assert_eq!(s.due(Instant::now()), vec!["a".to_string()]);
        s.record(&outcome(true, true), true);
        assert!(!s.health()["a"].failing());
        s.record(&o, true);
        assert_eq!(s.health()["a"].drifts, 2);
    }

    #[test]
    fn failed_batches_schedule_a_repair_only_where_it_helps() {
        let mut s = Supervisor::default();
        s.record(&outcome(false, false), false);
        assert!(!s.health()["a"].failing());
        s.record(&outcome(false, false), true);
        assert!(s.health()["a"].failing());
    }
}
