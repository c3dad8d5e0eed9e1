//! The user's own tokenizer: any Hugging Face `tokenizer.json` (a teacher's, as written by
//! `AutoTokenizer.save_pretrained` or `Tokenizer.save`), with the end-of-document token that
//! packing puts after every document.

use crate::error::{Result, TextError};
use crate::tokenizer::sha256_hex;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

/// End-of-document tokens looked for, in this order, when neither `--eos-token` nor a
/// `tokenizer_config.json` beside the file names one: GPT-2 and most byte-level BPEs, Llama 2
/// / T5 / BART / Mistral, Llama 3, Gemma, and two generic spellings.
pub const EOS_CANDIDATES: [&str; 6] = [
    "<|endoftext|>",
    "</s>",
    "<|end_of_text|>",
    "<eos>",
    "<|eos|>",
    "[EOS]",
];

/// How many special tokens an error message lists before it says how many more there are.
const LISTED_SPECIAL_TOKENS: usize = 24;

/// A loaded `tokenizer.json` and what packing needs of it: the end-of-document token, the number
/// of logits a model needs, and the file's fingerprint.
///
/// Truncation and padding stored in the file are turned off: a document is encoded whole, and
/// no special tokens are added (Python's `encode(text, add_special_tokens=False)`).
#[derive(Debug, Clone)]
pub struct PretrainedTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    fingerprint: String,
    eos_token: String,
    eos_id: u32,
    vocab_size: usize,
}

impl PretrainedTokenizer {
    /// Loads `path`; the end-of-document token is `eos_token` when given, else the `eos_token`
    /// of a `tokenizer_config.json` in the same directory, else the first of
    /// [`EOS_CANDIDATES`] the tokenizer knows.
    ///
    /// Errors: [`TextError::TokenizerRead`]; [`TextError::TokenizerInvalid`] when the file does
    /// not parse as a `tokenizer.json`; [`TextError::NoEosToken`] when no end-of-document token
    /// is found, [`TextError::EosNotInVocab`] when the one asked for is not in the vocabulary
    /// (both listing the special tokens).
    pub fn load(path: &Path, eos_token: Option<&str>) -> Result<Self> {
        let json = std::fs::read(path).map_err(|source| TextError::TokenizerRead {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |message: String| TextError::TokenizerInvalid {
            path: path.to_path_buf(),
            message,
        };
        let mut inner = Tokenizer::from_bytes(&json).map_err(|e| invalid(e.to_string()))?;
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| invalid(e.to_string()))?;
        let (eos_token, asked) = match eos_token {
            Some(t) => (Some(t.to_string()), "--eos-token"),
            None => (config_eos_token(path), "tokenizer_config.json"),
        };
        let eos_token = match eos_token {
            Some(t) => t,
            None => EOS_CANDIDATES
                .iter()
                .find(|t| inner.token_to_id(t).is_some())
                .map(|t| t.to_string())
                .ok_or_else(|| no_eos(path, &inner, None))?,
        };
        let eos_id = inner
            .token_to_id(&eos_token)
            .ok_or_else(|| no_eos(path, &inner, Some((asked, &eos_token))))?;
        let max_id = inner.get_vocab(true).into_values().max().unwrap_or(0) as usize;
        let vocab_size = inner.get_vocab_size(true).max(max_id + 1);
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            fingerprint: sha256_hex(&json),
            eos_token,
            eos_id,
            vocab_size,
        })
    }

    /// The file it was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hex SHA-256 of the file's bytes (what `ModelInfo.tokenizer_fingerprint` carries).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The end-of-document token.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Its id.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// The number of logits a model needs: `get_vocab_size(with_added_tokens=True)`, or the
    /// largest id + 1 for a vocabulary with gaps in its ids.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The ids of each text, encoded in parallel, without added special tokens.
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

    /// The text of `ids`, special tokens left out.
    ///
    /// Errors: [`TextError::Tokenizers`].
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        crate::tokenizer::decode_ids(&self.inner, ids)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.inner
    }
}

