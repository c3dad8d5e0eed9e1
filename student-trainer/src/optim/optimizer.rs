//! Optimizers whose state can be checkpointed.
//!
//! tch 0.24's `nn::Optimizer` wraps libtorch's C++ optimizers and cannot export their state, so
//! a resumed run would restart Adam's moments from zero. These re-implement PyTorch's update
//! rules on plain tensors, which [`Optimizer::state`] hands out for a safetensors file and
//! [`Optimizer::load_state`] takes back. The tests check them step for step against tch's own
//! `nn::Adam` and `nn::Sgd`.
//!
//! - Adam: Kingma & Ba 2015, "Adam: A Method for Stochastic Optimization", Algorithm 1, in the
//!   form of `torch.optim.Adam` (`foreach=False`, `amsgrad=False`): L2 weight decay added to the
//!   gradient, bias-corrected moments, `eps` added after the bias correction of `sqrt(v)`.
//! - AdamW: Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization", Algorithm 2, in
//!   the form of `torch.optim.AdamW`: the weights shrink by `lr · weight_decay` before the Adam
//!   update, and the decay never enters the moments.
//! - SGD: `torch.optim.SGD` with optional momentum (dampening 0, no Nesterov) and L2 weight
//!   decay.
//!
//! The learning rate can follow a schedule ([`super::lr_schedule`]) and the gradients can be
//! clipped by their global norm ([`Optimizer::clip_grad_norm`]); [`Optimizer::step_scheduled`]
//! does both before an update. Both are pure functions of the step count and the gradients, so
//! they need no state beyond [`Optimizer::state`].

use super::lr_schedule::{LrSchedule, LrScheduleKind};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tch::{Kind, Tensor, nn};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// Adam (Kingma & Ba 2015), as `torch.optim.Adam`; `--weight-decay` is an L2 penalty added
    /// to the gradient (default 0).
    Adam,
    /// AdamW (Loshchilov & Hutter 2019), as `torch.optim.AdamW`: decoupled weight decay
    /// `θ ← θ · (1 − lr · weight_decay)` before the Adam update (default `weight_decay` 0.01,
    /// PyTorch's).
    #[value(name = "adamw")]
    #[serde(rename = "adamw")]
    AdamW,
    /// Stochastic gradient descent with optional momentum, as `torch.optim.SGD`.
    Sgd,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::Sgd => "sgd",
        })
    }
}

impl OptimizerKind {
    /// PyTorch's default `weight_decay` for this optimizer: 0.01 for AdamW
    /// (`torch.optim.AdamW`), 0 for Adam and SGD. `--weight-decay` defaults to it.
    pub fn default_weight_decay(self) -> f64 {
        match self {
            OptimizerKind::AdamW => 0.01,
            OptimizerKind::Adam | OptimizerKind::Sgd => 0.0,
        }
    }
}

/// Hyper-parameters of an [`Optimizer`]; the defaults are PyTorch's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimizerConfig {
    /// Which update rule.
    pub kind: OptimizerKind,
    /// Learning rate (step size).
    pub lr: f64,
    /// Adam: decay rate of the first-moment estimate (0.9).
    pub beta1: f64,
    /// Adam: decay rate of the second-moment estimate (0.999).
    pub beta2: f64,
    /// Adam: term added to the denominator for numerical stability (1e-8).
    pub eps: f64,
    /// Adam and SGD: L2 penalty added to the gradient, `g + weight_decay · θ` (0). AdamW:
    /// decoupled decay, `θ ← θ · (1 − lr · weight_decay)` before the update (0.01).
    pub weight_decay: f64,
    /// SGD: momentum factor (0: plain SGD). Ignored by Adam.
    pub momentum: f64,
    /// The learning-rate schedule; [`OptimizerConfig::lr`] is its peak. Absent from
    /// checkpoints saved before schedules existed, which trained at a constant rate (the
    /// default).
    #[serde(default)]
    pub schedule: LrSchedule,
    /// Clip the gradients to this global L2 norm before each scheduled update
    /// ([`Optimizer::clip_grad_norm`]); `None`: no clipping.
    #[serde(default)]
    pub clip_grad_norm: Option<f64>,
}

