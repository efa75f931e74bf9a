//! The batching writer. Whatever is queued while a batch is in flight forms the next batch, so
//! under load N concurrent pending inserts cost one round trip and one commit, and the finish
//! updates of many requests share one statement. Several writer tasks pipeline batches over
//! separate pooled connections. Statements are fixed (arrays + `unnest`), so each connection
//! prepares them once.
//!
//! Attempt numbers are assigned here, atomically: each row gets one more than the highest number
//! its trace already has (rows of one trace within a batch count up in arrival order). When a
//! concurrent batch took the same number, the unique index `(trace_id, attempt_number)` makes
//! the row conflict; it is left out (`ON CONFLICT DO NOTHING`) and numbered again in the next
//! round, so numbers stay distinct and gap-free.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::NaiveDateTime;
use deadpool_postgres::Pool;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;
use uuid::Uuid;

use super::{Op, StoreError};
use crate::error::Chain;
use crate::metrics::Metrics;
use crate::trace::{AttemptFinish, AttemptStart, Status};

const INSERT: &str = "
INSERT INTO communication_traces (
    id, trace_id, execution_id, attempt_number, source_service, destination_service,
    workflow_id, action, user_id, requested_at, request_payload, n8n_execution_id,
    http_method, http_target, route_name, redactions, proxy_instance)
SELECT u.id, u.trace_id, u.execution_id,
    (COALESCE((SELECT max(c.attempt_number) FROM communication_traces c
               WHERE c.trace_id = u.trace_id), 0)
     + row_number() OVER (PARTITION BY u.trace_id ORDER BY u.ord))::int4,
    u.source_service, u.destination_service, u.workflow_id, u.action, u.user_id,
    u.requested_at, u.request_payload, u.n8n_execution_id, u.http_method, u.http_target,
    u.route_name, u.redactions, u.proxy_instance
FROM unnest(
    $1::uuid[], $2::text[], $3::uuid[], $4::text[], $5::text[], $6::text[], $7::text[],
    $8::text[], $9::timestamp[], $10::jsonb[], $11::text[], $12::text[], $13::text[],
    $14::text[], $15::jsonb[], $16::uuid[]) WITH ORDINALITY
    AS u(id, trace_id, execution_id, source_service, destination_service, workflow_id,
         action, user_id, requested_at, request_payload, n8n_execution_id, http_method,
         http_target, route_name, redactions, proxy_instance, ord)
ON CONFLICT DO NOTHING
RETURNING id, attempt_number";

/// Parameters of [`INSERT`]: 16 column arrays, the last the inserting process's instance id
/// (crash recovery, `crate::recovery`; replayed rows keep the id of the process that spooled
/// them).
const INSERT_PARAMS: usize = 16;

/// Rows already stored (an insert sent again): their numbers; nothing is inserted.
const EXISTING: &str =
    "SELECT id, attempt_number FROM communication_traces WHERE id = ANY($1::uuid[])";

/// Rounds of renumbering before a contended insert is reported as failed.
const MAX_ROUNDS: usize = 8;

/// The final update, its parameters numbered from `$first`.
fn finish_sql(first: usize) -> String {
    let p: Vec<String> = (first..first + FINISH_PARAMS)
        .map(|i| format!("${i}"))
        .collect();
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
    response_bytes = u.response_bytes,
    redactions = CASE WHEN u.redactions IS NULL THEN t.redactions
                      ELSE COALESCE(t.redactions, '{{}}'::jsonb) || u.redactions END
FROM unnest(
    {}::uuid[], {}::timestamp[], {}::int4[], {}::jsonb[], {}::text[], {}::text[],
    {}::text[], {}::text[], {}::int4[], {}::int8[], {}::int8[], {}::jsonb[])
    AS u(id, responded_at, duration_ms, response_payload, overall_status, error_code,
         error_detail, n8n_execution_id, http_status, request_bytes, response_bytes,
         redactions)
WHERE t.id = u.id",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11]
    )
}

/// Parameters of the final update.
const FINISH_PARAMS: usize = 12;

static FINISH: LazyLock<String> = LazyLock::new(|| finish_sql(1));

