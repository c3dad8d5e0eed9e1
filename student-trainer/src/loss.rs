//! The distillation loss.
//!
//! Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network", section 2: the
//! student matches the teacher's temperature-softened distribution `softmax(t / T)` while also
//! fitting the hard labels,
//!
//! ```text
//! loss = alpha · T² · KL(softmax(t / T) ‖ softmax(s / T)) + (1 − alpha) · CE(s, y)
//! ```
//!
//! where the `T²` factor keeps the soft term's gradient magnitude independent of `T` (section
//! 2, last paragraph). The alternative soft term of Ba & Caruana 2014 ("Do Deep Nets Really
//! Need to be Deep?", section 2.2) regresses the logits directly: `mean_c (s_c − t_c)²`.
//!
//! KL uses batch-mean reduction (sum over classes, mean over samples), as PyTorch's
//! `F.kl_div(..., reduction="batchmean")`, and is computed from log-softmax so that logits of
//! ±1000 or a teacher probability of exactly 0 give finite values.

use tch::{Kind, Reduction, Tensor};

/// The soft (teacher-matching) term of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum LossKind {
    /// `T² · KL(softmax(t/T) ‖ softmax(s/T))` (Hinton et al. 2015, section 2).
    Kl,
    /// `mean_c (s_c − t_c)²` on raw logits (Ba & Caruana 2014); the temperature is not used.
    Mse,
}

impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossKind::Kl => "kl",
            LossKind::Mse => "mse",
        })
    }
}

/// The distillation loss with its hyper-parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistillLoss {
    /// Which soft term.
    pub kind: LossKind,
    /// Softmax temperature `T` (> 0) of the KL term; unused by [`LossKind::Mse`].
    pub temperature: f64,
    /// Weight of the soft term for labelled samples, in `[0, 1]`; `1 − alpha` weighs the
    /// cross-entropy. Unlabelled samples always use weight 1.
    pub alpha: f64,
}

/// The loss of one batch.
#[derive(Debug)]
pub struct LossParts {
    /// The loss to back-propagate: scalar `f32`, differentiable with respect to the student's
    /// logits only.
    pub total: Tensor,
    /// Mean over all samples of the unweighted soft term (`T²·KL_i`, or `mse_i`), for logging.
    pub soft: f64,
    /// Mean cross-entropy over the labelled samples (0 when none is labelled), for logging.
    pub hard: f64,
}

