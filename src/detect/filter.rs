//! Filters: which events a jail counts. Configured in `filters.d/*.toml`.
//!
//! Every condition given must hold; a list means any of its entries. Checks
//! run cheapest first (status bitset, method, path prefixes) so regexes only
//! see the few events that got that far.
//!
//! ```toml
//! [auth-failure]
//! description = "Rejected credentials"
//! status = [401, 403]
//! not = { path_prefix = ["/healthz"] }
//! ```

use crate::config::de::{OneOrMany, RegexConfig, StatusSet};
use crate::parse::{Event, FieldRef, StdField, Wanted};
use serde::Deserialize;

/// A filter as written in config.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    /// Free text, shown by `portcullis check`.
    pub description: Option<String>,
    /// Status codes: `404`, `"500-599"`, `"4xx"`.
    pub status: Option<StatusSet>,
    /// Methods, compared case-insensitively.
    pub method: Option<OneOrMany<String>>,
    /// Path prefixes (the path as logged, with its query string).
    pub path_prefix: Option<OneOrMany<String>>,
    pub path_regex: Option<RegexConfig>,
    pub user_agent_regex: Option<RegexConfig>,
    /// Client countries (ISO 3166-1 codes, `[geoip]`), compared case-insensitively.
    pub country: Option<OneOrMany<String>>,
    /// Client regions (`US-CA`, or a country where the database has no
    /// subdivision), compared case-insensitively.
    pub region: Option<OneOrMany<String>>,
    /// Autonomous system numbers of the client's network.
    pub asn: Option<OneOrMany<u32>>,
    /// Conditions on any field, by name: `[[name.field]]` tables.
    #[serde(default)]
    pub field: Vec<FieldCondition>,
    /// Matches when this nested filter does not.
    pub not: Option<Box<FilterConfig>>,
}

/// A condition on any named field.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldCondition {
    pub name: String,
    pub equals: Option<OneOrMany<String>>,
    pub regex: Option<RegexConfig>,
    /// With `present = false`, matches when the field is absent.
    pub present: Option<bool>,
}

impl FilterConfig {
    /// Every field name the filter reads, for validation against a format.
    pub fn field_names(&self) -> Vec<&str> {
        let mut v = Vec::new();
        if self.status.is_some() {
            v.push("status");
        }
        if self.method.is_some() {
            v.push("method");
        }
        if self.path_prefix.is_some() || self.path_regex.is_some() {
            v.push("path");
        }
        if self.user_agent_regex.is_some() {
            v.push("user_agent");
        }
        if self.country.is_some() {
            v.push("country");
        }
        if self.region.is_some() {
            v.push("region");
        }
        if self.asn.is_some() {
            v.push("asn");
        }
        v.extend(self.field.iter().map(|c| c.name.as_str()));
        if let Some(n) = &self.not {
            v.extend(n.field_names());
        }
        v
    }
}

#[derive(Debug)]
enum FieldTest {
    Equals(Vec<String>),
    Regex(regex::Regex),
    Present(bool),
}

/// A compiled filter.
#[derive(Debug)]
pub struct Filter {
    status: Option<StatusSet>,
    methods: Vec<String>,
    path_prefixes: Vec<String>,
    path_regex: Option<regex::Regex>,
    ua_regex: Option<regex::Regex>,
    /// Upper-cased, as the enrich stage writes them.
    countries: Vec<String>,
    regions: Vec<String>,
    asns: Vec<u32>,
    fields: Vec<(FieldRef, Vec<FieldTest>)>,
    not: Option<Box<Filter>>,
}

