//! The admin listener, separate from the proxy listener: health and metrics for the platform
//! (no token), and a read-only JSON query API over `communication_traces` for agents and people
//! (DATA-002 "Agent Access"), behind a bearer token. SQL lives in `crate::store::query`; JSON
//! shaping in [`render`]; the metrics text in `crate::metrics`; this module owns the listener,
//! authentication, routing and the one error → HTTP mapping.
//!
//! | endpoint | what |
//! |---|---|
//! | `GET /healthz` | the process is alive: 200 `ok` (no token) |
//! | `GET /readyz` | 200 when PostgreSQL answers `SELECT 1` in time, or the spool journal has room; else 503 (no token) |
//! | `GET /metrics` | Prometheus text format 0.0.4 (no token) |
//! | `GET /api/traces/{traceId}` | the chain, by attempt number (getTraceChain) |
//! | `GET /api/traces/{traceId}/diff` | what changed between consecutive attempts |
//! | `GET /api/workflows/{workflowId}/failures` | newest failed attempts (getRecentFailures) |
//! | `GET /api/users/{userId}/history` | newest attempts of a user (getUserHistory) |
//! | `GET /api/executions/{executionId}/traces` | attempts of one execution (DATA-004) |
//! | `GET /api/traces` | filtered search, keyset-paginated |
//! | `GET /api/stats` | counts, failure rate, p50/p95 duration |
//! | `GET /api/overview` | one window in buckets, top failures, unfinished now ([`overview`]) |
//! | `GET /api/openapi.json` | OpenAPI 3.1 description of the above |
//! | `POST /mcp` | the same queries as MCP tools over Streamable HTTP ([`mcp`]; bearer token only) |
//! | `GET /`, `/ui/...`, `POST /ui/signin`, `/ui/signout` | the Memory Explorer ([`ui`]) |
//!
//! `/api` takes the bearer token or an explorer session cookie ([`session`]).

mod agent;
pub mod cli;
pub mod mcp;
mod openapi;
mod overview;
pub mod params;
pub mod render;
pub mod session;
pub mod ui;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use deadpool_postgres::Pool;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::config::{Config, Token};
use crate::error::Chain;
use crate::metrics::Metrics;
use crate::record::{Probe, Readiness};
use crate::server;
use crate::shutdown::Shutdown;
use crate::store::query::{self, Cursor, GroupBy, PageRows, QueryError, SearchFilter};
use crate::store::StoreError;
use crate::trace::{Status, TraceRow};
use params::Params;
use render::Projection;

/// Most attempts a chain or execution response lists (`hasMore` says when there are more).
pub const MAX_CHAIN: i64 = 1000;
/// Concurrent admin connections; more wait in the accept queue.
const MAX_CONNECTIONS: usize = 64;
/// Time an admin connection has to send its request head.
const ADMIN_HEAD_DEADLINE: Duration = Duration::from_secs(2);
/// Default stats window: the last day.
const DEFAULT_STATS_WINDOW: chrono::TimeDelta = chrono::TimeDelta::days(1);

type Resp = Response<Full<Bytes>>;

/// What the handlers share.
pub struct ApiState {
    pool: Pool,
    /// `None`: the query API answers 403 (health and metrics still serve).
    token: Option<Token>,
    budget: usize,
    metrics: Arc<Metrics>,
    /// Asked by `/readyz`.
    readiness: Probe,
    /// The Memory Explorer's sessions and settings.
    explorer: ui::Explorer,
    /// The current overview windows, kept briefly (`overview`).
    overviews: Arc<overview::OverviewCache>,
    /// `/mcp`, with its own state of budget `admin.mcp_max_response_bytes`.
    mcp: Option<(mcp::McpHttp, usize)>,
}

impl ApiState {
    pub fn new(
        pool: Pool,
        admin: &crate::config::AdminConfig,
        metrics: Arc<Metrics>,
        readiness: Probe,
    ) -> ApiState {
        let tools = Arc::new(ApiState::queries(
            pool.clone(),
            admin,
            metrics.clone(),
            readiness.clone(),
        ));
        ApiState {
            pool,
            token: admin.token.clone(),
            budget: admin.max_response_bytes,
            metrics,
            readiness,
            explorer: ui::Explorer::new(admin),
            overviews: Arc::default(),
            mcp: Some((mcp::McpHttp::new(tools), admin.mcp_max_response_bytes)),
        }
    }

