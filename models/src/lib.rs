//! Device selection (`--device auto|cpu|cuda|cuda:N`) shared by both binaries, the project's own
//! architectures (a CNN teacher and an MLP student for 28×28 images), their
//! checkpoints (safetensors weights + JSON metadata), and the SHA-256 fingerprint of a set of
//! weights that lets a student tell whether two teacher replicas serve the same teacher.
//!
//! Both `teacher-server` (serving a checkpoint directory) and `student-trainer` (training,
//! distilling, evaluating) build networks from here, so a checkpoint written by one is read by the
//! other.

pub mod arch;
pub mod checkpoint;
pub mod device;
pub mod fingerprint;

pub use arch::{Arch, ArchSpec, Network};
pub use checkpoint::{Checkpoint, CheckpointMeta};
pub use device::{DeviceChoice, DeviceError, device_name};
pub use fingerprint::fingerprint;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An architecture name that is not one of the built-in ones.
    #[error("unknown architecture {got:?}: expected one of `cnn`, `mlp`, `mlp:H1,H2,...`")]
    UnknownArch {
        /// The name that was given.
        got: String,
    },
    /// An architecture that cannot take the given input shape.
    #[error("architecture {arch} expects input shape {expected}, got {got:?}")]
    InputShape {
        /// The architecture.
        arch: String,
        /// What it expects, in words.
        expected: String,
        /// The shape given.
        got: Vec<i64>,
    },
    /// A checkpoint directory or file that is missing or malformed.
    #[error("checkpoint {path}: {reason}")]
    Checkpoint {
        /// The file or directory.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A libtorch failure.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// A file system failure.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}
