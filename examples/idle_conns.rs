//! Memory of idle and half-sent connections, for `bench/idle.sh`.
//!
//! Usage: `idle_conns <proxy-addr> <proxy-pid> <connections> <head-bytes> <wait-seconds>`.
//!
//! Opens `connections` connections to the proxy; each sends `head-bytes` of a request head that
//! never ends (0: sends nothing). Prints the proxy's resident memory (`VmRSS`) before, with all
//! of them open, and after `wait-seconds` (past the header deadline, when the proxy has closed
//! them), with how many the proxy had closed by then.

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

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common/rss.rs"]
mod rss;
use rss::rss_kib;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let proxy = args[1].clone();
    let pid: u32 = args[2].parse().expect("pid");
    let n: usize = args[3].parse().expect("connections");
    let head: usize = args[4].parse().expect("head bytes");
    let wait: u64 = args[5].parse().expect("seconds");

    let before = rss_kib(pid);
    let mut partial = b"GET /webhook/x HTTP/1.1\r\nHost: x\r\nX-Padding: ".to_vec();
    partial.resize(head.max(partial.len()), b'a');
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut c = tokio::net::TcpStream::connect(&proxy)
            .await
            .expect("connect");
        if head > 0 {
            c.write_all(&partial).await.expect("partial head");
        }
        conns.push(c);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open = rss_kib(pid);
    tokio::time::sleep(Duration::from_secs(wait)).await;
    let mut closed = 0;
    for c in &mut conns {
        let mut b = [0u8; 512];
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(5), c.read(&mut b)).await {
            closed += 1;
        }
    }
    let after = rss_kib(pid);
    println!("connections {n}, head bytes {head}");
    println!("RSS before      {before:>8} KiB");
    println!(
        "RSS all open    {open:>8} KiB  ({:.1} KiB per connection)",
        (open.saturating_sub(before)) as f64 / n as f64
    );
    println!("RSS after {wait:>3} s  {after:>8} KiB  ({closed} of {n} closed by the proxy)");
}
