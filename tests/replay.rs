//! `portcullis replay` over the generated fixtures: the exact decisions that
//! fixtures/generate.py derived from its own layout of each attack.

mod common;
use common::*;

fn expected(path: &str) -> (serde_json::Value, Vec<(String, String, u64, String)>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo().join(path)).unwrap()).unwrap();
    let keys = decision_keys(v["decisions"].as_array().unwrap());
    (v, keys)
}

#[test]
fn sample_with_builtin_config_gives_exact_decisions() {
    let (want, want_keys) = expected("fixtures/api_audit/expected.json");
    let log = repo().join("fixtures/api_audit/sample.log");
    let (decisions, summary) =
        replay_json(&["--config", repo().to_str().unwrap(), log.to_str().unwrap()]);
    assert_eq!(decision_keys(&decisions), want_keys);
    let fmt = &summary["formats"]["api_audit"];
    assert_eq!(fmt["lines"], want["lines"]);
    assert_eq!(fmt["unparsed"], want["unparsed"]);
    // Allowlisted loopback crossed the threshold and was never acted on.
    assert_eq!(summary["jails"]["auth-bruteforce"]["ignored"], 150);
    // Evidence: the lines of the banned client, ending with the line that fired.
    let auth = decisions
        .iter()
        .find(|d| d["jail"] == "auth-bruteforce")
        .unwrap();
    let ev = auth["evidence"].as_array().unwrap();
    assert_eq!(ev.len(), 5);
    assert!(
        ev.iter()
            .all(|e| e["line"].as_str().unwrap().starts_with("203.0.113.10 "))
    );
    assert_eq!(auth["first_seen"], "2026-11-22T08:01:00Z");
}

#[test]
fn builtin_config_equals_repository_config() {
    // The binary embeds jails.d/ and filters.d/; both routes give the same result.
    let log = repo().join("fixtures/api_audit/sample.log");
    let empty = TempDir::new("noconf");
    let out = bin()
        .args(["replay", "--json"])
        .arg(&log)
        .env("PORTCULLIS_CONFIG_DIR", empty.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let builtin: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["type"] == "decision")
        .collect();
    let (from_repo, _) =
        replay_json(&["--config", repo().to_str().unwrap(), log.to_str().unwrap()]);
    assert_eq!(decision_keys(&builtin), decision_keys(&from_repo));
    assert!(stderr(&out).contains("using the built-in default config"));
}

#[test]
fn one_jail_and_stdin() {
    let log = std::fs::read(repo().join("fixtures/api_audit/sample.log")).unwrap();
    let mut child = bin()
        .args([
            "replay",
            "--json",
            "--config",
            repo().to_str().unwrap(),
            "--jail",
            "scanner",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&log).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let lines: Vec<serde_json::Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let decisions: Vec<_> = lines
        .iter()
        .filter(|v| v["type"] == "decision")
        .cloned()
        .collect();
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0]["target"], "198.51.100.23");
    assert_eq!(decisions[0]["evidence"][0]["source"], 0);
    let bad = bin()
        .args([
            "replay",
            "--config",
            repo().to_str().unwrap(),
            "--jail",
            "scaner",
            "-",
        ])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("no jail named `scaner`"),
        "{}",
        stderr(&bad)
    );
}

const INJECTION_CONFIG: &str = r#"
ignore = []
trusted_proxies = ["10.0.0.0/8"]
[defaults]
format = "combined"
"#;

#[test]
fn log_injection_bans_only_the_real_client() {
    let (_, want) = expected("fixtures/injection/expected.json");
    let tmp = TempDir::new("inject");
    tmp.write("portcullis.toml", INJECTION_CONFIG);
    tmp.write(
        "filters.d/bad-user-agent.toml",
        &std::fs::read_to_string(repo().join("filters.d/bad-user-agent.toml")).unwrap(),
    );
    tmp.write(
        "jails.d/ua.toml",
        "[bad-user-agent]\nfilter = \"bad-user-agent\"\nmaxretry = 2\nfindtime = \"10m\"\n",
    );
    let log = repo().join("fixtures/injection/access.log");
    let (decisions, summary) = replay_json(&[
        "--config",
        tmp.path().to_str().unwrap(),
        log.to_str().unwrap(),
    ]);
    assert_eq!(decision_keys(&decisions), want);
    assert_eq!(summary["formats"]["combined"]["unparsed"], 0);
    // The victim named in user agent, path, referer and forged X-Forwarded-For is never a target.
    assert!(
        decisions
            .iter()
            .all(|d| !d["target"].as_str().unwrap().contains("198.51.100.1"))
    );
}

