//! The ipset + iptables/ip6tables backend, for hosts without nftables.

use super::*;

/// The ipset + iptables/ip6tables backend, for hosts without nftables.
pub struct IpsetBackend {
    prefix: String,
    hooks: Vec<Hook>,
    verdict: Verdict,
    remove_on_stop: bool,
    /// The allowlist: replaced when `ignore_file` changes.
    allow: Mutex<Vec<IpNet>>,
    scopes: Scopes,
    holders: Mutex<Holders>,
}

impl IpsetBackend {
    pub fn new(cfg: &FirewallConfig, allow: &NetSet, scopes: Scopes) -> IpsetBackend {
        IpsetBackend {
            prefix: cfg.table.clone().unwrap_or_else(|| "portcullis".into()),
            hooks: cfg.hooks.clone().unwrap_or_else(|| vec![Hook::Input]),
            verdict: cfg.verdict,
            remove_on_stop: cfg.remove_on_stop,
            allow: Mutex::new(allow.nets().to_vec()),
            scopes,
            holders: Mutex::new(Holders::default()),
        }
    }

    /// `portcullis-addr4`, `portcullis-addr4_p1a2b3c4d` (ipset names are
    /// at most 31 characters).
    fn set(&self, scope: u16, k: SetKind) -> String {
        format!("{}-{}", self.prefix, self.scopes.set(scope, k))
    }

    /// Every ban rule: (tool, set, the scope's port match, jump), allow
    /// rules last (they are inserted at the top in reverse, so they end up
    /// first).
    fn rules(&self) -> Vec<(&'static str, String, Vec<String>, &'static str)> {
        let target = match self.verdict {
            Verdict::Drop => "DROP",
            Verdict::Reject => "REJECT",
        };
        let mut rules = Vec::new();
        for v6 in [false, true] {
            let tool = if v6 { "ip6tables" } else { "iptables" };
            for (i, k) in self.scopes.sets().filter(|(_, k)| k.v6() == v6) {
                for m in self.scopes.get(i).iptables_matches() {
                    rules.push((tool, self.set(i, k), m, target));
                }
            }
            rules.push((tool, self.allow_set(v6), Vec::new(), "ACCEPT"));
        }
        rules
    }

    fn allow_set(&self, v6: bool) -> String {
        format!("{}-allow{}", self.prefix, if v6 { 6 } else { 4 })
    }

    /// Fills fresh allow sets and swaps them in: the live ones never go
    /// empty.
    fn allow_script(&self) -> String {
        let mut s = String::new();
        for v6 in [false, true] {
            let fam = if v6 { "inet6" } else { "inet" };
            let set = self.allow_set(v6);
            let _ = writeln!(s, "create {set} hash:net family {fam} -exist");
            let _ = writeln!(s, "create {set}-new hash:net family {fam} -exist");
            let _ = writeln!(s, "flush {set}-new");
        }
        for net in self.allow.lock().map(|a| a.clone()).unwrap_or_default() {
            let set = self.allow_set(net.addr().is_ipv6());
            let _ = writeln!(s, "add {set}-new {net} -exist");
        }
        for v6 in [false, true] {
            let set = self.allow_set(v6);
            let _ = writeln!(s, "swap {set} {set}-new\ndestroy {set}-new");
        }
        s
    }

    fn script(&self, ops: &[(Slot, Op)]) -> String {
        let mut s = String::new();
        for ((scope, net), op) in ops {
            let set = self.set(*scope, SetKind::of(net));
            let e = Element(net);
            match op {
                // -exist on add updates the timeout of an existing entry.
                Op::Put { timeout, .. } => {
                    let _ = writeln!(s, "add {set} {e} timeout {} -exist", timeout.unwrap_or(0));
                }
                Op::Remove => {
                    let _ = writeln!(s, "del {set} {e} -exist");
                }
            }
        }
        s
    }

