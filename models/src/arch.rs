//! Built-in architectures.
//!
//! - `cnn`: the teacher of the reference PyTorch loop (`scripts/reference/kd_pytorch.py`): two 3×3
//!   convolutions (32 and 64 channels), 2×2 max-pool, dropout 0.25, a 128-unit fully connected
//!   layer, dropout, and the output layer: 1,199,882 parameters for `[1, 28, 28]` inputs and 10
//!   classes.
//! - `mlp` / `mlp:H1,H2,...`: a multi-layer perceptron with ReLU between layers, default one
//!   hidden layer of 128: 101,770 parameters for 784 inputs and 10 classes.
//!
//! Variable names match the reference PyTorch modules (`c1`, `c2`, `f1`, `f2`, ...), so
//! `state_dict()` keys line up.

use crate::ModelError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use tch::Tensor;
use tch::nn::{self, ModuleT};

/// An architecture name with its hyper-parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "lowercase")]
pub enum Arch {
    /// The CNN teacher (inputs `[C, H, W]` with H = W = 28).
    Cnn,
    /// An MLP with the given hidden layer widths (inputs of any shape, flattened).
    Mlp {
        /// Widths of the hidden layers, input side first.
        hidden: Vec<i64>,
    },
}

impl FromStr for Arch {
    type Err = ModelError;

    /// Parses `cnn`, `mlp` (one hidden layer of 128) or `mlp:256,128`.
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = || ModelError::UnknownArch { got: s.to_string() };
        match s.split_once(':') {
            None if s == "cnn" => Ok(Arch::Cnn),
            None if s == "mlp" => Ok(Arch::Mlp { hidden: vec![128] }),
            Some(("mlp", sizes)) => {
                let hidden = sizes
                    .split(',')
                    .map(|h| h.trim().parse::<i64>().ok().filter(|h| *h > 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(bad)?;
                Ok(Arch::Mlp { hidden })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arch::Cnn => write!(f, "cnn"),
            Arch::Mlp { hidden } if hidden == &[128] => write!(f, "mlp"),
            Arch::Mlp { hidden } => {
                let h: Vec<String> = hidden.iter().map(i64::to_string).collect();
                write!(f, "mlp:{}", h.join(","))
            }
        }
    }
}

/// An architecture together with the data it is built for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchSpec {
    /// Which network.
    pub arch: Arch,
    /// Per-sample input shape, no batch dimension (e.g. `[1, 28, 28]`); inputs are `f32`.
    pub input_shape: Vec<i64>,
    /// Number of classes, i.e. logits per sample.
    pub num_classes: i64,
}

/// A built network: `forward_t` maps `f32 [batch, ...input_shape]` to logits
/// `f32 [batch, num_classes]`. Its weights live in the `nn::VarStore` it was built in.
pub struct Network {
    spec: ArchSpec,
    seq: nn::SequentialT,
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Network").field("spec", &self.spec).finish()
    }
}

impl Network {
    /// Builds the network's variables under `path` (freshly initialised as PyTorch's defaults:
    /// Kaiming-uniform weights, uniform biases).
    ///
    /// # Errors
    /// [`ModelError::InputShape`] if the architecture cannot take `spec.input_shape`.
    pub fn new(path: &nn::Path<'_>, spec: &ArchSpec) -> Result<Network, ModelError> {
        let seq = match &spec.arch {
            Arch::Cnn => cnn(path, spec)?,
            Arch::Mlp { hidden } => mlp(path, spec, hidden)?,
        };
        Ok(Network {
            spec: spec.clone(),
            seq,
        })
    }

    /// What this network was built for.
    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    /// Logits `f32 [batch, num_classes]` of inputs `f32 [batch, ...input_shape]`; dropout is
    /// active only when `train` is true.
    ///
    /// # Errors
    /// A libtorch error (e.g. a shape mismatch) instead of a panic.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        // SequentialT::forward_t panics on a bad shape; catch that as an error at the boundary.
        let expected: Vec<i64> = std::iter::once(-1)
            .chain(self.spec.input_shape.iter().copied())
            .collect();
        let got = xs.size();
        if got.len() != expected.len() || got[1..] != expected[1..] {
            return Err(ModelError::InputShape {
                arch: self.spec.arch.to_string(),
                expected: format!("[batch, {:?}]", self.spec.input_shape),
                got,
            });
        }
        Ok(self.seq.forward_t(xs, train))
    }
}

