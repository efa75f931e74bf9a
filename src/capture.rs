//! Capped body capture.
//!
//! [`TeeBody`] passes every frame through as soon as it arrives, copying at most `cap` bytes
//! aside, and reports how the body ended exactly once: on the end of stream, on an error, or —
//! when dropped first (client gone) — as aborted. It does no I/O in `poll`: the report is handed
//! to an [`OnEnd`] sink that only sends on a channel.
//!
//! [`read_prefix`] reads the start of a request body (up to the cap) before the pending row is
//! written; [`RequestBody`] then forwards that prefix followed by the rest, counting bytes and
//! enforcing the request size limit as it streams.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use crate::error::error_chain;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The first bytes of a body, capped, with the total seen.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub bytes: Vec<u8>,
    pub cap: usize,
    pub total: u64,
}

impl Captured {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            bytes: Vec::new(),
            cap,
            total: 0,
        }
    }

    fn observe(&mut self, data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.cap.saturating_sub(self.bytes.len());
        if room > 0 {
            self.bytes.extend_from_slice(&data[..room.min(data.len())]);
        }
    }

    /// True when the body had more bytes than were kept.
    pub(crate) fn cut(&self) -> bool {
        self.total > self.bytes.len() as u64
    }
}

/// How a streamed body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyEnd {
    Complete,
    /// The upstream failed mid-body (reset, protocol error).
    Error(String),
    /// No frame for longer than the idle timeout.
    IdleTimeout,
    /// Dropped before its end: the client went away.
    Aborted,
}

/// Receives the end of a body, exactly once. Must not block or do I/O.
pub(crate) trait OnEnd: Send + 'static {
    fn on_end(self, end: BodyEnd, captured: Captured);
}

pin_project! {
    /// A pass-through body that keeps a capped copy and reports its end exactly once.
    pub struct TeeBody<B: Body, E: OnEnd> {
        #[pin]
        inner: B,
        captured: Captured,
        sink: Option<E>,
        // The idle timeout and its timer, armed at the start and moved on only when it fires: a
        // frame just notes its time, so a stream of small frames does no timer work per frame.
        idle: Option<(Duration, Pin<Box<Sleep>>)>,
        last_frame: Instant,
    }

    impl<B: Body, E: OnEnd> PinnedDrop for TeeBody<B, E> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(sink) = this.sink.take() {
                // Bodies that are already at their end (e.g. empty) were delivered whole.
                let end = if this.inner.is_end_stream() { BodyEnd::Complete } else { BodyEnd::Aborted };
                sink.on_end(end, std::mem::take(this.captured));
            }
        }
    }
}

impl<B: Body, E: OnEnd> TeeBody<B, E> {
    pub(crate) fn new(inner: B, cap: usize, idle_timeout: Option<Duration>, sink: E) -> Self {
        Self {
            inner,
            captured: Captured::new(cap),
            sink: Some(sink),
            idle: idle_timeout.map(|d| (d, Box::pin(tokio::time::sleep(d)))),
            last_frame: Instant::now(),
        }
    }
}

/// Polls the idle timer; true when `timeout` has passed since `last_frame`. When the timer
/// fires early (frames came since it was armed), it is moved to `last_frame + timeout` and
/// polled again, so the task is woken then.
fn idle_expired(
    idle: &mut Pin<Box<Sleep>>,
    last_frame: Instant,
    timeout: Duration,
    cx: &mut Context<'_>,
) -> bool {
    while idle.as_mut().poll(cx).is_ready() {
        let due = last_frame + timeout;
        if due <= idle.deadline() {
            return true;
        }
        idle.as_mut().reset(due);
    }
    false
}