    /// iptables rules: allow first, then one drop (or reject) per set and
    /// port match; each added once.
    fn ensure_rules(&self) -> Result<(), String> {
        for hook in &self.hooks {
            let chain = chain_name(*hook);
            for (tool, set, ports, jump) in self.rules() {
                let spec = rule_spec(&set, &ports, jump);
                let exists = Command::new(tool)
                    .args(["-C", chain])
                    .args(&spec)
                    .output()
                    .is_ok_and(|o| o.status.success());
                if !exists {
                    let out = Command::new(tool)
                        .args(["-I", chain, "1"])
                        .args(&spec)
                        .output()
                        .map_err(|e| format!("{tool}: {e}"))?;
                    if !out.status.success() {
                        return Err(format!(
                            "{tool} -I {chain}: {}",
                            String::from_utf8_lossy(&out.stderr).trim()
                        ));
                    }
                }
            }
        }
        self.remove_stale();
        Ok(())
    }

    /// Deletes rules and sets of ours that no jail's port scope uses any
    /// more (a jail's `ports` changed): left in place they would go on
    /// dropping with the old scope until every ban in them expired.
    fn remove_stale(&self) {
        let ours = format!("{}-", self.prefix);
        let wanted: Vec<String> = self.rules().into_iter().map(|(_, set, _, _)| set).collect();
        let stale = |set: &str| set.starts_with(&ours) && !wanted.iter().any(|w| w == set);
        for hook in &self.hooks {
            let chain = chain_name(*hook);
            for tool in ["iptables", "ip6tables"] {
                let Ok(listing) = probe(tool, &["-S", chain]) else {
                    continue;
                };
                for line in listing.lines() {
                    let words: Vec<&str> = line.split_whitespace().collect();
                    let set = words
                        .iter()
                        .position(|w| *w == "--match-set")
                        .and_then(|i| words.get(i + 1));
                    if words.first() == Some(&"-A") && set.is_some_and(|s| stale(s)) {
                        let _ = Command::new(tool).arg("-D").args(&words[1..]).output();
                    }
                }
            }
        }
        if let Ok(names) = probe("ipset", &["list", "-n"]) {
            for set in names.lines().filter(|s| stale(s)) {
                let _ = run("ipset", &["destroy", set], "");
            }
        }
    }
}

fn chain_name(hook: Hook) -> &'static str {
    match hook {
        Hook::Input => "INPUT",
        Hook::Forward => "FORWARD",
    }
}

