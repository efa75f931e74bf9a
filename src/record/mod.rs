//! Recording: where every attempt's row goes. The [`Recorder`] is the one place that decides it —
//! PostgreSQL, the durable journal or nowhere — under `database.on_unavailable` and
//! `spool.spool_full`. Its leaves know nothing of each other: `store` writes to PostgreSQL,
//! `spool` keeps what PostgreSQL could not take in a durable journal, `replay` moves the journal
//! into PostgreSQL.
//!
//! The proxy sees [`Recorder::start`] (the pending row, D1) and [`Ticket::finish`] (the final
//! update, D2); a ticket dropped unfinished records an abort.

pub mod replay;
pub mod spool;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use uuid::Uuid;

use crate::config::{Config, OnUnavailable, SpoolFull};
use crate::error::{error_chain, Chain};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::trace::{now_utc, AttemptFinish, AttemptStart, Status};
use replay::{ReplayCtx, Replayer};
use spool::{Appender, Record, Spool};
use store::{PendingInsert, Store, StoreError, Writer};

/// Room `/readyz` wants left in the journal: a record with a large payload.
const SPOOL_HEADROOM: u64 = 64 * 1024;
/// How long [`Recorder::ready`] waits for PostgreSQL to answer `SELECT 1`.
pub const READY_DEADLINE: Duration = Duration::from_secs(2);

/// The journal, its appender and the earlier instances of its directory, as opened at startup.
pub type Spooling = (Spool, Appender, Vec<Uuid>);

/// Where rows go. Cheap to clone.
#[derive(Clone)]
pub struct Recorder(Arc<Inner>);

struct Inner {
    store: Store,
    spool: Option<Spool>,
    metrics: Arc<Metrics>,
    on_unavailable: OnUnavailable,
    spool_full: SpoolFull,
    /// What pending rows may fill of the journal (`SpoolConfig::pending_limit`).
    spool_pending_limit: u64,
}

/// The recorder's background work, stopped by [`Tasks::close`].
pub struct Tasks {
    writer: Writer,
    /// The replayer's context until [`Tasks::start_replay`] starts it.
    replay: Option<ReplayCtx>,
    replayer: Option<Replayer>,
    appender: Option<Appender>,
    /// The journal, to say at shutdown what is left in it.
    spool: Option<Spool>,
}

/// Whether the proxy can record (`/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// PostgreSQL answers.
    Ready,
    /// PostgreSQL does not answer (the reason), but the journal has room.
    Spooling(String),
    /// Neither: the reason.
    NotReady(String),
}

/// Answers whether the recorder can record.
#[derive(Clone)]
pub struct Probe {
    pool: Pool,
    metrics: Arc<Metrics>,
    /// What pending rows may fill of the journal; `None` without a journal.
    spool_pending_limit: Option<u64>,
}

impl Probe {
    /// A probe of the database alone (a process without a journal, such as `trace-proxy mcp`).
    pub fn database_only(pool: Pool, metrics: Arc<Metrics>) -> Probe {
        Probe {
            pool,
            metrics,
            spool_pending_limit: None,
        }
    }

    /// PostgreSQL answers `SELECT 1` within [`READY_DEADLINE`]: ready. Otherwise ready only
    /// while the journal (if any) has room for a large record.
    pub async fn ready(&self) -> Readiness {
        let reason = match store::ping(&self.pool, READY_DEADLINE).await {
            Ok(()) => return Readiness::Ready,
            Err(StoreError::Timeout(d)) => {
                format!(
                    "database did not answer SELECT 1 within {} ms",
                    d.as_millis()
                )
            }
            Err(e) => format!("database unreachable: {}", error_chain(&e)),
        };
        let Some(limit) = self.spool_pending_limit else {
            return Readiness::NotReady(reason);
        };
        let used = self.metrics.spool_bytes.get();
        match used + SPOOL_HEADROOM <= limit {
            true => Readiness::Spooling(reason),
            false => Readiness::NotReady(format!("{reason}; spool journal full")),
        }
    }
}

