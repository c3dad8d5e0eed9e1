//! `capture`: a teacher's soft targets for a whole dataset, captured offline into a
//! [logit cache](crate::logit_cache) through the replica pool (failover and exactly-once apply),
//! so that any number of students can distill from it later without a teacher.
//!
//! Resumable: shards are written (atomically) as they complete, and a second run captures only
//! the shards still missing. A kill loses at most the shards being filled.

use super::dataset::Source;
use super::error::AppError;
use super::output::{Finished, outln};
use super::teachers::{batch_size_for, connect};
use super::views::{self, Cut};
use crate::config::CaptureConfig;
use crate::ensemble::EnsembleMode;
use crate::logit_cache::{CacheError, CacheKey, CachedTeacher, LogitCache};
use crate::outputs::progress::Progress;
use crate::schedule::PlannedBatch;
use crate::soft_targets::TeacherBatch;
use crate::teachers::pool::RunTargets;
use crate::teachers::{ClientError, Expect, Pool, PoolError};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use tch::Tensor;
use tokio::sync::mpsc;

/// `capture`: a teacher's soft targets for the training split into a logit cache; prints what
/// was captured.
///
/// # Errors
/// Any [`AppError`]; shards written before a failure are kept (run again to resume).
pub async fn capture(cfg: CaptureConfig, stop: Arc<AtomicBool>) -> Result<Finished, AppError> {
    let t0 = Instant::now();
    let source = Source::open(&cfg.data_dir, cfg.limit, &cfg.text, &cfg.images)?;
    let (tokens, tokenizer_fingerprint) = source.tokens();
    // Any architecture: only the shape and the classes are read.
    let spec = source.spec(&distill_models::Arch::Mlp { hidden: Vec::new() });
    let expect = Expect {
        sample_shape: spec.input_shape,
        num_classes: spec.num_classes,
        batch_size: 1,
        tokens,
        tokenizer_fingerprint,
        hint_output: None,
        top_k: cfg.request.top_k,
        image_views: source.is_images(),
    };
    let mut pool = connect(&cfg.teachers, expect, None).await?;
    let info = pool.references()[0].clone();
    let data = source.load(Some(info.input_shape.clone())).await?;
    let teacher = CachedTeacher {
        fingerprint: &info.fingerprint,
        precision: info.precision_name(),
        num_logits: info.num_logits,
    };
    let mut key = CacheKey::for_run(&cfg.request, teacher, &data.train)?;
    key.teacher_view = data
        .images
        .as_ref()
        .map(|i| i.teacher_view_key())
        .unwrap_or_default();
    let cache = LogitCache::open_or_create(&cfg.out, key, cfg.shard_samples)?;
    let batch_size = batch_size_for(&pool, cfg.batch_size);
    outln!(
        "capturing {} soft targets of teacher {} ({}) for {} samples into {} ({} of {} shards \
         to go)",
        if cfg.request.top_k == 0 {
            format!("dense {}", cfg.request.wire)
        } else {
            format!("top-{} {}", cfg.request.top_k, cfg.request.wire)
        },
        info.name,
        info.short_fingerprint(),
        data.train.len(),
        cfg.out.display(),
        cache.missing_shards().len(),
        cache.shard_count()
    )?;
    let targets = RunTargets {
        request: cfg.request,
        ensemble: EnsembleMode::Mix,
        seed: 0,
    };
    let inputs = match data.images.as_ref().and_then(|i| i.teacher_feed()) {
        Some(views) => Inputs::Views(views),
        None => Inputs::Rows(data.train.inputs.shallow_clone()),
    };
    let done = capture_shards(&mut pool, cache, inputs, targets, batch_size, stop).await?;
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

/// What a capture did.
#[derive(Debug, Clone, PartialEq)]
struct Captured {
    /// Samples whose targets were captured in this run.
    pub samples: usize,
    /// Shards written in this run.
    pub shards_written: usize,
    /// Shards written in the cache (by this run and earlier ones).
    pub present: usize,
    /// Shards of the whole dataset.
    pub shards: usize,
    /// Whether every shard is written.
    pub complete: bool,
    /// Bytes per sample of the cache's shards (safetensors headers included).
    pub bytes_per_sample: f64,
    /// Stopped by Ctrl-C or SIGTERM (the shards written so far are kept).
    pub interrupted: bool,
}

/// The teacher's inputs of a capture: rows of the training inputs, or an image folder's
/// teacher view (another shape or normalization than the student's) cut per batch from its
/// store.
enum Inputs {
    /// `f32 [N, ...]`, CPU: the dataset the cache's key names.
    Rows(Tensor),
    /// The training images and the teacher's view of them.
    Views(Cut),
}

/// The batches that cover the samples of `shards` (each shard's range, in order), `batch_size`
/// samples at most each, numbered from 0 as one epoch.
fn capture_plan(cache: &LogitCache, shards: &[usize], batch_size: usize) -> Vec<PlannedBatch> {
    let mut plan = Vec::new();
    for &s in shards {
        let range = cache.shard_range(s);
        let indices: Vec<i64> = (range.start as i64..range.end as i64).collect();
        for c in indices.chunks(batch_size.max(1)) {
            plan.push(PlannedBatch {
                epoch: 0,
                index: plan.len(),
                indices: c.to_vec(),
            });
        }
    }
    plan
}

/// Captures the shards of `cache` still missing from the teachers of `pool` (one group), for
/// `inputs` (the dataset the cache's key names, or the teacher's view of it), asking for
/// `targets`.
/// Batches are written to the cache on a dedicated thread (tensor work stays off the async
/// runtime). Raising `stop` ends the capture after the shards written so far.
///
/// # Errors
/// [`AppError::Pool`] when the teachers fail; [`AppError::Cache`] when a shard cannot be
/// written; [`AppError::CaptureWriter`] when the writer thread cannot start or panics.
async fn capture_shards(
    pool: &mut Pool,
    mut cache: LogitCache,
    inputs: Inputs,
    targets: RunTargets,
    batch_size: usize,
    stop: Arc<AtomicBool>,
) -> Result<Captured, AppError> {
    let missing = cache.missing_shards();
    let plan = capture_plan(&cache, &missing, batch_size);
    let samples: usize = plan.iter().map(|b| b.indices.len()).sum();
    let before = missing.len();
    let (tx, mut rx) = mpsc::channel::<TeacherBatch>(4);
    let writer_stop = stop.clone();
    let writer = std::thread::Builder::new()
        .name("capture-writer".into())
        .spawn(move || -> Result<(LogitCache, bool), CacheError> {
            let mut bar = Progress::new(0, 1, plan_len_hint(samples, batch_size), 0);
            let mut done = 0usize;
            while let Some(b) = rx.blocking_recv() {
                if writer_stop.load(Ordering::SeqCst) {
                    bar.abandon();
                    return Ok((cache, true));
                }
                cache.put(&b.indices, &b.targets)?;
                done += 1;
                bar.update(done, 0.0, 0.0);
            }
            bar.finish();
            Ok((cache, false))
        })
        .map_err(|e| AppError::CaptureWriter(e.to_string()))?;
    let streamed = match inputs {
        Inputs::Rows(rows) => pool.run(plan, rows, targets, tx).await,
        Inputs::Views(cut) => {
            let mut feed = views::start(plan, cut.teacher_only(4))?;
            let made = feed.teacher.take().expect("a feed with a teacher side");
            let streamed = pool.run_views(made, targets, tx).await;
            feed.finish().await?;
            streamed
        }
    };
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| AppError::CaptureWriter(e.to_string()))?
        .map_err(|p| AppError::CaptureWriter(distill_models::panic_message(&*p)))?;
    let (cache, interrupted) = written?;
    match streamed {
        Ok(_) => {}
        Err(PoolError::Client(ClientError::ConsumerGone)) if interrupted => {}
        Err(e) => return Err(e.into()),
    }
    let after = cache.missing_shards().len();
    Ok(Captured {
        samples,
        shards_written: before - after,
        present: cache.shard_count() - after,
        shards: cache.shard_count(),
        complete: cache.is_complete(),
        bytes_per_sample: cache.bytes_per_sample(),
        interrupted,
    })
}

fn plan_len_hint(samples: usize, batch_size: usize) -> usize {
    samples.div_ceil(batch_size.max(1))
}
