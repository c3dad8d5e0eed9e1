//! The data of language-model distillation: a real English corpus, its tokenizer and packed
//! next-token sequences. No libtorch here: a student or teacher turns [`Packed`] into tensors.
//!
//! - **Corpus**: GCIDE, the Collaborative International Dictionary of English (GPL), from
//!   Debian's `dict-gcide` that `make setup` unpacks into `data/gcide`. One dictionary entry is
//!   one [`Document`] ([`read_gcide`]).
//! - **Split**: fixed and seed-independent: document `i` (in data-file order) is held out when
//!   `i % 20 == 0` ([`is_test_document`]), so train and test never share a document.
//! - **Tokenizer**: a byte-level BPE (GPT-2's scheme) trained on the train split with Hugging
//!   Face's `tokenizers` crate ([`BpeTokenizer`]), saved as `tokenizer.json`, which Python's
//!   `tokenizers` loads and encodes to the same ids. Its [`fingerprint`] is the SHA-256 of that
//!   file.
//! - **Packing**: documents joined by `<|endoftext|>`, cut into windows of S + 1 tokens:
//!   inputs and labels `i64 [N, S]`, labels shifted by one ([`pack`]).
//!
//! [`prepare`] does all of it and caches what it can in an output directory.
//!
//! The user's own text is the other way in: `.txt` and `.jsonl` files ([`Documents`]) tokenized
//! with the teacher's `tokenizer.json` ([`PretrainedTokenizer`]), split, cached and packed the
//! same way by [`prepare_files`] (see the `corpus` module's notes), with a [`CorpusRecord`] that
//! a checkpoint keeps.
//!
//! On-policy distillation reads its prompts (and reference completions) from a JSON-lines file
//! ([`read_prompts`]).

mod cache;
mod corpus;
mod error;
mod files;
mod gcide;
mod pack;
mod pretrained;
mod prompts;
mod tokenizer;

pub use corpus::{
    CACHE_DIR, CorpusRecord, DEFAULT_TEXT_FIELD, FileDigest, FilesOptions, FilesSpec,
    PreparedFiles, RECORD_FILE, TestSplit, TextCorpus, prepare_files,
};
pub use error::{Result, TextError};
pub use files::{Documents, has_text_files};
pub use gcide::{Document, GCIDE_DICT, GCIDE_INDEX, entry_to_text, read_gcide, split_entry};
pub use pack::{IGNORE_INDEX, Packed, pack, pack_stream, stream};
pub use pretrained::{EOS_CANDIDATES, PretrainedTokenizer};
pub use prompts::{PromptText, read_prompts};
pub use tokenizer::{
    BpeTokenizer, DEFAULT_VOCAB_SIZE, EOT_TOKEN, MIN_VOCAB_SIZE, PAD_TOKEN, SPECIAL_TOKENS,
    fingerprint,
};
pub use tokenizers;

use cache::{CacheKey, FORMAT_VERSION, read_cache, write_cache};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// One document in this many is held out: the test split is about 5 % of the corpus.
pub const TEST_EVERY: usize = 20;
/// The tokenizer's file name inside `prepare`'s output directory.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Whether document `index` (0-based, in corpus order) belongs to the held-out test split:
/// `index % TEST_EVERY == 0`. Fixed and seed-independent.
pub fn is_test_document(index: usize) -> bool {
    index.is_multiple_of(TEST_EVERY)
}

/// Splits documents into `(train, test)` by [`is_test_document`], keeping their order.
pub fn split_documents<T>(docs: Vec<T>) -> (Vec<T>, Vec<T>) {
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, d) in docs.into_iter().enumerate() {
        if is_test_document(i) {
            test.push(d)
        } else {
            train.push(d)
        }
    }
    (train, test)
}

/// The inverse of [`split_documents`]: one sequence whose item `i` comes from `test` when
/// [`is_test_document`]`(i)` and from `train` otherwise, each in its order, ending where the
/// split it needs next runs out. A file written in this order and split again by line (as
/// `distill --prompts` holds out one line in 20) gives back `test`'s items as its held-out lines.
pub fn merge_split<T>(train: Vec<T>, test: Vec<T>) -> Vec<T> {
    let (mut train, mut test) = (train.into_iter(), test.into_iter());
    let mut out = Vec::new();
    loop {
        let next = if is_test_document(out.len()) {
            test.next()
        } else {
            train.next()
        };
        match next {
            Some(item) => out.push(item),
            None => return out,
        }
    }
}

/// What [`prepare`] made or found.
#[derive(Debug)]
pub struct Prepared {
    /// `out_dir/tokenizer.json`.
    pub tokenizer_path: PathBuf,
    /// Hex SHA-256 of that file ([`fingerprint`]).
    pub fingerprint: String,
    /// The tokenizer.
    pub tokenizer: BpeTokenizer,
    /// Vocabulary size, special tokens included (the model's number of logits).
    pub vocab_size: usize,
    /// S, the sequence length of `train` and `test`.
    pub seq_len: usize,
    /// The training sequences, `i64 [N_train, S]`.
    pub train: Packed,
    /// The held-out sequences, `i64 [N_test, S]`.
    pub test: Packed,
    /// Whether the tokenizer was trained now (false: an existing one was reused).
    pub trained_tokenizer: bool,
    /// How many of the two token caches were (re)built now: 0 when both were valid and reused.
    pub rebuilt_caches: usize,
}

/// SHA-256 over the two corpus files, so that token caches follow a change of corpus.
fn corpus_fingerprint(corpus_dir: &Path) -> Result<String> {
    let (dict, index) = gcide::corpus_files(corpus_dir)?;
    let mut h = Sha256::new();
    for p in [&index, &dict] {
        let bytes = std::fs::read(p).map_err(|source| TextError::CorpusRead {
            path: p.clone(),
            source,
        })?;
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(hex::encode(h.finalize()))
}

/// The corpus and its split, read once on first use.
struct LazyCorpus<'a> {
    dir: &'a Path,
    split: Option<(Vec<Document>, Vec<Document>)>,
}

