//! The default config, compiled into the binary, so `portcullis replay` and
//! `portcullis check` work before anything is installed.

use super::{ConfigFiles, SourceFile};

const MAIN: &str = include_str!("../../portcullis.toml");

/// `(path, text)` of every bundled jail and filter file.
pub const JAILS: &[(&str, &str)] = &[(
    "jails.d/api-host.toml",
    include_str!("../../jails.d/api-host.toml"),
)];

pub const FILTERS: &[(&str, &str)] = &[
    (
        "filters.d/api-request.toml",
        include_str!("../../filters.d/api-request.toml"),
    ),
    (
        "filters.d/auth-failure.toml",
        include_str!("../../filters.d/auth-failure.toml"),
    ),
    (
        "filters.d/bad-user-agent.toml",
        include_str!("../../filters.d/bad-user-agent.toml"),
    ),
    (
        "filters.d/limit-req.toml",
        include_str!("../../filters.d/limit-req.toml"),
    ),
    (
        "filters.d/rate-limited.toml",
        include_str!("../../filters.d/rate-limited.toml"),
    ),
    (
        "filters.d/scanner.toml",
        include_str!("../../filters.d/scanner.toml"),
    ),
    (
        "filters.d/server-error.toml",
        include_str!("../../filters.d/server-error.toml"),
    ),
];

fn file((name, text): &(&str, &str)) -> SourceFile {
    SourceFile {
        name: format!("(built-in) {name}"),
        text: text.to_string(),
    }
}

pub fn files() -> ConfigFiles {
    ConfigFiles {
        main: file(&("portcullis.toml", MAIN)),
        main_local: None,
        ignored: Vec::new(),
        jails: JAILS.iter().map(file).collect(),
        filters: FILTERS.iter().map(file).collect(),
    }
}

#[cfg(test)]
mod tests {
    /// Every file in jails.d/ and filters.d/ is embedded: none forgotten.
    #[test]
    fn embeds_every_default_file() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        for (dir, list) in [("jails.d", super::JAILS), ("filters.d", super::FILTERS)] {
            let mut on_disk: Vec<String> = std::fs::read_dir(root.join(dir))
                .unwrap()
                .map(|e| format!("{dir}/{}", e.unwrap().file_name().to_string_lossy()))
                .filter(|n| n.ends_with(".toml"))
                .collect();
            on_disk.sort();
            let embedded: Vec<String> = list.iter().map(|(n, _)| n.to_string()).collect();
            assert_eq!(embedded, on_disk);
        }
    }
}
