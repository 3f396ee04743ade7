//! Structured logs with tracing: human-readable on a terminal, JSON when configured (or when
//! stderr is not a terminal and the format is `auto`). `RUST_LOG` overrides the configured level.
//!
//! Lines go through an in-memory queue to a writer thread of their own ([`line_queue`]), so a
//! slow log sink (a stalled journald, a full pipe) never blocks the threads that serve records,
//! and under load the access log costs one write system call per batch of lines, not one per
//! line (nor a thread wake-up per line).

pub mod line_queue;

use std::io::IsTerminal;

use tracing_subscriber::fmt::writer::{EitherWriter, MakeWriter};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LoggingConfig};

/// Installs the global subscriber once; later calls (tests, a demo inside a process) are no-ops
/// and return `None`. Keep the returned guard alive until exit: dropping it writes what is queued.
pub fn init(cfg: &LoggingConfig) -> Option<line_queue::LogGuard> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match cfg.format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Without its thread (the system refused one), logging goes straight to stderr.
    let (writer, guard) = match line_queue::start(std::io::stderr()) {
        Ok((writer, guard)) => (Sink::Queue(writer), Some(guard)),
        Err(_) => (Sink::Direct, None),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(!json && std::io::stderr().is_terminal());
    let installed = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder.with_target(true).try_init()
    };
    installed.ok().and(guard)
}

/// Where lines go: the queue, or stderr itself when the queue's thread could not start.
enum Sink {
    Queue(line_queue::LineWriter),
    Direct,
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = EitherWriter<line_queue::LineWriter, std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        match self {
            Sink::Queue(w) => EitherWriter::A(w.clone()),
            Sink::Direct => EitherWriter::B(std::io::stderr()),
        }
    }
}
