//! One optimizer step: a batch's forward pass, its loss for the run's objective, the backward
//! pass and the update.
//!
//! Every step of every student kind goes through [`Stepper::step`], which first seeds libtorch's
//! generator with [`step_seed`]`(seed, epoch, index)`: whatever the step draws (dropout masks, a
//! student's own sampling) is a function of its place in the schedule alone, so a run resumed at
//! any batch repeats the uninterrupted run's draws. A student kind that draws from a generator of
//! its own must seed it from the same value.

use super::error::TrainError;
use super::job::{LabelPolicy, Objective};
use super::student::Student;
use crate::data::{Dataset, IGNORE_INDEX};
use crate::loss;
use crate::on_policy::OnPolicyEstimator;
use crate::optim::Optimizer;
use crate::schedule::{PlannedBatch, step_seed};
use crate::soft_targets::SoftTargets;
use tch::{Device, Kind, Tensor};

/// What one step trained on: a batch of the plan and what came for it.
#[derive(Debug)]
pub(crate) struct StepInput<'a> {
    /// Its epoch.
    pub(crate) epoch: u64,
    /// The batch.
    pub(crate) planned: &'a PlannedBatch,
    /// The soft targets (`None` for supervised training).
    pub(crate) targets: Option<SoftTargets>,
    /// The teacher's hint feature (`distill --hint`).
    pub(crate) hint: Option<Tensor>,
    /// The step belongs to the hint stage (the hint is the whole loss).
    pub(crate) hint_stage: bool,
    /// Optimizer steps of the stage (its learning-rate schedule runs over them).
    pub(crate) stage_steps: u64,
    /// The batch's inputs when they were made for it (an image folder's augmented views,
    /// `f32 [B, C, H, W]`; an on-policy run's sequences, `i64 [B, S]`, the student's own or the
    /// dataset's rows cut to their labelled width); `None`: the dataset's rows.
    pub(crate) inputs: Option<Tensor>,
    /// The labels of made inputs when they are not the dataset's rows of the batch (an on-policy
    /// run's sequences: `i64 [B, S]`, the completion's next tokens, else `IGNORE_INDEX`).
    pub(crate) labels: Option<Tensor>,
    /// An on-policy batch (`distill --on-policy`): its loss.
    pub(crate) on_policy: Option<OnPolicyStep>,
}

/// The loss of an on-policy batch: the soft term alone (the student's own tokens are no
/// ground truth), as the run's divergence or the sampled-token estimator.
#[derive(Debug)]
pub(crate) struct OnPolicyStep {
    /// The estimator.
    pub(crate) estimator: OnPolicyEstimator,
    /// The teacher's log-probabilities of the sampled tokens, `f32 [B, S, 1]` (for
    /// [`OnPolicyEstimator::K1`]).
    pub(crate) gathered: Option<Tensor>,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepOutput {
    /// The loss that was minimised.
    pub(crate) loss: f64,
    /// Its soft-target (distillation) term.
    pub(crate) soft: f64,
    /// Its hard-label (cross-entropy) term.
    pub(crate) hard: f64,
    /// The hint loss, when there is a hint.
    pub(crate) hint: Option<f64>,
    /// Top-1 hits of the training-mode logits.
    pub(crate) correct: i64,
    /// What the loss averages over: samples, or a language model's real tokens.
    pub(crate) units: usize,
    /// Samples in the batch.
    pub(crate) samples: usize,
    /// The learning rate of the update.
    pub(crate) lr: f64,
    /// The gradients' total norm before clipping, when it was computed.
    pub(crate) grad_norm: Option<f64>,
}

/// What every step of a run shares.
#[derive(Debug)]
pub(crate) struct Stepper<'a> {
    /// The network (and hint regressor) being trained.
    pub(crate) student: &'a Student,
    /// The run's objective.
    pub(crate) objective: &'a Objective,
    /// The training split.
    pub(crate) train: &'a Dataset,
    /// The network's device.
    pub(crate) device: Device,
    /// The run's seed: each step's draws come from [`step_seed`] of it.
    pub(crate) seed: u64,
}

