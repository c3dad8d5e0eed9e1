//! TorchScript modules as trainable students (and the output parsing teachers share).
//!
//! A student exported from PyTorch (`torch.jit.script` or `torch.jit.trace`, then
//! `torch.jit.save`; `scripts/export_student.py` does both) is loaded with libtorch and trained
//! in place: [`ScriptModule::load`] adds the module's parameters to a `VarStore` path under their
//! own dotted names (`conv.weight`, `layers.0.bias`, the keys of PyTorch's `state_dict()`), the
//! tensors shared with the module, so the optimizer's updates are the module's. Tied parameters
//! (the same tensor under two names) join once, under their first name.
//!
//! - Calls: a classifier is called as `forward(x)`, a sequence model (a causal LM) as
//!   `forward(input_ids, attention_mask)`, both `i64 [batch, seq]` (a full mask), as Hugging
//!   Face decoders are. It may return a tensor (output `0`), a tuple or list of tensors (`0`,
//!   `1`, ...) or a `Dict[str, Tensor]` (its keys): [`named_outputs`].
//! - Modes: [`ScriptModule::forward_all`] switches the module to training mode
//!   (`module.train()`) or evaluation mode (`module.eval()`) as asked, so dropout and BatchNorm
//!   behave as in PyTorch and BatchNorm's running statistics move in training only. A traced
//!   module keeps the mode it was traced in (tracing records the ops of that mode).
//! - The state dict: libtorch exposes no module buffers (BatchNorm's running statistics). A
//!   module exported by `scripts/export_student.py` carries a method `distill_state_dict()`
//!   returning every `state_dict()` entry by its key, the live tensors, buffers included;
//!   [`ScriptModule::state_dict`] calls it. Without it (a module exported by hand) the state
//!   dict is the parameters alone.
//! - The warm-up: [`ScriptModule::load`] runs one forward pass of 2 zero samples in eval mode
//!   under no-grad and checks what comes back against the data (output shapes, classes or
//!   vocabulary); every mismatch is one line naming both sides.

use crate::arch::{ArchSpec, LayerInfo};
use crate::{ModelError, torch_message};
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Mutex;
use tch::{CModule, Device, IValue, Kind, Tensor, nn};

/// The method `scripts/export_student.py` adds to a module: `state_dict()` with buffers.
pub const STATE_DICT_METHOD: &str = "distill_state_dict";

/// Samples in the warm-up batch: 2, so that the batch dimension is told apart from a per-sample
/// dimension of size 1.
pub const WARM_UP_BATCH: i64 = 2;

/// Tokens per sequence in the warm-up batch of a sequence model (at most its `max_seq_len`).
pub const WARM_UP_SEQ_LEN: i64 = 8;

/// What a TorchScript student is, as its checkpoint records it (the `torchscript` architecture).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptArch {
    /// The module's name: the stem of the file it was exported to (e.g. `student` for
    /// `student.pt`).
    pub module: String,
    /// Input dtype (`f32`, `f16`, `bf16`, `f64`, `u8`, `i32`, `i64`); a sequence model's is `i64`.
    pub input_dtype: String,
    /// A causal LM called as `forward(input_ids, attention_mask)` with logits `[batch, seq,
    /// vocab]`.
    #[serde(default)]
    pub sequence_model: bool,
    /// The output holding the logits (`0` for a module returning one tensor).
    pub logits_output: String,
    /// Every output with its per-sample shape, in the module's order, as the warm-up found them
    /// (a sequence model's per-position outputs have `-1`, the sequence, first).
    #[serde(default)]
    pub outputs: Vec<ScriptOutput>,
    /// Whether the module has `distill_state_dict()` (buffers are saved; see the module docs).
    #[serde(default)]
    pub state_dict_method: bool,
}

/// One named output of a TorchScript student.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScriptOutput {
    /// Tuple position (`0`, `1`, ...) or dict key.
    pub name: String,
    /// Per-sample shape (no batch dimension).
    pub shape: Vec<i64>,
}

