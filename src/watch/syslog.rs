//! Syslog sources: lines that arrive on a socket the daemon listens on
//! rather than in a file (nginx's `access_log syslog:server=unix:PATH,tag=api`,
//! or `server=127.0.0.1:PORT`; anything that speaks syslog).
//!
//! A source is `unix:/run/portcullis/nginx.sock` (a datagram socket, what
//! nginx and `logger -u` send to), `udp:127.0.0.1:5514` or
//! `tcp:127.0.0.1:5514` (newline-framed or octet-counted, RFC 6587). Each
//! message's header (RFC 3164, what nginx sends, or RFC 5424) is taken off;
//! its tag (app-name) routes it, and the rest is the log line the jail's
//! format parses. One socket can carry several logs, told apart by tag.
//!
//! A datagram socket drops what its reader does not take in time: the
//! receive buffer is made large (4 MiB), and the drops the kernel counts
//! (`SO_RXQ_OVFL`) are reported in `status`. The reader never blocks the
//! engine: it hands batches over a channel.

use std::collections::HashMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// Where a syslog source listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Listen {
    Unix(PathBuf),
    Udp(SocketAddr),
    Tcp(SocketAddr),
}

impl std::str::FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Listen, String> {
        let hint = "use unix:/run/portcullis/NAME.sock, udp:127.0.0.1:5514 or tcp:127.0.0.1:5514";
        let (kind, rest) = s.split_once(':').ok_or_else(|| format!("`{s}`: {hint}"))?;
        let addr = || {
            rest.parse::<SocketAddr>()
                .map_err(|_| format!("`{rest}` is not an address:port; {hint}"))
        };
        match kind {
            "unix" if rest.starts_with('/') => Ok(Listen::Unix(PathBuf::from(rest))),
            "unix" => Err(format!("`{rest}`: a unix socket needs an absolute path")),
            "udp" => Ok(Listen::Udp(addr()?)),
            "tcp" => Ok(Listen::Tcp(addr()?)),
            _ => Err(format!("`{s}`: {hint}")),
        }
    }
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Unix(p) => write!(f, "unix:{}", p.display()),
            Listen::Udp(a) => write!(f, "udp:{a}"),
            Listen::Tcp(a) => write!(f, "tcp:{a}"),
        }
    }
}

/// A message with its syslog header taken off.
#[derive(Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The tag (RFC 3164) or app-name (RFC 5424); empty if none.
    pub tag: &'a [u8],
    /// The log line.
    pub body: &'a [u8],
}

/// Takes the header off one message. RFC 5424 (`<PRI>1 TS HOST APP PROCID
/// MSGID SD MSG`) or RFC 3164 (`<PRI>Mmm dd hh:mm:ss [HOST] TAG[PID]: MSG`);
/// `None` when there is no `<PRI>`.
pub fn parse(msg: &[u8]) -> Option<Message<'_>> {
    let msg = trim_end(msg);
    let rest = msg.strip_prefix(b"<")?;
    let close = rest.iter().take(4).position(|&b| b == b'>')?;
    let pri = std::str::from_utf8(&rest[..close])
        .ok()
        .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok());
    // Facility 0-23 times 8, plus severity 0-7.
    if pri.is_none_or(|p| p > 191) {
        return None;
    }
    let rest = &rest[close + 1..];
    if let Some(r) = rest.strip_prefix(b"1 ") {
        return Some(rfc5424(r));
    }
    Some(rfc3164(rest))
}

fn trim_end(mut b: &[u8]) -> &[u8] {
    while let [head @ .., b'\n' | b'\r' | 0] = b {
        b = head;
    }
    b
}

/// Splits off one space-separated field.
fn field(b: &[u8]) -> (&[u8], &[u8]) {
    match b.iter().position(|&c| c == b' ') {
        Some(i) => (&b[..i], &b[i + 1..]),
        None => (b, &[]),
    }
}

