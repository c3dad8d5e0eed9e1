//! The data of a command: both splits of an IDX directory, an `.npz` file, a text corpus
//! (GCIDE, or your own text files with the teacher's tokenizer; tokenized and packed) or an image
//! folder, checked against each other, and the tokenizer (with the corpus record) kept beside a
//! run.
//!
//! An image folder is opened in two steps ([`Source`]): scanned first (classes, the student's
//! view: enough to build the student and to ask the teachers), then decoded once the teacher's
//! input shape is known ([`Source::load`]), on loader threads off the async runtime.

use super::error::AppError;
use super::views::Cut;
use crate::data::{self, DataError, Dataset, Split, TextOptions};
use crate::images::{
    self, Augment, Geometry, ImageFolder, ImageOptions, ImageRecord, Store, ViewSpec,
};
use distill_models::{Arch, ArchSpec};
use distill_text::{CorpusRecord, FilesSpec, RECORD_FILE};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// A run's two splits.
#[derive(Debug)]
pub(crate) struct Data {
    /// The training split (cut to `--limit`).
    pub(crate) train: Dataset,
    /// The test split.
    pub(crate) test: Dataset,
    /// The tokenizer file of a text corpus.
    pub(crate) tokenizer: Option<PathBuf>,
    /// How a corpus of text files was read and what it held (kept beside the checkpoint).
    pub(crate) corpus: Option<CorpusRecord>,
    /// An image folder's classes, views and stores (`None` for other data).
    pub(crate) images: Option<ImageRun>,
}

/// What a run keeps of an image folder besides the student's datasets.
#[derive(Debug)]
pub(crate) struct ImageRun {
    /// Class names, sorted (class index = position).
    pub(crate) classes: Vec<String>,
    /// The student's view (that of `Data::train` and `Data::test`).
    pub(crate) student: ViewSpec,
    /// The teacher's view, when it differs from the student's (another shape or
    /// normalization).
    pub(crate) teacher: Option<ViewSpec>,
    /// `--augment`.
    pub(crate) augment: Augment,
    /// The training images views are cut from per batch (teacher views, augmented crops).
    pub(crate) train_store: Option<Arc<Store>>,
    /// The test images, for the teacher's evaluation in its own view.
    pub(crate) test_store: Option<Arc<Store>>,
    /// Threads making each batch's views (`--loader-threads`).
    pub(crate) threads: usize,
}

impl ImageRun {
    /// What a checkpoint records: classes, the student's view, the augmentation.
    pub(crate) fn record(&self) -> ImageRecord {
        ImageRecord {
            classes: self.classes.clone(),
            view: self.student.clone(),
            augment: self.augment.to_string(),
        }
    }

    /// The view the teachers get of a training batch, when it is made per batch (another view
    /// than the student's dataset, or augmented crops), with the store it is cut from.
    pub(crate) fn teacher_feed(&self) -> Option<Cut> {
        if self.teacher.is_none() && !self.augment.any() {
            return None;
        }
        let view = self.teacher.clone().unwrap_or_else(|| self.student.clone());
        self.train_store.clone().map(|store| Cut {
            store,
            view,
            threads: self.threads,
        })
    }

    /// The teacher's view of the test split, when it differs from the student's, with its
    /// store.
    pub(crate) fn teacher_test(&self) -> Option<Cut> {
        let (view, store) = self.teacher.clone().zip(self.test_store.clone())?;
        Some(Cut {
            store,
            view,
            threads: self.threads,
        })
    }

    /// The teacher's view as the logit cache key records it: empty when the teacher gets the
    /// student's inputs (whose hash the key holds).
    pub(crate) fn teacher_view_key(&self) -> String {
        self.teacher
            .as_ref()
            .map(ViewSpec::describe)
            .unwrap_or_default()
    }
}

/// A command's data before the teachers are known: loaded (IDX, `.npz`, text), or an image
/// folder scanned and not yet decoded.
// One value per command, moved a few times: the size of its variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum Source {
    /// Both splits, loaded.
    Loaded(Data),
    /// An image folder: its files, the flags, the student's view, `--limit`.
    Images {
        folder: Box<ImageFolder>,
        opts: ImageOptions,
        student: ViewSpec,
        limit: Option<usize>,
    },
}

