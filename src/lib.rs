//! Portcullis: log-tailing incident detection and auto-ban for API ingress hosts.
//!
//! The pipeline, one module a stage: **watch → parse → detect → decide → act**,
//! with **control** (socket + CLI) and **state** (persistence) beside it.

pub mod parse;
