//! Protocol upgrades (RFC 9110 §7.8): a WebSocket handshake (n8n's editor push channel,
//! `GET /rest/push`) is forwarded with its `Upgrade` headers; when the upstream answers `101`,
//! the client and upstream connections are joined byte for byte until either side closes, the
//! route's idle timeout passes or the proxy shuts down. The attempt stays one row: D1 before the
//! handshake went upstream, D2 when the tunnel closes — duration, bytes each way, who closed it,
//! and (opt-in, `tunnel_capture_bytes`) the first messages of each direction, sanitized.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::outcome::Outcome;
use crate::sanitize::{BodySample, Sanitizer, Stored};
use crate::trace::Status;

/// Bytes moved per read.
const CHUNK: usize = 16 * 1024;
/// Messages listed per direction when a tunnel's start is captured.
const MAX_MESSAGES: usize = 50;

/// An upgrade the client asked for.
pub(super) struct Upgrade {
    /// The `Upgrade` header, forwarded as is.
    pub value: HeaderValue,
    /// The client's side of the connection once the `101` is sent; `None` once taken.
    pub client: Option<OnUpgrade>,
}

impl Upgrade {
    /// The protocol asked for, for the row (`websocket`).
    pub(super) fn protocol(&self) -> String {
        self.value
            .to_str()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase()
    }
}

/// The upgrade `parts` asks for: HTTP/1.1, `Connection: upgrade`, an `Upgrade` header. HTTP/2
/// has no such upgrade.
pub(super) fn requested(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.version != http::Version::HTTP_11 {
        return None;
    }
    let connection_says_upgrade = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    match connection_says_upgrade {
        true => parts.headers.get(header::UPGRADE).cloned(),
        false => None,
    }
}

/// Puts the upgrade back on a request or response whose hop-by-hop headers were stripped.
pub(super) fn keep_upgrade(headers: &mut http::HeaderMap, value: HeaderValue) {
    headers.insert(header::UPGRADE, value);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Who or what ended a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Closed {
    /// The client closed its side (then the upstream its own, or the idle timeout passed).
    Client,
    Upstream,
    Idle(Duration),
    Interrupted,
    ClientFailed(String),
    UpstreamFailed(String),
    /// A side's connection could not be taken over after the `101`.
    NotJoined(String),
}

impl Closed {
    fn name(&self) -> &'static str {
        match self {
            Closed::Client | Closed::ClientFailed(_) => "client",
            Closed::Upstream | Closed::UpstreamFailed(_) | Closed::NotJoined(_) => "upstream",
            Closed::Idle(_) => "idle_timeout",
            Closed::Interrupted => "shutdown",
        }
    }
}

/// How a tunnel ended.
pub(super) struct TunnelEnd {
    pub to_upstream: u64,
    pub to_client: u64,
    pub closed: Closed,
    /// The first bytes each way (up to the capture asked for).
    pub client_sent: Vec<u8>,
    pub upstream_sent: Vec<u8>,
}

/// The last time bytes moved, as milliseconds since `start`.
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once nothing moved for `limit`.
    async fn silent_for(&self, limit: Option<Duration>) {
        let Some(limit) = limit else {
            return std::future::pending().await;
        };
        loop {
            let due =
                self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limit;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due.into()).await;
        }
    }
}

/// Follows the WebSocket frames of one direction as they pass, to see who sends the first
/// close frame (the side that ends the conversation, whichever side drops the connection).
#[derive(Default)]
struct FrameWatch {
    /// Bytes of a frame header read so far.
    head: Vec<u8>,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
    /// Set at the first close frame.
    closed: bool,
}

impl FrameWatch {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() && !self.closed {
            if self.skip > 0 {
                let n = usize::try_from(self.skip)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.skip -= n as u64;
                data = data.get(n..).unwrap_or_default();
                continue;
            }
            self.head.push(data[0]);
            data = data.get(1..).unwrap_or_default();
            if let Some((opcode, len)) = frame_head(&self.head) {
                self.closed |= opcode == 0x8;
                self.skip = len;
                self.head.clear();
            }
        }
    }
}

/// (opcode, payload length) once `h` holds a whole frame header.
fn frame_head(h: &[u8]) -> Option<(u8, u64)> {
    let (&b0, &b1) = (h.first()?, h.get(1)?);
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    let (len, at) = match b1 & 0x7f {
        126 => (u64::from(u16::from_be_bytes([*h.get(2)?, *h.get(3)?])), 4),
        127 => (u64::from_be_bytes(h.get(2..10)?.try_into().ok()?), 10),
        n => (u64::from(n), 2),
    };
    (h.len() == at + mask).then_some((b0 & 0x0f, len))
}

