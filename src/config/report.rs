//! What `portcullis check` reports: the config loaded and linted, as one
//! line for people or as JSON for scripts. `main` only prints it.

use super::{Config, ConfigError, ConfigFiles, lint};

/// A config checked as the daemon would start it.
pub struct Report {
    /// The config, when it loaded and nothing would stop the daemon.
    pub config: Option<Config>,
    pub errors: Vec<ConfigError>,
    pub warnings: Vec<String>,
}

impl Report {
    /// Loads and lints the files (or keeps why they could not be read).
    pub fn of(files: Result<ConfigFiles, Vec<ConfigError>>) -> Report {
        let (config, errors, warnings) = match files {
            Err(errors) => (None, errors, Vec::new()),
            Ok(files) => match Config::load(&files) {
                Ok(c) => {
                    let errors = lint::start_errors(&c, &files);
                    let warnings = lint::warnings(&c, &files);
                    (Some(c), errors, warnings)
                }
                Err(errors) => (None, errors, Vec::new()),
            },
        };
        Report {
            config: config.filter(|_| errors.is_empty()),
            errors,
            warnings,
        }
    }

    pub fn ok(&self) -> bool {
        self.config.is_some()
    }

    /// `check --json`.
    pub fn json(&self) -> serde_json::Value {
        let config = self.config.as_ref();
        serde_json::json!({
            "ok": self.ok(),
            "errors": self.errors,
            "warnings": self.warnings,
            "jails": config.map(|c| c.jails.len()),
            "enabled_jails": config.map(|c| c.jails.iter().filter(|j| j.enabled).count()),
            "waiting_for_geoip": config.map(waiting_for_geoip),
            "filters": config.map(|c| c.filter_count),
            "formats": config.map(|c| c.formats.len()),
        })
    }

    /// The line `check` prints for a good config (`None`: it is not).
    pub fn summary(&self) -> Option<String> {
        let c = self.config.as_ref()?;
        let enabled = c.jails.iter().filter(|j| j.enabled).count();
        let waiting = waiting_for_geoip(c);
        let waiting = match waiting.len() {
            0 => String::new(),
            _ => format!(
                "; off until [geoip] names their database: {}",
                waiting.join(", ")
            ),
        };
        Some(format!(
            "config OK: {} jails ({enabled} enabled{waiting}), {} filters, {} custom formats{}",
            c.jails.len(),
            c.filter_count,
            c.formats.len(),
            match self.warnings.len() {
                0 => String::new(),
                n => format!("; {n} warning{}", if n == 1 { "" } else { "s" }),
            }
        ))
    }
}

/// Jails that read an enriched field and are off for want of its database
/// in `[geoip]`: `NAME (country_db)`.
fn waiting_for_geoip(c: &Config) -> Vec<String> {
    c.jails
        .iter()
        .filter_map(|j| {
            let key = j.geo_missing?;
            Some(format!("{} ({key})", crate::text::printable(&j.spec.name)))
        })
        .collect()
}
