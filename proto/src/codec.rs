//! Codec between wire [`v1::Tensor`]s and `tch::Tensor`s.
//!
//! A wire tensor is row-major and little-endian; `data.len()` must equal `product(shape) ×
//! element size`. [`check`] validates a wire tensor without allocating anything from its claimed
//! shape (negative or absurd dimensions are rejected first, products use checked arithmetic, and
//! the claimed size is compared with the bytes actually received), so a hostile request costs no
//! more memory than its own bytes.

use crate::v1;
use tch::{Kind, Tensor};

#[cfg(not(target_endian = "little"))]
compile_error!("the wire format is little-endian; big-endian hosts need a byte swap here");

/// Largest rank accepted on the wire.
pub const MAX_RANK: usize = 8;

/// Largest number of elements a wire tensor may claim (2^40): far above any real batch, far below
/// what overflows `i64` byte counts.
pub const MAX_ELEMENTS: u64 = 1 << 40;

/// Why a wire tensor or dtype was rejected.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// `DTYPE_UNSPECIFIED` where a dtype is required.
    #[error(
        "dtype is unspecified (DTYPE_UNSPECIFIED): expected one of F32, F16, BF16, F64, U8, I32, I64"
    )]
    UnspecifiedDType,
    /// A dtype number that is not in the `DType` enum.
    #[error("unknown dtype {got}: expected one of F32=1, F16=2, BF16=3, F64=4, U8=5, I32=6, I64=7")]
    UnknownDType {
        /// The number received.
        got: i32,
    },
    /// A libtorch kind with no wire dtype.
    #[error("tensor kind {got:?} has no wire dtype")]
    UnsupportedKind {
        /// The kind.
        got: Kind,
    },
    /// More dimensions than [`MAX_RANK`].
    #[error("tensor rank {got} exceeds the maximum {max}")]
    Rank {
        /// The rank received.
        got: usize,
        /// [`MAX_RANK`].
        max: usize,
    },
    /// A negative dimension.
    #[error("shape {shape:?} has negative dimension {value} at index {index}")]
    NegativeDim {
        /// The shape received.
        shape: Vec<i64>,
        /// Index of the offending dimension.
        index: usize,
        /// Its value.
        value: i64,
    },
    /// A shape whose element count exceeds [`MAX_ELEMENTS`].
    #[error("shape {shape:?} claims more than {max} elements")]
    TooLarge {
        /// The shape received.
        shape: Vec<i64>,
        /// [`MAX_ELEMENTS`].
        max: u64,
    },
    /// `data` does not hold exactly `product(shape) × element size` bytes.
    #[error(
        "data length {got} bytes does not match shape {shape:?} of {dtype:?}: expected {expected} bytes"
    )]
    DataLength {
        /// The shape received.
        shape: Vec<i64>,
        /// The dtype received.
        dtype: v1::DType,
        /// `product(shape) × element size`.
        expected: u64,
        /// `data.len()`.
        got: u64,
    },
    /// A libtorch failure while building or reading a tensor.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Maps a wire dtype number to the libtorch kind.
///
/// # Errors
/// [`CodecError::UnspecifiedDType`] for 0, [`CodecError::UnknownDType`] for numbers outside the enum.
pub fn kind_of(dtype: i32) -> Result<Kind, CodecError> {
    let d = v1::DType::try_from(dtype).map_err(|_| CodecError::UnknownDType { got: dtype })?;
    Ok(match d {
        v1::DType::DtypeUnspecified => return Err(CodecError::UnspecifiedDType),
        v1::DType::F32 => Kind::Float,
        v1::DType::F16 => Kind::Half,
        v1::DType::Bf16 => Kind::BFloat16,
        v1::DType::F64 => Kind::Double,
        v1::DType::U8 => Kind::Uint8,
        v1::DType::I32 => Kind::Int,
        v1::DType::I64 => Kind::Int64,
    })
}

/// Maps a libtorch kind to its wire dtype.
///
/// # Errors
/// [`CodecError::UnsupportedKind`] for kinds the wire format does not carry (bool, complex, ...).
pub fn dtype_of(kind: Kind) -> Result<v1::DType, CodecError> {
    Ok(match kind {
        Kind::Float => v1::DType::F32,
        Kind::Half => v1::DType::F16,
        Kind::BFloat16 => v1::DType::Bf16,
        Kind::Double => v1::DType::F64,
        Kind::Uint8 => v1::DType::U8,
        Kind::Int => v1::DType::I32,
        Kind::Int64 => v1::DType::I64,
        got => return Err(CodecError::UnsupportedKind { got }),
    })
}

/// The wire name of a dtype as users write it on the command line (`f32`, `bf16`, ...).
pub fn dtype_name(dtype: v1::DType) -> &'static str {
    match dtype {
        v1::DType::DtypeUnspecified => "unspecified",
        v1::DType::F32 => "f32",
        v1::DType::F16 => "f16",
        v1::DType::Bf16 => "bf16",
        v1::DType::F64 => "f64",
        v1::DType::U8 => "u8",
        v1::DType::I32 => "i32",
        v1::DType::I64 => "i64",
    }
}