/// One direction of a tunnel.
struct Direction<'a> {
    moved: &'a AtomicU64,
    /// The first `keep` bytes, kept here so that a tunnel cut short still has them.
    kept: &'a std::sync::Mutex<Vec<u8>>,
    /// The order (1, 2) in which this direction sent its first WebSocket close frame among
    /// both directions; `u64::MAX`: none yet.
    close_frame_at: &'a AtomicU64,
    /// Close frames seen so far, both directions.
    closes: &'a AtomicU64,
    activity: &'a Activity,
    keep: usize,
    /// WebSocket frames are followed.
    websocket: bool,
}

/// How one direction ended.
struct Pumped {
    result: Result<(), std::io::Error>,
}

/// Copies `from` into `to` until `from` ends (then shuts `to` down for writing); keeps the first
/// `keep` bytes.
async fn pump<R, W>(mut from: R, mut to: W, d: Direction<'_>) -> Pumped
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut watch = FrameWatch::default();
    let mut buf = vec![0u8; CHUNK];
    let done = |result| Pumped { result };
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => return done(to.shutdown().await),
            Ok(n) => n,
            Err(e) => return done(Err(e)),
        };
        let data = buf.get(..n).unwrap_or_default();
        if d.keep > 0 {
            let mut kept = d
                .kept
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let room = d.keep.saturating_sub(kept.len());
            kept.extend_from_slice(data.get(..room.min(n)).unwrap_or_default());
        }
        if let Err(e) = to.write_all(data).await {
            return done(Err(e));
        }
        d.moved.fetch_add(n as u64, Ordering::Relaxed);
        d.activity.touch();
        if d.websocket && !watch.closed {
            watch.feed(data);
            if watch.closed {
                let order = d.closes.fetch_add(1, Ordering::Relaxed) + 1;
                d.close_frame_at.store(order, Ordering::Relaxed);
            }
        }
    }
}

/// How long the other direction may go on after one side's connection ended (a WebSocket peer
/// may keep its socket open after the close handshake).
const LINGER: Duration = Duration::from_secs(1);

/// Joins the client and the upstream once both connections are handed over, and moves bytes
/// until the tunnel ends: both sides closed (or one closed and the other did not follow within
/// [`LINGER`]), a side failed, nothing moved for `idle`, or `stop`.
pub(super) async fn join(
    client: OnUpgrade,
    upstream: OnUpgrade,
    protocol: &str,
    idle: Option<Duration>,
    keep: usize,
    stop: CancellationToken,
) -> TunnelEnd {
    let tunnel = Tunnel::new(protocol == "websocket", keep);
    let closed = match tokio::join!(client, upstream) {
        (Ok(c), Ok(u)) => tunnel.run(c, u, idle, &stop).await,
        (Err(e), _) => Closed::NotJoined(format!("client side: {e}")),
        (_, Err(e)) => Closed::NotJoined(format!("upstream side: {e}")),
    };
    tunnel.end(closed)
}

/// The state both directions of a tunnel share.
struct Tunnel {
    websocket: bool,
    keep: usize,
    activity: Activity,
    to_upstream: AtomicU64,
    to_client: AtomicU64,
    client_kept: std::sync::Mutex<Vec<u8>>,
    upstream_kept: std::sync::Mutex<Vec<u8>>,
    client_close: AtomicU64,
    upstream_close: AtomicU64,
    closes: AtomicU64,
}

impl Tunnel {
    fn new(websocket: bool, keep: usize) -> Tunnel {
        Tunnel {
            websocket,
            keep,
            activity: Activity {
                start: Instant::now(),
                last_ms: AtomicU64::new(0),
            },
            to_upstream: AtomicU64::new(0),
            to_client: AtomicU64::new(0),
            client_kept: std::sync::Mutex::default(),
            upstream_kept: std::sync::Mutex::default(),
            client_close: AtomicU64::new(u64::MAX),
            upstream_close: AtomicU64::new(u64::MAX),
            closes: AtomicU64::new(0),
        }
    }

