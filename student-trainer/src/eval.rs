//! Accuracy, overall and per class, and the accuracy of a local network on a dataset (normally
//! the test split). Used by the training loop every epoch: no network module here (remote
//! teachers are evaluated by [`crate::teacher_eval`], through the pool).

use crate::data::Dataset;
use distill_models::Model;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use tch::{Device, Kind, Tensor};

/// Correct and total counts, overall and per class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accuracy {
    /// Samples classified correctly.
    pub correct: u64,
    /// Samples evaluated.
    pub total: u64,
    /// Per class `c`: `(correct, total)` among samples labelled `c` (empty for a language
    /// model: its classes are the vocabulary).
    pub per_class: Vec<(u64, u64)>,
    /// A language model: the summed negative log-likelihood (nats) of the `total` real tokens'
    /// next tokens, from which [`Accuracy::perplexity`] follows; `None` for a classifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll: Option<f64>,
}

impl Accuracy {
    /// Empty counts for `num_classes` classes.
    pub fn new(num_classes: i64) -> Accuracy {
        Accuracy {
            correct: 0,
            total: 0,
            per_class: vec![(0, 0); num_classes.max(0) as usize],
            nll: None,
        }
    }

    /// Empty counts for a language model's next-token predictions.
    pub fn tokens() -> Accuracy {
        Accuracy {
            correct: 0,
            total: 0,
            per_class: Vec::new(),
            nll: Some(0.0),
        }
    }

    /// A language model's perplexity `exp(nll / total)` over the evaluated tokens (Jelinek et
    /// al. 1977; the exponential of the mean next-token cross-entropy in nats); `None` for a
    /// classifier or when nothing was evaluated.
    pub fn perplexity(&self) -> Option<f64> {
        self.nll
            .filter(|_| self.total > 0)
            .map(|nll| (nll / self.total as f64).exp())
    }

    /// Adds a batch of next-token predictions: `logits` `[B, S, V]` against `labels` `i64
    /// [B, S]`; positions labelled [`crate::data::IGNORE_INDEX`] are skipped. Counts top-1 hits
    /// and sums the negative log-likelihood.
    ///
    /// # Errors
    /// Libtorch errors (e.g. mismatched shapes).
    pub fn add_tokens(&mut self, logits: &Tensor, labels: &Tensor) -> Result<(), tch::TchError> {
        let v = logits.size().last().copied().unwrap_or(0);
        let flat = logits.f_reshape([-1, v])?.f_to_kind(Kind::Float)?;
        let labels = labels.f_reshape([-1])?.f_to_device(flat.device())?;
        let real = labels.f_ne(crate::data::IGNORE_INDEX)?;
        let nll = flat
            .f_cross_entropy_loss::<Tensor>(
                &labels,
                None,
                tch::Reduction::Sum,
                crate::data::IGNORE_INDEX,
                0.0,
            )?
            .f_double_value(&[])?;
        let hits = flat
            .f_argmax(-1, false)?
            .f_eq_tensor(&labels)?
            .f_logical_and(&real)?
            .f_sum(Kind::Int64)?
            .f_int64_value(&[])?;
        self.correct += hits as u64;
        self.total += real.f_sum(Kind::Int64)?.f_int64_value(&[])? as u64;
        self.nll = Some(self.nll.unwrap_or(0.0) + nll);
        Ok(())
    }

    /// Fraction correct, in [0, 1] (0 when nothing was evaluated).
    pub fn fraction(&self) -> f64 {
        if self.total == 0 {
            0.0
        } else {
            self.correct as f64 / self.total as f64
        }
    }

    /// Per-class fractions, in [0, 1] (0 for classes without samples).
    pub fn per_class_fractions(&self) -> Vec<f64> {
        self.per_class
            .iter()
            .map(|&(c, t)| if t == 0 { 0.0 } else { c as f64 / t as f64 })
            .collect()
    }

