//! Config value types with their own parsing, so a bad value is reported by
//! serde at its exact position in the file.

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// A value or a list of values: `logpath = "a"` or `logpath = ["a", "b"]`.
#[derive(Debug, Clone, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut v = Vec::new();
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(OneOrMany(v))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
                T::deserialize(de::value::StrDeserializer::new(s)).map(|x| OneOrMany(vec![x]))
            }
            fn visit_i64<E: de::Error>(self, n: i64) -> Result<Self::Value, E> {
                T::deserialize(de::value::I64Deserializer::new(n)).map(|x| OneOrMany(vec![x]))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A regex, compiled when the config is read. Linear-time (`regex` crate).
#[derive(Debug, Clone)]
pub struct RegexConfig(pub regex::Regex);

impl<'de> Deserialize<'de> for RegexConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        regex::RegexBuilder::new(&s)
            .size_limit(1 << 20)
            .build()
            .map(RegexConfig)
            .map_err(|e| de::Error::custom(format!("invalid regex: {e}")))
    }
}

/// A set of HTTP status codes, from `404`, `"500-599"`, `"4xx"` or a list of them.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusSet([u64; 10]);

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let codes: Vec<u16> = (0..600).filter(|c| self.contains(*c)).collect();
        write!(f, "StatusSet({codes:?})")
    }
}

impl StatusSet {
    #[inline]
    pub fn contains(&self, code: u16) -> bool {
        let c = code as usize;
        c < 640 && self.0[c / 64] & (1 << (c % 64)) != 0
    }

    /// Every code below 640 (the codes a set can hold).
    pub fn every() -> StatusSet {
        StatusSet([u64::MAX; 10])
    }

    /// The codes of `self` not in `other`.
    pub fn without(&self, other: &StatusSet) -> StatusSet {
        StatusSet(std::array::from_fn(|i| self.0[i] & !other.0[i]))
    }

    fn insert_range(&mut self, lo: u16, hi: u16) {
        for c in lo..=hi {
            self.0[c as usize / 64] |= 1 << (c % 64);
        }
    }

    fn add(&mut self, spec: &str) -> Result<(), String> {
        let bad = || format!("invalid status `{spec}`: use 404, \"500-599\" or \"4xx\"");
        // 0 is Envoy's "no response" (the client went away first).
        let code = |s: &str| {
            s.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| *c == 0 || (100..=599).contains(c))
        };
        if let Some(class) = spec.strip_suffix("xx").and_then(|d| d.parse::<u16>().ok()) {
            if !(1..=5).contains(&class) {
                return Err(bad());
            }
            self.insert_range(class * 100, class * 100 + 99);
        } else if let Some((lo, hi)) = spec.split_once('-') {
            let (lo, hi) = (code(lo).ok_or_else(bad)?, code(hi).ok_or_else(bad)?);
            if lo > hi {
                return Err(bad());
            }
            self.insert_range(lo, hi);
        } else {
            let c = code(spec).ok_or_else(bad)?;
            self.insert_range(c, c);
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for StatusSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Code(i64),
            Text(String),
        }
        let items = OneOrMany::<Item>::deserialize(d)?;
        let mut set = StatusSet([0; 10]);
        for item in items.0 {
            let spec = match item {
                Item::Code(c) => c.to_string(),
                Item::Text(s) => s,
            };
            set.add(&spec).map_err(de::Error::custom)?;
        }
        Ok(set)
    }
}

/// Parses `"90s"`, `"10m"`, `"1h"`, `"7d"`, `"2w"`, `"1h30m"`, `"500ms"`, or whole seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Some(ms) = s.trim().strip_suffix("ms") {
        return ms.parse::<u64>().map(Duration::from_millis).map_err(|_| {
            format!("invalid duration `{s}`: use e.g. \"500ms\", \"90s\", \"10m\", \"1h\", \"7d\"")
        });
    }
    let bad = || format!("invalid duration `{s}`: use e.g. \"90s\", \"10m\", \"1h\", \"7d\"");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(Duration::from_secs(n));
    }
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            'w' => 7 * 86400,
            _ => return Err(bad()),
        };
        let n: u64 = num.parse().map_err(|_| bad())?;
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// How durations are written: a string (`"10m"`) or a number of seconds.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawDuration {
    Secs(i64),
    Text(String),
}

impl RawDuration {
    fn read<'de, D: Deserializer<'de>>(d: D, expected: &str) -> Result<RawDuration, D::Error> {
        RawDuration::deserialize(d).map_err(|_| de::Error::custom(format!("expected {expected}")))
    }

    /// The duration, for every spelling but the special ones a caller handles first.
    fn duration<E: de::Error>(self) -> Result<Duration, E> {
        match self {
            RawDuration::Secs(n) if n >= 0 => Ok(Duration::from_secs(n as u64)),
            RawDuration::Secs(n) => Err(E::custom(format!(
                "invalid duration {n}: must not be negative"
            ))),
            RawDuration::Text(s) => parse_duration(&s).map_err(E::custom),
        }
    }
}

/// A duration in config: a string like `"10m"` or an integer of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        RawDuration::read(d, "a duration such as \"10m\" or a number of seconds")?
            .duration()
            .map(ConfigDuration)
    }
}

/// A ban length: a duration, or `"permanent"` (also `-1`, as in fail2ban).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BanDuration(pub Duration);

impl<'de> Deserialize<'de> for BanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match RawDuration::read(d, "a duration such as \"1h\", or \"permanent\"")? {
            RawDuration::Secs(-1) => Ok(BanDuration(Duration::from_secs(crate::decide::PERMANENT))),
            RawDuration::Text(s) if s == "permanent" => {
                Ok(BanDuration(Duration::from_secs(crate::decide::PERMANENT)))
            }
            RawDuration::Secs(0) => Err(de::Error::custom(
                "invalid ban time 0: use a duration or \"permanent\"",
            )),
            raw => raw.duration().map(BanDuration),
        }
    }
}

/// An address or network: `"203.0.113.7"`, `"10.0.0.0/8"`, `"2001:db8::/32"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let net = if s.contains('/') {
            s.parse::<ipnet::IpNet>().map_err(|_| {
                de::Error::custom(format!("invalid CIDR `{s}`: use e.g. \"10.0.0.0/8\""))
            })?
        } else {
            let ip = s
                .parse::<std::net::IpAddr>()
                .map_err(|_| de::Error::custom(format!("invalid address `{s}`")))?;
            ipnet::IpNet::from(ip)
        };
        if net.trunc() != net {
            return Err(de::Error::custom(format!(
                "`{s}` has host bits set; did you mean `{}`?",
                net.trunc()
            )));
        }
        Ok(Cidr(net))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604800)));
        assert_eq!(parse_duration("600"), Ok(Duration::from_secs(600)));
        assert!(parse_duration("10").is_ok());
        assert!(parse_duration("10x").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("5m3").is_err());
    }

    #[test]
    fn status_sets() {
        let mut s = StatusSet([0; 10]);
        s.add("401").unwrap();
        s.add("500-503").unwrap();
        s.add("2xx").unwrap();
        assert!(s.contains(401) && s.contains(502) && s.contains(250));
        assert!(!s.contains(404) && !s.contains(504) && !s.contains(600));
        assert!(s.add("6xx").is_err());
        assert!(s.add("599-500").is_err());
        assert!(s.add("abc").is_err());
    }
}
