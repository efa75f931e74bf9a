//! Load driver for `bench/query.sh` and `bench/ui.sh`: loads the pages of one pattern of the
//! admin API over `concurrency` keep-alive connections and prints the latency distribution. A
//! page is the set of API calls one view makes, sent at once as the explorer does; its latency
//! is the time until the last answer is read.
//!
//! ```text
//! query_load <admin addr> <token> <pattern> <requests> <concurrency> <traces> <workflows> <users>
//! pattern: chain | failures | history                      (one call, bench/query.sh)
//!        | list | list-failed | trace | overview-hour | overview-day | overview-week | workflow
//!        | overview-day-cold | overview-week-cold | workflow-cold
//!                                                           (the explorer's pages, bench/ui.sh)
//! ```
//! Ids are drawn uniformly from the ranges the bench loaded (`t<n>`, `wf-<n>`, `user-<n>`), so
//! every request hits a different, mostly uncached, part of the indexes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    clippy::cognitive_complexity,
    unreachable_pub,
    clippy::disallowed_methods,
    reason = "test and measurement code: a failed step should stop it loudly"
)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Now, as an RFC 3339 query value.
fn now() -> String {
    chrono::Utc::now()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        .replace('+', "%2B")
}

fn arg<T: std::str::FromStr>(args: &[String], i: usize, name: &str) -> T {
    args.get(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("argument {i} ({name}) missing or invalid; see the header"))
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let addr: String = arg(&args, 1, "admin addr");
    let token: String = arg(&args, 2, "token");
    let pattern: String = arg(&args, 3, "pattern");
    let requests: usize = arg(&args, 4, "requests");
    let concurrency: usize = arg(&args, 5, "concurrency");
    let traces: u64 = arg(&args, 6, "traces");
    let workflows: u64 = arg(&args, 7, "workflows");
    let users: u64 = arg(&args, 8, "users");
    let paths = move |rng: &mut fastrand::Rng| -> Vec<String> {
        let (t, w) = (rng.u64(0..traces), rng.u64(0..workflows));
        let rows = "fields=*&payloads=none";
        match pattern.as_str() {
            "chain" => vec![format!("/api/traces/t{t}")],
            "failures" => vec![format!("/api/workflows/wf-{w}/failures?limit=50")],
            "history" => vec![format!(
                "/api/users/user-{}/history?limit=50",
                rng.u64(0..users)
            )],
            // The explorer's views: what each one fetches when it opens.
            "list" => vec![format!("/api/traces?{rows}")],
            "list-failed" => vec![format!("/api/traces?status=failed&{rows}")],
            "trace" => vec![
                format!("/api/traces/t{t}?fields=*&payloads=full"),
                format!("/api/traces/t{t}/diff?payloads=full"),
            ],
            "overview-hour" => vec!["/api/overview?window=hour".into()],
            "overview-day" => vec!["/api/overview?window=day".into()],
            "overview-week" => vec!["/api/overview?window=week".into()],
            "workflow" => vec![
                format!("/api/overview?window=week&workflowId=wf-{w}"),
                format!("/api/workflows/wf-{w}/failures?limit=20&{rows}"),
            ],
            // The same with `until`: read from the database every time, never the kept window.
            "overview-day-cold" => vec![format!("/api/overview?window=day&until={}", now())],
            "overview-week-cold" => vec![format!("/api/overview?window=week&until={}", now())],
            "workflow-cold" => vec![
                format!(
                    "/api/overview?window=week&workflowId=wf-{w}&until={}",
                    now()
                ),
                format!("/api/workflows/wf-{w}/failures?limit=20&{rows}"),
            ],
            other => panic!("unknown pattern {other}"),
        }
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let per_task = requests.div_ceil(concurrency);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (client, addr, token, paths) =
            (client.clone(), addr.clone(), token.clone(), paths.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t as u64 + 1);
            let mut lat = Vec::with_capacity(per_task);
            let mut bytes = 0usize;
            let mut errors = 0usize;
            for _ in 0..per_task {
                let t0 = Instant::now();
                let calls = paths(&mut rng).into_iter().map(|path| {
                    let req = http::Request::get(format!("http://{addr}{path}"))
                        .header("authorization", format!("Bearer {token}"))
                        .body(Empty::new())
                        .expect("request");
                    let client = client.clone();
                    async move {
                        let resp = client.request(req).await.ok()?;
                        let ok = resp.status().is_success();
                        let body = resp.into_body().collect().await.ok()?.to_bytes();
                        ok.then_some(body.len())
                    }
                });
                let answers = futures_util::future::join_all(calls).await;
                lat.push(t0.elapsed());
                for a in answers {
                    match a {
                        Some(n) => bytes += n,
                        None => errors += 1,
                    }
                }
            }
            (lat, bytes, errors)
        }));
    }
    let mut all: Vec<Duration> = Vec::with_capacity(requests);
    let (mut bytes, mut errors) = (0, 0);
    for t in tasks {
        let (lat, b, e) = t.await.expect("task");
        all.extend(lat);
        bytes += b;
        errors += e;
    }
    let elapsed = started.elapsed();
    all.sort_unstable();
    let q = |p: f64| {
        let i = ((p * all.len() as f64).ceil() as usize).clamp(1, all.len().max(1)) - 1;
        all.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "{:<13} c={:<2} n={:<5} rps={:>7.0}  p50={:>6.2}ms  p90={:>6.2}ms  p99={:>6.2}ms  max={:>7.2}ms  avg_body={}B  errors={}",
        args[3],
        concurrency,
        all.len(),
        all.len() as f64 / elapsed.as_secs_f64(),
        q(0.50),
        q(0.90),
        q(0.99),
        q(1.0),
        if all.is_empty() { 0 } else { bytes / all.len() },
        errors
    );
}
