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
    /// A sequence model's `max_seq_len` (`input_shape` is then `[max_seq_len]` and any length
    /// up to it is accepted); `None` for a classifier.
    pub max_seq_len: Option<i64>,
    /// `--max-message-bytes`: the largest response that may be sent.
    pub max_message_bytes: u64,
    /// The named outputs a request may ask for beside the logits.
    pub outputs: Vec<OutputLimit>,
    /// The logits output's name (error messages).
    pub logits_output: String,
}

/// A named output a request may ask for.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OutputLimit {
    /// Its name.
    pub name: String,
    /// Values per sample (a per-position output: per position).
    pub elements: i64,
    /// A sequence model's per-position output (`[batch, seq, ...]`).
    pub per_position: bool,
}

/// A request that passed validation.
#[derive(Debug)]
pub(crate) struct ValidRequest {
    /// Inputs `[batch, ...input_shape]`, CPU, the model's input dtype, all finite (a sequence
    /// model: `i64 [batch, seq]`, every id in `0..num_logits`).
    pub inputs: Tensor,
    /// A sequence model's attention mask, `i64 [batch, seq]` of 0 and 1; `None`: all real.
    pub mask: Option<Tensor>,
    /// How the logits are wanted.
    pub output: OutputSpec,
    /// Named outputs wanted beside the logits, each one of [`Limits::outputs`].
    pub outputs: Vec<String>,
}

