//! The precision a model runs in ([`Precision`], `--precision`) and the conversions on the way
//! in ([`input_in`]: floating-point inputs to that precision) and out ([`logits_out`]: logits
//! back to f32).

use super::error::ForwardError;
use tch::{Kind, Tensor};

/// Precision of the teacher's forward pass (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Precision {
    /// 32-bit floats: the weights as trained.
    #[default]
    F32,
    /// bfloat16 (8-bit exponent, 7-bit mantissa: f32's range, ~3 significant digits).
    Bf16,
    /// IEEE half (5-bit exponent, 10-bit mantissa: values up to 65504).
    F16,
}

impl Precision {
    /// The libtorch kind: `Float`, `BFloat16` or `Half`.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::F16 => Kind::Half,
        }
    }

    /// The wire `DType` reported in `ModelInfo.precision`.
    pub fn dtype(self) -> distill_proto::v1::DType {
        match self {
            Precision::F32 => distill_proto::v1::DType::F32,
            Precision::Bf16 => distill_proto::v1::DType::Bf16,
            Precision::F16 => distill_proto::v1::DType::F16,
        }
    }

    /// The flag's spelling: `f32`, `bf16` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// `x` in the kind the model runs in: floating-point inputs converted to `precision`, integer
/// (and boolean) inputs unchanged (token ids, class indices, raw bytes stay exact).
///
/// # Errors
/// [`ForwardError::Torch`] on a libtorch failure.
pub(super) fn input_in(x: Tensor, precision: Precision) -> Result<Tensor, ForwardError> {
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
pub(super) fn logits_out(y: Tensor, precision: Precision) -> Result<Tensor, ForwardError> {
    if precision != Precision::F32 && y.kind() != Kind::Float {
        Ok(y.f_to_kind(Kind::Float)?)
    } else {
        Ok(y)
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
        // A model run in f32 keeps its own choice of kind: the output path casts it.
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
}
