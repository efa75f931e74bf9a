//! Redaction of a JSON value in place: key rules at any depth, value patterns in every string
//! (and in keys), JSON carried inside strings redacted inside and kept a string. Each rule that
//! fires is noted with the path where it fired — never the value.

use serde_json::{Map, Value};

use super::rules::{is_card_digits, normalize_key_into};
use super::{Redactions, Sanitizer};

/// How deep JSON-inside-a-string is followed (a string holding JSON holding JSON…).
const MAX_NESTED_JSON: u8 = 4;

/// One step of a path; keys are borrowed from the value being walked, so walking allocates
/// nothing until a rule fires.
#[derive(Clone, Copy)]
pub(crate) enum Seg<'m> {
    Key(&'m str),
    Index,
}

/// Renders a path: `$.items[*].password`, `$["odd key"]`, `$.body(json).token`.
pub(crate) fn render_path(root: &str, path: &[Seg<'_>]) -> String {
    let mut out = String::from(root);
    for seg in path {
        match seg {
            Seg::Key(k)
                if !k.is_empty()
                    && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    && !k.starts_with(|c: char| c.is_ascii_digit()) =>
            {
                out.push('.');
                out.push_str(k);
            }
            Seg::Key(k) => {
                out.push('[');
                out.push_str(&Value::String((*k).to_owned()).to_string());
                out.push(']');
            }
            Seg::Index => out.push_str("[*]"),
        }
        if out.len() > super::MAX_PATH_CHARS {
            break;
        }
    }
    super::clip(&mut out, super::MAX_PATH_CHARS);
    out
}

/// A redaction pass over one stored value (`'m`: the borrow of that value).
pub(crate) struct Walker<'a, 'm> {
    pub s: &'a Sanitizer,
    pub found: &'a mut Redactions,
    /// Also apply the query-only key rules (form fields).
    pub query_keys: bool,
    root: String,
    path: Vec<Seg<'m>>,
    norm: String,
    nested: u8,
    /// Set when anything in the current (nested) document changed.
    changed: bool,
}

impl<'a, 'm> Walker<'a, 'm> {
    pub(super) fn new(s: &'a Sanitizer, found: &'a mut Redactions, root: &str) -> Self {
        Walker {
            s,
            found,
            query_keys: false,
            root: root.to_owned(),
            path: Vec::new(),
            norm: String::new(),
            nested: 0,
            changed: false,
        }
    }

    fn note(&mut self, rule: &str) {
        let path = render_path(&self.root, &self.path);
        self.found.add(rule, &path);
    }

    /// Redacts `v` in place.
    pub(super) fn value(&mut self, v: &'m mut Value) {
        match v {
            Value::Object(map) => self.object(map),
            Value::Array(items) => {
                self.path.push(Seg::Index);
                for item in items {
                    self.value(item);
                }
                self.path.pop();
            }
            Value::String(s) => {
                if let Some(new) = self.string(s) {
                    *s = new;
                }
            }
            Value::Number(n) => {
                // A card number sent as a JSON number.
                if self.s.card_rule
                    && n.as_u64()
                        .is_some_and(|u| is_card_digits(u.to_string().as_bytes()))
                {
                    self.note("card_number");
                    self.changed = true;
                    *v = Value::String(self.s.replacement.clone());
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn object(&mut self, map: &'m mut Map<String, Value>) {
        // Keys are stored too: NUL is not storable and a key may itself hold a secret.
        if map
            .keys()
            .any(|k| k.contains('\0') || self.s.patterns.may_match(k))
        {
            let entries = std::mem::take(map);
            for (k, v) in entries {
                let key = self.key(k);
                map.insert(key, v);
            }
        }
        for (k, val) in map {
            normalize_key_into(k, &mut self.norm);
            let rule = self
                .s
                .keys
                .find(&self.norm, self.query_keys)
                .map(|r| r.name.clone());
            let keep = match val {
                Value::Null | Value::Bool(_) => true,
                Value::Number(_) => self.s.keys.allows_number(&self.norm),
                Value::String(s) => *s == self.s.replacement,
                _ => false,
            };
            self.path.push(Seg::Key(k));
            match rule {
                Some(rule) if !keep => {
                    self.note(&format!("key:{rule}"));
                    self.changed = true;
                    *val = Value::String(self.s.replacement.clone());
                }
                _ => self.value(val),
            }
            self.path.pop();
        }
    }

    /// A key as stored: NUL replaced, value patterns redacted.
    fn key(&mut self, k: String) -> String {
        let k = if k.contains('\0') {
            self.changed = true;
            k.replace('\0', "\u{FFFD}")
        } else {
            k
        };
        match self.text(&k) {
            Some(new) => new,
            None => k,
        }
    }

    /// A string as stored, or `None` when it stays as it is.
    pub(super) fn string(&mut self, s: &str) -> Option<String> {
        let cleaned = s.contains('\0').then(|| s.replace('\0', "\u{FFFD}"));
        if cleaned.is_some() {
            self.changed = true;
        }
        let s = cleaned.as_deref().unwrap_or(s);
        match self.nested_json(s) {
            Some(Some(new)) => Some(new),
            Some(None) => cleaned,
            None => self.text(s).or(cleaned),
        }
    }

    /// Value patterns over free text.
    pub(super) fn text(&mut self, s: &str) -> Option<String> {
        let mut fired: Vec<String> = Vec::new();
        let out = self
            .s
            .patterns
            .redact(s, &self.s.replacement, &self.s.keys, &mut |rule| {
                fired.push(rule.to_owned())
            });
        for rule in fired {
            self.note(&rule);
        }
        if out.is_some() {
            self.changed = true;
        }
        out
    }

    /// A string holding a JSON object or array: redacted inside, still a string (compact JSON
    /// when something changed, the original text otherwise). `None`: not such a string;
    /// `Some(None)`: such a string, unchanged.
    fn nested_json(&mut self, s: &str) -> Option<Option<String>> {
        if self.nested >= MAX_NESTED_JSON {
            return None;
        }
        let t = s.trim_start();
        if !(t.starts_with('{') || t.starts_with('[')) {
            return None;
        }
        let mut inner: Value = serde_json::from_str(s).ok()?;
        // The inner document is walked by its own walker, rooted where the string is.
        let mut w = Walker::new(self.s, self.found, "");
        w.root = format!("{}(json)", render_path(&self.root, &self.path));
        w.nested = self.nested + 1;
        w.value(&mut inner);
        if !w.changed {
            // Parsed and clean: the original text is kept byte for byte.
            return Some(None);
        }
        self.changed = true;
        Some(Some(
            serde_json::to_string(&inner).unwrap_or_else(|_| self.s.replacement.clone()),
        ))
    }
}