impl Filter {
    pub fn compile(cfg: &FilterConfig, wanted: &mut Wanted) -> Filter {
        if cfg.status.is_some() {
            wanted.add_std(StdField::Status);
        }
        if cfg.method.is_some() {
            wanted.add_std(StdField::Method);
        }
        if cfg.path_prefix.is_some() || cfg.path_regex.is_some() {
            wanted.add_std(StdField::Path);
        }
        if cfg.user_agent_regex.is_some() {
            wanted.add_std(StdField::UserAgent);
        }
        for (set, f) in [
            (cfg.country.is_some(), StdField::Country),
            (cfg.region.is_some(), StdField::Region),
            (cfg.asn.is_some(), StdField::Asn),
        ] {
            if set {
                wanted.add_std(f);
            }
        }
        let upper = |l: &Option<OneOrMany<String>>| {
            l.as_ref().map_or_else(Vec::new, |l| {
                l.0.iter().map(|c| c.trim().to_uppercase()).collect()
            })
        };
        let fields = cfg
            .field
            .iter()
            .map(|c| {
                let mut tests = Vec::new();
                if let Some(eq) = &c.equals {
                    tests.push(FieldTest::Equals(eq.0.clone()));
                }
                if let Some(re) = &c.regex {
                    tests.push(FieldTest::Regex(re.0.clone()));
                }
                if let Some(p) = c.present {
                    tests.push(FieldTest::Present(p));
                }
                (wanted.field(&c.name), tests)
            })
            .collect();
        Filter {
            status: cfg.status.clone(),
            methods: cfg.method.as_ref().map(|m| m.0.clone()).unwrap_or_default(),
            path_prefixes: cfg
                .path_prefix
                .as_ref()
                .map(|p| p.0.clone())
                .unwrap_or_default(),
            path_regex: cfg.path_regex.as_ref().map(|r| r.0.clone()),
            ua_regex: cfg.user_agent_regex.as_ref().map(|r| r.0.clone()),
            countries: upper(&cfg.country),
            regions: upper(&cfg.region),
            asns: cfg.asn.as_ref().map(|a| a.0.clone()).unwrap_or_default(),
            fields,
            not: cfg
                .not
                .as_ref()
                .map(|n| Box::new(Filter::compile(n, wanted))),
        }
    }

    /// Whether the status alone rules the event out: the first check of
    /// [`Filter::matches`], made inline by the caller first, since most
    /// lines fail most jails' status (a 200 is no 401, 404 or 5xx) and the
    /// call itself cost more than the check.
    #[inline]
    pub fn rejects_status(&self, ev: &Event) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| !ev.status.is_some_and(|code| s.contains(code)))
    }

    /// Whether the event is one this filter counts. `scratch` formats typed fields.
    pub fn matches(&self, ev: &Event, scratch: &mut String) -> bool {
        if let Some(s) = &self.status
            && !ev.status.is_some_and(|code| s.contains(code))
        {
            return false;
        }
        if !self.methods.is_empty() {
            let Some(m) = ev.method() else { return false };
            if !self.methods.iter().any(|x| x.eq_ignore_ascii_case(m)) {
                return false;
            }
        }
        if !self.path_prefixes.is_empty() || self.path_regex.is_some() {
            let Some(p) = ev.path() else { return false };
            if !self.path_prefixes.is_empty()
                && !self.path_prefixes.iter().any(|x| p.starts_with(x.as_str()))
            {
                return false;
            }
            if self.path_regex.as_ref().is_some_and(|re| !re.is_match(p)) {
                return false;
            }
        }
        if let Some(re) = &self.ua_regex
            && !ev.user_agent().is_some_and(|ua| re.is_match(ua))
        {
            return false;
        }
        // An address the databases know nothing of (a private one) has no
        // country: it matches no list, and so matches a `not` of one.
        if !self.countries.is_empty() || !self.regions.is_empty() || !self.asns.is_empty() {
            let geo = ev.geo.as_deref();
            let within = |list: &[String], v: Option<&str>| {
                list.is_empty() || v.is_some_and(|v| list.iter().any(|x| x == v))
            };
            if !within(&self.countries, geo.and_then(|g| g.country.as_deref()))
                || !within(&self.regions, geo.and_then(|g| g.region.as_deref()))
            {
                return false;
            }
            if !self.asns.is_empty()
                && !geo
                    .and_then(|g| g.asn)
                    .is_some_and(|n| self.asns.contains(&n))
            {
                return false;
            }
        }
        for (field, tests) in &self.fields {
            let value = ev.value(field, scratch);
            let ok = tests.iter().all(|t| match (t, value) {
                (FieldTest::Present(want), v) => v.is_some() == *want,
                (_, None) => false,
                (FieldTest::Equals(list), Some(v)) => list.iter().any(|x| x == v),
                (FieldTest::Regex(re), Some(v)) => re.is_match(v),
            });
            if !ok {
                return false;
            }
        }
        !self.not.as_ref().is_some_and(|n| n.matches(ev, scratch))
    }
}
