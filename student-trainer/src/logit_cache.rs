//! The logit cache: a teacher's soft targets for every sample of a dataset, on disk, so that
//! later epochs (and other students) need no teacher.
//!
//! # Layout
//!
//! A cache is a directory holding
//!
//! - `cache.json`: the [`CacheKey`] (what the targets are of: teacher fingerprint and precision,
//!   wire dtype, top-k, temperature for sparse targets, the dataset's content hash and size),
//!   the shard size, and a manifest of the shards written so far (file name, SHA-256, bytes);
//! - `shard-NNNNN.<hash>.safetensors`: the targets of samples `[s·S, min(N, (s+1)·S))` for
//!   shard `s` of size `S`, `<hash>` being the first 16 hex digits of the file's SHA-256. Tensors:
//!   - dense targets: `values`, wire dtype (`f32`/`f16`/`bf16`) `[n, num_logits]`;
//!   - sparse targets (top-k): `values`, wire dtype `[n, k]` (raw logits, descending),
//!     `indices`, `i32 [n, k]`, and `tail_logsumexp`, `f32 [n]` (the log-sum-exp of `z/T` over
//!     the classes outside the top-k, see `SparseLogits` in the `.proto`).
//!
//! This is the habit of Megatron-LM's, MaxText's and DistillKit's capture formats (top-k values,
//! ids and a log-sum-exp, in shards), with the tail kept at the temperature so that the
//! probabilities stay exact.
//!
//! # Atomicity and verification
//!
//! A shard is written under its content-addressed name via a temporary file (write, fsync,
//! rename, fsync the directory), then `cache.json` is replaced the same way with the shard added
//! to its manifest: a crash at any instant leaves the old manifest (the shard is then written
//! again) or the new one. Loading checks each shard's size and SHA-256 against the manifest and
//! every tensor's name, dtype and shape against the key: a damaged or truncated shard is an error
//! naming it, never silent zeros. A cache whose key differs from the run's is refused with a
//! message naming every field that differs.

use crate::data::Dataset;
use crate::schedule::Position;
use crate::soft_targets::{SoftTargets, TargetRequest};
use distill_models::ModelError;
use distill_models::checkpoint::{FileEntry, replace_file, write_data_file};
use distill_models::weights::{serialize, sha256_hex, tensors_from_bytes};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// File name of the key and manifest inside a cache directory.
pub(crate) const CACHE_FILE: &str = "cache.json";
/// The `format` recorded in `cache.json`.
pub(crate) const FORMAT: &str = "distill-logit-cache/1";
/// Default samples per shard.
pub(crate) const DEFAULT_SHARD_SAMPLES: usize = 8192;

