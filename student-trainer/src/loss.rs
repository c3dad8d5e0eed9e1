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
//!
//! # Divergences (`--loss`)
//!
//! With `p = softmax(t/T)` the teacher's and `q = softmax(s/T)` the student's distribution, the
//! soft term of a sample (or token) is `T² · D` with
//!
//! ```text
//! kl:   D = KL(p ‖ q) = Σ_c p_c log(p_c / q_c)             forward KL (Hinton et al. 2015)
//! rkl:  D = KL(q ‖ p) = Σ_c q_c log(q_c / p_c)             reverse KL
//! jsd:  D = β · KL(p ‖ m) + (1 − β) · KL(q ‖ m),  m = β·p + (1 − β)·q,   0 < β < 1
//! ```
//!
//! `jsd` is the generalized Jensen–Shannon divergence `D_JSD(β)(P ‖ Q)` of GKD (Agarwal et al.
//! 2024, "On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes",
//! arXiv:2306.13649; TRL's `generalized_jsd_loss` cites it as Eq. (1)) with `P = p` the teacher
//! and `Q = q` the student, as GKD writes `D(p_T ‖ p_S)`. `β` (`--jsd-beta`) follows the
//! paper's convention, which TRL's `GKDTrainer` also computes for `0 < β < 1` since v0.16
//! (huggingface/trl PR #3043):
//!
//! - `β → 0`: `m → q` and `D = β · KL(p ‖ q) + O(β²)`: the forward KL scaled by `β`
//!   (`D/β → KL(p ‖ q)`), so the loss itself vanishes;
//! - `β → 1`: `m → p` and `D = (1 − β) · KL(q ‖ p) + O((1 − β)²)`: the reverse KL scaled by
//!   `1 − β`, vanishing as well;
//! - `β = 0.5`: the symmetric Jensen–Shannon divergence (at most `ln 2`).
//!
//! The endpoints are refused (`β` must lie in the open interval): at exactly `β = 0` / `β = 1`
//! TRL switches to the unscaled forward / reverse KL, a jump from the formula's limit 0; those
//! are `--loss kl` / `--loss rkl` here. The other convention in use (TRL before v0.16) mixes
//! `m = β·q + (1 − β)·p` with the same weights on the two KLs, `β·KL(p ‖ m) + (1 − β)·KL(q ‖ m)`;
//! with `β' = 1 − β` that is `(1 − β')·KL(p ‖ m) + β'·KL(q ‖ m)`, `m` the paper's mixture at
//! `β'`. Continuous at the ends, it tends to the unscaled reverse KL as `β → 0` and to the
//! unscaled forward KL as `β → 1`. Its `β` is not a reparametrisation of the paper's (the
//! weights of the two KLs are swapped), so a value tuned there does not carry over.
//!
//! `k1` ([`k1_sampled_loss`], on-policy distillation) needs no teacher distribution, only the
//! teacher's log-probability `log p(x)` of each token `x` the student sampled from `q`: with
//! `k1 = log q(x) − log p(x)` (Schulman 2020, "Approximating KL Divergence") as a negative
//! REINFORCE advantage, `loss = (1/|R|) Σ sg(k1) · log q(x)` over the sampled tokens `R`
//! (`sg` = stop-gradient), the loss of the Tinker cookbook's on-policy distillation (Lu et al.
//! 2025, Thinking Machines, "On-Policy Distillation") and of slime's `--use-opd`. For `x ~ q`,
//! `E[k1] = KL(q ‖ p)` and `E[k1 · ∇log q(x)] = ∇KL(q ‖ p)`: an unbiased one-sample estimate
//! of the reverse KL's gradient (without `rkl`'s `T²`), where `rkl` sums over the whole
//! vocabulary and needs the teacher's full row or its top k.
//!
//! # Sequences (token-level distillation)
//!
//! For a language model the logits are `[B, S, V]` and the labels `i64 [B, S]`, the next token
//! of each position or [`IGNORE_INDEX`] (`-100`, PyTorch's `ignore_index`) where there is none
//! (padding, the last position). The loss is the per-token loss above summed over the real
//! tokens and divided by their number; ignored positions are dropped before anything is
//! computed, so whatever they hold (NaN or infinite teacher values, out-of-range indices)
//! reaches neither the loss nor the gradients.

use crate::soft_targets::SoftTargets;
use tch::{Kind, Reduction, Tensor};