impl Source {
    /// The data in `dir`: an image folder is scanned (see [`Source::load`]); anything else is
    /// loaded as [`load_data`] does.
    ///
    /// # Errors
    /// As [`load_data`]; the [`images::ImageError`]s of scanning a folder; [`AppError::Mismatch`]
    /// when an image flag is given for data that is not an image folder.
    pub(crate) fn open(
        dir: &Path,
        limit: Option<usize>,
        text: &TextOptions,
        opts: &ImageOptions,
    ) -> Result<Source, AppError> {
        if !images::is_image_folder(dir) {
            if let Some(flag) = opts.any_given() {
                return Err(not_an_image_folder(flag, dir));
            }
            return Ok(Source::Loaded(load_data(dir, limit, text)?));
        }
        let folder = ImageFolder::open(dir, opts)?;
        let student = folder.student_view(opts)?;
        Ok(Source::Images {
            folder: Box::new(folder),
            opts: opts.clone(),
            student,
            limit,
        })
    }

    /// Whether this is an image folder (a teacher may then take another `[C, H, W]` view).
    pub(crate) fn is_images(&self) -> bool {
        matches!(self, Source::Images { .. })
    }

    /// The network `arch` for this data (as [`spec_for`]; an image folder's student view and
    /// its classes).
    pub(crate) fn spec(&self, arch: &Arch) -> ArchSpec {
        match self {
            Source::Loaded(data) => spec_for(arch, data),
            Source::Images {
                folder, student, ..
            } => ArchSpec {
                arch: arch.clone(),
                input_shape: student.shape(),
                num_classes: folder.classes().len() as i64,
            },
        }
    }

    /// The training split's kind: token sequences, with their tokenizer's fingerprint.
    pub(crate) fn tokens(&self) -> (bool, Option<String>) {
        match self {
            Source::Loaded(d) => (d.train.is_tokens(), d.train.tokenizer_fingerprint.clone()),
            Source::Images { .. } => (false, None),
        }
    }

    /// Both splits: loaded data as it is; an image folder decoded on its loader threads (off
    /// the async runtime) in the student's view, with a store of its images when views are cut
    /// per batch: for a teacher taking `teacher_shape` (its `ModelInfo`) that differs from the
    /// student's view, and for `--augment`.
    ///
    /// # Errors
    /// The [`images::ImageError`]s of the teacher's view (naming both shapes) and of decoding.
    pub(crate) async fn load(self, teacher_shape: Option<Vec<i64>>) -> Result<Data, AppError> {
        let (folder, opts, student, limit) = match self {
            Source::Loaded(data) => return Ok(data),
            Source::Images {
                folder,
                opts,
                student,
                limit,
            } => (folder, opts, student, limit),
        };
        let teacher = match &teacher_shape {
            Some(shape) => images::teacher_view(&student, shape, &opts)?,
            None => None,
        };
        let store: Option<Geometry> = (teacher.is_some() || opts.augment.any()).then(|| {
            let g = student.geometry;
            teacher.as_ref().map_or(g, |t| g.union(t.geometry))
        });
        let keep_test = teacher.is_some();
        let view = student.clone();
        let task = move || {
            folder
                .load(&opts, &view, store, keep_test, limit)
                .map(|d| (d, opts))
        };
        let (decoded, opts) = tokio::task::spawn_blocking(task)
            .await
            .map_err(|e| AppError::Mismatch(format!("image loader: {e}")))??;
        log_loaded(&decoded, &student, teacher.as_ref(), opts.threads());
        let run = ImageRun {
            classes: decoded.classes,
            student,
            teacher,
            augment: opts.augment,
            train_store: decoded.train_store.map(Arc::new),
            test_store: decoded.test_store.map(Arc::new),
            threads: opts.threads(),
        };
        Ok(Data {
            train: decoded.train,
            test: decoded.test,
            tokenizer: None,
            corpus: None,
            images: Some(run),
        })
    }
}

/// `flag` given for `dir`, which is not an image folder.
pub(crate) fn not_an_image_folder(flag: &str, dir: &Path) -> AppError {
    AppError::Mismatch(format!(
        "{flag} applies to image folders (--data-dir ROOT holding ROOT/train/CLASS/*.png|jpg|jpeg), \
         and {} is not one",
        dir.display()
    ))
}

