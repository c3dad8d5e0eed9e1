//! The commands, wired from validated configs: `train`, `distill`, `capture`, `eval`, `plot`.
//!
//! Each loads the data, checks the device (and the teacher), runs the training loop on its own
//! thread ([`crate::trainer`]) and prints its results on stdout; logs go to stderr.

use crate::cache::{CacheError, CacheKey, DEFAULT_SHARD_SAMPLES, LogitCache, dataset_sha256};
use crate::capture::CaptureError;
use crate::client::TeacherInfo;
use crate::client::{ClientError, ClientOptions};
use crate::config::{
    CaptureConfig, DistillConfig, EvalConfig, EvalTarget, PlotConfig, TextOptions, TrainConfig,
};
use crate::data::{self, DataError, Dataset, Split};
use crate::device::DeviceError;
use crate::eval::{self, Accuracy};
use crate::monitoring::StudentMetrics;
use crate::plot::PlotError;
use crate::pool::{Expect, Pool, PoolError, PoolOptions, RunStats, RunTargets};
use crate::report::{ModelSummary, ReplicaSummary, Report};
use crate::schedule::{TeacherBatch, run_plan};
use crate::teacher_eval::{self, TeacherEvalError};
use crate::trainer::{self, CachePlan, HintPlan, Job, Objective, Outcome, Start, TrainError};
use crate::wire::TargetRequest;
use distill_models::{Arch, ArchSpec, Checkpoint, ModelError, Network};
use distill_telemetry::MetricsServer;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;
use tch::{Device, nn};
use tokio::sync::mpsc;

