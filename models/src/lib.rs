//! Device selection (`--device auto|cpu|cuda|cuda:N`) shared by both binaries, the project's own
//! architectures (a CNN teacher and an MLP student for 28×28 images), TorchScript students
//! ([`script`]; [`Model`] holds either kind), their
//! checkpoints (safetensors weights + JSON metadata), and the SHA-256 fingerprint of a set of
//! weights that lets a student tell whether two teacher replicas serve the same teacher.
//!
//! [`generate`] samples continuations of prompts from a student language model ([`Model::sample`],
//! with a key/value cache for the built-in one: [`KvCache`]), for on-policy distillation.
//!
//! Both `teacher-server` (serving a checkpoint directory) and `student-trainer` (training,
//! distilling, evaluating) build networks from here, so a checkpoint written by one is read by the
//! other.

pub mod arch;
pub mod checkpoint;
pub mod cpu;
pub mod device;
pub mod fingerprint;
pub mod generate;
pub mod lm;
pub mod model;
pub mod script;
pub mod threads;
pub mod weights;

pub use arch::{Arch, ArchSpec, LOGITS_LAYER, LayerInfo, Network};
pub use checkpoint::{Checkpoint, CheckpointMeta};
pub use cpu::CpuInfo;
pub use device::{DeviceChoice, DeviceError, device_name};
pub use fingerprint::fingerprint;
pub use generate::{Generated, SampleOptions, next_tokens, top_p_filter};
pub use lm::{KvCache, LmConfig};
pub use model::Model;
pub use script::{ScriptArch, ScriptModule, ScriptRequest};
pub use weights::load_safetensors;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// An architecture name that is not one of the built-in ones.
    #[error(
        "unknown architecture {got:?}: expected one of `cnn`, `mlp`, `mlp:H1,H2,...`, `lm`, `lm:layers=L,d=D,heads=H`"
    )]
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
    /// A tensor of a weights file that does not fit the architecture (shape, dtype, missing or
    /// extra), e.g. `f1.bias: checkpoint [1], architecture mlp expects [128]`.
    #[error("{path}: {tensor}: {problem}")]
    Weights {
        /// The weights file.
        path: String,
        /// The tensor's name (the first mismatching one, in name order).
        tensor: String,
        /// What differs: both shapes (and dtypes), or which side lacks the tensor.
        problem: String,
    },
    /// A TorchScript student that cannot be used: one line naming the file and both sides of
    /// the mismatch (see [`script`]).
    #[error("{0}")]
    Script(String),
    /// Sampling arguments that do not fit the model or each other (see [`generate`]), e.g. a
    /// prompt plus `max_new_tokens` longer than the model's maximum sequence length.
    #[error("sampling: {0}")]
    Sample(String),
    /// Something the formats cannot represent (e.g. a tensor kind safetensors lacks).
    #[error("{0}")]
    Unsupported(String),
    /// A libtorch failure: its message's first line (see [`torch_message`]).
    #[error("libtorch: {0}")]
    Torch(String),
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

impl From<tch::TchError> for ModelError {
    fn from(e: tch::TchError) -> Self {
        ModelError::Torch(torch_message(&e))
    }
}

/// The user-facing text of a libtorch error: the first line of its message, without the C++
/// frame dump (`Exception raised from … frame #0: …`) libtorch appends after it. The full text
/// goes to the `debug` log.
pub fn torch_message(e: &tch::TchError) -> String {
    let full = e.to_string();
    let line = first_line(&full);
    if line.len() < full.trim_end().len() {
        tracing::debug!(error = %full, "libtorch error (full text)");
    }
    line.to_string()
}

/// The first line of `text` (all of it when it has one line), trailing spaces removed: how a
/// multi-line libtorch message is shortened for users (see [`torch_message`]).
pub fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or_default().trim_end()
}

/// The message of a panic's payload (`String` or `&str`, as `panic!` makes them), or
/// `unknown panic` for any other payload. Use on what `std::panic::catch_unwind` or
/// `JoinHandle::join` return.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_errors_keep_their_first_line_only() {
        let e = tch::Tensor::zeros([2, 3], tch::kind::FLOAT_CPU)
            .f_matmul(&tch::Tensor::zeros([2, 3], tch::kind::FLOAT_CPU))
            .unwrap_err();
        let full = e.to_string();
        let short = torch_message(&e);
        assert!(!short.is_empty() && !short.contains('\n'), "{short}");
        assert!(full.starts_with(&short), "{full}");
        assert!(!ModelError::from(e).to_string().contains("frame #"));
        assert_eq!(first_line("a\nException raised from x\nframe #0: y"), "a");
    }

    #[test]
    fn panic_payloads_of_both_kinds_give_their_message() {
        let p = std::panic::catch_unwind(|| panic!("boom {}", 1)).unwrap_err();
        assert_eq!(panic_message(&*p), "boom 1");
        let p = std::panic::catch_unwind(|| panic!("static")).unwrap_err();
        assert_eq!(panic_message(&*p), "static");
        let p = std::panic::catch_unwind(|| std::panic::panic_any(7u8)).unwrap_err();
        assert_eq!(panic_message(&*p), "unknown panic");
    }
}
