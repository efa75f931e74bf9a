//! What may be stored, and in what form (D4). Pure functions over captured bytes: the bytes
//! forwarded are never touched here.
//!
//! Deny by default: before anything reaches a row, values under secret-looking keys (JSON at any
//! depth, form and multipart fields, query parameters, headers) become the replacement text,
//! value patterns (JWTs, `Bearer …`, PEM private keys, Luhn-valid card numbers, AWS access keys,
//! well-known API tokens, URL userinfo, `name=value` pairs under secret names) are replaced
//! inside every string, JSON carried in a string is redacted inside and stays a string, and
//! compressed bodies are decoded first. Only then is a payload fitted to the capture cap,
//! keeping structure, with a `_truncated` indicator. Which rules fired, and where, is recorded
//! ([`Redactions`]) — never the values.
//!
//! The rules are compiled once at startup into a [`Sanitizer`]: built-in defaults, plus the
//! `[sanitize]` table, plus each route's `[routes.sanitize]` overrides.

mod body;
mod decode;
mod lenient;
mod multipart;
mod redact;
pub mod rules;
mod target;
mod truncate;

/// The lenient JSON prefix parser, for the fuzz targets.
#[cfg(fuzzing)]
pub fn lenient_prefix(text: &str) -> Option<Value> {
    lenient::parse_prefix(text)
}

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::sync::LazyLock;

use serde_json::{json, Value};

pub use body::{fit_string, MARKER_OVERHEAD};
use redact::Walker;
use rules::{normalize_key, KeyRule, KeyRules, Patterns};
pub use truncate::ELLIPSIS;

/// The default replacement for redacted values.
pub const REDACTED: &str = "[REDACTED]";

/// Default cap on the decoded size of a `Content-Encoding` body.
pub const DEFAULT_MAX_DECODED_BYTES: usize = 1024 * 1024;

/// Most distinct (rule, path) entries recorded per column; the rest are counted.
pub const MAX_RECORDED: usize = 64;

/// Longest path recorded.
pub const MAX_PATH_CHARS: usize = 200;

/// Longest replacement text.
pub const MAX_REPLACEMENT_CHARS: usize = 64;

/// What the capture saw of one body.
#[derive(Debug, Clone, Copy)]
pub struct BodySample<'a> {
    /// The captured prefix (at most the capture cap).
    pub bytes: &'a [u8],
    /// Total body size when known (after streaming, or from `Content-Length`).
    pub total_bytes: Option<u64>,
    /// True when the body had more bytes than `bytes`.
    pub cut: bool,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
}

/// A payload as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stored {
    /// `None` for an empty body.
    pub value: Option<Value>,
    /// Which rules fired, where.
    pub redactions: Redactions,
    /// True when `value` carries a `_truncated` indicator.
    pub truncated: bool,
}

/// One rule that fired: its name (`key:*password*`, `jwt`, …), where (`$.user.password`,
/// `$.items[*].token`, `$.body(json).secret`, `?token`, `headers.cookie`, `path`), and how
/// often there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redaction {
    pub rule: String,
    pub path: String,
    pub count: u64,
}

/// The redactions of one stored value, in the order they fired; never any value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redactions {
    entries: Vec<Redaction>,
    /// Firings beyond [`MAX_RECORDED`] distinct entries.
    omitted: u64,
}

impl Redactions {
    pub fn add(&mut self, rule: &str, path: &str) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.rule == rule && e.path == path)
        {
            e.count += 1;
        } else if self.entries.len() < MAX_RECORDED {
            self.entries.push(Redaction {
                rule: rule.to_owned(),
                path: path.to_owned(),
                count: 1,
            });
        } else {
            self.omitted += 1;
        }
    }

    pub fn merge(&mut self, other: Redactions) {
        for e in other.entries {
            for _ in 0..e.count {
                self.add(&e.rule, &e.path);
            }
        }
        self.omitted += other.omitted;
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.omitted == 0
    }

    /// Distinct (rule, path) entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Redaction> {
        self.entries.iter()
    }

    /// `[{"rule": …, "path": …, "count": n}, …]`, plus `{"omitted": n}` when the list was full.
    pub fn to_json(&self) -> Value {
        let mut list: Vec<Value> = self
            .entries
            .iter()
            .map(|e| json!({"rule": e.rule, "path": e.path, "count": e.count}))
            .collect();
        if self.omitted > 0 {
            list.push(json!({ "omitted": self.omitted }));
        }
        Value::Array(list)
    }
}

