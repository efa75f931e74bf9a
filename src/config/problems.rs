//! Every problem found while reading and checking a configuration, collected so they are all
//! reported at once — and never one about a value that only stands in for something that could
//! not be read (a wrong type, an unset variable, a line lost to a TOML syntax error).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;

#[derive(Debug, Default)]
pub(super) struct Problems {
    found: Vec<String>,
    /// Key paths (`server.listen`, `routes.0.retry`) whose value could not be read: their
    /// default stands in for them, so nothing is checked about them.
    unread: BTreeSet<String>,
    /// Parts of a document were lost to syntax errors: a missing key or entry, or a relation
    /// between two keys, can no longer be judged.
    incomplete: bool,
    /// Not problems: deprecated keys, said once at startup and by `check-config`.
    warnings: Vec<String>,
    /// Key path → how it was written, for a value that came from a deprecated key.
    aliases: BTreeMap<String, String>,
}

impl Problems {
    /// A problem whose text names its own place (a file and line, an unknown key).
    pub(super) fn push(&mut self, problem: impl Into<String>) {
        self.found.push(problem.into());
    }

    /// `key`'s value could not be read: reported as "`key`: problem", and from now on no
    /// problem is reported about `key` or anything under it.
    pub(super) fn unread(&mut self, key: &str, problem: impl Display) {
        self.found.push(format!("`{key}`: {problem}"));
        self.unread.insert(key.to_owned());
    }

    /// `key` was left out for a reason another problem states: nothing more is said about it.
    pub(super) fn left_out(&mut self, key: &str) {
        self.unread.insert(key.to_owned());
    }

    /// Marks the configuration as missing whatever syntax errors swallowed.
    pub(super) fn set_incomplete(&mut self) {
        self.incomplete = true;
    }

    /// A problem with `key`'s own value, reported as "`key` problem".
    pub(super) fn at(&mut self, key: &str, problem: impl Display) {
        self.about(key, format!("{} {problem}", self.name(key)));
    }

    /// `key` quoted for a problem, with how it was written when that was a deprecated key.
    pub(super) fn name(&self, key: &str) -> String {
        match self.aliases.get(key) {
            Some(written) => format!("`{key}` (written as `{written}`)"),
            None => format!("`{key}`"),
        }
    }

    /// Something to say that is not a problem.
    pub(super) fn warn(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    /// `key`'s value was written as `written` (a deprecated key).
    pub(super) fn alias(&mut self, key: &str, written: &str) {
        self.aliases.insert(key.to_owned(), written.to_owned());
    }

    /// `key` was written again in its own name, over an earlier deprecated form.
    pub(super) fn unalias(&mut self, key: &str) {
        self.aliases.remove(key);
    }

    pub(super) fn take_warnings(&mut self) -> Vec<String> {
        std::mem::take(&mut self.warnings)
    }

    /// A problem with `key`'s own value; `problem` names it.
    pub(super) fn about(&mut self, key: &str, problem: impl Into<String>) {
        if !self.is_unread(key) {
            self.found.push(problem.into());
        }
    }

    /// `key` must not be 0.
    pub(super) fn positive(&mut self, key: &str, v: u64) {
        if v == 0 {
            self.at(key, "must be greater than 0");
        }
    }

    /// A problem between several keys; `problem` names them.
    pub(super) fn between(&mut self, keys: &[&str], problem: impl Into<String>) {
        if !self.incomplete && !keys.iter().any(|k| self.is_unread(k)) {
            self.found.push(problem.into());
        }
    }

    /// `key` (a required key, or a required entry) is absent; `problem` names it.
    pub(super) fn absent(&mut self, key: &str, problem: impl Into<String>) {
        if !self.incomplete && !self.is_unread(key) {
            self.found.push(problem.into());
        }
    }

    /// True when `key`, or a table holding it, could not be read.
    pub(super) fn is_unread(&self, key: &str) -> bool {
        self.unread.iter().any(|u| {
            key.strip_prefix(u.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        })
    }

    /// True when `table` or anything under it could not be read.
    pub(super) fn any_unread_in(&self, table: &str) -> bool {
        self.is_unread(table)
            || self.unread.iter().any(|u| {
                u.strip_prefix(table)
                    .is_some_and(|rest| rest.starts_with('.'))
            })
    }

    /// The checked value when nothing was found; otherwise every problem.
    pub(super) fn finish<T>(self, value: Option<T>) -> Result<T, Vec<String>> {
        match value {
            Some(v) if self.found.is_empty() => Ok(v),
            // A section that gives no value has pushed a problem saying why; the fallback
            // only keeps an impossible state from passing silently.
            _ if self.found.is_empty() => Err(vec!["a checked value is missing".into()]),
            _ => Err(self.found),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_reported_about_what_could_not_be_read() {
        let mut p = Problems::default();
        p.unread("routes.0.retry", "invalid type");
        p.at("routes.0.retry.max_attempts", "must be at most 10");
        p.at("routes.0.retry_extra", "is reported: another key");
        p.between(&["database.pool_size", "routes.0.retry"], "a relation");
        p.absent("routes.0.retry", "required");
        assert!(p.any_unread_in("routes.0") && p.any_unread_in("routes"));
        assert!(!p.any_unread_in("route") && !p.is_unread("routes.0.retryx"));
        assert_eq!(p.found.len(), 2, "{:?}", p.found);
        p.set_incomplete();
        p.between(&["a", "b"], "dropped");
        p.absent("routes", "dropped");
        p.at("server.listen", "still reported");
        assert_eq!(p.finish(Some(())).unwrap_err().len(), 3);
    }
}
