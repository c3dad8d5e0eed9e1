//! Hint (feature) distillation, FitNets (Romero et al. 2015, "FitNets: Hints for Thin Deep
//! Nets", ICLR): a student's hidden layer (the *guided* layer) learns to predict a teacher's
//! intermediate feature (the *hint*) through a learned regressor.
//!
//! - [`HintSpec`]: `--hint TEACHER_OUTPUT=STUDENT_LAYER`, a teacher output served by name
//!   (`ModelInfo.outputs`) and a student layer of [`distill_models::Network::layers`].
//! - [`Regressor`]: the paper's regressor r(·; W_r), a linear layer for vectors and a 1×1
//!   convolution for feature maps (the paper uses a convolutional regressor so that its parameter
//!   count stays small; a 1×1 kernel keeps the spatial size, which must then already match).
//! - [`hint_loss`]: MSE or cosine between the regressed student feature and the teacher's.
//! - [`HintConfig`] (the flags) and [`HintPlan`] (the flags with the teacher output's shape,
//!   what a run checks its student against and records in its checkpoint).
//!
//! The paper's hint loss (its eq. 3) is `½ ‖u_h(x) − r(v_g(x))‖²`, summed over the feature's
//! elements. [`HintLoss::Mse`] is the *mean* over the batch and the elements instead, so that its
//! scale does not grow with the feature's size: the two differ by the constant factor
//! `2 / elements per sample`, which a `--hint-weight` absorbs.

use distill_models::LayerInfo;
use std::fmt;
use std::str::FromStr;
use tch::{Tensor, nn, nn::Module};

/// Why a hint cannot be set up.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HintError {
    /// `--hint` is not `TEACHER_OUTPUT=STUDENT_LAYER`.
    #[error("--hint: expected TEACHER_OUTPUT=STUDENT_LAYER (e.g. features=h2), got {0:?}")]
    Syntax(String),
    /// The student and teacher features cannot be joined by a linear or 1×1 conv regressor.
    #[error(
        "--hint {teacher}={student}: the student layer is {student_shape:?} per sample and the teacher output {teacher_shape:?}: {why}"
    )]
    Shapes {
        /// Teacher output name.
        teacher: String,
        /// Student layer name.
        student: String,
        /// Student layer's per-sample shape.
        student_shape: Vec<i64>,
        /// Teacher output's per-sample shape.
        teacher_shape: Vec<i64>,
        /// What does not fit.
        why: String,
    },
    /// The student has no layer of the hint's name.
    #[error("--hint {hint}: the student {arch} has no layer {layer}; its layers: {layers}")]
    UnknownLayer {
        /// The `--hint` value.
        hint: String,
        /// The student's architecture.
        arch: String,
        /// The missing layer's name.
        layer: String,
        /// The student's layers with their per-sample shapes, comma-separated.
        layers: String,
    },
}

/// `--hint TEACHER_OUTPUT=STUDENT_LAYER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintSpec {
    /// The teacher's named output (e.g. `features`, or `1` for a tuple's second element).
    pub teacher_output: String,
    /// The student's named layer (e.g. `h2`; `student-trainer describe` lists them).
    pub student_layer: String,
}

impl FromStr for HintSpec {
    type Err = HintError;

    fn from_str(s: &str) -> Result<Self, HintError> {
        match s.split_once('=') {
            Some((t, l)) if !t.trim().is_empty() && !l.trim().is_empty() && !l.contains('=') => {
                Ok(HintSpec {
                    teacher_output: t.trim().to_string(),
                    student_layer: l.trim().to_string(),
                })
            }
            _ => Err(HintError::Syntax(s.to_string())),
        }
    }
}

impl fmt::Display for HintSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.teacher_output, self.student_layer)
    }
}

/// `--hint-loss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum HintLoss {
    /// Mean squared error over the batch and every element of the feature.
    #[default]
    Mse,
    /// Mean over the batch of `1 − cos(r_i, t_i)`, each sample's feature flattened.
    Cosine,
}

impl fmt::Display for HintLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HintLoss::Mse => "mse",
            HintLoss::Cosine => "cosine",
        })
    }
}

/// `distill --hint` settings (FitNets).
#[derive(Debug, Clone, PartialEq)]
pub struct HintConfig {
    /// The teacher output and the student layer.
    pub spec: HintSpec,
    /// MSE or cosine.
    pub loss: HintLoss,
    /// Weight of the hint loss in the KD stage (≥ 0; 0: hint stage only).
    pub weight: f64,
    /// Epochs of hints alone before the KD epochs.
    pub stage_epochs: u64,
}

/// Hint distillation in a `distill` run: the settings and the teacher feature's per-sample shape
/// (from its `ModelInfo.outputs`).
#[derive(Debug, Clone)]
pub struct HintPlan {
    /// `--hint`, `--hint-loss`, `--hint-weight`, `--hint-stage-epochs`.
    pub config: HintConfig,
    /// Per-sample shape of the teacher's output.
    pub teacher_shape: Vec<i64>,
}

