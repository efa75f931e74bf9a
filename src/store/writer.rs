//! The batching writer. Whatever is queued while a batch is in flight forms the next batch, so
//! under load N concurrent pending inserts cost one round trip and one commit, and the finish
//! updates of many requests share one statement. Several writer tasks pipeline batches over
//! separate pooled connections. Statements are fixed (arrays + `unnest`), so each connection
//! prepares them once.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::NaiveDateTime;
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio::sync::{mpsc, Mutex};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::{Op, StoreError};
use crate::metrics::Metrics;

const INSERT: &str = "
INSERT INTO communication_traces (
    id, trace_id, execution_id, attempt_number, source_service, destination_service,
    workflow_id, action, user_id, requested_at, request_payload, n8n_execution_id,
    http_method, http_target, route_name)
SELECT * FROM unnest(
    $1::uuid[], $2::text[], $3::uuid[], $4::int4[], $5::text[], $6::text[],
    $7::text[], $8::text[], $9::text[], $10::timestamp[], $11::jsonb[], $12::text[],
    $13::text[], $14::text[], $15::text[])
ON CONFLICT (id) DO NOTHING";

/// The final update, its parameters numbered from `$first`.
fn finish_sql(first: usize) -> String {
    let p: Vec<String> = (first..first + 11).map(|i| format!("${i}")).collect();
    format!(
        "UPDATE communication_traces AS t SET
    responded_at = u.responded_at,
    duration_ms = u.duration_ms,
    response_payload = u.response_payload,
    overall_status = u.overall_status,
    error_code = u.error_code,
    error_detail = u.error_detail,
    n8n_execution_id = COALESCE(u.n8n_execution_id, t.n8n_execution_id),
    http_status = u.http_status,
    request_bytes = u.request_bytes,
    response_bytes = u.response_bytes
FROM unnest(
    {}::uuid[], {}::timestamp[], {}::int4[], {}::jsonb[], {}::text[], {}::text[],
    {}::text[], {}::text[], {}::int4[], {}::int8[], {}::int8[])
    AS u(id, responded_at, duration_ms, response_payload, overall_status, error_code,
         error_detail, n8n_execution_id, http_status, request_bytes, response_bytes)
WHERE t.id = u.id",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10]
    )
}

static FINISH: LazyLock<String> = LazyLock::new(|| finish_sql(1));

/// Inserts and final updates of one batch in ONE statement, so they share a round trip and a
/// commit. The update cannot see rows inserted by the same statement, and needs not: a finish
/// is only queued after its row's insert committed.
static INSERT_AND_FINISH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH ins AS ({INSERT} RETURNING 1), fin AS ({} RETURNING 1)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM fin)",
        finish_sql(16)
    )
});

/// Only rows still pending move to in_progress, so a late mark never overwrites a final status.
const PROGRESS: &str = "
UPDATE communication_traces SET overall_status = 'in_progress'
WHERE id = ANY($1::uuid[]) AND overall_status = 'pending'";

pub(super) fn spawn(
    pool: Pool,
    rx: mpsc::UnboundedReceiver<Op>,
    tasks: usize,
    max_batch: usize,
    linger: Duration,
    metrics: Arc<Metrics>,
) -> Vec<JoinHandle<()>> {
    let rx = Arc::new(Mutex::new(rx));
    (0..tasks)
        .map(|_| {
            tokio::spawn(run(
                pool.clone(),
                rx.clone(),
                max_batch,
                linger,
                metrics.clone(),
            ))
        })
        .collect()
}