/// `KL(softmax(t/T) ‖ softmax(s/T))` per sample: `Σ_c p_c (log p_c − log q_c)` with
/// `p = softmax(t/T)` (teacher, detached) and `q = softmax(s/T)` (student), both from
/// log-softmax; terms with `p_c = 0` contribute exactly 0 (`0 · log 0 = 0`), never NaN.
/// Returns `f32` `[B]`.
fn kl_per_sample(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> Result<Tensor, tch::TchError> {
    let log_p = teacher
        .f_detach()?
        .f_div_scalar(temperature)?
        .f_log_softmax(-1, Kind::Float)?;
    let log_q = student
        .f_div_scalar(temperature)?
        .f_log_softmax(-1, Kind::Float)?;
    let p = log_p.f_exp()?;
    let positive = p.f_gt(0.0)?;
    let terms = p.f_mul(&log_p.f_sub(&log_q)?)?;
    terms
        .f_where_scalarother(&positive, 0.0)?
        .f_sum_dim_intlist(-1, false, Kind::Float)
}

/// `mean_c (s_c − t_c)²` per sample (Ba & Caruana 2014), teacher detached. Returns `f32` `[B]`.
fn mse_per_sample(student: &Tensor, teacher: &Tensor) -> Result<Tensor, tch::TchError> {
    let diff = student
        .f_to_kind(Kind::Float)?
        .f_sub(&teacher.f_detach()?.f_to_kind(Kind::Float)?)?;
    diff.f_square()?.f_mean_dim(-1, false, Kind::Float)
}

/// Batch-mean KL divergence `(1/B) Σ_i Σ_c p_ic (log p_ic − log q_ic)` between the teacher's
/// softened distribution `p = softmax(teacher / T)` and the student's `q = softmax(student / T)`
/// (Hinton et al. 2015, section 2), WITHOUT the `T²` factor; equal to PyTorch's
/// `F.kl_div(log_softmax(s/T), log_softmax(t/T), reduction="batchmean", log_target=True)`,
/// except that a teacher logit of `-inf` gives 0 here where PyTorch gives NaN.
///
/// `student`, `teacher`: logits `[B, C]` (any float kind; computed in `f32`). The teacher is
/// detached: gradients flow to the student only. A teacher probability of exactly 0 (logit
/// `-inf` or far below the others) contributes 0, not NaN. Returns a scalar `f32`.
///
/// # Panics
/// If the shapes differ or are not `[B, C]` (libtorch raises); [`f_kl_batchmean`] returns an
/// error instead.
pub fn kl_batchmean(student: &Tensor, teacher: &Tensor, temperature: f64) -> Tensor {
    f_kl_batchmean(student, teacher, temperature)
        .expect("kl_batchmean: student and teacher logits must both be [B, C]")
}

/// Fallible [`kl_batchmean`].
///
/// # Errors
/// [`tch::TchError::Shape`] unless both are `[B, C]` of the same shape; libtorch errors.
pub fn f_kl_batchmean(
    student: &Tensor,
    teacher: &Tensor,
    temperature: f64,
) -> Result<Tensor, tch::TchError> {
    if student.dim() != 2 || student.size() != teacher.size() {
        return Err(shape_err(format!(
            "student and teacher logits must both be [batch, classes], got {:?} and {:?}",
            student.size(),
            teacher.size()
        )));
    }
    kl_per_sample(student, teacher, temperature)?.f_mean(Kind::Float)
}

/// Mean cross-entropy `(1/B) Σ_i −log softmax(student_i)[labels_i]` of logits `student`
/// (`[B, C]`) against class indices `labels` (`i64` `[B]`). Returns a scalar `f32`.
///
/// # Panics
/// On a label outside `0..C` or mismatched shapes (libtorch raises); [`f_cross_entropy`]
/// returns an error instead.
pub fn cross_entropy(student: &Tensor, labels: &Tensor) -> Tensor {
    f_cross_entropy(student, labels)
        .expect("cross_entropy: logits must be [B, C] and labels i64 [B] in 0..C")
}

/// Fallible [`cross_entropy`].
///
/// # Errors
/// Libtorch's error for mismatched shapes or a label outside `0..C`.
pub fn f_cross_entropy(student: &Tensor, labels: &Tensor) -> Result<Tensor, tch::TchError> {
    student.f_cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)
}

fn shape_err(msg: String) -> tch::TchError {
    tch::TchError::Shape(msg)
}

impl DistillLoss {
    /// The loss of one batch. Per sample `i`, with weight `w_i = alpha` if the sample is
    /// labelled and `w_i = 1` if not (a transfer set without labels, Hinton et al. 2015,
    /// section 2):
    ///
    /// ```text
    /// loss = (1/B) Σ_i [ w_i · soft_i + (1 − w_i) · CE_i ]
    /// soft_i = T² · KL(softmax(t_i/T) ‖ softmax(s_i/T))     (LossKind::Kl)
    ///        = (1/C) Σ_c (s_ic − t_ic)²                      (LossKind::Mse, Ba & Caruana 2014)
    /// ```
    ///
    /// When every sample is labelled this is `alpha · T² · KL_batchmean + (1 − alpha) · CE`.
    /// A term whose weight is 0 is left out entirely (not multiplied by 0), so an infinite CE on
    /// an unlabelled sample cannot turn the loss into NaN; labels of unlabelled samples are
    /// ignored and may hold any value.
    ///
    /// - `student`: logits `[B, C]`, `f32`, carrying gradients;
    /// - `teacher`: logits `[B, C]` (detached here; gradients never reach it);
    /// - `labels`: `i64` `[B]`, in `0..C` where labelled;
    /// - `labelled`: `bool` `[B]`, `None` meaning every sample is labelled.
    ///
    /// # Errors
    /// [`tch::TchError::Shape`] for mismatched shapes or a bad temperature/alpha, and libtorch's
    /// error for a label outside `0..C`.
    pub fn compute(
        &self,
        student: &Tensor,
        teacher: &Tensor,
        labels: &Tensor,
        labelled: Option<&Tensor>,
    ) -> Result<LossParts, tch::TchError> {
        let size = student.size();
        if size.len() != 2 || teacher.size() != size {
            return Err(shape_err(format!(
                "student and teacher logits must both be [batch, classes], got {:?} and {:?}",
                size,
                teacher.size()
            )));
        }
        let b = size[0];
        if labels.size() != [b] {
            return Err(shape_err(format!(
                "labels must be [{b}], got {:?}",
                labels.size()
            )));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(shape_err(format!(
                "temperature must be positive, got {}",
                self.temperature
            )));
        }
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(shape_err(format!(
                "alpha must lie in [0, 1], got {}",
                self.alpha
            )));
        }
        let device = student.device();
        let labelled = match labelled {
            Some(mask) => {
                if mask.size() != [b] {
                    return Err(shape_err(format!(
                        "labelled mask must be [{b}], got {:?}",
                        mask.size()
                    )));
                }
                mask.f_to_kind(Kind::Bool)?.f_to_device(device)?
            }
            None => Tensor::f_ones([b], (Kind::Bool, device))?,
        };

