//! Checkpoints: a directory holding
//!
//! - `checkpoint.json`: [`CheckpointMeta`] (architecture, epoch, step, metrics, weights
//!   fingerprint) and a manifest, `files`, naming the other files with their SHA-256 and size;
//! - `model.<hash>.safetensors`: the network's weights, named as in the `VarStore` (e.g.
//!   `f1.weight`), `<hash>` being the first 16 hex digits of the file's SHA-256;
//! - `optimizer.<hash>.safetensors` (optional): optimizer state as tensors (e.g. Adam's moments).
//! - `aux.<hash>.safetensors` (optional): trained tensors that are not part of the network, e.g.
//!   the regressor of hint distillation; the checkpoint still loads as the bare network.
//! - `student.<hash>.pt` (a TorchScript student only): the module with its trained parameters
//!   and buffers, `torch.jit.save`'s format (`torch.jit.load` reads it). Its weights file then
//!   holds the module's `state_dict()` under PyTorch's keys (buffers included when the module
//!   was exported by `scripts/export_student.py`, see [`crate::script`]), so
//!   `model.load_state_dict(safetensors.torch.load_file(...), strict=True)` loads it into the
//!   user's own class; the fingerprint is that state dict's.
//!
//! A save is atomic as a whole. The data files are written under new (content-addressed) names
//! and fsynced; then `checkpoint.json` is written to a temporary file, fsynced, and renamed over
//! the old one, and the directory is fsynced. That rename is the commit: until it lands, the old
//! `checkpoint.json` names the old files, still present; afterwards the new one names the new
//! files. Only then are the files of older checkpoints removed. A crash (`kill -9`, power loss) at
//! any point leaves the old checkpoint or the new one, never a mix.
//!
//! Loading verifies what `checkpoint.json` promises: each file's SHA-256, every tensor's name,
//! shape and dtype against the architecture (see [`crate::weights`]), and the fingerprint of the
//! weights as loaded. A mismatch is an error naming the file. Checkpoints written before the
//! manifest existed (`model.safetensors`, `optimizer.safetensors`, no `files`) still load, with
//! the shape and fingerprint checks.
//!
//! `teacher-server --model DIR` serves such a directory directly.

use crate::script::{ScriptModule, ScriptRequest};
use crate::weights::{self, sha256_hex};
use crate::{ArchSpec, Model, ModelError, Network, fingerprint};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor, nn};

/// File name of the weights in checkpoints written before the manifest (see the module docs).
pub const LEGACY_WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the optimizer state in checkpoints written before the manifest.
pub const LEGACY_OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// File name of the metadata and manifest inside a checkpoint directory (written last).
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
    /// Hex SHA-256 of the weights (see [`fingerprint`]); checked on load.
    pub fingerprint: String,
    /// Free-form metrics of the last epoch (e.g. `{"loss": 0.31, "accuracy": 0.88}`).
    #[serde(default)]
    pub metrics: serde_json::Value,
    /// Trainer state needed to resume (optimizer settings, RNG state, ...), owned by the trainer.
    #[serde(default)]
    pub trainer: serde_json::Value,
}

/// One data file of a checkpoint, as `checkpoint.json`'s manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the checkpoint directory (no directory part).
    pub name: String,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// The manifest of `checkpoint.json` (`files`): which data files make up the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The weights (safetensors).
    pub weights: FileEntry,
    /// The optimizer state (safetensors), if saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<FileEntry>,
    /// Auxiliary trained tensors (safetensors, e.g. a hint regressor), if saved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux: Option<FileEntry>,
    /// The TorchScript module of a TorchScript student (`student.<hash>.pt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<FileEntry>,
}

impl Manifest {
    /// Every file the manifest names.
    fn entries(&self) -> impl Iterator<Item = &FileEntry> {
        std::iter::once(&self.weights)
            .chain(&self.optimizer)
            .chain(&self.aux)
            .chain(&self.module)
    }
}

/// `checkpoint.json` as stored: the metadata, then the manifest.
#[derive(Serialize, Deserialize)]
struct MetaFile {
    #[serde(flatten)]
    meta: CheckpointMeta,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    files: Option<Manifest>,
}

/// A checkpoint directory whose metadata has been read.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The directory.
    pub dir: PathBuf,
    /// Its `checkpoint.json`.
    pub meta: CheckpointMeta,
    /// Its manifest (`None` for a checkpoint written before manifests: legacy file names, no
    /// hashes).
    pub files: Option<Manifest>,
}

impl Checkpoint {
    /// Whether `dir` holds a checkpoint (has a `checkpoint.json`).
    pub fn exists(dir: &Path) -> bool {
        dir.join(META_FILE).is_file()
    }

