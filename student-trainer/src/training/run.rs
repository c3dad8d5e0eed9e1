//! The loop: [`spawn`] starts it on its own thread; [`run`] walks the epochs, each a short loop
//! over its batches that gets the batch's soft targets, calls the step and hands the result to
//! the outputs (sums, progress, Prometheus, ledger); the end of an epoch evaluates, checkpoints
//! and appends to `metrics.jsonl`.

use super::checkpoint::{ResumeState, Start};
use super::error::TrainError;
use super::job::{Job, Objective, Outcome, TrainConfig};
use super::on_policy::{Made, OnPolicy};
use super::step::{OnPolicyStep, StepInput, StepOutput, Stepper};
use super::student::{Stages, Student, StudentSource};
use super::sums::Sums;
use super::targets::{Answered, TargetSource, Targets};
use super::views::ViewSource;
use crate::data::Dataset;
use crate::eval;
use crate::images::ImageRecord;
use crate::optim::Optimizer;
use crate::outputs::ledger::Ledger;
use crate::outputs::metrics::{EpochMetrics, METRICS_FILE, MetricsLog};
use crate::outputs::monitoring::StudentMetrics;
use crate::outputs::progress::Progress;
use crate::outputs::samples::SamplesLog;
use crate::schedule::{PlannedBatch, batches_per_epoch, epoch_plan};
use crate::soft_targets::TeacherBatch;
use distill_models::checkpoint::sorted_variables;
use distill_models::{ArchSpec, Checkpoint, CheckpointMeta};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;
use tch::Device;
use tokio::sync::mpsc;

/// Samples per forward pass when evaluating on the test split.
const EVAL_BATCH: usize = 1000;

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

/// Runs the loop on the calling thread (see [`spawn`]): from `job.start` to the last epoch, or
/// until the stop flag is raised or the teacher stream ends (a checkpoint is saved at the next
/// batch either way).
///
/// # Errors
/// Any [`TrainError`]; a pairing failure stops training before the bad batch is used.
pub fn run(job: Job, teacher: Option<mpsc::Receiver<TeacherBatch>>) -> Result<Outcome, TrainError> {
    let start = job.start.position;
    let mut trainer = Trainer::new(job, teacher)?;
    for epoch in start.epoch..trainer.cfg.epochs {
        let skip = if epoch == start.epoch { start.batch } else { 0 };
        if let Flow::Stopped = trainer.epoch(epoch, skip)? {
            return Ok(trainer.outcome());
        }
    }
    if trainer.out.test.is_none()
        && let Some(test) = &trainer.test
    {
        trainer.out.test = Some(eval::evaluate(
            &trainer.student.net,
            test,
            trainer.device,
            EVAL_BATCH,
        )?);
    }
    Ok(trainer.outcome())
}

/// Whether the run goes on after an epoch.
enum Flow {
    /// The epoch is done.
    Continue,
    /// Stopped inside it (signal, or the teacher stream ended); a checkpoint was saved.
    Stopped,
}

/// The loop's state, owned by the training thread.
struct Trainer {
    cfg: TrainConfig,
    spec: ArchSpec,
    objective: Objective,
    device: Device,
    train: Dataset,
    test: Option<Dataset>,
    stop: Arc<AtomicBool>,
    /// The run step at which the loop raises `stop` itself (`--stop-after-steps`, test-only).
    stop_at_step: Option<u64>,
    student: Student,
    stages: Stages,
    opt: Optimizer,
    /// The optimizer in use is the hint stage's.
    opt_hint_stage: bool,
    targets: TargetSource,
    /// The student's per-batch views (an image folder under `--augment`), or the dataset.
    views: ViewSource,
    /// An image folder's classes and view, recorded in every checkpoint.
    image_record: Option<ImageRecord>,
    metrics: MetricsLog,
    ledger: Option<Ledger>,
    live: Option<StudentMetrics>,
    /// An on-policy distillation run's sampling, hand-off and held-out measurement.
    on_policy: Option<OnPolicy>,
    out: Outcome,
}