/// Number of scalar parameters of the trainable variables of `vs`.
pub fn param_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(Tensor::numel)
        .sum::<usize>() as i64
}

fn cnn(p: &nn::Path<'_>, spec: &ArchSpec) -> Result<nn::SequentialT, ModelError> {
    let [c, h, w] = spec.input_shape[..] else {
        return Err(cnn_shape(spec));
    };
    if h < 6 || w < 6 || c < 1 {
        return Err(cnn_shape(spec));
    }
    // Two valid 3×3 convolutions shrink each side by 4, the 2×2 pool halves it.
    let flat = 64 * ((h - 4) / 2) * ((w - 4) / 2);
    let conv = nn::ConvConfig::default();
    Ok(nn::seq_t()
        .add(nn::conv2d(p / "c1", c, 32, 3, conv))
        .add_fn(|x| x.relu())
        .add(nn::conv2d(p / "c2", 32, 64, 3, conv))
        .add_fn(|x| x.relu().max_pool2d_default(2).flatten(1, -1))
        .add_fn_t(|x, train| x.dropout(0.25, train))
        .add(nn::linear(p / "f1", flat, 128, Default::default()))
        .add_fn(|x| x.relu())
        .add_fn_t(|x, train| x.dropout(0.25, train))
        .add(nn::linear(
            p / "f2",
            128,
            spec.num_classes,
            Default::default(),
        )))
}

fn cnn_shape(spec: &ArchSpec) -> ModelError {
    ModelError::InputShape {
        arch: "cnn".into(),
        expected: "[channels, height, width] with height, width >= 6".into(),
        got: spec.input_shape.clone(),
    }
}

fn mlp(p: &nn::Path<'_>, spec: &ArchSpec, hidden: &[i64]) -> Result<nn::SequentialT, ModelError> {
    let inputs: i64 = spec.input_shape.iter().product();
    if inputs < 1 || spec.input_shape.is_empty() {
        return Err(ModelError::InputShape {
            arch: spec.arch.to_string(),
            expected: "a non-empty shape".into(),
            got: spec.input_shape.clone(),
        });
    }
    let mut seq = nn::seq_t().add_fn(|x| x.flatten(1, -1));
    let mut width = inputs;
    for (i, &h) in hidden.iter().enumerate() {
        seq = seq
            .add(nn::linear(
                p / format!("f{}", i + 1),
                width,
                h,
                Default::default(),
            ))
            .add_fn(|x| x.relu());
        width = h;
    }
    let last = format!("f{}", hidden.len() + 1);
    Ok(seq.add(nn::linear(
        p / last,
        width,
        spec.num_classes,
        Default::default(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(arch: &str) -> ArchSpec {
        ArchSpec {
            arch: arch.parse().unwrap(),
            input_shape: vec![1, 28, 28],
            num_classes: 10,
        }
    }

    #[test]
    fn parameter_counts_match_the_reference_models() {
        for (arch, params) in [("cnn", 1_199_882), ("mlp", 101_770), ("mlp:32", 25_450)] {
            let vs = nn::VarStore::new(tch::Device::Cpu);
            Network::new(&vs.root(), &spec(arch)).unwrap();
            assert_eq!(param_count(&vs), params, "{arch}");
        }
    }

    #[test]
    fn arch_names_round_trip_and_reject_garbage() {
        for s in ["cnn", "mlp", "mlp:256,128"] {
            assert_eq!(s.parse::<Arch>().unwrap().to_string(), s);
        }
        for s in ["resnet", "mlp:", "mlp:0", "mlp:a"] {
            assert!(s.parse::<Arch>().is_err(), "{s}");
        }
    }

    #[test]
    fn forward_gives_logits_and_rejects_wrong_shapes() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = Network::new(&vs.root(), &spec("cnn")).unwrap();
        let y = net
            .forward(&Tensor::zeros([3, 1, 28, 28], tch::kind::FLOAT_CPU), false)
            .unwrap();
        assert_eq!(y.size(), vec![3, 10]);
        assert!(
            net.forward(&Tensor::zeros([3, 28, 28], tch::kind::FLOAT_CPU), false)
                .is_err()
        );
    }
}
