//! Timestamps as access logs write them, parsed by hand.
//!
//! Consecutive lines almost always share their timestamp (1 s resolution), so
//! [`TimeCache`] remembers the last string and its value: the common case is
//! one short `memcmp`.

use super::event::Millis;

/// Which textual shape a timestamp field has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeShape {
    /// nginx `$time_local`: `10/Oct/2000:13:55:36 -0700`.
    Clf,
    /// RFC 3339 / ISO 8601: `2000-10-10T13:55:36.123Z`, `...+02:00`, also with a space.
    Iso8601,
    /// Seconds since the epoch, with optional fraction (nginx `$msec`).
    EpochSeconds,
    /// Milliseconds since the epoch (Kong `started_at`).
    EpochMillis,
    /// nginx error log: `2021/09/30 09:23:53`, taken as UTC.
    NginxError,
    /// Any of the above, guessed from the text.
    Auto,
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

fn digits(b: &[u8]) -> Option<u32> {
    if b.is_empty() || b.len() > 9 {
        return None;
    }
    let mut v = 0u32;
    for &c in b {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    Some(v)
}

fn month(b: &[u8]) -> Option<u32> {
    const M: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    M.iter()
        .position(|m| m.as_slice() == b)
        .map(|i| i as u32 + 1)
}

/// Years a log line can plausibly carry. Outside them a date is a forgery or
/// a broken clock, and an event there could freeze its key's window.
pub const YEARS: std::ops::RangeInclusive<u32> = 1970..=2199;

fn days_in_month(y: u32, m: u32) -> u32 {
    match m {
        4 | 6 | 9 | 11 => 30,
        2 if y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400)) => 29,
        2 => 28,
        _ => 31,
    }
}

/// A calendar time, refused unless every part exists (no 31 February, no
/// year 0000 or 9999, no 24:00).
fn civil_millis(y: u32, mo: u32, d: u32, h: u32, mi: u32, s: u32, ms: u32) -> Option<Millis> {
    if !YEARS.contains(&y) || !(1..=12).contains(&mo) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    if d == 0 || d > days_in_month(y, mo) {
        return None;
    }
    let days = days_from_civil(y as i64, mo, d);
    Some(((days * 86400 + (h * 3600 + mi * 60 + s) as i64) * 1000) + ms as i64)
}

/// `+0200`, `-07:00`, `Z`: offset east of UTC in seconds.
fn offset(b: &[u8]) -> Option<i64> {
    match b {
        b"Z" | b"z" => Some(0),
        [sign @ (b'+' | b'-'), rest @ ..] => {
            let (h, m) = match rest.len() {
                4 => (digits(&rest[..2])?, digits(&rest[2..])?),
                5 if rest[2] == b':' => (digits(&rest[..2])?, digits(&rest[3..])?),
                2 => (digits(rest)?, 0),
                _ => return None,
            };
            // Real offsets run from -12:00 to +14:00.
            if h > 14 || m > 59 || (h == 14 && m > 0) {
                return None;
            }
            let secs = (h * 3600 + m * 60) as i64;
            Some(if *sign == b'-' { -secs } else { secs })
        }
        _ => None,
    }
}

fn parse_clf(b: &[u8]) -> Option<Millis> {
    // 10/Oct/2000:13:55:36 -0700
    if b.len() != 26 || b[2] != b'/' || b[6] != b'/' || b[11] != b':' || b[20] != b' ' {
        return None;
    }
    let t = civil_millis(
        digits(&b[7..11])?,
        month(&b[3..6])?,
        digits(&b[0..2])?,
        digits(&b[12..14])?,
        digits(&b[15..17])?,
        digits(&b[18..20])?,
        0,
    )?;
    Some(t - offset(&b[21..])? * 1000)
}

fn parse_iso(b: &[u8]) -> Option<Millis> {
    // 2000-10-10T13:55:36[.fff...][Z|+hh:mm]
    if b.len() < 19 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let mut rest = &b[19..];
    let mut ms = 0;
    if let [b'.', frac @ ..] = rest {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        let mut scale = 100;
        for &c in &frac[..n.min(3)] {
            ms += (c - b'0') as u32 * scale;
            scale /= 10;
        }
        rest = &frac[n..];
    }
    let off = if rest.is_empty() { 0 } else { offset(rest)? };
    let t = civil_millis(
        digits(&b[0..4])?,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
        ms,
    )?;
    Some(t - off * 1000)
}

fn parse_nginx_error(b: &[u8]) -> Option<Millis> {
    // 2021/09/30 09:23:53
    if b.len() != 19 || b[4] != b'/' || b[7] != b'/' || b[10] != b' ' {
        return None;
    }
    civil_millis(
        digits(&b[0..4])?,
        digits(&b[5..7])?,
        digits(&b[8..10])?,
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
        0,
    )
}

fn parse_epoch(s: &str, unit_ms: bool) -> Option<Millis> {
    let v: f64 = s.parse().ok()?;
    if !v.is_finite() || v < 0.0 {
        return None;
    }
    let ms = if unit_ms {
        v as i64
    } else {
        (v * 1000.0).round() as i64
    };
    // The same plausible years as calendar dates (1970 up to 2200).
    (ms < 7_258_118_400_000).then_some(ms)
}

