//! What the control socket shows of stored records.
//!
//! The ledger stores times in Unix seconds and incidents in Unix
//! milliseconds, and a target's address with its prefix (`203.0.113.5/32`):
//! those are storage formats, kept as they are so existing state files stay
//! readable. Everything the socket (and so `--json`) answers goes through
//! here instead, so that a script sees one convention:
//!
//! - every time is **Unix seconds** (an integer), whatever the record;
//! - a target is `{"kind": "address", "value": "203.0.113.5"}` exactly as the
//!   tables print it and `unban` takes it (a prefix only for a network:
//!   `2001:db8::/64`), or `{"kind": "key", "value": "ID"}` with the raw id.

use crate::decide::Ban;
use crate::detect::Target;
use crate::state::incidents::Incident;
use serde_json::{Value, json};

/// A target, as the tables print it.
pub fn target(t: &Target) -> Value {
    match t {
        Target::Address(_) => json!({ "kind": "address", "value": t.to_string() }),
        Target::Key(k) => json!({ "kind": "key", "value": k }),
    }
}

/// A ban (times already in seconds).
pub fn ban(b: &Ban) -> Value {
    let mut v = json!(b);
    v["target"] = target(&b.target);
    v
}

pub fn bans<'a>(list: impl IntoIterator<Item = &'a Ban>) -> Value {
    Value::Array(list.into_iter().map(ban).collect())
}

/// An incident, its millisecond times made seconds.
pub fn incident(i: &Incident) -> Value {
    let secs = |ms: Option<i64>| ms.map(|m| m.div_euclid(1000));
    let mut v = json!(i);
    v["target"] = target(&i.target);
    v["detected_at"] = json!(i.detected_at.div_euclid(1000));
    v["first_seen"] = json!(secs(i.first_seen));
    v["last_seen"] = json!(secs(i.last_seen));
    v["resolved_at"] = json!(secs(i.resolved_at));
    if let Some(actions) = v["actions"].as_array_mut() {
        for (a, rec) in actions.iter_mut().zip(&i.actions) {
            a["at"] = json!(rec.at.div_euclid(1000));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::incidents::ActionRecord;

    #[test]
    fn one_convention_for_targets_and_times() {
        let host = Target::parse("203.0.113.5").unwrap();
        assert_eq!(target(&host)["value"], "203.0.113.5");
        let net = Target::parse("2001:db8::/64").unwrap();
        assert_eq!(target(&net)["value"], "2001:db8::/64");
        let key = Target::Key("a\tb".into());
        assert_eq!(target(&key), json!({"kind": "key", "value": "a\tb"}));

        let i = Incident {
            id: "x".into(),
            jail: "j".into(),
            kind: "ban".into(),
            severity: Default::default(),
            target: host,
            detected_at: 1_795_000_000_999,
            first_seen: Some(1_794_999_990_000),
            last_seen: None,
            count: 3,
            evidence: Vec::new(),
            actions: vec![ActionRecord {
                action: "log".into(),
                change: "ban".into(),
                ok: true,
                error: None,
                at: 1_795_000_001_500,
            }],
            resolved_at: Some(1_795_000_100_000),
            resolution: None,
        };
        let v = incident(&i);
        assert_eq!(v["detected_at"], 1_795_000_000);
        assert_eq!(v["first_seen"], 1_794_999_990);
        assert!(v["last_seen"].is_null());
        assert_eq!(v["resolved_at"], 1_795_000_100);
        assert_eq!(v["actions"][0]["at"], 1_795_000_001);
        assert_eq!(v["target"]["value"], "203.0.113.5");
    }
}
