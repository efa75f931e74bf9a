//! Pure functions deciding what of a body may be stored, and in what form.
//!
//! Storage form (DESIGN.md §2 "Payloads"): JSON bodies as JSON, form bodies as an object, text as
//! a JSON string, binary and still-encoded bodies as a small descriptor. Values under secret-looking
//! keys are replaced by `"[REDACTED]"` before anything is stored. A body that was cut at the
//! capture cap, or would not fit after conversion, becomes a text preview with a `_truncated`
//! indicator. Whatever the bytes are (NUL, invalid UTF-8, lone surrogates, absurd nesting) the
//! result is a value PostgreSQL's `jsonb` accepts; the bytes forwarded are never touched here.

use serde_json::{json, Map, Value};

/// Replacement for redacted values.
pub const REDACTED: &str = "[REDACTED]";

/// Room for the indicator object around a preview, beyond `max_payload_bytes`.
pub const MARKER_OVERHEAD: usize = 256;

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

/// Converts a captured body into its stored form; `None` for an empty body.
pub fn payload_for_storage(sample: BodySample<'_>, cap: usize) -> Option<Value> {
    if sample.bytes.is_empty() && !sample.cut {
        return None;
    }
    let ctype = sample
        .content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let encoding = sample
        .content_encoding
        .map(|e| e.trim().to_ascii_lowercase())
        .filter(|e| !e.is_empty() && e != "identity");
    if let Some(encoding) = encoding {
        // Still-encoded bytes could hide a secret from every rule: store only a descriptor.
        return Some(json!({ "_descriptor": {
            "content_type": sample.content_type,
            "content_encoding": encoding,
            "bytes": total(&sample),
        }}));
    }
    let textual = is_textual(&ctype);
    if !sample.cut {
        if (ctype.is_empty() || is_json_type(&ctype)) && looks_like_json(sample.bytes) {
            if let Ok(mut v) = serde_json::from_slice::<Value>(sample.bytes) {
                redact_json(&mut v);
                if serde_json::to_vec(&v)
                    .map(|b| b.len())
                    .unwrap_or(usize::MAX)
                    <= cap
                {
                    return Some(v);
                }
                let text = v.to_string();
                return Some(preview(&text, &sample, cap));
            }
        }
        if ctype == "application/x-www-form-urlencoded" {
            let v = form_object(sample.bytes);
            if v.to_string().len() <= cap {
                return Some(v);
            }
        }
    }
    match std::str::from_utf8(sample.bytes) {
        Ok(text) if textual || ctype.is_empty() || !text.contains('\0') => {
            Some(text_value(text, &sample, cap))
        }
        // Invalid UTF-8 (or a cut that split a sequence) in a textual body: stored lossily,
        // invalid bytes as U+FFFD.
        _ if textual => Some(text_value(
            &String::from_utf8_lossy(sample.bytes),
            &sample,
            cap,
        )),
        _ => Some(json!({ "_descriptor": {
            "content_type": sample.content_type,
            "bytes": total(&sample),
            "binary": true,
        }})),
    }
}

fn total(sample: &BodySample<'_>) -> Value {
    match sample.total_bytes {
        Some(n) => json!(n),
        None if !sample.cut => json!(sample.bytes.len()),
        None => Value::Null,
    }
}

/// Text as a JSON string, or a preview with the indicator when it was cut or does not fit.
fn text_value(text: &str, sample: &BodySample<'_>, cap: usize) -> Value {
    match fit_string(text, cap) {
        (s, true) if !sample.cut => Value::String(s),
        _ => preview(text, sample, cap),
    }
}

fn preview(text: &str, sample: &BodySample<'_>, cap: usize) -> Value {
    let (s, _) = fit_string(text, cap);
    json!({
        "_truncated": {
            "original_bytes": total(sample),
            "stored_chars": s.chars().count(),
            "limit_bytes": cap,
        },
        "preview": s,
    })
}

fn is_json_type(ctype: &str) -> bool {
    ctype == "application/json" || ctype.ends_with("+json") || ctype == "text/json"
}

fn is_textual(ctype: &str) -> bool {
    ctype.starts_with("text/")
        || is_json_type(ctype)
        || ctype.ends_with("+xml")
        || matches!(
            ctype,
            "application/xml" | "application/x-www-form-urlencoded" | "application/javascript"
        )
}

