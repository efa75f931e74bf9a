//! Memory of open tunnels, for `bench/tunnels.sh`.
//!
//! Usage: `tunnels <upstream-listen-addr> <proxy-addr> <proxy-pid> <steps>`, e.g.
//! `tunnels 127.0.0.1:28301 127.0.0.1:28302 4242 0,250,500,1000`.
//!
//! Serves a WebSocket echo upstream on the first address (the proxy's route points there), then
//! opens WebSocket tunnels through the proxy in steps, each tunnel echoing one message, and at
//! each step prints the open tunnels and the proxy's resident memory (`VmRSS` of
//! `/proc/<pid>/status`). Closes them all at the end.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::too_many_lines,
    clippy::cognitive_complexity,
    unreachable_pub,
    clippy::disallowed_methods,
    reason = "test and measurement code: a failed step should stop it loudly"
)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[path = "common/rss.rs"]
mod rss;
use rss::rss_kib;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (upstream, proxy) = (args[1].clone(), args[2].clone());
    let pid: u32 = args[3].parse().expect("pid");
    let steps: Vec<usize> = args[4]
        .split(',')
        .map(|s| s.parse().expect("step"))
        .collect();

    let listener = TcpListener::bind(&upstream).await.expect("bind upstream");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });

    println!("{:>8}  {:>10}  {:>14}", "tunnels", "RSS KiB", "KiB/tunnel");
    let base = rss_kib(pid);
    let mut open = Vec::new();
    for step in steps {
        while open.len() < step {
            let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{proxy}/rest/push"))
                .await
                .expect("tunnel through the proxy");
            ws.send(Message::text("ping")).await.expect("send");
            ws.next().await.expect("echo").expect("ok");
            open.push(ws);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss = rss_kib(pid);
        let per = if step == 0 {
            "-".to_owned()
        } else {
            format!("{:.1}", (rss.saturating_sub(base)) as f64 / step as f64)
        };
        println!("{step:>8}  {rss:>10}  {per:>14}");
    }
    for mut ws in open {
        let _ = ws.close(None).await;
    }
}