impl<B, E> Body for TeeBody<B, E>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    E: OnEnd,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let finish = |sink: &mut Option<E>, captured: &mut Captured, end: BodyEnd| {
            if let Some(sink) = sink.take() {
                sink.on_end(end, std::mem::take(captured));
            }
        };
        match this.inner.as_mut().poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.captured.observe(data);
                }
                if this.idle.is_some() {
                    *this.last_frame = Instant::now();
                }
                if this.inner.is_end_stream() {
                    finish(this.sink, this.captured, BodyEnd::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                finish(this.sink, this.captured, BodyEnd::Error(error_chain(&*e)));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                finish(this.sink, this.captured, BodyEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some((timeout, idle)) = this.idle.as_mut() {
                    if idle_expired(idle, *this.last_frame, *timeout, cx) {
                        finish(this.sink, this.captured, BodyEnd::IdleTimeout);
                        return Poll::Ready(Some(Err("upstream body idle timeout".into())));
                    }
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Shared counters of a forwarded request body, read when the attempt ends.
#[derive(Debug, Default)]
pub(crate) struct RequestStats {
    pub bytes: AtomicU64,
    pub over_limit: AtomicBool,
    /// Set when the client's own body stream failed (it disconnected mid-upload): the failure
    /// is the client's, whatever the upstream exchange reports.
    pub client_error: std::sync::OnceLock<String>,
}

/// Why reading the start of a request body failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PrefixError {
    #[error("request body exceeds the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("request body not received within {0:?}")]
    Timeout(Duration),
    #[error("request body stream failed: {0}")]
    Client(String),
}

/// The start of a request body, read before the pending row is written.
pub(crate) struct Prefix<B> {
    pub frames: VecDeque<Frame<Bytes>>,
    pub captured: Captured,
    /// The rest of the body, `None` when it was read to its end.
    pub rest: Option<B>,
}

/// Reads frames until `cap` bytes are held or the body ends. Never holds more than `cap` plus
/// one frame.
pub(crate) async fn read_prefix<B>(
    mut body: B,
    cap: usize,
    limit: Option<u64>,
    timeout: Duration,
) -> (Result<(), PrefixError>, Prefix<B>)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut prefix = Prefix {
        frames: VecDeque::new(),
        captured: Captured::new(cap),
        rest: None,
    };
    let deadline = Instant::now() + timeout;
    let mut ended = body.is_end_stream();
    while !ended && prefix.captured.total < cap as u64 {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return (Err(PrefixError::Timeout(timeout)), prefix),
            Ok(None) => ended = true,
            Ok(Some(Err(e))) => {
                let e: BoxError = e.into();
                return (Err(PrefixError::Client(error_chain(&*e))), prefix);
            }
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    prefix.captured.observe(data);
                }
                prefix.frames.push_back(frame);
                ended = body.is_end_stream();
            }
        }
        if let Some(limit) = limit {
            if prefix.captured.total > limit {
                return (Err(PrefixError::TooLarge { limit }), prefix);
            }
        }
    }
    if !ended {
        prefix.rest = Some(body);
    }
    (Ok(()), prefix)
}

/// A request body held whole in memory, so a retry can send it again.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    frames: Vec<ReplayFrame>,
    total: u64,
}

#[derive(Debug, Clone)]
enum ReplayFrame {
    Data(Bytes),
    Trailers(http::HeaderMap),
}

impl<B> Prefix<B> {
    /// The whole body as a replay buffer of at most `max` bytes; `None` for a larger body
    /// (part of it may still be unread, and can be sent only once).
    pub(crate) fn replay(&self, max: usize) -> Option<Replay> {
        if self.rest.is_some() || self.captured.total > max as u64 {
            return None;
        }
        let frames = self
            .frames
            .iter()
            .filter_map(|f| match (f.data_ref(), f.trailers_ref()) {
                (Some(d), _) => Some(ReplayFrame::Data(d.clone())),
                (None, Some(t)) => Some(ReplayFrame::Trailers(t.clone())),
                (None, None) => None,
            })
            .collect();
        Some(Replay {
            frames,
            total: self.captured.total,
        })
    }
}

/// Reads a response body that will not reach the client (a retried attempt's), keeping at most
/// `cap` bytes for its row. Stops at the cap or when no frame arrives within `idle`.
pub(crate) async fn drain_capped<B>(mut body: B, cap: usize, idle: Duration) -> (BodyEnd, Captured)
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut captured = Captured::new(cap);
    loop {
        if body.is_end_stream() || captured.total >= cap as u64 {
            return (BodyEnd::Complete, captured);
        }
        match tokio::time::timeout(idle, body.frame()).await {
            Err(_) => return (BodyEnd::IdleTimeout, captured),
            Ok(None) => return (BodyEnd::Complete, captured),
            Ok(Some(Err(e))) => {
                let e: BoxError = e.into();
                return (BodyEnd::Error(error_chain(&*e)), captured);
            }
            Ok(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    captured.observe(d);
                }
            }
        }
    }
}

