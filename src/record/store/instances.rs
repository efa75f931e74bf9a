//! Crash recovery's statements: registration and heartbeat in `trace_proxy_instances`, resolving
//! the rows dead instances left behind, deregistration. The task that runs them is
//! `crate::recovery`. Tables: `sql/0007_instances.sql`.
//!
//! Every row the writer inserts carries the instance id of the process that inserted it
//! (`proxy_instance`). Every `recovery.heartbeat_secs`, each running proxy:
//! 1. refreshes its own `last_seen` (re-registering if a replica took it for dead);
//! 2. resolves orphans, [`BATCH_ROWS`] at a time: rows still `pending`/`in_progress` whose
//!    instance was last seen more than `recovery.stale_after_secs` ago, or whose instance is
//!    NULL or unknown and which were requested more than `stale_after_secs` ago, become `failed`
//!    with [`OUTCOME_UNKNOWN`] and `responded_at` = now. Its own rows are never touched;
//! 3. deletes the instance rows of dead instances that have no unresolved rows left.
//!
//! On graceful shutdown, once the writer has drained, the instance row is deleted. A row wrongly
//! resolved (its proxy was alive but could not heartbeat) is overwritten by its real outcome when
//! that proxy's D2 update arrives. Replicas work concurrently: rows are taken with
//! `FOR UPDATE SKIP LOCKED`, so no lock is needed.

use std::sync::LazyLock;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::unresolved::resolve_set;
pub use super::unresolved::OUTCOME_UNKNOWN;

/// Rows resolved per statement (and transaction).
pub const BATCH_ROWS: i64 = 1_000;

#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("database pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("database ({step})")]
    Db {
        step: &'static str,
        #[source]
        source: tokio_postgres::Error,
    },
}

impl RecoveryError {
    fn db(step: &'static str) -> impl Fn(tokio_postgres::Error) -> RecoveryError {
        move |source| RecoveryError::Db { step, source }
    }
}

/// `$1` instance id, `$2` hostname.
const HEARTBEAT: &str = "
INSERT INTO trace_proxy_instances (id, started_at, last_seen, hostname)
VALUES ($1, now(), now(), $2)
ON CONFLICT (id) DO UPDATE SET last_seen = now()";

/// One batch. `$1` own instance id, `$2` stale_after in seconds, `$3` batch size. The
/// `overall_status` predicate matches the partial index of `sql/0007_instances.sql`.
static RESOLVE: LazyLock<String> = LazyLock::new(|| {
    let set = resolve_set(
        "'No outcome was recorded: the proxy instance that handled the attempt ('
            || coalesce(t.proxy_instance::text, 'unknown')
            || ') stopped before recording it.'",
        true,
    );
    format!(
        "
WITH orphans AS (
    SELECT t.id
    FROM communication_traces AS t
    LEFT JOIN trace_proxy_instances AS i ON i.id = t.proxy_instance
    WHERE t.overall_status IN ('pending', 'in_progress')
        AND t.proxy_instance IS DISTINCT FROM $1
        AND CASE WHEN i.id IS NULL
            THEN t.requested_at < (now() AT TIME ZONE 'UTC') - make_interval(secs => $2)
            ELSE i.last_seen < now() - make_interval(secs => $2) END
    LIMIT $3
    FOR UPDATE OF t SKIP LOCKED
),
resolved AS (
    UPDATE communication_traces AS t
    SET {set}
    FROM orphans
    WHERE t.id = orphans.id
    RETURNING 1
)
SELECT count(*) FROM resolved"
    )
});

/// Dead instances with nothing left to resolve. `$1` own id, `$2` stale_after in seconds.
const FORGET_DEAD: &str = "
DELETE FROM trace_proxy_instances AS i
WHERE i.id <> $1
    AND i.last_seen < now() - make_interval(secs => $2)
    AND NOT EXISTS (
        SELECT 1 FROM communication_traces AS t
        WHERE t.proxy_instance = i.id AND t.overall_status IN ('pending', 'in_progress'))";

/// Rows of the given (dead) instances still unresolved. `$1` instance ids.
static RESOLVE_INSTANCES: LazyLock<String> = LazyLock::new(|| {
    let set = resolve_set(
        "'No outcome was recorded: the proxy instance that handled the attempt ('
        || proxy_instance::text
        || ') stopped before recording it; resolved when the proxy restarted on its spool directory.'",
        true,
    );
    format!(
        "
UPDATE communication_traces
SET {set}
WHERE proxy_instance = ANY($1) AND overall_status IN ('pending', 'in_progress')"
    )
});

const DEREGISTER: &str = "DELETE FROM trace_proxy_instances WHERE id = $1";

/// Refreshes (or creates) this instance's row.
pub async fn heartbeat(
    pool: &Pool,
    instance: Uuid,
    hostname: Option<&str>,
) -> Result<(), RecoveryError> {
    let conn = pool.get().await.map_err(RecoveryError::Pool)?;
    conn.execute(HEARTBEAT, &[&instance, &hostname])
        .await
        .map_err(RecoveryError::db("heartbeat"))?;
    Ok(())
}

/// One recovery pass as `instance`: resolves every orphan (in batches, stopping early once
/// `stop` turns true), then forgets dead instances. Returns the rows resolved.
pub async fn resolve_orphans(
    pool: &Pool,
    instance: Uuid,
    stale_after: Duration,
    stop: &CancellationToken,
) -> Result<u64, RecoveryError> {
    let conn = pool.get().await.map_err(RecoveryError::Pool)?;
    let secs = stale_after.as_secs_f64();
    let mut total = 0u64;
    loop {
        if stop.is_cancelled() {
            return Ok(total);
        }
        let row = conn
            .query_one(&*RESOLVE, &[&instance, &secs, &BATCH_ROWS])
            .await
            .map_err(RecoveryError::db("resolve"))?;
        let n = row.get::<_, i64>(0);
        total += u64::try_from(n).unwrap_or(0);
        if n < BATCH_ROWS {
            break;
        }
    }
    let forgotten = conn
        .execute(FORGET_DEAD, &[&instance, &secs])
        .await
        .map_err(RecoveryError::db("forget dead instances"))?;
    if forgotten > 0 {
        tracing::info!(instances = forgotten, "dead proxy instances forgotten");
    }
    Ok(total)
}

/// Resolves every row the given instances left `pending`/`in_progress` as `OUTCOME_UNKNOWN`,
/// at once (no staleness wait): used by a proxy restarted on the spool directory of a process
/// that died, which therefore knows that process is gone. Returns the rows resolved.
pub async fn resolve_instances(pool: &Pool, instances: &[Uuid]) -> Result<u64, RecoveryError> {
    let conn = pool.get().await.map_err(RecoveryError::Pool)?;
    let n = conn
        .execute(&*RESOLVE_INSTANCES, &[&instances])
        .await
        .map_err(RecoveryError::db("resolve instances"))?;
    if n > 0 {
        tracing::warn!(rows = n, ?instances,
            "rows left unresolved by a dead process of this spool directory recorded as failed (OUTCOME_UNKNOWN)");
    }
    Ok(n)
}

/// Deletes this instance's row (a graceful stop, every row final).
pub async fn deregister(pool: &Pool, instance: Uuid) -> Result<(), RecoveryError> {
    let conn = pool.get().await.map_err(RecoveryError::Pool)?;
    conn.execute(DEREGISTER, &[&instance])
        .await
        .map_err(RecoveryError::db("deregister"))?;
    Ok(())
}
