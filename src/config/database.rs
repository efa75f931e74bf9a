//! `[database]`: where rows are recorded, the pool and writer sizes, their timeouts, and what
//! happens to a request when its pending row cannot be committed.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::problems::Problems;

/// `[database]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RawDatabase {
    /// "" = a managed private PostgreSQL in `server.state_dir` ([`ManagedDb`]).
    pub url: String,
    /// Where the managed PostgreSQL's `initdb`, `pg_ctl` and `postgres` are; "" = searched.
    pub postgres_bin_dir: String,
    pub on_unavailable: OnUnavailable,
    pub pool_size: usize,
    pub pool_wait_timeout: Dur,
    pub connect_timeout: Dur,
    pub statement_timeout: Dur,
    pub insert_timeout: Dur,
    pub writer_tasks: usize,
    pub max_batch_rows: usize,
    pub finish_linger: Dur,
    pub run_migrations: bool,
}

impl Default for RawDatabase {
    fn default() -> Self {
        Self {
            url: String::new(),
            postgres_bin_dir: String::new(),
            on_unavailable: OnUnavailable::Spool,
            pool_size: 8,
            pool_wait_timeout: Dur::secs(2),
            connect_timeout: Dur::secs(2),
            statement_timeout: Dur::secs(5),
            insert_timeout: Dur::secs(3),
            writer_tasks: 2,
            max_batch_rows: 256,
            finish_linger: Dur::ms(5),
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
    /// Set when no `url` is configured: the private server this instance runs itself, which
    /// `pg` then points at (its Unix socket).
    pub managed: Option<ManagedDb>,
}

/// A private PostgreSQL cluster of one instance, run by it (`crate::managed_pg`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedDb {
    /// `postgres` in the state directory: the cluster in `data/`, the Unix socket beside it.
    pub dir: PathBuf,
    /// `database.postgres_bin_dir`, when set.
    pub bin_dir: Option<PathBuf>,
}

impl ManagedDb {
    /// The superuser `initdb` creates; the proxy connects as it, over the private socket.
    pub const USER: &'static str = "trace_proxy";
    /// The database rows go to: the cluster is the instance's own, so its default database.
    pub const DATABASE: &'static str = "postgres";
    /// The socket's port number (part of its file name only: there is no TCP listener).
    pub const PORT: u16 = 5432;

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// The connection settings: the socket directory, the superuser, the database.
    fn pg_config(&self) -> tokio_postgres::Config {
        let mut pg = tokio_postgres::Config::new();
        pg.host_path(&self.dir)
            .port(Self::PORT)
            .user(Self::USER)
            .dbname(Self::DATABASE);
        pg
    }
}

/// A Unix socket path is at most 107 bytes (`sun_path`).
const MAX_SOCKET_PATH: usize = 107;

impl DatabaseConfig {
    /// The database, for log lines: `postgres://user@host:port/dbname`, never the password.
    pub fn describe(&self) -> String {
        if let Some(m) = &self.managed {
            return format!("the managed PostgreSQL in {}", m.dir.display());
        }
        let host = match self.pg.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
            Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.pg.get_ports().first().copied().unwrap_or(5432);
        format!(
            "postgres://{}@{host}:{port}/{}",
            self.pg.get_user().unwrap_or(""),
            self.pg.get_dbname().unwrap_or("")
        )
    }
}

impl DatabaseConfig {
    /// The client-side bound on one round trip of the writer or the replayer: the server-side
    /// `statement_timeout` plus a second. A connection that passes it (a frozen server) is
    /// discarded, never reused.
    pub fn client_deadline(&self) -> Duration {
        self.statement_timeout + Duration::from_secs(1)
    }
}

/// Checks `[database]`, pushing every problem; `state_dir` is `server.state_dir`.
pub(super) fn check(d: &RawDatabase, state_dir: &Path, p: &mut Problems) -> Option<DatabaseConfig> {
    p.positive("database.pool_size", d.pool_size as u64);
    p.positive("database.pool_wait_timeout", d.pool_wait_timeout.millis());
    p.positive("database.connect_timeout", d.connect_timeout.millis());
    p.positive("database.statement_timeout", d.statement_timeout.millis());
    p.positive("database.insert_timeout", d.insert_timeout.millis());
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
    let managed = d.url.trim().is_empty().then(|| ManagedDb {
        dir: state_dir.join("postgres"),
        bin_dir: (!d.postgres_bin_dir.is_empty()).then(|| PathBuf::from(&d.postgres_bin_dir)),
    });
    let pg = match &managed {
        Some(m) => {
            let socket = m.dir.join(format!(".s.PGSQL.{}", ManagedDb::PORT));
            let len = socket.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                p.at(
                    "server.state_dir",
                    format!("the managed PostgreSQL's socket {} would be {len} bytes long, over the {MAX_SOCKET_PATH} a Unix socket path may have: choose a shorter state_dir (or set database.url)", socket.display()),
                );
            }
            Some(m.pg_config())
        }
        None => tokio_postgres::Config::from_str(&d.url)
            .map_err(|e| p.at("database.url", format!("{}: {e}", redact_url(&d.url))))
            .ok(),
    };
    Some(DatabaseConfig {
        managed,
        pg: pg?,
        on_unavailable: d.on_unavailable,
        pool_size: d.pool_size,
        pool_wait_timeout: d.pool_wait_timeout.0,
        connect_timeout: d.connect_timeout.0,
        statement_timeout: d.statement_timeout.0,
        insert_timeout: d.insert_timeout.0,
        writer_tasks: d.writer_tasks,
        max_batch_rows: d.max_batch_rows,
        finish_linger: d.finish_linger.0,
        run_migrations: d.run_migrations,
    })
}

/// `url` with its password replaced, for printing.
pub(super) fn redact_url(url: &str) -> String {
    if url.trim().is_empty() {
        return String::new();
    }
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable url>".into(),
    }
}
