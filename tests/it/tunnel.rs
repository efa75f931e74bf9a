//! Protocol upgrades through the proxy with a real WebSocket client and server
//! (tokio-tungstenite) on ephemeral ports: echo, a close from either side, an upstream that
//! refuses the upgrade, the idle timeout, the opt-in capture, a route that denies upgrades, and
//! many tunnels at once. Each tunnel is one row, finished when it closes.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::Response;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::support::*;

/// A WebSocket server: echoes every text message; `bye` makes it close the connection.
async fn ws_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    match msg {
                        Message::Text(t) if t.as_str() == "bye" => {
                            let _ = ws.close(None).await;
                            return;
                        }
                        Message::Text(t) => {
                            let Ok(()) = ws.send(Message::Text(t)).await else {
                                return;
                            };
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
        }
    });
    addr
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(proxy: &Proxy, trace: &str) -> Result<(Ws, u16), String> {
    let mut req = format!("ws://{}/rest/push?pushRef=abc", proxy.addr)
        .into_client_request()
        .expect("request");
    req.headers_mut()
        .insert("x-trace-id", trace.parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => Ok((ws, resp.status().as_u16())),
        Err(e) => Err(e.to_string()),
    }
}

fn tunnel_of(row: &tokio_postgres::Row) -> Value {
    let p: Value = row.get("response_payload");
    p["_tunnel"].clone()
}