pin_project! {
    /// The request body sent upstream: the prefix read for D1, then the rest as it streams.
    pub struct RequestBody<B> {
        frames: VecDeque<Frame<Bytes>>,
        #[pin]
        rest: Option<B>,
        limit: Option<u64>,
        stats: Arc<RequestStats>,
    }
}

impl<B: Body> RequestBody<B> {
    /// A body sent again from its replay buffer.
    pub(crate) fn replay(replay: &Replay, stats: Arc<RequestStats>) -> Self {
        stats.bytes.store(replay.total, Ordering::Relaxed);
        let frames = replay
            .frames
            .iter()
            .map(|f| match f {
                ReplayFrame::Data(d) => Frame::data(d.clone()),
                ReplayFrame::Trailers(t) => Frame::trailers(t.clone()),
            })
            .collect();
        Self {
            frames,
            rest: None,
            limit: None,
            stats,
        }
    }

    pub(crate) fn new(prefix: Prefix<B>, limit: Option<u64>, stats: Arc<RequestStats>) -> Self {
        stats.bytes.store(prefix.captured.total, Ordering::Relaxed);
        Self {
            frames: prefix.frames,
            rest: prefix.rest,
            limit,
            stats,
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(frame) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        let Some(rest) = this.rest.as_pin_mut() else {
            return Poll::Ready(None);
        };
        match rest.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    let total = this.stats.bytes.fetch_add(n, Ordering::Relaxed) + n;
                    if this.limit.is_some_and(|l| total > l) {
                        this.stats.over_limit.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err("request body exceeds the limit".into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                let e: BoxError = e.into();
                let _ = this.stats.client_error.set(error_chain(&*e));
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(r) => {
                let h = r.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + buffered);
                if let Some(u) = h.upper() {
                    out.set_upper(u + buffered);
                }
                out
            }
        }
    }
}

#[cfg(test)]
#[expect(clippy::disallowed_methods, reason = "tests read whole, small bodies")]
mod tests {
    use super::*;
    use http_body_util::{Full, StreamBody};
    use std::sync::Mutex;

    type Ends = Vec<(BodyEnd, Vec<u8>, u64)>;
    type TestStream =
        StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, BoxError>>>>;

    #[derive(Clone, Default)]
    struct Record(Arc<Mutex<Ends>>);
    impl OnEnd for Record {
        fn on_end(self, end: BodyEnd, c: Captured) {
            if let Ok(mut v) = self.0.lock() {
                v.push((end, c.bytes, c.total));
            }
        }
    }

    fn chunks(parts: &[&'static str]) -> TestStream {
        let v: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(v))
    }

    #[tokio::test]
    async fn tee_passes_everything_and_caps_the_copy() {
        let rec = Record::default();
        let body = TeeBody::new(chunks(&["hello ", "world"]), 8, None, rec.clone());
        let out = body.collect().await.expect("ok").to_bytes();
        assert_eq!(&out[..], b"hello world");
        let got = rec.0.lock().expect("lock").clone();
        assert_eq!(got, vec![(BodyEnd::Complete, b"hello wo".to_vec(), 11)]);
    }

    #[tokio::test]
    async fn tee_dropped_midway_reports_aborted_once() {
        let rec = Record::default();
        let mut body = TeeBody::new(chunks(&["a", "b"]), 8, None, rec.clone());
        let first = body.frame().await;
        assert!(first.is_some());
        drop(body);
        let got = rec.0.lock().expect("lock").clone();
        assert_eq!(got, vec![(BodyEnd::Aborted, b"a".to_vec(), 1)]);
    }

    #[tokio::test]
    async fn tee_of_empty_body_dropped_unpolled_is_complete() {
        let rec = Record::default();
        drop(TeeBody::new(Full::new(Bytes::new()), 8, None, rec.clone()));
        assert_eq!(rec.0.lock().expect("lock")[0].0, BodyEnd::Complete);
    }