/// Validates `req` and decodes its inputs.
///
/// # Errors
/// The first [`InvalidRequest`] found: missing inputs, dtype, tensor consistency (negative or
/// absurd dimensions, data length), rank, per-sample shape (a sequence model: sequence length),
/// empty or oversized batch, output dtype, `top_k`, a response over the message limit,
/// non-finite values, token ids outside the vocabulary, and the attention mask's dtype, shape
/// and values.
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
        attention_mask,
        outputs,
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
    if let Some(max) = limits.max_seq_len {
        if !(1..=max).contains(&shape[1]) {
            return Err(InvalidRequest::SequenceLength {
                max,
                got: shape[1],
                shape,
            });
        }
    } else if shape[1..] != limits.input_shape[..] {
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
    let mut extra = Vec::with_capacity(outputs.len());
    for name in outputs {
        match limits.outputs.iter().find(|o| &o.name == name) {
            Some(o) => extra.push(o),
            None => {
                return Err(InvalidRequest::UnknownOutput {
                    name: name.clone(),
                    known: if limits.outputs.is_empty() {
                        "none".into()
                    } else {
                        limits
                            .outputs
                            .iter()
                            .map(|o| o.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                    logits: limits.logits_output.clone(),
                });
            }
        }
    }
    check_response_size(&shape, limits, kind, i64::from(*top_k), &extra)?;
    let tensor = codec::decode(inputs)?;
    if matches!(
        checked.kind,
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16
    ) {
        check_finite(&tensor)?;
    }
    let mask = match (attention_mask, limits.max_seq_len) {
        (None, _) => None,
        (Some(m), None) => {
            return Err(InvalidRequest::MaskForClassifier {
                got: m.shape.clone(),
            });
        }
        (Some(m), Some(_)) => Some(decode_mask(m, &shape)?),
    };
    if limits.max_seq_len.is_some() {
        check_token_ids(&tensor, limits.num_logits)?;
    }
    Ok(ValidRequest {
        inputs: tensor,
        mask,
        output: OutputSpec {
            kind,
            top_k: i64::from(*top_k),
            temperature,
        },
        outputs: outputs.clone(),
    })
}

/// Rejects a request whose response (dense logits, or top-k with its log-sum-exps) would not
/// fit `limits.max_message_bytes`.
fn check_response_size(
    shape: &[i64],
    limits: &Limits,
    kind: Kind,
    top_k: i64,
    outputs: &[&OutputLimit],
) -> Result<(), InvalidRequest> {
    // Rows of logits: samples, times positions for a sequence model.
    let rows: u64 = match limits.max_seq_len {
        Some(_) => shape.iter().take(2).map(|&d| d.max(0) as u64).product(),
        None => shape.first().map_or(0, |&d| d.max(0) as u64),
    };
    let elt = kind.elt_size_in_bytes() as u64;
    let (bytes, what) = if top_k == 0 {
        (
            rows.saturating_mul(limits.num_logits as u64)
                .saturating_mul(elt),
            "dense",
        )
    } else {
        // Indices (i64) and values per entry, two f32 log-sum-exps per row.
        (
            rows.saturating_mul((top_k as u64).saturating_mul(8 + elt).saturating_add(8)),
            "top-k",
        )
    };
    // The named outputs, in the same kind: per sample, or per position.
    let samples = shape.first().map_or(0, |&d| d.max(0) as u64);
    let extra: u64 = outputs
        .iter()
        .map(|o| {
            let n = if o.per_position { rows } else { samples };
            n.saturating_mul(o.elements.max(0) as u64)
                .saturating_mul(elt)
                .saturating_add(64)
        })
        .fold(0, u64::saturating_add);
    // Protobuf framing and the timing, generously.
    let bytes = bytes.saturating_add(extra).saturating_add(1024);
    if bytes <= limits.max_message_bytes {
        return Ok(());
    }
    let mut dims: Vec<i64> = match limits.max_seq_len {
        Some(_) => shape.iter().take(2).copied().collect(),
        None => shape.iter().take(1).copied().collect(),
    };
    dims.push(if top_k == 0 { limits.num_logits } else { top_k });
    let names: Vec<&str> = outputs.iter().map(|o| o.name.as_str()).collect();
    Err(InvalidRequest::ResponseTooLarge {
        what: format!(
            "{what} {} logits {dims:?}{}",
            codec::dtype_of(kind).map_or("?", |d| d.as_str_name()),
            if names.is_empty() {
                String::new()
            } else {
                format!(" with outputs {}", names.join(", "))
            }
        ),
        bytes,
        limit: limits.max_message_bytes,
    })
}

/// The attention mask of a sequence batch of shape `shape` (`[batch, seq]`): U8 or I64, that
/// shape, values 0 or 1; returned as `i64`.
fn decode_mask(m: &v1::Tensor, shape: &[i64]) -> Result<Tensor, InvalidRequest> {
    if m.dtype != v1::DType::U8 as i32 && m.dtype != v1::DType::I64 as i32 {
        return Err(InvalidRequest::MaskDType {
            got: InvalidRequest::dtype_label(m.dtype),
        });
    }
    let checked =
        codec::check(m).map_err(|e| InvalidRequest::Tensor(format!("attention_mask: {e}")))?;
    if checked.shape != shape {
        return Err(InvalidRequest::MaskShape {
            expected: shape.to_vec(),
            got: checked.shape,
        });
    }
    let torch = |e: tch::TchError| {
        InvalidRequest::Tensor(format!(
            "attention_mask: {}",
            distill_models::torch_message(&e)
        ))
    };
    let mask = codec::decode(m)
        .map_err(|e| InvalidRequest::Tensor(format!("attention_mask: {e}")))?
        .f_to_kind(Kind::Int64)
        .map_err(torch)?;
    let bad = mask
        .f_ne(0)
        .and_then(|nz| nz.f_logical_and(&mask.f_ne(1)?))
        .map_err(torch)?;
    if let Some((row, position, flat)) = first_true(&bad, shape[1]).map_err(torch)? {
        let value = mask
            .f_flatten(0, -1)
            .and_then(|f| f.f_int64_value(&[flat]))
            .map_err(torch)?;
        return Err(InvalidRequest::MaskValue {
            value,
            row,
            position,
        });
    }
    Ok(mask)
}

/// Rejects token ids outside `0..vocab`, naming the first (row-major).
fn check_token_ids(ids: &Tensor, vocab: i64) -> Result<(), InvalidRequest> {
    let torch = |e: tch::TchError| {
        InvalidRequest::Tensor(format!(
            "checking token ids: {}",
            distill_models::torch_message(&e)
        ))
    };
    let bad = ids
        .f_lt(0)
        .and_then(|lo| lo.f_logical_or(&ids.f_ge(vocab)?))
        .map_err(torch)?;
    let seq = ids.size().get(1).copied().unwrap_or(1);
    let Some((row, position, flat)) = first_true(&bad, seq).map_err(torch)? else {
        return Ok(());
    };
    let count = bad
        .f_sum(Kind::Int64)
        .and_then(|c| c.f_int64_value(&[]))
        .map_err(torch)?;
    let value = ids
        .f_flatten(0, -1)
        .and_then(|f| f.f_int64_value(&[flat]))
        .map_err(torch)?;
    Err(InvalidRequest::TokenId {
        vocab,
        count,
        value,
        row,
        position,
    })
}

/// `(row, position, flat index)` of the first true element of a bool `[batch, seq]` tensor.
fn first_true(bad: &Tensor, seq: i64) -> Result<Option<(i64, i64, i64)>, tch::TchError> {
    let flat = bad.f_flatten(0, -1)?.f_to_kind(Kind::Int8)?;
    if flat.numel() == 0 || flat.f_max()?.f_int64_value(&[])? == 0 {
        return Ok(None);
    }
    let i = flat.f_argmax(0, false)?.f_int64_value(&[])?;
    Ok(Some((i / seq.max(1), i % seq.max(1), i)))
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
            max_seq_len: None,
            max_message_bytes: 4 << 20,
            outputs: vec![
                OutputLimit {
                    name: "features".into(),
                    elements: 128,
                    per_position: false,
                },
                OutputLimit {
                    name: "conv".into(),
                    elements: 64 * 12 * 12,
                    per_position: false,
                },
            ],
            logits_output: "logits".into(),
        }
    }

    /// A sequence model: vocabulary 50, sequences up to 6 tokens, 4 KiB messages.
    fn lm_limits() -> Limits {
        Limits {
            input_shape: vec![6],
            input_dtype: v1::DType::I64,
            num_logits: 50,
            max_batch_size: 8,
            max_seq_len: Some(6),
            max_message_bytes: 4096,
            outputs: vec![OutputLimit {
                name: "hidden".into(),
                elements: 16,
                per_position: true,
            }],
            logits_output: "0".into(),
        }
    }

    fn ids(shape: Vec<i64>, values: &[i64]) -> v1::Tensor {
        v1::Tensor {
            dtype: v1::DType::I64 as i32,
            shape,
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    fn lm_request(inputs: v1::Tensor, mask: Option<v1::Tensor>, top_k: u32) -> v1::LogitsRequest {
        v1::LogitsRequest {
            batch_id: 1,
            inputs: Some(inputs),
            output_dtype: 0,
            top_k,
            temperature: 0.0,
            attention_mask: mask,
            outputs: Vec::new(),
        }
    }

    #[test]
    fn sequence_batches_of_any_length_with_masks_are_accepted() {
        let l = lm_limits();
        // Two sequences of 3 tokens, the second padded after 2; dense logits 2·3·50·4 = 1200 B
        // (+ 1 KiB for framing).
        let mask = v1::Tensor {
            dtype: v1::DType::U8 as i32,
            shape: vec![2, 3],
            data: vec![1, 1, 1, 1, 1, 0],
        };
        let v = validate(
            &lm_request(ids(vec![2, 3], &[1, 2, 3, 4, 5, 0]), Some(mask), 0),
            &l,
        )
        .unwrap();
        assert_eq!(v.inputs.size(), vec![2, 3]);
        let m = v.mask.unwrap();
        assert_eq!(m.kind(), Kind::Int64);
        assert_eq!(
            Vec::<i64>::try_from(m.flatten(0, -1)).unwrap(),
            [1, 1, 1, 1, 1, 0]
        );
        let v = validate(&lm_request(ids(vec![1, 6], &[49; 6]), None, 4), &l).unwrap();
        assert!(v.mask.is_none());
    }

    #[test]
    fn sequence_errors_name_the_position_and_what_was_expected() {
        let l = lm_limits();
        let msg = |r: v1::LogitsRequest| validate(&r, &l).unwrap_err().to_string();
        let e = msg(lm_request(ids(vec![1, 7], &[0; 7]), None, 4));
        assert!(
            e.contains("between 1 and 6 tokens") && e.contains("got 7"),
            "{e}"
        );
        let e = msg(lm_request(ids(vec![2, 3], &[1, 2, 3, 4, 50, 60]), None, 4));
        assert!(
            e.contains("token ids in 0..50")
                && e.contains("got 2 outside")
                && e.contains("first: 50 at batch row 1, position 1"),
            "{e}"
        );
        let e = msg(lm_request(ids(vec![1, 2], &[-1, 0]), None, 4));
        assert!(e.contains("first: -1 at batch row 0, position 0"), "{e}");
        let e = msg(lm_request(
            ids(vec![1, 2], &[1, 2]),
            Some(ids(vec![2, 1], &[1, 1])),
            4,
        ));
        assert!(
            e.contains("expected the inputs' shape [1, 2], got [2, 1]"),
            "{e}"
        );
        let f32_mask = v1::Tensor {
            dtype: v1::DType::F32 as i32,
            shape: vec![1, 2],
            data: vec![0; 8],
        };
        let e = msg(lm_request(ids(vec![1, 2], &[1, 2]), Some(f32_mask), 4));
        assert!(e.contains("expected U8 or I64, got F32"), "{e}");
        let e = msg(lm_request(
            ids(vec![1, 2], &[1, 2]),
            Some(ids(vec![1, 2], &[1, 2])),
            4,
        ));
        assert!(e.contains("got 2 at batch row 0, position 1"), "{e}");
        // Dense: 4 · 6 · 50 · 4 = 4800 B > 4096; top-k 4 (4 · 6 · (4 · 12 + 8) B) fits.
        let e = msg(lm_request(ids(vec![4, 6], &[0; 24]), None, 0));
        assert!(
            e.contains("dense F32 logits [4, 6, 50]")
                && e.contains("above the message limit of 4096 bytes")
                && e.contains("request top_k"),
            "{e}"
        );
        validate(&lm_request(ids(vec![4, 6], &[0; 24]), None, 4), &l).unwrap();
        // A mask sent to a classifier.
        let mut r = ok(1);
        r.attention_mask = Some(ids(vec![1, 16], &[1; 16]));
        let e = validate(&r, &limits()).unwrap_err().to_string();
        assert!(e.contains("not a sequence model"), "{e}");
    }

    fn request(dtype: i32, shape: Vec<i64>, data: Vec<u8>) -> v1::LogitsRequest {
        v1::LogitsRequest {
            batch_id: 7,
            inputs: Some(v1::Tensor { dtype, shape, data }),
            output_dtype: 0,
            top_k: 0,
            temperature: 0.0,
            attention_mask: None,
            outputs: Vec::new(),
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
    fn named_outputs_are_checked_by_name_and_counted_in_the_response_size() {
        let mut r = ok(2);
        r.outputs = vec!["conv".into(), "features".into()];
        assert_eq!(
            validate(&r, &limits()).unwrap().outputs,
            ["conv", "features"]
        );
        for bad in ["feature", "logits"] {
            r.outputs = vec!["features".into(), bad.into()];
            let m = message(&r);
            assert!(
                m.contains(&format!("unknown output \"{bad}\""))
                    && m.contains("(features, conv)")
                    && m.contains("output logits"),
                "{m}"
            );
        }
        // 8 samples of conv in f32: 8 · 9216 · 4 = 294,912 bytes, above a 256 KiB limit that
        // their logits alone fit.
        let small = Limits {
            max_message_bytes: 256 << 10,
            ..limits()
        };
        let mut r = ok(8);
        assert!(validate(&r, &small).is_ok());
        r.outputs = vec!["conv".into()];
        let m = validate(&r, &small).unwrap_err().to_string();
        assert!(
            m.contains("with outputs conv") && m.contains("fewer outputs"),
            "{m}"
        );
        r.output_dtype = v1::DType::Bf16 as i32;
        assert!(validate(&r, &small).is_ok(), "half the bytes in bf16");
        // A per-position output counts every position: 2 sequences · 6 tokens · 16 · 4 bytes.
        let l = lm_limits();
        let mut r = lm_request(ids(vec![2, 6], &[1; 12]), None, 4);
        r.outputs = vec!["hidden".into()];
        assert!(validate(&r, &l).is_ok());
        let tight = Limits {
            max_message_bytes: 2 * 6 * (4 * 12 + 8) + 1024 + 64 + 2 * 6 * 16 * 4 - 1,
            ..lm_limits()
        };
        assert!(validate(&r, &tight).is_err());
        let fits = Limits {
            max_message_bytes: tight.max_message_bytes + 1,
            ..lm_limits()
        };
        assert!(validate(&r, &fits).is_ok());
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
