//! The log's writer: lines are appended to an in-memory buffer and a flusher thread writes the buffer to
//! stderr every [`FLUSH_EVERY`], in one `write` per flush.
//!
//! A request's `info` line costs a `memcpy` under a short lock: no thread is woken per line and no system
//! call is made per line (a channel to a writer thread, as `tracing-appender` does, woke that thread for
//! nearly every line under load; BENCHMARKS.md). Lines beyond [`MAX_BUFFERED`] are dropped and counted
//! rather than slowing requests down or growing memory without bound; the audit trail, not the log, is the
//! record of every request.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// How often the buffered lines reach stderr: a line is on the terminal at most this late.
const FLUSH_EVERY: Duration = Duration::from_millis(20);

/// Most bytes held between flushes (a burst of about 30,000 lines); more are dropped and counted.
const MAX_BUFFERED: usize = 8 << 20;

/// The shared buffer; [`LogWriter`] is its `MakeWriter`.
#[derive(Default)]
struct Buffer {
    lines: Mutex<Vec<u8>>,
    dropped: AtomicU64,
}

impl Buffer {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<u8>> {
        self.lines.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write what is buffered (and how many lines were dropped) to stderr.
    fn flush_to_stderr(&self, spare: &mut Vec<u8>) {
        // Swap under the lock, write outside it: a slow terminal never blocks a request.
        std::mem::swap(&mut *self.lock(), spare);
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let mut stderr = io::stderr().lock();
        let _ = stderr.write_all(spare);
        if dropped > 0 {
            let _ = writeln!(
                stderr,
                "lienthong: {dropped} log lines dropped (the log fell behind)"
            );
        }
        let _ = stderr.flush();
        spare.clear();
        // Keep a burst's allocation from staying with the process for good.
        spare.shrink_to(64 << 10);
    }
}

/// Hands the formatting layer a writer into the shared buffer (one `write_all` per event).
#[derive(Clone)]
pub(crate) struct LogWriter(Arc<Buffer>);

impl Write for LogWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut lines = self.0.lock();
        if lines.len() + line.len() > MAX_BUFFERED {
            drop(lines);
            self.0.dropped.fetch_add(1, Ordering::Relaxed);
        } else {
            lines.extend_from_slice(line);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Keeps the flusher running; dropping it stops the thread and writes what is left.
pub struct LogGuard {
    stop: Option<mpsc::Sender<()>>,
    flusher: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
    }
}

/// The writer for the formatting layer and the guard of its flusher thread. If the system refuses the
/// thread, that is said on stderr and the lines are dropped (counted) once the buffer is full.
pub(crate) fn buffered_stderr() -> (LogWriter, LogGuard) {
    let buffer = Arc::new(Buffer::default());
    let (stop, stopped) = mpsc::channel::<()>();
    let flusher = std::thread::Builder::new().name("log-flush".into()).spawn({
        let buffer = Arc::clone(&buffer);
        move || {
            let mut spare = Vec::new();
            // Runs until the guard drops its sender, then writes the rest once more.
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FLUSH_EVERY) {
                buffer.flush_to_stderr(&mut spare);
            }
            buffer.flush_to_stderr(&mut spare);
        }
    });
    let flusher = match flusher {
        Ok(thread) => Some(thread),
        Err(e) => {
            eprintln!("lienthong: no log flusher thread ({e}); log lines are not written");
            None
        }
    };
    (
        LogWriter(buffer),
        LogGuard {
            stop: Some(stop),
            flusher,
        },
    )
}
