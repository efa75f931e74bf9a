//! Everything PostgreSQL: the pool, migrations and the batching writer. Knows nothing of HTTP.

pub mod agent;
pub mod archive;
pub mod instances;
mod migrate;
pub mod query;
mod unresolved;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_postgres::NoTls;
use uuid::Uuid;

pub use migrate::{migrate, MIGRATIONS};

use crate::config::DatabaseConfig;
use crate::metrics::Metrics;
use crate::trace::{AttemptFinish, AttemptStart};

/// Why the store could not do something. Cloneable (sources behind `Arc`) because one failed
/// batch answers every request waiting in it; the sources become text only where the error is
/// logged or stored ([`crate::error::error_chain`]).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("database pool")]
    Pool(#[source] Arc<deadpool_postgres::PoolError>),
    #[error("database")]
    Db(#[source] Arc<tokio_postgres::Error>),
    /// The server refused the data itself (SQLSTATE class 22 data exception or 23 integrity
    /// violation): sending it again cannot succeed.
    #[error("database rejected the data")]
    Rejected(#[source] Arc<tokio_postgres::Error>),
    #[error("migration {version} ({name})")]
    Migration {
        version: i32,
        name: &'static str,
        #[source]
        source: Arc<tokio_postgres::Error>,
    },
    #[error("attempt number still contended after {0} rounds")]
    Contended(usize),
    #[error("no commit within {0:?}")]
    Timeout(Duration),
    #[error("store writer stopped")]
    Closed,
    #[error("pool setup")]
    Setup(#[source] Arc<deadpool_postgres::BuildError>),
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.code().map(|c| c.code()) {
            Some(code) if code.starts_with("22") || code.starts_with("23") => {
                StoreError::Rejected(Arc::new(e))
            }
            _ => StoreError::Db(Arc::new(e)),
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        StoreError::Pool(Arc::new(e))
    }
}

/// One unit of work for the writer.
pub(crate) enum Op {
    Insert(Box<AttemptStart>, oneshot::Sender<Result<i32, StoreError>>),
    Progress(Uuid),
    Finish(Box<AttemptFinish>),
}

/// Handle to the store: cheap to clone, shared by every request.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    tx: mpsc::UnboundedSender<Op>,
    insert_timeout: Duration,
    instance: Uuid,
}

/// The outcome of a queued pending insert.
pub struct PendingInsert(oneshot::Receiver<Result<i32, StoreError>>);

impl PendingInsert {
    /// Waits for the commit (or its failure) and the attempt number the row got; `None` when
    /// `limit` passed first, in which case the insert may still commit later and `self` can be
    /// awaited again.
    pub async fn wait(&mut self, limit: Option<Duration>) -> Option<Result<i32, StoreError>> {
        let flat = |r: Result<Result<i32, StoreError>, _>| r.unwrap_or(Err(StoreError::Closed));
        match limit {
            Some(d) => tokio::time::timeout(d, &mut self.0).await.ok().map(flat),
            None => Some(flat((&mut self.0).await)),
        }
    }
}

/// The writer tasks; awaited on shutdown so every queued row is written before exit.
pub struct Writer {
    tasks: Vec<JoinHandle<()>>,
}

impl Writer {
    /// Waits until every `Store` handle is gone and the queue is drained, up to `deadline`.
    pub async fn drain(self, deadline: Duration) -> bool {
        let all = futures_util::future::join_all(self.tasks);
        tokio::time::timeout(deadline, all).await.is_ok()
    }
}

/// Builds the pool. Connections are made lazily; nothing here touches the network.
pub fn pool(cfg: &DatabaseConfig) -> Result<Pool, StoreError> {
    pool_with(cfg, cfg.pool_size, "")
}

/// Session settings of the writer's connections. Its statements always reach rows through an
/// index (by id, or by trace id), so they are planned once, generically, and kept to index
/// plans: a plan made while the table was small would otherwise use sequential scans and be
/// kept as the table grows to millions of rows, while planning every execution instead would
/// cost more than executing the insert.
pub const WRITER_SESSION: &str = "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off \
    -c enable_hashjoin=off -c enable_mergejoin=off";

/// The writer's own pool: one connection per writer task, with [`WRITER_SESSION`].
pub fn writer_pool(cfg: &DatabaseConfig) -> Result<Pool, StoreError> {
    pool_with(cfg, cfg.writer_tasks, WRITER_SESSION)
}

fn pool_with(cfg: &DatabaseConfig, size: usize, session: &str) -> Result<Pool, StoreError> {
    let mut pg = cfg.pg.clone();
    pg.connect_timeout(cfg.connect_timeout);
    pg.keepalives(true);
    pg.keepalives_idle(Duration::from_secs(30));
    // A hung statement must fail within a known time, server side.
    let ours = format!(
        "-c statement_timeout={} {session}",
        cfg.statement_timeout.as_millis()
    );
    let options = match pg.get_options() {
        Some(existing) if !existing.is_empty() => format!("{existing} {ours}"),
        _ => ours,
    };
    pg.options(options.trim());
    pg.application_name("trace-proxy");
    let manager = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(cfg.pool_wait_timeout))
        .create_timeout(Some(cfg.connect_timeout))
        .recycle_timeout(Some(cfg.connect_timeout))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Setup(Arc::new(e)))
}

