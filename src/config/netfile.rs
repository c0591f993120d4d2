//! Address lists in files: `trusted_proxies_file` and `ignore_file`.
//!
//! A CDN's or load balancer's ranges change (Cloudflare and CloudFront
//! publish theirs; a cron job fetches them), and fail2ban users keep their
//! allowlist in a file (`ignoreip = file:...`). The daemon reads these files
//! with the config, then watches them: a changed file takes effect within
//! two [`NetFiles::POLL`]s without a reload, and without touching anything else
//! (an operator's half-edited jail is not applied behind their back).
//!
//! The format is one address or CIDR a line; `#` starts a comment, blank
//! lines are skipped. A file that is unreadable or has a bad line at run
//! time keeps the last good list in force, and the error is logged once per
//! change (with `file:line`); at start and reload it is a config error.

use super::error::ConfigError;
use crate::parse::addr::NetSet;
use ipnet::IpNet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Reads one list; every bad line is an error (`path:line:column: reason`).
pub fn read(path: &Path) -> Result<Vec<IpNet>, Vec<ConfigError>> {
    // Only a regular file: opening a FIFO would block until a writer came.
    let regular = std::fs::metadata(path).map(|m| m.is_file());
    if let Ok(false) = regular {
        return Err(vec![ConfigError {
            file: path.display().to_string(),
            line: 0,
            col: 0,
            message: "not a regular file; it must hold one address or CIDR a line".into(),
        }]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![ConfigError {
            file: path.display().to_string(),
            line: 0,
            col: 0,
            message: format!("cannot read it ({e}); it must hold one address or CIDR a line"),
        }]
    })?;
    let mut nets = Vec::new();
    let mut errors = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let item = line.split('#').next().unwrap_or("").trim();
        if item.is_empty() {
            continue;
        }
        let parsed = item
            .parse::<IpNet>()
            .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Ok(n) => nets.push(n.trunc()),
            Err(_) => errors.push(ConfigError {
                file: path.display().to_string(),
                line: i + 1,
                col: line.len() - line.trim_start().len() + 1,
                message: format!(
                    "`{}` is not an address or CIDR",
                    crate::text::printable(item)
                ),
            }),
        }
    }
    if errors.is_empty() {
        Ok(nets)
    } else {
        Err(errors)
    }
}

/// What identifies a version of a file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub(crate) modified: Option<std::time::SystemTime>,
    pub(crate) len: u64,
    pub(crate) inode: u64,
    pub(crate) regular: bool,
}

/// A watched file's versions: the one in force and a new one seen at the
/// last look, taken once it has not changed for one more look (a download
/// still being written is not read half). Shared by the list files and the
/// `[geoip]` databases.
#[derive(Debug, Clone, Default)]
pub(crate) struct Versions {
    /// The version in force (loaded, or found broken), `None` for no file.
    pub(crate) current: Option<Stamp>,
    pending: Option<Option<Stamp>>,
}

/// What one look at a watched file found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// As in force.
    Same,
    /// Changed, and still changing: look again.
    Moving,
    /// A new version (or none: the file is gone) that held still: read it.
    Settled(Option<Stamp>),
}

impl Versions {
    pub(crate) fn new(current: Option<Stamp>) -> Versions {
        Versions {
            current,
            pending: None,
        }
    }

    /// Looks at `path` once.
    pub(crate) fn look(&mut self, path: &Path) -> Look {
        let now = stamp(path);
        if now == self.current {
            self.pending = None;
            return Look::Same;
        }
        if self.pending != Some(now) {
            self.pending = Some(now);
            return Look::Moving;
        }
        self.pending = None;
        self.current = now;
        Look::Settled(now)
    }
}

pub(crate) fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
        regular: m.is_file(),
    })
}

/// One list: the addresses written in the config plus those of its files.
#[derive(Debug, Clone)]
struct List {
    inline: Vec<IpNet>,
    files: Vec<Watched>,
}

/// One file of a list.
#[derive(Debug, Clone)]
struct Watched {
    path: PathBuf,
    /// The version whose contents are in force, and a new one coming.
    versions: Versions,
    nets: Vec<IpNet>,
}

