//! Soft targets of an ensemble of different teachers (Hinton, Vinyals & Dean 2015, section 2:
//! "an ensemble ... the arithmetic mean of their predicted distributions").
//!
//! Each teacher group `g` answers logits `z_g` (`f32 [batch, num_logits]`). The ensemble's soft
//! target at temperature `T` is the weighted mean of the groups' *probabilities*, not of their
//! logits:
//!
//! ```text
//! p = Σ_g w_g · softmax(z_g / T),   w_g ≥ 0, Σ_g w_g = 1 (weights are normalised)
//! ```
//!
//! The distillation loss takes teacher *logits* and applies `softmax(· / T)` itself, so the
//! mixture is handed over as `T · log p`: `softmax(T · log p / T) = p / Σ p = p` exactly. `p` is
//! clamped below at [`MIN_PROB`] before the logarithm so a class that every teacher rules out
//! gives a finite logit (its probability then differs from 0 by at most `MIN_PROB`). With
//! `--loss mse` the student matches these `T · log p` values.
//!
//! A single group is passed through unchanged (its raw logits), so one teacher behaves exactly as
//! without ensembles.

use crate::data::{SPLITMIX64_GAMMA, splitmix64_mix};
use tch::{Kind, Tensor};

/// How the groups of an ensemble answer a batch (`distill --ensemble-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum EnsembleMode {
    /// Every group answers every batch; their probabilities are mixed ([`mix`]). Needs dense
    /// targets.
    #[default]
    Mix,
    /// One group per batch, drawn with the group weights ([`sample_group`]): one teacher forward
    /// per batch instead of one per group (Blakeney et al. 2022 show single-teacher sampling
    /// keeps the ensemble's benefit). Sparse targets are allowed.
    Sample,
}

impl std::fmt::Display for EnsembleMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EnsembleMode::Mix => "mix",
            EnsembleMode::Sample => "sample",
        })
    }
}

/// The group that answers batch `index` of `epoch` under [`EnsembleMode::Sample`]: group `g`
/// with probability `weights[g] / Σ weights`, drawn from a SplitMix64 hash of
/// `(seed, epoch, index)`, so the choice needs no saved state and repeats exactly on resume.
/// Weights that are all 0 (or none) give group 0.
pub(crate) fn sample_group(seed: u64, epoch: u64, index: usize, weights: &[f64]) -> usize {
    let z = splitmix64_mix(
        seed ^ splitmix64_mix(
            epoch
                .wrapping_mul(SPLITMIX64_GAMMA)
                .wrapping_add(index as u64)
                .wrapping_add(0x5eed_9a0c),
        ),
    );
    // 53 random bits → a uniform draw in [0, 1).
    let u = (z >> 11) as f64 / (1u64 << 53) as f64;
    let total: f64 = weights.iter().sum();
    if weights.is_empty() || total <= 0.0 || !total.is_finite() {
        return 0;
    }
    let mut acc = 0.0;
    for (g, w) in weights.iter().enumerate() {
        acc += w / total;
        if u < acc {
            return g;
        }
    }
    // Rounding left u above the last cumulative sum: the last group with weight.
    weights.iter().rposition(|w| *w > 0.0).unwrap_or(0)
}

/// Smallest mixture probability kept before taking `log p`.
pub(crate) const MIN_PROB: f64 = 1e-30;

