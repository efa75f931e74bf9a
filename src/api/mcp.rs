//! The Model Context Protocol front-end of the query API, on the official SDK (`rmcp`): the same
//! queries and agent bundles as `/api`, as read-only tools with typed inputs, served over stdio
//! (`trace-proxy mcp`) and over Streamable HTTP at `/mcp` on the admin listener (behind the
//! admin token). Each tool is a call of the `/api` route it mirrors, so validation, statement
//! timeout, row limits, sanitized payloads and the byte budget (`admin.mcp_max_response_bytes`)
//! are the API's own.
//!
//! Every failure is a tool result with `isError: true`, which a model reads and can act on (MCP
//! clients tend to hide JSON-RPC errors from the model): arguments that do not fit the schema
//! are refused by the SDK with a sentence naming the field; everything else carries the API's
//! `{"error": {"code", "message"}}` (`BAD_REQUEST`, `NOT_FOUND`, `QUERY_TIMEOUT`,
//! `STORE_UNAVAILABLE`).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_handler, tool_router, ErrorData, ServerHandler, ServiceExt};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{dispatch, ApiState};

/// What the server tells a client about itself at initialization.
const INSTRUCTIONS: &str = "Read-only access to trace-proxy's record of every HTTP exchange \
between bilko-app and n8n (table communication_traces, DATA-002). One row per attempt; \
attempts of one logical request share a traceId and are numbered by attemptNumber. Start with \
explain_failure for a failed trace (its chain, diff, error, history and the last success of the \
same workflow), recurring_failures to find what keeps failing, request_patterns to see what a \
working request looks like. Payloads are sanitized (secrets replaced by [REDACTED]) and may be \
truncated; every answer says `truncated: true` when the byte budget cut it. Lists are newest \
first; pass nextCursor back as cursor for the next page. Times are UTC ISO-8601.";

/// Largest MCP request body read from HTTP (tool arguments are short).
const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// How payloads appear in rows.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Payloads {
    /// No request or response payloads (smallest answers).
    None,
    /// Payloads cut to a short preview.
    Truncated,
    /// Payloads as stored (sanitized; large ones were already truncated when recorded).
    Full,
}

impl Payloads {
    fn as_str(self) -> &'static str {
        match self {
            Payloads::None => "none",
            Payloads::Truncated => "truncated",
            Payloads::Full => "full",
        }
    }
}

/// An attempt's overall status.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum StatusArg {
    Pending,
    InProgress,
    Success,
    Failed,
}