/// The soft (teacher-matching) term of the loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum LossKind {
    /// `T² · KL(softmax(t/T) ‖ softmax(s/T))`, the forward KL (Hinton et al. 2015, section 2).
    Kl,
    /// `T² · KL(softmax(s/T) ‖ softmax(t/T))`, the reverse KL.
    Rkl,
    /// `T² ·` the generalized Jensen–Shannon divergence of GKD (Agarwal et al. 2024) at
    /// [`DistillLoss::jsd_beta`]; formula and convention in the [module documentation](self).
    Jsd,
    /// `mean_c (s_c − t_c)²` on raw logits (Ba & Caruana 2014); the temperature is not used.
    Mse,
}

impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LossKind::Kl => "kl",
            LossKind::Rkl => "rkl",
            LossKind::Jsd => "jsd",
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
    /// Softmax temperature `T` of the soft term, in [`MIN_TEMPERATURE`]`..=`[`MAX_TEMPERATURE`];
    /// unused by [`LossKind::Mse`].
    pub temperature: f64,
    /// Weight of the soft term for labelled samples, in `[0, 1]`; `1 − alpha` weighs the
    /// cross-entropy. Unlabelled samples always use weight 1.
    pub alpha: f64,
    /// How sparse (top-k) targets treat the teacher's mass outside the k classes.
    pub sparse_tail: SparseTail,
    /// `β` of [`LossKind::Jsd`], in `(0, 1)` (the paper's convention, see the
    /// [module documentation](self)); unused by the other kinds.
    pub jsd_beta: f64,
}

/// The label of a sequence position that has no next token (padding, the last position),
/// PyTorch's `ignore_index`: the position is left out of the loss (the data's constant).
pub use crate::data::IGNORE_INDEX;

/// The smallest temperature accepted (`--temperature`); see [`MAX_TEMPERATURE`] for the range.
pub const MIN_TEMPERATURE: f64 = 0.01;

/// The largest temperature accepted. In `[MIN_TEMPERATURE, MAX_TEMPERATURE]` = `[0.01, 100]`
/// the soft term `T² · D(softmax(t/T) ‖ softmax(s/T))` is computed in `f32` without overflow, and
/// is non-zero and accurate (to 0.1 % for logit differences of 1) wherever the two
/// distributions differ:
///
/// - Overflow: the teacher's logits are divided by `T` after subtracting their row maximum
///   ([`teacher_log_softmax`]), so no finite logit (up to `f32`'s ±3.4e38, the most the wire
///   carries) becomes `+inf` at any `T`; the forward KL and the JSD are then finite (bounded by
///   the student's logit spread over `T`, plus `ln C`; the student's own logits would overflow
///   only beyond ±3.4e36, see [`student_log_softmax`]), and `T²` lies in `[1e-4, 1e4]` (as an
///   `f32` factor it would underflow to 0 below `T ≈ 1e-19` and overflow above `1.8e19`). The
///   reverse KL is `+∞` where the teacher's probability is exactly 0 under student mass, as it
///   is at every `T`.
/// - Small `T`: the teacher's distribution tends to one-hot and the soft term itself vanishes,
///   `T² · KL → T · (max_c s_c − s_a)` (`a` the teacher's top class), with gradients
///   `T · (q − p)`: at `T = 0.01` they are 1 % of those at `T = 1`, and below that the soft term
///   stops teaching anything next to the cross-entropy (at `T = 1e-30` it is 0 in `f32`). The
///   teacher also receives `T` as an `f32`, where 0 means 1 and values below 1.2e-38 are
///   subnormal.
/// - Large `T`: both distributions flatten towards uniform. Each `log p_c − log q_c` is the
///   difference of two values near `−ln C`, exact only to `f32`'s resolution there (about 1e-7),
///   and the KL, a sum of such terms, cancels down to about `½ · Var((t − s) / T)`: its relative
///   error grows like `1e-7 · (T / Δ)²` for logit differences `Δ`. At `T = 100` and `Δ = 1`
///   that is 0.1 %; at `T = 1000` it would be 10 %, and differences of 0.1 would round to
///   noise. The loss then tends to matching the logits (Hinton et al. 2015, section 2.1), which
///   `--loss mse` computes directly, without a temperature.
pub const MAX_TEMPERATURE: f64 = 100.0;

/// The default `--jsd-beta`, TRL's `GKDConfig.beta` default: the symmetric JSD.
pub const DEFAULT_JSD_BETA: f64 = 0.5;

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
    /// The rows the means are over: the samples of `[B, C]` logits (`B`), the real tokens
    /// (label ≠ [`IGNORE_INDEX`]) of `[B, S, V]` logits.
    pub tokens: i64,
}

