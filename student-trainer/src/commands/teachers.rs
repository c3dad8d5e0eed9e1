//! A command's teachers: the pool connected from the teacher flags (what the data and student
//! expect of them is checked there, once per admitted replica), their size, and the accuracy of
//! remote teachers (one replica or many, one group or an ensemble) streamed through the pool
//! with its failover.

use super::error::AppError;
use super::views::{self, Cut};
use crate::config::TeacherConfig;
use crate::data::Dataset;
use crate::eval::Accuracy;
use crate::outputs::monitoring::StudentMetrics;
use crate::schedule::sequential_plan;
use crate::soft_targets::TeacherBatch;
use crate::teachers::pool::RunTargets;
use crate::teachers::{Expect, Pool, TeacherInfo};
use distill_models::{Arch, ArchSpec, Network};
use tch::{Device, nn};
use tokio::sync::mpsc;

/// Connects to the teachers of `cfg`, each admitted replica checked against `expect`.
///
/// # Errors
/// [`AppError::Security`] for a TLS or token file that cannot be used; [`AppError::Pool`] when
/// no replica of a group is reachable or a teacher does not fit.
pub(crate) async fn connect(
    cfg: &TeacherConfig,
    expect: Expect,
    metrics: Option<StudentMetrics>,
) -> Result<Pool, AppError> {
    let options = cfg.pool_options(metrics)?;
    Ok(Pool::connect(cfg.groups.clone(), options, expect).await?)
}

/// Parameter count of `spec`, built on the CPU without keeping it.
///
/// # Errors
/// [`distill_models::ModelError::InputShape`] when the architecture cannot take the input shape.
pub(crate) fn params_of(spec: &ArchSpec) -> Result<i64, distill_models::ModelError> {
    let vs = nn::VarStore::new(Device::Cpu);
    Network::new(&vs.root(), spec)?;
    Ok(distill_models::arch::param_count(&vs))
}

/// Parameters of a teacher described by `info` when its name is a built-in architecture.
pub(crate) fn info_params(info: &TeacherInfo) -> Option<i64> {
    let arch: Arch = info.name.parse().ok()?;
    params_of(&ArchSpec {
        arch,
        input_shape: info.input_shape.clone(),
        num_classes: info.num_logits,
    })
    .ok()
}

/// The summed parameters of `teachers` (`None` when any is not a built-in architecture).
pub(crate) fn total_params<'a>(teachers: impl IntoIterator<Item = &'a TeacherInfo>) -> Option<i64> {
    teachers
        .into_iter()
        .map(info_params)
        .try_fold(0i64, |acc, p| p.map(|p| acc + p))
}

/// Accuracy of the pool's teacher (the ensemble's mixture at temperature `temperature`, for
/// several groups) on `data` (a language-model dataset: next-token top-1 accuracy and
/// perplexity from the full logits at every position), sent in order in batches of
/// `batch_size` samples (at least 1; the caller keeps it within the teachers' maximum batch
/// size). Always asks for dense `f32` logits, whatever the training run used. With `views`
/// (an image folder whose teacher takes another view than `data`'s inputs), the teacher's
/// view of each batch is cut from that store by a loader thread instead.
///
/// # Errors
/// [`AppError::Pool`] from the pool; [`AppError::Torch`] while counting; the loader's
/// [`AppError::Images`].
pub(crate) async fn evaluate_pool(
    pool: &mut Pool,
    data: &Dataset,
    batch_size: usize,
    temperature: f64,
    views: Option<Cut>,
) -> Result<Accuracy, AppError> {
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
    let targets = RunTargets::dense_f32(temperature);
    let mut feed = match views {
        Some(cut) => Some(views::start(plan.clone(), cut.teacher_only(4))?),
        None => None,
    };
    let streamed = async {
        match feed.as_mut().and_then(|f| f.teacher.take()) {
            Some(made) => pool.run_views(made, targets, tx).await,
            None => {
                pool.run(plan, data.inputs.shallow_clone(), targets, tx)
                    .await
            }
        }
    };
    let (streamed, counted) = tokio::join!(streamed, count);
    if let Some(feed) = feed {
        feed.finish().await?;
    }
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
