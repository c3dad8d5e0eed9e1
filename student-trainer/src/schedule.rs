//! The batch schedule of a run: which samples go into which batch of which epoch, and the seed
//! of each batch's random draws ([`step_seed`]).
//!
//! The schedule is a pure function of (seed, epoch, dataset size, batch size), via
//! [`crate::data::epoch_permutation`]. Both sides of `distill` compute it independently: the client
//! sends the teacher the batches in schedule order, and the training loop checks that every batch
//! of teacher logits it receives is the one it expects (same epoch, position and sample indices)
//! before training on it. Resuming needs no RNG state: the position is enough (the step seeds
//! are a pure function of it too).

use crate::data::{SPLITMIX64_GAMMA, epoch_permutation, splitmix64_mix};
use tch::Tensor;

/// One batch of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBatch {
    /// Epoch, counted from 0.
    pub epoch: u64,
    /// Position of the batch within its epoch, from 0.
    pub index: usize,
    /// Dataset indices of its samples, in order (length ≤ batch size; the last batch of an epoch
    /// may be short).
    pub indices: Vec<i64>,
}

/// A planned batch with its inputs made for one model: a view of an image folder's images,
/// cropped and resized for the model that receives it (see [`crate::images`]), or token
/// sequences made for it (an on-policy batch: prompts and the student's completions).
#[derive(Debug)]
pub struct ViewedBatch {
    /// The batch.
    pub batch: PlannedBatch,
    /// Its samples in that model's view, `f32 [batch.indices.len(), C, H, W]`, or token ids
    /// `i64 [batch.indices.len(), S]` (any `S` up to the teacher's context), CPU.
    pub inputs: Tensor,
    /// For token ids: `i64 [B, S]`, 1 for a real token and 0 for right padding (`None`: every
    /// token is real).
    pub attention_mask: Option<Tensor>,
    /// Token ids whose teacher log-probabilities the batch asks for, `i64 [B, S, m]` (see
    /// `LogitsRequest.gather_ids`); they come back in [`crate::soft_targets::TeacherBatch::gathered`].
    pub gather_ids: Option<Tensor>,
    /// The temperature `T` of this batch's request (top-k tail and gathered log-probabilities),
    /// when it is not the run's.
    pub temperature: Option<f64>,
}

impl ViewedBatch {
    /// `inputs` made for `batch`, with no attention mask and nothing gathered.
    pub fn new(batch: PlannedBatch, inputs: Tensor) -> ViewedBatch {
        ViewedBatch {
            batch,
            inputs,
            attention_mask: None,
            gather_ids: None,
            temperature: None,
        }
    }
}

/// A position in the schedule: the next batch to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// Epoch, from 0.
    pub epoch: u64,
    /// Batch within the epoch, from 0.
    pub batch: usize,
}

/// The batches of one epoch, in order: the epoch's permutation of `0..n` cut into runs of
/// `batch_size` (the last one may be shorter).
pub fn epoch_plan(seed: u64, epoch: u64, n: usize, batch_size: usize) -> Vec<PlannedBatch> {
    chunked(epoch, &epoch_permutation(seed, epoch, n), batch_size)
}

/// `0..n` in order, cut into batches of `batch_size` (the last one may be shorter), as epoch 0:
/// the plan of an evaluation pass.
pub fn sequential_plan(n: usize, batch_size: usize) -> Vec<PlannedBatch> {
    let order: Vec<i64> = (0..n as i64).collect();
    chunked(0, &order, batch_size)
}

fn chunked(epoch: u64, order: &[i64], batch_size: usize) -> Vec<PlannedBatch> {
    order
        .chunks(batch_size.max(1))
        .enumerate()
        .map(|(index, c)| PlannedBatch {
            epoch,
            index,
            indices: c.to_vec(),
        })
        .collect()
}

/// Number of batches in one epoch of `n` samples.
pub fn batches_per_epoch(n: usize, batch_size: usize) -> usize {
    n.div_ceil(batch_size.max(1))
}

/// All batches from `start` up to the end of epoch `epochs - 1`, lazily (one epoch's
/// permutation in memory at a time).
pub fn run_plan(
    seed: u64,
    n: usize,
    batch_size: usize,
    start: Position,
    epochs: u64,
) -> impl Iterator<Item = PlannedBatch> + Send + 'static {
    (start.epoch..epochs).flat_map(move |epoch| {
        let skip = if epoch == start.epoch { start.batch } else { 0 };
        epoch_plan(seed, epoch, n, batch_size)
            .into_iter()
            .skip(skip)
    })
}

