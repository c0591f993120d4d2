//! Human-readable rendering of control responses, for the CLI.

use crate::text::{printable, shell_quote};
use serde_json::Value;
use std::fmt::Write;

/// A string field for a terminal (control characters made visible).
fn field(v: &Value) -> String {
    printable(v.as_str().unwrap_or("?")).into_owned()
}

fn time(secs: Option<i64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) => chrono::DateTime::from_timestamp(s, 0).map_or_else(
            || s.to_string(),
            |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
        ),
    }
}

/// A target for a terminal: [`target_arg`] with control characters made visible.
pub fn target(v: &Value) -> String {
    printable(&target_arg(v)).into_owned()
}

/// A target as an operator types it: `203.0.113.5`, `2001:db8::/64`, `key:ID`
/// (raw: shell-quote it for a command, make it printable for a table). The
/// daemon already sends addresses so (`control::view`).
pub fn target_arg(v: &Value) -> String {
    match (v["kind"].as_str(), v["value"].as_str()) {
        (Some("key"), Some(k)) => format!("key:{k}"),
        (_, Some(a)) => a.to_string(),
        _ => v.to_string(),
    }
}

/// The command that lifts the ban of `target` in `jail`, shell-quoted so it
/// can be pasted (and so nothing in a jail name reaches the terminal raw).
pub fn unban_command(target: &str, jail: &str) -> String {
    format!(
        "portcullis unban {} --jail {}",
        shell_quote(target),
        shell_quote(jail)
    )
}

/// `portcullis bans`: one row a ban.
pub fn bans(data: &Value) -> String {
    let mut out = String::new();
    let rows = data.as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "{:<28} {:<22} {:<19} {:<19} {:>6}",
        "TARGET", "JAIL", "SINCE (UTC)", "EXPIRES (UTC)", "COUNT"
    );
    for b in &rows {
        let _ = writeln!(
            out,
            "{:<28} {:<22} {:<19} {:<19} {:>6}{}",
            target(&b["target"]),
            field(&b["jail"]),
            time(b["since"].as_i64()),
            time(b["expires"].as_i64()),
            b["count"].to_string(),
            match (b["manual"] == true, b["origin"].as_str()) {
                (_, Some(host)) => format!("  (from {host})"),
                (true, None) => "  (by hand)".to_string(),
                _ => String::new(),
            },
        );
    }
    let _ = write!(out, "{} active", rows.len());
    out
}

/// `portcullis status JAIL`, like `fail2ban-client status JAIL`: its
/// sources and what did not parse, its counters, then its bans as a table
/// (`bans` is the answer to a `bans --jail JAIL` request).
pub fn status_jail(data: &Value, bans_data: &Value) -> String {
    let mut out = String::new();
    let Some(j) = data["jails"].as_array().and_then(|a| a.first()) else {
        return "no such jail".into();
    };
    let _ = writeln!(
        out,
        "Jail {}{}{}",
        field(&j["name"]),
        if j["enabled"] == false {
            " (disabled)"
        } else {
            ""
        },
        if j["dry_run"] == true {
            " (dry run: nothing is enforced)"
        } else {
            ""
        },
    );
    let _ = writeln!(out, "|- Sources");
    let sources = j["sources"].as_array().cloned().unwrap_or_default();
    if sources.is_empty() {
        let _ = writeln!(out, "|  `- none open (see the log for why)");
    }
    for s in &sources {
        let p = &s["parse"];
        let _ = writeln!(
            out,
            "|  |- {}: {} lines, {} parsed, {} unparsed, {} bytes behind",
            field(&s["path"]),
            p["lines"],
            p["parsed"],
            p["unparsed"],
            s["lag_bytes"],
        );
        for (reason, r) in p["reasons"].as_object().into_iter().flatten() {
            let _ = writeln!(
                out,
                "|  |     {reason}: {}  e.g. {}",
                r["count"],
                field(&r["example"]).chars().take(120).collect::<String>()
            );
        }
    }
    let _ = writeln!(out, "|- Counting");
    let _ = writeln!(
        out,
        "|  |- Matches:   {} ({} from allowlisted clients)",
        j["matches"], j["ignored"]
    );
    let _ = writeln!(
        out,
        "|  |- Tracked:   {} keys ({} evicted when full)",
        j["tracked"], j["evicted"]
    );
    let _ = writeln!(out, "|  `- Decisions: {}", j["decisions"]);
    let last = match &j["last_decision"] {
        Value::Null => "-".to_string(),
        d => format!(
            "{} UTC {}",
            time(d["time"].as_i64()),
            field(&d["target"]["value"])
        ),
    };
    let _ = writeln!(out, "|- Last decision: {last}");
    let _ = writeln!(out, "`- Banned: {}", j["active_bans"]);
    out.push('\n');
    out.push_str(&bans(bans_data));
    out
}

