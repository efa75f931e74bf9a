//! The n8n execution lookup (`[n8n]`): for a failed attempt whose row names an n8n execution,
//! ask n8n's public API (`GET /api/v1/executions/{id}?includeData=true`) in the background, and
//! store a small, sanitized account next to the row (`n8n_execution`): n8n's final status, the
//! failing node's name and type, the error, start and stop times. Bounded in rate
//! (`lookups_per_minute`), time (`lookup_timeout`) and queue; when n8n is unreachable, the key is
//! refused or the execution unknown, the row is left as it is and `n8n_lookups_failed` counts it.
//! The key is sent only to n8n, never logged or stored.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::Pool;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{N8nLookup, UpstreamConfig};
use crate::error::Chain;
use crate::metrics::Metrics;
use crate::proxy::forward::ClientSetupError;
use crate::sanitize::{clipped, BodySample, Sanitizer};

/// Lookups waiting at most; more are dropped (and counted).
const QUEUE: usize = 1024;
/// Largest execution document read (n8n's `includeData` can be large).
const MAX_DOCUMENT_BYTES: usize = 16 << 20;
/// Bytes the stored account may take.
const MAX_ACCOUNT_BYTES: usize = 4096;
/// Longest error message kept.
const MAX_MESSAGE_CHARS: usize = 1000;
/// Tries of one lookup (the execution still running, or its row not written yet).
const MAX_TRIES: u8 = 3;
/// Wait before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(10);

type LookupClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// One execution to look up.
struct Job {
    row: Uuid,
    execution: String,
    due: Instant,
    sanitizer: Arc<Sanitizer>,
    tries: u8,
}

/// The handle the proxy asks for lookups through; cheap to clone.
#[derive(Clone)]
pub(crate) struct Lookups {
    tx: mpsc::Sender<Job>,
    delay: Duration,
    metrics: Arc<Metrics>,
}

/// What one try came to.
enum Tried {
    Stored,
    /// Not final yet (the execution still runs, or its row is not written): try again later.
    Later(&'static str),
    Failed(String),
}

impl Lookups {
    /// Starts the lookup task, which stops with `stop`; `None` when `[n8n]` is not configured.
    pub(crate) fn start(
        cfg: Option<&N8nLookup>,
        upstream: &UpstreamConfig,
        pool: Pool,
        metrics: Arc<Metrics>,
        stop: CancellationToken,
    ) -> Result<Option<Lookups>, ClientSetupError> {
        let Some(cfg) = cfg else {
            return Ok(None);
        };
        let client: LookupClient = crate::proxy::forward::client_for(upstream)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let worker = Worker {
            cfg: cfg.clone(),
            client,
            pool,
            metrics: metrics.clone(),
            retry: tx.clone(),
        };
        tokio::spawn(worker.run(rx, stop));
        tracing::info!(api_url = %cfg.api_url, "n8n execution lookup on");
        Ok(Some(Lookups {
            tx,
            delay: cfg.delay,
            metrics,
        }))
    }

    /// Asks for n8n's account of `execution` for the failed attempt `row` (never waits).
    pub(crate) fn request(&self, row: Uuid, execution: String, sanitizer: Arc<Sanitizer>) {
        let job = Job {
            row,
            execution,
            due: Instant::now() + self.delay,
            sanitizer,
            tries: 0,
        };
        if self.tx.try_send(job).is_err() {
            self.metrics.n8n_lookups_failed.inc();
            tracing::warn!(%row, "n8n execution lookup queue full; lookup dropped");
        }
    }
}

struct Worker {
    cfg: N8nLookup,
    client: LookupClient,
    pool: Pool,
    metrics: Arc<Metrics>,
    /// For jobs tried again later.
    retry: mpsc::Sender<Job>,
}

impl Worker {
    async fn run(self, mut rx: mpsc::Receiver<Job>, stop: CancellationToken) {
        let spacing = Duration::from_secs(60) / self.cfg.per_minute.max(1);
        let mut next = Instant::now();
        loop {
            let job = tokio::select! {
                j = rx.recv() => match j { Some(j) => j, None => return },
                () = stop.cancelled() => return,
            };
            let wait = job.due.max(next);
            tokio::select! {
                () = tokio::time::sleep_until(wait) => {}
                () = stop.cancelled() => return,
            }
            next = Instant::now() + spacing;
            self.one(job).await;
        }
    }

