//! `distill`: online distillation from teacher-server replicas (one group, or several for an
//! ensemble), or from a logit cache; prints the report and writes `OUT/report.json`.
//!
//! The command in phases: [`setup`] (data, student, teachers, hint, resume point, cache), the
//! announcement line, [`run`] (the trainer thread fed by the pool), then [`report`] (teacher
//! and baseline evaluated on the test split).

use super::dataset::{Data, Source, keep_tokenizer};
use super::error::AppError;
use super::eval::evaluate_checkpoint;
use super::on_policy::{self, OnPolicyPlan};
use super::output::{Finished, outln};
use super::student::{self, StudentPlan};
use super::teachers::{batch_size_for, connect, evaluate_pool, total_params};
use super::train::{
    image_job, join_trainer, prepare_out, start_monitoring, summarise, train, warn_long_warmup,
};
use super::views::{self, Feed, FeedSpec};
use crate::config::DistillConfig;
use crate::ensemble::EnsembleMode;
use crate::eval::Accuracy;
use crate::hint::{HintConfig, HintPlan};
use crate::logit_cache::{CacheKey, CachePlan, CachedTeacher, DEFAULT_SHARD_SAMPLES, LogitCache};
use crate::loss::LossKind;
use crate::outputs::monitoring::StudentMetrics;
use crate::outputs::report::{ModelSummary, OnPolicySummary, REPORT_FILE, ReplicaSummary, Report};
use crate::schedule::{PlannedBatch, ViewedBatch, run_plan};
use crate::soft_targets::TeacherBatch;
use crate::teachers::pool::{ReplicaStats, RunStats, RunTargets};
use crate::teachers::{ClientError, Expect, Pool, PoolError, TeacherInfo};
use crate::training::{self, Job, Objective, OnPolicyJob, Outcome, Start, TrainConfig};
use distill_models::ArchSpec;
use distill_telemetry::MetricsServer;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use tch::{Device, nn};
use tokio::sync::mpsc;

/// `distill`. With `--alpha 0` and `--labels all` no sample weighs the teacher (see
/// [`DistillConfig::needs_teacher`]): it warns and runs [`train`] instead, without contacting
/// any teacher.
///
/// # Errors
/// Any [`AppError`]; teacher problems are reported before training starts where possible. When
/// no replica is reachable for `--teacher-wait`, a checkpoint is saved first and the error says
/// so ([`AppError::TeacherLost`]).
pub async fn distill(mut cfg: DistillConfig, stop: Arc<AtomicBool>) -> Result<Finished, AppError> {
    if !cfg.needs_teacher() {
        tracing::warn!(
            "--alpha 0 with --labels all gives the teacher's soft targets no weight: training on \
             the labels alone, without contacting the teacher (as `train` does)"
        );
        return train(cfg.train, stop).await;
    }
    let t0 = Instant::now();
    let mut s = setup(&mut cfg).await?;
    announce(&cfg, &s)?;
    let (out, stats) = match run(&cfg, &mut s, stop).await? {
        Ran::Trained { out, stats } => (out, stats),
        Ran::Interrupted(out) => return summarise(&s.spec, &out),
    };
    summarise(&s.spec, &out)?;
    let report = report(&cfg, &mut s, &out, &stats, t0).await?;
    outln!("\n{}", report.table())?;
    let path = report.write(&s.tc.out).map_err(|source| AppError::Io {
        path: s.tc.out.join(REPORT_FILE),
        source,
    })?;
    outln!("report written to {}", path.display())?;
    Ok(Finished::Done)
}

/// Who the soft targets come from, for the announcement, the checkpoint and the report.
#[derive(Debug)]
struct TeacherIdentity {
    /// Names joined by `+` (an ensemble), or `cached teacher FINGERPRINT` for a cache-only run.
    name: String,
    /// Fingerprints joined by `+`.
    fingerprint: String,
    /// Precisions joined by `+`.
    precision: String,
    /// Summed parameters, when every teacher is a built-in architecture.
    params: Option<i64>,
}

