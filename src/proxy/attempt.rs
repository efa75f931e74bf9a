//! One attempt (D3), from its pending row to its final update: started through the
//! [`Recorder`](crate::record::Recorder), answered locally or streamed, and finished exactly
//! once — explicitly, through the response body's end, or, if dropped first (client gone), as
//! aborted.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::Response;
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::correlate::Correlation;
use super::error::ProxyError;
use super::inbound::Inbound;
use super::outcome::{Outcome, ResponseMeta};
use super::{add_correlation_headers, forward, local, note_truncation, App, ProxyBody};
use crate::capture::{BodyEnd, Captured, OnEnd, RequestStats, TeeBody};
use crate::config::Route;
use crate::metrics::Class;
use crate::record::{Refused, Ticket};
use crate::sanitize::{redactions_record, Redactions, Sanitizer};
use crate::trace::{now_utc, AttemptFinish, Status};

/// One attempt of a request.
pub(super) struct Attempt {
    app: Arc<App>,
    /// `None` once finished.
    ticket: Option<Ticket>,
    id: Uuid,
    arrived: Instant,
    pub forwarded_at: Option<Instant>,
    pub stats: Arc<RequestStats>,
    trace_id: String,
    path_n8n_execution_id: Option<String>,
    /// Why a failure was not retried although retries are configured.
    pub retry_note: Option<String>,
    /// The route's redaction rules, for the response payload and the error detail.
    pub sanitizer: Arc<Sanitizer>,
    /// The route's slot in the per-route answer counters.
    route_slot: Option<usize>,
    /// The route's longest silence inside a response body.
    idle_timeout: Option<std::time::Duration>,
}

impl Attempt {
    /// Step 5 (D1): records the pending row of attempt `n` before anything goes upstream. A
    /// start the recorder refuses is answered here (`Err`), with the row finished.
    pub(super) async fn start(
        app: &Arc<App>,
        inbound: &Inbound,
        route: &Route,
        began: Instant,
        requested_at: chrono::NaiveDateTime,
    ) -> Result<Attempt, Response<ProxyBody>> {
        let id = Uuid::now_v7();
        let started = app
            .recorder
            .start(&inbound.corr.trace_id, &route.name, || {
                inbound.start(route, id, requested_at)
            })
            .await;
        let (ticket, refused) = match started {
            Ok(ticket) => (ticket, None),
            Err(Refused { reason, ticket }) => (ticket, Some(reason)),
        };
        let attempt = Attempt {
            app: app.clone(),
            ticket: Some(ticket),
            id,
            arrived: began,
            forwarded_at: None,
            stats: Arc::new(RequestStats::default()),
            trace_id: inbound.corr.trace_id.clone(),
            path_n8n_execution_id: inbound.corr.n8n_execution_id.clone(),
            retry_note: None,
            sanitizer: inbound.sanitizer.clone(),
            route_slot: app.metrics.route_requests.slot(&route.name),
            idle_timeout: route.idle_timeout(&app.config.upstream),
        };
        match refused {
            None => Ok(attempt),
            Some(reason) => {
                let e = ProxyError::StoreUnavailable(reason);
                Err(attempt.fail_locally(e, &inbound.corr))
            }
        }
    }

    /// The attempt number the store gave the row (known once committed).
    fn number(&self) -> Option<i32> {
        self.ticket.as_ref().and_then(Ticket::number)
    }

    /// Finishes the attempt as failed with `e` and answers the client locally.
    pub(super) fn fail_locally(mut self, e: ProxyError, corr: &Correlation) -> Response<ProxyBody> {
        let number = self.number();
        self.finish(Outcome::error(&e));
        (self.app.metrics.route_requests).count(self.route_slot, Class::Error);
        local(&e, Some((corr, number)), &self.app.config)
    }

    /// Step 8: the final response — headers now, the body streamed through the capture; the
    /// attempt finishes (D2) when the body ends, fails or is dropped.
    pub(super) fn respond(
        self,
        resp: Response<Incoming>,
        corr: &Correlation,
    ) -> Response<ProxyBody> {
        let cfg = self.app.config.clone();
        let (mut parts, body) = resp.into_parts();
        (self.app.metrics.route_requests)
            .count(self.route_slot, Class::of_status(parts.status.as_u16()));
        forward::strip_hop_by_hop(&mut parts.headers);
        let meta = ResponseMeta::new(&parts.headers, parts.status, &cfg);
        add_correlation_headers(&mut parts.headers, corr, self.number(), &cfg);
        let idle_timeout = self.idle_timeout;
        let sink = self.stream(meta);
        let body = TeeBody::new(body, cfg.capture.max_payload_bytes, idle_timeout, sink);
        Response::from_parts(parts, Either::Left(body))
    }

