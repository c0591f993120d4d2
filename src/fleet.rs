//! Fleet mode: ingress hosts behind one load balancer share decisions and
//! counters through Redis.
//!
//! - **Shared decisions**: every local ban and unban is appended to a Redis
//!   Stream (`{name}:decisions`, trimmed to `stream_maxlen`); every host reads
//!   the stream from where it stopped (the last id is persisted), so a host that
//!   was offline, or started later, catches up. Events from the host itself are
//!   skipped.
//! - **Fleet counters** for jails with `scope = "fleet"`: matches are added to
//!   per-key sub-buckets (a tenth of `findtime` each, with expiry) in
//!   pipelined batches, and the jail fires when the fleet total in the window
//!   reaches `maxretry`. Local counting continues beside it.
//! - **Redis down**: nothing waits on it. Decisions queue in memory and are
//!   published when it returns; fleet jails keep their local thresholds.
//!
//! Two threads, two connections: a writer (publish, count) and a reader
//! (blocking `XREAD`), so a slow read never delays a publication.

use crate::detect::Target;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `[fleet]` in `portcullis.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `redis://host:6379/0`, or `rediss://` for TLS.
    pub url: String,
    /// Key prefix shared by the hosts of one fleet. Default `portcullis`.
    pub name: Option<String>,
    /// This host's name, shown as a ban's origin. Default: the hostname.
    pub host: Option<String>,
    /// The Redis password, read from this file (not from the config).
    pub password_file: Option<PathBuf>,
    /// Decisions kept in the stream for late hosts. Default 100000.
    pub stream_maxlen: Option<usize>,
}

/// A decision shared with the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetEvent {
    /// `ban` or `unban`.
    pub kind: String,
    pub jail: String,
    pub target: Target,
    pub expires: Option<i64>,
    pub count: u32,
    pub origin: String,
    /// Unix milliseconds at publication.
    pub at_ms: i64,
}

/// One local match of a fleet-scoped jail.
#[derive(Debug, Clone)]
pub struct CountItem {
    pub jail: String,
    pub key: String,
    pub sec: u32,
    /// Matches of this key in this second.
    pub n: u32,
    pub findtime: u32,
    pub maxretry: u32,
}

/// What the fleet threads tell the engine.
#[derive(Debug)]
pub enum FromFleet {
    /// Another host's decision; the stream id to persist.
    Remote(FleetEvent, String),
    /// A fleet-scoped key reached `maxretry` over the fleet.
    Fire {
        jail: String,
        key: String,
        total: u32,
        sec: u32,
    },
}

/// Link state, for `status` and metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FleetStatus {
    pub host: String,
    pub name: String,
    pub link_up: bool,
    pub last_error: Option<String>,
    pub published: u64,
    pub applied: u64,
    /// Decisions waiting for Redis.
    pub outbox: usize,
    /// Publication-to-applied delay of the last remote decision, in ms.
    pub last_lag_ms: Option<i64>,
    /// Matches of fleet-scoped jails added to the fleet counters.
    pub counted: u64,
    /// Publication-to-applied delays of the last (up to 1000) remote decisions, in ms.
    #[serde(skip_serializing_if = "VecDeque::is_empty")]
    pub recent_lags_ms: VecDeque<i64>,
}

enum ToWriter {
    Publish(FleetEvent),
    Count(Vec<CountItem>),
}

pub struct Fleet {
    writer: Sender<ToWriter>,
    pub status: Arc<Mutex<FleetStatus>>,
    pub host: String,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".into())
}

fn client(cfg: &FleetConfig) -> Result<redis::Client, String> {
    use redis::IntoConnectionInfo;
    let mut info = cfg
        .url
        .as_str()
        .into_connection_info()
        .map_err(|e| format!("fleet url: {e}"))?;
    if let Some(f) = &cfg.password_file {
        let pw = std::fs::read_to_string(f)
            .map_err(|e| format!("fleet: reading {}: {e}", f.display()))?;
        let settings = info.redis_settings().clone().set_password(pw.trim());
        info = info.set_redis_settings(settings);
    }
    redis::Client::open(info).map_err(|e| format!("fleet: {e}"))
}

