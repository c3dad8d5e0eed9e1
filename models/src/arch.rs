//! Built-in architectures.
//!
//! - `cnn`: the teacher of the reference PyTorch loop (`scripts/reference/kd_pytorch.py`): two 3×3
//!   convolutions (32 and 64 channels), 2×2 max-pool, dropout 0.25, a 128-unit fully connected
//!   layer, dropout, and the output layer: 1,199,882 parameters for `[1, 28, 28]` inputs and 10
//!   classes.
//! - `mlp` / `mlp:H1,H2,...`: a multi-layer perceptron with ReLU between layers, default one
//!   hidden layer of 128: 101,770 parameters for 784 inputs and 10 classes.
//! - `lm` / `lm:layers=L,d=D,heads=H`: a decoder-only transformer language model (see
//!   [`crate::lm`]); its input shape is `[max_seq_len]` (token ids, `i64`), its classes the
//!   vocabulary, and its logits `[batch, seq, vocab]`.
//!
//! Variable names match the reference PyTorch modules (`c1`, `c2`, `f1`, `f2`, ...), so
//! `state_dict()` keys line up.
//!
//! The feed-forward networks name their hidden layers ([`Network::layers`]), the cut points a
//! teacher serves as named outputs and a student can be hinted at (FitNets, Romero et al. 2015):
//! `cnn` has `conv` (the last conv block after its pool, `[64, 12, 12]` for 28×28 inputs) and
//! `features` (the 128-unit layer after its ReLU, the penultimate features); `mlp:H1,...,Hn` has
//! `h1` ... `hn` (each hidden layer after its ReLU). The logits are `logits`.

use crate::ModelError;
use crate::lm::{KvCache, Lm, LmConfig};
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
    /// A decoder-only transformer language model (inputs: token ids `[max_seq_len]`).
    Lm(LmConfig),
    /// A TorchScript module exported from PyTorch (`student-trainer --student FILE.pt`), loaded
    /// with libtorch rather than built: see [`crate::script`].
    #[serde(rename = "torchscript")]
    TorchScript(crate::script::ScriptArch),
}

impl Arch {
    /// Whether this is a sequence model: inputs are token ids `i64 [batch, seq]` (any
    /// `1 ≤ seq ≤ input_shape[0]`) and logits are per position, `[batch, seq, num_classes]`.
    pub fn is_sequence_model(&self) -> bool {
        match self {
            Arch::Lm(_) => true,
            Arch::TorchScript(s) => s.sequence_model,
            _ => false,
        }
    }

    /// Whether this is a TorchScript module (loaded from its file, not built).
    pub fn is_torchscript(&self) -> bool {
        matches!(self, Arch::TorchScript(_))
    }

    /// The input dtype the network takes: `Int64` token ids for a sequence model, `Float`
    /// otherwise.
    pub fn input_kind(&self) -> tch::Kind {
        if let Arch::TorchScript(s) = self {
            return s.input_kind();
        }
        if self.is_sequence_model() {
            tch::Kind::Int64
        } else {
            tch::Kind::Float
        }
    }
}

/// Parses the parameters of `lm:layers=L,d=D,heads=H` (each optional, defaults of
/// [`LmConfig::DEFAULT`]).
fn parse_lm(params: &str) -> Option<LmConfig> {
    let mut cfg = LmConfig::DEFAULT;
    for item in params.split(',') {
        let (key, value) = item.trim().split_once('=')?;
        let value = value.trim().parse::<i64>().ok().filter(|v| *v > 0)?;
        match key.trim() {
            "layers" => cfg.layers = value,
            "d" => cfg.d = value,
            "heads" => cfg.heads = value,
            _ => return None,
        }
    }
    (cfg.d % cfg.heads == 0).then_some(cfg)
}

impl FromStr for Arch {
    type Err = ModelError;

