//! Checkpoints: a directory holding
//!
//! - `model.safetensors`: the network's weights, named as in the `VarStore` (e.g. `f1.weight`);
//! - `optimizer.safetensors` (optional): optimizer state as tensors (e.g. Adam's moments);
//! - `checkpoint.json`: [`CheckpointMeta`] (architecture, epoch, step, metrics, fingerprint).
//!
//! Files are written to temporary names and renamed, JSON last, so a crash mid-save leaves the
//! previous checkpoint intact. `teacher-server --model DIR` serves such a directory directly.

use crate::{ArchSpec, ModelError, Network, fingerprint};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor, nn};

/// File name of the weights inside a checkpoint directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the optimizer state inside a checkpoint directory.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File name of the metadata inside a checkpoint directory.
pub const META_FILE: &str = "checkpoint.json";

/// Metadata of a checkpoint (`checkpoint.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// The network: architecture, input shape, number of classes.
    pub arch: ArchSpec,
    /// Completed epochs.
    pub epoch: u64,
    /// Completed optimizer steps.
    pub step: u64,
    /// Hex SHA-256 of the weights (see [`fingerprint`]).
    pub fingerprint: String,
    /// Free-form metrics of the last epoch (e.g. `{"loss": 0.31, "accuracy": 0.88}`).
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// Trainer state needed to resume (optimizer settings, RNG state, ...), owned by the trainer.
    #[serde(default)]
    pub trainer: serde_json::Value,
}

/// A checkpoint directory whose metadata has been read.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The directory.
    pub dir: PathBuf,
    /// Its `checkpoint.json`.
    pub meta: CheckpointMeta,
}

impl Checkpoint {
    /// Whether `dir` holds a checkpoint (has a `checkpoint.json`).
    pub fn exists(dir: &Path) -> bool {
        dir.join(META_FILE).is_file()
    }

    /// Reads `dir/checkpoint.json`.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] if it is missing or malformed.
    pub fn open(dir: &Path) -> Result<Checkpoint, ModelError> {
        let path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Checkpoint {
            path: path.display().to_string(),
            reason: format!("cannot read checkpoint metadata: {e}"),
        })?;
        let meta = serde_json::from_str(&text).map_err(|e| ModelError::Checkpoint {
            path: path.display().to_string(),
            reason: format!("malformed checkpoint metadata: {e}"),
        })?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            meta,
        })
    }

    /// Path of the weights file.
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(WEIGHTS_FILE)
    }

    /// Builds the network on `device` and loads its weights.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] if the weights do not fit the architecture; libtorch errors.
    pub fn load_network(&self, device: Device) -> Result<(nn::VarStore, Network), ModelError> {
        let mut vs = nn::VarStore::new(device);
        let net = Network::new(&vs.root(), &self.meta.arch)?;
        let path = self.weights_path();
        vs.load(&path).map_err(|e| ModelError::Checkpoint {
            path: path.display().to_string(),
            reason: format!(
                "weights do not fit architecture {}: {e}",
                self.meta.arch.arch
            ),
        })?;
        Ok((vs, net))
    }

    /// Reads the optimizer state tensors, or an empty list when the checkpoint has none.
    ///
    /// # Errors
    /// Libtorch errors on a malformed file.
    pub fn load_optimizer(&self) -> Result<Vec<(String, Tensor)>, ModelError> {
        let path = self.dir.join(OPTIMIZER_FILE);
        if !path.exists() {
            return Ok(Vec::new());
        }
        Ok(Tensor::read_safetensors(&path)?)
    }

    /// Writes a checkpoint of `vs` (and optional optimizer state) into `dir`, creating it.
    /// `meta.fingerprint` is recomputed from `vs`.
    ///
    /// # Errors
    /// [`ModelError::Io`] or libtorch errors; the previous checkpoint in `dir` stays intact.
    pub fn save(
        dir: &Path,
        mut meta: CheckpointMeta,
        vs: &nn::VarStore,
        optimizer: &[(String, Tensor)],
    ) -> Result<Checkpoint, ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let named = sorted_variables(vs);
        meta.fingerprint = fingerprint(&named)?;
        let tmp = dir.join(format!(".{WEIGHTS_FILE}.tmp"));
        Tensor::write_safetensors(&named, &tmp)?;
        rename(&tmp, &dir.join(WEIGHTS_FILE))?;
        if !optimizer.is_empty() {
            let tmp = dir.join(format!(".{OPTIMIZER_FILE}.tmp"));
            let cpu = optimizer
                .iter()
                .map(|(n, t)| Ok((n.clone(), t.f_to_device(Device::Cpu)?)))
                .collect::<Result<Vec<_>, tch::TchError>>()?;
            Tensor::write_safetensors(&cpu, &tmp)?;
            rename(&tmp, &dir.join(OPTIMIZER_FILE))?;
        }
        let tmp = dir.join(format!(".{META_FILE}.tmp"));
        let json = serde_json::to_string_pretty(&meta).expect("metadata serialises");
        std::fs::write(&tmp, json).map_err(|source| ModelError::Io {
            path: tmp.display().to_string(),
            source,
        })?;
        rename(&tmp, &dir.join(META_FILE))?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            meta,
        })
    }
}

/// The variables of `vs`, sorted by name, on the CPU.
pub fn sorted_variables(vs: &nn::VarStore) -> Vec<(String, Tensor)> {
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.to_device(Device::Cpu)))
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

fn rename(from: &Path, to: &Path) -> Result<(), ModelError> {
    std::fs::rename(from, to).map_err(|source| ModelError::Io {
        path: to.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;

    #[test]
    fn save_and_load_round_trip_weights_and_fingerprint() {
        let dir = std::env::temp_dir().join(format!("distill-ckpt-{}", std::process::id()));
        let spec = ArchSpec {
            arch: Arch::Mlp { hidden: vec![8] },
            input_shape: vec![4],
            num_classes: 3,
        };
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Network::new(&vs.root(), &spec).unwrap();
        let meta = CheckpointMeta {
            arch: spec.clone(),
            epoch: 2,
            step: 10,
            fingerprint: String::new(),
            metrics: serde_json::json!({"loss": 0.5}),
            trainer: serde_json::Value::Null,
        };
        let opt = vec![(
            "adam.m.f1.weight".to_string(),
            Tensor::ones([8, 4], tch::kind::FLOAT_CPU),
        )];
        let saved = Checkpoint::save(&dir, meta, &vs, &opt).unwrap();
        let ck = Checkpoint::open(&dir).unwrap();
        assert_eq!(ck.meta, saved.meta);
        assert_eq!(ck.meta.fingerprint.len(), 64);
        let (vs2, net2) = ck.load_network(Device::Cpu).unwrap();
        assert_eq!(
            fingerprint(&sorted_variables(&vs2)).unwrap(),
            ck.meta.fingerprint
        );
        let x = Tensor::randn([5, 4], tch::kind::FLOAT_CPU);
        let d = (net.forward(&x, false).unwrap() - net2.forward(&x, false).unwrap())
            .abs()
            .max();
        assert_eq!(d.double_value(&[]), 0.0);
        let o = ck.load_optimizer().unwrap();
        assert_eq!(o[0].0, "adam.m.f1.weight");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
