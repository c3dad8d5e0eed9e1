//! `distill`: [`DistillConfig`] from [`DistillArgs`].

use super::error::{ConfigError, invalid, number};
use super::images::image_options;
use super::teachers::{TeacherConfig, teacher_groups};
use super::train::from_common;
use crate::cli::{DistillArgs, OnPolicyArgs};
use crate::ensemble::EnsembleMode;
use crate::hint::{HintConfig, HintError, HintSpec};
use crate::loss::{
    DEFAULT_JSD_BETA, DistillLoss, LossKind, MAX_TEMPERATURE, MIN_TEMPERATURE, check_jsd_beta,
};
use crate::on_policy::OnPolicyEstimator;
use crate::soft_targets::{TargetRequest, WireDType};
use crate::training::{LabelPolicy, TrainConfig};
use std::path::PathBuf;

/// Settings of `distill`.
#[derive(Debug, Clone)]
pub struct DistillConfig {
    /// The student's training run.
    pub train: TrainConfig,
    /// The teachers (no group when a complete logit cache stands in for them).
    pub teachers: TeacherConfig,
    /// Test-only ledger of trained batches (JSON lines).
    pub batch_ledger: Option<PathBuf>,
    /// The distillation loss (kind, temperature, alpha, sparse tail): the run's one temperature.
    pub loss: DistillLoss,
    /// The dtype the soft targets travel in (`--wire`).
    pub wire: WireDType,
    /// `--top-k` (0: dense rows).
    pub top_k: u32,
    /// `--top-k` was not given: a student whose data turns out to be token sequences (a
    /// TorchScript LM, or `--init`'s) gets a language model's default of 32 once the data is
    /// known.
    pub top_k_default: bool,
    /// How an ensemble's groups share batches (`--ensemble-mode`).
    pub ensemble_mode: EnsembleMode,
    /// Which samples keep their labels.
    pub labels: LabelPolicy,
    /// Baseline checkpoint to evaluate for the report.
    pub baseline: Option<PathBuf>,
    /// The logit cache directory (`--logit-cache`).
    pub logit_cache: Option<PathBuf>,
    /// Hint distillation (`--hint`), if any.
    pub hint: Option<HintConfig>,
    /// On-policy distillation (`--on-policy`), if asked for.
    pub on_policy: Option<OnPolicyConfig>,
}

/// Settings of on-policy distillation (`--on-policy LAMBDA` and its flags).
#[derive(Debug, Clone, PartialEq)]
pub struct OnPolicyConfig {
    /// The probability λ of an on-policy batch, in `[0, 1]`.
    pub lambda: f64,
    /// `--max-new-tokens` (≥ 1).
    pub max_new_tokens: i64,
    /// `--sample-temperature` (≥ 0; 0 is greedy).
    pub sample_temperature: f64,
    /// `--top-p`, in `(0, 1]`.
    pub top_p: f64,
    /// Where the prompts come from.
    pub prompts: PromptSource,
    /// `--truncate-prompts`: cut long prompts from the left instead of refusing them.
    pub truncate_prompts: bool,
    /// `--on-policy-estimator`.
    pub estimator: OnPolicyEstimator,
    /// `--eval-prompts`: held-out prompts of the reverse-KL measurement (0: none).
    pub eval_prompts: usize,
    /// `--samples-per-epoch`.
    pub samples_per_epoch: usize,
}

/// Where on-policy distillation's prompts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptSource {
    /// `--prompts FILE.jsonl`.
    File {
        /// The file.
        path: PathBuf,
        /// `--prompt-field`.
        prompt_field: String,
        /// `--completion-field`.
        completion_field: Option<String>,
    },
    /// `--prompt-tokens P`: the first P tokens of each corpus sequence.
    Corpus {
        /// P (≥ 1).
        tokens: usize,
    },
}

impl DistillConfig {
    /// Whether any sample gives the soft (teacher) term a weight. Not with `--alpha 0` and
    /// `--labels all`: every sample is labelled and weighs the soft term by alpha = 0, so the
    /// loss is the cross-entropy alone and the run needs no teacher. Under `--labels N` or
    /// `none`, unlabelled samples weigh the soft term by 1 whatever alpha is.
    pub fn needs_teacher(&self) -> bool {
        !(self.loss.alpha == 0.0 && self.labels == LabelPolicy::All)
    }