    /// A state for the MCP tools: the queries of `/api` with the MCP budget, no `/mcp` of its
    /// own.
    pub fn queries(
        pool: Pool,
        admin: &crate::config::AdminConfig,
        metrics: Arc<Metrics>,
        readiness: Probe,
    ) -> ApiState {
        ApiState {
            pool,
            token: admin.token.clone(),
            budget: admin.mcp_max_response_bytes,
            metrics,
            readiness,
            explorer: ui::Explorer::new(admin),
            overviews: Arc::default(),
            mcp: None,
        }
    }
}

/// The query pool: small, separate from the proxy's (a slow query never takes a connection the
/// D1 insert path needs), with the admin statement timeout.
pub fn query_pool(config: &Config) -> Result<Pool, StoreError> {
    let mut db = config.database.clone();
    db.pool_size = config.admin.pool_size;
    db.statement_timeout = config.admin.statement_timeout;
    crate::store::pool(&db)
}

/// Starts serving the admin listener on `listener`, as a task of `shutdown`: it stops accepting
/// when shutdown begins and drains until the shutdown deadline. Health and metrics always serve;
/// without a configured token the query API refuses every request (logged), since it would
/// expose every stored payload.
pub fn start(
    listener: TcpListener,
    config: &Config,
    metrics: Arc<Metrics>,
    readiness: Probe,
    shutdown: &Arc<Shutdown>,
) -> Result<(), StoreError> {
    if config.admin.token.is_none() {
        tracing::warn!(
            "admin query API disabled: no admin.token (or TRACE_PROXY_ADMIN_TOKEN) configured; /healthz, /readyz and /metrics still serve"
        );
    }
    let state = Arc::new(ApiState::new(
        query_pool(config)?,
        &config.admin,
        metrics,
        readiness,
    ));
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(listen = %addr, "admin API serving");
    let limits = server::Limits {
        name: "admin",
        max_connections: MAX_CONNECTIONS,
        // Short: health checks must get a slot even when idle sockets try to hold them all.
        header_read_timeout: config.server.header_read_timeout.min(ADMIN_HEAD_DEADLINE),
        send_timeout: config.server.send_timeout,
        idle_timeout: config.server.idle_timeout,
        http2: true,
    };
    let handler = move |req, peer: std::net::SocketAddr| {
        let state = state.clone();
        async move { handle(&state, peer.ip(), req).await }
    };
    let task_shutdown = shutdown.clone();
    shutdown.spawn(async move {
        let open = server::accept(listener, &limits, &task_shutdown, handler).await;
        open.drain(&task_shutdown, || {}).await;
    });
    Ok(())
}

/// Why a request was not answered with data.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("missing or wrong bearer token, and no signed-in explorer session")]
    Unauthorized,
    #[error("wrong token")]
    WrongToken,
    #[error("{0}")]
    Forbidden(String),
    #[error("too many failed sign-ins; try again in {} s", .0.as_secs().max(1))]
    Throttled(Duration),
    #[error("only POST is allowed here")]
    PostOnly,
    #[error("the query API is disabled until admin.token (or TRACE_PROXY_ADMIN_TOKEN) is set")]
    Disabled,
    #[error("{0}")]
    NotFound(String),
    #[error("this API is read-only: only GET is allowed")]
    MethodNotAllowed,
    #[error("the query took longer than admin.statement_timeout_ms; narrow it (a shorter since/until window, more filters)")]
    Timeout,
    #[error("the trace store is unavailable")]
    Unavailable,
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        match e {
            QueryError::Timeout => ApiError::Timeout,
            QueryError::Invalid(m) => ApiError::BadRequest(m),
            QueryError::Store(e) => {
                tracing::warn!(error = %Chain(&e), "admin query failed");
                ApiError::Unavailable
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        QueryError::from(e).into()
    }
}

