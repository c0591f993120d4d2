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
pub mod fleet;
pub mod parse;
pub mod pipeline;
pub mod replay;
pub mod state;
pub mod text;
pub mod watch;