impl Stepper<'_> {
    /// Trains `opt`'s parameters on one batch, after seeding libtorch's generator (CPU and CUDA)
    /// with the batch's [`step_seed`].
    ///
    /// # Errors
    /// [`TrainError::NonFinite`] when the loss is NaN or infinite (nothing is updated);
    /// [`TrainError::Hint`] for a hint stage without a hint or a missing teacher feature;
    /// [`TrainError::Torch`] / [`TrainError::Optim`] for libtorch and optimizer failures.
    pub(crate) fn step(
        &self,
        opt: &mut Optimizer,
        input: StepInput<'_>,
    ) -> Result<StepOutput, TrainError> {
        let planned = input.planned;
        // Before anything the step draws: the draws depend on (seed, epoch, index) alone, never
        // on the steps before, so a mid-epoch resume is exact (see the module docs).
        tch::manual_seed(step_seed(self.seed, input.epoch, planned.index));
        let (xs, ys) = match (input.inputs, input.labels) {
            (Some(xs), Some(ys)) => (xs, ys),
            (Some(xs), None) => {
                let idx = Tensor::from_slice(&planned.indices);
                (xs, self.train.labels.f_index_select(0, &idx)?)
            }
            (None, _) => self.train.try_batch(&planned.indices)?,
        };
        let (xs, ys) = (xs.f_to_device(self.device)?, ys.f_to_device(self.device)?);
        let forward = self.student.forward(&xs, input.hint, || {
            format!("epoch {} batch {}", input.epoch, planned.index)
        })?;
        let (total, soft, hard) = if input.hint_stage {
            // FitNets' stage 1: the hint alone.
            let value = forward
                .hint
                .as_ref()
                .map(|(v, _)| v.shallow_clone())
                .ok_or_else(|| TrainError::Hint("no hint in the hint stage".into()))?;
            (value, 0.0, 0.0)
        } else {
            self.objective_loss(
                &forward.logits,
                (input.targets, input.on_policy.as_ref()),
                &ys,
                planned,
            )?
        };
        let hint_value = forward.hint.as_ref().map(|(v, _)| v.double_value(&[]));
        // After the hint stage, the hint keeps `--hint-weight` (0: none).
        let total = match &forward.hint {
            Some((v, w)) if !input.hint_stage && *w > 0.0 => total.f_add(&v.f_mul_scalar(*w)?)?,
            _ => total,
        };
        let value = total.double_value(&[]);
        if !value.is_finite() {
            return Err(TrainError::NonFinite {
                value,
                epoch: input.epoch,
                index: planned.index,
            });
        }
        opt.zero_grad();
        total.f_backward()?;
        let stats = opt.step_scheduled(input.stage_steps)?;
        let correct = forward
            .logits
            .f_argmax(-1, false)?
            .f_eq_tensor(&ys)?
            .f_sum(Kind::Int64)?
            .int64_value(&[]);
        // What the loss and accuracy average over: samples, or a language model's real tokens
        // (an IGNORE_INDEX label never equals an argmax, so `correct` needs no mask).
        let units = if self.train.is_tokens() {
            ys.f_ne(IGNORE_INDEX)?.f_sum(Kind::Int64)?.int64_value(&[]) as usize
        } else {
            planned.indices.len()
        };
        Ok(StepOutput {
            loss: value,
            soft,
            hard,
            hint: hint_value,
            correct,
            units,
            samples: planned.indices.len(),
            lr: stats.lr,
            grad_norm: stats.grad_norm,
        })
    }

    /// The loss of the run's objective: the distillation loss against `targets`, or the
    /// cross-entropy on the labels `ys` (over a language model's real positions). Returns the
    /// loss with its soft and hard terms.
    fn objective_loss(
        &self,
        logits: &Tensor,
        (targets, on_policy): (Option<SoftTargets>, Option<&OnPolicyStep>),
        ys: &Tensor,
        planned: &PlannedBatch,
    ) -> Result<(Tensor, f64, f64), TrainError> {
        if let (Objective::Distill { loss, labels, .. }, Some(t)) = (self.objective, targets) {
            let t = t.to_device(self.device)?;
            let mask = match on_policy {
                Some(step) => return self.on_policy_loss(loss, logits, &t, ys, step),
                None => label_mask(*labels, &planned.indices, self.device),
            };
            // A language model's [B, S, V] logits: the loss over its real tokens.
            let parts = loss.compute_targets(logits, &t, ys, mask.as_ref())?;
            return Ok((parts.total, parts.soft, parts.hard));
        }
        let ce = if self.train.is_tokens() {
            // Mean over the real positions (IGNORE_INDEX labels skipped).
            let v = logits.size().last().copied().unwrap_or(0);
            loss::f_cross_entropy(&logits.f_reshape([-1, v])?, &ys.f_reshape([-1])?)?
        } else {
            loss::f_cross_entropy(logits, ys)?
        };
        let v = ce.double_value(&[]);
        Ok((ce, 0.0, v))
    }

    /// The loss of an on-policy batch over its completion positions (`ys`): the soft term
    /// alone, every sequence weighing it by 1 (no cross-entropy on the student's own tokens),
    /// or the sampled-token estimator against the gathered log-probabilities.
    fn on_policy_loss(
        &self,
        loss: &loss::DistillLoss,
        logits: &Tensor,
        targets: &SoftTargets,
        ys: &Tensor,
        step: &OnPolicyStep,
    ) -> Result<(Tensor, f64, f64), TrainError> {
        match (step.estimator, &step.gathered) {
            (OnPolicyEstimator::K1, Some(gathered)) => {
                let logp = gathered.f_select(-1, 0)?.f_to_device(self.device)?;
                let k1 = loss::k1_sampled_loss(logits, ys, &logp, loss.temperature)?;
                Ok((k1.total, k1.k1, 0.0))
            }
            (OnPolicyEstimator::K1, None) => Err(TrainError::Views(
                "--on-policy-estimator k1: the teachers sent no log-probabilities of the sampled \
                 tokens"
                    .into(),
            )),
            (OnPolicyEstimator::Full, _) => {
                let rows = ys.size().first().copied().unwrap_or(0);
                let unlabelled = Tensor::f_zeros([rows], (tch::Kind::Bool, self.device))?;
                let parts = loss.compute_targets(logits, targets, ys, Some(&unlabelled))?;
                Ok((parts.total, parts.soft, parts.hard))
            }
        }
    }
}

/// The `labelled` mask of a batch: `bool [B]` on `device`, or `None` when every sample is
/// labelled.
pub fn label_mask(labels: LabelPolicy, indices: &[i64], device: Device) -> Option<Tensor> {
    match labels {
        LabelPolicy::All => None,
        policy => {
            let marks: Vec<bool> = indices.iter().map(|&i| policy.is_labelled(i)).collect();
            Some(Tensor::from_slice(&marks).to_device(device))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_masks_follow_the_policy() {
        assert!(label_mask(LabelPolicy::All, &[1, 2], Device::Cpu).is_none());
        let m = label_mask(LabelPolicy::First(3), &[5, 0, 2, 3], Device::Cpu).unwrap();
        assert_eq!(
            Vec::<bool>::try_from(&m).unwrap(),
            [false, true, true, false]
        );
        let m = label_mask(LabelPolicy::None, &[0], Device::Cpu).unwrap();
        assert_eq!(Vec::<bool>::try_from(&m).unwrap(), [false]);
    }
}