/// A pending row that could not be recorded, under a policy that forbids forwarding it. The
/// ticket must still be finished: an insert that timed out may commit later.
pub struct Refused {
    pub reason: String,
    pub ticket: Ticket,
}

impl Recorder {
    /// Starts the writer (on `pool`'s database); with a journal, its replayer starts with
    /// [`Tasks::start_replay`]. Every row inserted carries `instance`. Final updates PostgreSQL
    /// refuses go to the journal.
    pub fn open(
        config: &Config,
        pool: Pool,
        metrics: Arc<Metrics>,
        instance: Uuid,
        spooling: Option<Spooling>,
    ) -> Result<(Recorder, Tasks), StoreError> {
        let spool = spooling.as_ref().map(|(s, _, _)| s.clone());
        let refused = spool.clone().map(|spool| -> store::Refused {
            Box::new(move |finishes| {
                spool.engage();
                for finish in finishes {
                    spool.append_detached(&Record::Finish {
                        finish: Box::new(finish),
                    });
                }
            })
        });
        let (store, writer) =
            Store::start(pool, &config.database, metrics.clone(), instance, refused)?;
        let (appender, replay) = match spooling {
            Some((spool, appender, previous)) => {
                let pool = store.pool().clone();
                let ctx = ReplayCtx::new(config, spool, pool, metrics.clone(), instance, previous);
                (Some(appender), Some(ctx))
            }
            None => (None, None),
        };
        let recorder = Recorder(Arc::new(Inner {
            store,
            spool,
            metrics,
            on_unavailable: config.database.on_unavailable,
            spool_full: config.spool.spool_full,
            spool_pending_limit: config.spool.pending_limit(),
        }));
        let tasks = Tasks {
            writer,
            spool: recorder.0.spool.clone(),
            replay,
            replayer: None,
            appender,
        };
        Ok((recorder, tasks))
    }

    /// The pool of the database rows go to (for retention and recovery).
    pub fn pool(&self) -> &Pool {
        self.0.store.pool()
    }

    /// D1: records the pending row — committed in PostgreSQL, or durable in the journal — before
    /// the caller forwards anything. `build` makes the row; it is called again only when the
    /// row must be journaled after PostgreSQL failed it. Under `on_unavailable = "forward"` an
    /// unrecorded attempt still gets a ticket (its finish is dropped); under `"reject"`, or when
    /// the journal cannot take it under `spool_full = "reject"`, the start is [`Refused`].
    /// `trace_id` and `route` name the attempt in the log lines of a failed start.
    pub async fn start(
        &self,
        trace_id: &str,
        route: &str,
        build: impl Fn() -> AttemptStart,
    ) -> Result<Ticket, Refused> {
        let inner = &self.0;
        let first = build();
        let mut ticket = Ticket {
            recorder: self.clone(),
            id: first.id,
            began: Instant::now(),
            insert: None,
            number: None,
        };
        let spare = match &inner.spool {
            // PostgreSQL is known to be unavailable: straight to the journal.
            Some(spool) if spool.engaged() => {
                ticket.insert = Some(Insert::Failed(
                    "PostgreSQL unavailable; recording to the spool journal".into(),
                ));
                Some(Box::new(first))
            }
            _ => {
                ticket.insert = Some(match inner.store.begin(first) {
                    Ok(pending) => Insert::Unknown(pending),
                    Err(e) => Insert::Failed(error_chain(&e)),
                });
                None
            }
        };
        let Err(reason) = ticket.wait_recorded().await else {
            return Ok(ticket);
        };
        let policy = match inner.on_unavailable {
            OnUnavailable::Spool => match ticket.spool_start(spare, &build).await {
                Ok(()) => return Ok(ticket),
                Err(e) => {
                    tracing::error!(%trace_id, %route, error = %Chain(&e), database = %reason,
                        "pending row neither committed nor spooled");
                    match inner.spool_full {
                        SpoolFull::Reject => OnUnavailable::Reject,
                        SpoolFull::Forward => OnUnavailable::Forward,
                    }
                }
            },
            other => other,
        };
        if policy == OnUnavailable::Forward {
            inner.metrics.unrecorded.inc();
            tracing::warn!(%trace_id, %route, error = %reason,
                "pending row not committed: forwarding unrecorded");
            return Ok(ticket);
        }
        inner.metrics.rejected_unavailable.inc();
        tracing::warn!(%trace_id, %route, error = %reason,
            "pending row not committed: request rejected, nothing forwarded");
        Err(Refused { reason, ticket })
    }