/// The teacher's `log_softmax(t / T)` over the last dimension, in `f32`, detached, computed as
/// `log_softmax((t − m) / T)` with `m` the row's largest value (equal in exact arithmetic). The
/// shifted values are ≤ 0, so dividing by a small `T` can only overflow to `-inf` (a probability
/// of 0), never to `+inf`, which would turn the whole row into NaN: any finite teacher logits
/// give a finite log-softmax at any temperature. A row without a finite maximum (all `-inf`, or
/// holding `+inf` or NaN) is left unshifted.
fn teacher_log_softmax(t: &Tensor, temperature: f64) -> Result<Tensor, tch::TchError> {
    let t = t.f_detach()?;
    t.f_sub(&row_max(&t)?)?
        .f_div_scalar(temperature)?
        .f_log_softmax(-1, Kind::Float)
}

/// The student's `log_softmax(s / T)` over the last dimension, in `f32`, with its gradients.
/// Unlike the teacher's it is not shifted by the row maximum (two more passes over the largest
/// tensor of a language model's loss): at `T ≥ MIN_TEMPERATURE`, `s / T` overflows only for
/// logits beyond ±3.4e36, a student that has diverged already, whose loss is then not finite and
/// reported so.
fn student_log_softmax(s: &Tensor, temperature: f64) -> Result<Tensor, tch::TchError> {
    s.f_div_scalar(temperature)?.f_log_softmax(-1, Kind::Float)
}

/// The largest value of each row of `z` (last dimension, kept as a dimension of 1), detached;
/// 0 where it is not finite.
fn row_max(z: &Tensor) -> Result<Tensor, tch::TchError> {
    let m = z.f_detach()?.f_amax([-1i64].as_slice(), true)?;
    m.f_where_scalarother(&m.f_isfinite()?, 0.0)
}