/// The arguments of one rule after the chain.
fn rule_spec(set: &str, ports: &[String], jump: &str) -> Vec<String> {
    let mut spec: Vec<String> = ["-m", "set", "--match-set", set, "src"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    spec.extend(ports.iter().cloned());
    spec.extend(["-j".to_string(), jump.to_string()]);
    spec
}

impl Action for IpsetBackend {
    fn repairs_by_reconcile(&self) -> bool {
        true
    }

    /// Every element of the ban sets with its remaining time (`ipset save`);
    /// ipset keeps no jail.
    fn adopt(&self) -> Result<Vec<crate::act::Adopted>, String> {
        let now = now_secs();
        let mut out = Vec::new();
        for (i, k) in self.scopes.sets() {
            let set = self.set(i, k);
            let Ok(saved) = probe("ipset", &["save", &set]) else {
                continue;
            };
            for line in saved.lines() {
                let mut w = line.split_whitespace();
                if w.next() != Some("add") || w.next() != Some(set.as_str()) {
                    continue;
                }
                let Some(target) = w.next().and_then(address) else {
                    continue;
                };
                let timeout = match (w.next(), w.next()) {
                    (Some("timeout"), Some(t)) => t.parse::<i64>().ok().filter(|t| *t > 0),
                    _ => None,
                };
                out.push(crate::act::Adopted {
                    target,
                    expires: timeout.map(|t| now + t),
                    jail: None,
                });
            }
        }
        Ok(out)
    }

    /// The iptables rules exist and one live element per set kind is in its
    /// set (`ipset test`), as for nftables.
    fn verify(&self) -> Result<(), String> {
        for hook in &self.hooks {
            let chain = chain_name(*hook);
            for (tool, set, ports, jump) in self.rules() {
                let mut args = vec!["-C".to_string(), chain.to_string()];
                args.extend(rule_spec(&set, &ports, jump));
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                probe(tool, &args)
                    .map_err(|_| format!("the {tool} rule for {set} is gone from {chain}"))?;
            }
        }
        for (scope, kind, net) in probes(&self.holders, &self.scopes) {
            let set = self.set(scope, kind);
            probe("ipset", &["test", &set, &net.to_string()])
                .map_err(|_| format!("{net} is missing from ipset {set}"))?;
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "firewall"
    }

    fn check(&self) -> Result<(), String> {
        if self.prefix.len() > IPSET_PREFIX_MAX {
            return Err(format!(
                "`table = \"{}\"` is too long for ipset: at most {IPSET_PREFIX_MAX} characters \
                 (set names are limited to 31)",
                self.prefix
            ));
        }
        check_tool("ipset", &["list", "-n"], "ipset")?;
        check_tool("iptables", &["-S", "INPUT"], "iptables")?;
        check_tool("ip6tables", &["-S", "INPUT"], "iptables")
    }

    fn reconcile(&self, active: &[&Ban]) -> Result<(), String> {
        let (held, ops) = plan_all(active, &self.scopes, now_secs());
        *self.holders.lock().map_err(|_| "firewall state poisoned")? = held;
        // Fill fresh sets, then swap them in: the live sets never go empty.
        let mut s = String::new();
        for (i, k) in self.scopes.sets() {
            let (ty, fam) = (
                if k.interval() { "hash:net" } else { "hash:ip" },
                if k.v6() { "inet6" } else { "inet" },
            );
            let set = self.set(i, k);
            let _ = writeln!(s, "create {set} {ty} family {fam} timeout 0 -exist");
            let _ = writeln!(s, "create {set}-new {ty} family {fam} timeout 0 -exist");
            let _ = writeln!(s, "flush {set}-new");
        }
        s.push_str(&self.allow_script());
        let fresh: String = self
            .script(&ops)
            .lines()
            .map(|l| {
                let mut parts: Vec<String> = l.split(' ').map(String::from).collect();
                parts[1].push_str("-new");
                parts.join(" ") + "\n"
            })
            .collect();
        s.push_str(&fresh);
        for (i, k) in self.scopes.sets() {
            let set = self.set(i, k);
            let _ = writeln!(s, "swap {set} {set}-new");
            let _ = writeln!(s, "destroy {set}-new");
        }
        run("ipset", &["restore"], &s)?;
        self.ensure_rules()
    }

    fn apply(&self, batch: &[Change]) -> Result<(), String> {
        let ops = {
            let mut holders = self.holders.lock().map_err(|_| "firewall state poisoned")?;
            plan(&mut holders, &self.scopes, pairs(batch), now_secs())
        };
        if ops.is_empty() {
            return Ok(());
        }
        if run("ipset", &["restore"], &self.script(&ops)).is_ok() {
            return Ok(());
        }
        let errors: Vec<String> = ops
            .iter()
            .filter_map(|op| {
                run(
                    "ipset",
                    &["restore"],
                    &self.script(std::slice::from_ref(op)),
                )
                .err()
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }

    fn set_allowlist(&self, allow: &NetSet) -> Result<(), String> {
        *self.allow.lock().map_err(|_| "firewall state poisoned")? = allow.nets().to_vec();
        run("ipset", &["restore"], &self.allow_script())
    }

    fn shutdown(&self) {
        if self.remove_on_stop
            && let Err(e) = self.remove_rules()
        {
            tracing::error!("removing ipsets: {e}");
        }
    }
}

impl IpsetBackend {
    /// Deletes the iptables rules that use the sets, then the sets. Rules
    /// or sets that are not there are not an error.
    pub fn remove_rules(&self) -> Result<(), String> {
        for hook in &self.hooks {
            let chain = chain_name(*hook);
            for (tool, set, ports, jump) in self.rules() {
                let _ = Command::new(tool)
                    .args(["-D", chain])
                    .args(rule_spec(&set, &ports, jump))
                    .output();
            }
        }
        // One set at a time: `ipset restore` stops at the first set that is
        // not there.
        let mut sets: Vec<String> = self.scopes.sets().map(|(i, k)| self.set(i, k)).collect();
        sets.extend([self.allow_set(false), self.allow_set(true)]);
        let errors: Vec<String> = sets
            .iter()
            .filter_map(|set| run("ipset", &["destroy", set], "").err())
            .filter(|e| !e.contains("does not exist"))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    }
}
