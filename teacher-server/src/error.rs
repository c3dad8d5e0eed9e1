//! Errors of the teacher server, and the one place where they become gRPC statuses.
//!
//! Every failure a client can see is an [`Error`]. [`Error::code`] is the single, exhaustive
//! mapping to a gRPC code; `From<Error> for tonic::Status` (whole-stream failures) and
//! [`Error::to_wire`] (per-batch `distill.v1.Error` responses, after which the stream stays
//! open) both go through it, so a bad batch and a failed call report the same code.
//!
//! This module sits above the modules whose errors it wraps and below `service` and `server`,
//! which report through it. Each lower module owns its error (`InvalidRequest` in `validate`,
//! `EngineError` and `StartError` in `engine`, `SubmitError` in `batcher`, [`LoadError`] in
//! `model`, [`ConfigError`] in `config`); [`Error`] wraps them, keeping each one's message, and
//! none of them imports this module.

use crate::batcher::SubmitError;
use crate::config::ConfigError;
use crate::engine::{EngineError, StartError};
use crate::model::LoadError;
use crate::validate::InvalidRequest;
use distill_proto::{CodecError, v1};
use std::time::Duration;
use tonic::Code;

pub use distill_proto::RETRY_PUSHBACK_HEADER;

/// The retry hint of a call made while the model loads ([`Error::NotReady`]).
pub const NOT_READY_RETRY: Duration = Duration::from_millis(200);

/// Every error of the teacher server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A bad request (one batch); the stream stays open.
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The batching queue, or the stream's share of it, is full ([`SubmitError::Overloaded`],
    /// [`SubmitError::StreamShareFull`], with a retry hint).
    #[error(transparent)]
    Overloaded(SubmitError),
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

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Invalid(message) => Error::Config(message),
            ConfigError::Io { context, source } => Error::Io { context, source },
            ConfigError::Load(e) => Error::Load(e),
        }
    }
}

impl From<SubmitError> for Error {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::ShuttingDown => Error::ShuttingDown,
            overloaded => Error::Overloaded(overloaded),
        }
    }
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
            Error::Overloaded(_) | Error::MessageTooLarge { .. } => Code::ResourceExhausted,
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
            Error::Overloaded(e) => e.retry_after(),
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
        let e = Error::from(SubmitError::Overloaded {
            capacity: 4,
            retry_after: Duration::from_millis(25),
        });
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
}
