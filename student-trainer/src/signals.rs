//! The signals that stop a training run: Ctrl-C (SIGINT) and SIGTERM (what Kubernetes sends a
//! pod it evicts, and `docker stop`). Both ask the loop to save a checkpoint at the current batch
//! and exit, with `128 + signal number` as the exit status (130 and 143). Signals within
//! [`REPEAT_WINDOW`] of the first are the same request; a signal after the window exits at once
//! ([`StopRequests`] decides).

use std::time::{Duration, Instant};

/// How long after the first stop signal further signals still count as the same request. One
/// request often arrives as a burst: GNU `timeout` signals the process and then its process
/// group, a shell's Ctrl-C reaches every process of the foreground group, and a supervisor may
/// repeat itself. Those copies land within milliseconds; a person (or Kubernetes, whose SIGKILL
/// follows its grace period) asking again to skip the checkpoint does so seconds later.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// A signal asking the student to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGINT (Ctrl-C).
    Interrupt,
    /// SIGTERM.
    Terminate,
}

impl StopSignal {
    /// The exit status after this signal: 128 + its number (SIGINT 2 → 130, SIGTERM 15 → 143),
    /// as a shell reports a process the signal killed.
    pub fn exit_code(self) -> u8 {
        match self {
            StopSignal::Interrupt => 130,
            StopSignal::Terminate => 143,
        }
    }

    /// How users name it (`Ctrl-C`, `SIGTERM`).
    pub fn name(self) -> &'static str {
        match self {
            StopSignal::Interrupt => "Ctrl-C",
            StopSignal::Terminate => "SIGTERM",
        }
    }
}

/// Listens for SIGINT and SIGTERM from its creation on (a signal that arrives between two calls
/// of [`ShutdownSignals::shutdown_signal`] is not lost).
#[derive(Debug)]
pub struct ShutdownSignals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Starts listening. Call inside a tokio runtime.
    ///
    /// # Errors
    /// The signal handlers cannot be installed.
    pub fn install() -> std::io::Result<ShutdownSignals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(ShutdownSignals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        {
            Ok(ShutdownSignals {})
        }
    }

    /// Completes with the next SIGINT or SIGTERM (Ctrl-C only on non-Unix systems).
    pub async fn shutdown_signal(&mut self) -> StopSignal {
        #[cfg(unix)]
        {
            tokio::select! {
                Some(()) = self.int.recv() => StopSignal::Interrupt,
                Some(()) = self.term.recv() => StopSignal::Terminate,
                else => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            StopSignal::Interrupt
        }
    }
}

/// What a stop signal asks for, given the signals before it ([`StopRequests::on_signal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopRequest {
    /// The first signal: save a checkpoint at the current batch, then exit.
    First,
    /// Within [`REPEAT_WINDOW`] of the first: the same request again (nothing more to do).
    Repeat,
    /// Later than the window: exit at once, without waiting for the checkpoint.
    ExitNow,
}

/// The stop signals a process has received: decides whether a signal is the first request, a
/// repeat of it (within the window of the first), or a new request to exit at once. Pure: the
/// caller passes each signal's arrival time.
#[derive(Debug, Clone)]
pub struct StopRequests {
    window: Duration,
    first: Option<Instant>,
}

impl Default for StopRequests {
    /// With the [`REPEAT_WINDOW`].
    fn default() -> StopRequests {
        StopRequests::new(REPEAT_WINDOW)
    }
}

impl StopRequests {
    /// No signal yet; signals up to `window` after the first are repeats of it.
    pub fn new(window: Duration) -> StopRequests {
        StopRequests {
            window,
            first: None,
        }
    }

    /// The window of repeats.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// What a signal that arrived at `at` asks for. The window runs from the first signal (a
    /// steady stream of signals does not extend it); a time before the first counts as within.
    pub fn on_signal(&mut self, at: Instant) -> StopRequest {
        match self.first {
            None => {
                self.first = Some(at);
                StopRequest::First
            }
            Some(first) if at.saturating_duration_since(first) <= self.window => {
                StopRequest::Repeat
            }
            Some(_) => StopRequest::ExitNow,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn the_first_signal_is_the_request() {
        let mut r = StopRequests::default();
        assert_eq!(r.window(), REPEAT_WINDOW);
        assert_eq!(r.on_signal(Instant::now()), StopRequest::First);
    }

    #[test]
    fn a_burst_within_the_window_is_one_request() {
        let t0 = Instant::now();
        let mut r = StopRequests::new(ms(1000));
        assert_eq!(r.on_signal(t0), StopRequest::First);
        // GNU timeout: the process, then its group, microseconds apart; a repeat at 10 ms.
        assert_eq!(r.on_signal(t0), StopRequest::Repeat);
        assert_eq!(r.on_signal(t0 + ms(10)), StopRequest::Repeat);
        assert_eq!(r.on_signal(t0 + ms(1000)), StopRequest::Repeat);
    }

    #[test]
    fn a_signal_after_the_window_exits_now() {
        let t0 = Instant::now();
        let mut r = StopRequests::new(ms(1000));
        assert_eq!(r.on_signal(t0), StopRequest::First);
        assert_eq!(r.on_signal(t0 + ms(1001)), StopRequest::ExitNow);
        assert_eq!(r.on_signal(t0 + ms(5000)), StopRequest::ExitNow);
    }

    #[test]
    fn the_window_runs_from_the_first_signal() {
        let t0 = Instant::now();
        let mut r = StopRequests::new(ms(1000));
        assert_eq!(r.on_signal(t0), StopRequest::First);
        assert_eq!(r.on_signal(t0 + ms(900)), StopRequest::Repeat);
        // 200 ms after the last repeat, but 1.1 s after the first: a new request.
        assert_eq!(r.on_signal(t0 + ms(1100)), StopRequest::ExitNow);
    }

    #[test]
    fn a_zero_window_makes_every_later_signal_exit_now() {
        let t0 = Instant::now();
        let mut r = StopRequests::new(Duration::ZERO);
        assert_eq!(r.on_signal(t0), StopRequest::First);
        assert_eq!(
            r.on_signal(t0 + Duration::from_nanos(1)),
            StopRequest::ExitNow
        );
    }
}
