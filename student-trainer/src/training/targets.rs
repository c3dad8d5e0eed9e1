//! Where a batch's soft targets come from: the teacher stream (checked against the schedule,
//! and copied into the logit cache while it fills), the logit cache once it is complete, or
//! nowhere (supervised training).

use super::error::TrainError;
use crate::logit_cache::CachePlan;
use crate::outputs::monitoring::StudentMetrics;
use crate::schedule::PlannedBatch;
use crate::soft_targets::{SoftTargets, TeacherBatch};
use std::time::Instant;
use tch::Tensor;
use tokio::sync::mpsc;

/// Who answered a batch: the request id, the replica, the groups (for the ledger).
pub(crate) type Answered = (u64, String, Vec<String>);

/// The soft targets of one planned batch.
#[derive(Debug)]
pub(crate) struct Targets {
    /// The targets (`None` for supervised training).
    pub(crate) soft: Option<SoftTargets>,
    /// The teacher's hint feature (`distill --hint`).
    pub(crate) hint: Option<Tensor>,
    /// The teacher's log-probabilities at the ids the batch asked for, `f32 [B, S, m]`.
    pub(crate) gathered: Option<Tensor>,
    /// Who answered, when the teacher did: request id, replica, groups (for the ledger).
    pub(crate) answered: Option<Answered>,
    /// The batch's span from its first send (none for cached or supervised batches).
    pub(crate) span: tracing::Span,
}

/// The source of a run's soft targets.
#[derive(Debug)]
pub(crate) struct TargetSource {
    /// The teacher stream, for epochs before the cache takes over.
    stream: Option<mpsc::Receiver<TeacherBatch>>,
    /// The logit cache of a `distill --logit-cache` run.
    cache: Option<CachePlan>,
    /// Every sample's soft targets, once the run reads them from the cache.
    cached: Option<SoftTargets>,
    /// Prometheus metrics (time waited for the teacher).
    metrics: Option<StudentMetrics>,
    /// Seconds blocked waiting for the teacher stream.
    pub(crate) waited_s: f64,
}

impl TargetSource {
    /// A source reading `stream` (none for supervised training) until `cache` is complete.
    pub(crate) fn new(
        stream: Option<mpsc::Receiver<TeacherBatch>>,
        cache: Option<CachePlan>,
        metrics: Option<StudentMetrics>,
    ) -> TargetSource {
        TargetSource {
            stream,
            cache,
            cached: None,
            metrics,
            waited_s: 0.0,
        }
    }

    /// Prepares `epoch`: from the cache's first epoch on, loads and verifies every sample's
    /// targets once. Returns whether the epoch reads the cache.
    ///
    /// # Errors
    /// [`TrainError::Cache`] for a damaged or incomplete cache.
    pub(crate) fn begin_epoch(&mut self, epoch: u64) -> Result<bool, TrainError> {
        if let Some(plan) = self.cache.as_ref().filter(|p| epoch >= p.from_epoch)
            && self.cached.is_none()
        {
            let t = Instant::now();
            self.cached = Some(plan.cache.load_all()?);
            tracing::info!(
                epoch, cache = %plan.cache.dir().display(),
                bytes_per_sample = format!("{:.1}", plan.cache.bytes_per_sample()),
                load_s = format!("{:.2}", t.elapsed().as_secs_f64()),
                "soft targets from the logit cache from here on (no teacher calls)"
            );
        }
        Ok(self.cached.is_some())
    }

    /// The targets of `planned` (batch `planned.index` of `epoch`), or `None` when the teacher
    /// stream ended before it (no replica reachable: the caller checkpoints and stops).
    ///
    /// # Errors
    /// [`TrainError::Pairing`] for teacher targets of another batch (nothing is trained on
    /// them); [`TrainError::Cache`] / [`TrainError::Torch`] while caching or selecting rows.
    pub(crate) fn next(
        &mut self,
        epoch: u64,
        planned: &PlannedBatch,
    ) -> Result<Option<Targets>, TrainError> {
        let none = Targets {
            soft: None,
            hint: None,
            gathered: None,
            answered: None,
            span: tracing::Span::none(),
        };
        if let Some(all) = &self.cached {
            return Ok(Some(Targets {
                soft: Some(all.select(&Tensor::from_slice(&planned.indices))?),
                ..none
            }));
        }
        let Some(rx) = self.stream.as_mut() else {
            return Ok(Some(none));
        };
        let waiting = Instant::now();
        let received = rx.blocking_recv();
        let waited = waiting.elapsed();
        self.waited_s += waited.as_secs_f64();
        if let Some(m) = &self.metrics {
            m.waited_for_targets(waited);
        }
        let Some(tb) = received else {
            return Ok(None);
        };
        check_pairing(&tb, epoch, planned.index, &planned.indices)?;
        if let Some(plan) = self.cache.as_mut()
            && !plan.cache.is_complete()
        {
            plan.cache.put(&tb.indices, &tb.targets)?;
        }
        Ok(Some(Targets {
            soft: Some(tb.targets),
            hint: tb.hint,
            gathered: tb.gathered,
            answered: Some((tb.batch_id, tb.replica, tb.groups)),
            span: tb.span,
        }))
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

#[cfg(test)]
mod tests {
    use super::*;

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
            gathered: None,
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
        let e = check_pairing(&short, 1, 2, &[4, 5])
            .unwrap_err()
            .to_string();
        assert!(e.contains("(1 soft-target rows for 2 samples)"), "{e}");
    }
}
