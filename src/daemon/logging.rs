//! The daemon's log: one line per event on stderr.
//!
//! Under systemd (`JOURNAL_STREAM` set) each line starts with its sd-daemon
//! priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which
//! journald turns into the entry's priority, so `journalctl -p err -u
//! portcullis` shows failures; the journal stamps its own time. A message
//! that spans lines (a refused config lists every error) is joined with
//! `; `: a log line is one entry, whoever reads it.

use std::io::{self, Write};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// Installs the subscriber; `PORTCULLIS_LOG` filters (default `info`).
pub fn init() {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Lines { journal })
        .with_target(false)
        .with_ansi(!journal && io::stderr().is_terminal());
    if journal {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// Makes a [`Line`] per event.
struct Lines {
    journal: bool,
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { prefix: None }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line {
            prefix: self.journal.then(|| priority(*meta.level())),
        }
    }
}

fn priority(level: Level) -> &'static str {
    match level {
        Level::ERROR => "<3>",
        Level::WARN => "<4>",
        Level::INFO => "<6>",
        _ => "<7>",
    }
}

/// One formatted event (the fmt layer writes each event in one call).
struct Line {
    prefix: Option<&'static str>,
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().lock().write_all(&one_line(self.prefix, buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// Longest event written, in bytes. journald cuts a stream line at
/// `LineMax` (48 KiB by default) and at NUL, and reads a `<N>` priority at
/// the start of every piece: an event longer than that, carrying a key id
/// or user agent from a log line, could start a forged entry at any
/// priority. Cut well below it.
const MAX_EVENT: usize = 16 * 1024;

/// `prefix` + the event with inner line breaks joined by `; `, NUL written
/// as `\0`, cut to [`MAX_EVENT`] bytes, + one `\n`.
fn one_line(prefix: Option<&str>, buf: &[u8]) -> Vec<u8> {
    let text = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut out = Vec::with_capacity(text.len().min(MAX_EVENT) + 16);
    out.extend_from_slice(prefix.unwrap_or("").as_bytes());
    for &b in text {
        if out.len() >= MAX_EVENT {
            out.extend_from_slice(" [cut]".as_bytes());
            break;
        }
        match b {
            b'\n' => out.extend_from_slice(b"; "),
            0 => out.extend_from_slice(b"\\0"),
            b => out.push(b),
        }
    }
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_event_with_its_priority() {
        assert_eq!(
            one_line(
                Some(priority(Level::ERROR)),
                b"ERROR reload refused:\na\nb\n"
            ),
            b"<3>ERROR reload refused:; a; b\n"
        );
        assert_eq!(one_line(None, b" INFO ok\n"), b" INFO ok\n");
        assert_eq!(priority(Level::WARN), "<4>");
        assert_eq!(priority(Level::TRACE), "<7>");
        // Nothing an attacker writes can start a second journal entry.
        let mut hostile = b" WARN ban key:".to_vec();
        hostile.extend(std::iter::repeat_n(b'C', 60_000));
        hostile.extend_from_slice(b"<0>FORGED\0<0>NUL\n");
        let line = one_line(Some("<4>"), &hostile);
        assert!(line.len() < 48 * 1024, "{}", line.len());
        assert!(!line.contains(&0), "no NUL");
        assert_eq!(line.iter().filter(|b| **b == b'\n').count(), 1);
        assert_eq!(
            one_line(None, b"a\0<0>b\n"),
            b"a\\0<0>b\n",
            "NUL is written visibly"
        );
    }
}
