//! The nftables backend: one table of Portcullis's own, sets with
//! per-element timeouts, one transaction per batch.

use super::*;
use crate::act::nft_netlink::NewElement;

/// The nftables backend.
pub struct NftablesBackend {
    table: String,
    hooks: Vec<Hook>,
    priority: i32,
    verdict: Verdict,
    remove_on_stop: bool,
    /// The allowlist: replaced when `ignore_file` changes.
    allow: Mutex<Vec<IpNet>>,
    scopes: Scopes,
    holders: Mutex<Holders>,
    /// libnftables, when installed (see [`super::libnft`]); `nft` otherwise.
    lib: Mutex<Option<crate::act::libnft::Context>>,
}

impl NftablesBackend {
    /// Runs a script as one transaction: in-process through libnftables
    /// when it is installed, else with the `nft` program.
    fn nft(&self, script: &str) -> Result<(), String> {
        if let Ok(mut lib) = self.lib.lock() {
            if lib.is_none() {
                *lib = crate::act::libnft::Context::new();
            }
            if let Some(ctx) = lib.as_mut() {
                return ctx.run(script);
            }
        }
        run("nft", &["-f", "-"], script)
    }

    pub fn new(cfg: &FirewallConfig, allow: &NetSet, scopes: Scopes) -> NftablesBackend {
        NftablesBackend {
            table: cfg.table.clone().unwrap_or_else(|| "portcullis".into()),
            hooks: cfg.hooks.clone().unwrap_or_else(|| vec![Hook::Input]),
            priority: cfg.priority.unwrap_or(-10),
            verdict: cfg.verdict,
            remove_on_stop: cfg.remove_on_stop,
            allow: Mutex::new(allow.nets().to_vec()),
            scopes,
            holders: Mutex::new(Holders::default()),
            lib: Mutex::new(None),
        }
    }

    /// The table, sets, chains and rules: idempotent, and in one transaction
    /// with whatever follows.
    pub fn ruleset(&self) -> String {
        let t = &self.table;
        let mut s = format!("add table inet {t}\n");
        for (i, k) in self.scopes.sets() {
            let ty = if k.v6() { "ipv6_addr" } else { "ipv4_addr" };
            let flags = if k.interval() {
                "interval, timeout"
            } else {
                "timeout"
            };
            let _ = writeln!(
                s,
                "add set inet {t} {} {{ type {ty}; flags {flags}; }}",
                self.scopes.set(i, k)
            );
        }
        let _ = writeln!(
            s,
            "add set inet {t} allow4 {{ type ipv4_addr; flags interval; }}"
        );
        let _ = writeln!(
            s,
            "add set inet {t} allow6 {{ type ipv6_addr; flags interval; }}"
        );
        let verdict = match self.verdict {
            Verdict::Drop => "drop",
            Verdict::Reject => "reject",
        };
        for hook in &self.hooks {
            let name = match hook {
                Hook::Input => "input",
                Hook::Forward => "forward",
            };
            let _ = writeln!(
                s,
                "add chain inet {t} {name} {{ type filter hook {name} priority {}; policy accept; }}",
                self.priority
            );
            let _ = writeln!(s, "flush chain inet {t} {name}");
            let _ = writeln!(s, "add rule inet {t} {name} ip saddr @allow4 accept");
            let _ = writeln!(s, "add rule inet {t} {name} ip6 saddr @allow6 accept");
            for (i, k) in self.scopes.sets() {
                let fam = if k.v6() { "ip6" } else { "ip" };
                let _ = writeln!(
                    s,
                    "add rule inet {t} {name} {fam} saddr @{}{} counter {verdict}",
                    self.scopes.set(i, k),
                    self.scopes.get(i).nft_match()
                );
            }
        }
        s
    }

