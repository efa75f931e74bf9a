//! `[database]`: where rows are recorded, the pool and writer sizes, their timeouts, and what
//! happens to a request when its pending row cannot be committed.

use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::problems::Problems;

/// `[database]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawDatabase {
    pub url: String,
    pub on_unavailable: OnUnavailable,
    pub pool_size: usize,
    pub pool_wait_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub statement_timeout_ms: u64,
    pub insert_timeout_ms: u64,
    pub writer_tasks: usize,
    pub max_batch_rows: usize,
    pub finish_linger_ms: u64,
    pub run_migrations: bool,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            on_unavailable: OnUnavailable::Spool,
            pool_size: 8,
            pool_wait_timeout_ms: 2_000,
            connect_timeout_ms: 2_000,
            statement_timeout_ms: 5_000,
            insert_timeout_ms: 3_000,
            writer_tasks: 2,
            max_batch_rows: 256,
            finish_linger_ms: 5,
            run_migrations: true,
        }
    }
}

/// What to do with a request when its pending row cannot be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Answer 503 and forward nothing.
    Reject,
    /// Forward anyway; the request is counted and logged as unrecorded.
    Forward,
    /// Append the pending row to the durable journal (`[spool]`), forward, and replay the
    /// journal into PostgreSQL once it is back.
    Spool,
}

#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// tokio-postgres redacts the password in its `Debug`.
    pub pg: tokio_postgres::Config,
    pub on_unavailable: OnUnavailable,
    pub pool_size: usize,
    pub pool_wait_timeout: Duration,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
    pub insert_timeout: Duration,
    pub writer_tasks: usize,
    pub max_batch_rows: usize,
    /// How long a batch of final updates waits for an insert to share its commit.
    pub finish_linger: Duration,
    pub run_migrations: bool,
}

impl DatabaseConfig {
    /// The client-side bound on one round trip of the writer or the replayer: the server-side
    /// `statement_timeout` plus a second. A connection that passes it (a frozen server) is
    /// discarded, never reused.
    pub fn client_deadline(&self) -> Duration {
        self.statement_timeout + Duration::from_secs(1)
    }
}

/// Checks `[database]`, pushing every problem.
pub(super) fn check(d: &RawDatabase, p: &mut Problems) -> Option<DatabaseConfig> {
    p.positive("database.pool_size", d.pool_size as u64);
    p.positive("database.pool_wait_timeout_ms", d.pool_wait_timeout_ms);
    p.positive("database.connect_timeout_ms", d.connect_timeout_ms);
    p.positive("database.statement_timeout_ms", d.statement_timeout_ms);
    p.positive("database.insert_timeout_ms", d.insert_timeout_ms);
    p.positive("database.writer_tasks", d.writer_tasks as u64);
    p.positive("database.max_batch_rows", d.max_batch_rows as u64);
    if d.writer_tasks > d.pool_size {
        p.between(
            &["database.writer_tasks", "database.pool_size"],
            format!(
                "`database.writer_tasks` ({}) must not exceed `database.pool_size` ({})",
                d.writer_tasks, d.pool_size
            ),
        );
    }
    let pg = tokio_postgres::Config::from_str(&d.url)
        .map_err(|e| p.at("database.url", format!("{}: {e}", redact_url(&d.url))))
        .ok();
    Some(DatabaseConfig {
        pg: pg?,
        on_unavailable: d.on_unavailable,
        pool_size: d.pool_size,
        pool_wait_timeout: Duration::from_millis(d.pool_wait_timeout_ms),
        connect_timeout: Duration::from_millis(d.connect_timeout_ms),
        statement_timeout: Duration::from_millis(d.statement_timeout_ms),
        insert_timeout: Duration::from_millis(d.insert_timeout_ms),
        writer_tasks: d.writer_tasks,
        max_batch_rows: d.max_batch_rows,
        finish_linger: Duration::from_millis(d.finish_linger_ms),
        run_migrations: d.run_migrations,
    })
}

/// `url` with its password replaced, for printing.
pub(super) fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable url>".into(),
    }
}