/// Inserts and final updates of one batch in ONE statement, so they share a round trip and a
/// commit. The update cannot see rows inserted by the same statement, and needs not: a finish
/// is only queued after its row's insert committed.
static INSERT_AND_FINISH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH ins AS ({INSERT}), fin AS ({} RETURNING 1)
SELECT id, attempt_number FROM ins",
        finish_sql(INSERT_PARAMS + 1)
    )
});

/// Only rows still pending move to in_progress, so a late mark never overwrites a final status.
const PROGRESS: &str = "
UPDATE communication_traces SET overall_status = 'in_progress'
WHERE id = ANY($1::uuid[]) AND overall_status = 'pending'";

/// What every writer task shares.
pub(super) struct Ctx {
    pub pool: Pool,
    pub max_batch: usize,
    pub linger: Duration,
    pub metrics: Arc<Metrics>,
    pub instance: Uuid,
    /// Client-side bound on one batch's round trips; past it the connection is discarded.
    pub deadline: Duration,
    /// Where final updates go when PostgreSQL refuses them (`on_unavailable = "spool"`).
    pub refused: Option<super::Refused>,
}

pub(super) fn spawn(
    ctx: Ctx,
    rx: mpsc::UnboundedReceiver<Op>,
    tasks: usize,
) -> Vec<JoinHandle<()>> {
    let rx = Arc::new(Mutex::new(rx));
    let ctx = Arc::new(ctx);
    (0..tasks)
        .map(|_| tokio::spawn(run(ctx.clone(), rx.clone())))
        .collect()
}

async fn run(ctx: Arc<Ctx>, rx: Arc<Mutex<mpsc::UnboundedReceiver<Op>>>) {
    let (max_batch, linger, metrics) = (ctx.max_batch, ctx.linger, &ctx.metrics);
    let mut batch = Vec::with_capacity(max_batch);
    let mut conn = None;
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
        metrics.writer_batches.inc();
        metrics.writer_batch_ops.observe(batch.len() as u64);
        metrics.writer_ops.inc_by(batch.len() as u64);
        write_batch(&ctx, &mut batch, &mut conn).await;
        batch.clear();
    }
}

/// Who waits for a pending row's attempt number.
enum Waiter {
    /// The request that queued it.
    Request(oneshot::Sender<Result<i32, StoreError>>),
    /// Nobody: a row replayed from the spool journal (counted once stored).
    Replay,
    /// Already answered (or moved to another round).
    Answered,
}

/// Pending rows of one batch, column by column, with who waits for each.
#[derive(Default)]
struct Inserts {
    id: Vec<Uuid>,
    trace_id: Vec<String>,
    execution_id: Vec<Option<Uuid>>,
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
    redactions: Vec<Option<Value>>,
    /// The proxy instance that inserted each row (`proxy_instance`).
    instance: Vec<Uuid>,
    waiters: Vec<Waiter>,
}

impl Inserts {
    fn push(
        &mut self,
        s: AttemptStart,
        instance: Uuid,
        done: Option<oneshot::Sender<Result<i32, StoreError>>>,
    ) {
        self.id.push(s.id);
        self.trace_id.push(text(s.trace_id));
        self.execution_id.push(s.execution_id);
        self.source.push(text(s.source_service));
        self.destination.push(text(s.destination_service));
        self.workflow_id.push(text(s.workflow_id));
        self.action.push(opt_text(s.action));
        self.user_id.push(text(s.user_id));
        self.requested_at.push(s.requested_at);
        self.payload.push(s.request_payload);
        self.n8n_execution_id.push(opt_text(s.n8n_execution_id));
        self.method.push(text(s.http_method));
        self.target.push(text(s.http_target));
        self.route.push(text(s.route_name));
        self.redactions.push(s.redactions);
        self.instance.push(instance);
        self.waiters.push(match done {
            Some(done) => Waiter::Request(done),
            None => Waiter::Replay,
        });
    }

    fn params(&self) -> [&(dyn ToSql + Sync); INSERT_PARAMS] {
        [
            &self.id,
            &self.trace_id,
            &self.execution_id,
            &self.source,
            &self.destination,
            &self.workflow_id,
            &self.action,
            &self.user_id,
            &self.requested_at,
            &self.payload,
            &self.n8n_execution_id,
            &self.method,
            &self.target,
            &self.route,
            &self.redactions,
            &self.instance,
        ]
    }

