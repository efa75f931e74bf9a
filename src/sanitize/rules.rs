//! The rules themselves: which keys are secret, and which patterns inside a string are. Built-in
//! defaults plus what the configuration adds or removes, compiled once at startup.

use std::borrow::Cow;

use base64::Engine as _;
use regex::{Captures, Regex, RegexBuilder, RegexSet, RegexSetBuilder};

/// Built-in key rules. `*word*` matches a key containing `word`, `word*` a key starting with it,
/// `*word` a key ending with it, a bare word the whole key. Keys are compared after
/// normalization: lowercase, letters and digits only (`X-N8N-API-KEY` → `xn8napikey`).
pub const DEFAULT_KEYS: &[&str] = &[
    "*password*",
    "*passwd*",
    "*passphrase*",
    "*passcode*",
    "pass",
    "pwd",
    "*secret*",
    "*token*",
    "*apikey*",
    "*privatekey*",
    "*secretkey*",
    "*accesskey*",
    "*signingkey*",
    "*encryptionkey*",
    "*masterkey*",
    "*authorization*",
    "auth",
    "*bearer*",
    "*cookie*",
    "*credential*",
    "*sessionid*",
    "*connectionstring*",
    "*signature*",
    "sig",
    "*hmac*",
    "csrf",
    "xsrf",
    "key",
    "otp",
    "totp",
    "*otpcode*",
    "*mfacode*",
    "pin",
    "cvv",
    "cvv2",
    "cvc",
    "*cardnumber*",
    "ccnumber",
];

/// Built-in rules only for query parameters and form fields (URL-encoded data), where these names
/// carry credentials (OAuth `code`) but in JSON usually do not (`"code": "ERR_TIMEOUT"`).
pub const DEFAULT_QUERY_KEYS: &[&str] = &["code", "ticket"];

/// Keys whose *number* values are kept although a key rule matches them: LLM token counters
/// that n8n's AI nodes report. Strings under these keys are still redacted.
pub const DEFAULT_ALLOW_NUMBER_KEYS: &[&str] = &[
    "max_tokens",
    "total_tokens",
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "promptTokens",
    "completionTokens",
    "totalTokens",
];

/// Built-in value patterns, applied in this order to every stored string.
pub const DEFAULT_PATTERNS: &[&str] = &[
    "pem_private_key",
    "jwt",
    "bearer",
    "basic_auth",
    "url_userinfo",
    "aws_access_key",
    "api_token",
    "card_number",
    "key_value",
];

/// Lowercase letters and digits only, into `out` (cleared first).
pub fn normalize_key_into(key: &str, out: &mut String) {
    out.clear();
    for c in key.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if c.is_alphanumeric() {
            out.extend(c.to_lowercase());
        }
    }
}

pub fn normalize_key(key: &str) -> String {
    let mut s = String::with_capacity(key.len());
    normalize_key_into(key, &mut s);
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Exact,
    Contains,
    Prefix,
    Suffix,
}

/// One key rule, e.g. `*password*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRule {
    /// As written, normalized (`*apikey*`): the rule's name in the redaction record.
    pub name: String,
    word: String,
    shape: Shape,
}

impl KeyRule {
    /// Parses `*word*`, `word*`, `*word` or `word`; `None` when nothing is left to match.
    pub fn parse(text: &str) -> Option<KeyRule> {
        let lead = text.starts_with('*');
        let trail = text.len() > 1 && text.ends_with('*');
        let inner = text.trim_start_matches('*').trim_end_matches('*');
        if inner.contains('*') {
            return None;
        }
        let word = normalize_key(inner);
        if word.is_empty() {
            return None;
        }
        let shape = match (lead, trail) {
            (true, true) => Shape::Contains,
            (true, false) => Shape::Suffix,
            (false, true) => Shape::Prefix,
            (false, false) => Shape::Exact,
        };
        let name = match shape {
            Shape::Exact => word.clone(),
            Shape::Contains => format!("*{word}*"),
            Shape::Prefix => format!("{word}*"),
            Shape::Suffix => format!("*{word}"),
        };
        Some(KeyRule { name, word, shape })
    }

    fn matches(&self, norm: &str) -> bool {
        match self.shape {
            Shape::Exact => norm == self.word,
            Shape::Contains => norm.contains(&self.word),
            Shape::Prefix => norm.starts_with(&self.word),
            Shape::Suffix => norm.ends_with(&self.word),
        }
    }
}

