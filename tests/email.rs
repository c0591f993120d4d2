//! Alert mail against a real SMTP server on loopback (Debian's
//! python3-aiosmtpd, writing each message to a maildir).

mod common;
use common::*;
use std::process::Command;
use std::time::Duration;

struct Smtp {
    /// Kept for its Drop: the server stops with the test.
    _service: Service,
    maildir: std::path::PathBuf,
}

impl Smtp {
    fn start(maildir: std::path::PathBuf, port: u16) -> Smtp {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.args([
            "-m",
            "aiosmtpd",
            "-n",
            "-l",
            &format!("127.0.0.1:{port}"),
            "-c",
            "aiosmtpd.handlers.Mailbox",
        ])
        .arg(&maildir);
        Smtp {
            _service: Service::start(&mut cmd, port, "the SMTP server (python3-aiosmtpd)"),
            maildir,
        }
    }

    fn mails(&self) -> Vec<String> {
        let mut out: Vec<(std::time::SystemTime, String)> =
            std::fs::read_dir(self.maildir.join("new"))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            (
                                e.metadata().unwrap().modified().unwrap(),
                                std::fs::read_to_string(e.path()).unwrap(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
        out.sort();
        out.into_iter().map(|(_, m)| m).collect()
    }
}

fn daemon_with_mail(tag: &str, port: u16) -> Daemon {
    daemon_with_mail_and(tag, port, "")
}

/// With `tables` (a `[geoip]` section) in portcullis.toml too.
fn daemon_with_mail_and(tag: &str, port: u16, tables: &str) -> Daemon {
    let dir = Daemon::config(
        tag,
        3,
        "action = [\"log\", \"oncall\"]\nseverity = \"high\"\n",
    );
    add_to_main(
        &dir,
        "",
        &format!(
            "{tables}[actions.oncall]\ntype = \"email\"\nserver = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"portcullis@ingress.test\"\nto = [\"oncall@ops.test\"]\nalert_interval = \"3s\"\ntimeout = \"2s\"\n"
        ),
    );
    Daemon::start(dir)
}

/// Quoted-printable soft line breaks undone, so the body can be searched.
fn plain(mail: &str) -> String {
    mail.replace("=\r\n", "")
        .replace("=\n", "")
        .replace("=3D", "=")
}

#[test]
fn one_digest_for_a_burst_with_what_oncall_needs() {
    let port = free_port();
    let tmp = TempDir::new("smtp");
    let smtp = Smtp::start(tmp.path().join("maildir"), port);
    let d = daemon_with_mail("mail-burst", port);
    let burst: String = (1..=5)
        .flat_map(|i| (0..3).map(move |_| attack_line(&format!("203.0.113.{i}"))))
        .collect();
    d.append(&burst);
    wait_for(|| d.bans().len() == 5, "5 bans");
    wait_for(|| !smtp.mails().is_empty(), "the digest");
    std::thread::sleep(Duration::from_millis(1500));
    let mails = smtp.mails();
    assert_eq!(mails.len(), 1, "one mail for the burst");
    let m = plain(&mails[0]);
    assert!(
        m.contains("Subject: [portcullis] auth: 5 incidents (high)"),
        "{m}"
    );
    for i in 1..=5 {
        assert!(
            m.contains(&format!("banned 203.0.113.{i} (high severity)")),
            "{m}"
        );
        assert!(
            m.contains(&format!(
                "undo:       portcullis unban 203.0.113.{i} --jail auth"
            )),
            "{m}"
        );
    }
    assert!(m.contains("count:      3 in the window"), "{m}");
    assert!(m.contains("first seen: 2026-11-22 08:00:00 UTC"), "{m}");
    assert!(m.contains("action:     log ban succeeded"), "{m}");
    assert!(
        m.contains("evidence:") && m.contains("logs/access.log, byte 0: 203.0.113.1 "),
        "{m}"
    );

    // Within alert_interval a new incident waits for the next digest.
    d.append(
        &(0..3)
            .map(|_| attack_line("203.0.113.9"))
            .collect::<String>(),
    );
    wait_for(|| d.bans().len() == 6, "the 6th ban");
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(smtp.mails().len(), 1, "no second mail inside the interval");
    wait_for(
        || smtp.mails().len() == 2,
        "the next digest after the interval",
    );
    assert!(plain(&smtp.mails()[1]).contains("auth: 1 incident (high): 203.0.113.9"));
}

/// With `[geoip]`, each evidence line of the digest names its client's
/// region and network (real GeoLite2 databases, real SMTP server).
#[test]
fn the_digest_names_the_country_and_network_of_the_evidence() {
    let Some(g) = geo_dir() else { return };
    let port = free_port();
    let tmp = TempDir::new("smtp-geo");
    let smtp = Smtp::start(tmp.path().join("maildir"), port);
    let geo = format!(
        "[geoip]\ncountry_db = \"{}\"\nasn_db = \"{}\"\n",
        g.join("GeoLite2-Country.mmdb").display(),
        g.join("GeoLite2-ASN.mmdb").display()
    );
    let d = daemon_with_mail_and("mail-geo", port, &geo);
    d.append(&(0..3).map(|_| attack_line("77.88.8.8")).collect::<String>());
    wait_for(|| d.bans().len() == 1, "the ban");
    wait_for(|| !smtp.mails().is_empty(), "the digest");
    let m = plain(&smtp.mails()[0]);
    assert!(
        m.contains("byte 0 [RU AS13238 YANDEX LLC]: 77.88.8.8 "),
        "{m}"
    );
}

#[test]
fn smtp_down_delays_mail_never_bans() {
    let port = free_port();
    let tmp = TempDir::new("smtp-down");
    let d = daemon_with_mail("mail-down", port);
    // No server listening: the ban happens at once all the same.
    d.append(
        &(0..3)
            .map(|_| attack_line("198.51.100.30"))
            .collect::<String>(),
    );
    wait_for(|| d.bans().len() == 1, "the ban with the mail server down");
    std::thread::sleep(Duration::from_millis(1500));
    // The server comes back: the mail is retried and delivered.
    let smtp = Smtp::start(tmp.path().join("maildir"), port);
    wait_for(|| !smtp.mails().is_empty(), "the retried mail");
    assert!(plain(&smtp.mails()[0]).contains("banned 198.51.100.30"));
}
