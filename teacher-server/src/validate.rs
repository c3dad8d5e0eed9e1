//! Validation of one `LogitsRequest` against the served model, and its conversion into the
//! domain's inputs tensor and [`OutputSpec`].
//!
//! Checks run cheapest first and never allocate from a claimed shape before it has been checked
//! against the bytes received ([`distill_proto::codec::check`]). A rejected request gets an
//! [`InvalidRequest`], which names what was expected and what was received; the error mapping
//! (`crate::error`) turns it into `INVALID_ARGUMENT`.

use crate::engine::OutputSpec;
use distill_proto::{CodecError, codec, v1};
use tch::{Kind, Tensor};

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
    /// `gather_ids` is not I64.
    #[error("gather_ids dtype: expected I64 token ids, got {got}")]
    GatherDType {
        /// The dtype received.
        got: String,
    },
    /// `gather_ids` does not have the inputs' rows (and positions) plus one dimension of m ≥ 1.
    #[error(
        "gather_ids shape: expected {expected} (the inputs' {rows:?} plus m >= 1 ids), got {got:?}"
    )]
    GatherShape {
        /// `[batch, m]` or `[batch, seq, m]`.
        expected: String,
        /// The inputs' leading dimensions.
        rows: Vec<i64>,
        /// The shape received.
        got: Vec<i64>,
    },
    /// An id of `gather_ids` outside the vocabulary.
    #[error(
        "gather_ids: expected ids in 0..{vocab}, got {count} outside it (first: {value} at batch row {row}, position {position})"
    )]
    GatherId {
        /// `num_logits`.
        vocab: i64,
        /// How many ids are out of range.
        count: i64,
        /// The first offending id (row-major order).
        value: i64,
        /// Its row in the batch.
        row: i64,
        /// Its position in the sequence (0 for a classifier).
        position: i64,
    },
    /// `gathered_only` without `gather_ids`.
    #[error(
        "gathered_only: set without gather_ids: expected the ids whose log-probabilities to return"
    )]
    GatheredOnlyWithoutIds,
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
    /// `i64 [batch, m]` or `[batch, seq, m]`, every id in `0..num_logits`: the ids whose
    /// log-probabilities at T to return (`gather_ids`).
    pub gather: Option<Tensor>,
    /// Return the gathered log-probabilities alone, no logits.
    pub gathered_only: bool,
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
        gather_ids,
        gathered_only,
    } = req;
    let inputs = inputs
        .as_ref()
        .ok_or_else(|| InvalidRequest::MissingInputs {
            expected_shape: limits.input_shape.clone(),
        })?;
    let (shape, input_kind) = check_inputs(inputs, limits)?;
    let output = output_spec(*output_dtype, *top_k, *temperature, limits)?;
    let extra = requested_outputs(outputs, limits)?;
    let gather_m = match gather_ids {
        Some(g) => Some(check_gather_shape(g, &shape, limits)?),
        None if *gathered_only => return Err(InvalidRequest::GatheredOnlyWithoutIds),
        None => None,
    };
    let sizes = ResponseParts {
        kind: output.kind,
        top_k: output.top_k,
        logits: !*gathered_only,
        gather_m: gather_m.unwrap_or(0),
    };
    check_response_size(&shape, limits, sizes, &extra)?;
    let tensor = codec::decode(inputs)?;
    if matches!(
        input_kind,
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
    let gather = gather_ids
        .as_ref()
        .map(|g| decode_gather(g, limits.num_logits))
        .transpose()?;
    Ok(ValidRequest {
        inputs: tensor,
        mask,
        output,
        outputs: outputs.clone(),
        gather,
        gathered_only: *gathered_only,
    })
}

/// Checks the inputs' dtype, consistency (against the bytes received, before anything is
/// allocated), rank, per-sample shape (a sequence model: sequence length) and batch size.
/// Returns their shape and kind.
fn check_inputs(inputs: &v1::Tensor, limits: &Limits) -> Result<(Vec<i64>, Kind), InvalidRequest> {
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
    Ok((shape, checked.kind))
}

/// How the request wants its logits: `output_dtype` (F32, F16, BF16; unspecified is F32),
/// `top_k` (at most the model's logits) and `temperature` (finite and > 0; 0 is 1).
fn output_spec(
    output_dtype: i32,
    top_k: u32,
    temperature: f32,
    limits: &Limits,
) -> Result<OutputSpec, InvalidRequest> {
    let kind = match v1::DType::try_from(output_dtype) {
        // 0 is DTYPE_UNSPECIFIED: dense f32 by default.
        _ if output_dtype == 0 => Kind::Float,
        Ok(v1::DType::F32) => Kind::Float,
        Ok(v1::DType::F16) => Kind::Half,
        Ok(v1::DType::Bf16) => Kind::BFloat16,
        _ => {
            return Err(InvalidRequest::OutputDType {
                got: InvalidRequest::dtype_label(output_dtype),
            });
        }
    };
    if i64::from(top_k) > limits.num_logits {
        return Err(InvalidRequest::TopK {
            max: limits.num_logits,
            got: top_k,
        });
    }
    // 0 is the field unset (proto3's default, what a client that never sets it sends): T = 1.
    let temperature = match temperature {
        0.0 => 1.0,
        t if t.is_finite() && t > 0.0 => t,
        t => return Err(InvalidRequest::Temperature { got: t }),
    };
    Ok(OutputSpec {
        kind,
        top_k: i64::from(top_k),
        temperature,
    })
}

/// The named outputs the request asks for beside the logits, each one of [`Limits::outputs`].
fn requested_outputs<'a>(
    names: &[String],
    limits: &'a Limits,
) -> Result<Vec<&'a OutputLimit>, InvalidRequest> {
    let mut extra = Vec::with_capacity(names.len());
    for name in names {
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
    Ok(extra)
}