/// The key rules in force.
#[derive(Debug, Clone, Default)]
pub struct KeyRules {
    pub rules: Vec<KeyRule>,
    /// Only for query parameters and form fields.
    pub query_rules: Vec<KeyRule>,
    /// Normalized keys whose number values are kept.
    pub allow_numbers: Vec<String>,
    /// All rules as one automaton, so an innocent key costs one pass, not one per rule.
    any: Option<Regex>,
    any_query: Option<Regex>,
}

/// One regex matching a normalized key when any of `rules` does.
fn automaton(rules: &[&KeyRule]) -> Option<Regex> {
    if rules.is_empty() {
        return None;
    }
    let alts: Vec<String> = rules
        .iter()
        .map(|r| {
            let w = regex::escape(&r.word);
            match r.shape {
                Shape::Exact => format!("^{w}$"),
                Shape::Contains => w,
                Shape::Prefix => format!("^{w}"),
                Shape::Suffix => format!("{w}$"),
            }
        })
        .collect();
    RegexBuilder::new(&alts.join("|"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .ok()
}

impl KeyRules {
    pub fn new(rules: Vec<KeyRule>, query_rules: Vec<KeyRule>, allow_numbers: Vec<String>) -> Self {
        let any = automaton(&rules.iter().collect::<Vec<_>>());
        let any_query = automaton(&rules.iter().chain(&query_rules).collect::<Vec<_>>());
        KeyRules {
            rules,
            query_rules,
            allow_numbers,
            any,
            any_query,
        }
    }

    /// The rule a normalized key matches, if any.
    pub fn find(&self, norm: &str, query: bool) -> Option<&KeyRule> {
        if norm.is_empty() {
            return None;
        }
        let any = if query { &self.any_query } else { &self.any };
        // Should the automaton not have been built (not expected), every rule is tried.
        if any.as_ref().is_some_and(|re| !re.is_match(norm)) {
            return None;
        }
        self.rules
            .iter()
            .chain(if query { &self.query_rules[..] } else { &[] })
            .find(|r| r.matches(norm))
    }

    pub fn allows_number(&self, norm: &str) -> bool {
        self.allow_numbers.iter().any(|k| k == norm)
    }
}

/// How a pattern's match is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The whole match.
    Whole,
    /// Capture group 1 only (scheme words and URL structure stay).
    Group1,
    /// Group 1, when it is base64 of `user:password`.
    BasicCredentials,
    /// Digit runs: Luhn-valid card numbers inside them.
    Card,
    /// `name=value` / `"name": "value"` in text, when `name` matches a key rule.
    KeyValue,
}

/// One compiled value pattern.
#[derive(Debug, Clone)]
pub struct Pattern {
    pub name: String,
    /// Finds candidates; for `Kind::Card` the prefilter is stricter than this.
    regex: Regex,
    kind: Kind,
}

/// Built-in pattern: (name, prefilter regex for the set, matching regex, kind).
///
/// A prefilter only has to match wherever its pattern might: it may match more. It must not
/// make the set's DFA track *which* of many earlier positions could have started a match (a
/// start class narrower than the repeated class, under a bounded count), or every new run of
/// digits or letters builds new DFA states: `[2-6](?:[ -]?[0-9]){12,18}` did that on random
/// digits, costing a body of timestamps or ids about 100× the scan it costs now.
fn builtin(name: &str) -> Option<(&'static str, &'static str, Kind)> {
    Some(match name {
        "pem_private_key" => (
            r"-----BEGIN[ A-Z0-9]*PRIVATE KEY",
            r"-----BEGIN[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END[ A-Z0-9]*PRIVATE KEY(?: BLOCK)?-----|\z)",
            Kind::Whole,
        ),
        "jwt" => (
            r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.",
            r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}",
            Kind::Whole,
        ),
        "bearer" => (
            r"(?i)bearer\s+[A-Za-z0-9\-._~+/]{8}",
            r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{8,}=*)",
            Kind::Group1,
        ),
        "basic_auth" => (
            r"(?i)basic\s+[A-Za-z0-9+/]{6}",
            r"(?i)\bbasic\s+([A-Za-z0-9+/]{6,}={0,2})",
            Kind::BasicCredentials,
        ),
        "url_userinfo" => (
            r"://[^\s/?#@]+@",
            r#"\b[A-Za-z][A-Za-z0-9+.\-]{0,31}://([^\s/?#@"'<>\\]+)@"#,
            Kind::Group1,
        ),
        "aws_access_key" => (
            r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]{16}",
            r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)[A-Z0-9]{16}\b",
            Kind::Whole,
        ),
        "api_token" => (
            r"gh[pousr]_|github_pat_|xox[abposr]-|[sr]k_(?:live|test)_|sk-|AIza|glpat-|npm_",
            r"\b(?:gh[pousr]_[A-Za-z0-9]{30,255}|github_pat_[A-Za-z0-9_]{22,255}|xox[abposr]-[A-Za-z0-9-]{10,255}|[sr]k_(?:live|test)_[A-Za-z0-9]{16,255}|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,255}|AIza[0-9A-Za-z_-]{35}|glpat-[A-Za-z0-9_-]{20,255}|npm_[A-Za-z0-9]{36})",
            Kind::Whole,
        ),
        "card_number" => (
            r"[0-9](?:[ -]?[0-9]){12}",
            r"[0-9]+(?:[ -][0-9]+)*",
            Kind::Card,
        ),
        "key_value" => (
            r#"[A-Za-z_"'][A-Za-z0-9_.\-\[\]"'\\]*[ \t]*[:=]"#,
            KEY_VALUE,
            Kind::KeyValue,
        ),
        _ => return None,
    })
}