impl OptimizerConfig {
    /// PyTorch's defaults for `kind` with learning rate `lr`: betas (0.9, 0.999), eps 1e-8,
    /// weight decay [`OptimizerKind::default_weight_decay`], no momentum; a constant rate and
    /// no clipping.
    pub fn new(kind: OptimizerKind, lr: f64) -> Self {
        OptimizerConfig {
            kind,
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: kind.default_weight_decay(),
            momentum: 0.0,
            schedule: LrSchedule::default(),
            clip_grad_norm: None,
        }
    }

    /// Adam with learning rate `lr` and PyTorch's defaults.
    pub fn adam(lr: f64) -> Self {
        Self::new(OptimizerKind::Adam, lr)
    }

    /// AdamW with learning rate `lr` and PyTorch's defaults (weight decay 0.01).
    pub fn adamw(lr: f64) -> Self {
        Self::new(OptimizerKind::AdamW, lr)
    }

    /// The learning rate of the update that follows `step` earlier updates, in a run of
    /// `total_steps` updates: [`LrSchedule::lr_at`] with this configuration's `lr` as the peak.
    /// A pure function; [`Optimizer::step_scheduled`] calls it with its own step count.
    pub fn lr_at(&self, step: u64, total_steps: u64) -> f64 {
        self.schedule.lr_at(self.lr, step, total_steps)
    }

    /// SGD with learning rate `lr` and momentum factor `momentum` (0 for none).
    pub fn sgd(lr: f64, momentum: f64) -> Self {
        OptimizerConfig {
            momentum,
            ..Self::new(OptimizerKind::Sgd, lr)
        }
    }

    /// Checks the ranges PyTorch checks: `lr ≥ 0`, `eps ≥ 0`, betas in `[0, 1)`,
    /// `weight_decay ≥ 0`, `momentum ≥ 0`, all finite; a clip norm `> 0`; the schedule
    /// ([`LrSchedule::validate`]).
    ///
    /// # Errors
    /// [`OptimError::Config`] naming the offending value.
    pub fn validate(&self) -> Result<(), OptimError> {
        let bad = |what: &str, v: f64| Err(OptimError::Config(format!("invalid {what}: {v}")));
        if !(self.lr.is_finite() && self.lr >= 0.0) {
            return bad("learning rate", self.lr);
        }
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return bad("eps", self.eps);
        }
        if !(0.0..1.0).contains(&self.beta1) {
            return bad("beta1 (must lie in [0, 1))", self.beta1);
        }
        if !(0.0..1.0).contains(&self.beta2) {
            return bad("beta2 (must lie in [0, 1))", self.beta2);
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad("weight decay", self.weight_decay);
        }
        if !(self.momentum.is_finite() && self.momentum >= 0.0) {
            return bad("momentum", self.momentum);
        }
        if let Some(max) = self.clip_grad_norm
            && !(max.is_finite() && max > 0.0)
        {
            return bad("gradient-norm clip (must be > 0)", max);
        }
        self.schedule
            .validate(self.lr)
            .map_err(|e| OptimError::Config(format!("--min-lr: {e}")))
    }
}

impl Default for OptimizerConfig {
    /// Adam, lr 1e-3 (PyTorch's defaults).
    fn default() -> Self {
        Self::adam(1e-3)
    }
}

/// Errors of [`Optimizer`].
#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    /// A hyper-parameter is out of range.
    #[error("optimizer configuration: {0}")]
    Config(String),
    /// Saved state lacks an entry this optimizer needs.
    #[error("optimizer state has no entry `{name}` (saved by a different optimizer or model?)")]
    Missing {
        /// The entry's name, e.g. `adam.exp_avg.f1.weight`.
        name: String,
    },
    /// A saved entry's shape differs from its parameter's.
    #[error("optimizer state entry `{name}` has shape {got:?}, expected {expected:?}")]
    Shape {
        /// The entry's name.
        name: String,
        /// The parameter's shape.
        expected: Vec<i64>,
        /// The saved tensor's shape.
        got: Vec<i64>,
    },
    /// Saved state holds an entry that belongs to no parameter of this optimizer (another
    /// optimizer kind, or another model).
    #[error("optimizer state entry `{name}` does not belong to this {kind} optimizer's parameters")]
    Unexpected {
        /// The entry's name.
        name: String,
        /// This optimizer's kind.
        kind: OptimizerKind,
    },
    /// A step counter is negative or not a scalar.
    #[error("optimizer state entry `{name}`: {reason}")]
    Invalid {
        /// The entry's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The gradients' global norm is NaN or infinite, so clipping cannot bound the update
    /// (`torch.nn.utils.clip_grad_norm_(..., error_if_nonfinite=True)` raises here too).
    #[error(
        "the gradients' total L2 norm is {norm} before clipping at step {step} (the loss or the \
         weights diverged; lower --lr?)"
    )]
    NonFiniteGradNorm {
        /// The norm (NaN or ±inf).
        norm: f64,
        /// Updates taken before this one.
        step: u64,
    },
    /// A libtorch error.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// What [`Optimizer::step_scheduled`] did, for logging.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The learning rate the update used.
    pub lr: f64,
    /// The gradients' global L2 norm before clipping, when clipping is on.
    pub grad_norm: Option<f64>,
}

