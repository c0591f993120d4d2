//! Port- and protocol-scoped bans: what traffic of a banned address a jail
//! drops.
//!
//! By default a ban drops everything from the address. A jail with
//! `ports = ["http", "https"]` drops only TCP to those ports (fail2ban's
//! `port = http,https` with `iptables-multiport`): a false positive on an
//! administrator's address costs them the API, not SSH or monitoring.
//!
//! Each distinct scope has its own group of four sets, named after a hash of
//! the scope so the name is stable across restarts and short enough for
//! ipset's 31-character limit; an address banned by two jails of different
//! scopes is an element in both groups.

use serde::Deserialize;
use std::fmt::Write as _;

/// A port as written in a jail: a number, a service name, or a range
/// `"8000-8099"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PortSpec {
    Number(i64),
    Name(String),
}

/// `protocol` of a jail with `ports`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// The traffic a ban drops: all of it, or `protocol` to some port ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortScope {
    /// Sorted, merged, inclusive; empty: every port of every protocol.
    ranges: Vec<(u16, u16)>,
    protocol: Protocol,
}

/// Service names every API host means, for hosts without `/etc/services`
/// (minimal containers have no netbase).
const WELL_KNOWN: &[(&str, u16)] = &[
    ("ssh", 22),
    ("smtp", 25),
    ("domain", 53),
    ("http", 80),
    ("www", 80),
    ("https", 443),
    ("submission", 587),
    ("imaps", 993),
    ("http-alt", 8080),
    ("webcache", 8080),
];

fn service(name: &str, protocol: Protocol) -> Option<u16> {
    if let Ok(services) = std::fs::read_to_string("/etc/services") {
        for line in services.lines() {
            let line = line.split('#').next().unwrap_or("");
            let mut w = line.split_whitespace();
            let (Some(canonical), Some(port)) = (w.next(), w.next()) else {
                continue;
            };
            let Some((num, proto)) = port.split_once('/') else {
                continue;
            };
            if proto == protocol.name() && (canonical == name || w.any(|alias| alias == name)) {
                return num.parse().ok();
            }
        }
    }
    WELL_KNOWN.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

impl PortScope {
    /// Every port: the ban drops all traffic.
    pub fn all() -> PortScope {
        PortScope::default()
    }

    pub fn is_all(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Reads a jail's `ports` and `protocol`: numbers 1-65535, service names
    /// (`/etc/services`, then a few built in), ranges `"a-b"` or `"a:b"`.
    pub fn parse(ports: &[PortSpec], protocol: Protocol) -> Result<PortScope, String> {
        if ports.is_empty() {
            return Err("`ports` is empty: leave it out to ban every port".into());
        }
        let port = |text: &str| -> Result<u16, String> {
            let text = text.trim();
            match text.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
                Ok(n) => Err(format!("port {n} is out of range (1-65535)")),
                Err(_) => service(text, protocol).ok_or_else(|| {
                    format!(
                        "`{}` is not a port number or a known {} service name",
                        crate::text::printable(text),
                        protocol.name()
                    )
                }),
            }
        };
        let mut ranges = Vec::with_capacity(ports.len());
        for p in ports {
            let (lo, hi) = match p {
                PortSpec::Number(n) => {
                    let n = u16::try_from(*n)
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| format!("port {n} is out of range (1-65535)"))?;
                    (n, n)
                }
                // A whole name first: `http-alt` is a service, not a range.
                PortSpec::Name(s) => match (port(s), s.split_once(['-', ':'])) {
                    (Ok(n), _) => (n, n),
                    (Err(_), Some((a, b))) if !a.trim().is_empty() => (port(a)?, port(b)?),
                    (Err(e), _) => return Err(e),
                },
            };
            if lo > hi {
                return Err(format!("port range {lo}-{hi} is backwards"));
            }
            ranges.push((lo, hi));
        }
        ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
        for (lo, hi) in ranges {
            match merged.last_mut() {
                Some(last) if lo as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Ok(PortScope {
            ranges: merged,
            protocol,
        })
    }

    /// The suffix of this scope's set names: empty for all traffic (the
    /// sets keep the names they always had), else `_p` and 8 hex digits of
    /// a hash that does not change between builds.
    pub fn suffix(&self) -> String {
        if self.is_all() {
            return String::new();
        }
        // FNV-1a over the canonical text: stable, unlike std's hasher.
        let mut h: u32 = 0x811c_9dc5;
        for b in self.to_string().bytes() {
            h = (h ^ b as u32).wrapping_mul(0x0100_0193);
        }
        format!("_p{h:08x}")
    }

    /// The nft match after the address lookup: `tcp dport { 80, 443 }`.
    pub fn nft_match(&self) -> String {
        if self.is_all() {
            return String::new();
        }
        format!(
            " {} dport {{ {} }}",
            self.protocol.name(),
            self.join(", ", '-')
        )
    }

    /// The ranges as text: `80, 443, 8000-8099` with `", "` and `'-'`.
    fn join(&self, sep: &str, dash: char) -> String {
        let mut s = String::new();
        for (i, (lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                s.push_str(sep);
            }
            if lo == hi {
                let _ = write!(s, "{lo}");
            } else {
                let _ = write!(s, "{lo}{dash}{hi}");
            }
        }
        s
    }

    /// iptables arguments matching the scope, one list per rule: multiport
    /// takes at most 15 ports (a range counts two), so a long list is split.
    pub fn iptables_matches(&self) -> Vec<Vec<String>> {
        if self.is_all() {
            return vec![Vec::new()];
        }
        let mut rules = Vec::new();
        let mut current: Vec<String> = Vec::new();
        let mut used = 0;
        for (lo, hi) in &self.ranges {
            let cost = if lo == hi { 1 } else { 2 };
            if used + cost > 15 {
                rules.push(std::mem::take(&mut current));
                used = 0;
            }
            current.push(if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}:{hi}")
            });
            used += cost;
        }
        rules.push(current);
        rules
            .into_iter()
            .map(|ports| {
                vec![
                    "-p".into(),
                    self.protocol.name().into(),
                    "-m".into(),
                    "multiport".into(),
                    "--dports".into(),
                    ports.join(","),
                ]
            })
            .collect()
    }
}

