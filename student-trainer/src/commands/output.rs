//! What commands print on stdout (results; logs go to stderr), and how a command ended.

use super::error::AppError;

/// How a command ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Ran to completion.
    Done,
    /// Stopped by Ctrl-C or SIGTERM after saving a checkpoint (the binary exits with 130 or 143).
    Interrupted,
}

/// Writes `args` to stdout and flushes it.
///
/// # Errors
/// [`AppError::StdoutClosed`] when the reader has gone (`EPIPE`); [`AppError::Io`] otherwise.
pub(crate) fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<(), AppError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::BrokenPipe => AppError::StdoutClosed,
            _ => AppError::Io {
                path: "stdout".into(),
                source,
            },
        })
}

/// `println!` that returns [`AppError::StdoutClosed`] instead of panicking on a closed stdout.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::commands::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;
