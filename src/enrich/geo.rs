//! Country, region and network operator of a client address, from MaxMind DB
//! (`.mmdb`) files: MaxMind's GeoLite2/GeoIP2, DB-IP's and ip-location-db's
//! builds all use the format.
//!
//! ```toml
//! [geoip]
//! country_db = "/var/lib/GeoIP/GeoLite2-City.mmdb"   # a country or city database
//! asn_db = "/var/lib/GeoIP/GeoLite2-ASN.mmdb"
//! ```
//!
//! Fields: `country` (ISO 3166-1 code), `region` (the country and its first
//! subdivision, `US-CA`, where the database has one; else the country),
//! `asn` (number), `as_org` (the AS's organisation).
//!
//! Why the files are read into memory rather than mapped: a mapping of a file
//! that `geoipupdate` or a careless `cp` rewrites in place changes under the
//! reader (or faults past a truncation); a copy in memory cannot. A city
//! database is about 60 MB.
//!
//! **Replacement.** A [`GeoHandle`] owns the loaded databases; a thread looks
//! at each file once a second and, when a new version has held still for one
//! look, loads it and swaps it in whole (a generation number tells each
//! [`GeoLookup`] to drop its cache). Counting state is not touched: no reload,
//! nothing lost. A file that disappears or does not load keeps the last good
//! database in use, and says so in the log and in `status`.

use crate::config::netfile::{Look, Stamp, Versions, stamp};
use foldhash::fast::RandomState;
use hashbrown::HashMap;
use serde::{Deserialize, Serialize};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

/// `[geoip]` in `portcullis.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeoConfig {
    /// A country or city database: `country` and `region`.
    pub country_db: Option<PathBuf>,
    /// An ASN database: `asn` and `as_org`.
    pub asn_db: Option<PathBuf>,
    /// Addresses whose answers are kept, per parsing thread. Default 100,000.
    pub cache_size: Option<usize>,
}

impl GeoConfig {
    /// Whether a database is named for `role`.
    pub fn names(&self, role: Role) -> bool {
        match role {
            Role::Country => self.country_db.is_some(),
            Role::Asn => self.asn_db.is_some(),
        }
    }
}

/// The enriched fields, and the database each needs.
pub const FIELDS: [(&str, Role); 4] = [
    ("country", Role::Country),
    ("region", Role::Country),
    ("asn", Role::Asn),
    ("as_org", Role::Asn),
];

/// The database a field comes from, if it is an enriched field.
pub fn role_of(field: &str) -> Option<Role> {
    FIELDS.iter().find(|(f, _)| *f == field).map(|(_, r)| *r)
}

/// What a database is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Country,
    Asn,
}

impl Role {
    /// Its bit in [`crate::parse::Event::geo_missing`] and a jail's needs.
    pub fn bit(self) -> u8 {
        match self {
            Role::Country => 1,
            Role::Asn => 2,
        }
    }

    /// The config key naming its file.
    pub fn key(self) -> &'static str {
        match self {
            Role::Country => "country_db",
            Role::Asn => "asn_db",
        }
    }

    /// Whether a database of `database_type` (its metadata) serves this role.
    fn accepts(self, database_type: &str) -> bool {
        let t = database_type.to_ascii_lowercase();
        match self {
            Role::Country => ["country", "city", "enterprise"]
                .iter()
                .any(|w| t.contains(w)),
            Role::Asn => ["asn", "isp"].iter().any(|w| t.contains(w)),
        }
    }

    fn wants(self) -> &'static str {
        match self {
            Role::Country => {
                "a country or city database (GeoLite2-Country, GeoLite2-City, DB-IP country/city, ...)"
            }
            Role::Asn => "an ASN database (GeoLite2-ASN, GeoIP2-ISP, ...)",
        }
    }
}

/// What the databases say of one address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GeoInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<Box<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_org: Option<Box<str>>,
}

impl GeoInfo {
    fn is_empty(&self) -> bool {
        self == &GeoInfo::default()
    }
}

