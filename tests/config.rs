//! `portcullis check`: bad configs are rejected with file, line, column and a
//! reason, and every error is reported at once.

mod common;
use common::*;

const MAIN: &str = "[defaults]\nformat = \"combined\"\n";

fn check(files: &[(&str, &str)]) -> (bool, String) {
    let tmp = TempDir::new("check");
    for (name, text) in files {
        tmp.write(name, text);
    }
    let out = bin()
        .args(["check", "--config"])
        .arg(tmp.path())
        .output()
        .unwrap();
    (out.status.success(), stderr(&out) + &stdout(&out))
}

#[test]
fn bundled_config_is_valid() {
    let out = bin()
        .args(["check", "--config"])
        .arg(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(
            "8 jails (6 enabled; off until [geoip] names their database: \
             leaked-api-key-regions (country_db)), 7 filters"
        ),
        "{}",
        stdout(&out)
    );
}

#[test]
fn every_error_with_position_and_hint() {
    let jails = r#"[good]
filter = "auth"

[typo-key]
filter = "auth"
maxretyr = 5

[typo-filter]
filter = "atuh"

[bad-duration]
filter = "auth"
findtime = "10 minutes"

[bad-field]
filter = "auth"
key = "api_key"
target = "key"
"#;
    let filters = r#"[auth]
status = [401, 403]

[bad-regex]
user_agent_regex = "(unclosed"

[bad-status]
status = "6xx"
"#;
    let main = "ignore = [\"10.0.0.0/33\"]\n[defaults]\nformat = \"combined\"\n";
    let (ok, out) = check(&[
        ("portcullis.toml", main),
        ("jails.d/a.toml", jails),
        ("filters.d/f.toml", filters),
    ]);
    assert!(!ok);
    let has = |needle: &str| assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    // The main file's error stops it being used, but jails and filters are still checked.
    has("portcullis.toml:1:");
    has("invalid CIDR `10.0.0.0/33`");
    has("jails.d/a.toml:6:1: unknown field `maxretyr`");
    has("did you mean `maxretry`?");
    has("jails.d/a.toml:13:12: invalid duration `10 minutes`");
    has("filters.d/f.toml:5:20: invalid regex");
    has("filters.d/f.toml:8:10: invalid status `6xx`");
}

#[test]
fn cross_references_are_checked() {
    let jails = r#"[typo-filter]
filter = "atuh"

[typo-format]
filter = "auth"
format = "combind"

[no-such-field]
filter = "auth"
key = "api_key"
target = "key"

[key-target-on-address]
filter = "auth"
target = "key"
"#;
    let (ok, out) = check(&[
        ("portcullis.toml", MAIN),
        ("jails.d/a.toml", jails),
        ("filters.d/f.toml", "[auth]\nstatus = 401\n"),
    ]);
    assert!(!ok);
    let has = |needle: &str| assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    has("jails.d/a.toml:2:10: jail `typo-filter`: unknown filter `atuh`; did you mean `auth`?");
    has(
        "jails.d/a.toml:6:10: jail `typo-format`: unknown format `combind`; did you mean `combined`?",
    );
    has(
        "jails.d/a.toml:10:7: jail `no-such-field`: reads field `api_key`, which format `combined` does not provide",
    );
    has("jail `key-target-on-address`: `target = \"key\"` needs a non-address field");
    assert!(out.contains("4 errors"), "{out}");
}

#[test]
fn custom_formats_are_validated() {
    let main = r#"
[formats.broken]
nginx = '$remote_addr$remote_user [$time_local]'

[formats.two]
nginx = '$remote_addr'
regex = '(?P<client>\S+)'

[formats.ok]
nginx = '$remote_addr [$time_local] "$request" $status'
"#;
    let (ok, out) = check(&[("portcullis.toml", main)]);
    assert!(!ok);
    assert!(
        out.contains("portcullis.toml:3:9: format `broken`: two variables follow each other"),
        "{out}"
    );
    assert!(out.contains("format `two` needs exactly one of"), "{out}");
    assert!(!out.contains("format `ok`"), "{out}");
}

