use super::*;
use std::net::IpAddr;

fn parser(name: &str, wrap: Wrap, trusted: &[&str]) -> LineParser {
    let spec = FormatSpec::builtin(name).unwrap();
    let format = spec.compile(&Wanted::all()).unwrap();
    let nets = NetSet::new(trusted.iter().map(|n| n.parse().unwrap()).collect());
    LineParser::new(format, wrap, nets, 65536)
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn custom(spec: FormatSpec) -> LineParser {
    LineParser::new(
        spec.compile(&Wanted::all()).unwrap(),
        Wrap::None,
        NetSet::default(),
        65536,
    )
}

#[test]
fn combined_line() {
    let mut p = parser("combined", Wrap::None, &[]);
    let mut ev = Event::new(&Wanted::all());
    let line = r#"203.0.113.7 - bob [10/Oct/2000:13:55:36 -0700] "GET /a\x22b?x=1 HTTP/1.1" 404 512 "-" "curl/8 \x22quoted\x22""#;
    assert_eq!(p.parse(line, &mut ev), Ok(Outcome::Event));
    assert_eq!(ev.client, ip("203.0.113.7"));
    assert_eq!(ev.time, 971_211_336_000);
    assert_eq!(ev.method(), Some("GET"));
    assert_eq!(ev.path(), Some("/a\"b?x=1"));
    assert_eq!(ev.text(StdField::Protocol), Some("HTTP/1.1"));
    assert_eq!(ev.status, Some(404));
    assert_eq!(ev.bytes, Some(512));
    assert_eq!(ev.text(StdField::Referer), None);
    assert_eq!(ev.user_agent(), Some("curl/8 \"quoted\""));
    assert_eq!(ev.text(StdField::RemoteUser), Some("bob"));
}

#[test]
fn combined_refusals_have_reasons() {
    let mut p = parser("combined", Wrap::None, &[]);
    let mut ev = Event::new(&Wanted::all());
    let cases = [
        ("", reason::FORMAT_MISMATCH),
        ("hello world", reason::FORMAT_MISMATCH),
        (
            r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 2000 5 "-" "-""#,
            reason::BAD_STATUS,
        ),
        (
            r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -9999x] "GET / HTTP/1.1" 200 5 "-" "-""#,
            reason::BAD_TIME,
        ),
        (
            r#"host.example - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-""#,
            reason::BAD_CLIENT,
        ),
        (
            r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-"junk"#,
            reason::FORMAT_MISMATCH,
        ),
        // No time at all: refused, not counted in 1970 (a helper session's
        // finding; `[]` was refused already).
        (
            r#"1.2.3.4 - - [-] "GET / HTTP/1.1" 200 5 "-" "-""#,
            reason::BAD_TIME,
        ),
        (
            r#"1.2.3.4 - - [] "GET / HTTP/1.1" 200 5 "-" "-""#,
            reason::BAD_TIME,
        ),
    ];
    for (line, want) in cases {
        assert_eq!(p.parse(line, &mut ev), Err(want), "{line}");
    }
    // Trailing fields after a space are allowed (combined + extras).
    let line =
        r#"1.2.3.4 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-" "extra" 12ms"#;
    assert_eq!(p.parse(line, &mut ev), Ok(Outcome::Event));
}

#[test]
fn seed_api_audit_format_verbatim() {
    let f = "log_format api_audit '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" $request_length $request_time $upstream_response_time $http_x_api_key_id';";
    let (pieces, escape) = nginx::compile(f, Escape::Nginx, "http_x_api_key_id").unwrap();
    let mut wanted = Wanted::all();
    let upstream = wanted.field("upstream_response_time");
    let spec = FormatSpec::Template {
        pieces,
        escape,
        bare_dash: false,
    };
    let mut p = LineParser::new(
        spec.compile(&wanted).unwrap(),
        Wrap::None,
        NetSet::default(),
        65536,
    );
    let mut ev = Event::new(&wanted);
    let line = r#"198.51.100.4 - - [22/Nov/2026:08:00:00 +0000] "POST /v1/orders HTTP/1.1" 401 48 "-" "python-requests/2.31" 312 0.004 0.003 key_7f3a"#;
    p.parse(line, &mut ev).unwrap();
    assert_eq!(ev.client, ip("198.51.100.4"));
    assert_eq!(ev.status, Some(401));
    assert_eq!(ev.request_time, Some(0.004));
    assert_eq!(ev.api_key(), Some("key_7f3a"));
    let mut s = String::new();
    assert_eq!(ev.value(&upstream, &mut s), Some("0.003"));
    // `-` means absent.
    let line = r#"198.51.100.4 - - [22/Nov/2026:08:00:00 +0000] "GET / HTTP/1.1" 200 48 "-" "-" 312 0.004 - -"#;
    p.parse(line, &mut ev).unwrap();
    assert_eq!(ev.api_key(), None);
}