/// Parses a command-line dtype name (`f32`, `float32`, `f16`, `bf16`, `f64`, `u8`, `i32`, `i64`).
///
/// # Errors
/// A message naming the accepted names.
pub fn parse_dtype(s: &str) -> Result<v1::DType, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => v1::DType::F32,
        "f16" | "float16" | "half" => v1::DType::F16,
        "bf16" | "bfloat16" => v1::DType::Bf16,
        "f64" | "float64" | "double" => v1::DType::F64,
        "u8" | "uint8" => v1::DType::U8,
        "i32" | "int32" => v1::DType::I32,
        "i64" | "int64" => v1::DType::I64,
        _ => {
            return Err(format!(
                "unknown dtype {s:?}: expected f32, f16, bf16, f64, u8, i32 or i64"
            ));
        }
    })
}

/// A wire tensor that passed [`check`]: its kind and shape, consistent with its data.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Element kind.
    pub kind: Kind,
    /// Shape (every dimension ≥ 0).
    pub shape: Vec<i64>,
}

/// Validates a wire tensor without allocating from its claimed shape: dtype, rank ≤
/// [`MAX_RANK`], dimensions ≥ 0, element count ≤ [`MAX_ELEMENTS`], and `data.len()` equal to
/// `product(shape) × element size`.
///
/// # Errors
/// The first [`CodecError`] found, in that order.
pub fn check(t: &v1::Tensor) -> Result<Checked, CodecError> {
    let kind = kind_of(t.dtype)?;
    if t.shape.len() > MAX_RANK {
        return Err(CodecError::Rank {
            got: t.shape.len(),
            max: MAX_RANK,
        });
    }
    let mut elements: u64 = 1;
    for (index, &value) in t.shape.iter().enumerate() {
        if value < 0 {
            return Err(CodecError::NegativeDim {
                shape: t.shape.clone(),
                index,
                value,
            });
        }
        elements = elements
            .checked_mul(value as u64)
            .filter(|n| *n <= MAX_ELEMENTS)
            .ok_or_else(|| CodecError::TooLarge {
                shape: t.shape.clone(),
                max: MAX_ELEMENTS,
            })?;
    }
    let expected = elements * kind.elt_size_in_bytes() as u64;
    if expected != t.data.len() as u64 {
        return Err(CodecError::DataLength {
            shape: t.shape.clone(),
            dtype: v1::DType::try_from(t.dtype).unwrap_or_default(),
            expected,
            got: t.data.len() as u64,
        });
    }
    Ok(Checked {
        kind,
        shape: t.shape.clone(),
    })
}

/// Decodes a wire tensor into a CPU `tch::Tensor` of the same dtype and shape (one copy of the
/// bytes), after [`check`].
///
/// # Errors
/// Any [`check`] error, or a libtorch failure.
pub fn decode(t: &v1::Tensor) -> Result<Tensor, CodecError> {
    let c = check(t)?;
    Ok(Tensor::f_from_data_size(&t.data, &c.shape, c.kind)?)
}

/// Encodes a tensor (any device, any strides) as a wire tensor of its own dtype.
///
/// # Errors
/// [`CodecError::UnsupportedKind`] for kinds without a wire dtype; libtorch failures.
pub fn encode(t: &Tensor) -> Result<v1::Tensor, CodecError> {
    let dtype = dtype_of(t.kind())?;
    let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.f_copy_data_u8(&mut data, numel)?;
    Ok(v1::Tensor {
        dtype: dtype as i32,
        shape: t.size(),
        data,
    })
}

