//! Configuration: `portcullis.toml`, plus every `jails.d/*.toml` and
//! `filters.d/*.toml` beside it.
//!
//! Loading collects every error it can find, each with file, line, column and
//! a reason (and a suggestion for a misspelt name), so `portcullis check`
//! shows them all at once. Jails and filters are read one table at a time, so
//! one bad jail does not hide the errors of the next.

pub mod de;
pub mod embedded;
mod error;
mod layers;
pub mod lint;
mod main_file;
pub mod netfile;
pub mod report;

pub use error::ConfigError;
pub use main_file::{ActionConfig, Defaults, FormatConfig, MainConfig};

use crate::decide::Policy;
use crate::detect::jail::ReadFrom;
use crate::detect::{FilterConfig, JailConfig, JailSpec, TargetKind};
use crate::parse::FormatSpec;
use crate::parse::addr::NetSet;
use crate::parse::wrap::Wrap;
use error::suggest;
use layers::Layers;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One config file's name and text.
#[derive(Debug, Clone)]
pub struct SourceFile {
    pub name: String,
    pub text: String,
}

/// The files making up a config.
#[derive(Debug, Clone)]
pub struct ConfigFiles {
    pub main: SourceFile,
    /// `portcullis.local.toml`: keys laid over the main file's.
    pub main_local: Option<SourceFile>,
    /// `jails.d/*.toml` by name, then `jails.d/*.local.toml` by name.
    pub jails: Vec<SourceFile>,
    pub filters: Vec<SourceFile>,
    /// Files in `jails.d/` or `filters.d/` that are not read (a pasted
    /// `jail.local`, a `.dpkg-dist`), for `check` to warn about.
    pub ignored: Vec<PathBuf>,
}

impl ConfigFiles {
    /// Reads `DIR/portcullis.toml` (then `portcullis.local.toml`),
    /// `DIR/jails.d/*.toml` and `DIR/filters.d/*.toml`, each directory's
    /// `*.local.toml` files last.
    pub fn read_dir(dir: &Path) -> Result<ConfigFiles, ConfigError> {
        let main_path = dir.join("portcullis.toml");
        let main = read_file(&main_path)?;
        let local_path = dir.join("portcullis.local.toml");
        // A dangling link is an error, not silently no overrides.
        let main_local = if local_path.symlink_metadata().is_ok() {
            Some(read_file(&local_path)?)
        } else {
            None
        };
        let mut ignored = Vec::new();
        let mut list = |sub: &str| -> Result<Vec<SourceFile>, ConfigError> {
            let d = dir.join(sub);
            let Ok(rd) = std::fs::read_dir(&d) else {
                return Ok(Vec::new());
            };
            // Hidden files (an editor's `.#auth.toml` lock, a `.swp`) and
            // anything that is not a readable file are not config: a
            // dangling lock link must not stop the daemon from starting.
            let (mut paths, other): (Vec<PathBuf>, Vec<PathBuf>) = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .partition(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file());
            ignored.extend(other);
            paths.sort_by_key(|p| (layers::is_local(&p.to_string_lossy()), p.clone()));
            paths.iter().map(|p| read_file(p)).collect()
        };
        let jails = list("jails.d")?;
        let filters = list("filters.d")?;
        ignored.sort();
        Ok(ConfigFiles {
            main,
            main_local,
            jails,
            filters,
            ignored,
        })
    }
}

fn read_file(path: &Path) -> Result<SourceFile, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.display().to_string(),
        line: 0,
        col: 0,
        message: format!("cannot read: {e}"),
    })?;
    Ok(SourceFile {
        name: path.display().to_string(),
        text,
    })
}

/// A jail with everything needed to run it.
#[derive(Debug, Clone)]
pub struct JailEntry {
    pub spec: JailSpec,
    pub enabled: bool,
    pub format: String,
    pub wrap: Wrap,
    pub logpath: Vec<String>,
    /// A syslog socket, and the tag its lines must carry (`None`: all).
    pub syslog: Option<(crate::watch::syslog::Listen, Option<String>)>,
    /// Entries of the systemd journal.
    pub journal: Option<crate::watch::journal::JournalSpec>,
    pub policy: Policy,
    pub actions: Vec<String>,
    pub read_from: ReadFrom,
    /// What the `firewall` action drops of a banned address.
    pub ports: crate::act::firewall::PortScope,
    /// An enriched field the jail reads (`country`, `asn`, ...): its events
    /// go through the enrich stage.
    pub geo_field: Option<String>,
    /// The `[geoip]` key (`country_db`, `asn_db`) of a database the jail
    /// needs and the config does not name. Such a jail is off (`enabled` is
    /// false) until it does, so the bundled region jail waits for a database
    /// instead of failing the config; `check` lists it.
    pub geo_missing: Option<&'static str>,
}

