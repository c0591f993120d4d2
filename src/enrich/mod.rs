//! The enrich stage, between parse and detect: facts about an event that its
//! log line does not hold.
//!
//! Today that is geography and network ownership of the client address
//! ([`geo`]: country, region, AS number and organisation from MaxMind DB
//! files). Enrichment costs something per line, so the pipeline runs it only
//! for the format groups whose jails read an enriched field, and only once per
//! address while the address stays in a bounded cache.

pub mod geo;

pub use geo::{Enriched, GeoConfig, GeoHandle, GeoInfo, GeoLookup};