/// The load line of an image folder: images decoded, the rate, and the memory its tensors
/// and stores take.
fn log_loaded(
    d: &images::ImageData,
    student: &ViewSpec,
    teacher: Option<&ViewSpec>,
    threads: usize,
) {
    let f32_bytes = 4 * (d.train.inputs.numel() + d.test.inputs.numel());
    let store_bytes = [&d.train_store, &d.test_store]
        .iter()
        .filter_map(|s| s.as_ref().map(|s| s.data.len()))
        .sum::<usize>();
    tracing::info!(
        classes = d.classes.len(), images = d.decoded, skipped = d.skipped,
        seconds = format!("{:.2}", d.seconds),
        images_per_s = format!("{:.0}", d.decoded as f64 / d.seconds.max(1e-9)),
        loader_threads = threads, student_view = %student.describe(),
        teacher_view = %teacher.map(ViewSpec::describe).unwrap_or_else(|| "the student's".into()),
        student_tensors_mb = format!("{:.1}", f32_bytes as f64 / 1e6),
        stores_mb = format!("{:.1}", store_bytes as f64 / 1e6),
        "image folder decoded"
    );
    if d.skipped > 0 {
        tracing::warn!(
            skipped = d.skipped,
            "--skip-bad-images: files that do not decode were skipped"
        );
    }
}

/// Whether `dir` is a text corpus directory (it holds the GCIDE's `gcide.dict.dz`).
pub(crate) fn is_text_corpus(dir: &Path) -> bool {
    dir.join("gcide.dict.dz").is_file()
}

/// Tokenizes (training the BPE tokenizer the first time) and packs the text corpus in `dir`
/// with `text`'s settings: both splits as language-model datasets, and the tokenizer file.
pub(crate) fn load_text(
    dir: &Path,
    text: TextOptions,
) -> Result<(Dataset, Dataset, PathBuf), AppError> {
    let t = Instant::now();
    let bpe_dir = dir.join(format!("bpe-{}", text.vocab_size));
    let p = distill_text::prepare(dir, &bpe_dir, text.vocab_size, text.seq_len)?;
    let seq = p.seq_len as i64;
    let vocab = p.vocab_size as i64;
    let split = |packed: &distill_text::Packed| {
        data::token_dataset_from_ids(
            dir,
            &packed.inputs,
            &packed.labels,
            seq,
            vocab,
            Some(p.fingerprint.clone()),
        )
    };
    let (train, test) = (split(&p.train)?, split(&p.test)?);
    tracing::info!(
        corpus = %dir.display(), tokenizer = %p.tokenizer_path.display(),
        fingerprint = %p.fingerprint, vocab, seq, trained_tokenizer = p.trained_tokenizer,
        load_s = format!("{:.1}", t.elapsed().as_secs_f64()), "text corpus tokenized and packed"
    );
    Ok((train, test, p.tokenizer_path))
}

/// Both splits of a corpus of text files, packed into `seq_len` windows, with the tokenizer
/// file and the corpus record. With `expected` (a checkpoint's record and its path), the files
/// must be those the record lists, checked before anything is tokenized.
pub(crate) fn load_text_files(
    dir: &Path,
    spec: &FilesSpec,
    seq_len: usize,
    expected: Option<(&CorpusRecord, &Path)>,
) -> Result<Data, AppError> {
    let t = Instant::now();
    let corpus = distill_text::TextCorpus::open(dir, spec)?;
    if let Some((record, path)) = expected {
        record.check_same(corpus.record(), path)?;
    }
    let p = corpus.prepare(seq_len)?;
    let (seq, vocab) = (p.seq_len as i64, p.tokenizer.vocab_size() as i64);
    let fingerprint = p.tokenizer.fingerprint().to_string();
    let split = |packed: &distill_text::Packed| {
        data::token_dataset_from_ids(
            dir,
            &packed.inputs,
            &packed.labels,
            seq,
            vocab,
            Some(fingerprint.clone()),
        )
    };
    let (train, test) = (split(&p.train)?, split(&p.test)?);
    tracing::info!(
        corpus = %dir.display(), tokenizer = %p.tokenizer.path().display(), %fingerprint,
        eos = p.tokenizer.eos_token(), vocab, seq, files = p.record.files.len(),
        rebuilt_caches = p.rebuilt_caches,
        load_s = format!("{:.1}", t.elapsed().as_secs_f64()), "text files tokenized and packed"
    );
    Ok(Data {
        train,
        test,
        tokenizer: Some(p.tokenizer.path().to_path_buf()),
        corpus: Some(p.record),
        images: None,
    })
}

