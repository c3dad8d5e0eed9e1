//! The served model behind a small synchronous trait, and its two implementations: a TorchScript
//! module and a built-in architecture with safetensors weights.
//!
//! Models are built and used on the engine thread only (see [`crate::engine`]): `tch::Tensor` is
//! `Send` but not `Sync`, and grad mode is thread-local.

use crate::config::{ModelSource, ModelSpec, Precision, SequenceSpec};
use crate::error::EngineError;
use distill_models::{ArchSpec, Checkpoint, Network, checkpoint::sorted_variables, fingerprint};
use std::path::Path;
use tch::{CModule, Device, IValue, Kind, Tensor, nn};

/// The name [`TeacherModel::forward_all`]'s default gives a model's only output, and the name of
/// a built-in network's logits.
pub use distill_models::LOGITS_LAYER as DEFAULT_LOGITS_OUTPUT;

/// One named output of a model's forward pass, as the load-time warm-up found it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutputDescription {
    /// Dict key, tuple position (`0`, `1`, ...), or a built-in network's layer name.
    pub name: String,
    /// Per-sample shape (no batch dimension); a sequence model's per-position output has `-1`
    /// (the request's sequence length) first.
    pub shape: Vec<i64>,
    /// Kind the model computes it in.
    pub kind: Kind,
}

impl OutputDescription {
    /// Whether this is a sequence model's per-position output (`[batch, seq, ...]`).
    pub fn per_position(&self) -> bool {
        self.shape.first() == Some(&-1)
    }

    /// Values per sample (a per-position output: per position).
    pub fn elements(&self) -> i64 {
        self.shape.iter().filter(|&&d| d >= 0).product()
    }
}

/// `name [d1, d2, ...]` for each output, comma-separated (error messages and logs).
pub fn list_outputs(outputs: &[OutputDescription]) -> String {
    outputs
        .iter()
        .map(|o| format!("{} {:?}", o.name, o.shape))
        .collect::<Vec<_>>()
        .join(", ")
}

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
    /// Hex SHA-256 of the weights as loaded, before any `--precision` conversion (see
    /// [`distill_models::fingerprint()`]): the same for every precision of the same weights.
    pub fingerprint: String,
    /// Per-sample input shape (no batch dimension).
    pub input_shape: Vec<i64>,
    /// Input dtype (a libtorch kind; the service maps it to the wire `DType`).
    pub input_dtype: Kind,
    /// Logits per sample.
    pub num_logits: i64,
    /// Device the model runs on, e.g. `cpu` or `cuda:0`.
    pub device: String,
    /// Precision of the forward pass (weights and floating-point inputs).
    pub precision: Precision,
    /// For a sequence model (a causal LM): its longest sequence and tokenizer fingerprint.
    pub sequence: Option<SequenceSpec>,
    /// Every output of the forward pass, in the model's order (the logits among them); empty
    /// until [`load`]'s warm-up has inspected them.
    pub outputs: Vec<OutputDescription>,
    /// Which of `outputs` holds the logits.
    pub logits_output: String,
}

/// A teacher: maps inputs to logits. Implementations move inputs to their device and return
/// the logits there: the engine reduces them (top-k, log-sum-exp, casts) on the device and copies
/// only the result to the host.
pub trait TeacherModel {
    /// Logits `[batch, num_logits]` (on the model's device, any float kind; `f32` unless the
    /// model is run in f32 and chooses another kind) of inputs `[batch, ...input_shape]` (CPU,
    /// the model's input dtype), in eval mode. A sequence model maps token ids `i64 [batch, seq]`
    /// to `[batch, seq, num_logits]`. Called under `tch::no_grad_guard`.
    ///
    /// # Errors
    /// [`EngineError`] on any libtorch failure; never panics on bad data.
    fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError>;