/// The `eos_token` of the `tokenizer_config.json` beside `tokenizer` (a string, or an object
/// with a `content`), if that file exists and names one.
fn config_eos_token(tokenizer: &Path) -> Option<String> {
    let config = tokenizer.with_file_name("tokenizer_config.json");
    let value: serde_json::Value = serde_json::from_slice(&std::fs::read(config).ok()?).ok()?;
    match &value["eos_token"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// [`TextError::NoEosToken`] for `tokenizer`, listing its special tokens by id.
fn no_eos(path: &Path, tokenizer: &Tokenizer, asked: Option<(&str, &str)>) -> TextError {
    let mut special: Vec<(u32, String)> = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, t)| (id, t.content))
        .collect();
    special.sort();
    let mut listed: Vec<String> = special
        .iter()
        .take(LISTED_SPECIAL_TOKENS)
        .map(|(_, t)| t.clone())
        .collect();
    if special.len() > LISTED_SPECIAL_TOKENS {
        listed.push(format!(
            "and {} more",
            special.len() - LISTED_SPECIAL_TOKENS
        ));
    }
    let path = path.to_path_buf();
    let special = if listed.is_empty() {
        "none".into()
    } else {
        listed.join(", ")
    };
    match asked {
        None => TextError::NoEosToken { path, special },
        Some((from, token)) => TextError::EosNotInVocab {
            path,
            token: token.to_string(),
            from: from.to_string(),
            special,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BpeTokenizer;

    fn dir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("distill-text-pre-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A byte-level BPE whose special tokens are renamed to `eot` and `pad`.
    fn write_bpe(path: &Path, eot: &str, pad: &str) {
        let texts = ["the cat sat on the mat", "a dog and a cat"];
        let t = BpeTokenizer::train(texts.iter(), 270).unwrap();
        let json = t
            .inner()
            .to_string(false)
            .unwrap()
            .replace("<|endoftext|>", eot)
            .replace("<|pad|>", pad);
        std::fs::write(path, json).unwrap();
    }

    #[test]
    fn the_eos_token_comes_from_the_flag_the_config_or_the_known_names() {
        let d = dir("eos");
        let path = d.join("tokenizer.json");
        write_bpe(&path, "</s>", "<pad>");
        let t = PretrainedTokenizer::load(&path, None).unwrap();
        assert_eq!(
            (t.eos_token(), t.eos_id(), t.vocab_size()),
            ("</s>", 0, 270)
        );
        assert_eq!(t.fingerprint(), crate::fingerprint(&path).unwrap());
        // The flag wins over the known names.
        let t = PretrainedTokenizer::load(&path, Some("<pad>")).unwrap();
        assert_eq!((t.eos_token(), t.eos_id()), ("<pad>", 1));
        // tokenizer_config.json beside it wins over the known names, as a string or an object.
        std::fs::write(d.join("tokenizer_config.json"), r#"{"eos_token": "<pad>"}"#).unwrap();
        assert_eq!(PretrainedTokenizer::load(&path, None).unwrap().eos_id(), 1);
        std::fs::write(
            d.join("tokenizer_config.json"),
            r#"{"eos_token": {"content": "</s>", "special": true}}"#,
        )
        .unwrap();
        assert_eq!(PretrainedTokenizer::load(&path, None).unwrap().eos_id(), 0);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn no_eos_token_is_an_error_listing_the_special_tokens() {
        let d = dir("no-eos");
        let path = d.join("tokenizer.json");
        write_bpe(&path, "<bos>", "<pad>");
        let err = PretrainedTokenizer::load(&path, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{} has no end-of-document token: expected one of <|endoftext|>, </s>, \
                 <|end_of_text|>, <eos>, <|eos|>, [EOS] or --eos-token TOKEN; its special \
                 tokens are <bos>, <pad>",
                path.display()
            )
        );
        let err = PretrainedTokenizer::load(&path, Some("<end>"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{} has no end-of-document token \"<end>\" (from --eos-token); its special \
                 tokens are <bos>, <pad>",
                path.display()
            )
        );
        std::fs::write(&path, b"{\"version\": \"1.0\"").unwrap();
        let err = PretrainedTokenizer::load(&path, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!(
                "{} is not a usable tokenizer.json: ",
                path.display()
            )),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