/// What a distillation run has set up before its first batch.
struct Setup {
    /// The run's training settings, the hint stage's epochs added before the `--epochs` of
    /// distillation.
    tc: TrainConfig,
    device: Device,
    data: Data,
    spec: ArchSpec,
    /// The student's trainable parameters.
    params: i64,
    metrics: Option<StudentMetrics>,
    /// The `--metrics-listen` endpoint, served until the run ends.
    _endpoint: Option<MetricsServer>,
    /// The teachers (none when a complete logit cache stands in for them).
    pool: Option<Pool>,
    hint: Option<HintPlan>,
    start: Start,
    cache: Option<LogitCache>,
    teacher: TeacherIdentity,
    /// On-policy distillation's prompts and settings (`--on-policy`).
    on_policy: Option<OnPolicyPlan>,
}

/// Loads the data, connects the teachers (each checked against the data and the student),
/// checks the hint, finds the resume point and opens the logit cache.
async fn setup(cfg: &mut DistillConfig) -> Result<Setup, AppError> {
    let stage_epochs = cfg.hint.as_ref().map_or(0, |h| h.stage_epochs);
    let tc = TrainConfig {
        epochs: cfg.train.epochs + stage_epochs,
        ..cfg.train.clone()
    };
    let device = tc.device.resolve()?;
    let source = Source::open(&tc.data_dir, tc.limit, &tc.text, &tc.images)?;
    // The student is checked against the data before anything is written.
    let StudentPlan { spec, params } = student::plan(&tc, &source)?;
    if cfg.top_k_default
        && cfg.top_k == 0
        && spec.arch.is_sequence_model()
        && cfg.loss.kind != LossKind::Mse
        && !(cfg.ensemble_mode == EnsembleMode::Mix && cfg.teachers.groups.len() > 1)
    {
        // A TorchScript (or --init) language model: a language model's default top-k (dense
        // rows for a vocabulary of 32 or fewer).
        if spec.num_classes > 32 {
            cfg.top_k = 32;
        }
    }
    if cfg.hint.is_some() && spec.arch.is_sequence_model() {
        return Err(AppError::Mismatch(
            "--hint: a language-model student has no named hidden layers to hint".into(),
        ));
    }
    prepare_out(&tc.out)?;
    let (metrics, endpoint) = start_monitoring(&tc).await?;
    let pool = if cfg.teachers.groups.is_empty() {
        None
    } else {
        let expect = expect(cfg, &spec, &tc, &source);
        Some(connect(&cfg.teachers, expect, metrics.clone()).await?)
    };
    let refs: Vec<TeacherInfo> = pool
        .as_ref()
        .map(|p| p.references().into_iter().cloned().collect())
        .unwrap_or_default();
    // An image folder is decoded now, in the student's view and, where it differs, the
    // teacher's (its input shape from its ModelInfo): one view for every group.
    if source.is_images() {
        same_input_shapes(&refs)?;
    }
    let mut data = source
        .load(refs.first().map(|i| i.input_shape.clone()))
        .await?;
    let on_policy = match &cfg.on_policy {
        Some(op) => Some(on_policy::prepare(op, &tc, &spec, &refs, &mut data)?),
        None => None,
    };
    warn_long_warmup(&cfg.train, data.train.len());
    keep_tokenizer(&data, &tc.out)?;
    let hint = match (&cfg.hint, refs.first()) {
        (Some(h), Some(teacher)) => Some(hint_plan(h, teacher, &spec)?),
        _ => None,
    };
    let described = hint.as_ref().map(HintPlan::describe);
    let start = Start::for_run(&tc, &spec, data.train.len(), described.as_deref())?;
    let cache = match &cfg.logit_cache {
        Some(dir) => Some(open_cache(dir, cfg, refs.first(), &data, spec.num_classes)?),
        None => None,
    };
    let teacher = identity(cache.as_ref(), &refs);
    Ok(Setup {
        tc,
        device,
        data,
        spec,
        params,
        metrics,
        _endpoint: endpoint,
        pool,
        hint,
        start,
        cache,
        teacher,
        on_policy,
    })
}

/// The teacher groups of an image-folder run all take the same input shape (they get one
/// view).
///
/// # Errors
/// [`AppError::Mismatch`] naming each group's teacher and shape.
fn same_input_shapes(refs: &[TeacherInfo]) -> Result<(), AppError> {
    if refs
        .windows(2)
        .all(|w| w[0].input_shape == w[1].input_shape)
    {
        return Ok(());
    }
    let shapes: Vec<String> = refs
        .iter()
        .map(|i| format!("{} {:?}", i.name, i.input_shape))
        .collect();
    Err(AppError::Mismatch(format!(
        "the teacher groups take different input shapes ({}): on an image folder every group \
         gets the same view of each batch",
        shapes.join(", ")
    )))
}