    /// [`TeacherModel::forward`] of a sequence model with its attention mask (`[batch, seq]`,
    /// CPU, `i64`: 1 = real token, 0 = padding on the right). The default, for models without
    /// masks, runs [`TeacherModel::forward`] when `mask` is `None` and refuses a mask.
    ///
    /// # Errors
    /// As [`TeacherModel::forward`]; [`EngineError::Torch`] for a mask given to a model that
    /// takes none.
    fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, EngineError> {
        match mask {
            None => self.forward(x),
            Some(_) => Err(EngineError::Torch(
                "this model takes no attention mask".into(),
            )),
        }
    }

    /// Every named output of one forward pass, in the model's order, each on the model's device
    /// with the batch first (`[batch, ...]`; a sequence model's per-position outputs `[batch,
    /// seq, ...]`). The default: the logits of [`TeacherModel::forward_masked`] alone, named
    /// [`DEFAULT_LOGITS_OUTPUT`].
    ///
    /// # Errors
    /// As [`TeacherModel::forward_masked`].
    fn forward_all(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Vec<(String, Tensor)>, EngineError> {
        Ok(vec![(
            DEFAULT_LOGITS_OUTPUT.to_string(),
            self.forward_masked(x, mask)?,
        )])
    }

    /// What the model is.
    fn info(&self) -> ModelDescription;
}

pub use distill_models::device::device_name;

/// Loads the model described by `source` and `spec` onto `device`, converted to `precision`
/// (fingerprinted before the conversion). Call on the engine thread.
///
/// A warm-up forward pass of a batch of 2 zero samples then checks that the model runs, in
/// `precision` (a TorchScript module may create f32 tensors of its own and fail on mixed kinds),
/// and gives logits `[2, num_logits]`; it also pays libtorch's first-call costs before the server
/// reports ready.
///
/// # Errors
/// [`LoadError`] if the file is missing, malformed, or does not fit the architecture, or if the
/// model does not run in `precision`.
pub fn load(
    source: &ModelSource,
    spec: &ModelSpec,
    device: Device,
    precision: Precision,
) -> Result<Box<dyn TeacherModel>, LoadError> {
    let model: Box<dyn TeacherModel> = match source {
        ModelSource::TorchScript { path } => {
            Box::new(TorchScriptModel::load(path, spec, device, precision)?)
        }
        ModelSource::Checkpoint { dir } => {
            let ck = Checkpoint::open(dir)?;
            let (vs, net) = ck.load_network(device)?;
            let version = format!("epoch {} step {}", ck.meta.epoch, ck.meta.step);
            Box::new(ArchModel::new(
                vs,
                net,
                version,
                precision,
                spec.sequence.clone(),
            )?)
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
            Box::new(ArchModel::new(
                vs,
                net,
                mtime_version(path),
                precision,
                spec.sequence.clone(),
            )?)
        }
    };
    // A built-in network names its logits.
    let builtin;
    let spec = match (source, &spec.logits_output) {
        (ModelSource::TorchScript { .. }, _) | (_, Some(_)) => spec,
        _ => {
            builtin = ModelSpec {
                logits_output: Some(DEFAULT_LOGITS_OUTPUT.to_string()),
                ..spec.clone()
            };
            &builtin
        }
    };
    let (outputs, logits_output) = warm_up(model.as_ref(), spec, precision)?;
    Ok(Box::new(Served::new(model, outputs, logits_output)))
}

/// A loaded model with its outputs known: [`TeacherModel::forward`] gives the logits output,
/// [`TeacherModel::info`] lists every output.
struct Served {
    model: Box<dyn TeacherModel>,
    info: ModelDescription,
    logits_index: usize,
}

impl Served {
    fn new(
        model: Box<dyn TeacherModel>,
        outputs: Vec<OutputDescription>,
        logits_output: String,
    ) -> Served {
        let mut info = model.info();
        let logits_index = outputs
            .iter()
            .position(|o| o.name == logits_output)
            .unwrap_or(0);
        info.outputs = outputs;
        info.logits_output = logits_output;
        Served {
            model,
            info,
            logits_index,
        }
    }
}

impl TeacherModel for Served {
    fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        self.forward_masked(x, None)
    }

    fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, EngineError> {
        let mut all = self.model.forward_all(x, mask)?;
        if all.len() != self.info.outputs.len() {
            return Err(EngineError::Torch(format!(
                "the model returned {} outputs; at load it returned {}",
                all.len(),
                self.info.outputs.len()
            )));
        }
        Ok(all.swap_remove(self.logits_index).1)
    }

    fn forward_all(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Vec<(String, Tensor)>, EngineError> {
        self.model.forward_all(x, mask)
    }

    fn info(&self) -> ModelDescription {
        self.info.clone()
    }
}

/// Samples in the warm-up batch: 2, so that the batch dimension is told apart from a per-sample
/// dimension of size 1.
const WARM_UP_BATCH: i64 = 2;

/// Tokens per sequence in the warm-up batch of a sequence model (at most its `max_seq_len`).
const WARM_UP_SEQ_LEN: i64 = 8;

/// One forward pass of [`WARM_UP_BATCH`] zero samples (a sequence model: [`WARM_UP_SEQ_LEN`]
/// tokens with a full mask) that must succeed. It inspects every output: each must be a tensor
/// whose first dimension is the batch (a sequence model's per-position outputs also have the
/// sequence second). The logits are `spec.logits_output`, or the only output; they must be
/// floating-point `[WARM_UP_BATCH, num_logits]` (`[WARM_UP_BATCH, seq, num_logits]`). Returns
/// the outputs and the name of the logits.
fn warm_up(
    model: &dyn TeacherModel,
    spec: &ModelSpec,
    precision: Precision,
) -> Result<(Vec<OutputDescription>, String), LoadError> {
    let fail = |why: String| {
        LoadError(format!(
            "warm-up at load (--precision {precision}): a forward pass of {WARM_UP_BATCH} zero samples failed: {why}"
        ))
    };
    let (shape, expected, seq_len) = match &spec.sequence {
        // A short sequence with a full mask.
        Some(seq) => {
            let len = seq.max_seq_len.min(WARM_UP_SEQ_LEN);
            (
                vec![WARM_UP_BATCH, len],
                vec![WARM_UP_BATCH, len, spec.num_logits],
                Some(len),
            )
        }
        None => {
            let mut shape = vec![WARM_UP_BATCH];
            shape.extend_from_slice(&spec.input_shape);
            (shape, vec![WARM_UP_BATCH, spec.num_logits], None)
        }
    };
    let x = Tensor::f_zeros(shape.as_slice(), (spec.input_dtype, Device::Cpu))
        .map_err(|e| fail(e.to_string()))?;
    let mask = match &spec.sequence {
        Some(_) => Some(
            Tensor::f_ones(shape.as_slice(), (Kind::Int64, Device::Cpu))
                .map_err(|e| fail(e.to_string()))?,
        ),
        None => None,
    };
    let all = model
        .forward_all(&x, mask.as_ref())
        .map_err(|e| fail(e.to_string()))?;
    let mut outputs = Vec::with_capacity(all.len());
    for (name, t) in &all {
        let size = t.size();
        if size.first() != Some(&WARM_UP_BATCH) {
            return Err(LoadError(format!(
                "output {name} of the model has shape {size:?} for a batch of {WARM_UP_BATCH} samples: its first dimension must be the batch"
            )));
        }
        let mut per_sample = size[1..].to_vec();
        if let (Some(len), Some(d)) = (seq_len, per_sample.first_mut())
            && *d == len
        {
            *d = -1;
        }
        outputs.push(OutputDescription {
            name: name.clone(),
            shape: per_sample,
            kind: t.kind(),
        });
    }
    let logits_output = match (&spec.logits_output, outputs.as_slice()) {
        (Some(name), _) => {
            if !outputs.iter().any(|o| &o.name == name) {
                return Err(LoadError(format!(
                    "--logits-output {name}: the model has no output of that name; its outputs (per-sample shapes): {}",
                    list_outputs(&outputs)
                )));
            }
            name.clone()
        }
        (None, [only]) => only.name.clone(),
        (None, _) => {
            return Err(LoadError(format!(
                "the model returns {} outputs; choose the logits with --logits-output NAME (or \"logits_output\" in the sidecar). Its outputs (per-sample shapes): {}",
                outputs.len(),
                list_outputs(&outputs)
            )));
        }
    };
    let logits = all
        .iter()
        .find(|(n, _)| n == &logits_output)
        .map(|(_, t)| t)
        .ok_or_else(|| fail("no logits".into()))?;
    if logits.size() != expected {
        return Err(fail(format!(
            "expected logits {expected:?} (output {logits_output}), got {:?}",
            logits.size()
        )));
    }
    if !logits.is_floating_point() {
        return Err(fail(format!(
            "the logits (output {logits_output}) are {:?}, not floating-point",
            logits.kind()
        )));
    }
    Ok((outputs, logits_output))
}

/// `x` in the kind the model runs in: floating-point inputs converted to `precision`, integer
/// (and boolean) inputs unchanged (token ids, class indices, raw bytes stay exact).
///
/// # Errors
/// [`EngineError::Torch`] on a libtorch failure.
pub fn input_in(x: Tensor, precision: Precision) -> Result<Tensor, EngineError> {
    let kind = precision.kind();
    if x.is_floating_point() && x.kind() != kind {
        Ok(x.f_to_kind(kind)?)
    } else {
        Ok(x)
    }
}

/// Logits `y` as f32 for the output post-processing (range checks, top-k, log-sum-exp): a
/// reduced-precision model's logits are widened (exactly), f32 passes through. Only a model
/// run in f32 may return another floating kind (a TorchScript module's own choice), kept as is.
fn logits_out(y: Tensor, precision: Precision) -> Result<Tensor, EngineError> {
    if precision != Precision::F32 && y.kind() != Kind::Float {
        Ok(y.f_to_kind(Kind::Float)?)
    } else {
        Ok(y)
    }
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
    precision: Precision,
    info: ModelDescription,
}

impl TorchScriptModel {
    /// Loads `path` onto `device`, switches it to eval mode, fingerprints its parameters, and
    /// converts the module to `precision` (libtorch's `Module::to(device, dtype)`, which
    /// converts its parameters and buffers).
    ///
    /// # Errors
    /// [`LoadError`] if libtorch cannot load the file or convert the module.
    pub fn load(
        path: &Path,
        spec: &ModelSpec,
        device: Device,
        precision: Precision,
    ) -> Result<Self, LoadError> {
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
        drop(params);
        if precision != Precision::F32 {
            // `CModule::to` panics on a libtorch error.
            no_panic(|| {
                module.to(device, precision.kind(), false);
                Ok(())
            })
            .map_err(|e| {
                LoadError(format!(
                    "{}: converting to {precision}: {e}",
                    path.display()
                ))
            })?;
        }
        Ok(TorchScriptModel {
            module,
            device,
            precision,
            info: ModelDescription {
                name: file_stem(path),
                version: mtime_version(path),
                fingerprint: fp,
                input_shape: spec.input_shape.clone(),
                input_dtype: spec.input_dtype,
                num_logits: spec.num_logits,
                device: device_name(device),
                precision,
                sequence: spec.sequence.clone(),
                outputs: Vec::new(),
                logits_output: String::new(),
            },
        })
    }
}

impl TeacherModel for TorchScriptModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        self.forward_masked(x, None)
    }

    fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, EngineError> {
        let mut all = self.forward_all(x, mask)?;
        match all.len() {
            1 => Ok(all.swap_remove(0).1),
            n => Err(EngineError::Torch(format!(
                "the module returns {n} outputs; pick the logits at load"
            ))),
        }
    }

    /// A sequence model's module is called as `forward(input_ids, attention_mask)`, both `i64
    /// [batch, seq]` (a full mask when none was sent), as Hugging Face models are; any other
    /// module as `forward(inputs)`. It may return a tensor (output `0`), a tuple or list of
    /// tensors (`0`, `1`, ...) or a `Dict[str, Tensor]` (its keys, in its order). Floating-point
    /// outputs of a reduced-precision module come back as f32.
    fn forward_all(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Vec<(String, Tensor)>, EngineError> {
        no_panic(|| {
            let x = input_in(x.f_to_device(self.device)?, self.precision)?;
            let y = if self.info.sequence.is_some() {
                let mask = match mask {
                    Some(m) => m.f_to_kind(Kind::Int64)?.f_to_device(self.device)?,
                    None => x.f_ones_like()?.f_to_kind(Kind::Int64)?,
                };
                self.module
                    .forward_is(&[IValue::Tensor(x), IValue::Tensor(mask)])?
            } else if mask.is_some() {
                return Err(EngineError::Torch(
                    "this model takes no attention mask".into(),
                ));
            } else {
                self.module.forward_is(&[IValue::Tensor(x)])?
            };
            named_outputs(y)?
                .into_iter()
                .map(|(name, t)| Ok((name, logits_out(t, self.precision)?)))
                .collect()
        })
    }

    fn info(&self) -> ModelDescription {
        self.info.clone()
    }
}

