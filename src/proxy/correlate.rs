//! Correlation (DESIGN.md §2): which trace, execution, workflow, user and action a request
//! belongs to, from headers first, then the n8n URL forms, then configured fallbacks.

use http::{HeaderMap, HeaderValue};
use uuid::Uuid;

use crate::config::{CorrelationConfig, PathRule, Route};

/// Longest accepted `X-Trace-Id`.
pub(crate) const MAX_TRACE_ID_LEN: usize = 128;
/// Longest header-supplied workflow/user/action value kept.
const MAX_ID_LEN: usize = 256;

#[derive(Debug, Clone)]
pub(crate) struct Correlation {
    /// The trace id as stored and logged: the client's, unless the value patterns call it a
    /// secret (a JWT sent as `X-Trace-Id`), then `redacted:<keyed hash>` of it.
    pub trace_id: String,
    /// The trace id as the client sent it, when it differs from `trace_id`: propagated upstream
    /// and returned unchanged (the proxy stays transparent), never stored.
    pub client_trace_id: Option<String>,
    /// The `traceparent` sent upstream.
    pub traceparent: String,
    pub execution_id: Option<Uuid>,
    pub workflow_id: String,
    /// `None` when the header was absent (the fallback applies unless the route requires it).
    pub user_id: Option<String>,
    pub action: Option<String>,
    /// From a `/webhook-waiting/<id>` path, known before the response; sanitized like any stored
    /// value.
    pub n8n_execution_id: Option<String>,
}

impl Correlation {
    /// The trace id to send upstream and back to the client.
    pub(crate) fn wire_trace_id(&self) -> &str {
        self.client_trace_id.as_deref().unwrap_or(&self.trace_id)
    }
}

/// Key of the trace-id hash: fixed, so the same secret-looking id always maps to the same
/// stored id (across restarts and replicas), and the stored form cannot be computed from the
/// id with a plain SHA-256.
const TRACE_ID_HASH_KEY: &[u8] = b"trace-proxy: a trace id that looked like a secret";

/// `redacted:<32 hex>` when the value patterns of `route` call `trace_id` a secret.
fn stored_trace_id(route: &Route, trace_id: &str) -> Option<String> {
    let (_, found) = route.sanitizer.column("trace_id", trace_id);
    if found.is_empty() {
        return None;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, TRACE_ID_HASH_KEY);
    let tag = ring::hmac::sign(&key, trace_id.as_bytes());
    let hex: String = tag.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Some(format!("redacted:{hex}"))
}

pub(crate) fn correlate(
    cfg: &CorrelationConfig,
    route: &Route,
    headers: &HeaderMap,
    path: &str,
) -> Correlation {
    let incoming_parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_traceparent);
    let trace_id = header_str(headers, &cfg.trace_id_header)
        .filter(|v| is_sane_trace_id(v))
        .map(str::to_owned)
        .or_else(|| incoming_parent.map(|(t, _)| t.to_owned()))
        .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
    let traceparent = match incoming_parent {
        Some((t, full)) if t == trace_id => full.to_owned(),
        _ => new_traceparent(&trace_id),
    };
    let execution_id =
        header_str(headers, &cfg.execution_id_header).and_then(|v| Uuid::parse_str(v).ok());
    let workflow_id = header_id(headers, &cfg.workflow_id_header)
        .or_else(|| workflow_from_path(&cfg.workflow_path_rules, path))
        .unwrap_or_else(|| cfg.default_workflow_id.clone());
    let user_id = header_id(headers, &cfg.user_id_header);
    let action = header_id(headers, &cfg.action_header).or_else(|| route.action.clone());
    let n8n_execution_id = path
        .strip_prefix("/webhook-waiting/")
        .and_then(|rest| rest.split('/').next())
        .filter(|s| !s.is_empty())
        .map(|id| route.sanitizer.column("n8n_execution_id", id).0);
    // Only an id the client sent in `X-Trace-Id` can be a secret (a traceparent's is 32 hex
    // digits, a new one the proxy's own).
    let from_header = header_str(headers, &cfg.trace_id_header) == Some(trace_id.as_str());
    let hashed = from_header
        .then(|| stored_trace_id(route, &trace_id))
        .flatten();
    let (trace_id, client_trace_id) = match hashed {
        Some(stored) => (stored, Some(trace_id)),
        None => (trace_id, None),
    };
    Correlation {
        trace_id,
        client_trace_id,
        traceparent,
        execution_id,
        workflow_id,
        user_id,
        action,
        n8n_execution_id,
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &http::HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// A header value as an identifier: non-empty, at most `MAX_ID_LEN` chars, decoded lossily.
fn header_id(headers: &HeaderMap, name: &http::HeaderName) -> Option<String> {
    let v: &HeaderValue = headers.get(name)?;
    let s = String::from_utf8_lossy(v.as_bytes());
    let s = s.trim();
    (!s.is_empty()).then(|| s.chars().take(MAX_ID_LEN).collect())
}

/// `X-Trace-Id` is accepted when it is 1..=128 visible ASCII characters.
pub(crate) fn is_sane_trace_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_TRACE_ID_LEN && v.bytes().all(|b| b.is_ascii_graphic())
}

