//! The three agent bundles, built from the reads in `crate::record::store::agent` and the pure
//! helpers of this module. One implementation; the admin API, the CLI and the MCP tools render
//! what these return.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::{compare_payloads, normalise_detail, trend, PayloadComparison, Percentiles, Trend};
use super::{KeyPattern, ShapeSummary};
use crate::diff::{diff_chain, AttemptDiff};
use crate::record::store::agent::{self, FailedAttempt};
use crate::record::store::query::{trace_chain_limited, QueryError};
use crate::trace::{iso_utc, TraceRow};

/// The most attempts of a chain an explanation reads.
pub(crate) const MAX_CHAIN: i64 = 50;
/// The most failed attempts a recurring-failures window reads (newest first).
pub(crate) const MAX_FAILURES: i64 = 10_000;
/// The most successful requests a pattern reads (newest first).
pub(crate) const MAX_SAMPLES: i64 = 500;
/// Example trace ids per recurring group.
pub(crate) const EXAMPLES: usize = 3;

fn ts<S: serde::Serializer>(t: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&iso_utc(t))
}

fn ts_opt<S: serde::Serializer>(t: &Option<NaiveDateTime>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&iso_utc(t)),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct FailureHistory {
    pub last_day: i64,
    pub last_week: i64,
    #[serde(serialize_with = "ts_opt")]
    pub first_seen: Option<NaiveDateTime>,
}

/// The latest successful attempt of the same workflow and what differs from it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct LastSuccess {
    pub trace_id: String,
    pub attempt_number: i32,
    #[serde(serialize_with = "ts")]
    pub requested_at: NaiveDateTime,
    pub duration_ms: Option<i32>,
    pub request: PayloadComparison,
}

/// `explain_failure`: why did this trace fail, has it happened before, what was different when
/// it worked.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Explanation {
    pub trace_id: String,
    pub workflow_id: String,
    pub overall_status: String,
    /// The attempt explained: the last failed one (or the last one if none failed).
    pub attempt_number: i32,
    pub error_code: Option<String>,
    pub error_detail: Option<String>,
    pub normalised_detail: Option<String>,
    pub duration_ms: Option<i32>,
    /// The n8n execution of the attempt explained, and n8n's own account of it (final status,
    /// failing node, error) when the `[n8n]` lookup stored one.
    pub n8n_execution_id: Option<String>,
    pub n8n_execution: Option<serde_json::Value>,
    pub chain: Vec<TraceRow>,
    pub diffs: Vec<AttemptDiff>,
    /// This workflow's failures with this error code (`None` when the trace did not fail).
    pub history: Option<FailureHistory>,
    pub last_success: Option<LastSuccess>,
}

/// The explanation of a trace; `None` when no attempt of it is stored.
pub(crate) async fn explain(
    client: &impl GenericClient,
    trace_id: &str,
    now: NaiveDateTime,
) -> Result<Option<Explanation>, QueryError> {
    let chain = trace_chain_limited(client, trace_id, true, MAX_CHAIN).await?;
    let Some(last) = chain.last() else {
        return Ok(None);
    };
    let focus = chain
        .iter()
        .rev()
        .find(|r| r.overall_status == "failed")
        .unwrap_or(last)
        .clone();
    let failed = focus.overall_status == "failed";
    let history = if failed {
        let c = agent::failure_counts(client, &focus.workflow_id, focus.error_code.as_deref(), now)
            .await?;
        Some(FailureHistory {
            last_day: c.last_day,
            last_week: c.last_week,
            first_seen: c.first_seen,
        })
    } else {
        None
    };
    let last_success = agent::last_success(client, &focus.workflow_id, focus.requested_at)
        .await?
        .filter(|s| s.id != focus.id)
        .map(|s| LastSuccess {
            request: compare_payloads(focus.request_payload.as_ref(), s.request_payload.as_ref()),
            trace_id: s.trace_id,
            attempt_number: s.attempt_number,
            requested_at: s.requested_at,
            duration_ms: s.duration_ms,
        });
    Ok(Some(Explanation {
        trace_id: focus.trace_id.clone(),
        workflow_id: focus.workflow_id.clone(),
        overall_status: last.overall_status.clone(),
        attempt_number: focus.attempt_number,
        normalised_detail: focus.error_detail.as_deref().map(normalise_detail),
        error_code: focus.error_code.clone(),
        error_detail: focus.error_detail.clone(),
        duration_ms: focus.duration_ms,
        n8n_execution_id: focus.n8n_execution_id.clone(),
        n8n_execution: focus.n8n_execution.clone(),
        diffs: diff_chain(&chain),
        chain,
        history,
        last_success,
    }))
}

/// One recurring failure: a workflow, an error code and a normalised detail.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RecurringGroup {
    pub workflow_id: String,
    pub error_code: Option<String>,
    pub normalised_detail: Option<String>,
    pub count: u64,
    #[serde(serialize_with = "ts")]
    pub first_seen: NaiveDateTime,
    #[serde(serialize_with = "ts")]
    pub last_seen: NaiveDateTime,
    pub trend: Trend,
    /// The newest few trace ids of the group.
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Recurring {
    #[serde(serialize_with = "ts")]
    pub since: NaiveDateTime,
    #[serde(serialize_with = "ts")]
    pub until: NaiveDateTime,
    /// Failed attempts read (at most [`MAX_FAILURES`]).
    pub failures: usize,
    /// True when the window held more failures than were read (the oldest were not grouped).
    pub truncated: bool,
    pub groups: Vec<RecurringGroup>,
}