impl ScriptArch {
    /// The input kind of [`ScriptArch::input_dtype`] (`Float` for an unknown name, which
    /// [`kind_of_name`] refuses before it is recorded).
    pub fn input_kind(&self) -> Kind {
        kind_of_name(&self.input_dtype).unwrap_or(Kind::Float)
    }

    /// The named outputs other than the logits: the student's layers for `--hint`.
    pub fn layers(&self) -> Vec<LayerInfo> {
        self.outputs
            .iter()
            .map(|o| LayerInfo {
                name: o.name.clone(),
                shape: o.shape.clone(),
            })
            .collect()
    }
}

/// The kind of a dtype name (`f32`, `f16`, `bf16`, `f64`, `u8`, `i32`, `i64`).
///
/// # Errors
/// The names accepted, for any other.
pub fn kind_of_name(name: &str) -> Result<Kind, String> {
    Ok(match name.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => Kind::Float,
        "f16" | "float16" | "half" => Kind::Half,
        "bf16" | "bfloat16" => Kind::BFloat16,
        "f64" | "float64" | "double" => Kind::Double,
        "u8" | "uint8" => Kind::Uint8,
        "i32" | "int32" => Kind::Int,
        "i64" | "int64" | "long" => Kind::Int64,
        other => {
            return Err(format!(
                "unknown dtype {other:?}: expected f32, f16, bf16, f64, u8, i32 or i64"
            ));
        }
    })
}

/// The short name of a kind (`f32`, `i64`, ...), as [`kind_of_name`] reads it.
pub fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::Half => "f16",
        Kind::BFloat16 => "bf16",
        Kind::Double => "f64",
        Kind::Uint8 => "u8",
        Kind::Int => "i32",
        Kind::Int64 => "i64",
        Kind::Bool => "bool",
        _ => "another dtype",
    }
}

/// A TorchScript module whose parameters live in a `VarStore` (see the module docs).
pub struct ScriptModule {
    module: Mutex<Moded>,
    spec: ArchSpec,
    /// The module's file, for messages.
    source: String,
}

/// The module with the mode it was last switched to (`None`: as loaded).
struct Moded {
    module: CModule,
    train: Option<bool>,
}

impl std::fmt::Debug for ScriptModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptModule")
            .field("spec", &self.spec)
            .field("source", &self.source)
            .finish()
    }
}

/// What [`ScriptModule::load`] is told of a module before its warm-up: from the sidecar, the
/// flags and the data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRequest {
    /// The module's name.
    pub module: String,
    /// Per-sample input shape (the data's; a sequence model's `[max_seq_len]`).
    pub input_shape: Vec<i64>,
    /// Input dtype.
    pub input_dtype: Kind,
    /// Classes (a sequence model: the vocabulary), the data's.
    pub num_classes: i64,
    /// A causal LM.
    pub sequence_model: bool,
    /// The logits output, when named (`None`: the only output).
    pub logits_output: Option<String>,
}

impl ScriptRequest {
    /// The request that reloads a module of the resolved `spec` (a `torchscript` architecture:
    /// a checkpoint's, or what an earlier [`ScriptModule::load`] found); `None` for a built-in
    /// architecture.
    pub fn of(spec: &ArchSpec) -> Option<ScriptRequest> {
        let crate::Arch::TorchScript(s) = &spec.arch else {
            return None;
        };
        Some(ScriptRequest {
            module: s.module.clone(),
            input_shape: spec.input_shape.clone(),
            input_dtype: s.input_kind(),
            num_classes: spec.num_classes,
            sequence_model: s.sequence_model,
            logits_output: Some(s.logits_output.clone()),
        })
    }
}

