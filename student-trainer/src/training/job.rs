//! What one run of the loop is given ([`Job`]: settings, data, objective, where to start) and
//! what it gives back ([`Outcome`]).

use super::checkpoint::Start;
use crate::data::{Dataset, TextOptions};
use crate::device::DeviceChoice;
use crate::eval::Accuracy;
use crate::hint::HintPlan;
use crate::images::{ImageOptions, ImageRecord};
use crate::logit_cache::CachePlan;
use crate::loss::DistillLoss;
use crate::optim::OptimizerConfig;
use crate::outputs::metrics::EpochMetrics;
use crate::outputs::monitoring::StudentMetrics;
use crate::schedule::ViewedBatch;
use distill_models::{Arch, ArchSpec};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use tch::Device;
use tokio::sync::mpsc;

/// Settings of a training run, shared by `train` and `distill`.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Device of the trained network (resolved when the run starts).
    pub device: DeviceChoice,
    /// Architecture of the trained network (`mlp` when neither `--arch` nor anything else says;
    /// see [`TrainConfig::arch_given`]).
    pub arch: Arch,
    /// `--arch` was given (without it, `--init`'s checkpoint may name the student).
    pub arch_given: bool,
    /// A TorchScript student file (`--student`) instead of a built-in architecture.
    pub student: Option<PathBuf>,
    /// `--student-logits-output`: the TorchScript student's logits output.
    pub student_logits_output: Option<String>,
    /// `--init DIR`: start from that checkpoint's weights with a fresh optimizer.
    pub init: Option<PathBuf>,
    /// IDX directory, .npz file, or text corpus directory.
    pub data_dir: PathBuf,
    /// How a text corpus becomes sequences (`--seq-len`, `--vocab-size`).
    pub text: TextOptions,
    /// How an image folder becomes tensors (`--image-size`, `--channels`, `--mean`, `--std`,
    /// `--augment`, ...).
    pub images: ImageOptions,
    /// Total epochs to reach (≥ 1).
    pub epochs: u64,
    /// Samples per optimizer step (≥ 1).
    pub batch_size: usize,
    /// Optimizer and its hyper-parameters, learning-rate schedule and gradient clipping.
    pub optimizer: OptimizerConfig,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// Train on the first N samples only.
    pub limit: Option<usize>,
    /// Output directory (checkpoint, metrics.jsonl, report.json).
    pub out: PathBuf,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// libtorch intra-op threads (`None`: libtorch's default).
    pub threads: Option<usize>,
    /// Evaluate on the test split after each epoch.
    pub epoch_eval: bool,
    /// Where to serve Prometheus metrics and `/readyz` (`--metrics-listen`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Test-only (`--stop-after-steps N`): raise the stop flag once this process has taken N
    /// optimizer steps, as a SIGTERM would.
    pub stop_after_steps: Option<u64>,
}

/// Which training samples keep their ground-truth label in `distill` (`--labels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelPolicy {
    /// Every sample: loss `alpha * soft + (1 - alpha) * CE`.
    All,
    /// No sample: soft targets only (alpha is 1), a transfer set without labels (Hinton et al.
    /// 2015, section 2).
    None,
    /// Samples with dataset index `< N` keep their labels; the rest use soft targets only.
    First(u64),
}

impl FromStr for LabelPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(LabelPolicy::All),
            "none" | "0" => Ok(LabelPolicy::None),
            n => n
                .parse::<u64>()
                .map(LabelPolicy::First)
                .map_err(|_| format!("{s:?} is not all, none or a number of samples")),
        }
    }
}

impl fmt::Display for LabelPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelPolicy::All => write!(f, "all"),
            LabelPolicy::None => write!(f, "none"),
            LabelPolicy::First(n) => write!(f, "{n}"),
        }
    }
}

impl LabelPolicy {
    /// Whether the sample with dataset index `index` keeps its ground-truth label.
    pub fn is_labelled(self, index: i64) -> bool {
        match self {
            LabelPolicy::All => true,
            LabelPolicy::None => false,
            LabelPolicy::First(n) => index >= 0 && (index as u64) < n,
        }
    }
}

/// What the loop optimises.
#[derive(Debug, Clone)]
pub enum Objective {
    /// Cross-entropy on the labels.
    Supervised,
    /// Hinton's distillation loss against teacher logits received through the channel.
    Distill {
        /// Loss kind, temperature and alpha.
        loss: DistillLoss,
        /// Which samples keep their labels.
        labels: LabelPolicy,
        /// Fingerprint of the teacher's weights (recorded in the checkpoint).
        teacher_fingerprint: String,
        /// Test-only ledger: one JSON line `{epoch, index, batch_id, replica}` appended per
        /// trained batch.
        batch_ledger: Option<PathBuf>,
        /// Hint distillation (`--hint`): its first `stage_epochs` epochs train on hints alone.
        hint: Option<HintPlan>,
    },
}

