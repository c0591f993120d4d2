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
                    "geoip {p}: jails reading country, region, asn or as_org count only \
                     addresses the loaded databases know; it is loaded when it appears"
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

    /// Before a reload: the running databases stay when `[geoip]` did not change.
    pub(super) fn keep_geo(&self, new: &mut Config) {
        if let (Some(old), Some(_)) = (&self.config.geo, &new.geo)
            && Some(old.config()) == new.main.geoip.as_ref()
        {
            new.geo = Some(old.clone());
        }
    }

    /// `status`'s `geoip`: each database in use, or what is wrong with it.
    pub(super) fn geo_status(&self) -> serde_json::Value {
        match &self.config.geo {
            Some(g) => serde_json::json!(g.status()),
            None => serde_json::Value::Null,
        }
    }
}
