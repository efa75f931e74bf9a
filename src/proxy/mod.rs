//! The request lifecycle (DESIGN.md §1). [`handle`] reads top to bottom as the list:
//! route → correlate → capture request → record start (D1) → forward → respond → finish (D2).
//! No SQL here: rows go through [`Store`]; no HTTP status decisions outside [`error`].

pub mod correlate;
pub mod error;
pub mod forward;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::capture::{
    drain_capped, read_prefix, BodyEnd, Captured, OnEnd, Prefix, PrefixError, RequestBody,
    RequestStats, TeeBody,
};
use crate::config::{Config, OnUnavailable, SpoolFull};
use crate::metrics::{Class, Metrics};
use crate::retry::{self, Decision, Failure};
use crate::sanitize::{redactions_record, BodySample, Redactions, Sanitizer, Stored};
use crate::spool::{Record, Spool};
use crate::store::{PendingInsert, Store};
use crate::trace::{now_utc, AttemptFinish, AttemptStart, Status};
use correlate::{correlate, Correlation};
use error::{Fault, ProxyError};
use forward::UpstreamClient;
use std::time::SystemTime;

/// The response body: the upstream's, streamed through the capture; or a short local answer.
pub type ProxyBody = Either<TeeBody<Incoming, FinishSink>, Full<Bytes>>;

/// Everything a request needs, shared by all connections.
pub struct App {
    pub config: Arc<Config>,
    pub store: Store,
    /// The durable journal (`on_unavailable = "spool"`).
    pub spool: Option<Spool>,
    pub client: UpstreamClient,
    pub metrics: Arc<Metrics>,
    /// Set when the shutdown deadline passed: exchanges cut from then on are recorded as
    /// `INTERRUPTED`, not as client aborts.
    pub interrupting: std::sync::atomic::AtomicBool,
}

