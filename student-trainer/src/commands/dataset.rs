//! The data of a command: both splits of an IDX directory, an `.npz` file or a text corpus
//! (tokenized and packed), checked against each other, and the tokenizer kept beside a run.

use super::error::AppError;
use crate::data::{self, DataError, Dataset, Split, TextOptions};
use distill_models::{Arch, ArchSpec};
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

/// Both splits of the dataset in `dir` (a text corpus is tokenized and packed with `text`),
/// the training split cut to `limit` samples.
///
/// # Errors
/// [`AppError::Data`] for a missing or unreadable dataset, [`AppError::Text`] for a corpus that
/// cannot be tokenized, [`AppError::Mismatch`] for splits of different sample shapes.
pub(crate) fn load_data(
    dir: &Path,
    limit: Option<usize>,
    text: TextOptions,
) -> Result<Data, AppError> {
    if !dir.exists() {
        return Err(DataError::MissingFile {
            path: dir.to_path_buf(),
        }
        .into());
    }
    let (train, test, tokenizer) = if is_text_corpus(dir) {
        let (train, test, tok) = load_text(dir, text)?;
        (train, test, Some(tok))
    } else {
        (
            data::load(dir, Split::Train)?,
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
    })
}

/// Copies a text corpus's tokenizer into the run directory `out` as `tokenizer.json` (written
/// atomically), so that `teacher-server --model OUT` announces its fingerprint.
pub(crate) fn keep_tokenizer(data: &Data, out: &Path) -> Result<(), AppError> {
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
