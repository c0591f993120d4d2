//! A deterministic nginx `combined` log for benchmarks: mostly ordinary API
//! traffic from a few thousand clients, with attacks mixed in, ~1000 lines a
//! second of log time (so timestamps repeat as in a real busy log).

/// xorshift64*: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

fn clf_time(epoch: u64) -> String {
    let days = epoch / 86400;
    let secs = epoch % 86400;
    // civil_from_days (Howard Hinnant)
    let z = days as i64 + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{:02}/{}/{}:{:02}:{:02}:{:02} +0000",
        d,
        MONTHS[(m - 1) as usize],
        y,
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Writes `n` lines into `out`.
pub fn generate(n: usize, out: &mut Vec<u8>) {
    generate_as(n, out, false)
}

/// Writes `n` lines of the seed's `api_audit` format (combined, then
/// `$request_length $request_time $upstream_response_time
/// $http_x_api_key_id`): the same traffic, each ordinary client with its own
/// key, and one key leaked to many addresses.
pub fn generate_api_audit(n: usize, out: &mut Vec<u8>) {
    generate_as(n, out, true)
}

fn generate_as(n: usize, out: &mut Vec<u8>, api_audit: bool) {
    use std::io::Write;
    let mut rng = Rng::new(0x5eed);
    let paths = [
        "/v1/orders",
        "/v1/orders/8812",
        "/v1/users/me",
        "/v1/catalog?page=3&sort=price",
        "/healthz",
        "/v1/search?q=red+shoes",
    ];
    let agents = [
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
        "okhttp/4.12.0",
        "python-requests/2.31.0",
        "Go-http-client/2.0",
    ];
    let start = 1_795_000_000u64;
    let mut time_str = String::new();
    let mut time_sec = u64::MAX;
    for i in 0..n {
        let sec = start + i as u64 / 1000;
        if sec != time_sec {
            time_sec = sec;
            time_str = clf_time(sec);
        }
        let roll = rng.below(1000);
        let (ip, method, path, status, ua): (String, &str, &str, u16, &str) = match roll {
            // 1%: credential stuffing from a few hundred addresses
            0..=9 => (
                format!("203.0.{}.{}", rng.below(2), rng.below(250) + 1),
                "POST",
                "/v1/login",
                401,
                agents[2],
            ),
            // 0.5%: scanners
            10..=14 => (
                format!("198.51.100.{}", rng.below(50) + 1),
                "GET",
                "/.env",
                404,
                agents[3],
            ),
            // 1%: 429s
            15..=24 => (
                format!("192.0.2.{}", rng.below(20) + 1),
                "GET",
                "/v1/catalog",
                429,
                agents[1],
            ),
            // 0.3%: 5xx
            25..=27 => (
                format!("100.64.{}.{}", rng.below(4), rng.below(250) + 1),
                "POST",
                "/v1/search",
                502,
                agents[0],
            ),
            // 0.1%: bad user agents
            28 => (
                format!("198.18.0.{}", rng.below(10) + 1),
                "GET",
                "/v1/users?id=1",
                200,
                "sqlmap/1.7.2#stable (https://sqlmap.org)",
            ),
            _ => {
                let status = [200, 200, 200, 200, 201, 204, 304, 404][rng.below(8) as usize];
                (
                    format!(
                        "10.{}.{}.{}",
                        rng.below(4),
                        rng.below(40),
                        rng.below(250) + 1
                    ),
                    ["GET", "GET", "POST"][rng.below(3) as usize],
                    paths[rng.below(paths.len() as u64) as usize],
                    status,
                    agents[rng.below(agents.len() as u64) as usize],
                )
            }
        };
        let bytes = rng.below(20000);
        write!(
            out,
            "{ip} - - [{time_str}] \"{method} {path} HTTP/1.1\" {status} {bytes} \"-\" \"{ua}\""
        )
        .unwrap();
        if api_audit {
            let rt = rng.below(900) + 10;
            let key = match roll {
                // 0.2%: one key leaked to many addresses, all accepted
                29..=30 => "key_leaked".to_string(),
                0..=28 => "-".to_string(),
                _ => format!(
                    "key_{:x}",
                    ip.bytes().fold(7u32, |h, b| h.wrapping_mul(31) ^ b as u32)
                ),
            };
            write!(out, " {} 0.{rt:03} 0.{rt:03} {key}", 200 + rng.below(800),).unwrap();
        }
        out.push(b'\n');
    }
}
