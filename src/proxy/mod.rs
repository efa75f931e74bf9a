//! The request lifecycle (DESIGN.md §1). [`handle`] reads top to bottom as the list:
//! route → correlate → capture → start (D1) → forward → retry? → respond → finish (D2).
//! No SQL and no decision about where rows go here: that is the
//! [`Recorder`](crate::record::Recorder)'s; no HTTP status decisions outside [`error`].

mod attempt;
pub(crate) mod correlate;
pub(crate) mod error;
pub(crate) mod forward;
mod inbound;
mod outcome;
mod tunnel;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::capture::{drain_capped, RequestBody, TeeBody};
use crate::config::{Config, Route};
use crate::error::Chain;
use crate::metrics::Metrics;
use crate::record::Recorder;
use crate::retry::{self, Decision, Failure};
use crate::trace::now_utc;
use attempt::{Attempt, FinishSink};
use correlate::Correlation;
use error::{Fault, ProxyError};
use forward::UpstreamClient;
use inbound::Inbound;
use outcome::{Outcome, ResponseMeta};

/// The response body: the upstream's, streamed through the capture; or a short local answer.
pub(crate) type ProxyBody = Either<TeeBody<Incoming, FinishSink>, Full<Bytes>>;

/// Everything a request needs, shared by all connections.
pub(crate) struct App {
    pub config: Arc<Config>,
    /// Where every attempt's row goes.
    pub recorder: Recorder,
    pub client: UpstreamClient,
    pub metrics: Arc<Metrics>,
    /// Set when the shutdown deadline passed: exchanges cut from then on are recorded as
    /// `INTERRUPTED`, not as client aborts.
    pub interrupting: std::sync::atomic::AtomicBool,
    /// The open tunnels (upgraded connections), which outlive their HTTP connection.
    pub tunnels: tokio_util::task::TaskTracker,
    /// Cancelled when shutdown begins: open tunnels close then.
    pub stop: tokio_util::sync::CancellationToken,
    /// n8n's account of failed executions (`[n8n]`), if configured.
    pub lookups: Option<crate::n8n::Lookups>,
}

