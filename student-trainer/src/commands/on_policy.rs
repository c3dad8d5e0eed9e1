//! What `distill --on-policy` prepares before its first batch: the student and the data checked
//! for it (a language model, a tokenizer with an end-of-sequence token, prompts that leave room
//! for the completions in both contexts), the training prompts with their reference completions
//! (the off-policy batches), the held-out prompts, and the tokenizer's decode for
//! `samples.jsonl`.

use super::dataset::Data;
use super::error::AppError;
use crate::config::distill::{OnPolicyConfig, PromptSource};
use crate::data::Dataset;
use crate::on_policy::{Prompts, completion_labels, mask_prompts};
use crate::teachers::TeacherInfo;
use crate::training::{Decoder, OnPolicySettings, TrainConfig};
use distill_models::ArchSpec;
use distill_models::generate::SampleOptions;
use distill_text::{PretrainedTokenizer, is_test_document, read_prompts};
use std::path::Path;
use std::sync::Arc;
use tch::Tensor;

/// The prepared parts of an on-policy run.
pub(crate) struct OnPolicyPlan {
    /// How batches are drawn, sampled and trained on.
    pub(crate) settings: OnPolicySettings,
    /// One prompt per training sample.
    pub(crate) prompts: Prompts,
    /// The held-out prompts (`None` with `--eval-prompts 0`).
    pub(crate) heldout: Option<Prompts>,
    /// The tokenizer's decode.
    pub(crate) decode: Decoder,
}

impl std::fmt::Debug for OnPolicyPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnPolicyPlan")
            .field("settings", &self.settings)
            .field("prompts", &self.prompts.len())
            .field("heldout", &self.heldout.as_ref().map(Prompts::len))
            .finish()
    }
}

/// Checks the run and prepares its prompts: with `--prompt-tokens` the corpus's labels lose
/// their prompt positions; with `--prompts` the training split becomes the file's prompts with
/// their reference completions (one line in 20 held out).
///
/// # Errors
/// [`AppError::Mismatch`] for a student that is not a language model, data that is not token
/// sequences, a tokenizer without an end-of-sequence token, or a prompt that leaves no room
/// for `--max-new-tokens` (without `--truncate-prompts`); the prompts file's errors.
pub(crate) fn prepare(
    op: &OnPolicyConfig,
    tc: &TrainConfig,
    spec: &ArchSpec,
    teachers: &[TeacherInfo],
    data: &mut Data,
) -> Result<OnPolicyPlan, AppError> {
    if !spec.arch.is_sequence_model() || !data.train.is_tokens() {
        return Err(AppError::Mismatch(format!(
            "--on-policy: the student samples text, got student {} on {} data (expected a \
             language model on a text corpus)",
            spec.arch,
            if data.train.is_tokens() {
                "token"
            } else {
                "non-token"
            }
        )));
    }
    let tokenizer = tokenizer(tc, data)?;
    let eos = i64::from(tokenizer.eos_id());
    let context = Context::of(spec, teachers, op.max_new_tokens)?;
    let (prompts, heldout) = match &op.prompts {
        PromptSource::Corpus { tokens } => corpus_prompts(op, *tokens as i64, &context, data)?,
        PromptSource::File {
            path,
            prompt_field,
            completion_field,
        } => {
            let texts = read_prompts(path, prompt_field, completion_field.as_deref())?;
            let source = (path.as_path(), texts.as_slice());
            file_prompts(op, source, (&tokenizer, eos), &context, data, tc.limit)?
        }
    };
    let decoder = tokenizer.clone();
    let decode: Decoder = Arc::new(move |ids: &[i64]| {
        let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        decoder.decode(&ids).unwrap_or_default()
    });
    Ok(OnPolicyPlan {
        settings: OnPolicySettings {
            lambda: op.lambda,
            sample: SampleOptions {
                max_new_tokens: op.max_new_tokens,
                temperature: op.sample_temperature,
                top_p: op.top_p,
                eos,
                pad: eos,
                kv_cache: true,
            },
            estimator: op.estimator,
            samples_per_epoch: op.samples_per_epoch,
        },
        prompts,
        heldout: (op.eval_prompts > 0 && !heldout.is_empty()).then_some(heldout),
        decode,
    })
}

