//! The CLI side of the control socket: one request, one response.

use super::{Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a request got no answer: each is its own exit status of the CLI.
#[derive(Debug)]
pub enum CallError {
    /// Nothing listens on the socket (exit status 3).
    NotRunning(String),
    /// The socket's permissions keep this user out (exit status 4).
    Denied(String),
    /// Anything else between the CLI and the daemon (exit status 1).
    Other(String),
}

impl CallError {
    /// The CLI's exit status for this failure (documented in portcullis(1)).
    pub fn exit_code(&self) -> u8 {
        match self {
            CallError::NotRunning(_) => 3,
            CallError::Denied(_) => 4,
            CallError::Other(_) => 1,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotRunning(s) | CallError::Denied(s) | CallError::Other(s) => f.write_str(s),
        }
    }
}

/// Sends `req` and waits for the answer. Errors are sentences for the operator.
pub fn call(socket: &Path, req: &Request) -> Result<Response, CallError> {
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            CallError::NotRunning(format!(
                "portcullis is not running (nothing listens on {})",
                socket.display()
            ))
        }
        std::io::ErrorKind::PermissionDenied => CallError::Denied(format!(
            "permission denied on {}: run as root, or as a member of `control_group`",
            socket.display()
        )),
        _ => CallError::Other(format!("cannot connect to {}: {e}", socket.display())),
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let mut w = &stream;
    let line = serde_json::to_string(req).expect("requests serialise");
    // A refused peer is answered before the daemon reads anything, so the
    // write can fail with the answer already waiting: read it either way.
    let sent = w.write_all(format!("{line}\n").as_bytes());
    let mut answer = String::new();
    let read = BufReader::new(&stream).read_line(&mut answer);
    if answer.is_empty() {
        if let Err(e) = sent {
            return Err(CallError::Other(format!("sending to the daemon: {e}")));
        }
        read.map_err(|e| CallError::Other(format!("reading the daemon's answer: {e}")))?;
        return Err(CallError::Other(
            "the daemon closed the connection without answering".into(),
        ));
    }
    serde_json::from_str(&answer)
        .map_err(|e| CallError::Other(format!("unreadable answer from the daemon: {e}")))
}

/// The control socket named by the config's main file. Only that file is
/// read: a broken jail must not stop `portcullis reload` from reaching the
/// daemon to be told about it.
pub fn socket_from_config(dir: Option<&Path>) -> PathBuf {
    let default = PathBuf::from("/run/portcullis/control.sock");
    let Some(dir) = dir else {
        return default;
    };
    // `portcullis.local.toml` wins, as it does for the daemon.
    let local_path = dir.join("portcullis.local.toml");
    let local = std::fs::read_to_string(&local_path).unwrap_or_default();
    match toml::from_str::<toml::Table>(&local) {
        Ok(t) => {
            if let Some(path) = t.get("control_socket").and_then(|v| v.as_str()) {
                return PathBuf::from(path);
            }
        }
        Err(e) => eprintln!(
            "portcullis: warning: {}: {}; its control_socket (if any) is not used",
            local_path.display(),
            e.message()
        ),
    }
    let text = std::fs::read_to_string(dir.join("portcullis.toml")).unwrap_or_default();
    match toml::from_str::<crate::config::MainConfig>(&text) {
        Ok(main) => main.control_socket.unwrap_or(default),
        Err(e) => {
            eprintln!(
                "portcullis: warning: {}: {}; using {}",
                dir.display(),
                e.message(),
                default.display()
            );
            default
        }
    }
}
