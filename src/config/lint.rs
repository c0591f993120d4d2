//! What `portcullis check` says beyond parse errors: mistakes that only
//! show when the daemon starts (an `exec` action it cannot run, a
//! `control_group` that does not exist), and warnings about a config that is
//! valid but probably not what the operator meant.

use super::{ActionConfig, Config, ConfigError, ConfigFiles};
use std::path::Path;

/// Errors that would stop `portcullis run` although the files parse.
pub fn start_errors(config: &Config, files: &ConfigFiles) -> Vec<ConfigError> {
    let at_main = |message: String| ConfigError {
        file: files.main.name.clone(),
        line: 0,
        col: 0,
        message,
    };
    let mut errors = Vec::new();
    if let Some(group) = &config.main.control_group
        && let Err(e) = crate::control::server::group_id(group)
    {
        errors.push(at_main(e));
    }
    for (name, action) in &config.main.actions {
        if let ActionConfig::Exec(c) = action
            && let Err(e) = crate::act::ExecAction::new(name, c.clone())
        {
            errors.push(at_main(format!("action `{name}`: {e}")));
        }
    }
    if let Some(b) = &config.main.bouncer_api
        && let Err(e) = crate::act::bouncer::tls_config(b)
    {
        errors.push(at_main(e));
    }
    // The daemon starts without them (and loads them once they appear);
    // `check` says what is wrong now.
    if let Some(geo) = &config.geo {
        errors.extend(geo.problems().into_iter().map(at_main));
    }
    errors
}

/// Sentences about what is valid but probably wrong.
pub fn warnings(config: &Config, files: &ConfigFiles) -> Vec<String> {
    let mut out = Vec::new();
    for path in &files.ignored {
        out.push(format!(
            "{}: ignored: only `*.toml` files are read here (site changes go in a \
             `NAME.local.toml` file, see portcullis.toml(5))",
            path.display()
        ));
    }
    if config.main.max_line_bytes == Some(0) {
        out.push(
            "max_line_bytes = 0: every line is too long and none is parsed; \
             remove it for the default (256 KiB)"
                .into(),
        );
    }
    out.extend(bouncer_warnings(config));
    if let Some(geo) = &config.geo {
        for db in geo
            .status()
            .iter()
            .filter(|d| d.answers_ipv4 == Some(false))
        {
            out.push(format!(
                "[geoip] {} {}: answers none of 4,096 IPv4 addresses sampled across the address \
                 space (an IPv6-only database?): IPv4 clients may get no country, region or \
                 network from it; use a database covering both",
                db.role, db.path
            ));
        }
        for db in geo.status().iter().filter(|d| d.ip_version == Some(4)) {
            out.push(format!(
                "[geoip] {} {}: an IPv4-only database: IPv6 clients get no country, region \
                 or network from it (a key used over IPv6 adds no region; `not = {{ country \
                 = ... }}` counts every IPv6 client); use a database covering both",
                db.role, db.path
            ));
        }
    }
    for jail in config.jails.iter().filter(|j| j.enabled) {
        if jail.logpath.is_empty() && jail.syslog.is_none() && jail.journal.is_none() {
            out.push(format!(
                "jail `{}`: no logpath (or syslog, or journal): it reads nothing",
                jail.spec.name
            ));
        }
        if let Some(j) = &jail.journal {
            if let Some(d) = j.directory.as_ref().filter(|d| !d.is_dir()) {
                out.push(format!(
                    "jail `{}`: journal directory {} does not exist: it reads nothing until it does",
                    jail.spec.name,
                    d.display()
                ));
            }
            if j.unit.is_none() {
                out.push(format!(
                    "jail `{}`: journal `identifier` alone: any local user can log with any \
                     identifier (`logger -t`) and forge lines; add `unit`, which the journal \
                     sets itself",
                    jail.spec.name
                ));
            }
        }
        for pattern in &jail.logpath {
            out.extend(logpath_warning(&jail.spec.name, pattern));
        }
        out.extend(client_written_key_warning(jail));
        out.extend(behind_proxy_warning(config, jail));
    }
    out
}