/// What `stats` groups by.
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) enum GroupByArg {
    Workflow,
    Destination,
    ErrorCode,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TraceArgs {
    /// The trace id (the X-Trace-Id shared by every attempt of one logical request).
    trace_id: String,
    /// How payloads appear; default "truncated".
    payloads: Option<Payloads>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct TraceIdArg {
    /// The trace id (the X-Trace-Id shared by every attempt of one logical request).
    trace_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WorkflowPageArgs {
    /// The n8n workflow id.
    workflow_id: String,
    /// Rows per page, 1-500; default 50.
    limit: Option<u32>,
    /// nextCursor of the previous page.
    cursor: Option<String>,
    /// How payloads appear; default "truncated".
    payloads: Option<Payloads>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct UserPageArgs {
    /// The bilko-app user id.
    user_id: String,
    /// Rows per page, 1-500; default 50.
    limit: Option<u32>,
    /// nextCursor of the previous page.
    cursor: Option<String>,
    /// How payloads appear; default "truncated".
    payloads: Option<Payloads>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ExecutionArgs {
    /// The bilko-app execution id (a UUID, X-Execution-Id).
    execution_id: String,
    /// How payloads appear; default "truncated".
    payloads: Option<Payloads>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct SearchArgs {
    status: Option<StatusArg>,
    /// The n8n workflow id.
    workflow_id: Option<String>,
    /// The bilko-app user id.
    user_id: Option<String>,
    /// destination_service, e.g. "n8n".
    destination: Option<String>,
    /// An error code such as TIMEOUT, HTTP_500, CONNECTION_FAILED.
    error_code: Option<String>,
    /// Earliest requestedAt, RFC 3339 with a zone (e.g. 2026-01-31T00:00:00Z).
    since: Option<String>,
    /// Latest requestedAt (exclusive), RFC 3339 with a zone.
    until: Option<String>,
    /// Rows per page, 1-500; default 50.
    limit: Option<u32>,
    /// nextCursor of the previous page.
    cursor: Option<String>,
    /// How payloads appear; default "truncated".
    payloads: Option<Payloads>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct StatsArgs {
    /// Window start, RFC 3339 with a zone; default one day before `until`.
    since: Option<String>,
    /// Window end, RFC 3339 with a zone; default now.
    until: Option<String>,
    /// Group by workflow (default), destination or errorCode.
    group_by: Option<GroupByArg>,
    /// Groups listed, 1-500; default 50.
    limit: Option<u32>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WindowArgs {
    /// Window start, RFC 3339 with a zone; default one day before `until`.
    since: Option<String>,
    /// Window end, RFC 3339 with a zone; default now. At most 31 days after `since`.
    until: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct WorkflowArg {
    /// The n8n workflow id.
    workflow_id: String,
}

/// A query string of the parameters that are set.
fn query(pairs: &[(&str, Option<String>)]) -> Option<String> {
    let mut q = form_urlencoded::Serializer::new(String::new());
    let mut any = false;
    for (k, v) in pairs {
        if let Some(v) = v {
            q.append_pair(k, v);
            any = true;
        }
    }
    any.then(|| q.finish())
}

fn payloads(p: Option<Payloads>) -> Option<String> {
    p.map(|p| p.as_str().to_owned())
}

/// The MCP tools over one [`ApiState`] (whose budget is `admin.mcp_max_response_bytes`).
#[derive(Clone)]
pub struct TraceTools {
    state: Arc<ApiState>,
    tool_router: ToolRouter<Self>,
}

impl TraceTools {
    pub fn new(state: Arc<ApiState>) -> TraceTools {
        TraceTools {
            state,
            tool_router: Self::tool_router(),
        }
    }

    /// Runs the `/api` route `path` with `query`; its answer or error becomes the tool's.
    async fn call(
        &self,
        path: &[&str],
        query: Option<String>,
    ) -> Result<CallToolResult, ErrorData> {
        match dispatch(&self.state, path, query.as_deref()).await {
            Ok(v) => Ok(CallToolResult::structured(v)),
            Err(e) => Ok(CallToolResult::structured_error(
                json!({"error": {"code": e.code(), "message": e.to_string()}}),
            )),
        }
    }
}

#[tool_router]
impl TraceTools {
    #[tool(
        description = "Every attempt of one logical request (its trace chain), by attemptNumber: status, errorCode, errorDetail, httpStatus, durationMs, n8nExecutionId, the sanitized request and response payloads.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn get_trace(
        &self,
        Parameters(a): Parameters<TraceArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(
            &["api", "traces", &a.trace_id],
            query(&[("payloads", payloads(a.payloads))]),
        )
        .await
    }

    #[tool(
        description = "What changed between consecutive attempts of a trace: request payload paths added, removed or changed (JSON pointers), and the status, error and duration of each attempt. Use it to see what a retry did differently.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn diff_attempts(
        &self,
        Parameters(a): Parameters<TraceIdArg>,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(&["api", "traces", &a.trace_id, "diff"], None)
            .await
    }

    #[tool(
        description = "Newest failed attempts of one n8n workflow (getRecentFailures), with their error codes and details. Paged: pass nextCursor back as cursor.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn recent_failures(
        &self,
        Parameters(a): Parameters<WorkflowPageArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let q = query(&[
            ("limit", a.limit.map(|l| l.to_string())),
            ("cursor", a.cursor),
            ("payloads", payloads(a.payloads)),
        ]);
        self.call(&["api", "workflows", &a.workflow_id, "failures"], q)
            .await
    }

    #[tool(
        description = "Newest attempts made for one bilko-app user (getUserHistory), any status. Paged: pass nextCursor back as cursor.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn user_history(
        &self,
        Parameters(a): Parameters<UserPageArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let q = query(&[
            ("limit", a.limit.map(|l| l.to_string())),
            ("cursor", a.cursor),
            ("payloads", payloads(a.payloads)),
        ]);
        self.call(&["api", "users", &a.user_id, "history"], q).await
    }

    #[tool(
        description = "Every attempt recorded for one bilko-app execution id (X-Execution-Id, a UUID), oldest first.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn execution_traces(
        &self,
        Parameters(a): Parameters<ExecutionArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let q = query(&[("payloads", payloads(a.payloads))]);
        self.call(&["api", "executions", &a.execution_id, "traces"], q)
            .await
    }

    #[tool(
        description = "Attempts matching every filter given (status, workflowId, userId, destination, errorCode, since/until window), newest first. Paged: pass nextCursor back as cursor.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn search_traces(
        &self,
        Parameters(a): Parameters<SearchArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let status = a.status.map(|s| {
            match s {
                StatusArg::Pending => "pending",
                StatusArg::InProgress => "in_progress",
                StatusArg::Success => "success",
                StatusArg::Failed => "failed",
            }
            .to_owned()
        });
        let q = query(&[
            ("status", status),
            ("workflowId", a.workflow_id),
            ("userId", a.user_id),
            ("destination", a.destination),
            ("errorCode", a.error_code),
            ("since", a.since),
            ("until", a.until),
            ("limit", a.limit.map(|l| l.to_string())),
            ("cursor", a.cursor),
            ("payloads", payloads(a.payloads)),
        ]);
        self.call(&["api", "traces"], q).await
    }

    #[tool(
        description = "Counts, failure rate and p50/p95 duration over a window (default: the last day), in total and grouped by workflow, destination or errorCode.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn stats(
        &self,
        Parameters(a): Parameters<StatsArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let group_by = a.group_by.map(|g| {
            match g {
                GroupByArg::Workflow => "workflow",
                GroupByArg::Destination => "destination",
                GroupByArg::ErrorCode => "errorCode",
            }
            .to_owned()
        });
        let q = query(&[
            ("since", a.since),
            ("until", a.until),
            ("groupBy", group_by),
            ("limit", a.limit.map(|l| l.to_string())),
        ]);
        self.call(&["api", "stats"], q).await
    }

    #[tool(
        description = "Why a trace failed, in one answer: its attempts and their diff; the error code and detail; how often this workflow failed with this code in the last day and week and since when; the most recent successful attempt of the same workflow and what differs from it (request keys present or absent, value types, sizes, duration).",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn explain_failure(
        &self,
        Parameters(a): Parameters<TraceIdArg>,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(&["api", "traces", &a.trace_id, "explain"], None)
            .await
    }

    #[tool(
        description = "Failures in a window (default: the last day, at most 31 days) grouped by workflow, error code and normalized error detail (ids, numbers and times masked), with counts, first and last seen, trend and example trace ids: what keeps failing.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn recurring_failures(
        &self,
        Parameters(a): Parameters<WindowArgs>,
    ) -> Result<CallToolResult, ErrorData> {
        let q = query(&[("since", a.since), ("until", a.until)]);
        self.call(&["api", "failures", "recurring"], q).await
    }

    #[tool(
        description = "What successful requests of one workflow look like: the request payload's keys with their types and how often each is present, typical sizes, and duration percentiles. Check a request against it before sending.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn request_patterns(
        &self,
        Parameters(a): Parameters<WorkflowArg>,
    ) -> Result<CallToolResult, ErrorData> {
        self.call(&["api", "workflows", &a.workflow_id, "patterns"], None)
            .await
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for TraceTools {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new(
                "trace-proxy",
                env!("CARGO_PKG_VERSION"),
            ))
            .with_instructions(INSTRUCTIONS)
    }
}