/// Rejects a request whose response (dense logits, or top-k with its log-sum-exps) would not
/// fit `limits.max_message_bytes`.
/// What a response holds, for its size.
#[derive(Debug, Clone, Copy)]
struct ResponseParts {
    /// Kind of the logits.
    kind: Kind,
    /// `0`: dense; else top-k.
    top_k: i64,
    /// Whether the logits are sent (not with `gathered_only`).
    logits: bool,
    /// Gathered log-probabilities per row (0: none).
    gather_m: i64,
}

fn check_response_size(
    shape: &[i64],
    limits: &Limits,
    parts: ResponseParts,
    outputs: &[&OutputLimit],
) -> Result<(), InvalidRequest> {
    let ResponseParts {
        kind,
        top_k,
        logits,
        gather_m,
    } = parts;
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
    let bytes = if logits { bytes } else { 0 };
    // The gathered log-probabilities: f32 per id.
    let gathered = rows
        .saturating_mul(gather_m.max(0) as u64)
        .saturating_mul(4);
    // Protobuf framing and the timing, generously.
    let bytes = bytes
        .saturating_add(extra)
        .saturating_add(gathered)
        .saturating_add(1024);
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
            "{}{}{}",
            if logits {
                format!(
                    "{what} {} logits {dims:?}",
                    codec::dtype_of(kind).map_or("?", |d| d.as_str_name())
                )
            } else {
                "no logits".into()
            },
            if names.is_empty() {
                String::new()
            } else {
                format!(" with outputs {}", names.join(", "))
            },
            if gather_m > 0 {
                format!(" with {gather_m} gathered log-probabilities per row")
            } else {
                String::new()
            }
        ),
        bytes,
        limit: limits.max_message_bytes,
    })
}

/// Checks `gather_ids` (dtype I64, shape: the inputs' rows, and positions for a sequence
/// model, plus m ≥ 1) against the bytes received, before anything is allocated; returns m.
fn check_gather_shape(
    g: &v1::Tensor,
    shape: &[i64],
    limits: &Limits,
) -> Result<i64, InvalidRequest> {
    if g.dtype != v1::DType::I64 as i32 {
        return Err(InvalidRequest::GatherDType {
            got: InvalidRequest::dtype_label(g.dtype),
        });
    }
    let checked =
        codec::check(g).map_err(|e| InvalidRequest::Tensor(format!("gather_ids: {e}")))?;
    let rows: Vec<i64> = match limits.max_seq_len {
        Some(_) => shape.iter().take(2).copied().collect(),
        None => shape.iter().take(1).copied().collect(),
    };
    let got = checked.shape;
    let m = got.last().copied().unwrap_or(0);
    if got.len() != rows.len() + 1 || got[..rows.len()] != rows[..] || m < 1 {
        return Err(InvalidRequest::GatherShape {
            expected: if rows.len() == 2 {
                "[batch, seq, m]".into()
            } else {
                "[batch, m]".into()
            },
            rows,
            got,
        });
    }
    Ok(m)
}

/// Decodes `gather_ids` (shape checked) and rejects ids outside `0..vocab`, naming the first
/// (row-major) with its row and position.
fn decode_gather(g: &v1::Tensor, vocab: i64) -> Result<Tensor, InvalidRequest> {
    let ids = codec::decode(g).map_err(|e| InvalidRequest::Tensor(format!("gather_ids: {e}")))?;
    let m = ids.size().last().copied().unwrap_or(1);
    let first = out_of_range(&ids, vocab, m).map_err(|e| {
        InvalidRequest::Tensor(format!("gather_ids: {}", distill_models::torch_message(&e)))
    })?;
    match first {
        None => Ok(ids),
        Some(OutOfRange {
            count,
            value,
            row,
            position,
        }) => Err(InvalidRequest::GatherId {
            vocab,
            count,
            value,
            row,
            position,
        }),
    }
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
    let first = out_of_range(ids, vocab, 1).map_err(|e| {
        InvalidRequest::Tensor(format!(
            "checking token ids: {}",
            distill_models::torch_message(&e)
        ))
    })?;
    match first {
        None => Ok(()),
        Some(OutOfRange {
            count,
            value,
            row,
            position,
        }) => Err(InvalidRequest::TokenId {
            vocab,
            count,
            value,
            row,
            position,
        }),
    }
}

/// Ids outside a vocabulary: how many, and the first (row-major) with its batch row and
/// sequence position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct OutOfRange {
    count: i64,
    value: i64,
    row: i64,
    position: i64,
}

/// The ids of `ids` (`i64 [batch, ...]`) outside `0..vocab`, `None` when there are none.
/// `per_position` consecutive values make one position (1 for token ids `[batch, seq]`, m for
/// `gather_ids` `[batch, seq, m]`; a classifier's `[batch, m]` rows have one position).
fn out_of_range(
    ids: &Tensor,
    vocab: i64,
    per_position: i64,
) -> Result<Option<OutOfRange>, tch::TchError> {
    let bad = ids.f_lt(0)?.f_logical_or(&ids.f_ge(vocab)?)?;
    let Some((_, _, flat)) = first_true(&bad, 1)? else {
        return Ok(None);
    };
    let per_position = per_position.max(1);
    let rows = ids.size().first().copied().unwrap_or(1).max(1);
    let positions = (ids.numel() as i64 / (rows * per_position)).max(1);
    Ok(Some(OutOfRange {
        count: bad.f_sum(Kind::Int64)?.f_int64_value(&[])?,
        value: ids.f_flatten(0, -1)?.f_int64_value(&[flat])?,
        row: flat / (positions * per_position),
        position: (flat / per_position) % positions,
    }))
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
mod tests;
