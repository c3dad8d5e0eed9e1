//! Between wire messages and tensors: the `LogitsRequest` of a planned batch (with the run's
//! [`TargetRequest`]: wire dtype, top-k, temperature), and the decoding of a `LogitsResponse`
//! into [`SoftTargets`] (dense F32/F16/BF16 rows converted to `f32`, or top-k rows with their
//! tail), per-batch errors sorted into retriable and fatal, shape checks.
//!
//! gRPC status codes appear here as [`tonic::Code`] values, never as bare numbers.

use super::error::ClientError;
use crate::schedule::{PlannedBatch, ViewedBatch};
use crate::soft_targets::{SoftTargets, TargetRequest, WireDType};
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

/// The contract's dtype of a wire dtype.
pub(crate) fn proto_dtype(wire: WireDType) -> v1::DType {
    match wire {
        WireDType::F32 => v1::DType::F32,
        WireDType::F16 => v1::DType::F16,
        WireDType::Bf16 => v1::DType::Bf16,
    }
}

/// The request for one planned batch: the rows of `inputs` (`f32 [N, ...sample_shape]`, or token
/// ids `i64 [N, S]`, CPU) named by its indices, asking for the logits `spec` describes.
///
/// # Errors
/// [`ClientError::Torch`] for indices out of range, [`ClientError::Codec`] if the rows cannot
/// be encoded.
pub(crate) fn request(
    inputs: &Tensor,
    b: &PlannedBatch,
    batch_id: u64,
    spec: &TargetRequest,
) -> Result<LogitsRequest, ClientError> {
    let idx = Tensor::from_slice(&b.indices);
    request_rows(&inputs.f_index_select(0, &idx)?, batch_id, spec)
}

/// The request carrying `rows` (a batch's inputs, made for this teacher: `f32 [B, ...]`, or
/// token ids), asking for the logits `spec` describes.
///
/// # Errors
/// [`ClientError::Torch`] / [`ClientError::Codec`] if the rows cannot be converted or encoded.
pub(crate) fn request_rows(
    rows: &Tensor,
    batch_id: u64,
    spec: &TargetRequest,
) -> Result<LogitsRequest, ClientError> {
    // Images travel as f32; token ids keep their integer kind.
    let rows = if rows.is_floating_point() {
        rows.f_to_kind(Kind::Float)?
    } else {
        rows.shallow_clone()
    };
    Ok(LogitsRequest {
        batch_id,
        inputs: Some(codec::encode(&rows)?),
        output_dtype: proto_dtype(spec.wire) as i32,
        top_k: spec.top_k,
        temperature: spec.temperature as f32,
        attention_mask: None,
        outputs: spec.hint_output.iter().cloned().collect(),
        gather_ids: None,
        gathered_only: false,
    })
}

/// The request for a batch made elsewhere ([`ViewedBatch`]): its inputs, and its attention
/// mask (`i64 [B, S]`) and gather ids (`i64 [B, S, m]`) when it has them.
///
/// # Errors
/// As [`request_rows`].
pub(crate) fn request_made(
    made: &ViewedBatch,
    batch_id: u64,
    spec: &TargetRequest,
) -> Result<LogitsRequest, ClientError> {
    let mut req = request_rows(&made.inputs, batch_id, spec)?;
    req.attention_mask = made
        .attention_mask
        .as_ref()
        .map(codec::encode)
        .transpose()?;
    req.gather_ids = made.gather_ids.as_ref().map(codec::encode).transpose()?;
    if let Some(t) = made.temperature {
        req.temperature = t as f32;
    }
    Ok(req)
}

/// The `gathered` part of a response to a request with `gather_ids` of shape `expected`
/// (`[B, S, m]`), decoded to `f32`.
///
/// # Errors
/// [`ClientError::Protocol`] (naming the replica and batch) when it is missing (a
/// teacher-server older than `gather_ids`) or of another shape; [`ClientError::Codec`] for an
/// undecodable tensor.
pub(crate) fn decode_gathered(
    gathered: Option<&v1::Tensor>,
    expected: &[i64],
    url: &str,
    wire: u64,
) -> Result<Tensor, ClientError> {
    let protocol = |what: String| ClientError::Protocol(format!("{url}: batch_id {wire}: {what}"));
    let t = gathered.ok_or_else(|| {
        protocol(
            "no gathered log-probabilities in the response (a teacher-server older than \
             gather_ids?)"
                .into(),
        )
    })?;
    let t = decode_float(t, "gathered", &protocol)?;
    if t.size() != expected {
        return Err(protocol(format!(
            "gathered of shape {:?}, expected {expected:?}",
            t.size()
        )));
    }
    Ok(t)
}