        let soft_i = match self.kind {
            LossKind::Kl => kl_per_sample(student, teacher, self.temperature)?
                .f_mul_scalar(self.temperature * self.temperature)?,
            LossKind::Mse => mse_per_sample(student, teacher)?,
        };
        // w_i = alpha where labelled, 1 elsewhere.
        let w = Tensor::f_full([b], self.alpha, (Kind::Float, device))?
            .f_where_scalarother(&labelled, 1.0)?;
        let soft_w = w.f_mul(&soft_i)?.f_where_scalarother(&w.f_gt(0.0)?, 0.0)?;

        let safe_labels = labels
            .f_to_device(device)?
            .f_to_kind(Kind::Int64)?
            .f_where_scalarother(&labelled, 0)?;
        let ce_i = student.f_cross_entropy_loss::<Tensor>(
            &safe_labels,
            None,
            Reduction::None,
            -100,
            0.0,
        )?;
        let hard_w = w
            .f_neg()?
            .f_add_scalar(1.0)?
            .f_mul(&ce_i)?
            .f_where_scalarother(&w.f_lt(1.0)?, 0.0)?;

        let total = soft_w.f_add(&hard_w)?.f_mean(Kind::Float)?;

        let (soft, hard) = tch::no_grad(|| -> Result<(f64, f64), tch::TchError> {
            let soft = if b == 0 {
                0.0
            } else {
                soft_i.f_mean(Kind::Double)?.f_double_value(&[])?
            };
            let count = labelled.f_sum(Kind::Int64)?.f_int64_value(&[])?;
            let hard = if count == 0 {
                0.0
            } else {
                ce_i.f_where_scalarother(&labelled, 0.0)?
                    .f_sum(Kind::Double)?
                    .f_double_value(&[])?
                    / count as f64
            };
            Ok((soft, hard))
        })?;
        Ok(LossParts { total, soft, hard })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn t2(rows: &[&[f32]]) -> Tensor {
        let c = rows[0].len() as i64;
        let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
        Tensor::from_slice(&flat).view([rows.len() as i64, c])
    }

    fn value(t: &Tensor) -> f64 {
        t.double_value(&[])
    }

    fn close(got: f64, want: f64, what: &str) {
        let tol = 1e-5 * want.abs() + 1e-7;
        assert!(
            (got - want).abs() <= tol,
            "{what}: got {got}, want {want} (rel tol 1e-5)"
        );
    }

