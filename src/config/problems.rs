//! How configuration problems are reported and located: the
//! [`ConfigProblem`]s and [`ConfigError`] callers see, the `Problems` that
//! validation adds to, and finding the dotted key and `line:column` of a
//! TOML or serde error in the file's text.
//!
//! Owns the wording and position of problems. Must not touch what a
//! setting means or which values are valid: each section's validation
//! decides that, and `Config::parse` decides what to drop and try again.

use super::MAX_DURATION;
use std::fmt;
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::de::{DeTable, DeValue};

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// 1-based line and column of the offending text, for problems with the
    /// file's shape (unknown key, wrong type, missing key); value problems
    /// are about what a setting means, not where it is written.
    pub position: Option<(usize, usize)>,
    /// Dotted key of the offending setting, e.g. `auth.external.processes`;
    /// empty when toml could not say where a problem is.
    pub key: String,
    /// What is wrong with it, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded. `Display` names the file and the
/// key, one line per problem.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read the config file: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    /// The file is not valid TOML. Parsing stops at the first such error.
    #[error("{}", syntax_line(path, *position, key.as_deref(), message))]
    Syntax {
        path: PathBuf,
        /// 1-based line and column, when toml knows where.
        position: Option<(usize, usize)>,
        /// Dotted key the error is about, when it could be determined.
        key: Option<String>,
        message: String,
    },
    /// The file parsed as TOML, but keys are unknown, missing or of the
    /// wrong type, or values are wrong: every such problem, one per line.
    #[error("{}", problem_lines(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<ConfigProblem>,
    },
}

fn syntax_line(
    path: &Path,
    position: Option<(usize, usize)>,
    key: Option<&str>,
    message: &str,
) -> String {
    let mut line = path.display().to_string();
    if let Some((row, column)) = position {
        line.push_str(&format!(":{row}:{column}"));
    }
    if let Some(key) = key {
        line.push_str(&format!(": {key}"));
    }
    line.push_str(&format!(": {message}"));
    line
}

