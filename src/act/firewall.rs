//! Enforcement in the kernel: nftables sets with per-element timeouts (or
//! ipset + iptables on hosts without nftables).
//!
//! Portcullis owns one table (default `inet portcullis`) and never touches
//! another. Each banned address is an element whose timeout is the ban's
//! remaining time, so the kernel expires it even while the daemon is stopped.
//! Every batch is one `nft -f -` transaction: all of it applies or none, and a
//! reconcile (flush the sets and refill them, in the same transaction) leaves
//! no moment in which a banned client gets through. Changes are idempotent (a
//! removal first adds the element, so removing one the kernel already expired
//! cannot fail a batch); a batch that fails anyway is retried change by
//! change, so one bad element cannot block the rest.
//!
//! The backend keeps, per address, the bans holding it (two jails may ban one
//! address): the element stays while any of them is active, with the latest
//! expiry.

use super::{Action, Change};
use crate::decide::Ban;
use crate::detect::Target;
use crate::parse::addr::NetSet;
use ipnet::IpNet;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// `[firewall]` in `portcullis.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    /// `nftables` (default) or `ipset` (ipset + iptables/ip6tables).
    #[serde(default)]
    pub backend: Backend,
    /// Table name (nftables) or set-name prefix (ipset). Default `portcullis`.
    pub table: Option<String>,
    /// Hooks to filter: `input` (default) and/or `forward`.
    pub hooks: Option<Vec<Hook>>,
    /// Base chain priority (nftables). Default -10: before the usual filter chains.
    pub priority: Option<i32>,
    /// `drop` (default) or `reject`.
    #[serde(default)]
    pub verdict: Verdict,
    /// Remove the table (or sets and rules) when the daemon stops. Default
    /// false: bans stay enforced while the daemon is down (fail closed).
    #[serde(default)]
    pub remove_on_stop: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Nftables,
    Ipset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    Input,
    Forward,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    #[default]
    Drop,
    Reject,
}

/// One of the four ban sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum SetKind {
    Addr4,
    Addr6,
    Net4,
    Net6,
}

impl SetKind {
    const ALL: [SetKind; 4] = [SetKind::Addr4, SetKind::Addr6, SetKind::Net4, SetKind::Net6];

    fn of(net: &IpNet) -> SetKind {
        let single = net.prefix_len() == net.max_prefix_len();
        match (net, single) {
            (IpNet::V4(_), true) => SetKind::Addr4,
            (IpNet::V6(_), true) => SetKind::Addr6,
            (IpNet::V4(_), false) => SetKind::Net4,
            (IpNet::V6(_), false) => SetKind::Net6,
        }
    }