fn rfc5424(b: &[u8]) -> Message<'_> {
    let (_ts, b) = field(b);
    let (_host, b) = field(b);
    let (app, b) = field(b);
    let (_procid, b) = field(b);
    let (_msgid, mut b) = field(b);
    // Structured data: `-` or one or more `[...]` (with `\]` escapes).
    if let Some(r) = b.strip_prefix(b"-") {
        b = r.strip_prefix(b" ").unwrap_or(r);
    } else {
        while b.first() == Some(&b'[') {
            let mut i = 1;
            while i < b.len() && b[i] != b']' {
                i += if b[i] == b'\\' { 2 } else { 1 };
            }
            b = b.get(i + 1..).unwrap_or(&[]);
        }
        b = b.strip_prefix(b" ").unwrap_or(b);
    }
    let body = b.strip_prefix("\u{feff}".as_bytes()).unwrap_or(b);
    Message {
        tag: if app == b"-" { &[] } else { app },
        body,
    }
}

fn rfc3164(b: &[u8]) -> Message<'_> {
    // `Mmm dd hh:mm:ss ` (the day padded with a space) when present.
    let b = if b.len() >= 16 && b[3] == b' ' && b[6] == b' ' && b[9] == b':' && b[15] == b' ' {
        &b[16..]
    } else {
        b
    };
    // Then the hostname (a word not ending in `:`), then the tag.
    let (first, rest) = field(b);
    let (tag_field, body) = if is_tag(first) {
        (first, rest)
    } else {
        let (second, rest2) = field(rest);
        if is_tag(second) {
            (second, rest2)
        } else {
            return Message { tag: &[], body: b };
        }
    };
    let tag = tag_field.strip_suffix(b":").unwrap_or(tag_field);
    let tag = match tag.iter().position(|&c| c == b'[') {
        Some(i) => &tag[..i],
        None => tag,
    };
    let body = body.strip_prefix("\u{feff}".as_bytes()).unwrap_or(body);
    Message { tag, body }
}

/// `tag:` or `tag[pid]:`.
fn is_tag(w: &[u8]) -> bool {
    w.len() > 1 && w.ends_with(b":")
}

/// One message received: which listener, its tag, its line.
#[derive(Debug, Clone)]
pub struct Received {
    pub listener: usize,
    pub tag: Box<[u8]>,
    pub line: Vec<u8>,
}

/// A listener's counters, shared with `status`.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    /// Messages without a syslog header (counted, skipped).
    pub malformed: AtomicU64,
    /// Datagrams the kernel dropped because the buffer was full.
    pub dropped: AtomicU64,
    /// Messages whose tag no jail reads (a typo in `syslog_tag`, a header
    /// that hid the tag).
    pub unrouted: AtomicU64,
    /// TCP connections refused or closed to make room.
    pub refused: AtomicU64,
    /// Messages handed to the engine and not processed yet: past
    /// [`MAX_IN_FLIGHT`] the reader waits, so a flood fills the kernel's
    /// buffer (and is counted as dropped) rather than this process's memory.
    pub in_flight: AtomicU64,
}

/// Messages at most waiting for the engine, per listener.
pub const MAX_IN_FLIGHT: u64 = 200_000;

