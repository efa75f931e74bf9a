//! The configuration file as written: serde structs with defaults. Every key here is documented
//! in `proxy.toml` and the README; `super::validate` turns this into the typed `Config`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct RawConfig {
    pub server: RawServer,
    pub database: RawDatabase,
    pub capture: RawCapture,
    pub upstream: RawUpstream,
    pub correlation: RawCorrelation,
    pub log: RawLog,
    pub sanitize: RawSanitize,
    pub retention: RawRetention,
    pub recovery: super::recovery::RawRecovery,
    pub spool: super::spool::RawSpool,
    pub admin: super::admin::RawAdmin,
    pub routes: Vec<RawRoute>,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawServer {
    pub listen: String,
    pub max_connections: usize,
    pub header_read_timeout_ms: u64,
    pub request_body_timeout_ms: u64,
    pub max_request_body_bytes: u64,
    pub shutdown_timeout_ms: u64,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            request_body_timeout_ms: 30_000,
            max_request_body_bytes: 100 * 1024 * 1024,
            shutdown_timeout_ms: 30_000,
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawDatabase {
    pub url: String,
    pub on_unavailable: String,
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
            on_unavailable: "spool".into(),
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

#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawCapture {
    pub max_payload_bytes: usize,
    pub in_progress_after_ms: u64,
}

impl Default for RawCapture {
    fn default() -> Self {
        Self {
            max_payload_bytes: 65_536,
            in_progress_after_ms: 2_000,
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawUpstream {
    pub connect_timeout_ms: u64,
    pub response_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub pool_idle_timeout_ms: u64,
    pub pool_max_idle_per_host: usize,
    pub tls_roots: String,
    pub ca_file: String,
    pub preserve_host: bool,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            response_timeout_ms: 120_000,
            idle_timeout_ms: 300_000,
            pool_idle_timeout_ms: 90_000,
            pool_max_idle_per_host: 64,
            tls_roots: "webpki".into(),
            ca_file: String::new(),
            preserve_host: false,
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawCorrelation {
    pub trace_id_header: String,
    pub execution_id_header: String,
    pub workflow_id_header: String,
    pub user_id_header: String,
    pub action_header: String,
    pub attempt_header: String,
    pub n8n_execution_id_header: String,
    pub default_user_id: String,
    pub default_workflow_id: String,
    pub workflow_path_rules: Vec<RawPathRule>,
}

impl Default for RawCorrelation {
    fn default() -> Self {
        Self {
            trace_id_header: "x-trace-id".into(),
            execution_id_header: "x-execution-id".into(),
            workflow_id_header: "x-workflow-id".into(),
            user_id_header: "x-user-id".into(),
            action_header: "x-action".into(),
            attempt_header: "x-attempt-number".into(),
            n8n_execution_id_header: "x-n8n-execution-id".into(),
            default_user_id: "anonymous".into(),
            default_workflow_id: "unknown".into(),
            workflow_path_rules: vec![
                RawPathRule::new("/webhook/", "rest"),
                RawPathRule::new("/webhook-test/", "rest"),
                RawPathRule::new("/api/v1/workflows/", "segment"),
                RawPathRule::new("/rest/workflows/", "segment"),
            ],
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
pub struct RawPathRule {
    pub prefix: String,
    #[serde(default = "default_take")]
    pub take: String,
}

fn default_take() -> String {
    "segment".into()
}

impl RawPathRule {
    fn new(prefix: &str, take: &str) -> Self {
        Self {
            prefix: prefix.into(),
            take: take.into(),
        }
    }
}

/// `[sanitize]`: D4 redaction rules on top of the built-in ones (`crate::sanitize`).
#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawSanitize {
    pub replacement: String,
    pub add_keys: Vec<String>,
    pub remove_keys: Vec<String>,
    pub allow_number_keys: Vec<String>,
    pub add_patterns: Vec<RawPattern>,
    pub remove_patterns: Vec<String>,
    pub max_decoded_bytes: usize,
}

impl Default for RawSanitize {
    fn default() -> Self {
        let d = crate::sanitize::RuleSpec::default();
        Self {
            replacement: d.replacement,
            add_keys: Vec::new(),
            remove_keys: Vec::new(),
            allow_number_keys: d.allow_number_keys,
            add_patterns: Vec::new(),
            remove_patterns: Vec::new(),
            max_decoded_bytes: d.max_decoded_bytes,
        }
    }
}

/// `[[sanitize.add_patterns]]` / `[[routes.sanitize.add_patterns]]`.
#[derive(Clone, Deserialize, Serialize)]
pub struct RawPattern {
    pub name: String,
    pub regex: String,
}

/// `[routes.sanitize]`: one route's additions and removals, over `[sanitize]`.
#[derive(Clone, Deserialize, Serialize, Default)]
#[serde(default)]
pub struct RawRouteSanitize {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replacement: Option<String>,
    pub add_keys: Vec<String>,
    pub remove_keys: Vec<String>,
    pub add_patterns: Vec<RawPattern>,
    pub remove_patterns: Vec<String>,
}

impl RawRouteSanitize {
    pub fn is_empty(&self) -> bool {
        self.replacement.is_none()
            && self.add_keys.is_empty()
            && self.remove_keys.is_empty()
            && self.add_patterns.is_empty()
            && self.remove_patterns.is_empty()
    }
}

/// `[retention]`: D5, see `crate::retention`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRetention {
    pub detail_days: u32,
    pub summary_days: u32,
    pub batch_size: u32,
    pub interval_secs: u64,
}

impl Default for RawRetention {
    fn default() -> Self {
        Self {
            detail_days: 30,
            summary_days: 0,
            batch_size: 5_000,
            interval_secs: 3_600,
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawLog {
    pub level: String,
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Clone, Deserialize, Serialize)]
pub struct RawRoute {
    pub name: String,
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    pub upstream: String,
    pub source_service: String,
    pub destination_service: String,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub require_user_id: bool,
    #[serde(default)]
    pub strip_prefix: bool,
    #[serde(default, skip_serializing_if = "RawRouteSanitize::is_empty")]
    pub sanitize: RawRouteSanitize,
    #[serde(default)]
    pub retry: RawRetry,
}

/// `[routes.retry]`: proxy-side retries (D3).
#[derive(Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RawRetry {
    pub max_attempts: u32,
    pub retry_on_status: Vec<u16>,
    pub retry_non_idempotent: bool,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for RawRetry {
    fn default() -> Self {
        Self {
            max_attempts: 1,
            retry_on_status: vec![502, 503, 504],
            retry_non_idempotent: false,
            backoff_initial_ms: 100,
            backoff_max_ms: 2000,
        }
    }
}

fn default_prefix() -> String {
    "/".into()
}
