//! Datasets: the IDX files of the MNIST family (Fashion-MNIST by default), NPZ files with
//! `inputs`/`labels` arrays for users' own data, normalisation, and a shuffle order that is a
//! pure function of `(seed, epoch)`.
//!
//! Everything is loaded into memory once: Fashion-MNIST's 60 000 training images are 188 MB as
//! `f32`, and batches are cut with [`Dataset::batch`] (an `index_select` on the sample axis).

use serde::{Deserialize, Serialize};
use std::io::Read;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// How a text corpus is tokenized and packed (`--seq-len`, `--vocab-size`, and the text-file
/// flags; used only when the data is one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextOptions {
    /// Tokens per sequence (≥ 2).
    pub seq_len: usize,
    /// Vocabulary size of the BPE tokenizer, in `MIN_VOCAB_SIZE..=65536`.
    pub vocab_size: usize,
    /// Your own text files read with the teacher's tokenizer (`--tokenizer` and the rest).
    pub files: distill_text::FilesOptions,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions {
            seq_len: 128,
            vocab_size: distill_text::DEFAULT_VOCAB_SIZE,
            files: distill_text::FilesOptions::default(),
        }
    }
}

/// Which half of a dataset to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split (`train-*` IDX files, or `NAME.npz`).
    Train,
    /// The test split (`t10k-*` IDX files, or `NAME_test.npz` beside `NAME.npz`).
    Test,
}

impl Split {
    /// File-name prefix of this split in the MNIST family (`train` or `t10k`).
    pub fn idx_prefix(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "t10k",
        }
    }
}

/// Per-pixel affine normalisation applied to `u8` inputs after scaling them to `[0, 1]`:
/// `x = (byte / 255 - mean) / std`.
///
/// Recorded with a checkpoint so evaluation and serving normalise exactly as training did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Mean subtracted after scaling to `[0, 1]`.
    pub mean: f64,
    /// Standard deviation divided by after subtracting the mean.
    pub std: f64,
}

impl Normalization {
    /// Fashion-MNIST training-set statistics (mean 0.2860, std 0.3530), as in the reference
    /// PyTorch loop (`scripts/reference/kd_pytorch.py`).
    pub const FASHION_MNIST: Normalization = Normalization {
        mean: 0.2860,
        std: 0.3530,
    };

    /// Turns raw bytes (any shape, `u8`) into normalised `f32`: `(x / 255 - mean) / std`.
    ///
    /// # Errors
    /// Libtorch errors (e.g. a tensor of an unsupported kind).
    pub fn apply_to_bytes(&self, bytes: &Tensor) -> Result<Tensor, tch::TchError> {
        bytes
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?
            .f_sub_scalar(self.mean)?
            .f_div_scalar(self.std)
    }
}

/// Errors while loading a dataset. Every message names the file concerned.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A file (or directory) the dataset needs does not exist.
    #[error(
        "dataset file not found: {path} (run `make setup` to install Fashion-MNIST, or pass \
         --data-dir pointing at a directory of IDX files or an .npz file)"
    )]
    MissingFile {
        /// The path looked for.
        path: PathBuf,
    },
    /// The file could not be read (permissions, corrupt gzip stream, ...).
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The IDX header's magic number is not the one expected for this file.
    #[error(
        "{path}: wrong magic number: expected {expected:#010x}, got {got:#010x} (not an IDX \
         file of the MNIST family, or images and labels swapped)"
    )]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// Expected magic (`0x00000803` for images, `0x00000801` for labels).
        expected: u32,
        /// The first four bytes of the file, big-endian.
        got: u32,
    },
    /// The file ends before the header's dimensions say it should.
    #[error("{path}: truncated file: expected {expected} bytes, got {got}")]
    Truncated {
        /// The file (after gzip decompression, if any).
        path: PathBuf,
        /// Bytes the header announces (header included).
        expected: u64,
        /// Bytes present.
        got: u64,
    },
    /// The images and labels files disagree on the number of samples.
    #[error("{images} holds {num_images} images but {labels} holds {num_labels} labels")]
    CountMismatch {
        /// The images file (or the `.npz` file).
        images: PathBuf,
        /// Number of images.
        num_images: i64,
        /// The labels file (or the `.npz` file).
        labels: PathBuf,
        /// Number of labels.
        num_labels: i64,
    },
    /// The training split holds no sample.
    #[error(
        "{path}: the training split is empty (0 samples): expected at least 1 sample to train on"
    )]
    EmptyTrainingSplit {
        /// The `.npz` file, or the IDX images file.
        path: PathBuf,
    },
    /// An NPZ file lacks a required array.
    #[error("{path}: missing array `{name}` (an .npz dataset needs `inputs` and `labels`)")]
    MissingArray {
        /// The `.npz` file.
        path: PathBuf,
        /// Name of the missing array.
        name: String,
    },
    /// The data is readable but not usable (wrong dtype, negative label, wrong rank, ...).
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The source is neither a directory nor an `.npz` file.
    #[error(
        "{path}: unsupported dataset source (expected a directory of MNIST-family IDX files or \
         an .npz file)"
    )]
    UnsupportedSource {
        /// The path given.
        path: PathBuf,
    },
    /// A libtorch error while reading or converting tensors.
    #[error("{path}: {source}")]
    Torch {
        /// The file concerned.
        path: PathBuf,
        /// The libtorch error.
        source: tch::TchError,
    },
}

/// The label of a position without a next token to predict (padding, the end of a text), as
/// PyTorch's `ignore_index` (-100): such positions count in no loss and no accuracy. The one
/// definition is the packer's, which writes these labels.
pub use distill_text::IGNORE_INDEX;

/// The largest number of classes a dataset may imply, and the largest vocabulary of token ids:
/// 2¹⁸ = 262,144. It is above the vocabularies of current language models (Gemma's 256,000,
/// Qwen2's 152,064, Llama 3's 128,256), above the 65,536 of this crate's own BPE tokenizer
/// (`--vocab-size`), and far above the label sets of classification datasets (ImageNet-21k's
/// 21,841). The number of classes is the largest label + 1 (the largest id + 1 for tokens without
/// a `vocab_size` array), and the network's output layer is sized by it: at the bound an `f32`
/// row of logits is 1 MiB and a 128-wide output layer 134 MB, where a single label of 10⁹ would
/// ask for 512 GB. A label or id at or above the bound is refused at load as implausible.
pub const MAX_CLASSES: i64 = 1 << 18;