    /// Adds a batch: `logits` `[B, C]` (any float kind, any device) against `labels` `i64 [B]`.
    ///
    /// # Errors
    /// Libtorch errors (e.g. mismatched batch sizes).
    pub fn add(&mut self, logits: &Tensor, labels: &Tensor) -> Result<(), tch::TchError> {
        let pred = logits.f_argmax(-1, false)?.f_to_device(Device::Cpu)?;
        let labels = labels.f_to_device(Device::Cpu)?.f_to_kind(Kind::Int64)?;
        let pred: Vec<i64> = Vec::try_from(&pred)?;
        let labels: Vec<i64> = Vec::try_from(&labels)?;
        if pred.len() != labels.len() {
            return Err(tch::TchError::Shape(format!(
                "{} predictions for {} labels",
                pred.len(),
                labels.len()
            )));
        }
        for (p, y) in pred.into_iter().zip(labels) {
            let hit = (p == y) as u64;
            self.correct += hit;
            self.total += 1;
            if let Some(c) = usize::try_from(y)
                .ok()
                .and_then(|y| self.per_class.get_mut(y))
            {
                c.0 += hit;
                c.1 += 1;
            }
        }
        Ok(())
    }

    /// A table: one row per class, then the overall accuracy.
    pub fn table(&self, title: &str) -> String {
        let mut s = format!("{title}\n  class   correct   total   accuracy\n");
        for (c, &(k, t)) in self.per_class.iter().enumerate() {
            let f = if t == 0 { 0.0 } else { k as f64 / t as f64 };
            let _ = writeln!(s, "  {c:>5}  {k:>8}  {t:>6}   {:>7.2} %", 100.0 * f);
        }
        let _ = writeln!(
            s,
            "  {:>5}  {:>8}  {:>6}   {:>7.2} %",
            "all",
            self.correct,
            self.total,
            100.0 * self.fraction()
        );
        s
    }

    /// JSON: `{"accuracy", "correct", "total", "per_class": [fraction, ...]}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "accuracy": self.fraction(),
            "correct": self.correct,
            "total": self.total,
            "per_class": self.per_class_fractions(),
        })
    }
}

/// The most logits one evaluation forward pass may produce: 2^25 values (128 MiB in f32).
/// A classifier's 10 classes never reach it; a language model's `[batch, seq, vocab]` logits
/// do (one sequence of 128 tokens over 8,192 token ids is 2^20 values), so its evaluation
/// batch shrinks to stay under this much memory.
pub(crate) const EVAL_LOGITS_PER_BATCH: i64 = 1 << 25;

/// Samples per evaluation forward pass on `data`: `max_batch`, lowered so that the batch's
/// logits (`num_classes` per sample, `seq × vocab` per sequence) stay within
/// [`EVAL_LOGITS_PER_BATCH`]; at least 1.
pub(crate) fn eval_batch_size(data: &Dataset, max_batch: usize) -> i64 {
    let per_sample = if data.is_tokens() {
        data.inputs.size().get(1).copied().unwrap_or(1) * data.num_classes
    } else {
        data.num_classes
    };
    (EVAL_LOGITS_PER_BATCH / per_sample.max(1)).clamp(1, max_batch.max(1) as i64)
}

