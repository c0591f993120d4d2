//! Geo and network enrichment against real MaxMind DB files: GeoLite2 City,
//! Country and ASN, and ip-location-db's flat `geo-whois-asn-country`.
//! `.ci/run` fetches them from the npm registry into
//! `$PORTCULLIS_GEOIP_DIR` (default `/var/cache/portcullis-ci/geoip`); in CI
//! (`CI` set) a missing database fails the test.
//!
//! Addresses are chosen by looking them up in the same databases at test
//! time, so a new database version cannot silently turn a test vacuous.

mod common;
use common::*;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Country code of `ip` in a MaxMind-layout database.
fn country_of(db: &maxminddb::Reader<Vec<u8>>, ip: &str) -> Option<String> {
    let ip: IpAddr = ip.parse().unwrap();
    db.lookup(ip)
        .ok()?
        .decode_path::<String>(&maxminddb::path!["country", "iso_code"])
        .ok()?
}

/// Addresses around well-known networks of several countries, by country
/// (as the database at hand says).
fn addresses_by_country(db: &maxminddb::Reader<Vec<u8>>) -> BTreeMap<String, Vec<String>> {
    let bases = [
        "8.8.8",
        "81.2.69",
        "202.12.27",
        "77.88.8",
        "200.160.2",
        "131.188.0",
        "129.132.0",
        "193.0.14",
    ];
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for base in bases {
        for last in 1..=12 {
            let ip = format!("{base}.{last}");
            if let Some(c) = country_of(db, &ip) {
                out.entry(c).or_default().push(ip);
            }
        }
    }
    out
}

/// An `api_audit` line: `ip` using API key `key`, status `status`.
fn line(ip: &str, sec: u32, status: u16, key: &str) -> String {
    format!(
        "{ip} - - [22/Nov/2026:08:01:{sec:02} +0000] \"GET /v1/orders HTTP/1.1\" {status} 512 \"-\" \"okhttp/4\" 100 0.007 0.007 {key}\n"
    )
}

/// A config dir with the repository's filters and jails and a `[geoip]` section.
fn config_with(geo: &str, jails: &str) -> TempDir {
    let dir = TempDir::new("geo");
    let d = dir.path().display().to_string();
    dir.write(
        "conf/portcullis.toml",
        &format!(
            "state_dir = \"{d}/state\"\ncontrol_socket = \"{d}/ctl.sock\"\n{geo}\n[defaults]\nformat = \"api_audit\"\n"
        ),
    );
    for sub in ["filters.d", "jails.d"] {
        for e in std::fs::read_dir(repo().join(sub)).unwrap() {
            let p = e.unwrap().path();
            let text = std::fs::read_to_string(&p).unwrap();
            dir.write(
                &format!("conf/{sub}/{}", p.file_name().unwrap().to_string_lossy()),
                &text,
            );
        }
    }
    dir.write("conf/jails.d/test.toml", jails);
    dir
}

/// Adds a deny-list action `revoke` (it revokes API keys) to a test config.
fn add_action(dir: &TempDir) {
    let path = dir.path().join("conf/portcullis.toml");
    let main = std::fs::read_to_string(&path).unwrap();
    let d = dir.path().display();
    std::fs::write(
        path,
        main.replace(
            "[defaults]",
            &format!(
                "[actions.revoke]\ntype = \"denylist\"\npath = \"{d}/revoked.map\"\n\n[defaults]"
            ),
        ),
    )
    .unwrap();
}