/// What every teacher must fit: the data, the student, the batch size, the top-k and the
/// hinted output (an image folder's teacher may take its own `[C, H, W]` view).
fn expect(cfg: &DistillConfig, spec: &ArchSpec, tc: &TrainConfig, source: &Source) -> Expect {
    let (tokens, tokenizer_fingerprint) = source.tokens();
    Expect {
        sample_shape: spec.input_shape.clone(),
        num_classes: spec.num_classes,
        batch_size: tc.batch_size,
        tokens,
        tokenizer_fingerprint,
        hint_output: cfg.request().hint_output,
        top_k: cfg.top_k,
        image_views: source.is_images(),
    }
}

/// The teachers' identity: the cache's for a cache-only run, else the groups' references'.
fn identity(cache: Option<&LogitCache>, refs: &[TeacherInfo]) -> TeacherIdentity {
    let join = |f: &dyn Fn(&TeacherInfo) -> String| -> String {
        refs.iter().map(f).collect::<Vec<_>>().join("+")
    };
    match (cache, refs.is_empty()) {
        (Some(c), true) => {
            let key = c.key();
            let short = &key.teacher_fingerprint[..key.teacher_fingerprint.len().min(12)];
            TeacherIdentity {
                name: format!("cached teacher {short}"),
                fingerprint: key.teacher_fingerprint.clone(),
                precision: key.teacher_precision.clone(),
                params: None,
            }
        }
        _ => TeacherIdentity {
            name: join(&|i| i.name.clone()),
            fingerprint: join(&|i| i.fingerprint.clone()),
            precision: join(&|i| i.precision_name().to_string()),
            params: if refs.is_empty() {
                None
            } else {
                total_params(refs)
            },
        },
    }
}

/// Prints what is distilled from what: `distilling STUDENT (N parameters) from teacher ...`.
fn announce(cfg: &DistillConfig, s: &Setup) -> Result<(), AppError> {
    let urls = teacher_urls(cfg);
    let source = match (&cfg.logit_cache, urls.is_empty()) {
        (Some(dir), true) => format!("the logit cache {}", dir.display()),
        (Some(dir), false) => format!("{} (logit cache {})", urls.join(", "), dir.display()),
        (None, _) => urls.join(", "),
    };
    outln!(
        "distilling {} ({} parameters) from teacher {} ({} parameters) at {} on {} samples",
        s.spec.arch,
        s.params,
        s.teacher.name,
        s.teacher
            .params
            .map_or_else(|| "?".into(), |p| p.to_string()),
        source,
        s.data.train.len()
    )
}

/// Every replica URL of every teacher group, in order.
fn teacher_urls(cfg: &DistillConfig) -> Vec<String> {
    cfg.teachers
        .groups
        .iter()
        .flat_map(|g| g.urls.clone())
        .collect()
}

/// How the training thread and the pool ended.
enum Ran {
    /// Every epoch was trained.
    Trained { out: Outcome, stats: RunStats },
    /// Stopped by a signal after saving a checkpoint.
    Interrupted(Outcome),
}