    async fn one(&self, mut job: Job) {
        let tried = match tokio::time::timeout(self.cfg.timeout, self.fetch(&job.execution)).await {
            Ok(Ok(doc)) => self.store(&job, &doc).await,
            Ok(Err(e)) => Tried::Failed(e),
            Err(_) => Tried::Failed(format!(
                "no answer within {} ms",
                self.cfg.timeout.as_millis()
            )),
        };
        match tried {
            Tried::Stored => {
                self.metrics.n8n_lookups.inc();
            }
            Tried::Later(why) if job.tries + 1 < MAX_TRIES => {
                job.tries += 1;
                job.due = Instant::now() + RETRY_AFTER;
                tracing::debug!(row = %job.row, why, "n8n execution lookup tried again later");
                if self.retry.try_send(job).is_err() {
                    self.metrics.n8n_lookups_failed.inc();
                }
            }
            Tried::Later(why) => {
                self.metrics.n8n_lookups_failed.inc();
                tracing::info!(row = %job.row, why, "n8n execution lookup given up");
            }
            Tried::Failed(why) => {
                self.metrics.n8n_lookups_failed.inc();
                tracing::warn!(row = %job.row, execution = %job.execution, error = %why,
                    "n8n execution lookup failed; row left as it is");
            }
        }
    }

    /// The execution document, or why there is none.
    async fn fetch(&self, execution: &str) -> Result<Value, String> {
        let id: String = form_urlencoded::byte_serialize(execution.as_bytes()).collect();
        let uri = format!(
            "{}/api/v1/executions/{id}?includeData=true",
            self.cfg.api_url
        );
        let key = self.cfg.api_key.expose();
        let req = Request::get(uri)
            .header("x-n8n-api-key", key)
            .header(header::ACCEPT, "application/json")
            .body(Empty::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("n8n unreachable: {}", Chain(&e)))?;
        match resp.status() {
            StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(format!(
                    "n8n refused the API key ({}); check n8n.api_key",
                    resp.status()
                ))
            }
            StatusCode::NOT_FOUND => return Err("n8n does not know the execution".into()),
            s => return Err(format!("n8n answered {s}")),
        }
        #[expect(
            clippy::disallowed_methods,
            reason = "bounded by Limited: MAX_DOCUMENT_BYTES"
        )]
        let body = Limited::new(resp.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| format!("cannot read n8n's answer: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("n8n's answer is not JSON: {e}"))
    }

    async fn store(&self, job: &Job, doc: &Value) -> Tried {
        let status = doc.get("status").and_then(Value::as_str).unwrap_or("");
        if matches!(status, "new" | "running") {
            return Tried::Later("the execution is still running");
        }
        let stored = job.sanitizer.payload(
            BodySample {
                bytes: &serde_json::to_vec(&account(doc)).unwrap_or_default(),
                total_bytes: None,
                cut: false,
                content_type: Some("application/json"),
                content_encoding: None,
            },
            MAX_ACCOUNT_BYTES,
        );
        let Some(value) = stored.value else {
            return Tried::Failed("nothing to store".into());
        };
        match crate::store::set_n8n_execution(&self.pool, job.row, &value).await {
            Ok(0) => Tried::Later("the row is not written yet"),
            Ok(_) => Tried::Stored,
            Err(e) => Tried::Failed(format!("cannot store it: {}", Chain(&e))),
        }
    }
}

/// The few facts kept of n8n's execution document.
fn account(doc: &Value) -> Value {
    let result = &doc["data"]["resultData"];
    let error = &result["error"];
    let text = |v: &Value| v.as_str().map(|s| clipped(s, MAX_MESSAGE_CHARS));
    let mut out = json!({
        "status": doc.get("status"),
        "finished": doc.get("finished"),
        "mode": doc.get("mode"),
        "workflowId": doc.get("workflowId"),
        "startedAt": doc.get("startedAt"),
        "stoppedAt": doc.get("stoppedAt"),
        "lastNodeExecuted": result.get("lastNodeExecuted"),
    });
    if error.is_object() {
        out["failingNode"] = json!({
            "name": error["node"]["name"],
            "type": error["node"]["type"],
        });
        out["error"] = json!({
            "name": error.get("name"),
            "message": text(&error["message"]),
            "description": text(&error["description"]),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_account_keeps_the_failing_node_and_the_error_only() {
        let doc = json!({
            "id": "4", "finished": false, "mode": "webhook", "status": "error",
            "startedAt": "2026-11-26T10:59:27.036Z", "stoppedAt": "2026-11-26T10:59:27.041Z",
            "workflowId": "BilkoErrorImm001",
            "data": {"resultData": {
                "error": {"name": "NodeOperationError", "message": "boom",
                          "stack": "NodeOperationError: boom\n at …",
                          "node": {"name": "Fail", "type": "n8n-nodes-base.stopAndError",
                                   "parameters": {"errorMessage": "boom"}}},
                "runData": {"Webhook": [{"data": {"main": [[{"json": {"body": {"x": 1}}}]]}}]},
                "lastNodeExecuted": "Fail"}},
            "workflowData": {"nodes": []}
        });
        let a = account(&doc);
        assert_eq!(
            a["failingNode"],
            json!({"name": "Fail", "type": "n8n-nodes-base.stopAndError"})
        );
        assert_eq!(a["error"]["message"], "boom");
        assert_eq!(a["status"], "error");
        let text = a.to_string();
        assert!(
            !text.contains("stack") && !text.contains("runData") && !text.contains("parameters")
        );
    }
}