impl Stats {
    /// Waits while the engine is behind (or until `stop`).
    fn wait_for_room(&self, stop: &AtomicBool) {
        while self.in_flight.load(Ordering::Relaxed) > MAX_IN_FLIGHT && !stop.load(Ordering::SeqCst)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// The engine processed `n` messages.
    pub fn done(&self, n: usize) {
        self.in_flight.fetch_sub(n as u64, Ordering::Relaxed);
    }
}

/// A socket being read on its own thread; stopped when dropped.
pub struct Listener {
    pub listen: Listen,
    pub stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Listen::Unix(p) = &self.listen {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// How a unix socket is made: its mode and group (nginx's workers must be
/// able to write to it).
#[derive(Debug, Clone, Copy)]
pub struct UnixAccess {
    pub mode: u32,
    pub gid: Option<u32>,
}

const MAX_MESSAGE: usize = 64 * 1024;
const BATCH: usize = 2048;

impl Listener {
    /// Binds `listen` and reads it on a thread of its own; every batch of
    /// messages goes to `deliver`. Id `listener` is carried in each.
    pub fn start(
        listen: Listen,
        listener: usize,
        access: UnixAccess,
        deliver: impl Fn(Vec<Received>) + Send + Sync + 'static,
    ) -> Result<Listener, String> {
        let stats = Arc::new(Stats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let deliver = Arc::new(deliver);
        let (st, sp) = (stats.clone(), stop.clone());
        match &listen {
            Listen::Unix(path) => {
                let sock = bind_unix(path, access)?;
                spawn(&listen, move || {
                    datagrams(DatagramFd::Unix(sock), listener, &st, &sp, &*deliver)
                })?;
            }
            Listen::Udp(addr) => {
                let sock = std::net::UdpSocket::bind(addr)
                    .map_err(|e| format!("syslog: cannot listen on udp:{addr}: {e}"))?;
                spawn(&listen, move || {
                    datagrams(DatagramFd::Udp(sock), listener, &st, &sp, &*deliver)
                })?;
            }
            Listen::Tcp(addr) => {
                let sock = std::net::TcpListener::bind(addr)
                    .map_err(|e| format!("syslog: cannot listen on tcp:{addr}: {e}"))?;
                spawn(&listen, move || tcp(sock, listener, st, sp, deliver))?;
            }
        }
        Ok(Listener {
            listen,
            stats,
            stop,
        })
    }
}

fn spawn(listen: &Listen, f: impl FnOnce() + Send + 'static) -> Result<(), String> {
    std::thread::Builder::new()
        .name("syslog".into())
        .spawn(f)
        .map(|_| ())
        .map_err(|e| format!("syslog {listen}: cannot start its thread: {e}"))
}

fn bind_unix(
    path: &std::path::Path,
    access: UnixAccess,
) -> Result<std::os::unix::net::UnixDatagram, String> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
    let shown = path.display();
    // A socket left by a previous run is replaced; a socket something
    // listens on (another daemon's, our own control socket, /dev/log) and
    // anything that is not a socket are not ours.
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            return Err(format!(
                "syslog: {shown} exists and is not a socket; remove it or choose another path"
            ));
        }
        if in_use(path) {
            return Err(format!(
                "syslog: something is listening on {shown}; choose another path"
            ));
        }
        let _ = std::fs::remove_file(path);
    }
    let dir = path
        .parent()
        .filter(|d| d.is_dir())
        .ok_or_else(|| format!("syslog: the directory of {shown} does not exist"))?;
    // Bound, given its mode and group inside a directory only this process
    // can write, then renamed into place: no chmod or chown ever goes
    // through a name someone else could swap for a symlink.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let private = dir.join(format!(
        ".portcullis-bind-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(|e| format!("syslog: cannot make {}: {e}", private.display()))?;
    let inner = private.join("s");
    let result = (|| {
        let sock = std::os::unix::net::UnixDatagram::bind(&inner)
            .map_err(|e| format!("syslog: cannot listen on unix:{shown}: {e}"))?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(access.mode))
            .map_err(|e| format!("syslog: chmod {shown}: {e}"))?;
        if let Some(gid) = access.gid {
            std::os::unix::fs::chown(&inner, None, Some(gid))
                .map_err(|e| format!("syslog: chown {shown}: {e}"))?;
        }
        std::fs::rename(&inner, path)
            .map_err(|e| format!("syslog: cannot put the socket at {shown}: {e}"))?;
        Ok(sock)
    })();
    let _ = std::fs::remove_file(&inner);
    let _ = std::fs::remove_dir(&private);
    result
}

/// Whether a socket at `path` has someone listening (a datagram connect
/// succeeds, or meets a stream socket).
fn in_use(path: &std::path::Path) -> bool {
    let Ok(probe) = std::os::unix::net::UnixDatagram::unbound() else {
        return false;
    };
    match probe.connect(path) {
        Ok(()) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPROTOTYPE),
    }
}

enum DatagramFd {
    Unix(std::os::unix::net::UnixDatagram),
    Udp(std::net::UdpSocket),
}

impl DatagramFd {
    fn fd(&self) -> i32 {
        use std::os::fd::AsRawFd;
        match self {
            DatagramFd::Unix(s) => s.as_raw_fd(),
            DatagramFd::Udp(s) => s.as_raw_fd(),
        }
    }
}