    /// Parses `cnn`, `mlp` (one hidden layer of 128), `mlp:256,128`, `lm` (2 layers, d = 128,
    /// 4 heads) or `lm:layers=4,d=256,heads=4` (d a multiple of heads).
    fn from_str(s: &str) -> Result<Self, ModelError> {
        let bad = || ModelError::UnknownArch { got: s.to_string() };
        match s.split_once(':') {
            None if s == "cnn" => Ok(Arch::Cnn),
            None if s == "mlp" => Ok(Arch::Mlp { hidden: vec![128] }),
            None if s == "lm" => Ok(Arch::Lm(LmConfig::DEFAULT)),
            Some(("lm", params)) => parse_lm(params).map(Arch::Lm).ok_or_else(bad),
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
            Arch::Lm(c) => write!(f, "lm:layers={},d={},heads={}", c.layers, c.d, c.heads),
            Arch::TorchScript(s) => write!(f, "torchscript:{}", s.module),
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

/// A built network: [`Network::forward`] maps `f32 [batch, ...input_shape]` to logits
/// `f32 [batch, num_classes]` (a sequence model: `i64 [batch, seq]` token ids to
/// `f32 [batch, seq, num_classes]`). Its weights live in the `nn::VarStore` it was built in.
pub struct Network {
    spec: ArchSpec,
    body: Body,
}

/// Name of a built-in network's logits among its [`Network::layers`].
pub const LOGITS_LAYER: &str = "logits";

/// A named hidden layer of a built-in network (see [`Network::layers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerInfo {
    /// Its name, e.g. `features`.
    pub name: String,
    /// Its per-sample output shape (no batch dimension), e.g. `[128]` or `[64, 12, 12]`.
    pub shape: Vec<i64>,
}

/// One stage of a feed-forward network: the layers from the previous cut point up to the named
/// output `name` (the last stage's is [`LOGITS_LAYER`]).
struct Stage {
    name: String,
    shape: Vec<i64>,
    /// Names of the variable groups of its layers (e.g. `c1`, `c2`), as in the `VarStore`.
    vars: Vec<String>,
    layers: nn::SequentialT,
}

/// The layers of a [`Network`].
enum Body {
    /// Feed-forward classifiers (`cnn`, `mlp`), as consecutive named stages.
    Seq(Vec<Stage>),
    /// The language model (boxed: its layers are many times the size of a `SequentialT`).
    Lm(Box<Lm>),
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
        let body = match &spec.arch {
            Arch::Cnn => Body::Seq(cnn(path, spec)?),
            Arch::Mlp { hidden } => Body::Seq(mlp(path, spec, hidden)?),
            Arch::TorchScript(_) => {
                return Err(ModelError::Script(format!(
                    "{}: a TorchScript student is loaded from its module file (or its \
                     checkpoint's student.<hash>.pt), not built",
                    spec.arch
                )));
            }
            Arch::Lm(cfg) => {
                let [max_len] = spec.input_shape[..] else {
                    return Err(ModelError::InputShape {
                        arch: spec.arch.to_string(),
                        expected: "[max_seq_len]".into(),
                        got: spec.input_shape.clone(),
                    });
                };
                Body::Lm(Box::new(Lm::new(path, *cfg, spec.num_classes, max_len)?))
            }
        };
        Ok(Network {
            spec: spec.clone(),
            body,
        })
    }

    /// What this network was built for.
    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    /// Logits `f32 [batch, num_classes]` of inputs `f32 [batch, ...input_shape]`; dropout is
    /// active only when `train` is true. A sequence model maps token ids `i64 [batch, seq]`
    /// (`1 ≤ seq ≤ input_shape[0]`) to `f32 [batch, seq, num_classes]`, every token real.
    ///
    /// # Errors
    /// A libtorch error (e.g. a shape mismatch) instead of a panic.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        self.forward_masked(xs, None, train)
    }