/// An in-memory labelled dataset: images with class labels, or token sequences with their next
/// tokens (a language-model dataset).
#[derive(Debug)]
pub struct Dataset {
    /// Inputs, `f32` `[N, ...sample_shape]` (`[N, 1, 28, 28]` for Fashion-MNIST), normalised;
    /// or token ids `i64 [N, S]` for a language-model dataset.
    pub inputs: Tensor,
    /// Class labels, `i64` `[N]`, in `0..num_classes`; for token sequences `i64 [N, S]`, the
    /// next token of each position or [`IGNORE_INDEX`].
    pub labels: Tensor,
    /// Number of classes: the largest label + 1 (10 for Fashion-MNIST); the vocabulary size for
    /// token sequences.
    pub num_classes: i64,
    /// Hex SHA-256 of the tokenizer the token ids come from, when known (a student refuses a
    /// teacher with another tokenizer).
    pub tokenizer_fingerprint: Option<String>,
    /// Normalisation applied to raw bytes, `None` when the inputs were taken as they were
    /// (floating-point NPZ arrays). Store it with a checkpoint.
    pub normalization: Option<Normalization>,
}

impl Dataset {
    /// Number of samples `N`.
    pub fn len(&self) -> usize {
        self.labels.size().first().copied().unwrap_or(0).max(0) as usize
    }

    /// Whether the dataset holds no sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Shape of one input sample, e.g. `[1, 28, 28]` (`[S]` for token sequences).
    pub fn sample_shape(&self) -> Vec<i64> {
        self.inputs.size().into_iter().skip(1).collect()
    }

    /// Whether this is a language-model dataset: integer token ids `[N, S]` with labels per
    /// position.
    pub fn is_tokens(&self) -> bool {
        self.inputs.kind() == Kind::Int64 && self.inputs.dim() == 2 && self.labels.dim() == 2
    }

    /// The first `min(n, N)` samples (views sharing storage with `self`); `num_classes` and
    /// `normalization` are kept, so a limited training set still has the full class count.
    pub fn limit(&self, n: usize) -> Dataset {
        let n = n.min(self.len()) as i64;
        Dataset {
            inputs: self.inputs.narrow(0, 0, n),
            labels: self.labels.narrow(0, 0, n),
            num_classes: self.num_classes,
            tokenizer_fingerprint: self.tokenizer_fingerprint.clone(),
            normalization: self.normalization,
        }
    }

    /// The samples at `idx` (positions in `0..N`): inputs `f32` `[idx.len(), ...sample_shape]`
    /// and labels `i64` `[idx.len()]`, on the dataset's device (CPU as loaded).
    ///
    /// # Panics
    /// On an index outside `0..N` (libtorch raises); use [`Dataset::try_batch`] to get an error.
    pub fn batch(&self, idx: &[i64]) -> (Tensor, Tensor) {
        self.try_batch(idx)
            .expect("batch index out of range for the dataset")
    }

    /// Like [`Dataset::batch`], returning an error for an index outside `0..N`.
    ///
    /// # Errors
    /// Libtorch's index error.
    pub fn try_batch(&self, idx: &[i64]) -> Result<(Tensor, Tensor), tch::TchError> {
        let index = Tensor::from_slice(idx).f_to_device(self.inputs.device())?;
        Ok((
            self.inputs.f_index_select(0, &index)?,
            self.labels
                .f_index_select(0, &index.f_to_device(self.labels.device())?)?,
        ))
    }
}

/// Loads `split` from `source`: a directory → MNIST-family IDX files ([`load_idx_dir`]); a file
/// ending in `.npz` → [`load_npz`], where the test split of `NAME.npz` is `NAME_test.npz` beside
/// it.
///
/// # Errors
/// [`DataError::MissingFile`] if `source` (or the split's file) does not exist,
/// [`DataError::UnsupportedSource`] for any other kind of file,
/// [`DataError::EmptyTrainingSplit`] for a training split of 0 samples, and the errors of the
/// loaders.
pub fn load(source: &Path, split: Split) -> Result<Dataset, DataError> {
    if source.is_dir() {
        return load_idx_dir(source, split);
    }
    let is_npz = source
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npz"));
    if is_npz {
        let path = match split {
            Split::Train => source.to_path_buf(),
            Split::Test => npz_test_path(source),
        };
        let dataset = load_npz(&path)?;
        if split == Split::Train && dataset.is_empty() {
            return Err(DataError::EmptyTrainingSplit { path });
        }
        return Ok(dataset);
    }
    if !source.exists() {
        return Err(DataError::MissingFile {
            path: source.to_path_buf(),
        });
    }
    Err(DataError::UnsupportedSource {
        path: source.to_path_buf(),
    })
}

/// The test-split file of an NPZ dataset: `dir/NAME_test.npz` for `dir/NAME.npz`.
pub fn npz_test_path(train: &Path) -> PathBuf {
    let stem = train
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    train.with_file_name(format!("{stem}_test.npz"))
}

/// IDX magic of a `u8` images file (3 dimensions: count, rows, columns).
pub const IDX_IMAGES_MAGIC: u32 = 0x0000_0803;
/// IDX magic of a `u8` labels file (1 dimension: count).
pub const IDX_LABELS_MAGIC: u32 = 0x0000_0801;