    /// The rows at `idx`, waiters moved along.
    fn take(&mut self, idx: &[usize]) -> Inserts {
        let mut out = Inserts::default();
        for &i in idx {
            out.id.push(self.id[i]);
            out.trace_id.push(self.trace_id[i].clone());
            out.execution_id.push(self.execution_id[i]);
            out.source.push(self.source[i].clone());
            out.destination.push(self.destination[i].clone());
            out.workflow_id.push(self.workflow_id[i].clone());
            out.action.push(self.action[i].clone());
            out.user_id.push(self.user_id[i].clone());
            out.requested_at.push(self.requested_at[i]);
            out.payload.push(self.payload[i].take());
            out.n8n_execution_id.push(self.n8n_execution_id[i].clone());
            out.method.push(self.method[i].clone());
            out.target.push(self.target[i].clone());
            out.route.push(self.route[i].clone());
            out.redactions.push(self.redactions[i].take());
            out.instance.push(self.instance[i]);
            out.waiters
                .push(std::mem::replace(&mut self.waiters[i], Waiter::Answered));
        }
        out
    }

    /// Answers the waiters of the rows in `rows` (id, attempt_number) with their numbers.
    fn resolve(&mut self, rows: &[Row], metrics: &Metrics) {
        let index: HashMap<Uuid, usize> =
            self.id.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        for row in rows {
            let (id, number): (Uuid, i32) = (row.get(0), row.get(1));
            let Some(&i) = index.get(&id) else { continue };
            match std::mem::replace(&mut self.waiters[i], Waiter::Answered) {
                Waiter::Request(done) => {
                    metrics.rows_started.inc_by(1);
                    let _ = done.send(Ok(number));
                }
                Waiter::Replay => {
                    metrics.rows_started.inc_by(1);
                }
                Waiter::Answered => {}
            }
        }
    }

    /// Indexes of rows nobody has answered yet.
    fn unanswered(&self) -> Vec<usize> {
        (0..self.id.len())
            .filter(|&i| !matches!(self.waiters[i], Waiter::Answered))
            .collect()
    }

    fn fail(&mut self, e: &StoreError) {
        for w in &mut self.waiters {
            let Waiter::Request(done) = std::mem::replace(w, Waiter::Answered) else {
                continue;
            };
            let _ = done.send(Err(e.clone()));
        }
    }
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
    redactions: Vec<Option<Value>>,
}

impl Finishes {
    /// The final updates back as they were queued.
    fn into_finishes(self) -> Vec<AttemptFinish> {
        let n = self.id.len();
        let mut payload = self.payload.into_iter();
        let mut error_code = self.error_code.into_iter();
        let mut error_detail = self.error_detail.into_iter();
        let mut n8n = self.n8n_execution_id.into_iter();
        let mut redactions = self.redactions.into_iter();
        (0..n)
            .map(|i| AttemptFinish {
                id: self.id[i],
                responded_at: self.responded_at[i],
                duration_ms: self.duration[i],
                response_payload: payload.next().flatten(),
                status: Status::parse(self.status[i]).unwrap_or(Status::Failed),
                error_code: error_code.next().flatten(),
                error_detail: error_detail.next().flatten(),
                n8n_execution_id: n8n.next().flatten(),
                http_status: self.http_status[i],
                request_bytes: self.request_bytes[i],
                response_bytes: self.response_bytes[i],
                redactions: redactions.next().flatten(),
            })
            .collect()
    }

    fn push(&mut self, f: AttemptFinish) {
        self.id.push(f.id);
        self.responded_at.push(f.responded_at);
        self.duration.push(f.duration_ms);
        self.payload.push(f.response_payload);
        self.status.push(f.status.as_str());
        self.error_code.push(opt_text(f.error_code));
        self.error_detail.push(opt_text(f.error_detail));
        self.n8n_execution_id.push(opt_text(f.n8n_execution_id));
        self.http_status.push(f.http_status);
        self.request_bytes.push(f.request_bytes);
        self.response_bytes.push(f.response_bytes);
        self.redactions.push(f.redactions);
    }