impl ScriptModule {
    /// Loads the TorchScript file `path` (or, with `bytes`, those bytes, read from `path`) onto
    /// `vs`'s device, adds its parameters to `vs` under their dotted names, and checks it with a
    /// warm-up forward pass against `req`. Returns the module and its resolved spec (the
    /// `torchscript` architecture with its outputs).
    ///
    /// # Errors
    /// [`ModelError::Script`], one line naming both sides: not a TorchScript file, no trainable
    /// parameters, a forward pass that fails on the inputs the data gives (other arguments,
    /// another dtype), outputs that are not batch-first tensors, logits that are not `[batch,
    /// classes]` (`[batch, seq, vocab]`), an unknown or missing logits output.
    pub fn load(
        path: &Path,
        bytes: Option<&[u8]>,
        vs: &nn::Path<'_>,
        req: &ScriptRequest,
    ) -> Result<ScriptModule, ModelError> {
        let source = path.display().to_string();
        let bad = |reason: String| ModelError::Script(format!("{source}: {reason}"));
        let device = vs.device();
        let loaded = match bytes {
            Some(b) => CModule::load_data_on_device(&mut &b[..], device),
            None => CModule::load_on_device(path, device),
        };
        let module = loaded.map_err(|e| {
            bad(format!(
                "not a TorchScript module (export it with torch.jit.script or torch.jit.trace and \
                 torch.jit.save, e.g. scripts/export_student.py): {}",
                torch_message(&e)
            ))
        })?;
        let params = module
            .named_parameters()
            .map_err(|e| bad(format!("reading its parameters: {}", torch_message(&e))))?;
        let mut seen: Vec<usize> = Vec::with_capacity(params.len());
        let mut trainable = 0usize;
        for (name, t) in params {
            let ptr = t.data_ptr() as usize;
            if seen.contains(&ptr) {
                continue;
            }
            seen.push(ptr);
            let requires_grad = t.requires_grad();
            trainable += requires_grad as usize;
            add_dotted(vs, &name, t, requires_grad);
        }
        if trainable == 0 {
            return Err(bad(
                "the module has no trainable parameters (none requires grad): nothing to train"
                    .into(),
            ));
        }
        let state_dict_method = module.method_is::<IValue>(STATE_DICT_METHOD, &[]).is_ok();
        let mut me = ScriptModule {
            module: Mutex::new(Moded {
                module,
                train: None,
            }),
            spec: ArchSpec {
                arch: crate::Arch::TorchScript(ScriptArch {
                    module: req.module.clone(),
                    input_dtype: kind_name(req.input_dtype).to_string(),
                    sequence_model: req.sequence_model,
                    logits_output: req.logits_output.clone().unwrap_or_default(),
                    outputs: Vec::new(),
                    state_dict_method,
                }),
                input_shape: req.input_shape.clone(),
                num_classes: req.num_classes,
            },
            source,
        };
        me.warm_up(req)?;
        Ok(me)
    }

    /// What the warm-up found: the `torchscript` architecture with its outputs, the data's input
    /// shape and classes.
    pub fn spec(&self) -> &ArchSpec {
        &self.spec
    }

    fn script(&self) -> &ScriptArch {
        match &self.spec.arch {
            crate::Arch::TorchScript(s) => s,
            _ => unreachable!("a ScriptModule's architecture is torchscript"),
        }
    }

    /// Whether the module has `distill_state_dict()` (see the module docs).
    pub fn has_state_dict_method(&self) -> bool {
        self.script().state_dict_method
    }

