//! Text for humans: whatever reaches a terminal, a mail or a copy-pasted
//! command may have been written by an attacker (key ids, user agents,
//! request lines), so control characters are made visible and commands are
//! shell-quoted.

use std::borrow::Cow;

/// Characters that can rewrite a terminal or reorder, split or hide text:
/// C0/C1 controls, DEL, Unicode bidirectional marks, overrides and isolates,
/// line and paragraph separators (a line-oriented viewer breaks a line
/// there), and the invisible format characters (zero-width ones, the
/// byte-order mark, soft hyphen, tags, variation selectors, fillers), so
/// `key:victim` and `key:victim` plus an invisible tag never look alike.
fn hostile(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{034f}'
                | '\u{061c}'
                | '\u{115f}'..='\u{1160}'
                | '\u{17b4}'..='\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff0}'..='\u{fffb}'
                | '\u{1d173}'..='\u{1d17a}'
                | '\u{e0000}'..='\u{e0fff}'
        )
}

/// `s` with control characters written as `\xHH` / `\u{...}` escapes, and
/// backslashes doubled, so a key id that *is* the text `\x1b` never looks
/// like one holding an escape character.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| hostile(c) || c == '\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if !hostile(c) {
            out.push(c);
        } else if (c as u32) < 0x100 {
            out.push_str(&format!("\\x{:02x}", c as u32));
        } else {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        }
    }
    Cow::Owned(out)
}

/// `s` as one shell word that a POSIX shell (or bash, for `$'...'`) reads
/// back as exactly `s`: bare when harmless, else single-quoted, else (with
/// control characters) ANSI-C quoted so nothing raw reaches the terminal.
pub fn shell_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_@%+=:,./-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        return s.to_string();
    }
    if !s.chars().any(hostile) {
        return format!("'{}'", s.replace('\'', r"'\''"));
    }
    let mut out = String::from("$'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '\'' => out.push_str(r"\'"),
            c if hostile(c) && (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if hostile(c) => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// When a ban ends (Unix seconds), for a log line: RFC 3339 UTC, or `never`.
pub fn expiry(secs: Option<i64>) -> String {
    match secs.and_then(|s| chrono::DateTime::from_timestamp(s, 0)) {
        Some(t) => t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        None => "never".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_visible() {
        assert_eq!(printable("k\x1b[31mred\x07"), "k\\x1b[31mred\\x07");
        assert_eq!(printable("a\u{202e}b"), "a\\u{202e}b");
        assert_eq!(
            printable("a\u{2028}b\u{200b}c\u{feff}d\u{200e}"),
            "a\\u{2028}b\\u{200b}c\\u{feff}d\\u{200e}"
        );
        assert_eq!(
            printable("victim\u{e0041}\u{061c}\u{ad}"),
            "victim\\u{e0041}\\u{61c}\\xad"
        );
        assert!(matches!(printable("plain é"), Cow::Borrowed(_)));
        assert_eq!(printable(r"k\x1b"), r"k\\x1b");
    }

    #[test]
    fn commands_are_quoted() {
        assert_eq!(shell_quote("key:abc_1"), "key:abc_1");
        assert_eq!(shell_quote("203.0.113.5"), "203.0.113.5");
        assert_eq!(
            shell_quote("key:k$(touch /tmp/x)"),
            "'key:k$(touch /tmp/x)'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("a\tb'\\"), r"$'a\x09b\'\\'");
        assert_eq!(shell_quote(""), "''");
        // What bash reads back is the original.
        for s in ["key:k$(touch /tmp/x)", "a'b", "a\tb\x1b[0m'\\"] {
            let out = std::process::Command::new("bash")
                .args(["-c", &format!("printf %s {}", shell_quote(s))])
                .output()
                .unwrap();
            assert_eq!(String::from_utf8_lossy(&out.stdout), s);
        }
    }
}
