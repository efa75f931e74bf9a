//! `trace-proxy traces …`: the query API's patterns for people at a terminal. Queries the
//! database directly through `crate::store::query` (the same functions the HTTP endpoints use);
//! prints a readable table, or with `--json` exactly what the endpoint would answer.

use std::fmt::Write as _;

use chrono::NaiveDateTime;
use clap::builder::PossibleValue;
use serde_json::Value;

use super::params::MAX_LIMIT;
use super::render::{PayloadMode, Projection};
use crate::config::Config;
use crate::diff::{AttemptDiff, FieldChange};
use crate::insight::bundle;
use crate::store::query::{self, GroupBy, Page, QueryError};
use crate::store::StoreError;
use crate::trace::{iso_utc, TraceRow};

#[derive(Debug, clap::Subcommand)]
pub enum TracesCommand {
    /// Every attempt of a trace, by attempt number (GET /api/traces/{traceId}).
    Chain {
        /// The trace id (the `X-Trace-Id` every attempt of one request shares).
        trace_id: String,
        #[command(flatten)]
        out: Output,
    },
    /// Newest failed attempts of a workflow (GET /api/workflows/{workflowId}/failures).
    Failures {
        /// The workflow id (`X-Workflow-Id`, or the one derived from the n8n URL).
        workflow_id: String,
        /// Most rows to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=MAX_LIMIT))]
        limit: i64,
        #[command(flatten)]
        out: Output,
    },
    /// A user's attempts, newest first (GET /api/users/{userId}/history).
    History {
        /// The user id (`X-User-Id`, or `correlation.default_user_id`).
        user_id: String,
        /// Most rows to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=MAX_LIMIT))]
        limit: i64,
        #[command(flatten)]
        out: Output,
    },
    /// What changed between consecutive attempts of a trace (GET /api/traces/{traceId}/diff).
    Diff {
        /// The trace id (the `X-Trace-Id` every attempt of one request shares).
        trace_id: String,
        #[command(flatten)]
        out: Output,
    },
    /// Why a trace failed, as JSON: its chain and diff, the error, how often the workflow
    /// failed so, and what differs from its last success (GET /api/traces/{traceId}/explain).
    Explain {
        /// The trace id (the `X-Trace-Id` every attempt of one request shares).
        trace_id: String,
    },
    /// Failures of a window grouped by workflow, error code and normalized detail, as JSON
    /// (GET /api/failures/recurring).
    Recurring {
        /// Window start, RFC 3339 (default: 24 h before --until).
        #[arg(long, value_parser = time_arg)]
        since: Option<NaiveDateTime>,
        /// Window end, RFC 3339 (default: now).
        #[arg(long, value_parser = time_arg)]
        until: Option<NaiveDateTime>,
    },
    /// What successful requests of a workflow look like, as JSON
    /// (GET /api/workflows/{workflowId}/patterns).
    Patterns {
        /// The workflow id (`X-Workflow-Id`, or the one derived from the n8n URL).
        workflow_id: String,
    },
    /// Counts, failure rate, p50/p95 duration per group (GET /api/stats).
    Stats {
        /// Window start, RFC 3339 (default: 24 h before --until).
        #[arg(long, value_parser = time_arg)]
        since: Option<NaiveDateTime>,
        /// Window end, RFC 3339 (default: now).
        #[arg(long, value_parser = time_arg)]
        until: Option<NaiveDateTime>,
        /// What each line of the table is.
        #[arg(long, value_enum, default_value_t = GroupBy::Workflow)]
        group_by: GroupBy,
        /// Most groups to show.
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(i64).range(1..=MAX_LIMIT))]
        limit: i64,
        /// Print the JSON the API would answer.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct Output {
    /// Print the JSON the API would answer instead of a table.
    #[arg(long)]
    json: bool,
    /// With --json: how much of each payload to print.
    #[arg(long, value_enum, default_value_t = PayloadMode::Truncated)]
    payloads: PayloadMode,
}

/// A time argument (`--since`, `retention run --now`): RFC 3339 with a zone, as the UTC
/// wall-clock time the tables store.
pub fn time_arg(s: &str) -> Result<NaiveDateTime, String> {
    crate::trace::parse_rfc3339(s)
        .map_err(|e| format!("{e} (expected RFC 3339 with a zone, e.g. 2025-06-01T00:00:00Z)"))
}

/// `--group-by`: the API's `groupBy` values.
impl clap::ValueEnum for GroupBy {
    fn value_variants<'a>() -> &'a [Self] {
        &[GroupBy::Workflow, GroupBy::Destination, GroupBy::ErrorCode]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(self.as_str()))
    }
}

