//! A captured body → its stored form (DESIGN.md §2 "Payloads"), redacted, then truncated.
//!
//! JSON as JSON; `application/x-www-form-urlencoded` and `multipart/form-data` as objects
//! (repeated fields as arrays, files described); text as a JSON string; binary as a descriptor.
//! `Content-Encoding` is decoded first (under `max_decoded_bytes`). A body cut at the capture
//! cap is parsed as far as it goes (a JSON prefix keeps its structure), its partial last token
//! dropped. Redaction runs on the whole of that; only then is the result fitted to the cap:
//! structure kept where possible, a text preview otherwise, with a `_truncated` indicator.

use serde_json::{json, Map, Value};

use super::lenient::{parse_prefix, scrub_tail};
use super::redact::Walker;
use super::truncate::{self, Cuts};
use super::{decode, multipart, BodySample, Redactions, Sanitizer, Stored};

/// Room for the indicator around a stored payload, beyond `max_payload_bytes`.
pub const MARKER_OVERHEAD: usize = 320;

/// How a payload was fitted.
enum Fitted {
    /// Stored as is.
    Whole(Value),
    /// Shortened structure.
    Structure(Value, Cuts),
    /// Text preview.
    Preview(String),
}

pub(crate) struct Body<'a> {
    s: &'a Sanitizer,
    sample: BodySample<'a>,
    cap: usize,
    found: Redactions,
    /// Cut before it could be parsed whole (capture cap or decode cap).
    cut: bool,
}

impl Sanitizer {
    /// The stored form of a captured body, with the redactions that fired; `value` is `None`
    /// for an empty body. Never fails and never panics, whatever the bytes.
    pub fn payload(&self, sample: BodySample<'_>, cap: usize) -> Stored {
        let mut body = Body {
            s: self,
            sample,
            cap,
            found: Redactions::default(),
            cut: sample.cut,
        };
        let (value, truncated) = match body.stored() {
            Some((v, t)) => (Some(v), t),
            None => (None, false),
        };
        Stored {
            value,
            redactions: body.found,
            truncated,
        }
    }
}

