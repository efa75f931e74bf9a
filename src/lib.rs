//! trace-proxy: a transparent logging reverse proxy between bilko-app and n8n that records every
//! attempt in PostgreSQL table `communication_traces` (DATA-002).
//!
//! [`run`] is the whole service: given a bound listener, a configuration and a shutdown signal,
//! it migrates the schema, starts the store writer and serves until shutdown.

pub mod api;
mod capture;
pub mod config;
pub mod diff;
pub mod error;
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;
mod insight;
pub mod managed_pg;
pub mod metrics;
mod n8n;
pub mod probe;
mod proxy;
pub mod record;
pub mod recovery;
pub mod retention;
mod retry;
pub mod sanitize;
mod server;
pub mod shutdown;
mod stall;
pub mod trace;

pub use record::{spool, store};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::error::Chain;
pub use config::Config;
use metrics::Metrics;
use record::{Recorder, Spooling};
use shutdown::Shutdown;
use store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] proxy::forward::ClientSetupError),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error(transparent)]
    Replay(#[from] record::replay::ReplayError),
}

/// Runs the proxy on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Arc<Config>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_with_metrics(listener, config, Arc::new(Metrics::default()), shutdown).await
}

/// [`run_with_metrics`] plus the admin listener (`api`) on `admin`, when given: `/healthz`,
/// `/readyz` and `/metrics` always, the query API once `admin.token` is set. The admin listener
/// stops accepting when `shutdown` resolves and drains alongside the proxy.
pub async fn run_with(
    listener: TcpListener,
    admin: Option<TcpListener>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // The journal first, so the admin listener never reports an empty spool that is not.
    let instance = uuid::Uuid::new_v4();
    let spooling = open_spool(&config, instance, &metrics)?;
    let stop = Arc::new(Shutdown::new(config.server.shutdown_timeout));
    metrics
        .route_requests
        .register(config.routes.iter().map(|r| r.name.as_str()));
    let pool = store::pool(&config.database)?;
    let (recorder, tasks) = Recorder::open(&config, pool, metrics.clone(), instance, spooling)?;
    if let Some(l) = admin {
        api::start(l, &config, metrics.clone(), recorder.probe(), &stop)?;
    }
    let signal = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.begin();
        }
    };
    let serving = serve_all(
        listener,
        config,
        metrics,
        instance,
        (recorder, tasks),
        &stop,
    );
    tokio::pin!(serving);
    // The signal only begins shutdown; `serve_all` then stops in order within one deadline.
    let result = tokio::select! {
        r = &mut serving => r,
        () = signal => serving.await,
    };
    // Also when serving ended on an error: the background tasks are told to stop.
    stop.begin();
    if !stop.wait_tasks().await {
        tracing::warn!("shutdown deadline passed before every background task ended; abandoned");
    }
    result
}

/// [`run`] with caller-owned metrics (tests read them).
pub async fn run_with_metrics(
    listener: TcpListener,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    run_with(listener, None, config, metrics, shutdown).await
}

/// Opens the durable journal (cutting a torn tail) when `on_unavailable = "spool"`.
fn open_spool(
    config: &Config,
    instance: uuid::Uuid,
    metrics: &Arc<Metrics>,
) -> Result<Option<Spooling>, RunError> {
    if config.database.on_unavailable != config::OnUnavailable::Spool {
        return Ok(None);
    }
    let (spool, appender, opened) = spool::Spool::open(&config.spool, instance, metrics.clone())?;
    tracing::info!(dir = %config.spool.dir.display(), records = opened.records,
        bytes = opened.bytes, torn_segments = opened.torn_segments,
        earlier_instances = opened.previous_instances.len(), "spool journal opened");
    Ok(Some((spool, appender, opened.previous_instances)))
}

/// `check-config --connect`: whether the database answers with these credentials and carries
/// the current schema, and whether the spool directory can be written; (passed, what) each.
pub async fn check_connect(config: &Config) -> Vec<(bool, String)> {
    let mut out = Vec::new();
    let db = config.database.describe();
    let latest = store::MIGRATIONS.last().map_or(0, |m| m.0);
    let answered = async {
        let pool = store::pool(&config.database)?;
        let client = pool.get().await?;
        let row = client
            .query_one(
                "SELECT (SELECT max(version) FROM trace_proxy_migrations)",
                &[],
            )
            .await;
        Ok::<_, StoreError>(row.ok().and_then(|r| r.get::<_, Option<i32>>(0)))
    };
    match tokio::time::timeout(config.database.client_deadline(), answered).await {
        Ok(Ok(Some(v))) if v >= latest => {
            out.push((
                true,
                format!("database {db}: reachable, schema at migration {v}"),
            ));
        }
        Ok(Ok(v)) => out.push((
            config.database.run_migrations,
            format!(
                "database {db}: reachable, schema at migration {} of {latest}{}",
                v.unwrap_or(0),
                match config.database.run_migrations {
                    true => "; serve applies the rest",
                    false => "; run `trace-proxy migrate` (run_migrations is off)",
                }
            ),
        )),
        Ok(Err(e)) => out.push((false, format!("database {db}: {}", error::error_chain(&e)))),
        Err(_) => out.push((false, format!("database {db}: no answer in time"))),
    }
    if config.database.on_unavailable == config::OnUnavailable::Spool {
        let dir = &config.spool.dir;
        let probe = dir.join(".trace-proxy-write-check");
        let written = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&probe, b"check"))
            .and_then(|()| std::fs::remove_file(&probe));
        out.push(match written {
            Ok(()) => (true, format!("spool directory {}: writable", dir.display())),
            Err(e) => (
                false,
                format!(
                    "spool directory {}: {e} (set spool.dir or TRACE_PROXY_SPOOL_DIR to a directory this user can write)",
                    dir.display()
                ),
            ),
        });
    }
    out
}

