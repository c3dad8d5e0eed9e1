//! The served model behind a small synchronous trait, and its two implementations: a TorchScript
//! module and a built-in architecture with safetensors weights.
//!
//! Models are built and used on the engine thread only (see [`crate::engine`]): `tch::Tensor` is
//! `Send` but not `Sync`, and grad mode is thread-local.

use crate::config::{ModelSource, ModelSpec};
use crate::error::EngineError;
use distill_models::{ArchSpec, Checkpoint, Network, checkpoint::sorted_variables, fingerprint};
use std::path::Path;
use tch::{CModule, Device, Kind, Tensor, nn};

/// Why a model could not be loaded (one line, naming the file).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("loading the model: {0}")]
pub struct LoadError(pub String);

impl From<distill_models::ModelError> for LoadError {
    fn from(e: distill_models::ModelError) -> Self {
        LoadError(e.to_string())
    }
}

/// What a served model is, as reported by `GetModelInfo` and the startup log.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelDescription {
    /// Architecture name, or the TorchScript file stem.
    pub name: String,
    /// Checkpoint epoch/step, or the TorchScript file's modification time (Unix seconds).
    pub version: String,
    /// Hex SHA-256 of the weights as loaded (see [`distill_models::fingerprint()`]).
    pub fingerprint: String,
    /// Per-sample input shape (no batch dimension).
    pub input_shape: Vec<i64>,
    /// Input dtype (a libtorch kind; the service maps it to the wire `DType`).
    pub input_dtype: Kind,
    /// Logits per sample.
    pub num_logits: i64,
    /// Device the model runs on, e.g. `cpu` or `cuda:0`.
    pub device: String,
}

/// A teacher: maps inputs to logits. Implementations move inputs to their device and return
/// logits on the CPU.
pub trait TeacherModel {
    /// Logits `[batch, num_logits]` (CPU, any float kind) of inputs `[batch, ...input_shape]`
    /// (CPU, the model's input dtype), in eval mode. Called under `tch::no_grad_guard`.
    ///
    /// # Errors
    /// [`EngineError`] on any libtorch failure; never panics on bad data.
    fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError>;

    /// What the model is.
    fn info(&self) -> ModelDescription;
}

pub use distill_models::device::device_name;

/// Loads the model described by `source` and `spec` onto `device`. Call on the engine thread.
///
/// # Errors
/// [`LoadError`] if the file is missing, malformed, or does not fit the architecture.
pub fn load(
    source: &ModelSource,
    spec: &ModelSpec,
    device: Device,
) -> Result<Box<dyn TeacherModel>, LoadError> {
    Ok(match source {
        ModelSource::TorchScript { path } => Box::new(TorchScriptModel::load(path, spec, device)?),
        ModelSource::Checkpoint { dir } => {
            let ck = Checkpoint::open(dir)?;
            let (vs, net) = ck.load_network(device)?;
            let version = format!("epoch {} step {}", ck.meta.epoch, ck.meta.step);
            Box::new(ArchModel::new(vs, net, version)?)
        }
        ModelSource::Safetensors { path, arch } => {
            let arch_spec = ArchSpec {
                arch: arch.clone(),
                input_shape: spec.input_shape.clone(),
                num_classes: spec.num_logits,
            };
            let vs = nn::VarStore::new(device);
            let net = Network::new(&vs.root(), &arch_spec)?;
            distill_models::load_safetensors(&vs, &arch.to_string(), path)?;
            Box::new(ArchModel::new(vs, net, mtime_version(path))?)
        }
    })
}

fn mtime_version(path: &Path) -> String {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(|| "unknown".into(), |d| format!("mtime {}", d.as_secs()))
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "teacher".into(), |s| s.to_string_lossy().into_owned())
}

/// Runs `f`, turning a panic (tch's non-fallible paths, e.g. inside `SequentialT`) into an error.
fn no_panic<T>(f: impl FnOnce() -> Result<T, EngineError>) -> Result<T, EngineError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|p| Err(EngineError::Panicked(distill_models::panic_message(&*p))))
}

/// A TorchScript module (`torch.jit.save`), served in eval mode whatever mode it was saved in.
#[derive(Debug)]
pub struct TorchScriptModel {
    module: CModule,
    device: Device,
    info: ModelDescription,
}

impl TorchScriptModel {
    /// Loads `path` onto `device`, switches it to eval mode, and fingerprints its parameters.
    ///
    /// # Errors
    /// [`LoadError`] if libtorch cannot load the file.
    pub fn load(path: &Path, spec: &ModelSpec, device: Device) -> Result<Self, LoadError> {
        let torch = |what: &str, e: tch::TchError| {
            LoadError(format!(
                "{}: {what}: {}",
                path.display(),
                distill_models::torch_message(&e)
            ))
        };
        let mut module = CModule::load_on_device(path, device)
            .map_err(|e| torch("not a TorchScript module", e))?;
        module.set_eval();
        let params = module
            .named_parameters()
            .map_err(|e| torch("reading parameters", e))?;
        let fp = fingerprint(&params).map_err(|e| torch("fingerprinting", e))?;
        Ok(TorchScriptModel {
            module,
            device,
            info: ModelDescription {
                name: file_stem(path),
                version: mtime_version(path),
                fingerprint: fp,
                input_shape: spec.input_shape.clone(),
                input_dtype: spec.input_dtype,
                num_logits: spec.num_logits,
                device: device_name(device),
            },
        })
    }
}

impl TeacherModel for TorchScriptModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        no_panic(|| {
            let x = x.f_to_device(self.device)?;
            let y = self.module.forward_ts(&[x])?;
            Ok(y.f_to_device(Device::Cpu)?)
        })
    }

    fn info(&self) -> ModelDescription {
        self.info.clone()
    }
}

/// A built-in architecture ([`distill_models::Arch`]) with loaded weights.
#[derive(Debug)]
pub struct ArchModel {
    /// Owns the weights `net` uses.
    _vs: nn::VarStore,
    net: Network,
    device: Device,
    info: ModelDescription,
}

impl ArchModel {
    /// Wraps a network whose weights live in `vs`; fingerprints the weights as loaded.
    ///
    /// # Errors
    /// [`LoadError`] if the weights cannot be read back for the fingerprint.
    pub fn new(vs: nn::VarStore, net: Network, version: String) -> Result<Self, LoadError> {
        let fp = fingerprint(&sorted_variables(&vs))
            .map_err(|e| LoadError(format!("fingerprinting weights: {e}")))?;
        let spec = net.spec().clone();
        let device = vs.device();
        Ok(ArchModel {
            info: ModelDescription {
                name: spec.arch.to_string(),
                version,
                fingerprint: fp,
                input_shape: spec.input_shape,
                input_dtype: Kind::Float,
                num_logits: spec.num_classes,
                device: device_name(device),
            },
            _vs: vs,
            net,
            device,
        })
    }
}

impl TeacherModel for ArchModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        no_panic(|| {
            let x = x.f_to_device(self.device)?;
            let y = self
                .net
                .forward(&x, false)
                .map_err(|e| EngineError::Torch(e.to_string()))?;
            Ok(y.f_to_device(Device::Cpu)?)
        })
    }

    fn info(&self) -> ModelDescription {
        self.info.clone()
    }
}