/// The corpus's tokenizer with its end-of-sequence token (`--eos-token`, the tokenizer's
/// config, or a known name).
fn tokenizer(tc: &TrainConfig, data: &Data) -> Result<PretrainedTokenizer, AppError> {
    let path = data.tokenizer.as_ref().ok_or_else(|| {
        AppError::Mismatch(
            "--on-policy: the data has no tokenizer to find the end-of-sequence token in".into(),
        )
    })?;
    let t = PretrainedTokenizer::load(path, tc.text.files.eos_token.as_deref()).map_err(|e| {
        AppError::Mismatch(format!(
            "--on-policy: a completion stops at the end-of-sequence token, and {e}"
        ))
    })?;
    if i64::from(t.eos_id()) >= data.train.num_classes {
        return Err(AppError::Mismatch(format!(
            "--on-policy: the end-of-sequence token {:?} (id {}) is outside the student's \
             vocabulary of {}",
            t.eos_token(),
            t.eos_id(),
            data.train.num_classes
        )));
    }
    Ok(t)
}

/// The room a prompt has: the shorter of the student's and the teachers' contexts, less the
/// new tokens.
#[derive(Debug)]
struct Context {
    /// Positions a sequence may take in all.
    total: i64,
    /// `--max-new-tokens`.
    new: i64,
    /// Who sets `total`, for messages.
    who: String,
}

impl Context {
    fn of(spec: &ArchSpec, teachers: &[TeacherInfo], new: i64) -> Result<Context, AppError> {
        let student = spec.input_shape.first().copied().unwrap_or(0);
        let teacher = teachers
            .iter()
            .map(|t| t.max_seq_len)
            .filter(|&m| m > 0)
            .min();
        let (total, who) = match teacher {
            Some(t) if t < student => (t, format!("the teacher's max_seq_len {t}")),
            _ => (student, format!("the student's sequence length {student}")),
        };
        if new >= total {
            return Err(AppError::Mismatch(format!(
                "--max-new-tokens {new} leaves no room for a prompt in {who}"
            )));
        }
        Ok(Context { total, new, who })
    }

    /// The longest prompt that fits.
    fn room(&self) -> i64 {
        self.total - self.new
    }

    /// `ids` when it fits, cut from the left under `--truncate-prompts`.
    ///
    /// # Errors
    /// [`AppError::Mismatch`] naming `what` and the lengths.
    fn fit(
        &self,
        ids: &[i64],
        truncate: bool,
        what: &dyn Fn() -> String,
    ) -> Result<Vec<i64>, AppError> {
        let kept = self.kept(ids.len(), truncate, what)?;
        Ok(ids[ids.len() - kept..].to_vec())
    }

    /// How many of a prompt's `len` tokens [`Context::fit`] keeps: all of them when they fit,
    /// the last [`Context::room`] under `--truncate-prompts`.
    ///
    /// # Errors
    /// [`AppError::Mismatch`] naming `what` and the lengths.
    fn kept(
        &self,
        len: usize,
        truncate: bool,
        what: &dyn Fn() -> String,
    ) -> Result<usize, AppError> {
        let room = self.room() as usize;
        if len <= room {
            return Ok(len);
        }
        if truncate {
            return Ok(room);
        }
        Err(AppError::Mismatch(format!(
            "{} has {len} tokens, and with --max-new-tokens {} the sequence would pass {} ({} \
             tokens of prompt at most): shorten it, lower --max-new-tokens, or add \
             --truncate-prompts to cut prompts from the left",
            what(),
            self.new,
            self.who,
            room
        )))
    }
}