impl Trainer {
    /// Builds the student and its optimizer (from the checkpoint when resuming), and opens the
    /// run's outputs.
    fn new(job: Job, teacher: Option<mpsc::Receiver<TeacherBatch>>) -> Result<Trainer, TrainError> {
        let Job {
            config: cfg,
            device,
            spec,
            objective,
            train,
            test,
            start,
            stop,
            cache,
            metrics: live,
            images,
            on_policy,
        } = job;
        let (image_record, views) = match images {
            Some(i) => (Some(i.record), i.views),
            None => (None, None),
        };
        distill_models::threads::compute_thread(cfg.threads);
        let checkpoint = start.checkpoint.as_ref();
        let source = StudentSource {
            file: cfg.student.clone(),
            init: match (&cfg.init, checkpoint) {
                (Some(dir), None) => Some(Checkpoint::open(dir)?),
                _ => None,
            },
        };
        if spec.arch.is_torchscript() {
            // TorchScript's graph executor as a plain interpreter: no profiling runs followed by
            // re-optimised graphs whose dropout and autodiff may differ from the first calls', so
            // a step computes the same whatever the process's call count (exact resume).
            tch::jit::set_graph_executor_optimize(false);
        }
        let student = Student::build(
            &spec,
            &source,
            objective.hint(),
            device,
            cfg.seed,
            checkpoint,
        )?;
        let stages = Stages {
            hint_epochs: objective.hint().map_or(0, |h| h.config.stage_epochs),
            epochs: cfg.epochs,
            steps_per_epoch: batches_per_epoch(train.len(), cfg.batch_size) as u64,
        };
        let opt_hint_stage = stages.is_hint_stage(start.position.epoch);
        let opt = resumed_optimizer(&cfg, &student, &start, opt_hint_stage)?;
        let metrics = MetricsLog::open(&cfg.out).map_err(|source| TrainError::Io {
            path: cfg.out.join(METRICS_FILE),
            source,
        })?;
        let ledger = match &objective {
            Objective::Distill {
                batch_ledger: Some(path),
                ..
            } => Some(Ledger::open(path).map_err(|source| TrainError::Io {
                path: path.clone(),
                source,
            })?),
            _ => None,
        };
        tracing::info!(
            arch = %spec.arch, params = student.params(), device = %crate::device::device_name(device),
            samples = train.len(), epochs = cfg.epochs, start_epoch = start.position.epoch,
            start_batch = start.position.batch, objective = objective.name(),
            "training"
        );
        let out = Outcome::starting(&start, student.params(), cfg.out.clone());
        let stop_at_step = cfg.stop_after_steps.map(|n| start.step + n);
        Ok(Trainer {
            targets: TargetSource::new(teacher, cache, live.clone()),
            views: ViewSource::new(views),
            image_record,
            cfg,
            spec,
            objective,
            device,
            train,
            test,
            stop,
            stop_at_step,
            student,
            stages,
            opt,
            opt_hint_stage,
            metrics,
            ledger,
            live,
            on_policy: on_policy.map(OnPolicy::new),
            out,
        })
    }

    /// Trains epoch `epoch` from its batch `skip` on.
    fn epoch(&mut self, epoch: u64, skip: usize) -> Result<Flow, TrainError> {
        let hint_stage = self.begin_stage(epoch);
        let n = self.train.len();
        let plan = epoch_plan(self.cfg.seed, epoch, n, self.cfg.batch_size);
        let batches = batches_per_epoch(n, self.cfg.batch_size);
        let mut progress = Progress::new(epoch, self.cfg.epochs, batches, skip);
        if self.targets.begin_epoch(epoch)? {
            self.out.cached_epochs += 1;
        }
        let mut sums = Sums::for_tokens(self.train.is_tokens());
        let t0 = Instant::now();
        for planned in plan.into_iter().skip(skip) {
            if self.stop_at_step == Some(self.out.step) {
                // `--stop-after-steps`: the stop a SIGTERM asks for, at a chosen step.
                tracing::info!(step = self.out.step, "--stop-after-steps: stopping");
                self.stop.store(true, Ordering::SeqCst);
            }
            if self.stop.load(Ordering::SeqCst) {
                progress.abandon();
                self.save_partial(&sums, (epoch, planned.index), t0)?;
                self.out.interrupted = true;
                tracing::warn!(epoch, batch = planned.index, dir = %self.cfg.out.display(), "interrupted: checkpoint saved; --resume continues from here");
                return Ok(Flow::Stopped);
            }
            let made = match self.on_policy.as_mut() {
                Some(op) => Some(op.send(
                    &self.student.net,
                    &self.train,
                    (self.cfg.seed, self.device),
                    epoch,
                    &planned,
                )?),
                None => None,
            };
            let waited_before = self.targets.waited_s;
            let Some(targets) = self.targets.next(epoch, &planned)? else {
                // The stream ended early: keep what was trained, then report it.
                progress.abandon();
                self.save_partial(&sums, (epoch, planned.index), t0)?;
                tracing::warn!(epoch, batch = planned.index, dir = %self.cfg.out.display(), "teacher stream ended: checkpoint saved; --resume continues from here");
                self.out.teacher_gone = true;
                return Ok(Flow::Stopped);
            };
            let inputs = self.views.next(epoch, &planned)?;
            let span = targets.span.clone();
            let _in_batch = span.enter();
            let answered = targets.answered.clone();
            let trained_at = Instant::now();
            let on_policy = made.as_ref().map(|m| (m.sampled, m.positions()));
            let done = self.step(epoch, &planned, (targets, inputs, made), hint_stage)?;
            if let (Some(op), Some((true, _))) = (self.on_policy.as_mut(), on_policy) {
                let score_s = self.targets.waited_s - waited_before;
                op.timed(score_s, trained_at.elapsed().as_secs_f64());
            }
            sums.add(&done);
            self.record(epoch, &planned, &done, (answered, on_policy))?;
            let samples_per_s = sums.samples() as f64 / t0.elapsed().as_secs_f64();
            progress.update(planned.index + 1, sums.mean_loss(), samples_per_s);
        }
        self.out.train_s += t0.elapsed().as_secs_f64();
        progress.finish();
        self.end_epoch(epoch, &sums, t0)?;
        Ok(Flow::Continue)
    }

