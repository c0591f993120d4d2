//! The live daemon, as a real process against real files, driven by the real CLI.

mod common;
use common::*;
use std::time::Duration;

fn attacks(ip: &str, n: usize) -> String {
    (0..n).map(|_| attack_line(ip)).collect()
}

#[test]
fn appended_attack_lines_are_banned_and_manual_ban_unban_work() {
    let d = Daemon::start(Daemon::config("append", 5, ""));
    d.append(&attacks("203.0.113.5", 4));
    d.wait_matches("auth", 4);
    assert!(d.bans().is_empty(), "no ban below the threshold");
    d.append(&attacks("203.0.113.5", 1));
    wait_for(|| !d.bans().is_empty(), "the ban");
    assert_eq!(d.bans(), ["auth 203.0.113.5 5"]);
    // Allowlisted address: counted as ignored, never banned.
    d.append(&attacks("127.0.0.1", 6));
    wait_for(|| d.jail("auth")["ignored"] == 6, "ignored matches");
    assert_eq!(d.bans().len(), 1);

    // By hand.
    let out = d.cli(&["ban", "198.51.100.0/24", "--jail", "auth", "--for", "10m"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(d.bans().len(), 2);
    let out = d.cli(&["ban", "127.0.0.1", "--jail", "auth"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("allowlisted"), "{}", stderr(&out));
    let out = d.cli(&["unban", "203.0.113.5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(d.bans(), ["auth 198.51.100.0/24 0"]);
    let out = d.cli(&["unban", "203.0.113.5"]);
    assert!(!out.status.success(), "nothing left to unban");
    // After a manual unban the address can be banned again by new attacks.
    d.append(&attacks("203.0.113.5", 5));
    wait_for(|| d.bans().len() == 2, "the second ban");
    assert!(!d.cli(&["flush"]).status.success(), "flush asks for --yes");
    assert!(d.cli(&["flush", "--yes"]).status.success());
    assert!(d.bans().is_empty());
}

#[derive(Clone, Copy)]
enum Rotation {
    RenameCreate,
    CopyTruncate,
    DeleteRecreate,
}

fn rotate(d: &Daemon, how: Rotation) {
    let log = d.log_path();
    let rotated = d.dir.path().join("logs/access.log.1");
    match how {
        Rotation::RenameCreate => {
            std::fs::rename(&log, &rotated).unwrap();
            std::fs::write(&log, "").unwrap();
        }
        Rotation::CopyTruncate => {
            std::fs::copy(&log, &rotated).unwrap();
            std::fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(&log)
                .unwrap();
        }
        Rotation::DeleteRecreate => {
            std::fs::remove_file(&log).unwrap();
            std::fs::write(&log, "").unwrap();
        }
    }
}

/// 4 matches, rotation, 5 more (9: no ban), then the 10th fires, exactly.
fn rotation_keeps_exact_count(how: Rotation, tag: &str) {
    let d = Daemon::start(Daemon::config(tag, 10, ""));
    d.append(&attacks("203.0.113.7", 4));
    d.wait_matches("auth", 4);
    rotate(&d, how);
    d.append(&attacks("203.0.113.7", 5));
    d.wait_matches("auth", 9);
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.bans().is_empty(), "9 matches must not ban");
    d.append(&attacks("203.0.113.7", 1));
    wait_for(|| !d.bans().is_empty(), "the ban at the 10th match");
    assert_eq!(d.bans(), ["auth 203.0.113.7 10"]);
    assert_eq!(d.jail("auth")["matches"], 10, "no line lost or doubled");
}

#[test]
fn rotation_rename_and_create() {
    rotation_keeps_exact_count(Rotation::RenameCreate, "rot-rename");
}

#[test]
fn rotation_copytruncate() {
    rotation_keeps_exact_count(Rotation::CopyTruncate, "rot-copytrunc");
}

#[test]
fn rotation_delete_and_recreate() {
    rotation_keeps_exact_count(Rotation::DeleteRecreate, "rot-delete");
}

/// The copytruncate race: right after the truncation the writer appends more
/// bytes than the old read offset, before the daemon looks. A size check
/// alone would read from the middle of the new content.
#[test]
fn copytruncate_race_loses_and_doubles_nothing() {
    for round in 0..3 {
        let d = Daemon::start(Daemon::config(&format!("race{round}"), 30, ""));
        let other = |n| attacks("198.51.100.9", n);
        d.append(&attacks("203.0.113.8", 3));
        d.wait_matches("auth", 3);
        // Unread lines, then copy + truncate + a burst longer than the old offset,
        // all without giving the daemon a chance to look in between.
        let log = d.log_path();
        let mut text = std::fs::read_to_string(&log).unwrap();
        text.push_str(&attacks("203.0.113.8", 2));
        std::fs::write(d.dir.path().join("logs/access.log.1"), &text).unwrap();
        std::fs::write(&log, other(8)).unwrap();
        d.wait_matches("auth", 13);
        let st = d.jail("auth");
        assert_eq!(st["unparsed"], 0, "round {round}: no half line read: {st}");
    }
}

#[test]
fn kill9_keeps_bans_offsets_and_pending_matches() {
    let mut d = Daemon::start(Daemon::config("kill9", 5, ""));
    d.append(&attacks("203.0.113.9", 3));
    d.wait_matches("auth", 3);
    assert!(
        d.cli(&["ban", "192.0.2.200", "--jail", "auth"])
            .status
            .success()
    );
    // Let the position of those 3 lines be saved (once a second).
    std::thread::sleep(Duration::from_millis(1300));
    // A 4th line, then kill -9 before its offset is likely saved.
    d.append(&attacks("203.0.113.9", 1));
    d.wait_matches("auth", 4);
    d.kill9();

    d.spawn();
    // The restart re-reads the window (3 lines) and the unsaved 4th line once:
    // 4 matches, not 5, so no ban yet.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        d.bans(),
        ["auth 192.0.2.200 0"],
        "the manual ban survived; no early ban"
    );
    // The 5th line after the restart reaches maxretry.
    d.append(&attacks("203.0.113.9", 1));
    wait_for(|| d.bans().len() == 2, "the ban at the 5th match");
    assert_eq!(d.bans(), ["auth 192.0.2.200 0", "auth 203.0.113.9 5"]);

    // And after another kill -9, both bans are still there, nothing re-fires.
    d.kill9();
    d.spawn();
    assert_eq!(d.bans(), ["auth 192.0.2.200 0", "auth 203.0.113.9 5"]);
}

#[test]
fn clean_restart_resumes_where_it_stopped() {
    let mut d = Daemon::start(Daemon::config("restart", 5, ""));
    d.append(&attacks("203.0.113.10", 2));
    d.wait_matches("auth", 2);
    d.stop();
    // Written while the daemon is down: read at the next start, not skipped.
    d.append(&attacks("203.0.113.10", 2));
    d.spawn();
    // The 2 lines written while down count in this run; the 2 before are
    // re-read only to rebuild the window (counted apart, as `warm`).
    wait_for(
        || d.jail("auth")["matches"].as_u64() == Some(2),
        "2 new matches after restart",
    );
    assert_eq!(d.jail("auth")["sources"][0]["parse"]["warm"], 2);
    assert!(d.bans().is_empty());
    d.append(&attacks("203.0.113.10", 1));
    wait_for(|| d.bans().len() == 1, "the ban");
    assert_eq!(d.bans(), ["auth 203.0.113.10 5"]);
}

#[test]
fn reload_with_a_broken_config_keeps_the_running_one() {
    let d = Daemon::start(Daemon::config("reload", 3, ""));
    d.append(&attacks("203.0.113.11", 2));
    d.wait_matches("auth", 2);
    let broken = d
        .dir
        .write("conf/jails.d/broken.toml", "[oops]\nfilter = \"atuh\"\n");
    let out = d.cli(&["reload"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown filter `atuh`; did you mean `auth`?"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("running config is kept"),
        "{}",
        stderr(&out)
    );
    // Still running the old config, counters intact.
    d.append(&attacks("203.0.113.11", 1));
    wait_for(|| d.bans().len() == 1, "a ban by the old config");

    // A good reload keeps the counters of unchanged jails.
    std::fs::remove_file(broken).unwrap();
    d.dir.write(
        "conf/jails.d/second.toml",
        &format!(
            "[second]\nfilter = \"auth\"\nlogpath = \"{}\"\nmaxretry = 100\n",
            d.log_path().display()
        ),
    );
    d.append(&attacks("203.0.113.12", 2));
    d.wait_matches("auth", 5);
    let out = d.cli(&["reload"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("counters kept for [\"auth\"]"),
        "{}",
        stdout(&out)
    );
    d.append(&attacks("203.0.113.12", 1));
    wait_for(
        || d.bans().len() == 2,
        "2 before the reload + 1 after = maxretry 3",
    );
    assert_eq!(d.jail("second")["matches"], 1);
    assert_eq!(d.bans().len(), 2, "bans are kept across reloads");
}

#[test]
fn sighup_reloads() {
    let d = Daemon::start(Daemon::config("sighup", 3, ""));
    d.dir.write(
        "conf/jails.d/second.toml",
        &format!(
            "[second]\nfilter = \"auth\"\nlogpath = \"{}\"\nmaxretry = 2\n",
            d.log_path().display()
        ),
    );
    unsafe { libc::kill(d.child.as_ref().unwrap().id() as i32, libc::SIGHUP) };
    wait_for(
        || d.cli(&["status", "second"]).status.success(),
        "the new jail after SIGHUP",
    );
}

#[test]
fn not_running_is_said_plainly() {
    let dir = TempDir::new("norun");
    let out = bin()
        .args(["status", "--socket"])
        .arg(dir.path().join("none.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("portcullis is not running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn socket_refuses_non_root_peers() {
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: cannot run a peer as another user here (CI runs as root)");
        return;
    }
    let d = Daemon::start(Daemon::config("peer", 5, ""));
    let sock = d.dir.path().join("ctl.sock");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let as_nobody = || {
        std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_portcullis"))
            .args(["status", "--socket"])
            .arg(&sock)
            .output()
            .unwrap()
    };
    // The temp dir must be traversable for the peer to reach the socket at all.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = as_nobody();
    assert_eq!(
        out.status.code(),
        Some(4),
        "permission denied has its own status"
    );
    assert!(
        stderr(&out).contains("permission denied"),
        "{}",
        stderr(&out)
    );
    // Even with the file mode opened up, the daemon checks the peer's uid.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody();
    assert_eq!(
        out.status.code(),
        Some(4),
        "refused by the daemon: still status 4"
    );
    assert!(
        stderr(&out).contains("uid 65534 may not use the control socket"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exec_action_runs_on_ban_and_on_expiry() {
    let dir = Daemon::config("exec", 3, "action = [\"log\", \"record\"]\n");
    let jail = std::fs::read_to_string(dir.path().join("conf/jails.d/auth.toml")).unwrap();
    dir.write(
        "conf/jails.d/auth.toml",
        &jail.replace("bantime = \"1h\"", "bantime = \"2s\""),
    );
    let out = dir.path().join("actions.txt");
    let main = std::fs::read_to_string(dir.path().join("conf/portcullis.toml")).unwrap();
    let (main, defaults) = main.split_once("[defaults]").unwrap();
    let script = dir.write(
        "record.sh",
        &format!("#!/bin/sh\necho \"$@\" >> {}\n", out.display()),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.write(
        "conf/portcullis.toml",
        &format!(
            "{main}[actions.record]\ntype = \"exec\"\nban = [\"{s}\", \"ban\", \"{{target}}\", \"{{jail}}\", \"{{bantime}}\"]\nunban = [\"{s}\", \"unban\", \"{{target}}\"]\ntimeout = \"5s\"\n[defaults]{defaults}",
            s = script.display()
        ),
    );
    let d = Daemon::start(dir);
    d.append(&attacks("203.0.113.20", 3));
    wait_for(
        || std::fs::read_to_string(&out).is_ok_and(|t| t.contains("ban 203.0.113.20 auth 2")),
        "the ban hook",
    );
    // The ban expires after 2 s: the unban hook runs, the ban is gone.
    wait_for(
        || std::fs::read_to_string(&out).is_ok_and(|t| t.contains("unban 203.0.113.20")),
        "the unban hook",
    );
    assert!(d.bans().is_empty());
    let status = d.json(&["status"]);
    assert!(
        status["actions"]["record"]["batches_ok"].as_u64().unwrap() >= 2,
        "{status}"
    );
}

#[test]
fn dry_run_bans_nothing() {
    let d = Daemon::start(Daemon::config("dry", 2, "dry_run = true\n"));
    d.append(&attacks("203.0.113.21", 5));
    d.wait_matches("auth", 5);
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.bans().is_empty());
    assert_eq!(d.json(&["status"])["ledger"]["dry_run"], 1);
}

#[test]
fn ban_rate_cap_holds_decisions() {
    let dir = Daemon::config("cap", 1, "");
    let main = std::fs::read_to_string(dir.path().join("conf/portcullis.toml")).unwrap();
    dir.write(
        "conf/portcullis.toml",
        &format!("max_bans_per_minute = 5\n{main}"),
    );
    let d = Daemon::start(dir);
    let lines: String = (1..=20)
        .map(|i| attack_line(&format!("198.18.0.{i}")))
        .collect();
    d.append(&lines);
    d.wait_matches("auth", 20);
    wait_for(
        || d.json(&["status"])["ledger"]["held"] == 15,
        "15 held decisions",
    );
    assert_eq!(d.bans().len(), 5, "no more than max_bans_per_minute");
}

#[test]
fn files_that_appear_later_and_globs_are_followed() {
    let dir = Daemon::config("glob", 2, "");
    let logs = dir.path().join("logs");
    std::fs::remove_file(logs.join("access.log")).unwrap();
    dir.write(
        "conf/jails.d/vhosts.toml",
        &format!(
            "[vhosts]\nfilter = \"auth\"\nlogpath = \"{}/vhost-*.log\"\nmaxretry = 2\n",
            logs.display()
        ),
    );
    let d = Daemon::start(dir);
    // The literal path appears after the start: read from its beginning.
    std::fs::write(logs.join("access.log"), attacks("203.0.113.30", 2)).unwrap();
    wait_for(
        || d.bans().iter().any(|b| b.contains("203.0.113.30")),
        "a ban from the late file",
    );
    // A new file matching the glob is picked up.
    std::fs::write(logs.join("vhost-b.log"), attacks("203.0.113.31", 2)).unwrap();
    wait_for(
        || {
            d.bans()
                .iter()
                .any(|b| b.starts_with("vhosts 203.0.113.31"))
        },
        "a ban from the glob",
    );
}

#[test]
fn long_lines_partial_lines_and_bad_utf8_do_not_stop_the_stream() {
    let dir = Daemon::config("edges", 2, "");
    let main = std::fs::read_to_string(dir.path().join("conf/portcullis.toml")).unwrap();
    dir.write(
        "conf/portcullis.toml",
        &format!("max_line_bytes = 1024\n{main}"),
    );
    let d = Daemon::start(dir);
    let mut bytes = vec![b'x'; 5000];
    bytes.push(b'\n');
    bytes.extend_from_slice(b"\xff\xfe not utf8 \xc3\n");
    let line = attack_line("203.0.113.40");
    let (head, tail) = line.split_at(30);
    bytes.extend_from_slice(head.as_bytes());
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(d.log_path())
            .unwrap();
        f.write_all(&bytes).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        d.jail("auth")["matches"],
        0,
        "a partial line waits for its newline"
    );
    d.append(tail);
    d.append(&attack_line("203.0.113.40"));
    wait_for(|| d.bans().len() == 1, "the ban after the odd lines");
    let st = d.json(&["status", "auth"]);
    let reasons = &st["jails"][0]["sources"][0]["parse"]["reasons"];
    assert_eq!(
        reasons["line longer than max_line_bytes"]["count"], 1,
        "{reasons}"
    );
    assert_eq!(
        reasons["invalid UTF-8 (decoded lossily)"]["count"], 1,
        "{reasons}"
    );
}

#[test]
fn bans_that_expire_while_down_are_gone_after_restart() {
    let mut d = Daemon::start(Daemon::config("expire-down", 5, ""));
    assert!(
        d.cli(&["ban", "192.0.2.1", "--jail", "auth", "--for", "1s"])
            .status
            .success()
    );
    assert!(
        d.cli(&["ban", "192.0.2.2", "--jail", "auth", "--for", "1h"])
            .status
            .success()
    );
    d.kill9();
    std::thread::sleep(Duration::from_millis(1500));
    d.spawn();
    assert_eq!(d.bans(), ["auth 192.0.2.2 0"]);
}

#[test]
fn rotation_while_down_finishes_the_old_file_first() {
    let mut d = Daemon::start(Daemon::config("rot-down", 6, ""));
    d.append(&attacks("203.0.113.50", 2));
    d.wait_matches("auth", 2);
    d.stop();
    // While stopped: one more line in the old file, then rename + create, and one line in the new file.
    d.append(&attacks("203.0.113.50", 1));
    std::fs::rename(d.log_path(), d.dir.path().join("logs/access.log.1")).unwrap();
    std::fs::write(d.log_path(), attacks("203.0.113.50", 1)).unwrap();
    d.spawn();
    // 2 re-read to rebuild the window (counted as `warm`), 1 finished from
    // access.log.1, 1 from the new file.
    wait_for(
        || d.jail("auth")["matches"].as_u64() == Some(2),
        "2 new matches",
    );
    d.append(&attacks("203.0.113.50", 1));
    d.wait_matches("auth", 3);
    assert!(d.bans().is_empty(), "5 < maxretry 6");
    d.append(&attacks("203.0.113.50", 1));
    wait_for(
        || d.bans() == ["auth 203.0.113.50 6"],
        "the ban at exactly 6",
    );
}

#[test]
fn read_from_start_and_symlinked_logpath() {
    let dir = Daemon::config("start", 3, "read_from = \"start\"\n");
    // The jail's logpath becomes a symlink to the real file, which already has lines.
    let real = dir.path().join("logs/real.log");
    std::fs::write(&real, attacks("203.0.113.60", 3)).unwrap();
    let link = dir.path().join("logs/access.log");
    std::fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let d = Daemon::start(dir);
    wait_for(
        || d.bans() == ["auth 203.0.113.60 3"],
        "a ban from lines written before the start",
    );
    // Re-pointing the symlink at a new file is a rotation.
    let next = d.dir.path().join("logs/real-2.log");
    std::fs::write(&next, attacks("203.0.113.61", 3)).unwrap();
    let tmp_link = d.dir.path().join("logs/tmp.link");
    std::os::unix::fs::symlink(&next, &tmp_link).unwrap();
    std::fs::rename(&tmp_link, &link).unwrap();
    wait_for(|| d.bans().len() == 2, "a ban from the new symlink target");
}

#[test]
fn incidents_record_evidence_actions_and_resolution() {
    let d = Daemon::start(Daemon::config("incidents", 3, ""));
    d.append(&attacks("203.0.113.70", 3));
    wait_for(|| d.bans().len() == 1, "the ban");
    let list = d.json(&["incidents"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let id = list[0]["id"].as_str().unwrap().to_string();
    wait_for(
        || {
            d.json(&["incidents", "show", &id])["actions"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        },
        "the action outcome",
    );
    let inc = d.json(&["incidents", "show", &id]);
    assert_eq!(inc["jail"], "auth");
    assert_eq!(inc["kind"], "ban");
    assert_eq!(inc["count"], 3);
    // The JSON says the target as the tables do, and every time in seconds.
    assert_eq!(inc["target"]["value"], "203.0.113.70");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let ban = &d.json(&["bans"])[0];
    assert_eq!(ban["target"], inc["target"]);
    assert!(stdout(&d.cli(&["bans"])).contains("203.0.113.70 "));
    for t in [
        &inc["detected_at"],
        &inc["actions"][0]["at"],
        &ban["since"],
        &d.json(&["status"])["jails"][0]["last_decision"]["time"],
    ] {
        let t = t.as_i64().unwrap_or_else(|| panic!("a time in {inc}"));
        assert!(
            (now - 120..=now + 5).contains(&t),
            "{t} is not Unix seconds near {now}"
        );
    }
    let ev = inc["evidence"].as_array().unwrap();
    assert_eq!(ev.len(), 3);
    assert!(ev[0]["file"].as_str().unwrap().ends_with("logs/access.log"));
    assert_eq!(
        ev[0]["offset"], 0,
        "the first evidence line starts the file"
    );
    assert!(ev[2]["line"].as_str().unwrap().starts_with("203.0.113.70 "));
    assert_eq!(inc["actions"][0]["action"], "log");
    assert_eq!(inc["actions"][0]["ok"], true);
    assert!(inc["resolved_at"].is_null());
    let human = stdout(&d.cli(&["incidents", "show", &id]));
    assert!(
        human.contains("undo with: portcullis unban 203.0.113.70 --jail auth"),
        "{human}"
    );

    assert!(d.cli(&["unban", "203.0.113.70"]).status.success());
    let inc = d.json(&["incidents", "show", &id]);
    assert_eq!(inc["resolution"], "unbanned by hand");
    // A manual ban is an incident too; --since filters by detection time.
    assert!(
        d.cli(&["ban", "key:leaked-1", "--jail", "auth", "--for", "1h"])
            .status
            .success()
    );
    let list = d.json(&["incidents", "--since", "1h"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["kind"], "manual", "newest first");
    assert!(!d.cli(&["incidents", "show", "nope"]).status.success());
}

/// Issue 10, finding 6: after `unban` and a restart, the re-read of the last
/// findtime does not bring back "already fired": the target is banned again
/// by its next attack.
#[test]
fn unban_then_restart_lets_the_next_attack_be_banned() {
    let mut d = Daemon::start(Daemon::config("unban-restart", 3, ""));
    d.append(
        &(0..3)
            .map(|_| attack_line("198.51.100.61"))
            .collect::<String>(),
    );
    wait_for(|| d.bans().len() == 1, "the first ban");
    assert!(d.cli(&["unban", "198.51.100.61"]).status.success());
    d.stop();
    d.spawn();
    assert!(d.bans().is_empty());
    d.append(
        &(0..3)
            .map(|_| attack_line("198.51.100.61"))
            .collect::<String>(),
    );
    wait_for(
        || d.bans().len() == 1,
        "the attacker banned again after the restart",
    );
}

/// Issue 10, finding 7: counters are monotonic per run; lines re-read after
/// a restart are counted apart (`warm`), and a reload keeps the counters.
#[test]
fn counters_are_monotonic_and_warm_reads_counted_apart() {
    let mut d = Daemon::start(Daemon::config("counters", 50, ""));
    d.append(
        &(0..5)
            .map(|_| attack_line("198.51.100.62"))
            .collect::<String>(),
    );
    d.wait_matches("auth", 5);
    d.stop();
    d.spawn();
    let j = d.jail("auth");
    assert_eq!(j["lines"], 0, "{j}");
    assert_eq!(j["matches"], 0, "{j}");
    assert_eq!(j["sources"][0]["parse"]["warm"], 5, "{j}");
    d.append(
        &(0..2)
            .map(|_| attack_line("198.51.100.62"))
            .collect::<String>(),
    );
    d.wait_matches("auth", 2);
    assert!(d.cli(&["reload"]).status.success());
    let j = d.jail("auth");
    assert_eq!(
        (j["lines"].as_u64(), j["matches"].as_u64()),
        (Some(2), Some(2)),
        "{j}"
    );
    d.append(&attack_line("198.51.100.62"));
    d.wait_matches("auth", 3);
    assert_eq!(d.jail("auth")["lines"], 3);
}

/// A tmpfs mounted by a test on one of its own directories; unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Issue 10, finding 4: a full disk. The ban is enforced and the caller told
/// it is not saved; status shows the store failing; once space returns the
/// store reopens, writes what waited, and the bans survive a kill -9.
#[test]
fn a_full_disk_is_reported_and_the_store_recovers() {
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs this as root");
        eprintln!("not root: cannot mount a tmpfs here");
        return;
    }
    let dir = Daemon::config("enospc", 3, "");
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&state)
        .status()
        .unwrap()
        .success();
    assert!(ok, "mount tmpfs");
    let _mount = Tmpfs(state.clone());
    let mut d = Daemon::start(dir);
    // Fill the disk.
    let filler = state.join("filler");
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .output()
        .unwrap();
    let out = d.cli(&["ban", "198.51.100.70", "--jail", "auth"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("NOT saved"), "{}", stdout(&out));
    let st = d.json(&["status"]);
    assert!(st["store"]["failing_since"].is_i64(), "{st}");
    assert!(
        st["store"]["health"]["errors"].as_u64().unwrap() >= 1,
        "{st}"
    );
    assert!(stdout(&d.cli(&["status"])).contains("state store: FAILING"));
    // Detection goes on.
    d.append(&attacks("198.51.100.71", 3));
    wait_for(|| d.bans().len() == 2, "a ban while the disk is full");
    // Space returns: the store reopens and writes what waited.
    std::fs::remove_file(&filler).unwrap();
    wait_for(
        || {
            let st = d.json(&["status"]);
            st["store"]["failing_since"].is_null() && st["store"]["unsaved_writes"] == 0
        },
        "the store to recover",
    );
    d.kill9();
    d.spawn();
    assert_eq!(d.bans(), ["auth 198.51.100.70 0", "auth 198.51.100.71 3"]);
}

/// Issue 10, finding 5a: copytruncate while the daemon is stopped. The lines
/// written after our last read are in `PATH.1` (the copy) and are read from
/// there before the truncated file: 60 + 20 + 20 reach maxretry 100.
#[test]
fn copytruncate_while_stopped_reads_the_rest_from_the_copy() {
    let mut d = Daemon::start(Daemon::config("ct-down", 100, ""));
    d.append(&attacks("203.0.113.80", 60));
    d.wait_matches("auth", 60);
    d.stop();
    d.append(&attacks("203.0.113.80", 20));
    rotate(&d, Rotation::CopyTruncate);
    d.append(&attacks("203.0.113.80", 20));
    d.spawn();
    wait_for(
        || d.bans() == ["auth 203.0.113.80 100"],
        "the ban at exactly 100",
    );
    assert_eq!(d.jail("auth")["matches"], 40);
}

/// Issue 10, finding 5c: two renames within the drain grace while the writer
/// (holding its file open, as nginx does until it reopens its logs) still
/// writes the first file: every line of every file is read, once.
#[test]
fn two_renames_within_the_grace_drain_every_file() {
    let d = Daemon::start(Daemon::config("two-renames", 1_000_000, ""));
    let log = d.log_path();
    let writer = {
        let log = log.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
            for i in 0..20_000 {
                f.write_all(attack_line("203.0.113.81").as_bytes()).unwrap();
                if i % 10 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        })
    };
    let logs = d.dir.path().join("logs");
    std::thread::sleep(Duration::from_millis(300));
    std::fs::rename(&log, logs.join("access.log.1")).unwrap();
    std::fs::write(&log, "").unwrap();
    std::thread::sleep(Duration::from_millis(600));
    std::fs::rename(logs.join("access.log.1"), logs.join("access.log.2")).unwrap();
    std::fs::rename(&log, logs.join("access.log.1")).unwrap();
    std::fs::write(&log, "").unwrap();
    assert!(
        !writer.is_finished(),
        "the writer was still writing the first file"
    );
    writer.join().unwrap();
    d.wait_matches("auth", 20_000);
}

/// Issue 10, finding 5b: a restart (TERM or kill -9) soon after a live rename
/// rotation. The counts still in `PATH.1` are rebuilt by the re-read:
/// 60 before the rotation + 10 after + 30 after the restart reach 100.
#[test]
fn restart_after_a_rename_rotation_keeps_the_counts_in_the_old_file() {
    for kill in [false, true] {
        let tag = if kill { "rot-kill" } else { "rot-term" };
        let mut d = Daemon::start(Daemon::config(tag, 100, ""));
        d.append(&attacks("203.0.113.82", 60));
        d.wait_matches("auth", 60);
        rotate(&d, Rotation::RenameCreate);
        d.append(&attacks("203.0.113.82", 10));
        d.wait_matches("auth", 70);
        // Positions are saved every second.
        std::thread::sleep(Duration::from_millis(1300));
        if kill {
            d.kill9();
        } else {
            d.stop();
        }
        d.spawn();
        d.append(&attacks("203.0.113.82", 29));
        d.wait_matches("auth", 29);
        assert!(d.bans().is_empty(), "99 < 100 ({tag})");
        d.append(&attacks("203.0.113.82", 1));
        wait_for(
            || d.bans() == ["auth 203.0.113.82 100"],
            &format!("the ban at exactly 100 ({tag})"),
        );
    }
}

#[test]
fn status_shows_unparsed_lines_and_one_jail_lists_its_bans() {
    let d = Daemon::start(Daemon::config("status-human", 2, ""));
    d.append(
        &(0..2)
            .map(|_| attack_line("203.0.113.44"))
            .collect::<String>(),
    );
    d.append("garbage that is no access line\n");
    wait_for(|| d.bans().len() == 1, "the ban");
    wait_for(
        || d.jail("auth")["unparsed"].as_u64() == Some(1),
        "the unparsed line",
    );
    let all = stdout(&d.cli(&["status"]));
    let header = all.lines().next().unwrap();
    assert!(header.contains("UNPARSED"), "{all}");
    let row = all.lines().find(|l| l.starts_with("auth ")).unwrap();
    // JAIL SOURCES LINES PARSED UNPARSED ...
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[1..5], ["1", "3", "2", "1"], "{all}");

    let one = d.cli(&["status", "auth"]);
    assert!(one.status.success(), "{}", stderr(&one));
    let one = stdout(&one);
    for needle in [
        "Jail auth",
        "3 lines, 2 parsed, 1 unparsed",
        "Banned: 1",
        "TARGET",
        "203.0.113.44",
        "1 active",
    ] {
        assert!(one.contains(needle), "missing `{needle}` in:\n{one}");
    }
    assert!(!one.contains('{'), "no raw JSON in the human view:\n{one}");
    // The last decision names its target (it printed `?` once targets
    // became objects).
    let last = one
        .lines()
        .find(|l| l.contains("Last decision:"))
        .unwrap_or_default();
    assert!(last.ends_with("UTC 203.0.113.44"), "{one}");
}

#[test]
fn unban_of_an_address_inside_a_banned_network_says_what_covers_it() {
    let d = Daemon::start(Daemon::config("unban-cover", 5, ""));
    let out = d.cli(&["ban", "10.77.2.0/24", "--jail", "auth"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = d.cli(&["unban", "10.77.2.2"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("10.77.2.2 has no ban of its own"), "{err}");
    assert!(err.contains("inside 10.77.2.0/24 (jail auth)"), "{err}");
    assert!(
        err.contains("portcullis unban 10.77.2.0/24 --jail auth"),
        "{err}"
    );
    assert_eq!(d.bans().len(), 1, "nothing was lifted");
    let out = d.cli(&["unban", "10.99.0.1"]);
    assert!(
        stderr(&out).contains("10.99.0.1 is not banned"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_closed_pipe_ends_the_cli_quietly() {
    let d = Daemon::start(Daemon::config("pipe", 5, ""));
    // More than a pipe holds (64 KiB) as pretty JSON, so the writer is
    // still writing when the reader leaves.
    for i in 0..400 {
        let out = d.cli(&[
            "ban",
            &format!("10.1.{}.{}", i / 200, i % 200 + 1),
            "--jail",
            "auth",
        ]);
        assert!(out.status.success());
    }
    // `portcullis bans | head -1`: the reader goes away mid-output.
    let sock = d.dir.path().join("ctl.sock");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{}' bans --json --socket '{}' | head -c 100 >/dev/null",
            env!("CARGO_BIN_EXE_portcullis"),
            sock.display()
        ))
        .output()
        .unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
}

#[test]
fn a_source_that_mostly_does_not_parse_or_is_missing_is_a_warning() {
    // The jail's format is `combined`; the proxy writes something else.
    let dir = Daemon::config("unparsed-warn", 5, "");
    let d = dir.path().display().to_string();
    dir.write(
        "conf/jails.d/missing.toml",
        &format!("[missing]\nfilter = \"auth\"\nlogpath = \"{d}/logs/not-there.log\"\n"),
    );
    let d = Daemon::start(dir);
    let daemon_log = d
        .dir
        .path()
        .join(format!("daemon-{}.log", std::process::id()));
    d.append(
        &(0..150)
            .map(|i| format!("{{\"ts\":{i},\"client\":\"203.0.113.1\"}}\n"))
            .collect::<String>(),
    );
    wait_for(
        || {
            std::fs::read_to_string(&daemon_log)
                .is_ok_and(|l| l.contains("do not parse as format `combined`"))
        },
        "the unparsed warning",
    );
    let log = std::fs::read_to_string(&daemon_log).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("do not parse as format"))
        .unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert_eq!(
        log.matches("do not parse as format").count(),
        1,
        "said once, not per line"
    );
    let missing = log
        .lines()
        .find(|l| l.contains("not-there.log"))
        .unwrap_or_else(|| panic!("no word of the missing file:\n{log}"));
    assert!(missing.contains("WARN"), "{missing}");
}

#[test]
fn unban_names_every_covering_network_and_warns_after_lifting_its_own_ban() {
    let d = Daemon::start(Daemon::config("unban-cover2", 5, ""));
    for t in ["10.77.3.0/24", "10.77.0.0/16", "10.77.3.7"] {
        assert!(d.cli(&["ban", t, "--jail", "auth"]).status.success());
    }
    let err = stderr(&d.cli(&["unban", "10.77.3.9"]));
    assert!(
        err.contains("portcullis unban 10.77.3.0/24 --jail auth"),
        "{err}"
    );
    assert!(
        err.contains("portcullis unban 10.77.0.0/16 --jail auth"),
        "{err}"
    );
    let out = d.cli(&["unban", "10.77.3.7"]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("10.77.3.7 is still blocked by the ban of 10.77.3.0/24"),
        "{}",
        stderr(&out)
    );
    let err = stderr(&d.cli(&["unban", "10.77.3.9", "--jail", "nosuch"]));
    assert!(err.contains("no jail named `nosuch`"), "{err}");
}

#[test]
fn hostile_jail_names_never_reach_the_terminal_raw() {
    let dir = Daemon::config("evil-name", 5, "");
    let d = dir.path().display().to_string();
    dir.write(
        "conf/jails.d/evil.toml",
        &format!(
            "[\"e\\u001b[31mvil\\u0007; $(touch {d}/pwned)'x\"]\nfilter = \"auth\"\nlogpath = \"{d}/logs/access.log\"\n"
        ),
    );
    let d = Daemon::start(dir);
    let name = format!(
        "e\u{1b}[31mvil\u{7}; $(touch {}/pwned)'x",
        d.dir.path().display()
    );
    let out = d.cli(&["ban", "10.88.1.0/24", "--jail", &name]);
    assert!(out.status.success(), "{}", stderr(&out));
    for args in [
        vec!["status"],
        vec!["bans"],
        vec!["status", name.as_str()],
        vec!["unban", "10.88.1.5"],
    ] {
        let out = d.cli(&args);
        let all = stdout(&out) + &stderr(&out);
        assert!(
            !all.contains('\u{1b}') && !all.contains('\u{7}'),
            "{args:?} printed a raw control character:\n{all:?}"
        );
    }
    // The suggested command is quoted: pasted, it runs nothing.
    let err = stderr(&d.cli(&["unban", "10.88.1.5"]));
    assert!(
        err.contains("portcullis unban 10.88.1.0/24 --jail $'"),
        "{err}"
    );
    assert!(!d.dir.path().join("pwned").exists());
}

/// `trusted_proxies_file` and `ignore_file` are re-read when they change:
/// no reload, in effect within 2 s (a CDN's ranges fetched by cron).
#[test]
fn list_files_take_effect_within_two_seconds() {
    let dir = Daemon::config("lists", 1, "format = \"xff\"\n");
    let d_path = dir.path().display().to_string();
    dir.write("conf/cdn.txt", "# the CDN's ranges, fetched nightly\n");
    dir.write("conf/allow.txt", "203.0.113.0/24  # the office\n");
    add_to_main(
        &dir,
        &format!(
            "trusted_proxies_file = \"{d_path}/conf/cdn.txt\"\nignore_file = [\"{d_path}/conf/allow.txt\"]\n"
        ),
        "[formats.xff]\nnginx = '$remote_addr - $remote_user [$time_local] \"$request\" $status $body_bytes_sent \"$http_referer\" \"$http_user_agent\" \"$http_x_forwarded_for\"'\n",
    );
    let d = Daemon::start(dir);
    let line = |peer: &str, xff: &str| {
        format!(
            "{peer} - - [22/Nov/2026:08:00:00 +0000] \"POST /v1/login HTTP/1.1\" 401 0 \"-\" \"curl/8\" \"{xff}\"\n"
        )
    };
    // The office is ignored; the proxy is not trusted yet, so its
    // X-Forwarded-For is not believed and the proxy itself is the client.
    d.append(&line("203.0.113.5", "-"));
    d.append(&line("10.9.9.9", "198.51.100.1"));
    wait_for(
        || d.bans() == ["auth 10.9.9.9 1"],
        "the untrusted proxy banned",
    );
    assert_eq!(d.jail("auth")["ignored"], 1);

    // Both files change; each takes effect within 2 s, measured from the write.
    let t0 = std::time::Instant::now();
    std::fs::write(d.dir.path().join("conf/cdn.txt"), "10.0.0.0/8\n").unwrap();
    std::fs::write(d.dir.path().join("conf/allow.txt"), "# nobody\n").unwrap();
    let mut n = 0;
    let seen = loop {
        n += 1;
        d.append(&line("10.9.9.9", &format!("198.51.100.{n}")));
        d.append(&line("203.0.113.5", "-"));
        std::thread::sleep(Duration::from_millis(100));
        let bans = d.bans();
        if bans.iter().any(|b| b.starts_with("auth 198.51.100."))
            && bans.contains(&"auth 203.0.113.5 1".to_string())
        {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "not applied: {bans:?}"
        );
    };
    assert!(seen <= Duration::from_secs(2), "took {seen:?}");

    // A broken file keeps the last good list and says where it is broken.
    std::fs::write(
        d.dir.path().join("conf/cdn.txt"),
        "10.0.0.0/8\n10.0.0.0/99\n",
    )
    .unwrap();
    wait_for(
        || {
            d.daemon_log()
                .contains("cdn.txt:2:1: `10.0.0.0/99` is not an address or CIDR")
        },
        "the error with file:line",
    );
    d.append(&line("10.9.9.9", "198.51.100.250"));
    wait_for(
        || d.bans().contains(&"auth 198.51.100.250 1".to_string()),
        "the proxy still trusted",
    );
    // `check` refuses the broken file at start.
    let out = bin()
        .args(["check", "--config"])
        .arg(d.dir.path().join("conf"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("cdn.txt:2:1:"), "{}", stderr(&out));
}

/// A ban wider than a /8 (IPv4) or /16 (IPv6) is a typo or an attack
/// (`0.0.0.0/0` would drop the internet): refused by hand, whatever the
/// allowlist, and a jail cannot be configured to make one.
#[test]
fn bans_wider_than_a_slash_8_or_16_are_refused() {
    let d = Daemon::start(Daemon::config("too-wide", 3, ""));
    for wide in ["128.0.0.0/1", "0.0.0.0/0", "2000::/3", "::/0"] {
        let out = d.cli(&["ban", wide, "--jail", "auth"]);
        assert!(!out.status.success(), "{wide} was banned");
        assert!(
            stderr(&out).contains("too wide"),
            "{wide}: {}",
            stderr(&out)
        );
    }
    assert!(d.bans().is_empty());
    let out = d.cli(&["ban", "10.0.0.0/8", "--jail", "auth"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dir = Daemon::config("too-wide-jail", 3, "ipv4_prefix = 4\n");
    let err = fails("check", &dir);
    assert!(err.contains("ipv4_prefix 4 in 8..=32"), "{err}");
}
