//! The training loop, on its own named thread.
//!
//! One thread owns the network, its `VarStore` and the optimizer. In `distill` it receives
//! [`TeacherBatch`]es through a bounded channel from the async client (the channel capacity is
//! the prefetch; nothing sleeps) and checks each against its own schedule before training on it,
//! so logits can never be paired with the wrong samples. In `train` it reads its batches from the
//! dataset directly.
//!
//! After every epoch it writes a checkpoint (weights, optimizer state, epoch, step, and the
//! schedule position in `checkpoint.json`'s `trainer` field) and appends a line to
//! `metrics.jsonl`. When the stop flag is raised (Ctrl-C or SIGTERM) it saves a checkpoint at
//! the current batch and returns with [`Outcome::interrupted`] set.
//!
//! Determinism: the weights are initialised after `tch::manual_seed(seed)`, each epoch's sample
//! order is [`crate::data::epoch_permutation`]`(seed, epoch)`, and each epoch reseeds libtorch's
//! generator with [`epoch_seed`] (dropout), so on the CPU a run resumed at an epoch boundary equals
//! an uninterrupted run. A run resumed mid-epoch (after Ctrl-C) continues at the next batch; it is
//! exact for networks without dropout (the MLP).

use crate::config::{HintConfig, LabelPolicy, TrainConfig};
use crate::data::Dataset;
use crate::eval::{self, Accuracy};
use crate::hint::{HintError, Regressor, hint_loss};
use crate::loss::{self, DistillLoss};
use crate::metrics::{EpochMetrics, MetricsLog};
use crate::monitoring::StudentMetrics;
use crate::optim::{OptimError, Optimizer, trainable_parameters};
use crate::progress::Progress;
use crate::schedule::{Position, TeacherBatch, batches_per_epoch, epoch_plan, epoch_seed};
use distill_models::checkpoint::sorted_variables;
use distill_models::{ArchSpec, Checkpoint, CheckpointMeta, ModelError, Network};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;
use tch::{Device, Kind, Tensor, nn};
use tokio::sync::mpsc;

/// Why training failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// Building, loading or saving the network failed.
    #[error("{0}")]
    Model(#[from] ModelError),
    /// The optimizer failed (e.g. saved state that does not fit the model).
    #[error("optimizer: {0}")]
    Optim(#[from] OptimError),
    /// A libtorch failure in the loop.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The checkpoint to resume does not match this run.
    #[error("cannot resume from {dir}: {reason}")]
    Resume {
        /// The checkpoint directory.
        dir: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// A batch of teacher logits that is not the one the schedule expects.
    #[error(
        "pairing check failed: expected epoch {epoch} batch {index}, got teacher batch {batch_id} \
         for epoch {got_epoch} batch {got_index}{detail}"
    )]
    Pairing {
        /// Expected epoch.
        epoch: u64,
        /// Expected position in the epoch.
        index: usize,
        /// The received batch's request id.
        batch_id: u64,
        /// The received batch's epoch.
        got_epoch: u64,
        /// The received batch's position.
        got_index: usize,
        /// Extra detail (differing indices).
        detail: String,
    },
    /// The loss is not finite.
    #[error("loss is {value} at epoch {epoch} batch {index} (diverged; lower --lr?)")]
    NonFinite {
        /// The loss value.
        value: f64,
        /// Its epoch.
        epoch: u64,
        /// Its batch.
        index: usize,
    },
    /// Writing metrics failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The training thread panicked.
    #[error("the training thread panicked: {0}")]
    Panic(String),
    /// The logit cache could not be read or written.
    #[error("{0}")]
    Cache(#[from] crate::cache::CacheError),
    /// Hint distillation cannot go on (a layer or shape that does not fit, a missing feature).
    #[error("{0}")]
    Hint(String),
}

impl From<HintError> for TrainError {
    fn from(e: HintError) -> Self {
        TrainError::Hint(e.to_string())
    }
}

/// Hint distillation (FitNets) in a `distill` run: the settings and the teacher feature's
/// per-sample shape (from its `ModelInfo.outputs`).
#[derive(Debug, Clone)]
pub struct HintPlan {
    /// `--hint`, `--hint-loss`, `--hint-weight`, `--hint-stage-epochs`.
    pub config: HintConfig,
    /// Per-sample shape of the teacher's output.
    pub teacher_shape: Vec<i64>,
}

impl HintPlan {
    /// The settings as one line, recorded in the checkpoint (a resume with others is refused)
    /// and the report: e.g. `features=h2 mse weight=1 stage_epochs=2`.
    pub fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "{} {} weight={} stage_epochs={}",
            c.spec, c.loss, c.weight, c.stage_epochs
        )
    }

    /// The regressor from the student layer the hint names (in `net`) to the teacher's feature,
    /// built under `path`; `distill` builds one at start to check the hint before any training.
    ///
    /// # Errors
    /// [`TrainError::Hint`] for a student layer `net` does not have (listing those it has) or
    /// shapes no regressor joins.
    pub(crate) fn regressor(
        &self,
        net: &Network,
        path: &nn::Path<'_>,
    ) -> Result<Regressor, TrainError> {
        let layer = net
            .layers()
            .into_iter()
            .find(|l| l.name == self.config.spec.student_layer)
            .ok_or_else(|| unknown_layer(self, net))?;
        Ok(Regressor::new(
            path,
            &self.config.spec,
            &layer.shape,
            &self.teacher_shape,
        )?)
    }
}

