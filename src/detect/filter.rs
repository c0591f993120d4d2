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
    /// `status`, and a `not` of statuses alone, as one set.
    gate: Option<StatusGate>,
    methods: Vec<String>,
    /// Anchored: a match must start at the path's first byte.
    path_prefixes: Option<aho_corasick::AhoCorasick>,
    path_regex: Option<regex::Regex>,
    ua_regex: Option<regex::Regex>,
    /// Upper-cased, as the enrich stage writes them.
    countries: Vec<String>,
    regions: Vec<String>,
    asns: Vec<u32>,
    /// Fields with a `present` condition and no other, checked inline
    /// (api-request's `api_key`, on every line that passes the gate).
    presence: Vec<(FieldRef, bool)>,
    /// The other field conditions.
    fields: Vec<(FieldRef, Vec<FieldTest>)>,
    not: Option<Box<Filter>>,
    /// Whether any condition is left beside the gate (else it decides).
    rest: bool,
}

/// The status conditions of a filter as one set of codes: its `status`,
/// minus those of a `not` that holds a status and nothing else (the usual
/// `not = { status = [401, 403, 429] }`). Checked first and inline, since
/// most lines fail most jails on their status alone; folding the `not` in
/// spares the nested filter's call on every line that passes.
#[derive(Debug)]
struct StatusGate {
    /// The codes below 640 that pass.
    pass: StatusSet,
    /// Whether an event without a status, or with one of 640 or more
    /// (three digits are accepted), passes: when the filter has no `status`
    /// of its own (no `not` of statuses holds for such an event).
    other: bool,
}

impl StatusGate {
    fn of(status: Option<&StatusSet>, not: Option<&StatusSet>) -> Option<StatusGate> {
        if status.is_none() && not.is_none() {
            return None;
        }
        let pass = status.cloned().unwrap_or_else(StatusSet::every);
        Some(StatusGate {
            pass: not.map_or_else(|| pass.clone(), |n| pass.without(n)),
            other: status.is_none(),
        })
    }

    #[inline]
    fn admits(&self, status: Option<u16>) -> bool {
        match status {
            Some(c) if c < 640 => self.pass.contains(c),
            _ => self.other,
        }
    }
}