/// `--prompt-tokens P`: the first P tokens of each training sequence (the rest is its
/// reference completion, its labels keep only those positions) and of the first
/// `--eval-prompts` test sequences.
fn corpus_prompts(
    op: &OnPolicyConfig,
    p: i64,
    context: &Context,
    data: &mut Data,
) -> Result<(Prompts, Prompts), AppError> {
    let s = data.train.inputs.size().get(1).copied().unwrap_or(0);
    if p >= s {
        return Err(AppError::Mismatch(format!(
            "--prompt-tokens {p} leaves no reference completion in sequences of {s} tokens \
             (expected fewer than {s})"
        )));
    }
    let keep = context.kept(p as usize, op.truncate_prompts, &|| {
        format!("a prompt of --prompt-tokens {p}")
    })? as i64;
    let cut = |rows: &Tensor| -> Result<Prompts, AppError> {
        let full = Prompts::prefixes(rows, p)?;
        Ok(Prompts {
            tokens: full.tokens.f_narrow(1, p - keep, keep)?.f_contiguous()?,
            lens: vec![keep; full.lens.len()],
        })
    };
    let prompts = cut(&data.train.inputs)?;
    data.train.labels = mask_prompts(&data.train.labels, &vec![p; data.train.len()])?;
    let n = (op.eval_prompts as i64).min(data.test.len() as i64);
    let heldout = cut(&data.test.inputs.f_narrow(0, 0, n)?)?;
    Ok((prompts, heldout))
}

/// `--prompts FILE.jsonl`: every line's prompt, one line in 20 held out; the training split
/// becomes the other lines' prompts with their reference completions (and end-of-sequence),
/// right-padded to the corpus's sequence length, the first `limit` of them (`--limit`, as it
/// cuts a corpus's training split; the held-out lines stay).
fn file_prompts(
    op: &OnPolicyConfig,
    (path, texts): (&Path, &[distill_text::PromptText]),
    (tokenizer, eos): (&PretrainedTokenizer, i64),
    context: &Context,
    data: &mut Data,
    limit: Option<usize>,
) -> Result<(Prompts, Prompts), AppError> {
    let encode = |v: Vec<&str>| -> Result<Vec<Vec<i64>>, AppError> {
        Ok(tokenizer
            .encode_batch(&v)?
            .into_iter()
            .map(|ids| ids.into_iter().map(i64::from).collect())
            .collect())
    };
    let prompts = encode(texts.iter().map(|t| t.prompt.as_str()).collect())?;
    let completions = encode(
        texts
            .iter()
            .map(|t| t.completion.as_deref().unwrap_or(""))
            .collect(),
    )?;
    let path = path.display();
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, (t, (p, c))) in texts
        .iter()
        .zip(prompts.into_iter().zip(completions))
        .enumerate()
    {
        let p = context.fit(&p, op.truncate_prompts, &|| {
            format!("the prompt of {path} line {}", t.line)
        })?;
        if is_test_document(i) {
            test.push(p);
        } else {
            train.push((p, c));
        }
    }
    if train.is_empty() {
        return Err(AppError::Mismatch(format!(
            "{path}: {} prompts leave none for training after holding out one line in 20",
            texts.len()
        )));
    }
    train.truncate(limit.unwrap_or(usize::MAX));
    test.truncate(op.eval_prompts);
    let lists: Vec<Vec<i64>> = train.iter().map(|(p, _)| p.clone()).collect();
    data.train = reference_dataset(&train, eos, &data.train)?;
    Ok((
        Prompts::from_lists(&lists, eos),
        Prompts::from_lists(&test, eos),
    ))
}

/// The off-policy batches of a prompts file: each prompt, its reference completion and the
/// end-of-sequence token, cut to `like`'s sequence length and right-padded with `eos`; labels
/// on the completion only.
fn reference_dataset(
    rows: &[(Vec<i64>, Vec<i64>)],
    eos: i64,
    like: &Dataset,
) -> Result<Dataset, AppError> {
    let s = like.inputs.size().get(1).copied().unwrap_or(0) as usize;
    let mut flat = Vec::with_capacity(rows.len() * s);
    let mut spans = Vec::with_capacity(rows.len());
    for (p, c) in rows {
        let mut seq: Vec<i64> = p.iter().chain(c).copied().chain([eos]).collect();
        seq.truncate(s);
        spans.push((p.len() as i64, seq.len() as i64));
        seq.resize(s, eos);
        flat.extend(seq);
    }
    let inputs = Tensor::from_slice(&flat).view([rows.len() as i64, s as i64]);
    let labels = completion_labels(&inputs, &spans)?;
    Ok(Dataset {
        inputs,
        labels,
        num_classes: like.num_classes,
        tokenizer_fingerprint: like.tokenizer_fingerprint.clone(),
        normalization: None,
    })
}
