//! What an attempt's final update says (D2): status, error code and detail, the response's
//! facts and its sanitized payload.

use http::header;
use http::StatusCode;

use super::error::ProxyError;
use super::header_str;
use crate::capture::{BodyEnd, Captured};
use crate::config::Config;
use crate::sanitize::{BodySample, Redactions, Sanitizer, Stored};
use crate::trace::Status;

/// Response facts kept for the final update.
pub(super) struct ResponseMeta {
    status: StatusCode,
    content_type: Option<String>,
    content_encoding: Option<String>,
    n8n_execution_id: Option<String>,
}

impl ResponseMeta {
    pub(super) fn new(headers: &http::HeaderMap, status: StatusCode, cfg: &Config) -> Self {
        ResponseMeta {
            status,
            content_type: header_str(headers, header::CONTENT_TYPE).map(str::to_owned),
            content_encoding: header_str(headers, header::CONTENT_ENCODING).map(str::to_owned),
            n8n_execution_id: header_str(headers, &cfg.correlation.n8n_execution_id_header)
                .map(str::to_owned),
        }
    }
}

impl ResponseMeta {
    /// A `text/event-stream` response: one the client ends by closing it.
    fn is_event_stream(&self) -> bool {
        self.content_type.as_deref().is_some_and(|c| {
            c.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("text/event-stream"))
        })
    }
}

/// What the final update says.
pub(super) struct Outcome {
    pub status: Status,
    pub error_code: Option<String>,
    pub error_detail: Option<String>,
    pub http_status: Option<u16>,
    pub response_payload: Option<serde_json::Value>,
    pub n8n_execution_id: Option<String>,
    pub response_bytes: u64,
    pub response_redactions: Redactions,
    pub response_truncated: bool,
}

impl Outcome {
    /// Appends a note (retry decision) to the detail of a failure.
    pub(super) fn with_note(mut self, note: String) -> Self {
        if self.status == Status::Failed {
            self.error_detail = Some(match self.error_detail.take() {
                Some(d) => format!("{d}; {note}"),
                None => note,
            });
        }
        self
    }

    pub(super) fn error(e: &ProxyError) -> Self {
        Outcome {
            status: Status::Failed,
            error_code: Some(e.code().to_owned()),
            error_detail: Some(e.to_string()),
            http_status: None,
            response_payload: None,
            n8n_execution_id: None,
            response_bytes: 0,
            response_redactions: Redactions::default(),
            response_truncated: false,
        }
    }

    /// A streamed response: its HTTP status and how its body ended decide the row's status.
    pub(super) fn streamed(
        meta: &ResponseMeta,
        end: BodyEnd,
        captured: Captured,
        cap: usize,
        sanitizer: &Sanitizer,
    ) -> Self {
        let Stored {
            value: payload,
            redactions: response_redactions,
            truncated: response_truncated,
        } = sanitizer.payload(
            BodySample {
                bytes: &captured.bytes,
                total_bytes: Some(captured.total),
                cut: captured.cut(),
                content_type: meta.content_type.as_deref(),
                content_encoding: meta.content_encoding.as_deref(),
            },
            cap,
        );
        // From the header it passes the value patterns here; from the payload it already did.
        let n8n_execution_id = meta
            .n8n_execution_id
            .as_deref()
            .map(|id| sanitizer.column("n8n_execution_id", id).0)
            .or_else(|| execution_id_in(payload.as_ref()?));
        let (status, error_code, error_detail) =
            verdict(meta.status, end, captured.total, meta.is_event_stream());
        Outcome {
            status,
            error_code,
            error_detail,
            http_status: Some(meta.status.as_u16()),
            response_payload: payload,
            n8n_execution_id,
            response_bytes: captured.total,
            response_redactions,
            response_truncated,
        }
    }
}

/// Lines of a streamed text payload searched for an execution id.
const MAX_LINES_SEARCHED: usize = 64;