/// Parses `s` as `shape`. Returns `None` if it is not a valid timestamp.
pub fn parse_time(s: &str, shape: TimeShape) -> Option<Millis> {
    let b = s.as_bytes();
    match shape {
        TimeShape::Clf => parse_clf(b),
        TimeShape::Iso8601 => parse_iso(b),
        TimeShape::NginxError => parse_nginx_error(b),
        TimeShape::EpochSeconds => parse_epoch(s, false),
        TimeShape::EpochMillis => parse_epoch(s, true),
        TimeShape::Auto => parse_clf(b)
            .or_else(|| parse_iso(b))
            .or_else(|| parse_nginx_error(b))
            .or_else(|| {
                // 13+ digits is milliseconds (after 2001-09-09), fewer is seconds.
                let int_digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
                parse_epoch(s, int_digits >= 13)
            }),
    }
}

/// Remembers the last timestamp text and its value.
#[derive(Debug, Default)]
pub struct TimeCache {
    last: String,
    value: Millis,
}

impl TimeCache {
    pub fn parse(&mut self, s: &str, shape: TimeShape) -> Option<Millis> {
        if !self.last.is_empty() && self.last == s {
            return Some(self.value);
        }
        let v = parse_time(s, shape)?;
        self.last.clear();
        self.last.push_str(s);
        self.value = v;
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clf_with_offsets() {
        // 2000-10-10T20:55:36Z
        let want = 971_211_336_000;
        assert_eq!(
            parse_time("10/Oct/2000:13:55:36 -0700", TimeShape::Clf),
            Some(want)
        );
        assert_eq!(
            parse_time("10/Oct/2000:20:55:36 +0000", TimeShape::Clf),
            Some(want)
        );
        assert_eq!(
            parse_time("10/Oct/2000:22:55:36 +0200", TimeShape::Auto),
            Some(want)
        );
        assert_eq!(
            parse_time("10/Foo/2000:13:55:36 -0700", TimeShape::Clf),
            None
        );
        assert_eq!(
            parse_time("10/Oct/2000:25:55:36 -0700", TimeShape::Clf),
            None
        );
    }

    #[test]
    fn iso_variants() {
        let want = 971_211_336_000;
        assert_eq!(
            parse_time("2000-10-10T20:55:36Z", TimeShape::Iso8601),
            Some(want)
        );
        assert_eq!(
            parse_time("2000-10-10T22:55:36+02:00", TimeShape::Iso8601),
            Some(want)
        );
        assert_eq!(
            parse_time("2000-10-10T20:55:36.250Z", TimeShape::Iso8601),
            Some(want + 250)
        );
        assert_eq!(
            parse_time("2000-10-10T21:55:36.000000100+01:00", TimeShape::Auto),
            Some(want)
        );
        assert_eq!(parse_time("2000-10-10T20:55", TimeShape::Iso8601), None);
    }

    #[test]
    fn epoch_and_error_log() {
        assert_eq!(
            parse_time("971211336.250", TimeShape::EpochSeconds),
            Some(971_211_336_250)
        );
        assert_eq!(
            parse_time("971211336250", TimeShape::EpochMillis),
            Some(971_211_336_250)
        );
        assert_eq!(
            parse_time("1700000000000", TimeShape::Auto),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_time("2000/10/10 20:55:36", TimeShape::NginxError),
            Some(971_211_336_000)
        );
        assert_eq!(parse_time("-5", TimeShape::EpochSeconds), None);
    }

    #[test]
    fn impossible_dates_are_refused() {
        for bad in [
            "31/Feb/2026:10:00:00 +0000",
            "29/Feb/2026:10:00:00 +0000",
            "00/Nov/2026:10:00:00 +0000",
            "23/Nov/9999:10:00:00 +0000",
            "23/Nov/0000:10:00:00 +0000",
            "23/Nov/2026:10:00:00 +9999",
            "23/Nov/2026:10:00:00 +2400",
            "23/Nov/2026:10:00:00 -0099",
            "23/Nov/2026:10:00:00 +1401",
            "23/Nov/2026:24:00:00 +0000",
        ] {
            assert_eq!(parse_time(bad, TimeShape::Clf), None, "{bad}");
        }
        assert!(parse_time("29/Feb/2028:10:00:00 +1400", TimeShape::Clf).is_some());
        assert!(parse_time("31/Apr/2026:10:00:00 +0000", TimeShape::Clf).is_none());
        assert!(parse_time("9999-11-23T10:00:00Z", TimeShape::Iso8601).is_none());
        assert!(parse_time("2026-02-30T10:00:00Z", TimeShape::Iso8601).is_none());
        assert!(parse_time("253402300799", TimeShape::EpochSeconds).is_none());
    }

    #[test]
    fn cache_returns_same_value() {
        let mut c = TimeCache::default();
        let a = c.parse("10/Oct/2000:13:55:36 -0700", TimeShape::Clf);
        let b = c.parse("10/Oct/2000:13:55:36 -0700", TimeShape::Clf);
        assert_eq!(a, b);
        assert_eq!(
            c.parse("10/Oct/2000:13:55:37 -0700", TimeShape::Clf),
            a.map(|v| v + 1000)
        );
        assert_eq!(c.parse("garbage", TimeShape::Clf), None);
    }
}