/// Loads `split` from a directory of MNIST-family IDX files:
/// `{train,t10k}-images-idx3-ubyte[.gz]` and `{train,t10k}-labels-idx1-ubyte[.gz]` (gzip or raw;
/// the `.gz` name is tried first). Images become `f32` `[N, 1, rows, cols]`, normalised with
/// [`Normalization::FASHION_MNIST`]; labels `i64` `[N]`; `num_classes` = max label + 1.
///
/// # Errors
/// [`DataError::MissingFile`], [`DataError::BadMagic`], [`DataError::Truncated`],
/// [`DataError::CountMismatch`], [`DataError::Io`] (e.g. a corrupt gzip stream),
/// [`DataError::EmptyTrainingSplit`] for a training split of 0 images.
pub fn load_idx_dir(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    if !dir.is_dir() {
        return Err(DataError::MissingFile {
            path: dir.to_path_buf(),
        });
    }
    let prefix = split.idx_prefix();
    let images_path = find_idx(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find_idx(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&images_path, IDX_IMAGES_MAGIC)?;
    let labels = read_idx(&labels_path, IDX_LABELS_MAGIC)?;
    if images.dims[0] != labels.dims[0] {
        return Err(DataError::CountMismatch {
            images: images_path,
            num_images: images.dims[0],
            labels: labels_path,
            num_labels: labels.dims[0],
        });
    }
    let (n, rows, cols) = (images.dims[0], images.dims[1], images.dims[2]);
    if split == Split::Train && n == 0 {
        return Err(DataError::EmptyTrainingSplit { path: images_path });
    }
    let torch_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Torch { path, source }
    };
    let norm = Normalization::FASHION_MNIST;
    let bytes = Tensor::from_slice(&images.data)
        .f_view([n, 1, rows, cols])
        .map_err(torch_err(&images_path))?;
    let inputs = norm
        .apply_to_bytes(&bytes)
        .map_err(torch_err(&images_path))?;
    // `u8` labels: at most 256 classes, always within MAX_CLASSES; images are bytes, always
    // finite.
    let num_classes = labels
        .data
        .iter()
        .map(|&l| i64::from(l) + 1)
        .max()
        .unwrap_or(0);
    let labels = Tensor::from_slice(&labels.data)
        .f_to_kind(Kind::Int64)
        .map_err(torch_err(&labels_path))?;
    Ok(Dataset {
        inputs,
        labels,
        num_classes,
        tokenizer_fingerprint: None,
        normalization: Some(norm),
    })
}

/// `dir/NAME.gz` if it exists, else `dir/NAME`, else [`DataError::MissingFile`] for the `.gz`.
fn find_idx(dir: &Path, name: &str) -> Result<PathBuf, DataError> {
    let gz = dir.join(format!("{name}.gz"));
    if gz.is_file() {
        return Ok(gz);
    }
    let raw = dir.join(name);
    if raw.is_file() {
        return Ok(raw);
    }
    Err(DataError::MissingFile { path: gz })
}

/// A parsed IDX file of `u8` elements.
struct Idx {
    dims: Vec<i64>,
    data: Vec<u8>,
}

/// Reads an IDX file (gzip-compressed when its name ends in `.gz`) and checks its magic.
fn read_idx(path: &Path, magic: u32) -> Result<Idx, DataError> {
    let io_err = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            DataError::MissingFile {
                path: path.to_path_buf(),
            }
        } else {
            io_err(e)
        }
    })?;
    let mut bytes = Vec::new();
    let gz = path.extension().is_some_and(|e| e == "gz");
    if gz {
        flate2::read::GzDecoder::new(std::io::BufReader::new(file))
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
    } else {
        std::io::BufReader::new(file)
            .read_to_end(&mut bytes)
            .map_err(io_err)?;
    }
    let truncated = |expected: u64| DataError::Truncated {
        path: path.to_path_buf(),
        expected,
        got: bytes.len() as u64,
    };
    if bytes.len() < 4 {
        return Err(truncated(4));
    }
    let got = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    if got != magic {
        return Err(DataError::BadMagic {
            path: path.to_path_buf(),
            expected: magic,
            got,
        });
    }
    let ndim = (magic & 0xff) as usize;
    let header = 4 + 4 * ndim;
    if bytes.len() < header {
        return Err(truncated(header as u64));
    }
    let dims: Vec<i64> = (0..ndim)
        .map(|i| {
            let o = 4 + 4 * i;
            i64::from(u32::from_be_bytes([
                bytes[o],
                bytes[o + 1],
                bytes[o + 2],
                bytes[o + 3],
            ]))
        })
        .collect();
    let count: u64 = dims.iter().map(|&d| d as u64).product();
    let expected = header as u64 + count;
    if (bytes.len() as u64) < expected {
        return Err(truncated(expected));
    }
    bytes.truncate(expected as usize);
    bytes.drain(..header);
    Ok(Idx { dims, data: bytes })
}

/// Loads an NPZ dataset: array `inputs` `[N, ...sample_shape]` and array `labels` `[N]` (any
/// integer dtype, class indices in `0..`[`MAX_CLASSES`]). `u8` inputs are scaled by 1/255 and
/// normalised with [`Normalization::FASHION_MNIST`]; floating-point inputs are taken as they are
/// (converted to `f32`, and every value must be finite there). `num_classes` = max label + 1.
/// Arrays must be stored little-endian (numpy's default on x86 and ARM).
///
/// A language-model dataset holds token ids: `inputs` `int32/int64 [N, S]`, `labels` of the
/// same shape (the next token of each position, or [`IGNORE_INDEX`]), and optionally a scalar
/// `vocab_size` (otherwise the largest id + 1), at most [`MAX_CLASSES`].
///
/// # Errors
/// [`DataError::MissingFile`], [`DataError::MissingArray`], [`DataError::CountMismatch`],
/// [`DataError::Invalid`] (big-endian arrays; non-integer labels; a label or token id out of
/// range, naming the sample and the value; NaN, infinite or `f32`-overflowing inputs, naming
/// the first sample; integer inputs with class labels; other input dtypes; rank 0 arrays),
/// [`DataError::Torch`] for an unreadable archive.
pub fn load_npz(path: &Path) -> Result<Dataset, DataError> {
    if !path.is_file() {
        return Err(DataError::MissingFile {
            path: path.to_path_buf(),
        });
    }
    let mut arrays = Tensor::read_npz(path).map_err(|e| npz_read_error(path, e))?;
    let mut take = |name: &str| {
        arrays
            .iter()
            .position(|(n, _)| n == name)
            .map(|i| arrays.swap_remove(i).1)
            .ok_or_else(|| DataError::MissingArray {
                path: path.to_path_buf(),
                name: name.to_string(),
            })
    };
    let inputs = take("inputs")?;
    let labels = take("labels")?;
    let result = if matches!(inputs.kind(), Kind::Int | Kind::Int64) {
        if labels.dim() == 1 {
            return Err(DataError::Invalid {
                path: path.to_path_buf(),
                reason: integer_inputs_reason(&inputs, &labels),
            });
        }
        let vocab = take("vocab_size").ok();
        token_dataset(inputs, labels, vocab)
    } else {
        class_dataset(path, inputs, labels)
    };
    result.map_err(|e| e.at(path))
}

