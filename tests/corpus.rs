//! Every line of the shared corpus (real proxy logs from other projects' test
//! suites, in `../shared/corpus/`) either parses with the right client address
//! and status, or is refused with a reason. Never a panic, never a silent drop.
//!
//! The expected address and status come from an independent oracle per file
//! type (a regex or serde_json in this test), not from the parser under test.

use portcullis::parse::addr::NetSet;
use portcullis::parse::wrap::Wrap;
use portcullis::parse::{Event, FormatSpec, LineParser, Outcome, Wanted};
use regex::Regex;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    assert!(
        p.is_dir(),
        "the shared corpus must be at {} (CI clones shared/ beside the repo)",
        p.display()
    );
    p
}

fn parser(format: &str, wrap: Wrap) -> LineParser {
    let spec = FormatSpec::builtin(format).unwrap();
    LineParser::new(
        spec.compile(&Wanted::all()).unwrap(),
        wrap,
        NetSet::default(),
        65536,
    )
}

/// What the oracle says a line holds; `None` = not an event of this format.
type Oracle = fn(&str) -> Option<(IpAddr, Option<u16>)>;

fn strip_port(s: &str) -> IpAddr {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        return rest[..rest.find(']').unwrap()].parse().unwrap();
    }
    match s.parse() {
        Ok(ip) => ip,
        Err(_) => s.rsplit_once(':').unwrap().0.parse().unwrap(),
    }
}

fn combined_oracle(line: &str) -> Option<(IpAddr, Option<u16>)> {
    let re = Regex::new(r#"^(.+?) \S+ \S+ \[[^\]]+\] "(?:[^"\\]|\\.)*" (\d{3}|-) "#).unwrap();
    let c = re.captures(line)?;
    // A chain where remote_addr stands: the last hop is the peer.
    let peer = c[1].rsplit(',').next().unwrap().trim();
    // `-`: no status (Traefik, when the client went away).
    Some((peer.parse().ok()?, c[2].parse().ok()))
}

fn nginx_error_oracle(line: &str) -> Option<(IpAddr, Option<u16>)> {
    let re = Regex::new(r"client: ([^,]+),").unwrap();
    Some((re.captures(line)?[1].parse().ok()?, None))
}

fn cri_payload(line: &str) -> &str {
    line.splitn(4, ' ').nth(3).unwrap()
}

fn envoy_oracle(line: &str) -> Option<(IpAddr, Option<u16>)> {
    let payload = cri_payload(line);
    if payload.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(payload).ok()?;
        let addr = strip_port(v["downstream_remote_address"].as_str()?);
        return Some((addr, Some(v["response_code"].as_u64()? as u16)));
    }
    // Default text format: status after the request; XFF is the 5th quoted field.
    let status: u16 = payload
        .split("\" ")
        .nth(1)?
        .split(' ')
        .next()?
        .parse()
        .ok()?;
    let quoted: Vec<&str> = payload.split('"').skip(1).step_by(2).collect();
    let xff = quoted.get(1)?;
    Some((strip_port(xff.rsplit(',').next()?), Some(status)))
}

fn traefik_oracle(line: &str) -> Option<(IpAddr, Option<u16>)> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    // The TCP peer; ClientHost is Traefik's own reading of forwarded headers.
    Some((
        strip_port(v["ClientAddr"].as_str()?),
        Some(v["DownstreamStatus"].as_u64()? as u16),
    ))
}

struct Case {
    file: &'static str,
    formats: &'static [&'static str],
    wrap: Wrap,
    oracle: Oracle,
    /// Lines the oracle reads but we refuse on purpose, with the reason.
    refused: &'static [(usize, &'static str)],
}

