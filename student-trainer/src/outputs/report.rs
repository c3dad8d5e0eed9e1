//! The final report of `distill`: a table on stdout and `OUT/report.json`.

use super::metrics::OnPolicyMetrics;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// File name of the report inside the output directory.
pub(crate) const REPORT_FILE: &str = "report.json";

/// One model in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ModelSummary {
    /// Test-split accuracy, a fraction in [0, 1] (`None` when not evaluated: the teacher of a
    /// run that read every soft target from a logit cache, with no `--teacher`).
    pub accuracy: Option<f64>,
    /// Trainable parameters (`None` when unknown, e.g. a TorchScript teacher).
    pub params: Option<i64>,
    /// Architecture or model name.
    pub name: String,
    /// Per-class test accuracy, fractions in [0, 1] (empty for a language model).
    #[serde(default)]
    pub per_class: Vec<f64>,
    /// A language model's test perplexity (`accuracy` is then next-token top-1 accuracy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
}

/// The report of a distillation run (`report.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Report {
    /// The teacher, evaluated through its server (not evaluated without `--teacher`).
    pub teacher: ModelSummary,
    /// The distilled student.
    pub student: ModelSummary,
    /// The same student trained without distillation (`--baseline`), or null.
    pub baseline: Option<ModelSummary>,
    /// Teacher params / student params (null when the teacher's count is unknown).
    pub compression: Option<f64>,
    /// Distillation throughput: student training samples per second of training wall time.
    pub samples_per_s: f64,
    /// Wall time of the whole `distill` command (seconds).
    pub wall_s: f64,
    /// Epochs completed.
    pub epochs: u64,
    /// Softmax temperature T.
    pub temperature: f64,
    /// Weight of the soft-target term.
    pub alpha: f64,
    /// Soft-target loss (`kl` or `mse`).
    pub loss: String,
    /// The dtype the teacher's logits travelled in (`f32`, `f16`, `bf16`).
    #[serde(default)]
    pub wire: String,
    /// Top-k of the soft targets (0: dense rows).
    #[serde(default)]
    pub top_k: u32,
    /// Tail treatment of the sparse loss (`bucket`, `uniform`, `renorm`; unused when dense).
    #[serde(default)]
    pub sparse_tail: String,
    /// How an ensemble's groups shared batches (`mix` or `sample`).
    #[serde(default)]
    pub ensemble_mode: String,
    /// Label policy (`all`, `none`, or the number of labelled samples).
    pub labels: String,
    /// Training samples per epoch.
    pub train_samples: u64,
    /// Teacher URL.
    pub teacher_url: String,
    /// Teacher weights fingerprint (hex SHA-256; for an ensemble, the groups' joined by `+`).
    pub teacher_fingerprint: String,
    /// Samples the student actually trained on, over the whole run (resumes included); with no
    /// failure of any kind it equals `epochs × train_samples`.
    #[serde(default)]
    pub samples_trained: u64,
    /// Batches (per group) sent again because their replica failed or timed out.
    #[serde(default)]
    pub batches_resent: u64,
    /// Every teacher replica of the run, with the batches it answered.
    #[serde(default)]
    pub replicas: Vec<ReplicaSummary>,
    /// The dtype the teacher computed in (`teacher-server --precision`; for an ensemble, the
    /// groups' joined by `+`).
    #[serde(default)]
    pub teacher_precision: String,
    /// The logit cache directory (`--logit-cache`), or null.
    #[serde(default)]
    pub logit_cache: Option<String>,
    /// Epochs (of this process) whose soft targets came from the logit cache.
    #[serde(default)]
    pub cached_epochs: u64,
    /// Bytes per sample of the logit cache's shards on disk, or null without a cache.
    #[serde(default)]
    pub cache_bytes_per_sample: Option<f64>,
    /// Seconds the optimizer waited for soft targets (blocked on the teacher stream).
    #[serde(default)]
    pub trainer_waited_s: f64,
    /// Seconds batches ready to be sent waited for a free prefetch slot at the teachers (all
    /// replicas had `--prefetch` batches outstanding): the teachers were the bottleneck.
    #[serde(default)]
    pub teacher_backpressure_s: f64,
    /// Hint distillation settings (`--hint`: `TEACHER_OUTPUT=STUDENT_LAYER LOSS weight=W
    /// stage_epochs=N`), or null without hints.
    #[serde(default)]
    pub hint: Option<String>,
    /// Seconds the optimizer waited for the student's per-batch views of an image folder
    /// (`--augment`) from the loader thread: the data was the bottleneck.
    #[serde(default)]
    pub trainer_data_waited_s: f64,
    /// An image folder's class names (class index = position); empty for other data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<String>,
    /// An image folder's `--augment` (`none`, `crop`, `flip`, `crop,flip`), or null for other
    /// data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<String>,
    /// On-policy distillation (`--on-policy`): its settings and last epoch, or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_policy: Option<OnPolicySummary>,
}

