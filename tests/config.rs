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
        stdout(&out).contains("7 jails (6 enabled), 7 filters"),
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