/// The one error → HTTP status and error code mapping of the admin API (and of MCP tool errors).
fn error_status(e: &ApiError) -> (StatusCode, &'static str) {
    match e {
        ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
        ApiError::Unauthorized | ApiError::WrongToken => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
        ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "FORBIDDEN"),
        ApiError::Throttled(_) => (StatusCode::TOO_MANY_REQUESTS, "TOO_MANY_REQUESTS"),
        ApiError::PostOnly => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
        ApiError::Disabled => (StatusCode::FORBIDDEN, "API_DISABLED"),
        ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        ApiError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
        ApiError::Timeout => (StatusCode::GATEWAY_TIMEOUT, "QUERY_TIMEOUT"),
        ApiError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "STORE_UNAVAILABLE"),
    }
}

impl ApiError {
    /// The error code of the JSON error envelope (also of an MCP tool's error result).
    pub(crate) fn code(&self) -> &'static str {
        error_status(self).1
    }
}

fn error_response(e: &ApiError) -> Resp {
    let (status, code) = error_status(e);
    let mut resp = json_response(
        status,
        &json!({"error": {"code": code, "message": e.to_string()}}),
    );
    match e {
        ApiError::Unauthorized => {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"trace-proxy admin\""),
            );
        }
        ApiError::MethodNotAllowed => {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET"));
        }
        ApiError::PostOnly => {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("POST"));
        }
        ApiError::Throttled(wait) => {
            let secs = wait.as_secs().max(1).to_string();
            if let Ok(v) = HeaderValue::from_str(&secs) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        _ => {}
    }
    resp
}

fn json_response(status: StatusCode, body: &Value) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Answers one admin request from `peer`. Only an explorer sign-in reads a request body.
pub async fn handle<B>(state: &ApiState, peer: IpAddr, req: Request<B>) -> Resp
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display,
{
    let started = Instant::now();
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let mut resp = match path.as_str() {
        "/healthz" | "/readyz" | "/metrics" => platform(state, &req).await,
        p if ui::serves(p) => ui::handle(state, peer, req).await,
        "/mcp" => match (&state.mcp, state.token.is_some(), bearer(state, &req)) {
            (_, false, _) => error_response(&ApiError::Disabled),
            (_, true, false) => error_response(&ApiError::Unauthorized),
            (Some((mcp, budget)), true, true) => mcp.handle(req, *budget).await,
            (None, true, true) => error_response(&ApiError::NotFound("no MCP here".into())),
        },
        _ => match &route(state, &req).await {
            Ok(body) => json_response(StatusCode::OK, body),
            Err(e) => error_response(e),
        },
    };
    ui::secure(&mut resp);
    tracing::debug!(%method, %path, status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64, "admin request");
    resp
}

/// `/healthz`, `/readyz`, `/metrics`: for load balancers, orchestrators and Prometheus, so no
/// token. They expose counts and route names only, never stored payloads.
async fn platform<B>(state: &ApiState, req: &Request<B>) -> Resp {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return error_response(&ApiError::MethodNotAllowed);
    }
    match req.uri().path() {
        "/healthz" => text_response(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
        "/readyz" => match state.readiness.ready().await {
            Readiness::Ready => text_response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "ready\n".into(),
            ),
            Readiness::Spooling(reason) => text_response(
                StatusCode::OK,
                "text/plain; charset=utf-8",
                format!("ready: recording to the spool journal ({reason})\n"),
            ),
            Readiness::NotReady(reason) => {
                tracing::debug!(%reason, "not ready");
                text_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain; charset=utf-8",
                    format!("not ready: {reason}\n"),
                )
            }
        },
        _ => text_response(
            StatusCode::OK,
            crate::metrics::PROMETHEUS_CONTENT_TYPE,
            state.metrics.render(),
        ),
    }
}

fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn bearer<B>(state: &ApiState, req: &Request<B>) -> bool {
    let Some(token) = &state.token else {
        return false;
    };
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return false;
    };
    let v = value.as_bytes();
    // RFC 6750 §2.1: `Bearer` is case-insensitive, one space, then the token.
    v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") && token.matches(&v[7..])
}