/// What the loop optimises.
#[derive(Debug, Clone)]
pub enum Objective {
    /// Cross-entropy on the labels.
    Supervised,
    /// Hinton's distillation loss against teacher logits received through the channel.
    Distill {
        /// Loss kind, temperature and alpha.
        loss: DistillLoss,
        /// Which samples keep their labels.
        labels: LabelPolicy,
        /// Fingerprint of the teacher's weights (recorded in the checkpoint).
        teacher_fingerprint: String,
        /// Test-only ledger: one JSON line `{epoch, index, batch_id, replica}` appended per
        /// trained batch.
        batch_ledger: Option<PathBuf>,
        /// Hint distillation (`--hint`): its first `stage_epochs` epochs train on hints alone.
        hint: Option<HintPlan>,
    },
}

impl Objective {
    fn name(&self) -> &'static str {
        match self {
            Objective::Supervised => "train",
            Objective::Distill { .. } => "distill",
        }
    }
}

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
    pub optimizer: crate::optim::OptimizerConfig,
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
        let changes = crate::lr_schedule::check_resume(
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

/// How a distillation run uses a logit cache (`--logit-cache`).
#[derive(Debug)]
pub struct CachePlan {
    /// The cache. While it is incomplete, every batch received from the teacher is added to it
    /// (shards are written as they complete).
    pub cache: crate::cache::LogitCache,
    /// From this epoch on, soft targets come from the cache (read and verified once), not from
    /// the teacher channel.
    pub from_epoch: u64,
}

impl CachePlan {
    /// The first epoch that can read a cache whose completeness is `complete` now, for a run
    /// starting at `start`: `start.epoch` for a complete cache; otherwise the epoch after the
    /// first one streamed from its first batch (which sees every sample once and so completes
    /// the cache): `start.epoch + 1` from an epoch boundary, `start.epoch + 2` after a mid-epoch
    /// resume (the shards being filled were in memory only).
    pub fn first_cached_epoch(complete: bool, start: Position) -> u64 {
        match (complete, start.batch) {
            (true, _) => start.epoch,
            (false, 0) => start.epoch + 1,
            (false, _) => start.epoch + 2,
        }
    }
}

/// Everything one run of the loop needs. Moved onto the training thread.
#[derive(Debug)]
pub struct Job {
    /// The run's settings.
    pub config: TrainConfig,
    /// Device of the network (resolved).
    pub device: Device,
    /// Network to train.
    pub spec: ArchSpec,
    /// What to optimise.
    pub objective: Objective,
    /// Training samples (CPU).
    pub train: Dataset,
    /// Test split for per-epoch accuracy (`None`: skip).
    pub test: Option<Dataset>,
    /// Where to start.
    pub start: Start,
    /// Raised by Ctrl-C or SIGTERM: save a checkpoint and return.
    pub stop: Arc<AtomicBool>,
    /// The logit cache of a `distill` run, if any.
    pub cache: Option<CachePlan>,
    /// Prometheus metrics to keep up to date (samples, epoch, step, loss, waits), if served.
    pub metrics: Option<StudentMetrics>,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Stopped by the stop flag (a checkpoint was saved at the current batch).
    pub interrupted: bool,
    /// Completed epochs.
    pub epochs: u64,
    /// Optimizer steps taken in total.
    pub step: u64,
    /// Samples trained on in this process.
    pub samples: u64,
    /// Samples trained on over the whole run, earlier processes (before `--resume`) included.
    pub samples_total: u64,
    /// The teacher stream ended before the schedule did (e.g. no replica reachable for
    /// `--teacher-wait`): a checkpoint was saved at the first untrained batch.
    pub teacher_gone: bool,
    /// Seconds spent in the loop in this process (excluding per-epoch evaluation).
    pub train_s: f64,
    /// Trainable parameters of the network.
    pub params: i64,
    /// Metrics of the last completed epoch in this process.
    pub last: Option<EpochMetrics>,
    /// Test accuracy of the final weights (when a test split was given).
    pub test: Option<Accuracy>,
    /// The checkpoint directory.
    pub checkpoint: PathBuf,
    /// Seconds the loop waited for soft targets from the teacher channel (time blocked in the
    /// receive; 0 when the targets were ready, and for cached epochs).
    pub waited_s: f64,
    /// Epochs (in this process) whose soft targets came from the logit cache.
    pub cached_epochs: u64,
}

/// Starts `job` on a thread named `trainer`; `teacher` is the receiving end of the client's
/// bounded channel (`None` for supervised training).
///
/// # Errors
/// The thread could not be spawned.
pub fn spawn(
    job: Job,
    teacher: Option<mpsc::Receiver<TeacherBatch>>,
) -> std::io::Result<JoinHandle<Result<Outcome, TrainError>>> {
    std::thread::Builder::new()
        .name("trainer".into())
        .spawn(move || run(job, teacher))
}

/// Waits for a trainer thread, turning a panic into [`TrainError::Panic`].
pub fn join(handle: JoinHandle<Result<Outcome, TrainError>>) -> Result<Outcome, TrainError> {
    handle
        .join()
        .unwrap_or_else(|p| Err(TrainError::Panic(distill_models::panic_message(&*p))))
}

/// Runs the loop on the calling thread (see [`spawn`]).
///
/// # Errors
/// Any [`TrainError`]; a pairing failure stops training before the bad batch is used.
pub fn run(
    job: Job,
    mut teacher: Option<mpsc::Receiver<TeacherBatch>>,
) -> Result<Outcome, TrainError> {
    let Job {
        config: cfg,
        device,
        spec,
        objective,
        train,
        test,
        start,
        stop,
        mut cache,
        metrics: metrics_live,
    } = job;
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n as i32);
    }
    let (vs, net) = match &start.checkpoint {
        Some(ck) => ck.load_network(device)?,
        None => {
            tch::manual_seed(cfg.seed as i64);
            let vs = nn::VarStore::new(device);
            let net = Network::new(&vs.root(), &spec)?;
            (vs, net)
        }
    };
    let params = distill_models::arch::param_count(&vs);
    // Hint distillation: the regressor (its own VarStore, saved beside the network), and which
    // epochs are the hint stage.
    let hint = match &objective {
        Objective::Distill { hint: Some(h), .. } => Some(h.clone()),
        _ => None,
    };
    let hint_vs = nn::VarStore::new(device);
    let regressor = match &hint {
        Some(h) => Some(build_regressor(
            h,
            &net,
            &hint_vs,
            start.checkpoint.as_ref(),
        )?),
        None => None,
    };
    let stage_epochs = hint.as_ref().map_or(0, |h| h.config.stage_epochs);
    let in_hint_stage = |epoch: u64| epoch < stage_epochs;
    // Stage 1 trains the layers up to the hinted one and the regressor; afterwards the whole
    // student, and the regressor while the hint keeps a weight.
    let params_for = |hint_stage: bool| -> Vec<(String, Tensor)> {
        let mut p = trainable_parameters(&vs);
        if let Some(h) = &hint {
            if hint_stage {
                let through = net
                    .variables_through(&h.config.spec.student_layer)
                    .unwrap_or_default();
                p.retain(|(n, _)| through.iter().any(|v| n.starts_with(&format!("{v}."))));
            }
            if hint_stage || h.config.weight > 0.0 {
                p.extend(trainable_parameters(&hint_vs));
            }
        }
        p
    };
    let bpe = batches_per_epoch(train.len(), cfg.batch_size) as u64;
    // Each stage runs its own learning-rate schedule over its own steps.
    let stage_steps = |hint_stage: bool| {
        if hint_stage {
            stage_epochs * bpe
        } else {
            cfg.epochs.saturating_sub(stage_epochs) * bpe
        }
    };
    let opt_hint_stage = in_hint_stage(start.position.epoch);
    let mut opt = Optimizer::new(cfg.optimizer, params_for(opt_hint_stage));
    if let Some(ck) = &start.checkpoint {
        if start.hint_stage_optimizer && !opt_hint_stage {
            tracing::info!("resuming after the hint stage: the optimizer starts afresh");
        } else {
            let state = ck.load_optimizer()?;
            if state.is_empty() {
                return Err(TrainError::Resume {
                    dir: ck.dir.clone(),
                    reason: "no optimizer.safetensors".into(),
                });
            }
            opt.load_state(state)?;
        }
    }
    let n = train.len();
    let tokens = train.is_tokens();
    let mut metrics = MetricsLog::open(&cfg.out).map_err(|source| TrainError::Io {
        path: cfg.out.join(crate::metrics::METRICS_FILE),
        source,
    })?;
    let mut ledger = match &objective {
        Objective::Distill {
            batch_ledger: Some(path),
            ..
        } => Some(Ledger::open(path)?),
        _ => None,
    };
    let ctx = Ctx {
        cfg: &cfg,
        spec: &spec,
        objective: &objective,
        vs: &vs,
        hint_vs: hint.as_ref().map(|_| &hint_vs),
        opt_hint_stage: std::cell::Cell::new(opt_hint_stage),
        train_samples: n,
    };
    tracing::info!(
        arch = %spec.arch, params, device = %crate::device::device_name(device),
        samples = n, epochs = cfg.epochs, start_epoch = start.position.epoch,
        start_batch = start.position.batch, objective = objective.name(),
        "training"
    );
    let mut out = Outcome {
        interrupted: false,
        epochs: start.position.epoch,
        step: start.step,
        samples: 0,
        samples_total: start.samples_trained,
        teacher_gone: false,
        train_s: 0.0,
        params,
        last: None,
        test: None,
        checkpoint: cfg.out.clone(),
        waited_s: 0.0,
        cached_epochs: 0,
    };
    // Every sample's soft targets, once the run reads them from the cache.
    let mut cached: Option<crate::targets::SoftTargets> = None;
    let mut step = start.step;
    for epoch in start.position.epoch..cfg.epochs {
        let skip = if epoch == start.position.epoch {
            start.position.batch
        } else {
            0
        };
        let hint_stage = in_hint_stage(epoch);
        if ctx.opt_hint_stage.get() && !hint_stage {
            // FitNets' stage 2: the whole student, with a fresh optimizer and schedule.
            tracing::info!(
                epoch,
                "hint stage done: the optimizer starts afresh for distillation"
            );
            opt = Optimizer::new(cfg.optimizer, params_for(false));
            ctx.opt_hint_stage.set(false);
        }
        let total_steps = stage_steps(hint_stage);
        tch::manual_seed(epoch_seed(cfg.seed, epoch));
        let plan = epoch_plan(cfg.seed, epoch, n, cfg.batch_size);
        let mut progress = Progress::new(
            epoch,
            cfg.epochs,
            batches_per_epoch(n, cfg.batch_size),
            skip,
        );
        if let Some(plan) = cache.as_ref().filter(|p| epoch >= p.from_epoch)
            && cached.is_none()
        {
            let t = Instant::now();
            cached = Some(plan.cache.load_all()?);
            tracing::info!(
                epoch, cache = %plan.cache.dir().display(),
                bytes_per_sample = format!("{:.1}", plan.cache.bytes_per_sample()),
                load_s = format!("{:.2}", t.elapsed().as_secs_f64()),
                "soft targets from the logit cache from here on (no teacher calls)"
            );
        }
        if cached.is_some() {
            out.cached_epochs += 1;
        }
        let mut sums = Sums::for_tokens(tokens);
        let t0 = Instant::now();
        for planned in plan.into_iter().skip(skip) {
            if stop.load(Ordering::SeqCst) {
                progress.abandon();
                ctx.save_partial(&opt, &sums, (epoch, planned.index), step, t0, &mut out)?;
                out.interrupted = true;
                tracing::warn!(epoch, batch = planned.index, dir = %cfg.out.display(), "interrupted: checkpoint saved; --resume continues from here");
                return Ok(out);
            }
            let mut answered = None;
            // The batch's span (from its first send to the end of this step), when it came from
            // the teachers.
            let mut span = tracing::Span::none();
            let mut teacher_hint = None;
            let teacher_logits = match (cached.as_ref(), teacher.as_mut()) {
                (Some(all), _) => Some(all.select(&Tensor::from_slice(&planned.indices))?),
                (None, None) => None,
                (None, Some(rx)) => {
                    let waiting = Instant::now();
                    let received = rx.blocking_recv();
                    let waited = waiting.elapsed();
                    out.waited_s += waited.as_secs_f64();
                    if let Some(m) = &metrics_live {
                        m.waited_for_targets(waited);
                    }
                    let Some(tb) = received else {
                        // The stream ended early: keep what was trained, then report it.
                        progress.abandon();
                        ctx.save_partial(&opt, &sums, (epoch, planned.index), step, t0, &mut out)?;
                        tracing::warn!(epoch, batch = planned.index, dir = %cfg.out.display(), "teacher stream ended: checkpoint saved; --resume continues from here");
                        out.teacher_gone = true;
                        return Ok(out);
                    };
                    check_pairing(&tb, epoch, planned.index, &planned.indices)?;
                    if let Some(plan) = cache.as_mut()
                        && !plan.cache.is_complete()
                    {
                        plan.cache.put(&tb.indices, &tb.targets)?;
                    }
                    answered = Some((tb.batch_id, tb.replica, tb.groups));
                    span = tb.span;
                    teacher_hint = tb.hint;
                    Some(tb.targets)
                }
            };
            let step_span = span.clone();
            let _in_batch = step_span.enter();
            let (xs, ys) = train.try_batch(&planned.indices)?;
            let (xs, ys) = (xs.f_to_device(device)?, ys.f_to_device(device)?);
            // With a hint: the student's hinted layer through the regressor, against the
            // teacher's feature.
            let (logits, hint_term) = match (&hint, &regressor) {
                (Some(h), Some(reg)) => {
                    let layers = net.forward_layers(&xs, None, true)?;
                    let feature = layers
                        .iter()
                        .find(|(name, _)| *name == h.config.spec.student_layer)
                        .map(|(_, t)| t.shallow_clone())
                        .ok_or_else(|| unknown_layer(h, &net))?;
                    let logits = layers
                        .last()
                        .map(|(_, t)| t.shallow_clone())
                        .ok_or_else(|| unknown_layer(h, &net))?;
                    let target = teacher_hint
                        .take()
                        .ok_or_else(|| {
                            TrainError::Hint(format!(
                                "epoch {epoch} batch {}: the teacher sent no output {}",
                                planned.index, h.config.spec.teacher_output
                            ))
                        })?
                        .f_to_device(device)?;
                    let value = hint_loss(h.config.loss, &reg.forward(&feature), &target)?;
                    (logits, Some((value, h.config.weight)))
                }
                _ => (net.forward(&xs, true)?, None),
            };
            let (total, soft, hard) = match (&objective, teacher_logits) {
                // FitNets' stage 1: the hint alone.
                _ if hint_stage => {
                    let value = hint_term
                        .as_ref()
                        .map(|(v, _)| v.shallow_clone())
                        .ok_or_else(|| TrainError::Hint("no hint in the hint stage".into()))?;
                    (value, 0.0, 0.0)
                }
                (Objective::Distill { loss, labels, .. }, Some(t)) => {
                    let t = t.to_device(device)?;
                    let mask = label_mask(*labels, &planned.indices, device);
                    // A language model's [B, S, V] logits: the loss over its real tokens.
                    let parts = loss.compute_targets(&logits, &t, &ys, mask.as_ref())?;
                    (parts.total, parts.soft, parts.hard)
                }
                _ => {
                    let ce = if tokens {
                        // Mean over the real positions (IGNORE_INDEX labels skipped).
                        let v = logits.size().last().copied().unwrap_or(0);
                        loss::f_cross_entropy(&logits.f_reshape([-1, v])?, &ys.f_reshape([-1])?)?
                    } else {
                        loss::f_cross_entropy(&logits, &ys)?
                    };
                    let v = ce.double_value(&[]);
                    (ce, 0.0, v)
                }
            };
            // After the hint stage, the hint keeps `--hint-weight` (0: none).
            let hint_value = hint_term
                .as_ref()
                .map(|(v, _)| v.double_value(&[]))
                .unwrap_or(0.0);
            let total = match &hint_term {
                Some((v, w)) if !hint_stage && *w > 0.0 => total.f_add(&v.f_mul_scalar(*w)?)?,
                _ => total,
            };
            let value = total.double_value(&[]);
            if !value.is_finite() {
                return Err(TrainError::NonFinite {
                    value,
                    epoch,
                    index: planned.index,
                });
            }
            opt.zero_grad();
            total.f_backward()?;
            let stats = opt.step_scheduled(total_steps)?;
            step += 1;
            if let Some(m) = &metrics_live {
                m.trained(epoch + 1, step, planned.indices.len(), value);
            }
            tracing::trace!(
                step,
                loss = value,
                lr = stats.lr,
                grad_norm = stats.grad_norm,
                "trained"
            );
            let correct = logits
                .f_argmax(-1, false)?
                .f_eq_tensor(&ys)?
                .f_sum(Kind::Int64)?
                .int64_value(&[]);
            // What the loss and accuracy average over: samples, or a language model's real
            // tokens (an IGNORE_INDEX label never equals an argmax, so `correct` needs no mask).
            let units = if tokens {
                ys.f_ne(crate::data::IGNORE_INDEX)?
                    .f_sum(Kind::Int64)?
                    .int64_value(&[]) as usize
            } else {
                planned.indices.len()
            };
            sums.add(planned.indices.len(), units, value, soft, hard, correct);
            if hint_term.is_some() {
                sums.add_hint(units, hint_value);
            }
            out.samples += planned.indices.len() as u64;
            out.samples_total += planned.indices.len() as u64;
            if let (Some(ledger), Some((batch_id, replica, groups))) = (ledger.as_mut(), answered) {
                ledger.record(epoch, planned.index, batch_id, &replica, &groups)?;
            }
            progress.update(
                planned.index + 1,
                sums.mean_loss(),
                sums.samples as f64 / t0.elapsed().as_secs_f64(),
            );
        }
        let train_s = t0.elapsed().as_secs_f64();
        out.train_s += train_s;
        progress.finish();
        let accuracy = match &test {
            Some(test) if cfg.epoch_eval || epoch + 1 == cfg.epochs => {
                Some(eval::evaluate(&net, test, device, 1000)?)
            }
            _ => None,
        };
        let m = sums.metrics(epoch, step, t0, accuracy.as_ref());
        ctx.save(&opt, (epoch + 1, 0), step, out.samples_total, m.clone())?;
        metrics.append(&m).map_err(|source| TrainError::Io {
            path: cfg.out.join(crate::metrics::METRICS_FILE),
            source,
        })?;
        tracing::info!(
            epoch = epoch + 1,
            of = cfg.epochs,
            loss = format!("{:.4}", m.loss),
            train_accuracy = format!("{:.4}", m.train_accuracy),
            test_accuracy = m
                .test_accuracy
                .map(|a| format!("{a:.4}"))
                .unwrap_or_default(),
            samples_per_s = format!("{:.0}", m.samples_per_s),
            "epoch done"
        );
        out.epochs = epoch + 1;
        out.step = step;
        out.test = accuracy;
        out.last = Some(m);
    }
    if out.test.is_none()
        && let Some(test) = &test
    {
        out.test = Some(eval::evaluate(&net, test, device, 1000)?);
    }
    Ok(out)
}