/// `name=value`, `name: value`, `"name": "value"` (also with escaped quotes, as in JSON inside
/// a JSON string, escaped any number of times). A value may be quoted, or an auth scheme word and its token, or a bare token.
const KEY_VALUE: &str = r#"(?P<key>\\*"[^"\\\n]{1,64}\\*"|'[^'\\\n]{1,64}'|[A-Za-z_][A-Za-z0-9_.\-\[\]]{0,63})[ \t]{0,8}[:=][ \t]{0,8}(?P<val>\\+"(?:[^"\\]|\\+[^"\\])*(?:\\+"|\z)|"(?:[^"\\]|\\.)*(?:"|\z)|'[^'\n]*(?:'|\z)|(?i:(?:bearer|basic|digest|token|apikey)[ \t]+)?[^\s&,;"'<>(){}\\]+)"#;

/// Further passes of [`Patterns::redact`] over its own output, at most (each one only shortens).
const MAX_REDACTION_PASSES: usize = 4;

/// Size limit for a compiled pattern (configured patterns included).
const REGEX_SIZE_LIMIT: usize = 2 << 20;

/// The value patterns in force, in application order.
#[derive(Debug, Clone)]
pub struct Patterns {
    list: Vec<Pattern>,
    /// One prefilter per pattern: a string none of them matches is left alone in one pass.
    set: RegexSet,
}

impl Patterns {
    /// Compiles built-in names and configured `(name, regex)` pairs; errors name the pattern.
    pub fn compile(
        builtins: &[&str],
        custom: &[(String, String)],
    ) -> Result<Patterns, Vec<String>> {
        let mut problems = Vec::new();
        let mut list = Vec::new();
        let mut prefilters = Vec::new();
        let mut add = |name: &str, pre: &str, re: &str, kind: Kind, problems: &mut Vec<String>| {
            let built = RegexBuilder::new(re).size_limit(REGEX_SIZE_LIMIT).build();
            match built {
                Ok(regex) => {
                    list.push(Pattern {
                        name: name.to_owned(),
                        regex,
                        kind,
                    });
                    prefilters.push(pre.to_owned());
                }
                Err(e) => problems.push(format!("pattern {name:?}: {e}")),
            }
        };
        let (tail, head): (Vec<&str>, Vec<&str>) =
            builtins.iter().partition(|n| **n == "key_value");
        for name in head {
            match builtin(name) {
                Some((pre, re, kind)) => add(name, pre, re, kind, &mut problems),
                None => problems.push(format!("unknown built-in pattern {name:?}")),
            }
        }
        // Configured patterns run after the built-ins and before `key_value`, which has to
        // see what they left.
        for (name, re) in custom {
            add(name, re, re, Kind::Whole, &mut problems);
        }
        for name in tail {
            if let Some((pre, re, kind)) = builtin(name) {
                add(name, pre, re, kind, &mut problems);
            }
        }
        let set = RegexSetBuilder::new(&prefilters)
            .size_limit(REGEX_SIZE_LIMIT * 4)
            .build();
        match set {
            Ok(set) if problems.is_empty() => Ok(Patterns { list, set }),
            Ok(_) => Err(problems),
            Err(e) => {
                problems.push(format!("patterns: {e}"));
                Err(problems)
            }
        }
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.list.iter().map(|p| p.name.as_str())
    }