/// The `redactions` column: `{"<column>": [entries…], …}` for the columns where a rule fired;
/// `None` when none did, so "no secret was sent" reads as NULL.
pub fn redactions_record(parts: &[(&str, &Redactions)]) -> Option<Value> {
    let map: serde_json::Map<String, Value> = parts
        .iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(column, r)| ((*column).to_owned(), r.to_json()))
        .collect();
    (!map.is_empty()).then_some(Value::Object(map))
}

/// A configured value pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternSpec {
    pub name: String,
    pub regex: String,
}

/// The global rules as configured (`[sanitize]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleSpec {
    pub replacement: String,
    pub add_keys: Vec<String>,
    pub remove_keys: Vec<String>,
    pub allow_number_keys: Vec<String>,
    pub add_patterns: Vec<PatternSpec>,
    pub remove_patterns: Vec<String>,
    pub max_decoded_bytes: usize,
}

impl Default for RuleSpec {
    fn default() -> Self {
        RuleSpec {
            replacement: REDACTED.to_owned(),
            add_keys: Vec::new(),
            remove_keys: Vec::new(),
            allow_number_keys: rules::DEFAULT_ALLOW_NUMBER_KEYS
                .iter()
                .map(|k| (*k).to_owned())
                .collect(),
            add_patterns: Vec::new(),
            remove_patterns: Vec::new(),
            max_decoded_bytes: DEFAULT_MAX_DECODED_BYTES,
        }
    }
}

/// One route's overrides (`[routes.sanitize]`), applied on top of the global rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteRules {
    pub replacement: Option<String>,
    pub add_keys: Vec<String>,
    pub remove_keys: Vec<String>,
    pub add_patterns: Vec<PatternSpec>,
    pub remove_patterns: Vec<String>,
}

impl RouteRules {
    pub fn is_empty(&self) -> bool {
        *self == RouteRules::default()
    }
}

/// The compiled rules. Cheap to share (`Arc`); one per route with overrides.
#[derive(Clone)]
pub struct Sanitizer {
    spec: RuleSpec,
    replacement: String,
    keys: KeyRules,
    patterns: Patterns,
    /// `card_number` is in force (also checked on JSON numbers).
    card_rule: bool,
    max_decoded_bytes: usize,
}

impl std::fmt::Debug for Sanitizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sanitizer")
            .field("replacement", &self.replacement)
            .field(
                "keys",
                &self.keys.rules.iter().map(|r| &r.name).collect::<Vec<_>>(),
            )
            .field(
                "query_keys",
                &self
                    .keys
                    .query_rules
                    .iter()
                    .map(|r| &r.name)
                    .collect::<Vec<_>>(),
            )
            .field("patterns", &self.patterns.names().collect::<Vec<_>>())
            .field("max_decoded_bytes", &self.max_decoded_bytes)
            .finish()
    }
}

