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
//! The learning rate can follow a schedule ([`crate::lr_schedule`]) and the gradients can be
//! clipped by their global norm ([`Optimizer::clip_grad_norm`]); [`Optimizer::step_scheduled`]
//! does both before an update. Both are pure functions of the step count and the gradients, so
//! they need no state beyond [`Optimizer::state`].

use crate::lr_schedule::LrSchedule;
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

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::Module;
    use tch::{Device, nn::VarStore};

    /// A 2-layer MLP 8 → 16 → 4 on the CPU, seeded.
    fn mlp(seed: i64) -> (VarStore, impl Module) {
        tch::manual_seed(seed);
        let vs = VarStore::new(Device::Cpu);
        let root = vs.root();
        let net = nn::seq()
            .add(nn::linear(&root / "l1", 8, 16, Default::default()))
            .add_fn(|x| x.relu())
            .add(nn::linear(&root / "l2", 16, 4, Default::default()));
        (vs, net)
    }

    /// Fixed batches: inputs `[32, 8]`, labels `[32]`.
    fn batches(n: usize) -> Vec<(Tensor, Tensor)> {
        tch::manual_seed(1234);
        (0..n)
            .map(|_| {
                (
                    Tensor::randn([32, 8], tch::kind::FLOAT_CPU),
                    Tensor::randint(4, [32], (Kind::Int64, Device::Cpu)),
                )
            })
            .collect()
    }

    fn loss(net: &impl Module, x: &Tensor, y: &Tensor) -> Tensor {
        net.forward(x).cross_entropy_for_logits(y)
    }

    fn max_diff(a: &VarStore, b: &VarStore) -> f64 {
        let (a, b) = (trainable_parameters(a), trainable_parameters(b));
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(&b)
            .map(|((na, ta), (nb, tb))| {
                assert_eq!(na, nb);
                (ta - tb).abs().max().double_value(&[])
            })
            .fold(0.0, f64::max)
    }

    fn compare_with_tch(ours: OptimizerConfig, theirs: impl nn::OptimizerConfig, lr: f64) {
        let data = batches(25);
        let (vs_a, net_a) = mlp(7);
        let (mut vs_b, net_b) = mlp(8);
        vs_b.copy(&vs_a).unwrap();
        let mut opt_a = Optimizer::for_var_store(ours, &vs_a).unwrap();
        let mut opt_b = theirs.build(&vs_b, lr).unwrap();
        for (i, (x, y)) in data.iter().enumerate() {
            opt_a.zero_grad();
            loss(&net_a, x, y).backward();
            opt_a.step().unwrap();
            opt_b.zero_grad();
            loss(&net_b, x, y).backward();
            opt_b.step();
            let d = max_diff(&vs_a, &vs_b);
            assert!(d < 1e-6, "step {i}: parameters differ by {d}");
        }
        assert_eq!(opt_a.step_count(), 25);
        // The parameters did move.
        let (vs_0, _) = mlp(7);
        assert!(max_diff(&vs_a, &vs_0) > 1e-3);
    }

    #[test]
    fn adam_matches_tch_step_for_step() {
        compare_with_tch(OptimizerConfig::adam(1e-2), nn::Adam::default(), 1e-2);
    }

    #[test]
    fn adam_with_weight_decay_and_betas_matches_tch() {
        let ours = OptimizerConfig {
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 0.05,
            ..OptimizerConfig::adam(3e-3)
        };
        let theirs = nn::Adam {
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            wd: 0.05,
            amsgrad: false,
        };
        compare_with_tch(ours, theirs, 3e-3);
    }

    #[test]
    fn adamw_matches_tch_step_for_step() {
        // PyTorch's defaults (weight decay 0.01) on both sides.
        assert_eq!(OptimizerConfig::adamw(1e-2).weight_decay, 0.01);
        compare_with_tch(OptimizerConfig::adamw(1e-2), nn::AdamW::default(), 1e-2);
        let ours = OptimizerConfig {
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            weight_decay: 0.3,
            ..OptimizerConfig::adamw(3e-3)
        };
        let theirs = nn::AdamW {
            beta1: 0.8,
            beta2: 0.99,
            eps: 1e-6,
            wd: 0.3,
            amsgrad: false,
        };
        compare_with_tch(ours, theirs, 3e-3);
    }

    #[test]
    fn adamw_with_a_cosine_schedule_matches_tch() {
        // Our scheduled steps against tch's AdamW whose rate is set by hand from the formula.
        let config = OptimizerConfig {
            weight_decay: 0.1,
            schedule: LrSchedule {
                kind: crate::lr_schedule::LrScheduleKind::Cosine,
                warmup_steps: 5,
                min_lr: 1e-3,
            },
            ..OptimizerConfig::adamw(2e-2)
        };
        let total = 20u64;
        let data = batches(total as usize);
        let (vs_a, net_a) = mlp(11);
        let (mut vs_b, net_b) = mlp(12);
        vs_b.copy(&vs_a).unwrap();
        let mut opt_a = Optimizer::for_var_store(config, &vs_a).unwrap();
        let theirs = nn::AdamW {
            wd: 0.1,
            ..Default::default()
        };
        let mut opt_b = nn::OptimizerConfig::build(theirs, &vs_b, 2e-2).unwrap();
        for (k, (x, y)) in data.iter().enumerate() {
            opt_a.zero_grad();
            loss(&net_a, x, y).backward();
            let stats = opt_a.step_scheduled(total).unwrap();
            let lr = if k < 5 {
                2e-2 * k as f64 / 5.0
            } else {
                let progress = (k - 5) as f64 / 15.0;
                1e-3 + (2e-2 - 1e-3) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            };
            assert!(
                (stats.lr - lr).abs() < 1e-15,
                "step {k}: {} vs {lr}",
                stats.lr
            );
            assert_eq!(stats.grad_norm, None);
            opt_b.set_lr(lr);
            opt_b.zero_grad();
            loss(&net_b, x, y).backward();
            opt_b.step();
            let d = max_diff(&vs_a, &vs_b);
            assert!(d < 1e-6, "step {k}: parameters differ by {d}");
        }
        // The first update ran at rate 0: AdamW's decay and step both vanish, as in PyTorch.
        assert_eq!(opt_a.step_count(), total);
    }

    /// AdamW on `f64` parameters with the loss `½‖θ − c‖²` (gradient `θ − c`), against a plain
    /// float64 re-implementation of `torch.optim.AdamW` with the warm-up + cosine schedule.
    #[test]
    fn adamw_matches_a_float64_reference() {
        let c = [0.5f64, -1.5, 2.0, 0.0];
        let theta0 = [1.0f64, 1.0, -1.0, 3.0];
        let (lr, wd, b1, b2, eps) = (0.1, 0.05, 0.9, 0.999, 1e-8);
        let (warmup, total) = (3u64, 25u64);
        let rate = |k: u64| {
            if k < warmup {
                lr * k as f64 / warmup as f64
            } else {
                let progress = (k - warmup) as f64 / (total - warmup) as f64;
                lr * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos())
            }
        };
        // Reference.
        let mut theta = theta0;
        let (mut m, mut v) = ([0.0f64; 4], [0.0f64; 4]);
        let mut reference = Vec::new();
        for k in 0..total {
            let t = (k + 1) as f64;
            let eta = rate(k);
            for i in 0..4 {
                let g = theta[i] - c[i];
                theta[i] *= 1.0 - eta * wd;
                m[i] = b1 * m[i] + (1.0 - b1) * g;
                v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                let m_hat = m[i] / (1.0 - b1.powf(t));
                let v_hat = v[i] / (1.0 - b2.powf(t));
                theta[i] -= eta * m_hat / (v_hat.sqrt() + eps);
            }
            reference.push(theta);
        }
        // Ours.
        let p = Tensor::from_slice(&theta0).set_requires_grad(true);
        let target = Tensor::from_slice(&c);
        let config = OptimizerConfig {
            weight_decay: wd,
            schedule: LrSchedule {
                kind: crate::lr_schedule::LrScheduleKind::Cosine,
                warmup_steps: warmup,
                min_lr: 0.0,
            },
            ..OptimizerConfig::adamw(lr)
        };
        let mut opt = Optimizer::new(config, vec![("theta".into(), p.shallow_clone())]);
        for (k, want) in reference.iter().enumerate() {
            opt.zero_grad();
            ((&p - &target).square().sum(Kind::Double) * 0.5).backward();
            opt.step_scheduled(total).unwrap();
            let got = Vec::<f64>::try_from(&p.detach()).unwrap();
            for i in 0..4 {
                assert!(
                    (got[i] - want[i]).abs() <= 1e-12,
                    "step {k} θ{i}: {} vs {}",
                    got[i],
                    want[i]
                );
            }
        }
        // It moved towards c, and decay pulled it towards 0 a little.
        assert!((reference[24][0] - theta0[0]).abs() > 0.1);
    }

    /// Two parameters with gradients set by hand, under plain SGD.
    fn with_grads(a: &[f32], b: &[f32]) -> (Optimizer, Tensor, Tensor) {
        with_grads_for(OptimizerConfig::sgd(0.1, 0.0), a, b)
    }

    fn with_grads_for(
        config: OptimizerConfig,
        a: &[f32],
        b: &[f32],
    ) -> (Optimizer, Tensor, Tensor) {
        let pa = Tensor::zeros([a.len() as i64], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let pb = Tensor::zeros([b.len() as i64], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let ga = Tensor::from_slice(a);
        let gb = Tensor::from_slice(b);
        (&pa * &ga).sum(Kind::Float).backward();
        (&pb * &gb).sum(Kind::Float).backward();
        let opt = Optimizer::new(
            config,
            vec![
                ("a".into(), pa.shallow_clone()),
                ("b".into(), pb.shallow_clone()),
            ],
        );
        (opt, pa, pb)
    }

    fn grads(p: &Tensor) -> Vec<f32> {
        Vec::<f32>::try_from(&p.grad()).unwrap()
    }

    #[test]
    fn clip_grad_norm_scales_by_max_over_norm() {
        // ‖(3, 4, 12)‖ = 13.
        let (mut opt, pa, pb) = with_grads(&[3.0, 4.0], &[12.0]);
        assert!((opt.grad_norm().unwrap() - 13.0).abs() < 1e-6);
        let norm = opt.clip_grad_norm(6.5).unwrap();
        assert!((norm - 13.0).abs() < 1e-6, "{norm}");
        let coef = 6.5 / (13.0 + 1e-6);
        let want = [3.0 * coef, 4.0 * coef, 12.0 * coef];
        let got: Vec<f32> = grads(&pa).into_iter().chain(grads(&pb)).collect();
        for (g, w) in got.iter().zip(want) {
            assert!((*g as f64 - w).abs() < 1e-6, "{got:?} vs {want:?}");
        }
        // Now just under 6.5.
        let after = opt.grad_norm().unwrap();
        assert!(after < 6.5 && after > 6.5 - 1e-5, "{after}");

        // Below the bound: untouched, bit for bit.
        let (mut opt, pa, pb) = with_grads(&[3.0, 4.0], &[12.0]);
        assert!((opt.clip_grad_norm(20.0).unwrap() - 13.0).abs() < 1e-6);
        assert_eq!(grads(&pa), [3.0, 4.0]);
        assert_eq!(grads(&pb), [12.0]);
    }

    #[test]
    fn clip_grad_norm_matches_a_float64_norm() {
        tch::manual_seed(9);
        let (vs, net) = mlp(4);
        let data = batches(1);
        loss(&net, &data[0].0, &data[0].1).backward();
        let mut opt = Optimizer::for_var_store(OptimizerConfig::adamw(1e-3), &vs).unwrap();
        let want: f64 = opt
            .parameters()
            .iter()
            .map(|(_, p)| {
                Vec::<f32>::try_from(&p.grad().flatten(0, -1))
                    .unwrap()
                    .iter()
                    .map(|g| (*g as f64) * (*g as f64))
                    .sum::<f64>()
            })
            .sum::<f64>()
            .sqrt();
        let got = opt.clip_grad_norm(want / 4.0).unwrap();
        assert!((got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        let after = opt.grad_norm().unwrap();
        assert!((after - want / 4.0).abs() <= 1e-5 * want, "{after}");
    }

    #[test]
    fn clip_grad_norm_errors() {
        let (mut opt, pa, _) = with_grads(&[f32::NAN, 1.0], &[1.0]);
        let err = opt.clip_grad_norm(1.0).unwrap_err();
        assert!(
            matches!(err, OptimError::NonFiniteGradNorm { norm, step: 0 } if norm.is_nan()),
            "{err}"
        );
        assert!(err.to_string().contains("NaN"), "{err}");
        // Nothing was scaled.
        assert_eq!(grads(&pa)[1], 1.0);
        let (mut opt, _, _) = with_grads(&[f32::INFINITY], &[1.0]);
        assert!(matches!(
            opt.clip_grad_norm(1.0),
            Err(OptimError::NonFiniteGradNorm { .. })
        ));
        // A scheduled step with clipping refuses too, and takes no step.
        let clipped = OptimizerConfig {
            clip_grad_norm: Some(1.0),
            ..OptimizerConfig::sgd(0.1, 0.0)
        };
        let (mut opt, pa, _) = with_grads_for(clipped, &[f32::NAN], &[1.0]);
        assert!(matches!(
            opt.step_scheduled(10),
            Err(OptimError::NonFiniteGradNorm { .. })
        ));
        assert_eq!(Vec::<f32>::try_from(&pa.detach()).unwrap(), [0.0]);
        assert_eq!(opt.step_count(), 0);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(matches!(
                opt.clip_grad_norm(bad),
                Err(OptimError::Config(_))
            ));
        }
        // No gradient anywhere: norm 0.
        let p = Tensor::zeros([2], tch::kind::FLOAT_CPU).set_requires_grad(true);
        let mut none = Optimizer::new(OptimizerConfig::adam(1.0), vec![("p".into(), p)]);
        assert_eq!(none.clip_grad_norm(1.0).unwrap(), 0.0);
    }

    #[test]
    fn sgd_matches_tch_step_for_step() {
        compare_with_tch(OptimizerConfig::sgd(0.1, 0.0), nn::Sgd::default(), 0.1);
        let ours = OptimizerConfig {
            weight_decay: 1e-3,
            ..OptimizerConfig::sgd(0.05, 0.9)
        };
        let theirs = nn::Sgd {
            momentum: 0.9,
            dampening: 0.0,
            wd: 1e-3,
            nesterov: false,
        };
        compare_with_tch(ours, theirs, 0.05);
    }

    fn resume_equals_straight_run(config: OptimizerConfig) {
        let data = batches(20);
        let total = data.len() as u64;
        let dir =
            std::env::temp_dir().join(format!("st-optim-{}-{}", config.kind, std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();

        // Straight run.
        let (vs_a, net_a) = mlp(3);
        let mut opt_a = Optimizer::for_var_store(config, &vs_a).unwrap();
        for (x, y) in &data {
            opt_a.zero_grad();
            loss(&net_a, x, y).backward();
            opt_a.step_scheduled(total).unwrap();
        }

        // 10 steps, checkpoint through safetensors files, fresh model and optimizer, 10 more.
        let (vs_b, net_b) = mlp(3);
        let mut opt_b = Optimizer::for_var_store(config, &vs_b).unwrap();
        for (x, y) in &data[..10] {
            opt_b.zero_grad();
            loss(&net_b, x, y).backward();
            opt_b.step_scheduled(total).unwrap();
        }
        let weights = dir.join("model.safetensors");
        let state_file = dir.join("optimizer.safetensors");
        vs_b.save(&weights).unwrap();
        Tensor::write_safetensors(&opt_b.state().unwrap(), &state_file).unwrap();
        drop((opt_b, net_b, vs_b));

        let (mut vs_c, net_c) = mlp(99);
        vs_c.load(&weights).unwrap();
        let mut opt_c = Optimizer::for_var_store(config, &vs_c).unwrap();
        opt_c
            .load_state(Tensor::read_safetensors(&state_file).unwrap())
            .unwrap();
        assert_eq!(opt_c.step_count(), 10);
        for (x, y) in &data[10..] {
            opt_c.zero_grad();
            loss(&net_c, x, y).backward();
            opt_c.step_scheduled(total).unwrap();
        }
        let d = max_diff(&vs_a, &vs_c);
        assert!(d <= 1e-7, "{}: resumed run differs by {d}", config.kind);
        assert_eq!(opt_c.step_count(), 20);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn adam_resume_equals_straight_run() {
        resume_equals_straight_run(OptimizerConfig::adam(1e-2));
    }

    #[test]
    fn adamw_with_schedule_and_clipping_resumes_exactly() {
        resume_equals_straight_run(OptimizerConfig {
            schedule: LrSchedule {
                kind: crate::lr_schedule::LrScheduleKind::Cosine,
                warmup_steps: 4,
                min_lr: 1e-4,
            },
            clip_grad_norm: Some(0.5),
            ..OptimizerConfig::adamw(1e-2)
        });
    }

    #[test]
    fn sgd_momentum_resume_equals_straight_run() {
        resume_equals_straight_run(OptimizerConfig::sgd(0.05, 0.9));
    }

    #[test]
    fn state_names_and_load_errors() {
        let data = batches(1);
        let (vs, net) = mlp(5);
        let mut opt = Optimizer::for_var_store(OptimizerConfig::adam(1e-3), &vs).unwrap();
        // Before any step: only the counter; loads into a fresh optimizer.
        let empty = opt.state().unwrap();
        assert_eq!(empty.len(), 1);
        opt.load_state(empty).unwrap();
        loss(&net, &data[0].0, &data[0].1).backward();
        opt.step().unwrap();
        let state = opt.state().unwrap();
        let names: Vec<&str> = state.iter().map(|(n, _)| n.as_str()).collect();
        for want in [
            "step",
            "adam.exp_avg.l1.weight",
            "adam.exp_avg_sq.l2.bias",
            "adam.step.l1.bias",
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
        // The state is a copy: further steps do not change it.
        let before = state[1].1.copy();
        loss(&net, &data[0].0, &data[0].1).backward();
        opt.step().unwrap();
        assert_eq!((&state[1].1 - &before).abs().max().double_value(&[]), 0.0);

        let fresh = |kind| {
            let config = OptimizerConfig::new(kind, 1e-3);
            Optimizer::new(config, trainable_parameters(&vs))
        };
        let without = |drop: &str| -> Vec<(String, Tensor)> {
            state
                .iter()
                .filter(|(n, _)| n != drop)
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect()
        };
        let err = fresh(OptimizerKind::Adam)
            .load_state(without("adam.exp_avg.l1.weight"))
            .unwrap_err();
        assert!(matches!(&err, OptimError::Missing { name } if name == "adam.exp_avg.l1.weight"));
        let err = fresh(OptimizerKind::Adam)
            .load_state(without("step"))
            .unwrap_err();
        assert!(
            matches!(&err, OptimError::Missing { name } if name == "step"),
            "{err}"
        );

        let mut misshaped = without("adam.exp_avg.l2.weight");
        misshaped.push((
            "adam.exp_avg.l2.weight".into(),
            Tensor::zeros([3, 3], tch::kind::FLOAT_CPU),
        ));
        let err = fresh(OptimizerKind::Adam)
            .load_state(misshaped)
            .unwrap_err();
        assert!(
            matches!(&err, OptimError::Shape { expected, .. } if *expected == vec![4, 16]),
            "{err}"
        );
        assert!(err.to_string().contains("[3, 3]"));

        let mut opt_sgd = fresh(OptimizerKind::Sgd);
        let err = opt_sgd.load_state(without("")).unwrap_err();
        assert!(matches!(err, OptimError::Unexpected { .. }), "{err}");
        assert_eq!(opt_sgd.step_count(), 0, "a failed load changes nothing");

        let mut bad_step = without("step");
        bad_step.push(("step".into(), Tensor::from(-3i64)));
        let err = fresh(OptimizerKind::Adam).load_state(bad_step).unwrap_err();
        assert!(matches!(err, OptimError::Invalid { .. }), "{err}");
    }

    #[test]
    fn kinds_parse_and_configs_validate() {
        use clap::ValueEnum;
        assert_eq!(
            OptimizerKind::from_str("adam", true).unwrap(),
            OptimizerKind::Adam
        );
        assert_eq!(
            OptimizerKind::from_str("SGD", true).unwrap(),
            OptimizerKind::Sgd
        );
        assert!(OptimizerKind::from_str("rmsprop", true).is_err());
        for kind in OptimizerKind::value_variants() {
            let name = kind.to_possible_value().unwrap().get_name().to_string();
            assert_eq!(kind.to_string(), name);
        }
        assert!(OptimizerConfig::default().validate().is_ok());
        assert!(OptimizerConfig::adam(-1.0).validate().is_err());
        let bad = OptimizerConfig {
            beta2: 1.0,
            ..OptimizerConfig::default()
        };
        assert!(bad.validate().is_err());
        let json = serde_json::to_string(&OptimizerConfig::sgd(0.1, 0.9)).unwrap();
        assert!(json.contains("\"sgd\""), "{json}");
        let back: OptimizerConfig = serde_json::from_str(&json).unwrap();
        assert_eq!(back, OptimizerConfig::sgd(0.1, 0.9));
        assert_eq!(
            OptimizerKind::from_str("AdamW", true).unwrap(),
            OptimizerKind::AdamW
        );
        let adamw = OptimizerConfig {
            clip_grad_norm: Some(1.0),
            schedule: LrSchedule {
                kind: crate::lr_schedule::LrScheduleKind::Cosine,
                warmup_steps: 10,
                min_lr: 1e-5,
            },
            ..OptimizerConfig::adamw(3e-4)
        };
        let json = serde_json::to_string(&adamw).unwrap();
        assert!(
            json.contains("\"adamw\"") && json.contains("\"cosine\""),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<OptimizerConfig>(&json).unwrap(),
            adamw
        );
        // A checkpoint from before schedules: constant rate, no clipping.
        let old = r#"{"kind":"adam","lr":0.001,"beta1":0.9,"beta2":0.999,"eps":1e-8,
                      "weight_decay":0.0,"momentum":0.9}"#;
        let old: OptimizerConfig = serde_json::from_str(old).unwrap();
        assert_eq!(old.schedule, LrSchedule::default());
        assert_eq!(old.clip_grad_norm, None);
        for bad in [
            OptimizerConfig {
                clip_grad_norm: Some(0.0),
                ..adamw
            },
            OptimizerConfig {
                clip_grad_norm: Some(f64::NAN),
                ..adamw
            },
            OptimizerConfig {
                schedule: LrSchedule {
                    min_lr: 1.0,
                    ..adamw.schedule
                },
                ..adamw
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(OptimError::Config(_))),
                "{bad:?}"
            );
        }
        assert!(adamw.validate().is_ok());
    }
}
