//! The Debian package: built with cargo-deb, installed with dpkg on this
//! machine, its own config validated, then purged. Needs root and cargo-deb
//! (`.ci/run` installs it); in CI a missing one fails the test.

mod common;
use common::*;
use std::process::Command;

fn run(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

#[test]
fn deb_builds_installs_and_validates_its_config() {
    let have_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if unsafe { libc::geteuid() } != 0 || !have_deb {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must build and install the package: need root and cargo-deb"
        );
        eprintln!("skipping: needs root and cargo-deb");
        return;
    }
    let out = run(&mut Command::new(repo().join("packaging/build-deb.sh")));
    let deb = stdout(&out)
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .expect("a .deb")
        .trim()
        .to_string();
    let deb = if deb.starts_with('/') {
        deb
    } else {
        repo().join(&deb).display().to_string()
    };

    let contents = stdout(&run(Command::new("dpkg-deb").args(["-c", &deb])));
    for f in [
        "./usr/bin/portcullis",
        "./etc/portcullis/portcullis.toml",
        "./etc/portcullis/jails.d/api-host.toml",
        "./etc/portcullis/filters.d/auth-failure.toml",
        "portcullis.service",
        "./usr/share/man/man1/portcullis.1",
        "./usr/share/bash-completion/completions/portcullis",
        "./usr/share/zsh/vendor-completions/_portcullis",
        "./usr/share/fish/vendor_completions.d/portcullis.fish",
    ] {
        assert!(
            contents.contains(f),
            "{f} missing from the package:\n{contents}"
        );
    }

    run(Command::new("dpkg").args(["-i", &deb]));
    let purge = || {
        let _ = Command::new("dpkg")
            .args(["--purge", "portcullis"])
            .output();
    };
    let check = Command::new("/usr/bin/portcullis")
        .arg("check")
        .output()
        .unwrap();
    let conffiles = stdout(
        &Command::new("dpkg-query")
            .args(["-W", "-f=${Conffiles}", "portcullis"])
            .output()
            .unwrap(),
    );
    let man = Command::new("man").args(["-w", "portcullis"]).output();
    purge();
    assert!(check.status.success(), "{}", stderr(&check));
    assert!(
        stdout(&check).contains("config OK: 7 jails (6 enabled)"),
        "{}",
        stdout(&check)
    );
    assert!(
        conffiles.contains("/etc/portcullis/portcullis.toml"),
        "{conffiles}"
    );
    if let Ok(man) = man {
        assert!(
            man.status.success() || stderr(&man).contains("man"),
            "{}",
            stderr(&man)
        );
    }
}