/// The fixtures `fixtures/DIR/sample.log`, one per format and wrapping.
const FORMAT_FIXTURES: [&str; 7] = [
    "api_audit",
    "combined",
    "docker_combined",
    "envoy_cri",
    "envoy_json_cri",
    "traefik_json",
    "kong_json",
];

#[test]
fn every_format_fixture_gives_its_exact_decisions() {
    for dir in FORMAT_FIXTURES {
        let (want, want_keys) = expected(&format!("fixtures/{dir}/expected.json"));
        let log = repo().join(format!("fixtures/{dir}/sample.log"));
        let (fmt, wrap) = (
            want["format"].as_str().unwrap(),
            want["wrap"].as_str().unwrap(),
        );
        let args = [
            "--config",
            repo().to_str().unwrap(),
            "--format",
            fmt,
            "--wrap",
            wrap,
            log.to_str().unwrap(),
        ];
        let (decisions, summary) = replay_json(&args);
        assert_eq!(decision_keys(&decisions), want_keys, "fixture {dir}");
        let stats = summary["formats"]
            .as_object()
            .unwrap()
            .values()
            .next()
            .unwrap();
        assert_eq!(stats["lines"], want["lines"], "fixture {dir}");
        assert_eq!(
            stats["unparsed"], want["unparsed"],
            "fixture {dir}: {stats}"
        );
    }
}

#[test]
fn nginx_error_log_fixture() {
    let (want, want_keys) = expected("fixtures/nginx_error/expected.json");
    let log = repo().join("fixtures/nginx_error/error.log");
    let args = [
        "--config",
        repo().to_str().unwrap(),
        "--jail",
        "nginx-limit-req",
        log.to_str().unwrap(),
    ];
    let (decisions, summary) = replay_json(&args);
    assert_eq!(decision_keys(&decisions), want_keys);
    assert_eq!(summary["formats"]["nginx_error"]["parsed"], want["lines"]);
    // The "user not found" lines parse but do not match the filter.
    assert_eq!(summary["jails"]["nginx-limit-req"]["matches"], 40);
}

#[allow(dead_code)]
#[path = "../benches/support/genlog.rs"]
mod genlog;

