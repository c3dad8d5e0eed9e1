//! `train`: supervised training on the labels (the teacher, and the no-distillation baseline);
//! and what `distill` shares with it: the metrics endpoint, the trainer thread, the summary line.

use super::dataset::{Data, Source, keep_tokenizer};
use super::error::AppError;
use super::output::{Finished, outln};
use super::student::{self, StudentPlan};
use super::views::{self, Feed, FeedSpec};
use crate::outputs::monitoring::StudentMetrics;
use crate::schedule::{batches_per_epoch, run_plan};
use crate::training::{self, ImageJob, Job, Objective, Outcome, Start, TrainConfig, TrainError};
use distill_models::ArchSpec;
use distill_telemetry::MetricsServer;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// `train`: supervised training on the labels; prints the final test accuracy.
///
/// # Errors
/// Any [`AppError`].
pub async fn train(cfg: TrainConfig, stop: Arc<AtomicBool>) -> Result<Finished, AppError> {
    let device = cfg.device.resolve()?;
    let source = Source::open(&cfg.data_dir, cfg.limit, &cfg.text, &cfg.images)?;
    // The student is checked against the data before anything is written.
    let StudentPlan { spec, params } = student::plan(&cfg, &source)?;
    let data = source.load(None).await?;
    prepare_out(&cfg.out)?;
    warn_long_warmup(&cfg, data.train.len());
    keep_tokenizer(&data, &cfg.out)?;
    outln!(
        "training {} ({params} parameters) on {} samples",
        spec.arch,
        data.train.len()
    )?;
    let start = Start::for_run(&cfg, &spec, data.train.len(), None)?;
    let (metrics, _endpoint) = start_monitoring(&cfg).await?;
    let mut feed = augmented_views(&cfg, &data, &start)?;
    let images = image_job(&data, feed.as_mut());
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
        images,
        on_policy: None,
    };
    let handle = training::spawn(job, None).map_err(|source| AppError::Io {
        path: "trainer thread".into(),
        source,
    })?;
    let out = join_trainer(handle).await;
    if let Some(feed) = feed {
        feed.finish().await?;
    }
    summarise(&spec, &out?)
}

/// The loader thread of the student's augmented views of an image folder (`--augment`), from
/// the run's start to its last epoch; `None` without augmentation.
fn augmented_views(
    cfg: &TrainConfig,
    data: &Data,
    start: &Start,
) -> Result<Option<Feed>, AppError> {
    let Some(images) = data.images.as_ref().filter(|i| i.augment.any()) else {
        return Ok(None);
    };
    let Some(store) = images.train_store.clone() else {
        return Ok(None);
    };
    let plan = run_plan(
        cfg.seed,
        data.train.len(),
        cfg.batch_size,
        start.position,
        cfg.epochs,
    );
    let spec = FeedSpec {
        store,
        teacher: None,
        student: Some(images.student.clone()),
        augment: images.augment,
        seed: cfg.seed,
        teacher_ahead: 1,
        threads: images.threads,
    };
    Ok(Some(views::start(plan, spec)?))
}

/// An image folder's part of a run: what checkpoints record, and the student's views from
/// `feed` (taken from it) when they are made per batch.
pub(crate) fn image_job(data: &Data, feed: Option<&mut Feed>) -> Option<ImageJob> {
    data.images.as_ref().map(|i| ImageJob {
        record: i.record(),
        views: feed.and_then(|f| f.student.take()),
    })
}

/// Makes sure `--out` is a directory, creating it (and its parents) if needed, before anything
/// is written there.
///
/// # Errors
/// [`AppError::OutIsFile`] when `out` exists and is not a directory; [`AppError::OutCreate`]
/// when it cannot be created (a parent that is a file, no permission, ...).
pub(crate) fn prepare_out(out: &Path) -> Result<(), AppError> {
    if out.exists() && !out.is_dir() {
        return Err(AppError::OutIsFile {
            path: out.to_path_buf(),
        });
    }
    std::fs::create_dir_all(out).map_err(|source| AppError::OutCreate {
        path: out.to_path_buf(),
        source,
    })
}

/// Warns once, at the start of a run of `cfg` on `train_samples` samples, when its warm-up
/// (`--warmup-steps`) lasts the whole run (`--epochs` × batches per epoch optimizer steps).
pub(crate) fn warn_long_warmup(cfg: &TrainConfig, train_samples: usize) {
    let steps = cfg.epochs * batches_per_epoch(train_samples, cfg.batch_size) as u64;
    if let Some(warning) = cfg.optimizer.schedule.warmup_warning(steps) {
        tracing::warn!("{warning}");
    }
}

/// Starts the `--metrics-listen` endpoint of `cfg`, if asked: the metrics the run keeps up to
/// date, and the endpoint's handle (it stops when dropped, at the end of the run).
///
/// # Errors
/// [`AppError::Metrics`] if the address cannot be bound.
pub(crate) async fn start_monitoring(
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

/// Waits for the trainer thread without blocking the runtime.
pub(crate) async fn join_trainer(
    handle: std::thread::JoinHandle<Result<Outcome, TrainError>>,
) -> Result<Outcome, TrainError> {
    tokio::task::spawn_blocking(move || training::join(handle))
        .await
        .unwrap_or_else(|e| Err(TrainError::Panic(e.to_string())))
}

/// Prints the outcome of a run; an interrupted run stays [`Finished::Interrupted`] even when
/// stdout is closed.
pub(crate) fn summarise(spec: &ArchSpec, out: &Outcome) -> Result<Finished, AppError> {
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