impl Fleet {
    /// Starts the writer and reader threads. `last_id`: where this host
    /// stopped reading the stream (`None`: from the beginning).
    pub fn start(
        cfg: &FleetConfig,
        last_id: Option<String>,
        to_engine: impl Fn(FromFleet) + Send + Clone + 'static,
    ) -> Result<Fleet, String> {
        let host = cfg.host.clone().unwrap_or_else(hostname);
        let name = cfg.name.clone().unwrap_or_else(|| "portcullis".into());
        let client = client(cfg)?;
        let status = Arc::new(Mutex::new(FleetStatus {
            host: host.clone(),
            name: name.clone(),
            ..Default::default()
        }));
        let (tx, rx) = std::sync::mpsc::channel();
        let stream = format!("{name}:decisions");
        let maxlen = cfg.stream_maxlen.unwrap_or(100_000);
        {
            let (client, status, stream, name, engine) = (
                client.clone(),
                status.clone(),
                stream.clone(),
                name.clone(),
                to_engine.clone(),
            );
            std::thread::Builder::new()
                .name("fleet-writer".into())
                .spawn(move || writer(client, rx, status, &stream, &name, maxlen, engine))
                .map_err(|e| e.to_string())?;
        }
        {
            let (status, host) = (status.clone(), host.clone());
            std::thread::Builder::new()
                .name("fleet-reader".into())
                .spawn(move || reader(client, &stream, last_id, &host, status, to_engine))
                .map_err(|e| e.to_string())?;
        }
        Ok(Fleet {
            writer: tx,
            status,
            host,
        })
    }

    pub fn publish(
        &self,
        kind: &str,
        jail: &str,
        target: &Target,
        expires: Option<i64>,
        count: u32,
    ) {
        let ev = FleetEvent {
            kind: kind.into(),
            jail: jail.into(),
            target: target.clone(),
            expires,
            count,
            origin: self.host.clone(),
            at_ms: now_ms(),
        };
        let _ = self.writer.send(ToWriter::Publish(ev));
    }

    pub fn count(&self, items: Vec<CountItem>) {
        if !items.is_empty() {
            let _ = self.writer.send(ToWriter::Count(items));
        }
    }