/// A [`GeoInfo`] as events carry it: shared by every address with the same
/// answer (a few thousand answers for tens of thousands of addresses, so
/// they stay in cache), with the fingerprints of its country and region
/// made once, for `distinct` counting (see `detect::fingerprint`).
#[derive(Debug)]
pub struct Enriched {
    pub info: GeoInfo,
    pub country_fp: Option<crate::detect::fingerprint::TextKey>,
    pub region_fp: Option<crate::detect::fingerprint::TextKey>,
}

impl Enriched {
    fn new(info: GeoInfo) -> Enriched {
        let fp = |s: &Option<Box<str>>| {
            s.as_deref()
                .map(|s| crate::detect::fingerprint::of(s.as_bytes()))
        };
        // A region counts as its country and subdivision (see
        // `window::DistinctValues`): `US-CA` is `US` + `CA`, `US` is `US` alone.
        let region_fp = info.country.as_deref().map(|c| {
            let sub = info
                .region
                .as_deref()
                .and_then(|r| r.strip_prefix(c))
                .and_then(|r| r.strip_prefix('-'));
            crate::detect::fingerprint::nested(c.as_bytes(), sub.map(str::as_bytes))
        });
        Enriched {
            country_fp: fp(&info.country),
            region_fp,
            info,
        }
    }
}

impl std::ops::Deref for Enriched {
    type Target = GeoInfo;
    fn deref(&self) -> &GeoInfo {
        &self.info
    }
}

impl std::fmt::Display for GeoInfo {
    /// `US-CA AS15169 Google LLC`, for evidence lines (raw: escape before a terminal).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if let Some(r) = self.region.as_deref().or(self.country.as_deref()) {
            parts.push(r.to_string());
        }
        if let Some(n) = self.asn {
            parts.push(format!("AS{n}"));
        }
        if let Some(o) = &self.as_org {
            parts.push(o.to_string());
        }
        f.write_str(&parts.join(" "))
    }
}

/// A damaged file (zeroed or overwritten blocks) still has valid metadata
/// and, without a check, answers "nothing known" for the addresses behind
/// the damage. Two checks, a few tens of milliseconds for a city database
/// (the crate's own `verify` takes 0.8 s and refuses ip-location-db's
/// published files for their empty description):
///
/// - every record of the search tree points to a node, to "nothing", or
///   into the data section, and never back to the root (a zeroed node's
///   records are 0: the root);
/// - 4,096 addresses spread over the IPv4 space (and as many over 2000::/3
///   for an IPv6 file) decode.
///
/// Returns whether any sampled IPv4 address has an answer (an IPv6-only
/// file has none: `check` warns).
fn check_file(reader: &maxminddb::Reader<Arc<[u8]>>, buf: &[u8]) -> Result<bool, String> {
    use serde::de::IgnoredAny;
    let m = reader.metadata();
    let (nodes, bits) = (m.node_count as usize, m.record_size as usize);
    let node_bytes = bits / 4;
    let tree = nodes
        .checked_mul(node_bytes)
        .filter(|&t| t <= buf.len())
        .ok_or("damaged MaxMind DB file: the search tree is longer than the file")?;
    let data_len = (buf.len() - tree) as u64;
    for (i, node) in buf[..tree].chunks_exact(node_bytes).enumerate() {
        let be = |b: &[u8]| b.iter().fold(0u64, |v, &c| v << 8 | c as u64);
        let (left, right) = match bits {
            24 => (be(&node[0..3]), be(&node[3..6])),
            28 => (
                (node[3] as u64 >> 4) << 24 | be(&node[0..3]),
                (node[3] as u64 & 0x0f) << 24 | be(&node[4..7]),
            ),
            _ => (be(&node[0..4]), be(&node[4..8])),
        };
        for r in [left, right] {
            if r == 0 || r > nodes as u64 + 16 + data_len {
                return Err(format!(
                    "damaged MaxMind DB file: node {i} of the search tree points {}",
                    if r == 0 {
                        "back to the root"
                    } else {
                        "past the end of the file"
                    }
                ));
            }
        }
    }
    let v6 = m.ip_version == 6;
    let v4s = (0..4096u32).map(|i| IpAddr::from(std::net::Ipv4Addr::from((i << 20) | 0x0001_0101)));
    let v6s = (0..4096u128).filter(|_| v6).map(|i| {
        IpAddr::from(std::net::Ipv6Addr::from(
            ((0x2000 + i) << 112) | (((i * 0x9e37) & 0xffff) << 96) | 1,
        ))
    });
    let (mut v4_answers, mut failed, mut asked) = (false, 0u32, 0u32);
    for ip in v4s.chain(v6s) {
        asked += 1;
        match reader.lookup(ip).and_then(|r| r.decode::<IgnoredAny>()) {
            Ok(Some(_)) => v4_answers |= ip.is_ipv4(),
            Ok(None) => {}
            Err(_) => failed += 1,
        }
    }
    if failed > 0 {
        return Err(format!(
            "damaged MaxMind DB file: {failed} of {asked} sampled lookups failed to decode"
        ));
    }
    Ok(v4_answers)
}