#[test]
fn missing_directory_is_a_clear_error() {
    let out = bin()
        .args(["check", "--config", "/nonexistent/portcullis"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/portcullis/portcullis.toml: cannot read"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn one_run_reports_every_mistake_of_one_table() {
    // Three mistakes in one jail and two in one section of the main file:
    // serde stops at the first of each, `check` must not.
    let main = "[defaults]\nformat = \"combined\"\nmaxretyr = 3\nfindtime = \"often\"\n";
    let jails =
        "[j]\nfilter = \"auth\"\nmaxretry = \"five\"\nbantme = \"1h\"\nfindtime = \"10 minutes\"\n";
    let (ok, out) = check(&[
        ("portcullis.toml", main),
        ("jails.d/a.toml", jails),
        ("filters.d/f.toml", "[auth]\nstatus = 401\n"),
    ]);
    assert!(!ok);
    let has = |needle: &str| assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    has("portcullis.toml:3:1: unknown field `maxretyr`");
    has("portcullis.toml:4:12: invalid duration `often`");
    has("jails.d/a.toml:3:12: invalid type");
    has("jails.d/a.toml:4:1: unknown field `bantme`");
    has("jails.d/a.toml:5:12: invalid duration `10 minutes`");
    assert!(out.contains("5 errors"), "{out}");
}

#[test]
fn local_files_change_shipped_jails_and_point_errors_at_themselves() {
    let jails =
        "[auth]\nfilter = \"auth\"\nlogpath = \"/tmp/a.log\"\nmaxretry = 100\nfindtime = \"60s\"\n";
    let filters = "[auth]\nstatus = 401\n";
    let tmp = TempDir::new("layers");
    tmp.write("portcullis.toml", MAIN);
    tmp.write("jails.d/api.toml", jails);
    tmp.write("filters.d/f.toml", filters);
    // Tuned threshold, and a new jail, in a local file; a stray file too.
    tmp.write(
        "jails.d/api.local.toml",
        "[auth]\nmaxretry = 3\n\n[extra]\nfilter = \"auth\"\nlogpath = \"/tmp/b.log\"\n",
    );
    tmp.write("jails.d/jail.local", "[auth]\nmaxretry = 1\n");
    tmp.write("portcullis.local.toml", "[defaults]\nbantime = \"2h\"\n");
    let config = portcullis::config::Config::load_dir(tmp.path()).expect("valid");
    let auth = config.jails.iter().find(|j| j.spec.name == "auth").unwrap();
    assert_eq!(auth.spec.maxretry, 3, "the local file's threshold");
    assert_eq!(
        auth.spec.findtime.as_secs(),
        60,
        "keys it does not set are kept"
    );
    assert_eq!(
        auth.policy.bantime.as_secs(),
        7200,
        "portcullis.local.toml applies"
    );
    assert!(config.jails.iter().any(|j| j.spec.name == "extra"));

    let (ok, out) = check_dir(tmp.path());
    assert!(ok, "{out}");
    assert!(out.contains("jails.d/jail.local: ignored"), "{out}");
    assert!(out.contains("2 jails"), "{out}");

    // A mistake in the local file is reported there, with its own line.
    tmp.write("jails.d/api.local.toml", "[auth]\n\nmaxretry = \"3\"\n");
    let (ok, out) = check_dir(tmp.path());
    assert!(!ok);
    assert!(
        out.contains("jails.d/api.local.toml:3:12: invalid type"),
        "{out}"
    );
    // Two shipped files may not both define it.
    tmp.write("jails.d/api.local.toml", "");
    tmp.write("jails.d/other.toml", jails);
    let (ok, out) = check_dir(tmp.path());
    assert!(!ok);
    assert!(out.contains("jail `auth` is already defined in"), "{out}");
    assert!(out.contains(".local.toml"), "{out}");
}

fn check_json(dir: &std::path::Path) -> std::process::Output {
    bin()
        .args(["check", "--json", "--config"])
        .arg(dir)
        .output()
        .unwrap()
}

fn check_dir(dir: &std::path::Path) -> (bool, String) {
    let out = bin().args(["check", "--config"]).arg(dir).output().unwrap();
    (out.status.success(), stderr(&out) + &stdout(&out))
}

#[test]
fn check_warns_and_speaks_json() {
    let jails = "[auth]\nfilter = \"auth\"\nlogpath = [\"/nonexistent-portcullis/access.log\", \"/tmp/[x.log\"]\n";
    let main = "max_line_bytes = 0\ncontrol_group = \"no-such-group-pc\"\n[defaults]\nformat = \"combined\"\n";
    let tmp = TempDir::new("lint");
    tmp.write(
        "portcullis.toml",
        "max_line_bytes = 0\n[defaults]\nformat = \"combined\"\n",
    );
    tmp.write("jails.d/a.toml", jails);
    tmp.write("filters.d/f.toml", "[auth]\nstatus = 401\n");
    let (ok, out) = check_dir(tmp.path());
    assert!(ok, "warnings do not fail check: {out}");
    for w in [
        "warning: max_line_bytes = 0",
        "directory /nonexistent-portcullis does not exist",
        "`/tmp/[x.log` is not a valid glob",
        "3 warnings",
    ] {
        assert!(out.contains(w), "missing `{w}` in:\n{out}");
    }
    let out = check_json(tmp.path());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["ok"], true);
    assert_eq!(v["warnings"].as_array().unwrap().len(), 3, "{v}");
    assert_eq!(v["jails"], 1);

    // What would stop `run` fails `check` too.
    tmp.write("portcullis.toml", main);
    let out = check_json(tmp.path());
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["ok"], false);
    let e = &v["errors"][0];
    assert!(
        e["message"].as_str().unwrap().contains("no-such-group-pc"),
        "{v}"
    );
    assert!(
        e["file"].as_str().unwrap().ends_with("portcullis.toml"),
        "{v}"
    );
    assert!(e["column"].is_number(), "{v}");
}

