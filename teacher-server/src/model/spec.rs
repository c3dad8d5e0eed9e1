//! What the served model is: where its weights come from ([`ModelSource`]) and what it takes and
//! returns ([`ModelSpec`], with [`SequenceSpec`] for a causal language model). The configuration
//! resolves them from flags, sidecars and checkpoints; [`super::load`] builds the model from them.

use distill_models::Arch;
use std::path::PathBuf;
use tch::Kind;

/// Where the teacher's weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A TorchScript module saved with `torch.jit.save`.
    TorchScript {
        /// The `.pt` file.
        path: PathBuf,
    },
    /// A checkpoint directory (`checkpoint.json`, the manifest naming its weights file).
    Checkpoint {
        /// The directory.
        dir: PathBuf,
    },
    /// A built-in architecture with weights from a safetensors file.
    Safetensors {
        /// The `.safetensors` file.
        path: PathBuf,
        /// The architecture.
        arch: Arch,
    },
}

/// What the model takes and returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Per-sample input shape (no batch dimension), every dimension ≥ 1.
    pub input_shape: Vec<i64>,
    /// Input dtype: one of the kinds the wire carries (f32, f16, bf16, f64, u8, i32, i64).
    pub input_dtype: Kind,
    /// Logits per sample (per position of a sequence model: the vocabulary size).
    pub num_logits: i64,
    /// `Some` for a sequence model (a causal LM): `input_shape` is `[max_seq_len]`, the input
    /// dtype i64 token ids, and logits are `[batch, seq, num_logits]`.
    pub sequence: Option<SequenceSpec>,
    /// The output holding the logits (`--logits-output`); `None`: the model's only output (a
    /// model with several is refused at load).
    pub logits_output: Option<String>,
}

/// What a sequence model (a causal language model) adds to its [`ModelSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSpec {
    /// Longest sequence accepted, in tokens (= `input_shape[0]`).
    pub max_seq_len: i64,
    /// Hex SHA-256 of the tokenizer file's bytes; empty when none was given.
    pub tokenizer_fingerprint: String,
}

/// Top-k per position that the default `--max-message-bytes` of a sequence model makes room
/// for (dense logits of a large vocabulary are refused per batch with a hint to use top-k).
pub const SEQUENCE_DEFAULT_TOP_K: usize = 64;

impl ModelSpec {
    /// Bytes of one sample's input (a sequence model: a full-length sequence and its i64 mask).
    pub fn sample_bytes(&self) -> usize {
        let input = self.input_shape.iter().product::<i64>() as usize
            * self.input_dtype.elt_size_in_bytes();
        match &self.sequence {
            Some(s) => input + s.max_seq_len as usize * 8,
            None => input,
        }
    }

    /// Bytes of one sample's largest default response: f32 logits, or for a sequence model
    /// [`SEQUENCE_DEFAULT_TOP_K`] f32 values and i64 indices per position plus two f32
    /// log-sum-exps.
    pub fn response_bytes(&self) -> usize {
        match &self.sequence {
            Some(s) => s.max_seq_len as usize * (SEQUENCE_DEFAULT_TOP_K * 12 + 8),
            None => self.num_logits as usize * 4,
        }
    }
}