/// No published database comes near this (a GeoIP2 City is under 200 MB);
/// a bigger file is a mistake, and reading it would hold that much memory.
const MAX_DB_BYTES: u64 = 1 << 30;

/// One loaded database.
struct Db {
    reader: maxminddb::Reader<Arc<[u8]>>,
    /// An IPv4-only file (ip-location-db's `-ipv4` builds) has no answer
    /// for IPv6 addresses.
    v4_only: bool,
    /// Whether any sampled IPv4 address has an answer (not so in an
    /// IPv6-only file).
    v4_answers: bool,
}

/// Why a file did not load: `Io` (it could not be read, e.g. a permission)
/// is tried again while the file stays the same; the others only when it
/// changes (reading a broken 1 GiB file every 10 s helps nobody).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Io,
    Content,
}

/// A file opened, or why not.
type Opened = Result<Db, (Failure, String)>;

/// The record layouts read: MaxMind's (`country.iso_code`,
/// `subdivisions[0].iso_code`) and ip-location-db's flat one
/// (`country_code`, `state1`).
#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<Iso<'a>>,
    #[serde(borrow)]
    registered_country: Option<Iso<'a>>,
    #[serde(borrow)]
    subdivisions: Option<Vec<Iso<'a>>>,
    country_code: Option<&'a str>,
    state1: Option<&'a str>,
}

#[derive(Deserialize)]
struct Iso<'a> {
    iso_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct AsnRecord<'a> {
    autonomous_system_number: Option<u32>,
    autonomous_system_organization: Option<&'a str>,
}

fn iso<'a>(i: &Option<Iso<'a>>) -> Option<&'a str> {
    text(i.as_ref().and_then(|i| i.iso_code))
}

/// A database value as a field: trimmed, bounded, never empty.
fn text(s: Option<&str>) -> Option<&str> {
    let s = s?.trim();
    (!s.is_empty()).then(|| &s[..s.floor_char_boundary(128)])
}

