//! Errors of the teacher server, and the one place where they become gRPC statuses.
//!
//! Every failure a client can see is an [`Error`]. [`Error::code`] is the single, exhaustive
//! mapping to a gRPC code; `From<Error> for tonic::Status` (whole-stream failures) and
//! [`Error::to_wire`] (per-batch `distill.v1.Error` responses, after which the stream stays
//! open) both go through it, so a bad batch and a failed call report the same code.

use crate::engine::StartError;
use crate::model::LoadError;
use distill_proto::{CodecError, v1};
use std::time::Duration;
use tonic::Code;

pub use distill_proto::RETRY_PUSHBACK_HEADER;

/// The retry hint of a call made while the model loads ([`Error::NotReady`]).
pub const NOT_READY_RETRY: Duration = Duration::from_millis(200);

/// Why a request (one batch) was rejected before it reached the model. Every message names what
/// was expected and what was received.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidRequest {
    /// The request carries no `inputs` tensor.
    #[error("inputs: missing: expected a tensor of shape [batch, {expected_shape:?}]")]
    MissingInputs {
        /// Per-sample input shape of the model.
        expected_shape: Vec<i64>,
    },
    /// The inputs' dtype is unspecified, unknown, or not the model's input dtype.
    #[error("inputs dtype: expected {expected}, got {got}")]
    DType {
        /// The model's input dtype (wire name, e.g. `F32`).
        expected: String,
        /// The dtype received (wire name, or the raw number when it is not in the enum).
        got: String,
    },
    /// The wire tensor is inconsistent in itself (negative or absurd dimensions, rank over the
    /// codec's maximum, data length not matching the shape).
    #[error("inputs: {0}")]
    Tensor(String),
    /// The inputs' rank is not `1 + rank(input_shape)`.
    #[error(
        "inputs rank: expected {expected} ([batch, {sample_shape:?}]), got {got} (shape {shape:?})"
    )]
    Rank {
        /// `1 + rank(input_shape)`.
        expected: usize,
        /// The rank received.
        got: usize,
        /// The model's per-sample shape.
        sample_shape: Vec<i64>,
        /// The full shape received.
        shape: Vec<i64>,
    },
    /// The per-sample shape (all dimensions after the first) differs from the model's.
    #[error("inputs per-sample shape: expected {expected:?}, got {got:?} (full shape {shape:?})")]
    SampleShape {
        /// The model's per-sample shape.
        expected: Vec<i64>,
        /// The per-sample shape received.
        got: Vec<i64>,
        /// The full shape received.
        shape: Vec<i64>,
    },
    /// A batch of zero samples.
    #[error("empty batch: expected between 1 and {max} samples, got 0")]
    EmptyBatch {
        /// The server's `--max-batch-size`.
        max: usize,
    },
    /// A batch of more samples than `--max-batch-size`.
    #[error("batch too large: expected at most {max} samples, got {got}")]
    BatchTooLarge {
        /// The server's `--max-batch-size`.
        max: usize,
        /// Samples received.
        got: usize,
    },
    /// NaN or infinite values in float inputs.
    #[error(
        "inputs: expected finite values, got {count} NaN or infinite value(s) (first at flat index {first})"
    )]
    NonFinite {
        /// How many non-finite values.
        count: i64,
        /// Flat (row-major) index of the first one.
        first: i64,
    },
    /// An `output_dtype` that is not F32, F16, BF16 or unspecified.
    #[error("output_dtype: expected F32, F16, BF16 or DTYPE_UNSPECIFIED (= F32), got {got}")]
    OutputDType {
        /// The dtype received (wire name or raw number).
        got: String,
    },
    /// A `top_k` larger than the number of logits.
    #[error("top_k: expected 0 (dense) or between 1 and {max}, got {got}")]
    TopK {
        /// The model's number of logits.
        max: i64,
        /// The `top_k` received.
        got: u32,
    },
    /// A `temperature` that is negative, NaN or infinite.
    #[error("temperature: expected > 0 (or 0 for 1), got {got}")]
    Temperature {
        /// The temperature received.
        got: f32,
    },
    /// A sequence longer than the model's `max_seq_len` (or of length 0).
    #[error(
        "inputs sequence length: expected between 1 and {max} tokens, got {got} (shape {shape:?})"
    )]
    SequenceLength {
        /// The model's `max_seq_len`.
        max: i64,
        /// The length received.
        got: i64,
        /// The full shape received.
        shape: Vec<i64>,
    },
    /// Token ids outside the vocabulary `0..vocab`.
    #[error(
        "inputs: expected token ids in 0..{vocab}, got {count} outside it (first: {value} at batch row {row}, position {position})"
    )]
    TokenId {
        /// The vocabulary size (`num_logits`).
        vocab: i64,
        /// How many ids are out of range.
        count: i64,
        /// The first offending id (row-major order).
        value: i64,
        /// Its row in the batch.
        row: i64,
        /// Its position in the sequence.
        position: i64,
    },
    /// An `attention_mask` sent to a model that is not a sequence model.
    #[error("attention_mask: expected none (the model is not a sequence model), got shape {got:?}")]
    MaskForClassifier {
        /// The mask's shape.
        got: Vec<i64>,
    },
    /// An `attention_mask` of a dtype other than U8 or I64.
    #[error("attention_mask dtype: expected U8 or I64, got {got}")]
    MaskDType {
        /// The dtype received (wire name or raw number).
        got: String,
    },
    /// An `attention_mask` whose shape is not the inputs' `[batch, seq]`.
    #[error("attention_mask shape: expected the inputs' shape {expected:?}, got {got:?}")]
    MaskShape {
        /// The inputs' shape.
        expected: Vec<i64>,
        /// The mask's shape.
        got: Vec<i64>,
    },
    /// An `attention_mask` value other than 0 or 1.
    #[error(
        "attention_mask: expected 0 (padding) or 1 (real token), got {value} at batch row {row}, position {position}"
    )]
    MaskValue {
        /// The first bad value.
        value: i64,
        /// Its row.
        row: i64,
        /// Its position.
        position: i64,
    },
    /// A response that would not fit the message limit (dense logits of a large vocabulary).
    #[error(
        "response too large: {what} would take {bytes} bytes, above the message limit of {limit} bytes: request top_k (e.g. 32) instead of dense logits, fewer outputs, or send fewer samples"
    )]
    ResponseTooLarge {
        /// What would be sent, e.g. `dense F32 logits [16, 256, 152064]`.
        what: String,
        /// Its size in bytes.
        bytes: u64,
        /// `ModelInfo.max_message_bytes`.
        limit: u64,
    },
    /// `outputs` names an output the model does not have (or its logits, which come anyway).
    #[error(
        "outputs: unknown output {name:?}: expected one of the model's other outputs ({known}); the logits (output {logits}) come anyway"
    )]
    UnknownOutput {
        /// The name asked for.
        name: String,
        /// The outputs that can be asked for, with their per-sample shapes.
        known: String,
        /// The logits output's name.
        logits: String,
    },
}

