//! The `distill.v1` wire contract: generated gRPC types for the `Teacher` service, and the codec
//! between wire [`v1::Tensor`]s and `tch::Tensor`s; the bearer tokens both sides share ([`auth`]).
//!
//! Generated code lives in `OUT_DIR`; this crate only re-exports it.

pub mod auth;
pub mod codec;

/// Generated types of package `distill.v1` (see `proto/distill/v1/teacher.proto`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("distill.v1");
}

/// Encoded `FileDescriptorSet` of `distill.v1`, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("distill_descriptor");

pub use codec::CodecError;

/// gRPC metadata key of a server's retry hint in milliseconds (gRPC A6 "pushback",
/// <https://github.com/grpc/proposal/blob/master/A6-client-retries.md#pushback>): sent by
/// `teacher-server` on overload and while loading, honoured by `student-trainer`.
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";