/// Name of the global step counter in [`Optimizer::state`].
pub const STEP_KEY: &str = "step";

/// Per-parameter state, created lazily at the parameter's first update (as in PyTorch).
#[derive(Debug, Default)]
struct ParamState {
    /// Updates this parameter has received (Adam's bias correction uses it).
    step: i64,
    /// Adam: first moment `m`.
    exp_avg: Option<Tensor>,
    /// Adam: second moment `v`.
    exp_avg_sq: Option<Tensor>,
    /// SGD with momentum: the velocity buffer.
    momentum_buffer: Option<Tensor>,
}

/// An optimizer over named trainable parameters, with exportable state.
#[derive(Debug)]
pub struct Optimizer {
    config: OptimizerConfig,
    /// Parameters (shallow clones sharing storage with the model's `VarStore`), by name.
    params: Vec<(String, Tensor)>,
    /// State of `params[i]`.
    state: Vec<ParamState>,
    /// Calls to [`Optimizer::step`].
    step: u64,
    /// The peak learning rate of the schedule (`config.lr` as given; [`Optimizer::set_lr`]
    /// changes only the current rate).
    base_lr: f64,
}

impl Optimizer {
    /// An optimizer over `params` (name, tensor) — shallow clones of trainable variables, e.g.
    /// from [`trainable_parameters`]. Names key the exported state, so they must be stable
    /// (the `VarStore` names are). Validate `config` first with [`OptimizerConfig::validate`].
    pub fn new(config: OptimizerConfig, params: Vec<(String, Tensor)>) -> Self {
        let state = params.iter().map(|_| ParamState::default()).collect();
        Optimizer {
            config,
            params,
            state,
            step: 0,
            base_lr: config.lr,
        }
    }