/// The `labelled` mask of a batch: `bool [B]` on `device`, or `None` when every sample is
/// labelled.
pub fn label_mask(labels: LabelPolicy, indices: &[i64], device: Device) -> Option<Tensor> {
    match labels {
        LabelPolicy::All => None,
        policy => {
            let marks: Vec<bool> = indices.iter().map(|&i| policy.is_labelled(i)).collect();
            Some(Tensor::from_slice(&marks).to_device(device))
        }
    }
}

/// Checks that `tb` is the scheduled batch (`epoch`, `index`, `indices`).
///
/// # Errors
/// [`TrainError::Pairing`] naming both batches.
pub fn check_pairing(
    tb: &TeacherBatch,
    epoch: u64,
    index: usize,
    indices: &[i64],
) -> Result<(), TrainError> {
    let detail = if tb.indices != indices {
        format!(
            " (sample indices differ: expected {:?}…, got {:?}…)",
            &indices[..indices.len().min(4)],
            &tb.indices[..tb.indices.len().min(4)]
        )
    } else if tb.targets.rows() != indices.len() as i64 {
        format!(
            " ({} soft-target rows for {} samples)",
            tb.targets.rows(),
            indices.len()
        )
    } else {
        String::new()
    };
    if tb.epoch != epoch || tb.index != index || !detail.is_empty() {
        return Err(TrainError::Pairing {
            epoch,
            index,
            batch_id: tb.batch_id,
            got_epoch: tb.epoch,
            got_index: tb.index,
            detail,
        });
    }
    Ok(())
}