impl Db {
    fn try_open(path: &Path, role: Role) -> Opened {
        let io = |e: std::io::Error| (Failure::Io, format!("{}: {e}", path.display()));
        let content = |e: String| (Failure::Content, format!("{}: {e}", path.display()));
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(content("not a regular file".into()));
        }
        if meta.len() > MAX_DB_BYTES {
            return Err(content(format!(
                "{} bytes, larger than any published database ({MAX_DB_BYTES} at most): not loaded",
                meta.len()
            )));
        }
        let buf: Arc<[u8]> = Arc::from(std::fs::read(path).map_err(io)?);
        let reader = maxminddb::Reader::from_source(buf.clone())
            .map_err(|e| content(format!("not a readable MaxMind DB (.mmdb) file: {e}")))?;
        let m = reader.metadata();
        if !role.accepts(&m.database_type) {
            return Err(content(format!(
                "a `{}` database, but `{}` needs {}",
                crate::text::printable(&m.database_type),
                role.key(),
                role.wants()
            )));
        }
        let v4_answers = check_file(&reader, &buf)
            .map_err(|e| content(format!("{e}; the file must be replaced")))?;
        let v4_only = m.ip_version == 4;
        Ok(Db {
            reader,
            v4_only,
            v4_answers,
        })
    }

    fn record<'a, T: Deserialize<'a>>(&'a self, ip: IpAddr) -> Option<T> {
        if self.v4_only && ip.is_ipv6() {
            return None;
        }
        self.reader.lookup(ip).ok()?.decode().ok()?
    }

    fn country(&self, ip: IpAddr, out: &mut GeoInfo) {
        let Some(r) = self.record::<CountryRecord>(ip) else {
            return;
        };
        let Some(country) = iso(&r.country)
            .or_else(|| iso(&r.registered_country))
            .or_else(|| text(r.country_code))
        else {
            return;
        };
        let country = country.to_ascii_uppercase();
        let sub = r
            .subdivisions
            .as_ref()
            .and_then(|s| s.first())
            .and_then(|s| text(s.iso_code))
            .or_else(|| text(r.state1));
        // Upper case like the country (filters compare upper case): some
        // databases give names (`state1 = "California"`), not codes.
        out.region = Some(match sub {
            Some(s) => format!("{country}-{}", s.to_uppercase()).into(),
            None => country.clone().into(),
        });
        out.country = Some(country.into());
    }

    fn asn(&self, ip: IpAddr, out: &mut GeoInfo) {
        if let Some(r) = self.record::<AsnRecord>(ip) {
            out.asn = r.autonomous_system_number;
            out.as_org = text(r.autonomous_system_organization).map(Into::into);
        }
    }
}

/// The databases in use, swapped whole when a file is replaced.
#[derive(Default)]
pub struct Databases {
    country: Option<Arc<Db>>,
    asn: Option<Arc<Db>>,
    /// Roles configured and not loaded (bits of [`Role::bit`]).
    missing: u8,
}

impl Databases {
    /// What the databases say of `ip` (canonical: IPv4-mapped as IPv4).
    fn lookup(&self, ip: IpAddr) -> Option<GeoInfo> {
        let mut out = GeoInfo::default();
        if let Some(db) = &self.country {
            db.country(ip, &mut out);
        }
        if let Some(db) = &self.asn {
            db.asn(ip, &mut out);
        }
        (!out.is_empty()).then_some(out)
    }
}

/// One configured file, as the watcher sees it.
struct File {
    role: Role,
    path: PathBuf,
    /// The version loaded (or found broken) last, and a new one coming.
    versions: Versions,
    loaded: Option<Loaded>,
    problem: Option<(String, i64)>,
    /// Looks since the last try of a file with a problem.
    retry: u32,
    /// The problem is one reading again may cure (a permission, an I/O
    /// error), not the file's contents.
    retryable: bool,
}

/// A file with a problem is tried again every this many looks.
const RETRY_LOOKS: u32 = 10;

#[derive(Clone)]
struct Loaded {
    database_type: String,
    build_epoch: u64,
    ip_version: u16,
    v4_answers: bool,
    at: i64,
}

/// A configured database as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct DbStatus {
    /// `country_db` or `asn_db`.
    pub role: &'static str,
    pub path: String,
    /// From the file's metadata, for the version in use.
    pub database_type: Option<String>,
    /// Unix seconds: when the version in use was built, and loaded.
    pub built: Option<u64>,
    pub loaded_at: Option<i64>,
    /// 4 for an IPv4-only file: IPv6 clients get no fields from it.
    pub ip_version: Option<u16>,
    /// False for a file that answers no IPv4 address (an IPv6-only one).
    pub answers_ipv4: Option<bool>,
    /// What is wrong now (the file is gone, does not load), and since when.
    pub problem: Option<String>,
    pub problem_since: Option<i64>,
}

