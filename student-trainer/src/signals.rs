//! The signals that stop a training run: Ctrl-C (SIGINT) and SIGTERM (what Kubernetes sends a
//! pod it evicts, and `docker stop`). Both ask the loop to save a checkpoint at the current batch
//! and exit, with `128 + signal number` as the exit status (130 and 143); a second signal exits
//! at once.

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
