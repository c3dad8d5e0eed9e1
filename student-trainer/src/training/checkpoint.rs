//! What a checkpoint records of the run besides the weights and the optimizer state
//! ([`ResumeState`], the `trainer` field of `checkpoint.json`), and where a run starts
//! ([`Start`]): fresh, or from the checkpoint in `--out`, checked against the run.

use super::error::TrainError;
use super::job::{Objective, TrainConfig};
use crate::hint::HintPlan;
use crate::images::ImageRecord;
use crate::loss::LossKind;
use crate::optim::{OptimizerConfig, check_resume};
use crate::schedule::{Position, batches_per_epoch};
use distill_models::{ArchSpec, Checkpoint};
use serde::{Deserialize, Serialize};

/// Trainer state kept in `checkpoint.json` (`trainer` field) for `--resume`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeState {
    /// `train` or `distill`.
    pub objective: String,
    /// The run's seed.
    pub seed: u64,
    /// Batch size of the run.
    pub batch_size: usize,
    /// Training samples per epoch.
    pub train_samples: usize,
    /// Next batch to train within epoch `meta.epoch` (0 at an epoch boundary; > 0 after Ctrl-C).
    pub next_batch: usize,
    /// Optimizer settings.
    pub optimizer: OptimizerConfig,
    /// Teacher fingerprint, for `distill` runs.
    #[serde(default)]
    pub teacher_fingerprint: Option<String>,
    /// Loss settings, for `distill` runs (`kind T alpha labels`).
    #[serde(default)]
    pub loss: Option<String>,
    /// Samples trained on so far, over every process of the run (resumes included).
    #[serde(default)]
    pub samples_trained: u64,
    /// Optimizer steps of the whole run (epochs × batches per epoch), over which the
    /// learning-rate schedule runs; absent from checkpoints saved before schedules existed.
    #[serde(default)]
    pub total_steps: Option<u64>,
    /// Hint settings of a `distill --hint` run ([`HintPlan::describe`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The saved optimizer state is the hint stage's (FitNets' stage 1): a run resumed after
    /// that stage starts a fresh optimizer instead of loading it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hint_stage_optimizer: bool,
    /// An image-folder run's classes and student view (what `eval --checkpoint` names and
    /// uses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<ImageRecord>,
}

impl ResumeState {
    /// The state of `cfg`'s run with `objective` over `train_samples` samples, positioned before
    /// batch `next_batch`, with `samples_trained` samples trained so far; `hint_stage_optimizer`
    /// whether the optimizer in use is the hint stage's.
    pub(crate) fn of_run(
        cfg: &TrainConfig,
        objective: &Objective,
        train_samples: usize,
        next_batch: usize,
        samples_trained: u64,
        hint_stage_optimizer: bool,
    ) -> ResumeState {
        let (teacher_fingerprint, loss) = match objective {
            Objective::Supervised => (None, None),
            Objective::Distill {
                loss,
                labels,
                teacher_fingerprint,
                ..
            } => (
                Some(teacher_fingerprint.clone()),
                Some(format!(
                    "{} T={} alpha={} labels={labels}{}",
                    loss.kind,
                    loss.temperature,
                    loss.alpha,
                    if loss.kind == LossKind::Jsd {
                        format!(" beta={}", loss.jsd_beta)
                    } else {
                        String::new()
                    }
                )),
            ),
        };
        ResumeState {
            objective: objective.name().into(),
            seed: cfg.seed,
            batch_size: cfg.batch_size,
            train_samples,
            next_batch,
            optimizer: cfg.optimizer,
            teacher_fingerprint,
            loss,
            samples_trained,
            total_steps: Some(cfg.epochs * batches_per_epoch(train_samples, cfg.batch_size) as u64),
            hint: objective.hint().map(HintPlan::describe),
            hint_stage_optimizer,
            images: None,
        }
    }
}

/// Where a run starts: fresh, or from the checkpoint in `--out`.
#[derive(Debug, Clone)]
pub struct Start {
    /// Next batch to train.
    pub position: Position,
    /// Optimizer steps already taken.
    pub step: u64,
    /// The checkpoint to load (`None`: fresh weights).
    pub checkpoint: Option<Checkpoint>,
    /// Samples trained on by the processes before this one.
    pub samples_trained: u64,
    /// The checkpoint's optimizer state is the hint stage's ([`ResumeState::hint_stage_optimizer`]).
    pub hint_stage_optimizer: bool,
}

impl Start {
    /// The start of `cfg`'s run: the checkpoint in `cfg.out` with `--resume` (when there is one),
    /// else epoch 0. Checks the checkpoint against the run (architecture, data size, batch size,
    /// and `hint`, the run's [`HintPlan::describe`] or `None`).
    ///
    /// # Errors
    /// [`TrainError::Resume`] for a checkpoint that does not fit; [`TrainError::Model`] for an
    /// unreadable one.
    pub fn for_run(
        cfg: &TrainConfig,
        spec: &ArchSpec,
        train_samples: usize,
        hint: Option<&str>,
    ) -> Result<Start, TrainError> {
        if !cfg.resume || !Checkpoint::exists(&cfg.out) {
            if cfg.resume {
                tracing::warn!(out = %cfg.out.display(), "--resume: no checkpoint there yet, starting at epoch 0");
            }
            return Ok(Start {
                position: Position::default(),
                step: 0,
                checkpoint: None,
                samples_trained: 0,
                hint_stage_optimizer: false,
            });
        }
        let ck = Checkpoint::open(&cfg.out)?;
        let bad = |reason: String| TrainError::Resume {
            dir: cfg.out.clone(),
            reason,
        };
        if &ck.meta.arch != spec {
            return Err(bad(format!(
                "it holds {} for input {:?} and {} classes, this run trains {} for {:?} and {}",
                ck.meta.arch.arch,
                ck.meta.arch.input_shape,
                ck.meta.arch.num_classes,
                spec.arch,
                spec.input_shape,
                spec.num_classes
            )));
        }
        let state: ResumeState = serde_json::from_value(ck.meta.trainer.clone())
            .map_err(|e| bad(format!("no trainer state in checkpoint.json ({e})")))?;
        if state.train_samples != train_samples || state.batch_size != cfg.batch_size {
            return Err(bad(format!(
                "it was trained on {} samples in batches of {}, this run has {} in batches of {} \
                 (same --limit and --batch-size needed)",
                state.train_samples, state.batch_size, train_samples, cfg.batch_size
            )));
        }
        let total_steps = cfg.epochs * batches_per_epoch(train_samples, cfg.batch_size) as u64;
        let changes = check_resume(
            &state.optimizer,
            state.total_steps,
            &cfg.optimizer,
            total_steps,
        )
        .map_err(bad)?;
        for change in changes {
            tracing::warn!("{change}");
        }
        if state.hint.as_deref() != hint {
            return Err(bad(format!(
                "it was trained with hints {}, this run has {}",
                state.hint.as_deref().unwrap_or("none"),
                hint.unwrap_or("none")
            )));
        }
        if state.seed != cfg.seed {
            tracing::warn!(
                saved = state.seed,
                given = cfg.seed,
                "--resume with a different --seed: the sample order changes from here on"
            );
        }
        Ok(Start {
            position: Position {
                epoch: ck.meta.epoch,
                batch: state.next_batch,
            },
            step: ck.meta.step,
            samples_trained: state.samples_trained,
            hint_stage_optimizer: state.hint_stage_optimizer,
            checkpoint: Some(ck),
        })
    }
}