/// Serves one request. Never fails: every problem becomes a response (and a row, once routed).
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let arrived = Instant::now();
    let requested_at = now_utc();
    let cfg = app.config.clone();

    // 2. route
    let Some(route) = cfg.route_for(req.uri().path()) else {
        tracing::debug!(path = req.uri().path(), "no route");
        return local(&ProxyError::NoRoute, None, &cfg);
    };
    Metrics::inc(&app.metrics.requests);

    // 3. correlate
    let corr = correlate(&cfg.correlation, route, req.headers(), req.uri().path());
    let (parts, body) = req.into_parts();
    let (host, mut early) = match forward::original_host(&parts) {
        Ok(h) => (h, None),
        Err(e) => (None, Some(e)),
    };
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
    let prefix = if early.is_none() {
        let (res, prefix) = read_prefix(body, cap, limit, cfg.server.request_body_timeout).await;
        early = res.err().map(|e| match e {
            PrefixError::TooLarge { limit } => ProxyError::BodyTooLarge(limit),
            PrefixError::Timeout(_) => ProxyError::ClientTimeout(e.to_string()),
            PrefixError::Client(s) => ProxyError::ClientBody(s),
        });
        prefix
    } else {
        Prefix {
            frames: Default::default(),
            captured: Captured::new(cap),
            rest: None,
        }
    };

    // 5-9, once per attempt (D3): record start (D1), forward, retry?, respond, finish (D2).
    // D4: what the row keeps is redacted (then fitted to the cap) by the route's rules.
    let sanitizer = route.sanitizer.clone();
    let request = sanitizer.payload(
        BodySample {
            bytes: &prefix.captured.bytes,
            total_bytes: declared_len.or((prefix.rest.is_none()).then_some(prefix.captured.total)),
            cut: prefix.rest.is_some() || prefix.captured.cut(),
            content_type: header_str(&parts.headers, header::CONTENT_TYPE),
            content_encoding: header_str(&parts.headers, header::CONTENT_ENCODING),
        },
        cap,
    );
    note_truncation(
        &app.metrics,
        request.truncated,
        &request.value,
        &corr.trace_id,
        "request",
    );
    let (http_target, target_redactions) = sanitizer.target(parts.uri.path(), parts.uri.query());
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
    let start_redactions = redactions_record(&[
        ("http_target", &target_redactions),
        ("request_payload", &request.redactions),
        ("workflow_id", &workflow_redactions),
        ("user_id", &user_redactions),
        ("action", &action_redactions),
    ]);
    if let Some(r) = &start_redactions {
        tracing::debug!(trace_id = %corr.trace_id, redactions = %r, "redacted before storage");
    }
    let request_payload = request.value;
    // The replay buffer is the capture buffer: bodies up to `max_payload_bytes` can be resent.
    let replay = prefix.replay(cap);
    let mut first_body = Some(prefix);
    let policy = &route.retry;
    let idle = cfg
        .upstream
        .idle_timeout
        .unwrap_or(cfg.upstream.response_timeout);
    let mut n: u32 = 0;
    loop {
        n += 1;
        // 5. record start (D1): the pending row is committed before anything goes upstream.
        let stats = Arc::new(RequestStats::default());
        let id = Uuid::now_v7();
        let attempt_requested_at = if n == 1 { requested_at } else { now_utc() };
        // Built again only if the pending row has to be spooled after PostgreSQL failed it.
        let start = || AttemptStart {
            id,
            trace_id: corr.trace_id.clone(),
            execution_id: corr.execution_id,
            source_service: route.source_service.clone(),
            destination_service: route.destination_service.clone(),
            workflow_id: workflow_id.clone(),
            action: action.clone(),
            user_id: user_id.clone(),
            requested_at: attempt_requested_at,
            request_payload: request_payload.clone(),
            http_method: parts.method.to_string(),
            http_target: http_target.clone(),
            route_name: route.name.clone(),
            n8n_execution_id: corr.n8n_execution_id.clone(),
            redactions: start_redactions.clone(),
        };
        let began = if n == 1 { arrived } else { Instant::now() };
        let mut attempt = Attempt::begin(
            app.clone(),
            start(),
            began,
            stats.clone(),
            &corr,
            sanitizer.clone(),
        );
        if let Err(reason) = attempt.wait_recorded().await {
            let spooled = match cfg.database.on_unavailable {
                OnUnavailable::Spool => attempt.spool_start(start).await,
                _ => None,
            };
            let policy = match (cfg.database.on_unavailable, spooled) {
                (OnUnavailable::Spool, Some(Ok(()))) => None,
                (OnUnavailable::Spool, Some(Err(e))) => {
                    tracing::error!(trace_id = %corr.trace_id, route = %route.name, error = %e,
                        database = %reason, "pending row neither committed nor spooled");
                    Some(match cfg.spool.spool_full {
                        SpoolFull::Reject => OnUnavailable::Reject,
                        SpoolFull::Forward => OnUnavailable::Forward,
                    })
                }
                (other, _) => Some(other),
            };
            match policy {
                None => {}
                // (`Spool` here: no journal record could be made; nothing is forwarded.)
                Some(OnUnavailable::Reject) | Some(OnUnavailable::Spool) => {
                    Metrics::inc(&app.metrics.rejected_unavailable);
                    tracing::warn!(trace_id = %corr.trace_id, route = %route.name, error = %reason,
                        "pending row not committed: request rejected, nothing forwarded");
                    let e = ProxyError::StoreUnavailable(reason);
                    return attempt.fail_locally(e, &corr);
                }
                Some(OnUnavailable::Forward) => {
                    Metrics::inc(&app.metrics.unrecorded);
                    tracing::warn!(trace_id = %corr.trace_id, route = %route.name, error = %reason,
                        "pending row not committed: forwarding unrecorded");
                }
            }
        }
        if let Some(e) = early.take() {
            return attempt.fail_locally(e, &corr);
        }

        // 6. forward
        let body = match (first_body.take(), &replay) {
            (Some(prefix), _) => RequestBody::new(prefix, limit, stats.clone()),
            (None, Some(replay)) => RequestBody::replay(replay, stats.clone()),
            (None, None) => {
                // `decide` never retries a body without a replay buffer.
                let e = ProxyError::UpstreamAborted("request body cannot be sent again".into());
                return attempt.fail_locally(e, &corr);
            }
        };
        let upstream_req =
            match forward::upstream_request(&parts, body, route, &corr, &cfg, host.clone(), peer) {
                Ok(r) => r,
                Err(e) => return attempt.fail_locally(e, &corr),
            };
        attempt.forwarded_at = Some(Instant::now());
        let timeout = cfg.upstream.response_timeout;
        let (e, failure) = match tokio::time::timeout(timeout, app.client.request(upstream_req))
            .await
        {
            Ok(Ok(resp)) => {
                // 7. retry? on a listed status, when safe.
                let status = resp.status().as_u16();
                if status >= 400 {
                    match policy.decide(n, &parts.method, replay.is_some(), Failure::Status(status))
                    {
                        Decision::Retry => {
                            let wait = policy
                                .backoff(n, retry::retry_after(resp.headers(), SystemTime::now()));
                            let (rparts, rbody) = resp.into_parts();
                            let meta = ResponseMeta::new(&rparts.headers, rparts.status, &cfg);
                            let (end, captured) = drain_capped(rbody, cap, idle).await;
                            attempt.finish(
                                Outcome::streamed(&meta, end, captured, cap, &attempt.sanitizer)
                                    .with_note(retrying(wait)),
                            );
                            Metrics::inc(&app.metrics.retries);
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        Decision::Stop(note) => attempt.retry_note = note,
                    }
                }
                // 8. respond: headers now, body frame by frame through the capture.
                return attempt.respond(resp, &corr);
            }
            Ok(Err(err)) => {
                let over = stats
                    .over_limit
                    .load(Ordering::Relaxed)
                    .then_some(limit)
                    .flatten();
                let failure = if err.is_connect() {
                    Failure::NotSent
                } else {
                    Failure::AfterSend
                };
                (forward::classify(&err, over), failure)
            }
            Err(_) => (
                ProxyError::UpstreamTimeout(timeout.as_millis()),
                Failure::AfterSend,
            ),
        };
        tracing::info!(trace_id = %corr.trace_id, route = %route.name, attempt = n, error = %e,
            "upstream exchange failed");
        if e.fault() == Fault::Upstream {
            match policy.decide(n, &parts.method, replay.is_some(), failure) {
                Decision::Retry => {
                    let wait = policy.backoff(n, None);
                    attempt.finish(Outcome::error(&e).with_note(retrying(wait)));
                    Metrics::inc(&app.metrics.retries);
                    tokio::time::sleep(wait).await;
                    continue;
                }
                Decision::Stop(note) => attempt.retry_note = note,
            }
        }
        return attempt.fail_locally(e, &corr);
    }
}

