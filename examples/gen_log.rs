//! Writes a benchmark log: `cargo run --release --example gen_log -- 1000000 > bench.log`
//! (nginx `combined`), or `-- 1000000 api_audit` for the seed's format.

#[path = "../benches/support/genlog.rs"]
mod genlog;

use std::io::Write;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(1_000_000, |a| a.parse().expect("a line count"));
    let mut out = Vec::with_capacity(n * 190);
    match std::env::args().nth(2).as_deref() {
        Some("api_audit") => genlog::generate_api_audit(n, &mut out),
        _ => genlog::generate(n, &mut out),
    }
    std::io::stdout().write_all(&out).unwrap();
}