/// Why a cache cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The cache holds the targets of something else than this run asks for.
    #[error("logit cache {dir} does not match this run: {differences}")]
    Mismatch {
        /// The cache directory.
        dir: PathBuf,
        /// Each differing key field, `name: cache has X, this run has Y`, joined by `; `.
        differences: String,
    },
    /// A shard that is missing, truncated, altered or malformed.
    #[error("logit cache {dir}: shard {shard} ({file}): {reason}")]
    Shard {
        /// The cache directory.
        dir: PathBuf,
        /// The shard number.
        shard: usize,
        /// Its file name.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Shards not written yet (an interrupted capture).
    #[error(
        "logit cache {dir} is incomplete: {missing} of {total} shard(s) missing (first: shard \
         {first}); run `student-trainer capture` again to finish it"
    )]
    Incomplete {
        /// The cache directory.
        dir: PathBuf,
        /// Shards missing.
        missing: usize,
        /// Shards in all.
        total: usize,
        /// The first missing shard.
        first: usize,
    },
    /// `cache.json` is unreadable or not a cache manifest.
    #[error("logit cache {path}: {reason}")]
    Manifest {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Rows handed to the cache that do not fit its key.
    #[error("logit cache: {0}")]
    Rows(String),
    /// Reading or writing files.
    #[error("{0}")]
    Io(#[from] ModelError),
    /// A libtorch failure.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// What the targets of a cache are of. Two caches (or a cache and a run) are interchangeable
/// exactly when their keys are equal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    /// Hex SHA-256 of the teacher's source weights (`ModelInfo.fingerprint`).
    pub teacher_fingerprint: String,
    /// The dtype the teacher computed in (`f32`, `bf16`, `f16`).
    pub teacher_precision: String,
    /// The dtype the targets are stored in (`f32`, `f16`, `bf16`).
    pub wire: String,
    /// 0: dense logits; k > 0: top-k sparse targets.
    pub top_k: u32,
    /// The temperature T of `tail_logsumexp`, for sparse targets; `None` for dense ones (raw
    /// logits do not depend on T).
    pub temperature: Option<f64>,
    /// Number of logits per sample of the teacher.
    pub num_logits: i64,
    /// Hex SHA-256 of the dataset's inputs ([`dataset_sha256`]).
    pub dataset_sha256: String,
    /// Samples in the dataset.
    pub samples: usize,
    /// Positions per sample for a language model's per-token targets (the sequence length S:
    /// rows are `[S, width]`, tails `[S]`); 0 for one row per sample. Absent (0) in caches
    /// written before language models.
    #[serde(default)]
    pub positions: i64,
    /// Hex SHA-256 of the tokenizer of a language model's data; empty otherwise.
    #[serde(default)]
    pub tokenizer_fingerprint: String,
    /// The teacher's view of an image folder when it differs from the student's inputs (whose
    /// hash `dataset_sha256` is): its shape and normalization; empty when the teacher gets the
    /// student's inputs.
    #[serde(default)]
    pub teacher_view: String,
}

impl CacheKey {
    /// Shape of the values (and indices) of `n` samples: `[n, width]`, or `[n, S, width]`.
    fn rows_shape(&self, n: i64) -> Vec<i64> {
        let mut shape = self.tail_shape(n);
        shape.push(self.width());
        shape
    }

    /// Shape of the tails of `n` samples: `[n]`, or `[n, S]`.
    fn tail_shape(&self, n: i64) -> Vec<i64> {
        let mut shape = vec![n];
        if self.positions > 0 {
            shape.push(self.positions);
        }
        shape
    }

    /// The wire dtype as a libtorch kind.
    fn kind(&self) -> Result<Kind, CacheError> {
        match self.wire.as_str() {
            "f32" => Ok(Kind::Float),
            "f16" => Ok(Kind::Half),
            "bf16" => Ok(Kind::BFloat16),
            other => Err(CacheError::Rows(format!(
                "wire dtype {other:?}: expected f32, f16 or bf16"
            ))),
        }
    }

    /// Values per sample: `num_logits` for dense targets, `top_k` for sparse ones.
    fn width(&self) -> i64 {
        if self.top_k == 0 {
            self.num_logits
        } else {
            i64::from(self.top_k)
        }
    }

    /// `name: cache has X, this run has Y` for every field that differs.
    fn differences(&self, run: &CacheKey) -> Vec<String> {
        let mut out = Vec::new();
        let mut cmp = |name: &str, cache: String, this: String| {
            if cache != this {
                out.push(format!("{name}: cache has {cache}, this run has {this}"));
            }
        };
        cmp(
            "teacher fingerprint",
            self.teacher_fingerprint.clone(),
            run.teacher_fingerprint.clone(),
        );
        cmp(
            "teacher precision",
            self.teacher_precision.clone(),
            run.teacher_precision.clone(),
        );
        cmp("--wire", self.wire.clone(), run.wire.clone());
        cmp("--top-k", self.top_k.to_string(), run.top_k.to_string());
        let t = |t: Option<f64>| t.map_or_else(|| "none (dense)".into(), |t| t.to_string());
        cmp("temperature", t(self.temperature), t(run.temperature));
        cmp(
            "num_logits",
            self.num_logits.to_string(),
            run.num_logits.to_string(),
        );
        cmp(
            "dataset sha256",
            self.dataset_sha256.clone(),
            run.dataset_sha256.clone(),
        );
        cmp(
            "dataset samples",
            self.samples.to_string(),
            run.samples.to_string(),
        );
        cmp(
            "sequence length (positions per sample)",
            self.positions.to_string(),
            run.positions.to_string(),
        );
        cmp(
            "tokenizer fingerprint",
            format!("{:?}", self.tokenizer_fingerprint),
            format!("{:?}", run.tokenizer_fingerprint),
        );
        let view = |v: &str| {
            if v.is_empty() {
                "the student's inputs".to_string()
            } else {
                v.to_string()
            }
        };
        cmp(
            "teacher's image view",
            view(&self.teacher_view),
            view(&run.teacher_view),
        );
        out
    }
}

/// Who produced a cache's targets: the teacher's identity as its `ModelInfo` states it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedTeacher<'a> {
    /// Hex SHA-256 of its source weights.
    pub fingerprint: &'a str,
    /// The dtype it computes in (`f32`, `bf16`, `f16`).
    pub precision: &'a str,
    /// Logits per sample (per position of a language model).
    pub num_logits: i64,
}