impl InvalidRequest {
    /// The wire name of a dtype number (`F32`, `DTYPE_UNSPECIFIED`, ...), or the raw number when
    /// it is not in the enum.
    pub fn dtype_label(dtype: i32) -> String {
        match v1::DType::try_from(dtype) {
            Ok(d) => d.as_str_name().to_string(),
            Err(_) => format!("{dtype} (not a DType)"),
        }
    }
}

impl From<CodecError> for InvalidRequest {
    fn from(e: CodecError) -> Self {
        InvalidRequest::Tensor(e.to_string())
    }
}

/// A failure of the model or of libtorch while computing a merged batch. Cloneable: one failed
/// forward pass answers every request merged into it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    /// A libtorch error (message as reported by libtorch).
    #[error("libtorch: {0}")]
    Torch(String),
    /// The model returned logits of an unexpected shape.
    #[error("model output: expected shape {expected:?}, got {got:?}")]
    OutputShape {
        /// `[batch, num_logits]`, or `[batch, seq, num_logits]` for a sequence model.
        expected: Vec<i64>,
        /// The shape returned.
        got: Vec<i64>,
    },
    /// The logits do not fit the requested output dtype (F16 holds magnitudes up to 65504):
    /// sending them would turn them into infinities. The batch is refused, not clamped.
    #[error(
        "logits: {count} value(s) outside the {dtype} range (largest magnitude {max:e}, {dtype} holds up to {limit}): request output_dtype BF16 or F32 instead"
    )]
    OutOfRange {
        /// The requested output dtype (wire name, e.g. `F16`).
        dtype: &'static str,
        /// Values that would not be finite in it.
        count: i64,
        /// Largest magnitude among the model's logits.
        max: f64,
        /// Largest finite magnitude of `dtype`, as written in the message (`65504`).
        limit: &'static str,
    },
    /// The model produced NaN or infinite logits (from finite inputs): a broken teacher. The batch
    /// is refused rather than sent.
    #[error(
        "model output: {count} NaN or infinite logit(s) from finite inputs; refusing to send them (check the teacher's weights)"
    )]
    NonFinite {
        /// NaN or infinite values among the request's logits.
        count: i64,
    },
    /// The model panicked (a bug in tch or the model; caught at the engine boundary).
    #[error("model panicked: {0}")]
    Panicked(String),
    /// The engine thread stopped before answering.
    #[error("the inference engine stopped")]
    Stopped,
}

