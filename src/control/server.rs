//! The control socket server (tokio). It checks peers and forwards requests
//! to the engine thread, which owns all state and answers each one.

use super::{Request, Response};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
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
    fn allows(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || uid == self.daemon_uid || self.group == Some(gid)
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
pub async fn serve(
    listener: UnixListener,
    access: Access,
    engine: std::sync::mpsc::Sender<Envelope>,
    path: PathBuf,
) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(socket = %path.display(), "accept failed: {e}");
                continue;
            }
        };
        let engine = engine.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let cred = write.as_ref().peer_cred();
            let allowed = cred.as_ref().is_ok_and(|c| access.allows(c.uid(), c.gid()));
            let mut lines = BufReader::new(read).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = if !allowed {
                    // Answered (not just closed) so the client can say why.
                    let uid = cred
                        .as_ref()
                        .map(|c| c.uid().to_string())
                        .unwrap_or_else(|_| "?".into());
                    tracing::warn!(uid, "refused a control request");
                    Response::err(format!(
                        "permission denied: uid {uid} may not use the control socket"
                    ))
                } else {
                    match serde_json::from_str::<Request>(&line) {
                        Err(e) => Response::err(format!("bad request: {e}")),
                        Ok(req) => {
                            let (tx, rx) = oneshot::channel();
                            if engine.send((req, tx)).is_err() {
                                Response::err("the daemon is shutting down")
                            } else {
                                rx.await.unwrap_or_else(|_| {
                                    Response::err("the daemon dropped the request")
                                })
                            }
                        }
                    }
                };
                let text = format!(
                    "{}\n",
                    serde_json::to_string(&resp).expect("responses serialise")
                );
                if write.write_all(text.as_bytes()).await.is_err() || !allowed {
                    break;
                }
            }
        });
    }
}