/// W3C Trace Context §3.2: `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`, ids not all
/// zero. Returns (trace-id, the whole header).
pub(crate) fn parse_traceparent(v: &str) -> Option<(&str, &str)> {
    let v = v.trim();
    let parts: Vec<&str> = v.split('-').collect();
    let [version, trace, parent, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    let nonzero = |s: &str| s.bytes().any(|b| b != b'0');
    (*version == "00"
        && hex(trace, 32)
        && nonzero(trace)
        && hex(parent, 16)
        && nonzero(parent)
        && hex(flags, 2))
    .then_some((*trace, v))
}

/// A traceparent for `trace_id`. A trace id that is not 32 lowercase hex digits is mapped to one
/// deterministically (UUID v5), so every attempt of a trace carries the same W3C trace-id.
fn new_traceparent(trace_id: &str) -> String {
    let is_w3c = trace_id.len() == 32
        && trace_id
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        && trace_id.bytes().any(|b| b != b'0');
    let w3c = if is_w3c {
        trace_id.to_owned()
    } else {
        Uuid::new_v5(&Uuid::NAMESPACE_OID, trace_id.as_bytes())
            .simple()
            .to_string()
    };
    let span = Uuid::new_v4().simple().to_string();
    format!("00-{w3c}-{}-01", &span[..16])
}

/// The workflow id from an n8n URL (`/webhook/<path>`, `/api/v1/workflows/<id>`, …).
pub(crate) fn workflow_from_path(rules: &[PathRule], path: &str) -> Option<String> {
    rules.iter().find_map(|rule| {
        let rest = path.strip_prefix(&rule.prefix)?;
        let id = if rule.take_rest {
            rest.trim_end_matches('/')
        } else {
            rest.split('/').next().unwrap_or("")
        };
        (!id.is_empty()).then(|| id.chars().take(MAX_ID_LEN).collect())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_parsing_follows_w3c() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            parse_traceparent(ok).map(|p| p.0),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert!(
            parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none()
        );
        assert!(
            parse_traceparent("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01").is_none()
        );
        assert!(parse_traceparent("garbage").is_none());
    }

    #[test]
    fn generated_traceparent_is_valid_and_stable_per_trace() {
        let a = new_traceparent("order-42");
        let b = new_traceparent("order-42");
        assert_eq!(
            parse_traceparent(&a).map(|p| p.0),
            parse_traceparent(&b).map(|p| p.0)
        );
        assert!(parse_traceparent(&a).is_some());
    }

    #[test]
    fn workflow_rules_take_segment_or_rest() {
        let rules = vec![
            PathRule {
                prefix: "/webhook/".into(),
                take_rest: true,
            },
            PathRule {
                prefix: "/api/v1/workflows/".into(),
                take_rest: false,
            },
        ];
        assert_eq!(
            workflow_from_path(&rules, "/webhook/abc/def"),
            Some("abc/def".into())
        );
        assert_eq!(
            workflow_from_path(&rules, "/api/v1/workflows/17/activate"),
            Some("17".into())
        );
        assert_eq!(workflow_from_path(&rules, "/other"), None);
        assert_eq!(workflow_from_path(&rules, "/webhook/"), None);
    }

    #[test]
    fn trace_id_sanity() {
        assert!(is_sane_trace_id("abc-123"));
        assert!(!is_sane_trace_id("has space"));
        assert!(!is_sane_trace_id(&"x".repeat(129)));
        assert!(!is_sane_trace_id(""));
    }
}
