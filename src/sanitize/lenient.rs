//! Bodies cut at the capture cap: a JSON prefix is parsed into the structure it shows (open
//! objects and arrays closed, the incomplete last token dropped), so the same key rules apply
//! as to a whole body; and the tail of a cut text loses its last partial token, which could be
//! the first half of a secret no pattern recognizes any more.

use serde_json::{Map, Number, Value};

/// Deeper than this the prefix is not parsed (the caller stores a text preview).
const MAX_DEPTH: usize = 128;

/// Parses a JSON text cut anywhere. `None` when it is not JSON (a syntax error before the cut)
/// or nests too deep.
pub(super) fn parse_prefix(text: &str) -> Option<Value> {
    let mut p = Parser {
        s: text.as_bytes(),
        src: text,
        i: 0,
    };
    let v = match p.value(0)? {
        Step::Done(v) => {
            p.ws();
            if p.i < p.s.len() {
                return None;
            }
            v
        }
        Step::Cut(Some(v)) => v,
        Step::Cut(None) => return None,
    };
    Some(v)
}

enum Step {
    /// A complete value.
    Done(Value),
    /// The text ended inside; what of the value could be kept.
    Cut(Option<Value>),
}

struct Parser<'a> {
    s: &'a [u8],
    src: &'a str,
    i: usize,
}

impl Parser<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && matches!(self.s[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Option<Step> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.ws();
        let Some(&b) = self.s.get(self.i) else {
            return Some(Step::Cut(None));
        };
        match b {
            b'{' => self.object(depth),
            b'[' => self.array(depth),
            b'"' => Some(match self.string() {
                Step::Cut(Some(Value::String(mut s))) => {
                    scrub_tail(&mut s);
                    Step::Cut(Some(Value::String(s)))
                }
                other => other,
            }),
            b't' => self.literal("true", Value::Bool(true)),
            b'f' => self.literal("false", Value::Bool(false)),
            b'n' => self.literal("null", Value::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &str, v: Value) -> Option<Step> {
        let rest = &self.s[self.i..];
        let w = word.as_bytes();
        if rest.len() < w.len() {
            return w.starts_with(rest).then_some(Step::Cut(None));
        }
        if &rest[..w.len()] != w {
            return None;
        }
        self.i += w.len();
        Some(Step::Done(v))
    }

    fn number(&mut self) -> Option<Step> {
        let start = self.i;
        while self.i < self.s.len()
            && matches!(
                self.s[self.i],
                b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
            )
        {
            self.i += 1;
        }
        if self.i == self.s.len() {
            // Possibly only the first digits of a longer number (or card number): dropped.
            return Some(Step::Cut(None));
        }
        let n: Number = serde_json::from_str(&self.src[start..self.i]).ok()?;
        Some(Step::Done(Value::Number(n)))
    }

    /// A string; on a cut, the part read so far.
    fn string(&mut self) -> Step {
        self.i += 1; // the opening quote
        let mut out = String::new();
        loop {
            // Copy a run of plain characters at once.
            let run = self.s[self.i..]
                .iter()
                .position(|b| *b == b'"' || *b == b'\\')
                .map_or(self.s.len(), |p| self.i + p);
            out.push_str(&self.src[self.i..run]);
            self.i = run;
            match self.s.get(self.i) {
                None => return Step::Cut(Some(Value::String(out))),
                Some(b'"') => {
                    self.i += 1;
                    return Step::Done(Value::String(out));
                }
                Some(_) => {
                    let Some(e) = self.src[self.i + 1..].chars().next() else {
                        return Step::Cut(Some(Value::String(out)));
                    };
                    self.i += 1 + e.len_utf8();
                    match e {
                        '"' => out.push('"'),
                        '\\' => out.push('\\'),
                        '/' => out.push('/'),
                        'b' => out.push('\u{08}'),
                        'f' => out.push('\u{0C}'),
                        'n' => out.push('\n'),
                        'r' => out.push('\r'),
                        't' => out.push('\t'),
                        'u' => match self.unicode_escape() {
                            Some(c) => out.push(c),
                            None => return Step::Cut(Some(Value::String(out))),
                        },
                        // Not JSON, but keep going: the text is stored either way.
                        _ => out.push('\u{FFFD}'),
                    }
                }
            }
        }
    }

    /// After `\u`: the character (lone surrogates as U+FFFD); `None` when the text ends.
    fn unicode_escape(&mut self) -> Option<char> {
        let first = self.hex4()?;
        if !(0xD800..0xDC00).contains(&first) {
            return Some(char::from_u32(first).unwrap_or('\u{FFFD}'));
        }
        if self.s.len() < self.i + 2 {
            return None;
        }
        if &self.s[self.i..self.i + 2] != b"\\u" {
            return Some('\u{FFFD}');
        }
        self.i += 2;
        let second = self.hex4()?;
        if !(0xDC00..0xE000).contains(&second) {
            return Some('\u{FFFD}');
        }
        char::from_u32(0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)).or(Some('\u{FFFD}'))
    }

    /// Four hex digits; `None` when the text ends first. Anything else than hex digits is
    /// left unread and reads as U+FFFD.
    fn hex4(&mut self) -> Option<u32> {
        let mut v = 0u32;
        for k in 0..4 {
            match self.s.get(self.i + k) {
                None => return None,
                Some(d) => match (*d as char).to_digit(16) {
                    Some(x) => v = v * 16 + x,
                    None => return Some(0xFFFD),
                },
            }
        }
        self.i += 4;
        Some(v)
    }

    fn array(&mut self, depth: usize) -> Option<Step> {
        self.i += 1;
        let mut items = Vec::new();
        loop {
            self.ws();
            match self.s.get(self.i) {
                None => return Some(Step::Cut(Some(Value::Array(items)))),
                Some(b']') => {
                    self.i += 1;
                    return Some(Step::Done(Value::Array(items)));
                }
                _ => {}
            }
            match self.value(depth + 1)? {
                Step::Done(v) => items.push(v),
                Step::Cut(v) => {
                    items.extend(v);
                    return Some(Step::Cut(Some(Value::Array(items))));
                }
            }
            self.ws();
            match self.s.get(self.i) {
                None => return Some(Step::Cut(Some(Value::Array(items)))),
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Some(Step::Done(Value::Array(items)));
                }
                Some(_) => return None,
            }
        }
    }

    fn object(&mut self, depth: usize) -> Option<Step> {
        self.i += 1;
        let mut map = Map::new();
        loop {
            self.ws();
            match self.s.get(self.i) {
                None => return Some(Step::Cut(Some(Value::Object(map)))),
                Some(b'}') => {
                    self.i += 1;
                    return Some(Step::Done(Value::Object(map)));
                }
                Some(b'"') => {}
                Some(_) => return None,
            }
            let key = match self.string() {
                Step::Done(Value::String(k)) => k,
                // A key cut in half: dropped.
                _ => return Some(Step::Cut(Some(Value::Object(map)))),
            };
            self.ws();
            match self.s.get(self.i) {
                None => return Some(Step::Cut(Some(Value::Object(map)))),
                Some(b':') => self.i += 1,
                Some(_) => return None,
            }
            match self.value(depth + 1)? {
                Step::Done(v) => {
                    map.insert(key, v);
                }
                Step::Cut(v) => {
                    // The key stays even when its value was cut away, so key rules still
                    // see it: a cut secret is redacted like a whole one.
                    map.insert(key, v.unwrap_or(Value::String(String::new())));
                    return Some(Step::Cut(Some(Value::Object(map))));
                }
            }
            self.ws();
            match self.s.get(self.i) {
                None => return Some(Step::Cut(Some(Value::Object(map)))),
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Some(Step::Done(Value::Object(map)));
                }
                Some(_) => return None,
            }
        }
    }
}

