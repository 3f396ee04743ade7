//! What one partner connection is doing, for its timeouts: requests in flight, when the last one
//! ended (the idle timeout), and when the first byte of a request head arrived (the header read
//! timeout).
//!
//! hyper's own HTTP/1.1 `header_read_timeout` starts when it begins waiting for a head, so it
//! also runs while a keep-alive connection sits idle between requests: with 10 s it closed every
//! idle keep-alive connection after 10 s, whatever `idle_timeout_secs` said. Here the header
//! clock starts at the first byte read while no request is in flight, which is the first byte of
//! the next head: a slow-loris head is still cut off at its limit, an idle connection is not.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 connection preface: its connections have no request heads to time.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// Requests in flight on one connection, when the last one ended, and when an unfinished request
/// head began. A connection is idle only with nothing in flight.
pub struct Activity {
    in_flight: AtomicUsize,
    epoch: Instant,
    /// Milliseconds since `epoch` when the last request ended (0 at the start).
    last_ms: AtomicU64,
    /// Milliseconds since `epoch`, plus one, of the first byte read since the last request head
    /// was complete (0: none).
    head_started: AtomicU64,
    /// Whether request heads are timed: HTTP/1.x only (HTTP/2 reads pings, settings and window
    /// updates between requests).
    head_clock: AtomicBool,
    first_read_seen: AtomicBool,
}

impl Activity {
    /// `http2`: whether ALPN chose HTTP/2 (no head clock).
    pub fn new(http2: bool) -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            head_clock: AtomicBool::new(!http2),
            first_read_seen: AtomicBool::new(false),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A request head is complete and its request is being served.
    pub fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.head_started.store(0, Ordering::SeqCst);
    }

    /// A request was answered.
    pub fn end(&self) {
        self.last_ms.store(self.now_ms(), Ordering::SeqCst);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// How long the connection has had nothing in flight.
    pub fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(
            self.now_ms()
                .saturating_sub(self.last_ms.load(Ordering::SeqCst)),
        )
    }

    /// Whether a request head began more than `limit` ago and is still not complete.
    pub fn head_overdue(&self, limit: Duration) -> bool {
        if !self.head_clock.load(Ordering::SeqCst) || self.in_flight.load(Ordering::SeqCst) > 0 {
            return false;
        }
        match self.head_started.load(Ordering::SeqCst) {
            0 => false,
            started => {
                let since = self.now_ms().saturating_sub(started - 1);
                Duration::from_millis(since) >= limit
            }
        }
    }

    fn bytes_read(&self, data: &[u8]) {
        if data.is_empty() || !self.head_clock.load(Ordering::Relaxed) {
            return;
        }
        if !self.first_read_seen.swap(true, Ordering::SeqCst) && data.starts_with(H2_PREFACE) {
            // HTTP/2 with prior knowledge (no ALPN): no heads to time. Only the whole preface
            // counts: a first read of "P" may as well be the start of "POST".
            self.head_clock.store(false, Ordering::SeqCst);
            return;
        }
        // Bytes read with a request in flight are its body (or a pipelined head, whose clock
        // starts when the request before it ends and the next byte comes).
        if self.in_flight.load(Ordering::SeqCst) == 0 {
            let now = self.now_ms().saturating_add(1);
            let _ = self
                .head_started
                .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

/// A connection's byte stream, telling its [`Activity`] what is read.
pub struct ActivityIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> ActivityIo<T> {
    pub fn new(inner: T, activity: Arc<Activity>) -> ActivityIo<T> {
        ActivityIo { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ActivityIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled {
            this.activity.bytes_read(&buf.filled()[before..]);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ActivityIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_has_no_head_clock_running() {
        let a = Activity::new(false);
        a.begin();
        a.bytes_read(b"{\"body\": 1}");
        a.end();
        assert!(
            !a.head_overdue(Duration::ZERO),
            "body bytes started the clock"
        );
    }

    #[test]
    fn the_first_byte_of_a_head_starts_the_clock_and_its_completion_stops_it() {
        let a = Activity::new(false);
        a.bytes_read(b"POST /v1/rec");
        assert!(a.head_overdue(Duration::ZERO));
        assert!(!a.head_overdue(Duration::from_secs(3600)));
        a.begin();
        assert!(!a.head_overdue(Duration::ZERO));
        a.end();
        a.bytes_read(b"POST /v1/rec");
        assert!(a.head_overdue(Duration::ZERO), "the next head is timed too");
    }

    #[test]
    fn http2_connections_time_no_heads() {
        let alpn = Activity::new(true);
        alpn.bytes_read(b"\x00\x00\x00\x04\x01");
        assert!(!alpn.head_overdue(Duration::ZERO));
        let prior_knowledge = Activity::new(false);
        prior_knowledge.bytes_read(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        prior_knowledge.bytes_read(b"\x00\x00\x00\x04\x01");
        assert!(!prior_knowledge.head_overdue(Duration::ZERO));
        let dribbled = Activity::new(false);
        dribbled.bytes_read(b"P");
        assert!(
            dribbled.head_overdue(Duration::ZERO),
            "one byte passed for HTTP/2"
        );
    }
}