/// The media type without parameters, lowercase.
fn essence(content_type: Option<&str>) -> String {
    content_type
        .map(|c| {
            c.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
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
            "application/xml"
                | "application/x-www-form-urlencoded"
                | "application/javascript"
                | "application/x-ndjson"
                | "application/graphql"
        )
}

fn looks_like_json(bytes: &[u8]) -> bool {
    matches!(
        bytes.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[' | b'"') | Some(b'0'..=b'9' | b'-' | b't' | b'f' | b'n')
    )
}

impl Body<'_> {
    /// (stored value, truncated?); `None` for an empty body.
    fn stored(&mut self) -> Option<(Value, bool)> {
        let sample = self.sample;
        if sample.bytes.is_empty() && !sample.cut {
            return None;
        }
        let ctype = essence(sample.content_type);
        let encoding = sample
            .content_encoding
            .map(|e| e.trim().to_ascii_lowercase())
            .filter(|e| !e.is_empty() && e != "identity");
        let decoded;
        let mut bytes = sample.bytes;
        if let Some(encoding) = &encoding {
            match decode::decode(encoding, bytes, self.s.max_decoded_bytes) {
                Ok((out, incomplete)) => {
                    self.cut |= incomplete;
                    decoded = out;
                    bytes = &decoded;
                }
                Err(reason) => {
                    return Some((
                        self.descriptor(json!({"content_encoding": encoding, "reason": reason})),
                        false,
                    ));
                }
            }
            if bytes.is_empty() && !self.cut {
                return None;
            }
        }

        if (ctype.is_empty() || is_json_type(&ctype)) && looks_like_json(bytes) {
            if !self.cut {
                if let Ok(v) = serde_json::from_slice::<Value>(bytes) {
                    return Some(self.structured(v, false));
                }
            } else if let Some(v) = parse_prefix(&String::from_utf8_lossy(bytes)) {
                return Some(self.structured(v, false));
            }
        }
        if ctype == "application/x-www-form-urlencoded" {
            let v = form_object(bytes, self.cut);
            return Some(self.structured(v, true));
        }
        if ctype == "multipart/form-data" {
            let parsed = sample
                .content_type
                .and_then(multipart::boundary)
                .and_then(|b| multipart::parse(bytes, &b, self.cut));
            return Some(match parsed {
                Some(v) => self.structured(v, true),
                // Fields that cannot be told apart cannot be redacted by name.
                None => (self.descriptor(json!({"multipart": "unparseable"})), false),
            });
        }
        let textual = is_textual(&ctype);
        if !is_json_type(&ctype) {
            if let Some(v) = self.mislabelled_json(bytes) {
                return Some(v);
            }
        }
        match std::str::from_utf8(bytes) {
            Ok(text) if textual || ctype.is_empty() || !text.contains('\0') => {
                Some(self.text(text.to_owned()))
            }
            // A cut may split a UTF-8 sequence; invalid bytes in text are stored as U+FFFD.
            Err(e) if textual || (self.cut && e.error_len().is_none()) => {
                Some(self.text(String::from_utf8_lossy(bytes).into_owned()))
            }
            _ => Some((self.descriptor(json!({"binary": true})), false)),
        }
    }

    /// A whole body labelled as something else (n8n answers "Respond immediately" webhooks as
    /// `text/html`) that parses as a JSON object or array: stored as JSON, an object noting the
    /// declared type in `_content_type`.
    fn mislabelled_json(&mut self, bytes: &[u8]) -> Option<(Value, bool)> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if self.cut || !matches!(first, Some(b'{' | b'[')) {
            return None;
        }
        let v = serde_json::from_slice::<Value>(bytes).ok()?;
        let (mut v, truncated) = self.structured(v, false);
        if let Value::Object(m) = &mut v {
            m.insert("_content_type".into(), json!(self.sample.content_type));
        }
        Some((v, truncated))
    }

    fn original_bytes(&self) -> Value {
        match self.sample.total_bytes {
            Some(n) => json!(n),
            None if !self.sample.cut => json!(self.sample.bytes.len()),
            None => Value::Null,
        }
    }

    /// `{"_descriptor": {content_type, bytes, …extra}}`, pattern-checked like any stored text.
    fn descriptor(&mut self, extra: Value) -> Value {
        let mut d = json!({
            "content_type": self.sample.content_type,
            "bytes": self.original_bytes(),
        });
        if let (Value::Object(d), Value::Object(extra)) = (&mut d, extra) {
            d.extend(extra);
        }
        let mut v = json!({ "_descriptor": d });
        Walker::new(self.s, &mut self.found, "$").value(&mut v);
        v
    }

    /// A parsed value: redacted whole, then fitted.
    fn structured(&mut self, mut v: Value, form: bool) -> (Value, bool) {
        let mut w = Walker::new(self.s, &mut self.found, "$");
        w.query_keys = form;
        w.value(&mut v);
        let fitted = if !self.cut && truncate::fits(&v, self.cap) {
            Fitted::Whole(v)
        } else {
            match truncate::fit(&v, self.cap) {
                Some((t, cuts)) => Fitted::Structure(t, cuts),
                // Even the skeleton is too large: a preview of the redacted serialization.
                None => Fitted::Preview(v.to_string()),
            }
        };
        self.finish(fitted)
    }

    /// A text body: redacted as a string (JSON inside it included), then fitted.
    fn text(&mut self, mut text: String) -> (Value, bool) {
        if self.cut {
            scrub_tail(&mut text);
        }
        let mut w = Walker::new(self.s, &mut self.found, "$");
        let text = w.string(&text).unwrap_or(text);
        let v = Value::String(text);
        if !self.cut && truncate::fits(&v, self.cap) {
            return self.finish(Fitted::Whole(v));
        }
        match v {
            Value::String(text) => self.finish(Fitted::Preview(text)),
            other => self.finish(Fitted::Whole(other)),
        }
    }

    /// Adds the `_truncated` indicator where something was cut or shortened.
    fn finish(&self, fitted: Fitted) -> (Value, bool) {
        let mut indicator = Map::new();
        indicator.insert("original_bytes".into(), self.original_bytes());
        indicator.insert("limit_bytes".into(), json!(self.cap));
        indicator.insert("cut".into(), json!(self.cut));
        match fitted {
            Fitted::Whole(v) => (v, false),
            Fitted::Preview(text) => {
                let (s, _) = fit_string(&text, self.cap);
                indicator.insert("kind".into(), json!("preview"));
                indicator.insert("stored_chars".into(), json!(s.chars().count()));
                (
                    json!({ "_truncated": Value::Object(indicator), "preview": s }),
                    true,
                )
            }
            Fitted::Structure(v, cuts) => {
                indicator.insert("kind".into(), json!("structure"));
                indicator.insert(
                    "stored_bytes".into(),
                    json!(serde_json::to_vec(&v).map(|b| b.len()).unwrap_or(0)),
                );
                for (k, n) in [
                    ("strings_shortened", cuts.strings_shortened),
                    ("items_dropped", cuts.items_dropped),
                    ("keys_dropped", cuts.keys_dropped),
                ] {
                    if n > 0 {
                        indicator.insert(k.into(), json!(n));
                    }
                }
                let indicator = Value::Object(indicator);
                match v {
                    // In place, so `payload->'field'` queries keep working.
                    Value::Object(mut map) if !map.contains_key("_truncated") => {
                        map.insert("_truncated".into(), indicator);
                        (Value::Object(map), true)
                    }
                    other => (json!({ "_truncated": indicator, "value": other }), true),
                }
            }
        }
    }
}

/// Form fields as an object; a repeated field becomes an array. The last field of a cut body
/// loses its partial last token (or the whole field when its name was cut).
fn form_object(bytes: &[u8], cut: bool) -> Value {
    let mut pairs: Vec<(String, String)> = form_urlencoded::parse(bytes)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if cut {
        let last_raw = bytes.rsplit(|b| *b == b'&').next().unwrap_or_default();
        if !last_raw.contains(&b'=') {
            pairs.pop();
        } else if let Some((_, v)) = pairs.last_mut() {
            scrub_tail(v);
        }
    }
    let mut map = Map::new();
    for (key, value) in pairs {
        let value = Value::String(value);
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

/// The longest prefix of `s` whose JSON encoding fits in `budget` bytes, with NULs replaced.
/// Returns whether the whole string fit.
pub fn fit_string(s: &str, budget: usize) -> (String, bool) {
    let mut used = 2; // quotes
    let mut out = String::with_capacity(s.len().min(budget));
    for c in s.chars() {
        let c = if c == '\0' { '\u{FFFD}' } else { c };
        let cost = truncate::escaped_len(c);
        if used + cost > budget {
            return (out, false);
        }
        used += cost;
        out.push(c);
    }
    (out, true)
}