    /// [`Network::forward`] with an attention mask for a sequence model: `mask` is `[batch,
    /// seq]` (nonzero = real token, padding on the right); a real position's logits do not
    /// depend on padded ones. Feed-forward networks take no mask.
    ///
    /// # Errors
    /// [`ModelError::InputShape`] for a mask given to a feed-forward network or of the wrong
    /// shape, and the errors of [`Network::forward`].
    pub fn forward_masked(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Tensor, ModelError> {
        let seq = match &self.body {
            Body::Lm(lm) => return lm.forward(xs, mask),
            Body::Seq(seq) => seq,
        };
        if let Some(m) = mask {
            return Err(ModelError::InputShape {
                arch: self.spec.arch.to_string(),
                expected: "no attention mask (not a sequence model)".into(),
                got: m.size(),
            });
        }
        self.check_input(xs)?;
        Ok(seq.iter().fold(xs.shallow_clone(), |x, stage| {
            stage.layers.forward_t(&x, train)
        }))
    }

    /// Whether the network has an incremental decoding step with a key/value cache
    /// ([`Network::forward_cached`]): the language model does.
    pub fn has_kv_cache(&self) -> bool {
        matches!(self.body, Body::Lm(_))
    }

    /// The language model's incremental decoding step: logits `f32 [batch, n, num_classes]` of
    /// `n` new token ids `i64 [batch, n]` at positions `t..t+n` after the `t` =
    /// [`KvCache::len`] positions in `cache`, whose keys and values it appends to `cache`. The
    /// logits equal [`Network::forward`]'s at those positions of the whole sequence (to
    /// floating-point rounding); inference only (no dropout, every token real).
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for a feed-forward network; [`ModelError::InputShape`] when
    /// `t + n` exceeds the maximum sequence length `input_shape[0]`, for ids of another rank or
    /// another batch than the cache's; libtorch errors.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        match &self.body {
            Body::Lm(lm) => lm.forward_cached(ids, cache),
            Body::Seq(_) => Err(ModelError::Unsupported(format!(
                "architecture {} has no key/value cache (not a language model)",
                self.spec.arch
            ))),
        }
    }

    /// The device of a language model's weights; `None` for a feed-forward network (which does
    /// not keep track of it).
    pub fn device(&self) -> Option<tch::Device> {
        match &self.body {
            Body::Lm(lm) => Some(lm.device()),
            Body::Seq(_) => None,
        }
    }

    /// The named outputs of a feed-forward network, input side first, the logits
    /// ([`LOGITS_LAYER`]) last; a language model has only its logits (per-sample shape
    /// `[max_seq_len, vocab]`).
    pub fn layers(&self) -> Vec<LayerInfo> {
        match &self.body {
            Body::Seq(stages) => stages
                .iter()
                .map(|s| LayerInfo {
                    name: s.name.clone(),
                    shape: s.shape.clone(),
                })
                .collect(),
            Body::Lm(_) => vec![LayerInfo {
                name: LOGITS_LAYER.into(),
                shape: vec![
                    self.spec.input_shape.first().copied().unwrap_or(0),
                    self.spec.num_classes,
                ],
            }],
        }
    }

    /// The variable groups (`VarStore` name prefixes, e.g. `c1`, `f1`) of every layer from the
    /// input up to and including the named layer `name`: what hint training's first stage
    /// trains (FitNets). `None` for an unknown name, or a language model.
    pub fn variables_through(&self, name: &str) -> Option<Vec<String>> {
        let Body::Seq(stages) = &self.body else {
            return None;
        };
        let end = stages.iter().position(|s| s.name == name)?;
        Some(stages[..=end].iter().flat_map(|s| s.vars.clone()).collect())
    }

    /// Every named output of one forward pass ([`Network::layers`], in that order), each
    /// `f32 [batch, ...shape]`; the last is the logits. Same inputs and errors as
    /// [`Network::forward_masked`].
    ///
    /// # Errors
    /// As [`Network::forward_masked`].
    pub fn forward_layers(
        &self,
        xs: &Tensor,
        mask: Option<&Tensor>,
        train: bool,
    ) -> Result<Vec<(String, Tensor)>, ModelError> {
        let Body::Seq(stages) = &self.body else {
            let y = self.forward_masked(xs, mask, train)?;
            return Ok(vec![(LOGITS_LAYER.into(), y)]);
        };
        if mask.is_some() {
            // The error of forward_masked.
            return self.forward_masked(xs, mask, train).map(|_| Vec::new());
        }
        self.check_input(xs)?;
        let mut out: Vec<(String, Tensor)> = Vec::with_capacity(stages.len());
        let mut x = xs.shallow_clone();
        for stage in stages {
            x = stage.layers.forward_t(&x, train);
            out.push((stage.name.clone(), x.shallow_clone()));
        }
        Ok(out)
    }

    /// Refuses inputs that are not `[batch, ...input_shape]` (`SequentialT::forward_t` would
    /// panic on them).
    fn check_input(&self, xs: &Tensor) -> Result<(), ModelError> {
        let got = xs.size();
        if got.len() != self.spec.input_shape.len() + 1 || got[1..] != self.spec.input_shape[..] {
            return Err(ModelError::InputShape {
                arch: self.spec.arch.to_string(),
                expected: format!("[batch, {:?}]", self.spec.input_shape),
                got,
            });
        }
        Ok(())
    }
}

