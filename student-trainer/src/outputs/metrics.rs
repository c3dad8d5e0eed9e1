//! Per-epoch metrics, appended as JSON lines to `OUT/metrics.jsonl`.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;

/// File name of the metrics log inside the output directory.
pub(crate) const METRICS_FILE: &str = "metrics.jsonl";

/// Metrics of one epoch (one JSON line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochMetrics {
    /// Epoch number, from 1 (epochs completed after this one).
    pub epoch: u64,
    /// Optimizer steps taken in total after this epoch.
    pub step: u64,
    /// Samples trained on in this epoch (in this process).
    pub samples: u64,
    /// Mean training loss over the epoch's samples.
    pub loss: f64,
    /// Mean soft-target term (0 for supervised training).
    pub soft_loss: f64,
    /// Mean hard-label term (cross-entropy).
    pub hard_loss: f64,
    /// Fraction of training samples classified correctly (in train mode, dropout on), in [0, 1].
    pub train_accuracy: f64,
    /// Test-split accuracy after the epoch, in [0, 1] (absent with --no-epoch-eval).
    pub test_accuracy: Option<f64>,
    /// Training throughput (samples per second of wall time, evaluation excluded).
    pub samples_per_s: f64,
    /// Wall time of the epoch's training (seconds).
    pub wall_s: f64,
    /// A language model: real tokens trained on in this epoch (positions with a next token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    /// A language model: training throughput in real tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_s: Option<f64>,
    /// A language model: test-split perplexity after the epoch (`train_accuracy` and
    /// `test_accuracy` are then next-token top-1 accuracies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_perplexity: Option<f64>,
    /// `distill --hint`: mean hint loss over the epoch (FitNets; included in `loss` in the hint
    /// stage, and weighted by `--hint-weight` after it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint_loss: Option<f64>,
    /// `distill --on-policy`: what the student generated and how far its samples are from the
    /// teacher.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_policy: Option<OnPolicyMetrics>,
}

/// One epoch of on-policy distillation (`metrics.jsonl`'s `on_policy` object).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct OnPolicyMetrics {
    /// `--on-policy`: the probability λ of an on-policy batch.
    pub lambda: f64,
    /// The share of the epoch's batches that were on-policy (in this process), in `[0, 1]`.
    pub on_policy_fraction: f64,
    /// On-policy batches trained in the epoch.
    pub on_policy_batches: u64,
    /// Tokens the student sampled for its on-policy batches (end-of-sequence included).
    pub tokens_generated: u64,
    /// Tokens generated per second of generation (the student's sampling alone).
    pub generation_tokens_per_s: f64,
    /// Mean completion length of the on-policy batches, in tokens.
    pub mean_completion_len: f64,
    /// The share of those completions that ended with the end-of-sequence token, in `[0, 1]`.
    pub eos_share: f64,
    /// Seconds generating, waiting for the teacher's scores of on-policy batches, and training
    /// on them (the step time split).
    pub generate_s: f64,
    /// See [`OnPolicyMetrics::generate_s`].
    pub score_s: f64,
    /// See [`OnPolicyMetrics::generate_s`].
    pub train_s: f64,
    /// On the held-out prompts after the epoch: the teacher-scored per-token reverse KL
    /// `KL(q ‖ p)` of the student's own samples (temperature 1, a fixed seed), estimated as the
    /// mean of `log q(x) − log p(x)` over the sampled tokens with the teacher's log-softmax of
    /// the full row (nats per token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_reverse_kl: Option<f64>,
    /// The held-out completions' mean length (tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_completion_len: Option<f64>,
    /// The share of held-out completions that ended with end-of-sequence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heldout_eos_share: Option<f64>,
}

/// An append-only `metrics.jsonl`.
#[derive(Debug)]
pub(crate) struct MetricsLog {
    file: File,
}

impl MetricsLog {
    /// Opens (creating `dir` and the file if needed) `dir/metrics.jsonl` for appending.
    ///
    /// # Errors
    /// File-system errors.
    pub(crate) fn open(dir: &Path) -> std::io::Result<MetricsLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(METRICS_FILE);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(MetricsLog { file })
    }

    /// Appends one line and flushes it.
    ///
    /// # Errors
    /// File-system errors.
    pub(crate) fn append(&mut self, m: &EpochMetrics) -> std::io::Result<()> {
        let line = serde_json::to_string(m).map_err(std::io::Error::other)?;
        writeln!(self.file, "{line}")?;
        self.file.flush()
    }
}

/// Reads every line of `dir/metrics.jsonl`.
///
/// # Errors
/// File-system errors, or a malformed line.
#[cfg(test)]
pub(crate) fn read(dir: &Path) -> std::io::Result<Vec<EpochMetrics>> {
    let text = std::fs::read_to_string(dir.join(METRICS_FILE))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(std::io::Error::other))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_append_and_read_back() {
        let dir = std::env::temp_dir().join(format!("student-metrics-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let m = EpochMetrics {
            epoch: 1,
            step: 10,
            samples: 1280,
            loss: 0.5,
            soft_loss: 0.4,
            hard_loss: 0.6,
            train_accuracy: 0.8,
            test_accuracy: Some(0.79),
            samples_per_s: 1e4,
            wall_s: 0.128,
            tokens: None,
            tokens_per_s: None,
            test_perplexity: None,
            hint_loss: None,
            on_policy: None,
        };
        MetricsLog::open(&dir).unwrap().append(&m).unwrap();
        let mut m2 = m.clone();
        m2.epoch = 2;
        m2.test_accuracy = None;
        MetricsLog::open(&dir).unwrap().append(&m2).unwrap();
        assert_eq!(read(&dir).unwrap(), vec![m, m2]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
