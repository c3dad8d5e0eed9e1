//! Validation of one `LogitsRequest` against the served model, and its conversion into the
//! domain's inputs tensor and [`OutputSpec`].
//!
//! Checks run cheapest first and never allocate from a claimed shape before it has been checked
//! against the bytes received ([`distill_proto::codec::check`]). Every error names what was
//! expected and what was received.

use crate::engine::OutputSpec;
use crate::error::InvalidRequest;
use distill_proto::{codec, v1};
use tch::{Kind, Tensor};

/// What a request must fit.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Limits {
    /// The model's per-sample input shape.
    pub input_shape: Vec<i64>,
    /// The model's input dtype.
    pub input_dtype: v1::DType,
    /// The model's number of logits (bounds `top_k`).
    pub num_logits: i64,
    /// `--max-batch-size`.
    pub max_batch_size: usize,
}

/// A request that passed validation.
#[derive(Debug)]
pub(crate) struct ValidRequest {
    /// Inputs `[batch, ...input_shape]`, CPU, the model's input dtype, all finite.
    pub inputs: Tensor,
    /// How the logits are wanted.
    pub output: OutputSpec,
}

/// Validates `req` and decodes its inputs.
///
/// # Errors
/// The first [`InvalidRequest`] found: missing inputs, dtype, tensor consistency (negative or
/// absurd dimensions, data length), rank, per-sample shape, empty or oversized batch, output
/// dtype, `top_k`, non-finite values.
pub(crate) fn validate(
    req: &v1::LogitsRequest,
    limits: &Limits,
) -> Result<ValidRequest, InvalidRequest> {
    // Destructured so that a new field cannot be ignored silently.
    let v1::LogitsRequest {
        batch_id: _,
        inputs,
        output_dtype,
        top_k,
        temperature,
    } = req;
    let inputs = inputs
        .as_ref()
        .ok_or_else(|| InvalidRequest::MissingInputs {
            expected_shape: limits.input_shape.clone(),
        })?;
    if inputs.dtype != limits.input_dtype as i32 {
        return Err(InvalidRequest::DType {
            expected: limits.input_dtype.as_str_name().to_string(),
            got: InvalidRequest::dtype_label(inputs.dtype),
        });
    }
    let checked = codec::check(inputs)?;
    let shape = checked.shape;
    let rank = limits.input_shape.len() + 1;
    if shape.len() != rank {
        return Err(InvalidRequest::Rank {
            expected: rank,
            got: shape.len(),
            sample_shape: limits.input_shape.clone(),
            shape,
        });
    }
    if shape[1..] != limits.input_shape[..] {
        return Err(InvalidRequest::SampleShape {
            expected: limits.input_shape.clone(),
            got: shape[1..].to_vec(),
            shape,
        });
    }
    let batch = shape[0] as usize;
    if batch == 0 {
        return Err(InvalidRequest::EmptyBatch {
            max: limits.max_batch_size,
        });
    }
    if batch > limits.max_batch_size {
        return Err(InvalidRequest::BatchTooLarge {
            max: limits.max_batch_size,
            got: batch,
        });
    }
    let kind = match v1::DType::try_from(*output_dtype) {
        // 0 is DTYPE_UNSPECIFIED: dense f32 by default.
        _ if *output_dtype == 0 => Kind::Float,
        Ok(v1::DType::F32) => Kind::Float,
        Ok(v1::DType::F16) => Kind::Half,
        Ok(v1::DType::Bf16) => Kind::BFloat16,
        _ => {
            return Err(InvalidRequest::OutputDType {
                got: InvalidRequest::dtype_label(*output_dtype),
            });
        }
    };
    if i64::from(*top_k) > limits.num_logits {
        return Err(InvalidRequest::TopK {
            max: limits.num_logits,
            got: *top_k,
        });
    }
    // 0 (unset, as old clients send it) means T = 1.
    let temperature = match *temperature {
        0.0 => 1.0,
        t if t.is_finite() && t > 0.0 => t,
        t => return Err(InvalidRequest::Temperature { got: t }),
    };
    let tensor = codec::decode(inputs)?;
    if matches!(
        checked.kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        check_finite(&tensor)?;
    }
    Ok(ValidRequest {
        inputs: tensor,
        output: OutputSpec {
            kind,
            top_k: i64::from(*top_k),
            temperature,
        },
    })
}