/// `--payloads`: the API's `payloads` values.
impl clap::ValueEnum for PayloadMode {
    fn value_variants<'a>() -> &'a [Self] {
        &[PayloadMode::None, PayloadMode::Truncated, PayloadMode::Full]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            PayloadMode::None => PossibleValue::new("none").help("leave payloads out"),
            PayloadMode::Truncated => {
                PossibleValue::new("truncated").help("small ones whole, a preview of the rest")
            }
            PayloadMode::Full => PossibleValue::new("full").help("as stored"),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Query(#[from] QueryError),
    #[error("{0}")]
    NotFound(String),
    #[error("`--since` must be earlier than `--until`")]
    Window,
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Query(QueryError::Store(e))
    }
}

impl From<deadpool_postgres::PoolError> for CliError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        CliError::Query(e.into())
    }
}

/// Runs one `traces` command; returns what to print.
pub async fn run(config: &Config, cmd: TracesCommand) -> Result<String, CliError> {
    let pool = super::query_pool(config)?;
    let client = pool.get().await?;
    let client: &tokio_postgres::Client = &client;
    // A terminal has no byte budget; the JSON is otherwise the API's.
    let budget = usize::MAX;
    match cmd {
        TracesCommand::Chain { trace_id, out } => chain(client, &trace_id, &out, budget).await,
        TracesCommand::Failures {
            workflow_id,
            limit,
            out,
        } => {
            let p = projection(&out);
            let found = query::recent_failures(client, &workflow_id, &page(limit, &p)).await?;
            let title = format!("newest failed attempts of workflow {workflow_id}");
            Ok(list_output(&p, &out, found, limit, budget, &title, true))
        }
        TracesCommand::History {
            user_id,
            limit,
            out,
        } => {
            let p = projection(&out);
            let found = query::user_history(client, &user_id, &page(limit, &p)).await?;
            let title = format!("attempts of user {user_id}, newest first");
            Ok(list_output(&p, &out, found, limit, budget, &title, false))
        }
        TracesCommand::Diff { trace_id, out } => {
            let rows =
                query::trace_chain_limited(client, &trace_id, true, super::MAX_CHAIN).await?;
            if rows.is_empty() {
                return Err(CliError::NotFound(format!("no trace {trace_id:?}")));
            }
            if out.json {
                return Ok(pretty(&super::diff_json(
                    &trace_id,
                    &projection(&out),
                    &rows,
                    budget,
                )));
            }
            Ok(diff_text(&trace_id, &rows))
        }
        TracesCommand::Explain { .. }
        | TracesCommand::Recurring { .. }
        | TracesCommand::Patterns { .. } => agent(client, cmd).await,
        TracesCommand::Stats {
            since,
            until,
            group_by,
            limit,
            json,
        } => {
            let until = until.unwrap_or_else(crate::trace::now_utc);
            let since = since.unwrap_or(until - chrono::TimeDelta::days(1));
            if since >= until {
                return Err(CliError::Window);
            }
            let s = query::stats(client, since, until, group_by, limit).await?;
            if json {
                return Ok(pretty(&super::stats_json(
                    &s, since, until, group_by, limit,
                )));
            }
            Ok(stats_text(&s, since, until, group_by))
        }
    }
}

/// `traces explain|recurring|patterns`: an agent bundle as JSON (no byte budget).
async fn agent(client: &tokio_postgres::Client, cmd: TracesCommand) -> Result<String, CliError> {
    let bundle = match cmd {
        TracesCommand::Explain { trace_id } => {
            match bundle::explain(client, &trace_id, crate::trace::now_utc()).await? {
                Some(e) => to_value(&e),
                None => return Err(CliError::NotFound(format!("no trace {trace_id:?}"))),
            }
        }
        TracesCommand::Recurring { since, until } => {
            let until = until.unwrap_or_else(crate::trace::now_utc);
            let since = since.unwrap_or(until - chrono::TimeDelta::days(1));
            if since >= until {
                return Err(CliError::Window);
            }
            to_value(&bundle::recurring(client, since, until).await?)
        }
        TracesCommand::Patterns { workflow_id } => {
            to_value(&bundle::patterns(client, &workflow_id).await?)
        }
        _ => Value::Null,
    };
    Ok(pretty(&bundle))
}

/// `traces chain`: the attempts of one trace.
async fn chain(
    client: &tokio_postgres::Client,
    trace_id: &str,
    out: &Output,
    budget: usize,
) -> Result<String, CliError> {
    let p = projection(out);
    let limit = super::MAX_CHAIN + 1;
    let rows = query::trace_chain_limited(client, trace_id, p.reads_payloads(), limit).await?;
    if rows.is_empty() {
        return Err(CliError::NotFound(format!("no trace {trace_id:?}")));
    }
    if out.json {
        return Ok(pretty(&super::chain_json(trace_id, &p, rows, budget)));
    }
    let mut s = format!("trace {trace_id}: {} attempt(s)\n", rows.len());
    s.push_str(&rows_table(&rows, true));
    Ok(s)
}

/// The first page of a newest-first list.
fn page(limit: i64, p: &Projection) -> Page {
    Page {
        limit,
        after: None,
        payloads: p.reads_payloads(),
    }
}

