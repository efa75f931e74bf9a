//! The OpenAPI 3.1 description served at `/api/openapi.json`. Written by hand next to the
//! handlers; `tests/it/api.rs` checks that every path it lists answers.

use serde_json::{json, Value};

use super::params::{DEFAULT_LIMIT, MAX_LIMIT};
use super::render::PREVIEW_BYTES;
use super::MAX_CHAIN;

fn param(name: &str, location: &str, description: &str, schema: Value) -> Value {
    json!({
        "name": name, "in": location, "required": location == "path",
        "description": description, "schema": schema,
    })
}

fn list_response(description: &str, extra: Value) -> Value {
    let mut props = json!({
        "items": {"type": "array", "items": {"$ref": "#/components/schemas/CommunicationTrace"}},
        "count": {"type": "integer", "description": "items in this response"},
        "hasMore": {"type": "boolean", "description": "more rows follow (continue with nextCursor where given)"},
        "truncated": {"type": "boolean", "description": "true when the byte budget (admin.max_response_bytes) cut the response"},
        "truncatedReason": {"type": "string"},
    });
    if let (Some(p), Some(e)) = (props.as_object_mut(), extra.as_object()) {
        p.extend(e.clone());
    }
    json!({
        "200": {"description": description, "content": {"application/json": {"schema": {
            "type": "object", "required": ["items", "count", "hasMore", "truncated"], "properties": props}}}},
        "400": {"$ref": "#/components/responses/BadRequest"},
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "503": {"$ref": "#/components/responses/Unavailable"},
        "504": {"$ref": "#/components/responses/Timeout"},
    })
}

/// Parameters several operations share.
struct Common {
    payloads: Value,
    fields: Value,
    limit: Value,
    cursor: Value,
    paged: Value,
}

fn common() -> Common {
    let payloads = param(
        "payloads",
        "query",
        &format!("none: leave payloads out; truncated (default): payloads over {PREVIEW_BYTES} bytes of JSON become {{\"_truncated\": {{…}}, \"preview\": \"…\"}}; full: as stored"),
        json!({"type": "string", "enum": ["none", "truncated", "full"], "default": "truncated"}),
    );
    let fields = param(
        "fields",
        "query",
        "comma-separated CommunicationTrace field names to return (default: the 18 DATA-002 fields); * = those plus trace-proxy's httpMethod, httpTarget, httpStatus",
        json!({"type": "string", "example": "traceId,attemptNumber,overallStatus,errorCode"}),
    );
    let limit = param(
        "limit",
        "query",
        &format!("rows per page, 1..{MAX_LIMIT} (larger is a 400), default {DEFAULT_LIMIT}"),
        json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT}),
    );
    let cursor = param(
        "cursor",
        "query",
        "nextCursor of the previous page (opaque)",
        json!({"type": "string"}),
    );
    let paged = list_response(
        "newest first (requestedAt, then id, descending)",
        json!({"limit": {"type": "integer"}, "nextCursor": {"type": ["string", "null"]}}),
    );
    Common {
        payloads,
        fields,
        limit,
        cursor,
        paged,
    }
}

fn path(name: &str, d: &str) -> Value {
    param(name, "path", d, json!({"type": "string"}))
}

fn time(name: &str, d: &str) -> Value {
    param(
        name,
        "query",
        d,
        json!({"type": "string", "format": "date-time"}),
    )
}

fn text(name: &str, d: &str) -> Value {
    param(name, "query", d, json!({"type": "string"}))
}

/// The document.
pub(super) fn document() -> Value {
    let mut paths = trace_paths();
    if let (Some(all), Value::Object(more)) = (paths.as_object_mut(), query_paths()) {
        all.extend(more);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "trace-proxy query API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Read-only queries over communication_traces (DATA-002). Rows use the CommunicationTrace field names; times are UTC ISO-8601. Every response is capped at admin.max_response_bytes; `truncated: true` says something was cut. Ids containing '/' are percent-encoded (%2F) in paths.",
        },
        "security": [{"bearer": []}, {"explorerSession": []}],
        "paths": paths,
        "components": components(),
    })
}