/// Errors of a command, each with the one message the user sees.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A flag's file (TLS certificate, key, token file) cannot be used.
    #[error("{0}")]
    Config(#[from] crate::config::ConfigError),
    /// The dataset could not be loaded.
    #[error("{0}")]
    Data(#[from] DataError),
    /// The device is not available.
    #[error("--device: {0}")]
    Device(#[from] DeviceError),
    /// The teacher is unreachable, incompatible, or failed mid-stream.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// Training failed.
    #[error("{0}")]
    Train(#[from] TrainError),
    /// A checkpoint (e.g. `--baseline`, `--checkpoint`) could not be used.
    #[error("{0}")]
    Model(#[from] ModelError),
    /// Writing an output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A libtorch failure outside the loop.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The data does not fit the network.
    #[error("{0}")]
    Mismatch(String),
    /// Stdout was closed by its reader (e.g. `| head -n 1`): the command stops quietly, as Unix
    /// tools do (checkpoints are written before anything is printed about them).
    #[error("stdout is closed")]
    StdoutClosed,
    /// The `--metrics-listen` endpoint could not start.
    #[error("--metrics-listen: {0}")]
    Metrics(String),
    /// The teacher pool failed (no replica reachable, fatal per-batch error, ...).
    #[error("{0}")]
    Pool(#[from] PoolError),
    /// Evaluating the teacher failed.
    #[error("{0}")]
    TeacherEval(#[from] TeacherEvalError),
    /// The logit cache could not be used.
    #[error("{0}")]
    Cache(#[from] CacheError),
    /// Capturing soft targets failed.
    #[error("{0}")]
    Capture(#[from] CaptureError),
    /// A text corpus could not be read, tokenized or packed.
    #[error("{0}")]
    Text(#[from] distill_text::TextError),
    /// A run directory could not be plotted, or the PNG not written.
    #[error("{0}")]
    Plot(#[from] PlotError),
    /// No teacher replica was reachable for `--teacher-wait`; a checkpoint was saved.
    #[error(
        "{cause}; checkpoint saved in {}: run the same command with --resume to carry on (with a teacher replica back)",
        dir.display()
    )]
    TeacherLost {
        /// Why the pool gave up.
        cause: Box<PoolError>,
        /// Where the checkpoint is.
        dir: PathBuf,
    },
}

/// Writes `args` to stdout and flushes it.
///
/// # Errors
/// [`AppError::StdoutClosed`] when the reader has gone (`EPIPE`); [`AppError::Io`] otherwise.
fn write_stdout(args: std::fmt::Arguments<'_>) -> Result<(), AppError> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.flush())
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::BrokenPipe => AppError::StdoutClosed,
            _ => AppError::Io {
                path: "stdout".into(),
                source,
            },
        })
}

/// `println!` that returns [`AppError::StdoutClosed`] instead of panicking on a closed stdout.
macro_rules! outln {
    ($($arg:tt)*) => {
        write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// How a command ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Ran to completion.
    Done,
    /// Stopped by Ctrl-C or SIGTERM after saving a checkpoint (the binary exits with 130 or 143).
    Interrupted,
}

struct Data {
    train: Dataset,
    test: Dataset,
    /// The tokenizer file of a text corpus.
    tokenizer: Option<PathBuf>,
}

/// Whether `dir` is a text corpus directory (it holds the GCIDE's `gcide.dict.dz`).
fn is_text_corpus(dir: &Path) -> bool {
    dir.join("gcide.dict.dz").is_file()
}

/// Tokenizes (training the BPE tokenizer the first time) and packs the text corpus in `dir`
/// with `text`'s settings: both splits as language-model datasets, and the tokenizer file.
fn load_text(dir: &Path, text: TextOptions) -> Result<(Dataset, Dataset, PathBuf), AppError> {
    let t = Instant::now();
    let bpe_dir = dir.join(format!("bpe-{}", text.vocab_size));
    let p = distill_text::prepare(dir, &bpe_dir, text.vocab_size, text.seq_len)?;
    let seq = p.seq_len as i64;
    let vocab = p.vocab_size as i64;
    let split = |packed: &distill_text::Packed| {
        data::token_dataset_from_ids(
            dir,
            &packed.inputs,
            &packed.labels,
            seq,
            vocab,
            Some(p.fingerprint.clone()),
        )
    };
    let (train, test) = (split(&p.train)?, split(&p.test)?);
    tracing::info!(
        corpus = %dir.display(), tokenizer = %p.tokenizer_path.display(),
        fingerprint = %p.fingerprint, vocab, seq, trained_tokenizer = p.trained_tokenizer,
        load_s = format!("{:.1}", t.elapsed().as_secs_f64()), "text corpus tokenized and packed"
    );
    Ok((train, test, p.tokenizer_path))
}

fn load_data(dir: &Path, limit: Option<usize>, text: TextOptions) -> Result<Data, AppError> {
    if !dir.exists() {
        return Err(DataError::MissingFile {
            path: dir.to_path_buf(),
        }
        .into());
    }
    let (train, test, tokenizer) = if is_text_corpus(dir) {
        let (train, test, tok) = load_text(dir, text)?;
        (train, test, Some(tok))
    } else {
        (
            data::load(dir, Split::Train)?,
            data::load(dir, Split::Test)?,
            None,
        )
    };
    let train = match limit {
        Some(n) => train.limit(n),
        None => train,
    };
    if train.sample_shape() != test.sample_shape() {
        return Err(AppError::Mismatch(format!(
            "{}: train samples have shape {:?}, test samples {:?}",
            dir.display(),
            train.sample_shape(),
            test.sample_shape()
        )));
    }
    tracing::info!(
        data = %dir.display(), train = train.len(), test = test.len(),
        shape = ?train.sample_shape(), classes = train.num_classes, "data loaded"
    );
    Ok(Data {
        train,
        test,
        tokenizer,
    })
}

/// Copies a text corpus's tokenizer into the run directory `out` as `tokenizer.json` (written
/// atomically), so that `teacher-server --model OUT` announces its fingerprint.
fn keep_tokenizer(data: &Data, out: &Path) -> Result<(), AppError> {
    let Some(src) = &data.tokenizer else {
        return Ok(());
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AppError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let bytes = std::fs::read(src).map_err(io(src))?;
    let dst = out.join("tokenizer.json");
    let tmp = out.join(".tokenizer.json.tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&dst))
}

fn spec_for(arch: &Arch, data: &Data) -> ArchSpec {
    ArchSpec {
        arch: arch.clone(),
        input_shape: data.train.sample_shape(),
        num_classes: data.train.num_classes.max(data.test.num_classes),
    }
}

/// Parameter count of `spec`, built on the CPU without keeping it.
///
/// # Errors
/// [`ModelError::InputShape`] when the architecture cannot take the input shape.
pub fn params_of(spec: &ArchSpec) -> Result<i64, ModelError> {
    let vs = nn::VarStore::new(Device::Cpu);
    Network::new(&vs.root(), spec)?;
    Ok(distill_models::arch::param_count(&vs))
}

/// Starts the `--metrics-listen` endpoint of `cfg`, if asked: the metrics the run keeps up to
/// date, and the endpoint's handle (it stops when dropped, at the end of the run).
///
/// # Errors
/// [`AppError::Metrics`] if the address cannot be bound.
async fn start_monitoring(
    cfg: &TrainConfig,
) -> Result<(Option<StudentMetrics>, Option<MetricsServer>), AppError> {
    let Some(addr) = cfg.metrics_listen else {
        return Ok((None, None));
    };
    let metrics = StudentMetrics::new().map_err(|e| AppError::Metrics(e.to_string()))?;
    let server = MetricsServer::start(
        addr,
        metrics.registry.clone(),
        distill_telemetry::always_ready(),
    )
    .await
    .map_err(|e| AppError::Metrics(e.to_string()))?;
    Ok((Some(metrics), Some(server)))
}

async fn join_trainer(
    handle: std::thread::JoinHandle<Result<Outcome, TrainError>>,
) -> Result<Outcome, TrainError> {
    tokio::task::spawn_blocking(move || trainer::join(handle))
        .await
        .unwrap_or_else(|e| Err(TrainError::Panic(e.to_string())))
}

/// `train`: supervised training on the labels; prints the final test accuracy.
///
/// # Errors
/// Any [`AppError`].
pub async fn train(cfg: TrainConfig, stop: Arc<AtomicBool>) -> Result<Finished, AppError> {
    let device = cfg.device.resolve()?;
    let data = load_data(&cfg.data_dir, cfg.limit, cfg.text)?;
    keep_tokenizer(&data, &cfg.out)?;
    let spec = spec_for(&cfg.arch, &data);
    let params = params_of(&spec)?;
    outln!(
        "training {} ({params} parameters) on {} samples",
        spec.arch,
        data.train.len()
    )?;
    let start = Start::for_run(&cfg, &spec, data.train.len(), None)?;
    let (metrics, _endpoint) = start_monitoring(&cfg).await?;
    let job = Job {
        device,
        spec: spec.clone(),
        objective: Objective::Supervised,
        train: data.train,
        test: Some(data.test),
        start,
        stop,
        config: cfg.clone(),
        cache: None,
        metrics,
    };
    let handle = trainer::spawn(job, None).map_err(|source| AppError::Io {
        path: "trainer thread".into(),
        source,
    })?;
    let out = join_trainer(handle).await?;
    summarise(&spec, &out)
}

/// Prints the outcome of a run; an interrupted run stays [`Finished::Interrupted`] even when
/// stdout is closed.
fn summarise(spec: &ArchSpec, out: &Outcome) -> Result<Finished, AppError> {
    let acc = out.test.as_ref().map_or_else(
        || "n/a".into(),
        |a| format!("{:.2} %", 100.0 * a.fraction()),
    );
    let printed = outln!(
        "{} ({} parameters): {} epochs, {} steps, test accuracy {acc}, checkpoint {}",
        spec.arch,
        out.params,
        out.epochs,
        out.step,
        out.checkpoint.display()
    );
    if out.interrupted {
        return Ok(Finished::Interrupted);
    }
    printed.map(|()| Finished::Done)
}

/// Parameters of a teacher described by `info` when its name is a built-in architecture.
fn info_params(info: &crate::client::TeacherInfo) -> Option<i64> {
    let arch: Arch = info.name.parse().ok()?;
    params_of(&ArchSpec {
        arch,
        input_shape: info.input_shape.clone(),
        num_classes: info.num_logits,
    })
    .ok()
}

/// `distill`: online distillation from teacher-server replicas (one group, or several for an
/// ensemble); prints the report and writes `OUT/report.json`. With `--alpha 0` and
/// `--labels all` no sample weighs the teacher (see [`DistillConfig::needs_teacher`]): it warns
/// and runs [`train`] instead, without contacting any teacher.
///
/// # Errors
/// Any [`AppError`]; teacher problems are reported before training starts where possible. When
/// no replica is reachable for `--teacher-wait`, a checkpoint is saved first and the error says
/// so ([`AppError::TeacherLost`]).
pub async fn distill(cfg: DistillConfig, stop: Arc<AtomicBool>) -> Result<Finished, AppError> {
    if !cfg.needs_teacher() {
        tracing::warn!(
            "--alpha 0 with --labels all gives the teacher's soft targets no weight: training on \
             the labels alone, without contacting the teacher (as `train` does)"
        );
        return train(cfg.train, stop).await;
    }
    let t0 = Instant::now();
    // The hint stage's epochs come before the --epochs of distillation.
    let stage_epochs = cfg.hint.as_ref().map_or(0, |h| h.stage_epochs);
    let full = crate::config::TrainConfig {
        epochs: cfg.train.epochs + stage_epochs,
        ..cfg.train.clone()
    };
    let tc = &full;
    let device = tc.device.resolve()?;
    let data = load_data(&tc.data_dir, tc.limit, tc.text)?;
    keep_tokenizer(&data, &tc.out)?;
    let spec = spec_for(&tc.arch, &data);
    let (metrics, _endpoint) = start_monitoring(tc).await?;
    // The teachers: none when a complete logit cache stands in for them.
    let mut pool = if cfg.groups.is_empty() {
        None
    } else {
        let options = PoolOptions {
            prefetch: cfg.prefetch,
            batch_timeout: cfg.batch_timeout,
            teacher_wait: cfg.teacher_wait,
            client: ClientOptions {
                connect_timeout: cfg.connect_timeout,
                keepalive_interval: std::time::Duration::from_secs(10),
                keepalive_timeout: std::time::Duration::from_secs(10),
                security: cfg.connection.load()?,
            },
            resolve_interval: cfg.resolve_interval,
            metrics: metrics.clone(),
            ..PoolOptions::default()
        };
        let expect = Expect {
            sample_shape: spec.input_shape.clone(),
            num_classes: spec.num_classes,
            batch_size: tc.batch_size,
            tokens: data.train.is_tokens(),
            tokenizer_fingerprint: data.train.tokenizer_fingerprint.clone(),
            hint_output: cfg.request.hint_output.clone(),
        };
        let pool = Pool::connect(cfg.groups.clone(), options, expect).await?;
        pool.check_top_k(cfg.request.top_k)?;
        Some(pool)
    };
    let refs: Vec<TeacherInfo> = pool
        .as_ref()
        .map(|p| p.references().into_iter().cloned().collect())
        .unwrap_or_default();
    let hint = match (&cfg.hint, refs.first()) {
        (Some(h), Some(teacher)) => Some(hint_plan(h, teacher, &spec)?),
        _ => None,
    };
    let start = Start::for_run(
        tc,
        &spec,
        data.train.len(),
        hint.as_ref().map(HintPlan::describe).as_deref(),
    )?;
    let cache = match &cfg.logit_cache {
        Some(dir) => Some(open_cache(
            dir,
            &cfg,
            refs.first(),
            &data.train,
            spec.num_classes,
        )?),
        None => None,
    };
    let join = |f: &dyn Fn(&TeacherInfo) -> String| -> String {
        refs.iter().map(f).collect::<Vec<_>>().join("+")
    };
    let (teacher_name, fingerprint, precision) = match (&cache, refs.is_empty()) {
        (Some(c), true) => {
            let key = c.key();
            let short = &key.teacher_fingerprint[..key.teacher_fingerprint.len().min(12)];
            (
                format!("cached teacher {short}"),
                key.teacher_fingerprint.clone(),
                key.teacher_precision.clone(),
            )
        }
        _ => (
            join(&|i| i.name.clone()),
            join(&|i| i.fingerprint.clone()),
            join(&|i| teacher_precision(i).to_string()),
        ),
    };
    let t_params = if refs.is_empty() {
        None
    } else {
        refs.iter()
            .map(info_params)
            .try_fold(0i64, |acc, p| p.map(|p| acc + p))
    };
    let student_params = params_of(&spec)?;
    let urls: Vec<String> = cfg.groups.iter().flat_map(|g| g.urls.clone()).collect();
    let source = match (&cfg.logit_cache, urls.is_empty()) {
        (Some(dir), true) => format!("the logit cache {}", dir.display()),
        (Some(dir), false) => format!("{} (logit cache {})", urls.join(", "), dir.display()),
        (None, _) => urls.join(", "),
    };
    outln!(
        "distilling {} ({} parameters) from teacher {} ({} parameters) at {} on {} samples",
        spec.arch,
        student_params,
        teacher_name,
        t_params.map_or_else(|| "?".into(), |p| p.to_string()),
        source,
        data.train.len()
    )?;
    let train_samples = data.train.len() as u64;
    // Epochs before `teacher_end` ask the teacher; the rest read the cache.
    let teacher_end = match &cache {
        Some(c) => CachePlan::first_cached_epoch(c.is_complete(), start.position).min(tc.epochs),
        None => tc.epochs,
    };
    if pool.is_none() && teacher_end > start.position.epoch {
        // open_cache refused an incomplete cache without a teacher.
        unreachable!("a run without a teacher has a complete cache");
    }
    let plan = run_plan(
        tc.seed,
        data.train.len(),
        tc.batch_size,
        start.position,
        teacher_end,
    );
    let cache_dir = cache.as_ref().map(|c| c.dir().display().to_string());
    let inputs = data.train.inputs.shallow_clone();
    let targets = RunTargets {
        request: cfg.request.clone(),
        ensemble: cfg.ensemble_mode,
        seed: tc.seed,
    };
    let (tx, rx) = mpsc::channel::<TeacherBatch>(cfg.prefetch);
    let job = Job {
        device,
        spec: spec.clone(),
        objective: Objective::Distill {
            loss: cfg.loss,
            labels: cfg.labels,
            teacher_fingerprint: fingerprint.clone(),
            batch_ledger: cfg.batch_ledger.clone(),
            hint: hint.clone(),
        },
        train: data.train,
        test: Some(data.test.limit(usize::MAX)),
        start,
        stop,
        config: tc.clone(),
        cache: cache.map(|cache| CachePlan {
            cache,
            from_epoch: teacher_end,
        }),
        metrics,
    };
    let handle =
        trainer::spawn(job, pool.is_some().then_some(rx)).map_err(|source| AppError::Io {
            path: "trainer thread".into(),
            source,
        })?;
    let streamed = async {
        match pool.as_mut() {
            Some(pool) => pool.run(plan, inputs, targets, tx).await,
            None => Ok(RunStats::default()),
        }
    };
    let (streamed, trained) = tokio::join!(streamed, join_trainer(handle));
    let (out, stats) = match (trained, streamed) {
        (Ok(out), _) if out.interrupted => return summarise(&spec, &out),
        (Ok(out), Err(e)) if out.teacher_gone => {
            return Err(AppError::TeacherLost {
                cause: Box::new(e),
                dir: tc.out.clone(),
            });
        }
        (Ok(out), Ok(stats)) => {
            tracing::info!(?stats, "teacher pool");
            (out, stats)
        }
        // The loop stopped first: its error is the cause, the pool only saw it leave.
        (Err(e), Err(PoolError::Client(ClientError::ConsumerGone))) | (Err(e), Ok(_)) => {
            return Err(e.into());
        }
        // The pool failed first: the loop only saw the stream end.
        (_, Err(e)) => return Err(e.into()),
    };
    summarise(&spec, &out)?;
    let (teacher_acc, replicas) = match pool.as_mut() {
        // A language model's teacher is evaluated on its checkpoint (`eval --checkpoint`): its
        // perplexity needs full logits at every position, never top-k.
        Some(pool) if data.test.is_tokens() => (None, pool.replica_stats()),
        Some(pool) => {
            let replicas = pool.replica_stats();
            // As many samples per request as every group's teacher accepts (500 at most).
            let eval_batch = teacher_eval::batch_size_for(pool, 500);
            let acc =
                teacher_eval::evaluate_pool(pool, &data.test, eval_batch, cfg.loss.temperature)
                    .await?;
            (Some(acc), replicas)
        }
        None => (None, Vec::new()),
    };
    let student_acc = out
        .test
        .clone()
        .unwrap_or_else(|| Accuracy::new(spec.num_classes));
    let baseline = match &cfg.baseline {
        Some(dir) => Some(evaluate_checkpoint(dir, &data.test, device)?),
        None => None,
    };
    let cache_bytes_per_sample = match &cfg.logit_cache {
        Some(dir) => Some(LogitCache::open(dir)?.bytes_per_sample()),
        None => None,
    };
    let report = Report {
        teacher: ModelSummary {
            accuracy: teacher_acc.as_ref().map(Accuracy::fraction),
            params: t_params,
            name: teacher_name,
            per_class: teacher_acc
                .as_ref()
                .map(Accuracy::per_class_fractions)
                .unwrap_or_default(),
            perplexity: teacher_acc.as_ref().and_then(Accuracy::perplexity),
        },
        student: ModelSummary {
            accuracy: Some(student_acc.fraction()),
            params: Some(out.params),
            name: spec.arch.to_string(),
            per_class: student_acc.per_class_fractions(),
            perplexity: student_acc.perplexity(),
        },
        baseline: baseline.map(|(acc, params, name)| ModelSummary {
            accuracy: Some(acc.fraction()),
            params: Some(params),
            name,
            per_class: acc.per_class_fractions(),
            perplexity: acc.perplexity(),
        }),
        compression: Report::compression_of(t_params, Some(out.params)),
        samples_per_s: out.samples as f64 / out.train_s.max(1e-9),
        wall_s: t0.elapsed().as_secs_f64(),
        epochs: out.epochs,
        temperature: cfg.loss.temperature,
        alpha: cfg.loss.alpha,
        loss: cfg.loss.kind.to_string(),
        wire: cfg.request.wire.to_string(),
        top_k: cfg.request.top_k,
        sparse_tail: cfg.loss.sparse_tail.to_string(),
        ensemble_mode: cfg.ensemble_mode.to_string(),
        labels: cfg.labels.to_string(),
        train_samples,
        teacher_url: urls.first().cloned().unwrap_or_default(),
        teacher_fingerprint: fingerprint,
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
        teacher_precision: precision,
        logit_cache: cache_dir,
        cached_epochs: out.cached_epochs,
        cache_bytes_per_sample,
        trainer_waited_s: out.waited_s,
        teacher_backpressure_s: stats.backpressure_s,
        hint: hint.as_ref().map(HintPlan::describe),
    };
    outln!("\n{}", report.table())?;
    let path = report.write(&tc.out).map_err(|source| AppError::Io {
        path: tc.out.join(crate::report::REPORT_FILE),
        source,
    })?;
    outln!("report written to {}", path.display())?;
    Ok(Finished::Done)
}

/// The [`HintPlan`] of `hint` for a student `spec` and the group's `teacher`: the teacher
/// output's shape from its `ModelInfo`, checked (with the student layer) by building the
/// regressor once before any training.
///
/// # Errors
/// [`AppError::Train`] with [`TrainError::Hint`] for an unknown student layer (listing the
/// student's layers) or shapes no regressor joins; [`AppError::Model`] if the student cannot be
/// built.
fn hint_plan(
    hint: &crate::config::HintConfig,
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
    let net = Network::new(&vs.root(), spec)?;
    plan.regressor(&net, &vs.root())?;
    Ok(plan)
}

/// The precision a teacher computes in, as `--precision` spells it (`f32`, `bf16`, `f16`).
fn teacher_precision(info: &TeacherInfo) -> &'static str {
    distill_proto::codec::dtype_name(info.precision)
}

/// The cache key of `request`'s soft targets of `teacher` for `train`.
fn cache_key(
    request: &TargetRequest,
    teacher: &TeacherInfo,
    train: &Dataset,
) -> Result<CacheKey, AppError> {
    Ok(CacheKey {
        teacher_fingerprint: teacher.fingerprint.clone(),
        teacher_precision: teacher_precision(teacher).to_string(),
        wire: request.wire.to_string(),
        top_k: request.top_k,
        temperature: (request.top_k > 0).then_some(request.temperature),
        num_logits: teacher.num_logits,
        dataset_sha256: dataset_sha256(&train.inputs)?,
        samples: train.len(),
        positions: if train.is_tokens() {
            train.sample_shape().first().copied().unwrap_or(0)
        } else {
            0
        },
        tokenizer_fingerprint: train.tokenizer_fingerprint.clone().unwrap_or_default(),
    })
}

/// Opens (or creates) the logit cache of a `distill` run. With a teacher (`teacher`, the
/// group's reference) the key comes from it and the run's flags; without one the cache must be
/// complete and is checked against the flags and the data only.
///
/// # Errors
/// [`AppError::Cache`] for a cache of another key, an incomplete cache without a teacher, or an
/// unreadable one.
fn open_cache(
    dir: &Path,
    cfg: &DistillConfig,
    teacher: Option<&TeacherInfo>,
    train: &Dataset,
    num_classes: i64,
) -> Result<LogitCache, AppError> {
    if train.is_tokens() {
        // The same refusal as cache_key's, before a cache without a teacher is opened.
        cache_key(
            &cfg.request,
            &TeacherInfo::from(distill_proto::v1::ModelInfo::default()),
            train,
        )?;
    }
    match teacher {
        Some(info) => {
            let key = cache_key(&cfg.request, info, train)?;
            Ok(LogitCache::open_or_create(dir, key, DEFAULT_SHARD_SAMPLES)?)
        }
        None => {
            if !LogitCache::exists(dir) {
                return Err(AppError::Mismatch(format!(
                    "--logit-cache {}: no cache there, and no --teacher to fill one (capture one \
                     with `student-trainer capture`, or add --teacher URL)",
                    dir.display()
                )));
            }
            let cache = LogitCache::open(dir)?;
            let stored = cache.key().clone();
            let run = CacheKey {
                teacher_fingerprint: stored.teacher_fingerprint.clone(),
                teacher_precision: stored.teacher_precision.clone(),
                wire: cfg.request.wire.to_string(),
                top_k: cfg.request.top_k,
                temperature: (cfg.request.top_k > 0).then_some(cfg.request.temperature),
                num_logits: num_classes,
                dataset_sha256: dataset_sha256(&train.inputs)?,
                samples: train.len(),
                positions: if train.is_tokens() {
                    train.sample_shape().first().copied().unwrap_or(0)
                } else {
                    0
                },
                tokenizer_fingerprint: train.tokenizer_fingerprint.clone().unwrap_or_default(),
            };
            cache.check_key(&run)?;
            if !cache.is_complete() {
                let missing = cache.missing_shards();
                return Err(CacheError::Incomplete {
                    dir: dir.to_path_buf(),
                    missing: missing.len(),
                    total: cache.shard_count(),
                    first: missing[0],
                }
                .into());
            }
            Ok(cache)
        }
    }
}

/// `capture`: a teacher's soft targets for the training split into a logit cache; prints what
/// was captured.
///
/// # Errors
/// Any [`AppError`]; shards written before a failure are kept (run again to resume).
pub async fn capture(cfg: CaptureConfig, stop: Arc<AtomicBool>) -> Result<Finished, AppError> {
    let t0 = Instant::now();
    let data = load_data(&cfg.data_dir, cfg.limit, TextOptions::default())?;
    let options = PoolOptions {
        prefetch: cfg.prefetch,
        batch_timeout: cfg.batch_timeout,
        teacher_wait: cfg.teacher_wait,
        client: ClientOptions {
            connect_timeout: cfg.connect_timeout,
            security: cfg.connection.load()?,
            ..ClientOptions::default()
        },
        ..PoolOptions::default()
    };
    let expect = Expect {
        sample_shape: data.train.sample_shape(),
        num_classes: data.train.num_classes.max(data.test.num_classes),
        batch_size: 1,
        tokens: data.train.is_tokens(),
        tokenizer_fingerprint: data.train.tokenizer_fingerprint.clone(),
        hint_output: None,
    };
    let mut pool = Pool::connect(cfg.groups.clone(), options, expect).await?;
    pool.check_top_k(cfg.request.top_k)?;
    let info = pool.references()[0].clone();
    let key = cache_key(&cfg.request, &info, &data.train)?;
    let cache = LogitCache::open_or_create(&cfg.out, key, cfg.shard_samples)?;
    let batch_size = teacher_eval::batch_size_for(&pool, cfg.batch_size);
    outln!(
        "capturing {} soft targets of teacher {} ({}) for {} samples into {} ({} of {} shards \
         to go)",
        if cfg.request.top_k == 0 {
            format!("dense {}", cfg.request.wire)
        } else {
            format!("top-{} {}", cfg.request.top_k, cfg.request.wire)
        },
        info.name,
        &info.fingerprint[..info.fingerprint.len().min(12)],
        data.train.len(),
        cfg.out.display(),
        cache.missing_shards().len(),
        cache.shard_count()
    )?;
    let targets = RunTargets {
        request: cfg.request,
        ensemble: crate::ensemble::EnsembleMode::Mix,
        seed: 0,
    };
    let done = crate::capture::capture(
        &mut pool,
        cache,
        data.train.inputs.shallow_clone(),
        targets,
        batch_size,
        stop,
    )
    .await?;
    outln!(
        "{} samples captured in {:.1} s; {} shard(s) written, {} of {} in the cache{}; {:.1} \
         bytes/sample",
        done.samples,
        t0.elapsed().as_secs_f64(),
        done.shards_written,
        done.present,
        done.shards,
        if done.complete {
            ", complete"
        } else {
            ", incomplete: run again to resume"
        },
        done.bytes_per_sample
    )?;
    Ok(if done.interrupted {
        Finished::Interrupted
    } else {
        Finished::Done
    })
}

/// Test accuracy, parameter count and architecture name of the checkpoint in `dir`.
fn evaluate_checkpoint(
    dir: &Path,
    test: &Dataset,
    device: Device,
) -> Result<(Accuracy, i64, String), AppError> {
    let ck = Checkpoint::open(dir)?;
    if ck.meta.arch.input_shape != test.sample_shape() {
        return Err(AppError::Mismatch(format!(
            "checkpoint {} takes inputs {:?}, the data has {:?}",
            dir.display(),
            ck.meta.arch.input_shape,
            test.sample_shape()
        )));
    }
    let (vs, net) = ck.load_network(device)?;
    let acc = eval::evaluate(&net, test, device, 1000)?;
    Ok((
        acc,
        distill_models::arch::param_count(&vs),
        ck.meta.arch.arch.to_string(),
    ))
}

/// `eval`: accuracy overall and per class on the test split, as a table or JSON.
///
/// # Errors
/// Any [`AppError`].
pub async fn eval(cfg: EvalConfig) -> Result<(), AppError> {
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n as i32);
    }
    if !cfg.data_dir.exists() {
        return Err(DataError::MissingFile { path: cfg.data_dir }.into());
    }
    let test = if is_text_corpus(&cfg.data_dir) {
        // A checkpoint's own sequence length and vocabulary; the flags' for a served teacher.
        let text = match &cfg.target {
            EvalTarget::Checkpoint(dir) => {
                let arch = Checkpoint::open(dir)?.meta.arch;
                TextOptions {
                    seq_len: arch.input_shape.first().copied().unwrap_or(0).max(2) as usize,
                    vocab_size: arch.num_classes.max(0) as usize,
                }
            }
            EvalTarget::Teachers(_) => cfg.text,
        };
        load_text(&cfg.data_dir, text)?.1
    } else {
        data::load(&cfg.data_dir, Split::Test)?
    };
    let (title, acc, params) = match &cfg.target {
        EvalTarget::Checkpoint(dir) => {
            let device = cfg.device.resolve()?;
            let (acc, params, name) = evaluate_checkpoint(dir, &test, device)?;
            (
                format!("{} ({name}, {params} parameters)", dir.display()),
                acc,
                Some(params),
            )
        }
        EvalTarget::Teachers(groups) => {
            let options = PoolOptions {
                client: ClientOptions {
                    connect_timeout: cfg.connect_timeout,
                    security: cfg.connection.load()?,
                    ..ClientOptions::default()
                },
                ..PoolOptions::default()
            };
            let expect = Expect {
                sample_shape: test.sample_shape(),
                num_classes: test.num_classes,
                batch_size: 1,
                tokens: test.is_tokens(),
                tokenizer_fingerprint: test.tokenizer_fingerprint.clone(),
                hint_output: None,
            };
            let mut pool = Pool::connect(groups.clone(), options, expect).await?;
            let mut batch_size = teacher_eval::batch_size_for(&pool, cfg.batch_size);
            if test.is_tokens() {
                // Dense f32 logits at every position (perplexity needs the full rows): as many
                // sequences per request as fit the teacher's message limit.
                batch_size = batch_size.min(teacher_eval::sequences_per_message(
                    &pool,
                    test.sample_shape().first().copied().unwrap_or(1),
                ));
            }
            let acc = teacher_eval::evaluate_pool(&mut pool, &test, batch_size, 1.0).await?;
            let refs = pool.references();
            let name = refs.iter().map(|i| i.name.as_str()).collect::<Vec<_>>();
            let params = refs
                .iter()
                .copied()
                .map(info_params)
                .try_fold(0i64, |acc, p| p.map(|p| acc + p));
            let urls: Vec<&str> = groups
                .iter()
                .flat_map(|g| g.urls.iter().map(String::as_str))
                .collect();
            (
                format!("teacher {} ({})", urls.join(", "), name.join("+")),
                acc,
                params,
            )
        }
    };
    if cfg.json {
        let mut v = acc.to_json();
        v["params"] = serde_json::json!(params);
        v["model"] = serde_json::json!(title);
        if let Some(ppl) = acc.perplexity() {
            v["perplexity"] = serde_json::json!(ppl);
            v["tokens"] = serde_json::json!(acc.total);
        }
        outln!("{v}")?;
    } else if let Some(ppl) = acc.perplexity() {
        outln!(
            "test split of {title}: perplexity {ppl:.2}, next-token top-1 accuracy {:.2} % over {} tokens",
            100.0 * acc.fraction(),
            acc.total
        )?;
    } else {
        write_stdout(format_args!(
            "{}",
            acc.table(&format!("test accuracy of {title}"))
        ))?;
    }
    Ok(())
}

/// `plot`: draws the training curves of the run directories into a PNG and prints its path.
///
/// # Errors
/// [`AppError::Plot`] for a run directory that cannot be read (naming the file and what was
/// expected) or an output that cannot be written; [`AppError::StdoutClosed`].
pub fn plot(cfg: PlotConfig) -> Result<(), AppError> {
    let runs = crate::plot::plot(&cfg.runs, &cfg.output, cfg.width, cfg.height)?;
    let names: Vec<String> = runs
        .iter()
        .map(|r| format!("{} ({} epochs)", r.label(), r.epochs()))
        .collect();
    outln!(
        "plot written to {} ({}x{} pixels): {}",
        cfg.output.display(),
        cfg.width,
        cfg.height,
        names.join(", ")
    )
}

/// `describe`: prints the architecture `arch` built for `input_shape` inputs and `num_classes`
/// classes: its parameter count, then one line per named layer ([`Network::layers`]: the cut
/// points of hint distillation and of a teacher's named outputs) with its per-sample shape.
///
/// # Errors
/// [`AppError::Model`] for an unknown architecture or one that cannot take `input_shape`;
/// [`AppError::StdoutClosed`].
pub fn describe(arch: &str, input_shape: &[i64], num_classes: i64) -> Result<(), AppError> {
    let spec = ArchSpec {
        arch: arch.parse::<Arch>()?,
        input_shape: input_shape.to_vec(),
        num_classes,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let net = Network::new(&vs.root(), &spec)?;
    outln!(
        "{}: {} parameters, input {:?}",
        spec.arch,
        distill_models::arch::param_count(&vs),
        spec.input_shape
    )?;
    outln!("{:<12} per-sample shape", "layer")?;
    for layer in net.layers() {
        outln!("{:<12} {:?}", layer.name, layer.shape)?;
    }
    Ok(())
}