/// Groups failed attempts (newest first) by workflow, error code and normalised detail; the
/// trend compares the window's halves. Largest groups first, then the most recent.
pub(crate) fn group_failures(
    failures: &[FailedAttempt],
    since: NaiveDateTime,
    until: NaiveDateTime,
) -> Vec<RecurringGroup> {
    let mid = since + (until - since) / 2;
    let mut groups: Vec<RecurringGroup> = Vec::new();
    let mut halves: Vec<(u64, u64)> = Vec::new();
    let mut index: HashMap<(String, Option<String>, Option<String>), usize> = HashMap::new();
    for f in failures {
        let detail = f.error_detail.as_deref().map(normalise_detail);
        let key = (f.workflow_id.clone(), f.error_code.clone(), detail.clone());
        let i = *index.entry(key).or_insert_with(|| {
            groups.push(RecurringGroup {
                workflow_id: f.workflow_id.clone(),
                error_code: f.error_code.clone(),
                normalised_detail: detail,
                count: 0,
                first_seen: f.requested_at,
                last_seen: f.requested_at,
                trend: Trend::Steady,
                examples: Vec::new(),
            });
            halves.push((0, 0));
            groups.len() - 1
        });
        let g = &mut groups[i];
        g.count += 1;
        g.first_seen = g.first_seen.min(f.requested_at);
        g.last_seen = g.last_seen.max(f.requested_at);
        if g.examples.len() < EXAMPLES && !g.examples.contains(&f.trace_id) {
            g.examples.push(f.trace_id.clone());
        }
        if f.requested_at < mid {
            halves[i].0 += 1;
        } else {
            halves[i].1 += 1;
        }
    }
    for (g, (a, b)) in groups.iter_mut().zip(halves) {
        g.trend = trend(a, b);
    }
    groups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then_with(|| b.last_seen.cmp(&a.last_seen))
    });
    groups
}

pub(crate) async fn recurring(
    client: &impl GenericClient,
    since: NaiveDateTime,
    until: NaiveDateTime,
) -> Result<Recurring, QueryError> {
    let rows = agent::failures_in_window(client, since, until, MAX_FAILURES + 1).await?;
    let truncated = rows.len() as i64 > MAX_FAILURES;
    let rows = &rows[..rows.len().min(MAX_FAILURES as usize)];
    Ok(Recurring {
        since,
        until,
        failures: rows.len(),
        truncated,
        groups: group_failures(rows, since, until),
    })
}

/// `request_patterns`: what successful requests of a workflow look like.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Patterns {
    pub workflow_id: String,
    /// Successful requests read (the newest, at most [`MAX_SAMPLES`]).
    pub samples: u64,
    #[serde(serialize_with = "ts_opt")]
    pub oldest_sample: Option<NaiveDateTime>,
    /// Keys every sampled request had.
    pub required_keys: Vec<String>,
    pub keys: Vec<KeyPattern>,
    pub request_bytes: Option<Percentiles>,
    pub duration_ms: Option<Percentiles>,
}

pub(crate) async fn patterns(
    client: &impl GenericClient,
    workflow_id: &str,
) -> Result<Patterns, QueryError> {
    let rows = agent::success_sample(client, workflow_id, MAX_SAMPLES).await?;
    let mut shape = ShapeSummary::default();
    for r in &rows {
        shape.add(r.request_payload.as_ref());
    }
    Ok(Patterns {
        workflow_id: workflow_id.to_owned(),
        samples: shape.samples(),
        oldest_sample: rows.last().map(|r| r.requested_at),
        required_keys: shape.required().into_iter().collect(),
        keys: shape.keys(),
        request_bytes: shape.sizes(),
        duration_ms: Percentiles::of(
            rows.iter()
                .filter_map(|r| r.duration_ms.map(i64::from))
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(h: u32, m: u32) -> NaiveDateTime {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 28)
            .and_then(|d| d.and_hms_opt(h, m, 0))
            .unwrap_or_default()
    }

    fn f(trace: &str, wf: &str, code: &str, detail: &str, t: NaiveDateTime) -> FailedAttempt {
        FailedAttempt {
            trace_id: trace.into(),
            workflow_id: wf.into(),
            error_code: Some(code.into()),
            error_detail: Some(detail.into()),
            requested_at: t,
        }
    }

    #[test]
    fn groups_by_workflow_code_and_normalised_detail() {
        let rows = vec![
            f("t5", "wf", "E1", "user 9 missing field", at(11, 50)),
            f("t4", "wf", "E1", "user 8 missing field", at(11, 40)),
            f("t3", "wf", "E1", "user 7 missing field", at(11, 30)),
            f("t2", "other", "E1", "user 7 missing field", at(10, 30)),
            f("t1", "wf", "E2", "timeout", at(10, 10)),
        ];
        let g = group_failures(&rows, at(10, 0), at(12, 0));
        assert_eq!(g.len(), 3);
        assert_eq!(g[0].workflow_id, "wf");
        assert_eq!(
            g[0].normalised_detail.as_deref(),
            Some("user <n> missing field")
        );
        assert_eq!(g[0].count, 3);
        assert_eq!(g[0].examples, ["t5", "t4", "t3"]);
        assert_eq!((g[0].first_seen, g[0].last_seen), (at(11, 30), at(11, 50)));
        assert_eq!(g[0].trend, Trend::New);
        assert_eq!(g[1].workflow_id, "other");
        assert_eq!(g[2].error_code.as_deref(), Some("E2"));
        assert_eq!(g[2].trend, Trend::Falling);
        assert!(group_failures(&[], at(10, 0), at(12, 0)).is_empty());
    }
}