/// A newest-first list: the API's JSON with `--json`, else a titled table.
fn list_output(
    p: &Projection,
    out: &Output,
    found: query::PageRows,
    limit: i64,
    budget: usize,
    title: &str,
    with_user: bool,
) -> String {
    if out.json {
        return pretty(&super::page_json(p, found, limit, budget));
    }
    let mut s = format!(
        "{title} ({} shown{})\n",
        found.rows.len(),
        if found.has_more { ", more exist" } else { "" }
    );
    s.push_str(&rows_table(&found.rows, with_user));
    s
}

fn projection(out: &Output) -> Projection {
    Projection {
        payloads: out.payloads,
        fields: None,
    }
}

/// A bundle as JSON (its types serialize infallibly: strings, numbers, maps with string keys).
fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// Cuts `s` to `n` characters, marking the cut.
fn clip(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Left-aligned columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                let _ = write!(l, "{c:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_owned(), ToString::to_string)
}

fn rows_table(rows: &[TraceRow], with_user: bool) -> String {
    let header = [
        "REQUESTED_AT",
        "TRACE",
        "#",
        "STATUS",
        "CODE",
        "MS",
        "WORKFLOW",
        if with_user { "USER" } else { "DEST" },
        "DETAIL",
    ];
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                iso_utc(&r.requested_at),
                clip(&r.trace_id, 34),
                r.attempt_number.to_string(),
                r.overall_status.clone(),
                opt(&r.error_code),
                opt(&r.duration_ms),
                clip(&r.workflow_id, 30),
                clip(
                    if with_user {
                        &r.user_id
                    } else {
                        &r.destination_service
                    },
                    20,
                ),
                clip(r.error_detail.as_deref().unwrap_or(""), 60),
            ]
        })
        .collect();
    table(&header, &body)
}

fn compact(v: &Value) -> String {
    clip(&v.to_string(), 80)
}

fn diff_text(trace_id: &str, rows: &[TraceRow]) -> String {
    let diffs: Vec<AttemptDiff> = crate::diff::diff_chain(rows);
    let mut s = format!("trace {trace_id}: {} attempt(s)\n", rows.len());
    if diffs.is_empty() {
        s.push_str("only one attempt: nothing to compare\n");
    }
    for d in &diffs {
        let _ = writeln!(s, "attempt {} -> {}:", d.from_attempt, d.to_attempt);
        if d.is_empty() {
            s.push_str("  nothing changed\n");
        }
        if let Some(c) = &d.overall_status {
            let _ = writeln!(s, "  status      {} -> {}", c.old, c.new);
        }
        if let Some(c) = &d.error_code {
            let _ = writeln!(s, "  error code  {} -> {}", opt(&c.old), opt(&c.new));
        }
        if let Some(c) = &d.duration_ms {
            let _ = writeln!(s, "  duration    {} ms -> {} ms", opt(&c.old), opt(&c.new));
        }
        for f in &d.request {
            let _ = match f {
                FieldChange::Added { path, value } => {
                    writeln!(s, "  request  +  {path} = {}", compact(value))
                }
                FieldChange::Removed { path, old } => {
                    writeln!(s, "  request  -  {path} (was {})", compact(old))
                }
                FieldChange::Changed { path, old, new } => {
                    writeln!(
                        s,
                        "  request  ~  {path}: {} -> {}",
                        compact(old),
                        compact(new)
                    )
                }
            };
        }
    }
    s
}

fn stats_text(
    s: &query::Stats,
    since: NaiveDateTime,
    until: NaiveDateTime,
    group_by: GroupBy,
) -> String {
    let pct = |r: &Option<f64>| r.map_or_else(|| "-".to_owned(), |r| format!("{:.1}%", r * 100.0));
    let line = |key: String, r: &query::StatsRow| {
        vec![
            key,
            r.count.to_string(),
            r.success.to_string(),
            r.failed.to_string(),
            r.unfinished.to_string(),
            pct(&r.failure_rate),
            opt(&r.p50_duration_ms),
            opt(&r.p95_duration_ms),
        ]
    };
    let mut rows: Vec<Vec<String>> = s
        .groups
        .iter()
        .map(|g| {
            let key = g.key.clone().flatten().unwrap_or_else(|| "(none)".into());
            line(clip(&key, 40), g)
        })
        .collect();
    rows.push(line("TOTAL".into(), &s.totals));
    let mut out = format!(
        "attempts requested {} .. {} by {} ({} group(s){})\n",
        iso_utc(&since),
        iso_utc(&until),
        group_by.as_str(),
        s.groups_total,
        if (s.groups.len() as i64) < s.groups_total {
            format!(", largest {} shown", s.groups.len())
        } else {
            String::new()
        }
    );
    out.push_str(&table(
        &[
            "KEY",
            "COUNT",
            "SUCCESS",
            "FAILED",
            "UNFINISHED",
            "FAILURE_RATE",
            "P50_MS",
            "P95_MS",
        ],
        &rows,
    ));
    out
}
