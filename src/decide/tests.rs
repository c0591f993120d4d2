use super::*;
use crate::detect::Severity;
use std::sync::Arc;

fn decision(target: &str) -> Decision {
    Decision {
        jail: Arc::from("j"),
        target: Target::parse(target).unwrap(),
        key: target.into(),
        time: 0,
        first_seen: 0,
        count: 5,
        severity: Severity::High,
        bantime: Duration::from_secs(60),
        evidence: vec![],
    }
}

fn policy() -> Policy {
    Policy {
        bantime: Duration::from_secs(60),
        factor: 2.0,
        max: Some(Duration::from_secs(200)),
        dry_run: false,
    }
}

fn ledger() -> Ledger {
    let ignore = NetSet::new(vec!["10.0.0.7/32".parse().unwrap()]);
    Ledger::new(ignore, vec!["key-ops".into()], 3)
}

#[test]
fn bans_escalate_and_cap() {
    let mut l = ledger();
    let Verdict::Banned(b) = l.decide(decision("192.0.2.1"), &policy(), 1000) else {
        panic!()
    };
    assert_eq!(b.expires, Some(1060));
    assert_eq!(
        l.decide(decision("192.0.2.1"), &policy(), 1001),
        Verdict::AlreadyBanned
    );
    assert_eq!(l.expire(1060).len(), 1);
    let Verdict::Banned(b) = l.decide(decision("192.0.2.1"), &policy(), 2000) else {
        panic!()
    };
    assert_eq!((b.offence, b.expires), (2, Some(2120)));
    l.expire(3000);
    let Verdict::Banned(b) = l.decide(decision("192.0.2.1"), &policy(), 3000) else {
        panic!()
    };
    assert_eq!(b.expires, Some(3200), "capped at bantime_max");
}

#[test]
fn allowlist_is_checked_again_including_covering_prefixes() {
    let mut l = ledger();
    assert_eq!(
        l.decide(decision("10.0.0.7"), &policy(), 0),
        Verdict::Allowlisted
    );
    assert_eq!(
        l.decide(decision("10.0.0.0/24"), &policy(), 0),
        Verdict::Allowlisted
    );
    assert_eq!(
        l.decide(decision("key:key-ops"), &policy(), 0),
        Verdict::Allowlisted
    );
    assert!(
        l.manual_ban(Target::parse("10.0.0.7").unwrap(), "j", None, 0, None)
            .is_err()
    );
    assert!(matches!(
        l.decide(decision("10.0.1.0/24"), &policy(), 0),
        Verdict::Banned(_)
    ));
}

#[test]
fn rate_cap_holds_then_releases() {
    let mut l = ledger();
    for i in 0..3 {
        assert!(matches!(
            l.decide(decision(&format!("192.0.2.{i}")), &policy(), 100),
            Verdict::Banned(_)
        ));
    }
    assert_eq!(
        l.decide(decision("192.0.2.9"), &policy(), 100),
        Verdict::Held
    );
    assert_eq!(l.stats().held, 1);
    assert!(l.release_held(120).is_empty());
    let released = l.release_held(161);
    assert_eq!(released.len(), 1);
    assert_eq!(released[0].target, Target::parse("192.0.2.9").unwrap());
}

#[test]
fn dry_run_acts_on_nothing() {
    let mut l = ledger();
    let p = Policy {
        dry_run: true,
        ..policy()
    };
    assert_eq!(l.decide(decision("192.0.2.1"), &p, 0), Verdict::DryRun);
    assert_eq!(l.stats().active, 0);
    assert!(l.take_writes().is_empty());
}

#[test]
fn unban_by_cidr_and_jail_and_restore() {
    let mut l = ledger();
    l.decide(decision("192.0.2.1"), &policy(), 0);
    l.decide(decision("192.0.2.2"), &policy(), 0);
    l.manual_ban(
        Target::parse("198.51.100.0/24").unwrap(),
        "other",
        None,
        0,
        None,
    )
    .unwrap();
    assert_eq!(
        l.unban(Some(&Target::parse("192.0.2.0/24").unwrap()), Some("other"))
            .len(),
        0
    );
    assert_eq!(
        l.unban(Some(&Target::parse("192.0.2.0/24").unwrap()), None)
            .len(),
        2
    );
    let remaining: Vec<Ban> = l.bans().cloned().collect();
    // Restore: permanent manual ban survives, an expired one is dropped.
    let mut expired = remaining[0].clone();
    expired.target = Target::parse("203.0.113.1").unwrap();
    expired.expires = Some(5);
    let mut r = ledger();
    let active = r.restore(
        vec![
            (remaining[0].key(), remaining[0].clone()),
            (expired.key(), expired),
        ],
        vec![],
        10,
    );
    assert_eq!(active, remaining);
    assert_eq!(
        r.take_writes().len(),
        1,
        "the expired ban is deleted from the store"
    );
}

/// Finding 9: mapped prefixes are IPv4 prefixes; a ban of the whole mapped
/// range (or of `::/0`) covers allowlisted IPv4 addresses and is refused.
#[test]
fn mapped_prefixes_are_ipv4_everywhere() {
    let ignore = NetSet::new(vec!["::ffff:192.0.2.0/120".parse().unwrap()]);
    assert!(ignore.contains("192.0.2.77".parse().unwrap()));
    let mut l = Ledger::new(ignore, vec![], 100);
    for t in [
        "::ffff:0:0/96",
        "::/0",
        "::ffff:192.0.0.0/104",
        "192.0.2.77",
    ] {
        assert!(
            l.manual_ban(Target::parse(t).unwrap(), "j", None, 0, None)
                .is_err(),
            "{t}"
        );
    }
    assert_eq!(
        Target::parse("::ffff:198.51.100.0/120").unwrap(),
        Target::parse("198.51.100.0/24").unwrap()
    );
    assert!(
        l.manual_ban(Target::parse("2001:db8::/32").unwrap(), "j", None, 0, None)
            .is_ok()
    );
}

/// Finding 3: key ids are compared as nginx's `map` compares them.
#[test]
fn ignored_keys_match_case_insensitively() {
    let mut l = ledger();
    assert_eq!(
        l.decide(decision("key:KEY-OPS"), &policy(), 0),
        Verdict::Allowlisted
    );
    assert!(
        l.manual_ban(Target::parse("key:Key-Ops").unwrap(), "j", None, 0, None)
            .is_err()
    );
}

#[test]
fn bans_from_elsewhere_wider_than_a_slash_8_or_16_are_refused() {
    let mut l = Ledger::new(Default::default(), Vec::new(), 1000);
    let ban = |t: &str| Ban {
        jail: "j".into(),
        target: Target::parse(t).unwrap(),
        since: 0,
        expires: None,
        count: 1,
        offence: 1,
        manual: false,
        incident: None,
        origin: Some("other-host".into()),
    };
    assert!(!l.remote_ban(ban("0.0.0.0/0")));
    assert!(!l.remote_ban(ban("::/1")));
    assert!(l.remote_ban(ban("10.0.0.0/8")));
    assert!(l.remote_ban(ban("2001:db8::/32")));
    assert!(
        l.manual_ban(Target::parse("0.0.0.0/0").unwrap(), "j", None, 0, None)
            .is_err()
    );
}
