//! Configuration: `proxy.toml`, then the `config/<env>.toml` overlay, `${VAR}` references in
//! their values, then environment overrides. Each `[section]` is read into its raw form (`raw`) and checked into its typed form
//! by its own module, reporting every problem at once. Secrets (the database password, the admin
//! token) never appear in `Debug` or printed output.

mod admin;
mod capture;
mod correlation;
mod database;
mod deprecated;
mod duration;
mod interpolate;
mod log;
mod n8n;
mod problems;
mod raw;
mod recovery;
mod retention;
mod routes;
mod sanitize;
mod server;
#[cfg(test)]
mod shipped;
mod source;
mod spool;
#[cfg(test)]
mod tests;
mod upstream;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use admin::{AdminConfig, Token, ENV_ADMIN_TOKEN};
pub use capture::CaptureConfig;
pub use correlation::{CorrelationConfig, PathRule};
pub use database::{DatabaseConfig, ManagedDb, OnUnavailable};
pub use duration::Dur;
pub use log::LogConfig;
pub use n8n::{N8nConfig, N8nLookup, ENV_N8N_API_KEY};
use problems::Problems;
pub use raw::RawConfig;
pub use recovery::RecoveryConfig;
pub use retention::RetentionConfig;
pub use routes::Route;
pub use server::{default_state_dir, ServerConfig};
pub use spool::{SpoolConfig, SpoolFull};
pub use upstream::{TlsRoots, UpstreamConfig};

use crate::sanitize::Sanitizer;

/// Environment variables read by [`Config::load`].
pub const ENV_NAME: &str = "TRACE_PROXY_ENV";
/// Only this one: a bare `DATABASE_URL` is often another program's (`${DATABASE_URL}` in the
/// file opts in to it).
pub const ENV_DATABASE_URL: &str = "TRACE_PROXY_DATABASE_URL";
pub const ENV_LISTEN: &str = "TRACE_PROXY_LISTEN";
pub const ENV_SPOOL_DIR: &str = "TRACE_PROXY_SPOOL_DIR";
pub const ENV_STATE_DIR: &str = "TRACE_PROXY_STATE_DIR";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} configuration problem(s):\n  - {}", .0.len(), .0.join("\n  - "))]
    Invalid(Vec<String>),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub environment: Option<String>,
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    pub capture: CaptureConfig,
    pub upstream: UpstreamConfig,
    pub correlation: CorrelationConfig,
    pub log: LogConfig,
    /// D4 redaction rules; each route holds its own (these plus its overrides).
    pub sanitize: Arc<Sanitizer>,
    pub retention: RetentionConfig,
    /// Crash recovery (`crate::recovery`).
    pub recovery: RecoveryConfig,
    /// The durable journal used while PostgreSQL is unavailable (`crate::spool`).
    pub spool: SpoolConfig,
    /// The read-only query API (`crate::api`).
    pub admin: AdminConfig,
    /// The n8n execution lookup (`crate::n8n`).
    pub n8n: N8nConfig,
    /// Sorted longest prefix first, so the first match is the longest.
    pub routes: Vec<Route>,
    /// What is accepted but should change (deprecated keys): logged at startup, printed by
    /// `check-config`.
    pub warnings: Vec<String>,
    raw: Unprinted,
}

/// The merged file as read, kept for `check-config`; never printed by `Debug` (it holds the
/// database URL with its password).
#[derive(Clone)]
struct Unprinted(RawConfig);

impl std::fmt::Debug for Unprinted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("..")
    }
}

impl Config {
    /// Reads `path`, the overlay for `env_name` (or `TRACE_PROXY_ENV`), and the environment.
    pub fn load(path: &Path, env_name: Option<&str>) -> Result<Config, ConfigError> {
        Self::load_with(path, env_name, &|k| std::env::var(k).ok())
    }