impl HintPlan {
    /// The settings as one line, recorded in the checkpoint (a resume with others is refused)
    /// and the report: e.g. `features=h2 mse weight=1 stage_epochs=2`.
    pub fn describe(&self) -> String {
        let c = &self.config;
        format!(
            "{} {} weight={} stage_epochs={}",
            c.spec, c.loss, c.weight, c.stage_epochs
        )
    }

    /// The regressor from the student layer the hint names (among `layers` of the student `arch`) to the teacher's feature,
    /// built under `path`; `distill` builds one at start to check the hint before any training.
    ///
    /// # Errors
    /// [`HintError::UnknownLayer`] for a student layer `net` does not have (listing those it
    /// has); [`HintError::Shapes`] for shapes no regressor joins.
    pub fn regressor(
        &self,
        layers: &[LayerInfo],
        arch: &str,
        path: &nn::Path<'_>,
    ) -> Result<Regressor, HintError> {
        let layer = layers
            .iter()
            .find(|l| l.name == self.config.spec.student_layer)
            .ok_or_else(|| self.unknown_layer(layers, arch))?;
        Regressor::new(path, &self.config.spec, &layer.shape, &self.teacher_shape)
    }

    /// The error for a student layer the student (`arch`, with `layers`) does not have, listing
    /// its layers.
    pub fn unknown_layer(&self, layers: &[LayerInfo], arch: &str) -> HintError {
        let layers: Vec<String> = layers
            .iter()
            .map(|l| format!("{} {:?}", l.name, l.shape))
            .collect();
        HintError::UnknownLayer {
            hint: self.config.spec.to_string(),
            arch: arch.to_string(),
            layer: self.config.spec.student_layer.clone(),
            layers: layers.join(", "),
        }
    }
}

/// The regressor r(·; W_r) from the student's guided layer to the teacher's hint shape.
#[derive(Debug)]
pub enum Regressor {
    /// Vectors `[Ds] → [Dt]`: a linear layer.
    Linear(nn::Linear),
    /// Feature maps `[Cs, H, W] → [Ct, H, W]`: a 1×1 convolution.
    Conv(nn::Conv2D),
}

impl Regressor {
    /// Builds the regressor's variables under `path` (PyTorch's default initialisation), from a
    /// student layer of per-sample shape `student` to a teacher output of shape `teacher`.
    ///
    /// # Errors
    /// [`HintError::Shapes`] when the shapes are neither both vectors nor both `[C, H, W]` maps of
    /// the same spatial size.
    pub fn new(
        path: &nn::Path<'_>,
        hint: &HintSpec,
        student: &[i64],
        teacher: &[i64],
    ) -> Result<Regressor, HintError> {
        let bad = |why: &str| HintError::Shapes {
            teacher: hint.teacher_output.clone(),
            student: hint.student_layer.clone(),
            student_shape: student.to_vec(),
            teacher_shape: teacher.to_vec(),
            why: why.to_string(),
        };
        match (student, teacher) {
            ([ds], [dt]) if *ds > 0 && *dt > 0 => Ok(Regressor::Linear(nn::linear(
                path / "regressor",
                *ds,
                *dt,
                Default::default(),
            ))),
            ([cs, hs, ws], [ct, ht, wt]) => {
                if (hs, ws) != (ht, wt) {
                    return Err(bad(&format!(
                        "their spatial sizes differ ({hs}x{ws} against {ht}x{wt}), and a 1x1 conv regressor keeps the spatial size"
                    )));
                }
                Ok(Regressor::Conv(nn::conv2d(
                    path / "regressor",
                    *cs,
                    *ct,
                    1,
                    Default::default(),
                )))
            }
            _ => Err(bad(
                "expected two vectors (a linear regressor) or two [channels, height, width] feature maps (a 1x1 conv regressor)",
            )),
        }
    }

    /// The regressed student feature `[batch, ...teacher shape]` of `x` (`[batch, ...student
    /// shape]`).
    pub fn forward(&self, x: &Tensor) -> Tensor {
        match self {
            Regressor::Linear(l) => l.forward(x),
            Regressor::Conv(c) => c.forward(x),
        }
    }
}