fn looks_like_json(bytes: &[u8]) -> bool {
    matches!(
        bytes.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[' | b'"') | Some(b'0'..=b'9' | b'-' | b't' | b'f' | b'n')
    )
}

/// Form fields as an object; a repeated field becomes an array. Secret-looking fields redacted.
fn form_object(bytes: &[u8]) -> Value {
    let mut map = Map::new();
    for (k, v) in form_urlencoded::parse(bytes) {
        let key = clean_str(&k);
        let value = if is_secret_key(&key) {
            Value::String(REDACTED.into())
        } else {
            Value::String(clean_str(&v))
        };
        match map.get_mut(&key) {
            Some(Value::Array(items)) => items.push(value),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, value]);
            }
            None => {
                map.insert(key, value);
            }
        }
    }
    Value::Object(map)
}

/// Redacts values under secret-looking keys, at any depth, and makes every string storable.
pub fn redact_json(v: &mut Value) {
    match v {
        Value::Object(map) => {
            let entries = std::mem::take(map);
            for (k, mut val) in entries {
                let key = clean_str(&k);
                if is_secret_key(&key) && !val.is_null() {
                    val = Value::String(REDACTED.into());
                } else {
                    redact_json(&mut val);
                }
                map.insert(key, val);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_json),
        Value::String(s) if s.contains('\0') => *s = clean_str(s),
        _ => {}
    }
}

/// A request target (path and query) as stored: values of secret-looking query parameters are
/// replaced, everything else is kept as received.
pub fn redact_target(path: &str, query: Option<&str>) -> String {
    let Some(query) = query else {
        return path.to_owned();
    };
    let mut out = String::with_capacity(path.len() + 1 + query.len());
    out.push_str(path);
    out.push('?');
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        let (raw_key, has_value) = match pair.split_once('=') {
            Some((k, _)) => (k, true),
            None => (pair, false),
        };
        let key: String = form_urlencoded::parse(raw_key.as_bytes())
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default();
        if has_value && is_secret_key(&key) {
            out.push_str(raw_key);
            out.push_str("=%5BREDACTED%5D");
        } else {
            out.push_str(pair);
        }
    }
    out
}

/// PostgreSQL `jsonb` rejects `\u0000`; it is stored as U+FFFD.
fn clean_str(s: &str) -> String {
    s.replace('\0', "\u{FFFD}")
}

/// Case- and separator-insensitive match against the built-in secret key list.
pub fn is_secret_key(key: &str) -> bool {
    let norm: String = key
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    const CONTAINS: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "apikey",
        "authorization",
        "cookie",
        "privatekey",
        "credential",
        "sessionid",
        "cardnumber",
    ];
    const EXACT: &[&str] = &[
        "pass",
        "pwd",
        "otp",
        "cvv",
        "cvc",
        "pin",
        "auth",
        "key",
        "signature",
        "sig",
    ];
    CONTAINS.iter().any(|s| norm.contains(s)) || EXACT.contains(&norm.as_str())
}

