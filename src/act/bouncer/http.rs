//! The bouncer API's HTTP/1.1 server: a thread that accepts, and a short
//! thread per connection (bouncers poll every few seconds; a handful of
//! them is the common case). One request per connection, answered with
//! `Connection: close`, which every HTTP client handles.
//!
//! Hostile clients are expected: a request head is read with a deadline
//! and at most [`MAX_HEAD`] bytes; at most [`MAX_PER_PEER`] connections
//! come from one address (an IPv6 /64), and when all [`MAX_CONNECTIONS`]
//! are taken the one that has waited longest for its request head is shut
//! to make room (clients holding idle connections cannot starve the
//! bouncers, which send their request at once); nothing is answered before
//! the API key checks out.

use super::{Api, Filter, Query, now_secs};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const MAX_HEAD: usize = 16 * 1024;
/// Request bodies are read and dropped (bouncers' usage metrics), up to this.
const MAX_BODY: usize = 1024 * 1024;
const MAX_CONNECTIONS: usize = 64;
const MAX_PER_PEER: usize = 8;
/// The whole request must arrive within this.
const READ_DEADLINE: Duration = Duration::from_secs(10);
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves `api` on `listener` from a thread of its own (TLS when `tls`).
pub fn spawn(
    listener: TcpListener,
    api: Arc<Api>,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("bouncer-api".into())
        .spawn(move || accept(listener, api, tls))
        .map(|_| ())
        .map_err(|e| format!("bouncer API: cannot start its thread: {e}"))
}

/// Connections open now, by id, and how many come from each peer (an
/// IPv6 peer counted by its /64, which one client holds whole).
#[derive(Default)]
struct Slots {
    next: u64,
    open: HashMap<u64, Conn>,
    per_peer: HashMap<IpAddr, usize>,
}

struct Conn {
    peer: IpAddr,
    opened: Instant,
    /// A handle to shut it down with.
    stream: TcpStream,
    /// Still reading its request head (it may be a slow client's).
    reading: Arc<AtomicBool>,
    /// Shut down to make room; no longer counted.
    evicted: bool,
}

fn peer_group(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(a) => ipnet::Ipv6Net::new(a, 64).map_or(peer, |n| IpAddr::V6(n.network())),
        v4 => v4,
    }
}

impl Slots {
    /// Admits a connection, or says no. When every slot is taken, the
    /// connection that has been reading its head the longest is shut down
    /// to make room: slow clients cannot hold the API, while a bouncer
    /// (which sends its request at once) is never the one evicted.
    fn take(&mut self, peer: IpAddr, stream: &TcpStream) -> Option<(u64, Arc<AtomicBool>)> {
        let group = peer_group(peer);
        if self.open.len() >= 2 * MAX_CONNECTIONS {
            return None;
        }
        // The same rule within one address's share as over all of them.
        if self.per_peer.get(&group).copied().unwrap_or(0) >= MAX_PER_PEER {
            self.evict_oldest_reading(Some(group))?;
        }
        let live = self.open.values().filter(|c| !c.evicted).count();
        if live >= MAX_CONNECTIONS {
            self.evict_oldest_reading(None)?;
        }
        let handle = stream.try_clone().ok()?;
        let reading = Arc::new(AtomicBool::new(true));
        self.next += 1;
        self.open.insert(
            self.next,
            Conn {
                peer: group,
                opened: Instant::now(),
                stream: handle,
                reading: reading.clone(),
                evicted: false,
            },
        );
        *self.per_peer.entry(group).or_default() += 1;
        Some((self.next, reading))
    }

    /// Shuts the connection (of `group`, or any) that has waited longest
    /// for its request; `None` if every one is being served.
    fn evict_oldest_reading(&mut self, group: Option<IpAddr>) -> Option<()> {
        let (_, c) = self
            .open
            .iter_mut()
            .filter(|(_, c)| {
                !c.evicted && group.is_none_or(|g| c.peer == g) && c.reading.load(Ordering::SeqCst)
            })
            .min_by_key(|(_, c)| c.opened)?;
        let _ = c.stream.shutdown(std::net::Shutdown::Both);
        c.evicted = true;
        let peer = c.peer;
        self.release(peer);
        Some(())
    }