    fn params(&self) -> [&(dyn ToSql + Sync); FINISH_PARAMS] {
        [
            &self.id,
            &self.responded_at,
            &self.duration,
            &self.payload,
            &self.status,
            &self.error_code,
            &self.error_detail,
            &self.n8n_execution_id,
            &self.http_status,
            &self.request_bytes,
            &self.response_bytes,
            &self.redactions,
        ]
    }
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

/// A writer task's connection with its statements prepared on it. Kept from batch to batch:
/// finding a statement in deadpool's cache hashes its SQL text, which for these statements cost
/// about 3% of the proxy's instructions per request. Given up after any error (and discarded
/// after a timeout); replaced when PostgreSQL closed it.
struct Conn {
    client: deadpool_postgres::Object,
    insert: tokio_postgres::Statement,
    finish: tokio_postgres::Statement,
    insert_and_finish: tokio_postgres::Statement,
    progress: tokio_postgres::Statement,
}

impl Conn {
    /// The task's kept connection unless PostgreSQL closed it, else a new one (within the
    /// batch deadline).
    async fn kept_or_new(slot: &mut Option<Conn>, ctx: &Ctx) -> Result<Conn, StoreError> {
        if let Some(kept) = slot.take().filter(|c| !c.client.is_closed()) {
            return Ok(kept);
        }
        tokio::time::timeout(ctx.deadline, Conn::open(&ctx.pool))
            .await
            .unwrap_or(Err(StoreError::Timeout(ctx.deadline)))
    }

    async fn open(pool: &deadpool_postgres::Pool) -> Result<Conn, StoreError> {
        let client = pool.get().await?;
        let insert = client.prepare_cached(INSERT).await?;
        let finish = client.prepare_cached(FINISH.as_str()).await?;
        let insert_and_finish = client.prepare_cached(INSERT_AND_FINISH.as_str()).await?;
        let progress = client.prepare_cached(PROGRESS).await?;
        Ok(Conn {
            client,
            insert,
            finish,
            insert_and_finish,
            progress,
        })
    }
}

async fn write_batch(ctx: &Ctx, batch: &mut Vec<Op>, slot: &mut Option<Conn>) {
    let metrics = &ctx.metrics;
    let mut ins = Inserts::default();
    let mut fin = Finishes::default();
    let mut progress = Vec::new();
    for op in batch.drain(..) {
        match op {
            Op::Insert(s, done) => ins.push(*s, ctx.instance, Some(done)),
            Op::Progress(id) => progress.push(id),
            Op::Finish(f) => fin.push(*f),
        }
    }

    let conn = match Conn::kept_or_new(slot, ctx).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %Chain(&e), inserts = ins.id.len(), finishes = fin.id.len(), "store unavailable");
            ins.fail(&e);
            ctx.unwritten_finishes(fin, &e);
            return;
        }
    };
    let client = &conn.client;

    // Inserts and finishes go in one statement (one commit); in_progress marks, rare, are
    // pipelined beside it on the same connection.
    let written = tokio::time::timeout(ctx.deadline, async {
        let write = async {
            let ins_params = ins.params();
            let fin_params = fin.params();
            let (stmt, params): (&tokio_postgres::Statement, Vec<&(dyn ToSql + Sync)>) =
                match (ins.id.is_empty(), fin.id.is_empty()) {
                    (true, true) => return Ok(Vec::new()),
                    (false, true) => (&conn.insert, ins_params.to_vec()),
                    (true, false) => (&conn.finish, fin_params.to_vec()),
                    (false, false) => (
                        &conn.insert_and_finish,
                        ins_params
                            .iter()
                            .chain(fin_params.iter())
                            .copied()
                            .collect(),
                    ),
                };
            client.query(stmt, &params).await
        };
        let mark = async {
            if progress.is_empty() {
                return Ok(0);
            }
            client.execute(&conn.progress, &[&progress]).await
        };
        let (written, marked) = tokio::join!(write, mark);
        if let Err(e) = marked {
            tracing::warn!(error = %Chain(&StoreError::from(e)), rows = progress.len(), "in_progress update failed");
        }
        let rows = written?;
        ins.resolve(&rows, metrics);
        renumber(client, &mut ins, metrics).await.map(drop)
    })
    .await;
    match written {
        Ok(Ok(())) => {
            metrics.rows_finished.inc_by(fin.id.len() as u64);
            *slot = Some(conn);
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %Chain(&e), inserts = ins.id.len(), "batch not written");
            ins.fail(&e);
            // A failed statement changed nothing: the finishes were not applied either, unless
            // only the renumbering failed, in which case applying them again is harmless.
            ctx.unwritten_finishes(fin, &e);
        }
        Err(_) => {
            // The statement may still commit on a server that is merely slow; the row ids make
            // any later copy of it (replayed from the spool) a no-op, never a second row.
            let e = StoreError::Timeout(ctx.deadline);
            tracing::warn!(error = %Chain(&e), inserts = ins.id.len(), "batch timed out; connection discarded");
            drop(deadpool_postgres::Object::take(conn.client));
            ins.fail(&e);
            ctx.unwritten_finishes(fin, &e);
        }
    }
}