/// Longest line read by default. A stock nginx accepts a request line and
/// header fields of up to 8 KiB each, 32 KiB of them in all
/// (`large_client_header_buffers 4 8k`), and writes every byte outside
/// printable ASCII as 4 (`\xHH`): an access line can reach about 160 KiB.
/// Anything shorter than that would let a client hide its own failures
/// behind long, high-byte headers (a too-long line is counted, not parsed).
pub const DEFAULT_MAX_LINE: usize = 256 * 1024;

/// A validated config.
#[derive(Debug, Clone)]
pub struct Config {
    pub main: MainConfig,
    pub formats: BTreeMap<String, FormatSpec>,
    pub jails: Vec<JailEntry>,
    pub ignore: NetSet,
    pub trusted_proxies: NetSet,
    /// `ignore_file` and `trusted_proxies_file`, watched by the daemon.
    pub net_files: netfile::NetFiles,
    /// The keys of `[bouncer_api]`'s `api_key_files` (empty without it).
    pub bouncer_keys: crate::act::bouncer::Keys,
    /// `[geoip]`'s databases, loaded when first used (`check` and `replay`
    /// load them to report their problems; the daemon also watches them).
    pub geo: Option<std::sync::Arc<crate::enrich::GeoHandle>>,
    pub filter_count: usize,
}

/// What the firewall cannot express: an ipset prefix too long for its
/// set names, or two jails' port scopes whose set names collide (a 32-bit
/// hash; a collision would make one jail's bans drop the other's ports).
fn firewall_errors(main: &MainConfig, jails: &[JailEntry], main_name: &str) -> Vec<ConfigError> {
    use crate::act::firewall::{Backend, IPSET_PREFIX_MAX, PortScope};
    let Some(fw) = &main.firewall else {
        return Vec::new();
    };
    let error = |message: String| ConfigError {
        file: main_name.to_string(),
        line: 0,
        col: 0,
        message,
    };
    let mut errors = Vec::new();
    if fw.backend == Backend::Ipset
        && fw
            .table
            .as_ref()
            .is_some_and(|t| t.len() > IPSET_PREFIX_MAX)
    {
        errors.push(error(format!(
            "[firewall] table: at most {IPSET_PREFIX_MAX} characters with the ipset backend \
             (its set names are limited to 31)"
        )));
    }
    let mut seen: Vec<(&PortScope, String, &str)> = Vec::new();
    for j in jails
        .iter()
        .filter(|j| j.actions.iter().any(|a| a == "firewall"))
    {
        let suffix = j.ports.suffix();
        match seen.iter().find(|(s, x, _)| *x == suffix && *s != &j.ports) {
            Some((_, _, other)) => errors.push(error(format!(
                "jails `{other}` and `{}`: their `ports` hash to the same set name ({suffix}); \
                 add or remove a port in one of them",
                j.spec.name
            ))),
            None => seen.push((&j.ports, suffix, &j.spec.name)),
        }
    }
    errors
}

impl Config {
    /// Each jail that uses the `firewall` action, with its port scope.
    pub fn firewall_scopes(&self) -> crate::act::firewall::Scopes {
        crate::act::firewall::Scopes::new(
            self.jails
                .iter()
                .filter(|j| j.actions.iter().any(|a| a == "firewall"))
                .map(|j| (j.spec.name.clone(), j.ports.clone())),
        )
    }

    pub fn control_socket(&self) -> PathBuf {
        self.main
            .control_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/portcullis/control.sock"))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.main
            .state_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/portcullis"))
    }

    pub fn max_line_bytes(&self) -> usize {
        self.main.max_line_bytes.unwrap_or(DEFAULT_MAX_LINE)
    }

