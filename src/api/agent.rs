//! `/api` front-end of the agent bundles (`crate::insight::bundle`): the explanation of
//! a failed trace, recurring failures of a window and the request patterns of a workflow. Same
//! auth, statement timeout, byte budget and errors as the other `/api` routes.

use serde_json::Value;

use super::params::{self, Params};
use super::{ApiError, ApiState};
use crate::error::Chain;
use crate::insight::{bundle, fit};
use crate::trace::now_utc;

/// Default recurring-failures window: the last day.
const DEFAULT_WINDOW: chrono::TimeDelta = chrono::TimeDelta::days(1);
/// Longest recurring-failures window.
const MAX_WINDOW: chrono::TimeDelta = chrono::TimeDelta::days(31);

fn to_json<T: serde::Serialize>(v: &T) -> Result<Value, ApiError> {
    serde_json::to_value(v).map_err(|e| {
        tracing::error!(error = %Chain(&e), "an agent bundle did not serialize");
        ApiError::Unavailable
    })
}

/// `GET /api/traces/{traceId}/explain`.
pub(super) async fn explain(
    state: &ApiState,
    id: &str,
    query: Option<&str>,
) -> Result<Value, ApiError> {
    let id = params::id("traceId", id).map_err(ApiError::BadRequest)?;
    Params::parse(query, &[]).map_err(ApiError::BadRequest)?;
    let client = state.pool.get().await?;
    match bundle::explain(&**client, &id, now_utc()).await? {
        Some(e) => Ok(fit(to_json(&e)?, state.budget)),
        None => Err(ApiError::NotFound(format!("no trace with traceId {id:?}"))),
    }
}

/// `GET /api/failures/recurring?since=&until=`.
pub(super) async fn recurring(state: &ApiState, query: Option<&str>) -> Result<Value, ApiError> {
    let p = Params::parse(query, &["since", "until"]).map_err(ApiError::BadRequest)?;
    let (since, until) = p.window().map_err(ApiError::BadRequest)?;
    let until = until.unwrap_or_else(now_utc);
    let since = since.unwrap_or(until - DEFAULT_WINDOW);
    if since >= until {
        return Err(ApiError::BadRequest(
            "`since` must be earlier than `until` (which defaults to now)".into(),
        ));
    }
    if until - since > MAX_WINDOW {
        return Err(ApiError::BadRequest(
            "the window from `since` to `until` may span at most 31 days".into(),
        ));
    }
    let client = state.pool.get().await?;
    let r = bundle::recurring(&**client, since, until).await?;
    Ok(fit(to_json(&r)?, state.budget))
}

/// `GET /api/workflows/{workflowId}/patterns`.
pub(super) async fn patterns(
    state: &ApiState,
    id: &str,
    query: Option<&str>,
) -> Result<Value, ApiError> {
    let id = params::id("workflowId", id).map_err(ApiError::BadRequest)?;
    Params::parse(query, &[]).map_err(ApiError::BadRequest)?;
    let client = state.pool.get().await?;
    let p = bundle::patterns(&**client, &id).await?;
    Ok(fit(to_json(&p)?, state.budget))
}