/// On-policy distillation in the report: how the student sampled and what its last epoch
/// measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct OnPolicySummary {
    /// `--on-policy-estimator` (`full` or `k1`).
    pub estimator: String,
    /// `--max-new-tokens`.
    pub max_new_tokens: i64,
    /// `--sample-temperature`.
    pub sample_temperature: f64,
    /// `--top-p`.
    pub top_p: f64,
    /// The last epoch's on-policy metrics (`metrics.jsonl`'s `on_policy`), if an epoch ended.
    pub last_epoch: Option<OnPolicyMetrics>,
}

impl OnPolicySummary {
    /// The table's lines.
    fn lines(&self) -> String {
        let mut s = format!(
            "on-policy              --on-policy-estimator {}, up to {} new tokens at \
             temperature {} top-p {}\n",
            self.estimator, self.max_new_tokens, self.sample_temperature, self.top_p
        );
        if let Some(m) = &self.last_epoch {
            let _ = writeln!(
                s,
                "  last epoch           λ={}: {:.0} % of batches on-policy, {} tokens generated \
                 ({:.0} tokens/s), mean completion {:.1} tokens, {:.0} % ended with EOS",
                m.lambda,
                100.0 * m.on_policy_fraction,
                m.tokens_generated,
                m.generation_tokens_per_s,
                m.mean_completion_len,
                100.0 * m.eos_share
            );
            let _ = writeln!(
                s,
                "  step time split      generate {:.1} s, teacher scoring {:.1} s, train {:.1} s",
                m.generate_s, m.score_s, m.train_s
            );
            if let Some(kl) = m.heldout_reverse_kl {
                let _ = writeln!(
                    s,
                    "  held-out reverse KL  {kl:.4} nats/token (teacher-scored, the student's own \
                     samples at temperature 1)"
                );
            }
        }
        s
    }
}

/// One teacher replica in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ReplicaSummary {
    /// Replica URL.
    pub url: String,
    /// Its group (`teacher` for plain `--teacher` replicas).
    pub group: String,
    /// Batches it answered during training (answers used; late answers to re-sent batches are
    /// not counted).
    pub batches_answered: u64,
}

impl Report {
    /// Teacher params / student params, when both are known.
    pub(crate) fn compression_of(teacher: Option<i64>, student: Option<i64>) -> Option<f64> {
        match (teacher, student) {
            (Some(t), Some(s)) if s > 0 => Some(t as f64 / s as f64),
            _ => None,
        }
    }

