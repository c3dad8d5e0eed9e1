//! Progress of an epoch: an indicatif bar (loss, samples/s, ETA) when stderr is a terminal,
//! plain periodic tracing lines otherwise.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// Interval between plain log lines when stderr is not a terminal.
pub(crate) const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Progress display of one epoch.
#[derive(Debug)]
pub(crate) struct Progress {
    epoch: u64,
    epochs: u64,
    batches: usize,
    bar: Option<ProgressBar>,
    last_log: Instant,
}

impl Progress {
    /// Progress of epoch `epoch` (from 0) of `epochs`, `batches` batches, `done` of them already
    /// trained (resume).
    pub(crate) fn new(epoch: u64, epochs: u64, batches: usize, done: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(batches as u64);
            bar.set_style(
                ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                    .expect("static template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(format!("epoch {}/{epochs}", epoch + 1));
            bar.set_position(done as u64);
            bar
        });
        Progress {
            epoch,
            epochs,
            batches,
            bar,
            last_log: Instant::now(),
        }
    }

    /// After batch `done` (count, from 1): mean loss so far and throughput (samples/s).
    pub(crate) fn update(&mut self, done: usize, loss: f64, samples_per_s: f64) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done as u64);
                bar.set_message(format!("loss {loss:.4} {samples_per_s:.0} samples/s"));
            }
            None if self.last_log.elapsed() >= LOG_INTERVAL => {
                self.last_log = Instant::now();
                tracing::info!(
                    epoch = self.epoch + 1,
                    of = self.epochs,
                    batch = done,
                    batches = self.batches,
                    loss = format!("{loss:.4}"),
                    samples_per_s = format!("{samples_per_s:.0}"),
                    "training"
                );
            }
            None => {}
        }
    }

    /// Ends the epoch's bar.
    pub(crate) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    /// Ends the bar where it stands (interrupted).
    pub(crate) fn abandon(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}
