//! The data of a command: both splits of an IDX directory, an `.npz` file or a text corpus
//! (GCIDE, or your own text files with the teacher's tokenizer; tokenized and packed), checked
//! against each other, and the tokenizer (with the corpus record) kept beside a run.

use super::error::AppError;
use crate::data::{self, DataError, Dataset, Split, TextOptions};
use distill_models::{Arch, ArchSpec};
use distill_text::{CorpusRecord, FilesSpec, RECORD_FILE};
use std::path::{Path, PathBuf};
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
