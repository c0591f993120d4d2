//! The Debian package, built with cargo-deb and tried the way an operator
//! meets it: installed with dpkg into a throwaway Debian whose PID 1 is a
//! real systemd (`../shared/tools/systemd-sandbox`, in its own PID, mount
//! and network namespaces), started, attacked, reloaded, removed and purged
//! there. Nothing is installed on this host, and the test refuses to run on
//! a host where portcullis is installed.
//!
//! The debootstrapped root is built once per machine and cached outside the
//! repository (`PORTCULLIS_SANDBOX_ROOT`, default
//! `/var/cache/portcullis-ci/bookworm-systemd`); each run boots a copy-on-
//! write overlay of it, so runs do not see each other. Needs root, cargo-deb
//! and debootstrap (`.ci/run` installs them); in CI a missing one fails.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn tool() -> PathBuf {
    repo().join("../shared/tools/systemd-sandbox")
}

/// Builds the package; returns the .deb's path.
fn build_deb() -> PathBuf {
    let out = run(&mut Command::new(repo().join("packaging/build-deb.sh")));
    let deb = stdout(&out)
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .expect("a .deb")
        .trim()
        .to_string();
    repo().join(deb)
}

/// A booted overlay of the cached root; stopped and unmounted when dropped.
struct Sandbox {
    mnt: PathBuf,
    pid: String,
}

impl Sandbox {
    fn boot(lower: &Path) -> Sandbox {
        let mnt = std::env::temp_dir().join(format!("portcullis-sandbox-{}", std::process::id()));
        std::fs::create_dir_all(&mnt).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "tmpfs"])
            .arg(&mnt));
        for d in ["upper", "work", "root"] {
            std::fs::create_dir_all(mnt.join(d)).unwrap();
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            mnt.join("upper").display(),
            mnt.join("work").display()
        );
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mnt.join("root")));
        let out = Command::new("bash")
            .arg(tool())
            .arg("boot")
            .arg(mnt.join("root"))
            .arg("900")
            .output()
            .unwrap();
        let mut sb = Sandbox {
            mnt,
            pid: String::new(),
        };
        assert!(out.status.success(), "boot: {}", stderr(&out));
        sb.pid = stdout(&out).trim().to_string();
        sb
    }

    /// The sandbox's root as seen from this host.
    fn root(&self) -> PathBuf {
        self.mnt.join("root")
    }

    fn exec(&self, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid, "-a"])
            .args(args)
            .output()
            .unwrap()
    }

    fn sh(&self, script: &str) -> Output {
        self.exec(&["sh", "-c", script])
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.exec(args);
        assert!(
            out.status.success(),
            "{args:?} in the sandbox:\n{}{}\njournal:\n{}",
            stdout(&out),
            stderr(&out),
            self.journal("")
        );
        stdout(&out)
    }

    fn journal(&self, extra: &str) -> String {
        stdout(&self.sh(&format!(
            "journalctl -u portcullis --no-pager -o cat {extra} | tail -n 60"
        )))
    }

    fn state(&self) -> String {
        stdout(&self.exec(&["systemctl", "is-active", "portcullis"]))
            .trim()
            .to_string()
    }

    fn wait(&self, what: &str, secs: u64, mut cond: impl FnMut(&Sandbox) -> bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(secs) {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}; journal:\n{}",
            self.journal("")
        );
    }

    fn append(&self, rel: &str, text: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(self.root().join(rel))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if !self.pid.is_empty() {
            let _ = Command::new("bash")
                .arg(tool())
                .args(["stop", &self.pid])
                .output();
            std::thread::sleep(Duration::from_millis(300));
        }
        let _ = Command::new("umount").arg("-l").arg(self.root()).output();
        let _ = Command::new("umount").arg("-l").arg(&self.mnt).output();
        let _ = std::fs::remove_dir(&self.mnt);
    }
}

/// The cached debootstrapped root, made if missing; `None` (outside CI)
/// when this machine cannot make one.
fn sandbox_root() -> Option<PathBuf> {
    let root = std::env::var_os("PORTCULLIS_SANDBOX_ROOT").map_or_else(
        || PathBuf::from("/var/cache/portcullis-ci/bookworm-systemd"),
        PathBuf::from,
    );
    if !root.join("lib/systemd/systemd").exists() {
        std::fs::create_dir_all(root.parent()?).ok()?;
        let out = Command::new("bash")
            .arg(tool())
            .arg("create")
            .arg(&root)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!("cannot create {}: {}", root.display(), stderr(&out));
            return None;
        }
    }
    Some(root)
}

fn installed_on_host() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "portcullis"])
        .output()
        .is_ok_and(|o| stdout(&o).contains("ok installed"))
}

