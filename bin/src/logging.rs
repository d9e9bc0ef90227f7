//! Log output: readable text by default, JSON with `--log-format json`; `RUST_LOG` honoured.
//!
//! Logging never stops or slows the relay. Lines go through a bounded queue to a writer
//! thread (tracing-appender's non-blocking writer), so a shard never waits for stderr; a
//! line that cannot be written (the queue is full because stderr is slow or not read,
//! or the write fails: `EPIPE`, `ENOSPC`) is dropped and counted in
//! `posrelay_log_write_failures_total`, and nothing panics on it.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Lines queued for the writer thread before new ones are dropped.
const QUEUED_LINES: usize = 8_192;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Keeps the writer thread; dropping it writes what is still queued.
#[must_use = "dropping the guard stops the log writer"]
pub struct LogGuard(Option<WorkerGuard>);

impl Drop for LogGuard {
    fn drop(&mut self) {
        // The worker guard's own drop writes what is queued, then stops the thread.
        drop(self.0.take());
    }
}

/// Installs the global subscriber (logs go to stderr) and returns the guard of its
/// writer thread: keep it until the command ends.
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal as _;
    let (queue, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("posrelay-log")
        .finish(CountingStderr);
    let writer = DroppingWriter {
        dropped: queue.error_counter(),
        queue,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        // Its default prints a failed write to stderr with eprintln!, which panics when
        // stderr is the thing that failed.
        .log_internal_errors(false)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Text => builder.try_init().is_ok(),
        LogFormat::Json => builder.json().try_init().is_ok(),
    };
    LogGuard(installed.then_some(guard))
}

/// stderr for the writer thread: a failed write is counted, never returned (the worker
/// would only lose the rest of its batch) and never retried.
struct CountingStderr;

impl Write for CountingStderr {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        if io::stderr().lock().write_all(line).is_err() {
            posrelay_core::io::metrics::log_write_failed(1);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().lock().flush();
        Ok(())
    }
}

/// The queue's writer, reporting the lines it dropped (queue full) to the metric.
#[derive(Clone)]
struct DroppingWriter {
    queue: NonBlocking,
    dropped: ErrorCounter,
}

/// Dropped lines already added to the metric (the queue's own counter only grows).
static DROPPED_REPORTED: AtomicU64 = AtomicU64::new(0);

impl DroppingWriter {
    fn report_dropped(&self) {
        let now = self.dropped.dropped_lines() as u64;
        let before = DROPPED_REPORTED.fetch_max(now, Ordering::Relaxed);
        if now > before {
            posrelay_core::io::metrics::log_write_failed(now - before);
        }
    }
}

impl Write for DroppingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.queue.write(buf)?;
        self.report_dropped();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.queue.flush()
    }
}

impl<'a> MakeWriter<'a> for DroppingWriter {
    type Writer = DroppingWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}