    /// True when some pattern may match `text` (a cheap single pass).
    pub fn may_match(&self, text: &str) -> bool {
        self.set.is_match(text)
    }

    /// Redacts every pattern match in `text`; `fired` gets each rule that changed something.
    /// `None` when nothing changed. Runs again on its own output until nothing changes (a
    /// redaction can shorten a quoted name enough for the key/value pattern to see it), so
    /// redacting twice is redacting once.
    pub fn redact(
        &self,
        text: &str,
        replacement: &str,
        keys: &KeyRules,
        fired: &mut dyn FnMut(&str),
    ) -> Option<String> {
        let mut out = self.redact_once(text, replacement, keys, fired)?;
        for _ in 0..MAX_REDACTION_PASSES {
            match self.redact_once(&out, replacement, keys, fired) {
                Some(next) => out = next,
                None => break,
            }
        }
        Some(out)
    }

    fn redact_once(
        &self,
        text: &str,
        replacement: &str,
        keys: &KeyRules,
        fired: &mut dyn FnMut(&str),
    ) -> Option<String> {
        if !self.set.is_match(text) {
            return None;
        }
        let mut hits = self.set.matches(text);
        let mut cur: Cow<'_, str> = Cow::Borrowed(text);
        for (i, p) in self.list.iter().enumerate() {
            if !hits.matched(i) {
                continue;
            }
            if let Some(next) = p.apply(&cur, replacement, keys) {
                cur = Cow::Owned(next);
                fired(&p.name);
                // A replacement may create or remove matches for the patterns that follow.
                hits = self.set.matches(&cur);
            }
        }
        match cur {
            Cow::Owned(s) => Some(s),
            Cow::Borrowed(_) => None,
        }
    }
}

impl Pattern {
    fn apply(&self, text: &str, replacement: &str, keys: &KeyRules) -> Option<String> {
        let mut changed = false;
        let out = match self.kind {
            Kind::Whole => self.regex.replace_all(text, |c: &Captures<'_>| {
                let m = &c[0];
                if m == replacement {
                    m.to_owned()
                } else {
                    changed = true;
                    replacement.to_owned()
                }
            }),
            Kind::Group1 | Kind::BasicCredentials => {
                self.regex.replace_all(text, |c: &Captures<'_>| {
                    let (Some(all), Some(g)) = (c.get(0), c.get(1)) else {
                        return c[0].to_owned();
                    };
                    let secret = g.as_str();
                    if secret == replacement
                        || (self.kind == Kind::BasicCredentials && !is_basic_credentials(secret))
                    {
                        return all.as_str().to_owned();
                    }
                    changed = true;
                    let s = all.as_str();
                    let (a, b) = (g.start() - all.start(), g.end() - all.start());
                    format!("{}{replacement}{}", &s[..a], &s[b..])
                })
            }
            Kind::Card => return self.apply_card(text, replacement),
            Kind::KeyValue => return self.apply_key_value(text, replacement, keys),
        };
        if changed {
            Some(out.into_owned())
        } else {
            None
        }
    }

    /// `card`: digit runs that pass the Luhn check (see `card_spans`).
    fn apply_card(&self, text: &str, replacement: &str) -> Option<String> {
        let mut out = String::new();
        let mut last = 0;
        let mut changed = false;
        for m in self.regex.find_iter(text) {
            if let Some(spans) = card_spans(text, m.start(), m.end()) {
                for (s, e) in spans {
                    out.push_str(&text[last..s]);
                    out.push_str(replacement);
                    last = e;
                    changed = true;
                }
            }
        }
        if !changed {
            return None;
        }
        out.push_str(&text[last..]);
        Some(out)
    }

    /// `key_value`: the value of a pair whose name the key rules call secret.
    fn apply_key_value(&self, text: &str, replacement: &str, keys: &KeyRules) -> Option<String> {
        // By hand rather than `replace_all`: a pair under an innocent name must not
        // swallow the pairs inside its value (`https://h/cb?code=…`), so the search
        // resumes right after each innocent name.
        let mut out = String::new();
        let (mut last, mut pos) = (0, 0);
        let mut norm = String::new();
        let mut changed = false;
        while pos < text.len() {
            let Some(c) = self.regex.captures_at(text, pos) else {
                break;
            };
            let (Some(all), Some(k), Some(v)) = (c.get(0), c.name("key"), c.name("val")) else {
                break;
            };
            let before = &text[..all.start()];
            let query = before.ends_with('?') || before.ends_with('&');
            let key = k
                .as_str()
                .trim_matches(|c| c == '"' || c == '\'' || c == '\\');
            normalize_key_into(key, &mut norm);
            let (open, inner, close) = split_quotes(v.as_str());
            let innocent = keys.find(&norm, query).is_none()
                || inner.is_empty()
                || inner.starts_with(replacement)
                || (keys.allows_number(&norm) && inner.parse::<f64>().is_ok())
                || is_permission(&text[k.end()..v.start()], k.as_str(), v.as_str());
            if innocent {
                pos = k.end();
                continue;
            }
            changed = true;
            out.push_str(&text[last..v.start()]);
            out.push_str(open);
            out.push_str(replacement);
            out.push_str(close);
            last = v.end();
            pos = v.end();
        }
        if !changed {
            return None;
        }
        out.push_str(&text[last..]);
        Some(out)
    }
}