/// The test-only batch ledger (`--batch-ledger`): one JSON line per trained batch, flushed as
/// it is written so a test can watch the run's progress.
struct Ledger {
    path: PathBuf,
    file: std::fs::File,
}

impl Ledger {
    fn open(path: &Path) -> Result<Ledger, TrainError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| TrainError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Ledger {
            path: path.to_path_buf(),
            file,
        })
    }

    fn record(
        &mut self,
        epoch: u64,
        index: usize,
        batch_id: u64,
        replica: &str,
        groups: &[String],
    ) -> Result<(), TrainError> {
        use std::io::Write as _;
        let line = serde_json::json!({
            "epoch": epoch, "index": index, "batch_id": batch_id, "replica": replica,
            "groups": groups,
        });
        writeln!(self.file, "{line}").map_err(|source| TrainError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

struct Ctx<'a> {
    cfg: &'a TrainConfig,
    spec: &'a ArchSpec,
    objective: &'a Objective,
    vs: &'a nn::VarStore,
    /// The hint regressor's variables, saved beside the network (`distill --hint`).
    hint_vs: Option<&'a nn::VarStore>,
    /// The optimizer in use is the hint stage's.
    opt_hint_stage: std::cell::Cell<bool>,
    train_samples: usize,
}

impl Ctx<'_> {
    /// Saves a checkpoint in the middle of an epoch (before batch `at.1` of epoch `at.0`) with
    /// the partial epoch's metrics, and records `step` in `out`: the run is about to stop early.
    fn save_partial(
        &self,
        opt: &Optimizer,
        sums: &Sums,
        at: (u64, usize),
        step: u64,
        t0: Instant,
        out: &mut Outcome,
    ) -> Result<(), TrainError> {
        self.save(
            opt,
            at,
            step,
            out.samples_total,
            sums.metrics(at.0, step, t0, None),
        )?;
        out.step = step;
        Ok(())
    }

    /// Saves a checkpoint positioned before batch `next_batch` of epoch `epoch`, with
    /// `samples_trained` samples trained over the whole run.
    fn save(
        &self,
        opt: &Optimizer,
        (epoch, next_batch): (u64, usize),
        step: u64,
        samples_trained: u64,
        m: EpochMetrics,
    ) -> Result<(), TrainError> {
        let (teacher_fingerprint, loss, hint) = match self.objective {
            Objective::Supervised => (None, None, None),
            Objective::Distill {
                loss,
                labels,
                teacher_fingerprint,
                hint,
                ..
            } => (
                Some(teacher_fingerprint.clone()),
                Some(format!(
                    "{} T={} alpha={} labels={labels}{}",
                    loss.kind,
                    loss.temperature,
                    loss.alpha,
                    if loss.kind == crate::loss::LossKind::Jsd {
                        format!(" beta={}", loss.jsd_beta)
                    } else {
                        String::new()
                    }
                )),
                hint.as_ref().map(HintPlan::describe),
            ),
        };
        let state = ResumeState {
            objective: self.objective.name().into(),
            seed: self.cfg.seed,
            batch_size: self.cfg.batch_size,
            train_samples: self.train_samples,
            next_batch,
            optimizer: self.cfg.optimizer,
            teacher_fingerprint,
            loss,
            samples_trained,
            total_steps: Some(
                self.cfg.epochs * batches_per_epoch(self.train_samples, self.cfg.batch_size) as u64,
            ),
            hint,
            hint_stage_optimizer: self.opt_hint_stage.get(),
        };
        let meta = CheckpointMeta {
            arch: self.spec.clone(),
            epoch,
            step,
            fingerprint: String::new(),
            metrics: serde_json::to_value(&m).unwrap_or_default(),
            trainer: serde_json::to_value(&state).unwrap_or_default(),
        };
        let aux = self.hint_vs.map(sorted_variables).unwrap_or_default();
        Checkpoint::save_with_aux(&self.cfg.out, meta, self.vs, &opt.state()?, &aux)?;
        Ok(())
    }
}