async fn run(
    pool: Pool,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Op>>>,
    max_batch: usize,
    linger: Duration,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        {
            // One task collects while the others write: that is what makes batches form.
            let mut rx = rx.lock().await;
            if rx.recv_many(&mut batch, max_batch).await == 0 {
                return;
            }
            // Final updates are not urgent: let them wait briefly for a pending insert, whose
            // commit they then share (under sequential traffic the next request's insert
            // follows within a fraction of a millisecond).
            let deadline = tokio::time::Instant::now() + linger;
            while !linger.is_zero()
                && batch.len() < max_batch
                && !batch.iter().any(|op| matches!(op, Op::Insert(..)))
            {
                let room = max_batch - batch.len();
                match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        Metrics::inc(&metrics.writer_batches);
        metrics
            .writer_ops
            .fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        write_batch(&pool, &mut batch, &metrics).await;
        batch.clear();
    }
}

#[derive(Default)]
struct Inserts {
    id: Vec<Uuid>,
    trace_id: Vec<String>,
    execution_id: Vec<Option<Uuid>>,
    attempt: Vec<i32>,
    source: Vec<String>,
    destination: Vec<String>,
    workflow_id: Vec<String>,
    action: Vec<Option<String>>,
    user_id: Vec<String>,
    requested_at: Vec<NaiveDateTime>,
    payload: Vec<Option<Value>>,
    n8n_execution_id: Vec<Option<String>>,
    method: Vec<String>,
    target: Vec<String>,
    route: Vec<String>,
}

#[derive(Default)]
struct Finishes {
    id: Vec<Uuid>,
    responded_at: Vec<NaiveDateTime>,
    duration: Vec<i32>,
    payload: Vec<Option<Value>>,
    status: Vec<&'static str>,
    error_code: Vec<Option<String>>,
    error_detail: Vec<Option<String>>,
    n8n_execution_id: Vec<Option<String>>,
    http_status: Vec<Option<i32>>,
    request_bytes: Vec<i64>,
    response_bytes: Vec<i64>,
}

/// PostgreSQL text rejects NUL; the rest of a string is kept.
fn text(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

fn opt_text(s: Option<String>) -> Option<String> {
    s.map(text)
}

async fn write_batch(pool: &Pool, batch: &mut Vec<Op>, metrics: &Metrics) {
    let mut ins = Inserts::default();
    let mut waiters = Vec::new();
    let mut fin = Finishes::default();
    let mut progress = Vec::new();
    for op in batch.drain(..) {
        match op {
            Op::Insert(s, done) => {
                let s = *s;
                ins.id.push(s.id);
                ins.trace_id.push(text(s.trace_id));
                ins.execution_id.push(s.execution_id);
                ins.attempt.push(s.attempt_number);
                ins.source.push(text(s.source_service));
                ins.destination.push(text(s.destination_service));
                ins.workflow_id.push(text(s.workflow_id));
                ins.action.push(opt_text(s.action));
                ins.user_id.push(text(s.user_id));
                ins.requested_at.push(s.requested_at);
                ins.payload.push(s.request_payload);
                ins.n8n_execution_id.push(opt_text(s.n8n_execution_id));
                ins.method.push(text(s.http_method));
                ins.target.push(text(s.http_target));
                ins.route.push(text(s.route_name));
                waiters.push(done);
            }
            Op::Progress(id) => progress.push(id),
            Op::Finish(f) => {
                let f = *f;
                fin.id.push(f.id);
                fin.responded_at.push(f.responded_at);
                fin.duration.push(f.duration_ms);
                fin.payload.push(f.response_payload);
                fin.status.push(f.status.as_str());
                fin.error_code.push(opt_text(f.error_code));
                fin.error_detail.push(opt_text(f.error_detail));
                fin.n8n_execution_id.push(opt_text(f.n8n_execution_id));
                fin.http_status.push(f.http_status);
                fin.request_bytes.push(f.request_bytes);
                fin.response_bytes.push(f.response_bytes);
            }
        }
    }

    let client = match pool.get().await {
        Ok(c) => c,
        Err(e) => {
            let e = StoreError::from(e);
            tracing::warn!(error = %e, inserts = waiters.len(), finishes = fin.id.len(), "store unavailable");
            fail(waiters, &e);
            count_lost_finishes(metrics, &fin, &e);
            return;
        }
    };

    // Inserts and finishes go in one statement (one commit); in_progress marks, rare, are
    // pipelined beside it on the same connection.
    let ins_params: [&(dyn ToSql + Sync); 15] = [
        &ins.id,
        &ins.trace_id,
        &ins.execution_id,
        &ins.attempt,
        &ins.source,
        &ins.destination,
        &ins.workflow_id,
        &ins.action,
        &ins.user_id,
        &ins.requested_at,
        &ins.payload,
        &ins.n8n_execution_id,
        &ins.method,
        &ins.target,
        &ins.route,
    ];
    let fin_params: [&(dyn ToSql + Sync); 11] = [
        &fin.id,
        &fin.responded_at,
        &fin.duration,
        &fin.payload,
        &fin.status,
        &fin.error_code,
        &fin.error_detail,
        &fin.n8n_execution_id,
        &fin.http_status,
        &fin.request_bytes,
        &fin.response_bytes,
    ];
    let write = async {
        let (sql, params): (&str, Vec<&(dyn ToSql + Sync)>) =
            match (ins.id.is_empty(), fin.id.is_empty()) {
                (true, true) => return Ok(()),
                (false, true) => (INSERT, ins_params.to_vec()),
                (true, false) => (FINISH.as_str(), fin_params.to_vec()),
                (false, false) => (
                    INSERT_AND_FINISH.as_str(),
                    ins_params
                        .iter()
                        .chain(fin_params.iter())
                        .copied()
                        .collect(),
                ),
            };
        let stmt = client.prepare_cached(sql).await?;
        client.execute(&stmt, &params).await.map(|_| ())
    };
    let mark = async {
        if progress.is_empty() {
            return Ok(0);
        }
        let stmt = client.prepare_cached(PROGRESS).await?;
        client.execute(&stmt, &[&progress]).await
    };
    let (written, marked) = tokio::join!(write, mark);
    let (inserted, finished) = match written {
        Ok(()) => (Ok(()), Ok(())),
        Err(e) => {
            let e = StoreError::from(e);
            (Err(StoreError::Db(e.to_string())), Err(e))
        }
    };

    match inserted {
        Ok(_) => {
            metrics
                .rows_started
                .fetch_add(waiters.len() as u64, std::sync::atomic::Ordering::Relaxed);
            for w in waiters {
                let _ = w.send(Ok(()));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, rows = waiters.len(), "pending insert failed");
            fail(waiters, &e);
        }
    }
    if let Err(e) = marked {
        tracing::warn!(error = %StoreError::from(e), rows = progress.len(), "in_progress update failed");
    }
    match finished {
        Ok(_) => {
            metrics
                .rows_finished
                .fetch_add(fin.id.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Err(e) => count_lost_finishes(metrics, &fin, &e),
    }
}

fn fail(waiters: Vec<tokio::sync::oneshot::Sender<Result<(), StoreError>>>, e: &StoreError) {
    for w in waiters {
        let _ = w.send(Err(StoreError::Db(e.to_string())));
    }
}

fn count_lost_finishes(metrics: &Metrics, fin: &Finishes, e: &StoreError) {
    if fin.id.is_empty() {
        return;
    }
    metrics
        .finish_failed
        .fetch_add(fin.id.len() as u64, std::sync::atomic::Ordering::Relaxed);
    for id in &fin.id {
        tracing::error!(row_id = %id, error = %e, "final update not recorded");
    }
}
