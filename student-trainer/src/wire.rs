//! Between wire messages and tensors: the `LogitsRequest` of a planned batch, and the decoding
//! of a `LogitsResponse` (per-batch errors sorted into retriable and fatal, shape checks).
//!
//! gRPC status codes appear here as [`tonic::Code`] values, never as bare numbers.

use crate::client::ClientError;
use crate::schedule::PlannedBatch;
use distill_proto::codec;
use distill_proto::v1::{self, LogitsRequest, logits_response};
use tch::{Kind, Tensor};
use tonic::Code;

/// Per-batch error codes after which the batch is sent again (to any replica) rather than
/// failing the run: the teacher could not answer *now*.
pub(crate) const RETRIABLE_CODES: [Code; 5] = [
    Code::Cancelled,
    Code::DeadlineExceeded,
    Code::ResourceExhausted,
    Code::Aborted,
    Code::Unavailable,
];

/// Whether a per-batch error with `code` is worth sending again.
pub(crate) fn is_retriable(code: Code) -> bool {
    RETRIABLE_CODES.contains(&code)
}

/// The request for one planned batch: the rows of `inputs` (`f32 [N, ...sample_shape]`, CPU)
/// named by its indices, asking for dense `f32` logits.
///
/// # Errors
/// [`ClientError::Torch`] for indices out of range, [`ClientError::Codec`] if the rows cannot
/// be encoded.
pub(crate) fn request(
    inputs: &Tensor,
    b: &PlannedBatch,
    batch_id: u64,
) -> Result<LogitsRequest, ClientError> {
    let idx = Tensor::from_slice(&b.indices);
    let rows = inputs.f_index_select(0, &idx)?.f_to_kind(Kind::Float)?;
    Ok(LogitsRequest {
        batch_id,
        inputs: Some(codec::encode(&rows)?),
        output_dtype: v1::DType::F32 as i32,
        top_k: 0,
        temperature: 0.0,
    })
}

/// A decoded answer to one request.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Logits, `f32 [batch, num_logits]`, on the CPU.
    Logits(Tensor),
    /// A retriable per-batch error (see [`RETRIABLE_CODES`]).
    Retry {
        /// Its code.
        code: Code,
        /// The teacher's message.
        message: String,
    },
}

/// Where an answer came from and what it answers, for decoding and error messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answering<'a> {
    /// The replica's URL.
    pub(crate) url: &'a str,
    /// The request id on the wire.
    pub(crate) wire: u64,
    /// The batch's sequence number in the pool.
    pub(crate) seq: u64,
    /// The batch.
    pub(crate) batch: &'a PlannedBatch,
    /// Logits per sample of the replica's group.
    pub(crate) num_logits: i64,
}

/// Decodes the result of a response to `to`: logits of shape `[batch, num_logits]`, or a
/// retriable error.
///
/// # Errors
/// [`ClientError::Batch`] for a non-retriable per-batch error (naming the batch);
/// [`ClientError::Protocol`] for an empty result, sparse logits (dense were requested) or a
/// wrong shape; [`ClientError::Codec`] / [`ClientError::Torch`] for undecodable tensors.
pub(crate) fn decode(
    result: Option<logits_response::Result>,
    to: Answering<'_>,
) -> Result<Decoded, ClientError> {
    let Answering {
        url,
        wire,
        seq,
        batch,
        num_logits,
    } = to;
    let tensor = match result {
        Some(logits_response::Result::Logits(t)) => t,
        Some(logits_response::Result::Error(e)) => {
            let code = Code::from_i32(e.code);
            if is_retriable(code) {
                return Ok(Decoded::Retry {
                    code,
                    message: e.message,
                });
            }
            return Err(ClientError::Batch {
                batch_id: seq,
                epoch: batch.epoch,
                index: batch.index,
                code,
                message: e.message,
            });
        }
        Some(logits_response::Result::Sparse(_)) => {
            return Err(ClientError::Protocol(format!(
                "{url}: sparse logits for batch_id {wire}, dense requested"
            )));
        }
        None => {
            return Err(ClientError::Protocol(format!(
                "{url}: empty response for batch_id {wire}"
            )));
        }
    };
    let logits = codec::decode(&tensor)?;
    let expected = vec![batch.indices.len() as i64, num_logits];
    if logits.size() != expected {
        return Err(ClientError::Protocol(format!(
            "{url}: batch_id {wire}: logits of shape {:?}, expected {expected:?}",
            logits.size()
        )));
    }
    Ok(Decoded::Logits(logits.f_to_kind(Kind::Float)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(indices: &[i64]) -> PlannedBatch {
        PlannedBatch {
            epoch: 3,
            index: 4,
            indices: indices.to_vec(),
        }
    }

    fn to(b: &PlannedBatch) -> Answering<'_> {
        Answering {
            url: "http://r:1",
            wire: 9,
            seq: 1,
            batch: b,
            num_logits: 3,
        }
    }

    fn logits(rows: i64) -> Option<logits_response::Result> {
        let t = Tensor::arange(rows * 3, (Kind::Float, tch::Device::Cpu)).reshape([rows, 3]);
        Some(logits_response::Result::Logits(codec::encode(&t).unwrap()))
    }

    fn error(code: Code) -> Option<logits_response::Result> {
        Some(logits_response::Result::Error(v1::Error {
            code: code as i32,
            message: "NaN in inputs".into(),
        }))
    }

    #[test]
    fn logits_of_the_right_shape_decode() {
        let b = planned(&[5, 6]);
        let Decoded::Logits(t) = decode(logits(2), to(&b)).unwrap() else {
            panic!("not logits")
        };
        assert_eq!(t.size(), [2, 3]);
        assert_eq!(t.kind(), Kind::Float);
    }

    #[test]
    fn misshaped_empty_sparse_and_fatal_errors_are_rejected_naming_the_batch() {
        let b = planned(&[5, 6]);
        let e = decode(logits(1), to(&b)).unwrap_err().to_string();
        assert!(e.contains("[1, 3]") && e.contains("[2, 3]"), "{e}");
        let e = decode(None, to(&b)).unwrap_err().to_string();
        assert!(
            e.contains("empty response") && e.contains("http://r:1"),
            "{e}"
        );
        let sparse = Some(logits_response::Result::Sparse(v1::SparseLogits::default()));
        assert!(
            decode(sparse, to(&b))
                .unwrap_err()
                .to_string()
                .contains("sparse")
        );
        let e = decode(error(Code::InvalidArgument), to(&b)).unwrap_err();
        assert!(
            matches!(
                e,
                ClientError::Batch {
                    code: Code::InvalidArgument,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(
            e.contains("batch 1") && e.contains("epoch 3") && e.contains("NaN"),
            "{e}"
        );
    }

    #[test]
    fn only_the_named_retriable_codes_are_retried() {
        let b = planned(&[1]);
        for code in RETRIABLE_CODES {
            assert!(
                matches!(decode(error(code), to(&b)), Ok(Decoded::Retry { code: c, .. }) if c == code),
                "{code:?}"
            );
        }
        for code in [
            Code::InvalidArgument,
            Code::Internal,
            Code::Unknown,
            Code::FailedPrecondition,
        ] {
            assert!(decode(error(code), to(&b)).is_err(), "{code:?}");
        }
    }
}
