//! Load driver for `bench/query.sh`: sends GET requests for one query pattern of the admin API
//! over `concurrency` keep-alive connections and prints the latency distribution.
//!
//! ```text
//! query_load <admin addr> <token> <pattern> <requests> <concurrency> <traces> <workflows> <users>
//! pattern: chain | failures | history
//! ```
//! Ids are drawn uniformly from the ranges the bench loaded (`t<n>`, `wf-<n>`, `user-<n>`), so
//! every request hits a different, mostly uncached, part of the indexes.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

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
    let path = move |rng: &mut fastrand::Rng| match pattern.as_str() {
        "chain" => format!("/api/traces/t{}", rng.u64(0..traces)),
        "failures" => format!(
            "/api/workflows/wf-{}/failures?limit=50",
            rng.u64(0..workflows)
        ),
        "history" => format!("/api/users/user-{}/history?limit=50", rng.u64(0..users)),
        other => panic!("unknown pattern {other}"),
    };
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(concurrency)
        .build_http();
    let per_task = requests.div_ceil(concurrency);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (client, addr, token, path) =
            (client.clone(), addr.clone(), token.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t as u64 + 1);
            let mut lat = Vec::with_capacity(per_task);
            let mut bytes = 0usize;
            let mut errors = 0usize;
            for _ in 0..per_task {
                let req = http::Request::get(format!("http://{addr}{}", path(&mut rng)))
                    .header("authorization", format!("Bearer {token}"))
                    .body(Empty::new())
                    .expect("request");
                let t0 = Instant::now();
                match client.request(req).await {
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let body = resp.into_body().collect().await.map(|b| b.to_bytes());
                        lat.push(t0.elapsed());
                        match body {
                            Ok(b) if ok => bytes += b.len(),
                            _ => errors += 1,
                        }
                    }
                    Err(_) => errors += 1,
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
        "{:<9} c={:<2} n={:<5} rps={:>7.0}  p50={:>6.2}ms  p90={:>6.2}ms  p99={:>6.2}ms  max={:>7.2}ms  avg_body={}B  errors={}",
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
