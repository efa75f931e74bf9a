//! What a row keeps of a URL or of headers: query parameters and header values under secret
//! names replaced, URL userinfo replaced, value patterns applied to everything else.

use http::HeaderMap;
use serde_json::{Map, Value};

use super::rules::normalize_key_into;
use super::{Redactions, Sanitizer};

impl Sanitizer {
    /// A request target (path and query) as stored, and which rules fired (`path`, `?name`).
    pub fn target(&self, path: &str, query: Option<&str>) -> (String, Redactions) {
        let mut found = Redactions::default();
        let mut out = String::with_capacity(path.len() + 1 + query.map_or(0, str::len));
        out.push_str(&self.plain_text(path, "path", &mut found));
        if let Some(query) = query {
            out.push('?');
            out.push_str(&self.query(query, &mut found));
        }
        (out, found)
    }

    /// An absolute URL as stored: userinfo replaced, then path and query as in [`target`].
    ///
    /// [`target`]: Sanitizer::target
    pub fn url(&self, url: &str) -> (String, Redactions) {
        let mut found = Redactions::default();
        let (head, rest) = match url.find("://") {
            Some(i) => url.split_at(i + 3),
            None => ("", url),
        };
        let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(auth_end);
        let mut out = String::with_capacity(url.len());
        out.push_str(head);
        match authority.rfind('@') {
            Some(at) if !head.is_empty() && authority[..at] != self.replacement => {
                out.push_str(&self.replacement);
                out.push_str(&authority[at..]);
                found.add("url_userinfo", "userinfo");
            }
            _ => out.push_str(authority),
        }
        let (tail, fragment) = match tail.find('#') {
            Some(i) => tail.split_at(i),
            None => (tail, ""),
        };
        let (path, query) = match tail.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (tail, None),
        };
        let (t, f) = self.target(path, query);
        found.merge(f);
        out.push_str(&t);
        out.push_str(&self.plain_text(fragment, "fragment", &mut found));
        (out, found)
    }

    /// Query pairs: values under secret names replaced (percent-encoded), others pattern-checked.
    fn query(&self, query: &str, found: &mut Redactions) -> String {
        let mut norm = String::new();
        let encoded_replacement: String =
            form_urlencoded::byte_serialize(self.replacement.as_bytes()).collect();
        let mut out = String::with_capacity(query.len());
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            let Some((raw_key, raw_value)) = pair.split_once('=') else {
                out.push_str(&self.plain_text(pair, "query", found));
                continue;
            };
            let (key, value) = form_urlencoded::parse(pair.as_bytes())
                .next()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .unwrap_or_default();
            normalize_key_into(&key, &mut norm);
            let safe_key = self.plain_text(raw_key, "query", found);
            out.push_str(&safe_key);
            out.push('=');
            let path = format!("?{}", super::clipped(&safe_key, super::MAX_PATH_CHARS));
            match self.keys.find(&norm, true) {
                Some(rule) if value != self.replacement && !raw_value.is_empty() => {
                    found.add(&format!("key:{}", rule.name), &path);
                    out.push_str(&encoded_replacement);
                }
                _ => {
                    let mut fired = Vec::new();
                    match self
                        .patterns
                        .redact(&value, &self.replacement, &self.keys, &mut |r| {
                            fired.push(r.to_owned())
                        }) {
                        Some(clean) => {
                            for r in fired {
                                found.add(&r, &path);
                            }
                            out.extend(form_urlencoded::byte_serialize(clean.as_bytes()));
                        }
                        None => out.push_str(raw_value),
                    }
                }
            }
        }
        out
    }

    /// Value patterns over a piece of text that is not a value under a key.
    fn plain_text(&self, text: &str, path: &str, found: &mut Redactions) -> String {
        let mut fired = Vec::new();
        match self
            .patterns
            .redact(text, &self.replacement, &self.keys, &mut |r| {
                fired.push(r.to_owned())
            }) {
            Some(clean) => {
                for r in fired {
                    found.add(&r, path);
                }
                clean
            }
            None => text.to_owned(),
        }
    }

    /// Headers as a storable object (names lowercase, repeated headers as arrays): values of
    /// secret headers (`Authorization`, `Cookie`, `Set-Cookie`, `X-N8N-API-KEY`, `X-API-Key`,
    /// and any name a key rule matches) replaced, the others pattern-checked.
    pub fn headers(&self, headers: &HeaderMap) -> (Value, Redactions) {
        let mut found = Redactions::default();
        let mut norm = String::new();
        let mut map = Map::new();
        for (name, value) in headers {
            let name = name.as_str();
            let text = String::from_utf8_lossy(value.as_bytes());
            normalize_key_into(name, &mut norm);
            let path = format!("headers.{name}");
            let stored = match self.keys.find(&norm, false) {
                Some(rule) if text != self.replacement => {
                    found.add(&format!("key:{}", rule.name), &path);
                    self.replacement.clone()
                }
                _ => self.plain_text(&text.replace('\0', "\u{FFFD}"), &path, &mut found),
            };
            let stored = Value::String(stored);
            match map.get_mut(name) {
                Some(Value::Array(items)) => items.push(stored),
                Some(existing) => {
                    let first = existing.take();
                    *existing = Value::Array(vec![first, stored]);
                }
                None => {
                    map.insert(name.to_owned(), stored);
                }
            }
        }
        (Value::Object(map), found)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Sanitizer;
    use http::header::{HeaderName, HeaderValue};
    use http::HeaderMap;

    fn s() -> Sanitizer {
        Sanitizer::default_rules().expect("defaults compile")
    }

    #[test]
    fn query_secrets_by_name_and_pattern() {
        let (t, found) = s().target(
            "/webhook-waiting/17",
            Some(
                "a=1&token=abc&b&code=xyz&X-Amz-Signature=ff00&sig=1&note=Bearer%20abcdefghijk&c=",
            ),
        );
        assert_eq!(
            t,
            "/webhook-waiting/17?a=1&token=%5BREDACTED%5D&b&code=%5BREDACTED%5D\
             &X-Amz-Signature=%5BREDACTED%5D&sig=%5BREDACTED%5D&note=Bearer+%5BREDACTED%5D&c="
        );
        let rules: Vec<String> = found
            .iter()
            .map(|r| format!("{} {}", r.rule, r.path))
            .collect();
        assert!(
            rules.contains(&"key:*token* ?token".to_owned()),
            "{rules:?}"
        );
        assert!(rules.contains(&"bearer ?note".to_owned()), "{rules:?}");
        assert_eq!(s().target("/w", None).0, "/w");
        assert_eq!(s().target("/w", Some("a=1&b=2")).0, "/w?a=1&b=2");
    }

    #[test]
    fn jwt_in_path_is_redacted() {
        let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl";
        let (t, found) = s().target(&format!("/reset/{jwt}/go"), None);
        assert_eq!(t, "/reset/[REDACTED]/go");
        assert_eq!(found.iter().next().map(|r| r.path.as_str()), Some("path"));
    }

    #[test]
    fn url_userinfo_is_replaced() {
        let (u, found) = s().url("https://bob:pw@example.com:8443/a?token=t#frag");
        assert_eq!(
            u,
            "https://[REDACTED]@example.com:8443/a?token=%5BREDACTED%5D#frag"
        );
        assert_eq!(found.len(), 2);
        assert_eq!(
            s().url("https://example.com/a@b").0,
            "https://example.com/a@b"
        );
        let (again, f) = s().url(&u);
        assert_eq!((again.as_str(), f.len()), (u.as_str(), 0), "idempotent");
    }

    #[test]
    fn secret_headers() {
        let mut h = HeaderMap::new();
        for (n, v) in [
            ("authorization", "Bearer abcdefghijkl"),
            ("proxy-authorization", "Basic YWxhZGRpbjpvcGVuc2VzYW1l"),
            ("cookie", "sid=1"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("x-n8n-api-key", "k"),
            ("x-api-key", "k"),
            ("x-custom-token", "k"),
            ("x-note", "see eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln"),
            ("content-type", "application/json"),
            ("x-execution-id", "550e8400-e29b-41d4-a716-446655440000"),
        ] {
            h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let (v, found) = s().headers(&h);
        for n in [
            "authorization",
            "proxy-authorization",
            "cookie",
            "x-n8n-api-key",
            "x-api-key",
            "x-custom-token",
        ] {
            assert_eq!(v[n], "[REDACTED]", "{n}");
        }
        assert_eq!(
            v["set-cookie"],
            serde_json::json!(["[REDACTED]", "[REDACTED]"])
        );
        assert_eq!(v["x-note"], "see [REDACTED]");
        assert_eq!(v["content-type"], "application/json");
        assert_eq!(v["x-execution-id"], "550e8400-e29b-41d4-a716-446655440000");
        assert_eq!(found.len(), 8);
    }
}