    /// One forward pass of [`WARM_UP_BATCH`] zero samples in eval mode under no-grad, checked
    /// against `req` (see [`ScriptModule::load`]); records the outputs in the spec.
    fn warm_up(&mut self, req: &ScriptRequest) -> Result<(), ModelError> {
        let bad = |reason: String| ModelError::Script(format!("{}: {reason}", self.source));
        let seq_len = req.sequence_model.then(|| {
            req.input_shape
                .first()
                .copied()
                .unwrap_or(1)
                .min(WARM_UP_SEQ_LEN)
        });
        let shape: Vec<i64> = match seq_len {
            Some(s) => vec![WARM_UP_BATCH, s],
            None => std::iter::once(WARM_UP_BATCH)
                .chain(req.input_shape.iter().copied())
                .collect(),
        };
        let call = if req.sequence_model {
            format!("forward(input_ids, attention_mask), both i64 {shape:?}")
        } else {
            format!("forward(x) with x {} {shape:?}", kind_name(req.input_dtype))
        };
        let x = Tensor::f_zeros(shape.as_slice(), (req.input_dtype, Device::Cpu))?;
        let outputs = {
            let _g = tch::no_grad_guard();
            self.forward_all(&x, false).map_err(|e| {
                bad(format!(
                    "the warm-up call {call} failed: {}; a student takes {}",
                    strip_source(&e.to_string(), &self.source),
                    if req.sequence_model {
                        "forward(input_ids, attention_mask) (a sequence model, as the data's token ids ask)"
                    } else {
                        "one input tensor, forward(x), as the data's samples ask"
                    }
                ))
            })?
        };
        let described = describe_outputs(&outputs, seq_len).map_err(bad)?;
        let list = || {
            described
                .iter()
                .map(|o| format!("{} {:?}", o.name, o.shape))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let logits_output = match (&req.logits_output, described.as_slice()) {
            (Some(name), _) if described.iter().any(|o| &o.name == name) => name.clone(),
            (Some(name), _) => {
                return Err(bad(format!(
                    "--student-logits-output {name}: the module has no output of that name; its \
                     outputs (per-sample shapes): {}",
                    list()
                )));
            }
            (None, [only]) => only.name.clone(),
            (None, _) => {
                return Err(bad(format!(
                    "the module returns {} outputs; choose the logits with \
                     --student-logits-output NAME (or \"logits_output\" in the sidecar). Its \
                     outputs (per-sample shapes): {}",
                    described.len(),
                    list()
                )));
            }
        };
        let logits = outputs
            .iter()
            .find(|(n, _)| *n == logits_output)
            .map(|(_, t)| t)
            .ok_or_else(|| bad("no logits".into()))?;
        check_logits(
            &logits.size(),
            &logits_output,
            &shape,
            seq_len,
            req.num_classes,
        )
        .map_err(bad)?;
        if !logits.is_floating_point() {
            return Err(bad(format!(
                "its logits (output {logits_output}) are {}, not floating-point",
                kind_name(logits.kind())
            )));
        }
        if let crate::Arch::TorchScript(s) = &mut self.spec.arch {
            s.logits_output = logits_output;
            s.outputs = described;
        }
        Ok(())
    }

    /// Every named output of one forward pass of `xs` (`[batch, ...input_shape]`, converted to
    /// the module's input dtype; a sequence model's token ids with a full attention mask), in
    /// training mode or eval mode as `train` asks (the module is switched when it is in the
    /// other).
    ///
    /// # Errors
    /// [`ModelError::Torch`] for a libtorch failure, [`ModelError::Script`] for outputs of
    /// another type.
    pub fn forward_all(
        &self,
        xs: &Tensor,
        train: bool,
    ) -> Result<Vec<(String, Tensor)>, ModelError> {
        let kind = self.script().input_kind();
        let xs = if xs.kind() == kind {
            xs.shallow_clone()
        } else {
            xs.f_to_kind(kind)?
        };
        let mut m = self.module.lock().unwrap_or_else(|e| e.into_inner());
        if m.train != Some(train) {
            if train {
                m.module.f_set_train()?;
            } else {
                m.module.f_set_eval()?;
            }
            m.train = Some(train);
        }
        let y = if self.script().sequence_model {
            let mask = xs.f_ones_like()?;
            m.module
                .forward_is(&[IValue::Tensor(xs), IValue::Tensor(mask)])?
        } else {
            m.module.forward_is(&[IValue::Tensor(xs)])?
        };
        named_outputs(y).map_err(ModelError::Script)
    }

    /// The logits of `xs` (see [`ScriptModule::forward_all`]).
    ///
    /// # Errors
    /// As [`ScriptModule::forward_all`]; [`ModelError::Script`] when the logits output is gone.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor, ModelError> {
        let name = &self.script().logits_output;
        self.forward_all(xs, train)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t)
            .ok_or_else(|| {
                ModelError::Script(format!("{}: no output {name} in this call", self.source))
            })
    }

    /// The device of the module's first parameter (where [`ScriptModule::load`] put it);
    /// `None` if it has none or libtorch cannot list them.
    pub fn device(&self) -> Option<Device> {
        let m = self.module.lock().unwrap_or_else(|e| e.into_inner());
        let params = m.module.named_parameters().ok()?;
        params.first().map(|(_, t)| t.device())
    }

    /// The module's `state_dict()`: every entry by its PyTorch key, buffers included, from
    /// `distill_state_dict()`; the parameters alone (`named_parameters()`) for a module without
    /// it. The tensors are the module's own (shared, not copies).
    ///
    /// # Errors
    /// [`ModelError::Script`] when the method returns something else; libtorch failures.
    pub fn state_dict(&self) -> Result<Vec<(String, Tensor)>, ModelError> {
        let m = self.module.lock().unwrap_or_else(|e| e.into_inner());
        if !self.has_state_dict_method() {
            return Ok(m.module.named_parameters()?);
        }
        let got = m.module.method_is::<IValue>(STATE_DICT_METHOD, &[])?;
        let IValue::GenericDict(kvs) = got else {
            return Err(ModelError::Script(format!(
                "{}: {STATE_DICT_METHOD}() returned {}, expected a Dict[str, Tensor]",
                self.source,
                ivalue_kind(&got)
            )));
        };
        kvs.into_iter()
            .map(|(k, v)| match (k, v) {
                (IValue::String(k), IValue::Tensor(t)) => Ok((k, t)),
                (k, v) => Err(ModelError::Script(format!(
                    "{}: {STATE_DICT_METHOD}() holds {} => {}, expected str => Tensor",
                    self.source,
                    ivalue_kind(&k),
                    ivalue_kind(&v)
                ))),
            })
            .collect()
    }

    /// Copies `from`'s state dict (the same keys, shapes and dtypes) into this module's
    /// tensors, in place: `--init` of a TorchScript student from a checkpoint of the same module.
    ///
    /// # Errors
    /// [`ModelError::Script`] naming the first key that differs (missing on either side, or of
    /// another shape or dtype), with both sides.
    pub fn copy_state_from(&self, from: &[(String, Tensor)], what: &str) -> Result<(), ModelError> {
        let mine = self.state_dict()?;
        let names = |v: &[(String, Tensor)]| {
            let mut n: Vec<String> = v.iter().map(|(k, _)| k.clone()).collect();
            n.sort();
            n
        };
        let (a, b) = (names(&mine), names(from));
        if a != b {
            let only_mine: Vec<&String> = a.iter().filter(|k| !b.contains(k)).collect();
            let only_theirs: Vec<&String> = b.iter().filter(|k| !a.contains(k)).collect();
            return Err(ModelError::Script(format!(
                "{what} holds another module than {}: keys only in {what}: {only_theirs:?}, only in the student: {only_mine:?}",
                self.source
            )));
        }
        let _g = tch::no_grad_guard();
        for (k, dst) in &mine {
            let src = &from.iter().find(|(n, _)| n == k).expect("same keys").1;
            if src.size() != dst.size() || src.kind() != dst.kind() {
                return Err(ModelError::Script(format!(
                    "{what}: {k} is {} {:?}, the student {} has {} {:?}",
                    kind_name(src.kind()),
                    src.size(),
                    self.source,
                    kind_name(dst.kind()),
                    dst.size()
                )));
            }
            let mut dst = dst.shallow_clone();
            dst.f_copy_(&src.f_to_device(dst.device())?)?;
        }
        Ok(())
    }

    /// Writes the module (parameters and buffers as they are now) with `torch.jit.save`'s format
    /// to `path`.
    ///
    /// # Errors
    /// The libtorch error.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let m = self.module.lock().unwrap_or_else(|e| e.into_inner());
        m.module.save(path)?;
        Ok(())
    }
}

