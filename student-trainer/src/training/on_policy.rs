//! The student's side of on-policy distillation (`distill --on-policy LAMBDA`; GKD, Agarwal et
//! al. 2024, Algorithm 1): per batch, the choice between the student's own samples and the
//! data, the sampling, the hand-off of the sequences to the teachers, and after each epoch the
//! teacher-scored reverse KL of the student's samples on held-out prompts.
//!
//! Every batch of such a run is made here and sent to the pool through [`OnPolicyJob::teacher`]
//! in plan order, then its soft targets come back through the ordinary teacher stream, checked
//! against the schedule: replicas, the exactly-once re-send, the fingerprint and tokenizer pins
//! apply unchanged. An on-policy batch is sampled just before its step, with the weights the
//! previous step left (strictly on-policy); its sampling draws come from
//! [`crate::on_policy::sampling_seed`] of the step's seed, so a resumed run samples the same
//! completions.

use super::error::TrainError;
use super::targets::TargetSource;
use crate::data::Dataset;
use crate::on_policy::{
    OnPolicyEstimator, Prompts, SampledBatch, is_on_policy, labelled_width, sampling_seed,
};
use crate::outputs::metrics::OnPolicyMetrics;
use crate::outputs::samples::Sample;
use crate::schedule::{PlannedBatch, ViewedBatch, step_seed};
use distill_models::Model;
use distill_models::generate::SampleOptions;
use std::sync::Arc;
use std::time::Instant;
use tch::{Device, Tensor};
use tokio::sync::mpsc;

/// Turns token ids back into text (the tokenizer's decode), for `samples.jsonl`.
pub type Decoder = Arc<dyn Fn(&[i64]) -> String + Send + Sync>;

/// How a run distills on-policy.
#[derive(Debug, Clone)]
pub struct OnPolicySettings {
    /// The probability λ of an on-policy batch, in `[0, 1]`.
    pub lambda: f64,
    /// How the student samples (`--max-new-tokens`, `--sample-temperature`, `--top-p`, the
    /// end-of-sequence and padding ids).
    pub sample: SampleOptions,
    /// The loss of an on-policy batch (`--on-policy-estimator`).
    pub estimator: OnPolicyEstimator,
    /// Decoded held-out samples kept in `samples.jsonl` per epoch.
    pub samples_per_epoch: usize,
}

/// The on-policy part of a `distill` run.
pub struct OnPolicyJob {
    /// The settings.
    pub settings: OnPolicySettings,
    /// One prompt per training sample (same indices as the training split).
    pub prompts: Prompts,
    /// Held-out prompts for the teacher-scored reverse KL after each epoch (`None`: not
    /// measured).
    pub heldout: Option<Prompts>,
    /// Where every batch's sequences go to the teachers, in plan order.
    pub teacher: mpsc::Sender<ViewedBatch>,
    /// The tokenizer's decode, for `samples.jsonl`.
    pub decode: Option<Decoder>,
}

impl std::fmt::Debug for OnPolicyJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnPolicyJob")
            .field("settings", &self.settings)
            .field("prompts", &self.prompts.len())
            .field("heldout", &self.heldout.as_ref().map(Prompts::len))
            .finish()
    }
}

/// A batch as made for its step: the token ids sent to the teachers and trained on, `i64
/// [B, S]`, with their labels, the next token at completion positions (else `IGNORE_INDEX`).
/// `S` is the batch's own: up to the sampled completions' ends, or up to the dataset rows' last
/// labelled position ([`labelled_width`]).
#[derive(Debug)]
pub(crate) struct Made {
    /// The sequences.
    pub(crate) inputs: Tensor,
    /// Their labels, `i64 [B, S]`.
    pub(crate) labels: Tensor,
    /// Whether the student generated the batch (else: the dataset's rows).
    pub(crate) sampled: bool,
}

impl Made {
    /// The positions of its sequences, `S`.
    pub(crate) fn positions(&self) -> i64 {
        self.inputs.size().get(1).copied().unwrap_or(0)
    }
}

/// An off-policy batch: the dataset's rows `indices` (prompts with their reference
/// completions) and labels, cut after the last position any of them labels
/// ([`labelled_width`]): the teachers score and the student trains on no all-padding tail.
///
/// # Errors
/// libtorch's error (an index outside the dataset).
fn reference_rows(train: &Dataset, indices: &[i64]) -> Result<Made, TrainError> {
    let idx = Tensor::from_slice(indices);
    let labels = train.labels.f_index_select(0, &idx)?;
    let width = labelled_width(&labels)?;
    Ok(Made {
        // Cut, then gathered: one copy of the rows' first `width` positions.
        inputs: train
            .inputs
            .f_narrow(1, 0, width)?
            .f_index_select(0, &idx)?,
        labels: labels.f_narrow(1, 0, width)?.f_contiguous()?,
        sampled: false,
    })
}

/// The loop's on-policy state: the job and the epoch's running sums.
#[derive(Debug)]
pub(crate) struct OnPolicy {
    job: OnPolicyJob,
    sums: EpochSums,
}

