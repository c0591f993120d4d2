//! Client addresses: parsing the forms proxies write, and choosing the real
//! client behind trusted proxies.
//!
//! The rule is nginx's `real_ip_recursive on`: start at the peer address; while
//! it is a trusted proxy, step one hop left in X-Forwarded-For. Hops left of the
//! first untrusted one were written by the client and are never believed, so a
//! forged X-Forwarded-For cannot make us ban someone else.

use ipnet::IpNet;
use std::net::IpAddr;

/// Parses `1.2.3.4`, `1.2.3.4:80`, `::1`, `[::1]`, `[::1]:80`; IPv4-mapped
/// IPv6 becomes IPv4.
pub fn parse_addr(s: &str) -> Option<IpAddr> {
    if let Some(v4) = plain_ipv4(s.as_bytes()) {
        return Some(IpAddr::V4(v4));
    }
    let s = s.trim();
    let ip = if let Some(rest) = s.strip_prefix('[') {
        let end = rest.find(']')?;
        let after = &rest[end + 1..];
        if !(after.is_empty() || valid_port_suffix(after)) {
            return None;
        }
        rest[..end].parse::<IpAddr>().ok()?
    } else if let Ok(ip) = s.parse::<IpAddr>() {
        ip
    } else {
        // `a.b.c.d:port`; an IPv6 address without brackets has several colons
        // and already parsed above.
        let (host, port) = s.rsplit_once(':')?;
        if !valid_port_suffix(&s[host.len()..]) || port.is_empty() {
            return None;
        }
        match host.parse::<IpAddr>().ok()? {
            ip @ IpAddr::V4(_) => ip,
            IpAddr::V6(_) => return None,
        }
    };
    Some(ip.to_canonical())
}

/// The common case, `a.b.c.d` in plain decimal, without the general
/// parser: exactly what `Ipv4Addr::from_str` accepts in that shape (1 to 3
/// digits an octet, at most 255, no leading zero), `None` for anything else,
/// which then goes the general way.
fn plain_ipv4(s: &[u8]) -> Option<std::net::Ipv4Addr> {
    // One pass over the bytes: this runs for every line.
    let mut octets = [0u8; 4];
    let (mut n, mut v, mut digits) = (0usize, 0u32, 0u32);
    for &c in s {
        if c == b'.' {
            if digits == 0 || n == 3 {
                return None;
            }
            octets[n] = v as u8;
            (n, v, digits) = (n + 1, 0, 0);
            continue;
        }
        let d = c.wrapping_sub(b'0');
        // A digit; no leading zero (`01`), at most 3 digits, at most 255.
        if d > 9 || (digits == 1 && v == 0) {
            return None;
        }
        v = v * 10 + d as u32;
        digits += 1;
        if digits > 3 || v > 255 {
            return None;
        }
    }
    if n != 3 || digits == 0 {
        return None;
    }
    octets[3] = v as u8;
    Some(std::net::Ipv4Addr::from(octets))
}

fn valid_port_suffix(s: &str) -> bool {
    s.strip_prefix(':')
        .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|c| c.is_ascii_digit()))
}

/// Writes an IPv4-mapped IPv6 prefix (`::ffff:192.0.2.0/120`) as the IPv4
/// prefix it is (`192.0.2.0/24`), since addresses are compared in IPv4 form;
/// other networks are truncated to their prefix.
pub fn canonical_net(net: IpNet) -> IpNet {
    if let IpNet::V6(n) = net
        && n.prefix_len() >= 96
        && let Some(v4) = n.network().to_ipv4_mapped()
    {
        let v4 = ipnet::Ipv4Net::new(v4, n.prefix_len() - 96).expect("prefix <= 32");
        return IpNet::V4(v4.trunc());
    }
    net.trunc()
}

/// Whether an IPv6 prefix covers the whole IPv4-mapped range (`::/0`,
/// `::ffff:0:0/96`): then it covers every IPv4 address too.
pub fn covers_all_ipv4(net: &IpNet) -> bool {
    const MAPPED: u128 = 0xffff_0000_0000;
    matches!(net, IpNet::V6(n) if n.prefix_len() <= 96 && n.contains(&std::net::Ipv6Addr::from(MAPPED)))
}

/// A set of networks (the allowlist, trusted proxies). Kept as sorted,
/// merged address ranges, so a lookup is a binary search: a CDN's ranges or
/// an allowlist file of thousands of networks cost every line what a
/// handful does.
#[derive(Clone, Debug, Default)]
pub struct NetSet {
    nets: Vec<IpNet>,
    v4: Vec<(u32, u32)>,
    v6: Vec<(u128, u128)>,
}