/// Tag of the step seeds' SplitMix64 stream (the fractional part of √3, SHA-512's second initial
/// word): keeps [`step_seed`] apart from the other hashes of the run seed (the sample order of
/// [`crate::data::epoch_permutation`], tagged with √2's, and the ensemble's group draws).
const STEP_STREAM: u64 = 0xbb67_ae85_84ca_a73b;

/// The seed of libtorch's generator for the optimizer step on batch `index` of `epoch`: every
/// random draw of that step (dropout masks, and any sampling a student kind adds) comes from a
/// generator seeded with it just before the step, so a step's randomness is a pure function of
/// (seed, epoch, index) and does not depend on the steps before it. A run resumed at any batch,
/// mid-epoch included, then draws exactly what the uninterrupted run drew: the checkpoint needs
/// no generator state.
///
/// SplitMix64 (Steele, Lea & Flood 2014), as [`crate::data::epoch_permutation`] keys its
/// epochs: `e = mix(mix(seed ^ STEP_STREAM) + epoch)`, then `mix(e + (index + 1) · γ)` with γ
/// SplitMix64's odd increment (the `index`-th output of the epoch's SplitMix64 sequence), its
/// top bit cleared (libtorch takes an `i64`). Distinct batches of an epoch get distinct 64-bit
/// values (`mix` is a bijection, `γ` odd), epochs unrelated ones, and none is the
/// initialisation's seed (`seed` itself) but by a 2⁻⁶³ chance.
pub fn step_seed(seed: u64, epoch: u64, index: usize) -> i64 {
    let epoch_key = splitmix64_mix(splitmix64_mix(seed ^ STEP_STREAM).wrapping_add(epoch));
    let z = epoch_key.wrapping_add(
        (index as u64)
            .wrapping_add(1)
            .wrapping_mul(SPLITMIX64_GAMMA),
    );
    (splitmix64_mix(z) as i64) & i64::MAX
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_plan_covers_every_sample_in_order() {
        let plan = sequential_plan(7, 3);
        let cuts: Vec<Vec<i64>> = plan.iter().map(|b| b.indices.clone()).collect();
        assert_eq!(cuts, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
        assert!(
            plan.iter()
                .enumerate()
                .all(|(i, b)| b.index == i && b.epoch == 0)
        );
    }

    #[test]
    fn an_epoch_covers_every_sample_once_in_batches() {
        let plan = epoch_plan(3, 0, 10, 4);
        assert_eq!(
            plan.iter().map(|b| b.indices.len()).collect::<Vec<_>>(),
            [4, 4, 2]
        );
        let mut all: Vec<i64> = plan.iter().flat_map(|b| b.indices.clone()).collect();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<i64>>());
        assert_eq!(batches_per_epoch(10, 4), 3);
    }

    #[test]
    fn a_resumed_plan_is_the_tail_of_the_straight_plan() {
        let straight: Vec<_> = run_plan(5, 9, 2, Position::default(), 3).collect();
        assert_eq!(straight.len(), 15);
        let resumed: Vec<_> = run_plan(5, 9, 2, Position { epoch: 1, batch: 2 }, 3).collect();
        assert_eq!(resumed[..], straight[7..]);
        assert_ne!(epoch_plan(5, 0, 9, 2), epoch_plan(5, 1, 9, 2));
    }

    #[test]
    fn step_seeds_differ_by_step_and_are_non_negative() {
        let s: Vec<i64> = (0..3)
            .flat_map(|e| (0..50).map(move |i| step_seed(0, e, i)))
            .collect();
        assert!(s.iter().all(|x| *x >= 0));
        let mut distinct = s.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), s.len(), "two steps share a seed");
        // A pure function of (seed, epoch, index): what a resumed run recomputes.
        assert_eq!(step_seed(1, 2, 3), step_seed(1, 2, 3));
        assert_ne!(step_seed(1, 2, 3), step_seed(2, 2, 3));
        // Not the initialisation's stream (seeded with the run seed itself).
        assert!((0..100).all(|seed| step_seed(seed, 0, 0) != seed as i64));
        // Pinned: checkpoints resume with the same dropout streams across versions.
        assert_eq!(step_seed(0, 0, 0), 5_882_057_413_383_444_406);
        assert_eq!(step_seed(7, 3, 11), 7_330_260_511_895_188_981);
    }
}
