//! Why training failed: [`TrainError`], one message per cause.

use crate::hint::HintError;
use crate::optim::OptimError;
use distill_models::ModelError;
use std::path::PathBuf;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Building, loading or saving the network failed.
    #[error("{0}")]
    Model(#[from] ModelError),
    /// The optimizer failed (e.g. saved state that does not fit the model).
    #[error("optimizer: {0}")]
    Optim(#[from] OptimError),
    /// A libtorch failure in the loop.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The checkpoint to resume does not match this run.
    #[error("cannot resume from {dir}: {reason}")]
    Resume {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A batch of teacher logits that is not the one the schedule expects.
    #[error(
        "pairing check failed: expected epoch {epoch} batch {index}, got teacher batch {batch_id} \
         for epoch {got_epoch} batch {got_index}{detail}"
    )]
    Pairing {
        /// Expected epoch.
        epoch: u64,
        /// Expected position in the epoch.
        index: usize,
        /// The received batch's request id.
        batch_id: u64,
        /// The received batch's epoch.
        got_epoch: u64,
        /// The received batch's position.
        got_index: usize,
        /// Extra detail (differing indices).
        detail: String,
    },
    /// The loss is not finite.
    #[error(
        "loss is {value} at epoch {epoch} batch {index}: training diverged; likely causes: a \
         learning rate too high for this network and data (lower --lr, or add --warmup-steps or \
         --clip-grad-norm), float inputs far from unit scale (an .npz's float inputs are used as \
         stored, not normalised), or teacher outputs of extreme magnitude (--loss mse and --hint \
         compare them unscaled)"
    )]
    NonFinite {
        /// The loss value.
        value: f64,
        /// Its epoch.
        epoch: u64,
        /// Its batch.
        index: usize,
    },
    /// Writing metrics failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The training thread panicked.
    #[error("the training thread panicked: {0}")]
    Panic(String),
    /// The logit cache could not be read or written.
    #[error("{0}")]
    Cache(#[from] crate::logit_cache::CacheError),
    /// Hint distillation cannot go on (a layer or shape that does not fit, a missing feature).
    #[error("{0}")]
    Hint(String),
    /// The student's per-batch views of an image folder did not come as scheduled (the loader
    /// thread stopped, or sent another batch's).
    #[error("{0}")]
    Views(String),
}

impl From<HintError> for TrainError {
    fn from(e: HintError) -> Self {
        TrainError::Hint(e.to_string())
    }
}
