//! `ignore_file` and `trusted_proxies_file`: applied when they change,
//! without a reload (see [`crate::config::netfile`]).

use super::Engine;
use std::time::Instant;

impl Engine {
    /// Looks at the list files (at most once a second) and, when one
    /// changed, hands the new lists to every stage that uses them: parsing
    /// (trusted proxies), detection and the ledger (the allowlist), and the
    /// actions that enforce the allowlist themselves (the firewall's accept
    /// sets). A file gone or broken keeps its last contents; said once.
    pub(super) fn watch_lists(&mut self) {
        let (changed, errors) = self.config.net_files.poll(Instant::now());
        for e in errors {
            tracing::error!("{e}");
        }
        let Some(c) = changed else {
            return;
        };
        self.ledger.set_ignore(c.ignore.clone());
        self.pipeline
            .set_lists(c.ignore.clone(), c.trusted_proxies.clone());
        for a in &self.actions {
            if let Err(e) = a.set_allowlist(&c.ignore) {
                tracing::error!(action = a.name(), "updating the allowlist: {e}");
            }
        }
        tracing::info!(
            ignore = c.ignore.nets().len(),
            trusted_proxies = c.trusted_proxies.nets().len(),
            "an address list file changed; the new lists apply from the next line"
        );
        self.config.ignore = c.ignore;
        self.config.trusted_proxies = c.trusted_proxies;
    }
}