#[test]
fn a_bad_table_does_not_hide_the_others_and_editor_files_are_not_config() {
    let main = "[actions.a]\ntype = \"bogus\"\nban = [\"/bin/true\"]\n\n[metrics]\nlisten = 5\n\n[formats.q]\nnginx = 7\n";
    let tmp = TempDir::new("hide");
    tmp.write("portcullis.toml", main);
    tmp.write("jails.d/a.toml", "[j]\nfilter = \"auth\"\n");
    tmp.write("filters.d/f.toml", "[auth]\nstatus = 401\n");
    let (ok, out) = check_dir(tmp.path());
    assert!(!ok);
    for needle in [
        "portcullis.toml:2:8: unknown variant",
        "portcullis.toml:6:10:",
        "portcullis.toml:9:9:",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }

    // An editor's lock link and a directory are not config files.
    tmp.write("portcullis.toml", MAIN);
    std::os::unix::fs::symlink("root@host.1:1", tmp.path().join("jails.d/.#a.toml")).unwrap();
    std::fs::create_dir_all(tmp.path().join("jails.d/old.toml")).unwrap();
    let (ok, out) = check_dir(tmp.path());
    assert!(ok, "{out}");
    assert!(out.contains("old.toml: ignored"), "{out}");
}

#[test]
fn port_scopes_are_checked() {
    let main = format!("{MAIN}[firewall]\nbackend = \"nftables\"\n");
    let jails = r#"[web]
filter = "auth"
action = ["firewall"]
ports = ["http", "https", "8000-8099", 9443]
protocol = "tcp"

[bad-ports]
filter = "auth"
action = ["firewall"]
ports = ["htp", 70000, "90-80"]

[ports-without-firewall]
filter = "auth"
ports = [80]

[protocol-alone]
filter = "auth"
action = ["firewall"]
protocol = "sctp"
"#;
    let (ok, out) = check(&[
        ("portcullis.toml", &main),
        ("jails.d/a.toml", jails),
        ("filters.d/f.toml", "[auth]\nstatus = 401\n"),
    ]);
    assert!(!ok);
    let has = |needle: &str| assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    has(
        "jails.d/a.toml:10:9: jail `bad-ports`: `htp` is not a port number or a known tcp service name",
    );
    has("jails.d/a.toml:14:9: jail `ports-without-firewall`: `ports` scopes the `firewall` action");
    has("jails.d/a.toml:19:12: unknown variant `sctp`, expected `tcp` or `udp`");
    assert!(!out.contains("jail `web`"), "{out}");
}