    fn name(self) -> &'static str {
        match self {
            SetKind::Addr4 => "addr4",
            SetKind::Addr6 => "addr6",
            SetKind::Net4 => "net4",
            SetKind::Net6 => "net6",
        }
    }

    fn v6(self) -> bool {
        matches!(self, SetKind::Addr6 | SetKind::Net6)
    }

    fn interval(self) -> bool {
        matches!(self, SetKind::Net4 | SetKind::Net6)
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// What one element must become.
#[derive(Debug, Clone, PartialEq)]
enum Op {
    /// Present, with this timeout (seconds; `None` = permanent). `replace`
    /// when it may already be there with another timeout.
    Put {
        timeout: Option<u64>,
        replace: bool,
        /// The jail holding it longest (an nft element comment), so a store
        /// rebuilt from the kernel knows which jail each ban belongs to.
        jail: Option<String>,
    },
    Remove,
}

/// A jail name as an nft comment: a quoted string of safe characters only.
fn comment(jail: &str) -> String {
    jail.chars()
        .filter(|c| c.is_ascii_alphanumeric() || "_.:-".contains(*c))
        .take(64)
        .collect()
}

/// The bans holding each address: (jail → expiry, `None` = permanent).
type Holders = HashMap<IpNet, BTreeMap<String, Option<i64>>>;

/// Folds changes into the element operations they imply.
fn plan(holders: &mut Holders, changes: &[Change], now: i64) -> Vec<(IpNet, Op)> {
    let mut touched: Vec<IpNet> = Vec::new();
    let mut existed: HashMap<IpNet, bool> = HashMap::new();
    for c in changes {
        let Target::Address(net) = c.ban().target else {
            continue;
        };
        // First sight of `net` in this batch: remember whether the kernel
        // already held it, and its place in the output (a map lookup, not a
        // scan of the batch: 1,000,000 restored bans are one pass).
        if let std::collections::hash_map::Entry::Vacant(v) = existed.entry(net) {
            v.insert(holders.contains_key(&net));
            touched.push(net);
        }
        let entry = holders.entry(net).or_default();
        match c {
            Change::Add(b) => {
                entry.insert(b.jail.clone(), b.expires);
            }
            Change::Remove { ban, .. } => {
                entry.remove(&ban.jail);
            }
        }
    }
    touched
        .into_iter()
        .map(|net| {
            let held = holders.get(&net).filter(|h| !h.is_empty()).cloned();
            match held {
                None => {
                    holders.remove(&net);
                    (net, Op::Remove)
                }
                Some(h) => {
                    let timeout = if h.values().any(Option::is_none) {
                        None
                    } else {
                        h.values().flatten().max().map(|e| (e - now).max(1) as u64)
                    };
                    // The jail whose ban lasts longest (permanent first).
                    let jail = h
                        .iter()
                        .max_by_key(|(_, e)| e.unwrap_or(i64::MAX))
                        .map(|(j, _)| j.clone());
                    (
                        net,
                        Op::Put {
                            timeout,
                            replace: existed[&net],
                            jail,
                        },
                    )
                }
            }
        })
        .collect()
}

/// One element per set kind that must be in the kernel now (held by a ban
/// that has at least a few seconds left): what `verify` probes.
fn probes(holders: &Mutex<Holders>) -> Vec<(SetKind, IpNet)> {
    let soon = now_secs() + 5;
    let Ok(holders) = holders.lock() else {
        return Vec::new();
    };
    let mut out: Vec<(SetKind, IpNet)> = Vec::new();
    for (net, h) in holders.iter() {
        let kind = SetKind::of(net);
        if out.iter().any(|(k, _)| *k == kind) {
            continue;
        }
        if h.values().any(|e| e.is_none_or(|e| e > soon)) {
            out.push((kind, *net));
            if out.len() == SetKind::ALL.len() {
                break;
            }
        }
    }
    out
}

/// An element the kernel holds, as a ban target (address or prefix, in the
/// canonical form `Target::parse` gives); `None` for anything else.
fn address(text: &str) -> Option<Target> {
    Target::parse(text)
        .ok()
        .filter(|t| matches!(t, Target::Address(_)))
}

/// Runs a program with arguments; an error carries its stderr.
fn probe(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Runs a program with `input` on stdin; an error carries its stderr.
fn run(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(input.as_bytes())
        .map_err(|e| format!("writing to {program}: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            err.lines().take(6).collect::<Vec<_>>().join(" | ")
        ))
    }
}

/// Checks that a tool exists and may change the firewall.
fn check_tool(program: &str, probe: &[&str], package: &str) -> Result<(), String> {
    let out = Command::new(program)
        .args(probe)
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "`{program}` not found: install the `{package}` package, or set [firewall] backend"
            ),
            _ => format!("cannot run {program}: {e}"),
        })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("Operation not permitted") || err.contains("Permission denied") {
        return Err(format!(
            "{program}: permission denied; run portcullis as root or with CAP_NET_ADMIN"
        ));
    }
    Err(format!("{program} {}: {}", probe.join(" "), err.trim()))
}

/// The nftables backend.
pub struct NftablesBackend {
    table: String,
    hooks: Vec<Hook>,
    priority: i32,
    verdict: Verdict,
    remove_on_stop: bool,
    allow: Vec<IpNet>,
    holders: Mutex<Holders>,
}

impl NftablesBackend {
    pub fn new(cfg: &FirewallConfig, allow: &NetSet) -> NftablesBackend {
        NftablesBackend {
            table: cfg.table.clone().unwrap_or_else(|| "portcullis".into()),
            hooks: cfg.hooks.clone().unwrap_or_else(|| vec![Hook::Input]),
            priority: cfg.priority.unwrap_or(-10),
            verdict: cfg.verdict,
            remove_on_stop: cfg.remove_on_stop,
            allow: allow.nets().to_vec(),
            holders: Mutex::new(HashMap::new()),
        }
    }

