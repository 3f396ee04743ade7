//! Structured logs with tracing: human-readable on a terminal, JSON when configured (or when
//! stderr is not a terminal and the format is `auto`). `RUST_LOG` overrides the configured level.
//!
//! Lines are handed to a dedicated writer thread (tracing-appender's non-blocking writer), so a
//! slow log sink (a stalled journald, a full pipe) never blocks the threads that serve records,
//! and the access log costs no write system call on the request path. The writer thread takes
//! every line queued since its last write and hands them to stderr in one write (a buffer it
//! flushes whenever the queue runs empty), so under load a burst of access-log lines costs one
//! system call rather than one per line, and when idle each line is written at once. If the sink
//! stalls long enough for the in-memory queue (128k lines) to fill, further lines are dropped
//! rather than stalling the gateway; the audit log, not this log, is the record of every decision.

use std::io::IsTerminal;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Most bytes of log lines handed to stderr in one write.
const LOG_BATCH_BYTES: usize = 64 * 1024;

/// Installs the global subscriber once; later calls (tests, a demo inside a process) are no-ops
/// and return `None`. Keep the returned guard alive until exit: dropping it flushes the queue.
pub fn init(cfg: &LoggingConfig) -> Option<WorkerGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // The worker writes each queued line into the buffer and flushes it once the queue is empty:
    // batching without delaying a line (see the module comment). Flushed again when the guard drops.
    let sink = std::io::BufWriter::with_capacity(LOG_BATCH_BYTES, std::io::stderr());
    let (writer, guard) = tracing_appender::non_blocking(sink);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(!json && std::io::stderr().is_terminal());
    let installed = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder.with_target(true).try_init()
    };
    installed.ok().map(|_| guard)
}
