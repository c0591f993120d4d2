//! Incident records: what a post-mortem needs about each decision.
//!
//! Every ban or revocation opens one: the jail, severity, target, when it was
//! detected and first seen, the count, a bounded sample of the log lines that
//! triggered it (with file and offset), every action's outcome with its time,
//! and how and when it was resolved. They are kept in the state store beside
//! the ledger, with bounded retention.

use crate::detect::{Severity, Target};
use serde::{Deserialize, Serialize};

/// A log line kept as evidence, with where it was read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvidenceLine {
    pub file: String,
    pub offset: u64,
    pub line: String,
    /// Country and network of the line's client, with `[geoip]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo: Option<crate::enrich::GeoInfo>,
}

/// One action's outcome for this incident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRecord {
    pub action: String,
    /// `ban` (the action was applied) or `unban` (undone).
    pub change: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Sortable: `YYYYMMDDTHHMMSS-NNNN` of detection time.
    pub id: String,
    pub jail: String,
    /// `ban` (address), `revoke` (API key), or `manual`.
    pub kind: String,
    pub severity: Severity,
    pub target: Target,
    /// Unix milliseconds, wall clock.
    pub detected_at: i64,
    /// Log time of the oldest match in the window, Unix milliseconds.
    pub first_seen: Option<i64>,
    /// Log time of the line that crossed the threshold.
    pub last_seen: Option<i64>,
    pub count: u32,
    pub evidence: Vec<EvidenceLine>,
    pub actions: Vec<ActionRecord>,
    /// Unix milliseconds.
    pub resolved_at: Option<i64>,
    /// `expired`, `unbanned by hand`, `flushed`.
    pub resolution: Option<String>,
}

impl Incident {
    /// A new id from the detection time and a per-process sequence number.
    pub fn new_id(detected_at_ms: i64) -> String {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let t = chrono::DateTime::from_timestamp_millis(detected_at_ms).unwrap_or_default();
        format!(
            "{}-{:04}",
            t.format("%Y%m%dT%H%M%S"),
            SEQ.fetch_add(1, Ordering::Relaxed) % 10_000
        )
    }
}

/// How many incidents are kept; the oldest go first.
pub const RETENTION: usize = 50_000;