/// The operations on traces, workflows, users and executions.
fn trace_paths() -> Value {
    let Common {
        payloads,
        fields,
        limit,
        cursor,
        paged,
    } = common();
    json!({
            "/api/traces/{traceId}": {"get": {
                "summary": "The trace chain: every attempt, by attemptNumber (getTraceChain)",
                "parameters": [path("traceId", "the trace id"), payloads.clone(), fields.clone()],
                "responses": merge(list_response(&format!("at most {MAX_CHAIN} attempts"), json!({"traceId": {"type": "string"}})),
                    json!({"404": {"$ref": "#/components/responses/NotFound"}})),
            }},
            "/api/traces/{traceId}/diff": {"get": {
                "summary": "What changed between consecutive attempts: request payload fields (JSON pointers), status, error code, duration; unchanged fields are left out",
                "parameters": [path("traceId", "the trace id"), payloads.clone()],
                "responses": {
                    "200": {"description": "one item per consecutive pair", "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "traceId": {"type": "string"}, "attempts": {"type": "integer"}, "count": {"type": "integer"}, "truncated": {"type": "boolean"},
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/AttemptDiff"}}}}}}},
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "404": {"$ref": "#/components/responses/NotFound"},
                },
            }},
            "/api/workflows/{workflowId}/failures": {"get": {
                "summary": "Newest failed attempts of a workflow (getRecentFailures)",
                "parameters": [path("workflowId", "the workflow id"), limit.clone(), cursor.clone(), payloads.clone(), fields.clone()],
                "responses": paged.clone(),
            }},
            "/api/users/{userId}/history": {"get": {
                "summary": "A user's attempts, newest first (getUserHistory)",
                "parameters": [path("userId", "the user id"), limit.clone(), cursor.clone(), payloads.clone(), fields.clone()],
                "responses": paged.clone(),
            }},
            "/api/executions/{executionId}/traces": {"get": {
                "summary": "Every attempt of one workflow execution (DATA-004), oldest first",
                "parameters": [param("executionId", "path", "the execution UUID", json!({"type": "string", "format": "uuid"})), payloads.clone(), fields.clone()],
                "responses": merge(list_response(&format!("at most {MAX_CHAIN} attempts"), json!({"executionId": {"type": "string"}})),
                    json!({"404": {"$ref": "#/components/responses/NotFound"}})),
            }}
    })
}

/// Search, stats, the overview and this document.
fn query_paths() -> Value {
    let Common {
        payloads,
        fields,
        limit,
        cursor,
        paged,
    } = common();
    json!({
            "/api/traces": {"get": {
                "summary": "Search attempts, newest first, keyset-paginated",
                "parameters": [
                    param("status", "query", "overallStatus", json!({"type": "string", "enum": ["pending", "in_progress", "success", "failed"]})),
                    text("workflowId", "exact workflow id"), text("userId", "exact user id"),
                    text("destination", "exact destinationService"), text("errorCode", "exact error code, e.g. TIMEOUT"),
                    time("since", "requestedAt >= since (RFC 3339 with zone)"), time("until", "requestedAt < until"),
                    limit, cursor, payloads, fields,
                ],
                "responses": paged,
            }},
            "/api/stats": {"get": {
                "summary": "Counts, failure rate and p50/p95 duration per group, largest groups first",
                "parameters": [
                    time("since", "requestedAt >= since; default until - 24 h"), time("until", "requestedAt < until; default now"),
                    param("groupBy", "query", "grouping", json!({"type": "string", "enum": ["workflow", "destination", "errorCode"], "default": "workflow"})),
                    param("limit", "query", &format!("most groups, 1..{MAX_LIMIT}"), json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": DEFAULT_LIMIT})),
                ],
                "responses": {
                    "200": {"description": "totals and groups", "content": {"application/json": {"schema": {"type": "object", "properties": {
                        "since": {"type": "string", "format": "date-time"}, "until": {"type": "string", "format": "date-time"},
                        "groupBy": {"type": "string"}, "totals": {"$ref": "#/components/schemas/Stats"},
                        "count": {"type": "integer"}, "limit": {"type": "integer"}, "groupsTotal": {"type": "integer"},
                        "truncated": {"type": "boolean", "description": "more groups than limit"},
                        "items": {"type": "array", "items": {"$ref": "#/components/schemas/Stats"}}}}}}},
                    "400": {"$ref": "#/components/responses/BadRequest"},
                    "401": {"$ref": "#/components/responses/Unauthorized"},
                    "504": {"$ref": "#/components/responses/Timeout"},
                },
            }},
            "/api/overview": overview_path(),
            "/api/traces/{traceId}/explain": agent_path(
                "Why this trace failed, in one answer for an agent: the chain and its diffs, the last error (and its detail normalised), how often the workflow failed with this code in the last day and week and since when, and how the request differs from the workflow's latest success",
                vec![path("traceId", "the trace id")],
                true,
            ),
            "/api/failures/recurring": agent_path(
                "Failures of a window grouped by workflow, error code and normalised detail (ids, numbers, times masked), with count, first/last seen, trend and example trace ids; at most 10,000 failures read",
                vec![
                    time("since", "requestedAt >= since; default until - 24 h"),
                    time("until", "requestedAt < until; default now; the window spans at most 31 days"),
                ],
                false,
            ),
            "/api/workflows/{workflowId}/patterns": agent_path(
                "What the workflow's newest 500 successful requests look like: keys, their presence, JSON types and sizes, request size and duration percentiles",
                vec![path("workflowId", "the workflow id")],
                false,
            ),
            "/api/openapi.json": {"get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
            }}
    })
}

/// The schemas of the row and diff types, derived from the types themselves (their serde names,
/// types and doc comments), so they cannot drift from what the API serializes.
pub(super) fn derived_schemas() -> serde_json::Map<String, Value> {
    let mut settings = schemars::generate::SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas/".into();
    let mut generator = settings.into_generator();
    generator.subschema_for::<crate::trace::TraceRow>();
    generator.subschema_for::<crate::diff::AttemptDiff>();
    generator.take_definitions(true)
}

/// An agent bundle's operation: JSON fitted to `admin.max_response_bytes` (`truncated` says
/// when something was cut).
fn agent_path(summary: &str, parameters: Vec<Value>, not_found: bool) -> Value {
    let mut responses = json!({
        "200": {"description": "the bundle", "content": {"application/json": {"schema": {
            "type": "object", "required": ["truncated"],
            "properties": {"truncated": {"type": "boolean", "description": "true when the byte budget (admin.max_response_bytes) cut the answer"}}}}}},
        "400": {"$ref": "#/components/responses/BadRequest"},
        "401": {"$ref": "#/components/responses/Unauthorized"},
        "503": {"$ref": "#/components/responses/Unavailable"},
        "504": {"$ref": "#/components/responses/Timeout"},
    });
    if not_found {
        responses["404"] = json!({"$ref": "#/components/responses/NotFound"});
    }
    json!({"get": {"summary": summary, "parameters": parameters, "responses": responses}})
}

fn components() -> Value {
    let mut components = json!({
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "admin.token or TRACE_PROXY_ADMIN_TOKEN"},
                "explorerSession": {"type": "apiKey", "in": "cookie", "name": "trace_proxy_session", "description": "the Memory Explorer's sign-in session (POST /ui/signin)"}},
            "schemas": {
                "Stats": {"type": "object", "properties": {
                    "key": {"type": ["string", "null"], "description": "the group's value (absent in totals)"},
                    "count": {"type": "integer"}, "success": {"type": "integer"}, "failed": {"type": "integer"},
                    "unfinished": {"type": "integer", "description": "pending + in_progress"},
                    "failureRate": {"type": ["number", "null"], "description": "failed / (success + failed)"},
                    "p50DurationMs": {"type": ["integer", "null"]}, "p95DurationMs": {"type": ["integer", "null"]}}},
                "Ranked": {"type": "object", "description": "a workflow or error code with failures in the window, most failures first", "properties": {
                    "key": {"type": "string"}, "count": {"type": "integer"}, "failed": {"type": "integer"}}},
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "code": {"type": "string"}, "message": {"type": "string"}}}}},
            },
            "responses": {
                "BadRequest": error("bad input; the message says which parameter and what was expected"),
                "Unauthorized": error("missing or wrong bearer token (and no explorer session)"),
                "NotFound": error("no such trace / execution / endpoint"),
                "Unavailable": error("the database is unavailable"),
                "Timeout": error("the query exceeded admin.statement_timeout_ms"),
            }
    });
    if let Some(schemas) = components["schemas"].as_object_mut() {
        schemas.extend(derived_schemas());
    }
    components
}