    /// Whether rows can be recorded now (see [`Probe::ready`]).
    pub async fn ready(&self) -> Readiness {
        self.probe().ready().await
    }

    /// A handle that answers [`Recorder::ready`] without keeping the recorder open (the admin
    /// listener outlives the writer at shutdown).
    pub fn probe(&self) -> Probe {
        Probe {
            pool: self.pool().clone(),
            metrics: self.0.metrics.clone(),
            spool_pending_limit: self.0.spool.as_ref().map(|_| self.0.spool_pending_limit),
        }
    }

    /// Queues a final update for a committed row.
    fn submit(&self, finish: AttemptFinish) {
        let id = finish.id;
        if let Err(e) = self.0.store.record_finish(finish) {
            self.0.metrics.finish_failed.inc();
            tracing::error!(row_id = %id, error = %Chain(&e), "final update not queued");
        }
    }
}

impl Tasks {
    /// Starts replaying the journal into PostgreSQL (once the schema has had its chance to be
    /// migrated).
    pub fn start_replay(&mut self) {
        if let Some(ctx) = self.replay.take() {
            self.replayer = Some(Replayer::start(ctx));
        }
    }

    /// At shutdown, once no request is left: writes every queued row, stops the replayer after
    /// its batch in flight, and syncs the journal (what PostgreSQL did not take is replayed at
    /// the next start) — all within the shutdown deadline. True when every row was written.
    pub async fn close(self, shutdown: &Shutdown) -> bool {
        // The writer stops once the last request's finish is queued and written.
        let drained = self.writer.drain(shutdown.remaining()).await;
        if !drained {
            tracing::warn!("shutdown deadline passed before every row was written");
        }
        if let Some(replayer) = self.replayer {
            replayer.stop(shutdown.remaining()).await;
        }
        if let Some(appender) = self.appender {
            if !appender.close(shutdown.remaining()).await {
                tracing::error!("shutdown deadline passed before the spool journal was synced");
            }
        }
        if let Some(spool) = self.spool.filter(|s| s.records() > 0) {
            tracing::warn!(records = spool.records(), dir = %spool.dir().display(),
                "records still waiting in the spool journal: replayed at the next start on this directory, or by `trace-proxy spool replay`");
        }
        drained
    }
}

/// What is known of the pending row.
enum Insert {
    /// Queued; not yet known to be committed.
    Unknown(PendingInsert),
    Committed,
    /// Not recorded (the reason); the final update is dropped.
    Failed(String),
    /// Durable in the journal; the final update follows it there.
    Spooled,
}

/// One attempt's row, from its pending state to its final update. Finished exactly once: by
/// [`Ticket::finish`], or — when dropped first — as aborted.
pub struct Ticket {
    recorder: Recorder,
    id: Uuid,
    began: Instant,
    insert: Option<Insert>,
    /// The attempt number the store gave the row (known once committed).
    number: Option<i32>,
}

impl Ticket {
    /// The attempt number of the committed row (`None` when journaled or unrecorded).
    pub fn number(&self) -> Option<i32> {
        self.number
    }

    /// Marks a committed row `in_progress` (a long response is streaming).
    pub fn mark_in_progress(&self) {
        if let Some(Insert::Committed) = self.insert {
            self.recorder.0.store.mark_in_progress(self.id);
        }
    }