/// Trains on the trainer thread while the pool streams the teachers' soft targets of every
/// epoch before the cache takes over.
///
/// # Errors
/// [`AppError::TeacherLost`] when no replica was reachable for `--teacher-wait` (a checkpoint
/// was saved); the loop's error when it stopped first, else the pool's.
async fn run(cfg: &DistillConfig, s: &mut Setup, stop: Arc<AtomicBool>) -> Result<Ran, AppError> {
    let tc = &s.tc;
    // Epochs before `teacher_end` ask the teacher; the rest read the cache.
    let teacher_end = match &s.cache {
        Some(c) => CachePlan::first_cached_epoch(c.is_complete(), s.start.position).min(tc.epochs),
        None => tc.epochs,
    };
    if s.pool.is_none() && teacher_end > s.start.position.epoch {
        return Err(AppError::Mismatch(format!(
            "--logit-cache: the cache does not hold every sample's soft targets and no --teacher \
             can fill it (epochs {} to {} need a teacher)",
            s.start.position.epoch + 1,
            teacher_end
        )));
    }
    let plan = run_plan(
        tc.seed,
        s.data.train.len(),
        tc.batch_size,
        s.start.position,
        teacher_end,
    );
    let inputs = s.data.train.inputs.shallow_clone();
    let mut feed = start_feed(s, plan_again(tc, s, teacher_end), cfg.teachers.prefetch)?;
    let targets = RunTargets {
        request: cfg.request(),
        ensemble: cfg.ensemble_mode,
        seed: tc.seed,
    };
    let (tx, rx) = mpsc::channel::<TeacherBatch>(cfg.teachers.prefetch);
    // An on-policy run makes every batch on the training thread and hands it to the pool.
    let (on_policy, made_rx) = on_policy_job(s.on_policy.take(), cfg.teachers.prefetch);
    let job = Job {
        device: s.device,
        spec: s.spec.clone(),
        objective: Objective::Distill {
            loss: cfg.loss,
            labels: cfg.labels,
            teacher_fingerprint: s.teacher.fingerprint.clone(),
            batch_ledger: cfg.batch_ledger.clone(),
            hint: s.hint.clone(),
        },
        train: s.data.train.limit(usize::MAX),
        test: Some(s.data.test.limit(usize::MAX)),
        start: s.start.clone(),
        stop,
        config: tc.clone(),
        cache: s.cache.take().map(|cache| CachePlan {
            cache,
            from_epoch: teacher_end,
        }),
        metrics: s.metrics.clone(),
        images: image_job(&s.data, feed.as_mut()),
        on_policy,
    };
    let handle =
        training::spawn(job, s.pool.is_some().then_some(rx)).map_err(|source| AppError::Io {
            path: "trainer thread".into(),
            source,
        })?;
    let teacher_views = feed.as_mut().and_then(|f| f.teacher.take()).or(made_rx);
    let streamed = async {
        match (s.pool.as_mut(), teacher_views) {
            (Some(pool), Some(views)) => pool.run_views(views, targets, tx).await,
            (Some(pool), None) => pool.run(plan, inputs, targets, tx).await,
            (None, _) => Ok(RunStats::default()),
        }
    };
    let (streamed, trained) = tokio::join!(streamed, join_trainer(handle));
    if let Some(feed) = feed {
        // A loader failure ended the streams: it is the cause.
        feed.finish().await?;
    }
    match (trained, streamed) {
        (Ok(out), _) if out.interrupted => Ok(Ran::Interrupted(out)),
        (Ok(out), Err(e)) if out.teacher_gone => Err(AppError::TeacherLost {
            cause: Box::new(e),
            dir: s.tc.out.clone(),
        }),
        (Ok(out), Ok(stats)) => {
            tracing::info!(?stats, "teacher pool");
            Ok(Ran::Trained { out, stats })
        }
        // The loop stopped first: its error is the cause, the pool only saw it leave.
        (Err(e), Err(PoolError::Client(ClientError::ConsumerGone))) | (Err(e), Ok(_)) => {
            Err(e.into())
        }
        // The pool failed first: the loop only saw the stream end.
        (_, Err(e)) => Err(e.into()),
    }
}

/// An on-policy run's part of the job, and the receiving end of the batches its training thread
/// makes and hands to the pool (at most `prefetch` waiting).
fn on_policy_job(
    plan: Option<OnPolicyPlan>,
    prefetch: usize,
) -> (Option<OnPolicyJob>, Option<mpsc::Receiver<ViewedBatch>>) {
    let Some(plan) = plan else {
        return (None, None);
    };
    let (teacher, made) = mpsc::channel(prefetch.max(1));
    let job = OnPolicyJob {
        settings: plan.settings,
        prompts: plan.prompts,
        heldout: plan.heldout,
        teacher,
        decode: Some(plan.decode),
    };
    (Some(job), Some(made))
}

/// The plan of the per-batch views: the batches the teachers answer, from the run's start
/// (lazily, one epoch at a time).
fn plan_again(
    tc: &TrainConfig,
    s: &Setup,
    teacher_end: u64,
) -> impl Iterator<Item = PlannedBatch> + Send + 'static {
    run_plan(
        tc.seed,
        s.data.train.len(),
        tc.batch_size,
        s.start.position,
        teacher_end,
    )
}

