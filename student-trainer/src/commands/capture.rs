//! `capture`: a teacher's soft targets for a whole dataset, captured offline into a
//! [logit cache](crate::cache) through the replica pool (failover and exactly-once apply), so
//! that any number of students can distill from it later without a teacher.
//!
//! Resumable: shards are written (atomically) as they complete, and a second run captures only
//! the shards still missing. A kill loses at most the shards being filled.

use crate::cache::{CacheError, LogitCache};
use crate::pool::{Pool, PoolError, RunTargets};
use crate::schedule::{PlannedBatch, TeacherBatch};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tch::Tensor;
use tokio::sync::mpsc;

/// Why a capture failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The teacher pool failed.
    #[error("{0}")]
    Pool(#[from] PoolError),
    /// The cache could not be opened or written.
    #[error("{0}")]
    Cache(#[from] CacheError),
    /// The writer thread panicked or could not start.
    #[error("capture writer: {0}")]
    Writer(String),
}

/// What a capture did.
#[derive(Debug, Clone, PartialEq)]
pub struct Captured {
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

/// The batches that cover the samples of `shards` (each shard's range, in order), `batch_size`
/// samples at most each, numbered from 0 as one epoch.
pub fn capture_plan(cache: &LogitCache, shards: &[usize], batch_size: usize) -> Vec<PlannedBatch> {
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
/// `inputs` (`f32 [N, ...]`, CPU, the dataset the cache's key names), asking for `targets`.
/// Batches are written to the cache on a dedicated thread (tensor work stays off the async
/// runtime). Raising `stop` ends the capture after the shards written so far.
///
/// # Errors
/// [`CaptureError::Pool`] when the teachers fail; [`CaptureError::Cache`] when a shard cannot be
/// written.
pub async fn capture(
    pool: &mut Pool,
    mut cache: LogitCache,
    inputs: Tensor,
    targets: RunTargets,
    batch_size: usize,
    stop: Arc<AtomicBool>,
) -> Result<Captured, CaptureError> {
    let missing = cache.missing_shards();
    let plan = capture_plan(&cache, &missing, batch_size);
    let samples: usize = plan.iter().map(|b| b.indices.len()).sum();
    let before = missing.len();
    let (tx, mut rx) = mpsc::channel::<TeacherBatch>(4);
    let writer_stop = stop.clone();
    let writer = std::thread::Builder::new()
        .name("capture-writer".into())
        .spawn(move || -> Result<(LogitCache, bool), CacheError> {
            let mut bar =
                crate::progress::Progress::new(0, 1, plan_len_hint(samples, batch_size), 0);
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
        .map_err(|e| CaptureError::Writer(e.to_string()))?;
    let streamed = pool.run(plan, inputs, targets, tx).await;
    let written = tokio::task::spawn_blocking(move || writer.join())
        .await
        .map_err(|e| CaptureError::Writer(e.to_string()))?
        .map_err(|p| CaptureError::Writer(distill_models::panic_message(&*p)))?;
    let (cache, interrupted) = written?;
    match streamed {
        Ok(_) => {}
        Err(PoolError::Client(crate::client::ClientError::ConsumerGone)) if interrupted => {}
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
