//! Two questions asked of nftables directly over netlink, for verification:
//! "is this element in this set?" and "which sets do the rules of this chain
//! look up?".
//!
//! Why not the `nft` program: nftables 1.0.6 (Debian 12) fills its cache with
//! every element of every set before it runs `get element`, `list chain` or
//! even `list tables`, and the kernel's set dump restarts its walk for each
//! netlink message, so the cost grows faster than the set: 0.6 s at 100,000
//! elements, 56 s at 1,000,000 (measured; see the README). A non-dump
//! `NFT_MSG_GETSETELEM` is one hash lookup in the kernel, and a rule dump
//! filtered to one chain reads only that chain's few rules.
//!
//! One write happens here: [`add_elements`], the bulk refill of an address
//! set at boot (a million elements), where nft's own parsing of the script is
//! most of the time. Every other change goes through `nft -f`.

use ipnet::IpNet;
use std::io;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 16;
const NFNL_MSG_BATCH_END: u16 = 17;
const NFT_MSG_GETTABLE: u16 = 1;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_GETSETELEM: u16 = 13;
const NFPROTO_INET: u8 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;

// Attribute numbers from linux/netfilter/nf_tables.h.
const NFTA_TABLE_NAME: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_SET_ELEM_USERDATA: u16 = 6;
/// libnftnl's user-data tag for an element's comment (what `nft` shows).
const NFTNL_UDATA_SET_ELEM_COMMENT: u8 = 0;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_LOOKUP_SET: u16 = 1;

/// Whether `net` (an address, or a prefix in an interval set, looked up by
/// its first address) is an element of `inet TABLE SET`. A missing table or
/// set is `Ok(false)`, like a missing element.
pub fn has_element(table: &str, set: &str, net: &IpNet) -> Result<bool, String> {
    has_all(table, set, std::slice::from_ref(net))
}

/// Whether every one of `nets` is an element of `inet TABLE SET`: one
/// request per 256 elements (the kernel answers each element it finds, and
/// fails the request at the first it does not).
pub fn has_all(table: &str, set: &str, nets: &[IpNet]) -> Result<bool, String> {
    let sock = Socket::open().map_err(|e| format!("netlink socket: {e}"))?;
    for chunk in nets.chunks(256) {
        let mut msg = Message::new(NFT_MSG_GETSETELEM, libc::NLM_F_REQUEST | libc::NLM_F_ACK);
        msg.attr(NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
        msg.attr(NFTA_SET_ELEM_LIST_SET, &cstr(set));
        let elements = msg.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        for net in chunk {
            let key: Vec<u8> = match net.network() {
                std::net::IpAddr::V4(a) => a.octets().to_vec(),
                std::net::IpAddr::V6(a) => a.octets().to_vec(),
            };
            let elem = msg.begin(NFTA_LIST_ELEM);
            let k = msg.begin(NFTA_SET_ELEM_KEY);
            msg.attr(NFTA_DATA_VALUE, &key);
            msg.end(k);
            msg.end(elem);
        }
        msg.end(elements);
        match sock.exchange(&msg.finish()) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(false),
            Err(e) => return Err(format!("netlink get element {set}: {e}")),
        }
    }
    Ok(true)
}

/// An element for [`add_elements`]: an address (4 or 16 bytes), its
/// timeout in seconds (`None`: permanent) and a comment (the jail).
pub struct NewElement<'a> {
    pub addr: std::net::IpAddr,
    pub timeout: Option<u64>,
    pub comment: Option<&'a str>,
}

/// Elements one message carries: the element list is one attribute, whose
/// length is 16 bits (about 64 KiB; an element here is at most ~120 bytes).
const PER_MESSAGE: usize = 400;
/// Messages one batch (one transaction, one `sendmsg`) carries.
const PER_BATCH: usize = 250;