/// The loader thread of an image folder's per-batch views over `plan`, when the teachers get
/// their own view or the images are augmented (`None` otherwise): the teacher's side when
/// there are teachers, the student's under `--augment`.
fn start_feed(
    s: &Setup,
    plan: impl Iterator<Item = PlannedBatch> + Send + 'static,
    prefetch: usize,
) -> Result<Option<Feed>, AppError> {
    let Some(images) = &s.data.images else {
        return Ok(None);
    };
    let teacher = images.teacher_feed().filter(|_| s.pool.is_some());
    let student = images.augment.any().then(|| images.student.clone());
    let store = match (&teacher, &images.train_store) {
        (Some(cut), _) => cut.store.clone(),
        (None, Some(store)) if student.is_some() => store.clone(),
        _ => return Ok(None),
    };
    let spec = FeedSpec {
        store,
        teacher: teacher.map(|cut| cut.view),
        student,
        augment: images.augment,
        seed: s.tc.seed,
        teacher_ahead: prefetch,
        threads: images.threads,
    };
    Ok(Some(views::start(plan, spec)?))
}

/// The report of a finished run: the teacher (through the pool, for a classifier), the student
/// and the baseline on the test split, and the run's settings and counters.
async fn report(
    cfg: &DistillConfig,
    s: &mut Setup,
    out: &Outcome,
    stats: &RunStats,
    t0: Instant,
) -> Result<Report, AppError> {
    let (teacher_acc, replicas) = evaluate_teachers(cfg, s).await?;
    let student_acc = out
        .test
        .clone()
        .unwrap_or_else(|| Accuracy::new(s.spec.num_classes));
    let baseline = match &cfg.baseline {
        Some(dir) => Some(evaluate_checkpoint(dir, &s.data.test, s.device)?),
        None => None,
    };
    let cache_bytes_per_sample = match &cfg.logit_cache {
        Some(dir) => Some(LogitCache::open(dir)?.bytes_per_sample()),
        None => None,
    };
    let urls = teacher_urls(cfg);
    Ok(Report {
        teacher: summary(
            teacher_acc.as_ref(),
            s.teacher.params,
            s.teacher.name.clone(),
        ),
        student: summary(
            Some(&student_acc),
            Some(out.params),
            s.spec.arch.to_string(),
        ),
        baseline: baseline.map(|(acc, params, name)| summary(Some(&acc), Some(params), name)),
        compression: Report::compression_of(s.teacher.params, Some(out.params)),
        samples_per_s: out.samples as f64 / out.train_s.max(1e-9),
        wall_s: t0.elapsed().as_secs_f64(),
        epochs: out.epochs,
        temperature: cfg.loss.temperature,
        alpha: cfg.loss.alpha,
        loss: cfg.loss.kind.to_string(),
        wire: cfg.wire.to_string(),
        top_k: cfg.top_k,
        sparse_tail: cfg.loss.sparse_tail.to_string(),
        ensemble_mode: cfg.ensemble_mode.to_string(),
        labels: cfg.labels.to_string(),
        train_samples: s.data.train.len() as u64,
        teacher_url: urls.first().cloned().unwrap_or_default(),
        teacher_fingerprint: s.teacher.fingerprint.clone(),
        samples_trained: out.samples_total,
        batches_resent: stats.resent,
        replicas: replicas
            .into_iter()
            .map(|r| ReplicaSummary {
                url: r.url,
                group: r.group,
                batches_answered: r.answered,
            })
            .collect(),
        teacher_precision: s.teacher.precision.clone(),
        logit_cache: cfg.logit_cache.as_ref().map(|d| d.display().to_string()),
        cached_epochs: out.cached_epochs,
        cache_bytes_per_sample,
        trainer_waited_s: out.waited_s,
        teacher_backpressure_s: stats.backpressure_s,
        hint: s.hint.as_ref().map(HintPlan::describe),
        trainer_data_waited_s: out.data_waited_s,
        classes: s
            .data
            .images
            .as_ref()
            .map(|i| i.classes.clone())
            .unwrap_or_default(),
        augment: s.data.images.as_ref().map(|i| i.augment.to_string()),
        on_policy: cfg.on_policy.as_ref().map(|op| OnPolicySummary {
            estimator: op.estimator.to_string(),
            max_new_tokens: op.max_new_tokens,
            sample_temperature: op.sample_temperature,
            top_p: op.top_p,
            last_epoch: out.last.as_ref().and_then(|m| m.on_policy.clone()),
        }),
    })
}