fn setsockopt(fd: i32, level: i32, name: i32, value: i32) -> bool {
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        ) == 0
    }
}

/// Reads datagrams until stopped: one blocking receive (with a timeout, to
/// notice the stop), then whatever else is queued, as one batch.
fn datagrams(
    sock: DatagramFd,
    listener: usize,
    stats: &Stats,
    stop: &AtomicBool,
    deliver: &(dyn Fn(Vec<Received>) + Send + Sync),
) {
    let fd = sock.fd();
    let rcvbuf = 4 << 20;
    if !setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcvbuf) {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf);
    }
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RXQ_OVFL, 1);
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 300_000,
    };
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            &timeout as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as u32,
        );
    }
    let mut buf = vec![0u8; MAX_MESSAGE];
    while !stop.load(Ordering::SeqCst) {
        let mut batch = Vec::new();
        let mut flags = 0;
        while batch.len() < BATCH {
            let Some(n) = recv(fd, &mut buf, flags, stats) else {
                break;
            };
            if n > 0 {
                push(&buf[..n], listener, stats, &mut batch);
            }
            flags = libc::MSG_DONTWAIT;
        }
        if !batch.is_empty() {
            stats
                .in_flight
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            deliver(batch);
            stats.wait_for_room(stop);
        }
    }
}

/// One datagram; also reads the kernel's drop counter that comes with it.
fn recv(fd: i32, buf: &mut [u8], flags: i32, stats: &Stats) -> Option<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr() as *mut libc::c_void,
        iov_len: buf.len(),
    };
    let mut control = [0u64; 8];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control);
    let n = unsafe { libc::recvmsg(fd, &mut msg, flags) };
    if n < 0 {
        return None;
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        // Longer than any message: counted, and not half-parsed.
        stats.received.fetch_add(1, Ordering::Relaxed);
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        return Some(0);
    }
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SO_RXQ_OVFL {
                let dropped = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const u32);
                stats.dropped.store(u64::from(dropped), Ordering::Relaxed);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Some(n as usize)
}