    fn direction<'a>(
        &'a self,
        moved: &'a AtomicU64,
        kept: &'a std::sync::Mutex<Vec<u8>>,
        close_frame_at: &'a AtomicU64,
    ) -> Direction<'a> {
        Direction {
            moved,
            kept,
            close_frame_at,
            closes: &self.closes,
            activity: &self.activity,
            keep: self.keep,
            websocket: self.websocket,
        }
    }

    /// Moves bytes both ways until the tunnel ends; says why it ended.
    async fn run(
        &self,
        client: Upgraded,
        upstream: Upgraded,
        idle: Option<Duration>,
        stop: &CancellationToken,
    ) -> Closed {
        let (cr, cw) = tokio::io::split(TokioIo::new(client));
        let (ur, uw) = tokio::io::split(TokioIo::new(upstream));
        let up = pump(
            cr,
            uw,
            self.direction(&self.to_upstream, &self.client_kept, &self.client_close),
        );
        let down = pump(
            ur,
            cw,
            self.direction(&self.to_client, &self.upstream_kept, &self.upstream_close),
        );
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        let mut closed = None;
        let linger = tokio::time::sleep(LINGER);
        tokio::pin!(linger);
        let mut lingering = false;
        loop {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    closed.get_or_insert(match r.result {
                        Ok(()) => Closed::Client,
                        Err(e) => Closed::ClientFailed(e.to_string()),
                    });
                }
                r = &mut down, if !down_done => {
                    down_done = true;
                    closed.get_or_insert(match r.result {
                        Ok(()) => Closed::Upstream,
                        Err(e) => Closed::UpstreamFailed(e.to_string()),
                    });
                }
                () = &mut linger, if lingering => break,
                // Once a side has closed, the tunnel has ended: what comes after is not the cause.
                () = self.activity.silent_for(idle) => {
                    closed.get_or_insert(Closed::Idle(idle.unwrap_or_default()));
                    break;
                }
                () = stop.cancelled() => {
                    closed.get_or_insert(Closed::Interrupted);
                    break;
                }
            }
            let failed = matches!(
                closed,
                Some(Closed::ClientFailed(_) | Closed::UpstreamFailed(_))
            );
            if failed || (up_done && down_done) {
                break;
            }
            if !lingering {
                lingering = true;
                linger.as_mut().reset((Instant::now() + LINGER).into());
            }
        }
        closed.unwrap_or(Closed::Interrupted)
    }

    /// The tunnel's end. In a WebSocket, the side that sent the first close frame ended the
    /// conversation, even when the other side then dropped the connection first.
    fn end(self, closed: Closed) -> TunnelEnd {
        let order = |a: &AtomicU64| Some(a.load(Ordering::Relaxed)).filter(|&t| t != u64::MAX);
        let closed = match closed {
            Closed::Client | Closed::Upstream => {
                match (order(&self.client_close), order(&self.upstream_close)) {
                    (Some(c), Some(u)) if u < c => Closed::Upstream,
                    (Some(_), _) => Closed::Client,
                    (None, Some(_)) => Closed::Upstream,
                    (None, None) => closed,
                }
            }
            other => other,
        };
        TunnelEnd {
            to_upstream: self.to_upstream.load(Ordering::Relaxed),
            to_client: self.to_client.load(Ordering::Relaxed),
            closed,
            client_sent: take(&self.client_kept),
            upstream_sent: take(&self.upstream_kept),
        }
    }
}