/// A valid bearer token, or the cookie of a live explorer session made with the current token.
fn authorized<B>(state: &ApiState, req: &Request<B>) -> bool {
    bearer(state, req)
        || state.token.as_ref().is_some_and(|t| {
            session::cookie_value(req.headers())
                .is_some_and(|id| state.explorer.sessions.valid(id, t))
        })
}

async fn route<B>(state: &ApiState, req: &Request<B>) -> Result<Value, ApiError> {
    if state.token.is_none() {
        return Err(ApiError::Disabled);
    }
    if !authorized(state, req) {
        return Err(ApiError::Unauthorized);
    }
    if req.method() != Method::GET {
        return Err(ApiError::MethodNotAllowed);
    }
    let raw: Vec<&str> = req.uri().path().split('/').skip(1).collect();
    let mut seg = Vec::with_capacity(raw.len());
    for s in &raw {
        seg.push(params::decode_segment(s).map_err(ApiError::BadRequest)?);
    }
    let seg: Vec<&str> = seg.iter().map(String::as_str).collect();
    dispatch(state, &seg, req.uri().query()).await
}

/// Answers the query route of the decoded path segments `seg` (`["api", "traces", id]`): the
/// one implementation behind `/api` and the MCP tools.
pub(crate) async fn dispatch(
    state: &ApiState,
    seg: &[&str],
    query: Option<&str>,
) -> Result<Value, ApiError> {
    let bad = ApiError::BadRequest;
    match seg {
        ["api", "traces"] => search(state, query).await,
        ["api", "traces", id] => chain(state, id, query).await,
        ["api", "traces", id, "diff"] => diff(state, id, query).await,
        ["api", "traces", id, "explain"] => agent::explain(state, id, query).await,
        ["api", "failures", "recurring"] => agent::recurring(state, query).await,
        ["api", "workflows", id, "patterns"] => agent::patterns(state, id, query).await,
        ["api", "workflows", id, "failures"] => {
            let id = params::id("workflowId", id).map_err(bad)?;
            newest_first(state, query, &[], |c, page| {
                Box::pin(async move { query::recent_failures(c, &id, &page).await })
            })
            .await
        }
        ["api", "users", id, "history"] => {
            let id = params::id("userId", id).map_err(bad)?;
            newest_first(state, query, &[], |c, page| {
                Box::pin(async move { query::user_history(c, &id, &page).await })
            })
            .await
        }
        ["api", "executions", id, "traces"] => execution(state, id, query).await,
        ["api", "stats"] => stats(state, query).await,
        ["api", "overview"] => overview::overview(state, query).await,
        ["api", "openapi.json"] => {
            Params::parse(query, &[]).map_err(bad)?;
            Ok(openapi::document())
        }
        _ => Err(ApiError::NotFound(format!(
            "no such endpoint: /{}; see /api/openapi.json",
            seg.join("/")
        ))),
    }
}

/// Parameters every list of rows takes.
const ROW_PARAMS: [&str; 2] = ["payloads", "fields"];
/// …plus those of a newest-first, paginated list.
const PAGE_PARAMS: [&str; 4] = ["payloads", "fields", "limit", "cursor"];

type PageFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<PageRows, QueryError>> + Send + 'a>>;

/// A newest-first list: parse the page, run `fetch`, fill the byte budget, add the cursor.
async fn newest_first<F>(
    state: &ApiState,
    query: Option<&str>,
    extra: &[&str],
    fetch: F,
) -> Result<Value, ApiError>
where
    F: for<'c> FnOnce(&'c tokio_postgres::Client, query::Page) -> PageFuture<'c>,
{
    let allowed: Vec<&str> = PAGE_PARAMS.iter().chain(extra).copied().collect();
    let p = Params::parse(query, &allowed).map_err(ApiError::BadRequest)?;
    let projection = p.projection().map_err(ApiError::BadRequest)?;
    let page = p.page(&projection).map_err(ApiError::BadRequest)?;
    let client = state.pool.get().await?;
    let found = fetch(&client, page).await?;
    Ok(page_json(&projection, found, page.limit, state.budget))
}

