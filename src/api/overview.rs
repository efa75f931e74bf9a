//! `GET /api/overview`: what the Memory Explorer's overview and workflow pages chart — one
//! window (the last hour, day or week) in equal buckets of count, failures and p50/p95 duration,
//! the top failing workflows and error codes, and the attempts unfinished now. SQL in
//! `crate::store::query::overview`.

use serde_json::{json, Value};

use super::params::Params;
use super::{ApiError, ApiState};
use crate::store::query::{self, Window};

/// Workflows and error codes listed when `limit` is absent.
const DEFAULT_TOP: i64 = 10;

pub(super) async fn overview(state: &ApiState, query: Option<&str>) -> Result<Value, ApiError> {
    let bad = ApiError::BadRequest;
    let p = Params::parse(query, &["window", "workflowId", "until", "limit"]).map_err(bad)?;
    let window = match p.raw("window") {
        None => Window::Day,
        Some(w) => Window::parse(w).ok_or_else(|| {
            ApiError::BadRequest(format!("`window` must be hour, day or week, got {w:?}"))
        })?,
    };
    let workflow = p.text("workflowId").map_err(bad)?;
    let until = p.time("until").map_err(bad)?;
    let top = match p.raw("limit") {
        None => DEFAULT_TOP,
        Some(_) => p.limit().map_err(bad)?,
    };
    let (since, until) = window.ending_at(until.unwrap_or_else(crate::trace::now_utc));
    let client = state.pool.get().await?;
    let o = query::overview(&**client, window, until, workflow.as_deref(), top).await?;
    Ok(overview_json(&o, window, since, until, workflow.as_deref()))
}

/// The overview response.
pub fn overview_json(
    o: &query::Overview,
    window: Window,
    since: chrono::NaiveDateTime,
    until: chrono::NaiveDateTime,
    workflow_id: Option<&str>,
) -> Value {
    json!({
        "window": window.as_str(),
        "since": crate::trace::iso_utc(&since),
        "until": crate::trace::iso_utc(&until),
        "bucketSeconds": window.bucket().num_seconds(),
        "workflowId": workflow_id,
        "totals": o.totals,
        "buckets": o.buckets,
        "topFailingWorkflows": o.top_workflows,
        "topErrorCodes": o.top_error_codes,
        "unfinishedNow": o.unfinished,
    })
}