/// What a TorchScript `forward` returned, as named tensors: a tensor is output `0`; a tuple or
/// list of tensors `0`, `1`, ...; a `Dict[str, Tensor]` its keys.
///
/// # Errors
/// [`EngineError::Torch`] naming what came instead (e.g. a tuple holding an int, a dict with int
/// keys).
fn named_outputs(y: IValue) -> Result<Vec<(String, Tensor)>, EngineError> {
    const EXPECTED: &str = "a tensor, a tuple or list of tensors, or a Dict[str, Tensor]";
    let element = |name: String, v: IValue| match v {
        IValue::Tensor(t) => Ok((name, t)),
        other => Err(EngineError::Torch(format!(
            "forward returned {} at output {name}; expected {EXPECTED}",
            ivalue_kind(&other)
        ))),
    };
    match y {
        IValue::Tensor(t) => Ok(vec![("0".into(), t)]),
        IValue::TensorList(ts) => Ok(ts
            .into_iter()
            .enumerate()
            .map(|(i, t)| (i.to_string(), t))
            .collect()),
        IValue::Tuple(vs) | IValue::GenericList(vs) => vs
            .into_iter()
            .enumerate()
            .map(|(i, v)| element(i.to_string(), v))
            .collect(),
        IValue::GenericDict(kvs) => kvs
            .into_iter()
            .map(|(k, v)| match k {
                IValue::String(name) => element(name, v),
                other => Err(EngineError::Torch(format!(
                    "forward returned a dict with {} keys; expected {EXPECTED}",
                    ivalue_kind(&other)
                ))),
            })
            .collect(),
        other => Err(EngineError::Torch(format!(
            "forward returned {}; expected {EXPECTED}",
            ivalue_kind(&other)
        ))),
    }
}