/// Serves the tools over stdin/stdout until the client closes them.
pub async fn serve_stdio(state: Arc<ApiState>) -> Result<(), std::io::Error> {
    let running = TraceTools::new(state)
        .serve(rmcp::transport::stdio())
        .await
        .map_err(std::io::Error::other)?;
    running.waiting().await.map_err(std::io::Error::other)?;
    Ok(())
}

/// `/mcp` on the admin listener: stateless Streamable HTTP with JSON answers (no sessions, no
/// streams held open). The caller has checked the admin token. Browsers are refused (any
/// `Origin`); the `Host` is not restricted, since the token is required anyway and a sidecar is
/// reached by its service name.
#[derive(Clone)]
pub(super) struct McpHttp {
    service: StreamableHttpService<TraceTools, NeverSessionManager>,
}

impl McpHttp {
    pub(super) fn new(state: Arc<ApiState>) -> McpHttp {
        let mut config = StreamableHttpServerConfig::default()
            .disable_allowed_hosts()
            .enforce_origin_validation();
        config.legacy_session_mode = false;
        config.json_response = true;
        config.sse_keep_alive = None;
        config.max_request_body_bytes = MAX_REQUEST_BYTES;
        let tools = TraceTools::new(state);
        McpHttp {
            service: StreamableHttpService::new(
                move || Ok(tools.clone()),
                Arc::new(NeverSessionManager::default()),
                config,
            ),
        }
    }

    /// Answers one request; the answer is read whole, bounded by the tool budget plus the
    /// JSON-RPC envelope (a longer one is a 500, never a cut message).
    pub(super) async fn handle<B>(&self, req: Request<B>, budget: usize) -> Response<Full<Bytes>>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::fmt::Display,
    {
        let resp = self.service.handle(req).await;
        let (parts, body) = resp.into_parts();
        // The structured answer and its text copy, escaped, plus the envelope.
        let limit = budget.saturating_mul(3).saturating_add(64 * 1024);
        #[expect(
            clippy::disallowed_methods,
            reason = "bounded by Limited: the budget plus the envelope"
        )]
        let collected = Limited::new(body, limit).collect().await;
        match collected {
            Ok(b) => Response::from_parts(parts, Full::new(b.to_bytes())),
            Err(e) => {
                tracing::error!(error = %e, "MCP answer over its size bound");
                let mut r = Response::new(Full::new(Bytes::from_static(
                    b"{\"error\":{\"code\":\"INTERNAL\",\"message\":\"answer too large\"}}",
                )));
                *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                r
            }
        }
    }
}