impl std::fmt::Display for PortScope {
    /// `all`, or `tcp/80,443,8000-8099`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_all() {
            return f.write_str("all");
        }
        write!(f, "{}/{}", self.protocol.name(), self.join(",", '-'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(ports: &[PortSpec]) -> Result<PortScope, String> {
        PortScope::parse(ports, Protocol::Tcp)
    }

    #[test]
    fn names_numbers_and_ranges() {
        let s = scope(&[
            PortSpec::Name("https".into()),
            PortSpec::Number(80),
            PortSpec::Name("8000-8010".into()),
            PortSpec::Name("8005:8020".into()),
            PortSpec::Number(81),
        ])
        .unwrap();
        assert_eq!(s.to_string(), "tcp/80-81,443,8000-8020");
        assert_eq!(s.nft_match(), " tcp dport { 80-81, 443, 8000-8020 }");
        assert_eq!(
            s.iptables_matches(),
            [[
                "-p",
                "tcp",
                "-m",
                "multiport",
                "--dports",
                "80:81,443,8000:8020"
            ]]
        );
        // Stable, short enough for ipset, the same for the same ports in
        // another order.
        let again = scope(&[
            PortSpec::Name("8000-8020".into()),
            PortSpec::Number(443),
            PortSpec::Name("80:81".into()),
        ])
        .unwrap();
        assert_eq!(s.suffix(), again.suffix());
        assert_eq!(s.suffix().len(), 10);
        assert_eq!(PortScope::all().suffix(), "");
        // A hyphenated service name is a name, not a range.
        let alt = scope(&[PortSpec::Name("http-alt".into())]).unwrap();
        assert_eq!(alt.to_string(), "tcp/8080");
    }

    #[test]
    fn hostile_or_wrong_ports_are_refused() {
        for bad in [
            PortSpec::Number(0),
            PortSpec::Number(65536),
            PortSpec::Number(-1),
            PortSpec::Name("no-such-service".into()),
            PortSpec::Name("90-80".into()),
            PortSpec::Name("80; flush ruleset".into()),
            PortSpec::Name("".into()),
        ] {
            assert!(scope(std::slice::from_ref(&bad)).is_err(), "{bad:?}");
        }
        assert!(scope(&[]).is_err());
    }

    #[test]
    fn long_lists_split_for_multiport() {
        let ports: Vec<PortSpec> = (1..=40).map(|p| PortSpec::Number(p * 2)).collect();
        let s = scope(&ports).unwrap();
        let rules = s.iptables_matches();
        assert_eq!(rules.len(), 3);
        let total: usize = rules.iter().map(|r| r[5].split(',').count()).sum();
        assert_eq!(total, 40);
    }
}