/// Running sums of one epoch. Losses and accuracy average over units: samples, or a language
/// model's real tokens (`tokens` set).
#[derive(Default)]
struct Sums {
    samples: usize,
    units: usize,
    tokens: bool,
    loss: f64,
    soft: f64,
    hard: f64,
    correct: i64,
    /// Hint loss summed over units (`distill --hint`), and whether any was added.
    hint: Option<f64>,
}

impl Sums {
    /// Sums of a language model's epoch (units are tokens).
    fn for_tokens(tokens: bool) -> Sums {
        Sums {
            tokens,
            ..Sums::default()
        }
    }

    fn add(&mut self, b: usize, units: usize, loss: f64, soft: f64, hard: f64, correct: i64) {
        let w = units as f64;
        self.samples += b;
        self.units += units;
        self.loss += loss * w;
        self.soft += soft * w;
        self.hard += hard * w;
        self.correct += correct;
    }

    /// Adds a batch's hint loss (`value`, a mean over its `units`).
    fn add_hint(&mut self, units: usize, value: f64) {
        *self.hint.get_or_insert(0.0) += value * units as f64;
    }

    fn mean_loss(&self) -> f64 {
        self.loss / (self.units.max(1) as f64)
    }

    fn metrics(&self, epoch: u64, step: u64, t0: Instant, test: Option<&Accuracy>) -> EpochMetrics {
        let n = self.units.max(1) as f64;
        let wall = t0.elapsed().as_secs_f64();
        EpochMetrics {
            tokens: self.tokens.then_some(self.units as u64),
            tokens_per_s: self.tokens.then(|| self.units as f64 / wall.max(1e-9)),
            test_perplexity: test.and_then(Accuracy::perplexity),
            epoch: epoch + 1,
            step,
            samples: self.samples as u64,
            loss: self.loss / n,
            soft_loss: self.soft / n,
            hard_loss: self.hard / n,
            train_accuracy: self.correct as f64 / n,
            test_accuracy: test.map(Accuracy::fraction),
            samples_per_s: self.samples as f64 / wall.max(1e-9),
            wall_s: wall,
            hint_loss: self.hint.map(|h| h / n),
        }
    }
}