impl CacheKey {
    /// The key of `request`'s soft targets of `teacher` for the training split `train`: the
    /// temperature counts for top-k targets only (raw logits do not depend on it), positions and
    /// the tokenizer for token data only.
    ///
    /// # Errors
    /// A libtorch failure while hashing the inputs.
    pub fn for_run(
        request: &TargetRequest,
        teacher: CachedTeacher<'_>,
        train: &Dataset,
    ) -> Result<CacheKey, tch::TchError> {
        Ok(CacheKey {
            teacher_fingerprint: teacher.fingerprint.to_string(),
            teacher_precision: teacher.precision.to_string(),
            wire: request.wire.to_string(),
            top_k: request.top_k,
            temperature: (request.top_k > 0).then_some(request.temperature),
            num_logits: teacher.num_logits,
            dataset_sha256: dataset_sha256(&train.inputs)?,
            samples: train.len(),
            positions: if train.is_tokens() {
                train.sample_shape().first().copied().unwrap_or(0)
            } else {
                0
            },
            tokenizer_fingerprint: train.tokenizer_fingerprint.clone().unwrap_or_default(),
            teacher_view: String::new(),
        })
    }
}

/// How a distillation run uses a logit cache (`--logit-cache`).
#[derive(Debug)]
pub struct CachePlan {
    /// The cache. While it is incomplete, every batch received from the teacher is added to it
    /// (shards are written as they complete).
    pub cache: LogitCache,
    /// From this epoch on, soft targets come from the cache (read and verified once), not from
    /// the teacher.
    pub from_epoch: u64,
}

impl CachePlan {
    /// The first epoch that can read a cache whose completeness is `complete` now, for a run
    /// starting at `start`: `start.epoch` for a complete cache; otherwise the epoch after the
    /// first one streamed from its first batch (which sees every sample once and so completes
    /// the cache): `start.epoch + 1` from an epoch boundary, `start.epoch + 2` after a mid-epoch
    /// resume (the shards being filled were in memory only).
    pub fn first_cached_epoch(complete: bool, start: Position) -> u64 {
        match (complete, start.batch) {
            (true, _) => start.epoch,
            (false, 0) => start.epoch + 1,
            (false, _) => start.epoch + 2,
        }
    }
}

/// Hex SHA-256 of a dataset's inputs as the teacher sees them: the shape (as little-endian
/// `i64`s) then the `f32` data row by row. `inputs`: `f32 [N, ...]`, CPU.
///
/// # Errors
/// A libtorch failure while copying the rows.
pub(crate) fn dataset_sha256(inputs: &Tensor) -> Result<String, tch::TchError> {
    let inputs = inputs.f_to_kind(Kind::Float)?.f_contiguous()?;
    let size = inputs.size();
    let mut h = Sha256::new();
    for d in &size {
        h.update(d.to_le_bytes());
    }
    let n = size.first().copied().unwrap_or(0);
    const CHUNK: i64 = 1024;
    let mut buf = Vec::new();
    let mut start = 0;
    while start < n {
        let rows = inputs.f_narrow(0, start, CHUNK.min(n - start))?;
        let numel = rows.numel();
        buf.resize(numel * 4, 0);
        rows.f_copy_data_u8(&mut buf, numel)?;
        h.update(&buf);
        start += CHUNK;
    }
    Ok(hex::encode(h.finalize()))
}

/// `cache.json` as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    format: String,
    key: CacheKey,
    shard_samples: usize,
    /// Written shards by number.
    shards: BTreeMap<usize, FileEntry>,
}

/// A cache directory opened for one key.
#[derive(Debug)]
pub struct LogitCache {
    dir: PathBuf,
    manifest: Manifest,
    kind: Kind,
    /// Shards being filled online: rows received so far per shard.
    filling: BTreeMap<usize, Filling>,
}

#[derive(Debug)]
struct Filling {
    /// The shard's rows so far (`f32` values; zeros where not yet received).
    rows: SoftTargets,
    have: Vec<bool>,
    count: usize,
}

impl LogitCache {
    /// Opens the cache in `dir` for `key`, creating the directory and an empty `cache.json`
    /// (with shards of `shard_samples`) when there is none.
    ///
    /// # Errors
    /// [`CacheError::Mismatch`] naming every differing field when `dir` holds a cache of another
    /// key; [`CacheError::Manifest`] for an unreadable `cache.json`; [`CacheError::Io`].
    pub fn open_or_create(
        dir: &Path,
        key: CacheKey,
        shard_samples: usize,
    ) -> Result<LogitCache, CacheError> {
        let kind = key.kind()?;
        if dir.join(CACHE_FILE).exists() {
            let cache = Self::open(dir)?;
            cache.check_key(&key)?;
            return Ok(cache);
        }
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let cache = LogitCache {
            dir: dir.to_path_buf(),
            manifest: Manifest {
                format: FORMAT.into(),
                key,
                shard_samples: shard_samples.max(1),
                shards: BTreeMap::new(),
            },
            kind,
            filling: BTreeMap::new(),
        };
        cache.write_manifest()?;
        Ok(cache)
    }