    /// Step 8 for an upgrade the upstream accepted: answers the client's handshake with the
    /// upstream's `101` and hands the attempt to a tunnel task, which joins the two connections
    /// and finishes the row when the tunnel closes (D2).
    pub(super) fn tunnel(
        mut self,
        mut resp: Response<Incoming>,
        client: hyper::upgrade::OnUpgrade,
        protocol: String,
        route: &Route,
        corr: &Correlation,
    ) -> Response<ProxyBody> {
        let upstream = hyper::upgrade::on(&mut resp);
        let cfg = self.app.config.clone();
        let (mut parts, _) = resp.into_parts();
        (self.app.metrics.route_requests).count(self.route_slot, Class::of_status(101));
        let value = parts.headers.get(http::header::UPGRADE).cloned();
        forward::strip_hop_by_hop(&mut parts.headers);
        if let Some(v) = value {
            super::tunnel::keep_upgrade(&mut parts.headers, v);
        }
        add_correlation_headers(&mut parts.headers, corr, self.number(), &cfg);
        if let Some(ticket) = &self.ticket {
            ticket.mark_in_progress();
        }
        let keep = route.tunnel_capture_bytes;
        let (idle, stop) = (self.idle_timeout, self.app.stop.clone());
        let tunnels = self.app.tunnels.clone();
        tunnels.spawn(async move {
            let end = super::tunnel::join(client, upstream, &protocol, idle, keep, stop).await;
            self.stats
                .bytes
                .fetch_add(end.to_upstream, Ordering::Relaxed);
            let cap = self.app.config.capture.max_payload_bytes;
            let outcome = super::tunnel::outcome(&end, &protocol, keep > 0, &self.sanitizer, cap);
            self.finish(outcome);
        });
        Response::from_parts(parts, Either::Right(http_body_util::Full::default()))
    }

    /// Hands the attempt to a task that finishes it when the response body ends; a long
    /// response marks the row `in_progress` first.
    fn stream(self, meta: ResponseMeta) -> FinishSink {
        let (tx, rx) = oneshot::channel();
        let mut attempt = self;
        let in_progress_after = attempt.app.config.capture.in_progress_after;
        let cap = attempt.app.config.capture.max_payload_bytes;
        tokio::spawn(async move {
            let mut rx: oneshot::Receiver<(BodyEnd, Captured)> = rx;
            let ended = match in_progress_after {
                Some(after) => tokio::select! {
                    r = &mut rx => Some(r),
                    _ = tokio::time::sleep(after) => None,
                },
                None => None,
            };
            let ended = match ended {
                Some(r) => r,
                None => {
                    if let Some(ticket) = &attempt.ticket {
                        ticket.mark_in_progress();
                    }
                    rx.await
                }
            };
            let (end, captured) = ended.unwrap_or((BodyEnd::Aborted, Captured::new(0)));
            let outcome = Outcome::streamed(&meta, end, captured, cap, &attempt.sanitizer);
            attempt.finish(outcome);
        });
        FinishSink(tx)
    }

    /// Builds the final update and hands it to the recorder. Runs at most once.
    pub(super) fn finish(&mut self, outcome: Outcome) {
        let Some(ticket) = self.ticket.take() else {
            return;
        };
        let mut outcome = match self.retry_note.take() {
            Some(note) => outcome.with_note(note),
            None => outcome,
        };
        if outcome.error_code.as_deref() == Some("CLIENT_ABORTED")
            && self.app.interrupting.load(Ordering::Relaxed)
        {
            let e = ProxyError::Interrupted;
            outcome.error_code = Some(e.code().to_owned());
            outcome.error_detail = Some(e.to_string());
        }
        let update = self.final_update(outcome);
        if let (Some(lookups), Status::Failed, Some(execution)) =
            (&self.app.lookups, update.status, &update.n8n_execution_id)
        {
            lookups.request(update.id, execution.clone(), self.sanitizer.clone());
        }
        ticket.finish(update);
    }

    /// D2: the final update `outcome` makes, its error detail sanitized.
    fn final_update(&mut self, outcome: Outcome) -> AttemptFinish {
        let duration = self.forwarded_at.unwrap_or(self.arrived).elapsed();
        let metrics = &self.app.metrics;
        metrics.attempt_duration.observe_duration(duration);
        let payload = &outcome.response_payload;
        note_truncation(
            metrics,
            outcome.response_truncated,
            payload,
            &self.trace_id,
            "response",
        );
        let (error_detail, detail_redactions) = match outcome.error_detail {
            Some(d) => {
                let (d, r) = self.sanitizer.column("error_detail", &d);
                (Some(d), r)
            }
            None => (None, Redactions::default()),
        };
        let redactions = redactions_record(&[
            ("response_payload", &outcome.response_redactions),
            ("error_detail", &detail_redactions),
        ]);
        AttemptFinish {
            id: self.id,
            responded_at: now_utc(),
            duration_ms: i32::try_from(duration.as_millis()).unwrap_or(i32::MAX),
            response_payload: outcome.response_payload,
            status: outcome.status,
            error_code: outcome.error_code,
            error_detail,
            n8n_execution_id: outcome
                .n8n_execution_id
                .or_else(|| self.path_n8n_execution_id.take()),
            http_status: outcome.http_status.map(i32::from),
            request_bytes: i64::try_from(self.stats.bytes.load(Ordering::Relaxed))
                .unwrap_or(i64::MAX),
            response_bytes: i64::try_from(outcome.response_bytes).unwrap_or(i64::MAX),
            redactions,
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.ticket.is_some() {
            let detail = if self.forwarded_at.is_some() {
                "client disconnected before the response started"
            } else {
                "client disconnected before the request was forwarded"
            };
            self.finish(Outcome {
                error_detail: Some(detail.into()),
                ..Outcome::error(&ProxyError::ClientBody(String::new()))
            });
        }
    }
}

/// Receives the response body's end (no I/O: a channel send) for the finishing task.
pub(crate) struct FinishSink(oneshot::Sender<(BodyEnd, Captured)>);

impl OnEnd for FinishSink {
    fn on_end(self, end: BodyEnd, captured: Captured) {
        let _ = self.0.send((end, captured));
    }
}