/// The error of reading the arrays of `path`: a big-endian array is named as such with the
/// dtype to store instead; anything else is [`DataError::Torch`].
fn npz_read_error(path: &Path, e: tch::TchError) -> DataError {
    // tch's reader refuses a `>` (big-endian) dtype with this wording.
    if let tch::TchError::FileFormat(msg) = &e
        && let Some(descr) = msg.strip_prefix("little-endian descr ")
    {
        let little = descr.replacen('>', "<", 1);
        return DataError::Invalid {
            path: path.to_path_buf(),
            reason: format!(
                "an array is stored big-endian (numpy dtype '{descr}'); only little-endian arrays \
                 are supported ('{little}'): save it as `a.astype('{little}')`"
            ),
        };
    }
    DataError::Torch {
        path: path.to_path_buf(),
        source: e,
    }
}

/// Why integer `inputs` with class `labels` `[N]` are refused: integer inputs are read as
/// token ids, which need `labels` per position. Names both readings and what to change.
fn integer_inputs_reason(inputs: &Tensor, labels: &Tensor) -> String {
    let (shape, dtype) = (inputs.size(), numpy_name(inputs.kind()));
    let images = match shape.as_slice() {
        [n, s] => match (1..=*s).find(|side| side * side >= *s) {
            Some(side) if side * side == *s => format!("e.g. [{n}, 1, {side}, {side}]"),
            _ => format!("e.g. [{n}, 1, H, W]"),
        },
        _ => "their shape kept".to_string(),
    };
    let tokens = match shape.as_slice() {
        [n, s] => format!(
            "as token ids they are {n} sequences of {s} tokens, which need next-token `labels` \
             [{n}, {s}] and a language-model student (--arch lm)"
        ),
        _ => "as token ids they would need `inputs` [N, S] and next-token `labels` [N, S]"
            .to_string(),
    };
    format!(
        "`inputs` {dtype} {shape:?} with class `labels` {:?} fit neither reading: \
         {tokens}; as images stored as integers, store `inputs` as float32 ({images}) or uint8 \
         (scaled by 1/255 and normalised as Fashion-MNIST)",
        labels.size()
    )
}

/// numpy's name of a tensor kind (`float32`, `int64`, ...), for messages.
fn numpy_name(kind: Kind) -> String {
    match kind {
        Kind::Uint8 => "uint8".into(),
        Kind::Int8 => "int8".into(),
        Kind::Int16 => "int16".into(),
        Kind::Int => "int32".into(),
        Kind::Int64 => "int64".into(),
        Kind::Half => "float16".into(),
        Kind::Float => "float32".into(),
        Kind::Double => "float64".into(),
        Kind::Bool => "bool".into(),
        k => format!("{k:?}"),
    }
}

/// An image (or any non-token) dataset of `inputs` `[N, ...]` (`u8` or floating point) and class
/// `labels` `[N]` (integers in `0..MAX_CLASSES`), as documented on [`load_npz`].
fn class_dataset(path: &Path, inputs: Tensor, labels: Tensor) -> Result<Dataset, ArrayError> {
    if inputs.dim() == 0 || labels.dim() != 1 {
        return Err(ArrayError::Invalid(format!(
            "`inputs` must be [N, ...] and `labels` [N]; got shapes {:?} and {:?}",
            inputs.size(),
            labels.size()
        )));
    }
    let (num_images, num_labels) = (inputs.size()[0], labels.size()[0]);
    if num_images != num_labels {
        return Err(ArrayError::Data(DataError::CountMismatch {
            images: path.to_path_buf(),
            num_images,
            labels: path.to_path_buf(),
            num_labels,
        }));
    }
    let (inputs, normalization) = match inputs.kind() {
        Kind::Uint8 => {
            let norm = Normalization::FASHION_MNIST;
            (norm.apply_to_bytes(&inputs)?, Some(norm))
        }
        Kind::Float | Kind::Double | Kind::Half | Kind::BFloat16 => {
            let converted = inputs.f_to_kind(Kind::Float)?;
            check_finite(&inputs, &converted)?;
            (converted, None)
        }
        k => {
            return Err(ArrayError::Invalid(format!(
                "`inputs` must be uint8 or floating point, got {k:?}"
            )));
        }
    };
    if !matches!(
        labels.kind(),
        Kind::Uint8 | Kind::Int8 | Kind::Int16 | Kind::Int | Kind::Int64
    ) {
        return Err(ArrayError::Invalid(format!(
            "`labels` must be an integer array, got {:?}",
            labels.kind()
        )));
    }
    let labels = labels.f_to_kind(Kind::Int64)?;
    let out_of_range = labels.f_lt(0)?.f_logical_or(&labels.f_ge(MAX_CLASSES)?)?;
    if let Some(i) = first_true(&out_of_range)? {
        return Err(ArrayError::Invalid(format!(
            "`labels` holds {} at sample {i}: expected a class index in 0..{MAX_CLASSES} (the \
             number of classes is the largest label + 1, at most {MAX_CLASSES})",
            labels.f_int64_value(&[i])?
        )));
    }
    let num_classes = if num_labels == 0 {
        0
    } else {
        labels.f_max()?.f_int64_value(&[])? + 1
    };
    Ok(Dataset {
        inputs,
        labels,
        num_classes,
        tokenizer_fingerprint: None,
        normalization,
    })
}

