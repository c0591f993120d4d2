//! Portcullis: log-tailing incident detection and auto-ban for API ingress hosts.
//!
//! The pipeline, one module a stage: **watch → parse → detect → decide → act**,
//! with **control** (socket + CLI) and **state** (persistence) beside it.
//! This build has the offline half: `config`, `parse`, `detect`, and the
//! `replay` driver that runs them over files.

pub mod act;
pub mod config;
pub mod control;
pub mod daemon;
pub mod decide;
pub mod detect;
pub mod docs;
pub mod enrich;
pub mod fleet;
pub mod parse;
pub mod pipeline;
pub mod prefetch;
pub mod replay;
pub mod state;
pub mod text;
pub mod watch;

/// The time now, in Unix seconds (what bans, expiries and cursors count in).
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
