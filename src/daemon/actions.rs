//! Building the actions a config names, reconciling them with the ledger at
//! start and reload, and, for a state store that is new, adopting what the
//! kernel still enforces. The engine calls these; the actions then run on
//! their own workers (`act::Dispatcher`) under `act::supervise`.

use super::engine::{Msg, now_secs};
use crate::act::supervise::Supervisor;
use crate::act::{Action, Dispatcher, ExecAction, Holding, LogAction, Outcome};
use crate::config::{ActionConfig, Config};
use crate::decide::{Ban, Ledger};
use crate::state::Reader;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::Sender;

/// The jails that use action `name`.
pub(super) fn jails_using(config: &Config, name: &str) -> Vec<String> {
    config
        .jails
        .iter()
        .filter(|j| j.actions.iter().any(|a| a == name))
        .map(|j| j.spec.name.clone())
        .collect()
}

/// Builds every action, checks each can work here (a missing program is a
/// clear error at start, like a config mistake), and has it reconcile with
/// the active bans of the jails that use it (one batch each, on the action's
/// own worker). A reconcile that fails (nginx not up yet at boot) is not
/// fatal: the supervisor retries it with backoff while detection and the
/// other actions run. Bans an action cannot express are skipped by that
/// action only.
pub(super) fn build_actions(
    config: &Config,
    tx: &Sender<Msg>,
    active: Arc<[Ban]>,
    store: &Reader,
    supervisor: &mut Supervisor,
    skip_reconcile: &[String],
    bouncer: Option<&Arc<crate::act::bouncer::Api>>,
) -> Result<(Dispatcher, Vec<Arc<dyn Action>>), String> {
    let mut actions: BTreeMap<String, Arc<dyn Action>> = BTreeMap::new();
    actions.insert("log".into(), Arc::new(LogAction));
    if let Some(fw) = &config.main.firewall {
        let backend: Arc<dyn Action> = Arc::from(crate::act::firewall::backend(
            fw,
            &config.ignore,
            config.firewall_scopes(),
        ));
        actions.insert("firewall".into(), backend);
    }
    if let Some(b) = &config.main.bouncer_api {
        let api = match bouncer {
            Some(api) => {
                if api.listen != b.listen {
                    tracing::warn!(
                        "[bouncer_api] listen changed to {}: still serving on {} until a restart",
                        b.listen,
                        api.listen
                    );
                }
                api.clone()
            }
            None => {
                tracing::warn!(
                    "[bouncer_api] was added by a reload: restart portcullis to serve it on {}",
                    b.listen
                );
                Arc::new(crate::act::bouncer::Api::new(
                    b.listen,
                    Default::default(),
                    0,
                ))
            }
        };
        actions.insert(
            "bouncer_api".into(),
            Arc::new(crate::act::bouncer::BouncerAction::new(
                api,
                store.store().clone(),
            )),
        );
    }
    for (name, a) in &config.main.actions {
        let action: Arc<dyn Action> = match a {
            ActionConfig::Exec(c) => Arc::new(ExecAction::new(name, c.clone())?),
            ActionConfig::Denylist(c) => Arc::new(crate::act::DenylistAction::new(name, c.clone())),
            // Reads incidents the engine handed over, committed or not yet.
            ActionConfig::Email(c) => Arc::new(crate::act::email::EmailAction::new(
                name,
                c.clone(),
                store.clone(),
            )?),
            ActionConfig::Webhook(c) => Arc::new(crate::act::webhook::WebhookAction::new(
                name,
                c.clone(),
                store.store().clone(),
            )?),
        };
        actions.insert(name.clone(), action);
    }
    for (name, action) in &actions {
        action
            .check()
            .map_err(|e| format!("action `{name}`: {e}"))?;
    }
    // The config is good: bouncers' keys follow it.
    match (bouncer, &config.main.bouncer_api) {
        (Some(api), Some(_)) => api.set_keys(config.bouncer_keys.clone()),
        (Some(api), None) => {
            tracing::warn!(
                "[bouncer_api] was removed: its decisions are withdrawn (bouncers are told \
                 at their next poll); restart portcullis to close {}",
                api.listen
            );
            api.close();
        }
        _ => {}
    }
    let names: Vec<String> = actions.keys().cloned().collect();
    supervisor.retain(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let all: Vec<Arc<dyn Action>> = actions.values().cloned().collect();
    let tx = std::sync::Mutex::new(tx.clone());
    let report = Arc::new(move |o: Outcome| {
        let _ = tx.lock().map(|t| t.send(Msg::ActionDone(o)));
    });
    let dispatcher = Dispatcher::new(actions, report);
    // The re-apply runs on each action's worker, so the control socket
    // answers while a million bans load into the kernel; decisions made
    // meanwhile queue behind it.
    for name in &names {
        if skip_reconcile.contains(name) {
            continue;
        }
        let holding = Holding {
            all: active.clone(),
            jails: jails_using(config, name),
        };
        supervisor.restoring(name, holding.bans().count());
        dispatcher.reconcile(name, holding);
    }
    Ok((dispatcher, all))
}

/// Reads back what the kernel enforces (the firewall action) into the
/// ledger, for a store that is new. Returns the adopted bans and the actions
/// whose enforcement could not be read: those are not reconciled at start,
/// since a reconcile to an empty ledger would remove what they enforce.
pub(super) fn adopt_enforced(config: &Config, ledger: &mut Ledger) -> (Vec<Ban>, Vec<String>) {
    let Some(fw) = &config.main.firewall else {
        return (Vec::new(), Vec::new());
    };
    let action = crate::act::firewall::backend(fw, &config.ignore, config.firewall_scopes());
    let users: Vec<&str> = config
        .jails
        .iter()
        .filter(|j| j.actions.iter().any(|a| a == "firewall"))
        .map(|j| j.spec.name.as_str())
        .collect();
    let found = match action.adopt() {
        Ok(found) => found,
        Err(e) => {
            tracing::error!(
                "the state store is new and the firewall's sets cannot be read ({}); \
                 leaving the kernel as it is rather than emptying it",
                one_line(&e)
            );
            return (Vec::new(), vec!["firewall".into()]);
        }
    };
    let now = now_secs();
    let mut adopted = Vec::new();
    for a in found {
        // The comment holds the jail's name as `comment` wrote it.
        let jail = a
            .jail
            .and_then(|c| {
                users
                    .iter()
                    .find(|u| crate::act::firewall::comment(u) == c)
                    .map(|u| u.to_string())
            })
            .or_else(|| users.first().map(|j| j.to_string()));
        let Some(jail) = jail else { continue };
        let ban = Ban {
            jail,
            target: a.target,
            since: now,
            expires: a.expires,
            count: 0,
            offence: 1,
            manual: false,
            incident: None,
            origin: Some("kernel".into()),
        };
        if ledger.remote_ban(ban.clone()) {
            adopted.push(ban);
        }
    }
    if !adopted.is_empty() {
        tracing::warn!(
            bans = adopted.len(),
            "the state store is new: adopted the bans the kernel still enforces into the ledger"
        );
    }
    (adopted, Vec::new())
}

/// An error on one log line (tools print several).
pub(super) fn one_line(e: &str) -> String {
    e.split_whitespace().collect::<Vec<_>>().join(" ")
}