    /// An optimizer over the trainable variables of `vs`, sorted by name.
    ///
    /// # Errors
    /// [`OptimError::Config`] for an invalid configuration.
    pub fn for_var_store(config: OptimizerConfig, vs: &nn::VarStore) -> Result<Self, OptimError> {
        config.validate()?;
        Ok(Self::new(config, trainable_parameters(vs)))
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Changes the learning rate of the following updates (for a schedule); the state and the
    /// schedule's peak are kept.
    pub fn set_lr(&mut self, lr: f64) {
        self.config.lr = lr;
    }

    /// The learning rate the next [`Optimizer::step`] uses.
    pub fn lr(&self) -> f64 {
        self.config.lr
    }

    /// The global L2 norm of the gradients, `sqrt(Σ_p ‖g_p‖²)` over every parameter that has
    /// one (0 when none has), computed as `torch.nn.utils.get_total_norm`: the norm of the
    /// per-parameter norms, in the gradients' dtype.
    ///
    /// # Errors
    /// Libtorch errors.
    pub fn grad_norm(&self) -> Result<f64, OptimError> {
        Ok(self
            .total_grad_norm()?
            .map_or(Ok(0.0), |n| n.f_double_value(&[]))?)
    }

    fn total_grad_norm(&self) -> Result<Option<Tensor>, tch::TchError> {
        tch::no_grad(|| {
            let norms = self
                .params
                .iter()
                .map(|(_, p)| p.grad())
                .filter(Tensor::defined)
                .map(|g| g.f_norm())
                .collect::<Result<Vec<Tensor>, _>>()?;
            if norms.is_empty() {
                return Ok(None);
            }
            Tensor::f_stack(&norms, 0)?.f_norm().map(Some)
        })
    }

    /// Clips the gradients in place to a global L2 norm of at most `max_norm`, as
    /// `torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=2, error_if_nonfinite=True)`:
    /// with `norm` the total norm ([`Optimizer::grad_norm`]), every gradient is multiplied by
    /// `min(1, max_norm / (norm + 1e-6))`: gradients whose norm is at most `max_norm − 1e-6`
    /// are left exactly as they are, larger ones end up with a norm just under `max_norm`.
    /// Returns the norm before clipping, for logging.
    ///
    /// # Errors
    /// [`OptimError::Config`] unless `max_norm` is positive and finite;
    /// [`OptimError::NonFiniteGradNorm`] when the norm is NaN or infinite (nothing is changed);
    /// libtorch errors.
    pub fn clip_grad_norm(&mut self, max_norm: f64) -> Result<f64, OptimError> {
        if !(max_norm.is_finite() && max_norm > 0.0) {
            return Err(OptimError::Config(format!(
                "invalid gradient-norm clip (must be > 0): {max_norm}"
            )));
        }
        let Some(total) = self.total_grad_norm()? else {
            return Ok(0.0);
        };
        let norm = total.f_double_value(&[])?;
        if !norm.is_finite() {
            return Err(OptimError::NonFiniteGradNorm {
                norm,
                step: self.step,
            });
        }
        tch::no_grad(|| -> Result<(), tch::TchError> {
            // In the norm's dtype, as PyTorch: max_norm / (norm + 1e-6), clamped to ≤ 1.
            let coef = total
                .f_add_scalar(1e-6)?
                .f_reciprocal()?
                .f_mul_scalar(max_norm)?
                .f_clamp_max(1.0)?;
            for (_, p) in &self.params {
                let mut g = p.grad();
                if g.defined() {
                    let _ = g.f_mul_(&coef.f_to_kind(g.kind())?)?;
                }
            }
            Ok(())
        })?;
        Ok(norm)
    }

    /// One update with the run's schedule and clipping: sets the learning rate to
    /// [`OptimizerConfig::lr_at`]`(step_count(), total_steps)` (the peak being the configured
    /// `lr`), clips the gradients to [`OptimizerConfig::clip_grad_norm`] when set, then calls
    /// [`Optimizer::step`]. The step count comes back from [`Optimizer::load_state`], so a
    /// resumed run continues the same schedule.
    ///
    /// # Errors
    /// [`OptimError::NonFiniteGradNorm`] (no update is made), and [`Optimizer::step`]'s.
    pub fn step_scheduled(&mut self, total_steps: u64) -> Result<StepStats, OptimError> {
        let lr = self
            .config
            .schedule
            .lr_at(self.base_lr, self.step, total_steps);
        self.set_lr(lr);
        let grad_norm = match self.config.clip_grad_norm {
            Some(max) => Some(self.clip_grad_norm(max)?),
            None => None,
        };
        self.step()?;
        Ok(StepStats { lr, grad_norm })
    }

    /// The parameters, by name.
    pub fn parameters(&self) -> &[(String, Tensor)] {
        &self.params
    }

    /// Number of [`Optimizer::step`] calls so far (restored by [`Optimizer::load_state`]).
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Zeroes the gradients of all parameters (those that have one).
    ///
    /// Unlike PyTorch's default `set_to_none=True`, gradients are zeroed, not dropped, so a
    /// parameter that stops receiving gradients still takes (weight-decay and momentum) steps.
    pub fn zero_grad(&mut self) {
        for (_, p) in self.params.iter_mut() {
            p.zero_grad();
        }
    }

    /// One update of every parameter that has a gradient, with PyTorch's arithmetic, under
    /// `no_grad`, at the current learning rate `lr` ([`Optimizer::set_lr`]). Per parameter `θ`
    /// with gradient `g` (Adam and SGD first add the L2 term, `g ← g + weight_decay·θ`):
    ///
    /// Adam (`t` = this parameter's update count, from 1):
    /// ```text
    /// m ← β1·m + (1 − β1)·g            (lerp, as torch.optim.Adam)
    /// v ← β2·v + (1 − β2)·g²
    /// θ ← θ − lr/(1 − β1^t) · m / (sqrt(v)/sqrt(1 − β2^t) + eps)
    /// ```
    /// AdamW: `θ ← θ · (1 − lr·weight_decay)`, then the Adam update above with the raw `g`
    /// (`torch.optim.adamw`, Loshchilov & Hutter 2019, Algorithm 2 with `η_t = lr`).
    /// SGD: `b ← g` at the first step, then `b ← momentum·b + g`; `θ ← θ − lr·b` (with
    /// momentum 0, `θ ← θ − lr·g`).
    ///
    /// # Errors
    /// Libtorch errors (e.g. a gradient whose shape does not match its parameter).
    pub fn step(&mut self) -> Result<(), OptimError> {
        let config = self.config;
        tch::no_grad(|| -> Result<(), OptimError> {
            for ((_, p), st) in self.params.iter_mut().zip(self.state.iter_mut()) {
                let grad = p.grad();
                if !grad.defined() {
                    continue;
                }
                let grad = if config.weight_decay != 0.0 && config.kind != OptimizerKind::AdamW {
                    grad.f_add(&p.f_mul_scalar(config.weight_decay)?)?
                } else {
                    grad
                };
                match config.kind {
                    OptimizerKind::Adam => adam_update(&config, p, st, &grad)?,
                    OptimizerKind::AdamW => {
                        if config.weight_decay != 0.0 {
                            let _ = p.f_mul_scalar_(1.0 - config.lr * config.weight_decay)?;
                        }
                        adam_update(&config, p, st, &grad)?
                    }
                    OptimizerKind::Sgd => sgd_update(&config, p, st, grad)?,
                }
            }
            Ok(())
        })?;
        self.step += 1;
        Ok(())
    }

    /// The state to checkpoint, as named tensors (deep copies, on the parameters' device):
    ///
    /// - `step`: `i64` scalar, [`Optimizer::step_count`];
    /// - Adam and AdamW (the same state, as in PyTorch), per parameter `NAME` that has been
    ///   updated: `adam.exp_avg.NAME`, `adam.exp_avg_sq.NAME` (parameter's shape and kind) and
    ///   `adam.step.NAME` (`i64` scalar, the parameter's own update count);
    /// - SGD with momentum: `sgd.momentum_buffer.NAME`.
    ///
    /// # Errors
    /// Libtorch errors while copying.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>, OptimError> {
        let copy = |t: &Tensor| -> Result<Tensor, tch::TchError> { t.f_detach_copy() };
        let mut out = vec![(STEP_KEY.to_string(), Tensor::from(self.step as i64))];
        for ((name, _), st) in self.params.iter().zip(self.state.iter()) {
            if let (Some(m), Some(v)) = (&st.exp_avg, &st.exp_avg_sq) {
                out.push((format!("adam.exp_avg.{name}"), copy(m)?));
                out.push((format!("adam.exp_avg_sq.{name}"), copy(v)?));
                out.push((format!("adam.step.{name}"), Tensor::from(st.step)));
            }
            if let Some(b) = &st.momentum_buffer {
                out.push((format!("sgd.momentum_buffer.{name}"), copy(b)?));
            }
        }
        Ok(out)
    }

