//! Learning-rate schedules, and the check of a resumed run's update rule against its checkpoint.
//!
//! The schedule is a pure function of the optimizer step, so a resumed run needs no scheduler
//! state: the step count restored from the checkpoint gives the same rate as an uninterrupted run.

use serde::{Deserialize, Serialize};

/// The shape of the learning-rate schedule (`--lr-schedule`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LrScheduleKind {
    /// Linear warm-up, then the base rate: Hugging Face transformers'
    /// `get_constant_schedule_with_warmup` (with no warm-up: `get_constant_schedule`).
    #[default]
    Constant,
    /// Linear warm-up, then a half cosine from the base rate down to `min_lr` at the run's
    /// end: transformers' `get_cosine_schedule_with_warmup` (`num_cycles = 0.5`), or
    /// `get_cosine_with_min_lr_schedule_with_warmup` when `min_lr > 0`.
    Cosine,
}

impl std::fmt::Display for LrScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LrScheduleKind::Constant => "constant",
            LrScheduleKind::Cosine => "cosine",
        })
    }
}

/// A learning-rate schedule (`--lr-schedule`, `--warmup-steps`, `--min-lr`); the base
/// (peak) rate is the optimizer's `lr`. The default is a constant rate without warm-up, which
/// is what a run without these flags (and a checkpoint saved before they existed) trains with.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct LrSchedule {
    /// The shape after the warm-up.
    pub kind: LrScheduleKind,
    /// Optimizer steps of linear warm-up from 0 to the base rate (0: none).
    pub warmup_steps: u64,
    /// The rate the cosine decays to at the run's end (≥ 0, ≤ the base rate); must be 0 for a
    /// constant schedule.
    pub min_lr: f64,
}

impl LrSchedule {
    /// Checks `min_lr` (`--min-lr`) against the base rate `lr`.
    ///
    /// # Errors
    /// A one-line reason (about `--min-lr`, without the flag's name) when `min_lr` is negative
    /// or not finite, above `lr`, or non-zero with a constant schedule (where nothing decays to
    /// it).
    pub fn validate(&self, lr: f64) -> Result<(), String> {
        if !(self.min_lr.is_finite() && self.min_lr >= 0.0) {
            return Err(format!("{} is not a learning rate ≥ 0", self.min_lr));
        }
        if self.min_lr > lr {
            return Err(format!(
                "{} is above --lr {lr} (the cosine decays from --lr down to --min-lr)",
                self.min_lr
            ));
        }
        if self.kind == LrScheduleKind::Constant && self.min_lr != 0.0 {
            return Err(format!(
                "{} needs --lr-schedule cosine (a constant schedule never decays)",
                self.min_lr
            ));
        }
        Ok(())
    }

    /// The learning rate of the update that follows `step` earlier updates (`step` = 0 for the
    /// run's first update), for a run of `total_steps` updates and base rate `lr`. With
    /// `W = warmup_steps`:
    ///
    /// ```text
    /// step < W:                lr · step / W                     (linear warm-up from 0)
    /// constant, step ≥ W:      lr
    /// cosine,   step ≥ W:      min_lr + (lr − min_lr) · ½ · (1 + cos(π · progress))
    ///                          progress = min(1, (step − W) / max(1, total_steps − W))
    /// ```
    ///
    /// This is Hugging Face transformers' `_get_cosine_schedule_with_warmup_lr_lambda`
    /// (`num_cycles = 0.5`, `min_lr_rate = min_lr / lr`) times `lr`, evaluated as PyTorch's
    /// `LambdaLR` does (the k-th update, counted from 0, uses `lambda(k)`). So, as there, the
    /// first update of a warm-up uses rate 0 (it still moves Adam's moments), the rate reaches
    /// `lr` at update `W`, and the cosine reaches `min_lr` at `step = total_steps`, one step
    /// after the run's last update (which uses `min_lr + (lr − min_lr)·½(1 + cos(π(T−1−W)/(T−W)))`).
    /// Past `total_steps` the rate stays at `min_lr` (transformers would let the cosine rise
    /// again); `W ≥ total_steps` means the whole run warms up.
    pub fn lr_at(&self, lr: f64, step: u64, total_steps: u64) -> f64 {
        let w = self.warmup_steps;
        if step < w {
            return lr * step as f64 / w.max(1) as f64;
        }
        match self.kind {
            LrScheduleKind::Constant => lr,
            LrScheduleKind::Cosine => {
                let progress =
                    ((step - w) as f64 / total_steps.saturating_sub(w).max(1) as f64).min(1.0);
                let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
                self.min_lr + (lr - self.min_lr) * cosine
            }
        }
    }
}

