//! The network being trained, with the hint regressor of a `distill --hint` run, and which of
//! their parameters each stage of the run trains.

use super::error::TrainError;
use crate::hint::{HintPlan, Regressor, hint_loss};
use crate::optim::trainable_parameters;
use distill_models::{
    ArchSpec, Checkpoint, Model, ModelError, Network, ScriptModule, ScriptRequest,
};
use std::path::PathBuf;
use tch::{Device, Tensor, nn};

/// The student network (its variables in `vs`) and, for hint distillation, the regressor in its
/// own `VarStore`, saved beside the network as the checkpoint's auxiliary file.
#[derive(Debug)]
pub(crate) struct Student {
    /// The network's variables.
    pub(crate) vs: nn::VarStore,
    /// The network: built in, or a TorchScript module.
    pub(crate) net: Model,
    /// The hint and its regressor, for `distill --hint`.
    hint: Option<Hinted>,
}

#[derive(Debug)]
struct Hinted {
    plan: HintPlan,
    /// The regressor's variables (named `hint.regressor.*`).
    vs: nn::VarStore,
    regressor: Regressor,
}

/// Where a fresh student's weights come from besides its architecture (a resumed run's come
/// from its checkpoint).
#[derive(Debug, Clone, Default)]
pub struct StudentSource {
    /// A TorchScript student's module file (`--student`).
    pub file: Option<PathBuf>,
    /// `--init`'s checkpoint: its weights replace the fresh ones.
    pub init: Option<Checkpoint>,
}

/// The error of `--init` from a checkpoint of another architecture than the run's, naming both.
pub(crate) fn init_mismatch(ck: &Checkpoint, spec: &ArchSpec) -> TrainError {
    TrainError::Model(ModelError::Script(format!(
        "--init {}: it holds {} for input {:?} and {} classes, this run trains {} for {:?} and {} \
         classes",
        ck.dir.display(),
        ck.meta.arch.arch,
        ck.meta.arch.input_shape,
        ck.meta.arch.num_classes,
        spec.arch,
        spec.input_shape,
        spec.num_classes
    )))
}

/// A batch's forward pass: the logits, and the hint loss with its weight when hinted.
#[derive(Debug)]
pub(crate) struct Forward {
    /// `[B, C]` or a language model's `[B, S, V]`.
    pub(crate) logits: Tensor,
    /// The hint loss (a scalar) and `--hint-weight`.
    pub(crate) hint: Option<(Tensor, f64)>,
}

impl Student {
    /// The student of `spec` on `device`: the checkpoint's weights when resuming; else a
    /// built-in network's fresh weights drawn after `tch::manual_seed(seed)`, or a TorchScript
    /// student's module (`source.file`, or `--init`'s checkpoint's module); then `--init`'s
    /// weights (`source.init`) when given; then the regressor of `hint` (fresh weights drawn
    /// after the network's, or the checkpoint's auxiliary file).
    ///
    /// # Errors
    /// [`TrainError::Model`] for a checkpoint or module that cannot be loaded (or lacks the
    /// regressor), or `--init` weights of another architecture; [`TrainError::Hint`] for a
    /// hinted layer the network does not have or shapes no regressor joins.
    pub(crate) fn build(
        spec: &ArchSpec,
        source: &StudentSource,
        hint: Option<&HintPlan>,
        device: Device,
        seed: u64,
        checkpoint: Option<&Checkpoint>,
    ) -> Result<Student, TrainError> {
        tch::manual_seed(seed as i64);
        let (vs, net) = match (checkpoint, &source.init) {
            (Some(ck), _) => ck.load_model(device)?,
            (None, Some(ck)) if !spec.arch.is_torchscript() || source.file.is_none() => {
                // --init of a built-in student (or of a TorchScript one named by --init alone):
                // the checkpoint's network, which must be this run's.
                if &ck.meta.arch != spec {
                    return Err(init_mismatch(ck, spec));
                }
                ck.load_model(device)?
            }
            (None, init) => {
                let vs = nn::VarStore::new(device);
                let net = match (ScriptRequest::of(spec), &source.file) {
                    (Some(req), Some(file)) => {
                        Model::Script(ScriptModule::load(file, None, &vs.root(), &req)?)
                    }
                    _ => Model::Builtin(Network::new(&vs.root(), spec)?),
                };
                if let (Some(ck), Model::Script(module)) = (init, &net) {
                    // The same module's trained state dict, buffers included.
                    let from_vs = nn::VarStore::new(Device::Cpu);
                    let from = ck.load_script(&from_vs.root())?;
                    module.copy_state_from(
                        &from.state_dict()?,
                        &format!("--init {}", ck.dir.display()),
                    )?;
                }
                (vs, net)
            }
        };
        let hint = match hint {
            Some(plan) => {
                let hint_vs = nn::VarStore::new(device);
                let regressor = plan.regressor(
                    &net.layers(),
                    &spec.arch.to_string(),
                    &(hint_vs.root() / "hint"),
                )?;
                if let Some(ck) = checkpoint {
                    ck.load_aux_into(&hint_vs, "hint regressor")?;
                }
                Some(Hinted {
                    plan: plan.clone(),
                    vs: hint_vs,
                    regressor,
                })
            }
            None => None,
        };
        Ok(Student { vs, net, hint })
    }