    /// Restores state produced by [`Optimizer::state`] (e.g. read back from a safetensors
    /// file), moving each tensor to its parameter's device and kind. Either everything is
    /// restored or, on error, nothing changes.
    ///
    /// # Errors
    /// [`OptimError::Missing`] when `step` or (after at least one step) a parameter's moments or
    /// momentum buffer is absent; [`OptimError::Shape`] when an entry's shape differs from its
    /// parameter's; [`OptimError::Unexpected`] for an entry that matches no parameter of this
    /// optimizer's kind; [`OptimError::Invalid`] for a malformed step counter.
    pub fn load_state(&mut self, entries: Vec<(String, Tensor)>) -> Result<(), OptimError> {
        let mut map: HashMap<String, Tensor> = entries.into_iter().collect();
        let step = take_counter(&mut map, STEP_KEY)?.ok_or_else(|| OptimError::Missing {
            name: STEP_KEY.to_string(),
        })?;
        let mut new_state = Vec::with_capacity(self.params.len());
        for (name, p) in &self.params {
            let mut st = ParamState::default();
            match self.config.kind {
                OptimizerKind::Adam | OptimizerKind::AdamW => {
                    let m = take_like(&mut map, &format!("adam.exp_avg.{name}"), p)?;
                    let v = take_like(&mut map, &format!("adam.exp_avg_sq.{name}"), p)?;
                    let key = format!("adam.step.{name}");
                    let own = take_counter(&mut map, &key)?;
                    match (m, v) {
                        (Some(m), Some(v)) => {
                            st.step = own.unwrap_or(step);
                            st.exp_avg = Some(m);
                            st.exp_avg_sq = Some(v);
                        }
                        (None, None) if step == 0 || own == Some(0) => {}
                        (None, _) => {
                            return Err(OptimError::Missing {
                                name: format!("adam.exp_avg.{name}"),
                            });
                        }
                        (Some(_), None) => {
                            return Err(OptimError::Missing {
                                name: format!("adam.exp_avg_sq.{name}"),
                            });
                        }
                    }
                }
                OptimizerKind::Sgd => {
                    let key = format!("sgd.momentum_buffer.{name}");
                    st.momentum_buffer = take_like(&mut map, &key, p)?;
                    if st.momentum_buffer.is_none() && self.config.momentum != 0.0 && step > 0 {
                        return Err(OptimError::Missing { name: key });
                    }
                }
            }
            new_state.push(st);
        }
        if let Some(name) = map.into_keys().min() {
            return Err(OptimError::Unexpected {
                name,
                kind: self.config.kind,
            });
        }
        self.state = new_state;
        self.step = step as u64;
        Ok(())
    }
}