/// Number of scalar parameters of the trainable variables of `vs`.
pub fn param_count(vs: &nn::VarStore) -> i64 {
    vs.trainable_variables()
        .iter()
        .map(Tensor::numel)
        .sum::<usize>() as i64
}

/// Lays out every 4-D variable of `vs` (the convolution weights `[out, in, kh, kw]`) in
/// channels-last order (PyTorch's `torch.channels_last`: strides `[in·kh·kw, 1, kw·in, in]`), in
/// place: same values and shapes, other strides. A convolution with a channels-last weight
/// returns channels-last activations (oneDNN's NHWC kernels), and the ReLU and max-pooling after
/// it run their vectorized channels-last kernels, where PyTorch's default NCHW max-pooling is a
/// scalar loop. Measured on the demo CNN through teacher-server's loader (`make bench` row 1,
/// 2-core Intel Xeon, Sapphire Rapids, 2 threads, batch 256): f32 5,419 → 9,116 samples/s,
/// bf16 7,466 → 22,288 (oneDNN's AMX kernels take NHWC).
/// Saving and fingerprints read tensors through `contiguous()`, so files do not change.
///
/// # Errors
/// [`ModelError::Torch`] when libtorch fails to copy a weight.
pub fn channels_last(vs: &nn::VarStore) -> Result<(), ModelError> {
    tch::no_grad(|| -> Result<(), ModelError> {
        for mut v in vs.variables().into_values() {
            if v.dim() == 4 {
                let nhwc = v.f_permute([0, 2, 3, 1])?.f_contiguous()?;
                v.f_set_data(&nhwc.f_permute([0, 3, 1, 2])?)?;
            }
        }
        Ok(())
    })
}

fn cnn(p: &nn::Path<'_>, spec: &ArchSpec) -> Result<Vec<Stage>, ModelError> {
    let [c, h, w] = spec.input_shape[..] else {
        return Err(cnn_shape(spec));
    };
    if h < 6 || w < 6 || c < 1 {
        return Err(cnn_shape(spec));
    }
    // Two valid 3×3 convolutions shrink each side by 4, the 2×2 pool halves it.
    let (ph, pw) = ((h - 4) / 2, (w - 4) / 2);
    let flat = 64 * ph * pw;
    let conv = nn::ConvConfig::default();
    Ok(vec![
        Stage {
            name: "conv".into(),
            shape: vec![64, ph, pw],
            vars: vec!["c1".into(), "c2".into()],
            layers: nn::seq_t()
                .add(nn::conv2d(p / "c1", c, 32, 3, conv))
                // In place: the convolution's output is used nowhere else.
                .add_fn(|x| x.shallow_clone().relu_())
                .add(nn::conv2d(p / "c2", 32, 64, 3, conv))
                // Pool, then ReLU: max-pooling and ReLU commute (ReLU is monotonic), so this is
                // relu-then-pool exactly, with the ReLU on a quarter of the values.
                .add_fn(|x| x.max_pool2d_default(2).relu_()),
        },
        Stage {
            name: "features".into(),
            shape: vec![128],
            vars: vec!["f1".into()],
            layers: nn::seq_t()
                .add_fn(|x| x.flatten(1, -1))
                .add_fn_t(|x, train| x.dropout(0.25, train))
                .add(nn::linear(p / "f1", flat, 128, Default::default()))
                .add_fn(|x| x.relu()),
        },
        Stage {
            name: LOGITS_LAYER.into(),
            shape: vec![spec.num_classes],
            vars: vec!["f2".into()],
            layers: nn::seq_t()
                .add_fn_t(|x, train| x.dropout(0.25, train))
                .add(nn::linear(
                    p / "f2",
                    128,
                    spec.num_classes,
                    Default::default(),
                )),
        },
    ])
}