/// Each output's name and per-sample shape (a sequence model's per-position outputs with `-1`
/// first), or the message for an output without the batch first.
fn describe_outputs(
    outputs: &[(String, Tensor)],
    seq_len: Option<i64>,
) -> Result<Vec<ScriptOutput>, String> {
    outputs
        .iter()
        .map(|(name, t)| {
            let size = t.size();
            if size.first() != Some(&WARM_UP_BATCH) {
                return Err(format!(
                    "output {name} is {size:?} for a batch of {WARM_UP_BATCH}: every output must \
                     have the batch first"
                ));
            }
            let mut shape = size[1..].to_vec();
            if let (Some(len), Some(d)) = (seq_len, shape.first_mut())
                && *d == len
            {
                *d = -1;
            }
            Ok(ScriptOutput {
                name: name.clone(),
                shape,
            })
        })
        .collect()
}

/// The logits' shape `got` (output `name`, for the warm-up input `input`) against `[batch,
/// classes]`, or `[batch, seq, vocab]` for a sequence model (`seq_len`): the message naming both
/// sides when they differ.
fn check_logits(
    got: &[i64],
    name: &str,
    input: &[i64],
    seq_len: Option<i64>,
    classes: i64,
) -> Result<(), String> {
    let (expected, what, unit, data_unit) = match seq_len {
        Some(s) => (
            vec![WARM_UP_BATCH, s, classes],
            format!("[batch, seq, vocab] with the data's vocabulary of {classes}"),
            "position",
            "token ids",
        ),
        None => (
            vec![WARM_UP_BATCH, classes],
            format!("[batch, classes] with the data's {classes} classes"),
            "sample",
            "classes",
        ),
    };
    if got == expected.as_slice() {
        return Ok(());
    }
    let per = if got.len() == expected.len() {
        format!(
            ": the module gives {} logits per {unit}, the data has {classes} {data_unit}",
            got.last().copied().unwrap_or(0)
        )
    } else {
        String::new()
    };
    Err(format!(
        "its logits (output {name}) are {got:?} for the warm-up input {input:?}, expected \
         {expected:?}, {what}{per}"
    ))
}