/// The named output `name` of a response (`outputs`), decoded to `f32 [rows, ...]`: the hint
/// a `distill --hint` run asked for.
///
/// # Errors
/// [`ClientError::Protocol`] (naming the replica and batch) when the response lacks it (a
/// teacher-server too old for named outputs) or its first dimension is not `rows`;
/// [`ClientError::Codec`] / [`ClientError::Torch`] for an undecodable tensor.
pub(crate) fn decode_hint(
    outputs: &[v1::NamedTensor],
    name: &str,
    rows: i64,
    url: &str,
    wire: u64,
) -> Result<Tensor, ClientError> {
    let protocol = |what: String| ClientError::Protocol(format!("{url}: batch_id {wire}: {what}"));
    let found = outputs
        .iter()
        .find(|o| o.name == name)
        .and_then(|o| o.tensor.as_ref())
        .ok_or_else(|| {
            protocol(format!(
                "no output {name} in the response (a teacher-server older than named outputs?)"
            ))
        })?;
    let t = decode_float(found, &format!("output {name}"), &protocol)?;
    if t.size().first() != Some(&rows) {
        return Err(protocol(format!(
            "output {name} of shape {:?}, expected {rows} rows",
            t.size()
        )));
    }
    Ok(t)
}

/// A decoded answer to one request.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// Soft targets on the CPU, every float part `f32`: dense `[batch, num_logits]`, or sparse
    /// `[batch, top_k]` with a tail `[batch]`.
    Targets(SoftTargets),
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
    /// Logits per sample (per position) of the replica's group.
    pub(crate) num_logits: i64,
    /// `Some(S)` when the logits come per position of sequences of `S` tokens.
    pub(crate) positions: Option<i64>,
    /// The `top_k` requested (0: dense).
    pub(crate) top_k: u32,
}

/// Decodes the result of a response to `to`: dense logits `[batch, num_logits]` (F32, F16 or
/// BF16 on the wire) or, when top-k was requested, the sparse rows; or a retriable error.
///
/// # Errors
/// [`ClientError::Batch`] for a non-retriable per-batch error (naming the batch);
/// [`ClientError::Protocol`] for an empty result, a form other than the one requested (sparse
/// for dense or dense for sparse), a sparse response without `tail_logsumexp` (a server too old
/// for sparse soft targets), wrong shapes, dtypes or indices; [`ClientError::Codec`] /
/// [`ClientError::Torch`] for undecodable tensors.
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
        positions,
        top_k,
    } = to;
    // The leading dimensions of every part: [batch] or [batch, S].
    let mut lead = vec![batch.indices.len() as i64];
    lead.extend(positions);
    let with = |last: i64| -> Vec<i64> { lead.iter().copied().chain([last]).collect() };
    let protocol = |what: String| ClientError::Protocol(format!("{url}: batch_id {wire}: {what}"));
    match result {
        Some(logits_response::Result::Logits(t)) => {
            if top_k > 0 {
                return Err(protocol(format!(
                    "dense logits, top-k {top_k} requested (sparse expected)"
                )));
            }
            let logits = decode_float(&t, "logits", &protocol)?;
            let expected = with(num_logits);
            if logits.size() != expected {
                return Err(protocol(format!(
                    "logits of shape {:?}, expected {expected:?}",
                    logits.size()
                )));
            }
            Ok(Decoded::Targets(SoftTargets::Dense(logits)))
        }
        Some(logits_response::Result::Sparse(s)) => {
            if top_k == 0 {
                return Err(protocol("sparse logits, dense requested".into()));
            }
            decode_sparse(s, top_k, num_logits, &lead, &protocol).map(Decoded::Targets)
        }
        Some(logits_response::Result::Error(e)) => {
            let code = Code::from_i32(e.code);
            if is_retriable(code) {
                return Ok(Decoded::Retry {
                    code,
                    message: e.message,
                });
            }
            Err(ClientError::Batch {
                batch_id: seq,
                epoch: batch.epoch,
                index: batch.index,
                code,
                message: e.message,
            })
        }
        None => Err(ClientError::Protocol(format!(
            "{url}: empty response for batch_id {wire}"
        ))),
    }
}

