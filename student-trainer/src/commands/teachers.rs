//! Accuracy of remote teachers (one replica or many, one group or an ensemble) on a dataset,
//! streamed through the [`Pool`] with its failover.

use crate::data::Dataset;
use crate::eval::Accuracy;
use crate::pool::{Pool, PoolError, RunTargets};
use crate::schedule::{TeacherBatch, sequential_plan};
use tokio::sync::mpsc;

/// Why a remote evaluation failed.
#[derive(Debug, thiserror::Error)]
pub enum TeacherEvalError {
    /// The pool failed (no replica reachable, fatal per-batch error, ...).
    #[error("{0}")]
    Pool(#[from] PoolError),
    /// Counting the answers failed (libtorch).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Accuracy of the pool's teacher (the ensemble's mixture at temperature `temperature`, for
/// several groups) on `data` (a language-model dataset: next-token top-1 accuracy and
/// perplexity from the full logits at every position), sent in order in batches of `batch_size` samples (at least 1; the
/// caller keeps it within the teachers' maximum batch size). Always asks for dense `f32` logits,
/// whatever the training run used.
///
/// # Errors
/// [`TeacherEvalError::Pool`] from the pool; [`TeacherEvalError::Torch`] while counting.
pub(crate) async fn evaluate_pool(
    pool: &mut Pool,
    data: &Dataset,
    batch_size: usize,
    temperature: f64,
) -> Result<Accuracy, TeacherEvalError> {
    let plan = sequential_plan(data.len(), batch_size.max(1));
    let (tx, mut rx) = mpsc::channel::<TeacherBatch>(4);
    let labels = data.labels.shallow_clone();
    let tokens = data.is_tokens();
    let mut acc = if tokens {
        Accuracy::tokens()
    } else {
        Accuracy::new(data.num_classes)
    };
    let count = async {
        while let Some(b) = rx.recv().await {
            let ys = labels.f_index_select(0, &tch::Tensor::from_slice(&b.indices))?;
            let logits = b.targets.as_dense().ok_or_else(|| {
                tch::TchError::Shape("teacher evaluation needs dense logits".into())
            })?;
            if tokens {
                acc.add_tokens(logits, &ys)?;
            } else {
                acc.add(logits, &ys)?;
            }
        }
        Ok::<(), tch::TchError>(())
    };
    let (streamed, counted) = tokio::join!(
        pool.run(
            plan,
            data.inputs.shallow_clone(),
            RunTargets::dense_f32(temperature),
            tx
        ),
        count
    );
    streamed?;
    counted?;
    Ok(acc)
}

/// Sequences of `seq` positions whose dense f32 logits fit every group's message limit (with
/// 10 % headroom; 4 MiB when a teacher does not announce one), at least 1.
pub(crate) fn sequences_per_message(pool: &Pool, seq: i64) -> usize {
    pool.references()
        .iter()
        .map(|i| {
            let limit = if i.max_message_bytes > 0 {
                i.max_message_bytes
            } else {
                4 << 20
            };
            let per_sequence = (seq.max(1) * i.num_logits.max(1) * 4) as u64;
            (limit * 9 / 10 / per_sequence) as usize
        })
        .min()
        .unwrap_or(1)
        .max(1)
}

/// The largest batch every group's reference teacher accepts, at most `wanted` (and at least 1).
pub(crate) fn batch_size_for(pool: &Pool, wanted: usize) -> usize {
    pool.references()
        .iter()
        .map(|i| i.max_batch_size as usize)
        .filter(|&m| m > 0)
        .fold(wanted, usize::min)
        .max(1)
}