/// ` [US-CA AS15169 Google LLC]` for an evidence line with `[geoip]`, else nothing.
fn geo_note(geo: &Value) -> String {
    match serde_json::from_value::<crate::enrich::GeoInfo>(geo.clone()) {
        Ok(g) if geo.is_object() => format!(" [{}]", printable(&g.to_string())),
        _ => String::new(),
    }
}

/// `portcullis status`: a row a jail, then whatever needs attention.
pub fn status(data: &Value) -> String {
    let mut out = String::new();
    let jails = data["jails"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "{:<22} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>5}  LAST DECISION",
        "JAIL", "SOURCES", "LINES", "PARSED", "UNPARSED", "MATCHES", "TRACKED", "BANS"
    );
    for j in &jails {
        let last = match &j["last_decision"] {
            Value::Null => "-".to_string(),
            d => format!(
                "{} {}",
                time(d["time"].as_i64()),
                field(&d["target"]["value"])
            ),
        };
        let _ = writeln!(
            out,
            "{:<22} {:<7} {:>9} {:>9} {:>8} {:>8} {:>8} {:>5}  {last}{}",
            field(&j["name"]),
            j["sources"].as_array().map_or(0, Vec::len),
            j["lines"].to_string(),
            j["parsed"].to_string(),
            j["unparsed"].to_string(),
            j["matches"].to_string(),
            j["tracked"].to_string(),
            j["active_bans"].to_string(),
            if j["dry_run"] == true {
                "  (dry run)"
            } else {
                ""
            },
        );
    }
    // A syslog source that loses datagrams says so.
    let mut seen = std::collections::BTreeSet::new();
    for j in &jails {
        for s in j["sources"].as_array().into_iter().flatten() {
            let dropped = s["syslog"]["dropped"].as_u64().unwrap_or(0);
            if dropped > 0 && seen.insert(field(&s["path"])) {
                let _ = writeln!(
                    out,
                    "{}: {dropped} datagram(s) DROPPED by the kernel (the daemon fell behind)",
                    field(&s["path"])
                );
            }
        }
    }
    if let Some(f) = data["fleet"].as_object() {
        let _ = writeln!(
            out,
            "fleet {} as {}: link {}, {} published, {} applied, {} waiting{}",
            field(&f["name"]),
            field(&f["host"]),
            if f["link_up"] == true { "up" } else { "DOWN" },
            f["published"],
            f["applied"],
            f["outbox"],
            f["last_lag_ms"]
                .as_i64()
                .map_or(String::new(), |l| format!(", last lag {l} ms")),
        );
    }
    for g in data["geoip"].as_array().into_iter().flatten() {
        if let Some(p) = g["problem"].as_str() {
            let _ = writeln!(
                out,
                "geoip {}: PROBLEM since {} UTC: {}",
                field(&g["role"]),
                time(g["problem_since"].as_i64()),
                printable(p),
            );
        }
    }
    if let Some(b) = data["bouncer_api"].as_object() {
        let pollers = b["bouncers"].as_array().cloned().unwrap_or_default();
        let _ = writeln!(
            out,
            "bouncer API on {}: {} decision(s), {} bouncer(s) polled in the last day, {} request(s) refused (bad key)",
            field(&b["listen"]),
            b["decisions"],
            pollers.len(),
            b["forbidden"],
        );
        for p in &pollers {
            let _ = writeln!(
                out,
                "  {} last pulled {} UTC",
                field(&p["bouncer"]),
                time(p["last_pull"].as_i64()),
            );
        }
    }
    for (name, a) in data["actions"].as_object().into_iter().flatten() {
        if let Some(n) = a["restoring"].as_u64() {
            let _ = writeln!(
                out,
                "action {name}: re-applying {n} active ban(s) (start or reload), not all enforced yet"
            );
        }
        if let Some(since) = a["failing_since"].as_i64() {
            let _ = writeln!(
                out,
                "action {name}: FAILING since {} UTC, {} retries so far: {}",
                time(Some(since)),
                a["retries"],
                field(&a["last_error"]),
            );
        }
        if a["drifts"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(
                out,
                "action {name}: enforcement changed behind our back {} time(s), last at {} UTC, and re-applied",
                a["drifts"],
                time(a["last_drift"].as_i64()),
            );
        }
        if a["refused_targets"].as_u64().unwrap_or(0) > 0 {
            let _ = writeln!(
                out,
                "action {name}: {} target(s) it cannot express were skipped (last: {})",
                a["refused_targets"],
                field(&a["last_refused"]),
            );
        }
    }
    let store = &data["store"];
    if let Some(since) = store["failing_since"].as_i64() {
        let _ = writeln!(
            out,
            "state store: FAILING since {} UTC ({} writes waiting in memory, retried every second): {}",
            time(Some(since)),
            store["unsaved_writes"],
            field(&store["health"]["last_error"]),
        );
    }
    let l = &data["ledger"];
    let _ = write!(
        out,
        "{} active bans, {} held by the rate cap, up {} s",
        l["active"], l["held"], data["uptime_secs"]
    );
    out
}