    /// Parses and validates; returns every error found.
    pub fn load(files: &ConfigFiles) -> Result<Config, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let main_files: Vec<SourceFile> = std::iter::once(files.main.clone())
            .chain(files.main_local.clone())
            .collect();
        let main_layers = Layers::new(&main_files);
        let main = read_main(&main_files, &main_layers, &mut errors);
        let formats = match &main {
            Some(m) => m.compile_formats(&main_layers, &mut errors),
            None => BTreeMap::new(),
        };
        let filter_layers = Layers::new(&files.filters);
        let filters =
            read_tables::<FilterConfig>(&files.filters, &filter_layers, "filter", &mut errors);
        let jail_layers = Layers::new(&files.jails);
        let jails = read_tables::<JailConfig>(&files.jails, &jail_layers, "jail", &mut errors);
        let Some(main) = main else { return Err(errors) };

        let mut entries = Vec::new();
        for (name, jail) in &jails {
            if let Some(entry) = resolve_jail(
                name,
                jail,
                &jail_layers,
                &main,
                &formats,
                &filters,
                &mut errors,
            ) {
                entries.push(entry);
            }
        }
        errors.extend(firewall_errors(&main, &entries, &files.main.name));
        let control = main
            .control_socket
            .clone()
            .unwrap_or_else(|| PathBuf::from("/run/portcullis/control.sock"));
        for j in &entries {
            if let Some((crate::watch::syslog::Listen::Unix(p), _)) = &j.syslog
                && *p == control
            {
                errors.push(ConfigError {
                    file: files.main.name.clone(),
                    line: 0,
                    col: 0,
                    message: format!(
                        "jail `{}`: its syslog socket {} is the control socket; choose another path",
                        crate::text::printable(&j.spec.name),
                        p.display()
                    ),
                });
            }
        }
        let paths =
            |f: &Option<de::OneOrMany<PathBuf>>| f.as_ref().map_or_else(Vec::new, |f| f.0.clone());
        let net_files = netfile::NetFiles::load(
            main.ignore.iter().map(|c| c.0).collect(),
            &paths(&main.ignore_file),
            main.trusted_proxies.iter().map(|c| c.0).collect(),
            &paths(&main.trusted_proxies_file),
        );
        if let Some(g) = &main.geoip {
            for (key, p) in [("country_db", &g.country_db), ("asn_db", &g.asn_db)] {
                if let Some(p) = p.as_ref().filter(|p| p.is_relative()) {
                    errors.push(ConfigError {
                        file: files.main.name.clone(),
                        line: 0,
                        col: 0,
                        message: format!(
                            "[geoip] {key} = \"{}\": use an absolute path (the daemon runs in /, \
                             `check` wherever it is started)",
                            p.display()
                        ),
                    });
                }
            }
        }
        let bouncer_keys = match &main.bouncer_api {
            Some(b) => crate::act::bouncer::Keys::load(&b.api_key_files).unwrap_or_else(|e| {
                errors.extend(e);
                Default::default()
            }),
            None => Default::default(),
        };
        let net_files = match net_files {
            Ok(n) => n,
            Err(e) => {
                errors.extend(e);
                return Err(errors);
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Config {
            geo: main.geoip.as_ref().map(crate::enrich::GeoHandle::new),
            ignore: net_files.ignore(),
            trusted_proxies: net_files.trusted_proxies(),
            net_files,
            bouncer_keys,
            filter_count: filters.len(),
            main,
            formats,
            jails: entries,
        })
    }

    pub fn load_dir(dir: &Path) -> Result<Config, Vec<ConfigError>> {
        let files = ConfigFiles::read_dir(dir).map_err(|e| vec![e])?;
        Config::load(&files)
    }
}

/// A named top-level table, read from its file and any `.local.toml` laid over it.
struct Table<T> {
    /// Where its name stands (a global offset, see [`Layers`]), for errors
    /// that have no better place.
    header: std::ops::Range<usize>,
    value: T,
}

/// The main file, with `portcullis.local.toml` laid over it.
fn read_main(
    files: &[SourceFile],
    layers: &Layers,
    errors: &mut Vec<ConfigError>,
) -> Option<MainConfig> {
    let mut doc: Option<Spanned<DeValue>> = None;
    for (i, file) in files.iter().enumerate() {
        let mut table = match DeTable::parse(&file.text) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError::from_toml(file, &e));
                return None;
            }
        };
        let span = table.span();
        let mut value = Spanned::new(span, DeValue::Table(std::mem::take(table.get_mut())));
        layers::shift(&mut value, layers.offset(i));
        match &mut doc {
            None => doc = Some(value),
            Some(base) => layers::merge_tables(base, value),
        }
    }
    layers::deserialize_all(doc?, layers, errors)
}

