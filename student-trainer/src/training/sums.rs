//! Running sums of one epoch, turned into its line of `metrics.jsonl`.

use super::step::StepOutput;
use crate::eval::Accuracy;
use crate::outputs::metrics::EpochMetrics;

/// Running sums of one epoch. Losses and accuracy average over units: samples, or a language
/// model's real tokens (`tokens` set).
#[derive(Debug, Default)]
pub(crate) struct Sums {
    samples: usize,
    units: usize,
    tokens: bool,
    loss: f64,
    soft: f64,
    hard: f64,
    correct: i64,
    /// Hint loss summed over units (`distill --hint`), and whether any was added.
    hint: Option<f64>,
}

impl Sums {
    /// Sums of a language model's epoch (units are tokens).
    pub(crate) fn for_tokens(tokens: bool) -> Sums {
        Sums {
            tokens,
            ..Sums::default()
        }
    }

    /// Adds one step's loss terms, hits and hint loss (each a mean over its units).
    pub(crate) fn add(&mut self, step: &StepOutput) {
        let w = step.units as f64;
        self.samples += step.samples;
        self.units += step.units;
        self.loss += step.loss * w;
        self.soft += step.soft * w;
        self.hard += step.hard * w;
        self.correct += step.correct;
        if let Some(hint) = step.hint {
            *self.hint.get_or_insert(0.0) += hint * w;
        }
    }

    /// Samples trained on so far in the epoch.
    pub(crate) fn samples(&self) -> usize {
        self.samples
    }

    pub(crate) fn mean_loss(&self) -> f64 {
        self.loss / (self.units.max(1) as f64)
    }

    pub(crate) fn metrics(
        &self,
        epoch: u64,
        step: u64,
        wall: f64,
        test: Option<&Accuracy>,
    ) -> EpochMetrics {
        let n = self.units.max(1) as f64;
        EpochMetrics {
            tokens: self.tokens.then_some(self.units as u64),
            tokens_per_s: self.tokens.then(|| self.units as f64 / wall.max(1e-9)),
            test_perplexity: test.and_then(Accuracy::perplexity),
            epoch: epoch + 1,
            step,
            samples: self.samples as u64,
            loss: self.loss / n,
            soft_loss: self.soft / n,
            hard_loss: self.hard / n,
            train_accuracy: self.correct as f64 / n,
            test_accuracy: test.map(Accuracy::fraction),
            samples_per_s: self.samples as f64 / wall.max(1e-9),
            wall_s: wall,
            hint_loss: self.hint.map(|h| h / n),
            on_policy: None,
        }
    }
}
