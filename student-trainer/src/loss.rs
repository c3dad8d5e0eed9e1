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

use crate::targets::SoftTargets;
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

/// How the sparse KD loss treats the teacher's probability mass outside its top k classes
/// (the tail, `r = exp(tail_logsumexp − lse_T)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum SparseTail {
    /// KL over k + 1 outcomes: the k classes and one "rest" outcome, whose student probability
    /// is the student's own mass outside the same k classes, computed exactly in log space.
    #[default]
    Bucket,
    /// The tail mass spread evenly over the other C − k classes (each `r / (C − k)`); KL over
    /// all C classes.
    Uniform,
    /// The teacher's k probabilities renormalised to sum 1 against the student's log-softmax
    /// renormalised over the same k classes; the tail is dropped.
    Renorm,
}

impl std::fmt::Display for SparseTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SparseTail::Bucket => "bucket",
            SparseTail::Uniform => "uniform",
            SparseTail::Renorm => "renorm",
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
    /// How sparse (top-k) targets treat the teacher's mass outside the k classes.
    pub sparse_tail: SparseTail,
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

/// `Σ_c p_c (log p_c − log q_c)` with terms where `p_c = 0` set to exactly 0 (`0 · log 0 = 0`).
fn kl_terms(log_p: &Tensor, log_q: &Tensor) -> Result<Tensor, tch::TchError> {
    let p = log_p.f_exp()?;
    let positive = p.f_gt(0.0)?;
    p.f_mul(&log_p.f_sub(log_q)?)?
        .f_where_scalarother(&positive, 0.0)?
        .f_sum_dim_intlist(-1, false, Kind::Float)
}