fn retrying(wait: std::time::Duration) -> String {
    format!("retrying in {} ms", wait.as_millis())
}

fn header_str(headers: &http::HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn add_correlation_headers(
    headers: &mut http::HeaderMap,
    corr: &Correlation,
    attempt_number: Option<i32>,
    cfg: &Config,
) {
    if let Ok(v) = HeaderValue::from_str(&corr.trace_id) {
        headers.insert(cfg.correlation.trace_id_header.clone(), v);
    }
    if let Some(n) = attempt_number {
        headers.insert(cfg.correlation.attempt_header.clone(), HeaderValue::from(n));
    }
}

/// A locally generated answer (no upstream response), with the correlation headers.
fn local(
    e: &ProxyError,
    corr: Option<(&Correlation, Option<i32>)>,
    cfg: &Config,
) -> Response<ProxyBody> {
    let (mut parts, body) = e.to_response().into_parts();
    if let Some((corr, number)) = corr {
        add_correlation_headers(&mut parts.headers, corr, number, cfg);
    }
    Response::from_parts(parts, Either::Right(body))
}

fn note_truncation(
    metrics: &Metrics,
    truncated: bool,
    payload: &Option<serde_json::Value>,
    trace_id: &str,
    which: &str,
) {
    if !truncated {
        return;
    }
    if let Some(t) = payload.as_ref().and_then(|p| p.get("_truncated")) {
        Metrics::inc(&metrics.truncated_payloads);
        tracing::info!(trace_id, payload = which, indicator = %t, "payload truncated for storage");
    }
}

/// What is known of the pending insert.
enum Insert {
    Unknown(PendingInsert),
    Committed,
    Failed(String),
    /// Durable in the spool journal; the final update follows it there.
    Spooled,
}

/// One attempt, from its pending row to its final update. Finishes exactly once: explicitly,
/// through the response body's end, or — if dropped first (client gone) — as aborted.
struct Attempt {
    app: Arc<App>,
    id: Uuid,
    arrived: Instant,
    forwarded_at: Option<Instant>,
    insert: Option<Insert>,
    stats: Arc<RequestStats>,
    trace_id: String,
    path_n8n_execution_id: Option<String>,
    /// The attempt number the store gave the row (known once committed).
    number: Option<i32>,
    /// Why a failure was not retried although retries are configured.
    retry_note: Option<String>,
    /// The route's redaction rules, for the response payload and the error detail.
    sanitizer: Arc<Sanitizer>,
    /// The route's slot in the per-route answer counters.
    route_slot: Option<usize>,
    /// The pending row, kept when it goes straight to the journal (PostgreSQL known to be
    /// unavailable), until it is spooled.
    spare: Option<Box<AttemptStart>>,
}

/// Response facts kept for the final update.
struct ResponseMeta {
    status: StatusCode,
    content_type: Option<String>,
    content_encoding: Option<String>,
    n8n_execution_id: Option<String>,
}

impl ResponseMeta {
    fn new(headers: &http::HeaderMap, status: StatusCode, cfg: &Config) -> Self {
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
struct Outcome {
    status: Status,
    error_code: Option<String>,
    error_detail: Option<String>,
    http_status: Option<u16>,
    response_payload: Option<serde_json::Value>,
    n8n_execution_id: Option<String>,
    response_bytes: u64,
    response_redactions: Redactions,
    response_truncated: bool,
}

impl Outcome {
    /// Appends a note (retry decision) to the detail of a failure.
    fn with_note(mut self, note: String) -> Self {
        if self.status == Status::Failed {
            self.error_detail = Some(match self.error_detail.take() {
                Some(d) => format!("{d}; {note}"),
                None => note,
            });
        }
        self
    }

    fn error(e: &ProxyError) -> Self {
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
    fn streamed(
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
        let code = meta.status.as_u16();
        let (status, error_code, error_detail) = match end {
            BodyEnd::Complete if code < 400 => (Status::Success, None, None),
            BodyEnd::Complete => (
                Status::Failed,
                Some(match code {
                    401 | 403 => "AUTH_FAILED".to_owned(),
                    _ => format!("HTTP_{code}"),
                }),
                Some(format!("upstream answered {}", meta.status)),
            ),
            BodyEnd::Error(e) => (
                Status::Failed,
                Some("UPSTREAM_ABORTED".into()),
                Some(format!(
                    "upstream response body failed after {} bytes: {e}",
                    captured.total
                )),
            ),
            BodyEnd::IdleTimeout => (
                Status::Failed,
                Some("TIMEOUT".into()),
                Some(format!(
                    "upstream response body stalled after {} bytes",
                    captured.total
                )),
            ),
            BodyEnd::Aborted => (
                Status::Failed,
                Some("CLIENT_ABORTED".into()),
                Some(format!(
                    "client disconnected after {} response bytes",
                    captured.total
                )),
            ),
        };
        Outcome {
            status,
            error_code,
            error_detail,
            http_status: Some(code),
            response_payload: payload,
            n8n_execution_id,
            response_bytes: captured.total,
            response_redactions,
            response_truncated,
        }
    }
}

impl Attempt {
    /// Queues the pending row (D1); [`Attempt::wait_recorded`] waits for its commit.
    fn begin(
        app: Arc<App>,
        start: AttemptStart,
        began: Instant,
        stats: Arc<RequestStats>,
        corr: &Correlation,
        sanitizer: Arc<Sanitizer>,
    ) -> Self {
        let id = start.id;
        let route_slot = app.metrics.route_requests.slot(&start.route_name);
        let (insert, spare) = match &app.spool {
            // PostgreSQL is known to be unavailable: straight to the journal.
            Some(spool) if spool.engaged() => (
                Err("PostgreSQL unavailable; recording to the spool journal".into()),
                Some(Box::new(start)),
            ),
            _ => (app.store.begin(start).map_err(|e| e.to_string()), None),
        };
        let insert = match insert {
            Ok(pending) => Insert::Unknown(pending),
            Err(e) => Insert::Failed(e),
        };
        Attempt {
            app,
            id,
            arrived: began,
            forwarded_at: None,
            insert: Some(insert),
            stats,
            trace_id: corr.trace_id.clone(),
            path_n8n_execution_id: corr.n8n_execution_id.clone(),
            number: None,
            retry_note: None,
            sanitizer,
            route_slot,
            spare,
        }
    }

    /// `on_unavailable = "spool"`: appends the pending row (kept, or built by `rebuild`) to the
    /// journal and waits until it is durable. `None` when there is no spool.
    async fn spool_start(
        &mut self,
        rebuild: impl FnOnce() -> AttemptStart,
    ) -> Option<Result<(), crate::spool::SpoolError>> {
        let spool = self.app.spool.clone()?;
        let start = self.spare.take().unwrap_or_else(|| Box::new(rebuild()));
        let waited = Instant::now();
        // Spooled from the moment the record is queued: if the client goes away while it is
        // being synced, the attempt's final update (aborted) follows it into the journal.
        let before = self.insert.replace(Insert::Spooled);
        let result = spool
            .append(&Record::Start {
                instance: self.app.store.instance(),
                start,
            })
            .await;
        self.app
            .metrics
            .d1_insert
            .observe_duration(waited.elapsed());
        match &result {
            // The timed-out insert may still commit; the replayed copy is then a no-op.
            Ok(()) => spool.engage(),
            Err(_) => self.insert = before,
        }
        Some(result)
    }

    /// Waits up to the insert timeout for the pending row's commit.
    async fn wait_recorded(&mut self) -> Result<(), String> {
        let limit = self.app.store.insert_timeout();
        let result = match &mut self.insert {
            Some(Insert::Unknown(pending)) => {
                let waited = Instant::now();
                let r = pending.wait(Some(limit)).await;
                let metrics = &self.app.metrics;
                metrics.d1_insert.observe_duration(waited.elapsed());
                match r {
                    None => return Err(format!("no commit within {} ms", limit.as_millis())),
                    Some(r) => r,
                }
            }
            Some(Insert::Committed) => return Ok(()),
            Some(Insert::Failed(e)) => return Err(e.clone()),
            Some(Insert::Spooled) => return Ok(()),
            None => return Err("attempt already finished".into()),
        };
        match result {
            Ok(number) => {
                self.insert = Some(Insert::Committed);
                self.number = Some(number);
                Ok(())
            }
            Err(e) => {
                let e = e.to_string();
                self.insert = Some(Insert::Failed(e.clone()));
                Err(e)
            }
        }
    }

    /// Finishes the attempt as failed with `e` and answers the client locally.
    fn fail_locally(mut self, e: ProxyError, corr: &Correlation) -> Response<ProxyBody> {
        self.finish(Outcome::error(&e));
        (self.app.metrics.route_requests).count(self.route_slot, Class::Error);
        local(&e, Some((corr, self.number)), &self.app.config)
    }

    /// The final response: headers now, the body streamed through the capture; the attempt
    /// finishes (D2) when the body ends, fails or is dropped.
    fn respond(self, resp: Response<Incoming>, corr: &Correlation) -> Response<ProxyBody> {
        let cfg = self.app.config.clone();
        let (mut parts, body) = resp.into_parts();
        (self.app.metrics.route_requests)
            .count(self.route_slot, Class::of_status(parts.status.as_u16()));
        forward::strip_hop_by_hop(&mut parts.headers);
        let meta = ResponseMeta::new(&parts.headers, parts.status, &cfg);
        add_correlation_headers(&mut parts.headers, corr, self.number, &cfg);
        let sink = self.stream(meta);
        let body = TeeBody::new(
            body,
            cfg.capture.max_payload_bytes,
            cfg.upstream.idle_timeout,
            sink,
        );
        Response::from_parts(parts, Either::Left(body))
    }

    /// Hands the attempt to a task that finishes it when the response body ends.
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
                    if let Some(Insert::Committed) = attempt.insert {
                        attempt.app.store.mark_in_progress(attempt.id);
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

    /// Builds the final update and hands it to the store. Runs at most once.
    fn finish(&mut self, outcome: Outcome) {
        let Some(insert) = self.insert.take() else {
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
        let duration = self.forwarded_at.unwrap_or(self.arrived).elapsed();
        self.app.metrics.attempt_duration.observe_duration(duration);
        note_truncation(
            &self.app.metrics,
            outcome.response_truncated,
            &outcome.response_payload,
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
        let finish = AttemptFinish {
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
        };
        let store = self.app.store.clone();
        let metrics = self.app.metrics.clone();
        match insert {
            Insert::Committed => submit(&store, &metrics, finish),
            Insert::Failed(_) => {
                tracing::debug!(trace_id = %self.trace_id, "unrecorded request finished");
            }
            Insert::Spooled => {
                if let Some(spool) = &self.app.spool {
                    spool.append_detached(&Record::Finish {
                        finish: Box::new(finish),
                    });
                }
            }
            // The insert may still commit: finish once it does, never before.
            Insert::Unknown(mut pending) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move {
                        if let Some(Ok(_)) = pending.wait(None).await {
                            submit(&store, &metrics, finish);
                        }
                    });
                }
            }
        }
    }
}

fn submit(store: &Store, metrics: &Metrics, finish: AttemptFinish) {
    let id = finish.id;
    if let Err(e) = store.record_finish(finish) {
        Metrics::inc(&metrics.finish_failed);
        tracing::error!(row_id = %id, error = %e, "final update not queued");
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if self.insert.is_some() {
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
pub struct FinishSink(oneshot::Sender<(BodyEnd, Captured)>);

impl OnEnd for FinishSink {
    fn on_end(self, end: BodyEnd, captured: Captured) {
        let _ = self.0.send((end, captured));
    }
}