/// Accuracy of `net` (eval mode, no grad: a TorchScript student is switched to `eval()`) on `data`, in batches of at most `max_batch` samples
/// (fewer where the logits would pass [`EVAL_LOGITS_PER_BATCH`]: see [`eval_batch_size`]); for
/// a language-model dataset, next-token top-1 accuracy over the real positions and perplexity.
///
/// # Errors
/// Model or libtorch errors.
pub(crate) fn evaluate(
    net: &Model,
    data: &Dataset,
    device: Device,
    max_batch: usize,
) -> Result<Accuracy, distill_models::ModelError> {
    let _guard = tch::no_grad_guard();
    let tokens = data.is_tokens();
    let mut acc = if tokens {
        Accuracy::tokens()
    } else {
        Accuracy::new(data.num_classes)
    };
    let n = data.len() as i64;
    let bs = eval_batch_size(data, max_batch);
    let mut start = 0;
    while start < n {
        let len = bs.min(n - start);
        let xs = data.inputs.f_narrow(0, start, len)?.f_to_device(device)?;
        let ys = data.labels.f_narrow(0, start, len)?;
        let logits = net.forward(&xs, false)?;
        if tokens {
            acc.add_tokens(&logits, &ys)?;
        } else {
            acc.add(&logits, &ys)?;
        }
        start += len;
    }
    Ok(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_overall_and_per_class() {
        let logits =
            Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0]).reshape([4, 2]);
        let labels = Tensor::from_slice(&[0i64, 1, 1, 1]);
        let mut a = Accuracy::new(2);
        a.add(&logits, &labels).unwrap();
        assert_eq!((a.correct, a.total), (3, 4));
        assert_eq!(a.per_class, vec![(1, 1), (2, 3)]);
        assert_eq!(a.fraction(), 0.75);
        let t = a.table("x");
        assert!(t.contains("75.00 %") && t.contains("66.67 %"), "{t}");
        assert_eq!(a.to_json()["accuracy"], 0.75);
    }

    fn dataset(inputs: Tensor, labels: Tensor, num_classes: i64) -> Dataset {
        Dataset {
            inputs,
            labels,
            num_classes,
            tokenizer_fingerprint: None,
            normalization: None,
        }
    }

    #[test]
    fn evaluation_batches_shrink_with_the_logits_of_a_sample() {
        let images = dataset(
            Tensor::zeros([3, 1, 28, 28], (Kind::Float, Device::Cpu)),
            Tensor::zeros([3], (Kind::Int64, Device::Cpu)),
            10,
        );
        assert_eq!(eval_batch_size(&images, 1000), 1000);
        assert_eq!(eval_batch_size(&images, 0), 1);
        let tokens = |seq: i64, vocab: i64| {
            let ids = Tensor::zeros([2, seq], (Kind::Int64, Device::Cpu));
            dataset(ids.shallow_clone(), ids, vocab)
        };
        // make demo-lm's evaluation: 128 positions × 8,192 ids = 2^20 logits per sequence, so 32
        // sequences (128 MiB of f32 logits) per pass instead of 1,000 (4.2 GB).
        assert_eq!(eval_batch_size(&tokens(128, 8192), 1000), 32);
        assert_eq!(eval_batch_size(&tokens(128, 8192), 16), 16);
        // A single sequence over the limit still runs, alone.
        assert_eq!(eval_batch_size(&tokens(4096, 152_064), 1000), 1);
    }

    #[test]
    fn a_language_model_evaluates_the_same_in_any_batch_size() {
        tch::manual_seed(5);
        let (seq, vocab) = (6, 12);
        let vs = tch::nn::VarStore::new(Device::Cpu);
        let spec = distill_models::ArchSpec {
            arch: "lm:layers=1,d=8,heads=2".parse().unwrap(),
            input_shape: vec![seq],
            num_classes: vocab,
        };
        let net = distill_models::Network::new(&vs.root(), &spec).unwrap();
        let ids = Tensor::randint(vocab, [5, seq], (Kind::Int64, Device::Cpu));
        let labels = ids.roll([-1i64].as_slice(), [1i64].as_slice());
        let _ = labels
            .narrow(1, seq - 1, 1)
            .fill_(crate::data::IGNORE_INDEX);
        let data = dataset(ids, labels, vocab);
        let net = Model::Builtin(net);
        let whole = evaluate(&net, &data, Device::Cpu, 1000).unwrap();
        let ones = evaluate(&net, &data, Device::Cpu, 1).unwrap();
        let twos = evaluate(&net, &data, Device::Cpu, 2).unwrap();
        assert_eq!(whole.total, 5 * (seq as u64 - 1));
        for other in [&ones, &twos] {
            assert_eq!((other.correct, other.total), (whole.correct, whole.total));
            let (a, b) = (other.nll.unwrap(), whole.nll.unwrap());
            assert!((a - b).abs() <= 1e-5 * b, "nll {a} vs {b}");
        }
    }

    #[test]
    fn next_token_accuracy_and_perplexity_skip_ignored_positions() {
        // [1, 3, 2]: position 0 predicts class 0 (p = e/(e+1)), position 1 class 1 (label 0:
        // wrong, p = 1/(e+1)), position 2 is ignored (its logits are garbage).
        let logits = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0, f32::NAN, 5.0]).reshape([1, 3, 2]);
        let labels = Tensor::from_slice(&[0i64, 0, crate::data::IGNORE_INDEX]).reshape([1, 3]);
        let mut a = Accuracy::tokens();
        a.add_tokens(&logits, &labels).unwrap();
        assert_eq!((a.correct, a.total), (1, 2));
        let e = std::f64::consts::E;
        let nll = -(e / (e + 1.0)).ln() - (1.0 / (e + 1.0)).ln();
        assert!((a.nll.unwrap() - nll).abs() < 1e-5, "{:?} vs {nll}", a.nll);
        let ppl = (nll / 2.0).exp();
        assert!((a.perplexity().unwrap() - ppl).abs() < 1e-4);
        assert_eq!(Accuracy::new(3).perplexity(), None);
    }
}
