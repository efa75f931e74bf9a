//! Configuration: `proxy.toml`, then the `config/<env>.toml` overlay, then environment
//! overrides; parsed into `RawConfig`, then validated into the typed `Config`, reporting every
//! problem at once. Secrets (the database password) never appear in `Debug` or printed output.

mod admin;
mod raw;
mod recovery;
mod spool;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

pub use admin::{AdminConfig, Token, ENV_ADMIN_TOKEN};
use http::header::HeaderName;
use http::Uri;
pub use raw::RawConfig;
pub use recovery::RecoveryConfig;
pub use spool::{SpoolConfig, SpoolFull, DEFAULT_SPOOL_DIR};

use crate::sanitize::{PatternSpec, RouteRules, RuleSpec, Sanitizer};

/// Environment variables read by [`Config::load`].
pub const ENV_NAME: &str = "TRACE_PROXY_ENV";
pub const ENV_DATABASE_URL: &str = "TRACE_PROXY_DATABASE_URL";
pub const ENV_DATABASE_URL_FALLBACK: &str = "DATABASE_URL";
pub const ENV_LISTEN: &str = "TRACE_PROXY_LISTEN";
pub const ENV_SPOOL_DIR: &str = "TRACE_PROXY_SPOOL_DIR";

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

/// What to do with a request when its pending row cannot be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// Sorted longest prefix first, so the first match is the longest.
    pub routes: Vec<Route>,
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

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub request_body_timeout: Duration,
    /// `None` = unlimited.
    pub max_request_body_bytes: Option<u64>,
    pub shutdown_timeout: Duration,
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

#[derive(Debug, Clone)]
pub struct CaptureConfig {
    pub max_payload_bytes: usize,
    /// `None` = never mark rows `in_progress`.
    pub in_progress_after: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsRoots {
    Webpki,
    Native,
    Both,
    /// Only `ca_file`.
    None,
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// `None` = no idle limit while a response body streams.
    pub idle_timeout: Option<Duration>,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
    pub tls_roots: TlsRoots,
    pub ca_file: Option<PathBuf>,
    pub preserve_host: bool,
}

#[derive(Debug, Clone)]
pub struct CorrelationConfig {
    pub trace_id_header: HeaderName,
    pub execution_id_header: HeaderName,
    pub workflow_id_header: HeaderName,
    pub user_id_header: HeaderName,
    pub action_header: HeaderName,
    pub attempt_header: HeaderName,
    pub n8n_execution_id_header: HeaderName,
    pub default_user_id: String,
    pub default_workflow_id: String,
    pub workflow_path_rules: Vec<PathRule>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub prefix: String,
    /// true: the rest of the path after the prefix; false: the next segment only.
    pub take_rest: bool,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub level: String,
    pub json: bool,
}

/// D5 retention (`crate::retention`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Detail rows older than this many days are archived and deleted (1..=36500).
    pub detail_days: u32,
    /// Summaries older than this many days are deleted; `None` = kept forever.
    pub summary_days: Option<u32>,
    /// Rows per archive transaction (1..=100000).
    pub batch_size: u32,
    /// How often a running proxy runs a pass; `None` = never (only `trace-proxy retention run`).
    pub interval: Option<Duration>,
}

/// Longest retention accepted, in days (a century).
const MAX_RETENTION_DAYS: u32 = 36_500;
/// Largest archive batch accepted: bounded transactions are the point.
const MAX_RETENTION_BATCH: u32 = 100_000;
/// Longest scheduler interval accepted (a year).
const MAX_RETENTION_INTERVAL_SECS: u64 = 366 * 24 * 3600;

