//! `multipart/form-data` (RFC 7578) read from a byte slice, possibly cut: each field becomes a
//! member of an object, so the key rules apply to field names as to JSON keys. Files are never
//! stored, only described (name, type, size). A small parser rather than a streaming crate:
//! the body is already in memory, at most the capture cap, and this one cannot panic on any
//! input (property-tested) nor allocate beyond the input's size.

use memchr::memmem;
use serde_json::{json, Map, Value};

use super::lenient::scrub_tail;

/// The boundary parameter of a `multipart/*` content type.
pub(super) fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (k, v) = param.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= 200).then(|| v.to_owned())
    })
}

/// The fields as an object (repeated names become arrays); `None` when the body is not
/// multipart with this boundary.
pub(super) fn parse(body: &[u8], boundary: &str, cut: bool) -> Option<Value> {
    let delim = format!("--{boundary}");
    let finder = memmem::Finder::new(delim.as_bytes());
    let next_delim = format!("\r\n--{boundary}");
    let next_finder = memmem::Finder::new(next_delim.as_bytes());
    let mut pos = finder.find(body)? + delim.len();
    let mut fields = Map::new();
    loop {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            break; // the closing delimiter
        }
        let Some(line_end) = memmem::find(rest, b"\r\n") else {
            if cut {
                break;
            }
            return None;
        };
        let part = &rest[line_end + 2..];
        let (end, complete) = match next_finder.find(part) {
            Some(e) => (e, true),
            None if cut => (part.len(), false),
            None => return None,
        };
        let part = &part[..end];
        let Some(head_end) = memmem::find(part, b"\r\n\r\n") else {
            if complete {
                return None;
            }
            break; // headers cut: nothing of this part is known
        };
        let headers = String::from_utf8_lossy(&part[..head_end]);
        let content = &part[head_end + 4..];
        let (name, value) = field(&headers, content, complete);
        add(&mut fields, name, value);
        if !complete {
            break;
        }
        pos += line_end + 2 + end + next_delim.len();
    }
    Some(Value::Object(fields))
}

fn add(fields: &mut Map<String, Value>, name: String, value: Value) {
    match fields.get_mut(&name) {
        Some(Value::Array(items)) => items.push(value),
        Some(existing) => {
            let first = existing.take();
            *existing = Value::Array(vec![first, value]);
        }
        None => {
            fields.insert(name, value);
        }
    }
}

/// One part: its field name and stored value.
fn field(headers: &str, content: &[u8], complete: bool) -> (String, Value) {
    let mut name = None;
    let mut filename = None;
    let mut ctype = None;
    for line in headers.split("\r\n") {
        let Some((h, v)) = line.split_once(':') else {
            continue;
        };
        let h = h.trim();
        if h.eq_ignore_ascii_case("content-disposition") {
            name = param(v, "name");
            filename = param(v, "filename*")
                .map(|f| percent_decode(f.rsplit('\'').next().unwrap_or_default()))
                .or_else(|| param(v, "filename"));
        } else if h.eq_ignore_ascii_case("content-type") {
            ctype = Some(v.trim().to_owned());
        }
    }
    let name = name.unwrap_or_else(|| "_unnamed".to_owned());
    let textual = ctype.as_deref().is_none_or(|c| {
        let c = c.to_ascii_lowercase();
        c.starts_with("text/") || c.starts_with("application/json") || c.ends_with("+json")
    });
    if filename.is_some() || !textual {
        // Files (and binary fields) are described, never stored: their content is unknown.
        let mut d = json!({ "content_type": ctype, "bytes": content.len() });
        if let Some(f) = filename {
            d["filename"] = Value::String(f);
        }
        if !complete {
            d["cut"] = Value::Bool(true);
        }
        return (name, json!({ "_file": d }));
    }
    let mut text = String::from_utf8_lossy(content).into_owned();
    if !complete {
        scrub_tail(&mut text);
    }
    let is_json = ctype
        .as_deref()
        .is_some_and(|c| c.to_ascii_lowercase().contains("json"));
    let value = match is_json.then(|| serde_json::from_str::<Value>(&text)) {
        Some(Ok(v)) => v,
        _ => Value::String(text),
    };
    (name, value)
}

/// A `Content-Disposition` parameter, quoted or not.
fn param(header: &str, want: &str) -> Option<String> {
    let mut rest = header;
    while let Some(semi) = rest.find(';') {
        rest = rest[semi + 1..].trim_start();
        let eq = rest.find('=')?;
        let key = rest[..eq].trim();
        let after = &rest[eq + 1..];
        let (value, used) = if let Some(q) = after.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = q.char_indices();
            let mut end = q.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, e)) = chars.next() {
                            v.push(e);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            (v, 1 + end)
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().to_owned(), end)
        };
        if key.eq_ignore_ascii_case(want) {
            return Some(value);
        }
        rest = &after[used.min(after.len())..];
    }
    None
}

fn percent_decode(s: &str) -> String {
    form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &str = "preamble\r\n--XyZ\r\n\
        Content-Disposition: form-data; name=\"user\"\r\n\r\n\
        bob\r\n--XyZ\r\n\
        Content-Disposition: form-data; name=\"password\"\r\n\r\n\
        hunter2\r\n--XyZ\r\n\
        Content-Disposition: form-data; name=\"meta\"\r\nContent-Type: application/json\r\n\r\n\
        {\"token\":\"t1\",\"n\":1}\r\n--XyZ\r\n\
        Content-Disposition: form-data; name=\"file\"; filename=\"a \\\"b\\\".txt\"\r\nContent-Type: text/plain\r\n\r\n\
        secret file content\r\n--XyZ--\r\n";

    #[test]
    fn fields_become_an_object_files_a_description() {
        let v = parse(BODY.as_bytes(), "XyZ", false).expect("multipart");
        assert_eq!(v["user"], "bob");
        assert_eq!(v["password"], "hunter2");
        assert_eq!(v["meta"], json!({"token": "t1", "n": 1}));
        assert_eq!(v["file"]["_file"]["filename"], "a \"b\".txt");
        assert_eq!(v["file"]["_file"]["bytes"], 19);
        assert!(!v.to_string().contains("secret file content"));
    }

    #[test]
    fn cut_body_keeps_the_complete_parts() {
        let cut_at = BODY.find("hunter2").expect("present") + 4;
        let v = parse(&BODY.as_bytes()[..cut_at], "XyZ", true).expect("multipart");
        assert_eq!(v["user"], "bob");
        assert_eq!(v["password"], "", "partial value scrubbed");
        assert!(parse(&BODY.as_bytes()[..cut_at], "XyZ", false).is_none());
    }

    #[test]
    fn boundary_and_params() {
        assert_eq!(
            boundary("multipart/form-data; boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(
            param(" form-data; name=\"x;y\"; filename=z", "filename").as_deref(),
            Some("z")
        );
        assert_eq!(
            param(" form-data; name=\"x;y\"", "name").as_deref(),
            Some("x;y")
        );
    }

    #[test]
    fn not_multipart_is_none() {
        assert!(parse(b"hello", "XyZ", false).is_none());
    }
}