/// The top-k rows of a sparse answer: indices `i64 [..lead, top_k]` within `0..num_logits`,
/// values and the tail's log-sum-exp as `f32` (`[..lead, top_k]` and `lead`).
///
/// # Errors
/// [`ClientError::Protocol`] (through `protocol`) for a missing part, a wrong dtype or shape, or
/// an index out of range; [`ClientError::Codec`] / [`ClientError::Torch`] for undecodable
/// tensors.
fn decode_sparse(
    s: v1::SparseLogits,
    top_k: u32,
    num_logits: i64,
    lead: &[i64],
    protocol: &dyn Fn(String) -> ClientError,
) -> Result<SoftTargets, ClientError> {
    let v1::SparseLogits {
        indices,
        values,
        logsumexp: _,
        tail_logsumexp,
    } = s;
    let Some(tail) = tail_logsumexp else {
        return Err(protocol(
            "sparse logits without tail_logsumexp: the teacher-server is too old for \
             sparse soft targets (upgrade it, or use dense targets: --top-k 0)"
                .into(),
        ));
    };
    let (Some(indices), Some(values)) = (indices, values) else {
        return Err(protocol("sparse logits without indices or values".into()));
    };
    let expected: Vec<i64> = lead.iter().copied().chain([i64::from(top_k)]).collect();
    if indices.dtype != v1::DType::I64 as i32 {
        return Err(protocol(format!(
            "top-k indices of dtype {}, expected I64",
            v1::DType::try_from(indices.dtype)
                .map_or_else(|_| indices.dtype.to_string(), |d| d.as_str_name().into())
        )));
    }
    let indices = codec::decode(&indices)?;
    let values = decode_float(&values, "top-k values", &protocol)?;
    let tail = decode_float(&tail, "tail_logsumexp", &protocol)?;
    for (name, got, want) in [
        ("indices", indices.size(), expected.clone()),
        ("values", values.size(), expected.clone()),
        ("tail_logsumexp", tail.size(), lead.to_vec()),
    ] {
        if got != want {
            return Err(protocol(format!(
                "top-k {name} of shape {got:?}, expected {want:?}"
            )));
        }
    }
    if lead[0] > 0 {
        let lo = indices.f_min()?.f_int64_value(&[])?;
        let hi = indices.f_max()?.f_int64_value(&[])?;
        if lo < 0 || hi >= num_logits {
            return Err(protocol(format!(
                "top-k index {} outside 0..{num_logits}",
                if lo < 0 { lo } else { hi }
            )));
        }
    }
    Ok(SoftTargets::Sparse {
        indices,
        values,
        tail_logsumexp: tail,
    })
}

