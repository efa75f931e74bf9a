//! D5 retention as a running proxy keeps it: a pass at start, then every `retention.interval`,
//! one replica at a time. The passes themselves, and their SQL, are `crate::store::archive`.

use std::time::Duration;

use deadpool_postgres::Pool;

use crate::config::RetentionConfig;
use crate::error::Chain;
use crate::shutdown::Shutdown;
use crate::store::archive::run_until;
pub use crate::store::archive::{run_once, Report, RetentionError, LOCK_CLASS};

/// After a failed pass, the scheduler tries again after this (or its interval, if shorter).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// The job as a running proxy runs it: a pass at start, then every `interval`, until shutdown
/// begins; a pass in progress then stops after its current batch (committed or rolled back as a
/// whole), and one still running at the shutdown deadline is abandoned (its open batch rolls back).
pub struct Scheduler;

impl Scheduler {
    /// Starts the schedule as a task of `shutdown`; nothing when `retention.interval = "0"` (the
    /// proxy never runs it).
    pub fn start(pool: Pool, config: RetentionConfig, shutdown: &Shutdown) {
        let Some(interval) = config.interval else {
            return;
        };
        let stopped = shutdown.token().clone();
        shutdown.spawn(async move {
            loop {
                let now = crate::trace::now_utc();
                let delay = match run_until(&pool, &config, now, false, &stopped).await {
                    Ok(r) => {
                        if r.changed_anything() {
                            tracing::info!(
                                resolved = r.resolved,
                                archived = r.archived,
                                summaries_created = r.summaries_created,
                                summaries_merged = r.summaries_merged,
                                daily_created = r.daily_created,
                                daily_merged = r.daily_merged,
                                summaries_expired = r.summaries_expired,
                                batches = r.batches,
                                complete = r.complete,
                                elapsed_ms = r.elapsed.as_millis() as u64,
                                "retention pass done"
                            );
                        } else {
                            tracing::debug!("retention pass: nothing to do");
                        }
                        interval
                    }
                    Err(RetentionError::Busy) => {
                        tracing::debug!("retention pass skipped: another replica holds the lock");
                        interval
                    }
                    Err(e) => {
                        let retry = interval.min(RETRY_AFTER_FAILURE);
                        tracing::warn!(error = %Chain(&e), retry_in_secs = retry.as_secs(), "retention pass failed");
                        retry
                    }
                };
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped.cancelled() => return,
                }
            }
        });
    }
}