    /// Reads `dir/checkpoint.json` (the data files are verified when loaded).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] if it is missing or malformed, or its manifest names a file
    /// outside the directory.
    pub fn open(dir: &Path) -> Result<Checkpoint, ModelError> {
        let path = dir.join(META_FILE);
        let bad = |reason: String| ModelError::Checkpoint {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&path)
            .map_err(|e| bad(format!("cannot read checkpoint metadata: {e}")))?;
        let file: MetaFile = serde_json::from_str(&text)
            .map_err(|e| bad(format!("malformed checkpoint metadata: {e}")))?;
        if let Some(m) = &file.files {
            for entry in m.entries() {
                let plain =
                    Path::new(&entry.name).file_name() == Some(std::ffi::OsStr::new(&entry.name));
                if !plain || entry.name.starts_with('.') {
                    return Err(bad(format!(
                        "manifest names {:?}: expected a file name inside the directory",
                        entry.name
                    )));
                }
            }
        }
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            meta: file.meta,
            files: file.files,
        })
    }

    /// Path of the weights file.
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(
            self.files
                .as_ref()
                .map_or(LEGACY_WEIGHTS_FILE, |m| m.weights.name.as_str()),
        )
    }

    /// Path of the optimizer state file, when the checkpoint has one.
    pub fn optimizer_path(&self) -> Option<PathBuf> {
        match &self.files {
            Some(m) => m.optimizer.as_ref().map(|e| self.dir.join(&e.name)),
            None => Some(self.dir.join(LEGACY_OPTIMIZER_FILE)).filter(|p| p.exists()),
        }
    }

    /// Builds the network on `device` and loads its weights, verifying the file's SHA-256, every
    /// tensor's name, shape and dtype, and the recorded weights fingerprint.
    ///
    /// # Errors
    /// [`ModelError::Weights`] naming a tensor that does not fit the architecture;
    /// [`ModelError::Checkpoint`] naming the file whose hash or fingerprint differs from
    /// `checkpoint.json`; [`ModelError::Io`] if the file cannot be read.
    pub fn load_network(&self, device: Device) -> Result<(nn::VarStore, Network), ModelError> {
        if self.meta.arch.arch.is_torchscript() {
            return Err(ModelError::Checkpoint {
                path: self.dir.display().to_string(),
                reason: format!(
                    "holds the TorchScript student {}: load it with load_model",
                    self.meta.arch.arch
                ),
            });
        }
        let vs = nn::VarStore::new(device);
        let net = Network::new(&vs.root(), &self.meta.arch)?;
        let path = self.weights_path();
        let bytes = std::fs::read(&path).map_err(|source| io_err(&path, source))?;
        // Shapes first: for a file edited or replaced by hand the tensor-level message says most.
        weights::load_bytes_into(&vs, &self.meta.arch.arch.to_string(), &bytes, &path)?;
        if let Some(m) = &self.files {
            verify(&bytes, &path, &m.weights)?;
        }
        if !self.meta.fingerprint.is_empty() {
            let got = fingerprint(&sorted_variables(&vs))?;
            if got != self.meta.fingerprint {
                return Err(ModelError::Checkpoint {
                    path: path.display().to_string(),
                    reason: format!(
                        "weights fingerprint {got} differs from {META_FILE}'s {}",
                        self.meta.fingerprint
                    ),
                });
            }
        }
        Ok((vs, net))
    }

    /// The student of the checkpoint on `device`, built in or TorchScript, with its weights
    /// (see [`Checkpoint::load_network`] and [`Checkpoint::load_script`]).
    ///
    /// # Errors
    /// As those two.
    pub fn load_model(&self, device: Device) -> Result<(nn::VarStore, Model), ModelError> {
        if self.meta.arch.arch.is_torchscript() {
            let vs = nn::VarStore::new(device);
            let module = self.load_script(&vs.root())?;
            return Ok((vs, Model::Script(module)));
        }
        let (vs, net) = self.load_network(device)?;
        Ok((vs, Model::Builtin(net)))
    }

    /// Path of a TorchScript student's module file (`student.<hash>.pt`), if the checkpoint
    /// holds one.
    pub fn module_path(&self) -> Option<PathBuf> {
        self.files
            .as_ref()
            .and_then(|m| m.module.as_ref())
            .map(|e| self.dir.join(&e.name))
    }

    /// The module file's bytes, verified against the manifest (size and SHA-256).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] when the checkpoint holds no module or its hash differs;
    /// [`ModelError::Io`] if it cannot be read.
    pub fn module_bytes(&self) -> Result<(PathBuf, Vec<u8>), ModelError> {
        let Some(entry) = self.files.as_ref().and_then(|m| m.module.as_ref()) else {
            return Err(ModelError::Checkpoint {
                path: self.dir.join(META_FILE).display().to_string(),
                reason: format!(
                    "the architecture is {} but the manifest names no student.<hash>.pt",
                    self.meta.arch.arch
                ),
            });
        };
        let path = self.dir.join(&entry.name);
        let bytes = std::fs::read(&path).map_err(|source| io_err(&path, source))?;
        verify(&bytes, &path, entry)?;
        Ok((path, bytes))
    }

    /// Loads a TorchScript student's module (`student.<hash>.pt`) with its parameters added to
    /// `vs` (see [`ScriptModule::load`]) and checks it: the module file's and the weights file's
    /// SHA-256 against the manifest, the module's warm-up against the recorded architecture,
    /// every tensor of the weights file against the module's state dict (names, shapes, dtypes),
    /// and the state dict's fingerprint against `checkpoint.json`'s.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] naming the file whose hash or fingerprint differs;
    /// [`ModelError::Weights`] naming a tensor that does not fit; [`ModelError::Script`] for a
    /// module that fails its warm-up.
    pub fn load_script(&self, vs: &nn::Path<'_>) -> Result<ScriptModule, ModelError> {
        let crate::Arch::TorchScript(script) = &self.meta.arch.arch else {
            return Err(ModelError::Checkpoint {
                path: self.dir.display().to_string(),
                reason: format!("holds {}, not a TorchScript student", self.meta.arch.arch),
            });
        };
        let _ = script;
        let (path, bytes) = self.module_bytes()?;
        let req = ScriptRequest::of(&self.meta.arch).expect("a torchscript architecture");
        let module = ScriptModule::load(&path, Some(&bytes), vs, &req)?;
        let weights_path = self.weights_path();
        let weights_bytes =
            std::fs::read(&weights_path).map_err(|source| io_err(&weights_path, source))?;
        if let Some(m) = &self.files {
            verify(&weights_bytes, &weights_path, &m.weights)?;
        }
        let state = module.state_dict()?;
        let saved = weights::tensors_from_bytes(&weights_bytes, &weights_path)?;
        weights::check_same_tensors(
            &saved,
            &state,
            &weights_path,
            &self.meta.arch.arch.to_string(),
        )?;
        if !self.meta.fingerprint.is_empty() {
            let got = fingerprint(&state)?;
            if got != self.meta.fingerprint {
                return Err(ModelError::Checkpoint {
                    path: path.display().to_string(),
                    reason: format!(
                        "the module's state dict has fingerprint {got}, {META_FILE} records {}",
                        self.meta.fingerprint
                    ),
                });
            }
        }
        Ok(module)
    }

    /// Reads the optimizer state tensors (CPU, sorted by name), verifying the file's SHA-256, or
    /// an empty list when the checkpoint has none.
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] naming the file if its hash differs from the manifest or it is
    /// malformed; [`ModelError::Io`] if a file the manifest names cannot be read.
    pub fn load_optimizer(&self) -> Result<Vec<(String, Tensor)>, ModelError> {
        let Some(path) = self.optimizer_path() else {
            return Ok(Vec::new());
        };
        let bytes = std::fs::read(&path).map_err(|source| io_err(&path, source))?;
        if let Some(entry) = self.files.as_ref().and_then(|m| m.optimizer.as_ref()) {
            verify(&bytes, &path, entry)?;
        }
        weights::tensors_from_bytes(&bytes, &path)
    }

    /// Reads the auxiliary tensors saved by [`Checkpoint::save_with_aux`] (CPU, sorted by name),
    /// verifying the file's SHA-256, or an empty list when the checkpoint has none.
    ///
    /// # Errors
    /// As [`Checkpoint::load_optimizer`].
    pub fn load_aux(&self) -> Result<Vec<(String, Tensor)>, ModelError> {
        match self.aux_bytes()? {
            None => Ok(Vec::new()),
            Some((path, bytes)) => weights::tensors_from_bytes(&bytes, &path),
        }
    }

    /// Copies the auxiliary tensors saved by [`Checkpoint::save_with_aux`] into the variables of
    /// `vs` (e.g. a hint regressor's), after verifying the file's SHA-256; the file must hold
    /// exactly `vs`'s variables, each with its name, shape and dtype, as for the network's
    /// weights. `what` names them in messages (e.g. `hint regressor`).
    ///
    /// # Errors
    /// [`ModelError::Checkpoint`] when the checkpoint has no auxiliary file, or its hash differs
    /// from the manifest; [`ModelError::Weights`] naming the first tensor that does not fit;
    /// [`ModelError::Io`] if the file cannot be read.
    pub fn load_aux_into(&self, vs: &nn::VarStore, what: &str) -> Result<(), ModelError> {
        let Some((path, bytes)) = self.aux_bytes()? else {
            return Err(ModelError::Checkpoint {
                path: self.dir.display().to_string(),
                reason: format!("no auxiliary tensors file: the {what} was not saved"),
            });
        };
        weights::load_bytes_into(vs, what, &bytes, &path)
    }

    /// The auxiliary file's path and bytes, verified against the manifest; `None` when the
    /// checkpoint has none.
    fn aux_bytes(&self) -> Result<Option<(PathBuf, Vec<u8>)>, ModelError> {
        let Some(entry) = self.files.as_ref().and_then(|m| m.aux.as_ref()) else {
            return Ok(None);
        };
        let path = self.dir.join(&entry.name);
        let bytes = std::fs::read(&path).map_err(|source| io_err(&path, source))?;
        verify(&bytes, &path, entry)?;
        Ok(Some((path, bytes)))
    }

    /// Writes a checkpoint of `vs` (and optional optimizer state) into `dir`, creating it,
    /// atomically as a whole (see the module documentation). `meta.fingerprint` is recomputed
    /// from `vs`.
    ///
    /// # Errors
    /// [`ModelError::Io`] or libtorch errors; the previous checkpoint in `dir` stays intact.
    pub fn save(
        dir: &Path,
        meta: CheckpointMeta,
        vs: &nn::VarStore,
        optimizer: &[(String, Tensor)],
    ) -> Result<Checkpoint, ModelError> {
        Self::save_with_aux(dir, meta, vs, optimizer, &[])
    }

    /// [`Checkpoint::save`] with auxiliary trained tensors beside the network (e.g. a hint
    /// regressor), read back by [`Checkpoint::load_aux`]; none when `aux` is empty. They are not
    /// part of the weights or their fingerprint.
    ///
    /// # Errors
    /// As [`Checkpoint::save`].
    pub fn save_with_aux(
        dir: &Path,
        meta: CheckpointMeta,
        vs: &nn::VarStore,
        optimizer: &[(String, Tensor)],
        aux: &[(String, Tensor)],
    ) -> Result<Checkpoint, ModelError> {
        std::fs::create_dir_all(dir).map_err(|source| io_err(dir, source))?;
        Self::save_files(dir, meta, &sorted_variables(vs), None, optimizer, aux)
    }

    /// [`Checkpoint::save_with_aux`] of any student: a built-in network's variables in `vs`, or
    /// a TorchScript module, saved as `student.<hash>.pt` beside its state dict as the weights
    /// file (see the module docs).
    ///
    /// # Errors
    /// As [`Checkpoint::save`].
    pub fn save_model(
        dir: &Path,
        meta: CheckpointMeta,
        vs: &nn::VarStore,
        model: &Model,
        optimizer: &[(String, Tensor)],
        aux: &[(String, Tensor)],
    ) -> Result<Checkpoint, ModelError> {
        let Model::Script(module) = model else {
            return Self::save_with_aux(dir, meta, vs, optimizer, aux);
        };
        std::fs::create_dir_all(dir).map_err(|source| io_err(dir, source))?;
        let tmp = dir.join(".student.pt.tmp");
        module.save(&tmp)?;
        let bytes = std::fs::read(&tmp).map_err(|source| io_err(&tmp, source))?;
        let _ = std::fs::remove_file(&tmp);
        let mut state: Vec<(String, Tensor)> = module
            .state_dict()?
            .into_iter()
            .map(|(n, t)| (n, t.to_device(Device::Cpu)))
            .collect();
        state.sort_by(|a, b| a.0.cmp(&b.0));
        Self::save_files(dir, meta, &state, Some(&bytes), optimizer, aux)
    }

    /// The save itself: the weights `named` (sorted, on the CPU), the module file's bytes of a
    /// TorchScript student, the optimizer state and the auxiliary tensors, then
    /// `checkpoint.json` (see the module docs).
    fn save_files(
        dir: &Path,
        mut meta: CheckpointMeta,
        named: &[(String, Tensor)],
        module: Option<&[u8]>,
        optimizer: &[(String, Tensor)],
        aux: &[(String, Tensor)],
    ) -> Result<Checkpoint, ModelError> {
        meta.fingerprint = fingerprint(named)?;
        let weights = write_data_file(dir, "model", &weights::serialize(named)?)?;
        crash_point(SaveStep::Weights)?;
        let module = match module {
            Some(bytes) => Some(write_named_file(dir, "student", "pt", bytes)?),
            None => None,
        };
        let sorted_file = |stem: &str, tensors: &[(String, Tensor)]| {
            if tensors.is_empty() {
                return Ok(None);
            }
            let mut state: Vec<(String, Tensor)> = tensors
                .iter()
                .map(|(n, t)| (n.clone(), t.to_device(Device::Cpu)))
                .collect();
            state.sort_by(|a, b| a.0.cmp(&b.0));
            write_data_file(dir, stem, &weights::serialize(&state)?).map(Some)
        };
        let optimizer = sorted_file("optimizer", optimizer)?;
        if optimizer.is_some() {
            crash_point(SaveStep::Optimizer)?;
        }
        let aux = sorted_file("aux", aux)?;
        let files = Manifest {
            weights,
            optimizer,
            aux,
            module,
        };
        let json = serde_json::to_string_pretty(&MetaFile {
            meta: meta.clone(),
            files: Some(files.clone()),
        })
        .expect("metadata serialises");
        let tmp = dir.join(format!(".{META_FILE}.tmp"));
        write_synced(&tmp, json.as_bytes())?;
        crash_point(SaveStep::MetaWritten)?;
        std::fs::rename(&tmp, dir.join(META_FILE)).map_err(|source| io_err(&tmp, source))?;
        sync_dir(dir)?;
        crash_point(SaveStep::Committed)?;
        remove_stale(dir, &files);
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            meta,
            files: Some(files),
        })
    }
}