/// This database's own id (sql/0011), which the spool journal is bound to.
pub async fn database_id(pool: &Pool) -> Result<Uuid, StoreError> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "SELECT id FROM trace_proxy_identity ORDER BY created_at LIMIT 1",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Stores n8n's account of the execution of row `id` (the `[n8n]` lookup); the rows changed (0:
/// the row is not written yet).
pub async fn set_n8n_execution(
    pool: &Pool,
    id: Uuid,
    account: &serde_json::Value,
) -> Result<u64, StoreError> {
    let client = pool.get().await?;
    let n = client
        .execute(
            "UPDATE communication_traces SET n8n_execution = $2 WHERE id = $1",
            &[&id, account],
        )
        .await?;
    Ok(n)
}

/// Takes the final updates PostgreSQL refused (the recorder journals them).
pub type Refused = Box<dyn Fn(Vec<AttemptFinish>) + Send + Sync>;

impl Store {
    /// Starts the writer tasks, on their own pool ([`writer_pool`]); `pool` serves the rest.
    /// Every row they insert carries `instance`, this process's id (`crate::recovery`).
    /// Final updates PostgreSQL refuses go to `refused` when given.
    pub fn start(
        pool: Pool,
        cfg: &DatabaseConfig,
        metrics: Arc<Metrics>,
        instance: Uuid,
        refused: Option<Refused>,
    ) -> Result<(Store, Writer), StoreError> {
        #[expect(
            clippy::disallowed_methods,
            reason = "bounded by the requests in flight (max_connections): each queues at most \
                      its pending row, an in_progress mark and its final update"
        )]
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = writer::Ctx {
            pool: writer_pool(cfg)?,
            max_batch: cfg.max_batch_rows,
            linger: cfg.finish_linger,
            metrics,
            instance,
            deadline: cfg.client_deadline(),
            refused,
        };
        let tasks = writer::spawn(ctx, rx, cfg.writer_tasks);
        Ok((
            Store {
                pool,
                tx,
                insert_timeout: cfg.insert_timeout,
                instance,
            },
            Writer { tasks },
        ))
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The id of this process, carried by every row it inserts.
    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// D1: queues the pending row. The receiver resolves once it is committed (or failed);
    /// concurrent inserts share round trips and commits. Every queued insert is answered.
    pub fn begin(&self, start: AttemptStart) -> Result<PendingInsert, StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Op::Insert(Box::new(start), done))
            .map_err(|_| StoreError::Closed)?;
        Ok(PendingInsert(wait))
    }

    /// How long a request waits for its pending row before `on_unavailable` applies.
    pub fn insert_timeout(&self) -> Duration {
        self.insert_timeout
    }

    /// Marks a row whose response is still streaming. Fire and forget.
    pub fn mark_in_progress(&self, id: Uuid) {
        let _ = self.tx.send(Op::Progress(id));
    }

    /// D2: queued; the client never waits for it. The queue is bounded by the number of
    /// committed-but-unfinished rows, since each finish follows one committed `begin`.
    pub fn record_finish(&self, finish: AttemptFinish) -> Result<(), StoreError> {
        self.tx
            .send(Op::Finish(Box::new(finish)))
            .map_err(|_| StoreError::Closed)
    }
}

/// Applies replayed spool records on `client` within `deadline`; a connection that timed out
/// is discarded. See `writer::replay`.
pub(crate) async fn replay(
    client: deadpool_postgres::Client,
    starts: Vec<(AttemptStart, Uuid)>,
    finishes: Vec<AttemptFinish>,
    metrics: &Metrics,
    deadline: Duration,
) -> Result<u64, StoreError> {
    match tokio::time::timeout(deadline, writer::replay(&client, starts, finishes, metrics)).await {
        Ok(r) => r,
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(StoreError::Timeout(deadline))
        }
    }
}

/// Whether PostgreSQL answers: a pooled connection runs `SELECT 1` within `deadline` (a
/// connection that does not is discarded). Used by `/readyz` and before each replay pass.
pub async fn ping(pool: &Pool, deadline: Duration) -> Result<(), StoreError> {
    let started = tokio::time::Instant::now();
    let client = tokio::time::timeout(deadline, pool.get())
        .await
        .map_err(|_| StoreError::Timeout(deadline))??;
    let left = deadline.saturating_sub(started.elapsed());
    match tokio::time::timeout(left, client.simple_query("SELECT 1")).await {
        Ok(r) => r.map(drop).map_err(StoreError::from),
        Err(_) => {
            drop(deadpool_postgres::Object::take(client));
            Err(StoreError::Timeout(deadline))
        }
    }
}