    /// The table, sets, chains and rules: idempotent, and in one transaction
    /// with whatever follows.
    pub fn ruleset(&self) -> String {
        let t = &self.table;
        let mut s = format!("add table inet {t}\n");
        for k in SetKind::ALL {
            let ty = if k.v6() { "ipv6_addr" } else { "ipv4_addr" };
            let flags = if k.interval() {
                "interval, timeout"
            } else {
                "timeout"
            };
            let _ = writeln!(
                s,
                "add set inet {t} {} {{ type {ty}; flags {flags}; }}",
                k.name()
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
            for k in SetKind::ALL {
                let fam = if k.v6() { "ip6" } else { "ip" };
                let _ = writeln!(
                    s,
                    "add rule inet {t} {name} {fam} saddr @{} counter {verdict}",
                    k.name()
                );
            }
        }
        s
    }

    fn element(net: &IpNet) -> String {
        if net.prefix_len() == net.max_prefix_len() {
            net.addr().to_string()
        } else {
            net.to_string()
        }
    }

    /// The statements applying `ops`.
    fn script(&self, ops: &[(IpNet, Op)]) -> String {
        let t = &self.table;
        let mut s = String::new();
        for (net, op) in ops {
            let set = SetKind::of(net).name();
            let e = Self::element(net);
            match op {
                Op::Put {
                    timeout,
                    replace,
                    jail,
                } => {
                    if *replace {
                        // add (no-op if present) + delete + add: replaces the timeout atomically.
                        let _ = writeln!(s, "add element inet {t} {set} {{ {e} }}");
                        let _ = writeln!(s, "delete element inet {t} {set} {{ {e} }}");
                    }
                    let timeout = timeout.map_or(String::new(), |secs| format!(" timeout {secs}s"));
                    let note = jail
                        .as_deref()
                        .map_or(String::new(), |j| format!(" comment \"{}\"", comment(j)));
                    let _ = writeln!(s, "add element inet {t} {set} {{ {e}{timeout}{note} }}");
                }
                Op::Remove => {
                    // add first, so a removal of an element the kernel already expired cannot fail.
                    let _ = writeln!(s, "add element inet {t} {set} {{ {e} }}");
                    let _ = writeln!(s, "delete element inet {t} {set} {{ {e} }}");
                }
            }
        }
        s
    }

    fn apply_ops(&self, ops: &[(IpNet, Op)]) -> Result<(), String> {
        if ops.is_empty() {
            return Ok(());
        }
        if run("nft", &["-f", "-"], &self.script(ops)).is_ok() {
            return Ok(());
        }
        // One bad element must not block the rest: retry one by one.
        let errors: Vec<String> = ops
            .iter()
            .filter_map(|op| {
                run("nft", &["-f", "-"], &self.script(std::slice::from_ref(op)))
                    .err()
                    .map(|e| format!("{}: {e}", op.0))
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
    fn adopt(&self) -> Result<Vec<super::Adopted>, String> {
        let now = now_secs();
        let mut out = Vec::new();
        for k in SetKind::ALL {
            let json = match probe("nft", &["-j", "list", "set", "inet", &self.table, k.name()]) {
                Ok(j) => j,
                // No table yet: nothing to adopt.
                Err(e) if e.contains("No such file or directory") => continue,
                Err(e) => return Err(format!("nft list set {}: {e}", k.name())),
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
                    out.push(super::Adopted {
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
            let rules = probe("nft", &["list", "chain", "inet", t, chain])
                .map_err(|e| format!("chain inet {t} {chain} is gone ({e})"))?;
            for k in SetKind::ALL {
                if !rules.contains(&format!("saddr @{} ", k.name())) {
                    return Err(format!(
                        "the rule for @{} is gone from chain {chain}",
                        k.name()
                    ));
                }
            }
        }
        for (kind, net) in probes(&self.holders) {
            let elem = format!("{{ {} }}", Self::element(&net));
            probe("nft", &["get", "element", "inet", t, kind.name(), &elem])
                .map_err(|_| format!("{net} is missing from set {}", kind.name()))?;
        }
        Ok(())
    }

    fn check(&self) -> Result<(), String> {
        check_tool("nft", &["list", "tables"], "nftables")
    }

    /// Creates what is missing and makes the sets hold exactly `active`, in
    /// one transaction.
    fn reconcile(&self, active: &[Ban]) -> Result<(), String> {
        let now = now_secs();
        let mut holders = self.holders.lock().map_err(|_| "firewall state poisoned")?;
        holders.clear();
        let adds: Vec<Change> = active.iter().cloned().map(Change::Add).collect();
        let ops = plan(&mut holders, &adds, now);
        let t = &self.table;
        let mut s = self.ruleset();
        for k in SetKind::ALL {
            let _ = writeln!(s, "flush set inet {t} {}", k.name());
        }
        let _ = writeln!(s, "flush set inet {t} allow4\nflush set inet {t} allow6");
        for net in &self.allow {
            let set = if net.addr().is_ipv4() {
                "allow4"
            } else {
                "allow6"
            };
            let _ = writeln!(s, "add element inet {t} {set} {{ {net} }}");
        }
        let ops: Vec<(IpNet, Op)> = ops
            .into_iter()
            .map(|(n, op)| match op {
                Op::Put { timeout, jail, .. } => (
                    n,
                    Op::Put {
                        timeout,
                        replace: false,
                        jail,
                    },
                ),
                other => (n, other),
            })
            .collect();
        s.push_str(&self.script(&ops));
        run("nft", &["-f", "-"], &s)
    }

    fn apply(&self, batch: &[Change]) -> Result<(), String> {
        let ops = {
            let mut holders = self.holders.lock().map_err(|_| "firewall state poisoned")?;
            plan(&mut holders, batch, now_secs())
        };
        self.apply_ops(&ops)
    }

    fn shutdown(&self) {
        if !self.remove_on_stop {
            return;
        }
        if let Err(e) = run(
            "nft",
            &["-f", "-"],
            &format!("delete table inet {}\n", self.table),
        ) {
            tracing::error!("removing the nftables table: {e}");
        }
    }
}

/// The ipset + iptables/ip6tables backend, for hosts without nftables.
pub struct IpsetBackend {
    prefix: String,
    hooks: Vec<Hook>,
    verdict: Verdict,
    remove_on_stop: bool,
    allow: Vec<IpNet>,
    holders: Mutex<Holders>,
}

impl IpsetBackend {
    pub fn new(cfg: &FirewallConfig, allow: &NetSet) -> IpsetBackend {
        IpsetBackend {
            prefix: cfg.table.clone().unwrap_or_else(|| "portcullis".into()),
            hooks: cfg.hooks.clone().unwrap_or_else(|| vec![Hook::Input]),
            verdict: cfg.verdict,
            remove_on_stop: cfg.remove_on_stop,
            allow: allow.nets().to_vec(),
            holders: Mutex::new(HashMap::new()),
        }
    }

    fn set(&self, k: SetKind) -> String {
        format!("{}-{}", self.prefix, k.name())
    }

    fn allow_set(&self, v6: bool) -> String {
        format!("{}-allow{}", self.prefix, if v6 { 6 } else { 4 })
    }

    fn script(&self, ops: &[(IpNet, Op)]) -> String {
        let mut s = String::new();
        for (net, op) in ops {
            let set = self.set(SetKind::of(net));
            let e = NftablesBackend::element(net);
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

    /// iptables rules: allow first, then one drop (or reject) per set; added once.
    fn ensure_rules(&self) -> Result<(), String> {
        let target = match self.verdict {
            Verdict::Drop => "DROP",
            Verdict::Reject => "REJECT",
        };
        for hook in &self.hooks {
            let chain = match hook {
                Hook::Input => "INPUT",
                Hook::Forward => "FORWARD",
            };
            for v6 in [false, true] {
                let tool = if v6 { "ip6tables" } else { "iptables" };
                let mut rules: Vec<(String, &str)> = SetKind::ALL
                    .iter()
                    .filter(|k| k.v6() == v6)
                    .map(|k| (self.set(*k), target))
                    .collect();
                // Inserted at the top in reverse, so the allow rule ends up first.
                rules.push((self.allow_set(v6), "ACCEPT"));
                for (set, jump) in rules {
                    let spec = ["-m", "set", "--match-set", &set, "src", "-j", jump];
                    let exists = Command::new(tool)
                        .args(["-C", chain])
                        .args(spec)
                        .output()
                        .is_ok_and(|o| o.status.success());
                    if !exists {
                        let out = Command::new(tool)
                            .args(["-I", chain, "1"])
                            .args(spec)
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
        }
        Ok(())
    }
}

impl Action for IpsetBackend {
    fn repairs_by_reconcile(&self) -> bool {
        true
    }

    /// Every element of the ban sets with its remaining time (`ipset save`);
    /// ipset keeps no jail.
    fn adopt(&self) -> Result<Vec<super::Adopted>, String> {
        let now = now_secs();
        let mut out = Vec::new();
        for k in SetKind::ALL {
            let set = self.set(k);
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
                out.push(super::Adopted {
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
        let target = match self.verdict {
            Verdict::Drop => "DROP",
            Verdict::Reject => "REJECT",
        };
        for hook in &self.hooks {
            let chain = match hook {
                Hook::Input => "INPUT",
                Hook::Forward => "FORWARD",
            };
            for k in SetKind::ALL {
                let tool = if k.v6() { "ip6tables" } else { "iptables" };
                let set = self.set(k);
                probe(
                    tool,
                    &[
                        "-C",
                        chain,
                        "-m",
                        "set",
                        "--match-set",
                        &set,
                        "src",
                        "-j",
                        target,
                    ],
                )
                .map_err(|_| format!("the {tool} rule for {set} is gone from {chain}"))?;
            }
        }
        for (kind, net) in probes(&self.holders) {
            let set = self.set(kind);
            probe("ipset", &["test", &set, &net.to_string()])
                .map_err(|_| format!("{net} is missing from ipset {set}"))?;
        }
        Ok(())
    }

    fn name(&self) -> &str {
        "firewall"
    }

    fn check(&self) -> Result<(), String> {
        check_tool("ipset", &["list", "-n"], "ipset")?;
        check_tool("iptables", &["-S", "INPUT"], "iptables")?;
        check_tool("ip6tables", &["-S", "INPUT"], "iptables")
    }

    fn reconcile(&self, active: &[Ban]) -> Result<(), String> {
        let mut holders = self.holders.lock().map_err(|_| "firewall state poisoned")?;
        holders.clear();
        let adds: Vec<Change> = active.iter().cloned().map(Change::Add).collect();
        let ops = plan(&mut holders, &adds, now_secs());
        // Fill fresh sets, then swap them in: the live sets never go empty.
        let mut s = String::new();
        for k in SetKind::ALL {
            let (ty, fam) = (
                if k.interval() { "hash:net" } else { "hash:ip" },
                if k.v6() { "inet6" } else { "inet" },
            );
            let _ = writeln!(
                s,
                "create {} {ty} family {fam} timeout 0 -exist",
                self.set(k)
            );
            let _ = writeln!(
                s,
                "create {}-new {ty} family {fam} timeout 0 -exist",
                self.set(k)
            );
            let _ = writeln!(s, "flush {}-new", self.set(k));
        }
        for v6 in [false, true] {
            let fam = if v6 { "inet6" } else { "inet" };
            let _ = writeln!(
                s,
                "create {} hash:net family {fam} -exist",
                self.allow_set(v6)
            );
            let _ = writeln!(s, "flush {}", self.allow_set(v6));
        }
        for net in &self.allow {
            let _ = writeln!(
                s,
                "add {} {net} -exist",
                self.allow_set(net.addr().is_ipv6())
            );
        }
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
        for k in SetKind::ALL {
            let _ = writeln!(s, "swap {} {}-new", self.set(k), self.set(k));
            let _ = writeln!(s, "destroy {}-new", self.set(k));
        }
        run("ipset", &["restore"], &s)?;
        self.ensure_rules()
    }

    fn apply(&self, batch: &[Change]) -> Result<(), String> {
        let ops = {
            let mut holders = self.holders.lock().map_err(|_| "firewall state poisoned")?;
            plan(&mut holders, batch, now_secs())
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

    fn shutdown(&self) {
        if !self.remove_on_stop {
            return;
        }
        let target = if self.verdict == Verdict::Drop {
            "DROP"
        } else {
            "REJECT"
        };
        for hook in &self.hooks {
            let chain = if *hook == Hook::Input {
                "INPUT"
            } else {
                "FORWARD"
            };
            for v6 in [false, true] {
                let tool = if v6 { "ip6tables" } else { "iptables" };
                let mut sets: Vec<(String, &str)> = SetKind::ALL
                    .iter()
                    .filter(|k| k.v6() == v6)
                    .map(|k| (self.set(*k), target))
                    .collect();
                sets.push((self.allow_set(v6), "ACCEPT"));
                for (set, jump) in sets {
                    let _ = Command::new(tool)
                        .args([
                            "-D",
                            chain,
                            "-m",
                            "set",
                            "--match-set",
                            &set,
                            "src",
                            "-j",
                            jump,
                        ])
                        .output();
                }
            }
        }
        let mut s = String::new();
        for k in SetKind::ALL {
            let _ = writeln!(s, "destroy {}", self.set(k));
        }
        let _ = writeln!(
            s,
            "destroy {}\ndestroy {}",
            self.allow_set(false),
            self.allow_set(true)
        );
        if let Err(e) = run("ipset", &["restore"], &s) {
            tracing::error!("removing ipsets: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(jail: &str, t: &str, expires: Option<i64>) -> Ban {
        Ban {
            jail: jail.into(),
            target: Target::parse(t).unwrap(),
            since: 0,
            expires,
            count: 1,
            offence: 1,
            manual: false,
            incident: None,
            origin: None,
        }
    }

    #[test]
    fn two_jails_hold_one_address() {
        let mut h = Holders::new();
        let a = plan(&mut h, &[Change::Add(ban("a", "192.0.2.1", Some(100)))], 0);
        assert_eq!(
            a,
            vec![(
                "192.0.2.1/32".parse().unwrap(),
                Op::Put {
                    timeout: Some(100),
                    replace: false,
                    jail: Some("a".into())
                }
            )]
        );
        let b = plan(&mut h, &[Change::Add(ban("b", "192.0.2.1", Some(500)))], 0);
        assert_eq!(
            b[0].1,
            Op::Put {
                timeout: Some(500),
                replace: true,
                jail: Some("b".into())
            }
        );
        // Jail b's ban ends: the element stays for jail a, with a's expiry.
        let c = plan(
            &mut h,
            &[Change::Remove {
                ban: ban("b", "192.0.2.1", Some(500)),
                reason: "x",
            }],
            10,
        );
        assert_eq!(
            c[0].1,
            Op::Put {
                timeout: Some(90),
                replace: true,
                jail: Some("a".into())
            }
        );
        let d = plan(
            &mut h,
            &[Change::Remove {
                ban: ban("a", "192.0.2.1", Some(100)),
                reason: "x",
            }],
            10,
        );
        assert_eq!(d[0].1, Op::Remove);
        assert!(h.is_empty());
        // Key targets are not the firewall's business.
        assert!(plan(&mut h, &[Change::Add(ban("k", "key:abc", None))], 0).is_empty());
    }

    #[test]
    fn script_is_idempotent_nft() {
        let cfg = FirewallConfig {
            backend: Backend::Nftables,
            table: None,
            hooks: None,
            priority: None,
            verdict: Verdict::Drop,
            remove_on_stop: false,
        };
        let fw = NftablesBackend::new(&cfg, &NetSet::default());
        let s = fw.script(&[
            (
                "2001:db8::/64".parse().unwrap(),
                Op::Put {
                    timeout: Some(60),
                    replace: false,
                    jail: Some("auth \"x\"".into()),
                },
            ),
            ("192.0.2.1/32".parse().unwrap(), Op::Remove),
        ]);
        assert_eq!(
            s,
            "add element inet portcullis net6 { 2001:db8::/64 timeout 60s comment \"authx\" }\n\
             add element inet portcullis addr4 { 192.0.2.1 }\n\
             delete element inet portcullis addr4 { 192.0.2.1 }\n"
        );
        assert!(
            fw.ruleset()
                .contains("add rule inet portcullis input ip saddr @allow4 accept\n")
        );
    }
}