/// Both splits of the dataset in `dir` (a text corpus is tokenized and packed with `text`),
/// the training split cut to `limit` samples.
///
/// # Errors
/// [`AppError::Data`] for a missing or unreadable dataset, [`AppError::Text`] for a corpus that
/// cannot be tokenized, [`AppError::Mismatch`] for splits of different sample shapes.
pub(crate) fn load_data(
    dir: &Path,
    limit: Option<usize>,
    text: &TextOptions,
) -> Result<Data, AppError> {
    if !dir.exists() {
        return Err(DataError::MissingFile {
            path: dir.to_path_buf(),
        }
        .into());
    }
    let mut corpus = None;
    let (train, test, tokenizer) = if let Some(spec) = text.files.spec() {
        let files = load_text_files(dir, &spec, text.seq_len, None)?;
        corpus = files.corpus;
        (files.train, files.test, files.tokenizer)
    } else if is_text_corpus(dir) {
        let (train, test, tok) = load_text(dir, text.clone())?;
        (train, test, Some(tok))
    } else {
        (
            data::load(dir, Split::Train).map_err(|e| text_files_hint(dir, e))?,
            data::load(dir, Split::Test)?,
            None,
        )
    };
    let train = match limit {
        Some(n) => train.limit(n),
        None => train,
    };
    if train.sample_shape() != test.sample_shape() {
        return Err(AppError::Mismatch(format!(
            "{}: train samples have shape {:?}, test samples {:?}",
            dir.display(),
            train.sample_shape(),
            test.sample_shape()
        )));
    }
    tracing::info!(
        data = %dir.display(), train = train.len(), test = test.len(),
        shape = ?train.sample_shape(), classes = train.num_classes, "data loaded"
    );
    Ok(Data {
        train,
        test,
        tokenizer,
        corpus,
        images: None,
    })
}

/// `e`, or, when `dir` holds `.txt`/`.jsonl` files, `e` with what reads them.
fn text_files_hint(dir: &Path, e: DataError) -> AppError {
    if dir.is_dir() && distill_text::has_text_files(dir) {
        AppError::Mismatch(format!(
            "{e}; {} holds .txt/.jsonl text files: give --tokenizer FILE (the teacher's \
             tokenizer.json) to read them",
            dir.display()
        ))
    } else {
        e.into()
    }
}

/// Copies a text corpus's tokenizer into the run directory `out` as `tokenizer.json` (written
/// atomically), so that `teacher-server --model OUT` announces its fingerprint; for text files
/// also the corpus record as `corpus.json`, so that `eval --checkpoint OUT` reads the same test
/// split (a record left by an earlier run on other data is removed).
pub(crate) fn keep_tokenizer(data: &Data, out: &Path) -> Result<(), AppError> {
    let record = out.join(RECORD_FILE);
    match &data.corpus {
        Some(corpus) => corpus.save(&record)?,
        None => match std::fs::remove_file(&record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(AppError::Io {
                    path: record,
                    source: e,
                });
            }
            _ => {}
        },
    }
    let Some(src) = &data.tokenizer else {
        return Ok(());
    };
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AppError::Io { path, source }
    };
    std::fs::create_dir_all(out).map_err(io(out))?;
    let bytes = std::fs::read(src).map_err(io(src))?;
    let dst = out.join("tokenizer.json");
    let tmp = out.join(".tokenizer.json.tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(&bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, &dst).map_err(io(&dst))
}

/// The network `arch` for `data`: its sample shape and classes (the larger of both splits').
pub(crate) fn spec_for(arch: &Arch, data: &Data) -> ArchSpec {
    ArchSpec {
        arch: arch.clone(),
        input_shape: data.train.sample_shape(),
        num_classes: data.train.num_classes.max(data.test.num_classes),
    }
}
