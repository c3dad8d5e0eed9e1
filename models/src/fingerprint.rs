//! Fingerprint of a set of weights.

use sha2::{Digest, Sha256};
use tch::{Kind, Tensor};

/// Hex SHA-256 of a file's bytes: the fingerprint of a tokenizer file (`tokenizer.json`), as
/// `ModelInfo.tokenizer_fingerprint` carries it; `sha256sum FILE` prints the same.
///
/// # Errors
/// The I/O error of reading the file.
pub fn file_fingerprint(path: &std::path::Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    std::io::copy(&mut file, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Hex SHA-256 of named weights as loaded: for each tensor, in name order, its name, dtype,
/// shape and little-endian bytes (row-major, copied to CPU). Two replicas report the same
/// fingerprint iff they hold bit-identical weights under the same names.
///
/// # Errors
/// A libtorch error if a tensor cannot be copied to the CPU.
pub fn fingerprint<S: AsRef<str>>(named: &[(S, Tensor)]) -> Result<String, tch::TchError> {
    let mut order: Vec<usize> = (0..named.len()).collect();
    order.sort_by(|&a, &b| named[a].0.as_ref().cmp(named[b].0.as_ref()));
    let mut h = Sha256::new();
    for i in order {
        let (name, t) = (&named[i].0, &named[i].1);
        let t = t.f_to_device(tch::Device::Cpu)?.f_contiguous()?;
        h.update((name.as_ref().len() as u64).to_le_bytes());
        h.update(name.as_ref().as_bytes());
        h.update(format!("{:?}", t.kind()).as_bytes());
        for d in t.size() {
            h.update(d.to_le_bytes());
        }
        let numel = t.numel();
        let mut buf = vec![0u8; numel * element_size(t.kind())];
        t.f_copy_data_u8(&mut buf, numel)?;
        h.update(&buf);
    }
    Ok(hex::encode(h.finalize()))
}

/// Size in bytes of one element of `kind`.
pub fn element_size(kind: Kind) -> usize {
    kind.elt_size_in_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_changes_with_any_weight_and_ignores_order() {
        let a = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let b = Tensor::from_slice(&[4i64, 5]);
        let f1 = fingerprint(&[("a", a.shallow_clone()), ("b", b.shallow_clone())]).unwrap();
        let f2 = fingerprint(&[("b", b.shallow_clone()), ("a", a.shallow_clone())]).unwrap();
        assert_eq!(f1, f2);
        assert_eq!(f1.len(), 64);
        let a2 = Tensor::from_slice(&[1.0f32, 2.0, 3.0001]);
        let f3 = fingerprint(&[("a", a2), ("b", b.shallow_clone())]).unwrap();
        assert_ne!(f1, f3);
        let f4 = fingerprint(&[("c", a), ("b", b)]).unwrap();
        assert_ne!(f1, f4);
    }
}