/// The trainable variables of `vs` (those requiring gradients) with their names, sorted by
/// name: shallow clones sharing storage with `vs`.
pub fn trainable_parameters(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// Removes `key` from `map` as a non-negative scalar counter.
fn take_counter(map: &mut HashMap<String, Tensor>, key: &str) -> Result<Option<i64>, OptimError> {
    let Some(t) = map.remove(key) else {
        return Ok(None);
    };
    let invalid = |reason: String| OptimError::Invalid {
        name: key.to_string(),
        reason,
    };
    if t.numel() != 1 {
        return Err(invalid(format!(
            "expected a scalar, got shape {:?}",
            t.size()
        )));
    }
    let v = t
        .f_to_kind(Kind::Int64)?
        .f_reshape([1])?
        .f_int64_value(&[0])?;
    if v < 0 {
        return Err(invalid(format!("negative step count {v}")));
    }
    Ok(Some(v))
}

/// Removes `key` from `map`, checks it has `like`'s shape, and converts it to `like`'s device
/// and kind (a fresh tensor, never sharing storage with the caller's).
fn take_like(
    map: &mut HashMap<String, Tensor>,
    key: &str,
    like: &Tensor,
) -> Result<Option<Tensor>, OptimError> {
    let Some(t) = map.remove(key) else {
        return Ok(None);
    };
    if t.size() != like.size() {
        return Err(OptimError::Shape {
            name: key.to_string(),
            expected: like.size(),
            got: t.size(),
        });
    }
    let t = t
        .f_to_device(like.device())?
        .f_to_kind(like.kind())?
        .f_detach_copy()?;
    Ok(Some(t))
}

/// One Adam update of `p`, as `torch.optim.adam._single_tensor_adam`.
fn adam_update(
    c: &OptimizerConfig,
    p: &mut Tensor,
    st: &mut ParamState,
    grad: &Tensor,
) -> Result<(), tch::TchError> {
    if st.exp_avg.is_none() || st.exp_avg_sq.is_none() {
        st.exp_avg = Some(p.f_zeros_like()?);
        st.exp_avg_sq = Some(p.f_zeros_like()?);
    }
    let (Some(m), Some(v)) = (st.exp_avg.as_mut(), st.exp_avg_sq.as_mut()) else {
        unreachable!("moments initialised above");
    };
    st.step += 1;
    let _ = m.f_lerp_(grad, 1.0 - c.beta1)?;
    let _ = v.f_mul_scalar_(c.beta2)?;
    let _ = v.f_add_(&grad.f_mul_scalar(1.0 - c.beta2)?.f_mul(grad)?)?;
    let t = st.step as f64;
    let bias_correction1 = 1.0 - c.beta1.powf(t);
    let bias_correction2 = 1.0 - c.beta2.powf(t);
    let step_size = c.lr / bias_correction1;
    let denom = v
        .f_sqrt()?
        .f_div_scalar(bias_correction2.sqrt())?
        .f_add_scalar(c.eps)?;
    let _ = p.f_add_(&m.f_mul_scalar(-step_size)?.f_div(&denom)?)?;
    Ok(())
}

/// One SGD update of `p`, as `torch.optim.sgd._single_tensor_sgd` (dampening 0, no Nesterov).
fn sgd_update(
    c: &OptimizerConfig,
    p: &mut Tensor,
    st: &mut ParamState,
    grad: Tensor,
) -> Result<(), tch::TchError> {
    st.step += 1;
    let direction = if c.momentum != 0.0 {
        match st.momentum_buffer.as_mut() {
            None => {
                let buf = grad.f_detach_copy()?;
                let d = buf.shallow_clone();
                st.momentum_buffer = Some(buf);
                d
            }
            Some(buf) => {
                let _ = buf.f_mul_scalar_(c.momentum)?;
                let _ = buf.f_add_(&grad)?;
                buf.shallow_clone()
            }
        }
    } else {
        grad
    };
    let _ = p.f_add_(&direction.f_mul_scalar(-c.lr)?)?;
    Ok(())
}

/// Compares the update rule of a run resumed with `--resume` (`now`, for a run of `total_steps`
/// optimizer updates) with the one its checkpoint was trained with (`saved`, and
/// `saved_total_steps` when the checkpoint recorded it).
///
/// Policy (a resumed run must continue the same trajectory, or say clearly that it does not):
/// - refused: another `--optimizer` (Adam and AdamW keep moments of the same shape, so the
///   state would load silently into a different rule); another `--lr-schedule`,
///   `--warmup-steps` or `--min-lr`; and, for a cosine schedule, another run length
///   (`--epochs`, since the decay is spread over the whole run: the rate would jump). A constant
///   schedule may be resumed with more `--epochs`.
/// - warned: another `--lr`, `--weight-decay`, `--momentum`, `--clip-grad-norm` or Adam
///   beta/eps: deliberate changes of step size (e.g. a lower `--lr` after a divergence) that
///   keep the optimizer state meaningful. Returns one message per change.
///
/// # Errors
/// A one-line reason naming the flags and both values, for the refused cases.
pub fn check_resume(
    saved: &OptimizerConfig,
    saved_total_steps: Option<u64>,
    now: &OptimizerConfig,
    total_steps: u64,
) -> Result<Vec<String>, String> {
    if saved.kind != now.kind {
        return Err(format!(
            "it was trained with --optimizer {}, this run asks for --optimizer {} (the saved \
             optimizer state belongs to {}; resume with the same optimizer or start a new run)",
            saved.kind, now.kind, saved.kind
        ));
    }
    if saved.schedule != now.schedule {
        return Err(format!(
            "it was trained with the learning-rate schedule `{}`, this run asks for `{}` (resume \
             with the same --lr-schedule, --warmup-steps and --min-lr, or start a new run)",
            saved.schedule, now.schedule
        ));
    }
    if now.schedule.kind == LrScheduleKind::Cosine
        && let Some(saved_total) = saved_total_steps
        && saved_total != total_steps
    {
        return Err(format!(
            "its cosine schedule decays over {saved_total} optimizer steps, this run has \
             {total_steps} (the rate would jump; resume with the same --epochs, or start a new run)"
        ));
    }
    let mut warnings = Vec::new();
    let mut differs = |flag: &str, was: String, is: String| {
        if was != is {
            warnings.push(format!(
                "--resume with {flag} {is} (the checkpoint was trained with {was})"
            ));
        }
    };
    differs("--lr", saved.lr.to_string(), now.lr.to_string());
    differs(
        "--weight-decay",
        saved.weight_decay.to_string(),
        now.weight_decay.to_string(),
    );
    if now.kind == OptimizerKind::Sgd {
        differs(
            "--momentum",
            saved.momentum.to_string(),
            now.momentum.to_string(),
        );
    } else {
        differs(
            "Adam betas",
            format!("({}, {})", saved.beta1, saved.beta2),
            format!("({}, {})", now.beta1, now.beta2),
        );
        differs("Adam eps", saved.eps.to_string(), now.eps.to_string());
    }
    let clip = |c: Option<f64>| c.map_or_else(|| "off".to_string(), |m| m.to_string());
    differs(
        "--clip-grad-norm",
        clip(saved.clip_grad_norm),
        clip(now.clip_grad_norm),
    );
    Ok(warnings)
}

#[cfg(test)]
mod tests;
