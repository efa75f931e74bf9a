//! Keys renamed when durations got one convention (`shutdown_timeout = "30s"` instead of
//! `shutdown_timeout_ms = 30000`). An old key is still accepted: each document is rewritten to
//! the new key before the overlays merge (so an overlay's old key still overrides the file's new
//! one), and a warning says what to write instead.

use super::duration::Dur;
use super::problems::Problems;

const MS: u64 = 1;
const SECS: u64 = 1_000;
const DAYS: u64 = 86_400_000;

/// (table, old key, new key, the old key's unit in milliseconds). `routes.retry` is the `retry`
/// table of every `[[routes]]` entry.
pub(super) const RENAMED: &[(&str, &str, &str, u64)] = &[
    (
        "server",
        "header_read_timeout_ms",
        "header_read_timeout",
        MS,
    ),
    (
        "server",
        "request_body_timeout_ms",
        "request_body_timeout",
        MS,
    ),
    ("server", "shutdown_timeout_ms", "shutdown_timeout", MS),
    ("database", "pool_wait_timeout_ms", "pool_wait_timeout", MS),
    ("database", "connect_timeout_ms", "connect_timeout", MS),
    ("database", "statement_timeout_ms", "statement_timeout", MS),
    ("database", "insert_timeout_ms", "insert_timeout", MS),
    ("database", "finish_linger_ms", "finish_linger", MS),
    ("capture", "in_progress_after_ms", "in_progress_after", MS),
    ("upstream", "connect_timeout_ms", "connect_timeout", MS),
    ("upstream", "response_timeout_ms", "response_timeout", MS),
    ("upstream", "idle_timeout_ms", "idle_timeout", MS),
    ("upstream", "pool_idle_timeout_ms", "pool_idle_timeout", MS),
    ("retention", "detail_days", "detail_max_age", DAYS),
    ("retention", "summary_days", "summary_max_age", DAYS),
    ("retention", "interval_secs", "interval", SECS),
    ("recovery", "heartbeat_secs", "heartbeat", SECS),
    ("recovery", "stale_after_secs", "stale_after", SECS),
    ("admin", "statement_timeout_ms", "statement_timeout", MS),
    ("routes.retry", "backoff_initial_ms", "backoff_initial", MS),
    ("routes.retry", "backoff_max_ms", "backoff_max", MS),
];

/// Rewrites the old keys of one document (`name` is its file, for the warnings).
pub(super) fn rename(name: &str, doc: &mut toml::Table, p: &mut Problems) {
    for &(table, old, new, unit) in RENAMED {
        for (at, t) in tables(doc, table) {
            match t.remove(old) {
                Some(value) => rename_one(name, (&at, old, new, unit), value, t, p),
                // Written in the new form here: problems name it as such.
                None if t.contains_key(new) => p.unalias(&format!("{at}.{new}")),
                None => {}
            }
        }
    }
}

/// The tables at `path` (an array of tables stands for each of its entries), with their key
/// paths.
fn tables<'a>(doc: &'a mut toml::Table, path: &str) -> Vec<(String, &'a mut toml::Table)> {
    let mut found = vec![(String::new(), doc)];
    for part in path.split('.') {
        let mut next = Vec::new();
        for (at, t) in found {
            let join = |k: &str| match at.is_empty() {
                true => k.to_owned(),
                false => format!("{at}.{k}"),
            };
            match t.get_mut(part) {
                Some(toml::Value::Table(inner)) => next.push((join(part), inner)),
                Some(toml::Value::Array(items)) => {
                    for (i, item) in items.iter_mut().enumerate() {
                        if let toml::Value::Table(inner) = item {
                            next.push((format!("{}.{i}", join(part)), inner));
                        }
                    }
                }
                _ => {}
            }
        }
        found = next;
    }
    found
}

fn rename_one(
    name: &str,
    (at, old, new, unit): (&str, &str, &str, u64),
    value: toml::Value,
    table: &mut toml::Table,
    p: &mut Problems,
) {
    let (old_key, new_key) = (format!("{at}.{old}"), format!("{at}.{new}"));
    if table.contains_key(new) {
        p.push(format!(
            "{name}: `{old_key}` and `{new_key}` are both set; keep only `{new}`"
        ));
        return;
    }
    let dur = value
        .as_integer()
        .and_then(|n| u64::try_from(n).ok())
        .and_then(|n| Dur::from_units(n, unit));
    let Some(dur) = dur else {
        let what = match unit {
            MS => "milliseconds",
            SECS => "seconds",
            _ => "days",
        };
        p.unread(
            &new_key,
            format!("`{old}` must be a whole number of {what}, got {value}"),
        );
        return;
    };
    p.warn(format!(
        "{name}: `{old_key} = {value}` is deprecated; write `{new} = \"{dur}\"`"
    ));
    p.alias(&new_key, &format!("{old_key} = {value}"));
    table.insert(new.to_owned(), toml::Value::String(dur.to_string()));
}
