//! What `portcullis replay` prints: each decision (for people, or as a JSON
//! line for scripts) and the summary. Kept apart from the driver so that the
//! CLI's `main` only wires arguments to it.

use super::{Replay, Summary};
use crate::detect::{Decision, Target};
use std::io::Write;

/// Unix milliseconds as RFC 3339 UTC (seconds), as `replay` prints log times.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_else(|| ms.to_string())
}

fn human_duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86400 == 0 && s > 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Log text for a terminal: control characters escaped (a log line must not
/// drive the operator's terminal), cut to `max` characters.
/// At most `max` characters of `s`, made safe for a terminal (controls,
/// bidi overrides and backslashes escaped, as everywhere else).
fn printable(s: &str, max: usize) -> String {
    crate::text::printable(&s.chars().take(max).collect::<String>()).into_owned()
}

/// A decision for people: the target, the jail's verdict and the evidence.
pub fn print_decision(out: &mut impl Write, r: &Replay, d: &Decision) -> std::io::Result<()> {
    let verb = match d.target {
        Target::Address(_) => "ban",
        Target::Key(_) => "revoke",
    };
    writeln!(
        out,
        "{verb} {}  jail={} severity={} count={} first_seen={} at={} for={}",
        d.target,
        d.jail,
        d.severity,
        d.count,
        rfc3339(d.first_seen),
        rfc3339(d.time),
        human_duration(d.bantime),
    )?;
    for e in &d.evidence {
        let src = r.source_name(e.source);
        let geo = e.geo.as_ref().map_or_else(String::new, |g| {
            format!(" [{}]", printable(&g.to_string(), 200))
        });
        writeln!(
            out,
            "    {src}, byte {}{geo}: {}",
            e.offset,
            printable(&e.line, 300)
        )?;
    }
    Ok(())
}

/// A decision as one JSON line (`type = "decision"`), for scripts.
pub fn print_decision_json(out: &mut impl Write, d: &Decision) -> std::io::Result<()> {
    let v = serde_json::json!({
        "type": "decision",
        "jail": &*d.jail,
        "target": d.target.to_string(),
        "target_kind": match d.target { Target::Address(_) => "address", _ => "key" },
        "key": d.key,
        "time": rfc3339(d.time),
        "first_seen": rfc3339(d.first_seen),
        "count": d.count,
        "severity": d.severity,
        "bantime_secs": d.bantime.as_secs(),
        "evidence": d.evidence,
    });
    serde_json::to_writer(&mut *out, &v).map_err(std::io::Error::other)?;
    writeln!(out)
}

/// The summary: lines, parse counters with reasons, and each jail's counts.
pub fn print_summary(out: &mut impl Write, s: &Summary) -> std::io::Result<()> {
    writeln!(out, "\nSummary ({} bytes read)", s.bytes)?;
    for (name, f) in &s.formats {
        writeln!(
            out,
            "  format {name}: {} lines, {} parsed, {} unparsed",
            f.lines, f.parsed, f.unparsed
        )?;
        for (why, r) in &f.reasons {
            writeln!(
                out,
                "    {why}: {}  e.g. {}",
                r.count,
                r.example.escape_debug()
            )?;
        }
    }
    writeln!(
        out,
        "  {:<24} {:>9} {:>9} {:>9} {:>9}",
        "jail", "matches", "decisions", "ignored", "tracked"
    )?;
    for (name, j) in &s.jails {
        writeln!(
            out,
            "  {name:<24} {:>9} {:>9} {:>9} {:>9}",
            j.matches, j.decisions, j.ignored, j.tracked
        )?;
    }
    writeln!(out, "  {} decisions", s.decisions)
}

/// `portcullis replay`: reads `files` (`-` is stdin) with the jails of
/// `sel` and prints each decision as it is made, then the summary.
pub fn run(
    config: &crate::config::Config,
    sel: &super::Selection,
    files: &[std::path::PathBuf],
    json: bool,
    threads: Option<usize>,
) -> Result<(), String> {
    if let Some(geo) = &config.geo {
        let problems = geo.problems();
        let needed = config.jails.iter().any(|j| {
            j.geo_field.is_some()
                && (sel.jails.is_empty() && j.enabled || sel.jails.contains(&j.spec.name))
        });
        if !problems.is_empty() {
            let text = problems.join("; ");
            if needed {
                return Err(text);
            }
            eprintln!("warning: {text} (evidence is shown without country and network)");
        }
    }
    let mut replay = Replay::new(config, sel)?;
    if let Some(n) = threads {
        replay.set_threads(n);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for path in files {
        let name = path.display().to_string();
        let emit = |r: &Replay, d: Decision| {
            let _ = if json {
                print_decision_json(&mut out, &d)
            } else {
                print_decision(&mut out, r, &d)
            };
        };
        let result = if name == "-" {
            replay.read("(stdin)", std::io::stdin().lock(), emit)
        } else {
            let file = std::fs::File::open(path).map_err(|e| format!("cannot open {name}: {e}"))?;
            replay.read_file(&name, file, emit)
        };
        result?;
    }
    let summary = replay.summary();
    let written = if json {
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({ "type": "summary", "summary": summary }),
        )
        .map_err(std::io::Error::other)
        .and_then(|_| writeln!(out))
    } else {
        print_summary(&mut out, &summary)
    };
    written
        .and_then(|_| out.flush())
        .map_err(|e| format!("writing output: {e}"))
}