/// n8n's execution id in a stored response payload: `executionId` of a JSON object (a
/// "Respond immediately" answer, even one labelled `text/html`), or of a line of a streamed
/// (JSON lines) answer, or of the JSON inside such a line's `content` string (n8n's `item`
/// chunks). The payload is the sanitized one, so nothing redacted comes back as an id.
fn execution_id_in(payload: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    fn id_of(v: &Value) -> Option<String> {
        match v.get("executionId")? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
    match payload {
        Value::Object(_) => id_of(payload),
        Value::String(text) => text.lines().take(MAX_LINES_SEARCHED).find_map(|line| {
            let line: Value = serde_json::from_str(line.trim()).ok()?;
            id_of(&line).or_else(|| match line.get("content")? {
                Value::String(inner) => id_of(&serde_json::from_str(inner).ok()?),
                inner @ Value::Object(_) => id_of(inner),
                _ => None,
            })
        }),
        _ => None,
    }
}

/// The row's status, error code and detail for a response with HTTP `status` whose body ended
/// as `end` after `total` bytes. A client closing an event stream it was given is how an event
/// stream normally ends (`success`, the close noted in the detail); an upstream cutting one is
/// still a failure.
fn verdict(
    status: StatusCode,
    end: BodyEnd,
    total: u64,
    event_stream: bool,
) -> (Status, Option<String>, Option<String>) {
    let code = status.as_u16();
    let failed = |c: &str, detail: String| (Status::Failed, Some(c.to_owned()), Some(detail));
    match end {
        BodyEnd::Complete if code < 400 => (Status::Success, None, None),
        BodyEnd::Complete => {
            let c = match code {
                401 | 403 => "AUTH_FAILED".to_owned(),
                _ => format!("HTTP_{code}"),
            };
            failed(&c, format!("upstream answered {status}"))
        }
        BodyEnd::Error(e) => failed(
            "UPSTREAM_ABORTED",
            format!("upstream response body failed after {total} bytes: {e}"),
        ),
        BodyEnd::IdleTimeout => failed(
            "TIMEOUT",
            format!("upstream response body stalled after {total} bytes"),
        ),
        BodyEnd::Aborted if event_stream && code < 400 => (
            Status::Success,
            None,
            Some(format!(
                "client closed the event stream after {total} response bytes"
            )),
        ),
        BodyEnd::Aborted => failed(
            "CLIENT_ABORTED",
            format!("client disconnected after {total} response bytes"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_client_closing_a_good_event_stream_is_a_normal_end() {
        let ok = StatusCode::OK;
        let (s, code, detail) = verdict(ok, BodyEnd::Aborted, 42, true);
        assert_eq!((s, code), (Status::Success, None));
        assert_eq!(
            detail.as_deref(),
            Some("client closed the event stream after 42 response bytes")
        );
        let cut = verdict(ok, BodyEnd::Error("reset".into()), 42, true);
        assert_eq!(cut.1.as_deref(), Some("UPSTREAM_ABORTED"));
        let stalled = verdict(ok, BodyEnd::IdleTimeout, 42, true);
        assert_eq!(stalled.1.as_deref(), Some("TIMEOUT"));
        let error = verdict(StatusCode::BAD_GATEWAY, BodyEnd::Aborted, 0, true);
        assert_eq!(error.1.as_deref(), Some("CLIENT_ABORTED"));
        let other = verdict(ok, BodyEnd::Aborted, 42, false);
        assert_eq!(other.1.as_deref(), Some("CLIENT_ABORTED"));
    }

    #[test]
    fn execution_ids_are_found_in_objects_and_stream_lines() {
        use serde_json::json;
        assert_eq!(
            execution_id_in(&json!({"executionId": 7})).as_deref(),
            Some("7")
        );
        let stream = "{\"type\":\"begin\"}\n{\"type\":\"item\",\"content\":\"{\\\"executionId\\\":\\\"6\\\"}\"}\n";
        assert_eq!(execution_id_in(&json!(stream)).as_deref(), Some("6"));
        assert_eq!(execution_id_in(&json!("not json\n{}")), None);
        assert_eq!(execution_id_in(&json!([{"executionId": "1"}])), None);
        assert_eq!(execution_id_in(&json!({"executionId": ""})), None);
    }
}