#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub path_prefix: String,
    /// Scheme and authority of the upstream.
    pub upstream_scheme: http::uri::Scheme,
    pub upstream_authority: http::uri::Authority,
    /// Path the upstream is mounted under, without a trailing slash ("" for the root).
    pub upstream_base_path: String,
    pub source_service: String,
    pub destination_service: String,
    pub action: Option<String>,
    pub require_user_id: bool,
    pub strip_prefix: bool,
    /// `[sanitize]` plus this route's `[routes.sanitize]`, compiled.
    pub sanitizer: Arc<Sanitizer>,
    pub retry: crate::retry::RetryPolicy,
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
        let mut problems = Vec::new();
        let mut doc = read_toml(path, &mut problems)?;
        let env_name = env_name
            .map(str::to_owned)
            .or_else(|| var(ENV_NAME).filter(|s| !s.is_empty()));
        if let Some(env) = &env_name {
            if env.is_empty()
                || !env
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                problems.push(format!(
                    "environment name {env:?} must be letters, digits, '-' or '_'"
                ));
            } else {
                let dir = path.parent().unwrap_or_else(|| Path::new("."));
                let overlay_path = dir.join("config").join(format!("{env}.toml"));
                let overlay = read_toml(&overlay_path, &mut problems)?;
                merge(&mut doc, overlay);
            }
        }
        let mut raw = parse_raw(doc, &mut problems);
        if let Some(url) = var(ENV_DATABASE_URL)
            .filter(|s| !s.is_empty())
            .or_else(|| var(ENV_DATABASE_URL_FALLBACK).filter(|s| !s.is_empty()))
        {
            raw.database.url = url;
        }
        if let Some(listen) = var(ENV_LISTEN).filter(|s| !s.is_empty()) {
            raw.server.listen = listen;
        }
        if let Some(token) = var(ENV_ADMIN_TOKEN).filter(|s| !s.is_empty()) {
            raw.admin.token = token;
        }
        if let Some(dir) = var(ENV_SPOOL_DIR).filter(|s| !s.is_empty()) {
            raw.spool.dir = dir;
        }
        validate(raw, env_name, problems)
    }

    /// Parses one TOML document with no overlay and no environment (tests, embedding).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let doc = match text.parse::<toml::Table>() {
            Ok(t) => t,
            Err(e) => return Err(ConfigError::Invalid(vec![format!("TOML syntax: {e}")])),
        };
        let raw = parse_raw(doc, &mut problems);
        validate(raw, None, problems)
    }

    /// The effective configuration as TOML, with the database password redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut raw = self.raw.0.clone();
        raw.database.url = redact_url(&raw.database.url);
        if !raw.admin.token.is_empty() {
            raw.admin.token = "REDACTED".into();
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

fn read_toml(path: &Path, problems: &mut Vec<String>) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    match text.parse::<toml::Table>() {
        Ok(t) => Ok(t),
        Err(e) => {
            problems.push(format!("{}: TOML syntax: {e}", path.display()));
            Ok(toml::Table::new())
        }
    }
}

/// Overlay tables merge key by key; any other value (arrays included) replaces.
fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (key, value) in overlay {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(key, v);
            }
        }
    }
}

fn parse_raw(doc: toml::Table, problems: &mut Vec<String>) -> RawConfig {
    let mut unknown = Vec::new();
    let result: Result<RawConfig, _> =
        serde_ignored::deserialize(toml::Value::Table(doc), |path| {
            unknown.push(path.to_string())
        });
    for key in unknown {
        problems.push(format!("unknown key `{key}`"));
    }
    match result {
        Ok(raw) => raw,
        Err(e) => {
            problems.push(format!("{e}"));
            RawConfig::default()
        }
    }
}

fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("REDACTED"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "<unparseable url>".into(),
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn validate(
    raw: RawConfig,
    environment: Option<String>,
    mut problems: Vec<String>,
) -> Result<Config, ConfigError> {
    let p = &mut problems;
    let mut positive = |name: &str, v: u64| {
        if v == 0 {
            p.push(format!("`{name}` must be greater than 0"));
        }
    };
    let s = &raw.server;
    positive("server.max_connections", s.max_connections as u64);
    positive("server.header_read_timeout_ms", s.header_read_timeout_ms);
    positive("server.request_body_timeout_ms", s.request_body_timeout_ms);
    let d = &raw.database;
    positive("database.pool_size", d.pool_size as u64);
    positive("database.pool_wait_timeout_ms", d.pool_wait_timeout_ms);
    positive("database.connect_timeout_ms", d.connect_timeout_ms);
    positive("database.statement_timeout_ms", d.statement_timeout_ms);
    positive("database.insert_timeout_ms", d.insert_timeout_ms);
    positive("database.writer_tasks", d.writer_tasks as u64);
    positive("database.max_batch_rows", d.max_batch_rows as u64);
    positive(
        "capture.max_payload_bytes",
        raw.capture.max_payload_bytes as u64,
    );
    let u = &raw.upstream;
    positive("upstream.connect_timeout_ms", u.connect_timeout_ms);
    positive("upstream.response_timeout_ms", u.response_timeout_ms);

    let listen = SocketAddr::from_str(&s.listen)
        .map_err(|e| problems.push(format!("`server.listen` {:?}: {e}", s.listen)))
        .ok();
    if d.writer_tasks > d.pool_size {
        problems.push(format!(
            "`database.writer_tasks` ({}) must not exceed `database.pool_size` ({})",
            d.writer_tasks, d.pool_size
        ));
    }
    let pg = tokio_postgres::Config::from_str(&d.url)
        .map_err(|e| problems.push(format!("`database.url` {}: {e}", redact_url(&d.url))))
        .ok();
    let on_unavailable = match d.on_unavailable.as_str() {
        "reject" => Some(OnUnavailable::Reject),
        "forward" => Some(OnUnavailable::Forward),
        "spool" => Some(OnUnavailable::Spool),
        other => {
            problems.push(format!(
                "`database.on_unavailable` {other:?}: expected \"spool\", \"reject\" or \"forward\""
            ));
            None
        }
    };
    let tls_roots = match u.tls_roots.as_str() {
        "webpki" => Some(TlsRoots::Webpki),
        "native" => Some(TlsRoots::Native),
        "both" => Some(TlsRoots::Both),
        "none" => Some(TlsRoots::None),
        other => {
            problems.push(format!(
                "`upstream.tls_roots` {other:?}: expected \"webpki\", \"native\", \"both\" or \"none\""
            ));
            None
        }
    };
    let ca_file = (!u.ca_file.is_empty()).then(|| PathBuf::from(&u.ca_file));
    if let Some(f) = &ca_file {
        if !f.is_file() {
            problems.push(format!("`upstream.ca_file` {}: no such file", f.display()));
        }
    }
    if tls_roots == Some(TlsRoots::None) && ca_file.is_none() {
        problems.push("`upstream.tls_roots = \"none\"` needs `upstream.ca_file`".into());
    }
    let json = match raw.log.format.as_str() {
        "text" => false,
        "json" => true,
        other => {
            problems.push(format!(
                "`log.format` {other:?}: expected \"text\" or \"json\""
            ));
            false
        }
    };
    if tracing_subscriber::EnvFilter::try_new(&raw.log.level).is_err() {
        problems.push(format!(
            "`log.level` {:?} is not a valid filter",
            raw.log.level
        ));
    }

    let c = &raw.correlation;
    let mut header = |key: &str, v: &str| match HeaderName::from_str(v) {
        Ok(h) => Some(h),
        Err(_) => {
            problems.push(format!(
                "`correlation.{key}` {v:?} is not a valid header name"
            ));
            None
        }
    };
    let trace_id_header = header("trace_id_header", &c.trace_id_header);
    let execution_id_header = header("execution_id_header", &c.execution_id_header);
    let workflow_id_header = header("workflow_id_header", &c.workflow_id_header);
    let user_id_header = header("user_id_header", &c.user_id_header);
    let action_header = header("action_header", &c.action_header);
    let attempt_header = header("attempt_header", &c.attempt_header);
    let n8n_execution_id_header = header("n8n_execution_id_header", &c.n8n_execution_id_header);
    for (key, v) in [
        ("default_user_id", &c.default_user_id),
        ("default_workflow_id", &c.default_workflow_id),
    ] {
        if v.is_empty() {
            problems.push(format!("`correlation.{key}` must not be empty"));
        }
    }
    let mut rules = Vec::new();
    for (i, r) in c.workflow_path_rules.iter().enumerate() {
        if !r.prefix.starts_with('/') || !r.prefix.ends_with('/') {
            problems.push(format!(
                "`correlation.workflow_path_rules[{i}].prefix` {:?} must start and end with '/'",
                r.prefix
            ));
        }
        let take_rest = match r.take.as_str() {
            "rest" => true,
            "segment" => false,
            other => {
                problems.push(format!(
                    "`correlation.workflow_path_rules[{i}].take` {other:?}: expected \"segment\" or \"rest\""
                ));
                false
            }
        };
        rules.push(PathRule {
            prefix: r.prefix.clone(),
            take_rest,
        });
    }

    let retention = validate_retention(&raw.retention, &mut problems);
    let recovery = recovery::validate_recovery(&raw.recovery, &mut problems);
    let spool = spool::validate_spool(&raw.spool, &mut problems);
    let admin = admin::validate_admin(&raw.admin, &mut problems);
    let sanitize = validate_sanitize(&raw.sanitize, &mut problems);
    let routes = validate_routes(&raw, sanitize.as_ref(), &mut problems);

    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems));
    }
    // Every `None` above pushed a problem, so these are all present here.
    let missing = || ConfigError::Invalid(vec!["internal: a validated value is missing".into()]);
    let s = &raw.server;
    let d = &raw.database;
    let u = &raw.upstream;
    let c = &raw.correlation;
    Ok(Config {
        environment,
        server: ServerConfig {
            listen: listen.ok_or_else(missing)?,
            max_connections: s.max_connections,
            header_read_timeout: ms(s.header_read_timeout_ms),
            request_body_timeout: ms(s.request_body_timeout_ms),
            max_request_body_bytes: (s.max_request_body_bytes > 0)
                .then_some(s.max_request_body_bytes),
            shutdown_timeout: ms(s.shutdown_timeout_ms),
        },
        database: DatabaseConfig {
            pg: pg.ok_or_else(missing)?,
            on_unavailable: on_unavailable.ok_or_else(missing)?,
            pool_size: d.pool_size,
            pool_wait_timeout: ms(d.pool_wait_timeout_ms),
            connect_timeout: ms(d.connect_timeout_ms),
            statement_timeout: ms(d.statement_timeout_ms),
            insert_timeout: ms(d.insert_timeout_ms),
            writer_tasks: d.writer_tasks,
            max_batch_rows: d.max_batch_rows,
            finish_linger: ms(d.finish_linger_ms),
            run_migrations: d.run_migrations,
        },
        capture: CaptureConfig {
            max_payload_bytes: raw.capture.max_payload_bytes,
            in_progress_after: (raw.capture.in_progress_after_ms > 0)
                .then(|| ms(raw.capture.in_progress_after_ms)),
        },
        upstream: UpstreamConfig {
            connect_timeout: ms(u.connect_timeout_ms),
            response_timeout: ms(u.response_timeout_ms),
            idle_timeout: (u.idle_timeout_ms > 0).then(|| ms(u.idle_timeout_ms)),
            pool_idle_timeout: ms(u.pool_idle_timeout_ms),
            pool_max_idle_per_host: u.pool_max_idle_per_host,
            tls_roots: tls_roots.ok_or_else(missing)?,
            ca_file,
            preserve_host: u.preserve_host,
        },
        correlation: CorrelationConfig {
            trace_id_header: trace_id_header.ok_or_else(missing)?,
            execution_id_header: execution_id_header.ok_or_else(missing)?,
            workflow_id_header: workflow_id_header.ok_or_else(missing)?,
            user_id_header: user_id_header.ok_or_else(missing)?,
            action_header: action_header.ok_or_else(missing)?,
            attempt_header: attempt_header.ok_or_else(missing)?,
            n8n_execution_id_header: n8n_execution_id_header.ok_or_else(missing)?,
            default_user_id: c.default_user_id.clone(),
            default_workflow_id: c.default_workflow_id.clone(),
            workflow_path_rules: rules,
        },
        log: LogConfig {
            level: raw.log.level.clone(),
            json,
        },
        sanitize: sanitize.ok_or_else(missing)?,
        retention,
        recovery,
        spool,
        admin,
        routes,
        raw: Unprinted(raw),
    })
}