impl Objective {
    /// `train` or `distill`, as recorded in the checkpoint.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Objective::Supervised => "train",
            Objective::Distill { .. } => "distill",
        }
    }

    /// The hint plan of a `distill --hint` run.
    pub(crate) fn hint(&self) -> Option<&HintPlan> {
        match self {
            Objective::Distill { hint, .. } => hint.as_ref(),
            Objective::Supervised => None,
        }
    }
}

/// Everything one run of the loop needs. Moved onto the training thread.
#[derive(Debug)]
pub struct Job {
    /// The run's settings.
    pub config: TrainConfig,
    /// Device of the network (resolved).
    pub device: Device,
    /// Network to train.
    pub spec: ArchSpec,
    /// What to optimise.
    pub objective: Objective,
    /// Training samples (CPU).
    pub train: Dataset,
    /// Test split for per-epoch accuracy (`None`: skip).
    pub test: Option<Dataset>,
    /// Where to start.
    pub start: Start,
    /// Raised by Ctrl-C or SIGTERM: save a checkpoint and return.
    pub stop: Arc<AtomicBool>,
    /// The logit cache of a `distill` run, if any.
    pub cache: Option<CachePlan>,
    /// Prometheus metrics to keep up to date (samples, epoch, step, loss, waits), if served.
    pub metrics: Option<StudentMetrics>,
    /// An image folder's part of the run (`None` for other data).
    pub images: Option<ImageJob>,
    /// On-policy distillation (`distill --on-policy`): the student's own batches.
    pub on_policy: Option<super::on_policy::OnPolicyJob>,
}

/// An image folder's part of a run.
#[derive(Debug)]
pub struct ImageJob {
    /// Classes and the student's view, recorded in every checkpoint (`trainer.images`).
    pub record: ImageRecord,
    /// The student's augmented views, made per batch by the loader thread from the run's start
    /// on, in plan order (`None`: the training dataset's inputs, un-augmented).
    pub views: Option<mpsc::Receiver<ViewedBatch>>,
}

/// The result of a run.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Stopped by the stop flag (a checkpoint was saved at the current batch).
    pub interrupted: bool,
    /// Completed epochs.
    pub epochs: u64,
    /// Optimizer steps taken in total.
    pub step: u64,
    /// Samples trained on in this process.
    pub samples: u64,
    /// Samples trained on over the whole run, earlier processes (before `--resume`) included.
    pub samples_total: u64,
    /// The teacher stream ended before the schedule did (e.g. no replica reachable for
    /// `--teacher-wait`): a checkpoint was saved at the first untrained batch.
    pub teacher_gone: bool,
    /// Seconds spent in the loop in this process (excluding per-epoch evaluation).
    pub train_s: f64,
    /// Trainable parameters of the network.
    pub params: i64,
    /// Metrics of the last completed epoch in this process.
    pub last: Option<EpochMetrics>,
    /// Test accuracy of the final weights (when a test split was given).
    pub test: Option<Accuracy>,
    /// The checkpoint directory.
    pub checkpoint: PathBuf,
    /// Seconds the loop waited for soft targets from the teacher channel (time blocked in the
    /// receive; 0 when the targets were ready, and for cached epochs).
    pub waited_s: f64,
    /// Epochs (in this process) whose soft targets came from the logit cache.
    pub cached_epochs: u64,
    /// Seconds the loop waited for the student's per-batch views from the image loader (0 when
    /// the inputs come from the dataset).
    pub data_waited_s: f64,
}

impl Outcome {
    /// The outcome before the first batch of a run starting at `start` with `params` trainable
    /// parameters, checkpointing into `checkpoint`.
    pub(crate) fn starting(start: &Start, params: i64, checkpoint: PathBuf) -> Outcome {
        Outcome {
            interrupted: false,
            epochs: start.position.epoch,
            step: start.step,
            samples: 0,
            samples_total: start.samples_trained,
            teacher_gone: false,
            train_s: 0.0,
            params,
            last: None,
            test: None,
            checkpoint,
            waited_s: 0.0,
            cached_epochs: 0,
            data_waited_s: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_policy_marks_the_first_n_samples() {
        let p = LabelPolicy::First(3);
        let marks: Vec<bool> = (0..5).map(|i| p.is_labelled(i)).collect();
        assert_eq!(marks, [true, true, true, false, false]);
        assert!(LabelPolicy::All.is_labelled(10_000));
        assert!(!LabelPolicy::None.is_labelled(0));
        assert_eq!("1000".parse::<LabelPolicy>().unwrap().to_string(), "1000");
    }
}