    fn element(net: &IpNet) -> Element<'_> {
        Element(net)
    }

    /// The statements applying `ops`: per set, elements grouped into
    /// statements of up to [`PER_STATEMENT`] (nft parses one statement of
    /// 1,000 elements much faster than 1,000 statements: 1,000,000 elements
    /// load in 4.4 s instead of 11 s). In one transaction the order is per
    /// element: elements that may exist (a timeout to replace, a removal) are
    /// first added without a timeout (a no-op if present, so the delete that
    /// follows cannot fail on an element the kernel already expired), then
    /// deleted, then the new ones added.
    /// Fills the (just made or flushed) allow sets.
    fn allow_script(&self) -> String {
        let t = &self.table;
        let mut s = String::new();
        for net in self.allow.lock().map(|a| a.clone()).unwrap_or_default() {
            let set = if net.addr().is_ipv4() {
                "allow4"
            } else {
                "allow6"
            };
            let _ = writeln!(s, "add element inet {t} {set} {{ {net} }}");
        }
        s
    }

    pub(super) fn script(&self, ops: &[(Slot, Op)]) -> String {
        let t = &self.table;
        let mut s = String::new();
        for (scope, kind) in self.scopes.sets() {
            let set = self.scopes.set(scope, kind);
            let mine = || {
                ops.iter()
                    .filter(move |((i, net), _)| *i == scope && SetKind::of(net) == kind)
                    .map(|((_, net), op)| (net, op))
            };
            let touched: Vec<&IpNet> = mine()
                .filter(|(_, op)| !matches!(op, Op::Put { replace: false, .. }))
                .map(|(net, _)| net)
                .collect();
            let puts: Vec<(&IpNet, &Option<u64>, &Option<String>)> = mine()
                .filter_map(|(net, op)| match op {
                    Op::Put { timeout, jail, .. } => Some((net, timeout, jail)),
                    Op::Remove => None,
                })
                .collect();
            for verb in ["add", "delete"] {
                for chunk in touched.chunks(PER_STATEMENT) {
                    let _ = write!(s, "{verb} element inet {t} {set} {{ ");
                    for (i, net) in chunk.iter().enumerate() {
                        let sep = if i == 0 { "" } else { ", " };
                        let _ = write!(s, "{sep}{}", Self::element(net));
                    }
                    s.push_str(" }\n");
                }
            }
            for chunk in puts.chunks(PER_STATEMENT) {
                let _ = write!(s, "add element inet {t} {set} {{ ");
                for (i, (net, timeout, jail)) in chunk.iter().enumerate() {
                    let sep = if i == 0 { "" } else { ", " };
                    let _ = write!(s, "{sep}{}", Self::element(net));
                    if let Some(secs) = timeout {
                        let _ = write!(s, " timeout {secs}s");
                    }
                    if let Some(j) = jail {
                        let _ = write!(s, " comment \"{}\"", comment(j));
                    }
                }
                s.push_str(" }\n");
            }
        }
        s
    }

    /// Adds every address (not prefix) of `ops`, all `Put`s into sets just
    /// made, over netlink; returns the ops left for `nft`.
    fn add_addresses(&self, ops: &[(Slot, Op)]) -> Result<Vec<(Slot, Op)>, String> {
        let mut rest = Vec::new();
        // A jail's comment is made once, not once per element.
        let comments: HashMap<&str, String> = ops
            .iter()
            .filter_map(|(_, op)| match op {
                Op::Put { jail: Some(j), .. } => Some(j.as_str()),
                _ => None,
            })
            .map(|j| (j, comment(j)))
            .collect();
        let mut per_set: std::collections::BTreeMap<(u16, SetKind), Vec<NewElement>> =
            Default::default();
        for ((scope, net), op) in ops {
            let kind = SetKind::of(net);
            match op {
                Op::Put { timeout, jail, .. } if !kind.interval() => {
                    per_set.entry((*scope, kind)).or_default().push(NewElement {
                        addr: net.addr(),
                        timeout: *timeout,
                        comment: jail
                            .as_deref()
                            .and_then(|j| comments.get(j))
                            .map(String::as_str),
                    })
                }
                _ => rest.push(((*scope, *net), op.clone())),
            }
        }
        for ((scope, kind), elements) in &per_set {
            let set = self.scopes.set(*scope, *kind);
            crate::act::nft_netlink::add_elements(&self.table, &set, elements)?;
        }
        Ok(rest)
    }

    fn apply_ops(&self, ops: &[(Slot, Op)]) -> Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        if self.nft(&self.script(ops)).is_ok() {
            return Ok(());
        }
        // One bad element must not block the rest: retry one by one.
        let errors: Vec<String> = ops
            .iter()
            .filter_map(|op| {
                self.nft(&self.script(std::slice::from_ref(op)))
                    .err()
                    .map(|e| format!("{}: {e}", op.0.1))
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}

impl Action for NftablesBackend {
    fn name(&self) -> &str {
        "firewall"
    }

    fn repairs_by_reconcile(&self) -> bool {
        true
    }

    /// Every element of the ban sets, with its remaining time and the jail
    /// in its comment (`nft -j list set`).
    fn adopt(&self) -> Result<Vec<crate::act::Adopted>, String> {
        let now = now_secs();
        let mut out = Vec::new();
        for (i, k) in self.scopes.sets() {
            let set = self.scopes.set(i, k);
            let json = match probe("nft", &["-j", "list", "set", "inet", &self.table, &set]) {
                Ok(j) => j,
                // No table (or no set of this scope) yet: nothing to adopt.
                Err(e) if e.contains("No such file or directory") => continue,
                Err(e) => return Err(format!("nft list set {set}: {e}")),
            };
            let v: serde_json::Value =
                serde_json::from_str(&json).map_err(|e| format!("nft -j output: {e}"))?;
            for item in v["nftables"].as_array().into_iter().flatten() {
                for e in item["set"]["elem"].as_array().into_iter().flatten() {
                    let (val, meta) = match &e["elem"] {
                        serde_json::Value::Null => (e, &serde_json::Value::Null),
                        m => (&m["val"], m),
                    };
                    let text = match val {
                        serde_json::Value::String(a) => a.clone(),
                        v => format!(
                            "{}/{}",
                            v["prefix"]["addr"].as_str().unwrap_or(""),
                            v["prefix"]["len"]
                        ),
                    };
                    let Some(target) = address(&text) else {
                        continue;
                    };
                    out.push(crate::act::Adopted {
                        target,
                        expires: meta["expires"].as_i64().map(|s| now + s.max(1)),
                        jail: meta["comment"].as_str().map(String::from),
                    });
                }
            }
        }
        Ok(out)
    }

    /// The chains and their rules exist, and one live element per set kind
    /// is in its set: `nft flush ruleset`, a flushed set or a deleted table
    /// is noticed in a few process runs, however many bans there are.
    fn verify(&self) -> Result<(), String> {
        let t = &self.table;
        for hook in &self.hooks {
            let chain = match hook {
                Hook::Input => "input",
                Hook::Forward => "forward",
            };
            let lookups = crate::act::nft_netlink::chain_lookups(t, chain)?;
            if lookups.is_empty() {
                return Err(format!("chain inet {t} {chain} is gone or empty"));
            }
            for (i, k) in self.scopes.sets() {
                let set = self.scopes.set(i, k);
                if !lookups.contains(&set) {
                    return Err(format!("the rule for @{set} is gone from chain {chain}"));
                }
            }
        }
        for (scope, kind, net) in probes(&self.holders, &self.scopes) {
            let set = self.scopes.set(scope, kind);
            if !crate::act::nft_netlink::has_element(t, &set, &net)? {
                return Err(format!("{net} is missing from set {set}"));
            }
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        check_tool("nft", &["--version"], "nftables")?;
        // Permission, asked over netlink: `nft list tables` would read every
        // set element first (seconds with a million bans).
        match crate::act::nft_netlink::table_exists(&self.table) {
            Err(e) if e.contains("not permitted") => {
                Err("nft: permission denied; run portcullis as root or with CAP_NET_ADMIN".into())
            }
            Err(e) => Err(e),
            Ok(_) => Ok(()),
        }
    }

    /// Creates what is missing and makes the sets hold exactly `active`.
    fn reconcile(&self, active: &[&Ban]) -> Result<(), String> {
        let now = now_secs();
        let (held, ops) = plan_all(active, &self.scopes, now);
        *self.holders.lock().map_err(|_| "firewall state poisoned")? = held;
        let t = &self.table;
        // The table is deleted and made again in the same transaction:
        // sets of port scopes no jail uses any more go with it, and no
        // packet sees the table between the two.
        let mut s = format!("add table inet {t}\ndelete table inet {t}\n");
        s.push_str(&self.ruleset());
        s.push_str(&self.allow_script());
        // Sets the kernel still holds (a service restart) are flushed and
        // refilled in one transaction: no banned client gets through in
        // between. Sets that are gone (a boot, a flushed ruleset) protect
        // nothing yet, so a large refill follows the transaction that
        // creates them: addresses straight over netlink (nft's parsing of a
        // million elements is most of its 3-4 s), prefixes with `nft`.
        let gone = !crate::act::nft_netlink::table_exists(t).unwrap_or(true);
        if !gone || ops.len() < PARALLEL_FROM {
            s.push_str(&self.script(&ops));
            return self.nft(&s);
        }
        self.nft(&s)?;
        let ops = match self.add_addresses(&ops) {
            Ok(rest) => rest,
            Err(e) => {
                tracing::warn!("bulk refill over netlink failed ({e}); using nft");
                ops
            }
        };
        let parallel = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
        if parallel < 2 || ops.len() < PARALLEL_FROM {
            return self.nft(&self.script(&ops));
        }
        let parts = ops.chunks(ops.len().div_ceil(parallel));
        let errors: Vec<String> = std::thread::scope(|scope| {
            let running: Vec<_> = parts
                .map(|part| scope.spawn(move || run("nft", &["-f", "-"], &self.script(part))))
                .collect();
            running
                .into_iter()
                .filter_map(|h| h.join().unwrap_or(Err("nft loader panicked".into())).err())
                .collect()
        });
        match errors.first() {
            None => Ok(()),
            Some(e) => Err(e.clone()),
        }
    }

    fn apply(&self, batch: &[Change]) -> Result<(), String> {
        let ops = {
            let mut holders = self.holders.lock().map_err(|_| "firewall state poisoned")?;
            plan(&mut holders, &self.scopes, pairs(batch), now_secs())
        };
        self.apply_ops(&ops)
    }

    /// Replaces the accept sets in one transaction.
    fn set_allowlist(&self, allow: &NetSet) -> Result<(), String> {
        *self.allow.lock().map_err(|_| "firewall state poisoned")? = allow.nets().to_vec();
        let t = &self.table;
        let mut s = self.ruleset();
        let _ = writeln!(s, "flush set inet {t} allow4\nflush set inet {t} allow6");
        s.push_str(&self.allow_script());
        self.nft(&s)
    }

    fn shutdown(&self) {
        if self.remove_on_stop
            && let Err(e) = self.remove_rules()
        {
            tracing::error!("removing the nftables table: {e}");
        }
    }
}

impl NftablesBackend {
    /// Deletes the table and with it every set, chain and ban in it. A table
    /// that is not there is not an error.
    pub fn remove_rules(&self) -> Result<(), String> {
        match run(
            "nft",
            &["-f", "-"],
            &format!("delete table inet {}\n", self.table),
        ) {
            Err(e) if e.contains("No such file or directory") => Ok(()),
            r => r,
        }
    }
}
