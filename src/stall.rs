//! Time limits on a client connection's bytes. A client that stops reading is cut: writes that
//! make no progress for the send timeout fail, so hyper ends the connection, the response body is
//! dropped (its row finished as the client's abort) and the upstream connection is released. An
//! HTTP/2 connection with no request in flight for the idle timeout is closed the same way (an
//! HTTP/1.1 one is closed at the header deadline instead); its pings do not keep it open.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use std::time::Instant;

use std::future::Future;

use hyper::rt::{Read, ReadBufCursor, Write};
use tokio::time::Sleep;

/// `io` whose writes must make progress within `limit`.
pub(crate) struct StallGuard<T> {
    io: T,
    limit: Duration,
    /// Armed while a write waits; reset by any progress.
    stalled: Option<Pin<Box<Sleep>>>,
    /// The connection's requests in flight, and how long it may stay without one.
    idle: Option<(Arc<InFlight>, Duration)>,
    /// Armed while a read waits with no request in flight.
    idle_timer: Option<Pin<Box<Sleep>>>,
}

/// The requests in flight on one connection, and since when it has had none.
pub(crate) struct InFlight {
    requests: AtomicUsize,
    start: Instant,
    /// Milliseconds after `start` when the last request ended.
    idle_since_ms: AtomicU64,
}

impl InFlight {
    pub(crate) fn new() -> Arc<InFlight> {
        Arc::new(InFlight {
            requests: AtomicUsize::new(0),
            start: Instant::now(),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    /// A request began; it ends when the returned guard (held by its response body) drops.
    pub(crate) fn begin(self: &Arc<Self>) -> RequestGuard {
        self.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// When the connection may be closed for idleness; `None` while a request is in flight.
    fn idle_deadline(&self, limit: Duration) -> Option<tokio::time::Instant> {
        if self.requests.load(Ordering::Relaxed) > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed));
        Some((self.start + since + limit).into())
    }
}

/// Marks one request as in flight until dropped.
pub(crate) struct RequestGuard(Arc<InFlight>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let f = &self.0;
        let ms = u64::try_from(f.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        f.idle_since_ms.store(ms, Ordering::Relaxed);
        f.requests.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<T> StallGuard<T> {
    pub(crate) fn new(io: T, limit: Duration) -> StallGuard<T> {
        StallGuard {
            io,
            limit,
            stalled: None,
            idle: None,
            idle_timer: None,
        }
    }

    /// Also closes the connection once it has had no request in flight for `limit`.
    pub(crate) fn with_idle_timeout(mut self, in_flight: Arc<InFlight>, limit: Duration) -> Self {
        self.idle = Some((in_flight, limit));
        self
    }
}

impl<T: Read + Unpin> Read for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        let Some((in_flight, limit)) = &this.idle else {
            return r;
        };
        let deadline = match (r.is_pending(), in_flight.idle_deadline(*limit)) {
            (true, Some(d)) => d,
            _ => {
                this.idle_timer = None;
                return r;
            }
        };
        let timer = this
            .idle_timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no request for {} s", limit.as_secs()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T> StallGuard<T> {
    /// What a write returned: progress disarms the timer; waiting arms it, and fails once it
    /// has run out.
    fn progress<R>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let limit = self.limit;
        let sleep = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {} ms", limit.as_millis()),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: Write + Unpin> Write for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.progress(cx, r)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        self.progress(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.progress(cx, r)
    }
}
