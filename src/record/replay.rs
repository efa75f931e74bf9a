//! The replayer: drains the journal into PostgreSQL, oldest record first, and trims it.
//!
//! Each pass seals the segment being appended to, then applies every sealed segment in order,
//! `spool.replay_batch_records` records at a time, and deletes a segment once all of it is
//! applied. Applying is idempotent (rows are keyed by the proxy-generated id), so a pass cut
//! short by another failure, or by a crash, is simply repeated. When the journal is empty the
//! spool disengages, and the rows the directory's earlier processes left unresolved are
//! resolved as `OUTCOME_UNKNOWN`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use uuid::Uuid;

use super::spool::journal::{Reader, Segment};
use super::spool::SpoolError;
use super::spool::{Record, Spool};
use crate::error::{error_chain, Chain};
use crate::metrics::Metrics;
use crate::recovery::RecoveryError;
use crate::store::{self, StoreError};
use crate::trace::{AttemptFinish, AttemptStart};

/// Why a replay pass stopped. Database errors stay database errors; the journal's own (a
/// segment that cannot be opened or removed) are told apart, each with its cause.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Journal(#[from] SpoolError),
    #[error("cannot open journal segment {path}")]
    OpenSegment {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot remove replayed segment {path}")]
    RemoveSegment {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot rewrite the spool directory's instance list")]
    InstanceList(#[source] std::io::Error),
    #[error("rows of earlier processes not resolved")]
    Resolve(#[source] RecoveryError),
    #[error("journal reading task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("{0} journal records were not replayed")]
    Left(u64),
    /// The journal's records belong to another database than the configured one.
    #[error("the spool journal in {dir} holds records for database {journal}, but the configured database is {configured}: not replayed (point database.url back at that database, or move the journal away)")]
    OtherDatabase {
        dir: std::path::PathBuf,
        journal: Uuid,
        configured: Uuid,
    },
    #[error("cannot read or write the spool journal's database binding")]
    Binding(#[source] std::io::Error),
}

/// Longest pause between replay attempts while PostgreSQL stays unavailable.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How often an idle replayer looks anyway (a missed wake-up costs at most this).
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub struct Replayer {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

/// What the replayer needs.
pub struct ReplayCtx {
    pub spool: Spool,
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    pub batch: usize,
    /// Client-side bound on one batch's round trips.
    pub deadline: Duration,
    pub instance: Uuid,
    /// Earlier processes of this spool directory whose unresolved rows must be resolved.
    pub previous: Vec<Uuid>,
    /// Replay even a journal bound to another database (`spool replay --into-other-database`).
    pub into_other_database: bool,
    /// When the last "still unreachable" line was logged.
    said_unreachable: Option<std::time::Instant>,
}

impl ReplayCtx {
    /// The context for `instance`'s replays of `spool` into `pool`, with the configured batch
    /// size and database deadline.
    pub fn new(
        config: &crate::Config,
        spool: Spool,
        pool: Pool,
        metrics: Arc<Metrics>,
        instance: Uuid,
        previous: Vec<Uuid>,
    ) -> ReplayCtx {
        ReplayCtx {
            spool,
            pool,
            metrics,
            batch: config.spool.replay_batch,
            deadline: config.database.client_deadline(),
            instance,
            previous,
            into_other_database: false,
            said_unreachable: None,
        }
    }
}

impl Replayer {
    pub fn start(ctx: ReplayCtx) -> Replayer {
        let (stop, rx) = watch::channel(false);
        Replayer {
            task: tokio::spawn(run(ctx, rx)),
            stop,
        }
    }

    /// Stops after the batch in flight (what is left stays in the journal for the next start).
    pub async fn stop(self, deadline: Duration) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout(deadline, &mut task).await.is_err() {
            task.abort();
        }
    }
}

async fn run(mut ctx: ReplayCtx, mut stop: watch::Receiver<bool>) {
    let mut backoff = Duration::from_millis(100);
    // Bound to the configured database as soon as it answers, before any outage fills the
    // journal (errors here are retried by the passes).
    if store::ping(&ctx.pool, ctx.deadline).await.is_ok() {
        let _ = check_binding(&ctx).await;
    }
    let mut said_other_database = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let work = ctx.spool.records() > 0 || ctx.spool.engaged() || !ctx.previous.is_empty();
        if !work {
            tokio::select! {
                _ = ctx.spool.woken() => {}
                _ = tokio::time::sleep(IDLE_CHECK) => {}
                _ = stop.changed() => return,
            }
            continue;
        }
        match pass(&ctx, &stop).await {
            Ok(()) => {
                backoff = Duration::from_millis(100);
                if ctx.spool.records() == 0 && !ctx.previous.is_empty() {
                    if let Err(e) = resolve_previous(&mut ctx).await {
                        tracing::warn!(error = %error_chain(&e), "orphans of earlier processes not resolved yet");
                        pause(&mut backoff, &mut stop).await;
                        continue;
                    }
                }
                if !ctx.spool.disengage_if_empty() {
                    // More arrived while replaying: go again at once.
                    continue;
                }
            }
            Err(e @ ReplayError::OtherDatabase { .. }) => {
                if !std::mem::replace(&mut said_other_database, true) {
                    tracing::error!(error = %error_chain(&e), records = ctx.spool.records(), "spool journal not replayed");
                }
                pause(&mut backoff, &mut stop).await;
            }
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), records = ctx.spool.records(), "spool replay paused");
                say_unreachable(&mut ctx, &e);
                pause(&mut backoff, &mut stop).await;
            }
        }
    }
}