/// The steps of [`Checkpoint::save`] after which a test may simulate a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(test), allow(dead_code))]
enum SaveStep {
    /// The weights file is in place under its new name.
    Weights,
    /// The optimizer file is in place under its new name.
    Optimizer,
    /// The new `checkpoint.json` is written (and fsynced) under its temporary name.
    MetaWritten,
    /// The new `checkpoint.json` is renamed into place and the directory fsynced.
    Committed,
}

#[cfg(test)]
thread_local! {
    /// Test-only: [`Checkpoint::save`] on this thread stops with an error right after this step,
    /// leaving the directory as a crash there would.
    static CRASH_AFTER: std::cell::Cell<Option<SaveStep>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
fn crash_point(step: SaveStep) -> Result<(), ModelError> {
    if CRASH_AFTER.with(|c| c.get()) == Some(step) {
        return Err(ModelError::Unsupported(format!(
            "simulated crash after {step:?}"
        )));
    }
    Ok(())
}

#[cfg(not(test))]
#[inline]
fn crash_point(_: SaveStep) -> Result<(), ModelError> {
    Ok(())
}

/// Checks a data file's bytes against its manifest entry (size and SHA-256).
fn verify(bytes: &[u8], path: &Path, entry: &FileEntry) -> Result<(), ModelError> {
    let sha = sha256_hex(bytes);
    if bytes.len() as u64 != entry.bytes || sha != entry.sha256 {
        return Err(ModelError::Checkpoint {
            path: path.display().to_string(),
            reason: format!(
                "contents differ from {META_FILE}: {} bytes with SHA-256 {sha}, the manifest \
                 promises {} bytes with SHA-256 {} (a torn or altered checkpoint)",
                bytes.len(),
                entry.bytes,
                entry.sha256
            ),
        });
    }
    Ok(())
}

fn io_err(path: &Path, source: std::io::Error) -> ModelError {
    ModelError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Writes `bytes` to `path` (created or truncated) and fsyncs it.
fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), ModelError> {
    let mut f = std::fs::File::create(path).map_err(|source| io_err(path, source))?;
    f.write_all(bytes).map_err(|source| io_err(path, source))?;
    f.sync_all().map_err(|source| io_err(path, source))
}

/// Fsyncs a directory, so that renames and new entries in it are durable.
fn sync_dir(dir: &Path) -> Result<(), ModelError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| io_err(dir, source))
}