fn push(raw: &[u8], listener: usize, stats: &Stats, batch: &mut Vec<Received>) {
    stats.received.fetch_add(1, Ordering::Relaxed);
    match parse(raw) {
        Some(m) => batch.push(Received {
            listener,
            tag: m.tag.into(),
            line: m.body.to_vec(),
        }),
        None => {
            stats.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// TCP connections open at most; past it the one idle longest is closed.
const MAX_TCP: usize = 64;
/// A TCP connection that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(30);

/// The open TCP connections: their peer, when they last sent, and a handle
/// to close them with.
type Open = Arc<
    std::sync::Mutex<HashMap<u64, (std::net::IpAddr, std::time::Instant, std::net::TcpStream)>>,
>;

/// Accepts connections, each read on its own thread. Idle senders cannot
/// hold the listener: at most 8 connections from one address and 64 in all,
/// past which the one idle longest (of that address, or of all) is closed;
/// and one silent for 30 s is closed anyway.
fn tcp(
    sock: std::net::TcpListener,
    listener: usize,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
    deliver: Arc<dyn Fn(Vec<Received>) + Send + Sync>,
) {
    let open: Open = Arc::default();
    let mut next = 0u64;
    let _ = sock.set_nonblocking(true);
    while !stop.load(Ordering::SeqCst) {
        let Ok((conn, peer)) = sock.accept() else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let peer = peer.ip().to_canonical();
        let Ok(handle) = conn.try_clone() else {
            continue;
        };
        {
            let mut o = open.lock().unwrap_or_else(|p| p.into_inner());
            let mine = o.values().filter(|c| c.0 == peer).count();
            let evict = |o: &mut HashMap<
                u64,
                (std::net::IpAddr, std::time::Instant, std::net::TcpStream),
            >,
                         only: Option<std::net::IpAddr>| {
                let idlest = o
                    .iter()
                    .filter(|(_, c)| only.is_none_or(|p| c.0 == p))
                    .min_by_key(|(_, c)| c.1)
                    .map(|(&id, _)| id);
                if let Some((_, _, s)) = idlest.and_then(|id| o.remove(&id)) {
                    let _ = s.shutdown(std::net::Shutdown::Both);
                }
            };
            if mine >= 8 {
                evict(&mut o, Some(peer));
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            if o.len() >= MAX_TCP {
                evict(&mut o, None);
                stats.refused.fetch_add(1, Ordering::Relaxed);
            }
            next += 1;
            o.insert(next, (peer, std::time::Instant::now(), handle));
        }
        let id = next;
        let (stats, stop, deliver, open) =
            (stats.clone(), stop.clone(), deliver.clone(), open.clone());
        let _ = std::thread::Builder::new()
            .name("syslog-tcp".into())
            .spawn(move || {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_millis(300)));
                let seen = |o: &Open| -> bool {
                    let mut o = o.lock().unwrap_or_else(|p| p.into_inner());
                    match o.get_mut(&id) {
                        Some(c) => {
                            c.1 = std::time::Instant::now();
                            true
                        }
                        // Closed to make room.
                        None => false,
                    }
                };
                stream(
                    conn,
                    listener,
                    &stats,
                    &stop,
                    &*deliver,
                    || seen(&open),
                    || {
                        let o = open.lock().unwrap_or_else(|p| p.into_inner());
                        o.get(&id).is_none_or(|c| c.1.elapsed() > TCP_IDLE)
                    },
                );
                open.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            });
    }
}

/// One TCP connection: octet-counted (`LEN SP MSG`) or newline-framed
/// messages, told apart by the first byte of each.
fn stream(
    mut conn: impl Read,
    listener: usize,
    stats: &Stats,
    stop: &AtomicBool,
    deliver: &(dyn Fn(Vec<Received>) + Send + Sync),
    mut sent: impl FnMut() -> bool,
    idle: impl Fn() -> bool,
) {
    let mut pending: Vec<u8> = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        let n = match conn.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if idle() {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        if !sent() {
            break;
        }
        pending.extend_from_slice(&chunk[..n]);
        let mut batch = Vec::new();
        let used = frames(&pending, |m| push(m, listener, stats, &mut batch));
        pending.drain(..used);
        if pending.len() > MAX_MESSAGE + 8 {
            // A frame longer than any message: the sender is not speaking syslog.
            stats.malformed.fetch_add(1, Ordering::Relaxed);
            break;
        }
        if !batch.is_empty() {
            stats
                .in_flight
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            deliver(batch);
            stats.wait_for_room(stop);
        }
    }
}

/// What the next frame of a TCP stream is.
enum Frame {
    /// Octet-counted (RFC 6587): the count's digits, then a space, then `<`.
    Counted { len: usize, header: usize },
    /// Anything else: up to the next newline.
    Line,
    /// Too few bytes to tell.
    Undecided,
}

fn frame_kind(rest: &[u8]) -> Frame {
    if !matches!(rest.first(), Some(b'1'..=b'9')) {
        return Frame::Line;
    }
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits > 6 {
        return Frame::Line;
    }
    match (rest.get(digits), rest.get(digits + 1)) {
        (None, _) | (Some(b' '), None) => Frame::Undecided,
        (Some(b' '), Some(b'<')) => {
            let len = std::str::from_utf8(&rest[..digits])
                .ok()
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|&l| l <= MAX_MESSAGE);
            match len {
                Some(len) => Frame::Counted {
                    len,
                    header: digits + 1,
                },
                None => Frame::Line,
            }
        }
        _ => Frame::Line,
    }
}

/// Calls `each` on every complete frame of `buf`; returns the bytes used.
/// A line that merely starts with digits (a raw access line, an ISO date)
/// is a newline-framed message, not a count.
fn frames(buf: &[u8], mut each: impl FnMut(&[u8])) -> usize {
    let mut at = 0;
    while at < buf.len() {
        let rest = &buf[at..];
        match frame_kind(rest) {
            Frame::Undecided => break,
            Frame::Counted { len, header } => {
                if rest.len() < header + len {
                    break;
                }
                each(&rest[header..header + len]);
                at += header + len;
            }
            Frame::Line => {
                let Some(nl) = memchr::memchr(b'\n', rest) else {
                    break;
                };
                if nl > 0 {
                    each(&rest[..nl]);
                }
                at += nl + 1;
            }
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Option<(String, String)> {
        parse(s.as_bytes()).map(|m| {
            (
                String::from_utf8_lossy(m.tag).into_owned(),
                String::from_utf8_lossy(m.body).into_owned(),
            )
        })
    }

    #[test]
    fn rfc3164_as_nginx_sends_it() {
        // nginx: `<PRI>Mmm dd hh:mm:ss HOST TAG: LINE`.
        assert_eq!(
            p(
                "<190>Nov 24 02:00:01 web1 api: 203.0.113.5 - - [24/Nov/2026:02:00:01 +0000] \"GET / HTTP/1.1\" 401 0"
            ),
            Some((
                "api".into(),
                "203.0.113.5 - - [24/Nov/2026:02:00:01 +0000] \"GET / HTTP/1.1\" 401 0".into()
            ))
        );
        // Without a hostname (nginx `nohostname`, logger -u), with a pid.
        assert_eq!(
            p("<13>Nov  4 02:00:01 envoy[42]: hello world\n"),
            Some(("envoy".into(), "hello world".into()))
        );
        // No header beyond the priority.
        assert_eq!(p("<13>just text"), Some(("".into(), "just text".into())));
    }

    #[test]
    fn rfc5424() {
        assert_eq!(
            p("<165>1 2026-11-24T02:00:01.003Z web1 api 42 ID47 - 203.0.113.5 - -"),
            Some(("api".into(), "203.0.113.5 - -".into()))
        );
        assert_eq!(
            p("<165>1 2026-11-24T02:00:01Z web1 api - - [a@1 x=\"y\\]z\"][b@2 q=\"r\"] line"),
            Some(("api".into(), "line".into()))
        );
        assert_eq!(
            p("<165>1 2026-11-24T02:00:01Z - - - - - \u{feff}bom line"),
            Some(("".into(), "bom line".into()))
        );
    }

    #[test]
    fn hostile_headers_never_panic() {
        for s in [
            "",
            "<",
            "<>",
            "<999999>x",
            "<1",
            "<12>",
            "<12>1 ",
            "<12>1 a b c d e [unterminated",
            "<a>x",
            "x<12>y",
            "<12>Nov 24 02:00:01 ",
            "<12>\u{0}\u{0}",
        ] {
            let _ = p(s);
        }
        assert_eq!(p("no header"), None);
        assert_eq!(p("<a>x"), None);
        assert_eq!(p("<192>x"), None, "past facility 23");
        assert_eq!(
            p("<13>Nov 24 02:00:01 h api: \u{feff}line"),
            Some(("api".into(), "line".into()))
        );
    }

    #[test]
    fn tcp_framing_both_ways() {
        let mut got = Vec::new();
        let buf = b"5 <1>ab<13>x: line one\n10 <13>x: two3 <1";
        let used = frames(buf, |m| got.push(String::from_utf8_lossy(m).into_owned()));
        assert_eq!(got, vec!["<1>ab", "<13>x: line one", "<13>x: two"]);
        assert_eq!(&buf[used..], b"3 <1");
        // Lines that start with digits are lines, and do not stall or
        // swallow what follows.
        let mut got = Vec::new();
        let buf = b"2026-11-24T02:00:01 h x\n1.2.3.4 - - raw\n<13>x: ok\n";
        let used = frames(buf, |m| got.push(String::from_utf8_lossy(m).into_owned()));
        assert_eq!(got.len(), 3);
        assert_eq!(used, buf.len());
    }

    #[test]
    fn listen_specs() {
        assert!("unix:/run/p.sock".parse::<Listen>().is_ok());
        assert!("udp:127.0.0.1:5514".parse::<Listen>().is_ok());
        assert!("tcp:[::1]:5514".parse::<Listen>().is_ok());
        assert!("unix:relative.sock".parse::<Listen>().is_err());
        assert!("udp:localhost".parse::<Listen>().is_err());
        assert!("file:/x".parse::<Listen>().is_err());
    }
}