impl Ctx {
    /// Final updates PostgreSQL did not take: handed to `refused` when given (the journal),
    /// else lost (logged and counted).
    fn unwritten_finishes(&self, fin: Finishes, e: &StoreError) {
        if fin.id.is_empty() {
            return;
        }
        if let Some(refused) = &self.refused {
            refused(fin.into_finishes());
            return;
        }
        self.metrics.finish_failed.inc_by(fin.id.len() as u64);
        for id in &fin.id {
            tracing::error!(row_id = %id, error = %Chain(e), "final update not recorded");
        }
    }
}

/// Applies replayed journal records: pending rows first (rows already stored are skipped by
/// id), then final updates. Each step is idempotent, so a batch applied twice changes nothing.
/// Returns (rows inserted or found, rows updated).
pub(super) async fn replay(
    client: &deadpool_postgres::Client,
    starts: Vec<(AttemptStart, Uuid)>,
    finishes: Vec<AttemptFinish>,
    metrics: &Metrics,
) -> Result<u64, StoreError> {
    let mut ins = Inserts::default();
    for (s, instance) in starts {
        ins.push(s, instance, None);
    }
    if !ins.id.is_empty() {
        let stmt = client.prepare_cached(INSERT).await?;
        let rows = client.query(&stmt, &ins.params()).await?;
        ins.resolve(&rows, metrics);
        let stored = renumber(client, &mut ins, metrics).await?;
        // Timed-out inserts that committed after all, or a replay repeated: never a second row.
        metrics.replay_already_stored.inc_by(stored);
    }
    let mut fin = Finishes::default();
    for f in finishes {
        fin.push(f);
    }
    if fin.id.is_empty() {
        return Ok(0);
    }
    let stmt = client.prepare_cached(FINISH.as_str()).await?;
    let n = client.execute(&stmt, &fin.params()).await?;
    metrics.rows_finished.inc_by(n);
    Ok(n)
}

/// Rows left out of the first statement: either already stored (answered with their number) or
/// beaten to their attempt number by a concurrent batch (inserted again with a fresh number).
/// Returns how many rows were found already stored.
async fn renumber(
    client: &deadpool_postgres::Client,
    ins: &mut Inserts,
    metrics: &Metrics,
) -> Result<u64, StoreError> {
    let mut stored = 0;
    for _ in 0..MAX_ROUNDS {
        let left = ins.unanswered();
        if left.is_empty() {
            return Ok(stored);
        }
        let ids: Vec<Uuid> = left.iter().map(|&i| ins.id[i]).collect();
        let stmt = client.prepare_cached(EXISTING).await?;
        let existing = client.query(&stmt, &[&ids]).await?;
        stored += existing.len() as u64;
        ins.resolve(&existing, metrics);
        let left = ins.unanswered();
        if left.is_empty() {
            return Ok(stored);
        }
        let mut retry = ins.take(&left);
        let stmt = client.prepare_cached(INSERT).await?;
        let rows = client.query(&stmt, &retry.params()).await?;
        retry.resolve(&rows, metrics);
        // Whatever is still unanswered goes back for the next round.
        for (k, &i) in left.iter().enumerate() {
            ins.waiters[i] = std::mem::replace(&mut retry.waiters[k], Waiter::Answered);
            ins.payload[i] = retry.payload[k].take();
            ins.redactions[i] = retry.redactions[k].take();
        }
    }
    Err(StoreError::Contended(MAX_ROUNDS))
}
