//! The opt-in Prometheus endpoint (`[metrics] listen = "127.0.0.1:9798"`).
//!
//! A scrape asks the engine for a snapshot of its own counters, encoded with
//! `prometheus-client`: nothing is counted twice on the hot path for metrics.
//! The latency histogram lives in the engine and is observed as actions report.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// `[metrics]` in `portcullis.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address to serve `/metrics` on, e.g. `127.0.0.1:9798`. No section: no endpoint.
    pub listen: std::net::SocketAddr,
}

type Labels = Vec<(String, String)>;

/// Seconds from reading the line that crossed a threshold to the first
/// action reporting the ban applied (lines are read within about a
/// millisecond of being written: see the latency benchmark).
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Builds the text exposition from a snapshot. `add` callbacks fill the families.
pub struct Snapshot {
    registry: Registry,
    pub lines: Family<Labels, Counter>,
    pub parsed: Family<Labels, Counter>,
    pub unparsed: Family<Labels, Counter>,
    pub matches: Family<Labels, Counter>,
    pub decisions: Family<Labels, Counter>,
    pub tracked: Family<Labels, Gauge>,
    pub lag: Family<Labels, Gauge>,
    pub syslog_dropped: Family<Labels, Counter>,
    pub actions: Family<Labels, Counter>,
    pub action_refused: Family<Labels, Counter>,
    pub action_failing: Family<Labels, Gauge>,
    pub action_drift: Family<Labels, Counter>,
    pub geoip_problem: Family<Labels, Gauge>,
    pub active_bans: Gauge,
    pub store_errors: Counter,
    pub store_unsaved: Gauge,
    pub held: Gauge,
    pub fleet_link: Gauge,
    pub fleet_lag_ms: Gauge,
    pub fleet_outbox: Gauge,
    pub fleet_published: Counter,
    pub fleet_applied: Counter,
}

impl Snapshot {
    /// `fleet`: whether fleet mode is configured (its series exist only then).
    pub fn new(latency: &Histogram, fleet: bool) -> Snapshot {
        let mut registry = Registry::with_prefix("portcullis");
        let s = Snapshot {
            lines: Family::default(),
            parsed: Family::default(),
            unparsed: Family::default(),
            matches: Family::default(),
            decisions: Family::default(),
            tracked: Family::default(),
            lag: Family::default(),
            syslog_dropped: Family::default(),
            actions: Family::default(),
            action_refused: Family::default(),
            action_failing: Family::default(),
            action_drift: Family::default(),
            geoip_problem: Family::default(),
            active_bans: Gauge::default(),
            store_errors: Counter::default(),
            store_unsaved: Gauge::default(),
            held: Gauge::default(),
            fleet_link: Gauge::default(),
            fleet_lag_ms: Gauge::default(),
            fleet_outbox: Gauge::default(),
            fleet_published: Counter::default(),
            fleet_applied: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "lines_read",
            "Lines read, per source and format",
            s.lines.clone(),
        );
        registry.register(
            "lines_parsed",
            "Lines parsed into events, per source and format",
            s.parsed.clone(),
        );
        registry.register(
            "lines_unparsed",
            "Lines refused (counted and skipped), per source and format",
            s.unparsed.clone(),
        );
        registry.register(
            "matches",
            "Events a jail's filter matched",
            s.matches.clone(),
        );
        registry.register("decisions", "Times a jail fired", s.decisions.clone());
        registry.register("tracked_keys", "Keys a jail tracks now", s.tracked.clone());
        registry.register(
            "tail_lag_bytes",
            "Bytes written to a file and not read yet",
            s.lag.clone(),
        );
        registry.register(
            "syslog_dropped_datagrams",
            "Datagrams the kernel dropped on a syslog socket because the daemon fell behind",
            s.syslog_dropped.clone(),
        );
        registry.register(
            "action_batches",
            "Action batches, by action and result",
            s.actions.clone(),
        );
        registry.register(
            "action_refused_targets",
            "Bans an action skipped because it cannot express their target",
            s.action_refused.clone(),
        );
        registry.register(
            "action_failing",
            "1 while an action is failing and being retried",
            s.action_failing.clone(),
        );
        registry.register(
            "enforcement_drift",
            "Times enforcement was changed behind portcullis's back (flushed set, deleted table) and repaired",
            s.action_drift.clone(),
        );
        registry.register(
            "geoip_database_problem",
            "1 while a [geoip] database is missing or does not load (the last good version, if any, stays in use)",
            s.geoip_problem.clone(),
        );
        registry.register(
            "store_write_errors",
            "Failed writes to the state store (a full disk, say)",
            s.store_errors.clone(),
        );
        registry.register(
            "store_unsaved_writes",
            "Writes kept in memory until the state store accepts them again",
            s.store_unsaved.clone(),
        );
        registry.register(
            "active_bans",
            "Active bans and revocations",
            s.active_bans.clone(),
        );
        registry.register(
            "held_decisions",
            "Decisions held by max_bans_per_minute",
            s.held.clone(),
        );
        if fleet {
            registry.register(
                "fleet_link_up",
                "1 while Redis is reachable (fleet mode)",
                s.fleet_link.clone(),
            );
            registry.register(
                "fleet_lag_milliseconds",
                "Publication-to-applied delay of the last remote decision",
                s.fleet_lag_ms.clone(),
            );
            registry.register(
                "fleet_outbox",
                "Decisions waiting for Redis",
                s.fleet_outbox.clone(),
            );
            registry.register(
                "fleet_published",
                "Decisions published to the fleet",
                s.fleet_published.clone(),
            );
            registry.register(
                "fleet_applied",
                "Decisions of other hosts applied here",
                s.fleet_applied.clone(),
            );
        }
        registry.register(
            "line_to_enforced_seconds",
            "From reading the threshold line to the ban applied",
            latency.clone(),
        );
        Snapshot { registry, ..s }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

pub fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Serves `GET /metrics`, asking the engine for each scrape.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: std::sync::mpsc::Sender<super::engine::Msg>,
) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let n = stream.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]);
            let (status, body) = if req.starts_with("GET /metrics ") || req.starts_with("GET / ") {
                let (tx, rx) = oneshot::channel();
                match engine.send(super::engine::Msg::Metrics(tx)) {
                    Ok(()) => ("200 OK", rx.await.unwrap_or_default()),
                    Err(_) => ("503 Service Unavailable", String::new()),
                }
            } else {
                ("404 Not Found", "only /metrics here\n".to_string())
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes()).await;
            let _ = stream.write_all(body.as_bytes()).await;
        });
    }
}