/// Adds `t` to `vs` as the variable `name` with its dots as path separators, so the `VarStore`
/// name is the dotted `state_dict()` key itself.
fn add_dotted(vs: &nn::Path<'_>, name: &str, t: Tensor, trainable: bool) {
    let mut parts: Vec<&str> = name.split('.').collect();
    let last = parts.pop().unwrap_or(name);
    let path = parts.into_iter().fold(vs.clone(), |p, seg| p.sub(seg));
    let _ = path.add(last, t, trainable);
}

/// `msg` without a leading `SOURCE: ` (an inner error naming the file again).
fn strip_source<'a>(msg: &'a str, source: &str) -> &'a str {
    msg.strip_prefix(source)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(msg)
}

/// What a TorchScript `forward` returned, as named tensors: a tensor is output `0`; a tuple or
/// list of tensors `0`, `1`, ...; a `Dict[str, Tensor]` its keys, in its order.
///
/// # Errors
/// A message naming what came instead (e.g. a tuple holding an int, a dict with int keys).
pub fn named_outputs(y: IValue) -> Result<Vec<(String, Tensor)>, String> {
    const EXPECTED: &str = "a tensor, a tuple or list of tensors, or a Dict[str, Tensor]";
    let element = |name: String, v: IValue| match v {
        IValue::Tensor(t) => Ok((name, t)),
        other => Err(format!(
            "forward returned {} at output {name}; expected {EXPECTED}",
            ivalue_kind(&other)
        )),
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
                other => Err(format!(
                    "forward returned a dict with {} keys; expected {EXPECTED}",
                    ivalue_kind(&other)
                )),
            })
            .collect(),
        other => Err(format!(
            "forward returned {}; expected {EXPECTED}",
            ivalue_kind(&other)
        )),
    }
}

/// TorchScript's name for the type of `v` (error messages).
pub fn ivalue_kind(v: &IValue) -> &'static str {
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
