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
        let n8n_execution_id = meta.n8n_execution_id.clone().or_else(|| {
            match payload.as_ref()?.get("executionId")? {
                serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
                serde_json::Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        });
        let (status, error_code, error_detail) = verdict(meta.status, end, captured.total);
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

/// The row's status, error code and detail for a response with HTTP `status` whose body ended
/// as `end` after `total` bytes.
fn verdict(
    status: StatusCode,
    end: BodyEnd,
    total: u64,
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
        BodyEnd::Aborted => failed(
            "CLIENT_ABORTED",
            format!("client disconnected after {total} response bytes"),
        ),
    }
}
