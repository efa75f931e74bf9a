//! `GET /api/overview`: what the Memory Explorer's overview and workflow pages chart — one
//! window (the last hour, day or week) in equal buckets of count, failures and p50/p95 duration,
//! the top failing workflows and error codes, and the attempts unfinished now. SQL in
//! `crate::store::query::overview`.
//!
//! A window's buckets cost one pass over every attempt in it: for a busy week, hundreds of
//! thousands of rows and about half a second. So the current window (no `until`) is kept per
//! (window, workflow, limit): served as is while younger than [`fresh_for`] its window, then
//! served once more while one request reads it again in the background, unless it is older
//! than [`STALE_FOR`] fresh periods (then the request waits for a new one). The unfinished
//! attempts are read on every request. `generatedAt` says when the buckets were read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::NaiveDateTime;
use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio_postgres::GenericClient;

use super::params::Params;
use super::{ApiError, ApiState};
use crate::error::Chain;
use crate::store::query::{self, QueryError, Unfinished, Window};

/// Workflows and error codes listed when `limit` is absent.
const DEFAULT_TOP: i64 = 10;
/// Windows kept at once (the overview and the workflows looked at lately).
const MAX_KEPT: usize = 64;
/// A kept window older than this many fresh periods is not served while it is read again.
const STALE_FOR: u32 = 10;

/// How long a current window is served as is: a small part of one of its buckets.
pub(super) fn fresh_for(window: Window) -> Duration {
    match window {
        Window::Hour => Duration::from_secs(5),
        Window::Day => Duration::from_secs(30),
        Window::Week => Duration::from_secs(120),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    window: Window,
    workflow: Option<String>,
    top: i64,
}

/// One window as read.
#[derive(Debug, Clone)]
struct Read {
    overview: Arc<query::Overview>,
    since: NaiveDateTime,
    until: NaiveDateTime,
    generated_at: NaiveDateTime,
}

struct Kept {
    read: Read,
    at: Instant,
    used: Instant,
    refreshing: bool,
}

enum Lookup {
    Fresh(Read),
    /// Served while it is read again (`true`: this request starts that).
    Stale(Read, bool),
    Missing,
}

/// The current windows kept between requests.
#[derive(Default)]
pub(super) struct OverviewCache {
    kept: Mutex<HashMap<Key, Kept>>,
}

impl OverviewCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Kept>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The kept read of `key`, judged against the window ending at `until` now.
    fn lookup(&self, key: &Key, until: NaiveDateTime, now: Instant) -> Lookup {
        let mut kept = self.lock();
        let Some(k) = kept.get_mut(key) else {
            return Lookup::Missing;
        };
        k.used = now;
        let age = now.saturating_duration_since(k.at);
        let fresh = fresh_for(key.window);
        if age < fresh && k.read.until == until {
            return Lookup::Fresh(k.read.clone());
        }
        if age >= fresh * STALE_FOR {
            return Lookup::Missing;
        }
        let start = !k.refreshing;
        k.refreshing = true;
        Lookup::Stale(k.read.clone(), start)
    }

    fn store(&self, key: Key, read: Read, now: Instant) {
        let mut kept = self.lock();
        if kept.len() >= MAX_KEPT && !kept.contains_key(&key) {
            let oldest = kept
                .iter()
                .min_by_key(|(_, k)| k.used)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                kept.remove(&oldest);
            }
        }
        kept.insert(
            key,
            Kept {
                read,
                at: now,
                used: now,
                refreshing: false,
            },
        );
    }

    fn refresh_failed(&self, key: &Key) {
        if let Some(k) = self.lock().get_mut(key) {
            k.refreshing = false;
        }
    }
}

async fn read(
    client: &impl GenericClient,
    key: &Key,
    (since, until): (NaiveDateTime, NaiveDateTime),
) -> Result<Read, QueryError> {
    let generated_at = crate::trace::now_utc();
    let o = query::overview(client, key.window, until, key.workflow.as_deref(), key.top).await?;
    Ok(Read {
        overview: Arc::new(o),
        since,
        until,
        generated_at,
    })
}

/// Reads the current window of `key` again and keeps it.
async fn refresh(pool: Pool, cache: Arc<OverviewCache>, key: Key) {
    let window = key.window.ending_at(crate::trace::now_utc());
    let result = async {
        let client = pool.get().await?;
        read(&**client, &key, window).await
    };
    match result.await {
        Ok(r) => cache.store(key, r, Instant::now()),
        Err(e) => {
            tracing::warn!(error = %Chain(&e), window = key.window.as_str(), "overview refresh failed");
            cache.refresh_failed(&key);
        }
    }
}

