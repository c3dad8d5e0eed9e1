//! A corpus of the user's text files tokenized with the teacher's tokenizer: the held-out
//! split, the verified token caches, packing, and the record a checkpoint keeps so that its
//! evaluation reads the same test split.
//!
//! - **Split**, by document: with `--test-every N` (default [`crate::TEST_EVERY`], as GCIDE),
//!   document `i` of the whole corpus (files in sorted order, documents in file order) is held
//!   out when `i % N == 0`; with `--test-data FILE|DIR` every document of the data directory
//!   trains and those of the test files are held out (test files inside the data directory are
//!   left out of training).
//! - **Stream**: every document's ids followed by the end-of-document token, then packed into
//!   windows of S + 1 tokens ([`crate::pack_stream`]); the short last window is padded with the
//!   end-of-document id, its labels [`crate::IGNORE_INDEX`].
//! - **Cache**: each split's stream in `.distill-cache/tokens-FP-SPLIT.bin` inside the data
//!   directory (FP: the first 12 hex digits of the tokenizer fingerprint), reused only when its
//!   header holds the same tokenizer fingerprint, vocabulary size and corpus fingerprint (the
//!   SHA-256 over the documents mode, text field, end-of-document id, split rule and every
//!   file's path and SHA-256) and its payload checksum is right; written atomically. The streams
//!   do not depend on S, so another `--seq-len` reuses them.

use crate::cache::{CacheKey, FORMAT_VERSION, read_cache, write_cache};
use crate::error::{Result, TextError};
use crate::files::{Documents, SourceFile, documents, read_text_files};
use crate::pack::{Packed, pack_stream, stream};
use crate::pretrained::PretrainedTokenizer;
use crate::tokenizer::{sha256_hex, write_atomic};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `.jsonl` field read when `--text-field` is not given (Hugging Face `datasets`' default).
pub const DEFAULT_TEXT_FIELD: &str = "text";
/// The folder, inside the data directory, that holds the token caches.
pub const CACHE_DIR: &str = ".distill-cache";
/// The record's file name beside a checkpoint.
pub const RECORD_FILE: &str = "corpus.json";
/// Bumped whenever reading, splitting or encoding text files changes what a stream holds.
const READER_VERSION: u32 = 1;

/// Which documents are held out for the test split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestSplit {
    /// Document `i` of the corpus is held out when `i % N == 0` (N ≥ 2).
    Every(usize),
    /// The documents of these text files (a `.txt`/`.jsonl` file or a directory of them).
    Data(PathBuf),
}

/// How to read a corpus of text files: all settled, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesSpec {
    /// The teacher's `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// How `.txt` files are cut into documents.
    pub documents: Documents,
    /// The field of a `.jsonl` object that holds the text.
    pub text_field: String,
    /// The end-of-document token; `None`: found in the tokenizer ([`PretrainedTokenizer::load`]).
    pub eos_token: Option<String>,
    /// The held-out split.
    pub test: TestSplit,
}

/// The text-file settings as asked for (the flags), each optional: the tokenizer turns the
/// text-files reader on, the others default when absent ([`FilesOptions::spec`]) or, for a
/// checkpoint's evaluation, come from its record ([`FilesOptions::spec_from_record`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilesOptions {
    /// `--tokenizer FILE`.
    pub tokenizer: Option<PathBuf>,
    /// `--documents`.
    pub documents: Option<Documents>,
    /// `--text-field`.
    pub text_field: Option<String>,
    /// `--eos-token`.
    pub eos_token: Option<String>,
    /// `--test-every N`.
    pub test_every: Option<usize>,
    /// `--test-data FILE|DIR`.
    pub test_data: Option<PathBuf>,
}

impl FilesOptions {
    /// The settings with defaults (`file` documents, field `text`, the tokenizer's own
    /// end-of-document token, every 20th document held out); `None` without a tokenizer.
    pub fn spec(&self) -> Option<FilesSpec> {
        Some(FilesSpec {
            tokenizer: self.tokenizer.clone()?,
            documents: self.documents.unwrap_or(Documents::File),
            text_field: self
                .text_field
                .clone()
                .unwrap_or_else(|| DEFAULT_TEXT_FIELD.into()),
            eos_token: self.eos_token.clone(),
            test: match &self.test_data {
                Some(p) => TestSplit::Data(p.clone()),
                None => TestSplit::Every(self.test_every.unwrap_or(crate::TEST_EVERY)),
            },
        })
    }

