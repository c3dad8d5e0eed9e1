//! The one error type of `distill-text`.

use std::path::PathBuf;

/// Everything that can go wrong reading the corpus, training or loading the tokenizer, packing
/// sequences and reading or writing the token caches. Each message names what was expected and
/// what came, and the path involved.
#[derive(Debug, thiserror::Error)]
pub enum TextError {
    /// A corpus file (`gcide.dict.dz` or `gcide.index`) is not there.
    #[error(
        "corpus file {path} not found: run `make setup` (it fetches Debian's dict-gcide into data/gcide)"
    )]
    CorpusMissing {
        /// The missing file.
        path: PathBuf,
    },
    /// A corpus file is there but could not be read or decompressed.
    #[error("cannot read corpus file {path}: {source}")]
    CorpusRead {
        /// The file.
        path: PathBuf,
        /// The I/O or gzip error.
        source: std::io::Error,
    },
    /// The dictd index does not have the expected `headword TAB offset TAB length` form, or it
    /// points outside the data file.
    #[error("{path} line {line}: {message}")]
    CorpusFormat {
        /// The index file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was expected and what came.
        message: String,
    },
    /// The requested vocabulary cannot hold the 256 byte tokens and the special tokens.
    #[error(
        "vocab size {requested} is too small: expected at least {minimum} (256 byte-level tokens + {} special tokens)",
        minimum - 256
    )]
    VocabSizeTooSmall {
        /// What was asked for.
        requested: usize,
        /// The smallest valid size ([`crate::MIN_VOCAB_SIZE`]).
        minimum: usize,
    },
    /// BPE training ran out of pairs to merge before reaching the requested size.
    #[error(
        "BPE training learned only {learned} of the requested {requested} tokens: the corpus is too small for that vocabulary (use a smaller vocab size or more text)"
    )]
    VocabNotReached {
        /// What was asked for.
        requested: usize,
        /// What the trainer produced.
        learned: usize,
    },
    /// The sequence length is 0.
    #[error("sequence length must be at least 1, got {0}")]
    BadSeqLen(usize),
    /// The tokenizer file could not be read.
    #[error("cannot read tokenizer file {path}: {source}")]
    TokenizerRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The tokenizer file was read but is not a `tokenizer.json` the `tokenizers` crate loads, or
    /// it lacks a special token this crate needs.
    #[error("{path} is not a usable tokenizer.json: {message}")]
    TokenizerInvalid {
        /// The file (`<memory>` for a tokenizer trained in memory).
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
    /// An existing tokenizer has another vocabulary size than requested. It is not replaced
    /// silently: a teacher may have been trained with it.
    #[error(
        "{path} has a vocabulary of {found} tokens but {requested} were requested: delete it to train a new one, or ask for {found}"
    )]
    TokenizerVocabMismatch {
        /// The existing tokenizer file.
        path: PathBuf,
        /// Its vocabulary size (added tokens included).
        found: usize,
        /// The requested size.
        requested: usize,
    },
    /// Training, encoding or decoding inside the `tokenizers` crate failed.
    #[error("tokenizer {action} failed: {message}")]
    Tokenizers {
        /// `training`, `encoding`, `decoding` or `serialisation`.
        action: &'static str,
        /// The crate's message.
        message: String,
    },
    /// A token cache file is unreadable, truncated, corrupted or made for another tokenizer or
    /// corpus. [`crate::prepare`] rebuilds such a cache instead of returning this.
    #[error("token cache {path} is not valid: {reason}")]
    CacheInvalid {
        /// The cache file.
        path: PathBuf,
        /// What was expected and what came.
        reason: String,
    },
    /// Writing a file (tokenizer or cache) failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The destination.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A split has no text at all, so it has no sequence.
    #[error("the {split} split has {tokens} tokens: at least 2 are needed for one sequence")]
    EmptySplit {
        /// `train` or `test`.
        split: &'static str,
        /// Its token count.
        tokens: usize,
    },
    /// A tokenizer has none of the usual end-of-document tokens and none was named.
    #[error(
        "{path} has no end-of-document token: expected one of {} or --eos-token TOKEN; its special tokens are {special}",
        crate::pretrained::EOS_CANDIDATES.join(", ")
    )]
    NoEosToken {
        /// The tokenizer file.
        path: PathBuf,
        /// Its special tokens by id, comma-separated (`none` when it has none).
        special: String,
    },
    /// The end-of-document token named by `--eos-token` or `tokenizer_config.json` is not in
    /// the tokenizer's vocabulary.
    #[error(
        "{path} has no end-of-document token {token:?} (from {from}); its special tokens are {special}"
    )]
    EosNotInVocab {
        /// The tokenizer file.
        path: PathBuf,
        /// The token asked for.
        token: String,
        /// Who asked: `--eos-token` or `tokenizer_config.json`.
        from: String,
        /// Its special tokens by id, comma-separated (`none` when it has none).
        special: String,
    },
    /// A text file of the user's corpus is not what its extension says: a `.jsonl` line that is
    /// not a JSON object with the text field as a string, or a file that is not UTF-8.
    #[error("{path} line {line}: {message}")]
    TextFile {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was expected and what came.
        message: String,
    },
    /// A data directory (or `--test-data`) holds no `.txt` or `.jsonl` file.
    #[error(
        "{path} holds no .txt or .jsonl file (searched with its subfolders; names starting with '.' are skipped)"
    )]
    NoTextFiles {
        /// The directory or file given.
        path: PathBuf,
    },
    /// The text, or a flag, is not what a checkpoint's corpus record says it was trained on.
    #[error("{message}")]
    CheckpointCorpus {
        /// What differs, both values, and the record's path.
        message: String,
    },
    /// A corpus record (`corpus.json` beside a checkpoint) cannot be read or parsed.
    #[error("cannot use {path}: {message}")]
    RecordInvalid {
        /// The record file.
        path: PathBuf,
        /// What was wrong.
        message: String,
    },
}

/// `Result` with [`TextError`].
pub type Result<T> = std::result::Result<T, TextError>;