fn take(kept: &std::sync::Mutex<Vec<u8>>) -> Vec<u8> {
    std::mem::take(
        &mut *kept
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
}

/// The final update of a tunnel: `success` when it closed from either end, else failed with the
/// cause; the response payload describes the tunnel (sanitized and within `cap`).
pub(super) fn outcome(
    end: &TunnelEnd,
    protocol: &str,
    captured: bool,
    sanitizer: &Sanitizer,
    cap: usize,
) -> Outcome {
    let failed = |code: &str, detail: String| (Status::Failed, Some(code.to_owned()), Some(detail));
    let (status, error_code, error_detail) = match &end.closed {
        Closed::Client | Closed::Upstream => (Status::Success, None, None),
        Closed::Idle(d) => failed("TIMEOUT", format!("tunnel idle for {} ms", d.as_millis())),
        Closed::Interrupted => failed(
            "INTERRUPTED",
            "trace-proxy shut down while the tunnel was open".into(),
        ),
        Closed::ClientFailed(e) => failed(
            "CLIENT_ABORTED",
            format!("client side of the tunnel failed: {e}"),
        ),
        Closed::UpstreamFailed(e) => failed(
            "UPSTREAM_ABORTED",
            format!("upstream side of the tunnel failed: {e}"),
        ),
        Closed::NotJoined(e) => failed(
            "UPSTREAM_ABORTED",
            format!("the upgraded connection could not be joined: {e}"),
        ),
    };
    let mut tunnel = json!({
        "protocol": protocol,
        "closed_by": end.closed.name(),
        "bytes_to_upstream": end.to_upstream,
        "bytes_to_client": end.to_client,
    });
    if captured {
        let sent = |bytes: &[u8]| match protocol {
            "websocket" => Value::Array(websocket_messages(bytes)),
            _ => Value::String(String::from_utf8_lossy(bytes).into_owned()),
        };
        tunnel["client_sent"] = sent(&end.client_sent);
        tunnel["upstream_sent"] = sent(&end.upstream_sent);
    }
    let described = json!({ "_tunnel": tunnel });
    let bytes = serde_json::to_vec(&described).unwrap_or_default();
    let Stored {
        value,
        redactions,
        truncated,
    } = sanitizer.payload(
        BodySample {
            bytes: &bytes,
            total_bytes: None,
            cut: false,
            content_type: Some("application/json"),
            content_encoding: None,
        },
        cap,
    );
    Outcome {
        status,
        error_code,
        error_detail,
        http_status: Some(101),
        response_payload: value,
        n8n_execution_id: None,
        response_bytes: end.to_client,
        response_redactions: redactions,
        response_truncated: truncated,
    }
}

/// The WebSocket messages (RFC 6455 §5.2) at the start of one direction: text as text, the rest
/// described; a frame cut by the capture is marked `partial`.
fn websocket_messages(mut bytes: &[u8]) -> Vec<Value> {
    let mut out = Vec::new();
    while !bytes.is_empty() && out.len() < MAX_MESSAGES {
        let Some((frame, rest)) = WsFrame::parse(bytes) else {
            out.push(json!({"partial": true, "bytes": bytes.len()}));
            break;
        };
        bytes = rest;
        out.push(frame.describe());
    }
    out
}

struct WsFrame {
    opcode: u8,
    compressed: bool,
    payload: Vec<u8>,
}

impl WsFrame {
    /// One whole frame at the start of `b`, unmasked, and what follows it.
    fn parse(b: &[u8]) -> Option<(WsFrame, &[u8])> {
        let (&b0, &b1) = (b.first()?, b.get(1)?);
        let masked = b1 & 0x80 != 0;
        let (len, mut at) = match b1 & 0x7f {
            126 => (u64::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])), 4),
            127 => {
                let raw: [u8; 8] = b.get(2..10)?.try_into().ok()?;
                (u64::from_be_bytes(raw), 10)
            }
            n => (u64::from(n), 2),
        };
        let mask: Option<[u8; 4]> = match masked {
            true => {
                let m = b.get(at..at + 4)?.try_into().ok()?;
                at += 4;
                Some(m)
            }
            false => None,
        };
        let end = at.checked_add(usize::try_from(len).ok()?)?;
        let mut payload = b.get(at..end)?.to_vec();
        if let Some(m) = mask {
            for (i, byte) in payload.iter_mut().enumerate() {
                *byte ^= m[i % 4];
            }
        }
        let frame = WsFrame {
            opcode: b0 & 0x0f,
            compressed: b0 & 0x40 != 0,
            payload,
        };
        Some((frame, b.get(end..)?))
    }

    fn describe(&self) -> Value {
        let n = self.payload.len();
        if self.compressed {
            return json!({"compressed_bytes": n});
        }
        match self.opcode {
            0x1 | 0x0 => json!({"text": String::from_utf8_lossy(&self.payload)}),
            0x2 => json!({"binary_bytes": n}),
            0x8 => {
                let code = self
                    .payload
                    .get(..2)
                    .map(|c| u16::from_be_bytes([c[0], c[1]]));
                json!({"close": code})
            }
            0x9 => json!({"ping_bytes": n}),
            0xA => json!({"pong_bytes": n}),
            op => json!({"opcode": op, "bytes": n}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_and_unmasked_frames_are_read_and_a_cut_one_is_marked() {
        // "Hi" masked (client to server), then "ok" unmasked, then a close with 1000.
        let mask = [1u8, 2, 3, 4];
        let mut b = vec![0x81, 0x82];
        b.extend_from_slice(&mask);
        b.extend([b'H' ^ 1, b'i' ^ 2]);
        b.extend([0x81, 0x02, b'o', b'k']);
        b.extend([0x88, 0x02, 0x03, 0xE8]);
        b.extend([0x82, 0x7E, 0x01]);
        let m = websocket_messages(&b);
        assert_eq!(m[0], json!({"text": "Hi"}));
        assert_eq!(m[1], json!({"text": "ok"}));
        assert_eq!(m[2], json!({"close": 1000}));
        assert_eq!(m[3], json!({"partial": true, "bytes": 3}));
    }

    #[test]
    fn only_an_http11_connection_upgrade_is_an_upgrade() {
        let parts = |version, connection: &str| {
            let (p, ()) = http::Request::get("/rest/push")
                .version(version)
                .header("connection", connection)
                .header("upgrade", "websocket")
                .body(())
                .expect("request")
                .into_parts();
            p
        };
        let ws = HeaderValue::from_static("websocket");
        assert_eq!(
            requested(&parts(http::Version::HTTP_11, "keep-alive, Upgrade")),
            Some(ws)
        );
        assert_eq!(
            requested(&parts(http::Version::HTTP_11, "keep-alive")),
            None
        );
        assert_eq!(requested(&parts(http::Version::HTTP_2, "upgrade")), None);
    }
}