/// Running sums of an epoch's on-policy batches.
#[derive(Debug, Default)]
struct EpochSums {
    batches: u64,
    on_policy: u64,
    tokens: u64,
    completions: u64,
    ended: u64,
    generate_s: f64,
    score_s: f64,
    train_s: f64,
}

/// The held-out measurement of an epoch.
#[derive(Debug, Default)]
struct HeldOut {
    kl_sum: f64,
    kl_tokens: i64,
    completions: u64,
    completion_tokens: i64,
    ended: u64,
    samples: Vec<Sample>,
}

impl OnPolicy {
    /// The loop's state for `job`.
    pub(crate) fn new(job: OnPolicyJob) -> OnPolicy {
        OnPolicy {
            job,
            sums: EpochSums::default(),
        }
    }

    /// The run's estimator.
    pub(crate) fn estimator(&self) -> OnPolicyEstimator {
        self.job.settings.estimator
    }

    /// Makes batch `planned` of `epoch` and sends it to the teachers: on-policy (drawn with
    /// probability λ from the schedule), the student's completions of the batch's prompts;
    /// otherwise the dataset's rows (the prompts with their reference completions).
    ///
    /// # Errors
    /// [`TrainError::Model`] / [`TrainError::Torch`] when sampling fails.
    pub(crate) fn send(
        &mut self,
        student: &Model,
        train: &Dataset,
        (seed, device): (u64, Device),
        epoch: u64,
        planned: &PlannedBatch,
    ) -> Result<Made, TrainError> {
        let s = &self.job.settings;
        self.sums.batches += 1;
        if !is_on_policy(seed, epoch, planned.index, s.lambda) {
            let made = reference_rows(train, &planned.indices)?;
            self.hand_over(ViewedBatch::new(
                planned.clone(),
                made.inputs.shallow_clone(),
            ));
            return Ok(made);
        }
        let t = Instant::now();
        tch::manual_seed(sampling_seed(step_seed(seed, epoch, planned.index)));
        let prompts = self.job.prompts.select(&planned.indices)?;
        let batch = sample(student, &prompts, &s.sample, device)?;
        self.sums.generate_s += t.elapsed().as_secs_f64();
        self.sums.on_policy += 1;
        self.sums.tokens += batch.completion_lens.iter().sum::<i64>() as u64;
        self.sums.completions += batch.completion_lens.len() as u64;
        self.sums.ended += batch.ended.iter().filter(|e| **e).count() as u64;
        let mut viewed = ViewedBatch::new(planned.clone(), batch.tokens.shallow_clone());
        viewed.attention_mask = Some(batch.attention_mask.shallow_clone());
        if s.estimator == OnPolicyEstimator::K1 {
            viewed.gather_ids = Some(batch.gather_ids()?);
        }
        self.hand_over(viewed);
        Ok(Made {
            inputs: batch.tokens,
            labels: batch.labels,
            sampled: true,
        })
    }

    /// Sends `viewed` to the pool. A pool that has gone (every replica lost for
    /// `--teacher-wait`) closes the teacher stream too, which the loop then reports.
    fn hand_over(&self, viewed: ViewedBatch) {
        if self.job.teacher.blocking_send(viewed).is_err() {
            tracing::debug!("the teacher pool has stopped taking batches");
        }
    }

    /// Accounts an on-policy batch's wait for its scores and its training step (seconds).
    pub(crate) fn timed(&mut self, score_s: f64, train_s: f64) {
        self.sums.score_s += score_s;
        self.sums.train_s += train_s;
    }

    /// The epoch's on-policy metrics, with the held-out reverse KL measured now (when the run
    /// has held-out prompts) on batches `first_index..` of `epoch` (after the plan's), and the
    /// decoded samples for `samples.jsonl`. Resets the epoch's sums.
    ///
    /// # Errors
    /// As [`OnPolicy::send`]; [`TrainError::Pairing`] for scores of another batch;
    /// [`TrainError::Views`] when the teachers sent no gathered log-probabilities.
    pub(crate) fn end_epoch(
        &mut self,
        student: &Model,
        targets: &mut TargetSource,
        (seed, device): (u64, Device),
        (epoch, first_index, batch_size): (u64, usize, usize),
    ) -> Result<(OnPolicyMetrics, Vec<Sample>), TrainError> {
        let sums = std::mem::take(&mut self.sums);
        let held = match self.job.heldout.is_some() {
            true => self.heldout(
                student,
                targets,
                (seed, device),
                (epoch, first_index, batch_size),
            )?,
            false => None,
        };
        let per = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let m = OnPolicyMetrics {
            lambda: self.job.settings.lambda,
            on_policy_fraction: per(sums.on_policy as f64, sums.batches as f64),
            on_policy_batches: sums.on_policy,
            tokens_generated: sums.tokens,
            generation_tokens_per_s: per(sums.tokens as f64, sums.generate_s),
            mean_completion_len: per(sums.tokens as f64, sums.completions as f64),
            eos_share: per(sums.ended as f64, sums.completions as f64),
            generate_s: sums.generate_s,
            score_s: sums.score_s,
            train_s: sums.train_s,
            heldout_reverse_kl: held.as_ref().map(|h| per(h.kl_sum, h.kl_tokens as f64)),
            heldout_completion_len: held
                .as_ref()
                .map(|h| per(h.completion_tokens as f64, h.completions as f64)),
            heldout_eos_share: held
                .as_ref()
                .map(|h| per(h.ended as f64, h.completions as f64)),
        };
        Ok((m, held.map(|h| h.samples).unwrap_or_default()))
    }