/// Characters a token (key, password, JWT, card group) is made of.
fn is_token_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '+' | '/' | '=' | '_' | '.' | '~' | '-' | '%' | '$' | '!')
}

/// Drops the last partial token of a cut text, and a trailing run of digit groups that could
/// be the first digits of a card number. Returns whether anything was dropped.
pub(super) fn scrub_tail(s: &mut String) -> bool {
    let before = s.len();
    let keep = s.trim_end_matches(is_token_char).len();
    let t = &s[..keep];
    let groups = t.trim_end_matches(|c: char| c.is_ascii_digit() || c == ' ' || c == '-');
    let digits = t[groups.len()..].bytes().filter(u8::is_ascii_digit).count();
    let keep = if digits >= 6 { groups.len() } else { keep };
    s.truncate(keep);
    s.len() < before
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn closes_open_structures_and_drops_the_partial_token() {
        assert_eq!(
            parse_prefix(r#"{"a":1,"b":[true,{"c":"hello wor"#),
            Some(json!({"a": 1, "b": [true, {"c": "hello "}]}))
        );
        assert_eq!(parse_prefix(r#"{"a":12"#), Some(json!({"a": ""})));
        assert_eq!(parse_prefix(r#"{"a":tr"#), Some(json!({"a": ""})));
        assert_eq!(parse_prefix(r#"{"passw"#), Some(json!({})));
        assert_eq!(parse_prefix(r#"[1,2,"#), Some(json!([1, 2])));
        assert_eq!(
            parse_prefix(r#"{"password":"hunter2 and more"#),
            Some(json!({"password": "hunter2 and "}))
        );
        assert_eq!(
            parse_prefix(r#"{"s":"a\u00e9\ud83d\ude00\n\u12"#),
            Some(json!({"s": "aé😀\n"}))
        );
    }

    #[test]
    fn complete_json_parses_too() {
        assert_eq!(parse_prefix(r#" {"a":[1,2]} "#), Some(json!({"a": [1, 2]})));
    }

    #[test]
    fn not_json_is_none() {
        assert_eq!(parse_prefix("{a:1"), None);
        assert_eq!(parse_prefix(r#"{"a" 1"#), None);
        assert_eq!(parse_prefix("hello"), None);
        assert_eq!(parse_prefix(&"[".repeat(1000)), None);
        assert_eq!(parse_prefix(r#"{"a":1} x"#), None);
    }

    #[test]
    fn tail_scrub() {
        let mut s = "note: token is ghp_abc".to_owned();
        assert!(scrub_tail(&mut s));
        assert_eq!(s, "note: token is ");
        let mut s = "card 4111 1111 1111 11".to_owned();
        scrub_tail(&mut s);
        assert_eq!(s, "card");
        let mut s = "ends with space ".to_owned();
        assert!(!scrub_tail(&mut s));
    }
}