/// `readelf -S` section names of the packaged binary.
fn sections(bin: &Path) -> String {
    stdout(&run(Command::new("readelf").arg("-SW").arg(bin)))
}

#[test]
fn deb_installs_runs_and_is_removed_under_real_systemd() {
    assert!(
        !installed_on_host(),
        "portcullis is installed on this host: the package test refuses to run where an \
         operator's installation could be confused with the one under test"
    );
    let have_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    let root = (unsafe { libc::geteuid() } == 0 && have_deb && tool().exists())
        .then(sandbox_root)
        .flatten();
    let Some(root) = root else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must test the package: need root, cargo-deb, debootstrap and {}",
            tool().display()
        );
        eprintln!("skipping: needs root, cargo-deb, debootstrap and the systemd sandbox tool");
        return;
    };

    // The artefact itself.
    let deb = build_deb();
    let deb_s = deb.display().to_string();
    let contents = stdout(&run(Command::new("dpkg-deb").args(["-c", &deb_s])));
    for f in [
        "./usr/bin/portcullis",
        "./etc/portcullis/portcullis.toml",
        "./etc/portcullis/jails.d/api-host.toml",
        "./etc/portcullis/filters.d/auth-failure.toml",
        "portcullis.service",
        "./usr/share/man/man1/portcullis.1",
        "./usr/share/man/man5/portcullis.toml.5",
        "./usr/share/bash-completion/completions/portcullis",
        "./usr/share/zsh/vendor-completions/_portcullis",
        "./usr/share/fish/vendor_completions.d/portcullis.fish",
    ] {
        assert!(
            contents.contains(f),
            "{f} missing from the package:\n{contents}"
        );
    }
    let info = |part: &str| stdout(&run(Command::new("dpkg-deb").args(["-I", &deb_s, part])));
    let conffiles = info("conffiles");
    for f in [
        "/etc/portcullis/portcullis.toml",
        "/etc/portcullis/jails.d/api-host.toml",
    ] {
        assert!(conffiles.contains(f), "{f} not a conffile:\n{conffiles}");
    }
    assert!(info("postinst").contains("deb-systemd-helper enable portcullis.service"));
    assert!(info("prerm").contains("firewall-remove"));
    let x = TempDir::new("deb-x");
    run(Command::new("dpkg-deb").args(["-x", &deb_s]).arg(x.path()));
    let binary = x.path().join("usr/bin/portcullis");
    let secs = sections(&binary);
    for s in [".debug_info", ".debug_line", ".symtab"] {
        assert!(
            !secs.contains(s),
            "the packaged binary keeps {s}: not stripped"
        );
    }
    let size = std::fs::metadata(&binary).unwrap().len();
    assert!(size < 25 << 20, "binary is {size} bytes");

    // Installed under a real systemd.
    let sb = Sandbox::boot(&root);
    std::fs::copy(&deb, sb.root().join("root/portcullis.deb")).unwrap();
    sb.ok(&["dpkg", "-i", "/root/portcullis.deb"]);
    assert_eq!(
        sb.ok(&["systemctl", "is-enabled", "portcullis"]).trim(),
        "enabled"
    );
    // (the link's target is absolute: inside the sandbox, not on this host)
    assert!(
        sb.root()
            .join("etc/systemd/system/multi-user.target.wants/portcullis.service")
            .symlink_metadata()
            .is_ok()
    );
    assert_eq!(sb.state(), "inactive", "installed, not started");

    // Site config in override files only: the shipped conffiles stay as
    // shipped. A threshold of 3 instead of the shipped 100, a log of our
    // own, an action that always fails, and an operators' group. The log
    // is nginx's, and nginx is not installed yet: its directory does not
    // exist when the daemon starts, as at a boot where nginx comes up late.
    sb.ok(&["groupadd", "pcadm"]);
    sb.ok(&["useradd", "-G", "pcadm", "alice"]);
    sb.ok(&["useradd", "bob"]);
    assert!(!sb.root().join("var/log/nginx").exists());
    let etc = sb.root().join("etc/portcullis");
    std::fs::write(
        etc.join("portcullis.local.toml"),
        "control_group = \"pcadm\"\n\n[actions.broken]\ntype = \"exec\"\nban = [\"/bin/false\"]\n",
    )
    .unwrap();
    std::fs::write(
        etc.join("jails.d/site.local.toml"),
        "[auth-bruteforce]\nlogpath = \"/var/log/nginx/api.log\"\nformat = \"combined\"\n\
         maxretry = 3\naction = [\"log\", \"firewall\", \"broken\"]\n",
    )
    .unwrap();
    sb.ok(&["portcullis", "check"]);
    sb.ok(&["systemctl", "start", "portcullis"]);
    assert_eq!(
        sb.state(),
        "active",
        "a missing proxy log does not fail the unit"
    );
    sb.wait("the missing log said at priority warning", 15, |sb| {
        sb.journal("-p warning").contains("/var/log/nginx/api.log")
    });
    // nginx arrives: its log directory and file appear, and are followed.
    std::fs::create_dir_all(sb.root().join("var/log/nginx")).unwrap();
    sb.append("var/log/nginx/api.log", "");
    let pid = sb.ok(&[
        "systemctl",
        "show",
        "-p",
        "MainPID",
        "--value",
        "portcullis",
    ]);

    // A threshold crossing lands in the kernel set, in the sandbox's own
    // network namespace.
    let attacker = "203.0.113.9";
    for _ in 0..3 {
        sb.append("var/log/nginx/api.log", &attack_line(attacker));
    }
    sb.wait("the ban in the nft set", 15, |sb| {
        stdout(&sb.exec(&["nft", "list", "table", "inet", "portcullis"])).contains(attacker)
    });
    // The failing action is in the journal at priority err.
    sb.wait("the failed action at priority err", 15, |sb| {
        sb.journal("-p err").contains("broken")
    });
    assert!(
        !sb.journal("").contains("Some("),
        "Rust Debug text in the log:\n{}",
        sb.journal("")
    );

    // control_group: a member uses the CLI, anyone else gets exit status 4.
    let alice = sb.exec(&["runuser", "-u", "alice", "--", "portcullis", "bans"]);
    assert!(
        alice.status.success() && stdout(&alice).contains(attacker),
        "{}{}",
        stdout(&alice),
        stderr(&alice)
    );
    let bob = sb.exec(&["runuser", "-u", "bob", "--", "portcullis", "bans"]);
    assert_eq!(bob.status.code(), Some(4), "{}", stderr(&bob));

    // systemctl reload returns the daemon's verdict.
    sb.ok(&["systemctl", "reload", "portcullis"]);
    let good = std::fs::read_to_string(etc.join("jails.d/site.local.toml")).unwrap();
    std::fs::write(
        etc.join("jails.d/site.local.toml"),
        format!("{good}maxretyr = 4\n"),
    )
    .unwrap();
    let refused = sb.exec(&["systemctl", "reload", "portcullis"]);
    assert!(
        !refused.status.success(),
        "a broken config must fail the reload"
    );
    assert_eq!(sb.state(), "active", "and the daemon keeps running");
    std::fs::write(etc.join("jails.d/site.local.toml"), &good).unwrap();
    sb.ok(&["systemctl", "reload", "portcullis"]);

    // Under load (400,000 lines at once) the watchdog does not fire.
    let mut burst = String::with_capacity(400_000 * 100);
    for i in 0..400_000u32 {
        burst.push_str(&format!(
            "198.51.{}.{} - - [22/Nov/2026:08:00:00 +0000] \"GET /v1/items?n={i} HTTP/1.1\" 200 12 \"-\" \"curl/8\"\n",
            (i >> 8) & 0xff,
            i & 0xff
        ));
    }
    sb.append("var/log/nginx/api.log", &burst);
    sb.wait("the burst read", 120, |sb| {
        let out = sb.exec(&["portcullis", "status", "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).is_ok_and(|v| {
            v["jails"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|j| j["lines"].as_u64() >= Some(400_003))
        })
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sb.ok(&[
            "systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            "portcullis"
        ]),
        pid,
        "the daemon was restarted:\n{}",
        sb.journal("")
    );
    assert!(!sb.journal("").to_lowercase().contains("watchdog"));

    // Stop, start, remove, purge.
    sb.ok(&["systemctl", "stop", "portcullis"]);
    assert_eq!(sb.state(), "inactive");
    assert!(
        stdout(&sb.exec(&["nft", "list", "table", "inet", "portcullis"])).contains(attacker),
        "bans stay enforced while the daemon is stopped"
    );
    sb.ok(&["systemctl", "start", "portcullis"]);
    sb.ok(&["dpkg", "-r", "portcullis"]);
    assert_eq!(sb.state(), "inactive", "remove stops the service");
    assert!(
        !sb.exec(&["nft", "list", "table", "inet", "portcullis"])
            .status
            .success(),
        "remove deletes the kernel rules nothing maintains any more"
    );
    assert!(
        sb.root().join("var/lib/portcullis").exists(),
        "kept until purge"
    );
    assert!(
        etc.join("portcullis.toml").exists(),
        "conffiles kept until purge"
    );
    sb.ok(&["dpkg", "--purge", "portcullis"]);
    assert!(!sb.root().join("var/lib/portcullis").exists());
    assert!(!etc.join("portcullis.toml").exists());
}