    fn release(&mut self, peer: IpAddr) {
        if let Some(n) = self.per_peer.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }

    fn give_back(&mut self, id: u64) {
        if let Some(c) = self.open.remove(&id)
            && !c.evicted
        {
            self.release(c.peer);
        }
    }
}

fn lock(s: &Mutex<Slots>) -> std::sync::MutexGuard<'_, Slots> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn accept(listener: TcpListener, api: Arc<Api>, tls: Option<Arc<rustls::ServerConfig>>) {
    let slots = Arc::new(Mutex::new(Slots::default()));
    for conn in listener.incoming() {
        let Ok(stream) = conn else {
            // EMFILE and the like: do not spin.
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        let Ok(peer) = stream.peer_addr().map(|a| a.ip()) else {
            continue;
        };
        let Some((id, reading)) = lock(&slots).take(peer, &stream) else {
            continue;
        };
        let (api, tls, done) = (api.clone(), tls.clone(), slots.clone());
        let spawned = std::thread::Builder::new()
            .name("bouncer-conn".into())
            .spawn(move || {
                connection(stream, peer, &api, tls, &reading);
                lock(&done).give_back(id);
            });
        if spawned.is_err() {
            lock(&slots).give_back(id);
        }
    }
}

fn connection(
    stream: TcpStream,
    peer: IpAddr,
    api: &Api,
    tls: Option<Arc<rustls::ServerConfig>>,
    reading: &AtomicBool,
) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let deadline = Instant::now() + READ_DEADLINE;
    match tls {
        None => serve(Deadline { stream, deadline }, peer, api, reading),
        Some(cfg) => {
            let Ok(conn) = rustls::ServerConnection::new(cfg) else {
                return;
            };
            let mut io = rustls::StreamOwned::new(conn, Deadline { stream, deadline });
            serve(&mut io, peer, api, reading);
            io.conn.send_close_notify();
            let _ = io.flush();
        }
    }
}

/// A socket whose reads all end by one deadline (a slow client cannot hold
/// a connection open by trickling bytes).
struct Deadline {
    stream: TcpStream,
    deadline: Instant,
}

impl Read for Deadline {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

impl Write for Deadline {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.stream.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.stream.flush()
    }
}

/// A parsed request head.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Request {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub api_key: Option<Vec<u8>>,
    pub user_agent: String,
    pub content_length: usize,
}

/// An answer: status line and JSON body.
#[derive(Debug)]
pub(super) struct Response {
    pub status: &'static str,
    pub body: Vec<u8>,
}

fn message(status: &'static str, text: &str) -> Response {
    Response {
        status,
        body: serde_json::to_vec(&serde_json::json!({ "message": text })).unwrap_or_default(),
    }
}

fn serve(mut io: impl Read + Write, peer: IpAddr, api: &Api, reading: &AtomicBool) {
    let (head, rest) = match read_head(&mut io) {
        Ok(h) => h,
        Err(Some(r)) => return respond(&mut io, &r, false),
        Err(None) => return,
    };
    let req = match parse_head(&head) {
        Ok(r) => r,
        Err(r) => return respond(&mut io, &r, false),
    };
    if req.content_length > 0 {
        // Nobody without a key gets to make us wait for a body.
        if api.authenticate(req.api_key.as_deref(), peer).is_none() {
            return respond(
                &mut io,
                &message("403 Forbidden", "access forbidden"),
                false,
            );
        }
        if drain(&mut io, req.content_length, rest).is_err() {
            return respond(
                &mut io,
                &message("413 Payload Too Large", "body too large"),
                false,
            );
        }
    }
    // The whole request is in: from now on the connection is being served,
    // and never shut to make room.
    reading.store(false, Ordering::SeqCst);
    let resp = route(&req, peer, api);
    respond(&mut io, &resp, req.method == "HEAD");
}

