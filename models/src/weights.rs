//! Safetensors weights in and out of a `VarStore`, strictly.
//!
//! Loading compares every tensor of the file with the architecture's variables: exact shape and
//! dtype, no broadcasting, no silent dtype conversion, no missing and no extra tensor (libtorch's
//! `VarStore::load` broadcasts a `[1]` bias over `[128]` and converts dtypes without a word). A
//! mismatch is one line naming the tensor with both shapes, e.g.
//! `f1.bias: checkpoint [1], architecture mlp expects [128]`.

use crate::ModelError;
use safetensors::{Dtype, SafeTensors, View};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor, nn};

/// Hex SHA-256 of `bytes` (the hash a checkpoint manifest records for each file).
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The safetensors dtype of a libtorch kind.
fn dtype_of(kind: Kind) -> Result<Dtype, ModelError> {
    Ok(match kind {
        Kind::Bool => Dtype::BOOL,
        Kind::Uint8 => Dtype::U8,
        Kind::Int8 => Dtype::I8,
        Kind::Int16 => Dtype::I16,
        Kind::Int => Dtype::I32,
        Kind::Int64 => Dtype::I64,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Half => Dtype::F16,
        Kind::Float => Dtype::F32,
        Kind::Double => Dtype::F64,
        other => {
            return Err(ModelError::Unsupported(format!(
                "tensors of kind {other:?} cannot be stored in safetensors"
            )));
        }
    })
}

/// The libtorch kind of a safetensors dtype.
fn kind_of(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::BOOL => Kind::Bool,
        Dtype::U8 => Kind::Uint8,
        Dtype::I8 => Kind::Int8,
        Dtype::I16 => Kind::Int16,
        Dtype::I32 => Kind::Int,
        Dtype::I64 => Kind::Int64,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F16 => Kind::Half,
        Dtype::F32 => Kind::Float,
        Dtype::F64 => Kind::Double,
        _ => return None,
    })
}

/// A tensor's data copied to the CPU, ready for `safetensors::serialize`.
struct OwnedView {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &OwnedView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The safetensors file (bytes) of named tensors (any device; copied to the CPU).
///
/// # Errors
/// [`ModelError::Torch`] if a tensor cannot be copied; [`ModelError::Unsupported`] for a kind
/// safetensors cannot store.
pub fn serialize(named: &[(String, Tensor)]) -> Result<Vec<u8>, ModelError> {
    let views = named
        .iter()
        .map(|(name, t)| {
            let t = t.f_to_device(Device::Cpu)?.f_contiguous()?;
            let numel = t.numel();
            let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
            t.f_copy_data_u8(&mut data, numel)?;
            Ok((
                name.clone(),
                OwnedView {
                    dtype: dtype_of(t.kind())?,
                    shape: t.size().iter().map(|&d| d as usize).collect(),
                    data,
                },
            ))
        })
        .collect::<Result<Vec<_>, ModelError>>()?;
    safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), &None)
        .map_err(|e| ModelError::Unsupported(format!("serialising tensors to safetensors: {e}")))
}

fn parse<'a>(bytes: &'a [u8], path: &Path) -> Result<SafeTensors<'a>, ModelError> {
    SafeTensors::deserialize(bytes).map_err(|e| ModelError::Checkpoint {
        path: path.display().to_string(),
        reason: format!("not a valid safetensors file: {e}"),
    })
}