    /// D2: hands the final update to wherever the pending row went.
    pub fn finish(mut self, finish: AttemptFinish) {
        self.route(finish);
    }

    fn route(&mut self, finish: AttemptFinish) {
        let Some(insert) = self.insert.take() else {
            return;
        };
        let recorder = &self.recorder;
        match insert {
            Insert::Committed => recorder.submit(finish),
            Insert::Failed(_) => {
                tracing::debug!(row_id = %self.id, "unrecorded request finished");
            }
            Insert::Spooled => {
                if let Some(spool) = &recorder.0.spool {
                    spool.append_detached(&Record::Finish {
                        finish: Box::new(finish),
                    });
                }
            }
            // The insert may still commit: finish once it does, never before.
            Insert::Unknown(mut pending) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let recorder = recorder.clone();
                    rt.spawn(async move {
                        if let Some(Ok(_)) = pending.wait(None).await {
                            recorder.submit(finish);
                        }
                    });
                }
            }
        }
    }

    /// Waits up to the insert timeout for the pending row's commit.
    async fn wait_recorded(&mut self) -> Result<(), String> {
        let store = &self.recorder.0.store;
        let limit = store.insert_timeout();
        let result = match &mut self.insert {
            Some(Insert::Unknown(pending)) => {
                let waited = Instant::now();
                let r = pending.wait(Some(limit)).await;
                let metrics = &self.recorder.0.metrics;
                metrics.d1_insert.observe_duration(waited.elapsed());
                match r {
                    None => return Err(format!("no commit within {} ms", limit.as_millis())),
                    Some(r) => r,
                }
            }
            Some(Insert::Committed) | Some(Insert::Spooled) => return Ok(()),
            Some(Insert::Failed(e)) => return Err(e.clone()),
            None => return Err("attempt already finished".into()),
        };
        match result {
            Ok(number) => {
                self.insert = Some(Insert::Committed);
                self.number = Some(number);
                Ok(())
            }
            Err(e) => {
                let e = error_chain(&e);
                self.insert = Some(Insert::Failed(e.clone()));
                Err(e)
            }
        }
    }

    /// Appends the pending row (`spare`, or built again) to the journal and waits until it is
    /// durable.
    async fn spool_start(
        &mut self,
        spare: Option<Box<AttemptStart>>,
        build: &impl Fn() -> AttemptStart,
    ) -> Result<(), spool::SpoolError> {
        let inner = self.recorder.0.clone();
        let Some(spool) = &inner.spool else {
            return Err(spool::SpoolError::Closed);
        };
        let start = spare.unwrap_or_else(|| Box::new(build()));
        let waited = Instant::now();
        // Spooled from the moment the record is queued: if the client goes away while it is
        // being synced, the attempt's final update (aborted) follows it into the journal.
        let before = self.insert.replace(Insert::Spooled);
        let result = spool
            .append(&Record::Start {
                instance: inner.store.instance(),
                start,
            })
            .await;
        inner.metrics.d1_insert.observe_duration(waited.elapsed());
        match &result {
            // The timed-out insert may still commit; the replayed copy is then a no-op.
            Ok(()) => spool.engage(),
            Err(_) => self.insert = before,
        }
        result
    }
}

impl Drop for Ticket {
    /// A ticket nobody finished: recorded as aborted.
    fn drop(&mut self) {
        if self.insert.is_none() {
            return;
        }
        let duration = self.began.elapsed();
        self.route(AttemptFinish {
            id: self.id,
            responded_at: now_utc(),
            duration_ms: i32::try_from(duration.as_millis()).unwrap_or(i32::MAX),
            response_payload: None,
            status: Status::Failed,
            error_code: Some("CLIENT_ABORTED".into()),
            error_detail: Some("the attempt ended before its outcome was recorded".into()),
            n8n_execution_id: None,
            http_status: None,
            request_bytes: 0,
            response_bytes: 0,
            redactions: None,
        });
    }
}
