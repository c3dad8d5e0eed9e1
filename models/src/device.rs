//! Device selection: `auto | cpu | cuda | cuda:N`.
//!
//! Parsing ([`DeviceChoice::from_str`]) is pure, so configurations validate on any machine;
//! [`DeviceChoice::resolve`] checks the choice against the CUDA devices actually present.

use std::fmt;
use std::str::FromStr;
use tch::{Cuda, Device};

/// Why a device was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// Not one of the accepted spellings.
    #[error("unknown device {got:?}: expected auto, cpu, cuda or cuda:N")]
    Syntax {
        /// What was given.
        got: String,
    },
    /// CUDA requested where libtorch sees no (or not enough) CUDA devices.
    #[error("device cuda:{index} requested but libtorch sees {available} CUDA device(s)")]
    Unavailable {
        /// The requested ordinal.
        index: usize,
        /// CUDA devices libtorch can use.
        available: i64,
    },
}

/// A device as written on the command line, before it is checked against the hardware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    /// CUDA device 0 when available, else the CPU.
    Auto,
    /// The CPU.
    Cpu,
    /// CUDA device with this ordinal (`cuda` means 0).
    Cuda(usize),
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(s: &str) -> Result<Self, DeviceError> {
        let bad = || DeviceError::Syntax { got: s.to_string() };
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DeviceChoice::Auto),
            "cpu" => Ok(DeviceChoice::Cpu),
            "cuda" | "gpu" => Ok(DeviceChoice::Cuda(0)),
            other => match other.strip_prefix("cuda:") {
                Some(n) => n.parse().map(DeviceChoice::Cuda).map_err(|_| bad()),
                None => Err(bad()),
            },
        }
    }
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceChoice::Auto => write!(f, "auto"),
            DeviceChoice::Cpu => write!(f, "cpu"),
            DeviceChoice::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl DeviceChoice {
    /// The libtorch device for this choice on this machine.
    ///
    /// # Errors
    /// [`DeviceError::Unavailable`] when CUDA device N is requested and libtorch does not see it.
    pub fn resolve(self) -> Result<Device, DeviceError> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Auto => Ok(Device::cuda_if_available()),
            DeviceChoice::Cuda(index) => {
                let available = if Cuda::is_available() {
                    Cuda::device_count()
                } else {
                    0
                };
                if (index as i64) < available {
                    Ok(Device::Cuda(index))
                } else {
                    Err(DeviceError::Unavailable { index, available })
                }
            }
        }
    }
}

/// A device's name as users write it (`cpu`, `cuda:0`).
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(i) => format!("cuda:{i}"),
        Device::Mps => "mps".into(),
        Device::Vulkan => "vulkan".into(),
        _ => "cpu".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spelling_and_rejects_garbage() {
        assert_eq!("auto".parse(), Ok(DeviceChoice::Auto));
        assert_eq!("CPU".parse(), Ok(DeviceChoice::Cpu));
        assert_eq!("cuda".parse(), Ok(DeviceChoice::Cuda(0)));
        assert_eq!("cuda:3".parse(), Ok(DeviceChoice::Cuda(3)));
        for bad in ["", "cuda:", "cuda:x", "tpu", "cuda:-1"] {
            assert!(bad.parse::<DeviceChoice>().is_err(), "{bad}");
        }
        assert_eq!(DeviceChoice::Cuda(2).to_string(), "cuda:2");
    }

    #[test]
    fn cpu_always_resolves_and_absent_cuda_is_an_error() {
        assert_eq!(DeviceChoice::Cpu.resolve(), Ok(Device::Cpu));
        let err = DeviceChoice::Cuda(999).resolve().unwrap_err();
        assert!(
            matches!(err, DeviceError::Unavailable { index: 999, .. }),
            "{err}"
        );
    }
}