/// Replaces `dir/name` with `bytes` atomically: written to a temporary name in `dir`, fsynced,
/// renamed over `name`, and the directory fsynced. A crash leaves the old file or the new one.
///
/// # Errors
/// [`ModelError::Io`] naming the file.
pub fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), ModelError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(name)).map_err(|source| io_err(&tmp, source))?;
    sync_dir(dir)
}

/// Writes a data file as `STEM.<first 16 hex digits of its SHA-256>.safetensors` via a
/// temporary name (write, fsync, rename, fsync the directory) and returns its manifest entry.
/// The name depends on the contents only, so an existing file of that name holds the same bytes.
///
/// # Errors
/// [`ModelError::Io`] naming the file.
pub fn write_data_file(dir: &Path, stem: &str, bytes: &[u8]) -> Result<FileEntry, ModelError> {
    write_named_file(dir, stem, "safetensors", bytes)
}

/// [`write_data_file`] with another extension: `STEM.<hash>.EXT`.
fn write_named_file(
    dir: &Path,
    stem: &str,
    ext: &str,
    bytes: &[u8],
) -> Result<FileEntry, ModelError> {
    let sha256 = sha256_hex(bytes);
    let name = format!("{stem}.{}.{ext}", &sha256[..16]);
    let tmp = dir.join(format!(".{name}.tmp"));
    write_synced(&tmp, bytes)?;
    std::fs::rename(&tmp, dir.join(&name)).map_err(|source| io_err(&tmp, source))?;
    sync_dir(dir)?;
    Ok(FileEntry {
        name,
        sha256,
        bytes: bytes.len() as u64,
    })
}