/// Why a mixture cannot be formed.
#[derive(Debug, thiserror::Error)]
pub enum MixError {
    /// No parts, or a weight count that differs from the part count.
    #[error("ensemble of {parts} logit tensor(s) with {weights} weight(s)")]
    Arity {
        /// Logit tensors given.
        parts: usize,
        /// Weights given.
        weights: usize,
    },
    /// A weight that is negative or not finite, or weights summing to 0.
    #[error("ensemble weights {0:?}: each must be ≥ 0 and finite, and their sum > 0")]
    Weights(Vec<f64>),
    /// Top-k targets of several groups: only dense logits can be mixed.
    #[error(
        "cannot mix top-k soft targets of several groups (use --ensemble-mode sample with --top-k)"
    )]
    Sparse,
    /// A libtorch failure (e.g. parts of different shapes).
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The logits to train on for one batch answered by every group: `parts[g]` is group `g`'s
/// `f32 [batch, num_logits]`, `weights[g]` its weight (normalised here), `temperature` the
/// distillation temperature `T`. Returns `T · log Σ_g w_g softmax(z_g / T)`,
/// `f32 [batch, num_logits]`; a single part is returned as is.
///
/// # Errors
/// [`MixError`] for mismatched counts, bad weights or shapes.
pub(crate) fn mix(parts: &[Tensor], weights: &[f64], temperature: f64) -> Result<Tensor, MixError> {
    if parts.is_empty() || parts.len() != weights.len() {
        return Err(MixError::Arity {
            parts: parts.len(),
            weights: weights.len(),
        });
    }
    let total: f64 = weights.iter().sum();
    if weights.iter().any(|w| !w.is_finite() || *w < 0.0) || total <= 0.0 || !total.is_finite() {
        return Err(MixError::Weights(weights.to_vec()));
    }
    if parts.len() == 1 {
        return Ok(parts[0].shallow_clone());
    }
    let mut p: Option<Tensor> = None;
    for (z, w) in parts.iter().zip(weights) {
        let q = z
            .f_to_kind(Kind::Double)?
            .f_div_scalar(temperature)?
            .f_softmax(-1, Kind::Double)?
            .f_mul_scalar(w / total)?;
        p = Some(match p {
            None => q,
            Some(acc) => acc.f_add(&q)?,
        });
    }
    let p = p.ok_or(MixError::Arity {
        parts: 0,
        weights: weights.len(),
    })?;
    Ok(p.f_clamp_min(MIN_PROB)?
        .f_log()?
        .f_mul_scalar(temperature)?
        .f_to_kind(Kind::Float)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: &[[f32; 3]]) -> Tensor {
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        Tensor::from_slice(&flat).reshape([rows.len() as i64, 3])
    }

    fn probs(logits: &Tensor, temperature: f64) -> Vec<f64> {
        Vec::<f64>::try_from(
            (logits.to_kind(Kind::Double) / temperature)
                .softmax(-1, Kind::Double)
                .flatten(0, -1),
        )
        .unwrap()
    }

    #[test]
    fn two_groups_give_the_weighted_mean_of_probabilities_by_hand() {
        // Group a: z = [ln 2, 0, 0] at T = 1 → softmax = [0.5, 0.25, 0.25].
        // Group b: z = [0, 0, ln 2]         → softmax = [0.25, 0.25, 0.5].
        // Equal weights: p = [0.375, 0.25, 0.375].
        let ln2 = std::f32::consts::LN_2;
        let a = t(&[[ln2, 0.0, 0.0]]);
        let b = t(&[[0.0, 0.0, ln2]]);
        let m = mix(&[a.shallow_clone(), b.shallow_clone()], &[1.0, 1.0], 1.0).unwrap();
        let p = probs(&m, 1.0);
        for (got, want) in p.iter().zip([0.375, 0.25, 0.375]) {
            assert!((got - want).abs() < 1e-6, "{p:?}");
        }
        // Weights 3:1 (normalised to 0.75, 0.25): p = [0.4375, 0.25, 0.3125].
        let m = mix(&[a, b], &[3.0, 1.0], 1.0).unwrap();
        let p = probs(&m, 1.0);
        for (got, want) in p.iter().zip([0.4375, 0.25, 0.3125]) {
            assert!((got - want).abs() < 1e-6, "{p:?}");
        }
    }

    #[test]
    fn the_mixture_is_taken_at_temperature_t_not_over_logits() {
        // At T = 2: a = [2 ln 2, 0, 0] → softmax(a/2) = [0.5, 0.25, 0.25];
        //           b = [0, 2 ln 3, 0] → softmax(b/2) = [0.2, 0.6, 0.2].
        // p = 0.5·a + 0.5·b = [0.35, 0.425, 0.225], recovered by softmax(out / 2).
        let a = t(&[[2.0 * std::f32::consts::LN_2, 0.0, 0.0]]);
        let b = t(&[[0.0, 2.0 * 3f32.ln(), 0.0]]);
        let m = mix(&[a.shallow_clone(), b.shallow_clone()], &[0.5, 0.5], 2.0).unwrap();
        let p = probs(&m, 2.0);
        for (got, want) in p.iter().zip([0.35, 0.425, 0.225]) {
            assert!((got - want).abs() < 1e-6, "{p:?}");
        }
        // The mean of the logits would give something else: softmax(mean/2) ≠ p.
        let mean_logits = (a + b) / 2.0;
        let wrong = probs(&mean_logits, 2.0);
        assert!((wrong[2] - 0.225).abs() > 0.01, "{wrong:?}");
    }

    #[test]
    fn one_group_passes_its_logits_through_and_bad_weights_are_refused() {
        let a = t(&[[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]]);
        let m = mix(std::slice::from_ref(&a), &[2.0], 4.0).unwrap();
        assert_eq!(
            Vec::<f32>::try_from(m.flatten(0, -1)).unwrap(),
            [1.0, 2.0, 3.0, 0.0, -1.0, 5.0]
        );
        assert!(matches!(
            mix(&[a.shallow_clone()], &[], 1.0),
            Err(MixError::Arity { .. })
        ));
        assert!(matches!(
            mix(&[a.shallow_clone(), a.shallow_clone()], &[1.0, -1.0], 1.0),
            Err(MixError::Weights(_))
        ));
        assert!(matches!(
            mix(&[a.shallow_clone(), a], &[0.0, 0.0], 1.0),
            Err(MixError::Weights(_))
        ));
    }

    #[test]
    fn sampled_groups_follow_the_weights_and_repeat() {
        let weights = [3.0, 1.0];
        let picks: Vec<usize> = (0..4000)
            .map(|i| sample_group(7, i / 100, (i % 100) as usize, &weights))
            .collect();
        let ones = picks.iter().filter(|&&g| g == 1).count() as f64 / picks.len() as f64;
        // Binomial(4000, 0.25): standard deviation ≈ 0.0068; 0.05 is over 7 of them.
        assert!((ones - 0.25).abs() < 0.05, "share of group 1: {ones}");
        let again: Vec<usize> = (0..4000)
            .map(|i| sample_group(7, i / 100, (i % 100) as usize, &weights))
            .collect();
        assert_eq!(
            picks, again,
            "the draw depends on (seed, epoch, index) only"
        );
        let other_seed: Vec<usize> = (0..4000)
            .map(|i| sample_group(8, i / 100, (i % 100) as usize, &weights))
            .collect();
        assert_ne!(picks, other_seed);
        assert!((0..100).all(|i| sample_group(1, 0, i, &[0.0, 2.0]) == 1));
        assert_eq!(sample_group(1, 0, 0, &[0.0, 0.0]), 0);
    }

    #[test]
    fn a_class_every_group_rules_out_stays_finite() {
        let a = t(&[[0.0, 0.0, -1e4]]);
        let b = t(&[[0.0, 0.0, -1e4]]);
        let m = mix(&[a, b], &[1.0, 1.0], 1.0).unwrap();
        let v = Vec::<f32>::try_from(m.flatten(0, -1)).unwrap();
        assert!(v.iter().all(|x| x.is_finite()), "{v:?}");
    }
}