#[test]
fn json_escaped_nginx_format() {
    let f = r#"log_format j escape=json '{"ip":"$remote_addr","t":"$time_iso8601","r":"$request","s":$status,"ua":"$http_user_agent"}';"#;
    let (pieces, escape) = nginx::compile(f, Escape::Nginx, "x").unwrap();
    let mut p = custom(FormatSpec::Template {
        pieces,
        escape,
        bare_dash: false,
    });
    let mut ev = Event::new(&Wanted::all());
    let line = r#"{"ip":"192.0.2.1","t":"2026-11-22T08:00:00+00:00","r":"GET / HTTP/1.1","s":403,"ua":"x\",\"ip\":\"6.6.6.6"}"#;
    p.parse(line, &mut ev).unwrap();
    assert_eq!(ev.client, ip("192.0.2.1"));
    assert_eq!(ev.status, Some(403));
    assert_eq!(ev.user_agent(), Some(r#"x","ip":"6.6.6.6"#));
}

#[test]
fn envoy_default_text_format() {
    let mut p = parser("envoy", Wrap::None, &[]);
    let mut ev = Event::new(&Wanted::all());
    let line = r#"[2016-04-15T20:17:00.310Z] "POST /api/v1/locations HTTP/2" 204 - 154 0 226 100 "10.0.35.28" "nsq2http" "cc21d9b0" "locations" "tcp://10.0.2.1:80""#;
    p.parse(line, &mut ev).unwrap();
    assert_eq!(ev.client, ip("10.0.35.28"));
    assert_eq!(ev.status, Some(204));
    assert_eq!(ev.method(), Some("POST"));
    assert_eq!(ev.path(), Some("/api/v1/locations"));
    assert_eq!(ev.user_agent(), Some("nsq2http"));
    assert_eq!(ev.request_time, Some(0.226));
    assert_eq!(ev.time, 1_460_751_420_310);
}

#[test]
fn envoy_forged_quote_is_refused_not_misread() {
    let mut p = parser("envoy", Wrap::None, &[]);
    let mut ev = Event::new(&Wanted::all());
    // The client sent `X-Forwarded-For: 9.9.9.9" "x`; Envoy appended its peer.
    let line = r#"[2016-04-15T20:17:00.310Z] "GET / HTTP/1.1" 401 - 0 0 1 - "9.9.9.9" "x, 203.0.113.5" "ua" "id" "host" "up""#;
    assert_eq!(p.parse(line, &mut ev), Err(reason::AMBIGUOUS_QUOTES));
}

#[test]
fn envoy_json_behind_cri() {
    let mut p = parser("envoy_json", Wrap::Cri, &[]);
    let mut ev = Event::new(&Wanted::all());
    let line = r#"2025-12-31T17:37:40.493035218+01:00 stdout F {"start_time":"2025-12-31T16:37:40.479Z","method":"GET","x-envoy-origin-path":"/admin","response_code":404,"user-agent":"zgrab","downstream_remote_address":"[fd00::5a24]:43000"}"#;
    p.parse(line, &mut ev).unwrap();
    assert_eq!(ev.client, ip("fd00::5a24"));
    assert_eq!(ev.status, Some(404));
    assert_eq!(ev.path(), Some("/admin"));
}

#[test]
fn kong_dotted_paths() {
    let mut p = parser("kong_json", Wrap::None, &[]);
    let mut ev = Event::new(&Wanted::all());
    let line = r#"{"client_ip":"::ffff:192.0.2.9","started_at":1700000000123,"request":{"method":"GET","uri":"/v1/x","headers":{"user-agent":"k6","x-api-key-id":"key-1"}},"response":{"status":429,"size":10}}"#;
    p.parse(line, &mut ev).unwrap();
    assert_eq!(ev.client, ip("192.0.2.9"));
    assert_eq!(ev.status, Some(429));
    assert_eq!(ev.time, 1_700_000_000_123);
    assert_eq!(ev.api_key(), Some("key-1"));
    assert_eq!(p.parse("[1,2]", &mut ev), Err(reason::NOT_JSON));
}

#[test]
fn nginx_error_log_regex() {
    let mut p = parser("nginx_error", Wrap::None, &[]);
    let mut ev = Event::new(&Wanted::all());
    let line = r#"2021/12/02 11:53:15 [error] 4065777#4065777: *42952950 limiting requests, excess: 5.428 by zone "default_root_zone", client: ::1, server: , request: "GET / HTTP/1.1", host: "la03.d.sb""#;
    p.parse(line, &mut ev).unwrap();
    assert_eq!(ev.client, ip("::1"));
    assert_eq!(ev.path(), Some("/"));
    assert_eq!(p.parse("nope", &mut ev), Err(reason::NO_MATCH));
}

#[test]
fn trusted_proxies_pick_the_real_client() {
    let mut p = parser("combined", Wrap::None, &["10.0.0.0/8"]);
    let mut ev = Event::new(&Wanted::all());
    let line = r#"6.6.6.6, 198.51.100.7, 10.0.0.1 - - [10/Oct/2000:13:55:36 -0700] "GET / HTTP/1.1" 200 5 "-" "-""#;
    p.parse(line, &mut ev).unwrap();
    assert_eq!(ev.client, ip("198.51.100.7"));
}

#[test]
fn request_lines_split_the_same_in_every_format() {
    use super::event::split_request;
    assert_eq!(
        split_request("GET /a?b HTTP/1.1"),
        Some(("GET", "/a?b", Some("HTTP/1.1")))
    );
    assert_eq!(
        split_request("GET /a b HTTP/2"),
        Some(("GET", "/a b", Some("HTTP/2")))
    );
    assert_eq!(split_request("GET /a"), Some(("GET", "/a", None)));
    assert_eq!(split_request("garbage"), None);
}

/// Values nginx writes without escaping spaces cannot shift later fields.
#[test]
fn unescaped_user_names_do_not_shift_fields() {
    let mut p = parser("combined", Wrap::None, &[]);
    let mut ev = Event::new(&Wanted::all());
    for user in [
        "a [b",
        "a [b] \\x22",
        "x [23/Nov/2026:10:00:00 +0000] ",
        " [ [ [",
        "-",
    ] {
        let line = format!(
            r#"198.51.100.9 - {user} [23/Nov/2026:10:00:01 +0000] "POST /login HTTP/1.1" 401 5 "-" "ua""#
        );
        assert_eq!(p.parse(&line, &mut ev), Ok(Outcome::Event), "{line}");
        assert_eq!(ev.client, ip("198.51.100.9"));
        assert_eq!(ev.status, Some(401));
        assert_eq!(ev.time, 1_795_428_001_000, "{line}");
    }
    // A user name made of many near-misses is still read, within the budget.
    let user = "a [b".repeat(500);
    let line = format!(
        r#"198.51.100.9 - {user} [23/Nov/2026:10:00:01 +0000] "POST /login HTTP/1.1" 401 5 "-" "ua""#
    );
    assert_eq!(p.parse(&line, &mut ev), Ok(Outcome::Event));
    assert_eq!(ev.status, Some(401));
}

/// `$upstream_*` lists (retries, upstream groups) keep the key id in place.
#[test]
fn upstream_lists_keep_the_trailing_key() {
    let mut p = parser("api_audit", Wrap::None, &[]);
    let mut ev = Event::new(&Wanted::all());
    let head = r#"198.51.100.9 - - [23/Nov/2026:10:00:01 +0000] "GET /v1/x HTTP/1.1" 200 5 "-" "ua" 607 0.007"#;
    for (upstream, key) in [
        ("0.000, 0.001", "key_a"),
        ("0.000 : 0.001", "key_a"),
        ("0.000, 0.001 : 0.002, -", "key_a"),
        ("-", "key_a"),
        ("0.005", "key with spaces"),
        ("0.005", ": 0.001"),
        ("0.000, 0.001", "0.002"),
    ] {
        let line = format!("{head} {upstream} {key}");
        assert_eq!(p.parse(&line, &mut ev), Ok(Outcome::Event), "{line}");
        assert_eq!(ev.api_key(), Some(key), "{line}");
        assert_eq!(ev.status, Some(200));
    }
    let line = format!("{head} 0.001 -");
    assert_eq!(p.parse(&line, &mut ev), Ok(Outcome::Event));
    assert_eq!(ev.api_key(), None);
}

#[test]
fn envoy_status_zero_is_a_status() {
    let mut p = parser("envoy", Wrap::None, &[]);
    let mut ev = Event::new(&Wanted::all());
    let line_default = r#"[2026-11-23T10:00:00.000Z] "GET /reviews/0 HTTP/1.1" 0 DC 0 0 5 - "203.0.113.4" "curl/8" "id" "reviews:9080" "-""#;
    assert_eq!(p.parse(line_default, &mut ev), Ok(Outcome::Event));
    assert_eq!(ev.status, Some(0));
    assert_eq!(ev.client, ip("203.0.113.4"));
}

#[test]
fn traefik_clf_with_bare_dash_fields() {
    let mut p = parser("traefik_clf", Wrap::None, &[]);
    let mut ev = Event::new(&Wanted::all());
    for line in [
        r#"172.17.1.3 - - [24/Nov/2024:13:40:15 +0000] "GET /api/users HTTP/1.1" 401 450 "-" "curl/7.68.0" 300 "root@docker -> leaf@docker" "http://172.17.0.4:80" 25ms"#,
        r#"172.17.1.3 - - [24/Nov/2024:13:40:15 +0000] "GET /api/users HTTP/1.1" 401 450 - "curl/7.68.0" 300 - - 25ms"#,
    ] {
        assert_eq!(p.parse(line, &mut ev), Ok(Outcome::Event), "{line}");
        assert_eq!(ev.client, ip("172.17.1.3"));
        assert_eq!(ev.status, Some(401));
        assert_eq!(ev.user_agent(), Some("curl/7.68.0"));
        assert_eq!(ev.request_time, Some(0.025));
    }
}
