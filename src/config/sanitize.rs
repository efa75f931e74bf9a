//! `[sanitize]` and each route's `[routes.sanitize]`: D4 redaction rules on top of the built-in
//! ones, compiled into a `Sanitizer` (`crate::sanitize` checks the rules themselves).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::problems::Problems;
use crate::sanitize::{PatternSpec, RouteRules, RuleSpec, Sanitizer};

/// `[sanitize]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawSanitize {
    pub replacement: String,
    pub add_keys: Vec<String>,
    pub remove_keys: Vec<String>,
    pub allow_number_keys: Vec<String>,
    pub add_patterns: Vec<RawPattern>,
    pub remove_patterns: Vec<String>,
    pub max_decoded_bytes: usize,
}

impl Default for RawSanitize {
    fn default() -> Self {
        // The built-in rule set's own defaults, so they are stated once.
        let d = RuleSpec::default();
        Self {
            replacement: d.replacement,
            add_keys: Vec::new(),
            remove_keys: Vec::new(),
            allow_number_keys: d.allow_number_keys,
            add_patterns: Vec::new(),
            remove_patterns: Vec::new(),
            max_decoded_bytes: d.max_decoded_bytes,
        }
    }
}

/// `[[sanitize.add_patterns]]` / `[[routes.sanitize.add_patterns]]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct RawPattern {
    pub name: String,
    pub regex: String,
}

/// `[routes.sanitize]`: one route's additions and removals, over `[sanitize]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct RawRouteSanitize {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    pub add_keys: Vec<String>,
    pub remove_keys: Vec<String>,
    pub add_patterns: Vec<RawPattern>,
    pub remove_patterns: Vec<String>,
}

impl RawRouteSanitize {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }
}

/// `[sanitize]` compiled; `None` after reporting its problems (or when a key of it could not be
/// read, so the rules are not judged by stand-ins).
pub(super) fn check(raw: &RawSanitize, p: &mut Problems) -> Option<Arc<Sanitizer>> {
    if p.any_unread_in("sanitize") {
        return None;
    }
    let spec = RuleSpec {
        replacement: raw.replacement.clone(),
        add_keys: raw.add_keys.clone(),
        remove_keys: raw.remove_keys.clone(),
        allow_number_keys: raw.allow_number_keys.clone(),
        add_patterns: patterns(&raw.add_patterns),
        remove_patterns: raw.remove_patterns.clone(),
        max_decoded_bytes: raw.max_decoded_bytes,
    };
    Sanitizer::try_new(&spec)
        .map(Arc::new)
        .map_err(|e| e.into_iter().for_each(|problem| p.push(problem)))
        .ok()
}

/// A route's rules: the global ones, shared, unless `[routes.sanitize]` changes them. `at`
/// names the route in problems; `key` is its `sanitize` table's path.
pub(super) fn check_route(
    global: Option<&Arc<Sanitizer>>,
    raw: &RawRouteSanitize,
    (at, key): (&str, &str),
    p: &mut Problems,
) -> Option<Arc<Sanitizer>> {
    let global = global?;
    if p.any_unread_in(key) {
        return None;
    }
    let overrides = RouteRules {
        replacement: raw.replacement.clone(),
        add_keys: raw.add_keys.clone(),
        remove_keys: raw.remove_keys.clone(),
        add_patterns: patterns(&raw.add_patterns),
        remove_patterns: raw.remove_patterns.clone(),
    };
    if overrides.is_empty() {
        return Some(global.clone());
    }
    match global.for_route(&overrides) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            let route_key = |p: String| p.replacen("`sanitize.", "`routes.sanitize.", 1);
            for problem in e {
                p.push(format!("{at}: {}", route_key(problem)));
            }
            None
        }
    }
}

fn patterns(raw: &[RawPattern]) -> Vec<PatternSpec> {
    raw.iter()
        .map(|p| PatternSpec {
            name: p.name.clone(),
            regex: p.regex.clone(),
        })
        .collect()
}