/// `{"items": [...], "count", "limit", "hasMore", "nextCursor", "truncated"}` of a
/// newest-first page (also `traces … --json`).
pub(crate) fn page_json(
    projection: &Projection,
    found: PageRows,
    limit: i64,
    budget: usize,
) -> Value {
    let items = found.rows.iter().map(|r| projection.row(r)).collect();
    let filled = render::fill(items, budget);
    let shown = filled.items.len();
    let has_more = found.has_more || shown < found.rows.len();
    let next = if has_more {
        found.rows.get(shown.wrapping_sub(1)).map(Cursor::after)
    } else {
        None
    };
    let mut head = Map::new();
    head.insert("count".into(), json!(shown));
    head.insert("limit".into(), json!(limit));
    head.insert("hasMore".into(), json!(has_more));
    head.insert("nextCursor".into(), json!(next.map(|c| c.encode())));
    finish_envelope(budget, head, filled)
}

fn finish_envelope(budget: usize, mut head: Map<String, Value>, filled: render::Budgeted) -> Value {
    head.insert("truncated".into(), json!(filled.cut));
    if filled.cut {
        head.insert("truncatedReason".into(), json!(render::budget_note(budget)));
    }
    head.insert("items".into(), Value::Array(filled.items));
    Value::Object(head)
}

/// Rows of a bounded list (a chain, an execution), read one beyond [`MAX_CHAIN`], under `head`.
pub(crate) fn bounded_json(
    projection: &Projection,
    mut rows: Vec<TraceRow>,
    mut head: Map<String, Value>,
    budget: usize,
) -> Value {
    let has_more = rows.len() > MAX_CHAIN as usize;
    rows.truncate(MAX_CHAIN as usize);
    let items = rows.iter().map(|r| projection.row(r)).collect();
    let filled = render::fill(items, budget);
    head.insert("count".into(), json!(filled.items.len()));
    head.insert(
        "hasMore".into(),
        json!(has_more || filled.items.len() < rows.len()),
    );
    finish_envelope(budget, head, filled)
}

/// The chain response (also `traces chain --json`).
pub(crate) fn chain_json(
    id: &str,
    projection: &Projection,
    rows: Vec<TraceRow>,
    budget: usize,
) -> Value {
    let mut head = Map::new();
    head.insert("traceId".into(), json!(id));
    bounded_json(projection, rows, head, budget)
}

/// The diff response (also `traces diff --json`).
pub(crate) fn diff_json(
    id: &str,
    projection: &Projection,
    rows: &[TraceRow],
    budget: usize,
) -> Value {
    let diffs = crate::diff::diff_chain(rows);
    let items = diffs.iter().map(|d| projection.diff(d)).collect();
    let filled = render::fill(items, budget);
    let mut head = Map::new();
    head.insert("traceId".into(), json!(id));
    head.insert("attempts".into(), json!(rows.len()));
    head.insert("count".into(), json!(filled.items.len()));
    finish_envelope(budget, head, filled)
}

async fn chain(state: &ApiState, id: &str, query: Option<&str>) -> Result<Value, ApiError> {
    let id = params::id("traceId", id).map_err(ApiError::BadRequest)?;
    let p = Params::parse(query, &ROW_PARAMS).map_err(ApiError::BadRequest)?;
    let projection = p.projection().map_err(ApiError::BadRequest)?;
    let client = state.pool.get().await?;
    let rows =
        query::trace_chain_limited(&**client, &id, projection.reads_payloads(), MAX_CHAIN + 1)
            .await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound(format!("no trace with traceId {id:?}")));
    }
    Ok(chain_json(&id, &projection, rows, state.budget))
}

async fn diff(state: &ApiState, id: &str, query: Option<&str>) -> Result<Value, ApiError> {
    let id = params::id("traceId", id).map_err(ApiError::BadRequest)?;
    let p = Params::parse(query, &["payloads"]).map_err(ApiError::BadRequest)?;
    let projection = p.projection().map_err(ApiError::BadRequest)?;
    let client = state.pool.get().await?;
    // The diff compares request payloads, so it always reads them; `payloads` only shapes the
    // values shown.
    let rows = query::trace_chain_limited(&**client, &id, true, MAX_CHAIN).await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound(format!("no trace with traceId {id:?}")));
    }
    Ok(diff_json(&id, &projection, &rows, state.budget))
}