/// Serves one request. Never fails: every problem becomes a response (and a row, once routed).
pub(crate) async fn handle(
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
    app.metrics.requests.inc();
    // 3, 4. correlate, capture the request
    let mut inbound = Inbound::read(&app, route, req).await;
    // 5-9, once per attempt (D3).
    let mut n: u32 = 0;
    loop {
        n += 1;
        let (began, at) = match n {
            1 => (arrived, requested_at),
            _ => (Instant::now(), now_utc()),
        };
        // 5. start (D1): the pending row is recorded before anything goes upstream.
        let attempt = match Attempt::start(&app, &inbound, route, began, at).await {
            Ok(a) => a,
            Err(refused) => return refused,
        };
        if let Some(e) = inbound.early.take() {
            return attempt.fail_locally(e, &inbound.corr);
        }
        // 6, 7. forward; retry?
        match exchange(&app, &mut inbound, route, attempt, n, peer).await {
            Exchanged::Answered(response) => return response,
            Exchanged::Retry(wait) => {
                app.metrics.retries.inc();
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// How one attempt's exchange ended.
#[expect(
    clippy::large_enum_variant,
    reason = "moved once per attempt; boxing the response would allocate on every request"
)]
enum Exchanged {
    /// 8. respond: the client's answer (its attempt finishes as the body streams).
    Answered(Response<ProxyBody>),
    /// The attempt failed and is finished; the next one starts after the wait.
    Retry(Duration),
}

/// Steps 6 and 7 of one attempt: forwards the request, then answers, or finishes the attempt
/// and asks for a retry when the route's policy allows one.
async fn exchange(
    app: &Arc<App>,
    inbound: &mut Inbound,
    route: &Route,
    mut attempt: Attempt,
    n: u32,
    peer: SocketAddr,
) -> Exchanged {
    let cfg = &app.config;
    let Some(body) = request_body(inbound, &attempt) else {
        // `decide` never retries a body without a replay buffer.
        let e = ProxyError::UpstreamAborted("request body cannot be sent again".into());
        return Exchanged::Answered(attempt.fail_locally(e, &inbound.corr));
    };
    let (parts, corr) = (&inbound.parts, &inbound.corr);
    let host = inbound.host.clone();
    let mut upstream_req =
        match forward::upstream_request(parts, body, route, corr, cfg, host, peer) {
            Ok(r) => r,
            Err(e) => return Exchanged::Answered(attempt.fail_locally(e, corr)),
        };
    if let Some(u) = &inbound.upgrade {
        tunnel::keep_upgrade(upstream_req.headers_mut(), u.value.clone());
    }
    attempt.forwarded_at = Some(Instant::now());
    let timeout = route.response_timeout(&cfg.upstream);
    let sent = tokio::time::timeout(timeout, app.client.request(upstream_req)).await;
    let (e, failure) = match sent {
        Ok(Ok(resp)) => return answered(cfg, inbound, route, attempt, n, resp).await,
        Ok(Err(err)) => {
            let over = (attempt.stats.over_limit.load(Ordering::Relaxed))
                .then_some(inbound.limit)
                .flatten();
            let failure = match err.is_connect() {
                true => Failure::NotSent,
                false => Failure::AfterSend,
            };
            let client = attempt.stats.client_error.get();
            (forward::classify(&err, over, client), failure)
        }
        Err(_) => (
            ProxyError::UpstreamTimeout(timeout.as_millis()),
            Failure::AfterSend,
        ),
    };
    tracing::info!(trace_id = %corr.trace_id, route = %route.name, attempt = n, error = %Chain(&e),
        "upstream exchange failed");
    if e.fault() == Fault::Upstream {
        let can_replay = inbound.replay.is_some();
        match route.retry.decide(n, &parts.method, can_replay, failure) {
            Decision::Retry => {
                let wait = route.retry.backoff(n, None);
                attempt.finish(Outcome::error(&e).with_note(retrying(wait)));
                return Exchanged::Retry(wait);
            }
            Decision::Stop(note) => attempt.retry_note = note,
        }
    }
    Exchanged::Answered(attempt.fail_locally(e, corr))
}

/// The body of this attempt: the first one streams the client's; retries resend the capture.
fn request_body(inbound: &mut Inbound, attempt: &Attempt) -> Option<RequestBody<Incoming>> {
    let stats = attempt.stats.clone();
    match (inbound.body.take(), &inbound.replay) {
        (Some(prefix), _) => Some(RequestBody::new(prefix, inbound.limit, stats)),
        (None, Some(replay)) => Some(RequestBody::replay(replay, stats)),
        (None, None) => None,
    }
}

/// An upstream response: retried when its status is listed and a retry is safe (the failed
/// response is read and recorded first); otherwise streamed to the client.
async fn answered(
    cfg: &Config,
    inbound: &mut Inbound,
    route: &Route,
    mut attempt: Attempt,
    n: u32,
    resp: Response<Incoming>,
) -> Exchanged {
    let status = resp.status().as_u16();
    if status >= 400 {
        let can_replay = inbound.replay.is_some();
        let method = &inbound.parts.method;
        match route
            .retry
            .decide(n, method, can_replay, Failure::Status(status))
        {
            Decision::Retry => {
                let retry_after = retry::retry_after(resp.headers(), SystemTime::now());
                let wait = route.retry.backoff(n, retry_after);
                let (rparts, rbody) = resp.into_parts();
                let meta = ResponseMeta::new(&rparts.headers, rparts.status, cfg);
                let cap = cfg.capture.max_payload_bytes;
                let idle = route
                    .idle_timeout(&cfg.upstream)
                    .unwrap_or_else(|| route.response_timeout(&cfg.upstream));
                let (end, captured) = drain_capped(rbody, cap, idle).await;
                let outcome = Outcome::streamed(&meta, end, captured, cap, &attempt.sanitizer);
                attempt.finish(outcome.with_note(retrying(wait)));
                return Exchanged::Retry(wait);
            }
            Decision::Stop(note) => attempt.retry_note = note,
        }
    }
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        // A 101 answers an upgrade the client asked for: the two connections are joined.
        if let Some(upgrade) = inbound.upgrade.as_mut() {
            if let Some(client) = upgrade.client.take() {
                let protocol = upgrade.protocol();
                return Exchanged::Answered(attempt.tunnel(
                    resp,
                    client,
                    protocol,
                    route,
                    &inbound.corr,
                ));
            }
        }
        let e = ProxyError::UpstreamAborted(
            "upstream answered 101 Switching Protocols to a request that asked for no upgrade"
                .into(),
        );
        return Exchanged::Answered(attempt.fail_locally(e, &inbound.corr));
    }
    Exchanged::Answered(attempt.respond(resp, &inbound.corr))
}

fn retrying(wait: Duration) -> String {
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
    if let Ok(v) = HeaderValue::from_str(corr.wire_trace_id()) {
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
        metrics.truncated_payloads.inc();
        tracing::info!(trace_id, payload = which, indicator = %t, "payload truncated for storage");
    }
}