/// Sorts inclusive ranges and merges those that overlap, so that both
/// ends increase (what [`meets`] searches).
fn merge<T: Copy + Ord>(mut r: Vec<(T, T)>) -> Vec<(T, T)> {
    r.sort_unstable();
    let mut out: Vec<(T, T)> = Vec::with_capacity(r.len());
    for (lo, hi) in r {
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

/// Whether any range of `ranges` (sorted, disjoint) meets `[lo, hi]`.
fn meets<T: Copy + Ord>(ranges: &[(T, T)], lo: T, hi: T) -> bool {
    let i = ranges.partition_point(|r| r.1 < lo);
    ranges.get(i).is_some_and(|r| r.0 <= hi)
}

impl NetSet {
    /// IPv4-mapped prefixes become IPv4 ones; an IPv6 prefix covering the
    /// whole mapped range also covers `0.0.0.0/0`.
    pub fn new(nets: Vec<IpNet>) -> NetSet {
        let mut out: Vec<IpNet> = nets.into_iter().map(canonical_net).collect();
        if out.iter().any(covers_all_ipv4) {
            out.push("0.0.0.0/0".parse().expect("valid"));
        }
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for n in &out {
            match n {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        NetSet {
            nets: out,
            v4: merge(v4),
            v6: merge(v6),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn nets(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether any network of the set and `net` share an address.
    pub fn overlaps(&self, net: &IpNet) -> bool {
        let net = canonical_net(*net);
        if covers_all_ipv4(&net) && !self.v4.is_empty() {
            return true;
        }
        match net {
            IpNet::V4(n) => meets(&self.v4, u32::from(n.network()), u32::from(n.broadcast())),
            IpNet::V6(n) => meets(&self.v6, u128::from(n.network()), u128::from(n.broadcast())),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match ip.to_canonical() {
            IpAddr::V4(a) => meets(&self.v4, u32::from(a), u32::from(a)),
            IpAddr::V6(a) => meets(&self.v6, u128::from(a), u128::from(a)),
        }
    }
}

/// Why no client address could be chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    BadPeer,
    BadForwardedFor,
}

/// Chooses the client from the peer address and the X-Forwarded-For value.
///
/// `peer` may itself be a comma-separated chain (some setups log
/// `$proxy_add_x_forwarded_for` where `$remote_addr` usually stands): its last
/// hop is the peer and the others are forwarded hops.
pub fn resolve_client(
    peer: &str,
    forwarded_for: Option<&str>,
    trusted: &NetSet,
) -> Result<IpAddr, ClientError> {
    // The common case: one plain IPv4 peer, no proxies to see through.
    if trusted.is_empty()
        && let Some(v4) = plain_ipv4(peer.as_bytes())
    {
        return Ok(IpAddr::V4(v4));
    }
    let (chain_head, peer_str) = match peer.rfind(',') {
        Some(i) => (Some(&peer[..i]), &peer[i + 1..]),
        None => (None, peer),
    };
    let mut client = parse_addr(peer_str).ok_or(ClientError::BadPeer)?;
    if trusted.is_empty() {
        return Ok(client);
    }
    // A chain in the peer position is `$proxy_add_x_forwarded_for`: the header
    // plus the peer. Walk its hops right-to-left, else the header's.
    let hops = chain_head.or(forwarded_for).unwrap_or("");
    for hop in hops
        .rsplit(',')
        .map(str::trim)
        .filter(|h| !h.is_empty() && *h != "-")
    {
        if !trusted.contains(client) {
            break;
        }
        client = parse_addr(hop).ok_or(ClientError::BadForwardedFor)?;
    }
    Ok(client)
}

/// Masks an address to a prefix length and returns it as a 128-bit key
/// (IPv4 in its IPv4-mapped form), for fixed-size map keys.
pub fn masked_key(ip: IpAddr, v4_prefix: u8, v6_prefix: u8) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let mask = if v4_prefix == 0 {
                0
            } else {
                u32::MAX << (32 - v4_prefix.min(32))
            };
            0xffff_0000_0000u128 | (bits & mask) as u128
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let mask = if v6_prefix == 0 {
                0
            } else {
                u128::MAX << (128 - v6_prefix.min(128))
            };
            bits & mask
        }
    }
}

/// Inverse of [`masked_key`]: the network a key stands for.
pub fn key_to_net(key: u128, v4_prefix: u8, v6_prefix: u8) -> IpNet {
    let ip = IpAddr::V6(key.into()).to_canonical();
    let prefix = if ip.is_ipv4() { v4_prefix } else { v6_prefix };
    IpNet::new(ip, prefix).expect("prefix validated by config")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fast path says exactly what the standard parser says, or nothing.
    #[test]
    fn plain_ipv4_agrees_with_the_standard_parser() {
        let cases = [
            "1.2.3.4",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3",
            "1.2.3.4.5",
            "1..3.4",
            ".1.2.3",
            "1.2.3.",
            "1.2.3.4 ",
            " 1.2.3.4",
            "1.2.3.4:80",
            "1.2.3.0000",
            "10.0.0.1",
            "1.2.3.-4",
            "1.2.3.4\0",
            "١.2.3.4",
            "1.2.3.255",
            "1.2.3.1000",
            "",
        ];
        // And every string of up to 7 bytes over an alphabet that makes
        // addresses and near-addresses, plus longer ones from it.
        let alphabet = [b'0', b'1', b'2', b'5', b'9', b'.', b'a'];
        let mut generated = Vec::new();
        for len in 0..=7u32 {
            for mut k in 0..alphabet.len().pow(len) {
                let mut s = String::new();
                for _ in 0..len {
                    s.push(alphabet[k % alphabet.len()] as char);
                    k /= alphabet.len();
                }
                generated.push(s);
            }
        }
        for a in [
            "0", "1", "9", "10", "99", "100", "199", "249", "250", "255", "256", "299", "300",
            "999", "00", "010", "0255", "1000",
        ] {
            generated.push(format!("{a}.{a}.{a}.{a}"));
            generated.push(format!("1.2.3.{a}"));
            generated.push(format!("{a}.2.3.4"));
        }
        for c in cases
            .iter()
            .copied()
            .chain(generated.iter().map(String::as_str))
        {
            let std = c.parse::<std::net::Ipv4Addr>().ok();
            if let Some(fast) = plain_ipv4(c.as_bytes()) {
                assert_eq!(Some(fast), std, "{c:?}");
            }
            if std.is_some() && !c.contains(':') {
                assert_eq!(plain_ipv4(c.as_bytes()), std, "{c:?}");
            }
        }
    }

    fn nets(s: &[&str]) -> NetSet {
        NetSet::new(s.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn address_forms() {
        assert_eq!(parse_addr("1.2.3.4"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(parse_addr("1.2.3.4:8080"), Some("1.2.3.4".parse().unwrap()));
        assert_eq!(
            parse_addr("[fd00::1]:443"),
            Some("fd00::1".parse().unwrap())
        );
        assert_eq!(parse_addr("[fd00::1]"), Some("fd00::1".parse().unwrap()));
        assert_eq!(
            parse_addr("::ffff:10.1.2.3"),
            Some("10.1.2.3".parse().unwrap())
        );
        assert_eq!(parse_addr("1.2.3.4:"), None);
        assert_eq!(parse_addr("1.2.3.4:80:80"), None);
        assert_eq!(parse_addr("evil.example"), None);
        assert_eq!(parse_addr("[fd00::1]x"), None);
    }

    #[test]
    fn untrusted_peer_ignores_forwarded_for() {
        let t = nets(&["10.0.0.0/8"]);
        let c = resolve_client("203.0.113.9", Some("1.1.1.1"), &t).unwrap();
        assert_eq!(c, "203.0.113.9".parse::<IpAddr>().unwrap());
        // No trusted proxies at all: the peer, always.
        let c = resolve_client("10.0.0.1", Some("1.1.1.1"), &NetSet::default()).unwrap();
        assert_eq!(c, "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rightmost_untrusted_hop_wins() {
        let t = nets(&["10.0.0.0/8"]);
        // The client forged "6.6.6.6"; the proxy appended the real 198.51.100.7.
        let c = resolve_client("10.0.0.2", Some("6.6.6.6, 198.51.100.7, 10.0.0.3"), &t).unwrap();
        assert_eq!(c, "198.51.100.7".parse::<IpAddr>().unwrap());
        // A chain written where remote_addr stands.
        let c = resolve_client("6.6.6.6, 198.51.100.7, 10.0.0.1", None, &t).unwrap();
        assert_eq!(c, "198.51.100.7".parse::<IpAddr>().unwrap());
        // All hops trusted: the leftmost one.
        let c = resolve_client("10.0.0.2", Some("10.9.9.9"), &t).unwrap();
        assert_eq!(c, "10.9.9.9".parse::<IpAddr>().unwrap());
        assert_eq!(
            resolve_client("10.0.0.2", Some("junk"), &t),
            Err(ClientError::BadForwardedFor)
        );
        assert_eq!(resolve_client("junk", None, &t), Err(ClientError::BadPeer));
    }

    #[test]
    fn masking() {
        let k = masked_key("192.0.2.77".parse().unwrap(), 24, 64);
        assert_eq!(key_to_net(k, 24, 64).to_string(), "192.0.2.0/24");
        let k = masked_key("2001:db8:1:2:3:4:5:6".parse().unwrap(), 24, 64);
        assert_eq!(key_to_net(k, 24, 64).to_string(), "2001:db8:1:2::/64");
        let a = masked_key("2001:db8:1:2::1".parse().unwrap(), 32, 64);
        let b = masked_key("2001:db8:1:2::ffff".parse().unwrap(), 32, 64);
        let c = masked_key("2001:db8:1:3::1".parse().unwrap(), 32, 64);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