    /// Samples the held-out prompts at temperature 1 (no top-p) from a fixed seed, has the
    /// teachers score every sampled token (their log-softmax of the full row at T = 1), and
    /// sums `log q(x) − log p(x)`. `None` when the teacher stream ends first (no replica
    /// reachable): the epoch is still checkpointed, without the measurement, and the loop
    /// reports the lost teachers at its next batch.
    fn heldout(
        &self,
        student: &Model,
        targets: &mut TargetSource,
        (seed, device): (u64, Device),
        (epoch, first_index, batch_size): (u64, usize, usize),
    ) -> Result<Option<HeldOut>, TrainError> {
        let Some(prompts) = &self.job.heldout else {
            return Ok(None);
        };
        let opts = SampleOptions {
            temperature: 1.0,
            top_p: 1.0,
            ..self.job.settings.sample
        };
        // The same draws every epoch: the curve moves with the weights alone.
        tch::manual_seed(sampling_seed(step_seed(seed, u64::MAX, 0)));
        let mut out = HeldOut::default();
        let n = prompts.len() as i64;
        for (j, start) in (0..n).step_by(batch_size.max(1)).enumerate() {
            let rows: Vec<i64> = (start..(start + batch_size as i64).min(n)).collect();
            let chosen = prompts.select(&rows)?;
            let batch = sample(student, &chosen, &opts, device)?;
            let planned = PlannedBatch {
                epoch,
                index: first_index + j,
                indices: rows.clone(),
            };
            let mut viewed = ViewedBatch::new(planned.clone(), batch.tokens.shallow_clone());
            viewed.attention_mask = Some(batch.attention_mask.shallow_clone());
            viewed.gather_ids = Some(batch.gather_ids()?);
            viewed.temperature = Some(1.0);
            self.hand_over(viewed);
            let Some(scored) = targets.next(epoch, &planned)? else {
                tracing::warn!(
                    epoch = epoch + 1,
                    "the teacher stream ended while scoring the held-out samples: the epoch is \
                     saved without its held-out reverse KL"
                );
                return Ok(None);
            };
            let gathered = scored.gathered.ok_or_else(|| {
                TrainError::Views("the teachers sent no gathered log-probabilities".into())
            })?;
            let logits = {
                let _guard = tch::no_grad_guard();
                student.forward(&batch.tokens.f_to_device(device)?, false)?
            };
            let (sum, count) = crate::on_policy::sampled_reverse_kl(
                &logits,
                &batch.labels.f_to_device(device)?,
                &gathered.f_select(-1, 0)?,
            )?;
            out.kl_sum += sum;
            out.kl_tokens += count;
            out.completions += rows.len() as u64;
            out.completion_tokens += batch.completion_lens.iter().sum::<i64>();
            out.ended += batch.ended.iter().filter(|e| **e).count() as u64;
            self.keep_samples(&mut out.samples, &chosen, &batch, epoch)?;
        }
        Ok(Some(out))
    }

    /// Adds decoded samples of `batch` to `kept` until `--samples-per-epoch` are kept.
    fn keep_samples(
        &self,
        kept: &mut Vec<Sample>,
        prompts: &Prompts,
        batch: &SampledBatch,
        epoch: u64,
    ) -> Result<(), TrainError> {
        let Some(decode) = &self.job.decode else {
            return Ok(());
        };
        let eos = self.job.settings.sample.eos;
        for (b, &p) in prompts.lens.iter().enumerate() {
            if kept.len() >= self.job.settings.samples_per_epoch {
                break;
            }
            let c = batch.completion_lens[b];
            let row = Vec::<i64>::try_from(batch.tokens.f_get(b as i64)?)?;
            let completion: Vec<i64> = row[p as usize..(p + c) as usize]
                .iter()
                .copied()
                .filter(|&t| t != eos)
                .collect();
            kept.push(Sample {
                epoch: epoch + 1,
                prompt: decode(&row[..p as usize]),
                completion: decode(&completion),
                ended_with_eos: batch.ended[b],
                tokens: c,
            });
        }
        Ok(())
    }
}

/// The student's completions of `prompts`, sampled on `device` without gradient.
///
/// # Errors
/// [`TrainError::Model`] when sampling fails; [`TrainError::Torch`] when the labels cannot be
/// made.
fn sample(
    student: &Model,
    prompts: &Prompts,
    opts: &SampleOptions,
    device: Device,
) -> Result<SampledBatch, TrainError> {
    let g = student.sample(&prompts.tokens.f_to_device(device)?, &prompts.lens, opts)?;
    Ok(SampledBatch::new(
        g.tokens,
        &prompts.lens,
        g.completion_lens,
        g.ended,
    )?)
}