    /// What each request asks the teachers for: `--wire`, `--top-k` at the loss's temperature,
    /// and the hinted output.
    pub fn request(&self) -> TargetRequest {
        TargetRequest {
            wire: self.wire,
            top_k: self.top_k,
            temperature: self.loss.temperature,
            hint_output: self.hint.as_ref().map(|h| h.spec.teacher_output.clone()),
        }
    }
}

impl TryFrom<DistillArgs> for DistillConfig {
    type Error = ConfigError;

    fn try_from(a: DistillArgs) -> Result<Self, ConfigError> {
        // `--epochs 0` with a hint stage: the hint stage alone (FitNets' stage 1); a later
        // `--resume` with more epochs distills from there.
        let hint_stage = a.hint.is_some() && a.hint_stage_epochs > 0;
        let mut train = from_common(a.common.clone(), if hint_stage { 0 } else { 1 })?;
        train.images = image_options(
            a.common.images.clone(),
            Some(a.teacher_view.clone()),
            a.common.augment,
        )?;
        if train.images.augment.any() && a.logit_cache.is_some() {
            return Err(invalid(
                "augment",
                format!(
                    "--augment {} makes new views of the images every epoch, and --logit-cache \
                     holds the soft targets of one view: use one or the other",
                    train.images.augment
                ),
            ));
        }
        // Top-32 per position by default for a language model: dense rows of a vocabulary of
        // thousands per token would dwarf the inputs.
        let top_k = a.top_k.unwrap_or(if train.arch.is_sequence_model() {
            32
        } else {
            0
        });
        let labels: LabelPolicy = a.labels.parse().map_err(|e: String| invalid("labels", e))?;
        let loss = loss(&a, labels)?;
        let on_policy = on_policy(&a.on_policy)?;
        let groups = if a.teachers.teacher.is_empty() && a.teacher_group.is_empty() {
            // --logit-cache alone (clap requires one of the three).
            Vec::new()
        } else {
            teacher_groups(&a.teachers.teacher, &a.teacher_group, &a.group_weight)?
        };
        if a.logit_cache.is_some() && groups.len() > 1 {
            return Err(invalid(
                "logit-cache",
                format!(
                    "a logit cache holds the soft targets of one teacher, got {} teacher groups \
                     (use one --teacher, or no --logit-cache)",
                    groups.len()
                ),
            ));
        }
        check_top_k(top_k, loss.kind, a.ensemble_mode, groups.len())?;
        let hint = hint(&a, groups.len(), &train)?;
        if let Some(op) = &on_policy {
            check_on_policy(op, &a, loss.kind, groups.len())?;
        }
        Ok(DistillConfig {
            train,
            teachers: TeacherConfig::from_args(a.teachers, groups)?,
            batch_ledger: a.batch_ledger,
            loss,
            wire: a.wire,
            top_k,
            top_k_default: a.top_k.is_none(),
            ensemble_mode: a.ensemble_mode,
            labels,
            baseline: a.baseline,
            logit_cache: a.logit_cache,
            hint,
            on_policy,
        })
    }
}

/// `--loss`, `--temperature`, `--alpha` (1 without labels), `--sparse-tail`, `--jsd-beta`.
fn loss(a: &DistillArgs, labels: LabelPolicy) -> Result<DistillLoss, ConfigError> {
    let temperature = temperature(a.temperature)?;
    if !(a.alpha.is_finite() && (0.0..=1.0).contains(&a.alpha)) {
        return Err(invalid("alpha", format!("{} is not in [0, 1]", a.alpha)));
    }
    // Reverse KL by default on-policy (GKD's and on-policy distillation's), forward KL otherwise.
    let kind = a.loss.unwrap_or(if a.on_policy.on_policy.is_some() {
        LossKind::Rkl
    } else {
        LossKind::Kl
    });
    let jsd_beta = match (kind, a.jsd_beta) {
        (LossKind::Jsd, beta) => {
            let beta = beta.unwrap_or(DEFAULT_JSD_BETA);
            check_jsd_beta(beta).map_err(|reason| invalid("jsd-beta", reason))?;
            beta
        }
        (_, None) => DEFAULT_JSD_BETA,
        (other, Some(beta)) => {
            return Err(invalid(
                "jsd-beta",
                format!("{beta} given, but only --loss jsd uses it (got --loss {other})"),
            ));
        }
    };
    Ok(DistillLoss {
        kind,
        temperature,
        // Without labels the soft targets carry the whole loss (Hinton et al. 2015, section 2).
        alpha: if labels == LabelPolicy::None {
            1.0
        } else {
            a.alpha
        },
        sparse_tail: a.sparse_tail,
        jsd_beta,
    })
}