/// While records wait and the database does not take them: one error line every
/// [`SAY_UNREACHABLE_EVERY`] with the cause and how much waits.
fn say_unreachable(ctx: &mut ReplayCtx, e: &ReplayError) {
    let due = ctx
        .said_unreachable
        .is_none_or(|t| t.elapsed() >= SAY_UNREACHABLE_EVERY);
    if due && ctx.spool.records() > 0 {
        ctx.said_unreachable = Some(std::time::Instant::now());
        tracing::error!(error = %error_chain(e), records = ctx.spool.records(),
            dir = %ctx.spool.dir().display(),
            "database not taking the spool journal; records wait there");
    }
}

/// How often the replayer says the database still does not take the journal.
const SAY_UNREACHABLE_EVERY: Duration = Duration::from_secs(30);

async fn pause(backoff: &mut Duration, stop: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = tokio::time::sleep(*backoff) => {}
        _ = stop.changed() => {}
    }
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
}

/// One pass over every sealed segment.
async fn pass(ctx: &ReplayCtx, stop: &watch::Receiver<bool>) -> Result<(), ReplayError> {
    // Only seal (close the segment being appended to) once PostgreSQL answers: failed passes
    // during an outage would otherwise leave a small segment each.
    reachable(ctx).await?;
    let segments = ctx.spool.seal().await?;
    for seg in segments {
        if *stop.borrow() {
            return Ok(());
        }
        let started = Instant::now();
        let applied = replay_segment(ctx, &seg, stop).await?;
        if !applied {
            return Ok(());
        }
        if let Err(e) = ctx.spool.trim(&seg) {
            // Replaying it again later is harmless; only the space stays in use.
            tracing::error!(segment = %seg.path.display(), error = %Chain(&e), "replayed segment not removed");
            return Err(ReplayError::RemoveSegment {
                path: seg.path.clone(),
                source: e,
            });
        }
        tracing::info!(segment = %seg.path.display(), records = seg.records,
            elapsed_ms = started.elapsed().as_millis() as u64, left = ctx.spool.records(),
            "spool segment replayed");
    }
    Ok(())
}

async fn reachable(ctx: &ReplayCtx) -> Result<(), ReplayError> {
    store::ping(&ctx.pool, ctx.deadline).await?;
    check_binding(ctx).await
}

/// The journal is replayed only into the database its records belong to: bound to the
/// configured database when it has no binding yet (or is empty), refused when it belongs to
/// another one.
async fn check_binding(ctx: &ReplayCtx) -> Result<(), ReplayError> {
    let configured = match store::database_id(&ctx.pool).await {
        Ok(id) => id,
        // Migrations not applied yet (`run_migrations = false`): nothing to bind to.
        Err(StoreError::Db(e))
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
        {
            return Ok(())
        }
        Err(e) => return Err(e.into()),
    };
    match ctx.spool.bound_database().map_err(ReplayError::Binding)? {
        Some(id) if id == configured => Ok(()),
        Some(journal) if ctx.spool.records() > 0 && !ctx.into_other_database => {
            Err(ReplayError::OtherDatabase {
                dir: ctx.spool.dir().to_owned(),
                journal,
                configured,
            })
        }
        _ => ctx
            .spool
            .bind_database(configured)
            .map_err(ReplayError::Binding),
    }
}

/// Applies one segment; false when stopped before its end.
async fn replay_segment(
    ctx: &ReplayCtx,
    seg: &Segment,
    stop: &watch::Receiver<bool>,
) -> Result<bool, ReplayError> {
    let path = seg.path.clone();
    let mut reader = Some(
        tokio::task::spawn_blocking(move || Reader::open(&path))
            .await
            .map_err(ReplayError::Task)?
            .map_err(|source| ReplayError::OpenSegment {
                path: seg.path.clone(),
                source,
            })?,
    );
    loop {
        if *stop.borrow() {
            return Ok(false);
        }
        let Some(mut r) = reader.take() else {
            return Ok(true);
        };
        let batch = ctx.batch;
        let (r, payloads, end) = tokio::task::spawn_blocking(move || {
            let mut payloads = Vec::with_capacity(batch);
            let mut end = false;
            while payloads.len() < batch {
                match r.next_frame() {
                    Ok(Some(p)) => payloads.push(p),
                    Ok(None) => {
                        end = true;
                        break;
                    }
                    Err(Ok(torn)) => {
                        // Sealed segments hold whole, synced frames; anything else is damage
                        // after the fact. What follows it cannot be framed: skip it.
                        tracing::error!(%torn, "spool segment damaged; the rest of it is skipped");
                        end = true;
                        break;
                    }
                    Err(Err(e)) => {
                        tracing::error!(error = %Chain(&e), "spool segment unreadable; the rest of it is skipped");
                        end = true;
                        break;
                    }
                }
            }
            (r, payloads, end)
        })
        .await
        .map_err(ReplayError::Task)?;
        if !payloads.is_empty() {
            apply(ctx, &payloads).await?;
            ctx.metrics.replayed.inc_by(payloads.len() as u64);
        }
        if !end {
            reader = Some(r);
        }
    }
}