/// The longest prefix of `s` whose JSON encoding fits in `budget` bytes, with NULs replaced.
/// Returns whether the whole string fit.
pub fn fit_string(s: &str, budget: usize) -> (String, bool) {
    let mut used = 2; // quotes
    let mut out = String::with_capacity(s.len().min(budget));
    for c in s.chars() {
        let c = if c == '\0' { '\u{FFFD}' } else { c };
        let cost = match c {
            '"' | '\\' | '\n' | '\r' | '\t' | '\u{08}' | '\u{0C}' => 2,
            c if (c as u32) < 0x20 => 6,
            c => c.len_utf8(),
        };
        if used + cost > budget {
            return (out, false);
        }
        used += cost;
        out.push(c);
    }
    (out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(bytes: &'a [u8], ctype: Option<&'a str>) -> BodySample<'a> {
        BodySample {
            bytes,
            total_bytes: Some(bytes.len() as u64),
            cut: false,
            content_type: ctype,
            content_encoding: None,
        }
    }

    fn stored(bytes: &[u8], ctype: Option<&str>) -> Value {
        payload_for_storage(sample(bytes, ctype), 1024).expect("non-empty")
    }

    #[test]
    fn json_is_stored_as_json_with_secrets_redacted_at_any_depth() {
        let v = stored(
            br#"{"user":"a","Password":"hunter2","items":[{"refresh_token":"r1","n":1}],"auth":{"apiKey":"k"}}"#,
            Some("application/json; charset=utf-8"),
        );
        assert_eq!(v["user"], "a");
        assert_eq!(v["Password"], REDACTED);
        assert_eq!(v["items"][0]["refresh_token"], REDACTED);
        assert_eq!(v["items"][0]["n"], 1);
        assert_eq!(v["auth"], REDACTED);
        assert!(!v.to_string().contains("hunter2"));
    }

    #[test]
    fn nul_in_json_string_is_replaced() {
        let v = stored(br#"{"a":"x\u0000y"}"#, Some("application/json"));
        assert_eq!(v["a"], "x\u{FFFD}y");
    }

    #[test]
    fn lone_surrogate_json_falls_back_to_text() {
        let v = stored(br#"{"a":"\ud800"}"#, Some("application/json"));
        assert_eq!(v, Value::String(r#"{"a":"\ud800"}"#.into()));
    }

    #[test]
    fn absurd_nesting_is_stored_as_text() {
        let deep = "[".repeat(10_000);
        let v = payload_for_storage(sample(deep.as_bytes(), Some("application/json")), 65_536)
            .expect("stored");
        assert!(v.is_string());
    }

    #[test]
    fn invalid_utf8_text_is_stored_lossily() {
        let v = stored(b"ab\xff\xfecd", Some("text/plain"));
        assert_eq!(v, Value::String("ab\u{FFFD}\u{FFFD}cd".into()));
    }

    #[test]
    fn binary_becomes_a_descriptor() {
        let v = stored(&[0u8, 1, 2, 255], Some("application/octet-stream"));
        assert_eq!(v["_descriptor"]["bytes"], 4);
    }

    #[test]
    fn form_body_becomes_an_object() {
        let v = stored(
            b"a=1&a=2&password=x&b=%00",
            Some("application/x-www-form-urlencoded"),
        );
        assert_eq!(
            v,
            json!({"a": ["1", "2"], "password": REDACTED, "b": "\u{FFFD}"})
        );
    }

    #[test]
    fn cut_body_becomes_preview_with_indicator() {
        let body = br#"{"a":"0123456789"#;
        let v = payload_for_storage(
            BodySample {
                bytes: body,
                total_bytes: Some(1000),
                cut: true,
                content_type: Some("application/json"),
                content_encoding: None,
            },
            1024,
        )
        .expect("stored");
        assert_eq!(v["_truncated"]["original_bytes"], 1000);
        assert_eq!(v["preview"], r#"{"a":"0123456789"#);
    }

    #[test]
    fn encoded_body_is_a_descriptor() {
        let v = payload_for_storage(
            BodySample {
                content_encoding: Some("gzip"),
                ..sample(b"\x1f\x8b\x08", Some("application/json"))
            },
            1024,
        )
        .expect("stored");
        assert_eq!(v["_descriptor"]["content_encoding"], "gzip");
    }

    #[test]
    fn stored_text_never_exceeds_cap_even_when_escaping_grows_it() {
        let ctrl = "\u{1}".repeat(1000);
        let v =
            payload_for_storage(sample(ctrl.as_bytes(), Some("text/plain")), 600).expect("stored");
        assert!(
            v.to_string().len() <= 600 + MARKER_OVERHEAD,
            "{}",
            v.to_string().len()
        );
        assert!(v.get("_truncated").is_some());
    }

    #[test]
    fn target_query_secrets_are_redacted() {
        assert_eq!(
            redact_target("/w", Some("a=1&token=abc&b")),
            "/w?a=1&token=%5BREDACTED%5D&b"
        );
        assert_eq!(redact_target("/w", None), "/w");
    }

    #[test]
    fn secret_key_matching_is_case_and_separator_insensitive() {
        for k in [
            "password",
            "PASS_WORD",
            "userPassword",
            "refreshToken",
            "x-n8n-api-key",
            "client_secret",
            "Cookie",
            "otp",
            "cvv",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "user",
            "workflowId",
            "executionId",
            "footprint",
            "monkey",
            "description",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