/// A time that may be unknown (`-`), not "never".
fn time_or_dash(secs: Option<i64>) -> String {
    secs.map_or_else(|| "-".into(), |s| time(Some(s)))
}

/// `portcullis incidents`: one row an incident, newest first.
pub fn incidents(data: &Value) -> String {
    let mut out = String::new();
    let rows = data.as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        out,
        "{:<20} {:<19} {:<20} {:<7} {:<8} {:<26} {:>6}  RESOLVED",
        "ID", "DETECTED (UTC)", "JAIL", "KIND", "SEVERITY", "TARGET", "COUNT"
    );
    for i in &rows {
        let resolved = match i["resolution"].as_str() {
            Some(how) => format!("{} ({how})", time_or_dash(i["resolved_at"].as_i64())),
            None => "open".into(),
        };
        let _ = writeln!(
            out,
            "{:<20} {:<19} {:<20} {:<7} {:<8} {:<26} {:>6}  {resolved}",
            field(&i["id"]),
            time_or_dash(i["detected_at"].as_i64()),
            field(&i["jail"]),
            i["kind"].as_str().unwrap_or("?"),
            i["severity"].as_str().unwrap_or("?"),
            target(&i["target"]),
            i["count"].to_string(),
        );
    }
    let _ = write!(out, "{} incidents", rows.len());
    out
}

/// `portcullis incidents show ID`: the whole record, for an on-call engineer.
pub fn incident(i: &Value) -> String {
    let mut out = String::new();
    let t = target(&i["target"]);
    let _ = writeln!(out, "incident   {}", i["id"].as_str().unwrap_or("?"));
    let _ = writeln!(
        out,
        "jail       {} ({} severity)",
        field(&i["jail"]),
        i["severity"].as_str().unwrap_or("?")
    );
    let _ = writeln!(out, "what       {} {t}", i["kind"].as_str().unwrap_or("?"));
    let _ = writeln!(out, "count      {} in the window", i["count"]);
    let _ = writeln!(
        out,
        "first seen {} (log time)",
        time_or_dash(i["first_seen"].as_i64())
    );
    let _ = writeln!(
        out,
        "last seen  {} (log time)",
        time_or_dash(i["last_seen"].as_i64())
    );
    let _ = writeln!(
        out,
        "detected   {}",
        time_or_dash(i["detected_at"].as_i64())
    );
    match i["resolution"].as_str() {
        Some(how) => {
            let _ = writeln!(
                out,
                "resolved   {} ({how})",
                time_or_dash(i["resolved_at"].as_i64())
            );
        }
        None => {
            let _ = writeln!(
                out,
                "resolved   no; undo with: {}",
                unban_command(&target_arg(&i["target"]), i["jail"].as_str().unwrap_or("?"))
            );
        }
    }
    for a in i["actions"].as_array().into_iter().flatten() {
        let result = if a["ok"] == true {
            "ok".to_string()
        } else {
            format!("FAILED: {}", printable(a["error"].as_str().unwrap_or("")))
        };
        let _ = writeln!(
            out,
            "action     {} {} at {}: {result}",
            field(&a["action"]),
            a["change"].as_str().unwrap_or("?"),
            time_or_dash(a["at"].as_i64())
        );
    }
    for e in i["evidence"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "evidence   {}, byte {}{}: {}",
            field(&e["file"]),
            e["offset"],
            geo_note(&e["geo"]),
            printable(e["line"].as_str().unwrap_or(""))
        );
    }
    out.trim_end().to_string()
}

/// A list of bans the daemon answered (`unbanned 2:`, one target a line).
pub fn ban_list(data: &Value, verb: &str) -> String {
    let n = data.as_array().map_or(0, Vec::len);
    let mut out = format!("{verb} {n}:");
    for b in data.as_array().into_iter().flatten() {
        let shown = target(&b["target"]);
        out.push_str(&format!(
            "\n  {shown} ({})",
            printable(b["jail"].as_str().unwrap_or("?"))
        ));
    }
    out
}