    /// A body whose frames come at the given delays (ms after the one before), then ends.
    fn paced(delays: &'static [u64]) -> impl Body<Data = Bytes, Error = BoxError> {
        let frames = futures_util::stream::unfold(0usize, move |i| async move {
            let delay = *delays.get(i)?;
            tokio::time::sleep(Duration::from_millis(delay)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
                i + 1,
            ))
        });
        StreamBody::new(frames)
    }

    #[tokio::test(start_paused = true)]
    async fn idle_timeout_counts_from_the_last_frame_not_the_first() {
        let timeout = Some(Duration::from_millis(100));
        // Ten frames 60 ms apart: 600 ms in all, never 100 ms without a frame.
        let rec = Record::default();
        let steady = TeeBody::new(paced(&[60; 10]), 64, timeout, rec.clone());
        let out = steady.collect().await.expect("no idle timeout").to_bytes();
        assert_eq!(out.len(), 10);
        assert_eq!(rec.0.lock().expect("lock")[0].0, BodyEnd::Complete);

        // Three frames 60 ms apart, then a 150 ms gap: the timeout trips 100 ms after the third
        // frame (at 280 ms), not 100 ms after the start or the first frame.
        let rec = Record::default();
        let start = Instant::now();
        let stalled = TeeBody::new(paced(&[60, 60, 60, 150]), 64, timeout, rec.clone());
        assert!(stalled.collect().await.is_err());
        assert_eq!(start.elapsed(), Duration::from_millis(280));
        let got = rec.0.lock().expect("lock").clone();
        assert_eq!(got, vec![(BodyEnd::IdleTimeout, b"xxx".to_vec(), 3)]);
    }

    #[tokio::test]
    async fn prefix_then_rest_forwards_all_bytes() {
        let (res, prefix) = read_prefix(
            chunks(&["abc", "def", "ghi"]),
            4,
            None,
            Duration::from_secs(1),
        )
        .await;
        assert!(res.is_ok());
        assert_eq!(prefix.captured.bytes, b"abcd");
        let stats = Arc::new(RequestStats::default());
        let body = RequestBody::new(prefix, None, stats.clone());
        let out = body.collect().await.expect("ok").to_bytes();
        assert_eq!(&out[..], b"abcdefghi");
        assert_eq!(stats.bytes.load(Ordering::Relaxed), 9);
    }

    #[tokio::test]
    async fn replay_sends_the_same_bytes_again_and_only_whole_bodies_replay() {
        let (_, prefix) =
            read_prefix(chunks(&["ab", "cd"]), 16, None, Duration::from_secs(1)).await;
        let replay = prefix.replay(16).expect("whole body");
        for _ in 0..2 {
            let stats = Arc::new(RequestStats::default());
            let body = RequestBody::<TestStream>::replay(&replay, stats.clone());
            assert_eq!(&body.collect().await.expect("ok").to_bytes()[..], b"abcd");
            assert_eq!(stats.bytes.load(Ordering::Relaxed), 4);
        }
        let (_, big) =
            read_prefix(chunks(&["ab", "cd", "ef"]), 3, None, Duration::from_secs(1)).await;
        assert!(big.replay(3).is_none());
        let one = Full::new(Bytes::from_static(b"abcdef"));
        let (_, one_frame) = read_prefix(one, 3, None, Duration::from_secs(1)).await;
        assert!(one_frame.rest.is_none());
        assert!(
            one_frame.replay(3).is_none(),
            "read whole, but larger than the buffer"
        );
    }

    #[tokio::test]
    async fn request_body_over_limit_errors_and_flags() {
        let (res, prefix) = read_prefix(
            chunks(&["abc", "def", "ghi"]),
            2,
            Some(5),
            Duration::from_secs(1),
        )
        .await;
        assert!(res.is_ok());
        let stats = Arc::new(RequestStats::default());
        let body = RequestBody::new(prefix, Some(5), stats.clone());
        assert!(body.collect().await.is_err());
        assert!(stats.over_limit.load(Ordering::Relaxed));
    }
}