async fn execution(state: &ApiState, id: &str, query: Option<&str>) -> Result<Value, ApiError> {
    let execution_id = Uuid::parse_str(id)
        .map_err(|_| ApiError::BadRequest(format!("`executionId` must be a UUID, got {id:?}")))?;
    let p = Params::parse(query, &ROW_PARAMS).map_err(ApiError::BadRequest)?;
    let projection = p.projection().map_err(ApiError::BadRequest)?;
    let client = state.pool.get().await?;
    let rows = query::execution_traces(
        &**client,
        execution_id,
        projection.reads_payloads(),
        MAX_CHAIN + 1,
    )
    .await?;
    if rows.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no traces with executionId {execution_id}"
        )));
    }
    let mut head = Map::new();
    head.insert("executionId".into(), json!(execution_id));
    Ok(bounded_json(&projection, rows, head, state.budget))
}

fn parse_status(s: &str) -> Result<Status, String> {
    match s {
        "pending" => Ok(Status::Pending),
        "in_progress" => Ok(Status::InProgress),
        "success" => Ok(Status::Success),
        "failed" => Ok(Status::Failed),
        _ => Err(format!(
            "`status` must be pending, in_progress, success or failed, got {s:?}"
        )),
    }
}

const SEARCH_PARAMS: [&str; 7] = [
    "status",
    "workflowId",
    "userId",
    "destination",
    "errorCode",
    "since",
    "until",
];

/// The search filter of a query string (shared with the CLI's readable forms).
fn search_filter(p: &Params) -> Result<SearchFilter, String> {
    let (since, until) = p.window()?;
    Ok(SearchFilter {
        status: p.raw("status").map(parse_status).transpose()?,
        workflow_id: p.text("workflowId")?,
        user_id: p.text("userId")?,
        destination: p.text("destination")?,
        error_code: p.text("errorCode")?,
        since,
        until,
    })
}

async fn search(state: &ApiState, query: Option<&str>) -> Result<Value, ApiError> {
    let allowed: Vec<&str> = PAGE_PARAMS.iter().chain(&SEARCH_PARAMS).copied().collect();
    let p = Params::parse(query, &allowed).map_err(ApiError::BadRequest)?;
    let filter = search_filter(&p).map_err(ApiError::BadRequest)?;
    newest_first(state, query, &SEARCH_PARAMS, move |c, page| {
        Box::pin(async move { query::search(c, &filter, &page).await })
    })
    .await
}

async fn stats(state: &ApiState, query: Option<&str>) -> Result<Value, ApiError> {
    let p = Params::parse(query, &["since", "until", "groupBy", "limit"])
        .map_err(ApiError::BadRequest)?;
    let (since, until) = p.window().map_err(ApiError::BadRequest)?;
    let until = until.unwrap_or_else(crate::trace::now_utc);
    let since = since.unwrap_or(until - DEFAULT_STATS_WINDOW);
    if since >= until {
        return Err(ApiError::BadRequest(
            "`since` must be earlier than `until` (which defaults to now)".into(),
        ));
    }
    let group_by = match p.raw("groupBy") {
        None => GroupBy::Workflow,
        Some(g) => GroupBy::parse(g).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "`groupBy` must be workflow, destination or errorCode, got {g:?}"
            ))
        })?,
    };
    let limit = p.limit().map_err(ApiError::BadRequest)?;
    let client = state.pool.get().await?;
    let s = query::stats(&**client, since, until, group_by, limit).await?;
    Ok(stats_json(&s, since, until, group_by, limit))
}

/// The stats response (also `traces stats --json`).
pub fn stats_json(
    s: &query::Stats,
    since: chrono::NaiveDateTime,
    until: chrono::NaiveDateTime,
    group_by: GroupBy,
    limit: i64,
) -> Value {
    let shown = s.groups.len().min(usize::try_from(limit).unwrap_or(0));
    json!({
        "since": crate::trace::iso_utc(&since),
        "until": crate::trace::iso_utc(&until),
        "groupBy": group_by.as_str(),
        "totals": s.totals,
        "count": shown,
        "limit": limit,
        "groupsTotal": s.groups_total,
        "truncated": s.groups_total > shown as i64,
        "items": &s.groups[..shown],
    })
}