/// The hint loss between the regressed student feature `r` and the teacher's `t` (both
/// `[batch, ...]`, the same shape, f32): a scalar.
///
/// - [`HintLoss::Mse`]: `mean((r − t)²)` over the batch and every element (FitNets' eq. 3 is
///   `½ Σ (r − t)²` per sample: see the module doc for the constant between them).
/// - [`HintLoss::Cosine`]: `mean_i (1 − r_i · t_i / (‖r_i‖ ‖t_i‖))`, each sample flattened, with
///   the norms floored at 1e-8 as in `torch.nn.functional.cosine_similarity`.
///
/// # Errors
/// A libtorch error (e.g. shapes that differ).
pub(crate) fn hint_loss(kind: HintLoss, r: &Tensor, t: &Tensor) -> Result<Tensor, tch::TchError> {
    if r.size() != t.size() {
        return Err(tch::TchError::Shape(format!(
            "hint loss: the regressed student feature is {:?}, the teacher's {:?}",
            r.size(),
            t.size()
        )));
    }
    match kind {
        HintLoss::Mse => r.f_mse_loss(t, tch::Reduction::Mean),
        HintLoss::Cosine => {
            let (r, t) = (r.f_flatten(1, -1)?, t.f_flatten(1, -1)?);
            let cos = Tensor::f_cosine_similarity(&r, &t, 1, 1e-8)?;
            cos.f_neg()?.f_add_scalar(1.0)?.f_mean(tch::Kind::Float)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn t(values: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(values).reshape(shape)
    }

    #[test]
    fn hint_losses_equal_hand_computed_values() {
        // r = [[1, 2], [3, 4]], t = [[1, 0], [0, 4]]: squared errors 0, 4, 9, 0.
        let r = t(&[1.0, 2.0, 3.0, 4.0], &[2, 2]);
        let tt = t(&[1.0, 0.0, 0.0, 4.0], &[2, 2]);
        let mse = hint_loss(HintLoss::Mse, &r, &tt).unwrap().double_value(&[]);
        assert!((mse - 13.0 / 4.0).abs() < 1e-6, "{mse}");
        // cos([1,2],[1,0]) = 1/√5; cos([3,4],[0,4]) = 16/(5·4) = 0.8.
        let want = ((1.0 - 1.0 / 5f64.sqrt()) + (1.0 - 0.8)) / 2.0;
        let cos = hint_loss(HintLoss::Cosine, &r, &tt)
            .unwrap()
            .double_value(&[]);
        assert!((cos - want).abs() < 1e-6, "{cos} vs {want}");
        // Feature maps are flattened per sample: the same numbers as [2, 1, 2, 1].
        let (r4, t4) = (r.reshape([2, 1, 2, 1]), tt.reshape([2, 1, 2, 1]));
        let cos4 = hint_loss(HintLoss::Cosine, &r4, &t4)
            .unwrap()
            .double_value(&[]);
        assert!((cos4 - want).abs() < 1e-6);
        let mse4 = hint_loss(HintLoss::Mse, &r4, &t4)
            .unwrap()
            .double_value(&[]);
        assert!((mse4 - 13.0 / 4.0).abs() < 1e-6);
        // FitNets' ½‖·‖² per sample, batch mean: (4/2 + 9/2) / 2 = 3.25 = mse · elements / 2.
        assert!((mse * 2.0 / 2.0 - 3.25).abs() < 1e-6);
        let e = hint_loss(HintLoss::Mse, &r, &t(&[1.0, 2.0], &[2, 1]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the regressed student feature is [2, 2], the teacher's [2, 1]"),
            "{e}"
        );
    }

    #[test]
    fn regressors_follow_the_shapes_and_refuse_a_spatial_mismatch() {
        let vs = nn::VarStore::new(Device::Cpu);
        let hint: HintSpec = "features=h2".parse().unwrap();
        let lin = Regressor::new(&vs.root(), &hint, &[32], &[128]).unwrap();
        let x = Tensor::zeros([5, 32], (Kind::Float, Device::Cpu));
        assert_eq!(lin.forward(&x).size(), vec![5, 128]);
        let vs = nn::VarStore::new(Device::Cpu);
        let conv = Regressor::new(&vs.root(), &hint, &[16, 12, 12], &[64, 12, 12]).unwrap();
        let x = Tensor::zeros([3, 16, 12, 12], (Kind::Float, Device::Cpu));
        assert_eq!(conv.forward(&x).size(), vec![3, 64, 12, 12]);
        // 1x1 conv: 16·64 weights and 64 biases.
        assert_eq!(distill_models::arch::param_count(&vs), 16 * 64 + 64);
        let e = Regressor::new(&vs.root(), &hint, &[16, 10, 10], &[64, 12, 12]).unwrap_err();
        assert!(
            e.to_string().contains("10x10 against 12x12") && e.to_string().contains("[16, 10, 10]"),
            "{e}"
        );
        let e = Regressor::new(&vs.root(), &hint, &[32], &[64, 12, 12]).unwrap_err();
        assert!(e.to_string().contains("two vectors"), "{e}");
    }

    #[test]
    fn hint_flags_parse_and_name_what_was_expected() {
        let h: HintSpec = " conv = c2 ".parse().unwrap();
        assert_eq!(
            (h.teacher_output.as_str(), h.student_layer.as_str()),
            ("conv", "c2")
        );
        assert_eq!(h.to_string(), "conv=c2");
        for bad in ["features", "=h1", "features=", "a=b=c"] {
            let e = bad.parse::<HintSpec>().unwrap_err().to_string();
            assert!(e.contains("TEACHER_OUTPUT=STUDENT_LAYER"), "{e}");
        }
    }
}