    /// Whether `epoch` is in the hint stage; at the stage boundary the optimizer (and its
    /// learning-rate schedule) starts afresh over the whole student (FitNets' stage 2).
    fn begin_stage(&mut self, epoch: u64) -> bool {
        let hint_stage = self.stages.is_hint_stage(epoch);
        if self.opt_hint_stage && !hint_stage {
            tracing::info!(
                epoch,
                "hint stage done: the optimizer starts afresh for distillation"
            );
            self.opt = Optimizer::new(self.cfg.optimizer, self.student.parameters(false));
            self.opt_hint_stage = false;
        }
        hint_stage
    }

    /// One optimizer step on `planned` with its targets (and its inputs, when made for it: an
    /// image folder's views, or an on-policy batch's sequences).
    fn step(
        &mut self,
        epoch: u64,
        planned: &PlannedBatch,
        (targets, inputs, made): (Targets, Option<tch::Tensor>, Option<Made>),
        hint_stage: bool,
    ) -> Result<StepOutput, TrainError> {
        let (inputs, labels, on_policy) = match made {
            Some(m) => {
                let on_policy = m.sampled.then(|| OnPolicyStep {
                    estimator: self
                        .on_policy
                        .as_ref()
                        .map(OnPolicy::estimator)
                        .unwrap_or_default(),
                    gathered: targets.gathered,
                });
                (Some(m.inputs), Some(m.labels), on_policy)
            }
            None => (inputs, None, None),
        };
        let stepper = Stepper {
            student: &self.student,
            objective: &self.objective,
            train: &self.train,
            device: self.device,
            seed: self.cfg.seed,
        };
        stepper.step(
            &mut self.opt,
            StepInput {
                epoch,
                planned,
                targets: targets.soft,
                hint: targets.hint,
                hint_stage,
                stage_steps: self.stages.steps(hint_stage),
                inputs,
                labels,
                on_policy,
            },
        )
    }