    /// The human-readable table.
    pub(crate) fn table(&self) -> String {
        let mut s = String::new();
        let params = |p: Option<i64>| p.map_or_else(|| "?".to_string(), |p| p.to_string());
        let _ = writeln!(
            s,
            "{:<22} {:>10} {:>12}  arch",
            "model", "accuracy", "params"
        );
        let mut row = |label: &str, m: &ModelSummary| {
            let accuracy = m
                .accuracy
                .map_or_else(|| "n/a".to_string(), |a| format!("{:.2} %", 100.0 * a));
            let accuracy = match m.perplexity {
                Some(p) => format!("{accuracy} ppl {p:.2}"),
                None => accuracy,
            };
            let _ = writeln!(
                s,
                "{:<22} {:>10} {:>12}  {}",
                label,
                accuracy,
                params(m.params),
                m.name
            );
        };
        row("teacher", &self.teacher);
        if let Some(b) = &self.baseline {
            row("baseline student", b);
        }
        row("distilled student", &self.student);
        if let Some(c) = self.compression {
            let _ = writeln!(
                s,
                "compression            {c:.1}x fewer parameters than the teacher"
            );
        }
        let _ = writeln!(
            s,
            "distillation           {} epochs, {} samples/epoch, labels {}, loss {} T={} alpha={}",
            self.epochs, self.train_samples, self.labels, self.loss, self.temperature, self.alpha
        );
        let targets = if self.top_k == 0 {
            format!("dense {}", self.wire)
        } else {
            format!(
                "top-{} {} (tail: {})",
                self.top_k, self.wire, self.sparse_tail
            )
        };
        let _ = writeln!(
            s,
            "soft targets           {targets}, ensemble mode {}, teacher precision {}",
            self.ensemble_mode, self.teacher_precision
        );
        if let Some(hint) = &self.hint {
            let _ = writeln!(s, "hints (FitNets)        {hint}");
        }
        if let Some(dir) = &self.logit_cache {
            let _ = writeln!(
                s,
                "logit cache            {dir}: {} of {} epochs read from it, {:.1} bytes/sample",
                self.cached_epochs,
                self.epochs,
                self.cache_bytes_per_sample.unwrap_or(0.0)
            );
        }
        let _ = writeln!(
            s,
            "waiting                trainer waited {:.1} s for soft targets; ready batches waited \
             {:.1} s for a prefetch slot",
            self.trainer_waited_s, self.teacher_backpressure_s
        );
        if let Some(op) = &self.on_policy {
            s.push_str(&op.lines());
        }
        if let Some(augment) = &self.augment {
            let _ = writeln!(
                s,
                "images                 {} classes, augment {augment}; trainer waited {:.1} s for \
                 image views",
                self.classes.len(),
                self.trainer_data_waited_s
            );
        }
        let _ = writeln!(
            s,
            "throughput             {:.0} samples/s; wall time {:.1} s",
            self.samples_per_s, self.wall_s
        );
        s
    }