/// TorchScript's name for the type of `v` (error messages).
fn ivalue_kind(v: &IValue) -> &'static str {
    match v {
        IValue::None => "None",
        IValue::Tensor(_) => "a Tensor",
        IValue::Double(_) => "a float",
        IValue::Int(_) => "an int",
        IValue::Bool(_) => "a bool",
        IValue::Tuple(_) => "a tuple",
        IValue::IntList(_) => "a List[int]",
        IValue::DoubleList(_) => "a List[float]",
        IValue::BoolList(_) => "a List[bool]",
        IValue::String(_) => "a str",
        IValue::StringList(_) => "a List[str]",
        IValue::TensorList(_) => "a List[Tensor]",
        IValue::GenericList(_) => "a list",
        IValue::GenericDict(_) => "a dict",
        IValue::Object(_) => "an object",
        IValue::Device(_) => "a device",
        _ => "a value of another type",
    }
}

/// A built-in architecture ([`distill_models::Arch`]) with loaded weights.
#[derive(Debug)]
pub struct ArchModel {
    /// Owns the weights `net` uses.
    _vs: nn::VarStore,
    net: Network,
    device: Device,
    precision: Precision,
    info: ModelDescription,
}

impl ArchModel {
    /// Wraps a network whose weights live in `vs` (`sequence`: what a language model adds to its
    /// description, its tokenizer fingerprint): fingerprints the weights as loaded, then
    /// converts them to `precision` (`VarStore::bfloat16` / `half`, which convert only
    /// floating-point variables).
    ///
    /// # Errors
    /// [`LoadError`] if the weights cannot be read back for the fingerprint or converted.
    pub fn new(
        mut vs: nn::VarStore,
        net: Network,
        version: String,
        precision: Precision,
        sequence: Option<SequenceSpec>,
    ) -> Result<Self, LoadError> {
        let fp = fingerprint(&sorted_variables(&vs))
            .map_err(|e| LoadError(format!("fingerprinting weights: {e}")))?;
        // `VarStore`'s conversions panic on a libtorch error.
        no_panic(|| {
            match precision {
                Precision::F32 => {}
                Precision::Bf16 => vs.bfloat16(),
                Precision::F16 => vs.half(),
            }
            Ok(())
        })
        .map_err(|e| LoadError(format!("converting the weights to {precision}: {e}")))?;
        let spec = net.spec().clone();
        let device = vs.device();
        Ok(ArchModel {
            info: ModelDescription {
                name: spec.arch.to_string(),
                version,
                fingerprint: fp,
                input_dtype: spec.arch.input_kind(),
                sequence: spec.arch.is_sequence_model().then(|| SequenceSpec {
                    max_seq_len: spec.input_shape.first().copied().unwrap_or(0),
                    tokenizer_fingerprint: sequence
                        .map(|s| s.tokenizer_fingerprint)
                        .unwrap_or_default(),
                }),
                input_shape: spec.input_shape,
                num_logits: spec.num_classes,
                device: device_name(device),
                precision,
                outputs: Vec::new(),
                logits_output: String::new(),
            },
            _vs: vs,
            net,
            device,
            precision,
        })
    }
}