fn problem_lines(path: &Path, problems: &[ConfigProblem]) -> String {
    problems
        .iter()
        .map(|problem| {
            let key = Some(problem.key.as_str()).filter(|key| !key.is_empty());
            syntax_line(path, problem.position, key, &problem.message)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[derive(Default)]
pub(super) struct Problems(pub(super) Vec<ConfigProblem>);

impl Problems {
    pub(super) fn add(&mut self, key: &str, message: impl Into<String>) {
        self.0.push(ConfigProblem {
            position: None,
            key: key.to_owned(),
            message: message.into(),
        });
    }

    pub(super) fn range<T: PartialOrd + fmt::Display>(
        &mut self,
        key: &str,
        value: T,
        range: RangeInclusive<T>,
    ) {
        if !range.contains(&value) {
            self.add(
                key,
                format!(
                    "must be between {} and {} (got {value})",
                    range.start(),
                    range.end()
                ),
            );
        }
    }

    pub(super) fn duration(&mut self, key: &str, value: Duration) {
        if value.is_zero() {
            self.add(key, "must be greater than 0");
        } else if value > MAX_DURATION {
            self.add(
                key,
                format!(
                    "must be at most {} (got {})",
                    humantime::format_duration(MAX_DURATION),
                    humantime::format_duration(value)
                ),
            );
        }
    }
}

/// Turns a TOML syntax error into one that names the file, `line:column`
/// and, when it can be told, the dotted key.
pub(super) fn syntax_error(origin: &Path, text: &str, error: &toml::de::Error) -> ConfigError {
    let span = error.span();
    let position = span.as_ref().map(|span| line_column(text, span.start));
    // A syntax error (or a duplicate key) leaves little parsed to find the
    // span in; read the key off the offending line instead.
    let key = span
        .and_then(|span| key_at(text, span))
        .or_else(|| position.and_then(|(line, _)| key_on_line(text, line)));
    ConfigError::Syntax {
        path: origin.to_owned(),
        position,
        key,
        message: explain(error.message()),
    }
}

/// toml's message, trimmed, with a hint where toml's own is terse.
fn explain(message: &str) -> String {
    let mut message = message.trim_end().to_owned();
    if message == "invalid socket address syntax" {
        message.push_str(
            ": expected IP:PORT, e.g. 127.0.0.1:5222 or [::]:5222 (host names are not resolved)",
        );
    }
    message
}

/// A serde error while deserializing the parsed document, located in it.
pub(super) struct SchemaProblem {
    /// The problem as reported to the operator.
    pub(super) problem: ConfigProblem,
    /// Where in the document the error points, when it could be found.
    pub(super) at: Option<KeyPath>,
    /// For a missing key: the key's own path (its table plus its name), so
    /// a key that was dropped because of an earlier problem is not reported
    /// again as missing.
    pub(super) missing: Option<KeyPath>,
}

/// Locates a serde `error` in `document` (parsed from `text`). toml's own
/// message names the offending field but not the table it is in, so the
/// key path is recovered from the error's span.
pub(super) fn schema_problem(
    document: &DeTable<'_>,
    text: &str,
    error: &toml::de::Error,
) -> SchemaProblem {
    let message = explain(error.message());
    let span = error.span();
    let position = span.as_ref().map(|span| line_column(text, span.start));
    let at = span.map(|span| locate(document, &span));
    // The span of a missing field is the table that lacks it.
    let missing = missing_field(&message).map(|field| {
        let mut path = at.clone().unwrap_or_default();
        path.0.push(Step::Key(field.to_owned()));
        path
    });
    let key = missing.as_ref().or(at.as_ref()).map(KeyPath::to_string);
    SchemaProblem {
        problem: ConfigProblem {
            position,
            key: key.unwrap_or_default(),
            message,
        },
        at,
        missing,
    }
}

/// Removes the entry at `keys` (a path of table keys) from `table`; false if
/// there is none.
pub(super) fn remove_entry(table: &mut DeTable<'_>, keys: &[String]) -> bool {
    match keys {
        [] => false,
        [last] => table.remove(last.as_str()).is_some(),
        [first, rest @ ..] => match table.get_mut(first.as_str()).map(|v| v.get_mut()) {
            Some(DeValue::Table(inner)) => remove_entry(inner, rest),
            _ => false,
        },
    }
}

/// Dotted key assigned on 1-based `line` of `text` (`key = …` under the last
/// `[table]` header before it), or the table a header line opens.
fn key_on_line(text: &str, line: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let current = lines.get(line.checked_sub(1)?)?.trim();
    if let Some(table) = table_header(current) {
        return Some(table.to_owned());
    }
    let (key, _) = current.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    let table = lines[..line - 1]
        .iter()
        .rev()
        .find_map(|previous| table_header(previous.trim()));
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_owned(),
    })
}

/// The name in a `[table]` or `[[array]]` header line.
fn table_header(line: &str) -> Option<&str> {
    let inner = line.strip_prefix('[')?;
    let inner = inner.strip_prefix('[').unwrap_or(inner);
    let (name, _) = inner.split_once(']')?;
    Some(name.trim())
}

fn missing_field(message: &str) -> Option<&str> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split_once('`').map(|(field, _)| field)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = floor_char_boundary(text, offset);
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// One step of a path into a document: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A path into a document, shown as a dotted key (`hosts[1]`,
/// `auth.external.processes`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct KeyPath(Vec<Step>);

impl KeyPath {
    fn child(&self, step: Step) -> KeyPath {
        let mut path = self.clone();
        path.0.push(step);
        path
    }

    /// The table keys up to the first array index: the entry that holds
    /// what the path points at.
    pub(super) fn table_keys(&self) -> Vec<String> {
        self.0
            .iter()
            .map_while(|step| match step {
                Step::Key(key) => Some(key.clone()),
                Step::Index(_) => None,
            })
            .collect()
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, step) in self.0.iter().enumerate() {
            match step {
                Step::Key(key) if i == 0 => write!(f, "{key}")?,
                Step::Key(key) => write!(f, ".{key}")?,
                Step::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

/// Dotted key of the innermost key or value that covers `span` in `text`.
fn key_at(text: &str, span: std::ops::Range<usize>) -> Option<String> {
    let (document, _) = DeTable::parse_recoverable(text);
    let path = locate(document.get_ref(), &span);
    (!path.0.is_empty()).then(|| path.to_string())
}

/// Path of the innermost key or value of `table` that covers `span`; the
/// empty path (the whole document) when none does.
fn locate(table: &DeTable<'_>, span: &std::ops::Range<usize>) -> KeyPath {
    find_in_table(table, span, &KeyPath::default()).unwrap_or_default()
}

fn find_in_table(
    table: &DeTable<'_>,
    span: &std::ops::Range<usize>,
    prefix: &KeyPath,
) -> Option<KeyPath> {
    // A table's span need not cover its entries (headers can be anywhere),
    // so children are searched first and a covering table is the fallback.
    let mut covering = None;
    for (key, value) in table.iter() {
        let path = prefix.child(Step::Key(key.get_ref().to_string()));
        if covers(&key.span(), span) {
            return Some(path);
        }
        if let Some(found) = find_in_value(value.get_ref(), span, &path) {
            return Some(found);
        }
        if covering.is_none() && covers(&value.span(), span) {
            covering = Some(path);
        }
    }
    covering
}

fn find_in_value(
    value: &DeValue<'_>,
    span: &std::ops::Range<usize>,
    path: &KeyPath,
) -> Option<KeyPath> {
    match value {
        DeValue::Table(table) => find_in_table(table, span, path),
        DeValue::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let path = path.child(Step::Index(i));
            find_in_value(item.get_ref(), span, &path)
                .or_else(|| covers(&item.span(), span).then_some(path))
        }),
        _ => None,
    }
}

fn covers(outer: &std::ops::Range<usize>, inner: &std::ops::Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end && outer.start < outer.end
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_columns() {
        assert_eq!(line_column("abc", 0), (1, 1));
        assert_eq!(line_column("a\nbé c", 6), (2, 4));
        assert_eq!(line_column("a\n", 99), (2, 1));
    }

    #[test]
    fn key_paths_from_spans() {
        let text = "hosts = [\"a\", 1]\n[auth.external]\nprocesses = \"x\"\n";
        let at = |needle: &str| {
            let start = text.find(needle).unwrap();
            key_at(text, start..start + needle.len())
        };
        assert_eq!(at("1").as_deref(), Some("hosts[1]"));
        assert_eq!(at("processes").as_deref(), Some("auth.external.processes"));
        assert_eq!(at("\"x\"").as_deref(), Some("auth.external.processes"));
    }
}
