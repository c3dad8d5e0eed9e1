//! The trait the engine calls ([`TeacherModel`]) and what a model says of itself
//! ([`ModelDescription`], one [`OutputDescription`] per output of its forward pass).

use super::error::ForwardError;
use super::precision::Precision;
use super::spec::SequenceSpec;
use std::path::Path;
use tch::{Kind, Tensor};

/// The name [`TeacherModel::forward_all`]'s default gives a model's only output, and the name of
/// a built-in network's logits.
pub use distill_models::LOGITS_LAYER as DEFAULT_LOGITS_OUTPUT;

/// One named output of a model's forward pass, as the load-time warm-up found it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputDescription {
    /// Dict key, tuple position (`0`, `1`, ...), or a built-in network's layer name.
    pub name: String,
    /// Per-sample shape (no batch dimension); a sequence model's per-position output has `-1`
    /// (the request's sequence length) first.
    pub shape: Vec<i64>,
    /// Kind the model computes it in.
    pub kind: Kind,
}

impl OutputDescription {
    /// Whether this is a sequence model's per-position output (`[batch, seq, ...]`).
    pub fn per_position(&self) -> bool {
        self.shape.first() == Some(&-1)
    }

    /// Values per sample (a per-position output: per position).
    pub fn elements(&self) -> i64 {
        self.shape.iter().filter(|&&d| d >= 0).product()
    }
}

/// `name [d1, d2, ...]` for each output, comma-separated (error messages and logs).
pub(crate) fn list_outputs(outputs: &[OutputDescription]) -> String {
    outputs
        .iter()
        .map(|o| format!("{} {:?}", o.name, o.shape))
        .collect::<Vec<_>>()
        .join(", ")
}

/// What a served model is, as reported by `GetModelInfo` and the startup log.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDescription {
    /// Architecture name, or the TorchScript file stem.
    pub name: String,
    /// Checkpoint epoch/step, or the TorchScript file's modification time (Unix seconds).
    pub version: String,
    /// Hex SHA-256 of the weights as loaded, before any `--precision` conversion (see
    /// [`distill_models::fingerprint()`]): the same for every precision of the same weights.
    pub fingerprint: String,
    /// Per-sample input shape (no batch dimension).
    pub input_shape: Vec<i64>,
    /// Input dtype (a libtorch kind; the service maps it to the wire `DType`).
    pub input_dtype: Kind,
    /// Logits per sample.
    pub num_logits: i64,
    /// Device the model runs on, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// Precision of the forward pass (weights and floating-point inputs).
    pub precision: Precision,
    /// For a sequence model (a causal LM): its longest sequence and tokenizer fingerprint.
    pub sequence: Option<SequenceSpec>,
    /// Every output of the forward pass, in the model's order (the logits among them); empty
    /// until [`super::load()`]'s warm-up has inspected them.
    pub outputs: Vec<OutputDescription>,
    /// Which of `outputs` holds the logits.
    pub logits_output: String,
}

/// A teacher: maps inputs to logits. Implementations move inputs to their device and return
/// the logits there: the engine reduces them (top-k, log-sum-exp, casts) on the device and copies
/// only the result to the host.
pub trait TeacherModel {
    /// Logits `[batch, num_logits]` (on the model's device, any float kind; `f32` unless the
    /// model is run in f32 and chooses another kind) of inputs `[batch, ...input_shape]` (CPU,
    /// the model's input dtype), in eval mode. A sequence model maps token ids `i64 [batch, seq]`
    /// to `[batch, seq, num_logits]`. Called under `tch::no_grad_guard`.
    ///
    /// # Errors
    /// [`ForwardError`] on any libtorch failure; never panics on bad data.
    fn forward(&self, x: &Tensor) -> Result<Tensor, ForwardError>;

    /// [`TeacherModel::forward`] of a sequence model with its attention mask (`[batch, seq]`,
    /// CPU, `i64`: 1 = real token, 0 = padding on the right). The default, for models without
    /// masks, runs [`TeacherModel::forward`] when `mask` is `None` and refuses a mask.
    ///
    /// # Errors
    /// As [`TeacherModel::forward`]; [`ForwardError::Torch`] for a mask given to a model that
    /// takes none.
    fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, ForwardError> {
        match mask {
            None => self.forward(x),
            Some(_) => Err(ForwardError::Torch(
                "this model takes no attention mask".into(),
            )),
        }
    }

    /// Every named output of one forward pass, in the model's order, each on the model's device
    /// with the batch first (`[batch, ...]`; a sequence model's per-position outputs `[batch,
    /// seq, ...]`). The default: the logits of [`TeacherModel::forward_masked`] alone, named
    /// [`DEFAULT_LOGITS_OUTPUT`].
    ///
    /// # Errors
    /// As [`TeacherModel::forward_masked`].
    fn forward_all(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Vec<(String, Tensor)>, ForwardError> {
        Ok(vec![(
            DEFAULT_LOGITS_OUTPUT.to_string(),
            self.forward_masked(x, mask)?,
        )])
    }

    /// What the model is.
    fn info(&self) -> ModelDescription;
}

/// The `version` of a model read from `path`: the file's modification time (`mtime SECONDS`,
/// Unix seconds), or `unknown` when the file system does not tell.
pub(super) fn mtime_version(path: &Path) -> String {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(|| "unknown".into(), |d| format!("mtime {}", d.as_secs()))
}
