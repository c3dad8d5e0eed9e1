//! `train`: supervised training on the labels (the teacher, and the no-distillation baseline);
//! and what `distill` shares with it: the metrics endpoint, the trainer thread, the summary line.

use super::dataset::{keep_tokenizer, load_data, spec_for};
use super::error::AppError;
use super::output::{Finished, outln};
use super::teachers::params_of;
use crate::outputs::monitoring::StudentMetrics;
use crate::training::{self, Job, Objective, Outcome, Start, TrainConfig, TrainError};
use distill_models::ArchSpec;
use distill_telemetry::MetricsServer;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

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
    let handle = training::spawn(job, None).map_err(|source| AppError::Io {
        path: "trainer thread".into(),
        source,
    })?;
    let out = join_trainer(handle).await?;
    summarise(&spec, &out)
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