/// Converts `t` to the kind of `dtype` and encodes it.
///
/// # Errors
/// As [`kind_of`] and [`encode`].
pub fn encode_as(t: &Tensor, dtype: v1::DType) -> Result<v1::Tensor, CodecError> {
    let kind = kind_of(dtype as i32)?;
    if t.kind() == kind {
        encode(t)
    } else {
        encode(&t.f_to_kind(kind)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_dtypes() -> [v1::DType; 7] {
        use v1::DType::*;
        [F32, F16, Bf16, F64, U8, I32, I64]
    }

    #[test]
    fn round_trips_every_dtype_bit_exact() {
        for dtype in all_dtypes() {
            let kind = kind_of(dtype as i32).unwrap();
            // Values exactly representable in every kind: halves from -6 to 5.5 for floats,
            // 0..23 for integers (u8 has no negatives).
            let base = Tensor::arange(24, (Kind::Float, tch::Device::Cpu));
            let is_float = matches!(
                kind,
                Kind::Float | Kind::Half | Kind::BFloat16 | Kind::Double
            );
            let values = if is_float { (base - 12.0) * 0.5 } else { base };
            let src = values.to_kind(kind).reshape([2, 3, 4]);
            let wire = encode(&src).unwrap();
            assert_eq!(wire.dtype, dtype as i32);
            assert_eq!(wire.shape, vec![2, 3, 4]);
            assert_eq!(wire.data.len(), 24 * kind.elt_size_in_bytes());
            let back = decode(&wire).unwrap();
            assert_eq!(back.kind(), kind);
            assert_eq!(back.size(), vec![2, 3, 4]);
            assert!(back.equal(&src), "{dtype:?}");
            // Bytes are bit-exact after a second trip.
            assert_eq!(encode(&back).unwrap().data, wire.data, "{dtype:?}");
        }
    }

    #[test]
    fn little_endian_layout_is_the_contract() {
        let t = Tensor::from_slice(&[1.0f32, -2.0]);
        let w = encode(&t).unwrap();
        let mut expected = 1.0f32.to_le_bytes().to_vec();
        expected.extend((-2.0f32).to_le_bytes());
        assert_eq!(w.data, expected);
        let h = encode(&Tensor::from_slice(&[1.5f32]).to_kind(Kind::Half)).unwrap();
        assert_eq!(h.data, half::f16::from_f32(1.5).to_le_bytes().to_vec());
        let b = encode(&Tensor::from_slice(&[1.5f32]).to_kind(Kind::BFloat16)).unwrap();
        assert_eq!(b.data, half::bf16::from_f32(1.5).to_le_bytes().to_vec());
    }

    #[test]
    fn non_contiguous_tensors_encode_in_row_major_order() {
        let t = Tensor::arange(6, (Kind::Int64, tch::Device::Cpu))
            .reshape([2, 3])
            .tr();
        let w = encode(&t).unwrap();
        assert_eq!(w.shape, vec![3, 2]);
        assert!(decode(&w).unwrap().equal(&t.contiguous()));
    }

    #[test]
    fn empty_and_scalar_tensors_round_trip() {
        for shape in [vec![0i64, 3], vec![]] {
            let t = Tensor::zeros(shape.as_slice(), (Kind::Float, tch::Device::Cpu));
            let back = decode(&encode(&t).unwrap()).unwrap();
            assert_eq!(back.size(), shape);
        }
    }

    fn wire(dtype: i32, shape: Vec<i64>, len: usize) -> v1::Tensor {
        v1::Tensor {
            dtype,
            shape,
            data: vec![0; len],
        }
    }

    #[test]
    fn rejects_every_inconsistent_tensor() {
        assert!(matches!(
            check(&wire(0, vec![1], 4)),
            Err(CodecError::UnspecifiedDType)
        ));
        assert!(matches!(
            check(&wire(42, vec![1], 4)),
            Err(CodecError::UnknownDType { got: 42 })
        ));
        assert!(matches!(
            check(&wire(-1, vec![1], 4)),
            Err(CodecError::UnknownDType { got: -1 })
        ));
        assert!(matches!(
            check(&wire(1, vec![1; 9], 4)),
            Err(CodecError::Rank { got: 9, .. })
        ));
        assert!(matches!(
            check(&wire(1, vec![2, -3], 24)),
            Err(CodecError::NegativeDim {
                index: 1,
                value: -3,
                ..
            })
        ));
        assert!(matches!(
            check(&wire(1, vec![1 << 30, 1 << 30, 1 << 30], 4)),
            Err(CodecError::TooLarge { .. })
        ));
        assert!(matches!(
            check(&wire(1, vec![i64::MAX, 2], 4)),
            Err(CodecError::TooLarge { .. })
        ));
        match check(&wire(1, vec![2, 3], 23)) {
            Err(CodecError::DataLength { expected, got, .. }) => {
                assert_eq!((expected, got), (24, 23))
            }
            other => panic!("expected a data length error, got {other:?}"),
        }
        assert!(matches!(
            check(&wire(1, vec![2, 3], 25)),
            Err(CodecError::DataLength { .. })
        ));
        assert!(matches!(
            check(&wire(7, vec![2], 8)),
            Err(CodecError::DataLength { expected: 16, .. })
        ));
        assert!(matches!(
            check(&wire(1, vec![2, 3], 24)),
            Ok(Checked {
                kind: Kind::Float,
                ..
            })
        ));
        let msg = check(&wire(1, vec![2, 3], 23)).unwrap_err().to_string();
        assert!(msg.contains("expected 24") && msg.contains("23"), "{msg}");
    }

    #[test]
    fn unsupported_kinds_and_dtype_names() {
        assert!(encode(&Tensor::from_slice(&[true])).is_err());
        for d in all_dtypes() {
            assert_eq!(parse_dtype(dtype_name(d)).unwrap(), d);
        }
        assert!(parse_dtype("f8").is_err());
    }
}
