//! The Prometheus endpoint, scraped after attack lines were replayed.

mod common;
use common::*;

fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn metrics_show_the_expected_counters() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = Daemon::config("metrics", 3, "");
    add_to_main(
        &dir,
        "",
        &format!("[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let d = Daemon::start(dir);
    d.append(
        &(0..3)
            .map(|_| attack_line("203.0.113.80"))
            .collect::<String>(),
    );
    d.append(
        &(0..2)
            .map(|_| attack_line("203.0.113.81"))
            .collect::<String>(),
    );
    d.append("not a log line\n");
    wait_for(|| d.bans().len() == 1, "the ban");
    wait_for(
        || scrape(port).contains("portcullis_line_to_enforced_seconds_count 1"),
        "the latency observation",
    );
    let text = scrape(port);
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    // The body is OpenMetrics text (it ends with `# EOF`), and says so.
    assert!(
        text.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    assert!(
        !text.contains("portcullis_fleet_"),
        "no fleet series without [fleet]:\n{text}"
    );
    let src = d.log_path().display().to_string();
    let l = format!("{{source=\"{src}\",format=\"combined\"}}");
    assert_eq!(
        value(&text, &format!("portcullis_lines_read_total{l}")),
        6.0
    );
    assert_eq!(
        value(&text, &format!("portcullis_lines_parsed_total{l}")),
        5.0
    );
    assert_eq!(
        value(&text, &format!("portcullis_lines_unparsed_total{l}")),
        1.0
    );
    assert_eq!(value(&text, "portcullis_matches_total{jail=\"auth\"}"), 5.0);
    assert_eq!(
        value(&text, "portcullis_decisions_total{jail=\"auth\"}"),
        1.0
    );
    assert_eq!(
        value(&text, "portcullis_tracked_keys{jail=\"auth\"}"),
        1.0,
        "203.0.113.81 is still counted"
    );
    assert_eq!(value(&text, "portcullis_active_bans"), 1.0);
    assert_eq!(
        value(
            &text,
            &format!("portcullis_tail_lag_bytes{{file=\"{src}\"}}")
        ),
        0.0
    );
    assert!(
        value(
            &text,
            "portcullis_action_batches_total{action=\"log\",result=\"ok\"}"
        ) >= 1.0
    );
    assert!(value(&text, "portcullis_line_to_enforced_seconds_sum") < 1.0);
}