fn validate_retention(r: &raw::RawRetention, problems: &mut Vec<String>) -> RetentionConfig {
    if !(1..=MAX_RETENTION_DAYS).contains(&r.detail_days) {
        problems.push(format!(
            "`retention.detail_days` ({}) must be between 1 and {MAX_RETENTION_DAYS} (to stop the proxy running retention, set `retention.interval_secs = 0`)",
            r.detail_days
        ));
    }
    if r.summary_days != 0 && !(r.detail_days..=MAX_RETENTION_DAYS).contains(&r.summary_days) {
        problems.push(format!(
            "`retention.summary_days` ({}) must be 0 (keep forever) or between `retention.detail_days` ({}) and {MAX_RETENTION_DAYS}",
            r.summary_days, r.detail_days
        ));
    }
    if !(1..=MAX_RETENTION_BATCH).contains(&r.batch_size) {
        problems.push(format!(
            "`retention.batch_size` ({}) must be between 1 and {MAX_RETENTION_BATCH}",
            r.batch_size
        ));
    }
    if r.interval_secs > MAX_RETENTION_INTERVAL_SECS {
        problems.push(format!(
            "`retention.interval_secs` ({}) must be at most {MAX_RETENTION_INTERVAL_SECS} (a year); 0 = never",
            r.interval_secs
        ));
    }
    RetentionConfig {
        detail_days: r.detail_days,
        summary_days: (r.summary_days > 0).then_some(r.summary_days),
        batch_size: r.batch_size,
        interval: (r.interval_secs > 0).then(|| Duration::from_secs(r.interval_secs)),
    }
}