/// `portcullis replay --json` output (decisions, then the summary with its
/// counters and samples) with `threads` threads.
fn replay_raw(threads: &str, args: &[&str]) -> Vec<u8> {
    let out = bin()
        .args(["replay", "--json", "--threads", threads])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

fn same_with_threads(what: &str, args: &[&str]) {
    let one = replay_raw("1", args);
    let many = replay_raw("3", args);
    assert!(!one.is_empty());
    assert!(
        one == many,
        "{what}: the parallel replay differs from the single-threaded one"
    );
}

/// Issue 11: `replay` parses on every core and decides in log order; its
/// output (decisions, counters, samples of refused lines) is byte for byte
/// the single-threaded one, on every fixture and on a generated
/// 1,000,000-line log with an over-long line, invalid UTF-8 and no final
/// newline.
#[test]
fn parallel_replay_decides_exactly_as_one_thread() {
    let repo_dir = repo().to_str().unwrap();
    for dir in FORMAT_FIXTURES {
        let (want, _) = expected(&format!("fixtures/{dir}/expected.json"));
        let log = repo().join(format!("fixtures/{dir}/sample.log"));
        let (fmt, wrap) = (
            want["format"].as_str().unwrap(),
            want["wrap"].as_str().unwrap(),
        );
        let args = [
            "--config",
            repo_dir,
            "--format",
            fmt,
            "--wrap",
            wrap,
            log.to_str().unwrap(),
        ];
        same_with_threads(dir, &args);
    }
    let error_log = repo().join("fixtures/nginx_error/error.log");
    same_with_threads(
        "nginx_error",
        &[
            "--config",
            repo_dir,
            "--jail",
            "nginx-limit-req",
            error_log.to_str().unwrap(),
        ],
    );
    let injection = repo().join("fixtures/injection/access.log");
    same_with_threads(
        "injection",
        &[
            "--config",
            repo_dir,
            "--format",
            "combined",
            injection.to_str().unwrap(),
        ],
    );
    for file in ["api_audit.log", "combined.log", "envoy.log"] {
        let log = repo().join("fixtures/hostile").join(file);
        same_with_threads(file, &["--config", repo_dir, log.to_str().unwrap()]);
    }
    let tmp = TempDir::new("parallel-replay");
    let mut log = Vec::new();
    genlog::generate_api_audit(1_000_000, &mut log);
    log.extend_from_slice(&vec![b'x'; 300 * 1024]);
    log.extend_from_slice(b"\n203.0.113.9 - - [18/Nov/2026:11:07:00 +0000] \"GET /\xff\xfe HTTP/1.1\" 401 0 \"-\" \"x\" 1 0.1 0.1 -\n");
    log.extend_from_slice(b"203.0.113.9 - - [18/Nov/2026:11:07:01 +0000] \"GET / HTTP/1.1\" 401 0 \"-\" \"x\" 1 0.1 0.1 -");
    let path = tmp.path().join("big.log");
    std::fs::write(&path, &log).unwrap();
    let (decisions, summary) = replay_json(&["--config", repo_dir, path.to_str().unwrap()]);
    assert!(decisions.len() > 10, "the generated attacks decide");
    assert_eq!(summary["formats"]["api_audit"]["lines"], 1_000_003);
    same_with_threads(
        "1,000,000 generated lines",
        &["--config", repo_dir, path.to_str().unwrap()],
    );
    // A regular file is read in ranges by the parser threads; a pipe is cut
    // into lines by the detecting thread. Both decide as one thread does.
    let piped = bin()
        .args([
            "replay",
            "--json",
            "--threads",
            "3",
            "--config",
            repo_dir,
            "-",
        ])
        .stdin(std::fs::File::open(&path).unwrap())
        .output()
        .unwrap();
    assert!(piped.status.success(), "{}", stderr(&piped));
    let one = replay_raw("1", &["--config", repo_dir, path.to_str().unwrap()]);
    let text = |b: &[u8]| String::from_utf8_lossy(b).replace(path.to_str().unwrap(), "(stdin)");
    assert!(
        text(&piped.stdout) == text(&one),
        "stdin: the parallel replay differs from the single-threaded one"
    );
}

/// Long lines on a pipe stay bounded in memory: the lines a reading thread
/// hands to the parser threads are cut into chunks by bytes as well as by
/// count (4,096 lines of 150 KB made 600 MB chunks; found by an attacking
/// session). 600 lines of 150 KB through stdin on two threads: the peak RSS
/// of the replay (then by `wait4`, which also counted this test process's
/// own peak) was 216 MB before, 52 MB after.
#[test]
fn long_lines_on_stdin_do_not_fill_memory() {
    let ua = "A".repeat(150_000);
    let mut log = Vec::new();
    for i in 0..600 {
        log.extend_from_slice(
            format!(
                "10.0.{}.{} - - [18/Nov/2026:11:06:40 +0000] \"GET /v1/orders HTTP/1.1\" 200 2589 \"-\" \"{ua}\" 386 0.788 0.788 key_{}\n",
                i / 256,
                i % 256,
                i % 50
            )
            .as_bytes(),
        );
    }
    let repo_dir = repo().to_str().unwrap().to_string();
    let (out, peak_kb) = replay_peak_rss_fed("2", &["--config", &repo_dir, "-"], log);
    assert!(out.contains("\"lines\":600"), "{out}");
    assert!(peak_kb < 120_000, "peak RSS {peak_kb} kB");
}

/// Short lines in a file stay bounded in memory on the parallel path: a
/// 256 KiB byte range of empty lines was one chunk of 262,144 parsed
/// entries (90 MB); 32 threads held 13.7 GB for a 64 MiB file of newlines
/// (found by an attacking session). Now a range of more than 4,096 lines is
/// read in parts. 4.2 million empty lines in runs between real ones, on 8
/// threads: peak RSS of the replay itself (`wait4`), and the same output as
/// one thread.
#[test]
fn short_lines_in_a_file_do_not_fill_memory() {
    let mut real = Vec::new();
    genlog::generate_api_audit(21_000, &mut real);
    let real: Vec<&[u8]> = real.split_inclusive(|&b| b == b'\n').collect();
    let mut log = Vec::new();
    for block in real.chunks(1_500) {
        log.extend_from_slice(&vec![b'\n'; 300_000]);
        block.iter().for_each(|l| log.extend_from_slice(l));
    }
    let tmp = TempDir::new("short-lines");
    let path = tmp.path().join("short.log");
    std::fs::write(&path, &log).unwrap();
    let out = bounded_and_as_one_thread(&path, "8", 150_000);
    assert!(out.contains("\"lines\":4221000"), "{out}");
}

/// Long lines among short ones in a file stay bounded in memory on the
/// parallel path: each parsed event that a 34 KB line grew kept its buffer
/// (up to 64 KiB) until its slot was used again, and when it was given back
/// a small remnant stayed behind, so the allocator's memory grew with the
/// file (a 316 MB file held 366 MB on two threads; an attacking session).
/// 2,000 such lines after runs of 0-2,000 empty lines (70 MB), two threads:
/// 122 MB before, 32 MB since.
#[test]
fn long_lines_among_short_ones_do_not_fill_memory() {
    use std::io::Write;
    let tmp = TempDir::new("long-among-short");
    let file = tmp.path().join("mixed.log");
    // Written as it is made, not held: a small test process.
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    let path = "a".repeat(34_000);
    let mut seed = 1u64;
    for i in 0..2_000 {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.write_all(&vec![b'\n'; (seed >> 33) as usize % 2_000])
            .unwrap();
        writeln!(
            out,
            "10.2.34.{} - - [18/Nov/2026:11:06:40 +0000] \"GET /v1/{path} HTTP/1.1\" 404 2589 \"-\" \"python-requests/2.31.0\" 386 0.788 0.788 key_8814d121",
            i % 250
        )
        .unwrap();
    }
    out.flush().unwrap();
    drop(out);
    let out = bounded_and_as_one_thread(&file, "2", 60_000);
    assert!(out.contains("\"matches\":2000"), "{out}");
}

/// Replays `file` with the repository's config on `threads` threads: its
/// peak RSS under `limit_kb`, its output that of one thread. The output.
fn bounded_and_as_one_thread(file: &std::path::Path, threads: &str, limit_kb: u64) -> String {
    let repo_dir = repo().to_str().unwrap().to_string();
    let args = ["--config", &repo_dir, file.to_str().unwrap()];
    let (out, peak_kb) = replay_peak_rss(threads, &args);
    assert!(peak_kb < limit_kb, "peak RSS {peak_kb} kB");
    assert!(
        out.as_bytes() == replay_raw("1", &args),
        "the parallel replay differs from the single-threaded one"
    );
    out
}

/// `replay --json --threads T ARGS`: its output (it must succeed) and its
/// peak RSS in kB, from its own `VmHWM`, read while it runs. Not `wait4`'s
/// `ru_maxrss`: spawning shares this process's memory until `exec`, and
/// that figure keeps this test process's own peak (other tests here make
/// logs of 160 MB in memory).
fn replay_peak_rss(threads: &str, args: &[&str]) -> (String, u64) {
    replay_peak_rss_fed(threads, args, Vec::new())
}

/// [`replay_peak_rss`] with `input` written to its stdin.
fn replay_peak_rss_fed(threads: &str, args: &[&str], input: Vec<u8>) -> (String, u64) {
    use std::io::Write;
    let mut child = bin()
        .args(["replay", "--json", "--threads", threads])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let feeder = std::thread::spawn(move || stdin.write_all(&input).unwrap());
    let stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || std::io::read_to_string(stdout).unwrap());
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_file)
            && let Some(kb) = text
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak = peak.max(kb);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    assert!(status.success(), "replay failed: {status}");
    assert!(peak > 0, "no VmHWM read while the replay ran");
    feeder.join().unwrap();
    (reader.join().unwrap(), peak)
}