    /// Hands a trained batch to the outputs: the outcome's counts, Prometheus, the log and the
    /// batch ledger.
    fn record(
        &mut self,
        epoch: u64,
        planned: &PlannedBatch,
        done: &StepOutput,
        (answered, on_policy): (Option<Answered>, Option<(bool, i64)>),
    ) -> Result<(), TrainError> {
        self.out.step += 1;
        self.out.samples += done.samples as u64;
        self.out.samples_total += done.samples as u64;
        if let Some(m) = &self.live {
            m.trained(epoch + 1, self.out.step, done.samples, done.loss);
        }
        tracing::trace!(
            step = self.out.step,
            loss = done.loss,
            lr = done.lr,
            grad_norm = done.grad_norm,
            "trained"
        );
        if let (Some(ledger), Some((batch_id, replica, groups))) = (self.ledger.as_mut(), answered)
        {
            ledger
                .record(epoch, planned.index, batch_id, &replica, &groups, on_policy)
                .map_err(|source| TrainError::Io {
                    path: ledger.path().to_path_buf(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The end of epoch `epoch`: test accuracy (every epoch, or the last one only), a checkpoint
    /// at the next epoch's start, and its line of `metrics.jsonl`.
    fn end_epoch(&mut self, epoch: u64, sums: &Sums, t0: Instant) -> Result<(), TrainError> {
        // The training's wall time, the evaluation excluded (samples/s is training throughput).
        let wall = t0.elapsed().as_secs_f64();
        let accuracy = match &self.test {
            Some(test) if self.cfg.epoch_eval || epoch + 1 == self.cfg.epochs => Some(
                eval::evaluate(&self.student.net, test, self.device, EVAL_BATCH)?,
            ),
            _ => None,
        };
        let mut m = sums.metrics(epoch, self.out.step, wall, accuracy.as_ref());
        m.on_policy = self.end_on_policy_epoch(epoch)?;
        self.save((epoch + 1, 0), m.clone())?;
        self.metrics.append(&m).map_err(|source| TrainError::Io {
            path: self.cfg.out.join(METRICS_FILE),
            source,
        })?;
        tracing::info!(
            epoch = epoch + 1,
            of = self.cfg.epochs,
            loss = format!("{:.4}", m.loss),
            train_accuracy = format!("{:.4}", m.train_accuracy),
            test_accuracy = m
                .test_accuracy
                .map(|a| format!("{a:.4}"))
                .unwrap_or_default(),
            samples_per_s = format!("{:.0}", m.samples_per_s),
            "epoch done"
        );
        self.out.epochs = epoch + 1;
        self.out.test = accuracy;
        self.out.last = Some(m);
        Ok(())
    }

    /// An on-policy run's metrics of epoch `epoch` (with the held-out reverse KL, measured now)
    /// and its decoded samples appended to `samples.jsonl`; `None` for other runs.
    fn end_on_policy_epoch(
        &mut self,
        epoch: u64,
    ) -> Result<Option<crate::outputs::metrics::OnPolicyMetrics>, TrainError> {
        let Some(op) = self.on_policy.as_mut() else {
            return Ok(None);
        };
        let first_index = batches_per_epoch(self.train.len(), self.cfg.batch_size);
        let (m, samples) = op.end_epoch(
            &self.student.net,
            &mut self.targets,
            (self.cfg.seed, self.device),
            (epoch, first_index, self.cfg.batch_size),
        )?;
        let log = SamplesLog::new(&self.cfg.out);
        log.append(&samples).map_err(|source| TrainError::Io {
            path: log.path().to_path_buf(),
            source,
        })?;
        if let Some(kl) = m.heldout_reverse_kl {
            tracing::info!(
                epoch = epoch + 1,
                heldout_reverse_kl = format!("{kl:.4}"),
                on_policy_fraction = format!("{:.2}", m.on_policy_fraction),
                generation_tokens_per_s = format!("{:.0}", m.generation_tokens_per_s),
                "on-policy"
            );
        }
        Ok(Some(m))
    }

    /// Saves a checkpoint in the middle of an epoch (before batch `at.1` of epoch `at.0`) with
    /// the partial epoch's metrics: the run is about to stop early.
    fn save_partial(&self, sums: &Sums, at: (u64, usize), t0: Instant) -> Result<(), TrainError> {
        self.save(
            at,
            sums.metrics(at.0, self.out.step, t0.elapsed().as_secs_f64(), None),
        )
    }

    /// Saves a checkpoint positioned before batch `next_batch` of epoch `epoch`, with `m` as its
    /// metrics.
    fn save(&self, (epoch, next_batch): (u64, usize), m: EpochMetrics) -> Result<(), TrainError> {
        let mut state = ResumeState::of_run(
            &self.cfg,
            &self.objective,
            self.train.len(),
            next_batch,
            self.out.samples_total,
            self.opt_hint_stage,
        );
        state.images = self.image_record.clone();
        let meta = CheckpointMeta {
            arch: self.spec.clone(),
            epoch,
            step: self.out.step,
            fingerprint: String::new(),
            metrics: serde_json::to_value(&m).unwrap_or_default(),
            trainer: serde_json::to_value(&state).unwrap_or_default(),
        };
        let aux = self
            .student
            .hint_vs()
            .map(sorted_variables)
            .unwrap_or_default();
        Checkpoint::save_model(
            &self.cfg.out,
            meta,
            &self.student.vs,
            &self.student.net,
            &self.opt.state()?,
            &aux,
        )?;
        Ok(())
    }

    /// The outcome so far.
    fn outcome(mut self) -> Outcome {
        self.out.waited_s = self.targets.waited_s;
        self.out.data_waited_s = self.views.waited_s;
        self.out
    }
}

/// The optimizer of the stage a run starts in, over the student's parameters of that stage,
/// with the checkpoint's state when resuming (unless the checkpoint's optimizer belongs to the
/// hint stage the run has left: the next stage starts afresh).
///
/// # Errors
/// [`TrainError::Resume`] for a checkpoint without optimizer state; [`TrainError::Optim`] for a
/// state that does not fit the parameters.
fn resumed_optimizer(
    cfg: &TrainConfig,
    student: &Student,
    start: &Start,
    hint_stage: bool,
) -> Result<Optimizer, TrainError> {
    let mut opt = Optimizer::new(cfg.optimizer, student.parameters(hint_stage));
    let Some(ck) = &start.checkpoint else {
        return Ok(opt);
    };
    if start.hint_stage_optimizer && !hint_stage {
        tracing::info!("resuming after the hint stage: the optimizer starts afresh");
        return Ok(opt);
    }
    let state = ck.load_optimizer()?;
    if state.is_empty() {
        return Err(TrainError::Resume {
            dir: ck.dir.clone(),
            reason: "no optimizer.safetensors".into(),
        });
    }
    opt.load_state(state)?;
    Ok(opt)
}