/// `[sanitize]` compiled; `None` after reporting its problems.
fn validate_sanitize(raw: &raw::RawSanitize, problems: &mut Vec<String>) -> Option<Arc<Sanitizer>> {
    let spec = RuleSpec {
        replacement: raw.replacement.clone(),
        add_keys: raw.add_keys.clone(),
        remove_keys: raw.remove_keys.clone(),
        allow_number_keys: raw.allow_number_keys.clone(),
        add_patterns: patterns(&raw.add_patterns),
        remove_patterns: raw.remove_patterns.clone(),
        max_decoded_bytes: raw.max_decoded_bytes,
    };
    Sanitizer::try_new(&spec)
        .map(Arc::new)
        .map_err(|e| problems.extend(e))
        .ok()
}

/// A route's rules: the global ones, shared, unless `[routes.sanitize]` changes them.
fn route_sanitizer(
    global: Option<&Arc<Sanitizer>>,
    raw: &raw::RawRouteSanitize,
    at: &str,
    problems: &mut Vec<String>,
) -> Option<Arc<Sanitizer>> {
    let global = global?;
    let overrides = RouteRules {
        replacement: raw.replacement.clone(),
        add_keys: raw.add_keys.clone(),
        remove_keys: raw.remove_keys.clone(),
        add_patterns: patterns(&raw.add_patterns),
        remove_patterns: raw.remove_patterns.clone(),
    };
    if overrides.is_empty() {
        return Some(global.clone());
    }
    match global.for_route(&overrides) {
        Ok(s) => Some(Arc::new(s)),
        Err(e) => {
            let route_key = |p: String| p.replacen("`sanitize.", "`routes.sanitize.", 1);
            problems.extend(e.into_iter().map(|p| format!("{at}: {}", route_key(p))));
            None
        }
    }
}

