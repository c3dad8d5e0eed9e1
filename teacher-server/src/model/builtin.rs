//! A built-in architecture ([`distill_models::Arch`]: `cnn`, `mlp`, `lm`, ...) as a
//! [`TeacherModel`], with its weights from a `student-trainer` checkpoint or a safetensors file.

use super::error::{ForwardError, LoadError, no_panic};
use super::precision::{Precision, input_in, logits_out};
use super::spec::{ModelSpec, SequenceSpec};
use super::teacher::{ModelDescription, TeacherModel, mtime_version};
use distill_models::device::device_name;
use distill_models::{
    Arch, ArchSpec, Checkpoint, Network, checkpoint::sorted_variables, fingerprint,
};
use std::path::Path;
use tch::{Device, Tensor, nn};

/// A built-in architecture ([`distill_models::Arch`]) with loaded weights.
#[derive(Debug)]
pub(super) struct ArchModel {
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
    pub(super) fn new(
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
        // Convolutions in channels-last layout: the same logits, faster kernels (see
        // `distill_models::arch::channels_last`).
        distill_models::arch::channels_last(&vs)
            .map_err(|e| LoadError(format!("laying out the weights channels-last: {e}")))?;
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

impl ArchModel {
    /// The network of the checkpoint in `dir` (`checkpoint.json` and the weights it names) on
    /// `device`, versioned by the checkpoint's epoch and step.
    ///
    /// # Errors
    /// [`LoadError`] if the checkpoint cannot be read or does not fit its architecture, or as
    /// [`ArchModel::new`].
    pub(super) fn from_checkpoint(
        dir: &Path,
        device: Device,
        precision: Precision,
        sequence: Option<SequenceSpec>,
    ) -> Result<Self, LoadError> {
        let ck = Checkpoint::open(dir)?;
        let (vs, net) = ck.load_network(device)?;
        let version = format!("epoch {} step {}", ck.meta.epoch, ck.meta.step);
        ArchModel::new(vs, net, version, precision, sequence)
    }

    /// The architecture `arch` (input shape and logits from `spec`) with the weights of the
    /// safetensors file `path` on `device`, versioned by the file's modification time.
    ///
    /// # Errors
    /// [`LoadError`] if the file cannot be read or its tensors do not fit the architecture, or as
    /// [`ArchModel::new`].
    pub(super) fn from_safetensors(
        path: &Path,
        arch: &Arch,
        spec: &ModelSpec,
        device: Device,
        precision: Precision,
    ) -> Result<Self, LoadError> {
        let arch_spec = ArchSpec {
            arch: arch.clone(),
            input_shape: spec.input_shape.clone(),
            num_classes: spec.num_logits,
        };
        let vs = nn::VarStore::new(device);
        let net = Network::new(&vs.root(), &arch_spec)?;
        distill_models::load_safetensors(&vs, &arch.to_string(), path)?;
        ArchModel::new(
            vs,
            net,
            mtime_version(path),
            precision,
            spec.sequence.clone(),
        )
    }
}

impl TeacherModel for ArchModel {
    fn forward(&self, x: &Tensor) -> Result<Tensor, ForwardError> {
        self.forward_masked(x, None)
    }

    fn forward_masked(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor, ForwardError> {
        no_panic(|| {
            let x = input_in(x.f_to_device(self.device)?, self.precision)?;
            let mask = mask.map(|m| m.f_to_device(self.device)).transpose()?;
            let y = self
                .net
                .forward_masked(&x, mask.as_ref(), false)
                .map_err(|e| ForwardError::Torch(e.to_string()))?;
            logits_out(y, self.precision)
        })
    }

    /// The network's named layers ([`Network::layers`]), the logits last.
    fn forward_all(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Vec<(String, Tensor)>, ForwardError> {
        no_panic(|| {
            let x = input_in(x.f_to_device(self.device)?, self.precision)?;
            let mask = mask.map(|m| m.f_to_device(self.device)).transpose()?;
            self.net
                .forward_layers(&x, mask.as_ref(), false)
                .map_err(|e| ForwardError::Torch(e.to_string()))?
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
    use tch::Kind;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max()
            .double_value(&[])
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