const CASES: &[Case] = &[
    // Lines 4-6 are vhost-prefixed (`$host $remote_addr ...`), 8 lacks a field,
    // 9 is an error-log line: not nginx `combined`.
    Case {
        file: "crowdsec-hub/nginx_http-logs/nginx_http-logs.log",
        formats: &["combined"],
        wrap: Wrap::None,
        oracle: combined_oracle,
        refused: &[
            (4, "invalid client address"),
            (5, "invalid client address"),
            (6, "invalid client address"),
            (8, "does not match the format"),
            (9, "does not match the format"),
        ],
    },
    Case {
        file: "crowdsec-hub/nginx-bad-user-agent/nginx-bad-user-agent.log",
        formats: &["combined"],
        wrap: Wrap::None,
        oracle: combined_oracle,
        refused: &[],
    },
    Case {
        file: "crowdsec-hub/nginx-http-malformed/nginx_http-logs.log",
        formats: &["combined"],
        wrap: Wrap::None,
        oracle: combined_oracle,
        refused: &[],
    },
    Case {
        file: "crowdsec-hub/http-dos-switching-ua/http-dos-switching-ua.log",
        formats: &["combined"],
        wrap: Wrap::None,
        oracle: combined_oracle,
        refused: &[],
    },
    Case {
        file: "crowdsec-hub/nginx-http-sensitive-files/nginx-http-sensitive-files.log",
        formats: &["combined"],
        wrap: Wrap::None,
        oracle: combined_oracle,
        refused: &[],
    },
    Case {
        file: "crowdsec-hub/http-admin-interface-probing/http-admin-interface-probing.log",
        formats: &["combined"],
        wrap: Wrap::None,
        oracle: combined_oracle,
        refused: &[],
    },
    Case {
        file: "crowdsec-hub/nginx-http-xss-probing/nginx-http-xss-probing.log",
        formats: &["combined"],
        wrap: Wrap::None,
        oracle: combined_oracle,
        refused: &[],
    },
    Case {
        file: "crowdsec-hub/nginx-http-path-traversal/nginx-http-path-traversal.log",
        formats: &["combined"],
        wrap: Wrap::None,
        oracle: combined_oracle,
        refused: &[],
    },
    Case {
        file: "crowdsec-hub/nginx-http-sqli-probing/nginx-http-sqli-probing.log",
        formats: &["combined"],
        wrap: Wrap::None,
        oracle: combined_oracle,
        refused: &[],
    },
    Case {
        file: "crowdsec-hub/traefik_clf/traefik_clf.log",
        formats: &["combined"],
        wrap: Wrap::None,
        oracle: combined_oracle,
        refused: &[
            (8, "does not match the format"),
            (9, "does not match the format"),
        ],
    },
    // Lines 17-22 are access-log lines in an error log.
    Case {
        file: "crowdsec-hub/nginx-http-generic-bf/nginx-http-generic-bf.log",
        formats: &["nginx_error"],
        wrap: Wrap::None,
        oracle: nginx_error_oracle,
        refused: &[
            (17, "regex does not match"),
            (18, "regex does not match"),
            (19, "regex does not match"),
            (20, "regex does not match"),
            (21, "regex does not match"),
            (22, "regex does not match"),
        ],
    },
    Case {
        file: "crowdsec-hub/nginx_req_limit_exceeded/nginx_req_limit_exceeded.log",
        formats: &["nginx_error"],
        wrap: Wrap::None,
        oracle: nginx_error_oracle,
        refused: &[],
    },
    Case {
        file: "crowdsec-hub/envoy-logs/envoy.log",
        formats: &["envoy_json", "envoy"],
        wrap: Wrap::Cri,
        oracle: envoy_oracle,
        refused: &[],
    },
    Case {
        file: "crowdsec-hub/envoy-http-crawl-non_statics/envoy-http-crawl-non_statics.log",
        formats: &["envoy_json", "envoy"],
        wrap: Wrap::Cri,
        oracle: envoy_oracle,
        refused: &[],
    },
    Case {
        file: "crowdsec-hub/envoy-http-bad-user-agent/envoy-http-bad-user-agent.log",
        formats: &["envoy_json", "envoy"],
        wrap: Wrap::Cri,
        oracle: envoy_oracle,
        refused: &[],
    },
    // Line 6 is a plugin's debug message.
    Case {
        file: "crowdsec-hub/traefik_json/traefik_json.log",
        formats: &["traefik_json"],
        wrap: Wrap::None,
        oracle: traefik_oracle,
        refused: &[(6, "not a JSON object")],
    },
    // Lines 5 and 6 put an X-Forwarded-For chain *before* remote_addr, which no
    // nginx format here writes; refused rather than guessed.
    Case {
        file: "beats/nginx-access-test.log",
        formats: &["combined"],
        wrap: Wrap::None,
        oracle: combined_oracle,
        refused: &[(5, "invalid client address"), (6, "invalid client address")],
    },
];

#[test]
fn every_corpus_line_parses_or_has_a_reason() {
    let root = corpus();
    let mut total = 0;
    let mut parsed_total = 0;
    for case in CASES {
        let text = std::fs::read(root.join(case.file)).unwrap();
        let text = String::from_utf8_lossy(&text);
        let mut parsers: Vec<LineParser> =
            case.formats.iter().map(|f| parser(f, case.wrap)).collect();
        let mut ev = Event::new(&Wanted::all());
        for (i, line) in text.lines().enumerate() {
            let lineno = i + 1;
            total += 1;
            // Mixed files (Envoy JSON and text): try each format, keep the first success.
            let mut result = Err(portcullis::parse::ParseError("no format"));
            for p in &mut parsers {
                result = p.parse(line, &mut ev);
                if result.is_ok() {
                    break;
                }
            }
            let oracle = (case.oracle)(line);
            let refused = case.refused.iter().find(|(n, _)| *n == lineno);
            match (result, oracle, refused) {
                (Ok(Outcome::Event), Some((ip, status)), None) => {
                    parsed_total += 1;
                    assert_eq!(
                        ev.client,
                        Some(ip),
                        "{}:{lineno}: client of {line}",
                        case.file
                    );
                    if !case.formats.contains(&"nginx_error") {
                        assert_eq!(
                            ev.status, status,
                            "{}:{lineno}: status of {line}",
                            case.file
                        );
                    }
                }
                (Err(why), _, Some((_, want))) => {
                    assert_eq!(why.0, *want, "{}:{lineno}", case.file)
                }
                (r, o, _) => panic!(
                    "{}:{lineno}: parser said {r:?}, oracle said {o:?}: {line}",
                    case.file
                ),
            }
        }
    }
    let refused: usize = CASES.iter().map(|c| c.refused.len()).sum();
    assert_eq!(
        parsed_total + refused,
        total,
        "parsed {parsed_total} of {total}"
    );
    assert!(parsed_total > 180);
}
