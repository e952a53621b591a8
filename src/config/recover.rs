//! TOML text → [`RawConfig`], reporting every error instead of serde's first.
//!
//! serde stops at the first unknown key or wrong type. To list them all, each failed run's
//! error is located in the parsed tree by its span, recorded, the offending node removed, and
//! serde run again. This sits between toml's parser and `raw.rs`; it knows no key names.

use std::ops::Range;

use serde::Deserialize;
use toml::de::{DeArray, DeTable, DeValue, Deserializer};
use toml::Spanned;

use super::raw::RawConfig;

/// An error found while reading the file, located by byte span.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawError {
    pub span: Range<usize>,
    pub message: String,
}

/// Reads the TOML text into a [`RawConfig`], collecting every error instead of the first.
///
/// Syntax errors come from toml's recovering parser, all at once; when there are any, the
/// document is not read further (a damaged tree would produce misleading errors) and `None` is
/// returned. Otherwise serde reads the tree; when it fails (an unknown key, a value of the wrong
/// type, a missing required key), the offending key or value is located by the error's span,
/// recorded, removed from the tree, and serde runs again. Each round removes one node, so this
/// ends; the raw config is then complete apart from the removed parts, and `validate` can go on
/// to report meaning errors in the same run.
pub(crate) fn parse(text: &str) -> (Option<RawConfig>, Vec<RawError>) {
    let (mut doc, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        let errors = syntax
            .into_iter()
            .map(|e| {
                let span = e.span().unwrap_or(0..0);
                let mut message = e.message().trim_end().to_owned();
                // toml does not say which key; the span does.
                if message == "duplicate key" {
                    if let Some(key) = text.get(span.clone()) {
                        message = format!("duplicate key `{key}`");
                    }
                }
                RawError { span, message }
            })
            .collect();
        return (None, errors);
    }
    let mut errors = Vec::new();
    loop {
        let error = match RawConfig::deserialize(Deserializer::from(doc.clone())) {
            Ok(raw) => return (Some(raw), errors),
            Err(e) => e,
        };
        let message = error.message().trim_end().to_owned();
        let span = error.span().unwrap_or(0..0);
        match prune_table(doc.get_mut(), &span, "") {
            Some(Pruned::Key { table }) if table.is_empty() => {
                errors.push(RawError { span, message });
            }
            Some(Pruned::Key { table }) | Some(Pruned::Value { key: table }) => {
                errors.push(RawError {
                    span,
                    message: format!("{table}: {message}"),
                });
            }
            None => {
                // Nothing to remove means nothing would change on the next round.
                errors.push(RawError { span, message });
                return (None, errors);
            }
        }
    }
}

/// What [`prune_table`] removed, named by its dotted path for the error message.
enum Pruned {
    /// A key that should not be there, in the table at this path ("" for the top level).
    Key { table: String },
    /// The value at this path.
    Value { key: String },
}

/// Removes the node of `table` that `span` points into: a key itself, else the innermost
/// array element or key/value pair whose value contains it.
fn prune_table(table: &mut DeTable<'_>, span: &Range<usize>, path: &str) -> Option<Pruned> {
    let mut doomed = None;
    for (key, value) in table.iter_mut() {
        let key_path = join(path, key.get_ref().as_ref());
        if contains(&key.span(), span) {
            doomed = Some((key.get_ref().to_string(), path.to_owned(), true));
            break;
        }
        if let Some(found) = prune_value(value, span, &key_path) {
            return Some(found);
        }
        if contains(&value.span(), span) {
            doomed = Some((key.get_ref().to_string(), key_path, false));
            break;
        }
    }
    let (key, where_, is_key) = doomed?;
    table.remove(key.as_str());
    Some(if is_key {
        Pruned::Key { table: where_ }
    } else {
        Pruned::Value { key: where_ }
    })
}

/// Looks for `span` inside a table or array value and removes what it points into there.
fn prune_value(
    value: &mut Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: &str,
) -> Option<Pruned> {
    match value.get_mut() {
        DeValue::Table(inner) => prune_table(inner, span, path),
        DeValue::Array(items) => prune_array(items, span, path),
        _ => None,
    }
}

/// Like [`prune_table`] for an array: descends into elements, else drops the element hit.
fn prune_array(items: &mut DeArray<'_>, span: &Range<usize>, path: &str) -> Option<Pruned> {
    let mut doomed = None;
    for (i, item) in items.iter_mut().enumerate() {
        // No index in the path: after an earlier element was pruned it would be wrong, and the
        // line and column already say which element.
        let item_path = path.to_owned();
        if let Some(found) = prune_value(item, span, &item_path) {
            return Some(found);
        }
        if contains(&item.span(), span) {
            doomed = Some((i, item_path));
            break;
        }
    }
    let (index, item_path) = doomed?;
    let kept: DeArray<'_> = std::mem::replace(items, DeArray::new())
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, item)| item)
        .collect();
    *items = kept;
    Some(Pruned::Value { key: item_path })
}

/// `outer` contains `inner` (an empty `inner` at `outer`'s end counts: toml points past the
/// last character for some errors).
fn contains(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

/// `a.b` path for messages; keys that are not bare are quoted, as TOML would need.
fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("\"{key}\"")
    };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}
