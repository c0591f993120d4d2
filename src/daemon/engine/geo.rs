//! `[geoip]` in the daemon: the databases are watched for replacement from
//! the start, a reload that leaves `[geoip]` as it was keeps the loaded
//! databases (and their last good versions), and what is wrong with them is
//! said at start, in `status` and in the metrics.

use super::Engine;
use crate::config::Config;

impl Engine {
    /// Starts watching the databases and says what is wrong with them and
    /// which jails wait for them. Protection that needs a database never
    /// goes away silently: a missing one is an error in the log and in
    /// `status`, and is loaded as soon as it appears.
    pub(super) fn start_geo(&self) {
        if let Some(geo) = &self.config.geo {
            geo.watch();
            for p in geo.problems() {
                tracing::error!(
                    "{p}: jails reading its fields are paused (they count nothing) \
                     until it loads; it is tried again when it changes, and every 10 s"
                );
            }
        }
        for j in &self.config.jails {
            if let Some(key) = j.geo_missing {
                tracing::info!(
                    jail = j.spec.name,
                    "jail reads `{}`: off until [geoip] has `{key}`",
                    j.geo_field.as_deref().unwrap_or("")
                );
            }
        }
    }

    /// Before a reload: the running databases stay when `[geoip]` did not
    /// change; a changed `[geoip]` whose databases do not load refuses the
    /// reload (the running config, databases included, stays), as `check`
    /// would. Jails that ran and would stop for want of a database are said
    /// at warning level: protection going away must be heard.
    pub(super) fn prepare_geo(&self, new: &mut Config) -> Result<(), String> {
        if let (Some(old), Some(_)) = (&self.config.geo, &new.geo)
            && Some(old.config()) == new.main.geoip.as_ref()
        {
            new.geo = Some(old.clone());
        } else if let Some(g) = &new.geo {
            let problems = g.problems();
            if !problems.is_empty() {
                return Err(problems.join("; "));
            }
        }
        for j in &new.jails {
            if let Some(key) = j.geo_missing
                && self.pipeline.jail_index(&j.spec.name).is_some()
            {
                tracing::warn!(
                    jail = j.spec.name,
                    "jail is OFF after this reload: it reads `{}`, and [geoip] no longer has `{key}`",
                    j.geo_field.as_deref().unwrap_or("")
                );
            }
        }
        Ok(())
    }

    /// `status`'s `geoip`: each database in use, or what is wrong with it.
    pub(super) fn geo_status(&self) -> serde_json::Value {
        match &self.config.geo {
            Some(g) => serde_json::json!(g.status()),
            None => serde_json::Value::Null,
        }
    }
}