impl LrSchedule {
    /// The warning for a warm-up that lasts the whole run of `total_steps` optimizer steps or
    /// longer (`warmup_steps ≥ total_steps`): the rate then rises from 0 until the end and never
    /// reaches the base rate. `None` for a warm-up shorter than the run, or none.
    pub fn warmup_warning(&self, total_steps: u64) -> Option<String> {
        let w = self.warmup_steps;
        if w == 0 || w < total_steps {
            return None;
        }
        // The last update, counted from 0, uses lr · (total_steps − 1) / W.
        let last = total_steps.saturating_sub(1) as f64 / w as f64;
        Some(format!(
            "--warmup-steps {w} is not shorter than the run's {total_steps} optimizer steps \
             (--epochs × batches per epoch): the learning rate rises from 0 for the whole run and \
             never reaches --lr (the last step uses {:.1} % of it); lower --warmup-steps or train \
             for more steps",
            100.0 * last
        ))
    }
}

impl std::fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} warmup={}", self.kind, self.warmup_steps)?;
        if self.kind == LrScheduleKind::Cosine {
            write!(f, " min_lr={}", self.min_lr)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::f64::consts::PI;

    fn close(got: f64, want: f64) {
        assert!(
            (got - want).abs() <= 1e-15 + 1e-12 * want.abs(),
            "got {got}, want {want}"
        );
    }

    #[test]
    fn a_warmup_as_long_as_the_run_is_warned_about() {
        let schedule = |warmup_steps| LrSchedule {
            kind: LrScheduleKind::Cosine,
            warmup_steps,
            min_lr: 0.0,
        };
        assert_eq!(schedule(0).warmup_warning(0), None);
        assert_eq!(schedule(99).warmup_warning(100), None);
        let w = schedule(5000).warmup_warning(470).expect("a warning");
        assert!(
            w.starts_with("--warmup-steps 5000 is not shorter than the run's 470 optimizer steps")
                && w.contains("the last step uses 9.4 % of it"),
            "{w}"
        );
        let w = schedule(100).warmup_warning(100).expect("a warning");
        assert!(w.contains("the last step uses 99.0 % of it"), "{w}");
    }

    #[test]
    fn cosine_with_warmup_values() {
        // lr 1e-3, 10 warm-up steps, 110 updates in the run: the decay spans steps 10..110.
        let s = LrSchedule {
            kind: LrScheduleKind::Cosine,
            warmup_steps: 10,
            min_lr: 0.0,
        };
        let lr = 1e-3;
        // Warm-up: lr · step / 10, from 0.
        close(s.lr_at(lr, 0, 110), 0.0);
        close(s.lr_at(lr, 1, 110), 1e-4);
        close(s.lr_at(lr, 5, 110), 5e-4);
        close(s.lr_at(lr, 9, 110), 9e-4);
        // End of the warm-up: the peak.
        close(s.lr_at(lr, 10, 110), 1e-3);
        // A quarter of the decay: ½(1 + cos(π/4)) = ½ + √2/4.
        close(s.lr_at(lr, 35, 110), 1e-3 * (0.5 + 2f64.sqrt() / 4.0));
        // Half way: ½(1 + cos(π/2)) = ½.
        close(s.lr_at(lr, 60, 110), 5e-4);
        // The last update (step 109): ½(1 + cos(π · 99/100)).
        close(
            s.lr_at(lr, 109, 110),
            1e-3 * 0.5 * (1.0 + (PI * 0.99).cos()),
        );
        assert!(s.lr_at(lr, 109, 110) > 0.0 && s.lr_at(lr, 109, 110) < 3e-7);
        // At and past the end: 0.
        close(s.lr_at(lr, 110, 110), 0.0);
        close(s.lr_at(lr, 500, 110), 0.0);
    }

    #[test]
    fn cosine_decays_to_min_lr() {
        let s = LrSchedule {
            kind: LrScheduleKind::Cosine,
            warmup_steps: 0,
            min_lr: 1e-4,
        };
        // No warm-up: the first update uses the peak.
        close(s.lr_at(1e-3, 0, 100), 1e-3);
        // Half way: 1e-4 + 9e-4 · ½.
        close(s.lr_at(1e-3, 50, 100), 5.5e-4);
        close(s.lr_at(1e-3, 100, 100), 1e-4);
        close(s.lr_at(1e-3, 1000, 100), 1e-4);
        // Monotone non-increasing after the warm-up.
        let rates: Vec<f64> = (0..=100).map(|k| s.lr_at(1e-3, k, 100)).collect();
        assert!(rates.windows(2).all(|w| w[1] <= w[0]));
    }

    #[test]
    fn constant_with_and_without_warmup() {
        let s = LrSchedule {
            kind: LrScheduleKind::Constant,
            warmup_steps: 4,
            min_lr: 0.0,
        };
        let got: Vec<f64> = (0..7).map(|k| s.lr_at(0.2, k, 5)).collect();
        let want = [0.0, 0.05, 0.1, 0.15, 0.2, 0.2, 0.2];
        for (g, w) in got.iter().zip(want) {
            close(*g, w);
        }
        let plain = LrSchedule::default();
        assert_eq!(plain.kind, LrScheduleKind::Constant);
        assert!((0..10).all(|k| plain.lr_at(0.3, k, 3) == 0.3));
        // A warm-up longer than the run: the whole run warms up.
        let long = LrSchedule {
            kind: LrScheduleKind::Cosine,
            warmup_steps: 100,
            min_lr: 0.0,
        };
        close(long.lr_at(1.0, 20, 50), 0.2);
    }

    #[test]
    fn validate_names_the_flag() {
        let cosine = LrSchedule {
            kind: LrScheduleKind::Cosine,
            warmup_steps: 0,
            min_lr: 1e-4,
        };
        assert!(cosine.validate(1e-3).is_ok());
        let e = cosine.validate(1e-5).unwrap_err();
        assert!(e.contains("0.0001 is above --lr 0.00001"), "{e}");
        let e = LrSchedule {
            min_lr: -1.0,
            ..cosine
        }
        .validate(1.0)
        .unwrap_err();
        assert!(e.starts_with("-1 is not"), "{e}");
        let e = LrSchedule {
            kind: LrScheduleKind::Constant,
            ..cosine
        }
        .validate(1e-3)
        .unwrap_err();
        assert!(e.contains("--lr-schedule cosine"), "{e}");
        assert!(LrSchedule::default().validate(1e-3).is_ok());
    }

    #[test]
    fn kinds_parse_and_print() {
        use clap::ValueEnum;
        for kind in LrScheduleKind::value_variants() {
            let name = kind.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(kind.to_string(), name);
            assert_eq!(LrScheduleKind::from_str(&name, true).unwrap(), *kind);
        }
        assert_eq!(
            LrScheduleKind::from_str("linear", true).unwrap_err(),
            "invalid variant: linear"
        );
        let s = LrSchedule {
            kind: LrScheduleKind::Cosine,
            warmup_steps: 3,
            min_lr: 0.5,
        };
        let json = serde_json::to_string(&s).unwrap();
        assert!(json.contains("\"cosine\""), "{json}");
        assert_eq!(serde_json::from_str::<LrSchedule>(&json).unwrap(), s);
    }
}
