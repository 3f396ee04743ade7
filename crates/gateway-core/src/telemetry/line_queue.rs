//! The log's lines on their way to stderr: a bounded in-memory queue and one writer thread that
//! empties it.
//!
//! A request thread appends its formatted line to the queue under a short lock, and wakes the
//! writer only when the writer is waiting for work: under load the writer takes every line queued
//! since its last write, writes them with one system call, and then sleeps [`GATHER`] before
//! looking again, so a busy gateway pays about one write and one wake-up per `GATHER`, not one per
//! access-log line (tracing-appender's non-blocking writer woke its thread for nearly every line:
//! a context switch per record, see docs/benchmarks.md). An idle gateway's first line is written
//! at once. A stalled sink (a full pipe, a stopped journald) never blocks a request: once
//! [`MAX_QUEUED_BYTES`] are waiting, further lines are dropped and counted, and a line saying how
//! many were dropped is written when the sink takes lines again. The audit log, not this log, is
//! the record of every decision.

use std::io::{self, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// How long the writer lets lines gather after a write before it looks again.
pub const GATHER: Duration = Duration::from_millis(10);

/// Bytes of lines queued at most (about 30,000 access-log lines); lines beyond are dropped.
pub const MAX_QUEUED_BYTES: usize = 8 * 1024 * 1024;

struct Queue {
    lines: Vec<u8>,
    /// Lines dropped since the last write because the queue was full.
    dropped: u64,
    /// The writer is blocked waiting for a line (and must be woken by the next one).
    writer_waiting: bool,
    /// The guard was dropped: write what is left and stop.
    closing: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    max_bytes: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A thread that panicked while holding the lock left whole lines (appends are one
        // `extend`): the queue is still usable.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Where the log subscriber writes its lines (each event is one `write_all` of one line).
#[derive(Clone)]
pub struct LineWriter(Arc<Shared>);

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut q = self.0.lock();
        if q.lines.len() + line.len() > self.0.max_bytes {
            q.dropped += 1;
        } else {
            q.lines.extend_from_slice(line);
        }
        if q.writer_waiting {
            q.writer_waiting = false;
            self.0.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LineWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Keeps the writer thread running; dropping it writes every queued line and ends the thread.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closing = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the writer thread over `sink` (stderr in the gateway).
pub fn start<W: Write + Send + 'static>(sink: W) -> io::Result<(LineWriter, LogGuard)> {
    start_with(sink, MAX_QUEUED_BYTES, GATHER)
}

fn start_with<W: Write + Send + 'static>(
    mut sink: W,
    max_bytes: usize,
    gather: Duration,
) -> io::Result<(LineWriter, LogGuard)> {
    let shared = Arc::new(Shared {
        queue: Mutex::new(Queue {
            lines: Vec::with_capacity(64 * 1024),
            dropped: 0,
            writer_waiting: false,
            closing: false,
        }),
        wake: Condvar::new(),
        max_bytes,
    });
    let queue = shared.clone();
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_lines(&queue, &mut sink, gather))?;
    Ok((
        LineWriter(shared.clone()),
        LogGuard {
            shared,
            thread: Some(thread),
        },
    ))
}

/// The writer thread: swaps the queue's lines out under the lock and writes them outside it.
fn write_lines(shared: &Shared, sink: &mut dyn Write, gather: Duration) {
    let mut taken: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        let (dropped, closing) = {
            let mut q = shared.lock();
            while q.lines.is_empty() && q.dropped == 0 && !q.closing {
                q.writer_waiting = true;
                q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            q.writer_waiting = false;
            std::mem::swap(&mut q.lines, &mut taken);
            (std::mem::take(&mut q.dropped), q.closing)
        };
        if dropped > 0 {
            let notice = format!(
                "{{\"level\":\"WARN\",\"target\":\"hetao::telemetry\",\"fields\":{{\"message\":\"{dropped} log lines dropped: the log's sink did not take them fast enough\"}}}}\n"
            );
            taken.extend_from_slice(notice.as_bytes());
        }
        // A failing sink loses these lines; there is nowhere else to report that.
        let _ = sink.write_all(&taken).and_then(|()| sink.flush());
        // Keep a burst's buffer for the next one, but not a huge one.
        taken.clear();
        if taken.capacity() > 1024 * 1024 {
            taken = Vec::with_capacity(64 * 1024);
        }
        if closing && shared.lock().lines.is_empty() {
            return;
        }
        if !closing {
            // Lines written now do not wake the writer (it is not waiting); closing does.
            let q = shared.lock();
            drop(
                shared
                    .wake
                    .wait_timeout_while(q, gather, |q| !q.closing)
                    .map_err(|p| p.into_inner()),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    /// A sink that hands every write to the test.
    struct Tap(mpsc::Sender<Vec<u8>>);

    impl Write for Tap {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.0.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn line(i: usize) -> String {
        format!("{{\"n\":{i}}}\n")
    }

    #[test]
    fn an_idle_writers_first_line_is_written_at_once_without_waiting_for_more() {
        let (tx, rx) = mpsc::channel();
        let (mut w, _guard) = start_with(Tap(tx), 1 << 20, Duration::from_secs(30)).unwrap();
        w.write_all(line(1).as_bytes()).unwrap();
        // Not the 30 s gather: the writer was waiting, so the line woke it.
        let got = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got, line(1).as_bytes());
    }

    #[test]
    fn lines_written_during_a_gather_leave_in_one_write_in_order() {
        let (tx, rx) = mpsc::channel();
        let (mut w, guard) = start_with(Tap(tx), 1 << 20, Duration::from_millis(300)).unwrap();
        w.write_all(line(0).as_bytes()).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // The writer now sleeps: these gather.
        for i in 1..=100 {
            w.write_all(line(i).as_bytes()).unwrap();
        }
        let started = Instant::now();
        let burst = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let expected: String = (1..=100).map(line).collect();
        assert_eq!(String::from_utf8(burst).unwrap(), expected);
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(guard);
        assert!(rx.try_recv().is_err(), "nothing else was written");
    }

    #[test]
    fn dropping_the_guard_writes_every_queued_line_before_it_returns() {
        let (tx, rx) = mpsc::channel();
        let (mut w, guard) = start_with(Tap(tx), 1 << 20, Duration::from_secs(30)).unwrap();
        w.write_all(line(0).as_bytes()).unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        // The writer sleeps for 30 s now; closing must not wait for that.
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let mut w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..250 {
                        w.write_all(line(t * 1000 + i).as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let started = Instant::now();
        drop(guard);
        assert!(started.elapsed() < Duration::from_secs(10));
        let all: String = rx
            .try_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        let got: Vec<&str> = all.lines().collect();
        assert_eq!(got.len(), 1000);
        // Each thread's lines stay whole and in its order.
        for t in 0..4 {
            let mine: Vec<String> = got
                .iter()
                .filter(|l| {
                    let n: usize = l[5..l.len() - 1].parse().unwrap();
                    n / 1000 == t
                })
                .map(|l| l.to_string())
                .collect();
            let want: Vec<String> = (0..250)
                .map(|i| line(t * 1000 + i).trim_end().to_string())
                .collect();
            assert_eq!(mine, want);
        }
    }

    /// A sink that blocks until the test lets it go.
    struct Stalled {
        release: mpsc::Receiver<()>,
        out: mpsc::Sender<Vec<u8>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let _ = self.release.recv();
            let _ = self.out.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_sink_costs_bounded_memory_and_the_dropped_lines_are_counted() {
        let (release, released) = mpsc::channel();
        let (out, written) = mpsc::channel();
        let stalled = Stalled {
            release: released,
            out,
        };
        let (mut w, guard) = start_with(stalled, 1000, Duration::from_millis(1)).unwrap();
        // Declared after the guard, so dropped before it if an assertion fails: the sink then
        // stops waiting and the guard's join returns.
        let release = release;
        w.write_all(b"first\n").unwrap();
        // Wait until the writer is stuck in the sink with "first".
        let deadline = Instant::now() + Duration::from_secs(5);
        while !w.0.lock().lines.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let started = Instant::now();
        for i in 0..1000 {
            w.write_all(line(i).as_bytes()).unwrap();
        }
        // Writing never waited for the sink, and the queue stayed within its bound.
        assert!(started.elapsed() < Duration::from_secs(5));
        let (queued, dropped) = {
            let q = w.0.lock();
            (q.lines.len(), q.dropped)
        };
        assert!(queued <= 1000, "{queued} bytes queued");
        assert!(dropped > 0);
        let kept = w.0.lock().lines.iter().filter(|&&b| b == b'\n').count();
        assert_eq!(kept as u64 + dropped, 1000);
        for _ in 0..4 {
            let _ = release.send(());
        }
        drop(guard);
        let all: String = written
            .try_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        assert!(all.starts_with("first\n"));
        assert!(
            all.contains(&format!("{dropped} log lines dropped")),
            "{all}"
        );
    }
}