/// The teacher's top-k `values` (`[B, k]`) and `tail` (`[B]`, the log-sum-exp of the other
/// logits at `T`) at temperature `T`, as `f32` and detached, both shifted by the row's largest
/// value `m / T`: `((v − m) / T, tail − m / T)`. The sparse losses depend only on differences of
/// the two, so the shift changes nothing in exact arithmetic, and as in
/// [`teacher_log_softmax`] no finite value becomes `+inf` at a small `T`; where `m / T`
/// overflows to `+inf` the tail becomes `-inf`, the mass it holds next to `m` (0 in `f32`).
fn tempered_top_k(
    values: &Tensor,
    tail: &Tensor,
    temperature: f64,
) -> Result<(Tensor, Tensor), tch::TchError> {
    let v = values.f_detach()?.f_to_kind(Kind::Float)?;
    let m = row_max(&v)?;
    let tail = tail.f_detach()?.f_to_kind(Kind::Float)?;
    // A tail of -inf (no mass outside the top k) stays -inf, whatever the shift.
    let shifted_tail = tail
        .f_sub(&m.f_squeeze_dim(-1)?.f_div_scalar(temperature)?)?
        .f_where_scalarother(&tail.f_ne(f64::NEG_INFINITY)?, f64::NEG_INFINITY)?;
    Ok((v.f_sub(&m)?.f_div_scalar(temperature)?, shifted_tail))
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
    let log_p = teacher_log_softmax(teacher, temperature)?;
    let log_q = student_log_softmax(student, temperature)?;
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

/// `KL(a ‖ b) = Σ_c a_c (log a_c − log b_c)` per row of log-probabilities over the same support
/// (last dimension), `f32`. Where `a_c = 0` the term is exactly 0, in the value and in the
/// gradients: the log-ratio is masked before the product, so `0 · ∞` never appears even where
/// `b_c = 0` too. Where `a_c > 0 = b_c` the value is `+∞`, as the divergence is.
fn kl_rows(log_a: &Tensor, log_b: &Tensor) -> Result<Tensor, tch::TchError> {
    let a = log_a.f_exp()?;
    let positive = a.f_gt(0.0)?;
    let ratio = log_a.f_sub(log_b)?.f_where_scalarother(&positive, 0.0)?;
    a.f_mul(&ratio)?.f_sum_dim_intlist(-1, false, Kind::Float)
}

/// `D(p ‖ q)` per row for the divergence `kind` (see the [module documentation](self)), from the
/// teacher's log-probabilities `log_p` and the student's `log_q` over the same support.
fn divergence_rows(
    kind: LossKind,
    beta: f64,
    log_p: &Tensor,
    log_q: &Tensor,
) -> Result<Tensor, tch::TchError> {
    match kind {
        LossKind::Kl => kl_rows(log_p, log_q),
        LossKind::Rkl => kl_rows(log_q, log_p),
        LossKind::Jsd => {
            // log m = logaddexp(log p + log β, log q + log(1 − β)).
            let log_m = log_p
                .f_add_scalar(beta.ln())?
                .f_logaddexp(&log_q.f_add_scalar((-beta).ln_1p())?)?;
            kl_rows(log_p, &log_m)?
                .f_mul_scalar(beta)?
                .f_add(&kl_rows(log_q, &log_m)?.f_mul_scalar(1.0 - beta)?)
        }
        LossKind::Mse => Err(shape_err(
            "the MSE loss is not a divergence between distributions".into(),
        )),
    }
}

/// `D(softmax(t/T) ‖ softmax(s/T))` per sample for `loss.kind` ([`LossKind::Rkl`] or
/// [`LossKind::Jsd`]) on dense logits `[B, C]`, teacher detached. Returns `f32 [B]` (before
/// `T²`).
fn dense_divergence_per_sample(
    loss: &DistillLoss,
    student: &Tensor,
    teacher: &Tensor,
) -> Result<Tensor, tch::TchError> {
    let (kind, beta, temperature) = (loss.kind, loss.jsd_beta, loss.temperature);
    let log_p = teacher_log_softmax(teacher, temperature)?;
    let log_q = student_log_softmax(student, temperature)?;
    divergence_rows(kind, beta, &log_p, &log_q)
}

/// The sparse `loss.kind` ([`LossKind::Rkl`] or [`LossKind::Jsd`]) per sample, `f32 [B]`
/// (before `T²`), on the support of `loss.sparse_tail`, the same as the sparse KL's of
/// [`sparse_kl_per_sample`] (whose notation this uses):
///
/// - `Bucket`: the k + 1 outcomes `(p_1..p_k, r)` against `(q_1..q_k, q_rest)`;
/// - `Uniform`: all C classes, the teacher's tail spread as `r / (C − k)` per class, against the
///   student's full `q`;
/// - `Renorm`: the k classes, `p̃ = softmax(v / T)` against `q̃`, the student renormalised over
///   them.
///
/// With k = C every mode is the dense divergence. A tail of `-inf` with k < C (the teacher puts
/// no mass outside its top k) makes the reverse KL infinite, as it is: the student always keeps
/// some mass there.
fn sparse_divergence_per_sample(
    loss: &DistillLoss,
    student: &Tensor,
    indices: &Tensor,
    values: &Tensor,
    tail: &Tensor,
) -> Result<Tensor, tch::TchError> {
    let (kind, beta, temperature, mode) =
        (loss.kind, loss.jsd_beta, loss.temperature, loss.sparse_tail);
    let (n, c) = (student.size()[0], student.size()[1]);
    let k = indices.size()[1];
    let (v, tail) = tempered_top_k(values, tail, temperature)?;
    let log_q = student_log_softmax(student, temperature)?;
    let log_q_k = log_q.f_gather(1, indices, false)?;
    if mode == SparseTail::Renorm {
        let log_p = v.f_log_softmax(-1, Kind::Float)?;
        let log_q_renorm = log_q_k.f_log_softmax(-1, Kind::Float)?;
        return divergence_rows(kind, beta, &log_p, &log_q_renorm);
    }
    let lse_t = v
        .f_logsumexp([-1i64].as_slice(), false)?
        .f_logaddexp(&tail)?;
    let log_p_k = v.f_sub(&lse_t.f_unsqueeze(-1)?)?;
    if k >= c {
        // No class outside the top k: the k classes are the whole support.
        return divergence_rows(kind, beta, &log_p_k, &log_q_k);
    }
    let log_r = tail.f_sub(&lse_t)?;
    match mode {
        SparseTail::Bucket => {
            let log_q_rest = log_q
                .f_scatter_value(1, indices, f64::NEG_INFINITY)?
                .f_logsumexp([-1i64].as_slice(), false)?;
            let log_p = Tensor::f_cat(&[log_p_k, log_r.f_unsqueeze(-1)?], -1)?;
            let log_q = Tensor::f_cat(&[log_q_k, log_q_rest.f_unsqueeze(-1)?], -1)?;
            divergence_rows(kind, beta, &log_p, &log_q)
        }
        SparseTail::Uniform => {
            let log_p = log_r
                .f_sub_scalar(((c - k) as f64).ln())?
                .f_unsqueeze(-1)?
                .f_repeat([1, c])?
                .f_scatter(1, indices, &log_p_k)?;
            debug_assert_eq!(log_p.size(), [n, c]);
            divergence_rows(kind, beta, &log_p, &log_q)
        }
        SparseTail::Renorm => unreachable!("handled above"),
    }
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
    let (v, tail) = tempered_top_k(values, tail, temperature)?;
    let log_q = student_log_softmax(student, temperature)?;
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

/// Checks a temperature: finite and in `[MIN_TEMPERATURE, MAX_TEMPERATURE]`.
fn check_temperature(temperature: f64) -> Result<(), tch::TchError> {
    if !(temperature > 0.0 && temperature.is_finite()) {
        return Err(shape_err(format!(
            "temperature must be positive, got {temperature}"
        )));
    }
    if !(MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&temperature) {
        return Err(shape_err(format!(
            "temperature must lie in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}] (where the loss is \
             finite and non-zero in f32), got {temperature:e}"
        )));
    }
    Ok(())
}

/// The flat indices `b·S + s` of the real tokens (label ≠ [`IGNORE_INDEX`]) of `labels`
/// (`[B, S]`), in order: `i64 [|R|]`, on the labels' device.
fn real_rows(labels: &Tensor) -> Result<Tensor, tch::TchError> {
    labels
        .f_reshape([-1])?
        .f_ne(IGNORE_INDEX)?
        .f_nonzero()?
        .f_reshape([-1])
}

/// The rows `rows` (from [`real_rows`]) of `t` (`[B, S, ...]`), flattened to `[|R|, ...]`.
fn pick_rows(t: &Tensor, rows: &Tensor) -> Result<Tensor, tch::TchError> {
    t.f_flatten(0, 1)?
        .f_index_select(0, &rows.f_to_device(t.device())?)
}

/// The loss of a batch without a real token: an empty sum of the student's logits, exactly 0,
/// attached to the graph so that backward works (and gives zero gradients).
fn empty_loss(student: &Tensor) -> Result<Tensor, tch::TchError> {
    student
        .f_reshape([-1])?
        .f_narrow(0, 0, 0)?
        .f_sum(Kind::Float)
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
    /// ignored and may hold any value. [`LossKind::Rkl`] and [`LossKind::Jsd`] replace the KL
    /// as in the [module documentation](self), with the same `T²`.
    ///
    /// - `student`: logits `[B, C]`, `f32`, carrying gradients;
    /// - `teacher`: logits `[B, C]` (detached here; gradients never reach it);
    /// - `labels`: `i64` `[B]`, in `0..C` where labelled;
    /// - `labelled`: `bool` `[B]`, `None` meaning every sample is labelled.
    ///
    /// Sequences: with `student` and `teacher` `[B, S, V]` and `labels` `i64 [B, S]` this is the
    /// token-level loss of [`DistillLoss::compute_targets`].
    ///
    /// # Errors
    /// [`tch::TchError::Shape`] for mismatched shapes or a bad temperature/alpha/beta, and
    /// libtorch's error for a label outside `0..C`.
    pub fn compute(
        &self,
        student: &Tensor,
        teacher: &Tensor,
        labels: &Tensor,
        labelled: Option<&Tensor>,
    ) -> Result<LossParts, tch::TchError> {
        if student.dim() == 3 {
            let targets = SoftTargets::Dense(teacher.shallow_clone());
            return self.compute_sequence(student, &targets, labels, labelled);
        }
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
            LossKind::Rkl | LossKind::Jsd => dense_divergence_per_sample(self, student, teacher)?
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
    /// variant equals the dense KL. [`LossKind::Rkl`] and [`LossKind::Jsd`] use the same
    /// supports (k + 1 outcomes for `bucket`, all C classes for `uniform`, the k classes
    /// renormalised for `renorm`) with their divergence in place of the KL; with k = C they
    /// equal their dense loss.
    ///
    /// # Sequences
    ///
    /// With `student` logits `[B, S, V]`, targets dense `[B, S, V]` or sparse (`indices` and
    /// `values` `[B, S, k]`, tail `[B, S]`), `labels` `i64 [B, S]` and `labelled` `bool [B]`
    /// (per sequence) or `[B, S]` (per token) or `None`, the loss is token-level:
    ///
    /// ```text
    /// R    = {(b, s) : labels[b, s] ≠ -100}                    the real tokens
    /// loss = (1/|R|) Σ_{(b,s) ∈ R} [ w · soft_bs + (1 − w) · CE_bs ]
    /// ```
    ///
    /// with `soft_bs`, `CE_bs` and `w` (alpha, or 1 where not labelled) exactly as a sample of
    /// the `[B, C]` case (`CE_bs = −log softmax(s_bs)[labels[b, s]]`): the real tokens are
    /// gathered into rows and the `[B, C]` loss is taken over them. Ignored positions are left
    /// out before anything is computed, so they may hold anything (NaN or infinite teacher
    /// values, out-of-range indices) and get exactly zero gradient. A batch without a real token
    /// gives a loss of exactly 0 (still differentiable: every gradient 0), `soft = hard = 0` and
    /// [`LossParts::tokens`] 0, never NaN; the caller may skip its step.
    ///
    /// # Errors
    /// [`tch::TchError::Shape`] for sparse targets with [`LossKind::Mse`] (it needs every
    /// logit), shapes that do not fit (`indices`/`values` `[B, k]` with `1 ≤ k ≤ C`, tail
    /// `[B]`; or their sequence forms), a bad temperature/alpha/beta; libtorch's errors (e.g. a
    /// label or an index outside `0..C` at a real position).
    pub fn compute_targets(
        &self,
        student: &Tensor,
        targets: &SoftTargets,
        labels: &Tensor,
        labelled: Option<&Tensor>,
    ) -> Result<LossParts, tch::TchError> {
        if student.dim() == 3 {
            return self.compute_sequence(student, targets, labels, labelled);
        }
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
        let (indices, values, tail) = (
            indices.f_to_device(device)?,
            values.f_to_device(device)?,
            tail.f_to_device(device)?,
        );
        let soft_i = match self.kind {
            LossKind::Kl => sparse_kl_per_sample(
                student,
                &indices,
                &values,
                &tail,
                self.temperature,
                self.sparse_tail,
            )?,
            _ => sparse_divergence_per_sample(self, student, &indices, &values, &tail)?,
        }
        .f_mul_scalar(self.temperature * self.temperature)?;
        self.weigh(student, soft_i, labels, labelled)
    }

    /// The token-level loss of a sequence batch (`student` `[B, S, V]`), as documented on
    /// [`DistillLoss::compute_targets`].
    fn compute_sequence(
        &self,
        student: &Tensor,
        targets: &SoftTargets,
        labels: &Tensor,
        labelled: Option<&Tensor>,
    ) -> Result<LossParts, tch::TchError> {
        let size = student.size();
        let (b, s) = (size[0], size[1]);
        self.check_sequence_shapes(&size, targets, labels)?;
        let labelled = match labelled {
            None => None,
            Some(m) if m.size() == [b] => Some(
                m.f_to_kind(Kind::Bool)?
                    .f_unsqueeze(1)?
                    .f_expand([b, s], false)?,
            ),
            Some(m) if m.size() == [b, s] => Some(m.f_to_kind(Kind::Bool)?),
            Some(m) => {
                return Err(shape_err(format!(
                    "labelled mask must be [{b}] (per sequence) or [{b}, {s}] (per token), got \
                     {:?}",
                    m.size()
                )));
            }
        };
        self.check_params()?;
        let rows = real_rows(labels)?;
        let tokens = rows.size()[0];
        if tokens == 0 {
            return Ok(LossParts {
                total: empty_loss(student)?,
                soft: 0.0,
                hard: 0.0,
                tokens: 0,
            });
        }
        let pick = |t: &Tensor| pick_rows(t, &rows);
        let rows_targets = match targets {
            SoftTargets::Dense(t) => SoftTargets::Dense(pick(t)?),
            SoftTargets::Sparse {
                indices,
                values,
                tail_logsumexp,
            } => SoftTargets::Sparse {
                indices: pick(indices)?,
                values: pick(values)?,
                tail_logsumexp: pick(tail_logsumexp)?,
            },
        };
        let labelled = labelled.as_ref().map(pick).transpose()?;
        let mut parts = self.compute_targets(
            &pick(student)?,
            &rows_targets,
            &pick(labels)?,
            labelled.as_ref(),
        )?;
        parts.tokens = tokens;
        Ok(parts)
    }

    /// Checks the shapes of a sequence batch: `labels [B, S]` for student logits `size` =
    /// `[B, S, V]`, dense teacher logits of the same shape, or top-k `[B, S, k]` (1 ≤ k ≤ V) with
    /// a tail `[B, S]` (never for MSE).
    fn check_sequence_shapes(
        &self,
        size: &[i64],
        targets: &SoftTargets,
        labels: &Tensor,
    ) -> Result<(), tch::TchError> {
        let (b, s, v) = (size[0], size[1], size[2]);
        if labels.size() != [b, s] {
            return Err(shape_err(format!(
                "labels must be [batch, seq] = [{b}, {s}] for student logits {size:?}, got {:?}",
                labels.size()
            )));
        }
        match targets {
            SoftTargets::Dense(t) if t.size() != size => {
                return Err(shape_err(format!(
                    "student and teacher logits must both be [batch, seq, vocab], got {size:?} \
                     and {:?}",
                    t.size()
                )));
            }
            SoftTargets::Dense(_) => {}
            SoftTargets::Sparse { .. } if self.kind == LossKind::Mse => {
                return Err(shape_err(
                    "the MSE loss needs dense teacher logits, got top-k targets".into(),
                ));
            }
            SoftTargets::Sparse {
                indices,
                values,
                tail_logsumexp,
            } => {
                let i = indices.size();
                let fits = i.len() == 3
                    && i[..2] == [b, s]
                    && (1..=v).contains(&i[2])
                    && values.size() == i
                    && tail_logsumexp.size() == [b, s];
                if !fits {
                    return Err(shape_err(format!(
                        "student logits [batch, seq, vocab] with top-k indices and values \
                         [batch, seq, k] (1 ≤ k ≤ vocab) and tail [batch, seq] expected, got \
                         {size:?}, {i:?}, {:?}, {:?}",
                        values.size(),
                        tail_logsumexp.size()
                    )));
                }
            }
        }
        Ok(())
    }

    fn check_params(&self) -> Result<(), tch::TchError> {
        check_temperature(self.temperature)?;
        if !(0.0..=1.0).contains(&self.alpha) {
            return Err(shape_err(format!(
                "alpha must lie in [0, 1], got {}",
                self.alpha
            )));
        }
        if self.kind == LossKind::Jsd {
            check_jsd_beta(self.jsd_beta).map_err(shape_err)?;
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
        Ok(LossParts {
            total,
            soft,
            hard,
            tokens: b,
        })
    }
}

/// Checks `β` of [`LossKind::Jsd`]: it must lie in the open interval `(0, 1)`.
///
/// # Errors
/// A one-line message saying what the endpoints would mean and which `--loss` to use instead.
pub fn check_jsd_beta(beta: f64) -> Result<(), String> {
    if beta > 0.0 && beta < 1.0 {
        Ok(())
    } else {
        Err(format!(
            "the generalized JSD needs 0 < beta < 1, got {beta} (as beta → 0 it tends to \
             beta · forward KL and as beta → 1 to (1 − beta) · reverse KL, both vanishing; for the \
             unscaled divergences use --loss kl or --loss rkl)"
        ))
    }
}

/// The loss of one batch of student samples from [`k1_sampled_loss`].
#[derive(Debug)]
pub struct K1Parts {
    /// The loss to back-propagate: scalar `f32`, differentiable with respect to the student's
    /// logits only; exactly 0 (with zero gradients) when there is no real token.
    pub total: Tensor,
    /// The mean of `k1 = log q − log p` over the real tokens, in nats: the Monte-Carlo estimate
    /// of the per-token reverse KL `KL(q ‖ p)` at `T` along the student's samples (without
    /// `T²`), for logging; 0 when there is no real token.
    pub k1: f64,
    /// The number of real tokens `|R|` (label ≠ [`IGNORE_INDEX`]) the means are over.
    pub tokens: i64,
}

/// The sampled-token estimator of the reverse KL's gradient, for on-policy distillation: the
/// student samples `x ~ q`, the teacher scores each sampled token, and the per-token
/// `k1 = log q(x) − log p(x)` is a negative advantage of REINFORCE (Williams 1992). This is
/// the loss of the Tinker cookbook (`tinker_cookbook/distillation/train_on_policy.py`,
/// `incorporate_kl_penalty`, after Thinking Machines' "On-Policy Distillation", Lu et al.
/// 2025: advantage `−(sampled log-prob − teacher log-prob)` per token) and of slime's
/// `--use-opd` (`docs/en/advanced/on-policy-distillation.md`: the token-level reverse KL
/// subtracted from the advantage); `k1` is the first of the KL estimators of Schulman 2020,
/// "Approximating KL Divergence":
///
/// ```text
/// R         = {(b, s) : labels[b, s] ≠ -100}                    the sampled (completion) tokens
/// log q_bs  = log_softmax(s_bs / T)[x_bs],  x_bs = labels[b, s]  the student, at T
/// k1_bs     = log q_bs − log p_bs                               log p_bs = teacher_logp[b, s]
/// loss      = (1/|R|) Σ_{(b,s) ∈ R} sg(k1_bs) · log q_bs           sg = stop-gradient (detach)
/// ∂loss/∂s_bs = (1/|R|) · k1_bs · (onehot(x_bs) − q_bs) / T
/// ```
///
/// For `x ~ q` (the student's own samples, drawn at the same `T`), `E_q[k1] = KL(q ‖ p)` and
/// `E_q[k1 · ∇log q(x)] = Σ_x ∇q(x) (log q(x) − log p(x)) = ∇KL(q ‖ p)` (the term
/// `Σ_x q(x) ∇log q(x) = ∇Σ_x q(x) = 0` drops out): in expectation the gradient is that of
/// the exact per-token reverse KL, without the `T²` of [`LossKind::Rkl`]'s soft term (its
/// gradient is `T²` times this one's expectation). Each token's `k1` is its own advantage
/// (no sum over the tokens that follow: Tinker's default `kl_discount_factor` of 0), so the
/// estimator follows the gradient of the per-token KL at the sampled prefixes. Samples from an
/// older student would need importance weights; this loss assumes they are fresh.
///
/// - `student`: logits `[B, S, V]` (any float kind; computed in `f32`), carrying gradients;
/// - `labels`: `i64 [B, S]`, the sampled next token at each position (`0..V`), or
///   [`IGNORE_INDEX`] at prompt and padding positions;
/// - `teacher_logp`: `[B, S]` (computed in `f32`, detached), the teacher's log-probability at
///   `T` of `labels[b, s]` (teacher-server's `gather_ids`); anything at ignored positions.
///
/// The real positions are gathered first, so whatever the ignored ones hold (NaN or infinite
/// teacher values, any student logits) reaches neither the loss nor the gradients, which are
/// exactly 0 there. A batch without a real token gives a loss of exactly 0 (differentiable,
/// every gradient 0), `k1 = 0` and `tokens = 0`, never NaN. A real token the teacher gives
/// probability 0 (`log p = −∞`) makes `k1` and the loss infinite, as the reverse KL is.
///
/// # Errors
/// [`tch::TchError::Shape`] unless `student` is `[B, S, V]` and `labels` and `teacher_logp`
/// are `[B, S]`, or for a temperature outside `[MIN_TEMPERATURE, MAX_TEMPERATURE]`;
/// libtorch's error for a label outside `0..V` at a real position.
pub fn k1_sampled_loss(
    student: &Tensor,
    labels: &Tensor,
    teacher_logp: &Tensor,
    temperature: f64,
) -> Result<K1Parts, tch::TchError> {
    let size = student.size();
    if size.len() != 3 {
        return Err(shape_err(format!(
            "student logits must be [batch, seq, vocab], got {size:?}"
        )));
    }
    let bs = [size[0], size[1]];
    if labels.size() != bs || teacher_logp.size() != bs {
        return Err(shape_err(format!(
            "labels and teacher log-probabilities must both be [batch, seq] = {bs:?} for \
             student logits {size:?}, got {:?} and {:?}",
            labels.size(),
            teacher_logp.size()
        )));
    }
    check_temperature(temperature)?;
    let rows = real_rows(labels)?;
    let tokens = rows.size()[0];
    if tokens == 0 {
        return Ok(K1Parts {
            total: empty_loss(student)?,
            k1: 0.0,
            tokens: 0,
        });
    }
    let device = student.device();
    let x = pick_rows(labels, &rows)?
        .f_to_kind(Kind::Int64)?
        .f_to_device(device)?;
    let log_p = pick_rows(teacher_logp, &rows)?
        .f_detach()?
        .f_to_kind(Kind::Float)?
        .f_to_device(device)?;
    let log_q = student_log_softmax(&pick_rows(student, &rows)?, temperature)?
        .f_gather(1, &x.f_unsqueeze(1)?, false)?
        .f_squeeze_dim(1)?;
    let k1 = log_q.f_detach()?.f_sub(&log_p)?;
    let total = k1.f_mul(&log_q)?.f_mean(Kind::Float)?;
    let k1_mean = tch::no_grad(|| k1.f_mean(Kind::Double)?.f_double_value(&[]))?;
    Ok(K1Parts {
        total,
        k1: k1_mean,
        tokens,
    })
}

#[cfg(test)]
mod tests;