#[tokio::test]
async fn a_websocket_is_tunnelled_both_ways_and_recorded_when_the_client_closes() {
    let db = TestDb::new().await;
    let proxy = Proxy::start(&config(&db, ws_upstream().await, "")).await;
    let trace = new_trace_id();
    let (mut ws, status) = connect(&proxy, &trace)
        .await
        .expect("handshake through the proxy");
    assert_eq!(status, 101);
    // While the tunnel is open the row says so.
    let sql = format!("SELECT overall_status FROM communication_traces WHERE trace_id = '{trace}'");
    let mut status = String::new();
    for _ in 0..100 {
        status = db.rows(&sql).await[0].get::<_, String>(0);
        if status == "in_progress" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status, "in_progress");
    for i in 0..3 {
        let text = format!("{{\"n\":{i},\"password\":\"hunter2\"}}");
        ws.send(Message::text(text.clone())).await.expect("send");
        let echoed = ws.next().await.expect("a message").expect("ok");
        assert_eq!(echoed, Message::text(text));
    }
    ws.close(None).await.expect("close");
    while ws.next().await.is_some() {}
    let row = db.final_rows(&trace, 1).await.remove(0);
    assert_eq!(row.get::<_, &str>("overall_status"), "success");
    assert_eq!(row.get::<_, Option<i32>>("http_status"), Some(101));
    let t = tunnel_of(&row);
    assert_eq!(t["protocol"], "websocket");
    assert_eq!(t["closed_by"], "client");
    // Three 29-byte messages each way, in frames (the client's masked), and the close frames.
    assert!(
        t["bytes_to_upstream"].as_u64().is_some_and(|n| n > 87),
        "{t}"
    );
    assert!(t["bytes_to_client"].as_u64().is_some_and(|n| n > 87), "{t}");
    // Messages are not stored unless the route asks.
    assert!(t.get("client_sent").is_none(), "{t}");
    assert_eq!(
        row.get::<_, Option<i64>>("request_bytes"),
        t["bytes_to_upstream"].as_i64()
    );
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_closing_the_tunnel_is_a_normal_end_and_captured_messages_are_sanitized() {
    let db = TestDb::new().await;
    let extra = "";
    let toml = config(&db, ws_upstream().await, extra).replace(
        "action = \"trigger-workflow\"",
        "action = \"trigger-workflow\"\ntunnel_capture_bytes = 4096",
    );
    let proxy = Proxy::start(&toml).await;
    let trace = new_trace_id();
    let (mut ws, _) = connect(&proxy, &trace).await.expect("handshake");
    ws.send(Message::text(r#"{"password":"hunter2","op":"hello"}"#))
        .await
        .expect("send");
    ws.next().await.expect("echo").expect("ok");
    ws.send(Message::text("bye")).await.expect("send");
    // The upstream's close reaches the client through the tunnel.
    let mut closed = false;
    while let Some(m) = ws.next().await {
        closed |= matches!(m, Ok(Message::Close(_)));
    }
    assert!(closed, "the upstream's close frame came through");
    let row = db.final_rows(&trace, 1).await.remove(0);
    assert_eq!(row.get::<_, &str>("overall_status"), "success");
    let t = tunnel_of(&row);
    assert_eq!(t["closed_by"], "upstream", "{t}");
    let text_json = |v: &Value| -> Value {
        serde_json::from_str(v["text"].as_str().expect("a text message")).expect("JSON")
    };
    let want = json!({"password": "[REDACTED]", "op": "hello"});
    assert_eq!(text_json(&t["client_sent"][0]), want, "{t}");
    assert_eq!(t["client_sent"][1], json!({"text": "bye"}));
    assert_eq!(text_json(&t["upstream_sent"][0]), want, "{t}");
    let stored = row.get::<_, Value>("response_payload").to_string();
    assert!(!stored.contains("hunter2"), "{stored}");
    proxy.stop().await;
}

#[tokio::test]
async fn an_upstream_refusing_the_upgrade_is_recorded_like_any_response() {
    let db = TestDb::new().await;
    let up = upstream(|_req| async {
        Response::builder()
            .status(401)
            .body(full(r#"{"message":"Unauthorized"}"#))
            .expect("response")
    })
    .await;
    let proxy = Proxy::start(&config(&db, up, "")).await;
    let trace = new_trace_id();
    let e = connect(&proxy, &trace).await.expect_err("refused");
    assert!(e.contains("401"), "{e}");
    let row = db.final_rows(&trace, 1).await.remove(0);
    assert_eq!(row.get::<_, &str>("overall_status"), "failed");
    assert_eq!(
        row.get::<_, Option<&str>>("error_code"),
        Some("AUTH_FAILED")
    );
    assert_eq!(row.get::<_, Option<i32>>("http_status"), Some(401));
    proxy.stop().await;
}

#[tokio::test]
async fn a_silent_tunnel_is_closed_at_the_routes_idle_timeout() {
    let db = TestDb::new().await;
    let extra = "[upstream]\nidle_timeout = \"300ms\"\n";
    let proxy = Proxy::start(&config(&db, ws_upstream().await, extra)).await;
    let trace = new_trace_id();
    let (mut ws, _) = connect(&proxy, &trace).await.expect("handshake");
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the proxy closed the silent tunnel");
    let row = db.final_rows(&trace, 1).await.remove(0);
    assert_eq!(row.get::<_, &str>("overall_status"), "failed");
    assert_eq!(row.get::<_, Option<&str>>("error_code"), Some("TIMEOUT"));
    assert_eq!(tunnel_of(&row)["closed_by"], "idle_timeout");
    proxy.stop().await;
}

#[tokio::test]
async fn a_route_may_deny_upgrades_and_then_nothing_is_forwarded() {
    let db = TestDb::new().await;
    let (up, seen) = counting_upstream(|_| async { Response::new(full("no")) }).await;
    let toml = config(&db, up, "").replace(
        "action = \"trigger-workflow\"",
        "action = \"trigger-workflow\"\nupgrades = false",
    );
    let proxy = Proxy::start(&toml).await;
    let trace = new_trace_id();
    let e = connect(&proxy, &trace).await.expect_err("denied");
    assert!(e.contains("403"), "{e}");
    let row = db.final_rows(&trace, 1).await.remove(0);
    assert_eq!(
        row.get::<_, Option<&str>>("error_code"),
        Some("UPGRADE_DENIED")
    );
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "nothing reached the upstream"
    );
    proxy.stop().await;
}

#[tokio::test]
async fn many_tunnels_at_once_each_get_their_row_and_shutdown_closes_the_rest() {
    const N: usize = 100;
    let db = TestDb::new().await;
    let proxy = Proxy::start(&config(&db, ws_upstream().await, "")).await;
    let mut open = Vec::new();
    for _ in 0..N {
        let trace = new_trace_id();
        let (ws, _) = connect(&proxy, &trace).await.expect("handshake");
        open.push((trace, ws));
    }
    for (i, (_, ws)) in open.iter_mut().enumerate() {
        let text = format!("tunnel {i}");
        ws.send(Message::text(text.clone())).await.expect("send");
        assert_eq!(
            ws.next().await.expect("echo").expect("ok"),
            Message::text(text)
        );
    }
    // Half close themselves; the proxy's shutdown closes the other half.
    for (_, ws) in open.iter_mut().take(N / 2) {
        ws.close(None).await.expect("close");
        while ws.next().await.is_some() {}
    }
    let traces: Vec<String> = open.iter().map(|(t, _)| t.clone()).collect();
    proxy.stop().await;
    let mut statuses = std::collections::BTreeMap::new();
    for t in &traces {
        let row = db.final_rows(t, 1).await.remove(0);
        let code: Option<String> = row.get("error_code");
        *statuses.entry(code).or_insert(0) += 1;
    }
    assert_eq!(
        statuses,
        [(None, N / 2), (Some("INTERRUPTED".to_owned()), N / 2)]
            .into_iter()
            .collect()
    );
}