impl From<tch::TchError> for EngineError {
    fn from(e: tch::TchError) -> Self {
        EngineError::Torch(distill_models::torch_message(&e))
    }
}

/// Every error of the teacher server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad request (one batch); the stream stays open.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The batching queue is full.
    #[error(
        "server overloaded: the queue of {capacity} batches is full; retry after {} ms",
        retry_after.as_millis()
    )]
    Overloaded {
        /// `--queue-capacity`.
        capacity: usize,
        /// Suggested delay before retrying.
        retry_after: Duration,
    },
    /// A request message over `--max-message-bytes` (tonic reports it as `OUT_OF_RANGE`; gRPC's
    /// convention, and ours, is `RESOURCE_EXHAUSTED`). The stream ends.
    #[error(
        "request message too large: {detail}; the limit is {limit} bytes (ModelInfo.max_message_bytes): send smaller batches"
    )]
    MessageTooLarge {
        /// The server's limit in bytes.
        limit: usize,
        /// tonic's description (found vs limit).
        detail: String,
    },
    /// The server is draining and takes no new batches.
    #[error("teacher-server is shutting down: send this batch to another replica")]
    ShuttingDown,
    /// The model is still loading (or warming up): the call was made too early.
    #[error(
        "teacher-server is not ready: the model is still loading; retry after {} ms",
        NOT_READY_RETRY.as_millis()
    )]
    NotReady,
    /// The model or libtorch failed on a batch.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The logits could not be encoded for the wire.
    #[error("encoding logits: {0}")]
    Encode(#[from] CodecError),
    /// The model could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The inference engine did not start.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Invalid configuration.
    #[error("configuration: {0}")]
    Config(String),
    /// Network or file-system failure.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

impl From<distill_models::ModelError> for Error {
    fn from(e: distill_models::ModelError) -> Self {
        Error::Load(LoadError::from(e))
    }
}

impl Error {
    /// The gRPC code of this error (the one mapping; exhaustive on purpose).
    pub fn code(&self) -> Code {
        match self {
            Error::Invalid(_) => Code::InvalidArgument,
            Error::Overloaded { .. } | Error::MessageTooLarge { .. } => Code::ResourceExhausted,
            Error::ShuttingDown | Error::NotReady => Code::Unavailable,
            Error::Engine(EngineError::OutOfRange { .. }) => Code::OutOfRange,
            Error::Engine(_)
            | Error::Encode(_)
            | Error::Load(_)
            | Error::Start(_)
            | Error::Io { .. } => Code::Internal,
            Error::Config(_) => Code::FailedPrecondition,
            Error::Transport(_) => Code::Unavailable,
        }
    }

    /// The per-batch `distill.v1.Error` carried in a `LogitsResponse` (the stream stays open).
    pub fn to_wire(&self) -> v1::Error {
        v1::Error {
            code: self.code() as i32,
            message: self.to_string(),
        }
    }
}

/// Maps a failure to read the next request of a stream: tonic's size-limit error becomes
/// [`Error::MessageTooLarge`]; any other status passes through unchanged.
pub fn read_failure(status: tonic::Status, limit: usize) -> tonic::Status {
    if status.code() == Code::OutOfRange && status.message().contains("too large") {
        Error::MessageTooLarge {
            limit,
            detail: status.message().to_string(),
        }
        .into()
    } else {
        status
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        let mut status = tonic::Status::new(e.code(), e.to_string());
        let retry_after = match &e {
            Error::Overloaded { retry_after, .. } => Some(*retry_after),
            Error::NotReady => Some(NOT_READY_RETRY),
            _ => None,
        };
        if let Some(after) = retry_after
            && let Ok(v) = after.as_millis().to_string().parse()
        {
            status.metadata_mut().insert(RETRY_PUSHBACK_HEADER, v);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_retry_hint() {
        let e = Error::Overloaded {
            capacity: 4,
            retry_after: Duration::from_millis(25),
        };
        assert_eq!(e.to_wire().code, Code::ResourceExhausted as i32);
        assert!(e.to_string().contains("retry after 25 ms"));
        let s = tonic::Status::from(e);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.metadata().get(RETRY_PUSHBACK_HEADER).unwrap(), "25");
        let big = tonic::Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 8 bytes",
        );
        let mapped = read_failure(big, 8);
        assert_eq!(mapped.code(), Code::ResourceExhausted);
        assert!(
            mapped.message().contains("found 9 bytes"),
            "{}",
            mapped.message()
        );
        assert_eq!(
            read_failure(tonic::Status::cancelled("x"), 8).code(),
            Code::Cancelled
        );
        let bad = Error::from(InvalidRequest::EmptyBatch { max: 8 });
        assert_eq!(bad.to_wire().code, 3);
        assert_eq!(
            tonic::Status::from(Error::ShuttingDown).code(),
            Code::Unavailable
        );
        let early = tonic::Status::from(Error::NotReady);
        assert_eq!(early.code(), Code::Unavailable);
        assert_eq!(early.metadata().get(RETRY_PUSHBACK_HEADER).unwrap(), "200");
        assert!(
            early.message().contains("still loading"),
            "{}",
            early.message()
        );
        assert_eq!(
            tonic::Status::from(Error::from(EngineError::Stopped)).code(),
            Code::Internal
        );
        let overflow = Error::from(EngineError::OutOfRange {
            dtype: "F16",
            count: 2,
            max: 1.0e5,
            limit: "65504",
        });
        assert_eq!(overflow.to_wire().code, Code::OutOfRange as i32);
        assert!(overflow.to_string().contains("BF16 or F32"), "{overflow}");
        let nan = Error::from(EngineError::NonFinite { count: 3 });
        assert_eq!(nan.code(), Code::Internal);
    }

    #[test]
    fn dtype_labels() {
        assert_eq!(InvalidRequest::dtype_label(0), "DTYPE_UNSPECIFIED");
        assert_eq!(InvalidRequest::dtype_label(1), "F32");
        assert_eq!(InvalidRequest::dtype_label(42), "42 (not a DType)");
    }
}
