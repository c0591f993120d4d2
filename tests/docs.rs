//! The manual pages: they render without a roff warning, `portcullis(1)`
//! covers every command, and `portcullis.toml(5)` every key the config
//! accepts (taken from the config's own "expected one of" errors, so a key
//! added to the code and not to the page fails here).

mod common;
use common::*;
use std::process::Command;

fn groff_clean(page: &std::path::Path) {
    let Ok(out) = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .arg(page)
        .output()
    else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have groff (man-db)"
        );
        eprintln!("skipping the roff check: no groff");
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).is_empty(),
        "{}: {}",
        page.display(),
        stderr(&out)
    );
}

#[test]
fn portcullis_1_covers_every_command() {
    let tmp = TempDir::new("man");
    let out = bin()
        .arg("generate-assets")
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let page = tmp.path().join("portcullis.1");
    groff_clean(&page);
    let text = std::fs::read_to_string(&page).unwrap();
    let help = stdout(&bin().arg("--help").output().unwrap());
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 10, "{help}");
    for c in commands {
        assert!(
            text.contains(&format!(".SS \"portcullis {c}")),
            "no section for `{c}`"
        );
    }
    for section in [
        ".SH FILES",
        ".SH EXIT STATUS",
        ".SH EXAMPLES",
        ".SH ENVIRONMENT",
    ] {
        assert!(text.contains(section), "{section}");
    }
    // No reference to a page that is not shipped.
    for r in ["portcullis-status", "fail2ban", "jail.conf(5)"] {
        assert!(!text.contains(r), "{r}");
    }
}

/// The keys an unknown key's error lists as expected, for a table.
fn expected_keys(main: &str, jails: &str, filters: &str) -> Vec<String> {
    let tmp = TempDir::new("keys");
    tmp.write("portcullis.toml", main);
    tmp.write("jails.d/a.toml", jails);
    tmp.write("filters.d/f.toml", filters);
    let out = bin()
        .args(["check", "--config"])
        .arg(tmp.path())
        .output()
        .unwrap();
    let err = stderr(&out);
    // serde says "expected one of `a`, `b`, `c`", or "expected `a` or `b"`.
    let list = err
        .split("expected one of ")
        .nth(1)
        .or_else(|| err.split("expected ").nth(1))
        .unwrap_or_else(|| panic!("no key list in: {err}"));
    let list = list.split(';').next().unwrap().lines().next().unwrap();
    list.split(", ")
        .flat_map(|k| k.split(" or "))
        .map(|k| k.trim().trim_matches('`').to_string())
        .collect()
}

#[test]
fn portcullis_toml_5_documents_every_key() {
    let page_path = repo().join("packaging/man/portcullis.toml.5");
    groff_clean(&page_path);
    let page = std::fs::read_to_string(&page_path).unwrap();
    let f = "[auth]\nstatus = 401\n";
    let j = "[j]\nfilter = \"auth\"\n";
    let tables = [
        ("main file", expected_keys("zzz_unknown = 1\n", j, f)),
        (
            "[defaults]",
            expected_keys("[defaults]\nzzz_unknown = 1\n", j, f),
        ),
        (
            "jail",
            expected_keys("", "[j]\nfilter = \"auth\"\nzzz_unknown = 1\n", f),
        ),
        ("filter", expected_keys("", j, "[auth]\nzzz_unknown = 1\n")),
        (
            "[firewall]",
            expected_keys("[firewall]\nzzz_unknown = 1\n", j, f),
        ),
        (
            "[syslog]",
            expected_keys("[syslog]\nzzz_unknown = 1\n", j, f),
        ),
        (
            "[bouncer_api]",
            expected_keys("[bouncer_api]\nzzz_unknown = 1\n", j, f),
        ),
        ("[geoip]", expected_keys("[geoip]\nzzz_unknown = 1\n", j, f)),
    ];
    for (what, keys) in tables {
        assert!(keys.len() >= 2, "{what}: {keys:?}");
        for k in keys {
            let k_roff = k.replace('-', "\\-");
            assert!(
                page.contains(&format!(".B {k_roff}"))
                    || page.contains(&format!(".BR {k_roff} "))
                    || page.contains(&format!("\\fB{k_roff}\\fR"))
                    || page.contains(&format!(".B [{k_roff}"))
                    || page.contains(&format!(".SS [{k_roff}]"))
                    || page.contains(&format!(".BI [{k_roff}. ")),
                "{what} key `{k}` is not documented in portcullis.toml(5)"
            );
        }
    }
}