/// The teachers' accuracy on the test split (a classifier's, through the pool, mixed at the
/// run's temperature) and the replicas' counters. A language model's teacher is evaluated on
/// its checkpoint instead (`eval --checkpoint`): its perplexity needs full logits at every
/// position, never top-k.
async fn evaluate_teachers(
    cfg: &DistillConfig,
    s: &mut Setup,
) -> Result<(Option<Accuracy>, Vec<ReplicaStats>), AppError> {
    let Some(pool) = s.pool.as_mut() else {
        return Ok((None, Vec::new()));
    };
    let replicas = pool.replica_stats();
    if s.data.test.is_tokens() {
        return Ok((None, replicas));
    }
    // As many samples per request as every group's teacher accepts (500 at most).
    let eval_batch = batch_size_for(pool, 500);
    let views = s.data.images.as_ref().and_then(|i| i.teacher_test());
    let acc = evaluate_pool(pool, &s.data.test, eval_batch, cfg.loss.temperature, views).await?;
    Ok((Some(acc), replicas))
}

/// The report's line of a model with accuracy `acc` (if measured).
fn summary(acc: Option<&Accuracy>, params: Option<i64>, name: String) -> ModelSummary {
    ModelSummary {
        accuracy: acc.map(Accuracy::fraction),
        params,
        name,
        per_class: acc.map(Accuracy::per_class_fractions).unwrap_or_default(),
        perplexity: acc.and_then(Accuracy::perplexity),
    }
}

/// The [`HintPlan`] of `hint` for a student `spec` and the group's `teacher`: the teacher
/// output's shape from its `ModelInfo`, checked (with the student layer) by building the
/// regressor once before any training.
///
/// # Errors
/// [`AppError::Train`] with the hint's error for an unknown student layer (listing the
/// student's layers) or shapes no regressor joins; [`AppError::Model`] if the student cannot be
/// built.
fn hint_plan(
    hint: &HintConfig,
    teacher: &TeacherInfo,
    spec: &ArchSpec,
) -> Result<HintPlan, AppError> {
    let teacher_shape = teacher
        .outputs
        .iter()
        .find(|(n, _)| *n == hint.spec.teacher_output)
        .map(|(_, shape)| shape.clone())
        .unwrap_or_default();
    let plan = HintPlan {
        config: hint.clone(),
        teacher_shape,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let layers = distill_models::model::layers_of(spec)?;
    plan.regressor(&layers, &spec.arch.to_string(), &vs.root())
        .map_err(|e| AppError::Train(e.into()))?;
    Ok(plan)
}

/// Opens (or creates) the logit cache of a `distill` run. With a teacher (`teacher`, the
/// group's reference) the key comes from it and the run's flags; without one the cache must be
/// complete and is checked against the flags and the data only. The key holds the hash of the
/// student's training inputs and, for an image folder whose teacher gets another view, that
/// view (shape and normalization).
///
/// # Errors
/// [`AppError::Cache`] for a cache of another key, an incomplete cache without a teacher, or an
/// unreadable one; [`AppError::Mismatch`] when there is no cache and no teacher to fill one.
fn open_cache(
    dir: &Path,
    cfg: &DistillConfig,
    teacher: Option<&TeacherInfo>,
    data: &Data,
    num_classes: i64,
) -> Result<LogitCache, AppError> {
    let request = cfg.request();
    let train = &data.train;
    let view = data
        .images
        .as_ref()
        .map(|i| i.teacher_view_key())
        .unwrap_or_default();
    if let Some(info) = teacher {
        let teacher = CachedTeacher {
            fingerprint: &info.fingerprint,
            precision: info.precision_name(),
            num_logits: info.num_logits,
        };
        let mut key = CacheKey::for_run(&request, teacher, train)?;
        key.teacher_view = view;
        return Ok(LogitCache::open_or_create(dir, key, DEFAULT_SHARD_SAMPLES)?);
    }
    if !LogitCache::exists(dir) {
        return Err(AppError::Mismatch(format!(
            "--logit-cache {}: no cache there, and no --teacher to fill one (capture one with \
             `student-trainer capture`, or add --teacher URL)",
            dir.display()
        )));
    }
    let stored = LogitCache::open(dir)?.key().clone();
    let teacher = CachedTeacher {
        fingerprint: &stored.teacher_fingerprint,
        precision: &stored.teacher_precision,
        num_logits: num_classes,
    };
    let mut run = CacheKey::for_run(&request, teacher, train)?;
    // Without a teacher its view is unknown: the cache's own stands (its inputs' hash is
    // checked).
    run.teacher_view = stored.teacher_view;
    Ok(LogitCache::open_complete(dir, &run)?)
}