impl List {
    fn load(inline: Vec<IpNet>, paths: &[PathBuf]) -> Result<List, Vec<ConfigError>> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for p in paths {
            let st = stamp(p);
            match read(p) {
                Ok(nets) => files.push(Watched {
                    path: p.clone(),
                    versions: Versions::new(st),
                    nets,
                }),
                Err(e) => errors.extend(e),
            }
        }
        if errors.is_empty() {
            Ok(List { inline, files })
        } else {
            Err(errors)
        }
    }

    fn set(&self) -> NetSet {
        let mut all = self.inline.clone();
        for f in &self.files {
            all.extend_from_slice(&f.nets);
        }
        NetSet::new(all)
    }

    /// Re-reads the files whose stamp changed and then held still for one
    /// look. `true` when the list changed; errors (the last good contents
    /// stay) as messages.
    fn poll(&mut self, errors: &mut Vec<String>) -> bool {
        let mut changed = false;
        for f in &mut self.files {
            let Look::Settled(now) = f.versions.look(&f.path) else {
                continue;
            };
            let (path, kept) = (f.path.display(), f.nets.len());
            match now {
                None => errors.push(format!(
                    "{path}: the file is gone; its {kept} addresses stay in force until it is back"
                )),
                // `curl ... > file` empties it first: an empty file is one
                // being written, not a list to apply (a list meant to be
                // empty says so with a comment line).
                Some(st) if !st.regular => errors.push(format!(
                    "{path}: not a regular file; its previous {kept} addresses stay in force"
                )),
                Some(st) if st.len == 0 => errors.push(format!(
                    "{path}: the file is empty; its previous {kept} addresses stay in force \
                     (write a `#` comment line to mean an empty list)"
                )),
                Some(_) => match read(&f.path) {
                    Ok(new) if new == f.nets => {}
                    Ok(new) => {
                        f.nets = new;
                        changed = true;
                    }
                    Err(e) => errors.push(format!(
                        "{} (the previous {kept} addresses stay in force)",
                        e.iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join("; ")
                    )),
                },
            }
        }
        changed
    }
}

/// The watched lists of a config.
#[derive(Debug, Clone)]
pub struct NetFiles {
    ignore: List,
    trusted: List,
    next: Instant,
}

/// New lists, after a file changed.
pub struct Changed {
    pub ignore: NetSet,
    pub trusted_proxies: NetSet,
}

impl NetFiles {
    /// How often the files are looked at (a `stat` each). A change applies
    /// at the second look that sees it unchanged: within 2 x POLL.
    pub const POLL: Duration = Duration::from_millis(400);

    /// Reads the files; every bad line of every file is an error.
    pub fn load(
        ignore: Vec<IpNet>,
        ignore_files: &[PathBuf],
        trusted: Vec<IpNet>,
        trusted_files: &[PathBuf],
    ) -> Result<NetFiles, Vec<ConfigError>> {
        let i = List::load(ignore, ignore_files);
        let t = List::load(trusted, trusted_files);
        match (i, t) {
            (Ok(ignore), Ok(trusted)) => Ok(NetFiles {
                ignore,
                trusted,
                next: Instant::now() + Self::POLL,
            }),
            (i, t) => Err(i
                .err()
                .into_iter()
                .flatten()
                .chain(t.err().into_iter().flatten())
                .collect()),
        }
    }

    pub fn ignore(&self) -> NetSet {
        self.ignore.set()
    }

    pub fn trusted_proxies(&self) -> NetSet {
        self.trusted.set()
    }

    /// Whether there are files to watch at all.
    pub fn any(&self) -> bool {
        !self.ignore.files.is_empty() || !self.trusted.files.is_empty()
    }