/// Behind a proxy, a jail that bans addresses only in the kernel protects
/// nothing: `check` says so, and stops saying it once a deny-list the proxy
/// enforces is added.
#[test]
fn check_warns_when_the_firewall_alone_faces_clients_behind_a_proxy() {
    let tmp = TempDir::new("lint-proxy");
    let main = "trusted_proxies = [\"10.0.0.0/8\"]\n[firewall]\n[actions.geo]\ntype = \"denylist\"\npath = \"/tmp/pc-banned.geo\"\nformat = \"nginx_geo\"\n[defaults]\nformat = \"combined\"\n";
    tmp.write("portcullis.toml", main);
    tmp.write("filters.d/f.toml", "[auth]\nstatus = 401\n");
    tmp.write(
        "jails.d/a.toml",
        "[auth]\nfilter = \"auth\"\nlogpath = \"/tmp/x.log\"\naction = [\"log\", \"firewall\"]\n",
    );
    let (ok, out) = check_dir(tmp.path());
    assert!(ok, "{out}");
    assert!(
        out.contains(
            "jail `auth` bans addresses only with `firewall`, but `trusted_proxies` is set"
        ),
        "{out}"
    );
    tmp.write(
        "jails.d/a.toml",
        "[auth]\nfilter = \"auth\"\nlogpath = \"/tmp/x.log\"\naction = [\"log\", \"firewall\", \"geo\"]\n",
    );
    let (ok, out) = check_dir(tmp.path());
    assert!(ok && !out.contains("only with `firewall`"), "{out}");
}

/// What goes into nft scripts and ipset names is checked: `table` (an
/// injected statement, a table other software owns, an ipset prefix too
/// long for its set names) and port scopes whose set names would collide.
#[test]
fn firewall_names_are_checked() {
    let jail = "[auth]\nfilter = \"auth\"\nlogpath = \"/tmp/x.log\"\naction = [\"firewall\"]\n";
    let run = |main: &str, jails: &str| {
        check(&[
            ("portcullis.toml", main),
            ("jails.d/a.toml", jails),
            ("filters.d/f.toml", "[auth]\nstatus = 401\n"),
        ])
    };
    let (ok, out) = run(
        "[firewall]\ntable = \"pc\\ndelete table inet victim\"\n[defaults]\nformat = \"combined\"\n",
        jail,
    );
    assert!(!ok && out.contains("portcullis.toml:2:9: `table`"), "{out}");
    let (ok, out) = run(
        "[firewall]\ntable = \"filter\"\n[defaults]\nformat = \"combined\"\n",
        jail,
    );
    assert!(!ok && out.contains("a table other software uses"), "{out}");
    let (ok, out) = run(
        "[firewall]\nbackend = \"ipset\"\ntable = \"portcullisprod\"\n[defaults]\nformat = \"combined\"\n",
        jail,
    );
    assert!(
        !ok && out.contains("at most 11 characters with the ipset backend"),
        "{out}"
    );
    // tcp/4,17345 and tcp/5,58002 hash alike (32-bit FNV-1a).
    let jails = format!(
        "{jail}ports = [4, 17345]\n[web]\nfilter = \"auth\"\nlogpath = \"/tmp/x.log\"\naction = [\"firewall\"]\nports = [5, 58002, \"http-alt\"]\n"
    );
    let (ok, out) = run("[firewall]\n[defaults]\nformat = \"combined\"\n", &jails);
    assert!(
        ok,
        "http-alt is a service name, and no collision yet: {out}"
    );
    let jails = jails.replace(", \"http-alt\"", "");
    let (ok, out) = run("[firewall]\n[defaults]\nformat = \"combined\"\n", &jails);
    assert!(!ok && out.contains("hash to the same set name"), "{out}");
}