/// `--temperature` (of `distill` and `capture`): in [`MIN_TEMPERATURE`]`..=`[`MAX_TEMPERATURE`],
/// the range where the `T²`-scaled loss is finite and non-zero in `f32` (derived on
/// [`MAX_TEMPERATURE`]).
///
/// # Errors
/// [`ConfigError::Invalid`] naming the range and the value given.
pub(super) fn temperature(t: f64) -> Result<f64, ConfigError> {
    if (MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&t) {
        return Ok(t);
    }
    Err(invalid(
        "temperature",
        format!(
            "expected {MIN_TEMPERATURE} to {MAX_TEMPERATURE}, where the T²-scaled loss is finite \
             and non-zero in f32, got {}",
            number(t)
        ),
    ))
}

/// `--top-k` against the loss and the ensemble: MSE needs every logit, and mixing an ensemble's
/// probabilities needs dense rows.
fn check_top_k(
    top_k: u32,
    kind: LossKind,
    mode: EnsembleMode,
    groups: usize,
) -> Result<(), ConfigError> {
    if top_k > 0 && kind == LossKind::Mse {
        return Err(invalid(
            "top-k",
            format!(
                "--loss mse needs every logit, got --top-k {top_k} (use --loss kl, rkl or jsd, \
                 or --top-k 0)"
            ),
        ));
    }
    if top_k > 0 && mode == EnsembleMode::Mix && groups > 1 {
        return Err(invalid(
            "top-k",
            format!(
                "--ensemble-mode mix mixes dense probabilities of every group, got --top-k {top_k} \
                 with {groups} teacher groups (use --ensemble-mode sample, or --top-k 0)"
            ),
        ));
    }
    Ok(())
}

/// `--hint`, `--hint-loss`, `--hint-weight` and `--hint-stage-epochs`: online only, from one
/// teacher, to a student with named layers.
fn hint(
    a: &DistillArgs,
    groups: usize,
    train: &TrainConfig,
) -> Result<Option<HintConfig>, ConfigError> {
    let Some(h) = a.hint.as_deref() else {
        if a.hint_stage_epochs > 0 {
            return Err(invalid(
                "hint-stage-epochs",
                format!(
                    "trains on hints alone, got {} epochs without --hint",
                    a.hint_stage_epochs
                ),
            ));
        }
        return Ok(None);
    };
    let spec: HintSpec = h
        .parse()
        .map_err(|e: HintError| invalid("hint", e.to_string()))?;
    if a.logit_cache.is_some() {
        return Err(invalid(
            "hint",
            "hints are online only: the logit cache holds no features (drop --logit-cache)",
        ));
    }
    if groups != 1 {
        return Err(invalid(
            "hint",
            format!("hints come from one teacher, got {groups} teacher groups (use one --teacher)"),
        ));
    }
    if train.arch.is_sequence_model() {
        return Err(invalid(
            "hint",
            "a language-model student has no named hidden layers to hint",
        ));
    }
    if !(a.hint_weight.is_finite() && a.hint_weight >= 0.0) {
        return Err(invalid(
            "hint-weight",
            format!("expected a finite number >= 0, got {}", a.hint_weight),
        ));
    }
    Ok(Some(HintConfig {
        spec,
        loss: a.hint_loss,
        weight: a.hint_weight,
        stage_epochs: a.hint_stage_epochs,
    }))
}

