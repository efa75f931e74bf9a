//! Steps 3 and 4 of the lifecycle: what a routed request says about itself (correlation), and
//! what its row will store of it (the captured, sanitized request) — read once, shared by every
//! attempt.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use hyper::body::Incoming;
use serde_json::Value;

use super::correlate::{correlate, Correlation};
use super::error::ProxyError;
use super::{forward, header_str, note_truncation, App};
use crate::capture::{read_prefix, Captured, Prefix, PrefixError, Replay};
use crate::config::Route;
use crate::sanitize::{redactions_record, BodySample, Redactions, Sanitizer};
use crate::trace::AttemptStart;

/// A routed request, read and sanitized.
pub(super) struct Inbound {
    pub corr: Correlation,
    pub parts: http::request::Parts,
    /// The Host to send upstream.
    pub host: Option<HeaderValue>,
    /// A problem found before anything was forwarded: answered locally, after recording.
    pub early: Option<ProxyError>,
    /// The body: the captured prefix and the rest, still streaming (the first attempt's).
    pub body: Option<Prefix<Incoming>>,
    /// The body again, for retries, when it fits the capture buffer.
    pub replay: Option<Replay>,
    /// `server.max_request_body_bytes`.
    pub limit: Option<u64>,
    pub sanitizer: Arc<Sanitizer>,
    /// What the pending row stores of the request.
    pub row: RowColumns,
    /// The protocol upgrade the client asked for, if any (and the route allows).
    pub upgrade: Option<super::tunnel::Upgrade>,
}

/// The request-derived columns of the pending row, sanitized (D4).
pub(super) struct RowColumns {
    request_payload: Option<Value>,
    http_target: String,
    workflow_id: String,
    user_id: String,
    action: Option<String>,
    redactions: Option<Value>,
}

impl Inbound {
    /// Correlates and captures `req` for `route`.
    pub(super) async fn read(app: &App, route: &Route, req: http::Request<Incoming>) -> Inbound {
        let cfg = &app.config;
        let corr = correlate(&cfg.correlation, route, req.headers(), req.uri().path());
        let (mut parts, body) = req.into_parts();
        let (host, mut early) = match forward::original_host(&parts) {
            Ok(h) => (h, None),
            Err(e) => (None, Some(e)),
        };
        let mut upgrade = None;
        if let Some(value) = super::tunnel::requested(&parts) {
            let up = super::tunnel::Upgrade {
                client: parts.extensions.remove::<hyper::upgrade::OnUpgrade>(),
                value,
            };
            match route.upgrades {
                true => upgrade = Some(up),
                false => early = early.or(Some(ProxyError::UpgradeDenied(up.protocol()))),
            }
        }
        if early.is_none() && route.require_user_id && corr.user_id.is_none() {
            early = Some(ProxyError::MissingUserId(
                cfg.correlation.user_id_header.to_string(),
            ));
        }
        let limit = cfg.server.max_request_body_bytes;
        let declared_len = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let (None, Some(limit), Some(len)) = (&early, limit, declared_len) {
            if len > limit {
                early = Some(ProxyError::BodyTooLarge(limit));
            }
        }
        // 4. capture request: the body prefix up to the cap; the rest streams later.
        let cap = cfg.capture.max_payload_bytes;
        let prefix = match early {
            None => {
                let timeout = cfg.server.request_body_timeout;
                let (res, prefix) = read_prefix(body, cap, limit, timeout).await;
                early = res.err().map(|e| match e {
                    PrefixError::TooLarge { limit } => ProxyError::BodyTooLarge(limit),
                    PrefixError::Timeout(_) => ProxyError::ClientTimeout(e.to_string()),
                    PrefixError::Client(s) => ProxyError::ClientBody(s),
                });
                prefix
            }
            Some(_) => Prefix {
                frames: Default::default(),
                captured: Captured::new(cap),
                rest: None,
            },
        };
        let sanitizer = route.sanitizer.clone();
        let row = RowColumns::new(app, &sanitizer, &corr, &parts, &prefix, declared_len);
        Inbound {
            // The replay buffer is the capture buffer: bodies up to the cap can be resent.
            replay: prefix.replay(cap),
            body: Some(prefix),
            corr,
            parts,
            host,
            early,
            limit,
            sanitizer,
            row,
            upgrade,
        }
    }

    /// The pending row of one attempt.
    pub(super) fn start(
        &self,
        route: &Route,
        id: uuid::Uuid,
        requested_at: chrono::NaiveDateTime,
    ) -> AttemptStart {
        let corr = &self.corr;
        let row = &self.row;
        AttemptStart {
            id,
            trace_id: corr.trace_id.clone(),
            execution_id: corr.execution_id,
            source_service: route.source_service.clone(),
            destination_service: route.destination_service.clone(),
            workflow_id: row.workflow_id.clone(),
            action: row.action.clone(),
            user_id: row.user_id.clone(),
            requested_at,
            request_payload: row.request_payload.clone(),
            http_method: self.parts.method.to_string(),
            http_target: row.http_target.clone(),
            route_name: route.name.clone(),
            n8n_execution_id: corr.n8n_execution_id.clone(),
            redactions: row.redactions.clone(),
        }
    }
}

impl RowColumns {
    /// D4: what the row keeps is redacted (then fitted to the cap) by the route's rules.
    fn new(
        app: &App,
        sanitizer: &Sanitizer,
        corr: &Correlation,
        parts: &http::request::Parts,
        prefix: &Prefix<Incoming>,
        declared_len: Option<u64>,
    ) -> RowColumns {
        let cfg = &app.config;
        let request = sanitizer.payload(
            BodySample {
                bytes: &prefix.captured.bytes,
                total_bytes: declared_len
                    .or((prefix.rest.is_none()).then_some(prefix.captured.total)),
                cut: prefix.rest.is_some() || prefix.captured.cut(),
                content_type: header_str(&parts.headers, header::CONTENT_TYPE),
                content_encoding: header_str(&parts.headers, header::CONTENT_ENCODING),
            },
            cfg.capture.max_payload_bytes,
        );
        let trace_id = &corr.trace_id;
        note_truncation(
            &app.metrics,
            request.truncated,
            &request.value,
            trace_id,
            "request",
        );
        let (http_target, target_redactions) =
            sanitizer.target(parts.uri.path(), parts.uri.query());
        // Header-derived columns are stored too: the same value patterns apply.
        let (workflow_id, workflow_redactions) = sanitizer.column("workflow_id", &corr.workflow_id);
        let user_id = corr
            .user_id
            .clone()
            .unwrap_or_else(|| cfg.correlation.default_user_id.clone());
        let (user_id, user_redactions) = sanitizer.column("user_id", &user_id);
        let (action, action_redactions) = match &corr.action {
            Some(a) => {
                let (a, r) = sanitizer.column("action", a);
                (Some(a), r)
            }
            None => (None, Redactions::default()),
        };
        let redactions = redactions_record(&[
            ("http_target", &target_redactions),
            ("request_payload", &request.redactions),
            ("workflow_id", &workflow_redactions),
            ("user_id", &user_redactions),
            ("action", &action_redactions),
        ]);
        if let Some(r) = &redactions {
            tracing::debug!(%trace_id, redactions = %r, "redacted before storage");
        }
        RowColumns {
            request_payload: request.value,
            http_target,
            workflow_id,
            user_id,
            action,
            redactions,
        }
    }
}