    fn json_tensor(v: &Value) -> Tensor {
        let rows: Vec<Vec<f32>> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                r.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect()
            })
            .collect();
        let refs: Vec<&[f32]> = rows.iter().map(|r| r.as_slice()).collect();
        t2(&refs)
    }

    /// The hand-computed KD/MSE cases the project owns, `student-trainer/tests/data/kd_loss.json`
    /// (a copy of the values to check against; keep the two in step), compiled into the test so
    /// that no test depends on files outside the crate.
    fn cases() -> Value {
        serde_json::from_str(include_str!("../tests/data/kd_loss.json"))
            .expect("tests/data/kd_loss.json is valid JSON")
    }

    #[test]
    fn shared_kd_cases() {
        let cases = cases();
        let kd = cases["kd"].as_array().unwrap();
        assert!(!kd.is_empty());
        for case in kd {
            let name = case["name"].as_str().unwrap();
            let s = json_tensor(&case["student_logits"]);
            let t = json_tensor(&case["teacher_logits"]);
            let labels: Vec<i64> = case["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_i64().unwrap())
                .collect();
            let y = Tensor::from_slice(&labels);
            let temperature = case["temperature"].as_f64().unwrap();
            let alpha = case["alpha"].as_f64().unwrap();
            let kl = value(&kl_batchmean(&s, &t, temperature));
            close(
                kl,
                case["kl_batchmean"].as_f64().unwrap(),
                &format!("{name} kl"),
            );
            close(
                value(&cross_entropy(&s, &y)),
                case["ce"].as_f64().unwrap(),
                &format!("{name} ce"),
            );
            let loss = DistillLoss {
                kind: LossKind::Kl,
                temperature,
                alpha,
            };
            let parts = loss.compute(&s, &t, &y, None).unwrap();
            close(
                value(&parts.total),
                case["loss"].as_f64().unwrap(),
                &format!("{name} loss"),
            );
            close(
                parts.soft,
                temperature * temperature * kl,
                &format!("{name} soft"),
            );
            close(
                parts.hard,
                case["ce"].as_f64().unwrap(),
                &format!("{name} hard"),
            );
            assert!(value(&parts.total).is_finite(), "{name}");
        }
    }

    #[test]
    fn shared_mse_cases() {
        let cases = cases();
        let mse = cases["mse"].as_array().unwrap();
        assert!(!mse.is_empty());
        for case in mse {
            let name = case["name"].as_str().unwrap();
            let s = json_tensor(&case["student_logits"]);
            let t = json_tensor(&case["teacher_logits"]);
            let want = case["mse_mean_over_elements"].as_f64().unwrap();
            let b = s.size()[0];
            let y = Tensor::zeros([b], (Kind::Int64, tch::Device::Cpu));
            // alpha = 1: the loss is the soft term alone; T must not matter.
            for temperature in [1.0, 4.0] {
                let loss = DistillLoss {
                    kind: LossKind::Mse,
                    temperature,
                    alpha: 1.0,
                };
                let parts = loss.compute(&s, &t, &y, None).unwrap();
                close(value(&parts.total), want, &format!("{name} mse loss"));
                close(parts.soft, want, &format!("{name} mse soft"));
            }
            // Mixed with CE the same way as KL.
            let loss = DistillLoss {
                kind: LossKind::Mse,
                temperature: 4.0,
                alpha: 0.25,
            };
            let parts = loss.compute(&s, &t, &y, None).unwrap();
            let ce = value(&cross_entropy(&s, &y));
            close(
                value(&parts.total),
                0.25 * want + 0.75 * ce,
                &format!("{name} mixed"),
            );
        }
    }

    #[test]
    fn identical_distributions_have_zero_kl() {
        let x = Tensor::randn([5, 7], tch::kind::FLOAT_CPU) * 3.0;
        for temperature in [0.5, 1.0, 4.0] {
            assert_eq!(value(&kl_batchmean(&x, &x, temperature)), 0.0);
        }
    }

    #[test]
    fn hand_computed_uniform_student() {
        let t = t2(&[&[2.0, 1.0, 0.0]]);
        let s = t2(&[&[0.0, 0.0, 0.0]]);
        for (temperature, want) in [(1.0, 0.266217), (2.0, 0.313684), (4.0, 0.328202)] {
            let got = temperature * temperature * value(&kl_batchmean(&s, &t, temperature));
            // The hand values have 6 decimals; f32 with the T² factor agrees to ~4e-6 relative.
            assert!(
                (got - want).abs() <= 1e-5 * want + 5e-7,
                "T={temperature}: {got} vs {want}"
            );
        }
    }

    #[test]
    fn batchmean_not_element_mean() {
        let t = t2(&[&[2.0, 1.0, 0.0], &[0.0, 3.0, 0.0]]);
        let s = t2(&[&[0.0, 0.0, 0.0], &[1.0, 0.0, 0.0]]);
        let got = value(&kl_batchmean(&s, &t, 1.0));
        assert!((got - 0.702894).abs() < 1e-6, "{got}");
        assert!((got - 0.234298).abs() > 0.1);
    }

    #[test]
    fn zero_teacher_probability_contributes_zero() {
        let s = t2(&[&[0.0, 0.0, 0.0]]);
        for t in [
            t2(&[&[0.0, 0.0, f32::NEG_INFINITY]]),
            t2(&[&[0.0, 0.0, -1000.0]]),
        ] {
            let s = s.copy().set_requires_grad(true);
            let kl = kl_batchmean(&s, &t, 1.0);
            // p = [0.5, 0.5, 0], q = uniform: KL = log(3/2).
            close(value(&kl), (1.5f64).ln(), "kl with p=0");
            kl.backward();
            let g = s.grad();
            assert_eq!(value(&g.isnan().any()), 0.0, "NaN gradient");
        }
    }

    #[test]
    fn gradient_flows_to_student_only() {
        let s = Tensor::randn([4, 5], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let t = Tensor::randn([4, 5], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
        for kind in [LossKind::Kl, LossKind::Mse] {
            let loss = DistillLoss {
                kind,
                temperature: 4.0,
                alpha: 0.9,
            };
            let parts = loss.compute(&s, &t, &y, None).unwrap();
            parts.total.backward();
            assert!(s.grad().defined());
            assert!(value(&s.grad().abs().sum(Kind::Float)) > 0.0);
            let tg = t.grad();
            assert!(!tg.defined() || value(&tg.abs().sum(Kind::Float)) == 0.0);
        }
    }

    #[test]
    fn unlabelled_samples_use_alpha_one() {
        let s = Tensor::randn([6, 4], tch::kind::FLOAT_CPU);
        let t = Tensor::randn([6, 4], tch::kind::FLOAT_CPU);
        // Garbage labels on unlabelled rows must be ignored.
        let y = Tensor::from_slice(&[1i64, 2, -7, 99, 0, 3]);
        let mask = Tensor::from_slice(&[true, true, false, false, true, true]);
        let loss = DistillLoss {
            kind: LossKind::Kl,
            temperature: 4.0,
            alpha: 0.9,
        };
        let parts = loss.compute(&s, &t, &y, Some(&mask)).unwrap();
        // Per-row reference.
        let mut want = 0.0;
        let mut ce_sum = 0.0;
        for i in 0..6 {
            let si = s.narrow(0, i, 1);
            let ti = t.narrow(0, i, 1);
            let soft = 16.0 * value(&kl_batchmean(&si, &ti, 4.0));
            if bool::try_from(mask.get(i)).unwrap() {
                let ce = value(&cross_entropy(&si, &y.narrow(0, i, 1)));
                ce_sum += ce;
                want += 0.9 * soft + 0.1 * ce;
            } else {
                want += soft;
            }
        }
        close(value(&parts.total), want / 6.0, "masked total");
        close(parts.hard, ce_sum / 4.0, "masked hard");

        // Nothing labelled == alpha 1 everywhere.
        let none = Tensor::zeros([6], (Kind::Bool, tch::Device::Cpu));
        let a = loss.compute(&s, &t, &y, Some(&none)).unwrap();
        let alpha1 = DistillLoss { alpha: 1.0, ..loss };
        let ok_labels = Tensor::zeros([6], (Kind::Int64, tch::Device::Cpu));
        let b = alpha1.compute(&s, &t, &ok_labels, None).unwrap();
        close(value(&a.total), value(&b.total), "no labels vs alpha 1");
        assert_eq!(a.hard, 0.0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let s = Tensor::zeros([2, 3], tch::kind::FLOAT_CPU);
        let y = Tensor::zeros([2], (Kind::Int64, tch::Device::Cpu));
        let loss = DistillLoss {
            kind: LossKind::Kl,
            temperature: 4.0,
            alpha: 0.9,
        };
        let t4 = Tensor::zeros([2, 4], tch::kind::FLOAT_CPU);
        assert!(loss.compute(&s, &t4, &y, None).is_err());
        let y3 = Tensor::zeros([3], (Kind::Int64, tch::Device::Cpu));
        assert!(loss.compute(&s, &s, &y3, None).is_err());
        let out_of_range = Tensor::from_slice(&[0i64, 5]);
        assert!(loss.compute(&s, &s, &out_of_range, None).is_err());
        let bad_t = DistillLoss {
            temperature: 0.0,
            ..loss
        };
        assert!(bad_t.compute(&s, &s, &y, None).is_err());
        let bad_mask = Tensor::ones([3], (Kind::Bool, tch::Device::Cpu));
        assert!(loss.compute(&s, &s, &y, Some(&bad_mask)).is_err());
    }

    #[test]
    fn loss_kind_parses() {
        use clap::ValueEnum;
        assert_eq!(LossKind::from_str("kl", true).unwrap(), LossKind::Kl);
        assert_eq!(LossKind::from_str("MSE", true).unwrap(), LossKind::Mse);
        assert!(LossKind::from_str("l1", true).is_err());
        for kind in LossKind::value_variants() {
            let name = kind.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(kind.to_string(), name);
        }
    }
}