/// The actions of permission scopes such as n8n's (`credential:create`, `apiKey:manage`,
/// `workflow:shareGlobally`): words, not secrets.
const PERMISSION_ACTIONS: &[&str] = &[
    "archive",
    "cancel",
    "create",
    "delete",
    "disable",
    "edit",
    "enable",
    "execute",
    "export",
    "generate",
    "import",
    "install",
    "list",
    "listProject",
    "manage",
    "move",
    "own",
    "publish",
    "read",
    "readGlobally",
    "readSecret",
    "remove",
    "reset",
    "retry",
    "run",
    "share",
    "shareGlobally",
    "stop",
    "transfer",
    "uninstall",
    "unarchive",
    "unpublish",
    "unshare",
    "update",
    "updateGlobally",
    "updateSecret",
    "view",
    "write",
];

/// True for a permission scope, `resource:action`: a bare name, the colon right after it, and
/// right after that, unquoted, one of [`PERMISSION_ACTIONS`]. `password: create`, `password=x`
/// and `"apiKey":"manage"` are pairs, not scopes.
fn is_permission(between: &str, key: &str, val: &str) -> bool {
    between == ":"
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && PERMISSION_ACTIONS.contains(&val)
}

/// (opening quote, content, closing quote) of a `key_value` value; a quote may be escaped any
/// number of times (`\\\"` in JSON inside JSON inside a string).
fn split_quotes(val: &str) -> (&str, &str, &str) {
    let escapes = val.bytes().take_while(|&b| b == b'\\').count();
    if val.as_bytes().get(escapes) == Some(&b'"') {
        let (open, rest) = val.split_at(escapes + 1);
        return match rest.strip_suffix(open) {
            Some(inner) => (open, inner, open),
            None => (open, rest, ""),
        };
    }
    if let Some(rest) = val.strip_prefix('\'') {
        return match rest.strip_suffix('\'') {
            Some(inner) => ("'", inner, "'"),
            None => ("'", rest, ""),
        };
    }
    ("", val, "")
}

/// True when `token` is base64 of `user:password`, i.e. HTTP Basic credentials.
fn is_basic_credentials(token: &str) -> bool {
    let engine = base64::engine::general_purpose::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent);
    let engine = base64::engine::GeneralPurpose::new(&base64::alphabet::STANDARD, engine);
    match engine.decode(token.trim_end_matches('=')) {
        Ok(bytes) => bytes.contains(&b':') && bytes.iter().all(|b| !b.is_ascii_control()),
        Err(_) => false,
    }
}

/// Luhn checksum over ASCII digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = u32::from(d - b'0');
        if i % 2 == 1 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    sum.is_multiple_of(10)
}

/// A card number: 13–19 digits, a network's leading digit (2–6: Mastercard, Amex, Diners, JCB,
/// Visa, Discover, UnionPay, Maestro), Luhn-valid. Epoch-millisecond timestamps (leading 1)
/// and most ids therefore never match.
pub fn is_card_digits(digits: &[u8]) -> bool {
    (13..=19).contains(&digits.len())
        && matches!(digits.first(), Some(b'2'..=b'6'))
        && luhn_valid(digits)
}