    /// The settings a checkpoint was trained with (its `record`, read from `record_path`),
    /// reading with `tokenizer` (the one kept beside it). A flag that was given must say what
    /// the record says.
    ///
    /// Errors: [`TextError::CheckpointCorpus`] naming the flag, both values and the record;
    /// [`TextError::TokenizerRead`] for an unreadable `--tokenizer`.
    pub fn spec_from_record(
        &self,
        record: &CorpusRecord,
        record_path: &Path,
        tokenizer: &Path,
    ) -> Result<FilesSpec> {
        let differs =
            |flag: &str, given: &dyn std::fmt::Display, recorded: &dyn std::fmt::Display| {
                TextError::CheckpointCorpus {
                    message: format!(
                        "{flag} {given} differs from the checkpoint's {recorded} (recorded in {}): \
                     drop the flag or give the same",
                        record_path.display()
                    ),
                }
            };
        if let Some(t) = &self.tokenizer {
            let fp = crate::fingerprint(t)?;
            if fp != record.tokenizer_fingerprint {
                return Err(differs(
                    "--tokenizer",
                    &format!("{} (fingerprint {fp})", t.display()),
                    &format!("tokenizer (fingerprint {})", record.tokenizer_fingerprint),
                ));
            }
        }
        if let Some(d) = self.documents.filter(|d| *d != record.documents) {
            return Err(differs("--documents", &d, &record.documents));
        }
        if let Some(f) = self
            .text_field
            .as_ref()
            .filter(|f| **f != record.text_field)
        {
            return Err(differs(
                "--text-field",
                &format!("{f:?}"),
                &format!("{:?}", record.text_field),
            ));
        }
        if let Some(e) = self.eos_token.as_ref().filter(|e| **e != record.eos_token) {
            return Err(differs(
                "--eos-token",
                &format!("{e:?}"),
                &format!("{:?}", record.eos_token),
            ));
        }
        let recorded = record.test_rule();
        let given = match (&self.test_data, self.test_every) {
            (Some(p), _) => Some(format!("--test-data {}", absolute(p).display())),
            (None, Some(n)) => Some(format!("--test-every {n}")),
            (None, None) => None,
        };
        if let Some(given) = given.filter(|g| *g != recorded) {
            let (flag, value) = given.split_once(' ').expect("flag and value");
            return Err(differs(flag, &value, &recorded));
        }
        Ok(FilesSpec {
            tokenizer: tokenizer.to_path_buf(),
            documents: record.documents,
            text_field: record.text_field.clone(),
            eos_token: Some(record.eos_token.clone()),
            test: match (&record.test_data, record.test_every) {
                (Some(p), _) => TestSplit::Data(p.clone()),
                (None, n) => TestSplit::Every(n.unwrap_or(crate::TEST_EVERY)),
            },
        })
    }
}

/// `p` made absolute (canonical when it exists), so that a record names it from anywhere.
fn absolute(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    })
}

/// One file of a corpus in its record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// `data` (a file of the data directory) or `test` (of `--test-data`).
    pub role: String,
    /// Its `/`-separated path relative to the directory given.
    pub path: String,
    /// Hex SHA-256 of its bytes.
    pub sha256: String,
}

/// How a corpus of text files was read, and what it held: written beside a checkpoint as
/// [`RECORD_FILE`] so that `eval` reads the same test split and refuses other text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CorpusRecord {
    /// Hex SHA-256 of the `tokenizer.json`.
    pub tokenizer_fingerprint: String,
    /// The end-of-document token.
    pub eos_token: String,
    /// How `.txt` files were cut into documents.
    pub documents: Documents,
    /// The `.jsonl` text field.
    pub text_field: String,
    /// `--test-every N`, when the split was by document index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_every: Option<usize>,
    /// `--test-data`, absolute, when the test split came from other files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_data: Option<PathBuf>,
    /// Every file read, in reading order.
    pub files: Vec<FileDigest>,
    /// Hex SHA-256 over the reader version, documents mode, text field, end-of-document id,
    /// split rule and the files: what the token caches are keyed on besides the tokenizer.
    pub corpus_fingerprint: String,
}