/// Checks that floating-point `inputs` (`[N, ...]`, as stored) are finite once `converted` to
/// `f32`: the error names how many are not, the first one's sample and element, and its value
/// (a finite value there overflowed `f32`).
fn check_finite(stored: &Tensor, converted: &Tensor) -> Result<(), ArrayError> {
    let bad = converted.f_isfinite()?.f_logical_not()?;
    let Some(flat) = first_true(&bad)? else {
        return Ok(());
    };
    let count = bad.f_sum(Kind::Int64)?.f_int64_value(&[])?;
    let value = stored.f_flatten(0, -1)?.f_double_value(&[flat])?;
    let shape = stored.size();
    let per_sample: i64 = shape[1..].iter().product();
    let (sample, mut rest) = (flat / per_sample.max(1), flat % per_sample.max(1));
    let mut element = vec![0; shape.len() - 1];
    for (e, &d) in element.iter_mut().zip(&shape[1..]).rev() {
        (*e, rest) = (rest % d, rest / d);
    }
    let what = if value.is_finite() {
        format!("{value:e}, beyond float32's range (±3.4e38),")
    } else {
        value.to_string()
    };
    Err(ArrayError::Invalid(format!(
        "`inputs` holds {count} value(s) that are not finite in float32, the first {what} at \
         sample {sample} (element {element:?} of each {:?} sample): expected finite numbers",
        &shape[1..]
    )))
}

/// Flat index (row-major) of the first `true` of `mask` (any shape), if any.
fn first_true(mask: &Tensor) -> Result<Option<i64>, tch::TchError> {
    let flat = mask.f_flatten(0, -1)?;
    if flat.numel() == 0 || flat.f_any()?.f_int64_value(&[])? == 0 {
        return Ok(None);
    }
    // argmax returns the first of equal maxima.
    Ok(Some(
        flat.f_to_kind(Kind::Uint8)?
            .f_argmax(0, false)?
            .f_int64_value(&[])?,
    ))
}

/// Why arrays do not make a dataset: a reason (the caller adds the file), another
/// [`DataError`], or libtorch's error.
#[derive(Debug)]
enum ArrayError {
    Invalid(String),
    Data(DataError),
    Torch(tch::TchError),
}

impl From<tch::TchError> for ArrayError {
    fn from(e: tch::TchError) -> Self {
        ArrayError::Torch(e)
    }
}

impl ArrayError {
    /// The [`DataError`] of this error in the file `path`.
    fn at(self, path: &Path) -> DataError {
        match self {
            ArrayError::Invalid(reason) => DataError::Invalid {
                path: path.to_path_buf(),
                reason,
            },
            ArrayError::Data(e) => e,
            ArrayError::Torch(source) => DataError::Torch {
                path: path.to_path_buf(),
                source,
            },
        }
    }
}

/// A language-model dataset of token ids `inputs` `[N, S]` and next-token `labels` `[N, S]`
/// ([`IGNORE_INDEX`] where there is none), vocabulary `vocab` (a scalar in `1..=MAX_CLASSES`;
/// default: largest id + 1, which must then be at most [`MAX_CLASSES`]). An id out of range is
/// named with its array, sample, position and value.
fn token_dataset(
    inputs: Tensor,
    labels: Tensor,
    vocab: Option<Tensor>,
) -> Result<Dataset, ArrayError> {
    let invalid = |r: String| ArrayError::Invalid(r);
    if inputs.dim() != 2 || labels.size() != inputs.size() {
        return Err(invalid(format!(
            "token `inputs` must be [N, S] and `labels` the same shape; got {:?} and {:?}",
            inputs.size(),
            labels.size()
        )));
    }
    let inputs = inputs.f_to_kind(Kind::Int64)?;
    let labels = labels.f_to_kind(Kind::Int64)?;
    let max_id = |t: &Tensor| -> Result<i64, tch::TchError> {
        Ok(if t.numel() == 0 {
            -1
        } else {
            t.f_max()?.f_int64_value(&[])?
        })
    };
    let vocab = match vocab {
        Some(v) => {
            let v = v
                .f_to_kind(Kind::Int64)?
                .f_flatten(0, -1)?
                .f_int64_value(&[0])?;
            if !(1..=MAX_CLASSES).contains(&v) {
                return Err(invalid(format!(
                    "`vocab_size` is {v}: expected 1 to {MAX_CLASSES} token ids"
                )));
            }
            v
        }
        None => (max_id(&inputs)?.max(max_id(&labels)?) + 1).min(MAX_CLASSES),
    };
    let seq = inputs.size()[1];
    for (name, ids, ignore) in [("inputs", &inputs, false), ("labels", &labels, true)] {
        let mut bad = ids.f_lt(0)?.f_logical_or(&ids.f_ge(vocab)?)?;
        if ignore {
            bad = bad.f_logical_and(&ids.f_ne(IGNORE_INDEX)?)?;
        }
        if let Some(flat) = first_true(&bad)? {
            let (n, s) = (flat / seq, flat % seq);
            return Err(invalid(format!(
                "token `{name}` hold {} at sample {n}, position {s}: expected ids in 0..{vocab}{} \
                 (the vocabulary is `vocab_size`, or the largest id + 1, at most {MAX_CLASSES})",
                ids.f_int64_value(&[n, s])?,
                if ignore {
                    format!(" or {IGNORE_INDEX} (no next token)")
                } else {
                    String::new()
                }
            )));
        }
    }
    Ok(Dataset {
        inputs,
        labels,
        num_classes: vocab,
        tokenizer_fingerprint: None,
        normalization: None,
    })
}

/// A language-model dataset from packed token ids: `inputs` and `labels` row-major `[n, seq]`
/// (`labels` the next token of each position, or [`IGNORE_INDEX`]), vocabulary `vocab`, from the
/// tokenizer whose file has SHA-256 `tokenizer_fingerprint`.
///
/// # Errors
/// [`DataError::Invalid`] (naming `source`) for lengths that are not `n · seq` or ids outside
/// the vocabulary.
pub fn token_dataset_from_ids(
    source: &Path,
    inputs: &[i64],
    labels: &[i64],
    seq: i64,
    vocab: i64,
    tokenizer_fingerprint: Option<String>,
) -> Result<Dataset, DataError> {
    let invalid = |reason: String| DataError::Invalid {
        path: source.to_path_buf(),
        reason,
    };
    if seq < 1 || inputs.len() != labels.len() || inputs.len() as i64 % seq != 0 {
        return Err(invalid(format!(
            "expected inputs and labels of n · {seq} token ids each, got {} and {}",
            inputs.len(),
            labels.len()
        )));
    }
    let n = inputs.len() as i64 / seq;
    let t = |v: &[i64]| Tensor::from_slice(v).view([n, seq]);
    let mut d =
        token_dataset(t(inputs), t(labels), Some(Tensor::from(vocab))).map_err(|e| e.at(source))?;
    d.tokenizer_fingerprint = tokenizer_fingerprint;
    Ok(d)
}