/// Reads up to the blank line; returns the head and how many body bytes
/// came with it. `Err(Some)`: answer that; `Err(None)`: just close.
fn read_head(io: &mut impl Read) -> Result<(Vec<u8>, usize), Option<Response>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = io.read(&mut chunk).map_err(|_| None)?;
        if n == 0 {
            return Err(None);
        }
        let from = buf.len().saturating_sub(3);
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = memchr::memmem::find(&buf[from..], b"\r\n\r\n") {
            let end = from + i + 4;
            let rest = buf.len() - end;
            buf.truncate(end);
            return Ok((buf, rest));
        }
        if buf.len() > MAX_HEAD {
            return Err(Some(message(
                "431 Request Header Fields Too Large",
                "request head too large",
            )));
        }
    }
}

fn drain(io: &mut impl Read, length: usize, already: usize) -> Result<(), ()> {
    if length > MAX_BODY {
        return Err(());
    }
    let mut left = length.saturating_sub(already);
    let mut chunk = [0u8; 8192];
    while left > 0 {
        let n = io.read(&mut chunk[..left.min(8192)]).map_err(|_| ())?;
        if n == 0 {
            return Err(());
        }
        left -= n;
    }
    Ok(())
}

pub(super) fn parse_head(head: &[u8]) -> Result<Request, Response> {
    let bad = || message("400 Bad Request", "malformed request");
    let text = std::str::from_utf8(head).map_err(|_| bad())?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().ok_or_else(bad)?.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(message("505 HTTP Version Not Supported", "HTTP/1.x only"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: parse_query(query),
        ..Request::default()
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or_else(bad)?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("x-api-key") {
            req.api_key = Some(value.as_bytes().to_vec());
        } else if name.eq_ignore_ascii_case("user-agent") {
            // Kept as sent (escaped where it is shown), and short.
            req.user_agent = value.chars().take(100).collect();
        } else if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            req.content_length = value.parse().map_err(|_| bad())?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(message("411 Length Required", "send a Content-Length"));
        }
    }
    Ok(req)
}

/// `a=1&b=x%2Cy` → `[(a, 1), (b, "x,y")]`, percent- and `+`-decoded.
pub(super) fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub(super) fn route(req: &Request, peer: IpAddr, api: &Api) -> Response {
    let known = ["/v1/decisions/stream", "/v1/decisions", "/v1/usage-metrics"];
    if !known.contains(&req.path.as_str()) {
        return message("404 Not Found", "not found");
    }
    let Some(name) = api.authenticate(req.api_key.as_deref(), peer) else {
        return message("403 Forbidden", "access forbidden");
    };
    let read = req.method == "GET" || req.method == "HEAD";
    match req.path.as_str() {
        // A connectivity check: answered without moving the bouncer's
        // cursor (the changes it would have carried are not lost).
        "/v1/decisions/stream" if req.method == "HEAD" => Response {
            status: "200 OK",
            body: Vec::new(),
        },
        "/v1/decisions/stream" if read => {
            let startup = req.query.iter().any(|(k, v)| k == "startup" && v == "true");
            let who = format!("{name} {} {peer}", req.user_agent);
            let filter = Filter::from_query(&req.query);
            Response {
                status: "200 OK",
                body: api.book().stream(&who, startup, &filter, now_secs()),
            }
        }
        "/v1/decisions" if read => match Query::from_query(&req.query) {
            Ok(q) => Response {
                status: "200 OK",
                body: api.book().query(&q, now_secs()),
            },
            Err(e) => message("400 Bad Request", &e),
        },
        // Newer bouncers report usage; accepted and dropped.
        "/v1/usage-metrics" if req.method == "POST" => Response {
            status: "201 Created",
            body: b"{}".to_vec(),
        },
        _ => message("405 Method Not Allowed", "method not allowed"),
    }
}

fn respond(io: &mut impl Write, r: &Response, head_only: bool) {
    let head = format!(
        "HTTP/1.1 {}\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.body.len()
    );
    let _ = io.write_all(head.as_bytes());
    if !head_only {
        let _ = io.write_all(&r.body);
    }
    let _ = io.flush();
}