/// The regressor of `hint` ([`HintPlan::regressor`]), built in `hint_vs` (named
/// `hint.regressor.*`); on resume its weights come from `checkpoint`'s auxiliary file.
///
/// # Errors
/// As [`HintPlan::regressor`]; [`TrainError::Model`] for a checkpoint without the regressor, or
/// whose regressor does not fit (naming the tensor and both shapes).
fn build_regressor(
    hint: &HintPlan,
    net: &Network,
    hint_vs: &nn::VarStore,
    checkpoint: Option<&Checkpoint>,
) -> Result<Regressor, TrainError> {
    let regressor = hint.regressor(net, &(hint_vs.root() / "hint"))?;
    if let Some(ck) = checkpoint {
        ck.load_aux_into(hint_vs, "hint regressor")?;
    }
    Ok(regressor)
}

/// The error for a `--hint` student layer the network does not have, listing its layers.
fn unknown_layer(hint: &HintPlan, net: &Network) -> TrainError {
    let layers: Vec<String> = net
        .layers()
        .into_iter()
        .map(|l| format!("{} {:?}", l.name, l.shape))
        .collect();
    TrainError::Hint(format!(
        "--hint {}: the student {} has no layer {}; its layers: {}",
        hint.config.spec,
        net.spec().arch,
        hint.config.spec.student_layer,
        layers.join(", ")
    ))
}