/// The sparse KL per sample at temperature `T`, `f32 [B]` (before `T²`), of the student's logits
/// `student` (`f32 [B, C]`) against the teacher's top-k: `indices` (`i64 [B, k]`), `values`
/// (raw logits, `[B, k]`) and `tail` (`f32 [B]`, log-sum-exp of `z / T` over the other classes).
///
/// Teacher (Hinton et al. 2015, section 2, at temperature `T`):
///
/// ```text
/// lse_T   = logaddexp(logsumexp_i(v_i / T), tail)
/// log p_i = v_i / T − lse_T            (i in the top k)
/// log r   = tail − lse_T               (the mass outside the top k)
/// ```
///
/// Student: `log q = log_softmax(s / T)`; its mass outside the k classes is
/// `log q_rest = logsumexp_{c ∉ K} log q_c` (masked log-sum-exp, never `1 − Σ q`).
///
/// - `Bucket`: `Σ_i p_i (log p_i − log q_i) + r (log r − log q_rest)`;
/// - `Uniform`: the rest spread as `r / (C − k)` per class:
///   `Σ_i p_i (log p_i − log q_i) + r (log r − log(C − k)) − r/(C − k) · Σ_{c ∉ K} log q_c`;
/// - `Renorm`: `Σ_i p̃_i (log p̃_i − log q̃_i)` with `p̃ = softmax(v / T)` and `q̃` the
///   student's probabilities renormalised over the k classes.
fn sparse_kl_per_sample(
    student: &Tensor,
    indices: &Tensor,
    values: &Tensor,
    tail: &Tensor,
    temperature: f64,
    mode: SparseTail,
) -> Result<Tensor, tch::TchError> {
    let c = student.size()[1];
    let k = indices.size()[1];
    let v = values
        .f_detach()?
        .f_to_kind(Kind::Float)?
        .f_div_scalar(temperature)?;
    let tail = tail.f_detach()?.f_to_kind(Kind::Float)?;
    let log_q = student
        .f_div_scalar(temperature)?
        .f_log_softmax(-1, Kind::Float)?;
    let log_q_k = log_q.f_gather(1, indices, false)?;
    if mode == SparseTail::Renorm {
        let log_p = v.f_log_softmax(-1, Kind::Float)?;
        let log_q_renorm = log_q_k.f_log_softmax(-1, Kind::Float)?;
        return kl_terms(&log_p, &log_q_renorm);
    }
    let lse_v = v.f_logsumexp([-1i64].as_slice(), false)?;
    let lse_t = lse_v.f_logaddexp(&tail)?;
    let log_p = v.f_sub(&lse_t.f_unsqueeze(-1)?)?;
    let head = kl_terms(&log_p, &log_q_k)?;
    if k >= c {
        // No class outside the top k: the tail mass is 0 and so is its term.
        return Ok(head);
    }
    let log_r = tail.f_sub(&lse_t)?;
    let r = log_r.f_exp()?;
    let has_tail = r.f_gt(0.0)?;
    let rest = match mode {
        SparseTail::Bucket => {
            let log_q_rest = log_q
                .f_scatter_value(1, indices, f64::NEG_INFINITY)?
                .f_logsumexp([-1i64].as_slice(), false)?;
            r.f_mul(&log_r.f_sub(&log_q_rest)?)?
        }
        SparseTail::Uniform => {
            let others = (c - k) as f64;
            let sum_rest = log_q
                .f_sum_dim_intlist(-1, false, Kind::Float)?
                .f_sub(&log_q_k.f_sum_dim_intlist(-1, false, Kind::Float)?)?;
            r.f_mul(&log_r.f_sub_scalar(others.ln())?)?
                .f_sub(&r.f_div_scalar(others)?.f_mul(&sum_rest)?)?
        }
        SparseTail::Renorm => unreachable!("handled above"),
    };
    head.f_add(&rest.f_where_scalarother(&has_tail, 0.0)?)
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
        self.check_params()?;
        let soft_i = match self.kind {
            LossKind::Kl => kl_per_sample(student, teacher, self.temperature)?
                .f_mul_scalar(self.temperature * self.temperature)?,
            LossKind::Mse => mse_per_sample(student, teacher)?,
        };
        self.weigh(student, soft_i, labels, labelled)
    }

    /// The loss of one batch against soft targets of either form: dense targets as
    /// [`DistillLoss::compute`]; sparse (top-k) targets with the same weighting, `T²` and batch
    /// mean, the soft term being `T² ·` the sparse KL of [`DistillLoss::sparse_tail`]:
    ///
    /// ```text
    /// lse_T   = logaddexp(logsumexp_i(v_i / T), tail)       teacher's row log-sum-exp at T
    /// log p_i = v_i / T − lse_T,  r = exp(tail − lse_T)     top-k and tail probabilities
    /// bucket:  Σ_i p_i log(p_i / q_i) + r log(r / q_rest),  q_rest = Σ_{c ∉ K} q_c (log space)
    /// uniform: Σ_i p_i log(p_i / q_i) + Σ_{c ∉ K} (r/(C−k)) log((r/(C−k)) / q_c)
    /// renorm:  Σ_i p̃_i log(p̃_i / q̃_i),  p̃ = p / Σ_K p,  q̃ = q / Σ_K q
    /// ```
    ///
    /// with `q = softmax(s / T)` the student's (Hinton et al. 2015, section 2). With k = C every
    /// variant equals the dense KL.
    ///
    /// # Errors
    /// [`tch::TchError::Shape`] for sparse targets with [`LossKind::Mse`] (it needs every
    /// logit), shapes that do not fit (`indices`/`values` `[B, k]` with `1 ≤ k ≤ C`, tail
    /// `[B]`), a bad temperature/alpha; libtorch's errors (e.g. an index outside `0..C`).
    pub fn compute_targets(
        &self,
        student: &Tensor,
        targets: &SoftTargets,
        labels: &Tensor,
        labelled: Option<&Tensor>,
    ) -> Result<LossParts, tch::TchError> {
        let (indices, values, tail) = match targets {
            SoftTargets::Dense(t) => return self.compute(student, t, labels, labelled),
            SoftTargets::Sparse {
                indices,
                values,
                tail_logsumexp,
            } => (indices, values, tail_logsumexp),
        };
        if self.kind == LossKind::Mse {
            return Err(shape_err(
                "the MSE loss needs dense teacher logits, got top-k targets".into(),
            ));
        }
        let size = student.size();
        let fits = size.len() == 2
            && indices.size().len() == 2
            && indices.size()[0] == size[0]
            && (1..=size[1]).contains(&indices.size()[1])
            && values.size() == indices.size()
            && tail.size() == [size[0]];
        if !fits {
            return Err(shape_err(format!(
                "student logits [batch, classes] with top-k indices and values [batch, k] \
                 (1 ≤ k ≤ classes) and tail [batch] expected, got {:?}, {:?}, {:?}, {:?}",
                size,
                indices.size(),
                values.size(),
                tail.size()
            )));
        }
        self.check_params()?;
        let device = student.device();
        let soft_i = sparse_kl_per_sample(
            student,
            &indices.f_to_device(device)?,
            &values.f_to_device(device)?,
            &tail.f_to_device(device)?,
            self.temperature,
            self.sparse_tail,
        )?
        .f_mul_scalar(self.temperature * self.temperature)?;
        self.weigh(student, soft_i, labels, labelled)
    }

    fn check_params(&self) -> Result<(), tch::TchError> {
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
        Ok(())
    }

    /// Combines the per-sample soft term `soft_i` (`f32 [B]`) with the cross-entropy as
    /// documented on [`DistillLoss::compute`].
    fn weigh(
        &self,
        student: &Tensor,
        soft_i: Tensor,
        labels: &Tensor,
        labelled: Option<&Tensor>,
    ) -> Result<LossParts, tch::TchError> {
        let b = student.size()[0];
        if labels.size() != [b] {
            return Err(shape_err(format!(
                "labels must be [{b}], got {:?}",
                labels.size()
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
                sparse_tail: SparseTail::Bucket,
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
                    sparse_tail: SparseTail::Bucket,
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
                sparse_tail: SparseTail::Bucket,
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
                sparse_tail: SparseTail::Bucket,
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
            sparse_tail: SparseTail::Bucket,
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
            sparse_tail: SparseTail::Bucket,
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

    const TAILS: [SparseTail; 3] = [SparseTail::Bucket, SparseTail::Uniform, SparseTail::Renorm];

    /// The top-k targets of dense teacher logits `[B, C]` at temperature `t`, with the tail
    /// computed in float64 from the full rows (as the teacher-server does in f32).
    fn top_k(teacher: &Tensor, k: i64, t: f64) -> SoftTargets {
        let (values, indices) = teacher.topk(k, -1, true, true);
        let masked =
            (teacher.to_kind(Kind::Double) / t).scatter_value(1, &indices, f64::NEG_INFINITY);
        let tail = masked
            .logsumexp([-1i64].as_slice(), false)
            .to_kind(Kind::Float);
        SoftTargets::Sparse {
            indices,
            values,
            tail_logsumexp: tail,
        }
    }

    fn relative(got: f64, want: f64) -> f64 {
        (got - want).abs() / want.abs().max(1e-12)
    }

    #[test]
    fn with_k_equal_to_the_classes_every_tail_mode_is_the_dense_loss() {
        tch::manual_seed(3);
        let s = Tensor::randn([6, 7], tch::kind::FLOAT_CPU) * 2.0;
        let t = Tensor::randn([6, 7], tch::kind::FLOAT_CPU) * 3.0;
        let y = Tensor::from_slice(&[0i64, 1, 2, 3, 4, 5]);
        let mask = Tensor::from_slice(&[true, false, true, true, false, true]);
        for temperature in [1.0, 2.5] {
            let targets = top_k(&t, 7, temperature);
            let SoftTargets::Sparse { tail_logsumexp, .. } = &targets else {
                unreachable!()
            };
            assert_eq!(
                Vec::<f32>::try_from(tail_logsumexp).unwrap(),
                [f32::NEG_INFINITY; 6]
            );
            for sparse_tail in TAILS {
                let loss = DistillLoss {
                    kind: LossKind::Kl,
                    temperature,
                    alpha: 0.8,
                    sparse_tail,
                };
                for labelled in [None, Some(&mask)] {
                    let dense = loss.compute(&s, &t, &y, labelled).unwrap();
                    let sparse = loss.compute_targets(&s, &targets, &y, labelled).unwrap();
                    let (d, sp) = (value(&dense.total), value(&sparse.total));
                    assert!(
                        relative(sp, d) <= 1e-6,
                        "{sparse_tail} T={temperature}: sparse {sp}, dense {d}"
                    );
                    assert!(relative(sparse.soft, dense.soft) <= 1e-6);
                    assert_eq!(sparse.hard, dense.hard);
                }
            }
        }
    }

    fn json_rows<T>(v: &Value, f: impl Fn(&Value) -> T) -> Vec<Vec<T>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(&f).collect())
            .collect()
    }

    /// The float64 cases of `tests/data/kd_sparse.json`, written by `kd_sparse.py` (plain
    /// Python, independent of this code).
    #[test]
    fn shared_sparse_cases() {
        let doc: Value = serde_json::from_str(include_str!("../tests/data/kd_sparse.json"))
            .expect("tests/data/kd_sparse.json is valid JSON");
        let cases = doc["cases"].as_array().unwrap();
        assert!(cases.len() >= 4);
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let s = json_tensor(&case["student_logits"]);
            let b = s.size()[0];
            let k = case["top_k"].as_i64().unwrap();
            let indices: Vec<i64> = json_rows(&case["indices"], |x| x.as_i64().unwrap()).concat();
            let values: Vec<f32> =
                json_rows(&case["values"], |x| x.as_f64().unwrap() as f32).concat();
            let tail: Vec<f32> = case["tail_logsumexp"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().map_or(f32::NEG_INFINITY, |v| v as f32))
                .collect();
            let targets = SoftTargets::Sparse {
                indices: Tensor::from_slice(&indices).view([b, k]),
                values: Tensor::from_slice(&values).view([b, k]),
                tail_logsumexp: Tensor::from_slice(&tail),
            };
            let labels: Vec<i64> = case["labels"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l.as_i64().unwrap())
                .collect();
            let y = Tensor::from_slice(&labels);
            let mask = case.get("labelled").map(|m| {
                let marks: Vec<bool> = m
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_bool().unwrap())
                    .collect();
                Tensor::from_slice(&marks)
            });
            for sparse_tail in TAILS {
                let loss = DistillLoss {
                    kind: LossKind::Kl,
                    temperature: case["temperature"].as_f64().unwrap(),
                    alpha: case["alpha"].as_f64().unwrap(),
                    sparse_tail,
                };
                let parts = loss
                    .compute_targets(&s, &targets, &y, mask.as_ref())
                    .unwrap();
                let want = &case[sparse_tail.to_string()];
                close(
                    value(&parts.total),
                    want["loss"].as_f64().unwrap(),
                    &format!("{name} {sparse_tail} loss"),
                );
                close(
                    parts.soft,
                    want["soft"].as_f64().unwrap(),
                    &format!("{name} {sparse_tail} soft"),
                );
            }
        }
    }

    #[test]
    fn sparse_gradients_reach_the_student_only_and_stay_finite() {
        tch::manual_seed(5);
        let t = Tensor::randn([4, 9], tch::kind::FLOAT_CPU) * 3.0;
        let y = Tensor::from_slice(&[0i64, 1, 2, 3]);
        for k in [3, 9] {
            for sparse_tail in TAILS {
                let s = (Tensor::randn([4, 9], tch::kind::FLOAT_CPU) * 2.0).set_requires_grad(true);
                let SoftTargets::Sparse {
                    indices,
                    values,
                    tail_logsumexp,
                } = top_k(&t, k, 2.0)
                else {
                    unreachable!()
                };
                let values = values.set_requires_grad(true);
                let tail = tail_logsumexp.set_requires_grad(true);
                let targets = SoftTargets::Sparse {
                    indices,
                    values: values.shallow_clone(),
                    tail_logsumexp: tail.shallow_clone(),
                };
                let loss = DistillLoss {
                    kind: LossKind::Kl,
                    temperature: 2.0,
                    alpha: 0.9,
                    sparse_tail,
                };
                let parts = loss.compute_targets(&s, &targets, &y, None).unwrap();
                parts.total.backward();
                let g = s.grad();
                assert_eq!(
                    value(&g.isnan().any()),
                    0.0,
                    "k {k} {sparse_tail}: NaN gradient"
                );
                assert!(value(&g.abs().sum(Kind::Float)) > 0.0);
                for teacher in [values.grad(), tail.grad()] {
                    assert!(!teacher.defined() || value(&teacher.abs().sum(Kind::Float)) == 0.0);
                }
            }
        }
    }

    #[test]
    fn sparse_targets_with_mse_or_bad_shapes_are_errors() {
        let s = Tensor::zeros([2, 4], tch::kind::FLOAT_CPU);
        let y = Tensor::from_slice(&[0i64, 1]);
        let t = top_k(&Tensor::randn([2, 4], tch::kind::FLOAT_CPU), 2, 1.0);
        let mse = DistillLoss {
            kind: LossKind::Mse,
            temperature: 1.0,
            alpha: 1.0,
            sparse_tail: SparseTail::Bucket,
        };
        let e = mse
            .compute_targets(&s, &t, &y, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("MSE") && e.contains("top-k"), "{e}");
        let kl = DistillLoss {
            kind: LossKind::Kl,
            ..mse
        };
        let wide = Tensor::zeros([2, 1], tch::kind::FLOAT_CPU);
        let e = kl
            .compute_targets(&wide, &t, &y, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[2, 1]") && e.contains("[2, 2]"), "{e}");
    }

    #[test]
    fn sparse_tail_parses() {
        for (s, want) in [
            ("bucket", SparseTail::Bucket),
            ("uniform", SparseTail::Uniform),
            ("renorm", SparseTail::Renorm),
        ] {
            assert_eq!(
                <SparseTail as clap::ValueEnum>::from_str(s, true).unwrap(),
                want
            );
            assert_eq!(want.to_string(), s);
        }
        assert_eq!(SparseTail::default(), SparseTail::Bucket);
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