    /// At most every [`Self::POLL`]: the new lists when a file changed, and
    /// errors to log (a file gone or unreadable keeps its last contents).
    pub fn poll(&mut self, now: Instant) -> (Option<Changed>, Vec<String>) {
        let mut errors = Vec::new();
        if now < self.next || !self.any() {
            return (None, errors);
        }
        self.next = now + Self::POLL;
        let a = self.ignore.poll(&mut errors);
        let b = self.trusted.poll(&mut errors);
        let changed = (a || b).then(|| Changed {
            ignore: self.ignore(),
            trusted_proxies: self.trusted_proxies(),
        });
        (changed, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_read_watched_and_kept_when_broken() {
        let dir = std::env::temp_dir().join(format!("pc-netfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("cdn.txt");
        std::fs::write(&f, "# CDN\n203.0.113.0/24\n\n2001:db8::1 # one\n").unwrap();
        let mut nf = NetFiles::load(
            vec![],
            &[],
            vec!["10.0.0.0/8".parse().unwrap()],
            std::slice::from_ref(&f),
        )
        .unwrap();
        let t = nf.trusted_proxies();
        assert!(t.contains("203.0.113.77".parse().unwrap()));
        assert!(t.contains("10.1.2.3".parse().unwrap()));
        assert!(t.contains("2001:db8::1".parse().unwrap()));
        assert!(!t.contains("2001:db8::2".parse().unwrap()));

        // Changed: the new list.
        std::fs::write(&f, "198.51.100.0/24\n").unwrap();
        let later = Instant::now() + Duration::from_secs(2);
        // Seen once: held back until it has stood still for a look.
        let (changed, _) = nf.poll(later);
        assert!(changed.is_none());
        let (changed, errors) = nf.poll(later + Duration::from_secs(1));
        assert!(errors.is_empty(), "{errors:?}");
        let t = changed.expect("a change").trusted_proxies;
        assert!(t.contains("198.51.100.9".parse().unwrap()));
        assert!(!t.contains("203.0.113.77".parse().unwrap()));

        // Broken: the last good list stays, and it is said where.
        std::fs::write(&f, "198.51.100.0/24\nnot-an-address\n").unwrap();
        nf.poll(later + Duration::from_secs(2));
        let (changed, errors) = nf.poll(later + Duration::from_secs(3));
        assert!(changed.is_none());
        assert!(
            errors[0].contains("cdn.txt:2:1: `not-an-address`"),
            "{errors:?}"
        );
        // Truncated (`curl > file` starts so): not applied as an empty list.
        std::fs::write(&f, "").unwrap();
        nf.poll(later + Duration::from_secs(4));
        let (changed, errors) = nf.poll(later + Duration::from_secs(5));
        assert!(changed.is_none());
        assert!(errors[0].contains("empty"), "{errors:?}");
        // A FIFO in its place is refused, never opened (that would block).
        std::fs::remove_file(&f).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(&f)
            .status()
            .unwrap();
        assert!(fifo.success());
        nf.poll(later + Duration::from_secs(6));
        let (changed, errors) = nf.poll(later + Duration::from_secs(7));
        assert!(changed.is_none());
        assert!(errors[0].contains("not a regular file"), "{errors:?}");
        // Gone.
        std::fs::remove_file(&f).unwrap();
        nf.poll(later + Duration::from_secs(8));
        let (changed, errors) = nf.poll(later + Duration::from_secs(9));
        assert!(changed.is_none());
        assert!(errors[0].contains("gone"), "{errors:?}");
        assert!(
            nf.trusted_proxies()
                .contains("198.51.100.9".parse().unwrap())
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_netset_of_many_networks_answers_like_a_scan() {
        let nets: Vec<IpNet> = [
            "10.0.0.0/8",
            "10.1.0.0/16",
            "192.0.2.0/25",
            "192.0.2.128/25",
            "198.51.100.7/32",
            "2001:db8::/32",
            "2001:db8:1::/48",
            "::ffff:203.0.113.0/120",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let set = NetSet::new(nets.clone());
        for ip in [
            "10.200.1.1",
            "11.0.0.0",
            "192.0.2.127",
            "192.0.2.128",
            "192.0.3.0",
            "198.51.100.7",
            "198.51.100.8",
            "203.0.113.9",
            "2001:db8:ffff::1",
            "2001:db9::1",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let scan = set.nets().iter().any(|n| n.contains(&ip.to_canonical()));
            assert_eq!(set.contains(ip), scan, "{ip}");
        }
        assert!(set.overlaps(&"10.0.0.0/7".parse().unwrap()));
        assert!(set.overlaps(&"198.51.100.0/24".parse().unwrap()));
        assert!(!set.overlaps(&"198.51.101.0/24".parse().unwrap()));
        assert!(set.overlaps(&"::/0".parse().unwrap()));
    }
}