/// Reads every top-level table of every file as one `T`, by name; a table
/// in a `.local.toml` file changes the keys it sets of a table of the same
/// name, or defines a new one.
fn read_tables<'a, T: Deserialize<'a>>(
    files: &'a [SourceFile],
    layers: &Layers,
    what: &str,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Table<T>> {
    let mut raw: BTreeMap<String, (std::ops::Range<usize>, Spanned<DeValue<'a>>)> = BTreeMap::new();
    for (i, file) in files.iter().enumerate() {
        let table = match DeTable::parse(&file.text) {
            Ok(t) => t.into_inner(),
            Err(e) => {
                errors.push(ConfigError::from_toml(file, &e));
                continue;
            }
        };
        let by = layers.offset(i);
        let local = layers::is_local(&file.name);
        for (key, mut value) in table {
            let name = key.get_ref().to_string();
            let span = key.span().start + by..key.span().end + by;
            if !value.get_ref().is_table() {
                errors.push(layers.error(
                    span,
                    format!("`{name}` must be a table: write `[{name}]` followed by its options"),
                ));
                continue;
            }
            layers::shift(&mut value, by);
            match raw.get_mut(&name) {
                Some((_, base)) if local => layers::merge_tables(base, value),
                Some((header, _)) => {
                    errors.push(layers.error(
                        span,
                        format!(
                            "{what} `{name}` is already defined in {}; to change some of its \
                             keys, set them in a `.local.toml` file",
                            layers.name_at(header.start)
                        ),
                    ));
                }
                None => {
                    raw.insert(name, (span, value));
                }
            }
        }
    }
    raw.into_iter()
        .filter_map(|(name, (header, value))| {
            let value = layers::deserialize_all(value, layers, errors)?;
            Some((name, Table { header, value }))
        })
        .collect()
}

fn resolve_jail(
    name: &str,
    table: &Table<JailConfig>,
    layers: &Layers,
    main: &MainConfig,
    formats: &BTreeMap<String, FormatSpec>,
    filters: &BTreeMap<String, Table<FilterConfig>>,
    errors: &mut Vec<ConfigError>,
) -> Option<JailEntry> {
    let (jail, header) = (&table.value, table.header.clone());
    let d = &main.defaults;
    let n0 = errors.len();
    let mut err = |span: std::ops::Range<usize>, msg: String| {
        errors.push(layers.error(span, format!("jail `{name}`: {msg}")));
    };

    let filter = match filters.get(jail.filter.get_ref()) {
        Some(f) => Some(f.value.clone()),
        None => {
            let hint = suggest(jail.filter.get_ref(), filters.keys().map(String::as_str));
            err(
                jail.filter.span(),
                format!("unknown filter `{}`{hint}", jail.filter.get_ref()),
            );
            None
        }
    };

    let (format_name, format_span) = match &jail.format {
        Some(f) => (f.get_ref().clone(), f.span()),
        None => (
            d.format.clone().unwrap_or_else(|| "combined".into()),
            header.clone(),
        ),
    };
    let format = formats
        .get(&format_name)
        .cloned()
        .or_else(|| FormatSpec::builtin(&format_name));
    if format.is_none() {
        let names = formats
            .keys()
            .map(String::as_str)
            .chain(crate::parse::BUILTIN_FORMATS);
        let hint = suggest(&format_name, names);
        err(
            format_span.clone(),
            format!("unknown format `{format_name}`{hint}"),
        );
    }

    if format.as_ref().is_some_and(FormatSpec::lacks_peer) && !main.forwarded_for_has_peer {
        err(
            format_span.clone(),
            format!(
                "format `{format_name}` has no peer address, so the client would be read from \
                 X-Forwarded-For, which the client writes. Its right-most hop is the peer only if \
                 the proxy appends it (Envoy `use_remote_address: true`); if yours does, set \
                 `forwarded_for_has_peer = true` in portcullis.toml, else log \
                 %DOWNSTREAM_REMOTE_ADDRESS% in a custom format"
            ),
        );
    }

    let key_span = jail.key.as_ref().map_or(header.clone(), |k| k.span());
    let key: Vec<String> = jail
        .key
        .as_ref()
        .map_or_else(|| vec!["client".into()], |k| k.get_ref().0.clone());
    if key.is_empty() || key.len() > 2 {
        err(
            key_span.clone(),
            "`key` takes one or two field names".into(),
        );
    }

    // Fields the jail reads must exist in its format.
    let mut geo_field: Option<String> = None;
    let mut geo_missing: Option<&'static str> = None;
    if let (Some(fmt), Some(filter)) = (&format, &filter) {
        let have = fmt.field_names();
        let mut reads: Vec<(&str, std::ops::Range<usize>)> = filter
            .field_names()
            .into_iter()
            .map(|f| (f, jail.filter.span()))
            .collect();
        reads.extend(key.iter().map(|k| (k.as_str(), key_span.clone())));
        if let Some(dist) = &jail.distinct {
            reads.push((dist.get_ref(), dist.span()));
        }
        for (field, span) in reads {
            if let Some(role) = crate::enrich::geo::role_of(field) {
                // Provided by the enrich stage, whatever the format.
                geo_field.get_or_insert_with(|| field.to_string());
                if !main.geoip.as_ref().is_some_and(|g| g.names(role)) {
                    geo_missing.get_or_insert(role.key());
                }
                continue;
            }
            if !have.iter().any(|h| h == field) {
                let hint = suggest(field, have.iter().map(String::as_str));
                err(
                    span,
                    format!(
                        "reads field `{field}`, which format `{format_name}` does not provide{hint} (it has: {})",
                        have.join(", ")
                    ),
                );
            }
        }
    }

    match jail.target {
        TargetKind::Address if !key.iter().any(|k| k == "client") => err(
            key_span.clone(),
            "`target = \"address\"` needs `client` in `key`; use `target = \"key\"` to revoke keys"
                .into(),
        ),
        TargetKind::Key if !key.iter().any(|k| k != "client") => err(
            key_span.clone(),
            "`target = \"key\"` needs a non-address field in `key`, e.g. `key = \"api_key\"`"
                .into(),
        ),
        _ => {}
    }

    let v4 = jail.ipv4_prefix.or(d.ipv4_prefix).unwrap_or(32);
    let v6 = jail.ipv6_prefix.or(d.ipv6_prefix).unwrap_or(64);
    let (min4, min6) = (crate::decide::MIN_V4_PREFIX, crate::decide::MIN_V6_PREFIX);
    if !(min4..=32).contains(&v4) || !(min6..=128).contains(&v6) {
        err(
            header.clone(),
            format!(
                "prefix lengths out of range (ipv4_prefix {v4} in {min4}..=32, ipv6_prefix {v6} in {min6}..=128)"
            ),
        );
    }
    let maxretry = jail.maxretry.or(d.maxretry).unwrap_or(5);
    if maxretry == 0 {
        err(header.clone(), "`maxretry` must be at least 1".into());
    }
    let findtime = jail.findtime.or(d.findtime).map_or(600, |f| f.0.as_secs());
    if findtime == 0 {
        err(header.clone(), "`findtime` must be at least 1s".into());
    }
    let factor = jail.bantime_factor.or(d.bantime_factor).unwrap_or(1.0);
    if !(1.0..=1000.0).contains(&factor) {
        err(
            header.clone(),
            format!("`bantime_factor` {factor} must be between 1 and 1000"),
        );
    }
    let actions: Vec<String> = match &jail.action {
        Some(list) => {
            for a in &list.0 {
                let builtin = a.get_ref() == "log"
                    || (a.get_ref() == "firewall" && main.firewall.is_some())
                    || (a.get_ref() == "bouncer_api" && main.bouncer_api.is_some());
                if !builtin && !main.actions.contains_key(a.get_ref()) {
                    if a.get_ref() == "firewall" || a.get_ref() == "bouncer_api" {
                        err(
                            a.span(),
                            format!(
                                "action `{0}` needs a `[{0}]` section in portcullis.toml",
                                a.get_ref()
                            ),
                        );
                        continue;
                    }
                    let names = main.actions.keys().map(String::as_str).chain([
                        "log",
                        "firewall",
                        "bouncer_api",
                    ]);
                    let hint = suggest(a.get_ref(), names);
                    err(a.span(), format!("unknown action `{}`{hint}", a.get_ref()));
                }
            }
            list.0.iter().map(|a| a.get_ref().clone()).collect()
        }
        None => d
            .action
            .as_ref()
            .map_or_else(|| vec!["log".to_string()], |a| a.0.clone()),
    };
    // A key target revokes an API key: with only enriched fields in `key`
    // (`key = "asn"`) the value is a network or a country, which an action
    // that revokes keys would revoke as if it were one (a numeric key id
    // could be a customer's). Such jails may only alert.
    if jail.target == TargetKind::Key
        && !key
            .iter()
            .any(|k| k != "client" && crate::enrich::geo::role_of(k).is_none())
        && key.iter().any(|k| crate::enrich::geo::role_of(k).is_some())
    {
        let alerting =
            |a: &String| a == "log" || matches!(main.actions.get(a), Some(ActionConfig::Email(_)));
        if let Some(a) = actions.iter().find(|a| !alerting(a)) {
            err(
                key_span.clone(),
                format!(
                    "`key` has no API key field, only {}: its decisions name a network or \
                     country, which action `{a}` would revoke as an API key; use alerting \
                     actions only (`log`, email), or add the key field (`key = [\"api_key\", ...]`)",
                    key.join(", ")
                ),
            );
        }
    }
    let syslog = match &jail.syslog {
        Some(s) => match s.get_ref().parse::<crate::watch::syslog::Listen>() {
            Ok(l) => Some((l, jail.syslog_tag.clone())),
            Err(e) => {
                err(s.span(), e);
                None
            }
        },
        None => {
            if jail.syslog_tag.is_some() {
                err(header.clone(), "`syslog_tag` needs `syslog`".into());
            }
            None
        }
    };
    let journal = match &jail.journal {
        Some(j) => match j.get_ref().check() {
            Ok(()) => Some(j.get_ref().clone()),
            Err(e) => {
                err(j.span(), e);
                None
            }
        },
        None => None,
    };
    let ports = match (&jail.ports, &jail.protocol) {
        (Some(p), proto) => {
            let protocol = proto
                .as_ref()
                .map_or_else(Default::default, |p| *p.get_ref());
            if !actions.iter().any(|a| a == "firewall") {
                err(
                    p.span(),
                    "`ports` scopes the `firewall` action, which this jail does not use".into(),
                );
            }
            match crate::act::firewall::PortScope::parse(p.get_ref(), protocol) {
                Ok(scope) => scope,
                Err(e) => {
                    err(p.span(), e);
                    Default::default()
                }
            }
        }
        (None, Some(p)) => {
            err(p.span(), "`protocol` needs `ports`".into());
            Default::default()
        }
        (None, None) => Default::default(),
    };
    if jail.scope == crate::detect::jail::Scope::Fleet && main.fleet.is_none() {
        err(
            header.clone(),
            "`scope = \"fleet\"` needs a `[fleet]` section in portcullis.toml".into(),
        );
    }
    let bantime = jail
        .bantime
        .or(d.bantime)
        .map_or(std::time::Duration::from_secs(3600), |b| b.0);
    if errors.len() > n0 {
        return None;
    }
    Some(JailEntry {
        spec: JailSpec {
            name: name.to_string(),
            filter: filter?,
            key,
            ipv4_prefix: v4,
            ipv6_prefix: v6,
            maxretry,
            findtime: std::time::Duration::from_secs(findtime),
            bantime,
            distinct: jail.distinct.as_ref().map(|s| s.get_ref().clone()),
            target: jail.target,
            severity: jail.severity,
            max_tracked: jail.max_tracked.or(d.max_tracked).unwrap_or(200_000),
            fleet: jail.scope == crate::detect::jail::Scope::Fleet,
        },
        enabled: jail.enabled && geo_missing.is_none(),
        geo_field,
        geo_missing,
        format: format_name,
        wrap: jail.wrap,
        logpath: jail
            .logpath
            .as_ref()
            .map(|l| l.0.clone())
            .unwrap_or_default(),
        syslog,
        journal,
        policy: Policy {
            bantime,
            factor,
            max: jail.bantime_max.or(d.bantime_max).map(|m| m.0),
            dry_run: main.dry_run || jail.dry_run.unwrap_or(false),
        },
        actions,
        read_from: jail.read_from.unwrap_or_default(),
        ports,
    })
}

#[cfg(test)]
mod tests;