    pub fn status(&self) -> FleetStatus {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

fn set_link(status: &Mutex<FleetStatus>, up: bool, err: Option<String>) {
    if let Ok(mut s) = status.lock() {
        if s.link_up != up {
            match &err {
                Some(e) => tracing::warn!("fleet: Redis unreachable, working locally: {e}"),
                None => tracing::info!("fleet: connected to Redis"),
            }
        }
        s.link_up = up;
        if err.is_some() {
            s.last_error = err;
        }
    }
}

fn writer(
    client: redis::Client,
    rx: Receiver<ToWriter>,
    status: Arc<Mutex<FleetStatus>>,
    stream: &str,
    name: &str,
    maxlen: usize,
    engine: impl Fn(FromFleet),
) {
    let mut con: Option<redis::Connection> = None;
    let mut outbox: VecDeque<FleetEvent> = VecDeque::new();
    let mut retry_at = Instant::now();
    loop {
        let msg = rx.recv_timeout(Duration::from_millis(500));
        let mut counts = Vec::new();
        match msg {
            Ok(ToWriter::Publish(ev)) => outbox.push_back(ev),
            Ok(ToWriter::Count(items)) => counts = items,
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        // Take whatever else is queued, so one round trip carries it all.
        while let Ok(m) = rx.try_recv() {
            match m {
                ToWriter::Publish(ev) => outbox.push_back(ev),
                ToWriter::Count(items) => counts.extend(items),
            }
        }
        while outbox.len() > 100_000 {
            outbox.pop_front();
        }
        if con.is_none() && Instant::now() >= retry_at {
            match client.get_connection_with_timeout(Duration::from_secs(1)) {
                Ok(c) => {
                    set_link(&status, true, None);
                    con = Some(c);
                }
                Err(e) => {
                    set_link(&status, false, Some(e.to_string()));
                    retry_at = Instant::now() + Duration::from_secs(1);
                }
            }
        }
        let Some(c) = con.as_mut() else {
            // Redis down: fleet jails fall back to their local thresholds.
            if let Ok(mut s) = status.lock() {
                s.outbox = outbox.len();
            }
            continue;
        };
        let result = publish(c, stream, maxlen, &mut outbox, &status)
            .and_then(|_| count(c, name, &counts, &status, &engine));
        if let Err(e) = result {
            set_link(&status, false, Some(e.to_string()));
            con = None;
            retry_at = Instant::now() + Duration::from_secs(1);
        }
        if let Ok(mut s) = status.lock() {
            s.outbox = outbox.len();
        }
    }
}

fn publish(
    c: &mut redis::Connection,
    stream: &str,
    maxlen: usize,
    outbox: &mut VecDeque<FleetEvent>,
    status: &Mutex<FleetStatus>,
) -> redis::RedisResult<()> {
    if outbox.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    for ev in outbox.iter() {
        let json = serde_json::to_string(ev).expect("events serialise");
        pipe.cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(maxlen)
            .arg("*")
            .arg("d")
            .arg(json)
            .ignore();
    }
    pipe.query::<()>(c)?;
    if let Ok(mut s) = status.lock() {
        s.published += outbox.len() as u64;
    }
    outbox.clear();
    Ok(())
}

/// Adds matches to the fleet buckets and fires keys whose fleet total reached the threshold.
fn count(
    c: &mut redis::Connection,
    name: &str,
    items: &[CountItem],
    status: &Mutex<FleetStatus>,
    engine: &impl Fn(FromFleet),
) -> redis::RedisResult<()> {
    if items.is_empty() {
        return Ok(());
    }
    // Aggregate by borrowed keys first: one string per distinct bucket, not per line.
    let mut adds: HashMap<(&str, &str, u32, u32), u32> = HashMap::new();
    let mut latest: HashMap<(&str, &str), &CountItem> = HashMap::new();
    for it in items {
        let width = (it.findtime / 10).max(1);
        *adds
            .entry((
                it.jail.as_str(),
                it.key.as_str(),
                it.sec / width,
                it.findtime + width,
            ))
            .or_default() += it.n;
        let e = latest
            .entry((it.jail.as_str(), it.key.as_str()))
            .or_insert(it);
        if it.sec > e.sec {
            *e = it;
        }
    }
    let mut pipe = redis::pipe();
    for ((jail, key, idx, ttl), n) in &adds {
        let bucket = format!("{name}:cnt:{jail}:{key}:{idx}");
        pipe.cmd("INCRBY").arg(&bucket).arg(*n).ignore();
        pipe.cmd("EXPIRE").arg(&bucket).arg(*ttl).ignore();
    }
    let keys: Vec<&CountItem> = latest.values().copied().collect();
    for it in &keys {
        let width = (it.findtime / 10).max(1);
        let last = it.sec / width;
        let first = (it.sec.saturating_sub(it.findtime - 1)) / width;
        let names: Vec<String> = (first..=last)
            .map(|b| format!("{name}:cnt:{}:{}:{b}", it.jail, it.key))
            .collect();
        pipe.cmd("MGET").arg(names);
    }
    let totals: Vec<Vec<Option<u32>>> = pipe.query(c)?;
    if let Ok(mut s) = status.lock() {
        s.counted += items.iter().map(|i| i.n as u64).sum::<u64>();
    }
    for (it, buckets) in keys.iter().zip(totals) {
        let total: u32 = buckets.into_iter().flatten().sum();
        if total >= it.maxretry {
            engine(FromFleet::Fire {
                jail: it.jail.clone(),
                key: it.key.clone(),
                total,
                sec: it.sec,
            });
        }
    }
    Ok(())
}

fn reader(
    client: redis::Client,
    stream: &str,
    last_id: Option<String>,
    host: &str,
    status: Arc<Mutex<FleetStatus>>,
    engine: impl Fn(FromFleet),
) {
    let mut last = last_id.unwrap_or_else(|| "0".into());
    loop {
        let mut con = match client.get_connection_with_timeout(Duration::from_secs(1)) {
            Ok(c) => c,
            Err(e) => {
                set_link(&status, false, Some(e.to_string()));
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
        };
        loop {
            let reply: redis::RedisResult<redis::streams::StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(1000)
                .arg("BLOCK")
                .arg(1000)
                .arg("STREAMS")
                .arg(stream)
                .arg(&last)
                .query(&mut con);
            let reply = match reply {
                Ok(r) => r,
                Err(e) => {
                    set_link(&status, false, Some(e.to_string()));
                    std::thread::sleep(Duration::from_secs(1));
                    break;
                }
            };
            for key in reply.keys {
                for entry in key.ids {
                    last = entry.id.clone();
                    let Some(ev) = entry
                        .get::<String>("d")
                        .and_then(|d| serde_json::from_str::<FleetEvent>(&d).ok())
                    else {
                        continue;
                    };
                    if ev.origin == host {
                        continue;
                    }
                    if let Ok(mut s) = status.lock() {
                        s.applied += 1;
                        let lag = now_ms() - ev.at_ms;
                        s.last_lag_ms = Some(lag);
                        if s.recent_lags_ms.len() >= 1000 {
                            s.recent_lags_ms.pop_front();
                        }
                        s.recent_lags_ms.push_back(lag);
                    }
                    engine(FromFleet::Remote(ev, entry.id.clone()));
                }
            }
        }
    }
}
