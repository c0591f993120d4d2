//! Human-readable rendering of control responses, for the CLI.

use serde_json::Value;
use std::fmt::Write;

fn time(secs: Option<i64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) => chrono::DateTime::from_timestamp(s, 0).map_or_else(
            || s.to_string(),
            |t| t.format("%Y-%m-%d %H:%M:%S").to_string(),
        ),
    }
}

/// A target as an operator types it: `203.0.113.5`, `2001:db8::/64`, `key:ID`.
pub fn target(v: &Value) -> String {
    match (v["kind"].as_str(), v["value"].as_str()) {
        (Some("key"), Some(k)) => format!("key:{k}"),
        (_, Some(a)) => a
            .strip_suffix("/32")
            .or_else(|| a.strip_suffix("/128"))
            .unwrap_or(a)
            .to_string(),
        _ => v.to_string(),
    }
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
            b["jail"].as_str().unwrap_or("?"),
            time(b["since"].as_i64()),
            time(b["expires"].as_i64()),
            b["count"].to_string(),
            if b["manual"] == true {
                "  (by hand)"
            } else {
                ""
            },
        );
    }
    let _ = write!(out, "{} active", rows.len());
    out
}

/// `portcullis status`: a row a jail, or the details of one.
pub fn status(data: &Value, one: bool) -> String {
    let mut out = String::new();
    let jails = data["jails"].as_array().cloned().unwrap_or_default();
    if one {
        for j in &jails {
            for (k, v) in j.as_object().into_iter().flatten() {
                if k == "sources" {
                    for s in v.as_array().into_iter().flatten() {
                        let _ = writeln!(
                            out,
                            "{:<14} {} (lag {} bytes)",
                            "source",
                            s["path"].as_str().unwrap_or("?"),
                            s["lag_bytes"]
                        );
                        for (reason, r) in s["parse"]["reasons"].as_object().into_iter().flatten() {
                            let _ = writeln!(out, "{:<14}   {reason}: {}", "", r["count"]);
                        }
                    }
                } else {
                    let _ = writeln!(
                        out,
                        "{k:<14} {}",
                        if v.is_null() {
                            "-".to_string()
                        } else {
                            v.to_string()
                        }
                    );
                }
            }
        }
        return out.trim_end().to_string();
    }
    let _ = writeln!(
        out,
        "{:<22} {:<7} {:>9} {:>9} {:>8} {:>8} {:>5}  LAST DECISION",
        "JAIL", "SOURCES", "LINES", "PARSED", "MATCHES", "TRACKED", "BANS"
    );
    for j in &jails {
        let last = match &j["last_decision"] {
            Value::Null => "-".to_string(),
            d => format!(
                "{} {}",
                time(d["time"].as_i64()),
                d["target"].as_str().unwrap_or("")
            ),
        };
        let _ = writeln!(
            out,
            "{:<22} {:<7} {:>9} {:>9} {:>8} {:>8} {:>5}  {last}{}",
            j["name"].as_str().unwrap_or("?"),
            j["sources"].as_array().map_or(0, Vec::len),
            j["lines"].to_string(),
            j["parsed"].to_string(),
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
    let l = &data["ledger"];
    let _ = write!(
        out,
        "{} active bans, {} held by the rate cap, up {} s",
        l["active"], l["held"], data["uptime_secs"]
    );
    out
}
