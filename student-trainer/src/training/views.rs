//! The student's views of an image folder made per batch (augmented crops) by the loader
//! thread: received in plan order through a bounded channel, each checked against the batch it
//! is for, and the time the loop waited for them counted.

use super::error::TrainError;
use crate::schedule::{PlannedBatch, ViewedBatch};
use std::time::Instant;
use tch::Tensor;
use tokio::sync::mpsc;

/// Where the student's inputs of a batch come from: the loader's channel, or the dataset
/// (`rx` is `None`).
#[derive(Debug)]
pub(crate) struct ViewSource {
    rx: Option<mpsc::Receiver<ViewedBatch>>,
    /// Seconds the loop was blocked waiting for the loader (the trainer's wait for data).
    pub(crate) waited_s: f64,
}

impl ViewSource {
    /// A source reading `rx`, or the dataset without one.
    pub(crate) fn new(rx: Option<mpsc::Receiver<ViewedBatch>>) -> ViewSource {
        ViewSource { rx, waited_s: 0.0 }
    }

    /// The student's inputs of batch `planned` of `epoch` (`f32 [B, C, H, W]`), or `None` when
    /// they come from the dataset.
    ///
    /// # Errors
    /// [`TrainError::Views`] when the loader stopped before this batch or sent another one.
    pub(crate) fn next(
        &mut self,
        epoch: u64,
        planned: &PlannedBatch,
    ) -> Result<Option<Tensor>, TrainError> {
        let Some(rx) = self.rx.as_mut() else {
            return Ok(None);
        };
        let t = Instant::now();
        let received = rx.blocking_recv();
        self.waited_s += t.elapsed().as_secs_f64();
        let Some(v) = received else {
            return Err(TrainError::Views(format!(
                "the image loader stopped before the views of epoch {epoch} batch {}",
                planned.index
            )));
        };
        if v.batch != *planned {
            return Err(TrainError::Views(format!(
                "pairing check failed: expected the views of epoch {epoch} batch {}, got epoch {} \
                 batch {}",
                planned.index, v.batch.epoch, v.batch.index
            )));
        }
        Ok(Some(v.inputs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(epoch: u64, index: usize) -> PlannedBatch {
        PlannedBatch {
            epoch,
            index,
            indices: vec![0, 1],
        }
    }

    #[test]
    fn views_come_in_plan_order_or_the_batch_fails() {
        let (tx, rx) = mpsc::channel(2);
        let mut source = ViewSource::new(Some(rx));
        let inputs = Tensor::zeros([2, 1, 2, 2], tch::kind::FLOAT_CPU);
        tx.try_send(ViewedBatch::new(planned(0, 0), inputs.shallow_clone()))
            .unwrap();
        tx.try_send(ViewedBatch::new(planned(0, 2), inputs))
            .unwrap();
        drop(tx);
        assert!(source.next(0, &planned(0, 0)).unwrap().is_some());
        let e = source.next(0, &planned(0, 1)).unwrap_err().to_string();
        assert_eq!(
            e,
            "pairing check failed: expected the views of epoch 0 batch 1, got epoch 0 batch 2"
        );
        let e = source.next(0, &planned(0, 3)).unwrap_err().to_string();
        assert!(e.contains("image loader stopped"), "{e}");
        assert!(
            ViewSource::new(None)
                .next(0, &planned(0, 0))
                .unwrap()
                .is_none()
        );
    }
}
