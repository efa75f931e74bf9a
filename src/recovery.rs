//! Crash recovery as a running proxy keeps it: this process's instance id, registered and
//! heartbeating in `trace_proxy_instances`, and the task that resolves the rows dead instances
//! left behind every heartbeat. What it runs, and the SQL, is `crate::store::instances`.
//!
//! On graceful shutdown, once the writer has drained, the instance row is deleted. A row wrongly
//! resolved (its proxy was alive but could not heartbeat) is overwritten by its real outcome when
//! that proxy's D2 update arrives.

use deadpool_postgres::Pool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::RecoveryConfig;
use crate::error::Chain;
use crate::shutdown::Shutdown;
use crate::store::instances::{deregister, heartbeat, resolve_orphans};
pub use crate::store::instances::{resolve_instances, RecoveryError, BATCH_ROWS, OUTCOME_UNKNOWN};

/// The host name recorded beside the instance id, for operators; `None` when unknown.
fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// This process's registration, heartbeat and recovery task.
pub struct Recovery {
    instance: Uuid,
    pool: Pool,
    /// Ends the heartbeat task; cancelled last, once every row is final (not when shutdown
    /// begins: a draining proxy keeps its instance alive).
    stop: CancellationToken,
}

impl Recovery {
    /// Registers `instance` (once, now, so rows inserted from here on belong to a known live
    /// instance; on failure the task keeps trying) and starts the heartbeat and recovery task.
    /// The task belongs to `shutdown`, which waits for it at the end.
    pub async fn start(
        pool: Pool,
        config: &RecoveryConfig,
        instance: Uuid,
        shutdown: &Shutdown,
    ) -> Recovery {
        let host = hostname();
        if let Err(e) = heartbeat(&pool, instance, host.as_deref()).await {
            tracing::warn!(error = %Chain(&e), %instance, "proxy instance not registered yet; retrying every heartbeat");
        } else {
            tracing::info!(%instance, "proxy instance registered");
        }
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let config = config.clone();
        let task_pool = pool.clone();
        shutdown.spawn(async move {
            let pool = task_pool;
            loop {
                if let Err(e) = heartbeat(&pool, instance, host.as_deref()).await {
                    tracing::warn!(error = %Chain(&e), %instance, "heartbeat failed");
                }
                match resolve_orphans(&pool, instance, config.stale_after, &stopped).await {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        rows = n,
                        "rows left unresolved by a stopped proxy instance recorded as failed (OUTCOME_UNKNOWN)"
                    ),
                    Err(e) => tracing::warn!(error = %Chain(&e), "orphan recovery pass failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(config.heartbeat) => {}
                    _ = stopped.cancelled() => return,
                }
            }
        });
        Recovery {
            instance,
            pool,
            stop,
        }
    }

    /// Stops the heartbeat task (`shutdown` waits for it). When `rows_final` (the writer
    /// drained), the instance row is deleted before the shutdown deadline; otherwise it is left to
    /// go stale, so any row still pending is resolved by a replica `stale_after` after the last
    /// heartbeat.
    pub async fn stop(self, shutdown: &Shutdown, rows_final: bool) {
        self.stop.cancel();
        if !rows_final {
            return;
        }
        match shutdown.within(deregister(&self.pool, self.instance)).await {
            Some(Ok(_)) => tracing::info!(instance = %self.instance, "proxy instance deregistered"),
            Some(Err(e)) => {
                tracing::warn!(error = %Chain(&e), instance = %self.instance, "proxy instance not deregistered; it will be forgotten once stale")
            }
            None => {
                tracing::warn!(instance = %self.instance, "proxy instance not deregistered in time; it will be forgotten once stale")
            }
        }
    }
}
