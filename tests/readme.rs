//! The README's config reference names every config key the code accepts, so
//! the two cannot drift apart. The keys come from serde itself: an unknown key
//! makes it list every expected one.

use portcullis::config::{Defaults, FormatConfig, MainConfig};
use portcullis::detect::{FilterConfig, JailConfig};
use serde::de::DeserializeOwned;

fn keys_of<T: DeserializeOwned + std::fmt::Debug>() -> Vec<String> {
    let err = toml::from_str::<T>("zz_not_a_key = 1").unwrap_err();
    let msg = err.message().to_string();
    let expected = msg
        .split("expected one of")
        .nth(1)
        .unwrap_or_else(|| panic!("{msg}"));
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

#[test]
fn readme_documents_every_config_key() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let reference = readme
        .split("## Configuration reference")
        .nth(1)
        .expect("a reference section");
    let mut missing = Vec::new();
    for (what, keys) in [
        ("portcullis.toml", keys_of::<MainConfig>()),
        ("[defaults]", keys_of::<Defaults>()),
        ("[formats.NAME]", keys_of::<FormatConfig>()),
        ("filters.d", keys_of::<FilterConfig>()),
        ("jails.d", keys_of::<JailConfig>()),
        ("[firewall]", keys_of::<portcullis::act::FirewallConfig>()),
    ] {
        assert!(keys.len() > 3, "{what}: {keys:?}");
        for k in keys {
            let table =
                reference.contains(&format!("`[{k}]`")) || reference.contains(&format!("`[{k}."));
            if !reference.contains(&format!("`{k}`")) && !table {
                missing.push(format!("{what}: `{k}`"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README config reference lacks: {missing:?}"
    );
}

/// Each cookbook recipe: its files pass `portcullis check` and its sample
/// line parses (replayed through the recipe's own jails).
#[test]
fn cookbook_recipes_check_and_parse_their_samples() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let cookbook = readme
        .split("\n## Cookbook")
        .nth(1)
        .expect("a cookbook")
        .split("\n## ")
        .next()
        .unwrap();
    let mut checked = 0;
    for recipe in cookbook.split("\n### ").skip(1) {
        let title = recipe.lines().next().unwrap();
        let mut files: Vec<(String, String)> = Vec::new();
        let mut sample = None;
        for block in recipe.split("```").skip(1).step_by(2) {
            let (lang, body) = block.split_once('\n').unwrap();
            let (first, rest) = body.split_once('\n').unwrap_or((body, ""));
            if lang == "toml" {
                let path = first
                    .strip_prefix("# file: ")
                    .unwrap_or_else(|| panic!("{title}: toml block without `# file:`"));
                files.push((path.to_string(), rest.to_string()));
            } else if lang == "text" && first == "# sample" {
                sample = Some(rest.to_string());
            }
        }
        if files.is_empty() {
            continue;
        }
        let dir = std::env::temp_dir().join(format!(
            "portcullis-cookbook-{}-{checked}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("jails.d")).unwrap();
        std::fs::create_dir_all(dir.join("filters.d")).unwrap();
        for f in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/filters.d")).unwrap() {
            let f = f.unwrap();
            std::fs::copy(f.path(), dir.join("filters.d").join(f.file_name())).unwrap();
        }
        if !files.iter().any(|(p, _)| p == "portcullis.toml") {
            std::fs::write(
                dir.join("portcullis.toml"),
                "[defaults]\nformat = \"combined\"\n",
            )
            .unwrap();
        }
        if !files.iter().any(|(p, _)| p.starts_with("jails.d/")) {
            std::fs::write(
                dir.join("jails.d/sample.toml"),
                "[sample]\nfilter = \"auth-failure\"\n",
            )
            .unwrap();
        }
        for (path, text) in &files {
            std::fs::write(dir.join(path), text).unwrap();
        }
        let bin = env!("CARGO_BIN_EXE_portcullis");
        let out = std::process::Command::new(bin)
            .args(["check", "--config"])
            .arg(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{title}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(sample) = sample {
            std::fs::write(dir.join("sample.log"), sample).unwrap();
            let out = std::process::Command::new(bin)
                .args(["replay", "--json", "--config"])
                .arg(&dir)
                .arg(dir.join("sample.log"))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{title}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let summary: serde_json::Value =
                serde_json::from_str(text.lines().last().unwrap()).unwrap();
            for (format, st) in summary["summary"]["formats"].as_object().unwrap() {
                assert_eq!(st["unparsed"], 0, "{title}: format {format}: {st}");
                assert!(
                    st["parsed"].as_u64().unwrap() >= 1,
                    "{title}: format {format}: {st}"
                );
            }
            if title.starts_with("Behind a load balancer") {
                // The real client behind the proxy matched; the proxy (allowlisted) did not.
                let jails = summary["summary"]["jails"].as_object().unwrap();
                assert!(!jails.is_empty(), "{summary}");
                for jail in jails.values() {
                    assert!(jail["matches"] == 1 && jail["ignored"] == 0, "{summary}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        checked += 1;
    }
    assert!(checked >= 4, "only {checked} recipes checked");
}