    /// Writes `dir/report.json` (pretty JSON); returns its path.
    ///
    /// # Errors
    /// File-system errors.
    pub(crate) fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(REPORT_FILE);
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&path, json + "\n")?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(accuracy: f64, params: Option<i64>, name: &str) -> ModelSummary {
        ModelSummary {
            accuracy: Some(accuracy),
            params,
            name: name.into(),
            per_class: vec![accuracy; 10],
            perplexity: None,
        }
    }

    fn report(baseline: Option<ModelSummary>) -> Report {
        Report {
            teacher: summary(0.91, Some(1_199_882), "cnn"),
            student: summary(0.87, Some(101_770), "mlp"),
            baseline,
            compression: Report::compression_of(Some(1_199_882), Some(101_770)),
            samples_per_s: 5000.0,
            wall_s: 60.0,
            epochs: 3,
            temperature: 4.0,
            alpha: 0.9,
            loss: "kl".into(),
            wire: "bf16".into(),
            top_k: 8,
            sparse_tail: "bucket".into(),
            ensemble_mode: "sample".into(),
            labels: "1000".into(),
            train_samples: 60_000,
            teacher_url: "http://127.0.0.1:1".into(),
            teacher_fingerprint: "ab".into(),
            samples_trained: 0,
            batches_resent: 0,
            replicas: Vec::new(),
            teacher_precision: "f32".into(),
            logit_cache: Some("runs/cache".into()),
            cached_epochs: 2,
            cache_bytes_per_sample: Some(92.5),
            trainer_waited_s: 1.5,
            teacher_backpressure_s: 0.25,
            hint: Some("features=h1 mse weight=1 stage_epochs=2".into()),
            trainer_data_waited_s: 0.5,
            classes: Vec::new(),
            augment: None,
            on_policy: None,
        }
    }

    #[test]
    fn json_has_the_documented_keys() {
        let v = serde_json::to_value(report(None)).unwrap();
        for key in [
            "teacher",
            "student",
            "baseline",
            "samples_per_s",
            "wall_s",
            "epochs",
            "temperature",
            "alpha",
            "wire",
            "top_k",
            "sparse_tail",
            "ensemble_mode",
            "teacher_precision",
            "logit_cache",
            "cached_epochs",
            "cache_bytes_per_sample",
            "trainer_waited_s",
            "teacher_backpressure_s",
            "hint",
        ] {
            assert!(v.get(key).is_some(), "{key} missing in {v}");
        }
        assert!(v["baseline"].is_null());
        assert_eq!(v["teacher"]["accuracy"], 0.91);
        assert_eq!(v["student"]["params"], 101_770);
        let c = v["compression"].as_f64().unwrap();
        assert!((c - 11.79).abs() < 0.01, "{c}");
        let with = serde_json::to_value(report(Some(summary(0.8, Some(101_770), "mlp")))).unwrap();
        assert_eq!(with["baseline"]["accuracy"], 0.8);
    }

    #[test]
    fn table_shows_every_model_and_the_ratio() {
        let t = report(Some(summary(0.8, Some(101_770), "mlp"))).table();
        for needle in [
            "teacher",
            "baseline student",
            "distilled student",
            "91.00 %",
            "80.00 %",
            "87.00 %",
            "11.8x",
            "1199882",
            "top-8 bf16 (tail: bucket), ensemble mode sample, teacher precision f32",
            "logit cache            runs/cache: 2 of 3 epochs read from it, 92.5 bytes/sample",
            "trainer waited 1.5 s",
            "hints (FitNets)        features=h1 mse weight=1 stage_epochs=2",
        ] {
            assert!(t.contains(needle), "{needle} not in\n{t}");
        }
        let mut cached_only = report(None);
        cached_only.teacher.accuracy = None;
        assert!(cached_only.table().contains("n/a"));
        let v = serde_json::to_value(&cached_only).unwrap();
        assert!(v["teacher"]["accuracy"].is_null());
        assert!(!report(None).table().contains("baseline"));
    }

    #[test]
    fn writes_report_json() {
        let dir = std::env::temp_dir().join(format!("student-report-{}", std::process::id()));
        let r = report(None);
        let path = r.write(&dir).unwrap();
        let back: Report = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(back, r);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn compression_needs_both_counts() {
        assert_eq!(Report::compression_of(Some(10), Some(5)), Some(2.0));
        assert_eq!(Report::compression_of(None, Some(5)), None);
        assert_eq!(Report::compression_of(Some(10), Some(0)), None);
    }

    #[test]
    fn on_policy_runs_report_their_sampling_split_and_reverse_kl() {
        let mut r = report(None);
        assert!(!r.table().contains("on-policy"));
        r.on_policy = Some(OnPolicySummary {
            estimator: "k1".into(),
            max_new_tokens: 64,
            sample_temperature: 1.0,
            top_p: 0.95,
            last_epoch: Some(OnPolicyMetrics {
                lambda: 0.5,
                on_policy_fraction: 0.5,
                on_policy_batches: 10,
                tokens_generated: 1234,
                generation_tokens_per_s: 456.0,
                mean_completion_len: 12.34,
                eos_share: 0.75,
                generate_s: 2.7,
                score_s: 1.2,
                train_s: 3.4,
                heldout_reverse_kl: Some(0.1234),
                heldout_completion_len: Some(11.0),
                heldout_eos_share: Some(0.5),
            }),
        });
        let t = r.table();
        for needle in [
            "--on-policy-estimator k1, up to 64 new tokens at temperature 1 top-p 0.95",
            "λ=0.5: 50 % of batches on-policy, 1234 tokens generated (456 tokens/s)",
            "mean completion 12.3 tokens, 75 % ended with EOS",
            "generate 2.7 s, teacher scoring 1.2 s, train 3.4 s",
            "held-out reverse KL  0.1234 nats/token",
        ] {
            assert!(t.contains(needle), "{needle} not in\n{t}");
        }
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["on_policy"]["last_epoch"]["heldout_reverse_kl"], 0.1234);
        let back: Report = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
