//! The CLI side of the control socket: one request, one response.

use super::{Request, Response};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Sends `req` and waits for the answer. Errors are sentences for the operator.
pub fn call(socket: &Path, req: &Request) -> Result<Response, String> {
    let stream = UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!(
                "portcullis is not running (nothing listens on {})",
                socket.display()
            )
        }
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied on {}: run as root, or as a member of `control_group`",
            socket.display()
        ),
        _ => format!("cannot connect to {}: {e}", socket.display()),
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
            return Err(format!("sending to the daemon: {e}"));
        }
        read.map_err(|e| format!("reading the daemon's answer: {e}"))?;
        return Err("the daemon closed the connection without answering".into());
    }
    serde_json::from_str(&answer).map_err(|e| format!("unreadable answer from the daemon: {e}"))
}