pub(super) async fn overview(state: &ApiState, query: Option<&str>) -> Result<Value, ApiError> {
    let bad = ApiError::BadRequest;
    let p = Params::parse(query, &["window", "workflowId", "until", "limit"]).map_err(bad)?;
    let window = match p.raw("window") {
        None => Window::Day,
        Some(w) => Window::parse(w).ok_or_else(|| {
            ApiError::BadRequest(format!("`window` must be hour, day or week, got {w:?}"))
        })?,
    };
    let key = Key {
        window,
        workflow: p.text("workflowId").map_err(bad)?,
        top: match p.raw("limit") {
            None => DEFAULT_TOP,
            Some(_) => p.limit().map_err(bad)?,
        },
    };
    let until = p.time("until").map_err(bad)?;
    let bounds = window.ending_at(until.unwrap_or_else(crate::trace::now_utc));
    let client = state.pool.get().await?;
    let workflow = key.workflow.as_deref();
    let kept = match until {
        // A past window: read as asked, not kept.
        Some(_) => Lookup::Missing,
        None => state.overviews.lookup(&key, bounds.1, Instant::now()),
    };
    let (r, unfinished) = match kept {
        Lookup::Fresh(r) => (r, query::unfinished(&**client, workflow).await?),
        Lookup::Stale(r, start) => {
            if start {
                let (pool, cache) = (state.pool.clone(), state.overviews.clone());
                tokio::spawn(refresh(pool, cache, key.clone()));
            }
            (r, query::unfinished(&**client, workflow).await?)
        }
        Lookup::Missing => {
            let (r, unfinished) = tokio::try_join!(
                read(&**client, &key, bounds),
                query::unfinished(&**client, workflow)
            )?;
            if until.is_none() {
                state
                    .overviews
                    .store(key.clone(), r.clone(), Instant::now());
            }
            (r, unfinished)
        }
    };
    Ok(overview_json(&r, window, workflow, &unfinished))
}

/// The overview response.
fn overview_json(r: &Read, window: Window, workflow_id: Option<&str>, u: &Unfinished) -> Value {
    let o = &r.overview;
    json!({
        "window": window.as_str(),
        "since": crate::trace::iso_utc(&r.since),
        "until": crate::trace::iso_utc(&r.until),
        "generatedAt": crate::trace::iso_utc(&r.generated_at),
        "bucketSeconds": window.bucket().num_seconds(),
        "workflowId": workflow_id,
        "totals": o.totals,
        "buckets": o.buckets,
        "topFailingWorkflows": o.top_workflows,
        "topErrorCodes": o.top_error_codes,
        "unfinishedNow": u,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_until(until: NaiveDateTime) -> Read {
        Read {
            overview: Arc::new(query::Overview {
                totals: query::StatsRow::empty(),
                buckets: Vec::new(),
                top_workflows: Vec::new(),
                top_error_codes: Vec::new(),
            }),
            since: until,
            until,
            generated_at: until,
        }
    }

    #[test]
    fn kept_windows_are_fresh_then_stale_once_then_gone() {
        let cache = OverviewCache::default();
        let key = Key {
            window: Window::Hour,
            workflow: None,
            top: 10,
        };
        let t0 = Instant::now();
        let until = NaiveDateTime::default();
        assert!(matches!(cache.lookup(&key, until, t0), Lookup::Missing));
        cache.store(key.clone(), read_until(until), t0);
        assert!(matches!(cache.lookup(&key, until, t0), Lookup::Fresh(_)));
        let fresh = fresh_for(Window::Hour);
        // Stale: the first request starts the refresh, the next ones do not.
        assert!(matches!(
            cache.lookup(&key, until, t0 + fresh),
            Lookup::Stale(_, true)
        ));
        assert!(matches!(
            cache.lookup(&key, until, t0 + fresh),
            Lookup::Stale(_, false)
        ));
        cache.refresh_failed(&key);
        assert!(matches!(
            cache.lookup(&key, until, t0 + fresh),
            Lookup::Stale(_, true)
        ));
        // A new bucket began: no longer fresh, however young.
        let later = until + chrono::TimeDelta::minutes(1);
        cache.store(key.clone(), read_until(until), t0);
        assert!(matches!(
            cache.lookup(&key, later, t0),
            Lookup::Stale(_, true)
        ));
        // Too old to serve even while it is read again.
        assert!(matches!(
            cache.lookup(&key, until, t0 + fresh * STALE_FOR),
            Lookup::Missing
        ));
        for i in 0..MAX_KEPT as i64 + 5 {
            let k = Key {
                top: i,
                ..key.clone()
            };
            cache.store(k, read_until(until), t0);
        }
        assert_eq!(cache.lock().len(), MAX_KEPT);
    }
}
