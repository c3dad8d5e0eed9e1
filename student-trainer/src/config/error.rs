//! A flag value that is out of range or malformed.

use crate::device::DeviceError;

/// A flag value that is out of range or malformed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A flag with an invalid value.
    #[error("--{flag}: {reason}")]
    Invalid {
        /// The flag, without the dashes.
        flag: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A malformed `--device`.
    #[error("--device: {0}")]
    Device(#[from] DeviceError),
}

/// The [`ConfigError::Invalid`] of `--flag`.
pub(crate) fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// `--threads`: at least 1 when given.
pub(crate) fn threads(t: Option<usize>) -> Result<Option<usize>, ConfigError> {
    match t {
        Some(0) => Err(invalid("threads", "must be at least 1")),
        t => Ok(t),
    }
}

/// `x` as a message writes it: as Rust prints it for everyday magnitudes, in scientific notation
/// below 10⁻⁴ and from 10⁶ on (`1e300`, not a 301-digit number).
pub(crate) fn number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() || (1e-4..1e6).contains(&x.abs()) {
        format!("{x}")
    } else {
        format!("{x:e}")
    }
}
