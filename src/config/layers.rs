//! Config files read as layers, and tables read whole.
//!
//! A site tunes a shipped jail in `jails.d/NAME.local.toml` (and the main
//! file in `portcullis.local.toml`) instead of editing the package's
//! conffiles, which would make every upgrade ask which version to keep: a
//! table in a `.local.toml` file changes only the keys it sets. After such a
//! merge one table holds keys from several files, so every span is made an
//! offset into the files' concatenation ([`Layers`]); an error still names
//! the file, line and column its key came from.
//!
//! [`deserialize_all`] reads a table the way serde cannot: on an error it
//! drops the key the error points at and tries again, so a jail with three
//! mistakes gets three errors in one `portcullis check`.

use super::{ConfigError, SourceFile};
use serde::Deserialize;
use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

/// Whether a file is a local override (`*.local.toml`).
pub fn is_local(name: &str) -> bool {
    name.ends_with(".local.toml")
}

/// Files laid end to end: file `i` starts at `offset(i)`.
pub struct Layers<'a> {
    files: Vec<(usize, &'a SourceFile)>,
    /// Where each file's lines start, so that placing an error costs a
    /// binary search, not a scan from the top (a file of 20,000 bad jails
    /// must not take minutes to report).
    line_starts: Vec<Vec<usize>>,
}

impl<'a> Layers<'a> {
    pub fn new(files: impl IntoIterator<Item = &'a SourceFile>) -> Layers<'a> {
        let mut at = 0;
        let files: Vec<(usize, &SourceFile)> = files
            .into_iter()
            .map(|f| {
                let start = at;
                at += f.text.len() + 1;
                (start, f)
            })
            .collect();
        let line_starts = files
            .iter()
            .map(|(_, f)| {
                std::iter::once(0)
                    .chain(memchr::memchr_iter(b'\n', f.text.as_bytes()).map(|i| i + 1))
                    .collect()
            })
            .collect();
        Layers { files, line_starts }
    }

    pub fn offset(&self, i: usize) -> usize {
        self.files[i].0
    }

    /// The file a global offset falls in (its index), and the offset within it.
    fn locate(&self, pos: usize) -> (usize, usize) {
        let i = self
            .files
            .partition_point(|(start, _)| *start <= pos)
            .saturating_sub(1);
        (i, pos - self.files[i].0)
    }

    pub fn name_at(&self, pos: usize) -> &'a str {
        &self.files[self.locate(pos).0].1.name
    }

    /// An error at a global span.
    pub fn error(&self, span: Range<usize>, message: String) -> ConfigError {
        let (i, at) = self.locate(span.start);
        let text = &self.files[i].1.text;
        let at = text.floor_char_boundary(at.min(text.len()));
        let starts = &self.line_starts[i];
        let line = starts.partition_point(|s| *s <= at);
        let line_start = starts[line - 1];
        ConfigError {
            file: self.files[i].1.name.clone(),
            line,
            col: text[line_start..at].chars().count() + 1,
            message,
        }
    }

    /// A deserialization error, whose span (if any) is global.
    pub fn toml_error(&self, e: &toml::de::Error) -> ConfigError {
        let message = super::error::toml_message(e);
        match e.span() {
            Some(span) => self.error(span, message),
            None => ConfigError {
                file: self
                    .files
                    .first()
                    .map_or(String::new(), |f| f.1.name.clone()),
                line: 0,
                col: 0,
                message,
            },
        }
    }
}

/// Moves every span in `v` (keys included) by `by` bytes.
pub fn shift(v: &mut Spanned<DeValue<'_>>, by: usize) {
    let span = v.span();
    let mut inner = std::mem::replace(v.get_mut(), DeValue::Boolean(false));
    match &mut inner {
        DeValue::Table(t) => {
            let old = std::mem::take(t);
            *t = old
                .into_iter()
                .map(|(k, mut v)| {
                    let ks = k.span();
                    shift(&mut v, by);
                    (Spanned::new(ks.start + by..ks.end + by, k.into_inner()), v)
                })
                .collect();
        }
        DeValue::Array(a) => a.iter_mut().for_each(|v| shift(v, by)),
        _ => {}
    }
    *v = Spanned::new(span.start + by..span.end + by, inner);
}

/// Lays `over`'s keys onto `base`: tables merge key by key, anything else
/// is replaced.
pub fn merge<'i>(base: &mut DeTable<'i>, over: DeTable<'i>) {
    for (key, value) in over {
        match (base.get_mut(key.get_ref().as_ref()), value) {
            (Some(b), v) if b.get_ref().is_table() && v.get_ref().is_table() => {
                if let (DeValue::Table(bt), DeValue::Table(ot)) = (b.get_mut(), v.into_inner()) {
                    merge(bt, ot);
                }
            }
            (_, v) => {
                base.remove(key.get_ref().as_ref());
                base.insert(key, v);
            }
        }
    }
}

/// [`merge`] for two table values (anything else is left as it is: the
/// callers read only tables here).
pub fn merge_tables<'i>(base: &mut Spanned<DeValue<'i>>, over: Spanned<DeValue<'i>>) {
    if let (DeValue::Table(b), DeValue::Table(o)) = (base.get_mut(), over.into_inner()) {
        merge(b, o);
    }
}

/// Deserializes `value` as a `T`, reporting every key that does not fit:
/// after each error the key it points at is dropped and the rest read
/// again. `None` when what remains still does not make a `T` (a required
/// key is missing or was wrong).
pub fn deserialize_all<'i, T: Deserialize<'i>>(
    mut value: Spanned<DeValue<'i>>,
    layers: &Layers,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let mut removed: Vec<String> = Vec::new();
    // Each round removes a key, so this ends. Past the bound (each round
    // reads the table again) the rest is summed up in one error.
    for _ in 0..MAX_ERRORS {
        match T::deserialize(ValueDeserializer::from(value.clone())) {
            Ok(t) => return Some(t),
            Err(e) => {
                // A key reported as wrong, now missing: not a second error,
                // but its table cannot be read, so drop that and go on with
                // the rest (an action's bad `type` must not hide a bad
                // `[metrics]`).
                let missing_removed = removed
                    .iter()
                    .any(|k| e.message().contains(&format!("missing field `{k}`")));
                if !missing_removed {
                    errors.push(layers.toml_error(&e));
                }
                let span = e.span()?;
                match remove_at(value.get_mut(), &span) {
                    Some(key) => removed.push(key),
                    None => return None,
                }
            }
        }
    }
    errors.push(layers.error(
        value.span(),
        format!("more than {MAX_ERRORS} errors here; fix these and run `portcullis check` again"),
    ));
    None
}

/// Errors reported for one table before the rest are summed up.
const MAX_ERRORS: usize = 256;

/// Removes the deepest key whose key or value holds `span`; returns its name.
/// A table's own span may be only its `[header]`, so tables are searched
/// whatever their span.
fn remove_at(value: &mut DeValue<'_>, span: &Range<usize>) -> Option<String> {
    let DeValue::Table(t) = value else {
        return None;
    };
    let holds = |r: Range<usize>| r.start <= span.start && span.end <= r.end.max(r.start + 1);
    for (_, v) in t.iter_mut() {
        if v.get_ref().is_table()
            && v.span() != *span
            && let Some(k) = remove_at(v.get_mut(), span)
        {
            return Some(k);
        }
    }
    let key = t
        .iter()
        .find(|(k, v)| holds(k.span()) || holds(v.span()))
        .map(|(k, _)| k.get_ref().clone())?;
    t.remove(key.as_ref());
    Some(key.into_owned())
}