/// `--on-policy` and its flags, checked on their own: `None` without `--on-policy` (its other
/// flags are then refused).
///
/// # Errors
/// [`ConfigError::Invalid`] naming the flag, what it accepts and what came.
fn on_policy(a: &OnPolicyArgs) -> Result<Option<OnPolicyConfig>, ConfigError> {
    let Some(lambda) = a.on_policy else {
        let given = [
            ("max-new-tokens", a.max_new_tokens.is_some()),
            ("sample-temperature", a.sample_temperature.is_some()),
            ("top-p", a.top_p.is_some()),
            ("prompts", a.prompts.is_some()),
            ("completion-field", a.completion_field.is_some()),
            ("prompt-tokens", a.prompt_tokens.is_some()),
            ("truncate-prompts", a.truncate_prompts),
            (
                "on-policy-estimator",
                a.on_policy_estimator != OnPolicyEstimator::Full,
            ),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            return Err(invalid(
                flag,
                format!("--{flag} is a flag of on-policy distillation: add --on-policy LAMBDA"),
            ));
        }
        return Ok(None);
    };
    if !(0.0..=1.0).contains(&lambda) {
        return Err(invalid(
            "on-policy",
            format!(
                "expected the probability of an on-policy batch, 0 to 1, got {}",
                number(lambda)
            ),
        ));
    }
    let max_new_tokens = a.max_new_tokens.unwrap_or(128);
    if max_new_tokens < 1 {
        return Err(invalid(
            "max-new-tokens",
            format!("expected at least 1 token, got {max_new_tokens}"),
        ));
    }
    let sample_temperature = a.sample_temperature.unwrap_or(1.0);
    if !(sample_temperature.is_finite() && sample_temperature >= 0.0) {
        return Err(invalid(
            "sample-temperature",
            format!(
                "expected a number >= 0 (0: greedy), got {}",
                number(sample_temperature)
            ),
        ));
    }
    let top_p = a.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(invalid(
            "top-p",
            format!("expected a probability in (0, 1], got {}", number(top_p)),
        ));
    }
    Ok(Some(OnPolicyConfig {
        lambda,
        max_new_tokens,
        sample_temperature,
        top_p,
        prompts: prompt_source(a, lambda)?,
        truncate_prompts: a.truncate_prompts,
        estimator: a.on_policy_estimator,
        eval_prompts: a.eval_prompts,
        samples_per_epoch: a.samples_per_epoch,
    }))
}

/// `--prompts FILE.jsonl` (with a completion field when some batches are off-policy) or
/// `--prompt-tokens P`: exactly one.
fn prompt_source(a: &OnPolicyArgs, lambda: f64) -> Result<PromptSource, ConfigError> {
    match (&a.prompts, a.prompt_tokens) {
        (Some(_), Some(p)) => Err(invalid(
            "prompt-tokens",
            format!(
                "--prompt-tokens {p} takes prompts from the corpus, and --prompts from a file: use one"
            ),
        )),
        (None, None) => Err(invalid(
            "on-policy",
            "the student needs prompts to complete: --prompts FILE.jsonl, or --prompt-tokens P \
             (the first P tokens of each corpus sequence)",
        )),
        (None, Some(0)) => Err(invalid("prompt-tokens", "expected at least 1 token, got 0")),
        (None, Some(tokens)) => {
            if a.completion_field.is_some() {
                return Err(invalid(
                    "completion-field",
                    "--completion-field names a field of --prompts lines; with --prompt-tokens \
                     the rest of each corpus sequence is the reference completion",
                ));
            }
            Ok(PromptSource::Corpus { tokens })
        }
        (Some(path), None) => {
            if lambda < 1.0 && a.completion_field.is_none() {
                return Err(invalid(
                    "completion-field",
                    format!(
                        "--on-policy {} leaves some batches off-policy, and they train on the \
                         prompts' reference completions: name their field with \
                         --completion-field (or use --on-policy 1)",
                        number(lambda)
                    ),
                ));
            }
            Ok(PromptSource::File {
                path: path.clone(),
                prompt_field: a.prompt_field.clone(),
                completion_field: a.completion_field.clone(),
            })
        }
    }
}

/// On-policy distillation against the rest of the run: no logit cache (the sequences change
/// every step), no hints, a divergence loss, and the sampled-token estimator from one teacher
/// group (a mixture's log-probabilities of a token are not gathered).
fn check_on_policy(
    op: &OnPolicyConfig,
    a: &DistillArgs,
    kind: LossKind,
    groups: usize,
) -> Result<(), ConfigError> {
    if a.logit_cache.is_some() {
        return Err(invalid(
            "logit-cache",
            format!(
                "--on-policy {} has the student generate new sequences every step, and \
                 --logit-cache holds the soft targets of fixed samples: use one or the other",
                number(op.lambda)
            ),
        ));
    }
    if a.hint.is_some() {
        return Err(invalid(
            "hint",
            "--on-policy distills language models, which have no named hidden layers to hint",
        ));
    }
    if kind == LossKind::Mse {
        return Err(invalid(
            "loss",
            "--on-policy needs a divergence (--loss rkl, jsd or kl), got --loss mse",
        ));
    }
    if op.estimator == OnPolicyEstimator::K1 && groups > 1 && a.ensemble_mode == EnsembleMode::Mix {
        return Err(invalid(
            "on-policy-estimator",
            format!(
                "k1 scores each sampled token with one teacher's log-probability, got {groups} \
                 teacher groups mixed (use --ensemble-mode sample, or --on-policy-estimator full)"
            ),
        ));
    }
    Ok(())
}