struct Inner {
    files: Vec<File>,
    current: Arc<Databases>,
    opened: bool,
    watching: bool,
}

/// The configured databases: loaded on first use, replaced when their files
/// are (see the module docs). Shared by every [`GeoLookup`].
pub struct GeoHandle {
    config: GeoConfig,
    inner: Mutex<Inner>,
    generation: AtomicU64,
}

impl std::fmt::Debug for GeoHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoHandle")
            .field("config", &self.config)
            .finish()
    }
}

impl GeoHandle {
    /// How often the watcher looks at the files. A new version is loaded at
    /// the second look that sees it unchanged: within 2 x POLL.
    pub const POLL: Duration = Duration::from_secs(1);
    const DEFAULT_CACHE: usize = 100_000;

    /// A handle for `config`; nothing is read until it is used.
    pub fn new(config: &GeoConfig) -> Arc<GeoHandle> {
        let files = [
            (Role::Country, &config.country_db),
            (Role::Asn, &config.asn_db),
        ]
        .into_iter()
        .filter_map(|(role, p)| {
            p.as_ref().map(|path| File {
                role,
                path: path.clone(),
                versions: Versions::default(),
                loaded: None,
                problem: None,
                retry: 0,
                retryable: false,
            })
        })
        .collect();
        Arc::new(GeoHandle {
            config: config.clone(),
            inner: Mutex::new(Inner {
                files,
                current: Arc::new(Databases::default()),
                opened: false,
                watching: false,
            }),
            generation: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &GeoConfig {
        &self.config
    }

    /// Whether the config names a database for `role`.
    pub fn has(&self, role: Role) -> bool {
        self.config.names(role)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads every file the first time; later calls do nothing.
    fn open(&self, inner: &mut Inner) {
        if inner.opened {
            return;
        }
        inner.opened = true;
        let mut new = Vec::new();
        for f in &mut inner.files {
            f.versions = Versions::new(stamp(&f.path));
            match Db::try_open(&f.path, f.role) {
                Ok(db) => {
                    f.loaded = Some(loaded(&db));
                    new.push((f.role, db));
                }
                Err((kind, e)) => {
                    f.retryable = kind == Failure::Io;
                    f.problem = Some((e, crate::now_secs()));
                }
            }
        }
        self.publish(inner, new);
    }

    /// Puts `new` databases in use: a new set, sharing the other role's
    /// database with the one before, and a new generation for the lookups.
    fn publish(&self, inner: &mut Inner, new: Vec<(Role, Db)>) {
        let mut dbs = Databases {
            country: inner.current.country.clone(),
            asn: inner.current.asn.clone(),
            missing: 0,
        };
        for (role, db) in new {
            match role {
                Role::Country => dbs.country = Some(Arc::new(db)),
                Role::Asn => dbs.asn = Some(Arc::new(db)),
            }
        }
        for (role, db) in [(Role::Country, &dbs.country), (Role::Asn, &dbs.asn)] {
            if self.has(role) && db.is_none() {
                dbs.missing |= role.bit();
            }
        }
        inner.current = Arc::new(dbs);
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// What is wrong with the configured files now (loading them first):
    /// a missing, unreadable or wrong-type database, with its path.
    /// Each as `[geoip] country_db: PATH: reason`.
    pub fn problems(&self) -> Vec<String> {
        self.status()
            .into_iter()
            .filter_map(|d| Some(format!("[geoip] {}: {}", d.role, d.problem?)))
            .collect()
    }

    /// The databases in use and their generation.
    fn current(&self) -> (u64, Arc<Databases>) {
        let mut inner = self.lock();
        self.open(&mut inner);
        (
            self.generation.load(Ordering::Acquire),
            inner.current.clone(),
        )
    }

    /// One look at the files: a version that changed and then held still
    /// for one look is loaded and swapped in; one that is gone or broken
    /// leaves the last good database in use. A file with a problem and no
    /// change is tried again every [`RETRY_LOOKS`] looks (a permission fixed
    /// with `chmod` changes no stamp). Files are read without the lock held,
    /// so `status` never waits for a read. Logs what it did.
    pub fn poll(&self) {
        // What to read, decided under the lock.
        let mut todo: Vec<(usize, Role, PathBuf, Option<Stamp>)> = Vec::new();
        {
            let mut inner = self.lock();
            self.open(&mut inner);
            for (i, f) in inner.files.iter_mut().enumerate() {
                match f.versions.look(&f.path) {
                    Look::Settled(now) => todo.push((i, f.role, f.path.clone(), now)),
                    Look::Moving => {}
                    Look::Same => {
                        let now = f.versions.current;
                        if f.problem.is_some() && f.retryable && now.is_some() {
                            f.retry += 1;
                            if f.retry >= RETRY_LOOKS {
                                f.retry = 0;
                                todo.push((i, f.role, f.path.clone(), now));
                            }
                        }
                    }
                }
            }
        }
        if todo.is_empty() {
            return;
        }
        let results: Vec<(usize, Role, Opened)> = todo
            .into_iter()
            .map(|(i, role, path, now)| {
                let fail =
                    |what: &str| Err((Failure::Content, format!("{}: {what}", path.display())));
                let r = match now {
                    // No stamp: gone, or not reachable (a directory's
                    // permission), which reading again may cure.
                    None => match std::fs::metadata(&path) {
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            fail("the file is gone")
                        }
                        Err(e) => Err((Failure::Io, format!("{}: {e}", path.display()))),
                        Ok(_) => Db::try_open(&path, role),
                    },
                    Some(st) if !st.regular => fail("not a regular file"),
                    Some(st) if st.len == 0 => fail("the file is empty"),
                    Some(_) => Db::try_open(&path, role),
                };
                (i, role, r)
            })
            .collect();
        let mut inner = self.lock();
        let mut swap: Vec<(Role, Db)> = Vec::new();
        for (i, role, result) in results {
            let f = &mut inner.files[i];
            match result {
                Ok(db) => {
                    let l = loaded(&db);
                    tracing::info!(
                        path = %f.path.display(),
                        database_type = %crate::text::printable(&l.database_type),
                        "geoip: a new version of the {} database is in use",
                        role.key()
                    );
                    f.loaded = Some(l);
                    f.problem = None;
                    swap.push((role, db));
                }
                Err((kind, e)) => {
                    f.retryable = kind == Failure::Io;
                    let kept = match &f.loaded {
                        Some(l) => format!(
                            "the `{}` database loaded at {} stays in use",
                            crate::text::printable(&l.database_type),
                            crate::text::expiry(Some(l.at))
                        ),
                        None => "no database is loaded for it: jails reading its fields \
                                 are paused"
                            .into(),
                    };
                    let known = f.problem.as_ref().is_some_and(|(p, _)| p.starts_with(&e));
                    if !known {
                        tracing::error!("geoip {}: {e}; {kept}", role.key());
                        f.problem = Some((format!("{e}; {kept}"), crate::now_secs()));
                    }
                }
            }
        }
        if !swap.is_empty() {
            self.publish(&mut inner, swap);
        }
    }

    /// Starts the thread that calls [`GeoHandle::poll`] every
    /// [`GeoHandle::POLL`] (the daemon; `replay` reads files that do not
    /// change). It ends when the handle is dropped (a reload that changed
    /// `[geoip]`). Idempotent.
    pub fn watch(self: &Arc<Self>) {
        {
            let mut inner = self.lock();
            if inner.watching {
                return;
            }
            inner.watching = true;
        }
        let weak: Weak<GeoHandle> = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("geoip-watch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Self::POLL);
                    match weak.upgrade() {
                        Some(h) => h.poll(),
                        None => break,
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(
                "geoip: cannot start the database watcher ({e}); replaced files are not picked up until a restart"
            );
        }
    }

    /// Each configured database, for `status`.
    pub fn status(&self) -> Vec<DbStatus> {
        let mut inner = self.lock();
        self.open(&mut inner);
        inner
            .files
            .iter()
            .map(|f| DbStatus {
                role: f.role.key(),
                path: f.path.display().to_string(),
                database_type: f.loaded.as_ref().map(|l| l.database_type.clone()),
                built: f.loaded.as_ref().map(|l| l.build_epoch),
                loaded_at: f.loaded.as_ref().map(|l| l.at),
                ip_version: f.loaded.as_ref().map(|l| l.ip_version),
                answers_ipv4: f.loaded.as_ref().map(|l| l.v4_answers),
                problem: f.problem.as_ref().map(|p| p.0.clone()),
                problem_since: f.problem.as_ref().map(|p| p.1),
            })
            .collect()
    }

    fn cache_size(&self) -> usize {
        self.config.cache_size.unwrap_or(Self::DEFAULT_CACHE).max(2)
    }
}

fn loaded(db: &Db) -> Loaded {
    let m = db.reader.metadata();
    Loaded {
        database_type: m.database_type.clone(),
        build_epoch: m.build_epoch,
        ip_version: m.ip_version,
        v4_answers: db.v4_answers,
        at: crate::now_secs(),
    }
}

/// Addresses to answer numbers, in two generations of at most `half`
/// entries: an address asked for again moves to the newer one, and when it
/// is full the older one is dropped whole, so a flood of new addresses costs
/// O(1) per line and bounded memory. Entries are 8 bytes (IPv4) so that the
/// table of a busy log's clients stays in the CPU's cache.
struct Generations<K> {
    hot: HashMap<K, u32, RandomState>,
    cold: HashMap<K, u32, RandomState>,
}

impl<K: std::hash::Hash + Eq> Generations<K> {
    fn new() -> Generations<K> {
        Generations {
            hot: HashMap::default(),
            cold: HashMap::default(),
        }
    }

    fn get(&mut self, key: K, half: usize, miss: impl FnOnce() -> u32) -> u32 {
        if let Some(&v) = self.hot.get(&key) {
            return v;
        }
        let v = self.cold.remove(&key).unwrap_or_else(miss);
        if self.hot.len() >= half {
            self.cold = std::mem::take(&mut self.hot);
        }
        self.hot.insert(key, v);
        v
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.hot.len() + self.cold.len()
    }

    fn clear(&mut self) {
        self.hot.clear();
        self.cold.clear();
    }
}

/// Lookups for one thread: the handle's databases behind a bounded cache of
/// answers per address (see [`Generations`]). Answers are shared: each
/// distinct one is kept once and addresses hold its number.
pub struct GeoLookup {
    handle: Arc<GeoHandle>,
    generation: u64,
    dbs: Arc<Databases>,
    v4: Generations<u32>,
    v6: Generations<u128>,
    /// Answer 0 is "nothing known".
    answers: Vec<Option<Arc<Enriched>>>,
    numbers: HashMap<GeoInfo, u32, RandomState>,
    half: usize,
}

impl GeoLookup {
    pub fn new(handle: Arc<GeoHandle>) -> GeoLookup {
        let (generation, dbs) = handle.current();
        let half = handle.cache_size() / 2;
        GeoLookup {
            handle,
            generation,
            dbs,
            v4: Generations::new(),
            v6: Generations::new(),
            answers: vec![None],
            numbers: HashMap::default(),
            half,
        }
    }

    /// Takes up a new set of databases, if the handle has one.
    fn refresh(&mut self) {
        if self.handle.generation.load(Ordering::Acquire) != self.generation {
            let (generation, dbs) = self.handle.current();
            self.generation = generation;
            self.dbs = dbs;
            self.clear();
        }
    }

    /// The configured roles whose database is not loaded (no file yet, or
    /// none that loads): jails reading their fields must not count, since
    /// "no country" would read as "not in that country".
    pub fn missing(&mut self) -> u8 {
        self.refresh();
        self.dbs.missing
    }

    fn clear(&mut self) {
        self.v4.clear();
        self.v6.clear();
        self.answers.truncate(1);
        self.numbers.clear();
    }

    /// What the databases say of `ip`; `None` when they know nothing of it.
    pub fn get(&mut self, ip: IpAddr) -> Option<Arc<Enriched>> {
        self.refresh();
        // Distinct answers are bounded like addresses: past the bound (a
        // flood over many networks) everything starts again.
        if self.answers.len() > 2 * self.half {
            self.clear();
        }
        let ip = ip.to_canonical();
        let (dbs, answers, numbers) = (&self.dbs, &mut self.answers, &mut self.numbers);
        let mut miss = || match dbs.lookup(ip) {
            None => 0,
            Some(info) => *numbers.entry(info).or_insert_with_key(|info| {
                answers.push(Some(Arc::new(Enriched::new(info.clone()))));
                (answers.len() - 1) as u32
            }),
        };
        let n = match ip {
            IpAddr::V4(a) => self.v4.get(a.to_bits(), self.half, &mut miss),
            IpAddr::V6(a) => self.v6.get(a.to_bits(), self.half, &mut miss),
        };
        self.answers[n as usize].clone()
    }
}

impl Clone for GeoLookup {
    /// Another thread's lookups: same databases, an empty cache.
    fn clone(&self) -> GeoLookup {
        GeoLookup::new(self.handle.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_accept_the_database_types_published() {
        for t in [
            "GeoLite2-Country",
            "GeoLite2-City",
            "GeoIP2-Enterprise",
            "country ipvAll",
            "city ipv4",
            "DBIP-City-Lite",
        ] {
            assert!(Role::Country.accepts(t), "{t}");
            assert!(!Role::Asn.accepts(t), "{t}");
        }
        for t in [
            "GeoLite2-ASN",
            "GeoIP2-ISP",
            "DBIP-ASN-Lite (compat=GeoLite2-ASN)",
        ] {
            assert!(Role::Asn.accepts(t), "{t}");
            assert!(!Role::Country.accepts(t), "{t}");
        }
    }

    #[test]
    fn missing_and_broken_files_are_problems_with_their_path() {
        let dir = std::env::temp_dir().join(format!("portcullis-geo-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.mmdb");
        std::fs::write(&junk, b"not a database").unwrap();
        let h = GeoHandle::new(&GeoConfig {
            country_db: Some(dir.join("missing.mmdb")),
            asn_db: Some(junk.clone()),
            cache_size: None,
        });
        let p = h.problems();
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains("missing.mmdb") && p[0].contains("No such file"),
            "{p:?}"
        );
        assert!(
            p[1].contains("junk.mmdb") && p[1].contains("not a readable MaxMind DB"),
            "{p:?}"
        );
        // Lookups work (and know nothing) without any database.
        let mut l = GeoLookup::new(h);
        assert!(l.get("8.8.8.8".parse().unwrap()).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cache_stays_bounded() {
        let h = GeoHandle::new(&GeoConfig {
            cache_size: Some(100),
            ..Default::default()
        });
        let mut l = GeoLookup::new(h);
        for i in 0..10_000u32 {
            l.get(IpAddr::from(std::net::Ipv4Addr::from(i)));
            l.get(IpAddr::from(std::net::Ipv6Addr::from(i as u128)));
            assert!(l.v4.len() <= 100 && l.v6.len() <= 100);
            assert!(l.answers.len() <= 101);
        }
    }

    #[test]
    fn display_is_region_then_network() {
        let g = GeoInfo {
            country: Some("US".into()),
            region: Some("US-CA".into()),
            asn: Some(15169),
            as_org: Some("Google LLC".into()),
        };
        assert_eq!(g.to_string(), "US-CA AS15169 Google LLC");
    }
}