/// A key target that revokes a value every request names for itself (a
/// user agent, a path): any client can get any such value revoked, a
/// victim's included, by sending it. Only `api_key` (an id the gateway
/// derived from a verified credential) or a format's own fields (a Kong
/// consumer id) should be revoked.
fn client_written_key_warning(jail: &super::JailEntry) -> Option<String> {
    use crate::detect::jail::TargetKind;
    let key = &jail.spec.key;
    if jail.spec.target != TargetKind::Key || key.iter().any(|k| k == "api_key") {
        return None;
    }
    let k = key
        .iter()
        .find(|k| *k != "client" && crate::enrich::geo::role_of(k).is_none())?;
    crate::parse::StdField::from_name(k)?;
    Some(format!(
        "jail `{}`: `target = \"key\"` revokes `{k}` values, which every request writes \
         itself: a client can get any value revoked, a victim's too, by sending it; revoke an \
         id the gateway derived (`api_key`, see the README's \"Leaked keys\")",
        crate::text::printable(&jail.spec.name)
    ))
}

/// A jail that bans addresses only in the kernel while the clients are
/// known from X-Forwarded-For: the packets come from the proxy, so the drop
/// matches nothing and the jail protects nothing, silently.
fn behind_proxy_warning(config: &Config, jail: &super::JailEntry) -> Option<String> {
    use super::main_file::ActionConfig;
    use crate::act::denylist::DenylistFormat;
    if config.trusted_proxies.is_empty()
        || jail.spec.target != crate::detect::jail::TargetKind::Address
        || !jail.actions.iter().any(|a| a == "firewall")
    {
        return None;
    }
    let other_enforcement = jail.actions.iter().any(|a| a == "bouncer_api")
        || jail
            .actions
            .iter()
            .any(|a| match config.main.actions.get(a) {
                Some(ActionConfig::Denylist(d)) => d.format != DenylistFormat::NginxMap,
                Some(ActionConfig::Exec(_) | ActionConfig::Webhook(_)) => true,
                _ => false,
            });
    (!other_enforcement).then(|| {
        format!(
            "jail `{}` bans addresses only with `firewall`, but `trusted_proxies` is set: \
             clients behind a proxy reach this host from the proxy's address, so a kernel \
             drop of theirs matches nothing; add a `denylist` action with \
             `format = \"nginx_geo\"` (README: Behind a load balancer)",
            crate::text::printable(&jail.spec.name)
        )
    })
}

/// A bouncer API no jail feeds, or a key file anyone on the host can read.
fn bouncer_warnings(config: &Config) -> Vec<String> {
    let Some(b) = &config.main.bouncer_api else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if !config
        .jails
        .iter()
        .any(|j| j.enabled && j.actions.iter().any(|a| a == "bouncer_api"))
    {
        out.push(
            "[bouncer_api] is set but no jail uses the `bouncer_api` action: bouncers will \
             get no decisions; add it to `[defaults] action` or to a jail's `action`"
                .into(),
        );
    }
    for p in crate::act::bouncer::readable_by_others(b) {
        out.push(format!(
            "{}: readable by every user; a bouncer key gives the list of everyone banned \
             (chmod 600)",
            p.display()
        ));
    }
    out
}

/// An invalid glob, or a directory that does not exist (a typo there means
/// the jail waits forever for a file that never appears).
fn logpath_warning(jail: &str, pattern: &str) -> Option<String> {
    use crate::watch::GLOB_CHARS;
    let is_glob = pattern.contains(GLOB_CHARS);
    if is_glob && let Err(e) = glob::Pattern::new(pattern) {
        return Some(format!(
            "jail `{jail}`: logpath `{pattern}` is not a valid glob: {}",
            e.msg
        ));
    }
    // The directory part before any wildcard must exist.
    let fixed: &str = match pattern.find(GLOB_CHARS) {
        Some(i) => &pattern[..i],
        None => pattern,
    };
    let dir = if is_glob {
        Path::new(fixed)
            .to_str()
            .and_then(|s| s.rfind('/').map(|i| &s[..=i]))
            .map(Path::new)?
    } else {
        Path::new(fixed).parent()?
    };
    if dir.as_os_str().is_empty() || dir.is_dir() {
        return None;
    }
    Some(format!(
        "jail `{jail}`: logpath `{pattern}`: directory {} does not exist",
        dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logpaths() {
        assert!(logpath_warning("j", "/tmp/x.log").is_none());
        assert!(logpath_warning("j", "/tmp/*/x.log").is_none());
        let w = logpath_warning("j", "/nonexistent-dir/access.log").unwrap();
        assert!(
            w.contains("directory /nonexistent-dir does not exist"),
            "{w}"
        );
        let w = logpath_warning("j", "/nonexistent-dir/*.log").unwrap();
        assert!(
            w.contains("directory /nonexistent-dir/ does not exist"),
            "{w}"
        );
        let w = logpath_warning("j", "/tmp/[a.log").unwrap();
        assert!(w.contains("not a valid glob"), "{w}");
    }
}