/// Rejects NaN and ±Inf.
fn check_finite(t: &Tensor) -> Result<(), InvalidRequest> {
    let torch = |e: tch::TchError| {
        InvalidRequest::Tensor(format!(
            "checking values: {}",
            distill_models::torch_message(&e)
        ))
    };
    let bad = t
        .f_isfinite()
        .and_then(|f| f.f_logical_not())
        .and_then(|b| b.f_flatten(0, -1))
        .and_then(|b| b.f_to_kind(Kind::Int8))
        .map_err(torch)?;
    let count = bad
        .f_sum(Kind::Int64)
        .and_then(|s| s.f_int64_value(&[]))
        .map_err(torch)?;
    if count == 0 {
        return Ok(());
    }
    let first = bad
        .f_argmax(0, false)
        .and_then(|i| i.f_int64_value(&[]))
        .map_err(torch)?;
    Err(InvalidRequest::NonFinite { count, first })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            input_shape: vec![1, 4, 4],
            input_dtype: v1::DType::F32,
            num_logits: 10,
            max_batch_size: 8,
        }
    }

    fn request(dtype: i32, shape: Vec<i64>, data: Vec<u8>) -> v1::LogitsRequest {
        v1::LogitsRequest {
            batch_id: 7,
            inputs: Some(v1::Tensor { dtype, shape, data }),
            output_dtype: 0,
            top_k: 0,
            temperature: 0.0,
        }
    }

    fn floats(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn ok(n: i64) -> v1::LogitsRequest {
        request(1, vec![n, 1, 4, 4], floats(&vec![0.5; 16 * n as usize]))
    }

    fn message(req: &v1::LogitsRequest) -> String {
        validate(req, &limits()).unwrap_err().to_string()
    }

    #[test]
    fn accepts_a_valid_batch() {
        let v = validate(&ok(3), &limits()).unwrap();
        assert_eq!(v.inputs.size(), vec![3, 1, 4, 4]);
        assert_eq!(
            v.output,
            OutputSpec {
                kind: Kind::Float,
                top_k: 0,
                temperature: 1.0,
            }
        );
        let mut r = ok(1);
        r.output_dtype = v1::DType::Bf16 as i32;
        r.top_k = 10;
        r.temperature = 2.5;
        let v = validate(&r, &limits()).unwrap();
        assert_eq!(
            v.output,
            OutputSpec {
                kind: Kind::BFloat16,
                top_k: 10,
                temperature: 2.5,
            }
        );
    }

    #[test]
    fn every_message_names_expected_and_got() {
        let mut missing = ok(1);
        missing.inputs = None;
        let cases: Vec<(v1::LogitsRequest, &[&str])> = vec![
            (missing, &["missing", "[1, 4, 4]"]),
            (
                request(0, vec![1, 1, 4, 4], vec![0; 64]),
                &["expected F32", "got DTYPE_UNSPECIFIED"],
            ),
            (
                request(5, vec![1, 1, 4, 4], vec![0; 16]),
                &["expected F32", "got U8"],
            ),
            (
                request(99, vec![1, 1, 4, 4], vec![0; 64]),
                &["expected F32", "got 99"],
            ),
            (
                request(1, vec![1, 4, 4], floats(&[0.0; 16])),
                &["expected 4", "got 3"],
            ),
            (
                request(1, vec![1, 1, 4, 5], floats(&[0.0; 20])),
                &["expected [1, 4, 4]", "got [1, 4, 5]"],
            ),
            (
                request(1, vec![1, 1, -4, 4], vec![]),
                &["negative dimension -4"],
            ),
            (
                request(1, vec![1 << 40, 1, 1 << 20, 4], vec![]),
                &["[1099511627776, 1, 1048576, 4]", "more than"],
            ),
            (
                request(1, vec![2, 1, 4, 4], floats(&[0.0; 31])),
                &["expected 128 bytes", "124"],
            ),
            (
                request(1, vec![0, 1, 4, 4], vec![]),
                &["expected between 1 and 8", "got 0"],
            ),
            (ok(9), &["expected at most 8", "got 9"]),
        ];
        for (req, needles) in cases {
            let msg = message(&req);
            for n in needles {
                assert!(msg.contains(n), "{msg:?} should contain {n:?}");
            }
        }
        let mut nan = floats(&[0.0; 32]);
        nan[20..24].copy_from_slice(&f32::NAN.to_le_bytes());
        nan[40..44].copy_from_slice(&f32::INFINITY.to_le_bytes());
        let msg = message(&request(1, vec![2, 1, 4, 4], nan));
        assert!(
            msg.contains("expected finite") && msg.contains("got 2") && msg.contains("index 5"),
            "{msg}"
        );
        let mut r = ok(1);
        r.output_dtype = v1::DType::I64 as i32;
        assert!(message(&r).contains("got I64"));
        r.output_dtype = 1234;
        assert!(message(&r).contains("got 1234"));
        let mut r = ok(1);
        r.top_k = 11;
        let msg = message(&r);
        assert!(
            msg.contains("between 1 and 10") && msg.contains("got 11"),
            "{msg}"
        );
        for (bad, got) in [
            (-1.0, "got -1"),
            (f32::NAN, "got NaN"),
            (f32::INFINITY, "got inf"),
            (f32::NEG_INFINITY, "got -inf"),
        ] {
            let mut r = ok(1);
            r.temperature = bad;
            let msg = message(&r);
            assert!(
                msg.contains("temperature: expected > 0 (or 0 for 1)") && msg.contains(got),
                "{msg}"
            );
        }
    }
}