    /// Opens an existing cache, whatever its key (see [`LogitCache::key`]).
    ///
    /// # Errors
    /// [`CacheError::Manifest`] when `dir` has no readable `cache.json` of this format.
    pub fn open(dir: &Path) -> Result<LogitCache, CacheError> {
        let path = dir.join(CACHE_FILE);
        let bad = |reason: String| CacheError::Manifest {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        if manifest.format != FORMAT {
            return Err(bad(format!(
                "format {:?}, expected {FORMAT:?}",
                manifest.format
            )));
        }
        if manifest.shard_samples == 0 {
            return Err(bad("shard_samples is 0".into()));
        }
        let kind = manifest.key.kind()?;
        Ok(LogitCache {
            dir: dir.to_path_buf(),
            manifest,
            kind,
            filling: BTreeMap::new(),
        })
    }

    /// Opens the complete cache in `dir` for a run without a teacher, checked against `run` (a
    /// key whose teacher fields are the stored ones: only the run's flags and data can differ).
    ///
    /// # Errors
    /// [`CacheError::Mismatch`] naming every differing field, [`CacheError::Incomplete`] for a
    /// cache with shards missing, [`CacheError::Manifest`] for an unreadable one.
    pub fn open_complete(dir: &Path, run: &CacheKey) -> Result<LogitCache, CacheError> {
        let cache = LogitCache::open(dir)?;
        cache.check_key(run)?;
        let missing = cache.missing_shards();
        if let Some(&first) = missing.first() {
            return Err(CacheError::Incomplete {
                dir: dir.to_path_buf(),
                missing: missing.len(),
                total: cache.shard_count(),
                first,
            });
        }
        Ok(cache)
    }

    /// Whether `dir` holds a cache (has a `cache.json`).
    pub fn exists(dir: &Path) -> bool {
        dir.join(CACHE_FILE).is_file()
    }

    /// The key of the cache.
    pub fn key(&self) -> &CacheKey {
        &self.manifest.key
    }

    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Refuses `run` unless it equals the cache's key.
    ///
    /// # Errors
    /// [`CacheError::Mismatch`] naming every differing field.
    pub fn check_key(&self, run: &CacheKey) -> Result<(), CacheError> {
        let diff = self.manifest.key.differences(run);
        if diff.is_empty() {
            Ok(())
        } else {
            Err(CacheError::Mismatch {
                dir: self.dir.clone(),
                differences: diff.join("; "),
            })
        }
    }

    /// Number of shards of the whole dataset.
    pub fn shard_count(&self) -> usize {
        self.manifest
            .key
            .samples
            .div_ceil(self.manifest.shard_samples)
    }

    /// The sample range `[first, end)` of shard `s`.
    pub fn shard_range(&self, s: usize) -> std::ops::Range<usize> {
        let size = self.manifest.shard_samples;
        let first = s * size;
        first..(first + size).min(self.manifest.key.samples)
    }

    /// Shards not written yet, in order.
    pub fn missing_shards(&self) -> Vec<usize> {
        (0..self.shard_count())
            .filter(|s| !self.manifest.shards.contains_key(s))
            .collect()
    }

    /// Whether every shard is written.
    pub fn is_complete(&self) -> bool {
        self.manifest.shards.len() == self.shard_count()
    }

    /// Whether sample `i`'s shard is written.
    pub fn has_sample(&self, i: usize) -> bool {
        self.manifest
            .shards
            .contains_key(&(i / self.manifest.shard_samples))
    }

    /// Bytes of the shards written so far.
    pub fn bytes(&self) -> u64 {
        self.manifest.shards.values().map(|e| e.bytes).sum()
    }

    /// Bytes per sample of the written shards (0 when none is written).
    pub fn bytes_per_sample(&self) -> f64 {
        let samples: usize = self
            .manifest
            .shards
            .keys()
            .map(|&s| self.shard_range(s).len())
            .sum();
        if samples == 0 {
            0.0
        } else {
            self.bytes() as f64 / samples as f64
        }
    }

    /// Checks that `rows` fit the key: `n` rows of width `num_logits` (dense keys) or `top_k`
    /// (sparse keys, with indices `[n, k]` and `tail_logsumexp` `[n]`).
    fn check_rows(&self, rows: &SoftTargets, n: i64) -> Result<(), CacheError> {
        let key = &self.manifest.key;
        let want = key.rows_shape(n);
        let tail = key.tail_shape(n);
        match (key.top_k, rows) {
            (0, SoftTargets::Dense(v)) if v.size() == want => Ok(()),
            (0, SoftTargets::Dense(v)) => Err(CacheError::Rows(format!(
                "dense values {:?}, expected {want:?}",
                v.size()
            ))),
            (0, SoftTargets::Sparse { .. }) => Err(CacheError::Rows(
                "sparse (top-k) targets for a dense cache".into(),
            )),
            (_, SoftTargets::Dense(_)) => Err(CacheError::Rows(format!(
                "dense targets for a top-{} cache",
                key.top_k
            ))),
            (
                _,
                SoftTargets::Sparse {
                    indices,
                    values,
                    tail_logsumexp,
                },
            ) if values.size() == want
                && indices.size() == want
                && tail_logsumexp.size() == tail =>
            {
                Ok(())
            }
            (
                _,
                SoftTargets::Sparse {
                    indices,
                    values,
                    tail_logsumexp,
                },
            ) => Err(CacheError::Rows(format!(
                "sparse targets need values and indices {want:?} and tail_logsumexp {tail:?}, \
                 got {:?}, {:?} and {:?}",
                values.size(),
                indices.size(),
                tail_logsumexp.size()
            ))),
        }
    }

    /// Writes shard `s` from `rows` (exactly its samples, in order) and commits it to
    /// `cache.json` (see the module docs for the atomicity).
    ///
    /// # Errors
    /// [`CacheError::Rows`] for rows that do not fit; [`CacheError::Io`].
    pub fn write_shard(&mut self, s: usize, rows: &SoftTargets) -> Result<(), CacheError> {
        let range = self.shard_range(s);
        if s >= self.shard_count() {
            return Err(CacheError::Rows(format!(
                "shard {s} of a cache with {} shards",
                self.shard_count()
            )));
        }
        self.check_rows(rows, range.len() as i64)?;
        let named = match rows {
            SoftTargets::Dense(v) => vec![("values".to_string(), v.f_to_kind(self.kind)?)],
            SoftTargets::Sparse {
                indices,
                values,
                tail_logsumexp,
            } => vec![
                ("values".to_string(), values.f_to_kind(self.kind)?),
                ("indices".into(), indices.f_to_kind(Kind::Int)?),
                (
                    "tail_logsumexp".into(),
                    tail_logsumexp.f_to_kind(Kind::Float)?,
                ),
            ],
        };
        let bytes = serialize(&named)?;
        let entry = write_data_file(&self.dir, &format!("shard-{s:05}"), &bytes)?;
        self.manifest.shards.insert(s, entry);
        self.write_manifest()
    }

    fn write_manifest(&self) -> Result<(), CacheError> {
        let json = serde_json::to_string_pretty(&self.manifest).expect("manifest serialises");
        replace_file(&self.dir, CACHE_FILE, json.as_bytes())?;
        Ok(())
    }

    /// Adds the targets of samples `indices` (any order; rows of `rows` in the same order) to
    /// the shards being filled, and writes every shard that becomes complete. Samples whose shard
    /// is already written are ignored. For online filling during the first epoch; the rows of
    /// incomplete shards are held in memory.
    ///
    /// # Errors
    /// [`CacheError::Rows`] for rows that do not fit or an index outside the dataset;
    /// [`CacheError::Io`] from writing a shard.
    pub fn put(&mut self, indices: &[i64], rows: &SoftTargets) -> Result<(), CacheError> {
        self.check_rows(rows, indices.len() as i64)?;
        let rows = rows.to_device(Device::Cpu)?;
        let samples = self.manifest.key.samples;
        let size = self.manifest.shard_samples;
        let mut by_shard: BTreeMap<usize, (Vec<i64>, Vec<i64>)> = BTreeMap::new();
        for (pos, &i) in indices.iter().enumerate() {
            let i = usize::try_from(i)
                .ok()
                .filter(|&i| i < samples)
                .ok_or_else(|| {
                    CacheError::Rows(format!("sample {i} outside the dataset of {samples}"))
                })?;
            let s = i / size;
            if self.manifest.shards.contains_key(&s) {
                continue;
            }
            let e = by_shard.entry(s).or_default();
            e.0.push(pos as i64);
            e.1.push((i - s * size) as i64);
        }
        for (s, (pos, local)) in by_shard {
            let n = self.shard_range(s).len() as i64;
            let (shape, tail) = (
                self.manifest.key.rows_shape(n),
                self.manifest.key.tail_shape(n),
            );
            let sparse = self.manifest.key.top_k > 0;
            let fill = match self.filling.entry(s) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let zeros = |shape: &[i64], kind| Tensor::f_zeros(shape, (kind, Device::Cpu));
                    let rows = if sparse {
                        SoftTargets::Sparse {
                            indices: zeros(&shape, Kind::Int64)?,
                            values: zeros(&shape, Kind::Float)?,
                            tail_logsumexp: zeros(&tail, Kind::Float)?,
                        }
                    } else {
                        SoftTargets::Dense(zeros(&shape, Kind::Float)?)
                    };
                    v.insert(Filling {
                        rows,
                        have: vec![false; n as usize],
                        count: 0,
                    })
                }
            };
            let part = rows.select(&Tensor::from_slice(&pos))?;
            let dst = Tensor::from_slice(&local);
            let copy = |into: &mut Tensor, from: &Tensor| -> Result<(), tch::TchError> {
                *into = into.f_index_copy(0, &dst, &from.f_to_kind(into.kind())?)?;
                Ok(())
            };
            match (&mut fill.rows, &part) {
                (SoftTargets::Dense(a), SoftTargets::Dense(b)) => copy(a, b)?,
                (
                    SoftTargets::Sparse {
                        indices: ai,
                        values: av,
                        tail_logsumexp: at,
                    },
                    SoftTargets::Sparse {
                        indices: bi,
                        values: bv,
                        tail_logsumexp: bt,
                    },
                ) => {
                    copy(ai, bi)?;
                    copy(av, bv)?;
                    copy(at, bt)?;
                }
                _ => unreachable!("check_rows accepted rows of the cache's form"),
            }
            for &l in &local {
                let slot = &mut fill.have[l as usize];
                if !*slot {
                    *slot = true;
                    fill.count += 1;
                }
            }
            if fill.count == n as usize {
                let done = self.filling.remove(&s).expect("the shard being filled");
                self.write_shard(s, &done.rows)?;
            }
        }
        Ok(())
    }

    /// Reads and verifies every shard and returns the targets of all samples, in sample order,
    /// with `f32` values (converted from the stored wire dtype) on the CPU.
    ///
    /// # Errors
    /// [`CacheError::Incomplete`] when shards are missing; [`CacheError::Shard`] naming a shard
    /// that is missing on disk, truncated, altered or malformed.
    pub fn load_all(&self) -> Result<SoftTargets, CacheError> {
        let missing = self.missing_shards();
        if let Some(&first) = missing.first() {
            return Err(CacheError::Incomplete {
                dir: self.dir.clone(),
                missing: missing.len(),
                total: self.shard_count(),
                first,
            });
        }
        let parts = (0..self.shard_count())
            .map(|s| self.load_shard(s))
            .collect::<Result<Vec<_>, _>>()?;
        match SoftTargets::cat(&parts)? {
            Some(all) => Ok(all),
            None => Err(CacheError::Rows("the cache holds no samples".into())),
        }
    }

    /// Reads and verifies shard `s`.
    fn load_shard(&self, s: usize) -> Result<SoftTargets, CacheError> {
        let entry = &self.manifest.shards[&s];
        let bad = |reason: String| CacheError::Shard {
            dir: self.dir.clone(),
            shard: s,
            file: entry.name.clone(),
            reason,
        };
        let path = self.dir.join(&entry.name);
        let bytes = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
        if bytes.len() as u64 != entry.bytes {
            return Err(bad(format!(
                "{} bytes, cache.json promises {} (truncated?)",
                bytes.len(),
                entry.bytes
            )));
        }
        if sha256_hex(&bytes) != entry.sha256 {
            return Err(bad(format!(
                "SHA-256 differs from cache.json's {} (altered or damaged)",
                entry.sha256
            )));
        }
        let mut named: BTreeMap<String, Tensor> = tensors_from_bytes(&bytes, &path)
            .map_err(|e| bad(e.to_string()))?
            .into_iter()
            .collect();
        let mut take = |name: &str, kind: Kind| -> Result<Tensor, CacheError> {
            let t = named
                .remove(name)
                .ok_or_else(|| bad(format!("no `{name}` tensor")))?;
            if t.kind() != kind {
                return Err(bad(format!(
                    "`{name}` is {:?}, expected {kind:?}",
                    t.kind()
                )));
            }
            Ok(t)
        };
        let values = take("values", self.kind)?.f_to_kind(Kind::Float)?;
        let rows = if self.manifest.key.top_k > 0 {
            SoftTargets::Sparse {
                indices: take("indices", Kind::Int)?.f_to_kind(Kind::Int64)?,
                values,
                tail_logsumexp: take("tail_logsumexp", Kind::Float)?,
            }
        } else {
            SoftTargets::Dense(values)
        };
        if let Some(extra) = named.keys().next() {
            return Err(bad(format!("unexpected tensor `{extra}`")));
        }
        let n = self.shard_range(s).len() as i64;
        self.check_rows(&rows, n).map_err(|e| bad(e.to_string()))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("distill-cache-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn key(top_k: u32, samples: usize) -> CacheKey {
        CacheKey {
            teacher_fingerprint: "ab".repeat(32),
            teacher_precision: "f32".into(),
            wire: "bf16".into(),
            top_k,
            temperature: (top_k > 0).then_some(4.0),
            num_logits: 10,
            dataset_sha256: "cd".repeat(32),
            samples,
            positions: 0,
            tokenizer_fingerprint: String::new(),
            teacher_view: String::new(),
        }
    }

    /// Sparse rows of samples `idx`: values (exact in bf16) and tail derived from the sample
    /// number, so any mix-up of rows shows.
    fn rows_of(idx: &[i64], k: i64) -> SoftTargets {
        let i = Tensor::from_slice(idx).to_kind(Kind::Float).unsqueeze(1);
        let cols = Tensor::arange(k, (Kind::Float, Device::Cpu)).unsqueeze(0);
        SoftTargets::Sparse {
            values: &i * 2.0 - &cols,
            indices: (Tensor::from_slice(idx).unsqueeze(1) + cols.to_kind(Kind::Int64))
                .remainder(10),
            tail_logsumexp: Tensor::from_slice(idx).to_kind(Kind::Float) * 0.5,
        }
    }

    fn parts(t: &SoftTargets) -> (Tensor, Tensor, Tensor) {
        match t {
            SoftTargets::Sparse {
                indices,
                values,
                tail_logsumexp,
            } => (
                indices.shallow_clone(),
                values.shallow_clone(),
                tail_logsumexp.shallow_clone(),
            ),
            SoftTargets::Dense(_) => panic!("dense"),
        }
    }

    #[test]
    fn rows_put_in_any_order_come_back_in_sample_order_from_verified_shards() {
        let dir = tmp("roundtrip");
        let n = 10usize;
        let mut c = LogitCache::open_or_create(&dir, key(3, n), 4).unwrap();
        assert_eq!(c.shard_count(), 3);
        assert_eq!(c.missing_shards(), vec![0, 1, 2]);
        let order = [7i64, 2, 9, 0, 4, 1, 8, 3, 6, 5];
        for chunk in order.chunks(3) {
            c.put(chunk, &rows_of(chunk, 3)).unwrap();
        }
        assert!(c.is_complete());
        let again = LogitCache::open_or_create(&dir, key(3, n), 4).unwrap();
        let (i, v, t) = parts(&again.load_all().unwrap());
        let (wi, wv, wt) = parts(&rows_of(&(0..n as i64).collect::<Vec<_>>(), 3));
        assert!(i.equal(&wi) && v.equal(&wv) && t.equal(&wt));
        assert_eq!(v.kind(), Kind::Float);
        assert!(again.bytes_per_sample() > 0.0);
    }

    #[test]
    fn a_cache_of_another_key_is_refused_naming_each_difference() {
        let dir = tmp("mismatch");
        LogitCache::open_or_create(&dir, key(3, 10), 4).unwrap();
        let mut other = key(3, 10);
        other.teacher_fingerprint = "ef".repeat(32);
        other.top_k = 5;
        other.dataset_sha256 = "00".repeat(32);
        let e = LogitCache::open_or_create(&dir, other, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("teacher fingerprint"), "{e}");
        assert!(e.contains("--top-k: cache has 3, this run has 5"), "{e}");
        assert!(e.contains("dataset sha256"), "{e}");
        assert!(!e.contains("--wire"), "{e}");
    }

    #[test]
    fn an_incomplete_cache_and_a_damaged_shard_are_errors_naming_the_shard() {
        let dir = tmp("damaged");
        let mut c = LogitCache::open_or_create(&dir, key(3, 8), 4).unwrap();
        c.write_shard(0, &rows_of(&[0, 1, 2, 3], 3)).unwrap();
        let e = c.load_all().unwrap_err().to_string();
        assert!(e.contains("incomplete") && e.contains("shard 1"), "{e}");
        c.write_shard(1, &rows_of(&[4, 5, 6, 7], 3)).unwrap();
        c.load_all().unwrap();
        let file = c.manifest.shards[&1].name.clone();
        let path = dir.join(&file);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let e = c.load_all().unwrap_err().to_string();
        assert!(e.contains(&file) && e.contains("truncated"), "{e}");
        let mut flipped = bytes.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        std::fs::write(&path, &flipped).unwrap();
        let e = c.load_all().unwrap_err().to_string();
        assert!(e.contains(&file) && e.contains("SHA-256"), "{e}");
    }

    #[test]
    fn rows_that_do_not_fit_the_key_are_refused() {
        let dir = tmp("rows");
        let mut c = LogitCache::open_or_create(&dir, key(3, 8), 4).unwrap();
        let e = c
            .put(
                &[0, 1],
                &SoftTargets::Dense(Tensor::zeros([2, 10], (Kind::Float, Device::Cpu))),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("dense targets for a top-3 cache"), "{e}");
        let e = c
            .put(&[0, 1], &rows_of(&[0, 1], 4))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("indices [2, 3]") && e.contains("got [2, 4]"),
            "{e}"
        );
        let e = c.put(&[8], &rows_of(&[8], 3)).unwrap_err().to_string();
        assert!(e.contains("sample 8 outside the dataset of 8"), "{e}");
        assert!(c.put(&[0, 1], &rows_of(&[0, 1], 3)).is_ok());
    }

    #[test]
    fn dense_caches_store_whole_rows_in_the_wire_dtype() {
        let dir = tmp("dense");
        let mut k = key(0, 5);
        k.wire = "f16".into();
        let mut c = LogitCache::open_or_create(&dir, k, 8).unwrap();
        let v = Tensor::randn([5, 10], (Kind::Float, Device::Cpu));
        c.put(&[4, 3, 2, 1, 0], &SoftTargets::Dense(v.flip([0])))
            .unwrap();
        let SoftTargets::Dense(all) = c.load_all().unwrap() else {
            panic!("sparse")
        };
        assert!(all.equal(&v.to_kind(Kind::Half).to_kind(Kind::Float)));
        // 5 rows of 10 f16 = 100 bytes of data, plus the safetensors header.
        let per = c.bytes_per_sample();
        assert!((20.0..60.0).contains(&per), "{per}");
    }

    #[test]
    fn dataset_hash_depends_on_every_value_and_the_shape() {
        let a = Tensor::arange(24, (Kind::Float, Device::Cpu)).reshape([4, 6]);
        let h = dataset_sha256(&a).unwrap();
        assert_eq!(h, dataset_sha256(&a.copy()).unwrap());
        assert_ne!(h, dataset_sha256(&a.reshape([6, 4])).unwrap());
        let b = a.copy();
        let _ = b.get(3).get(5).fill_(0.5);
        assert_ne!(h, dataset_sha256(&b).unwrap());
    }

    #[test]
    fn per_position_targets_round_trip_and_keys_name_sequence_length_and_tokenizer() {
        let dir = tmp("positions");
        let mut k = key(3, 6);
        k.positions = 4;
        k.tokenizer_fingerprint = "ee".repeat(32);
        k.wire = "f32".into();
        let mut cache = LogitCache::open_or_create(&dir, k.clone(), 3).unwrap();
        // Sample i, position p, column c: value 100 i + 10 p + c; tail i + p / 10.
        let rows = |idx: &[i64]| {
            let i = Tensor::from_slice(idx)
                .to_kind(Kind::Float)
                .view([-1, 1, 1]);
            let p = Tensor::arange(4, (Kind::Float, Device::Cpu)).view([1, 4, 1]);
            let c = Tensor::arange(3, (Kind::Float, Device::Cpu)).view([1, 1, 3]);
            let values = &i * 100.0 + &p * 10.0 + &c;
            SoftTargets::Sparse {
                indices: values.to_kind(Kind::Int64).remainder(10),
                tail_logsumexp: (&i + &p / 10.0).squeeze_dim(-1),
                values,
            }
        };
        cache.put(&[5, 0, 3], &rows(&[5, 0, 3])).unwrap();
        cache.put(&[1, 4, 2], &rows(&[1, 4, 2])).unwrap();
        let all = cache.load_all().unwrap();
        let want = rows(&[0, 1, 2, 3, 4, 5]);
        match (&all, &want) {
            (
                SoftTargets::Sparse {
                    indices,
                    values,
                    tail_logsumexp,
                },
                SoftTargets::Sparse {
                    indices: wi,
                    values: wv,
                    tail_logsumexp: wt,
                },
            ) => {
                assert_eq!(values.size(), vec![6, 4, 3]);
                assert!(values.equal(wv) && indices.equal(wi) && tail_logsumexp.equal(wt));
            }
            _ => panic!("expected sparse targets"),
        }
        // Rows of one row per sample do not fit a per-position cache.
        let flat = rows_of(&[0], 3);
        assert!(
            cache
                .put(&[0], &flat)
                .unwrap_err()
                .to_string()
                .contains("[1, 4, 3]")
        );
        let mut other = k.clone();
        other.positions = 8;
        other.tokenizer_fingerprint = "ff".repeat(32);
        let why = LogitCache::open(&dir)
            .unwrap()
            .check_key(&other)
            .unwrap_err()
            .to_string();
        assert!(
            why.contains("sequence length") && why.contains("tokenizer fingerprint"),
            "{why}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