/// Whether `dir` holds a finished checkpoint of at least `epochs` epochs.
pub fn has_epochs(dir: &Path, epochs: u64) -> bool {
    Checkpoint::open(dir).is_ok_and(|c| c.meta.epoch >= epochs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::targets::SoftTargets;

    fn tb(epoch: u64, index: usize, indices: &[i64]) -> TeacherBatch {
        TeacherBatch {
            batch_id: 7,
            epoch,
            index,
            indices: indices.to_vec(),
            targets: SoftTargets::Dense(Tensor::zeros(
                [indices.len() as i64, 3],
                tch::kind::FLOAT_CPU,
            )),
            hint: None,
            groups: Vec::new(),
            replica: String::new(),
            span: tracing::Span::none(),
        }
    }

    #[test]
    fn pairing_check_accepts_the_scheduled_batch_only() {
        check_pairing(&tb(1, 2, &[4, 5]), 1, 2, &[4, 5]).unwrap();
        for (b, why) in [
            (tb(1, 3, &[4, 5]), "wrong position"),
            (tb(0, 2, &[4, 5]), "wrong epoch"),
            (tb(1, 2, &[5, 4]), "wrong samples"),
        ] {
            let e = check_pairing(&b, 1, 2, &[4, 5]).unwrap_err().to_string();
            assert!(e.contains("pairing check failed"), "{why}: {e}");
        }
        let mut short = tb(1, 2, &[4, 5]);
        short.targets = SoftTargets::Dense(Tensor::zeros([1, 3], tch::kind::FLOAT_CPU));
        assert!(check_pairing(&short, 1, 2, &[4, 5]).is_err());
    }

    #[test]
    fn label_masks_follow_the_policy() {
        assert!(label_mask(LabelPolicy::All, &[1, 2], Device::Cpu).is_none());
        let m = label_mask(LabelPolicy::First(3), &[5, 0, 2, 3], Device::Cpu).unwrap();
        assert_eq!(
            Vec::<bool>::try_from(&m).unwrap(),
            [false, true, true, false]
        );
        let m = label_mask(LabelPolicy::None, &[0], Device::Cpu).unwrap();
        assert_eq!(Vec::<bool>::try_from(&m).unwrap(), [false]);
    }
}