impl TeacherModel for ArchModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
        self.forward_masked(x, None)
    }

    fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, EngineError> {
        no_panic(|| {
            let x = input_in(x.f_to_device(self.device)?, self.precision)?;
            let mask = mask.map(|m| m.f_to_device(self.device)).transpose()?;
            let y = self
                .net
                .forward_masked(&x, mask.as_ref(), false)
                .map_err(|e| EngineError::Torch(e.to_string()))?;
            logits_out(y, self.precision)
        })
    }

    /// The network's named layers ([`Network::layers`]), the logits last.
    fn forward_all(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Vec<(String, Tensor)>, EngineError> {
        no_panic(|| {
            let x = input_in(x.f_to_device(self.device)?, self.precision)?;
            let mask = mask.map(|m| m.f_to_device(self.device)).transpose()?;
            self.net
                .forward_layers(&x, mask.as_ref(), false)
                .map_err(|e| EngineError::Torch(e.to_string()))?
                .into_iter()
                .map(|(name, t)| Ok((name, logits_out(t, self.precision)?)))
                .collect()
        })
    }

    fn info(&self) -> ModelDescription {
        self.info.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floating_inputs_take_the_precision_and_integer_inputs_stay_exact() {
        let f = Tensor::from_slice(&[1.0f32, 2.5, -3.0]);
        for (p, kind) in [
            (Precision::Bf16, Kind::BFloat16),
            (Precision::F16, Kind::Half),
            (Precision::F32, Kind::Float),
        ] {
            let x = input_in(f.shallow_clone(), p).unwrap();
            assert_eq!(x.kind(), kind);
            assert_eq!(
                max_abs_diff(&x, &f),
                0.0,
                "these values are exact in {kind:?}"
            );
        }
        // Token ids beyond bf16's 8 significant bits would be rounded if converted.
        let ids = Tensor::from_slice(&[0i64, 257, 1 << 40]);
        let bytes = Tensor::from_slice(&[0u8, 255]);
        for t in [ids, bytes] {
            for p in [Precision::Bf16, Precision::F16] {
                let x = input_in(t.shallow_clone(), p).unwrap();
                assert_eq!(x.kind(), t.kind());
                assert!(x.equal(&t));
            }
        }
    }

    #[test]
    fn reduced_precision_logits_come_back_as_f32() {
        let y = Tensor::from_slice(&[1.5f32, -2.0]).to_kind(Kind::BFloat16);
        assert_eq!(
            logits_out(y.shallow_clone(), Precision::Bf16)
                .unwrap()
                .kind(),
            Kind::Float
        );
        // An f32 model's own choice of kind is left to the output path, as before.
        assert_eq!(
            logits_out(y, Precision::F32).unwrap().kind(),
            Kind::BFloat16
        );
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
    }

    /// A model whose forward pass fails, or gives the wrong shape.
    struct Broken {
        fail: bool,
    }

    impl TeacherModel for Broken {
        fn forward(&self, x: &Tensor) -> Result<Tensor, EngineError> {
            if self.fail {
                return Err(EngineError::Torch(
                    "expected BFloat16 but found Float".into(),
                ));
            }
            Ok(Tensor::f_zeros(
                [x.size()[0], 3],
                (Kind::Float, Device::Cpu),
            )?)
        }

        fn info(&self) -> ModelDescription {
            unreachable!("not called by warm_up")
        }
    }

    #[test]
    fn a_model_that_does_not_run_in_the_precision_fails_at_load() {
        let spec = ModelSpec {
            input_shape: vec![2],
            input_dtype: Kind::Float,
            num_logits: 4,
            sequence: None,
            logits_output: None,
        };
        let e = warm_up(&Broken { fail: true }, &spec, Precision::Bf16).unwrap_err();
        assert!(
            e.to_string().contains("--precision bf16") && e.to_string().contains("found Float"),
            "{e}"
        );
        let e = warm_up(&Broken { fail: false }, &spec, Precision::F16).unwrap_err();
        assert!(
            e.to_string()
                .contains("expected logits [2, 4] (output logits), got [2, 3]"),
            "{e}"
        );
    }

    #[test]
    fn a_builtin_network_in_bf16_keeps_the_source_fingerprint() {
        let spec = ArchSpec {
            arch: "mlp:4".parse().unwrap(),
            input_shape: vec![3],
            num_classes: 2,
        };
        let build = |p| {
            let vs = nn::VarStore::new(Device::Cpu);
            let net = Network::new(&vs.root(), &spec).unwrap();
            tch::no_grad(|| {
                let mut vars: Vec<_> = vs.variables().into_iter().collect();
                vars.sort_by(|a, b| a.0.cmp(&b.0));
                for (i, (_, mut t)) in vars.into_iter().enumerate() {
                    let _ = t.fill_(0.1 * (i + 1) as f64);
                }
            });
            ArchModel::new(vs, net, "v".into(), p, None).unwrap()
        };
        let (f, b) = (build(Precision::F32), build(Precision::Bf16));
        assert_eq!(f.info().fingerprint, b.info().fingerprint);
        assert_eq!(b.info().precision, Precision::Bf16);
        let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0]).reshape([1, 3]);
        let _g = tch::no_grad_guard();
        let (yf, yb) = (f.forward(&x).unwrap(), b.forward(&x).unwrap());
        assert_eq!(yb.kind(), Kind::Float);
        // 0.1·i has no exact bf16 value: the bf16 logits differ, within a few percent.
        let d = max_abs_diff(&yf, &yb);
        assert!(
            d > 0.0 && d < 0.05 * yf.abs().max().double_value(&[]),
            "{d}"
        );
    }
}