/// Applies one batch of journal records. When PostgreSQL rejects the data itself, the records
/// are applied one at a time instead; a record rejected on its own is stored once more with its
/// payload replaced by a note saying why (the row is still written), and skipped only if even
/// that is rejected. Either way it never blocks the journal behind it.
async fn apply(ctx: &ReplayCtx, payloads: &[Vec<u8>]) -> Result<(), StoreError> {
    let (starts, finishes) = decode(ctx, payloads);
    if starts.is_empty() && finishes.is_empty() {
        return Ok(());
    }
    let client = ctx.pool.get().await?;
    match store::replay(client, starts, finishes, &ctx.metrics, ctx.deadline).await {
        Err(StoreError::Rejected(e)) if payloads.len() == 1 => {
            ctx.metrics.spool_rejected.inc();
            let (mut starts, mut finishes) = decode(ctx, payloads);
            let note = serde_json::json!({ "_unstorable": format!("PostgreSQL refused this payload: {}", error_chain(&*e)) });
            for (s, _) in &mut starts {
                s.request_payload = Some(note.clone());
                tracing::error!(row_id = %s.id, error = %Chain(&e), "spool record rejected by PostgreSQL; storing it without its request payload");
            }
            for f in &mut finishes {
                f.response_payload = Some(note.clone());
                tracing::error!(row_id = %f.id, error = %Chain(&e), "spool record rejected by PostgreSQL; storing it without its response payload");
            }
            let client = ctx.pool.get().await?;
            match store::replay(client, starts, finishes, &ctx.metrics, ctx.deadline).await {
                Err(StoreError::Rejected(e)) => {
                    tracing::error!(error = %Chain(&e), "spool record rejected by PostgreSQL even without its payload; skipped");
                    Ok(())
                }
                other => other.map(drop),
            }
        }
        Err(StoreError::Rejected(_)) => {
            for p in payloads {
                Box::pin(apply(ctx, std::slice::from_ref(p))).await?;
            }
            Ok(())
        }
        other => other.map(drop),
    }
}

type Decoded = (Vec<(AttemptStart, Uuid)>, Vec<AttemptFinish>);

/// The pending rows and final updates of `payloads`; undecodable ones are counted and skipped.
fn decode(ctx: &ReplayCtx, payloads: &[Vec<u8>]) -> Decoded {
    let mut starts = Vec::new();
    let mut finishes = Vec::new();
    for p in payloads {
        match serde_json::from_slice::<Record>(p) {
            Ok(Record::Start { instance, start }) => starts.push((*start, instance)),
            Ok(Record::Finish { finish }) => finishes.push(*finish),
            Err(e) => {
                ctx.metrics.spool_undecodable.inc();
                tracing::error!(error = %Chain(&e), "spool record not decodable; skipped");
            }
        }
    }
    (starts, finishes)
}

async fn resolve_previous(ctx: &mut ReplayCtx) -> Result<u64, ReplayError> {
    let n = crate::recovery::resolve_instances(&ctx.pool, &ctx.previous)
        .await
        .map_err(ReplayError::Resolve)?;
    tracing::info!(instances = ?ctx.previous, rows = n,
        "rows left unresolved by earlier processes of this spool directory resolved");
    ctx.spool
        .forget_previous(ctx.instance)
        .map_err(ReplayError::InstanceList)?;
    ctx.previous.clear();
    Ok(n)
}

/// What [`drain`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Journal records applied (pending rows and final updates).
    pub records: u64,
    /// Rows the directory's earlier processes left unresolved, now `OUTCOME_UNKNOWN`.
    pub resolved: u64,
}

/// Replays the whole journal once and resolves what the directory's earlier processes left
/// unresolved, with no traffic being spooled meanwhile (`trace-proxy spool replay`).
pub async fn drain(mut ctx: ReplayCtx) -> Result<Drained, ReplayError> {
    let before = ctx.metrics.replayed.get();
    let (_keep, stop) = watch::channel(false);
    pass(&ctx, &stop).await?;
    let left = ctx.spool.records();
    if left > 0 {
        return Err(ReplayError::Left(left));
    }
    let resolved = match ctx.previous.is_empty() {
        true => 0,
        false => resolve_previous(&mut ctx).await?,
    };
    Ok(Drained {
        records: ctx.metrics.replayed.get() - before,
        resolved,
    })
}