fn is_pattern_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Sanitizer {
    /// The built-in rules only.
    pub fn default_rules() -> Result<Sanitizer, Vec<String>> {
        Self::try_new(&RuleSpec::default())
    }

    /// Validates and compiles `spec`; every problem is returned, each naming its
    /// `sanitize.<key>`.
    pub fn try_new(spec: &RuleSpec) -> Result<Sanitizer, Vec<String>> {
        let mut problems = Vec::new();
        let r = &spec.replacement;
        if r.is_empty() || r.chars().count() > MAX_REPLACEMENT_CHARS {
            problems.push(format!(
                "`sanitize.replacement` must be 1 to {MAX_REPLACEMENT_CHARS} characters"
            ));
        }
        if r.chars().any(char::is_control) {
            problems.push("`sanitize.replacement` must not contain control characters".into());
        }
        if spec.max_decoded_bytes == 0 {
            problems.push("`sanitize.max_decoded_bytes` must be greater than 0".into());
        }

        let (key_rules, query_rules, allow_numbers) = key_rules(spec, &mut problems);
        let (custom, builtins) = pattern_choice(spec, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        let patterns = Patterns::compile(&builtins, &custom).map_err(|errors| {
            errors
                .into_iter()
                .map(|e| format!("`sanitize.add_patterns`: {e}"))
                .collect::<Vec<_>>()
        })?;
        let keys = KeyRules::new(key_rules, query_rules, allow_numbers);
        // A replacement some rule would redact again could never be stable.
        let mut fired = Vec::new();
        if patterns
            .redact(r, r, &keys, &mut |n| fired.push(n.to_owned()))
            .is_some()
        {
            return Err(vec![format!(
                "`sanitize.replacement` {r:?} is itself matched by pattern(s) {}",
                fired.join(", ")
            )]);
        }
        Ok(Sanitizer {
            spec: spec.clone(),
            replacement: r.clone(),
            keys,
            card_rule: builtins.contains(&"card_number"),
            patterns,
            max_decoded_bytes: spec.max_decoded_bytes,
        })
    }

    /// These rules with a route's overrides on top (add, remove, replacement).
    pub fn for_route(&self, route: &RouteRules) -> Result<Sanitizer, Vec<String>> {
        let mut spec = self.spec.clone();
        if let Some(r) = &route.replacement {
            spec.replacement = r.clone();
        }
        // A route may remove what the global table added; removing twice is not an error.
        let mut add_keys = spec.add_keys.clone();
        add_keys.extend(route.add_keys.iter().cloned());
        let mut remove_keys = spec.remove_keys.clone();
        for k in &route.remove_keys {
            let rule = KeyRule::parse(k);
            if rule.is_none() || !remove_keys.iter().any(|o| KeyRule::parse(o) == rule) {
                remove_keys.push(k.clone());
            }
        }
        spec.add_keys = add_keys;
        spec.remove_keys = remove_keys;
        spec.add_patterns.extend(route.add_patterns.iter().cloned());
        for p in &route.remove_patterns {
            if !spec.remove_patterns.contains(p) {
                spec.remove_patterns.push(p.clone());
            }
        }
        Self::try_new(&spec)
    }

    pub fn replacement(&self) -> &str {
        &self.replacement
    }

    pub fn max_decoded_bytes(&self) -> usize {
        self.max_decoded_bytes
    }

    /// Redacts a JSON value in place (paths rooted at `$`).
    pub fn json(&self, v: &mut Value) -> Redactions {
        let mut found = Redactions::default();
        Walker::new(self, &mut found, "$").value(v);
        found
    }

    /// A free-text column (workflow id, user id, action, error detail) as stored: value
    /// patterns applied, NUL replaced. `column` names the path in the record.
    pub fn column(&self, column: &'static str, text: &str) -> (String, Redactions) {
        let mut found = Redactions::default();
        let out = {
            let mut w = Walker::new(self, &mut found, column);
            let cleaned = text.replace('\0', "\u{FFFD}");
            w.text(&cleaned).unwrap_or(cleaned)
        };
        (out, found)
    }

    /// True when a key (any spelling) is redacted by the key rules.
    pub fn is_secret_key(&self, key: &str) -> bool {
        self.keys.find(&normalize_key(key), false).is_some()
    }
}

/// The key rules `spec` asks for — the built-in ones plus `add_keys`, less `remove_keys` — for
/// names and for query parameters, and the `allow_number_keys`, normalized.
fn key_rules(
    spec: &RuleSpec,
    problems: &mut Vec<String>,
) -> (Vec<KeyRule>, Vec<KeyRule>, Vec<String>) {
    let parse_keys = |list: &[String], key: &str, problems: &mut Vec<String>| {
        let mut out = Vec::new();
        for entry in list {
            match KeyRule::parse(entry) {
                Some(rule) => out.push(rule),
                None => problems.push(format!(
                    "`sanitize.{key}` entry {entry:?} has nothing to match (letters or digits, `*` only at either end)"
                )),
            }
        }
        out
    };
    let builtin =
        |list: &[&str]| -> Vec<KeyRule> { list.iter().filter_map(|k| KeyRule::parse(k)).collect() };
    let added = parse_keys(&spec.add_keys, "add_keys", problems);
    let removed = parse_keys(&spec.remove_keys, "remove_keys", problems);
    let mut key_rules = builtin(rules::DEFAULT_KEYS);
    let mut query_rules = builtin(rules::DEFAULT_QUERY_KEYS);
    for rule in added {
        if !key_rules.contains(&rule) {
            key_rules.push(rule);
        }
    }
    for (rule, text) in removed.iter().zip(&spec.remove_keys) {
        let known = key_rules.contains(rule) || query_rules.contains(rule);
        if !known {
            problems.push(format!(
                "`sanitize.remove_keys` entry {text:?} is not a key rule (built-in rules are listed in the README)"
            ));
        }
    }
    key_rules.retain(|r| !removed.contains(r));
    query_rules.retain(|r| !removed.contains(r));
    let mut allow_numbers = Vec::new();
    for k in &spec.allow_number_keys {
        let norm = normalize_key(k);
        if norm.is_empty() {
            problems.push(format!(
                "`sanitize.allow_number_keys` entry {k:?} has no letters or digits"
            ));
        } else {
            allow_numbers.push(norm);
        }
    }
    (key_rules, query_rules, allow_numbers)
}

/// The custom patterns (name, regex) and the built-in pattern names `spec` keeps.
fn pattern_choice(
    spec: &RuleSpec,
    problems: &mut Vec<String>,
) -> (Vec<(String, String)>, Vec<&'static str>) {
    let mut custom = Vec::new();
    for (i, p) in spec.add_patterns.iter().enumerate() {
        let at = format!("`sanitize.add_patterns[{i}]`");
        if !is_pattern_name(&p.name) {
            problems.push(format!(
                "{at} name {:?} must be 1 to 64 of a-z, 0-9, _",
                p.name
            ));
        } else if rules::DEFAULT_PATTERNS.contains(&p.name.as_str())
            || spec.add_patterns[..i].iter().any(|o| o.name == p.name)
        {
            problems.push(format!("{at} name {:?} is already taken", p.name));
        }
        match regex::Regex::new(&p.regex) {
            Ok(re) if re.is_match("") => {
                problems.push(format!("{at} regex {:?} matches the empty string", p.regex))
            }
            Ok(_) => custom.push((p.name.clone(), p.regex.clone())),
            Err(e) => problems.push(format!("{at} regex: {e}")),
        }
    }
    for name in &spec.remove_patterns {
        if !rules::DEFAULT_PATTERNS.contains(&name.as_str())
            && !spec.add_patterns.iter().any(|p| &p.name == name)
        {
            problems.push(format!(
                "`sanitize.remove_patterns` entry {name:?} is not a pattern (built-in: {})",
                rules::DEFAULT_PATTERNS.join(", ")
            ));
        }
    }
    custom.retain(|(n, _)| !spec.remove_patterns.contains(n));
    let builtins: Vec<&str> = rules::DEFAULT_PATTERNS
        .iter()
        .copied()
        .filter(|n| !spec.remove_patterns.iter().any(|r| r == n))
        .collect();
    (custom, builtins)
}

/// The built-in rules, for the free functions below.
static DEFAULT: LazyLock<Option<Sanitizer>> = LazyLock::new(|| Sanitizer::default_rules().ok());

/// [`Sanitizer::payload`] with the built-in rules; fails closed (a descriptor only) should
/// they ever not compile.
pub fn payload_for_storage(sample: BodySample<'_>, cap: usize) -> Option<Value> {
    match DEFAULT.as_ref() {
        Some(s) => s.payload(sample, cap).value,
        None => Some(
            json!({"_descriptor": {"bytes": sample.total_bytes, "reason": "redaction unavailable"}}),
        ),
    }
}

/// True when the built-in key rules redact `key`.
pub fn is_secret_key(key: &str) -> bool {
    DEFAULT.as_ref().is_none_or(|s| s.is_secret_key(key))
}

/// `s` cut to at most `max` bytes, on a character boundary, with `…` when cut.
pub(crate) fn clipped(s: &str, max: usize) -> String {
    let mut out = s.to_owned();
    clip(&mut out, max);
    out
}

pub(crate) fn clip(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max.saturating_sub(ELLIPSIS.len());
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
        s.push_str(ELLIPSIS);
    }
}
