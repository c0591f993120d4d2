//! The journal as a source, on real journal files: entries are written with
//! `systemd-journal-remote` (from the journal export format) into a
//! directory the jail reads (`journal = { identifier, directory }`), as a
//! service's log would be. A burst is banned, another identifier is not
//! counted, and a restart resumes after the saved cursor: entries written
//! while the daemon was down are read, and none is counted twice.
//!
//! Needs `journalctl` and `systemd-journal-remote` (`.ci/run` installs
//! them); in CI a missing one fails the test.

mod common;
use common::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const REMOTE: &str = "/lib/systemd/systemd-journal-remote";

fn tools() -> bool {
    let journalctl = Command::new("journalctl").arg("--version").output().is_ok();
    if journalctl && Path::new(REMOTE).exists() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have journalctl and systemd-journal-remote"
    );
    eprintln!("skipping: needs journalctl and systemd-journal-remote");
    false
}

/// Appends entries (identifier, message) to `DIR/remote.journal`, stamped
/// with this boot (journalctl follows the current boot).
fn journal_write(dir: &Path, entries: &[(&str, String)]) {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .unwrap()
        .trim()
        .replace('-', "");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let mut export = String::new();
    for (i, (ident, msg)) in entries.iter().enumerate() {
        export.push_str(&format!(
            "__REALTIME_TIMESTAMP={}\n__MONOTONIC_TIMESTAMP={}\n_BOOT_ID={boot}\nSYSLOG_IDENTIFIER={ident}\nMESSAGE={msg}\n\n",
            now + i as u128,
            now + i as u128
        ));
    }
    let mut child = Command::new(REMOTE)
        .arg("-o")
        .arg(dir.join("remote.journal"))
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(export.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
}

fn line(ip: &str) -> String {
    attack_line(ip).trim_end().to_string()
}

#[test]
fn journal_entries_are_banned_and_a_restart_resumes_after_the_cursor() {
    if !tools() {
        return;
    }
    let tmp = TempDir::new("journal-files");
    let dir: PathBuf = tmp.path().join("journal");
    std::fs::create_dir_all(&dir).unwrap();
    // Something of this boot in it already, as a system journal has.
    journal_write(&dir, &[("seed", "started".into())]);
    let cfg = Daemon::config(
        "journal",
        3,
        &format!(
            "journal = {{ identifier = \"api\", directory = \"{}\" }}\n",
            dir.display()
        ),
    );
    let mut d = Daemon::start(cfg);
    let mut batch: Vec<(&str, String)> = Vec::new();
    for _ in 0..3 {
        batch.push(("api", line("203.0.113.9")));
        batch.push(("other", line("203.0.113.10")));
    }
    journal_write(&dir, &batch);
    wait_for(
        || d.bans() == ["auth 203.0.113.9 3"],
        "the ban from the journal",
    );
    assert_eq!(d.jail("auth")["matches"], 3);
    // Two failures of another client: under the threshold before the stop.
    journal_write(
        &dir,
        &[("api", line("203.0.113.2")), ("api", line("203.0.113.2"))],
    );
    wait_for(|| d.jail("auth")["matches"] == 5, "the two failures");

    // Down while two more arrive; one more after the restart.
    d.stop();
    journal_write(
        &dir,
        &[("api", line("203.0.113.11")), ("api", line("203.0.113.11"))],
    );
    // A second later, so only the saved cursor (not the start time) can
    // bring those two back.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    d.spawn();
    journal_write(&dir, &[("api", line("203.0.113.11"))]);
    wait_for(
        || d.bans().contains(&"auth 203.0.113.11 3".to_string()),
        "the ban of entries written while down and after",
    );
    // The window survived the restart (read again warm, as a file's is):
    // one more failure of the other client is its third.
    journal_write(&dir, &[("api", line("203.0.113.2"))]);
    wait_for(
        || d.bans().contains(&"auth 203.0.113.2 3".to_string()),
        "the ban of failures either side of the restart",
    );
    let jail = d.jail("auth");
    // Nothing counted twice: the entries before the cursor were only warm.
    assert_eq!(jail["matches"], 4, "{jail}");
    assert_eq!(jail["decisions"], 2, "{jail}");
    let src = jail["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["journal"].is_object())
        .unwrap_or_else(|| panic!("no journal source: {jail}"))
        .clone();
    assert_eq!(src["journal"]["malformed"], 0, "{jail}");
}

#[test]
fn a_journal_source_must_name_a_unit_or_identifier() {
    let dir = Daemon::config("journal-check", 3, "journal = { directory = \"/tmp\" }\n");
    let err = fails("check", &dir);
    assert!(
        err.contains("`journal` needs `unit` or `identifier`"),
        "{err}"
    );
}
