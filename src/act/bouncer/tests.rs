use super::http::{parse_head, parse_query, route};
use super::*;
use crate::detect::Target;

/// When the tests' bans are made.
const NOW: i64 = 0;

fn t(s: &str) -> Target {
    Target::parse(s).unwrap()
}

fn stream(book: &mut Book, who: &str, startup: bool, now: i64) -> serde_json::Value {
    serde_json::from_slice(&book.stream(who, startup, &Filter::default(), now)).unwrap()
}

/// `(value, scenario, duration)` of a stream answer's `new` or `deleted`.
fn items(v: &serde_json::Value, which: &str) -> Vec<(String, String, String)> {
    let mut out: Vec<_> = v[which]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["value"].as_str().unwrap().to_string(),
                d["scenario"].as_str().unwrap().to_string(),
                d["duration"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

fn values(v: &serde_json::Value, which: &str) -> Vec<String> {
    items(v, which).into_iter().map(|i| i.0).collect()
}

#[test]
fn durations_read_as_go_prints_them() {
    assert_eq!(go_duration(14390), "3h59m50s");
    assert_eq!(go_duration(3600), "1h0m0s");
    assert_eq!(go_duration(60), "1m0s");
    assert_eq!(go_duration(59), "59s");
    assert_eq!(go_duration(0), "0s");
    assert_eq!(go_duration(-5), "0s");
}

#[test]
fn a_poll_gets_what_changed_since_the_last_one() {
    let mut b = Book::new(1_000_000);
    b.ban("scan", &t("203.0.113.5"), Some(1000 + 3600), NOW);
    b.ban("flood", &t("2001:db8::/64"), None, NOW);
    let first = stream(&mut b, "fw", true, 1000);
    assert_eq!(
        items(&first, "new"),
        vec![
            ("2001:db8::/64".into(), "flood".into(), "479h43m20s".into()),
            ("203.0.113.5".into(), "scan".into(), "1h0m0s".into()),
        ]
    );
    let scopes: Vec<&str> = first["new"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["scope"].as_str().unwrap())
        .collect();
    assert!(scopes.contains(&"Ip") && scopes.contains(&"Range"));
    assert!(first["new"][0]["id"].as_i64().unwrap() > 1_000_000);
    assert_eq!(first["new"][0]["type"], "ban");
    assert_eq!(first["new"][0]["origin"], "portcullis");
    // Nothing changed: nothing new.
    let again = stream(&mut b, "fw", false, 1010);
    assert!(values(&again, "new").is_empty() && values(&again, "deleted").is_empty());
    b.ban("scan", &t("198.51.100.7"), Some(1000 + 60), NOW);
    b.unban("scan", &t("203.0.113.5"), NOW);
    let next = stream(&mut b, "fw", false, 1020);
    assert_eq!(values(&next, "new"), vec!["198.51.100.7"]);
    assert_eq!(values(&next, "deleted"), vec!["203.0.113.5"]);
    // Another bouncer starting now sees what is active, and the lifted ban
    // as deleted (it may hold it from before: it is not known here).
    let other = stream(&mut b, "nginx", true, 1020);
    assert_eq!(values(&other, "new"), vec!["198.51.100.7", "2001:db8::/64"]);
    assert_eq!(values(&other, "deleted"), vec!["203.0.113.5"]);
}

#[test]
fn a_ban_made_and_lifted_between_polls_is_never_sent() {
    let mut b = Book::new(0);
    stream(&mut b, "fw", true, 0);
    b.ban("scan", &t("203.0.113.5"), Some(600), NOW);
    b.unban("scan", &t("203.0.113.5"), NOW);
    let v = stream(&mut b, "fw", false, 10);
    assert!(values(&v, "new").is_empty() && values(&v, "deleted").is_empty());
}

#[test]
fn two_jails_on_one_address_serve_the_longest_and_lifting_it_serves_the_other() {
    let mut b = Book::new(0);
    b.ban("short", &t("203.0.113.5"), Some(600), NOW);
    b.ban("long", &t("203.0.113.5"), Some(3600), NOW);
    let v = stream(&mut b, "fw", true, 0);
    assert_eq!(
        items(&v, "new"),
        vec![("203.0.113.5".into(), "long".into(), "1h0m0s".into())]
    );
    // The shorter ending changes nothing a bouncer sees.
    b.unban("short", &t("203.0.113.5"), NOW);
    let v = stream(&mut b, "fw", false, 10);
    assert!(values(&v, "new").is_empty() && values(&v, "deleted").is_empty());
    // A lifted longest gives way to the remaining one: deleted, then new.
    b.ban("short", &t("203.0.113.5"), Some(600), NOW);
    let v = stream(&mut b, "fw", false, 20);
    assert!(values(&v, "new").is_empty(), "the longest still wins: {v}");
    b.unban("long", &t("203.0.113.5"), NOW);
    let v = stream(&mut b, "fw", false, 30);
    assert_eq!(values(&v, "deleted"), vec!["203.0.113.5"]);
    assert_eq!(
        items(&v, "new"),
        vec![("203.0.113.5".into(), "short".into(), "9m30s".into())]
    );
}

#[test]
fn reconcile_changes_only_what_differs() {
    let mut b = Book::new(0);
    let (x, y, z) = (t("203.0.113.5"), t("203.0.113.6"), t("203.0.113.7"));
    b.reconcile([("j", &x, Some(600)), ("j", &y, Some(600))], NOW);
    stream(&mut b, "fw", true, 0);
    b.reconcile([("j", &y, Some(600)), ("j", &z, Some(600))], NOW);
    let v = stream(&mut b, "fw", false, 1);
    assert_eq!(values(&v, "new"), vec!["203.0.113.7"]);
    assert_eq!(values(&v, "deleted"), vec!["203.0.113.5"]);
    // Keys are not decisions.
    b.reconcile([("k", &t("key:abc"), Some(600))], NOW);
    assert!(b.is_empty());
}

#[test]
fn filters_follow_crowdsec() {
    let mut b = Book::new(0);
    b.ban("http-scan", &t("203.0.113.5"), Some(600), NOW);
    b.ban("flood", &t("2001:db8::/64"), Some(600), NOW);
    let q = |s: &str| Filter::from_query(&parse_query(s));
    let get = |b: &mut Book, f: Filter| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_slice(&b.stream("x", true, &f, 0)).unwrap();
        values(&v, "new")
    };
    assert_eq!(get(&mut b, q("scopes=ip")), vec!["203.0.113.5"]);
    assert_eq!(get(&mut b, q("scopes=Ip%2CRange")).len(), 2);
    assert_eq!(get(&mut b, q("scopes=range")), vec!["2001:db8::/64"]);
    assert_eq!(
        get(&mut b, q("scenarios_containing=scan")),
        vec!["203.0.113.5"]
    );
    assert_eq!(
        get(&mut b, q("scenarios_not_containing=scan")),
        vec!["2001:db8::/64"]
    );
    assert!(get(&mut b, q("origins=crowdsec,cscli")).is_empty());
    assert_eq!(get(&mut b, q("origins=portcullis")).len(), 2);
}

#[test]
fn live_queries_find_the_covering_decision_or_null() {
    let mut b = Book::new(0);
    b.ban("flood", &t("2001:db8::/64"), Some(600), NOW);
    b.ban("scan", &t("203.0.113.5"), Some(600), NOW);
    let q = |b: &Book, s: &str| -> serde_json::Value {
        serde_json::from_slice(&b.query(&Query::from_query(&parse_query(s)).unwrap(), 0)).unwrap()
    };
    assert_eq!(q(&b, "ip=203.0.113.5")[0]["value"], "203.0.113.5");
    assert_eq!(q(&b, "ip=2001:db8::1234")[0]["value"], "2001:db8::/64");
    assert_eq!(q(&b, "ip=2001%3Adb8%3A%3A9")[0]["scope"], "Range");
    assert!(q(&b, "ip=203.0.113.6").is_null());
    // A dual-stack socket's view of an IPv4 client.
    assert_eq!(q(&b, "ip=::ffff:203.0.113.5")[0]["value"], "203.0.113.5");
    assert_eq!(
        q(&b, "range=::ffff:203.0.113.0/120&contains=false")[0]["value"],
        "203.0.113.5"
    );
    assert!(q(&b, "ip=2001:db8:1::1").is_null());
    assert!(q(&b, "ip=203.0.113.5&type=captcha").is_null());
    assert_eq!(q(&b, "range=2001:db8::/80")[0]["value"], "2001:db8::/64");
    assert_eq!(
        q(&b, "range=2001:db8::/48&contains=false")[0]["value"],
        "2001:db8::/64"
    );
    assert_eq!(
        q(&b, "scope=ip&value=203.0.113.5")[0]["value"],
        "203.0.113.5"
    );
    assert_eq!(q(&b, "").as_array().unwrap().len(), 2);
    // Expired and not swept yet: not served.
    assert!(q(&b, "ip=203.0.113.5").is_array());
    let late: serde_json::Value = serde_json::from_slice(&b.query(
        &Query::from_query(&parse_query("ip=203.0.113.5")).unwrap(),
        601,
    ))
    .unwrap();
    assert!(late.is_null());
    assert!(Query::from_query(&parse_query("ip=not-an-ip")).is_err());
}

#[test]
fn a_bouncer_whose_cursor_was_lost_still_hears_of_deletions() {
    let mut b = Book::new(0);
    b.ban("j", &t("203.0.113.5"), Some(7200), NOW);
    b.ban("j", &t("203.0.113.6"), Some(7200), NOW);
    stream(&mut b, "fw", true, 0);
    b.unban("j", &t("203.0.113.5"), NOW);
    // A day without polling: its cursor is forgotten. Its next poll gets
    // what is active and what it may still hold of what was lifted.
    let v = stream(&mut b, "fw", false, 3600 + 24 * 3600);
    assert!(values(&v, "new").is_empty(), "both ended by now: {v}");
    let mut b = Book::new(0);
    b.ban("j", &t("203.0.113.5"), Some(7200), NOW);
    b.ban("j", &t("203.0.113.6"), Some(7200), NOW);
    stream(&mut b, "fw", true, 0);
    b.unban("j", &t("203.0.113.5"), NOW);
    // Evicted by a thousand other bouncers polling.
    for i in 0..1100 {
        stream(&mut b, &format!("other-{i}"), true, 10);
    }
    let v = stream(&mut b, "fw", false, 20);
    assert_eq!(values(&v, "new"), vec!["203.0.113.6"]);
    assert_eq!(values(&v, "deleted"), vec!["203.0.113.5"]);
}

#[test]
fn withdrawals_are_kept_until_every_copy_has_run_out() {
    let mut b = Book::new(0);
    stream(&mut b, "a", true, 0);
    for i in 0..100u8 {
        b.ban("j", &t(&format!("198.51.100.{i}")), Some(600), NOW);
        b.unban("j", &t(&format!("198.51.100.{i}")), NOW);
    }
    assert_eq!(b.withdrawn_len(10), 100);
    // Past the bans' end (and the slack for bouncers' clocks): gone, and
    // the store is told to forget them.
    b.take_persist();
    assert_eq!(b.withdrawn_len(600 + 121), 0);
    let forgotten = b.take_persist();
    assert_eq!(forgotten.len(), 100);
    assert!(forgotten.iter().all(|(_, h)| h.is_none()));
}

#[test]
fn what_bouncers_held_before_a_restart_is_deleted_unless_served_again() {
    let mut b = Book::new(0);
    let arc = std::sync::Arc::from;
    b.restore(
        [
            ("203.0.113.5/32".parse().unwrap(), arc("j"), 5000, 77),
            ("203.0.113.6/32".parse().unwrap(), arc("j"), 5000, 78),
            ("203.0.113.8/32".parse().unwrap(), arc("j"), 5000, 79),
            ("203.0.113.7/32".parse().unwrap(), arc("j"), 50, 80),
        ],
        1000,
    );
    // The store is told to forget the one that ran out.
    assert_eq!(b.take_persist().len(), 1);
    b.ban("j", &t("203.0.113.6"), Some(5000), 1000);
    // Served again with another term: the old copy must go first.
    b.ban("j", &t("203.0.113.8"), Some(9000), 1000);
    let v = stream(&mut b, "fw", false, 1000);
    assert_eq!(values(&v, "new"), vec!["203.0.113.6", "203.0.113.8"]);
    assert_eq!(values(&v, "deleted"), vec!["203.0.113.5", "203.0.113.8"]);
    // Deletions name the ids bouncers were given.
    let mut ids: Vec<i64> = v["deleted"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, vec![77, 79]);
    // A known bouncer is not told again.
    let v = stream(&mut b, "fw", false, 1001);
    assert!(values(&v, "deleted").is_empty());
}

fn api_with_key() -> Api {
    let dir = std::env::temp_dir().join(format!("pc-bouncer-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("fw.key");
    std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
    let keys = Keys::load(&[path]).unwrap();
    Api::new("127.0.0.1:0".parse().unwrap(), keys, 0)
}

fn get(target: &str, key: Option<&str>) -> Request {
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: x\r\nUser-Agent: test/1\r\n");
    if let Some(k) = key {
        head.push_str(&format!("X-Api-Key: {k}\r\n"));
    }
    head.push_str("\r\n");
    parse_head(head.as_bytes()).unwrap()
}

use super::http::Request;

#[test]
fn a_wrong_or_missing_key_is_refused_and_a_good_one_served() {
    let api = api_with_key();
    let peer = "127.0.0.1".parse().unwrap();
    let r = route(
        &get("/v1/decisions/stream?startup=true", Some("nope")),
        peer,
        &api,
    );
    assert_eq!(r.status, "403 Forbidden");
    let r = route(&get("/v1/decisions/stream?startup=true", None), peer, &api);
    assert_eq!(r.status, "403 Forbidden");
    // A prefix of the key is not the key.
    let r = route(
        &get("/v1/decisions/stream", Some("0123456789abcdef")),
        peer,
        &api,
    );
    assert_eq!(r.status, "403 Forbidden");
    let r = route(
        &get(
            "/v1/decisions/stream?startup=true",
            Some("0123456789abcdef0123"),
        ),
        peer,
        &api,
    );
    assert_eq!(r.status, "200 OK");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v, serde_json::json!({"new": [], "deleted": []}));
    let r = route(
        &get("/v1/decisions?ip=1.2.3.4", Some("0123456789abcdef0123")),
        peer,
        &api,
    );
    assert_eq!((r.status, r.body.as_slice()), ("200 OK", &b"null"[..]));
    let r = route(
        &get("/v1/watchers/login", Some("0123456789abcdef0123")),
        peer,
        &api,
    );
    assert_eq!(r.status, "404 Not Found");
    assert_eq!(api.status()["forbidden"], 3);
}

#[test]
fn hostile_heads_are_refused_cleanly() {
    assert!(parse_head(b"GET /v1/decisions\r\n\r\n").is_err());
    assert!(parse_head(b"GET / HTTP/2\r\n\r\n").is_err());
    assert!(parse_head(b"GET / HTTP/1.1\r\nno-colon\r\n\r\n").is_err());
    assert!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n").is_err());
    assert!(parse_head(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    assert!(parse_head(b"GET /\xff HTTP/1.1\r\n\r\n").is_err());
    assert!(parse_head(b"GET / HTTP/1.7\r\n\r\n").is_err());
    assert!(parse_head(b"GET / HTTP/1.1\r\nContent-Length: +5\r\n\r\n").is_err());
    let r =
        parse_head(b"GET /v1/decisions?ip=%zz&a=%4 HTTP/1.1\r\nUser-Agent: \x1b[31mred\r\n\r\n")
            .unwrap();
    assert_eq!(r.query[0], ("ip".into(), "%zz".into()));
    // Kept as sent; escaped where shown.
    assert_eq!(r.user_agent, "\x1b[31mred");
}

#[test]
fn key_files_are_checked() {
    let dir = std::env::temp_dir().join(format!("pc-bouncer-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let w = |n: &str, s: &str| {
        let p = dir.join(n);
        std::fs::write(&p, s).unwrap();
        p
    };
    let short = w("short.key", "abc\n");
    let spaced = w("spaced.key", "0123456789 abcdef0123\n");
    let good = w("good.key", "0123456789abcdef0123\n");
    let dup = w("dup.key", "0123456789abcdef0123");
    let errs =
        Keys::load(&[short, spaced, good.clone(), dup, dir.join("missing.key")]).unwrap_err();
    let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(errs.len(), 4, "{text:#?}");
    assert!(text[0].contains("short.key") && text[0].contains("at least 16"));
    assert!(text[1].contains("spaced.key"));
    assert!(text[2].contains("dup.key") && text[2].contains("same key"));
    assert!(text[3].contains("missing.key"));
    assert!(Keys::load(&[]).is_err());
    let keys = Keys::load(&[good]).unwrap();
    assert_eq!(keys.check(b"0123456789abcdef0123"), Some("good"));
    assert!(!format!("{keys:?}").contains("0123"));
}

#[test]
fn long_and_permanent_bans_are_served_in_20_day_terms_and_renewed() {
    let day = 24 * 3600;
    let mut b = Book::new(0);
    b.ban("forever", &t("203.0.113.5"), None, 0);
    b.ban("month", &t("203.0.113.6"), Some(30 * day), 0);
    b.ban("hour", &t("203.0.113.7"), Some(3600), 0);
    let v = stream(&mut b, "ipset", true, 0);
    assert_eq!(
        items(&v, "new"),
        vec![
            ("203.0.113.5".into(), "forever".into(), "480h0m0s".into()),
            ("203.0.113.6".into(), "month".into(), "480h0m0s".into()),
            ("203.0.113.7".into(), "hour".into(), "1h0m0s".into()),
        ]
    );
    // Two days before the term runs out (polling daily, as a bouncer
    // polls every few seconds): withdrawn and served again.
    for half in 1..36 {
        let v = stream(&mut b, "ipset", false, half * day / 2);
        assert!(values(&v, "new").is_empty(), "half-day {half}: {v}");
    }
    let v = stream(&mut b, "ipset", false, 18 * day);
    assert_eq!(values(&v, "deleted"), vec!["203.0.113.5", "203.0.113.6"]);
    assert_eq!(
        items(&v, "new"),
        vec![
            ("203.0.113.5".into(), "forever".into(), "480h0m0s".into()),
            // The rest of the month.
            ("203.0.113.6".into(), "month".into(), "288h0m0s".into()),
        ]
    );
    // The month's ban now ends within its term: never renewed again.
    for half in 37..72 {
        let v = stream(&mut b, "ipset", false, half * day / 2);
        assert!(values(&v, "new").is_empty(), "half-day {half}: {v}");
    }
    let v = stream(&mut b, "ipset", false, 36 * day);
    assert_eq!(values(&v, "new"), vec!["203.0.113.5"]);
}

#[test]
fn the_record_keeps_the_longest_copy_a_bouncer_may_hold() {
    let mut b = Book::new(0);
    b.ban("j", &t("192.0.2.200"), Some(3600), 0);
    stream(&mut b, "fw", true, 0);
    b.unban("j", &t("192.0.2.200"), 0);
    b.ban("j", &t("192.0.2.200"), Some(10), 0);
    let persisted = b.take_persist();
    let last = persisted
        .iter()
        .rev()
        .find(|(n, _)| n.to_string() == "192.0.2.200/32")
        .unwrap();
    assert_eq!(last.1.as_ref().map(|h| h.1), Some(3600), "{persisted:?}");
    // Past the short ban and the slack, the long copy is still recorded.
    b.unban("j", &t("192.0.2.200"), 140);
    assert!(b.withdrawn_len(140) > 0);
    assert!(b.take_persist().iter().all(|(_, h)| h.is_some()));
}
