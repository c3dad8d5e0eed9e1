//! The byte-level BPE tokenizer (GPT-2's scheme) trained with Hugging Face's `tokenizers` crate,
//! stored as a `tokenizer.json` that Python's `tokenizers` loads as well.

use crate::error::{Result, TextError};
use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::{Path, PathBuf};
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::normalizers::NormalizerWrapper;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, Tokenizer, TokenizerBuilder};

/// The document separator, appended after every document when packing (GPT-2's name).
pub const EOT_TOKEN: &str = "<|endoftext|>";
/// The padding token of a short last sequence; its labels are [`crate::IGNORE_INDEX`].
pub const PAD_TOKEN: &str = "<|pad|>";
/// The special tokens, in id order: `<|endoftext|>` = 0, `<|pad|>` = 1.
pub const SPECIAL_TOKENS: [&str; 2] = [EOT_TOKEN, PAD_TOKEN];
/// The smallest vocabulary: the 256 byte-level tokens and the special tokens.
pub const MIN_VOCAB_SIZE: usize = 256 + SPECIAL_TOKENS.len();
/// The vocabulary size `prepare` is usually called with (the demo takes 4,096..=8,192).
pub const DEFAULT_VOCAB_SIZE: usize = 8192;

/// Hex SHA-256 of a file's bytes: the tokenizer fingerprint that `ModelInfo` carries and that
/// a student compares with its own.
///
/// Errors: [`TextError::TokenizerRead`] when the file cannot be read.
pub fn fingerprint(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| TextError::TokenizerRead {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(sha256_hex(&bytes))
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, rename,
/// then fsync of the directory, so a reader sees the old file or the whole new one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let err = |source| TextError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(err)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        // The rename is durable once the directory is synced; not every platform can open one.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

/// A byte-level BPE tokenizer and the exact `tokenizer.json` bytes it was loaded from (or will
/// be saved as), whose SHA-256 is its fingerprint.
///
/// Byte-level: GPT-2's pre-tokenizer (its regex split, bytes mapped to 256 printable
/// characters, no prefix space), so every string encodes and there is no unknown token. Ids
/// 0 and 1 are [`EOT_TOKEN`] and [`PAD_TOKEN`], 2..258 the bytes, then the merges.
#[derive(Debug, Clone)]
pub struct BpeTokenizer {
    inner: Tokenizer,
    json: Vec<u8>,
    fingerprint: String,
    eot_id: u32,
    pad_id: u32,
}

impl BpeTokenizer {
    /// Trains a byte-level BPE with exactly `vocab_size` tokens (special tokens and the 256
    /// bytes included) on `texts`, in memory. Deterministic: the same texts give the same
    /// `tokenizer.json` bytes.
    ///
    /// Errors: [`TextError::VocabSizeTooSmall`] below [`MIN_VOCAB_SIZE`];
    /// [`TextError::VocabNotReached`] when the texts have too few distinct pairs to merge;
    /// [`TextError::Tokenizers`] when the crate fails.
    pub fn train<I, S>(texts: I, vocab_size: usize) -> Result<Self>
    where
        I: Iterator<Item = S> + Send,
        S: AsRef<str> + Send,
    {
        if vocab_size < MIN_VOCAB_SIZE {
            return Err(TextError::VocabSizeTooSmall {
                requested: vocab_size,
                minimum: MIN_VOCAB_SIZE,
            });
        }
        let failed = |action| {
            move |e: tokenizers::Error| TextError::Tokenizers {
                action,
                message: e.to_string(),
            }
        };
        let byte_level = ByteLevel::new(false, true, true);
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(0)
            .special_tokens(
                SPECIAL_TOKENS
                    .iter()
                    .map(|t| AddedToken::from(t.to_string(), true))
                    .collect(),
            )
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .build();
        let mut tokenizer = TokenizerBuilder::<
            BPE,
            NormalizerWrapper,
            PreTokenizerWrapper,
            PostProcessorWrapper,
            DecoderWrapper,
        >::new()
        .with_model(BPE::default())
        .with_normalizer(None)
        .with_pre_tokenizer(Some(byte_level.into()))
        .with_post_processor(Some(byte_level.into()))
        .with_decoder(Some(byte_level.into()))
        .build()
        .map_err(failed("training"))?;
        tokenizer
            .train(&mut trainer, texts)
            .map_err(failed("training"))?;
        let json = tokenizer
            .to_string(false)
            .map_err(failed("serialisation"))?
            .into_bytes();
        let trained = Self::from_json(json, Path::new("<memory>"))?;
        let learned = trained.vocab_size();
        if learned != vocab_size {
            return Err(TextError::VocabNotReached {
                requested: vocab_size,
                learned,
            });
        }
        Ok(trained)
    }

    /// Loads a `tokenizer.json`; its fingerprint is the SHA-256 of the file's bytes.
    ///
    /// Errors: [`TextError::TokenizerRead`] (missing, unreadable); [`TextError::TokenizerInvalid`]
    /// (not a tokenizer, or without `<|endoftext|>` / `<|pad|>`).
    pub fn load(path: &Path) -> Result<Self> {
        let json = std::fs::read(path).map_err(|source| TextError::TokenizerRead {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(json, path)
    }

    fn from_json(json: Vec<u8>, path: &Path) -> Result<Self> {
        let invalid = |message: String| TextError::TokenizerInvalid {
            path: path.to_path_buf(),
            message,
        };
        let inner = Tokenizer::from_bytes(&json).map_err(|e| invalid(e.to_string()))?;
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .ok_or_else(|| invalid(format!("it has no special token {token}")))
        };
        let (eot_id, pad_id) = (id(EOT_TOKEN)?, id(PAD_TOKEN)?);
        let fingerprint = sha256_hex(&json);
        Ok(Self {
            inner,
            json,
            fingerprint,
            eot_id,
            pad_id,
        })
    }

    /// Writes the `tokenizer.json` bytes to `path` atomically (temporary file, fsync, rename).
    /// Afterwards [`fingerprint`]`(path)` equals [`Self::fingerprint`].
    ///
    /// Errors: [`TextError::Write`].
    pub fn save(&self, path: &Path) -> Result<()> {
        write_atomic(path, &self.json)
    }

    /// Hex SHA-256 of the `tokenizer.json` bytes.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The vocabulary size, special tokens included: the number of logits a model needs.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of [`EOT_TOKEN`].
    pub fn eot_id(&self) -> u32 {
        self.eot_id
    }

    /// The id of [`PAD_TOKEN`].
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// The ids of `text`, without added special tokens (a literal `<|endoftext|>` in the text is
    /// still that token, as in Python's `encode(text, add_special_tokens=False)`).
    ///
    /// Errors: [`TextError::Tokenizers`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TextError::Tokenizers {
                action: "encoding",
                message: e.to_string(),
            })
    }

    /// [`Self::encode`] of many texts, in parallel (rayon), in chunks to bound memory.
    ///
    /// Errors: [`TextError::Tokenizers`].
    pub fn encode_batch<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Vec<Vec<u32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(4096) {
            let encodings = self
                .inner
                .encode_batch(chunk.iter().map(|t| t.as_ref()).collect(), false)
                .map_err(|e| TextError::Tokenizers {
                    action: "encoding",
                    message: e.to_string(),
                })?;
            out.extend(encodings.into_iter().map(|e| e.get_ids().to_vec()));
        }
        Ok(out)
    }

    /// The text of `ids`, special tokens skipped.
    ///
    /// Errors: [`TextError::Tokenizers`].
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        decode_ids(&self.inner, ids)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// The text of `ids` by `tokenizer`, special tokens left out (what both tokenizer kinds decode
/// with).
///
/// Errors: [`TextError::Tokenizers`].
pub(crate) fn decode_ids(tokenizer: &Tokenizer, ids: &[u32]) -> Result<String> {
    tokenizer
        .decode(ids, true)
        .map_err(|e| TextError::Tokenizers {
            action: "decoding",
            message: e.to_string(),
        })
}