impl CorpusRecord {
    /// `--test-every N` or `--test-data PATH`.
    fn test_rule(&self) -> String {
        match (&self.test_data, self.test_every) {
            (Some(p), _) => format!("--test-data {}", p.display()),
            (None, n) => format!("--test-every {}", n.unwrap_or(crate::TEST_EVERY)),
        }
    }

    /// Writes the record as JSON to `path`, atomically.
    ///
    /// Errors: [`TextError::Write`].
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("a corpus record serialises");
        write_atomic(path, &json)
    }

    /// Reads a record written by [`Self::save`].
    ///
    /// Errors: [`TextError::RecordInvalid`].
    pub fn load(path: &Path) -> Result<Self> {
        let invalid = |message: String| TextError::RecordInvalid {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| invalid(e.to_string()))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| invalid(format!("expected a corpus record: {e}")))
    }

    /// Whether `now` (the corpus read today) holds what this record does.
    ///
    /// Errors: [`TextError::CheckpointCorpus`] naming the first difference (the tokenizer, a
    /// changed, missing or new file) and the record's path.
    pub fn check_same(&self, now: &CorpusRecord, record_path: &Path) -> Result<()> {
        if self.corpus_fingerprint == now.corpus_fingerprint
            && self.tokenizer_fingerprint == now.tokenizer_fingerprint
        {
            return Ok(());
        }
        let what = if self.tokenizer_fingerprint != now.tokenizer_fingerprint {
            format!(
                "the tokenizer's fingerprint is {}, the checkpoint was trained with {}",
                now.tokenizer_fingerprint, self.tokenizer_fingerprint
            )
        } else {
            file_difference(&self.files, &now.files)
        };
        Err(TextError::CheckpointCorpus {
            message: format!(
                "the text is not what the checkpoint was trained on: {what} (recorded in {}); \
                 evaluate on the same files",
                record_path.display()
            ),
        })
    }
}

/// The first file that differs between a record's files and today's.
fn file_difference(then: &[FileDigest], now: &[FileDigest]) -> String {
    let key = |f: &FileDigest| (f.role.clone(), f.path.clone());
    for f in then {
        match now.iter().find(|g| key(g) == key(f)) {
            None => return format!("{} file {} is missing", f.role, f.path),
            Some(g) if g.sha256 != f.sha256 => {
                return format!(
                    "{} file {} changed (SHA-256 {} then, {} now)",
                    f.role, f.path, f.sha256, g.sha256
                );
            }
            Some(_) => {}
        }
    }
    match now.iter().find(|g| !then.iter().any(|f| key(f) == key(g))) {
        Some(g) => format!("{} file {} is new", g.role, g.path),
        None => "the documents mode, text field, end-of-document token or split differs".into(),
    }
}

/// A corpus of text files, found, read and fingerprinted, not yet tokenized.
#[derive(Debug)]
pub struct TextCorpus {
    cache_dir: PathBuf,
    spec: FilesSpec,
    tokenizer: PretrainedTokenizer,
    data_files: Vec<SourceFile>,
    test_files: Vec<SourceFile>,
    record: CorpusRecord,
}

/// What [`TextCorpus::prepare`] made or found.
#[derive(Debug)]
pub struct PreparedFiles {
    /// The tokenizer (its path, fingerprint, vocabulary size and end-of-document token).
    pub tokenizer: PretrainedTokenizer,
    /// S, the sequence length of `train` and `test`.
    pub seq_len: usize,
    /// The training sequences, `i64 [N_train, S]`.
    pub train: Packed,
    /// The held-out sequences, `i64 [N_test, S]`.
    pub test: Packed,
    /// How many of the two token caches were (re)built now: 0 when both were reused.
    pub rebuilt_caches: usize,
    /// How the corpus was read and what it held.
    pub record: CorpusRecord,
}

