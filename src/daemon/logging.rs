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

/// `prefix` + the event with inner line breaks joined by `; ` + one `\n`.
fn one_line(prefix: Option<&str>, buf: &[u8]) -> Vec<u8> {
    let text = buf.strip_suffix(b"\n").unwrap_or(buf);
    let mut out = Vec::with_capacity(buf.len() + 8);
    out.extend_from_slice(prefix.unwrap_or("").as_bytes());
    for (i, part) in text.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            out.extend_from_slice(b"; ");
        }
        out.extend_from_slice(part);
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
    }
}
