//! The control socket server (tokio). It checks peers and forwards requests
//! to the engine thread, which owns all state and answers each one.

use super::{Request, Response};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::Semaphore;
use tokio::sync::oneshot;

/// A request on its way to the engine, with where to send the answer.
pub type Envelope = (Request, oneshot::Sender<Response>);

/// Who may talk to the daemon.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    pub daemon_uid: u32,
    pub group: Option<u32>,
}

impl Access {
    /// Root, the daemon's own user, or a member of `control_group`, as the
    /// peer's primary group or one of its supplementary groups (read from
    /// `/proc/PID/status`, since SO_PEERCRED carries the primary group only).
    fn allows(&self, uid: u32, gid: u32, pid: Option<i32>) -> bool {
        if uid == 0 || uid == self.daemon_uid {
            return true;
        }
        let Some(group) = self.group else {
            return false;
        };
        gid == group || pid.is_some_and(|p| supplementary_groups(p).contains(&group))
    }
}

/// The supplementary groups of a live process (empty if it is gone).
fn supplementary_groups(pid: i32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("Groups:")).map(|g| {
                g.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// Bounds on what one peer can cost the daemon.
const MAX_CONNECTIONS: usize = 64;
const MAX_REQUEST_BYTES: u64 = 64 * 1024;
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Logs at most once per interval, saying how many were suppressed.
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    const EVERY: Duration = Duration::from_secs(10);

    fn new() -> Throttle {
        Throttle {
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log now; the count of suppressed messages comes with it.
    fn ready(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < Self::EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// Resolves `control_group` (a name or a numeric gid).
pub fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let name =
        std::ffi::CString::new(group).map_err(|_| format!("invalid group name {group:?}"))?;
    // SAFETY: getgrnam returns null or a pointer to a static struct valid until the next call;
    // we read gr_gid immediately, on the one thread that binds the socket.
    let gr = unsafe { libc::getgrnam(name.as_ptr()) };
    if gr.is_null() {
        return Err(format!("control_group `{group}` does not exist"));
    }
    Ok(unsafe { (*gr).gr_gid })
}

/// Binds the socket: refuses to steal one a live daemon listens on, removes a stale one.
pub fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another portcullis is already listening on {}",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("cannot set mode of {}: {e}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| format!("cannot give {} to gid {gid}: {e}", path.display()))?;
    }
    Ok(listener)
}

/// Serves connections until the process exits.
///
/// A peer is judged by its credentials before a byte is read from it; a
/// request line longer than 64 KiB, more than 64 connections at once, or a
/// connection idle for 30 s is refused or closed; when `accept` fails (out of
/// file descriptors) the loop backs off instead of spinning, and such
/// failures are logged at most once every 10 s.
pub async fn serve(
    listener: UnixListener,
    access: Access,
    engine: std::sync::mpsc::Sender<Envelope>,
    path: PathBuf,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut accept_errors = Throttle::new();
    let mut full = Throttle::new();
    let mut backoff = Duration::from_millis(10);
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => {
                backoff = Duration::from_millis(10);
                s
            }
            Err(e) => {
                if let Some(n) = accept_errors.ready() {
                    tracing::warn!(socket = %path.display(), suppressed = n, "accept failed (backing off): {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if let Some(n) = full.ready() {
                tracing::warn!(
                    socket = %path.display(),
                    suppressed = n,
                    "{MAX_CONNECTIONS} control connections open; closing new ones"
                );
            }
            continue;
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let _slot = slot;
            connection(stream, access, engine).await;
        });
    }
}

async fn connection(
    stream: tokio::net::UnixStream,
    access: Access,
    engine: std::sync::mpsc::Sender<Envelope>,
) {
    let (read, mut write) = stream.into_split();
    let cred = write.as_ref().peer_cred();
    let allowed = cred
        .as_ref()
        .is_ok_and(|c| access.allows(c.uid(), c.gid(), c.pid()));
    if !allowed {
        // Answered (not just closed) so the client can say why; nothing is read.
        let uid = cred
            .as_ref()
            .map(|c| c.uid().to_string())
            .unwrap_or_else(|_| "?".into());
        static REFUSED: std::sync::Mutex<Option<Throttle>> = std::sync::Mutex::new(None);
        if let Ok(mut t) = REFUSED.lock()
            && let Some(n) = t.get_or_insert_with(Throttle::new).ready()
        {
            tracing::warn!(uid, suppressed = n, "refused a control connection");
        }
        let resp = Response::err(format!(
            "permission denied: uid {uid} may not use the control socket"
        ));
        let _ = write.write_all(line(&resp).as_bytes()).await;
        close_after_answer(read, write).await;
        return;
    }
    let mut reader = BufReader::new(read);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut limited = (&mut reader).take(MAX_REQUEST_BYTES + 1);
        let read = limited.read_until(b'\n', &mut buf);
        match tokio::time::timeout(IDLE_TIMEOUT, read).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
        if buf.last() != Some(&b'\n') && buf.len() as u64 > MAX_REQUEST_BYTES {
            let resp = Response::err(format!(
                "request longer than {MAX_REQUEST_BYTES} bytes; closing"
            ));
            let _ = write.write_all(line(&resp).as_bytes()).await;
            close_after_answer(reader.into_inner(), write).await;
            return;
        }
        let resp = match serde_json::from_slice::<Request>(&buf) {
            Err(e) => Response::err(format!("bad request: {e}")),
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if engine.send((req, tx)).is_err() {
                    Response::err("the daemon is shutting down")
                } else {
                    rx.await
                        .unwrap_or_else(|_| Response::err("the daemon dropped the request"))
                }
            }
        };
        if write.write_all(line(&resp).as_bytes()).await.is_err() {
            return;
        }
    }
}

/// Ends a connection the daemon is done with. Closing a Unix socket with
/// unread bytes resets the peer, which would then lose the answer already
/// sent, so the peer's pending request is read and thrown away first:
/// into a fixed buffer, at most 1 MiB and 1 s, never kept.
async fn close_after_answer(
    mut read: tokio::net::unix::OwnedReadHalf,
    mut write: tokio::net::unix::OwnedWriteHalf,
) {
    let _ = write.shutdown().await;
    let mut sink = [0u8; 8192];
    let mut left: usize = 1 << 20;
    let drain = async {
        while left > 0 {
            match read.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
}

fn line(resp: &Response) -> String {
    format!(
        "{}\n",
        serde_json::to_string(resp).expect("responses serialise")
    )
}