impl TextCorpus {
    /// Loads the tokenizer and reads the text files of `data_dir` (a directory, or one file)
    /// and of the test split's files as `spec` says; nothing is tokenized yet.
    ///
    /// Errors: the tokenizer's ([`PretrainedTokenizer::load`]), [`TextError::CorpusRead`],
    /// [`TextError::NoTextFiles`].
    pub fn open(data_dir: &Path, spec: &FilesSpec) -> Result<Self> {
        let tokenizer = PretrainedTokenizer::load(&spec.tokenizer, spec.eos_token.as_deref())?;
        let (data_files, test_files) = match &spec.test {
            TestSplit::Every(_) => (read_text_files(data_dir, None)?, Vec::new()),
            TestSplit::Data(p) => {
                let exclude = p.canonicalize().ok();
                let test = read_text_files(p, None)?;
                (read_text_files(data_dir, exclude.as_deref())?, test)
            }
        };
        let digests = |role: &str, files: &[SourceFile]| -> Vec<FileDigest> {
            files
                .iter()
                .map(|f| FileDigest {
                    role: role.into(),
                    path: f.name.clone(),
                    sha256: f.sha256.clone(),
                })
                .collect()
        };
        let mut files = digests("data", &data_files);
        files.extend(digests("test", &test_files));
        let (test_every, test_data) = match &spec.test {
            TestSplit::Every(n) => (Some(*n), None),
            TestSplit::Data(p) => (None, Some(absolute(p))),
        };
        let keyed = serde_json::json!([
            READER_VERSION,
            tokenizer.eos_id(),
            spec.documents,
            spec.text_field,
            test_every,
            test_data.is_some(),
            files
        ]);
        let record = CorpusRecord {
            tokenizer_fingerprint: tokenizer.fingerprint().to_string(),
            eos_token: tokenizer.eos_token().to_string(),
            documents: spec.documents,
            text_field: spec.text_field.clone(),
            test_every,
            test_data,
            files,
            corpus_fingerprint: sha256_hex(keyed.to_string().as_bytes()),
        };
        let cache_root = if data_dir.is_dir() {
            data_dir
        } else {
            data_dir.parent().unwrap_or(Path::new("."))
        };
        Ok(Self {
            cache_dir: cache_root.join(CACHE_DIR),
            spec: spec.clone(),
            tokenizer,
            data_files,
            test_files,
            record,
        })
    }

    /// How the corpus is read and what it holds.
    pub fn record(&self) -> &CorpusRecord {
        &self.record
    }

    /// The documents of both splits, `(train, test)`, in corpus order.
    fn split_documents(&self) -> Result<(Vec<String>, Vec<String>)> {
        let read = |files: &[SourceFile]| -> Result<Vec<String>> {
            let mut docs = Vec::new();
            for f in files {
                docs.extend(documents(f, self.spec.documents, &self.spec.text_field)?);
            }
            Ok(docs)
        };
        let all = read(&self.data_files)?;
        match self.spec.test {
            TestSplit::Every(n) => {
                let (mut train, mut test) = (Vec::new(), Vec::new());
                for (i, d) in all.into_iter().enumerate() {
                    if i % n == 0 {
                        test.push(d)
                    } else {
                        train.push(d)
                    }
                }
                Ok((train, test))
            }
            TestSplit::Data(_) => Ok((all, read(&self.test_files)?)),
        }
    }

