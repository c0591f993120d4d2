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