    /// [`Config::load`] with an explicit environment lookup, so tests stay hermetic.
    pub fn load_with(
        path: &Path,
        env_name: Option<&str>,
        var: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        let set = |k: &str| var(k).filter(|v| !v.is_empty());
        let env_name = env_name.map(str::to_owned).or_else(|| set(ENV_NAME));
        let mut doc = source::read_layers(path, env_name.as_deref(), &mut p)?;
        interpolate::expand(&mut doc, var, &mut p);
        let mut raw = RawConfig::read(doc, &mut p);
        if let Some(url) = set(ENV_DATABASE_URL) {
            raw.database.url = url;
        }
        if let Some(listen) = set(ENV_LISTEN) {
            raw.server.listen = listen;
        }
        if let Some(token) = set(ENV_ADMIN_TOKEN) {
            raw.admin.token = token;
        }
        if let Some(key) = set(ENV_N8N_API_KEY) {
            raw.n8n.api_key = key;
        }
        if let Some(dir) = set(ENV_SPOOL_DIR) {
            raw.spool.dir = dir;
        }
        if let Some(dir) = set(ENV_STATE_DIR) {
            raw.server.state_dir = dir;
        }
        fill_state_dir(&mut raw, &set);
        check(raw, env_name, p)
    }

    /// Parses one TOML document with no overlay and no environment (tests, embedding): a
    /// `${VAR}` in it is unset.
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut p = Problems::default();
        let mut doc = source::parse("config", text, &mut p);
        interpolate::expand(&mut doc, &|_| None, &mut p);
        let mut raw = RawConfig::read(doc, &mut p);
        fill_state_dir(&mut raw, &|_| None);
        check(raw, None, p)
    }

    /// The effective configuration as TOML, with the database password redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut raw = self.raw.0.clone();
        raw.database.url = database::redact_url(&raw.database.url);
        if !raw.admin.token.is_empty() {
            raw.admin.token = "REDACTED".into();
        }
        if !raw.n8n.api_key.is_empty() {
            raw.n8n.api_key = "REDACTED".into();
        }
        let env = self.environment.as_deref().unwrap_or("(none)");
        match toml::to_string_pretty(&raw) {
            Ok(text) => format!("# effective configuration; environment overlay: {env}\n{text}"),
            Err(e) => format!("# cannot render config: {e}\n"),
        }
    }

    /// The route for a request path: the longest matching prefix.
    pub fn route_for(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|r| path.starts_with(&r.path_prefix))
    }
}

/// The state directory's default for who runs this, and the spool directory's default in it
/// (the one place either is defaulted), so the effective configuration shows where they are.
fn fill_state_dir(raw: &mut RawConfig, var: &dyn Fn(&str) -> Option<String>) {
    if raw.server.state_dir.is_empty() {
        raw.server.state_dir = default_state_dir(var);
    }
    if raw.spool.dir.trim().is_empty() {
        raw.spool.dir = format!("{}/spool", raw.server.state_dir.trim_end_matches('/'));
    }
}

/// Checks every section (each pushes all of its problems), then assembles the typed config.
fn check(
    raw: RawConfig,
    environment: Option<String>,
    mut p: Problems,
) -> Result<Config, ConfigError> {
    let warnings = p.take_warnings();
    let p = &mut p;
    let server = server::check(&raw.server, p);
    let state_dir = std::path::Path::new(&raw.server.state_dir);
    let database = database::check(&raw.database, state_dir, p);
    let capture = capture::check(&raw.capture, p);
    let upstream = upstream::check(&raw.upstream, p);
    let correlation = correlation::check(&raw.correlation, p);
    let log = log::check(&raw.log, p);
    let sanitize = sanitize::check(&raw.sanitize, p);
    let retention = retention::check(&raw.retention, p);
    let recovery = recovery::check(&raw.recovery, p);
    let spool = spool::check(&raw.spool, p);
    let admin = admin::check(&raw.admin, p);
    let n8n = n8n::check(&raw.n8n, p);
    let routes = routes::check(&raw.routes, sanitize.as_ref(), p);
    let config = (|| {
        Some(Config {
            environment,
            server: server?,
            database: database?,
            capture: capture?,
            upstream: upstream?,
            correlation: correlation?,
            log: log?,
            sanitize: sanitize?,
            retention: retention?,
            recovery: recovery?,
            spool: spool?,
            admin: admin?,
            n8n: n8n?,
            routes: routes?,
            warnings,
            raw: Unprinted(raw),
        })
    })();
    std::mem::take(p)
        .finish(config)
        .map_err(ConfigError::Invalid)
}