/// `[bouncer_api]`: the action needs the section, key files are read and
/// checked at `check`, TLS needs both halves, and `check` warns about a
/// key anyone can read and an API no jail feeds.
#[test]
fn bouncer_api_is_checked() {
    let tmp = TempDir::new("bouncer-check");
    let d = tmp.path().display().to_string();
    let good = tmp.write("keys/edge.key", "0123456789abcdef0123\n");
    std::fs::set_permissions(&good, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    tmp.write("keys/short.key", "abc\n");
    tmp.write("conf/filters.d/f.toml", "[auth]\nstatus = 401\n");
    tmp.write(
        "conf/jails.d/a.toml",
        "[auth]\nfilter = \"auth\"\naction = [\"log\", \"bouncer_api\"]\n",
    );
    // The action without the section.
    tmp.write("conf/portcullis.toml", MAIN);
    let (ok, out) = check_dir(&tmp.path().join("conf"));
    assert!(!ok);
    assert!(
        out.contains(
            "jails.d/a.toml:3:18: jail `auth`: action `bouncer_api` needs a `[bouncer_api]` section"
        ),
        "{out}"
    );
    // Bad key files and half a TLS setup: every error at once.
    tmp.write(
        "conf/portcullis.toml",
        &format!(
            "[bouncer_api]\nlisten = \"127.0.0.1:0\"\napi_key_files = [\"{d}/keys/short.key\", \"{d}/keys/none.key\"]\ntls_cert = \"{d}/keys/edge.key\"\n{MAIN}"
        ),
    );
    let (ok, out) = check_dir(&tmp.path().join("conf"));
    assert!(!ok);
    assert!(
        out.contains(&format!(
            "{d}/keys/short.key: the key is 3 characters; use at least 16"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{d}/keys/none.key: cannot read it")),
        "{out}"
    );
    // A good one: valid, with a warning about its mode; and one about a
    // section no jail feeds once the jail stops using it.
    tmp.write(
        "conf/portcullis.toml",
        &format!("[bouncer_api]\nlisten = \"127.0.0.1:0\"\napi_key_files = [\"{d}/keys/edge.key\"]\n{MAIN}"),
    );
    let (ok, out) = check_dir(&tmp.path().join("conf"));
    assert!(ok, "{out}");
    assert!(out.contains("edge.key: readable by every user"), "{out}");
    assert!(!out.contains("no jail uses"), "{out}");
    tmp.write("conf/jails.d/a.toml", "[auth]\nfilter = \"auth\"\n");
    let (ok, out) = check_dir(&tmp.path().join("conf"));
    assert!(ok, "{out}");
    assert!(
        out.contains("no jail uses the `bouncer_api` action"),
        "{out}"
    );
    // TLS half set: a start error, which check reports.
    tmp.write(
        "conf/portcullis.toml",
        &format!("[bouncer_api]\nlisten = \"127.0.0.1:0\"\napi_key_files = [\"{d}/keys/edge.key\"]\ntls_key = \"{d}/keys/edge.key\"\n{MAIN}"),
    );
    let (ok, out) = check_dir(&tmp.path().join("conf"));
    assert!(!ok);
    assert!(
        out.contains("`tls_cert` and `tls_key` go together"),
        "{out}"
    );
}

/// A key target revoking a value the client writes itself (a user agent)
/// is valid but warned about; one revoking `api_key` is not.
#[test]
fn check_warns_about_revoking_what_clients_write() {
    let filters = ("filters.d/f.toml", "[auth]\nstatus = 401\n");
    let main = ("portcullis.toml", "[defaults]\nformat = \"api_audit\"\n");
    let (ok, out) = check(&[
        main,
        filters,
        (
            "jails.d/a.toml",
            "[ua]\nfilter = \"auth\"\nlogpath = \"/tmp/x.log\"\nkey = \"user_agent\"\ntarget = \"key\"\n",
        ),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("jail `ua`: `target = \"key\"` revokes `user_agent` values"),
        "{out}"
    );
    let (ok, out) = check(&[
        main,
        filters,
        (
            "jails.d/a.toml",
            "[k]\nfilter = \"auth\"\nlogpath = \"/tmp/x.log\"\nkey = [\"user_agent\", \"api_key\"]\ntarget = \"key\"\n",
        ),
    ]);
    assert!(ok, "{out}");
    assert!(!out.contains("which every request writes"), "{out}");
}
