//! A TorchScript module (`torch.jit.save`) as a [`TeacherModel`]: loaded with libtorch, called
//! with one tensor (or token ids and an attention mask), returning one or several named outputs.

use super::error::{ForwardError, LoadError, no_panic};
use super::precision::{Precision, input_in, logits_out};
use super::spec::ModelSpec;
use super::teacher::{ModelDescription, TeacherModel, mtime_version};
use distill_models::device::device_name;
use distill_models::script::named_outputs;
use distill_models::{Checkpoint, fingerprint};
use std::path::Path;
use tch::{CModule, Device, IValue, Kind, Tensor};

/// A TorchScript module (`torch.jit.save`), served in eval mode whatever mode it was saved in.
#[derive(Debug)]
pub(super) struct TorchScriptModel {
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
    pub(super) fn load(
        path: &Path,
        spec: &ModelSpec,
        device: Device,
        precision: Precision,
    ) -> Result<Self, LoadError> {
        Self::load_from(path, None, spec, device, precision)
    }

    /// The TorchScript student of the checkpoint in `dir` (`student.<hash>.pt`), checked as
    /// `student-trainer` checks it on resume (hashes, warm-up, state dict against the weights
    /// file, fingerprint), named by its module and versioned by the checkpoint's epoch and step;
    /// its fingerprint is the checkpoint's.
    ///
    /// # Errors
    /// [`LoadError`] for a checkpoint that fails those checks, or as [`TorchScriptModel::load`].
    pub(super) fn from_checkpoint(
        ck: &Checkpoint,
        spec: &ModelSpec,
        device: Device,
        precision: Precision,
    ) -> Result<Self, LoadError> {
        // Every check of a resume, on the CPU, before the served copy is loaded from the same
        // verified bytes.
        let vs = tch::nn::VarStore::new(Device::Cpu);
        ck.load_script(&vs.root())?;
        drop(vs);
        let (path, bytes) = ck.module_bytes()?;
        let mut model = Self::load_from(&path, Some(&bytes), spec, device, precision)?;
        model.info.name = ck.meta.arch.arch.to_string();
        model.info.version = format!("epoch {} step {}", ck.meta.epoch, ck.meta.step);
        model.info.fingerprint = ck.meta.fingerprint.clone();
        Ok(model)
    }

    /// [`TorchScriptModel::load`] of `path`, or of `bytes` read from it.
    fn load_from(
        path: &Path,
        bytes: Option<&[u8]>,
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
        let loaded = match bytes {
            Some(b) => CModule::load_data_on_device(&mut &b[..], device),
            None => CModule::load_on_device(path, device),
        };
        let mut module = loaded.map_err(|e| torch("not a TorchScript module", e))?;
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
    fn forward(&self, x: &Tensor) -> Result<Tensor, ForwardError> {
        self.forward_masked(x, None)
    }

    fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, ForwardError> {
        let mut all = self.forward_all(x, mask)?;
        match all.len() {
            1 => Ok(all.swap_remove(0).1),
            n => Err(ForwardError::Torch(format!(
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
    ) -> Result<Vec<(String, Tensor)>, ForwardError> {
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
                return Err(ForwardError::Torch(
                    "this model takes no attention mask".into(),
                ));
            } else {
                self.module.forward_is(&[IValue::Tensor(x)])?
            };
            named_outputs(y)
                .map_err(ForwardError::Torch)?
                .into_iter()
                .map(|(name, t)| Ok((name, logits_out(t, self.precision)?)))
                .collect()
        })
    }

    fn info(&self) -> ModelDescription {
        self.info.clone()
    }
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "teacher".into(), |s| s.to_string_lossy().into_owned())
}
