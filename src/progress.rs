//! Progress of long work (seeding the demo, `citizens import`, `audit verify`/`export`): an `indicatif`
//! bar when stderr is a terminal, otherwise an info log line every few seconds, so that a journal or a
//! CI log shows the work is moving without a line per item.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// How often the log line is written when stderr is not a terminal.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// One piece of long work.
pub struct Progress {
    what: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_log: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Start: `what` names the work ("seeding citizens"), `total` the units when known.
    pub fn start(what: &'static str, total: Option<u64>) -> Self {
        let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(|| {
            let (bar, template) = match total {
                Some(n) => (
                    ProgressBar::new(n),
                    "{msg} [{bar:40}] {human_pos}/{human_len} ({per_sec}, {eta} left)",
                ),
                None => (
                    ProgressBar::new_spinner(),
                    "{spinner} {msg}: {human_pos} ({elapsed})",
                ),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            what,
            total,
            done: 0,
            started: Instant::now(),
            last_log: Instant::now(),
            bar,
        }
    }

    /// `n` more units done.
    pub fn advance(&mut self, n: u64) {
        self.done += n;
        match &self.bar {
            Some(bar) => bar.set_position(self.done),
            None if self.last_log.elapsed() >= LOG_EVERY => {
                self.last_log = Instant::now();
                let elapsed_s = self.started.elapsed().as_secs();
                match self.total {
                    Some(total) => tracing::info!(done = self.done, total, elapsed_s, "{}", self.what),
                    None => tracing::info!(done = self.done, elapsed_s, "{}", self.what),
                }
            }
            None => {}
        }
    }

    /// Clear the bar (before printing an error under it); later advances still count.
    pub fn bar_clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// Done: the bar is cleared (the caller prints its own summary).
    pub fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// A writer that advances a [`Progress`] by the lines written through it (JSON Lines exports).
pub struct CountingLines<W> {
    inner: W,
    progress: Progress,
}

impl<W: std::io::Write> CountingLines<W> {
    /// Count the lines written to `inner`.
    pub fn new(inner: W, progress: Progress) -> Self {
        Self { inner, progress }
    }

    /// Finish the progress and hand back the writer.
    pub fn finish(self) -> W {
        self.progress.finish();
        self.inner
    }
}

impl<W: std::io::Write> std::io::Write for CountingLines<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let lines = buf[..n].iter().filter(|b| **b == b'\n').count();
        self.progress.advance(lines as u64);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Work whose size is unknown and that reports nothing on the way (`audit verify`): a spinner with the
/// elapsed time on a terminal, otherwise a log line every few seconds while it runs. Stops when dropped.
pub struct Heartbeat {
    bar: Option<ProgressBar>,
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl Heartbeat {
    /// Start beating for `what`.
    pub fn start(what: &'static str) -> Self {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.set_message(what);
            bar.enable_steady_tick(Duration::from_millis(200));
            return Self {
                bar: Some(bar),
                stop: None,
            };
        }
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let started = Instant::now();
        std::thread::spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(LOG_EVERY) {
                tracing::info!(elapsed_s = started.elapsed().as_secs(), "{what}: still running");
            }
        });
        Self {
            bar: None,
            stop: Some(stop),
        }
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
