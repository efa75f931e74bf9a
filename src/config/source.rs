//! Where the configuration comes from: the file given by `--config`, the overlay
//! `config/<env>.toml` beside it, each with its deprecated keys renamed, merged key by key into
//! one TOML document.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use super::problems::Problems;
use super::ConfigError;

/// The file, then its overlay for `env` (checked to be a plain name), merged.
pub(super) fn read_layers(
    path: &Path,
    env: Option<&str>,
    p: &mut Problems,
) -> Result<toml::Table, ConfigError> {
    let mut doc = read_file(path, p)?;
    if let Some(env) = env {
        if env.is_empty()
            || !env
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            p.push(format!(
                "environment name {env:?} must be letters, digits, '-' or '_'"
            ));
        } else {
            let overlay = read_file(&overlay_path(path, env), p)?;
            merge(&mut doc, overlay);
        }
    }
    Ok(doc)
}

/// `config/<env>.toml` in the directory of `path`.
fn overlay_path(path: &Path, env: &str) -> PathBuf {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    dir.join("config").join(format!("{env}.toml"))
}

fn read_file(path: &Path, p: &mut Problems) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(parse(&path.display().to_string(), &text, p))
}

/// One document, its deprecated keys renamed. Every syntax error is reported with its line; the
/// top-level tables it touches are left out (what the parser recovered there is a guess), and
/// the configuration is marked incomplete: nothing is said about a missing key or a relation
/// between keys, since a broken line may have held or changed it.
pub(super) fn parse(name: &str, text: &str, p: &mut Problems) -> toml::Table {
    let (doc, errors) = DeTable::parse_recoverable(text);
    let mut touched = BTreeSet::new();
    if !errors.is_empty() {
        p.set_incomplete();
        let lines = Lines::new(text);
        let mut broken = BTreeSet::new();
        for e in &errors {
            let at = e.span().map_or(text.len(), |s| s.start);
            let (line, column) = lines.position(at);
            let what = e.message();
            p.push(format!(
                "{name} line {line}, column {column}: TOML syntax: {what}"
            ));
            broken.insert(line);
        }
        touched = self::touched(doc.get_ref(), &lines, &broken);
    }
    let mut doc = toml::Table::deserialize(toml::de::Deserializer::from(doc)).unwrap_or_else(|e| {
        p.push(format!("{name}: {}", e.message()));
        p.set_incomplete();
        toml::Table::new()
    });
    for key in touched {
        doc.remove(&key);
        p.left_out(&key);
    }
    super::deprecated::rename(name, &mut doc, p);
    doc
}

/// The top-level keys a broken line belongs to: one whose key or value (at any depth) spans it,
/// and the table whose header is the last before it (its lines may have vanished).
fn touched(doc: &DeTable<'_>, lines: &Lines<'_>, broken: &BTreeSet<usize>) -> BTreeSet<String> {
    let mut touched: BTreeSet<String> = doc
        .iter()
        .filter(|(k, v)| {
            let mut spans = vec![k.span()];
            collect_spans(v, &mut spans);
            spans.iter().any(|s| {
                broken
                    .range(lines.position(s.start).0..=lines.last_line(s))
                    .next()
                    .is_some()
            })
        })
        .map(|(k, _)| k.get_ref().to_string())
        .collect();
    for &line in broken {
        if let Some(table) = lines.table_of(line) {
            touched.insert(table);
        }
    }
    touched
}

fn collect_spans(v: &Spanned<DeValue<'_>>, spans: &mut Vec<std::ops::Range<usize>>) {
    spans.push(v.span());
    match v.get_ref() {
        DeValue::Table(t) => {
            for (k, v) in t.iter() {
                spans.push(k.span());
                collect_spans(v, spans);
            }
        }
        DeValue::Array(a) => a.iter().for_each(|v| collect_spans(v, spans)),
        _ => {}
    }
}

/// Line numbers (from 1) of byte offsets in one document.
struct Lines<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Lines { text, starts }
    }

    /// (line, column), both from 1.
    fn position(&self, offset: usize) -> (usize, usize) {
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self
            .text
            .get(start..offset.min(self.text.len()))
            .map_or(1, |s| s.chars().count() + 1);
        (line, column)
    }

    fn last_line(&self, span: &std::ops::Range<usize>) -> usize {
        self.position(span.end.saturating_sub(1).max(span.start)).0
    }

    /// The first key of the last table header (`[server]`, `[[routes]]`, `[routes.retry]`) at or
    /// before `line`.
    fn table_of(&self, line: usize) -> Option<String> {
        let header = self
            .text
            .lines()
            .take(line)
            .map(str::trim_start)
            .filter(|l| l.starts_with('['))
            .last()?;
        let name = header.trim_start_matches('[').split([']', '.']).next()?;
        Some(name.trim().trim_matches(['"', '\'']).to_owned())
    }
}

/// Overlay tables merge key by key; any other value (arrays included) replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}