    /// Tokenizes both splits (or reuses their verified caches) and packs them into sequences
    /// of `seq_len` tokens.
    ///
    /// Errors: [`TextError::BadSeqLen`], [`TextError::TextFile`] (a `.jsonl` line or bytes
    /// that cannot be read, with file and line), [`TextError::Tokenizers`],
    /// [`TextError::Write`] (a cache), [`TextError::EmptySplit`]. An invalid cache is rebuilt.
    pub fn prepare(self, seq_len: usize) -> Result<PreparedFiles> {
        if seq_len == 0 {
            return Err(TextError::BadSeqLen(seq_len));
        }
        let fp = self.tokenizer.fingerprint();
        let mut docs = None;
        let mut rebuilt_caches = 0;
        let mut packed = Vec::with_capacity(2);
        for (split, is_test) in [("train", false), ("test", true)] {
            let key = CacheKey {
                format_version: FORMAT_VERSION,
                split: split.to_string(),
                tokenizer_fingerprint: fp.to_string(),
                corpus_fingerprint: self.record.corpus_fingerprint.clone(),
                vocab_size: self.tokenizer.vocab_size(),
            };
            let path = self
                .cache_dir
                .join(format!("tokens-{}-{split}.bin", &fp[..12]));
            let tokens = match read_cache(&path, &key) {
                Ok(tokens) => tokens,
                Err(_) => {
                    if docs.is_none() {
                        docs = Some(self.split_documents()?);
                    }
                    let (train, test) = docs.as_ref().expect("just read");
                    let split_docs = if is_test { test } else { train };
                    let ids = self.tokenizer.encode_batch(split_docs)?;
                    let tokens = stream(&ids, self.tokenizer.eos_id());
                    write_cache(&path, &key, &tokens, split_docs.len())?;
                    rebuilt_caches += 1;
                    tokens
                }
            };
            let p = pack_stream(&tokens, seq_len, self.tokenizer.eos_id())?;
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
        Ok(PreparedFiles {
            tokenizer: self.tokenizer,
            seq_len,
            train,
            test,
            rebuilt_caches,
            record: self.record,
        })
    }
}

/// [`TextCorpus::open`] then [`TextCorpus::prepare`]: the packed splits of the text files in
/// `data_dir`, read as `spec` says.
///
/// Errors: those of both.
pub fn prepare_files(data_dir: &Path, spec: &FilesSpec, seq_len: usize) -> Result<PreparedFiles> {
    TextCorpus::open(data_dir, spec)?.prepare(seq_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> CorpusRecord {
        let file = |role: &str, path: &str, sha: &str| FileDigest {
            role: role.into(),
            path: path.into(),
            sha256: sha.into(),
        };
        CorpusRecord {
            tokenizer_fingerprint: "ab".repeat(32),
            eos_token: "</s>".into(),
            documents: Documents::Lines,
            text_field: "text".into(),
            test_every: Some(10),
            test_data: None,
            files: vec![file("data", "a.txt", "11"), file("data", "b/c.jsonl", "22")],
            corpus_fingerprint: "cd".repeat(32),
        }
    }

    #[test]
    fn a_checkpoints_record_fills_the_flags_and_refuses_other_values() {
        let r = record();
        let rp = Path::new("/runs/t/corpus.json");
        let tok = Path::new("/runs/t/tokenizer.json");
        let spec = FilesOptions::default()
            .spec_from_record(&r, rp, tok)
            .unwrap();
        assert_eq!(
            spec,
            FilesSpec {
                tokenizer: tok.into(),
                documents: Documents::Lines,
                text_field: "text".into(),
                eos_token: Some("</s>".into()),
                test: TestSplit::Every(10),
            }
        );
        // The same values given again are fine.
        let same = FilesOptions {
            documents: Some(Documents::Lines),
            test_every: Some(10),
            ..Default::default()
        };
        assert_eq!(same.spec_from_record(&r, rp, tok).unwrap(), spec);
        let err = |o: FilesOptions| o.spec_from_record(&r, rp, tok).unwrap_err().to_string();
        assert_eq!(
            err(FilesOptions {
                documents: Some(Documents::BlankLines),
                ..Default::default()
            }),
            "--documents blank-lines differs from the checkpoint's lines (recorded in \
             /runs/t/corpus.json): drop the flag or give the same"
        );
        assert_eq!(
            err(FilesOptions {
                test_every: Some(20),
                ..Default::default()
            }),
            "--test-every 20 differs from the checkpoint's --test-every 10 (recorded in \
             /runs/t/corpus.json): drop the flag or give the same"
        );
        assert!(
            err(FilesOptions {
                eos_token: Some("<|endoftext|>".into()),
                ..Default::default()
            })
            .starts_with("--eos-token \"<|endoftext|>\" differs from the checkpoint's \"</s>\"")
        );
    }

    #[test]
    fn check_same_names_the_first_file_that_differs() {
        let then = record();
        let rp = Path::new("/runs/t/corpus.json");
        assert!(then.check_same(&then.clone(), rp).is_ok());
        let mut now = then.clone();
        now.corpus_fingerprint = "ef".repeat(32);
        now.files[1].sha256 = "33".into();
        assert_eq!(
            then.check_same(&now, rp).unwrap_err().to_string(),
            "the text is not what the checkpoint was trained on: data file b/c.jsonl changed \
             (SHA-256 22 then, 33 now) (recorded in /runs/t/corpus.json); evaluate on the same \
             files"
        );
        now.files.remove(0);
        assert!(
            then.check_same(&now, rp)
                .unwrap_err()
                .to_string()
                .contains("data file a.txt is missing")
        );
        let mut more = then.clone();
        more.corpus_fingerprint = "ef".repeat(32);
        more.files.push(FileDigest {
            role: "data".into(),
            path: "d.txt".into(),
            sha256: "44".into(),
        });
        assert!(
            then.check_same(&more, rp)
                .unwrap_err()
                .to_string()
                .contains("data file d.txt is new")
        );
    }
}