/// Whether `name` is a data file or temporary file a checkpoint save writes.
fn is_checkpoint_file(name: &str) -> bool {
    let named_as = |stem: &str, ext: &str| {
        name.strip_prefix(stem)
            .and_then(|r| r.strip_prefix('.'))
            .and_then(|r| r.strip_suffix(ext))
            .is_some_and(|h| h.len() == 16 && h.bytes().all(|b| b.is_ascii_hexdigit()))
    };
    let content_named = |stem: &str| named_as(stem, ".safetensors");
    name == LEGACY_WEIGHTS_FILE
        || name == LEGACY_OPTIMIZER_FILE
        || content_named("model")
        || content_named("optimizer")
        || content_named("aux")
        || named_as("student", ".pt")
        || name == ".student.pt.tmp"
        || name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(".tmp"))
            .is_some_and(|inner| inner == META_FILE || is_checkpoint_file(inner))
}

/// Removes the data files of earlier checkpoints (and temporary files of interrupted saves)
/// from `dir`, keeping those `files` names. Best effort: a file left behind is only disk space.
fn remove_stale(dir: &Path, files: &Manifest) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let current = files.entries().any(|o| o.name == name);
        if !current
            && is_checkpoint_file(&name)
            && let Err(e) = std::fs::remove_file(entry.path())
        {
            tracing::debug!(file = %entry.path().display(), error = %e, "could not remove a stale checkpoint file");
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Arch;

    fn spec() -> ArchSpec {
        ArchSpec {
            arch: Arch::Mlp { hidden: vec![8] },
            input_shape: vec![4],
            num_classes: 3,
        }
    }

    fn meta(epoch: u64) -> CheckpointMeta {
        CheckpointMeta {
            arch: spec(),
            epoch,
            step: 10 * epoch,
            fingerprint: String::new(),
            metrics: serde_json::json!({"loss": 0.5}),
            trainer: serde_json::Value::Null,
        }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("distill-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// A network whose every weight is `value`, and optimizer state of `10 * value`.
    fn filled(value: f64) -> (nn::VarStore, Vec<(String, Tensor)>) {
        let vs = nn::VarStore::new(Device::Cpu);
        Network::new(&vs.root(), &spec()).unwrap();
        tch::no_grad(|| {
            for (_, mut t) in vs.variables() {
                let _ = t.fill_(value);
            }
        });
        let opt = vec![(
            "adam.m.f1.weight".to_string(),
            Tensor::full([8, 4], 10.0 * value, tch::kind::FLOAT_CPU),
        )];
        (vs, opt)
    }

    /// The value every weight of the checkpoint holds, and its optimizer state's.
    fn values(ck: &Checkpoint) -> (f64, f64) {
        let (vs, _) = ck.load_network(Device::Cpu).unwrap();
        let w = vs.variables()["f1.weight"].double_value(&[0, 0]);
        let o = ck.load_optimizer().unwrap()[0].1.double_value(&[0, 0]);
        (w, o)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn save_and_load_round_trip_weights_and_fingerprint() {
        let dir = temp_dir("round-trip");
        let spec = spec();
        let vs = nn::VarStore::new(Device::Cpu);
        let net = Network::new(&vs.root(), &spec).unwrap();
        let opt = vec![(
            "adam.m.f1.weight".to_string(),
            Tensor::ones([8, 4], tch::kind::FLOAT_CPU),
        )];
        let saved = Checkpoint::save(&dir, meta(2), &vs, &opt).unwrap();
        let ck = Checkpoint::open(&dir).unwrap();
        assert_eq!(ck.meta, saved.meta);
        assert_eq!(ck.files, saved.files);
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
        let files = ck.files.as_ref().unwrap();
        assert_eq!(
            names(&dir),
            [
                META_FILE.to_string(),
                files.weights.name.clone(),
                files.optimizer.as_ref().unwrap().name.clone()
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_crash_after_any_step_of_a_save_leaves_the_old_or_the_new_checkpoint() {
        use SaveStep::*;
        for (i, step) in [Weights, Optimizer, MetaWritten, Committed]
            .into_iter()
            .enumerate()
        {
            let dir = temp_dir(&format!("crash-{i}"));
            let (vs1, opt1) = filled(1.0);
            Checkpoint::save(&dir, meta(1), &vs1, &opt1).unwrap();
            let (vs2, opt2) = filled(2.0);
            CRASH_AFTER.with(|c| c.set(Some(step)));
            let crashed = Checkpoint::save(&dir, meta(2), &vs2, &opt2);
            CRASH_AFTER.with(|c| c.set(None));
            assert!(crashed.is_err(), "{step:?}: the crash was not simulated");
            let ck = Checkpoint::open(&dir).unwrap();
            let want = if step == Committed { 2 } else { 1 };
            assert_eq!(ck.meta.epoch, want, "{step:?}");
            assert_eq!(
                values(&ck),
                (want as f64, 10.0 * want as f64),
                "{step:?}: a mix"
            );
            // The next save completes and leaves only its own files.
            let (vs3, opt3) = filled(3.0);
            let done = Checkpoint::save(&dir, meta(3), &vs3, &opt3).unwrap();
            assert_eq!(values(&Checkpoint::open(&dir).unwrap()), (3.0, 30.0));
            let files = done.files.unwrap();
            assert_eq!(
                names(&dir).len(),
                3,
                "{step:?}: {:?} left behind",
                names(&dir)
            );
            assert!(names(&dir).contains(&files.weights.name));
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn a_file_that_differs_from_the_manifest_is_refused_by_name() {
        let (a, b) = (temp_dir("torn-a"), temp_dir("torn-b"));
        let (vs1, opt1) = filled(1.0);
        let one = Checkpoint::save(&a, meta(1), &vs1, &opt1).unwrap();
        let (vs2, opt2) = filled(2.0);
        let two = Checkpoint::save(&b, meta(2), &vs2, &opt2).unwrap();
        // Epoch 2's files under epoch 1's names: what renames one after another could leave.
        std::fs::copy(two.weights_path(), one.weights_path()).unwrap();
        let e = one.load_network(Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains(&one.weights_path().display().to_string())
                && e.contains("differ from checkpoint.json"),
            "{e}"
        );
        std::fs::copy(two.optimizer_path().unwrap(), one.optimizer_path().unwrap()).unwrap();
        let e = one.load_optimizer().unwrap_err().to_string();
        assert!(
            e.contains(&one.optimizer_path().unwrap().display().to_string())
                && e.contains("SHA-256"),
            "{e}"
        );
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }

    #[test]
    fn legacy_checkpoints_load_and_their_fingerprint_is_checked() {
        let dir = temp_dir("legacy");
        std::fs::create_dir_all(&dir).unwrap();
        let (vs, _) = filled(1.0);
        let named = sorted_variables(&vs);
        Tensor::write_safetensors(&named, dir.join(LEGACY_WEIGHTS_FILE)).unwrap();
        let mut m = meta(1);
        m.fingerprint = fingerprint(&named).unwrap();
        std::fs::write(dir.join(META_FILE), serde_json::to_string(&m).unwrap()).unwrap();
        let ck = Checkpoint::open(&dir).unwrap();
        assert!(ck.files.is_none());
        assert!(ck.optimizer_path().is_none());
        assert_eq!(ck.load_network(Device::Cpu).unwrap().0.variables().len(), 4);
        // Weights that fit the architecture but are not the ones recorded.
        let (other, _) = filled(2.0);
        Tensor::write_safetensors(&sorted_variables(&other), dir.join(LEGACY_WEIGHTS_FILE))
            .unwrap();
        let e = ck.load_network(Device::Cpu).unwrap_err().to_string();
        assert!(
            e.contains(LEGACY_WEIGHTS_FILE)
                && e.contains("fingerprint")
                && e.contains(&m.fingerprint),
            "{e}"
        );
        // A save over a legacy checkpoint replaces its files.
        Checkpoint::save(&dir, meta(2), &other, &[]).unwrap();
        assert!(!dir.join(LEGACY_WEIGHTS_FILE).exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn auxiliary_tensors_round_trip_beside_a_bare_network() {
        let dir = temp_dir("aux");
        let (vs, opt) = filled(0.25);
        let aux = vec![(
            "hint.regressor.weight".to_string(),
            Tensor::full([2, 3], 7.0, tch::kind::FLOAT_CPU),
        )];
        let ck = Checkpoint::save_with_aux(&dir, meta(1), &vs, &opt, &aux).unwrap();
        // The network loads alone (the aux tensors are not among its weights).
        assert_eq!(values(&Checkpoint::open(&dir).unwrap()), (0.25, 2.5));
        let back = Checkpoint::open(&dir).unwrap().load_aux().unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, "hint.regressor.weight");
        assert!(back[0].1.equal(&aux[0].1));
        let aux_file = ck
            .files
            .as_ref()
            .unwrap()
            .aux
            .as_ref()
            .unwrap()
            .name
            .clone();
        assert!(aux_file.starts_with("aux."), "{aux_file}");
        // Into variables of the same names: copied; of another shape: refused naming both.
        let into = nn::VarStore::new(Device::Cpu);
        let w = into
            .root()
            .sub("hint")
            .sub("regressor")
            .zeros("weight", &[2, 3]);
        Checkpoint::open(&dir)
            .unwrap()
            .load_aux_into(&into, "hint regressor")
            .unwrap();
        assert!(w.equal(&aux[0].1));
        let wrong = nn::VarStore::new(Device::Cpu);
        let _ = wrong
            .root()
            .sub("hint")
            .sub("regressor")
            .zeros("weight", &[3, 3]);
        let e = Checkpoint::open(&dir)
            .unwrap()
            .load_aux_into(&wrong, "hint regressor")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("hint.regressor.weight") && e.contains("[2, 3]") && e.contains("[3, 3]"),
            "{e}"
        );
        // A tampered file is refused by name; a save without aux removes the old one.
        let mut bytes = std::fs::read(dir.join(&aux_file)).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(dir.join(&aux_file), &bytes).unwrap();
        let e = Checkpoint::open(&dir).unwrap().load_aux().unwrap_err();
        assert!(e.to_string().contains(&aux_file), "{e}");
        Checkpoint::save(&dir, meta(2), &vs, &opt).unwrap();
        assert!(
            Checkpoint::open(&dir)
                .unwrap()
                .load_aux()
                .unwrap()
                .is_empty()
        );
        assert!(!names(&dir).iter().any(|n| n.starts_with("aux.")));
        let e = Checkpoint::open(&dir)
            .unwrap()
            .load_aux_into(&into, "hint regressor")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the hint regressor was not saved"), "{e}");

        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn saves_remove_only_their_own_old_files() {
        let dir = temp_dir("neighbours");
        std::fs::create_dir_all(&dir).unwrap();
        let keep = [
            "metrics.jsonl",
            "report.json",
            "model.mine.safetensors",
            ".tmp",
        ];
        for name in keep {
            std::fs::write(dir.join(name), "x").unwrap();
        }
        let (vs1, opt1) = filled(1.0);
        let first = Checkpoint::save(&dir, meta(1), &vs1, &opt1).unwrap();
        let (vs2, _) = filled(2.0);
        let second = Checkpoint::save(&dir, meta(2), &vs2, &[]).unwrap();
        let mut want: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
        want.push(META_FILE.into());
        want.push(second.files.as_ref().unwrap().weights.name.clone());
        want.sort();
        assert_eq!(names(&dir), want);
        assert!(!first.weights_path().exists() && second.optimizer_path().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_manifest_naming_a_path_outside_the_directory_is_refused() {
        let dir = temp_dir("escape");
        let (vs, _) = filled(1.0);
        Checkpoint::save(&dir, meta(1), &vs, &[]).unwrap();
        let path = dir.join(META_FILE);
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        v["files"]["weights"]["name"] = "../../etc/passwd".into();
        std::fs::write(&path, v.to_string()).unwrap();
        let e = Checkpoint::open(&dir).unwrap_err().to_string();
        assert!(
            e.contains("expected a file name inside the directory"),
            "{e}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torchscript_students_files_are_the_checkpoints_own() {
        assert!(is_checkpoint_file("student.0123456789abcdef.pt"));
        assert!(is_checkpoint_file(".student.pt.tmp"));
        assert!(is_checkpoint_file(".student.0123456789abcdef.pt.tmp"));
        assert!(!is_checkpoint_file("student.pt"));
        assert!(!is_checkpoint_file("student.0123456789abcdef.safetensors"));
    }

    #[test]
    fn a_torchscript_checkpoint_without_its_module_is_refused_by_name() {
        let dir = temp_dir("script-no-module");
        let (vs, _) = filled(1.0);
        let mut m = meta(1);
        m.arch.arch = crate::Arch::TorchScript(crate::ScriptArch {
            module: "student".into(),
            input_dtype: "f32".into(),
            sequence_model: false,
            logits_output: "0".into(),
            outputs: Vec::new(),
            state_dict_method: false,
        });
        Checkpoint::save(&dir, m, &vs, &[]).unwrap();
        let ck = Checkpoint::open(&dir).unwrap();
        assert!(ck.module_path().is_none());
        let e = ck.load_model(Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("names no student.<hash>.pt"), "{e}");
        let e = ck.load_network(Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("TorchScript student torchscript:student"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