/// The order in which to visit `n` samples in `epoch`: a permutation of `0..n`, a pure function
/// of `(seed, epoch, n)`, so a resumed run needs no RNG state beyond the seed and the epoch.
///
/// Fisher–Yates shuffle (Knuth, TAOCP vol. 2, Algorithm 3.4.2 P) driven by SplitMix64
/// (Steele, Lea & Flood 2014) seeded with a mix of `seed` and `epoch`; bounded draws use
/// Lemire's multiply-and-reject method (2019), so the order is unbiased and does not change with
/// dependency upgrades.
pub fn epoch_permutation(seed: u64, epoch: u64, n: usize) -> Vec<i64> {
    let mut rng = SplitMix64(splitmix64_mix(
        splitmix64_mix(seed ^ 0x6a09_e667_f3bc_c908).wrapping_add(epoch),
    ));
    let mut perm: Vec<i64> = (0..n as i64).collect();
    for i in (1..n).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        perm.swap(i, j);
    }
    perm
}

/// SplitMix64's state increment (the golden-ratio constant `⌊2⁶⁴/φ⌋`, odd).
pub(crate) const SPLITMIX64_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's output function (a bijective 64-bit mixer; Steele, Lea & Flood 2014). The one
/// copy in the crate: [`epoch_permutation`] and [`crate::schedule::step_seed`] use it.
pub(crate) fn splitmix64_mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64 generator state.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(SPLITMIX64_GAMMA);
        splitmix64_mix(self.0)
    }

    /// Uniform in `0..bound` (`bound > 0`), Lemire's method.
    fn below(&mut self, bound: u64) -> u64 {
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(bound);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn tmp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("st-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut v = magic.to_be_bytes().to_vec();
        for d in dims {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    fn write(path: &Path, bytes: &[u8], gz: bool) {
        if gz {
            let f = std::fs::File::create(path).unwrap();
            let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap();
        } else {
            std::fs::write(path, bytes).unwrap();
        }
    }

    /// Three 2×2 images with pixel values 0..12 and labels [2, 0, 4].
    fn write_tiny(dir: &Path, prefix: &str, gz: bool) {
        let ext = if gz { ".gz" } else { "" };
        let pixels: Vec<u8> = (0..12).map(|i| i * 20).collect();
        write(
            &dir.join(format!("{prefix}-images-idx3-ubyte{ext}")),
            &idx_bytes(IDX_IMAGES_MAGIC, &[3, 2, 2], &pixels),
            gz,
        );
        write(
            &dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")),
            &idx_bytes(IDX_LABELS_MAGIC, &[3], &[2, 0, 4]),
            gz,
        );
    }

    fn check_tiny(ds: &Dataset) {
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.sample_shape(), vec![1, 2, 2]);
        assert_eq!(ds.inputs.kind(), Kind::Float);
        assert_eq!(ds.num_classes, 5);
        assert_eq!(Vec::<i64>::try_from(&ds.labels).unwrap(), vec![2, 0, 4]);
        let flat = Vec::<f32>::try_from(&ds.inputs.flatten(0, -1)).unwrap();
        for (i, v) in flat.iter().enumerate() {
            let want = ((i as f64 * 20.0 / 255.0 - 0.2860) / 0.3530) as f32;
            assert!((v - want).abs() < 1e-6, "pixel {i}: {v} vs {want}");
        }
        assert_eq!(ds.normalization, Some(Normalization::FASHION_MNIST));
    }

    #[test]
    fn idx_round_trip_gz_and_raw() {
        for gz in [true, false] {
            let dir = tmp_dir(&format!("rt{gz}"));
            write_tiny(&dir, "train", gz);
            write_tiny(&dir, "t10k", gz);
            check_tiny(&load_idx_dir(&dir, Split::Train).unwrap());
            check_tiny(&load(&dir, Split::Test).unwrap());
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn batch_limit_and_try_batch() {
        let dir = tmp_dir("batch");
        write_tiny(&dir, "train", false);
        let ds = load(&dir, Split::Train).unwrap();
        let (x, y) = ds.batch(&[2, 0]);
        assert_eq!(x.size(), vec![2, 1, 2, 2]);
        assert_eq!(Vec::<i64>::try_from(&y).unwrap(), vec![4, 2]);
        let first = ds.inputs.get(2);
        assert_eq!(f64::try_from((x.get(0) - first).abs().max()).unwrap(), 0.0);
        let e = ds.try_batch(&[3]).unwrap_err().to_string();
        assert!(e.contains("index out of range"), "{e}");
        let small = ds.limit(2);
        assert_eq!(small.len(), 2);
        assert_eq!(small.num_classes, 5);
        assert_eq!(ds.limit(100).len(), 3);
        assert!(ds.limit(0).is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_names_path_and_fix() {
        let dir = tmp_dir("missing");
        let err = load(&dir, Split::Train).unwrap_err();
        assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
        assert!(
            msg.contains("make setup") && msg.contains("--data-dir"),
            "{msg}"
        );
        let err = load(&dir.join("nope"), Split::Train).unwrap_err();
        assert!(matches!(err, DataError::MissingFile { .. }), "{err}");
        let err = load(&dir.join("nope.npz"), Split::Test).unwrap_err();
        assert!(err.to_string().contains("nope_test.npz"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wrong_magic_reports_expected_and_got() {
        let dir = tmp_dir("magic");
        write_tiny(&dir, "train", false);
        // Labels written where the images belong.
        write(
            &dir.join("train-images-idx3-ubyte"),
            &idx_bytes(IDX_LABELS_MAGIC, &[3], &[1, 2, 3]),
            false,
        );
        let err = load(&dir, Split::Train).unwrap_err();
        match &err {
            DataError::BadMagic { expected, got, .. } => {
                assert_eq!((*expected, *got), (IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC));
            }
            e => panic!("expected BadMagic, got {e}"),
        }
        let msg = err.to_string();
        assert!(
            msg.contains("0x00000803") && msg.contains("0x00000801"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn truncated_file_reports_sizes() {
        for gz in [true, false] {
            let dir = tmp_dir(&format!("trunc{gz}"));
            write_tiny(&dir, "train", gz);
            let ext = if gz { ".gz" } else { "" };
            let pixels = [0u8; 11]; // one pixel short of 3×2×2
            write(
                &dir.join(format!("train-images-idx3-ubyte{ext}")),
                &idx_bytes(IDX_IMAGES_MAGIC, &[3, 2, 2], &pixels),
                gz,
            );
            match load(&dir, Split::Train).unwrap_err() {
                DataError::Truncated { expected, got, .. } => {
                    assert_eq!((expected, got), (16 + 12, 16 + 11));
                }
                e => panic!("expected Truncated, got {e}"),
            }
            // A header cut short.
            write(
                &dir.join(format!("train-images-idx3-ubyte{ext}")),
                &[0, 0, 8, 3, 0, 0],
                gz,
            );
            match load(&dir, Split::Train).unwrap_err() {
                DataError::Truncated { expected, got, .. } => assert_eq!((expected, got), (16, 6)),
                e => panic!("expected Truncated, got {e}"),
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn count_mismatch_is_reported() {
        let dir = tmp_dir("count");
        write_tiny(&dir, "train", false);
        write(
            &dir.join("train-labels-idx1-ubyte"),
            &idx_bytes(IDX_LABELS_MAGIC, &[2], &[1, 2]),
            false,
        );
        let err = load(&dir, Split::Train).unwrap_err();
        assert!(
            matches!(
                err,
                DataError::CountMismatch {
                    num_images: 3,
                    num_labels: 2,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("3 images but"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn npz_u8_float_and_missing_array() {
        let dir = tmp_dir("npz");
        let path = dir.join("mine.npz");
        let inputs = Tensor::from_slice(&[0u8, 255, 51, 102]).view([2, 2]);
        let labels = Tensor::from_slice(&[1i32, 3]);
        Tensor::write_npz(&[("inputs", &inputs), ("labels", &labels)], &path).unwrap();
        let ds = load(&path, Split::Train).unwrap();
        assert_eq!(ds.len(), 2);
        assert_eq!(ds.sample_shape(), vec![2]);
        assert_eq!(ds.num_classes, 4);
        assert_eq!(ds.labels.kind(), Kind::Int64);
        let v = Vec::<f32>::try_from(&ds.inputs.flatten(0, -1)).unwrap();
        assert!((v[1] - ((1.0 - 0.2860) / 0.3530) as f32).abs() < 1e-6);

        let floats = Tensor::from_slice(&[0.5f64, -2.0, 3.0, 4.0]).view([2, 2]);
        let test_path = npz_test_path(&path);
        assert_eq!(test_path, dir.join("mine_test.npz"));
        Tensor::write_npz(&[("inputs", &floats), ("labels", &labels)], &test_path).unwrap();
        let ds = load(&path, Split::Test).unwrap();
        assert_eq!(ds.inputs.kind(), Kind::Float);
        assert_eq!(ds.normalization, None);
        assert_eq!(
            Vec::<f32>::try_from(&ds.inputs.flatten(0, -1)).unwrap(),
            vec![0.5, -2.0, 3.0, 4.0]
        );

        let bad = dir.join("bad.npz");
        Tensor::write_npz(&[("inputs", &inputs)], &bad).unwrap();
        let err = load(&bad, Split::Train).unwrap_err();
        assert!(
            matches!(&err, DataError::MissingArray { name, .. } if name == "labels"),
            "{err}"
        );
        let three = Tensor::from_slice(&[1i64, 2, 3]);
        Tensor::write_npz(&[("inputs", &inputs), ("labels", &three)], &bad).unwrap();
        let err = load(&bad, Split::Train).unwrap_err();
        assert!(matches!(err, DataError::CountMismatch { .. }), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Writes `arrays` to `dir/NAME.npz` and returns the error of loading its training split.
    fn npz_error(dir: &Path, name: &str, arrays: &[(&str, &Tensor)]) -> (PathBuf, String) {
        let path = dir.join(format!("{name}.npz"));
        Tensor::write_npz(arrays, &path).unwrap();
        let err = load(&path, Split::Train).unwrap_err().to_string();
        assert!(err.starts_with(&path.display().to_string()), "{err}");
        assert!(!err.contains('\n'), "{err}");
        (path, err)
    }

    #[test]
    fn an_empty_training_split_is_refused_naming_the_file() {
        let dir = tmp_dir("empty");
        let inputs = Tensor::zeros([0, 1, 28, 28], (Kind::Float, tch::Device::Cpu));
        let labels = Tensor::zeros([0], (Kind::Int64, tch::Device::Cpu));
        let (path, err) = npz_error(&dir, "none", &[("inputs", &inputs), ("labels", &labels)]);
        assert!(matches!(
            load(&path, Split::Train),
            Err(DataError::EmptyTrainingSplit { .. })
        ));
        assert!(err.contains("training split is empty (0 samples)"), "{err}");
        // An empty test split is loaded as it is.
        Tensor::write_npz(
            &[("inputs", &inputs), ("labels", &labels)],
            npz_test_path(&path),
        )
        .unwrap();
        assert!(load(&path, Split::Test).unwrap().is_empty());
        // The same for IDX files: the images file is named.
        write(
            &dir.join("train-images-idx3-ubyte"),
            &idx_bytes(IDX_IMAGES_MAGIC, &[0, 28, 28], &[]),
            false,
        );
        write(
            &dir.join("train-labels-idx1-ubyte"),
            &idx_bytes(IDX_LABELS_MAGIC, &[0], &[]),
            false,
        );
        let err = load(&dir, Split::Train).unwrap_err().to_string();
        assert!(
            err.contains("train-images-idx3-ubyte: the training split is empty"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn labels_out_of_range_name_the_sample_and_the_value() {
        let dir = tmp_dir("labels");
        let inputs = Tensor::zeros([3, 2], (Kind::Float, tch::Device::Cpu));
        let huge = Tensor::from_slice(&[1i64, 1_000_000_000, 2]);
        let (_, err) = npz_error(&dir, "huge", &[("inputs", &inputs), ("labels", &huge)]);
        assert!(
            err.contains("`labels` holds 1000000000 at sample 1")
                && err.contains("0..262144")
                && err.contains("largest label + 1"),
            "{err}"
        );
        let negative = Tensor::from_slice(&[1i32, 0, -1]);
        let (_, err) = npz_error(&dir, "neg", &[("inputs", &inputs), ("labels", &negative)]);
        assert!(err.contains("`labels` holds -1 at sample 2"), "{err}");
        // The bound itself is the largest number of classes accepted.
        let path = dir.join("edge.npz");
        let edge = Tensor::from_slice(&[0i64, MAX_CLASSES - 1, 2]);
        Tensor::write_npz(&[("inputs", &inputs), ("labels", &edge)], &path).unwrap();
        assert_eq!(load(&path, Split::Train).unwrap().num_classes, MAX_CLASSES);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn token_ids_out_of_range_name_the_sample_position_and_value() {
        let dir = tmp_dir("tokens");
        let ids = Tensor::from_slice(&[1i64, 2, 3, 4, 5, 6]).view([2, 3]);
        let big = Tensor::from_slice(&[1i64, 2, 3, 4, 1_000_000_000, 6]).view([2, 3]);
        let (_, err) = npz_error(&dir, "big", &[("inputs", &big), ("labels", &ids)]);
        assert!(
            err.contains("token `inputs` hold 1000000000 at sample 1, position 1")
                && err.contains("0..262144"),
            "{err}"
        );
        let labels = Tensor::from_slice(&[2i64, 3, -100, 5, -7, -100]).view([2, 3]);
        let (_, err) = npz_error(&dir, "neg", &[("inputs", &ids), ("labels", &labels)]);
        assert!(
            err.contains("token `labels` hold -7 at sample 1, position 1")
                && err.contains("or -100"),
            "{err}"
        );
        let vocab = Tensor::from(1_000_000_000i64);
        let (_, err) = npz_error(
            &dir,
            "vocab",
            &[("inputs", &ids), ("labels", &ids), ("vocab_size", &vocab)],
        );
        assert!(
            err.contains("`vocab_size` is 1000000000: expected 1 to 262144"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn non_finite_inputs_name_the_first_sample() {
        let dir = tmp_dir("nan");
        let labels = Tensor::from_slice(&[0i64, 1, 2]);
        let mut v = vec![0.5f32; 12];
        (v[7], v[9]) = (f32::NAN, f32::INFINITY);
        let inputs = Tensor::from_slice(&v).view([3, 1, 2, 2]);
        let (_, err) = npz_error(&dir, "nan", &[("inputs", &inputs), ("labels", &labels)]);
        assert!(
            err.contains("holds 2 value(s) that are not finite")
                && err.contains("the first NaN at sample 1 (element [0, 1, 1] of each [1, 2, 2]"),
            "{err}"
        );
        // float64 beyond float32's range overflows on conversion.
        let wide = Tensor::from_slice(&[0.0f64, 1.0, 1e300, 2.0]).view([2, 2]);
        let two = Tensor::from_slice(&[0i64, 1]);
        let (_, err) = npz_error(&dir, "wide", &[("inputs", &wide), ("labels", &two)]);
        assert!(
            err.contains("the first 1e300, beyond float32's range") && err.contains("sample 1"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_big_endian_array_says_what_was_found_and_what_is_supported() {
        let dir = tmp_dir("endian");
        let path = dir.join("be.npz");
        let inputs = Tensor::from_slice(&[0.5f32, 1.0]).view([2, 1]);
        let labels = Tensor::from_slice(&[0i64, 1]);
        Tensor::write_npz(&[("inputs", &inputs), ("labels", &labels)], &path).unwrap();
        // The archive is stored uncompressed: flip the byte order in the first array's header.
        let mut bytes = std::fs::read(&path).unwrap();
        let at = bytes
            .windows(5)
            .position(|w| w == b"'<f4'")
            .expect("an f32 npy header");
        bytes[at + 1] = b'>';
        std::fs::write(&path, bytes).unwrap();
        let err = load(&path, Split::Train).unwrap_err().to_string();
        assert!(
            err.contains("stored big-endian (numpy dtype '>f4')")
                && err.contains("only little-endian arrays are supported ('<f4')"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn integer_images_with_class_labels_name_both_readings() {
        let dir = tmp_dir("intimg");
        let inputs = Tensor::zeros([3, 784], (Kind::Int, tch::Device::Cpu));
        let labels = Tensor::from_slice(&[0i64, 1, 2]);
        let (_, err) = npz_error(&dir, "ints", &[("inputs", &inputs), ("labels", &labels)]);
        assert!(
            err.contains("`inputs` int32 [3, 784] with class `labels` [3] fit neither reading")
                && err.contains("3 sequences of 784 tokens")
                && err.contains("`labels` [3, 784]")
                && err.contains("--arch lm")
                && err.contains("store `inputs` as float32 (e.g. [3, 1, 28, 28])")
                && err.contains("uint8"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn permutation_is_deterministic_and_varies_by_epoch() {
        let a = epoch_permutation(42, 0, 1000);
        assert_eq!(a, epoch_permutation(42, 0, 1000));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..1000).collect::<Vec<i64>>());
        assert_ne!(a, (0..1000).collect::<Vec<i64>>());
        assert_ne!(a, epoch_permutation(42, 1, 1000));
        assert_ne!(a, epoch_permutation(43, 0, 1000));
        assert_ne!(epoch_permutation(0, 1, 1000), epoch_permutation(1, 0, 1000));
        assert!(epoch_permutation(1, 2, 0).is_empty());
        assert_eq!(epoch_permutation(1, 2, 1), vec![0]);
    }

    #[test]
    fn real_fashion_mnist_if_present() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/fashion-mnist");
        if !dir.join("train-images-idx3-ubyte.gz").is_file() {
            eprintln!("skipping: {} has no Fashion-MNIST", dir.display());
            return;
        }
        let train = load(&dir, Split::Train).unwrap();
        assert_eq!(train.len(), 60_000);
        assert_eq!(train.sample_shape(), vec![1, 28, 28]);
        assert_eq!(train.num_classes, 10);
        let mean = f64::try_from(train.inputs.mean(Kind::Float)).unwrap();
        assert!(mean.abs() < 0.01, "normalised mean {mean}");
        let test = load(&dir, Split::Test).unwrap();
        assert_eq!(test.len(), 10_000);
        assert_eq!(test.num_classes, 10);
    }
}
