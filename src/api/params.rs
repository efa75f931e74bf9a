//! Query-string and path parsing for the admin API. Every problem is a 400 with a sentence
//! naming the parameter and what was expected; unknown parameters are refused too, so an
//! agent's typo (`workflow_id=` for `workflowId=`) is an error, not a silently unfiltered list.

use std::collections::HashMap;

use chrono::NaiveDateTime;

use super::render::{PayloadMode, Projection};
use crate::store::query::{Cursor, Page};

/// Rows per page when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest `limit` accepted; larger values are refused (400), not clamped.
pub const MAX_LIMIT: i64 = 500;
/// Longest id accepted in a path or filter.
const MAX_ID_BYTES: usize = 1024;

/// The decoded query string of one request.
pub struct Params(HashMap<String, String>);

impl Params {
    /// Parses `query`, accepting only `allowed` names, each at most once.
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Params, String> {
        let mut map = HashMap::new();
        for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !allowed.contains(&k.as_ref()) {
                return Err(if allowed.is_empty() {
                    format!("unknown parameter `{k}`: this endpoint takes none")
                } else {
                    format!(
                        "unknown parameter `{k}`; this endpoint takes: {}",
                        allowed.join(", ")
                    )
                });
            }
            if map.insert(k.to_string(), v.into_owned()).is_some() {
                return Err(format!("parameter `{k}` given more than once"));
            }
        }
        Ok(Params(map))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// A text filter: absent, or non-empty.
    pub fn text(&self, name: &str) -> Result<Option<String>, String> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => id(name, v).map(Some),
        }
    }

    /// `limit`: 1..=MAX_LIMIT, default DEFAULT_LIMIT.
    pub fn limit(&self) -> Result<i64, String> {
        let Some(v) = self.get("limit") else {
            return Ok(DEFAULT_LIMIT);
        };
        match v.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            Ok(n) => Err(format!(
                "`limit` must be between 1 and {MAX_LIMIT}, got {n}"
            )),
            Err(_) => Err(format!(
                "`limit` must be a whole number between 1 and {MAX_LIMIT}, got {v:?}"
            )),
        }
    }

    /// An ISO-8601 / RFC 3339 time with an offset (`2025-06-01T12:00:00Z`), as UTC.
    pub fn time(&self, name: &str) -> Result<Option<NaiveDateTime>, String> {
        let Some(v) = self.get(name) else {
            return Ok(None);
        };
        crate::trace::parse_rfc3339(v)
            .ok()
            .filter(crate::trace::storable)
            .map(Some)
            .ok_or_else(|| {
                format!(
                    "`{name}` must be an RFC 3339 time with a zone between the years 1 and 9999, e.g. 2025-06-01T12:00:00Z, got {v:?}"
                )
            })
    }

    /// `since` and `until`, checked to be in order.
    pub fn window(&self) -> Result<(Option<NaiveDateTime>, Option<NaiveDateTime>), String> {
        let since = self.time("since")?;
        let until = self.time("until")?;
        if let (Some(s), Some(u)) = (since, until) {
            if s >= u {
                return Err("`since` must be earlier than `until`".into());
            }
        }
        Ok((since, until))
    }

    /// `payloads` and `fields`.
    pub fn projection(&self) -> Result<Projection, String> {
        let payloads = match self.get("payloads") {
            None => PayloadMode::default(),
            Some(v) => PayloadMode::parse(v)
                .ok_or_else(|| format!("`payloads` must be none, truncated or full, got {v:?}"))?,
        };
        let fields = match self.get("fields") {
            None => None,
            Some(v) => Some(Projection::parse_fields(v)?),
        };
        Ok(Projection { payloads, fields })
    }

    /// `limit` and `cursor` of a newest-first list.
    pub fn page(&self, projection: &Projection) -> Result<Page, String> {
        let after = match self.get("cursor") {
            None => None,
            Some(c) => Some(Cursor::decode(c).map_err(|e| e.to_string())?),
        };
        Ok(Page {
            limit: self.limit()?,
            after,
            payloads: projection.reads_payloads(),
        })
    }

    /// The raw value of an enumerated parameter.
    pub fn raw(&self, name: &str) -> Option<&str> {
        self.get(name)
    }
}

/// An id from the path or a filter: non-empty, at most 1 KiB, no NUL (PostgreSQL text cannot
/// hold one, so it could match nothing).
pub fn id(what: &str, v: &str) -> Result<String, String> {
    if v.is_empty() {
        return Err(format!("`{what}` must not be empty"));
    }
    if v.len() > MAX_ID_BYTES {
        return Err(format!("`{what}` is longer than {MAX_ID_BYTES} bytes"));
    }
    if v.contains('\0') {
        return Err(format!("`{what}` must not contain NUL"));
    }
    Ok(v.to_owned())
}

/// Percent-decodes one path segment (`%2F` inside a workflow id stays part of the id).
pub fn decode_segment(seg: &str) -> Result<String, String> {
    let bytes = seg.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in path segment {seg:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("path segment {seg:?} is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_times_and_unknown_parameters() {
        let p = Params::parse(Some("limit=abc"), &["limit"]).expect("parse");
        assert!(p.limit().unwrap_err().contains("whole number"));
        let p = Params::parse(Some("limit=100000"), &["limit"]).expect("parse");
        assert!(p.limit().unwrap_err().contains("between 1 and 500"));
        let p = Params::parse(Some("limit=7"), &["limit"]).expect("parse");
        assert_eq!(p.limit(), Ok(7));
        assert!(Params::parse(Some("limt=7"), &["limit"]).is_err());
        assert!(Params::parse(Some("limit=1&limit=2"), &["limit"]).is_err());
        let p = Params::parse(Some("since=yesterday"), &["since"]).expect("parse");
        assert!(p.time("since").is_err());
        let p = Params::parse(Some("since=2025-06-01T14:00:00%2B02:00"), &["since"]).expect("p");
        assert_eq!(
            p.time("since").expect("time").map(|t| t.to_string()),
            Some("2025-06-01 12:00:00".into())
        );
        assert_eq!(decode_segment("a%2Fb").as_deref(), Ok("a/b"));
        assert!(decode_segment("a%2").is_err());
    }
}
