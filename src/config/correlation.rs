//! `[correlation]`: the headers ids are read from and written to, the fallbacks when they are
//! absent, and the n8n URL forms a workflow id is derived from.

use std::str::FromStr;

use http::header::HeaderName;
use serde::{Deserialize, Serialize};

use super::problems::Problems;

/// `[correlation]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
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
                RawPathRule::new("/webhook/", Take::Rest),
                RawPathRule::new("/webhook-test/", Take::Rest),
                RawPathRule::new("/api/v1/workflows/", Take::Segment),
                RawPathRule::new("/rest/workflows/", Take::Segment),
            ],
        }
    }
}

/// `[[correlation.workflow_path_rules]]` as written.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
pub struct RawPathRule {
    pub prefix: String,
    #[serde(default)]
    pub take: Take,
}

impl RawPathRule {
    fn new(prefix: &str, take: Take) -> Self {
        Self {
            prefix: prefix.into(),
            take,
        }
    }
}

/// What a path rule takes after its prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Take {
    /// The next path segment.
    #[default]
    Segment,
    /// Everything after the prefix.
    Rest,
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

/// Checks `[correlation]`, pushing every problem.
pub(super) fn check(c: &RawCorrelation, p: &mut Problems) -> Option<CorrelationConfig> {
    let mut header = |key: &str, v: &str| {
        HeaderName::from_str(v)
            .map_err(|_| {
                p.at(
                    &format!("correlation.{key}"),
                    format!("{v:?} is not a valid header name"),
                )
            })
            .ok()
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
            p.at(&format!("correlation.{key}"), "must not be empty");
        }
    }
    for (i, r) in c.workflow_path_rules.iter().enumerate() {
        if !r.prefix.starts_with('/') || !r.prefix.ends_with('/') {
            p.at(
                &format!("correlation.workflow_path_rules[{i}].prefix"),
                format!("{:?} must start and end with '/'", r.prefix),
            );
        }
    }
    Some(CorrelationConfig {
        trace_id_header: trace_id_header?,
        execution_id_header: execution_id_header?,
        workflow_id_header: workflow_id_header?,
        user_id_header: user_id_header?,
        action_header: action_header?,
        attempt_header: attempt_header?,
        n8n_execution_id_header: n8n_execution_id_header?,
        default_user_id: c.default_user_id.clone(),
        default_workflow_id: c.default_workflow_id.clone(),
        workflow_path_rules: c
            .workflow_path_rules
            .iter()
            .map(|r| PathRule {
                prefix: r.prefix.clone(),
                take_rest: r.take == Take::Rest,
            })
            .collect(),
    })
}