/// `/api/overview` (its own function: one `json!` for the whole document would be too deep).
fn overview_path() -> Value {
    let time = |name: &str, d: &str| {
        param(
            name,
            "query",
            d,
            json!({"type": "string", "format": "date-time"}),
        )
    };
    json!({"get": {
        "summary": "One window in equal buckets (count, failures, p50/p95 duration), the top failing workflows and error codes, and the attempts unfinished now; what the Memory Explorer charts",
        "parameters": [
            param("window", "query", "hour (60 x 1 min), day (96 x 15 min) or week (168 x 1 h)", json!({"type": "string", "enum": ["hour", "day", "week"], "default": "day"})),
            param("workflowId", "query", "only this workflow", json!({"type": "string"})),
            time("until", "the window ends at the bucket boundary at or after this time; default now"),
            param("limit", "query", &format!("workflows and error codes listed, 1..{MAX_LIMIT}"), json!({"type": "integer", "minimum": 1, "maximum": MAX_LIMIT, "default": 10})),
        ],
        "responses": {
            "200": {"description": "the window", "content": {"application/json": {"schema": {"type": "object", "properties": {
                "window": {"type": "string"}, "since": {"type": "string", "format": "date-time"}, "until": {"type": "string", "format": "date-time"},
                "generatedAt": {"type": "string", "format": "date-time", "description": "when the buckets were read: the current window (no until) is kept up to 5 s (hour), 30 s (day) or 120 s (week), and served once more while it is read again"},
                "bucketSeconds": {"type": "integer"}, "workflowId": {"type": ["string", "null"]},
                "totals": {"$ref": "#/components/schemas/Stats"},
                "buckets": {"type": "array", "description": "every bucket, oldest first, empty ones included", "items": {"allOf": [
                    {"$ref": "#/components/schemas/Stats"},
                    {"type": "object", "properties": {"start": {"type": "string", "format": "date-time"}}}]}},
                "topFailingWorkflows": {"type": "array", "items": {"$ref": "#/components/schemas/Ranked"}},
                "topErrorCodes": {"type": "array", "items": {"$ref": "#/components/schemas/Ranked"}},
                "unfinishedNow": {"type": "object", "description": "attempts pending or in progress now, whenever they started", "properties": {
                    "pending": {"type": "integer"}, "inProgress": {"type": "integer"},
                    "oldestRequestedAt": {"type": ["string", "null"], "format": "date-time"}}}}}}}},
            "400": {"$ref": "#/components/responses/BadRequest"},
            "401": {"$ref": "#/components/responses/Unauthorized"},
            "504": {"$ref": "#/components/responses/Timeout"},
        },
    }})
}

fn error(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

#[cfg(test)]
mod schema_tests {
    use super::*;
    use crate::api::render::FIELDS;

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("$ref", Value::String(r)) => out.push(r),
                        _ => refs(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn the_row_schema_has_exactly_the_fields_the_api_can_return() {
        let schemas = derived_schemas();
        let props = schemas["CommunicationTrace"]["properties"]
            .as_object()
            .expect("properties");
        let mut derived: Vec<&str> = props.keys().map(String::as_str).collect();
        let mut fields = FIELDS.to_vec();
        derived.sort_unstable();
        fields.sort_unstable();
        assert_eq!(derived, fields);
        assert_eq!(props["requestedAt"]["format"], "date-time");
        assert_eq!(props["overallStatus"]["enum"][3], "failed");
    }

    #[test]
    fn every_reference_in_the_document_resolves() {
        let doc = document();
        let mut found = Vec::new();
        refs(&doc, &mut found);
        assert!(found.contains(&"#/components/schemas/AttemptDiff"));
        for r in found {
            let pointer = r.strip_prefix('#').expect("local reference");
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }
}