/// Decodes a floating-point tensor (F32, F16 or BF16 on the wire) to `f32`.
fn decode_float(
    t: &v1::Tensor,
    what: &str,
    protocol: &dyn Fn(String) -> ClientError,
) -> Result<Tensor, ClientError> {
    let floating = [v1::DType::F32, v1::DType::F16, v1::DType::Bf16];
    if !floating.iter().any(|d| *d as i32 == t.dtype) {
        return Err(protocol(format!(
            "{what} of dtype {}, expected F32, F16 or BF16",
            v1::DType::try_from(t.dtype)
                .map_or_else(|_| t.dtype.to_string(), |d| d.as_str_name().into())
        )));
    }
    Ok(codec::decode(t)?.f_to_kind(Kind::Float)?)
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
            positions: None,
            top_k: 0,
        }
    }

    fn to_k(b: &PlannedBatch, top_k: u32) -> Answering<'_> {
        Answering { top_k, ..to(b) }
    }

    fn tensor(t: &Tensor, dtype: v1::DType) -> v1::Tensor {
        codec::encode_as(t, dtype).unwrap()
    }

    /// A sparse answer for `rows` rows of top-2 over 3 classes.
    fn sparse(rows: i64, tail: bool) -> v1::SparseLogits {
        let indices = Tensor::from_slice(&[2i64, 0]).repeat([rows, 1]);
        let values = Tensor::from_slice(&[3.0f32, 1.0]).repeat([rows, 1]);
        let lse = Tensor::zeros([rows], (Kind::Float, tch::Device::Cpu));
        v1::SparseLogits {
            indices: Some(tensor(&indices, v1::DType::I64)),
            values: Some(tensor(&values, v1::DType::Bf16)),
            logsumexp: Some(tensor(&lse, v1::DType::F32)),
            tail_logsumexp: tail.then(|| tensor(&(lse - 0.5), v1::DType::F32)),
        }
    }

    fn message(r: Result<Decoded, ClientError>) -> String {
        match r {
            Ok(d) => panic!("expected an error, got {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn requests_carry_the_runs_wire_top_k_and_temperature() {
        let inputs = Tensor::zeros([4, 2], (Kind::Float, tch::Device::Cpu));
        let spec = TargetRequest {
            wire: WireDType::Bf16,
            top_k: 3,
            temperature: 2.5,
            hint_output: Some("features".into()),
        };
        let r = request(&inputs, &planned(&[1, 3]), 8, &spec).unwrap();
        assert_eq!(r.outputs, ["features"]);
        assert_eq!(
            (r.batch_id, r.output_dtype, r.top_k, r.temperature),
            (8, v1::DType::Bf16 as i32, 3, 2.5)
        );
        let r = request(&inputs, &planned(&[0]), 9, &TargetRequest::dense_f32()).unwrap();
        assert_eq!((r.output_dtype, r.top_k), (v1::DType::F32 as i32, 0));
    }

    #[test]
    fn f16_and_bf16_dense_rows_decode_to_f32() {
        let b = planned(&[5, 6]);
        let x = Tensor::from_slice(&[0.5f32, -1.25, 3.0, 8.0, 0.0, -2.0]).reshape([2, 3]);
        for dtype in [v1::DType::F16, v1::DType::Bf16] {
            let r = Some(logits_response::Result::Logits(tensor(&x, dtype)));
            let Decoded::Targets(SoftTargets::Dense(t)) = decode(r, to(&b)).unwrap() else {
                panic!("not dense")
            };
            assert_eq!(t.kind(), Kind::Float);
            // These values are exact in both formats.
            assert_eq!(
                Vec::<f32>::try_from(t.flatten(0, -1)).unwrap(),
                [0.5, -1.25, 3.0, 8.0, 0.0, -2.0]
            );
        }
        let ints = Some(logits_response::Result::Logits(tensor(
            &x.to_kind(Kind::Int64),
            v1::DType::I64,
        )));
        let e = message(decode(ints, to(&b)));
        assert!(
            e.contains("expected F32, F16 or BF16") && e.contains("I64"),
            "{e}"
        );
    }

    #[test]
    fn sparse_rows_decode_with_their_tail() {
        let b = planned(&[5, 6]);
        let r = Some(logits_response::Result::Sparse(sparse(2, true)));
        let Decoded::Targets(SoftTargets::Sparse {
            indices,
            values,
            tail_logsumexp,
        }) = decode(r, to_k(&b, 2)).unwrap()
        else {
            panic!("not sparse")
        };
        assert_eq!(indices.size(), [2, 2]);
        assert_eq!(values.kind(), Kind::Float);
        assert_eq!(Vec::<f32>::try_from(tail_logsumexp).unwrap(), [-0.5, -0.5]);
    }

    #[test]
    fn sparse_without_tail_wrong_form_and_bad_shapes_are_refused() {
        let b = planned(&[5, 6]);
        let e = message(decode(
            Some(logits_response::Result::Sparse(sparse(2, false))),
            to_k(&b, 2),
        ));
        assert!(e.contains("too old for sparse soft targets"), "{e}");
        let e = message(decode(
            Some(logits_response::Result::Sparse(sparse(2, true))),
            to(&b),
        ));
        assert!(e.contains("sparse logits, dense requested"), "{e}");
        let e = message(decode(logits(2), to_k(&b, 2)));
        assert!(e.contains("dense logits, top-k 2 requested"), "{e}");
        let e = message(decode(
            Some(logits_response::Result::Sparse(sparse(1, true))),
            to_k(&b, 2),
        ));
        assert!(e.contains("[1, 2]") && e.contains("expected [2, 2]"), "{e}");
        let e = message(decode(
            Some(logits_response::Result::Sparse(sparse(2, true))),
            to_k(&b, 3),
        ));
        assert!(e.contains("expected [2, 3]"), "{e}");
        let mut bad = sparse(2, true);
        bad.indices = Some(tensor(
            &Tensor::from_slice(&[3i64, 0, 1, 0]).reshape([2, 2]),
            v1::DType::I64,
        ));
        let e = message(decode(
            Some(logits_response::Result::Sparse(bad)),
            to_k(&b, 2),
        ));
        assert!(e.contains("index 3 outside 0..3"), "{e}");
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
        let Decoded::Targets(SoftTargets::Dense(t)) = decode(logits(2), to(&b)).unwrap() else {
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
            let e = message(decode(error(code), to(&b)));
            assert!(
                e.contains("teacher rejected batch") && e.contains(&format!("{code:?}")),
                "{code:?}: {e}"
            );
        }
    }
}