/// Card numbers inside the digit run `text[start..end]` (digit groups joined by single spaces
/// or dashes): the byte spans to redact.
fn card_spans(text: &str, start: usize, end: usize) -> Option<Vec<(usize, usize)>> {
    let bytes = text.as_bytes();
    let before = start.checked_sub(1).map(|i| bytes[i]);
    let after = bytes.get(end).copied();
    let after2 = bytes.get(end + 1).copied();
    // Groups: (start, end) of each digit group.
    let mut groups = Vec::new();
    let mut i = start;
    while i < end {
        let s = i;
        while i < end && bytes[i].is_ascii_digit() {
            i += 1;
        }
        groups.push((s, i));
        i += 1; // the separator
    }
    if groups.len() == 5 && groups.iter().map(|(s, e)| e - s).eq([8usize, 4, 4, 4, 12]) {
        return None; // an all-digit UUID
    }
    // A group glued to a word, an identifier, a decimal or a version is not part of a card.
    if before.is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/')) {
        groups.remove(0);
    }
    if after.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        || (after == Some(b'.') && after2.is_some_and(|b| b.is_ascii_digit()))
    {
        groups.pop();
    }
    let mut spans = Vec::new();
    let mut g = 0;
    while g < groups.len() {
        let mut found = None;
        // The longest window of whole groups, with one kind of separator, that is a card.
        let mut digits = Vec::with_capacity(19);
        for h in g..groups.len() {
            if h > g {
                let sep = bytes[groups[h].0 - 1];
                if h > g + 1 && sep != bytes[groups[g + 1].0 - 1] {
                    break;
                }
            }
            digits.extend_from_slice(&bytes[groups[h].0..groups[h].1]);
            if digits.len() > 19 {
                break;
            }
            if is_card_digits(&digits) {
                found = Some(h);
            }
        }
        match found {
            Some(h) => {
                spans.push((groups[g].0, groups[h].1));
                g = h + 1;
            }
            None => g += 1,
        }
    }
    (!spans.is_empty()).then_some(spans)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bodies full of ids and timestamps must not make the pattern set's lazy DFA build new
    /// states for every new run of digits or letters (see `builtin`): over a second body of
    /// different random values it keeps almost all it built for the first, and never clears.
    #[test]
    fn prefilter_set_keeps_its_states_across_bodies_of_random_ids() {
        use regex_automata::hybrid::dfa::DFA;
        use regex_automata::{Input, MatchKind, PatternSet};
        let pre: Vec<&str> = DEFAULT_PATTERNS
            .iter()
            .filter_map(|name| builtin(name))
            .map(|(pre, _, _)| pre)
            .collect();
        assert_eq!(pre.len(), DEFAULT_PATTERNS.len());
        let dfa = DFA::builder()
            .configure(
                DFA::config()
                    .match_kind(MatchKind::All)
                    .cache_capacity(2 << 20),
            )
            .build_many(&pre)
            .expect("prefilters build");
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut body = || {
            let mut text = String::new();
            while text.len() < 64 << 10 {
                text.push_str("data: ");
                for _ in 0..19 {
                    text.push(char::from(b'0' + u8::try_from(next(10)).expect("digit")));
                }
                text.push_str(" id=");
                for _ in 0..24 {
                    let alnum = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                    text.push(char::from(alnum[usize::try_from(next(62)).expect("index")]));
                }
                text.push('\n');
            }
            text
        };
        let (first, second) = (body(), body());
        let mut cache = dfa.create_cache();
        let mut found = PatternSet::new(dfa.pattern_len());
        let mut scan = |text: &str| {
            dfa.try_which_overlapping_matches(&mut cache, &Input::new(text), &mut found)
                .expect("the lazy DFA does not give up");
            cache.memory_usage()
        };
        let after_first = scan(&first);
        let after_second = scan(&second);
        // Checked first: a cleared cache could also have shrunk.
        assert_eq!(cache.clear_count(), 0);
        let added = after_second.saturating_sub(after_first);
        assert!(
            added < 16 << 10,
            "the second body added {added} bytes of states to {after_first}"
        );
    }

    fn defaults() -> (Patterns, KeyRules) {
        let p = Patterns::compile(DEFAULT_PATTERNS, &[]).expect("built-ins compile");
        let k = KeyRules::new(
            DEFAULT_KEYS
                .iter()
                .filter_map(|k| KeyRule::parse(k))
                .collect(),
            DEFAULT_QUERY_KEYS
                .iter()
                .filter_map(|k| KeyRule::parse(k))
                .collect(),
            DEFAULT_ALLOW_NUMBER_KEYS
                .iter()
                .map(|k| normalize_key(k))
                .collect(),
        );
        (p, k)
    }

    fn redact(text: &str) -> (String, Vec<String>) {
        let (p, k) = defaults();
        let mut fired = Vec::new();
        let out = p
            .redact(text, "[REDACTED]", &k, &mut |n| fired.push(n.to_owned()))
            .unwrap_or_else(|| text.to_owned());
        (out, fired)
    }

    fn assert_redacted(text: &str, secret: &str, rule: &str) {
        let (out, fired) = redact(text);
        assert!(
            !out.contains(secret),
            "{rule}: {secret:?} survived in {out:?}"
        );
        assert!(out.contains("[REDACTED]"), "{out}");
        assert!(
            fired.iter().any(|f| f == rule),
            "{rule} did not fire: {fired:?}"
        );
    }

    fn assert_untouched(text: &str) {
        let (out, fired) = redact(text);
        assert_eq!(out, text, "changed by {fired:?}");
    }

    #[test]
    fn key_rules_match_case_and_separator_insensitively() {
        let (_, k) = defaults();
        for key in [
            "password",
            "Password",
            "PASS_WORD",
            "userPassword",
            "refreshToken",
            "refresh_token",
            "apiKey",
            "x-n8n-api-key",
            "X-API-Key",
            "client_secret",
            "authorization",
            "Proxy-Authorization",
            "cookie",
            "Set-Cookie",
            "secret",
            "token",
            "private_key",
            "credential",
            "credentials",
            "otp",
            "cvv",
            "X-Amz-Signature",
            "sig",
            "jsessionid",
        ] {
            assert!(k.find(&normalize_key(key), false).is_some(), "{key}");
        }
        for key in [
            "user",
            "workflowId",
            "executionId",
            "footprint",
            "monkey",
            "description",
            "code",
            "passenger",
            "spinner",
            "authorName",
        ] {
            assert!(k.find(&normalize_key(key), false).is_none(), "{key}");
        }
        assert!(k.find("code", true).is_some(), "code is secret in a query");
    }

    #[test]
    fn key_rule_shapes() {
        let r = KeyRule::parse("*Api-Key*").expect("rule");
        assert_eq!(r.name, "*apikey*");
        assert!(r.matches("myapikeyx"));
        let r = KeyRule::parse("ssn*").expect("rule");
        assert!(r.matches("ssnlast4") && !r.matches("myssn"));
        let r = KeyRule::parse("*ssn").expect("rule");
        assert!(r.matches("myssn") && !r.matches("ssnlast4"));
        assert!(KeyRule::parse("**").is_none());
        assert!(KeyRule::parse("a*b").is_none());
        assert!(KeyRule::parse("-").is_none());
    }

    #[test]
    fn jwt() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c";
        assert_redacted(&format!("token is {jwt} here"), jwt, "jwt");
        assert_redacted(jwt, "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c", "jwt");
        assert_untouched("eyJ is how base64 JSON starts");
        assert_untouched("eyJhbGciOiJIUzI1NiJ9 alone");
    }

    #[test]
    fn bearer_and_basic() {
        assert_redacted(
            "Authorization: Bearer abcDEF123456.xyz",
            "abcDEF123456",
            "bearer",
        );
        let (out, _) = redact("sent bearer abcdefghijkl to it");
        assert_eq!(out, "sent bearer [REDACTED] to it");
        assert_untouched("the bearer of bad news");
        // base64("aladdin:opensesame")
        assert_redacted(
            "Basic YWxhZGRpbjpvcGVuc2VzYW1l",
            "YWxhZGRpbjpvcGVuc2VzYW1l",
            "basic_auth",
        );
        assert_untouched("basic information about Basic plans");
    }

    #[test]
    fn pem_private_keys_even_unterminated() {
        let pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA1\nabcd\n-----END RSA PRIVATE KEY-----";
        assert_redacted(
            &format!("key:\n{pem}\nbye"),
            "MIIEpAIBAAKCAQEA1",
            "pem_private_key",
        );
        let (out, _) = redact(&format!("a {pem} b"));
        assert_eq!(out, "a [REDACTED] b");
        assert_redacted(
            "-----BEGIN OPENSSH PRIVATE KEY-----\\nb3BlbnNzaC1rZXkt",
            "b3BlbnNzaC1rZXkt",
            "pem_private_key",
        );
        assert_untouched("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
    }

    #[test]
    fn card_numbers_luhn_valid_only() {
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "4111-1111-1111-1111",
            "5555555555554444",
            "378282246310005",
            "3782 822463 10005",
            "6011111111111117",
        ] {
            assert_redacted(&format!("card {card}."), card, "card_number");
        }
        let (out, _) = redact("pay 4111 1111 1111 1111 now, order 12");
        assert_eq!(out, "pay [REDACTED] now, order 12");
        let (out, _) = redact("qty 12 4111111111111111");
        assert_eq!(out, "qty 12 [REDACTED]");
        // Negative controls: 16 digits failing Luhn, timestamps, UUIDs, decimals, ids.
        for text in [
            "4111111111111112",
            "1700000000000 ms",
            "1234567890123456",
            "12345678-1234-1234-1234-123456789012",
            "550e8400-e29b-41d4-a716-446655440000",
            "3.4111111111111111",
            "4111111111111111.5",
            "id_4111111111111111",
            "v4111111111111111",
            "execution 48213",
        ] {
            assert_untouched(text);
        }
    }

    #[test]
    fn aws_and_known_tokens() {
        assert_redacted(
            "key AKIAIOSFODNN7EXAMPLE ok",
            "AKIAIOSFODNN7EXAMPLE",
            "aws_access_key",
        );
        assert_untouched("AKIAIOSFODNN7EXAMPLEX is too long");
        assert_redacted(
            "ghp_0123456789abcdefghijABCDEFGHIJ012345",
            "ghp_0123456789",
            "api_token",
        );
        assert_redacted(
            "sk-proj-abcdefghij0123456789XYZ",
            "abcdefghij0123456789",
            "api_token",
        );
        assert_untouched("task-abcdefghij0123456789XYZ");
    }

    #[test]
    fn url_userinfo() {
        assert_redacted(
            "db at postgres://app:s3cr3t@db.internal:5432/x",
            "s3cr3t",
            "url_userinfo",
        );
        let (out, _) = redact("https://user:pw@example.com/path");
        assert_eq!(out, "https://[REDACTED]@example.com/path");
        assert_untouched("mail me at someone@example.com or https://example.com/a@b");
    }

    #[test]
    fn key_value_pairs_in_text() {
        let (out, _) = redact("user=bob&password=hunter2&x=1");
        assert_eq!(out, "user=bob&password=[REDACTED]&x=1");
        let (out, _) = redact(r#"{"user":"bob","apiKey":"k-123"}"#);
        assert_eq!(out, r#"{"user":"bob","apiKey":"[REDACTED]"}"#);
        let (out, _) = redact(r#"{\"password\":\"hunter2\",\"a\":1}"#);
        assert_eq!(out, r#"{\"password\":\"[REDACTED]\",\"a\":1}"#);
        let (out, _) = redact("Authorization: Bearer abcdefghijkl");
        assert_eq!(out, "Authorization: [REDACTED]");
        let (out, _) = redact("https://x.example/cb?code=abc&state=1");
        assert_eq!(out, "https://x.example/cb?code=[REDACTED]&state=1");
        let (out, _) = redact(r#"{"password":"unterminated"#);
        assert_eq!(out, r#"{"password":"[REDACTED]"#);
        assert_untouched("error code: 500, at 10:00:00, see https://example.com:8443/x");
        assert_untouched("total_tokens=1234");
    }

    #[test]
    fn permission_scopes_keep_their_meaning_and_secrets_do_not_hide_behind_them() {
        for scope in [
            "credential:create",
            "apiKey:manage",
            "credential:shareGlobally",
            r#"["credential:create","apiKey:manage","workflow:read"]"#,
            "scopes=credential:create apiKey:manage",
        ] {
            assert_untouched(scope);
        }
        for (text, want) in [
            ("password:hunter2", "password:[REDACTED]"),
            ("password: create", "password: [REDACTED]"),
            ("apiKey=manage", "apiKey=[REDACTED]"),
            (r#"{"apiKey":"manage"}"#, r#"{"apiKey":"[REDACTED]"}"#),
            ("token:createXyz123", "token:[REDACTED]"),
            ("apiKey:manage-k9s8d7f6", "apiKey:[REDACTED]"),
        ] {
            assert_eq!(redact(text).0, want, "{text}");
        }
    }

    #[test]
    fn redaction_is_idempotent_on_examples() {
        for text in [
            "Authorization: Bearer abcdefghijkl",
            "password=[REDACTED]",
            "https://[REDACTED]@example.com",
            "pay 4111 1111 1111 1111",
        ] {
            let (once, _) = redact(text);
            let (twice, fired) = redact(&once);
            assert_eq!(once, twice, "second pass fired {fired:?}");
        }
    }

    #[test]
    fn luhn() {
        assert!(luhn_valid(b"79927398713"));
        assert!(!luhn_valid(b"79927398710"));
    }
}