/// The named tensors (CPU) of a safetensors file's bytes; `path` names it in errors.
///
/// # Errors
/// [`ModelError::Checkpoint`] for a malformed file or a dtype libtorch lacks.
pub fn tensors_from_bytes(bytes: &[u8], path: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    let file = parse(bytes, path)?;
    let mut out = Vec::with_capacity(file.len());
    for (name, view) in file.tensors() {
        let kind = kind_of(view.dtype()).ok_or_else(|| ModelError::Checkpoint {
            path: path.display().to_string(),
            reason: format!("{name}: dtype {:?} is not supported", view.dtype()),
        })?;
        let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
        out.push((name, Tensor::f_from_data_size(view.data(), &shape, kind)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Checks that `saved` (a weights file's tensors, read from `path`) holds exactly the names,
/// shapes and dtypes of `expected` (a module's state dict) and the same values: a TorchScript
/// student's weights file against its module file.
///
/// # Errors
/// [`ModelError::Weights`] naming the first tensor that differs, with both sides.
pub(crate) fn check_same_tensors(
    saved: &[(String, Tensor)],
    expected: &[(String, Tensor)],
    path: &Path,
    arch: &str,
) -> Result<(), ModelError> {
    let want: BTreeMap<&str, &Tensor> = expected.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let got: BTreeMap<&str, &Tensor> = saved.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let bad = |tensor: &str, problem: String| ModelError::Weights {
        path: path.display().to_string(),
        tensor: tensor.to_string(),
        problem,
    };
    for (name, w) in &want {
        let Some(g) = got.get(name) else {
            return Err(bad(
                name,
                format!(
                    "missing from the file, the module {arch} has {:?} {}",
                    w.kind(),
                    shape_text(&w.size())
                ),
            ));
        };
        if g.size() != w.size() || g.kind() != w.kind() {
            return Err(bad(
                name,
                format!(
                    "checkpoint {:?} {}, the module {arch} has {:?} {}",
                    g.kind(),
                    shape_text(&g.size()),
                    w.kind(),
                    shape_text(&w.size())
                ),
            ));
        }
        let w_cpu = w.f_to_device(tch::Device::Cpu)?;
        if !g.equal(&w_cpu) {
            return Err(bad(
                name,
                format!("its values differ from the module file's ({arch})"),
            ));
        }
    }
    if let Some(extra) = got.keys().find(|k| !want.contains_key(*k)) {
        return Err(bad(
            extra,
            format!("is not in the state dict of the module {arch}"),
        ));
    }
    Ok(())
}

/// `[1, 28, 28]`-style text of a shape.
fn shape_text<T: std::fmt::Display>(shape: &[T]) -> String {
    let dims: Vec<String> = shape.iter().map(ToString::to_string).collect();
    format!("[{}]", dims.join(", "))
}

/// Copies the weights in safetensors `bytes` (read from `path`) into the variables of `vs`,
/// after checking that the file holds exactly the variables of `arch` (named as in `vs`), each
/// with the same shape and dtype.
///
/// # Errors
/// [`ModelError::Weights`] naming the first mismatching tensor (in name order) with both shapes,
/// and how many more mismatch; [`ModelError::Checkpoint`] for a malformed file;
/// [`ModelError::Torch`] if a copy fails.
pub(crate) fn load_bytes_into(
    vs: &nn::VarStore,
    arch: &str,
    bytes: &[u8],
    path: &Path,
) -> Result<(), ModelError> {
    let file = parse(bytes, path)?;
    let mut found: BTreeMap<String, safetensors::tensor::TensorView<'_>> =
        file.tensors().into_iter().collect();
    let vars: BTreeMap<String, Tensor> = vs.variables().into_iter().collect();
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut pairs = Vec::with_capacity(vars.len());
    for (name, var) in &vars {
        let want_dtype = dtype_of(var.kind())?;
        let want_shape = var.size();
        match found.remove(name) {
            None => problems.push((
                name.clone(),
                format!(
                    "missing from the file, architecture {arch} expects {want_dtype:?} {}",
                    shape_text(&want_shape)
                ),
            )),
            Some(view) => {
                let got_shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                if got_shape != want_shape {
                    problems.push((
                        name.clone(),
                        format!(
                            "checkpoint {}, architecture {arch} expects {}",
                            shape_text(&got_shape),
                            shape_text(&want_shape)
                        ),
                    ));
                } else if view.dtype() != want_dtype {
                    problems.push((
                        name.clone(),
                        format!(
                            "checkpoint {:?} {}, architecture {arch} expects {want_dtype:?} {}",
                            view.dtype(),
                            shape_text(&got_shape),
                            shape_text(&want_shape)
                        ),
                    ));
                } else {
                    pairs.push((var, view));
                }
            }
        }
    }
    for (name, view) in found {
        problems.push((
            name,
            format!(
                "checkpoint {:?} {} is not a tensor of architecture {arch}",
                view.dtype(),
                shape_text(view.shape())
            ),
        ));
    }
    problems.sort();
    if let Some((tensor, problem)) = problems.first() {
        let more = match problems.len() - 1 {
            0 => String::new(),
            n => format!(" (and {n} more mismatching tensor(s))"),
        };
        return Err(ModelError::Weights {
            path: path.display().to_string(),
            tensor: tensor.clone(),
            problem: format!("{problem}{more}"),
        });
    }
    tch::no_grad(|| -> Result<(), ModelError> {
        for (var, view) in pairs {
            let kind = var.kind();
            let src = Tensor::f_from_data_size(view.data(), &var.size(), kind)?;
            var.shallow_clone().f_copy_(&src)?;
        }
        Ok(())
    })
}

/// Loads the safetensors file `path` into `vs`, whose variables are those of architecture
/// `arch` (its name, for messages): every tensor must match a variable's name, shape and dtype
/// exactly (see the module documentation).
///
/// # Errors
/// [`ModelError::Io`] if the file cannot be read; [`ModelError::Weights`] naming the first
/// mismatching tensor; [`ModelError::Checkpoint`] for a malformed file.
pub fn load_safetensors(vs: &nn::VarStore, arch: &str, path: &Path) -> Result<(), ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.display().to_string(),
        source,
    })?;
    load_bytes_into(vs, arch, &bytes, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ArchSpec, Network};

    fn mlp() -> (nn::VarStore, ArchSpec) {
        let spec = ArchSpec {
            arch: "mlp".parse().unwrap(),
            input_shape: vec![4],
            num_classes: 3,
        };
        let vs = nn::VarStore::new(Device::Cpu);
        Network::new(&vs.root(), &spec).unwrap();
        (vs, spec)
    }

    fn named(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
        crate::checkpoint::sorted_variables(vs)
    }

    fn load(tensors: &[(String, Tensor)]) -> Result<nn::VarStore, String> {
        let (vs, _) = mlp();
        let bytes = serialize(tensors).unwrap();
        load_bytes_into(&vs, "mlp", &bytes, Path::new("w.safetensors"))
            .map(|()| vs)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn exact_weights_load_bit_for_bit() {
        let (src, _) = mlp();
        let vs = load(&named(&src)).unwrap();
        assert_eq!(
            crate::fingerprint(&named(&vs)).unwrap(),
            crate::fingerprint(&named(&src)).unwrap()
        );
    }

    #[test]
    fn a_broadcastable_bias_is_refused_with_both_shapes() {
        let (src, _) = mlp();
        let mut t = named(&src);
        let i = t.iter().position(|(n, _)| n == "f1.bias").unwrap();
        t[i].1 = Tensor::from_slice(&[0.5f32]);
        let e = load(&t).unwrap_err();
        assert_eq!(
            e,
            "w.safetensors: f1.bias: checkpoint [1], architecture mlp expects [128]"
        );
    }

    #[test]
    fn wrong_dtype_missing_and_extra_tensors_are_refused() {
        let (src, _) = mlp();
        let base = named(&src);
        let copy = || -> Vec<(String, Tensor)> {
            base.iter()
                .map(|(n, t)| (n.clone(), t.shallow_clone()))
                .collect()
        };
        let mut half = copy();
        half[0].1 = half[0].1.to_kind(Kind::Half);
        let e = load(&half).unwrap_err();
        assert!(
            e.contains(&format!("{}: checkpoint F16", half[0].0)) && e.contains("expects F32"),
            "{e}"
        );
        let missing: Vec<_> = copy().into_iter().skip(1).collect();
        let e = load(&missing).unwrap_err();
        assert!(
            e.contains(&format!("{}: missing from the file", base[0].0)),
            "{e}"
        );
        let mut extra = copy();
        extra.push((
            "f3.weight".into(),
            Tensor::zeros([2, 2], tch::kind::FLOAT_CPU),
        ));
        let e = load(&extra).unwrap_err();
        assert!(
            e.contains("f3.weight: checkpoint F32 [2, 2] is not a tensor of architecture mlp"),
            "{e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let (vs, _) = mlp();
        let e = load_bytes_into(&vs, "mlp", b"not safetensors", Path::new("w.safetensors"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("w.safetensors") && e.contains("not a valid safetensors file"),
            "{e}"
        );
    }
}