/// `trace-proxy spool replay`: replays the journal in `config.spool.dir` into PostgreSQL (a
/// spool left by a proxy that will not run again), resolves what its processes left
/// unresolved, and returns. Refused while a proxy holds the directory, and when the journal
/// belongs to another database unless `into_other_database`.
pub async fn replay_spool(
    config: &Config,
    into_other_database: bool,
) -> Result<record::replay::Drained, RunError> {
    let metrics = Arc::new(Metrics::default());
    let pool = store::pool(&config.database)?;
    if config.database.run_migrations {
        migrate_pool(&pool).await?;
    }
    let instance = uuid::Uuid::new_v4();
    let (spool, appender, opened) = spool::Spool::open(&config.spool, instance, metrics.clone())?;
    let mut ctx = record::replay::ReplayCtx::new(
        config,
        spool,
        pool,
        metrics,
        instance,
        opened.previous_instances,
    );
    ctx.into_other_database = into_other_database;
    let drained = record::replay::drain(ctx).await;
    appender.close(config.server.shutdown_timeout).await;
    Ok(drained?)
}

/// Migrates, starts the writer, the replayer and the background tasks, and serves until
/// `shutdown`; every row this process inserts carries `instance`.
async fn serve_all(
    listener: TcpListener,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    instance: uuid::Uuid,
    (recorder, mut tasks): (Recorder, record::Tasks),
    stop: &Shutdown,
) -> Result<(), RunError> {
    let pool = recorder.pool().clone();
    tracing::info!(database = %config.database.describe(), on_unavailable = ?config.database.on_unavailable,
        "recording to PostgreSQL");
    if config.database.run_migrations {
        // Migrate before serving when the database is there; otherwise keep trying in the
        // background while requests follow the `on_unavailable` policy.
        match migrate_pool(&pool).await {
            Ok(applied) if !applied.is_empty() => tracing::info!(?applied, "migrations applied"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %Chain(&e), "migrations not applied yet; retrying in the background");
                tokio::spawn(migrate_until_done(pool.clone()));
            }
        }
    }
    tasks.start_replay();
    let client = proxy::forward::build_client(&config.upstream)?;
    // D5: a pass now, then every `retention.interval` (one replica at a time); stops when
    // shutdown begins.
    retention::Scheduler::start(pool.clone(), config.retention.clone(), stop);
    // Registered and heartbeating; resolves the rows of dead instances every heartbeat.
    // n8n's account of failed executions, when `[n8n]` is configured.
    let lookups = n8n::Lookups::start(
        config.n8n.lookup.as_ref(),
        &config.upstream,
        pool.clone(),
        metrics.clone(),
        stop.token().clone(),
    )?;
    let recovery = recovery::Recovery::start(pool, &config.recovery, instance, stop).await;
    let app = Arc::new(proxy::App {
        config: config.clone(),
        recorder,
        client,
        metrics,
        interrupting: Default::default(),
        tunnels: tokio_util::task::TaskTracker::new(),
        stop: stop.token().clone(),
        lookups,
    });
    tracing::info!(listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        routes = config.routes.len(), "trace-proxy serving");
    server::serve(listener, app, stop).await;
    // Every stage below gets what is left of the one shutdown deadline.
    let drained = tasks.close(stop).await;
    // Deregistered only when every row is final; otherwise replicas resolve what is left.
    recovery.stop(stop, drained).await;
    Ok(())
}

/// Applies migrations; while the database is unreachable, retries in the background so the
/// proxy still serves under its `on_unavailable` policy.
async fn migrate_until_done(pool: deadpool_postgres::Pool) {
    let mut delay = Duration::from_millis(200);
    loop {
        match migrate_pool(&pool).await {
            Ok(applied) => {
                if !applied.is_empty() {
                    tracing::info!(?applied, "migrations applied");
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %Chain(&e), retry_in_ms = delay.as_millis() as u64, "migrations not applied yet");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Applies pending migrations over a pooled connection; returns the versions applied.
pub async fn migrate_pool(pool: &deadpool_postgres::Pool) -> Result<Vec<i32>, StoreError> {
    let mut client = pool.get().await?;
    store::migrate(&mut client).await
}