/// `portcullis check` on a test config, which must pass; (stdout, stderr).
fn check_ok(dir: &TempDir) -> (String, String) {
    let out = bin()
        .args(["check", "--config", &conf(dir)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    (stdout(&out), stderr(&out))
}

/// `portcullis replay --json` of `log` with `jails` on a test config.
fn replay_jails(
    dir: &TempDir,
    jails: &[&str],
    log: &std::path::Path,
) -> (Vec<serde_json::Value>, serde_json::Value) {
    let c = conf(dir);
    let mut args = vec!["--config", &c];
    args.extend(jails.iter().flat_map(|j| ["--jail", *j]));
    args.push(log.to_str().unwrap());
    replay_json(&args)
}

fn conf(dir: &TempDir) -> String {
    dir.path().join("conf").display().to_string()
}

/// The seed's rule: one key from 4 regions in 5 minutes is revoked; a busy
/// key used from many addresses in 3 countries is not (though the
/// distinct-client jail fires on it: the difference the issue is about).
/// Also: evidence carries the enrichment, and parsing on every core decides
/// exactly what one thread does.
#[test]
fn a_key_from_four_countries_is_revoked_and_one_from_three_is_not() {
    let Some(g) = geo_dir() else { return };
    let country_db = g.join("GeoLite2-Country.mmdb");
    let db = maxminddb::Reader::open_readfile(&country_db).unwrap();
    let by_country = addresses_by_country(&db);
    assert!(by_country.len() >= 4, "{by_country:?}");
    let mut log = String::new();
    // Key A: one address in each of four countries, a few times each.
    let four: Vec<&String> = by_country.values().take(4).map(|v| &v[0]).collect();
    for (i, ip) in four.iter().enumerate() {
        log += &line(ip, i as u32, 200, "key_four");
    }
    // Key B: every address of three countries (dozens), within a minute.
    let three: Vec<&String> = by_country.values().skip(1).take(3).flatten().collect();
    assert!(three.len() >= 20, "{three:?}");
    for (i, ip) in three.iter().enumerate() {
        log += &line(ip, 10 + (i as u32 % 40), 200, "key_three");
    }
    let dir = config_with(
        &format!(
            "[geoip]\ncountry_db = \"{}\"\nasn_db = \"{}\"\n",
            country_db.display(),
            g.join("GeoLite2-ASN.mmdb").display()
        ),
        "",
    );
    let log_path = dir.write("t.log", &log);
    let c = conf(&dir);
    let args = |threads: &str| {
        [
            "--config",
            &c,
            "--threads",
            threads,
            "--jail",
            "leaked-api-key-regions",
            "--jail",
            "leaked-api-key",
            log_path.to_str().unwrap(),
        ]
        .map(String::from)
    };
    let a1 = args("1");
    let (ds, summary) = replay_json(&a1.iter().map(String::as_str).collect::<Vec<_>>());
    let fired: Vec<(String, String)> = ds
        .iter()
        .map(|d| {
            (
                d["jail"].as_str().unwrap().into(),
                d["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert!(
        fired.contains(&("leaked-api-key-regions".into(), "key:key_four".into())),
        "{fired:?}"
    );
    assert!(
        !fired.contains(&("leaked-api-key-regions".into(), "key:key_three".into())),
        "{fired:?}"
    );
    assert!(
        fired.contains(&("leaked-api-key".into(), "key:key_three".into())),
        "{fired:?}"
    );
    assert_eq!(
        summary["jails"]["leaked-api-key-regions"]["decisions"], 1,
        "{summary}"
    );
    // The evidence of the regions decision names four countries.
    let d = ds
        .iter()
        .find(|d| d["jail"] == "leaked-api-key-regions")
        .unwrap();
    let countries: std::collections::BTreeSet<&str> = d["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["geo"]["country"].as_str().unwrap())
        .collect();
    assert_eq!(countries.len(), 4, "{d}");
    assert!(d["evidence"][0]["geo"]["asn"].as_u64().is_some(), "{d}");
    // Every core: the same decisions, evidence included.
    let a2 = args("2");
    let (ds2, _) = replay_json(&a2.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(ds, ds2);
    // The human output shows the enrichment beside each evidence line.
    let out = bin()
        .arg("replay")
        .args(&a1[..a1.len() - 1])
        .arg(&log_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.lines()
            .any(|l| l.contains(", byte 0 [") && l.contains(" AS")),
        "{text}"
    );
}

/// With a city database a region is the country and its subdivision: two
/// US states are two regions.
#[test]
fn regions_come_from_the_city_database() {
    let Some(g) = geo_dir() else { return };
    let dir = config_with(
        &format!(
            "[geoip]\ncountry_db = \"{}\"\n",
            g.join("GeoLite2-City.mmdb").display()
        ),
        "[regions]\nfilter = \"api-request\"\nkey = \"api_key\"\ndistinct = \"region\"\nmaxretry = 2\ntarget = \"key\"\n",
    );
    // 128.32.0.1 (Berkeley) and 18.0.0.1 (MIT): US-CA and US-MA.
    let log = line("128.32.0.1", 1, 200, "k_states") + &line("18.0.0.1", 2, 200, "k_states");
    let log_path = dir.write("t.log", &log);
    let (ds, _) = replay_jails(&dir, &["regions"], &log_path);
    assert_eq!(ds.len(), 1, "{ds:?}");
    let regions: Vec<&str> = ds[0]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["geo"]["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions, ["US-CA", "US-MA"]);
}

/// A country alone (an address the database places in `US` only) is not a
/// region apart from a subdivision of it: `US` and `US-CA` are one region,
/// so a key seen from 8.8.8.8 (US), Berkeley (US-CA), GB-ENG and JP has
/// three regions, not four, and is not revoked.
#[test]
fn a_country_alone_is_not_a_region_apart_from_its_subdivision() {
    let Some(g) = geo_dir() else { return };
    let dir = config_with(
        &format!(
            "[geoip]\ncountry_db = \"{}\"\n",
            g.join("GeoLite2-City.mmdb").display()
        ),
        "",
    );
    let mut log = String::new();
    for (i, ip) in ["8.8.8.8", "128.32.0.1", "81.2.69.142", "202.12.27.33"]
        .iter()
        .enumerate()
    {
        log += &line(ip, i as u32, 200, "k_three");
    }
    // A fourth region does count.
    for (i, ip) in ["128.32.0.1", "18.0.0.1", "81.2.69.142", "202.12.27.33"]
        .iter()
        .enumerate()
    {
        log += &line(ip, 10 + i as u32, 200, "k_four");
    }
    let log_path = dir.write("t.log", &log);
    let (ds, _) = replay_jails(&dir, &["leaked-api-key-regions"], &log_path);
    let targets: Vec<&str> = ds.iter().map(|d| d["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["key:k_four"]);
}

/// `country` filters, with `not`, on ip-location-db's flat layout; an
/// IPv4-mapped client (which that database has no alias for) is looked up
/// as the IPv4 address it is, and a private address has no country.
#[test]
fn country_filters_on_a_flat_database() {
    let Some(g) = geo_dir() else { return };
    let flat = g.join("geo-whois-asn-country.mmdb");
    let dir = config_with(
        &format!("[geoip]\ncountry_db = \"{}\"\n", flat.display()),
        "[from-ru-jp]\nfilter = \"ru-jp\"\nmaxretry = 2\n\n[outside-us]\nfilter = \"outside-us\"\nmaxretry = 2\n",
    );
    dir.write(
        "conf/filters.d/geo.toml",
        "[ru-jp]\nstatus = 401\ncountry = [\"ru\", \"JP\"]\n\n[outside-us]\nstatus = 401\nnot = { country = \"US\" }\n",
    );
    let mut log = String::new();
    for (ip, n) in [
        ("77.88.8.8", 2),
        ("::ffff:202.12.27.33", 2),
        ("8.8.8.8", 3),
        ("10.1.2.3", 2),
    ] {
        for i in 0..n {
            log += &line(ip, i, 401, "-");
        }
    }
    let log_path = dir.write("t.log", &log);
    let (ds, _) = replay_jails(&dir, &["from-ru-jp", "outside-us"], &log_path);
    let mut got: Vec<(String, String)> = ds
        .iter()
        .map(|d| {
            (
                d["jail"].as_str().unwrap().into(),
                d["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    got.sort();
    let want: Vec<(String, String)> = [
        ("from-ru-jp", "202.12.27.33"),
        ("from-ru-jp", "77.88.8.8"),
        // A private address is in no country, so it is outside the US.
        ("outside-us", "10.1.2.3"),
        ("outside-us", "202.12.27.33"),
        ("outside-us", "77.88.8.8"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
}

/// `key = "asn"`: counting per network operator (distinct failing clients
/// of one AS), and an `asn` filter.
#[test]
fn counting_per_network_operator() {
    let Some(g) = geo_dir() else { return };
    let dir = config_with(
        &format!(
            "[geoip]\nasn_db = \"{}\"\n",
            g.join("GeoLite2-ASN.mmdb").display()
        ),
        "[per-asn]\nfilter = \"auth-failure\"\nkey = \"asn\"\ndistinct = \"client\"\nmaxretry = 3\ntarget = \"key\"\n\n[yandex]\nfilter = \"yandex\"\nmaxretry = 2\n",
    );
    dir.write(
        "conf/filters.d/yandex.toml",
        "[yandex]\nstatus = 401\nasn = 13238\n",
    );
    let mut log = String::new();
    for ip in ["8.8.8.8", "8.8.4.4", "142.250.0.1"] {
        log += &line(ip, 1, 401, "-");
    }
    for ip in ["77.88.8.8", "77.88.8.1"] {
        log += &line(ip, 2, 401, "-");
    }
    log += &line("77.88.8.8", 3, 401, "-");
    let log_path = dir.write("t.log", &log);
    let (ds, _) = replay_jails(&dir, &["per-asn", "yandex"], &log_path);
    let got: Vec<(String, String)> = ds
        .iter()
        .map(|d| {
            (
                d["jail"].as_str().unwrap().into(),
                d["target"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("per-asn".to_string(), "key:15169".to_string()),
            ("yandex".to_string(), "77.88.8.8".to_string())
        ]
    );
    assert_eq!(ds[0]["evidence"][0]["geo"]["as_org"], "Google LLC");
}

/// `key = ["api_key", "country"]`: a key counted per country it is used
/// from (three requests from one country fire; three spread over three
/// countries do not).
#[test]
fn a_key_and_a_country_together() {
    let Some(g) = geo_dir() else { return };
    let dir = config_with(
        &format!(
            "[geoip]\ncountry_db = \"{}\"\n",
            g.join("GeoLite2-Country.mmdb").display()
        ),
        "[per-key-country]\nfilter = \"api-request\"\nkey = [\"api_key\", \"country\"]\nmaxretry = 3\ntarget = \"key\"\n",
    );
    let mut log = String::new();
    for ip in ["8.8.8.8", "8.8.4.4", "18.0.0.1"] {
        log += &line(ip, 1, 200, "k_us");
    }
    for ip in ["8.8.8.8", "77.88.8.8", "202.12.27.33"] {
        log += &line(ip, 2, 200, "k_spread");
    }
    let log_path = dir.write("t.log", &log);
    let (ds, _) = replay_jails(&dir, &["per-key-country"], &log_path);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_eq!(ds[0]["target"], "key:k_us");
    assert_eq!(ds[0]["key"], "k_us|US");
    // The other order revokes the API key too, never `US`.
    let jails = dir.path().join("conf/jails.d/test.toml");
    let text = std::fs::read_to_string(&jails).unwrap();
    std::fs::write(
        &jails,
        text.replace("[\"api_key\", \"country\"]", "[\"country\", \"api_key\"]"),
    )
    .unwrap();
    let (ds, _) = replay_jails(&dir, &["per-key-country"], &log_path);
    assert_eq!(ds.len(), 1, "{ds:?}");
    assert_eq!(ds[0]["target"], "key:k_us");
    assert_eq!(ds[0]["key"], "US|k_us");
}

/// A missing, unreadable or wrong-type database is a `check` error with
/// its path and reason; so is a jail reading a field whose database is not
/// configured. `replay` refuses to run without its databases.
#[test]
fn check_names_the_database_and_what_is_wrong() {
    let Some(g) = geo_dir() else { return };
    let junk_dir = TempDir::new("geo-junk");
    let junk = junk_dir.write("junk.mmdb", "not a database at all");
    let asn = g.join("GeoLite2-ASN.mmdb");
    let cases = [
        (
            format!(
                "[geoip]\ncountry_db = \"{}/gone.mmdb\"\n",
                junk_dir.path().display()
            ),
            vec![
                "country_db".to_string(),
                "gone.mmdb".into(),
                "No such file".into(),
            ],
        ),
        (
            format!("[geoip]\nasn_db = \"{}\"\n", junk.display()),
            vec!["junk.mmdb".into(), "not a readable MaxMind DB".into()],
        ),
        (
            format!("[geoip]\ncountry_db = \"{}\"\n", asn.display()),
            vec![
                "GeoLite2-ASN.mmdb".into(),
                "a `GeoLite2-ASN` database".into(),
                "`country_db` needs a country or city database".into(),
            ],
        ),
    ];
    // A damaged copy (a zeroed block inside the search tree, metadata and
    // the start intact: most addresses still answer) is refused by `check`.
    let mut damaged = std::fs::read(g.join("GeoLite2-Country.mmdb")).unwrap();
    let n = damaged.len();
    damaged[n / 4..n / 2].fill(0);
    let damaged_path = junk_dir.path().join("damaged.mmdb");
    std::fs::write(&damaged_path, damaged).unwrap();
    let cases = cases.into_iter().chain([
        (
            format!("[geoip]\ncountry_db = \"{}\"\n", damaged_path.display()),
            vec![
                "damaged.mmdb".to_string(),
                "damaged MaxMind DB file: node".into(),
                "points back to the root".into(),
            ],
        ),
        (
            "[geoip]\ncountry_db = \"GeoLite2-City.mmdb\"\n".to_string(),
            vec!["use an absolute path".to_string()],
        ),
    ]);
    for (geo, want) in cases {
        let dir = config_with(&geo, "");
        let err = fails("check", &dir);
        for w in &want {
            assert!(err.contains(w.as_str()), "want {w:?} in: {err}");
        }
        // A replay whose jails read a broken database refuses to run; one
        // whose jails do not says so and runs.
        let log_path = dir.write("t.log", &line("8.8.8.8", 1, 200, "k"));
        let out = bin()
            .args(["replay", "--config", &conf(&dir)])
            .arg(&log_path)
            .output()
            .unwrap();
        assert!(stderr(&out).contains("[geoip]"), "{}", stderr(&out));
        let reads_it = geo.contains("country_db");
        assert_eq!(out.status.success(), !reads_it, "{}", stderr(&out));
    }
    // `key = "asn"` names networks: it may not feed an action that revokes
    // keys (the bundled defaults add `firewall`; a deny-list would revoke
    // `15169` as an API key id).
    let dir = config_with(
        &format!("[geoip]\nasn_db = \"{}\"\n", asn.display()),
        "[per-asn]\nfilter = \"auth-failure\"\nkey = \"asn\"\ntarget = \"key\"\naction = [\"log\", \"revoke\"]\n",
    );
    add_action(&dir);
    let err = fails("check", &dir);
    assert!(
        err.contains("jail `per-asn`")
            && err.contains("action `revoke` would revoke as an API key"),
        "{err}"
    );
    // An IPv4-only database is accepted, with a warning about IPv6 clients.
    let dir = config_with(
        &format!(
            "[geoip]\ncountry_db = \"{}\"\n",
            g.join("geo-whois-asn-country-ipv4.mmdb").display()
        ),
        "",
    );
    let (_, err) = check_ok(&dir);
    assert!(
        err.contains("an IPv4-only database: IPv6 clients get no country"),
        "{err}"
    );
    // A jail whose database is not named is off until it is, and `check`
    // says so: `asn` with only a country database, and the bundled region
    // jail without any `[geoip]`.
    let dir = config_with(
        &format!(
            "[geoip]\ncountry_db = \"{}\"\n",
            g.join("GeoLite2-Country.mmdb").display()
        ),
        "[per-asn]\nfilter = \"auth-failure\"\nkey = \"asn\"\ntarget = \"key\"\n",
    );
    let (out, _) = check_ok(&dir);
    assert!(
        out.contains("off until [geoip] names their database: per-asn (asn_db)"),
        "{out}"
    );
    let dir = config_with("", "");
    let (out, _) = check_ok(&dir);
    assert!(
        out.contains("off until [geoip] names their database: leaked-api-key-regions (country_db)"),
        "{out}"
    );
    let log_path = dir.write("t.log", &line("8.8.8.8", 1, 200, "k"));
    let out = bin()
        .args([
            "replay",
            "--config",
            &conf(&dir),
            "--jail",
            "leaked-api-key-regions",
        ])
        .arg(&log_path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("reads `region`, which needs `country_db` in `[geoip]`"),
        "{err}"
    );
}

/// The live daemon: a database missing at start is said in `status` and
/// loaded once it appears; a replaced file is used without a reload and
/// without losing counts; a deleted one leaves the last good version in use
/// (said in `status`); incidents carry the evidence's country and network.
#[test]
fn the_daemon_swaps_databases_without_losing_state() {
    let Some(g) = geo_dir() else { return };
    let dir = Daemon::config("geo-live", 1000, "");
    let geo_path = dir.path().join("geo/country.mmdb");
    std::fs::create_dir_all(geo_path.parent().unwrap()).unwrap();
    let port = free_port();
    add_to_main(
        &dir,
        "",
        &format!(
            "[geoip]\ncountry_db = \"{}\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n",
            geo_path.display()
        ),
    );
    let problem_metric = || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.lines()
            .find_map(|l| l.strip_prefix("portcullis_geoip_database_problem{db=\"country_db\"} "))
            .map(str::to_string)
    };
    let log = dir.path().join("logs/access.log").display().to_string();
    dir.write(
        "conf/filters.d/geo.toml",
        "[in-us]\nstatus = 401\ncountry = \"US\"\n\n[in-ca]\nstatus = 401\nregion = \"US-CA\"\n\n\
         [outside-gb]\nstatus = 401\nnot = { country = \"GB\" }\n",
    );
    dir.write(
        "conf/jails.d/geo.toml",
        &format!(
            "[us]\nfilter = \"in-us\"\nlogpath = \"{log}\"\nmaxretry = 4\nfindtime = \"1h\"\n\n\
             [ca]\nfilter = \"in-ca\"\nlogpath = \"{log}\"\nmaxretry = 2\nfindtime = \"1h\"\n\n\
             [outside-gb]\nfilter = \"outside-gb\"\nlogpath = \"{log}\"\nmaxretry = 100\nfindtime = \"1h\"\n"
        ),
    );
    let d = Daemon::start(dir);
    let geo_status = |d: &Daemon| d.json(&["status"])["geoip"][0].clone();
    // Missing at start: the daemon runs and says so.
    let st = geo_status(&d);
    assert!(
        st["problem"].as_str().unwrap().contains("country.mmdb"),
        "{st}"
    );
    let human = stdout(&d.cli(&["status"]));
    assert!(human.contains("geoip country_db: PROBLEM since"), "{human}");
    assert_eq!(problem_metric().as_deref(), Some("1"));
    // Without its database a `not country` jail is paused, not fooled into
    // counting the very clients it exempts (a GB address).
    d.append(&attack_line("81.2.69.142").repeat(3));
    wait_for(
        || d.jail("outside-gb")["no_database"] == 3,
        "the paused jail to skip 3 lines",
    );
    assert_eq!(d.jail("outside-gb")["matches"], 0);
    assert!(d.bans().is_empty(), "{:?}", d.bans());
    // It appears (written elsewhere, renamed into place): loaded.
    let put = |from: &str| {
        let tmp = geo_path.with_extension("tmp");
        std::fs::copy(g.join(from), &tmp).unwrap();
        std::fs::rename(&tmp, &geo_path).unwrap();
    };
    put("GeoLite2-Country.mmdb");
    wait_for(
        || geo_status(&d)["database_type"] == "GeoLite2-Country",
        "the country database to load",
    );
    assert!(geo_status(&d)["problem"].is_null());
    assert_eq!(problem_metric().as_deref(), Some("0"));
    // Berkeley with a country database: in the US, region only "US".
    d.append(&attack_line("128.32.0.1").repeat(2));
    d.wait_matches("us", 2);
    assert_eq!(d.jail("ca")["matches"], 0);
    // Replaced by the city database: no reload, the counts stay.
    put("GeoLite2-City.mmdb");
    wait_for(
        || geo_status(&d)["database_type"] == "GeoLite2-City",
        "the city database to replace it",
    );
    d.append(&attack_line("128.32.0.1").repeat(2));
    wait_for(|| d.bans().len() == 2, "two bans");
    assert_eq!(d.bans(), ["ca 128.32.0.1 2", "us 128.32.0.1 4"]);
    // Deleted: the city database stays in use, and status says so.
    std::fs::remove_file(&geo_path).unwrap();
    wait_for(
        || {
            geo_status(&d)["problem"]
                .as_str()
                .is_some_and(|p| p.contains("gone"))
        },
        "status to say the file is gone",
    );
    assert!(
        geo_status(&d)["problem"]
            .as_str()
            .unwrap()
            .contains("`GeoLite2-City` database loaded at"),
        "{}",
        geo_status(&d)
    );
    d.append(&attack_line("171.64.1.1").repeat(2));
    wait_for(|| d.bans().len() == 3, "a third ban");
    assert!(d.bans().contains(&"ca 171.64.1.1 2".to_string()));
    // The incident's evidence carries the region and the human view shows it.
    let incidents = d.json(&["incidents"]);
    let id = incidents
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["target"]["value"] == "171.64.1.1")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let inc = d.json(&["incidents", "show", &id]);
    assert_eq!(inc["evidence"][0]["geo"]["region"], "US-CA", "{inc}");
    let human = stdout(&d.cli(&["incidents", "show", &id]));
    assert!(human.contains("[US-CA]"), "{human}");
    // A reload whose changed [geoip] does not load is refused whole: the
    // running databases stay.
    let main_path = d.dir.path().join("conf/portcullis.toml");
    let main = std::fs::read_to_string(&main_path).unwrap();
    std::fs::write(
        &main_path,
        main.replace("geo/country.mmdb", "geo/typo.mmdb"),
    )
    .unwrap();
    let out = d.cli(&["reload"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("typo.mmdb"), "{}", stderr(&out));
    assert_eq!(geo_status(&d)["database_type"], "GeoLite2-City");
    // The GB-exempting jail counted the US lines only, never the GB ones
    // it skipped while it had no database.
    assert_eq!(d.jail("outside-gb")["matches"], 6);
    assert_eq!(d.jail("outside-gb")["no_database"], 3);
}

/// A flood of distinct spoofable addresses cannot grow the lookup cache
/// past its bound or slow detection down to a stop: 200,000 addresses
/// through a 1,000-address cache, every line still enriched and counted.
#[test]
fn a_flood_of_addresses_is_enriched_within_the_cache_bound() {
    let Some(g) = geo_dir() else { return };
    let dir = config_with(
        &format!(
            "[geoip]\ncountry_db = \"{}\"\ncache_size = 1000\n",
            g.join("geo-whois-asn-country.mmdb").display()
        ),
        "[outside-us]\nfilter = \"outside-us\"\nmaxretry = 1000000\n",
    );
    dir.write(
        "conf/filters.d/geo.toml",
        "[outside-us]\nstatus = 401\nnot = { country = \"US\" }\n",
    );
    let mut log = String::new();
    let n = 200_000u32;
    for i in 0..n {
        // 77.x.y.z: RIPE space, none of it in the US.
        let ip = std::net::Ipv4Addr::from(0x4d00_0000u32 + i * 7);
        log += &line(&ip.to_string(), i % 60, 401, "-");
    }
    let log_path = dir.write("t.log", &log);
    let (_, summary) = replay_jails(&dir, &["outside-us"], &log_path);
    assert_eq!(summary["jails"]["outside-us"]["matches"], n, "{summary}");
}