/// Adds `elements` to the (non-interval) set `inet TABLE SET`, in
/// transactions of 100,000 elements sent straight to the kernel. An element
/// already present is left as it is (`add`, not `create`). Every message is
/// acknowledged, so an error names what the kernel refused.
pub fn add_elements(table: &str, set: &str, elements: &[NewElement]) -> Result<(), String> {
    let sock = Socket::open().map_err(|e| format!("netlink socket: {e}"))?;
    let mut seq = 1u32;
    for batch in elements.chunks(PER_MESSAGE * PER_BATCH) {
        let mut buf = Vec::with_capacity(batch.len() * 64 + 64);
        buf.extend(batch_marker(NFNL_MSG_BATCH_BEGIN, seq));
        let mut messages = 0;
        for chunk in batch.chunks(PER_MESSAGE) {
            seq += 1;
            messages += 1;
            let flags = libc::NLM_F_REQUEST | libc::NLM_F_CREATE | libc::NLM_F_ACK;
            let mut msg = Message::new(NFT_MSG_NEWSETELEM, flags);
            msg.seq(seq);
            msg.attr(NFTA_SET_ELEM_LIST_TABLE, &cstr(table));
            msg.attr(NFTA_SET_ELEM_LIST_SET, &cstr(set));
            let list = msg.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
            for e in chunk {
                let elem = msg.begin(NFTA_LIST_ELEM);
                let key = msg.begin(NFTA_SET_ELEM_KEY);
                match e.addr {
                    std::net::IpAddr::V4(a) => msg.attr(NFTA_DATA_VALUE, &a.octets()),
                    std::net::IpAddr::V6(a) => msg.attr(NFTA_DATA_VALUE, &a.octets()),
                }
                msg.end(key);
                if let Some(secs) = e.timeout {
                    msg.attr(NFTA_SET_ELEM_TIMEOUT, &(secs * 1000).to_be_bytes());
                }
                if let Some(c) = e.comment {
                    let c = &c.as_bytes()[..c.len().min(200)];
                    let mut ud = vec![NFTNL_UDATA_SET_ELEM_COMMENT, (c.len() + 1) as u8];
                    ud.extend_from_slice(c);
                    ud.push(0);
                    msg.attr(NFTA_SET_ELEM_USERDATA, &ud);
                }
                msg.end(elem);
            }
            msg.end(list);
            buf.extend(msg.finish());
        }
        seq += 1;
        buf.extend(batch_marker(NFNL_MSG_BATCH_END, seq));
        sock.send_batch(&buf, messages)
            .map_err(|e| format!("netlink add elements to {set}: {e}"))?;
    }
    Ok(())
}

/// A batch's begin or end message (nfgenmsg with the subsystem id).
fn batch_marker(ty: u16, seq: u32) -> Vec<u8> {
    let mut b = vec![0u8; 20];
    b[0..4].copy_from_slice(&20u32.to_ne_bytes());
    b[4..6].copy_from_slice(&ty.to_ne_bytes());
    b[6..8].copy_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nfgenmsg: AF_UNSPEC, version 0, res_id = the subsystem, big-endian.
    b[18..20].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    b
}

/// Whether table `inet TABLE` exists.
pub fn table_exists(table: &str) -> Result<bool, String> {
    let mut msg = Message::new(NFT_MSG_GETTABLE, libc::NLM_F_REQUEST | libc::NLM_F_ACK);
    msg.attr(NFTA_TABLE_NAME, &cstr(table));
    match Socket::open().and_then(|s| s.exchange(&msg.finish())) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(format!("netlink get table {table}: {e}")),
    }
}

/// The names of the sets the rules of chain `inet TABLE CHAIN` look up (for
/// `ip saddr @addr4 drop`: `addr4`). A missing chain gives none.
pub fn chain_lookups(table: &str, chain: &str) -> Result<Vec<String>, String> {
    let mut msg = Message::new(NFT_MSG_GETRULE, libc::NLM_F_REQUEST | libc::NLM_F_DUMP);
    msg.attr(NFTA_RULE_TABLE, &cstr(table));
    msg.attr(NFTA_RULE_CHAIN, &cstr(chain));
    let replies = match Socket::open().and_then(|s| s.exchange(&msg.finish())) {
        Ok(r) => r,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(Vec::new()),
        Err(e) => return Err(format!("netlink list chain {chain}: {e}")),
    };
    let mut sets = Vec::new();
    for payload in replies {
        // A reply is nfgenmsg (4 bytes), then the rule's attributes; the
        // filter is applied by the kernel, but check it anyway.
        let attrs = attributes(payload.get(4..).unwrap_or_default());
        let is = |t: u16, want: &str| {
            attrs
                .iter()
                .any(|(ty, v)| *ty == t && v.strip_suffix(&[0]) == Some(want.as_bytes()))
        };
        if !is(NFTA_RULE_TABLE, table) || !is(NFTA_RULE_CHAIN, chain) {
            continue;
        }
        for (_, exprs) in attrs.iter().filter(|(t, _)| *t == NFTA_RULE_EXPRESSIONS) {
            for (_, expr) in attributes(exprs) {
                let expr = attributes(expr);
                let name = expr.iter().find(|(t, _)| *t == NFTA_EXPR_NAME);
                if name.is_none_or(|(_, n)| *n != b"lookup\0") {
                    continue;
                }
                for (_, data) in expr.iter().filter(|(t, _)| *t == NFTA_EXPR_DATA) {
                    for (t, v) in attributes(data) {
                        if t == NFTA_LOOKUP_SET {
                            let v = v.strip_suffix(&[0]).unwrap_or(v);
                            sets.push(String::from_utf8_lossy(v).into_owned());
                        }
                    }
                }
            }
        }
    }
    Ok(sets)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The (type, payload) pairs of a run of netlink attributes.
fn attributes(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[4..len]));
        b = &b[align4(len).min(b.len())..];
    }
    out
}

/// A request being built: netlink header, nfgenmsg, attributes.
struct Message {
    buf: Vec<u8>,
}

