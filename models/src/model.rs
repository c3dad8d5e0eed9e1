//! [`Model`]: a built-in [`Network`] or a TorchScript [`ScriptModule`] behind one interface,
//! what training, evaluation, hints and checkpoints use for any student.

use crate::arch::{ArchSpec, LOGITS_LAYER, LayerInfo, Network};
use crate::script::ScriptModule;
use crate::{Arch, KvCache, ModelError};
use tch::Tensor;

/// A student network: built in, or a TorchScript module. Its trainable variables live in the
/// `VarStore` it was built or loaded into.
#[derive(Debug)]
pub enum Model {
    /// A built-in architecture (`cnn`, `mlp`, `lm`, ...).
    Builtin(Network),
    /// A TorchScript module (`--student FILE.pt`).
    Script(ScriptModule),
}

impl Model {
    /// What the model was built or loaded for.
    pub fn spec(&self) -> &ArchSpec {
        match self {
            Model::Builtin(n) => n.spec(),
            Model::Script(s) => s.spec(),
        }
    }

    /// Logits of `xs` (`[batch, classes]`, a sequence model's `[batch, seq, vocab]`), dropout
    /// (and a TorchScript module's training-mode behaviour: BatchNorm's batch statistics) only
    /// when `train` is true.
    ///
    /// # Errors
    /// A libtorch error, or outputs that are not what the model's warm-up found.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        match self {
            Model::Builtin(n) => n.forward(xs, train),
            Model::Script(s) => s.forward(xs, train),
        }
    }

    /// Every named output of one forward pass with the logits last: a built-in network's
    /// layers ([`Network::forward_layers`]); a TorchScript module's outputs, the logits moved
    /// last and named [`LOGITS_LAYER`] when the module has no output of that name.
    ///
    /// # Errors
    /// As [`Model::forward`].
    pub fn forward_layers(
        &self,
        xs: &Tensor,
        train: bool,
    ) -> Result<Vec<(String, Tensor)>, ModelError> {
        match self {
            Model::Builtin(n) => n.forward_layers(xs, None, train),
            Model::Script(s) => {
                let logits_name = match &s.spec().arch {
                    Arch::TorchScript(a) => a.logits_output.clone(),
                    _ => LOGITS_LAYER.to_string(),
                };
                let mut all = s.forward_all(xs, train)?;
                if let Some(i) = all.iter().position(|(n, _)| *n == logits_name) {
                    let logits = all.remove(i);
                    all.push(logits);
                }
                Ok(all)
            }
        }
    }

    /// The named layers a hint may guide: a built-in network's ([`Network::layers`]); a
    /// TorchScript module's outputs other than its logits.
    pub fn layers(&self) -> Vec<LayerInfo> {
        match self {
            Model::Builtin(n) => n.layers(),
            Model::Script(s) => match &s.spec().arch {
                Arch::TorchScript(a) => a
                    .layers()
                    .into_iter()
                    .filter(|l| l.name != a.logits_output)
                    .collect(),
                _ => Vec::new(),
            },
        }
    }

    /// The variable groups of the layers up to and including `name` (what hint training's first
    /// stage trains); `None` when the model cannot tell: a TorchScript module (its whole
    /// parameters train in the hint stage), an unknown name, or a language model.
    pub fn variables_through(&self, name: &str) -> Option<Vec<String>> {
        match self {
            Model::Builtin(n) => n.variables_through(name),
            Model::Script(_) => None,
        }
    }

    /// Whether the model has an incremental decoding step with a key/value cache
    /// ([`Model::forward_cached`]): the built-in language model does, a TorchScript module does
    /// not (its sampling runs a full forward pass per new token, see [`crate::generate`]).
    pub fn has_kv_cache(&self) -> bool {
        match self {
            Model::Builtin(n) => n.has_kv_cache(),
            Model::Script(_) => false,
        }
    }

    /// The incremental decoding step of a model that has one ([`Network::forward_cached`]):
    /// logits `f32 [batch, n, vocab]` of the `n` new token ids `i64 [batch, n]` that follow
    /// the positions cached in `cache`.
    ///
    /// # Errors
    /// [`ModelError::Unsupported`] for a model without one ([`Model::has_kv_cache`]); the
    /// errors of [`Network::forward_cached`].
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor, ModelError> {
        match self {
            Model::Builtin(n) => n.forward_cached(ids, cache),
            Model::Script(s) => Err(ModelError::Unsupported(format!(
                "{}: a TorchScript module has no key/value cache",
                s.spec().arch
            ))),
        }
    }

    /// The device of the model's weights, when it can tell: a language model's, a TorchScript
    /// module's (its first parameter's); `None` for a built-in feed-forward network.
    pub fn device(&self) -> Option<tch::Device> {
        match self {
            Model::Builtin(n) => n.device(),
            Model::Script(s) => s.device(),
        }
    }

    /// The TorchScript module, when this is one.
    pub fn script(&self) -> Option<&ScriptModule> {
        match self {
            Model::Script(s) => Some(s),
            Model::Builtin(_) => None,
        }
    }
}

/// The named layers of a student of `spec` that a hint may guide (see [`Model::layers`]),
/// without loading it: a built-in network is built on the CPU to list them, a TorchScript
/// student's are recorded in its architecture.
///
/// # Errors
/// [`ModelError::InputShape`] for a built-in architecture that cannot take the input shape.
pub fn layers_of(spec: &ArchSpec) -> Result<Vec<LayerInfo>, ModelError> {
    if let Arch::TorchScript(a) = &spec.arch {
        return Ok(a
            .layers()
            .into_iter()
            .filter(|l| l.name != a.logits_output)
            .collect());
    }
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    Ok(Network::new(&vs.root(), spec)?.layers())
}