    /// Trainable parameters of the network.
    pub(crate) fn params(&self) -> i64 {
        distill_models::arch::param_count(&self.vs)
    }

    /// The regressor's variables, saved beside the network (`distill --hint`).
    pub(crate) fn hint_vs(&self) -> Option<&nn::VarStore> {
        self.hint.as_ref().map(|h| &h.vs)
    }

    /// What the optimizer of a stage trains: in the hint stage (FitNets' stage 1) the layers up
    /// to the hinted one and the regressor; afterwards the whole student, and the regressor while
    /// the hint keeps a weight.
    pub(crate) fn parameters(&self, hint_stage: bool) -> Vec<(String, Tensor)> {
        let mut p = trainable_parameters(&self.vs);
        if let Some(h) = &self.hint {
            // A TorchScript student cannot tell its layers' variables apart: all of it trains
            // in the hint stage.
            if hint_stage
                && let Some(through) = self
                    .net
                    .variables_through(&h.plan.config.spec.student_layer)
            {
                p.retain(|(n, _)| through.iter().any(|v| n.starts_with(&format!("{v}."))));
            }
            if hint_stage || h.plan.config.weight > 0.0 {
                p.extend(trainable_parameters(&h.vs));
            }
        }
        p
    }

    /// The training-mode forward pass of `xs`; when hinted, the hinted layer through the
    /// regressor against `teacher_hint` (the teacher's feature for these samples).
    ///
    /// # Errors
    /// [`TrainError::Hint`] when the teacher sent no feature (`what` names the batch) or the
    /// layer is missing; [`TrainError::Torch`] for a libtorch failure.
    pub(crate) fn forward(
        &self,
        xs: &Tensor,
        teacher_hint: Option<Tensor>,
        what: impl FnOnce() -> String,
    ) -> Result<Forward, TrainError> {
        let Some(h) = &self.hint else {
            return Ok(Forward {
                logits: self.net.forward(xs, true)?,
                hint: None,
            });
        };
        let layers = self.net.forward_layers(xs, true)?;
        let unknown = || {
            TrainError::from(
                h.plan
                    .unknown_layer(&self.net.layers(), &self.net.spec().arch.to_string()),
            )
        };
        let feature = layers
            .iter()
            .find(|(name, _)| *name == h.plan.config.spec.student_layer)
            .map(|(_, t)| t.shallow_clone())
            .ok_or_else(unknown)?;
        let logits = layers
            .last()
            .map(|(_, t)| t.shallow_clone())
            .ok_or_else(unknown)?;
        let target = teacher_hint
            .ok_or_else(|| {
                TrainError::Hint(format!(
                    "{}: the teacher sent no output {}",
                    what(),
                    h.plan.config.spec.teacher_output
                ))
            })?
            .f_to_device(xs.device())?;
        let value = hint_loss(h.plan.config.loss, &h.regressor.forward(&feature), &target)?;
        Ok(Forward {
            logits,
            hint: Some((value, h.plan.config.weight)),
        })
    }
}

/// The stages of a run: with `distill --hint --hint-stage-epochs N`, its first N epochs train on
/// hints alone (FitNets' stage 1), each stage with its own optimizer and learning-rate schedule.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stages {
    /// Epochs of the hint stage (0: none).
    pub(crate) hint_epochs: u64,
    /// Epochs of the whole run, the hint stage included.
    pub(crate) epochs: u64,
    /// Optimizer steps per epoch.
    pub(crate) steps_per_epoch: u64,
}

impl Stages {
    /// Whether `epoch` belongs to the hint stage.
    pub(crate) fn is_hint_stage(&self, epoch: u64) -> bool {
        epoch < self.hint_epochs
    }

    /// Optimizer steps of the stage (the hint stage, or the rest): its learning-rate schedule
    /// runs over them.
    pub(crate) fn steps(&self, hint_stage: bool) -> u64 {
        if hint_stage {
            self.hint_epochs * self.steps_per_epoch
        } else {
            self.epochs.saturating_sub(self.hint_epochs) * self.steps_per_epoch
        }
    }
}
