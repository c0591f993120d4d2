//! Config errors with file, line, column and a reason.

use super::SourceFile;
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    pub file: String,
    /// 1-based; 0 when the error is about the whole file.
    pub line: usize,
    #[serde(rename = "column")]
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.col, self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// Line and column (1-based, in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..text.floor_char_boundary(offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A TOML error's message, with a suggestion for a misspelt key.
pub(super) fn toml_message(e: &toml::de::Error) -> String {
    let mut message = e.message().trim().to_string();
    if let Some(hint) = unknown_field_hint(&message) {
        message.push_str(&hint);
    }
    message
}

impl ConfigError {
    pub fn at(file: &SourceFile, span: std::ops::Range<usize>, message: String) -> ConfigError {
        let (line, col) = line_col(&file.text, span.start);
        ConfigError {
            file: file.name.clone(),
            line,
            col,
            message,
        }
    }

    pub fn from_toml(file: &SourceFile, e: &toml::de::Error) -> ConfigError {
        let message = toml_message(e);
        match e.span() {
            Some(span) => ConfigError::at(file, span, message),
            None => ConfigError {
                file: file.name.clone(),
                line: 0,
                col: 0,
                message,
            },
        }
    }
}

/// serde says "unknown field `x`, expected one of `a`, `b`"; add a suggestion.
fn unknown_field_hint(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let hint = suggest(field, names.iter().copied());
    (!hint.is_empty()).then_some(hint)
}

/// `"; did you mean `x`?"` for the closest candidate, or `""`.
pub fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let best = candidates
        .map(|c| (levenshtein(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 3))
        .min();
    match best {
        Some((_, c)) => format!("; did you mean `{c}`?"),
        None => String::new(),
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("maxretyr", ["maxretry", "findtime"].into_iter()),
            "; did you mean `maxretry`?"
        );
        assert_eq!(suggest("zzz", ["maxretry"].into_iter()), "");
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn positions() {
        assert_eq!(line_col("ab\ncd\nef", 4), (2, 2));
        assert_eq!(line_col("ab", 0), (1, 1));
    }
}