impl FilterConfig {
    /// Whether the filter holds a status condition and nothing else.
    fn status_only(&self) -> bool {
        let FilterConfig {
            description: _,
            status,
            method,
            path_prefix,
            path_regex,
            user_agent_regex,
            country,
            region,
            asn,
            field,
            not,
        } = self;
        status.is_some()
            && method.is_none()
            && path_prefix.is_none()
            && path_regex.is_none()
            && user_agent_regex.is_none()
            && country.is_none()
            && region.is_none()
            && asn.is_none()
            && field.is_empty()
            && not.is_none()
    }
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
        // A field with a `present` condition alone is checked apart (see
        // `Filter::presence`); any other keeps its tests in order.
        let mut presence = Vec::new();
        let mut fields = Vec::new();
        for c in &cfg.field {
            let field = wanted.field(&c.name);
            if let (None, None, Some(want)) = (&c.equals, &c.regex, c.present) {
                presence.push((field, want));
                continue;
            }
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
            fields.push((field, tests));
        }
        // A `not` of statuses alone joins the gate; any other is kept whole.
        let (not_status, not) = match cfg.not.as_deref() {
            Some(n) if n.status_only() => {
                wanted.add_std(StdField::Status);
                (n.status.as_ref(), None)
            }
            Some(n) => (None, Some(Box::new(Filter::compile(n, wanted)))),
            None => (None, None),
        };
        let path_prefixes = cfg.path_prefix.as_ref().map(|p| {
            aho_corasick::AhoCorasick::builder()
                .start_kind(aho_corasick::StartKind::Anchored)
                .build(&p.0)
                .expect("a few path prefixes make an automaton")
        });
        let mut f = Filter {
            gate: StatusGate::of(cfg.status.as_ref(), not_status),
            methods: cfg.method.as_ref().map(|m| m.0.clone()).unwrap_or_default(),
            path_prefixes,
            path_regex: cfg.path_regex.as_ref().map(|r| r.0.clone()),
            ua_regex: cfg.user_agent_regex.as_ref().map(|r| r.0.clone()),
            countries: upper(&cfg.country),
            regions: upper(&cfg.region),
            asns: cfg.asn.as_ref().map(|a| a.0.clone()).unwrap_or_default(),
            presence,
            fields,
            not,
            rest: true,
        };
        f.rest = !f.methods.is_empty()
            || f.path_prefixes.is_some()
            || f.path_regex.is_some()
            || f.ua_regex.is_some()
            || !f.countries.is_empty()
            || !f.regions.is_empty()
            || !f.asns.is_empty()
            || !f.fields.is_empty()
            || f.not.is_some();
        f
    }

    /// Whether the event is one this filter counts. `scratch` formats typed fields.
    pub fn matches(&self, ev: &Event, scratch: &mut String) -> bool {
        !self.rejects_status(ev) && self.matches_past_status(ev, scratch)
    }

    /// Whether the status alone rules the event out: the first check of
    /// [`Filter::matches`], which the detect stage makes inline itself,
    /// since most lines fail most jails' status (a 200 is no 401, 404 or
    /// 5xx) and a call cost more than the check.
    #[inline]
    pub fn rejects_status(&self, ev: &Event) -> bool {
        self.gate.as_ref().is_some_and(|g| !g.admits(ev.status))
    }

    /// The rest of [`Filter::matches`], for an event the status gate let
    /// through.
    pub fn matches_past_status(&self, ev: &Event, scratch: &mut String) -> bool {
        self.presence
            .iter()
            .all(|(field, want)| ev.has(field, scratch) == *want)
            && (!self.rest || self.matches_rest(ev, scratch))
    }

    /// The conditions beside the status gate and the presence of fields.
    fn matches_rest(&self, ev: &Event, scratch: &mut String) -> bool {
        if !self.methods.is_empty() {
            let Some(m) = ev.method() else { return false };
            if !self.methods.iter().any(|x| x.eq_ignore_ascii_case(m)) {
                return false;
            }
        }
        if self.path_prefixes.is_some() || self.path_regex.is_some() {
            let Some(p) = ev.path() else { return false };
            if let Some(ac) = &self.path_prefixes {
                let input = aho_corasick::Input::new(p).anchored(aho_corasick::Anchored::Yes);
                if !ac.is_match(input) {
                    return false;
                }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(toml_text: &str) -> (Filter, Wanted) {
        let cfg: FilterConfig = toml::from_str(toml_text).unwrap();
        let mut wanted = Wanted::default();
        let f = Filter::compile(&cfg, &mut wanted);
        (f, wanted)
    }

    /// What the filter means, read off its config: `status` holds, and the
    /// `not` does not.
    fn reference(cfg: &FilterConfig, status: Option<u16>, path: Option<&str>, key: bool) -> bool {
        let status_ok = cfg
            .status
            .as_ref()
            .is_none_or(|s| status.is_some_and(|c| s.contains(c)));
        let path_ok = cfg.path_prefix.as_ref().is_none_or(|list| {
            path.is_some_and(|p| list.0.iter().any(|x| p.starts_with(x.as_str())))
        });
        // `api_key` present or not, as the test sets it.
        let fields_ok = cfg.field.iter().all(|c| {
            assert_eq!(c.name, "api_key");
            c.present.is_none_or(|want| want == key) && c.equals.as_ref().is_none_or(|_| key)
        });
        let not = cfg
            .not
            .as_deref()
            .is_some_and(|n| reference(n, status, path, key));
        status_ok && path_ok && fields_ok && !not
    }

    /// The status gate (a `not` of statuses folded into the filter's own)
    /// and the anchored path prefixes decide as the config reads, for
    /// codes with and without a set bit, past the set's 640 codes, and
    /// for events without a status or path.
    #[test]
    fn folded_status_gate_and_prefixes_decide_as_written() {
        let configs = [
            "status = [401, 403]",
            "not = { status = [401, 403, 429] }",
            "status = \"4xx\"\nnot = { status = 404 }",
            "status = \"500-599\"\nnot = { status = 503 }",
            "not = { status = 404, path_prefix = \"/health\" }",
            "status = [403, 404]\npath_prefix = [\"/.env\", \"/.git\", \"/wp-admin\", \"/\"]",
            "path_prefix = [\"/.env\", \"/.git\", \"\"]",
            "path_prefix = [\"/admin\", \"/.git/\"]\nnot = { status = [200, 0] }",
            "field = [{ name = \"api_key\", present = true }]\nnot = { status = [401, 403, 429] }",
            "field = [{ name = \"api_key\", present = false }]\nstatus = \"4xx\"",
            "not = { field = [{ name = \"api_key\", present = true }] }",
            "field = [{ name = \"api_key\", present = true, equals = \"k\" }]",
            "field = [{ name = \"api_key\" }]\npath_prefix = \"/a\"",
        ];
        let statuses = [
            None,
            Some(0),
            Some(200),
            Some(401),
            Some(403),
            Some(404),
            Some(429),
            Some(503),
            Some(599),
            Some(639),
            Some(640),
            Some(999),
        ];
        let paths = [
            None,
            Some(""),
            Some("/"),
            Some("/.env"),
            Some("/.environment"),
            Some("/x/.env"),
            Some("/.gi"),
            Some("/.git/config"),
            Some("/admin"),
            Some("/health"),
            Some("/healthz"),
        ];
        for text in configs {
            let cfg: FilterConfig = toml::from_str(text).unwrap();
            let (f, wanted) = filter(text);
            let mut ev = Event::new(&wanted);
            let mut scratch = String::new();
            for status in statuses {
                for path in paths {
                    for key in [false, true] {
                        ev.clear();
                        ev.status = status;
                        if let Some(p) = path {
                            ev.set_text(StdField::Path, p);
                        }
                        if key {
                            ev.set_text(StdField::ApiKey, "k");
                        }
                        assert_eq!(
                            f.matches(&ev, &mut scratch),
                            reference(&cfg, status, path, key),
                            "{text:?} status {status:?} path {path:?} key {key}"
                        );
                    }
                }
            }
        }
    }

    /// A `not` of statuses alone leaves nothing to call beside the gate; a
    /// `not` with more is kept whole.
    #[test]
    fn a_not_of_statuses_alone_is_folded() {
        let (f, _) = filter("not = { status = [401, 403, 429] }");
        assert!(f.not.is_none() && !f.rest && f.gate.is_some());
        let (f, _) = filter("not = { status = 404, path_prefix = \"/health\" }");
        assert!(f.not.is_some() && f.rest && f.gate.is_none());
    }
}