fn cnn_shape(spec: &ArchSpec) -> ModelError {
    ModelError::InputShape {
        arch: "cnn".into(),
        expected: "[channels, height, width] with height, width >= 6".into(),
        got: spec.input_shape.clone(),
    }
}

fn mlp(p: &nn::Path<'_>, spec: &ArchSpec, hidden: &[i64]) -> Result<Vec<Stage>, ModelError> {
    let inputs: i64 = spec.input_shape.iter().product();
    if inputs < 1 || spec.input_shape.is_empty() {
        return Err(ModelError::InputShape {
            arch: spec.arch.to_string(),
            expected: "a non-empty shape".into(),
            got: spec.input_shape.clone(),
        });
    }
    let mut stages = Vec::with_capacity(hidden.len() + 1);
    let mut width = inputs;
    for (i, &h) in hidden.iter().enumerate() {
        let linear = nn::linear(p / format!("f{}", i + 1), width, h, Default::default());
        let layers = if i == 0 {
            nn::seq_t().add_fn(|x| x.flatten(1, -1))
        } else {
            nn::seq_t()
        };
        stages.push(Stage {
            name: format!("h{}", i + 1),
            shape: vec![h],
            vars: vec![format!("f{}", i + 1)],
            layers: layers.add(linear).add_fn(|x| x.relu()),
        });
        width = h;
    }
    let last = nn::linear(
        p / format!("f{}", hidden.len() + 1),
        width,
        spec.num_classes,
        Default::default(),
    );
    let layers = if hidden.is_empty() {
        nn::seq_t().add_fn(|x| x.flatten(1, -1))
    } else {
        nn::seq_t()
    };
    stages.push(Stage {
        name: LOGITS_LAYER.into(),
        shape: vec![spec.num_classes],
        vars: vec![format!("f{}", hidden.len() + 1)],
        layers: layers.add(last),
    });
    Ok(stages)
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
    fn hidden_layers_are_named_and_served_beside_the_logits() {
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let cnn = Network::new(&vs.root(), &spec("cnn")).unwrap();
        let names: Vec<(String, Vec<i64>)> = cnn
            .layers()
            .into_iter()
            .map(|l| (l.name, l.shape))
            .collect();
        assert_eq!(
            names,
            vec![
                ("conv".to_string(), vec![64, 12, 12]),
                ("features".to_string(), vec![128]),
                ("logits".to_string(), vec![10]),
            ]
        );
        let x = Tensor::randn([3, 1, 28, 28], tch::kind::FLOAT_CPU);
        let outs = cnn.forward_layers(&x, None, false).unwrap();
        for ((name, t), layer) in outs.iter().zip(cnn.layers()) {
            assert_eq!(name, &layer.name);
            assert_eq!(t.size()[1..], layer.shape[..], "{name}");
        }
        let y = cnn.forward(&x, false).unwrap();
        assert_eq!(outs[2].1.size(), y.size());
        assert!(outs[2].1.allclose(&y, 0.0, 0.0, false));
        // The logits are the last linear layer of the penultimate features.
        let f2 = vs.variables();
        let want = outs[1].1.matmul(&f2["f2.weight"].tr()) + &f2["f2.bias"];
        assert!(want.allclose(&y, 1e-5, 1e-5, false));

        let vs = nn::VarStore::new(tch::Device::Cpu);
        let mlp = Network::new(&vs.root(), &spec("mlp:64,32")).unwrap();
        let names: Vec<String> = mlp.layers().into_iter().map(|l| l.name).collect();
        assert_eq!(names, ["h1", "h2", "logits"]);
        assert_eq!(mlp.variables_through("h2").unwrap(), ["f1", "f2"]);
        assert_eq!(
            cnn.variables_through("features").unwrap(),
            ["c1", "c2", "f1"]
        );
        assert!(mlp.variables_through("conv").is_none());
        // Every variable belongs to a layer.
        let mut all: Vec<String> = vs.variables().into_keys().collect();
        all.retain(|v| {
            !mlp.variables_through("logits")
                .unwrap()
                .iter()
                .any(|p| v.starts_with(&format!("{p}.")))
        });
        assert!(all.is_empty(), "{all:?}");
        let outs = mlp.forward_layers(&x, None, false).unwrap();
        assert_eq!(outs[1].1.size(), vec![3, 32]);
        assert!(outs[1].1.min().double_value(&[]) >= 0.0, "after the ReLU");
        assert!(
            mlp.forward_layers(&Tensor::zeros([3, 5], tch::kind::FLOAT_CPU), None, false)
                .is_err()
        );
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

    fn lm_spec(arch: &str, max_len: i64, vocab: i64) -> ArchSpec {
        ArchSpec {
            arch: arch.parse().unwrap(),
            input_shape: vec![max_len],
            num_classes: vocab,
        }
    }

    #[test]
    fn lm_names_parse_with_defaults_and_round_trip() {
        assert_eq!("lm".parse::<Arch>().unwrap(), Arch::Lm(LmConfig::DEFAULT));
        let a: Arch = "lm:layers=4,d=256,heads=4".parse().unwrap();
        assert_eq!(
            a,
            Arch::Lm(LmConfig {
                layers: 4,
                d: 256,
                heads: 4
            })
        );
        assert_eq!(a.to_string().parse::<Arch>().unwrap(), a);
        assert!(a.is_sequence_model() && a.input_kind() == tch::Kind::Int64);
        assert_eq!(
            "lm:d=64".parse::<Arch>().unwrap().to_string(),
            "lm:layers=2,d=64,heads=4"
        );
        for bad in [
            "lm:",
            "lm:d=0",
            "lm:d=66,heads=4",
            "lm:depth=2",
            "lm:layers",
        ] {
            assert!(bad.parse::<Arch>().is_err(), "{bad}");
        }
        let e = "lm:x=1".parse::<Arch>().unwrap_err().to_string();
        assert!(e.contains("lm:layers=L,d=D,heads=H"), "{e}");
    }

    #[test]
    fn lm_parameter_count_is_the_reference_formula() {
        // Per block (PyTorch's TransformerEncoderLayer, ffn 4d): attention 4d² + 4d, ffn
        // 8d² + 5d, two LayerNorms 4d; embeddings (V + S)·d; final LayerNorm 2d; tied output.
        let (l, d, v, s) = (3i64, 32i64, 50i64, 16i64);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        Network::new(&vs.root(), &lm_spec("lm:layers=3,d=32,heads=4", s, v)).unwrap();
        assert_eq!(
            param_count(&vs),
            (v + s) * d + l * (12 * d * d + 13 * d) + 2 * d
        );
        let names: Vec<String> = vs.variables().into_keys().collect();
        for want in [
            "tok.weight",
            "pos.weight",
            "blocks.layers.2.self_attn.in_proj_weight",
            "blocks.layers.0.self_attn.out_proj.bias",
            "blocks.layers.1.linear2.weight",
            "blocks.layers.0.norm1.weight",
            "norm.bias",
        ] {
            assert!(
                names.iter().any(|n| n == want),
                "{want} missing from {names:?}"
            );
        }
    }

    #[test]
    fn lm_is_causal_and_right_padding_never_changes_real_positions() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let net = Network::new(&vs.root(), &lm_spec("lm:layers=2,d=16,heads=2", 8, 20)).unwrap();
        let _g = tch::no_grad_guard();
        let ids = Tensor::from_slice(&[3i64, 7, 1, 19, 4]).view([1, 5]);
        let alone = net.forward(&ids, false).unwrap();
        assert_eq!(alone.size(), vec![1, 5, 20]);
        // Causal: changing the last token leaves the earlier positions alone.
        let changed = Tensor::from_slice(&[3i64, 7, 1, 19, 0]).view([1, 5]);
        let y = net.forward(&changed, false).unwrap();
        let diff = |a: &Tensor, b: &Tensor| f64::try_from((a - b).abs().max()).unwrap();
        assert!(diff(&y.narrow(1, 0, 4), &alone.narrow(1, 0, 4)) < 1e-6);
        assert!(diff(&y.narrow(1, 4, 1), &alone.narrow(1, 4, 1)) > 1e-4);
        // Padded to 8 with garbage ids and a mask, beside a full-length row.
        let padded = Tensor::from_slice(&[3i64, 7, 1, 19, 4, 11, 12, 13, 5, 5, 5, 5, 5, 5, 5, 5])
            .view([2, 8]);
        let mask =
            Tensor::from_slice(&[1u8, 1, 1, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]).view([2, 8]);
        let y = net.forward_masked(&padded, Some(&mask), false).unwrap();
        assert!(y.isfinite().all().int64_value(&[]) == 1);
        assert!(diff(&y.narrow(0, 0, 1).narrow(1, 0, 5), &alone) < 1e-5);
        // A hole in the mask hides that token from later positions.
        let holed = Tensor::from_slice(&[1u8, 1, 0, 1, 1]).view([1, 5]);
        let y = net.forward_masked(&ids, Some(&holed), false).unwrap();
        assert!(diff(&y.narrow(1, 3, 2), &alone.narrow(1, 3, 2)) > 1e-4);
        // Errors: too long, wrong rank, mask of another shape, mask on an MLP.
        let long = Tensor::zeros([1, 9], (tch::Kind::Int64, tch::Device::Cpu));
        let e = net.forward(&long, false).unwrap_err().to_string();
        assert!(e.contains("seq <= 8") && e.contains("[1, 9]"), "{e}");
        assert!(net.forward(&ids.view([5]), false).is_err());
        let e = net
            .forward_masked(&ids, Some(&mask), false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[1, 5]") && e.contains("[2, 8]"), "{e}");
        let mvs = nn::VarStore::new(tch::Device::Cpu);
        let mlp = Network::new(&mvs.root(), &spec("mlp")).unwrap();
        let x = Tensor::zeros([1, 1, 28, 28], tch::kind::FLOAT_CPU);
        assert!(mlp.forward_masked(&x, Some(&mask), false).is_err());
    }

    #[test]
    fn a_torchscript_student_is_recorded_beside_the_built_ins_and_never_built() {
        let arch = Arch::TorchScript(crate::ScriptArch {
            module: "student".into(),
            input_dtype: "f32".into(),
            sequence_model: false,
            logits_output: "logits".into(),
            outputs: vec![crate::script::ScriptOutput {
                name: "logits".into(),
                shape: vec![10],
            }],
            state_dict_method: true,
        });
        let json = serde_json::to_value(&arch).unwrap();
        assert_eq!(json["name"], "torchscript");
        assert_eq!(serde_json::from_value::<Arch>(json).unwrap(), arch);
        assert_eq!(arch.to_string(), "torchscript:student");
        assert!(arch.is_torchscript() && !arch.is_sequence_model());
        assert_eq!(arch.input_kind(), tch::Kind::Float);
        // Older checkpoints' architectures still read.
        let old: Arch = serde_json::from_str(r#"{"name":"mlp","hidden":[128]}"#).unwrap();
        assert_eq!(old, "mlp".parse().unwrap());
        let vs = nn::VarStore::new(tch::Device::Cpu);
        let e = Network::new(
            &vs.root(),
            &ArchSpec {
                arch,
                input_shape: vec![1, 28, 28],
                num_classes: 10,
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("loaded from its module file"), "{e}");
    }
}