impl LazyCorpus<'_> {
    fn get(&mut self) -> Result<&(Vec<Document>, Vec<Document>)> {
        if self.split.is_none() {
            self.split = Some(split_documents(read_gcide(self.dir)?));
        }
        Ok(self.split.as_ref().expect("just set"))
    }
}

/// Builds or reuses everything a language-model run needs from the GCIDE in `corpus_dir`:
///
/// 1. `out_dir/tokenizer.json`: reused when it exists (it must load and have `vocab_size`
///    tokens), else a byte-level BPE of `vocab_size` tokens is trained on the train split and
///    written atomically.
/// 2. `out_dir/tokens-train.bin` and `tokens-test.bin`: each split's token stream (documents
///    followed by `<|endoftext|>`), reused when its header matches the tokenizer fingerprint, the
///    corpus files' SHA-256, the vocabulary size and the format version and its payload checksum
///    is right; otherwise encoded again and written atomically. The streams do not depend on S.
/// 3. Both streams packed into sequences of `seq_len` ([`pack_stream`]).
///
/// Errors: [`TextError::VocabSizeTooSmall`], [`TextError::BadSeqLen`],
/// [`TextError::CorpusMissing`] (naming the file and `make setup`) and the other corpus errors,
/// [`TextError::TokenizerVocabMismatch`] or [`TextError::TokenizerInvalid`] for an existing
/// tokenizer that cannot be reused (it is never replaced silently), [`TextError::VocabNotReached`],
/// [`TextError::Write`], [`TextError::EmptySplit`]. An invalid cache is not an error: it is rebuilt.
pub fn prepare(
    corpus_dir: &Path,
    out_dir: &Path,
    vocab_size: usize,
    seq_len: usize,
) -> Result<Prepared> {
    if vocab_size < MIN_VOCAB_SIZE {
        return Err(TextError::VocabSizeTooSmall {
            requested: vocab_size,
            minimum: MIN_VOCAB_SIZE,
        });
    }
    if seq_len == 0 {
        return Err(TextError::BadSeqLen(seq_len));
    }
    let corpus_fingerprint = corpus_fingerprint(corpus_dir)?;
    let mut corpus = LazyCorpus {
        dir: corpus_dir,
        split: None,
    };

    let tokenizer_path = out_dir.join(TOKENIZER_FILE);
    let trained_tokenizer = !tokenizer_path.exists();
    let tokenizer = if trained_tokenizer {
        let (train, _) = corpus.get()?;
        let t = BpeTokenizer::train(train.iter().map(|d| d.text.as_str()), vocab_size)?;
        t.save(&tokenizer_path)?;
        t
    } else {
        let t = BpeTokenizer::load(&tokenizer_path)?;
        if t.vocab_size() != vocab_size {
            return Err(TextError::TokenizerVocabMismatch {
                path: tokenizer_path,
                found: t.vocab_size(),
                requested: vocab_size,
            });
        }
        t
    };

    let mut rebuilt_caches = 0;
    let mut packed = Vec::with_capacity(2);
    for (split, is_test) in [("train", false), ("test", true)] {
        let key = CacheKey {
            format_version: FORMAT_VERSION,
            split: split.to_string(),
            tokenizer_fingerprint: tokenizer.fingerprint().to_string(),
            corpus_fingerprint: corpus_fingerprint.clone(),
            vocab_size,
        };
        let path = out_dir.join(format!("tokens-{split}.bin"));
        let tokens = match read_cache(&path, &key) {
            Ok(tokens) => tokens,
            Err(_) => {
                let (train, test) = corpus.get()?;
                let docs = if is_test { test } else { train };
                let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
                let tokens = stream(&tokenizer.encode_batch(&texts)?, tokenizer.eot_id());
                write_cache(&path, &key, &tokens, docs.len())?;
                rebuilt_caches += 1;
                tokens
            }
        };
        let p = pack_stream(&tokens, seq_len, tokenizer.pad_id())?;
        if p.num_sequences == 0 {
            return Err(TextError::EmptySplit {
                split,
                tokens: tokens.len(),
            });
        }
        packed.push(p);
    }
    let test = packed.pop().expect("two splits");
    let train = packed.pop().expect("two splits");
    Ok(Prepared {
        fingerprint: tokenizer.fingerprint().to_string(),
        tokenizer_path,
        vocab_size,
        seq_len,
        train,
        test,
        tokenizer,
        trained_tokenizer,
        rebuilt_caches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_split_puts_the_test_items_where_split_documents_takes_them() {
        let train: Vec<String> = (0..40).map(|i| format!("train {i}")).collect();
        let test: Vec<String> = (0..5).map(|i| format!("test {i}")).collect();
        let merged = merge_split(train.clone(), test.clone());
        // Lines 0, 20 and 40 take test items; the 40 train items fill lines 1-19, 21-39, 41
        // and 42, and the merge ends at line 43, where train has none left.
        assert_eq!(merged[0], "test 0");
        assert_eq!(merged[1], "train 0");
        assert_eq!(merged[20], "test 1");
        assert_eq!(merged[40], "test 2");
        assert_eq!(merged.len(), 43);
        let (tr, te) = split_documents(merged);
        assert_eq!(te, test[..3]);
        assert_eq!(tr, train);
        // Too few test items: the merge stops at the first test line it cannot fill.
        let merged = merge_split(train.clone(), vec!["t".to_string()]);
        assert_eq!(merged.len(), 20);
    }
}