fn patterns(raw: &[raw::RawPattern]) -> Vec<PatternSpec> {
    raw.iter()
        .map(|p| PatternSpec {
            name: p.name.clone(),
            regex: p.regex.clone(),
        })
        .collect()
}

fn validate_routes(
    raw: &RawConfig,
    sanitize: Option<&Arc<Sanitizer>>,
    problems: &mut Vec<String>,
) -> Vec<Route> {
    if raw.routes.is_empty() {
        problems.push("at least one `[[routes]]` entry is required".into());
    }
    let mut routes: Vec<Route> = Vec::new();
    for (i, r) in raw.routes.iter().enumerate() {
        let at = format!("routes[{i}] ({:?})", r.name);
        if r.name.is_empty() {
            problems.push(format!("{at}: `name` must not be empty"));
        }
        if raw.routes[..i].iter().any(|o| o.name == r.name) {
            problems.push(format!("{at}: duplicate route name"));
        }
        if !r.path_prefix.starts_with('/') {
            problems.push(format!(
                "{at}: `path_prefix` {:?} must start with '/'",
                r.path_prefix
            ));
        }
        if raw.routes[..i]
            .iter()
            .any(|o| o.path_prefix == r.path_prefix)
        {
            problems.push(format!("{at}: duplicate `path_prefix` {:?}", r.path_prefix));
        }
        for (key, v) in [
            ("source_service", &r.source_service),
            ("destination_service", &r.destination_service),
        ] {
            if v.is_empty() {
                problems.push(format!("{at}: `{key}` must not be empty"));
            }
        }
        let uri = match Uri::from_str(&r.upstream) {
            Ok(u) => u,
            Err(e) => {
                problems.push(format!("{at}: `upstream` {:?}: {e}", r.upstream));
                continue;
            }
        };
        let (Some(scheme), Some(authority)) = (uri.scheme().cloned(), uri.authority().cloned())
        else {
            problems.push(format!(
                "{at}: `upstream` {:?} must be an absolute http:// or https:// URL",
                r.upstream
            ));
            continue;
        };
        if scheme != http::uri::Scheme::HTTP && scheme != http::uri::Scheme::HTTPS {
            problems.push(format!(
                "{at}: `upstream` scheme {scheme} is not http or https"
            ));
            continue;
        }
        if uri.query().is_some() || authority.as_str().contains('@') {
            problems.push(format!(
                "{at}: `upstream` {:?} must not carry a query or user info",
                r.upstream
            ));
            continue;
        }
        let retry = match crate::retry::RetryPolicy::try_new(
            r.retry.max_attempts,
            r.retry.retry_on_status.clone(),
            r.retry.retry_non_idempotent,
            r.retry.backoff_initial_ms,
            r.retry.backoff_max_ms,
        ) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("{at}: `retry`: {e}"));
                continue;
            }
        };
        let Some(sanitizer) = route_sanitizer(sanitize, &r.sanitize, &at, problems) else {
            continue;
        };
        routes.push(Route {
            name: r.name.clone(),
            path_prefix: r.path_prefix.clone(),
            upstream_scheme: scheme,
            upstream_authority: authority,
            upstream_base_path: uri.path().trim_end_matches('/').to_owned(),
            source_service: r.source_service.clone(),
            destination_service: r.destination_service.clone(),
            action: r.action.clone().filter(|a| !a.is_empty()),
            require_user_id: r.require_user_id,
            strip_prefix: r.strip_prefix,
            sanitizer,
            retry,
        });
    }
    routes.sort_by_key(|r| std::cmp::Reverse(r.path_prefix.len()));
    routes
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
        [[routes]]
        name = "n8n"
        upstream = "http://127.0.0.1:5678"
        source_service = "bilko-app"
        destination_service = "n8n"
    "#;

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = Config::from_toml_str(MINIMAL).expect("valid");
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.database.on_unavailable, OnUnavailable::Spool);
        assert_eq!(c.capture.max_payload_bytes, 65_536);
        assert_eq!(c.routes[0].path_prefix, "/");
        assert_eq!(c.correlation.default_user_id, "anonymous");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
            bogus = 1
            [server]
            listen = "not an address"
            [database]
            on_unavailable = "maybe"
            pool_size = 0
            [capture]
            max_payload_bytes = 0
            [correlation]
            user_id_header = "bad header"
            [[routes]]
            name = "a"
            upstream = "ftp://x"
            source_service = ""
            destination_service = "n8n"
        "#;
        let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(text) else {
            panic!("expected invalid config");
        };
        let all = problems.join("\n");
        for needle in [
            "unknown key `bogus`",
            "server.listen",
            "on_unavailable",
            "database.pool_size",
            "capture.max_payload_bytes",
            "user_id_header",
            "scheme ftp",
            "source_service",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn sanitize_rules_global_and_per_route() {
        let text = format!(
            r#"
            [sanitize]
            replacement = "<secret>"
            add_keys = ["ssn"]
            remove_keys = ["pin"]
            [[sanitize.add_patterns]]
            name = "order_ref"
            regex = "ORD-[0-9]{{6}}"
            {MINIMAL}
            [routes.sanitize]
            add_keys = ["orderNote"]
            remove_patterns = ["order_ref"]
            [[routes]]
            name = "plain"
            path_prefix = "/plain/"
            upstream = "http://127.0.0.1:5678"
            source_service = "a"
            destination_service = "b"
            "#
        );
        let c = Config::from_toml_str(&text).expect("valid");
        assert_eq!(c.sanitize.replacement(), "<secret>");
        let n8n = c.routes.iter().find(|r| r.name == "n8n").expect("route");
        let plain = c.routes.iter().find(|r| r.name == "plain").expect("route");
        assert!(n8n.sanitizer.is_secret_key("order_note") && n8n.sanitizer.is_secret_key("SSN"));
        assert!(
            !plain.sanitizer.is_secret_key("orderNote") && !plain.sanitizer.is_secret_key("pin")
        );
        assert!(
            Arc::ptr_eq(&plain.sanitizer, &c.sanitize),
            "no overrides: shared"
        );
        assert!(c.to_redacted_toml().contains("order_ref"));

        let bad = format!(
            "[sanitize]\nreplacement = \"\"\nremove_patterns = [\"nope\"]\n{MINIMAL}\n[routes.sanitize]\nadd_keys = [\"*\"]\n"
        );
        let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(&bad) else {
            panic!("expected invalid config");
        };
        let all = problems.join("\n");
        assert!(all.contains("`sanitize.replacement`"), "{all}");
        assert!(all.contains("`sanitize.remove_patterns`"), "{all}");
        let bad_route = format!("{MINIMAL}\n[routes.sanitize]\nadd_keys = [\"*\"]\nbogus = 1\n");
        let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(&bad_route) else {
            panic!("expected invalid config");
        };
        let all = problems.join("\n");
        assert!(
            all.contains("routes[0] (\"n8n\"): `routes.sanitize.add_keys`"),
            "{all}"
        );
        assert!(
            all.contains("unknown key `routes.0.sanitize.bogus`"),
            "{all}"
        );
    }

    #[test]
    fn longest_prefix_wins() {
        let text = format!(
            "{MINIMAL}\n[[routes]]\nname = \"cb\"\npath_prefix = \"/callbacks/\"\nupstream = \"http://127.0.0.1:5000/api\"\nsource_service = \"n8n\"\ndestination_service = \"bilko-app\"\n"
        );
        let c = Config::from_toml_str(&text).expect("valid");
        assert_eq!(
            c.route_for("/callbacks/x").map(|r| r.name.as_str()),
            Some("cb")
        );
        assert_eq!(
            c.route_for("/webhook/x").map(|r| r.name.as_str()),
            Some("n8n")
        );
        assert_eq!(
            c.route_for("/callbacks/x")
                .map(|r| r.upstream_base_path.as_str()),
            Some("/api")
        );
    }

    #[test]
    fn retention_defaults_overlay_and_validation() {
        let c = Config::from_toml_str(MINIMAL).expect("valid");
        assert_eq!(
            c.retention,
            RetentionConfig {
                detail_days: 30,
                summary_days: None,
                batch_size: 5_000,
                interval: Some(Duration::from_secs(3_600)),
            }
        );
        assert!(c.to_redacted_toml().contains("[retention]"));

        // Per environment, through the overlay.
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("config")).expect("mkdir");
        let main = dir.path().join("proxy.toml");
        std::fs::write(&main, MINIMAL).expect("write");
        std::fs::write(
            dir.path().join("config/staging.toml"),
            "[retention]\ndetail_days = 7\nsummary_days = 90\ninterval_secs = 0\n",
        )
        .expect("write");
        let c = Config::load_with(&main, Some("staging"), &|_| None).expect("valid");
        assert_eq!(c.retention.detail_days, 7);
        assert_eq!(c.retention.summary_days, Some(90));
        assert_eq!(c.retention.batch_size, 5_000);
        assert_eq!(c.retention.interval, None);

        let text = format!(
            "{MINIMAL}\n[retention]\ndetail_days = 0\nsummary_days = 50000\nbatch_size = 0\ninterval_secs = 99999999999\n"
        );
        let Err(ConfigError::Invalid(problems)) = Config::from_toml_str(&text) else {
            panic!("expected invalid retention config");
        };
        let all = problems.join("\n");
        for needle in [
            "retention.detail_days",
            "retention.summary_days",
            "retention.batch_size",
            "retention.interval_secs",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // summary_days shorter than detail_days would delete summaries of rows still in detail.
        let text = format!("{MINIMAL}\n[retention]\ndetail_days = 30\nsummary_days = 29\n");
        assert!(Config::from_toml_str(&text).is_err());
        let text = format!("{MINIMAL}\n[retention]\ndetail_days = 30\nsummary_days = 30\n");
        assert!(Config::from_toml_str(&text).is_ok());
    }

    #[test]
    fn overlay_then_environment_overrides() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(dir.path().join("config")).expect("mkdir");
        let main = dir.path().join("proxy.toml");
        std::fs::write(
            &main,
            format!("[server]\nlisten = \"127.0.0.1:1\"\n{MINIMAL}"),
        )
        .expect("write");
        std::fs::write(
            dir.path().join("config/test.toml"),
            "[server]\nlisten = \"127.0.0.1:2\"\n[capture]\nmax_payload_bytes = 10\n",
        )
        .expect("write");
        let vars = |k: &str| match k {
            "TRACE_PROXY_ENV" => Some("test".to_owned()),
            "DATABASE_URL" => Some("postgres://u:hunter2@db:5432/x".to_owned()),
            _ => None,
        };
        let c = Config::load_with(&main, None, &vars).expect("valid");
        assert_eq!(c.environment.as_deref(), Some("test"));
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:2");
        assert_eq!(c.capture.max_payload_bytes, 10);
        assert_eq!(c.database.pg.get_dbname(), Some("x"));
        let printed = c.to_redacted_toml();
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!format!("{c:?}").contains("hunter2"));
        let vars2 = |k: &str| match k {
            "TRACE_PROXY_LISTEN" => Some("127.0.0.1:3".to_owned()),
            "TRACE_PROXY_SPOOL_DIR" => Some("/data/spool".to_owned()),
            "TRACE_PROXY_DATABASE_URL" => Some("postgres://a@h/primary".to_owned()),
            "DATABASE_URL" => Some("postgres://a@h/fallback".to_owned()),
            _ => None,
        };
        let c = Config::load_with(&main, Some("test"), &vars2).expect("valid");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:3");
        assert_eq!(c.database.pg.get_dbname(), Some("primary"));
        assert_eq!(c.spool.dir, PathBuf::from("/data/spool"));
    }
}
