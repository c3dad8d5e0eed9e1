//! [`load()`]: builds the model a [`ModelSource`] names (a TorchScript module or a built-in
//! architecture), runs one warm-up forward pass that finds its outputs and checks its logits, and
//! serves it behind [`Served`], which picks the logits among the outputs.

use super::builtin::ArchModel;
use super::error::{ForwardError, LoadError};
use super::precision::Precision;
use super::spec::{ModelSource, ModelSpec};
use super::teacher::{
    DEFAULT_LOGITS_OUTPUT, ModelDescription, OutputDescription, TeacherModel, list_outputs,
};
use super::torchscript::TorchScriptModel;
use tch::{Device, Kind, Tensor};

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
            let ck = distill_models::Checkpoint::open(dir)?;
            if ck.meta.arch.arch.is_torchscript() {
                // A distilled TorchScript student teaching the next round.
                Box::new(TorchScriptModel::from_checkpoint(
                    &ck, spec, device, precision,
                )?)
            } else {
                Box::new(ArchModel::from_checkpoint(
                    dir,
                    device,
                    precision,
                    spec.sequence.clone(),
                )?)
            }
        }
        ModelSource::Safetensors { path, arch } => Box::new(ArchModel::from_safetensors(
            path, arch, spec, device, precision,
        )?),
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
    fn forward(&self, x: &Tensor) -> Result<Tensor, ForwardError> {
        self.forward_masked(x, None)
    }

    fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, ForwardError> {
        let mut all = self.model.forward_all(x, mask)?;
        if all.len() != self.info.outputs.len() {
            return Err(ForwardError::Torch(format!(
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
    ) -> Result<Vec<(String, Tensor)>, ForwardError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A model whose forward pass fails, or gives the wrong shape.
    struct Broken {
        fail: bool,
    }

    impl TeacherModel for Broken {
        fn forward(&self, x: &Tensor) -> Result<Tensor, ForwardError> {
            if self.fail {
                return Err(ForwardError::Torch(
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
}