impl Message {
    fn new(msg: u16, flags: i32) -> Message {
        let mut buf = vec![0u8; 16];
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&(flags as u16).to_ne_bytes());
        buf[8..12].copy_from_slice(&1u32.to_ne_bytes());
        // nfgenmsg: family, version 0, resource id 0.
        buf.extend_from_slice(&[NFPROTO_INET, 0, 0, 0]);
        Message { buf }
    }

    fn seq(&mut self, seq: u32) {
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
    }

    fn attr(&mut self, ty: u16, value: &[u8]) {
        let len = 4 + value.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
    }

    /// Opens a nested attribute; returns where its header is.
    fn begin(&mut self, ty: u16) -> usize {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        at
    }

    fn end(&mut self, at: usize) {
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// A netlink socket, closed on drop.
struct Socket(i32);

impl Drop for Socket {
    fn drop(&mut self) {
        unsafe { libc::close(self.0) };
    }
}

impl Socket {
    fn open() -> io::Result<Socket> {
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let sock = Socket(fd);
        // Never hang the verifier on a kernel that does not answer; room for
        // the answers to a request of 256 elements.
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        unsafe {
            libc::setsockopt(
                sock.0,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &timeout as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        sock.set_int(libc::SOL_SOCKET, libc::SO_RCVBUF, 1 << 20);
        Ok(sock)
    }

    fn set_int(&self, level: i32, name: i32, value: i32) -> bool {
        unsafe {
            libc::setsockopt(
                self.0,
                level,
                name,
                &value as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            ) == 0
        }
    }

    fn send(&self, bytes: &[u8]) -> io::Result<()> {
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let sent = unsafe {
            libc::sendto(
                self.0,
                bytes.as_ptr() as *const libc::c_void,
                bytes.len(),
                0,
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads replies, handing each message's type and payload to `each`,
    /// until `each` gives the result.
    fn replies<T>(
        &self,
        mut each: impl FnMut(i32, &[u8]) -> Option<io::Result<T>>,
    ) -> io::Result<T> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n =
                unsafe { libc::recv(self.0, buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut b = &buf[..n as usize];
            while b.len() >= 16 {
                let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
                let ty = u16::from_ne_bytes([b[4], b[5]]);
                if len < 16 || len > b.len() {
                    return Err(io::Error::other("malformed netlink reply"));
                }
                if let Some(result) = each(ty as i32, &b[16..len]) {
                    return result;
                }
                b = &b[align4(len).min(b.len())..];
            }
        }
    }

    /// Sends one batch (a transaction) and reads the acknowledgements of its
    /// `messages` messages; the first error the kernel reports fails it.
    fn send_batch(&self, batch: &[u8], messages: usize) -> io::Result<()> {
        // A batch goes in one sendmsg: the socket must take all of it.
        let size = (batch.len() + 4096) as libc::c_int;
        if !self.set_int(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, size) {
            self.set_int(libc::SOL_SOCKET, libc::SO_SNDBUF, size);
        }
        // Errors do not echo the (large) request back.
        self.set_int(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
        self.send(batch)?;
        let mut acks = 0;
        self.replies(|ty, payload| {
            if ty == libc::NLMSG_ERROR {
                acks += 1;
                let code = error_code(payload);
                if code != 0 {
                    // A refused batch may not acknowledge every message.
                    return Some(Err(io::Error::from_raw_os_error(-code)));
                }
            }
            (acks >= messages).then_some(Ok(()))
        })
    }

    /// Sends one request and collects the payloads of its replies until the
    /// acknowledgement or the end of the dump; a negative acknowledgement is
    /// the error it carries.
    fn exchange(&self, request: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        self.send(request)?;
        let mut replies = Vec::new();
        self.replies(|ty, payload| match ty {
            libc::NLMSG_ERROR => Some(match error_code(payload) {
                0 => Ok(std::mem::take(&mut replies)),
                code => Err(io::Error::from_raw_os_error(-code)),
            }),
            libc::NLMSG_DONE => Some(Ok(std::mem::take(&mut replies))),
            _ => {
                replies.push(payload.to_vec());
                None
            }
        })
    }
}

/// The code of an `NLMSG_ERROR` (0: an acknowledgement).
fn error_code(payload: &[u8]) -> i32 {
    payload
        .get(0..4)
        .map_or(0, |c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_nested_attributes() {
        let mut m = Message::new(NFT_MSG_GETSETELEM, libc::NLM_F_REQUEST);
        m.attr(NFTA_SET_ELEM_LIST_TABLE, &cstr("t"));
        let outer = m.begin(NFTA_SET_ELEM_LIST_ELEMENTS);
        m.attr(NFTA_DATA_VALUE, &[192, 0, 2, 1]);
        m.end(outer);
        let b = m.finish();
        assert_eq!(
            u32::from_ne_bytes(b[0..4].try_into().unwrap()) as usize,
            b.len()
        );
        let attrs = attributes(&b[20..]);
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[0], (NFTA_SET_ELEM_LIST_TABLE, &b"t\0"[..]));
        assert_eq!(attrs[1].0, NFTA_SET_ELEM_LIST_ELEMENTS);
        assert_eq!(
            attributes(attrs[1].1),
            vec![(NFTA_DATA_VALUE, &[192u8, 0, 2, 1][..])]
        );
    }

    #[test]
    fn truncated_attributes_stop() {
        assert!(attributes(&[8, 0, 1, 0, 1]).is_empty());
    }
}
