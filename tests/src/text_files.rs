//! Corpora of a user's own text for the tests: generated documents written as `.txt` and
//! `.jsonl` files, and a `tokenizer.json` trained by Python's `tokenizers` (the `.pytokenizers`
//! that `make setup` installs) as a user would, plus Python's encoding to compare ids with.
//!
//! [`TextFilesCorpus::jsonl`] is the ready-made corpus of the end-to-end tests: any LM test that
//! needs a teacher's tokenizer and text files (a built-in or a TorchScript student alike) starts
//! from it and passes [`TextFilesCorpus::flags`] to `student-trainer`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The folder holding Python's `tokenizers` (`.pytokenizers` in the workspace root).
///
/// # Panics
/// With instructions, when `make setup` has not installed it.
pub fn pytokenizers() -> PathBuf {
    let dir = crate::workspace_root().join(".pytokenizers");
    assert!(
        dir.join("tokenizers").is_dir(),
        "Python's tokenizers is not installed at {}: run `make setup`",
        dir.display()
    );
    dir
}

/// Runs the Python `script` with `args`, `stdin` as its standard input and Python's
/// `tokenizers` importable; its standard output as JSON.
///
/// # Panics
/// When Python fails, with its standard error.
pub fn run_python(script: &str, args: &[&str], stdin: &serde_json::Value) -> serde_json::Value {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .args(args)
        .env("PYTHONPATH", pytokenizers())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(stdin.to_string().as_bytes())
        .expect("write to python");
    let out = child.wait_with_output().expect("python runs");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python prints JSON")
}

/// What kind of tokenizer [`train_tokenizer`] trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// GPT-2's scheme: byte-level BPE of this many tokens (at least 257), no unknown token.
    ByteLevelBpe(usize),
    /// One id per whitespace-separated word or punctuation run seen in training, `<unk>` for the
    /// rest.
    WordLevel,
}

const TRAIN_TOKENIZER: &str = r#"
import json, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
kind, path, eos, vocab = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
texts = json.load(sys.stdin)
if kind == "bpe":
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=[eos], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
else:
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", eos], show_progress=False)
tok.train_from_iterator(texts, trainer)
tok.save(path)
print(json.dumps({"vocab": tok.get_vocab_size(with_added_tokens=True)}))
"#;

/// Trains a tokenizer of `kind` on `texts` with Python's `tokenizers`, its special tokens
/// `eos` (and `<unk>` for word level), and saves it as `path` (`Tokenizer.save`); returns its
/// vocabulary size with the added tokens.
pub fn train_tokenizer(path: &Path, kind: TokenizerKind, eos: &str, texts: &[String]) -> usize {
    let (name, vocab) = match kind {
        TokenizerKind::ByteLevelBpe(v) => ("bpe", v),
        TokenizerKind::WordLevel => ("word", 0),
    };
    let vocab_arg = vocab.to_string();
    let path_arg = path.to_str().expect("UTF-8 path");
    let answer = run_python(
        TRAIN_TOKENIZER,
        &[name, path_arg, eos, &vocab_arg],
        &serde_json::json!(texts),
    );
    answer["vocab"].as_u64().expect("vocab size") as usize
}

/// The ids Python's `tokenizers` gives each of `texts` with the tokenizer at `path`
/// (`encode(text, add_special_tokens=False).ids`).
pub fn python_encode(path: &Path, texts: &[String]) -> Vec<Vec<u32>> {
    let script = "import json, sys\n\
from tokenizers import Tokenizer\n\
t = Tokenizer.from_file(sys.argv[1])\n\
print(json.dumps([t.encode(s, add_special_tokens=False).ids for s in json.load(sys.stdin)]))\n";
    let answer = run_python(
        script,
        &[path.to_str().expect("UTF-8 path")],
        &serde_json::json!(texts),
    );
    serde_json::from_value(answer).expect("lists of ids")
}

const WORDS: &[&str] = &[
    "the", "a", "of", "to", "and", "in", "that", "is", "for", "it", "as", "with", "be", "by", "on",
    "not", "or", "which", "from", "at", "plant", "animal", "small", "large", "water", "used",
    "having", "kind", "form", "made", "part", "body", "stone", "metal", "light", "sound", "hard",
    "soft", "long", "short", "white", "black", "red", "green", "old", "new", "river", "hill",
    "bird", "fish",
];

/// `n` generated documents (seeded by `seed`): one to three sentences of 4 to 15 words from a
/// fixed list, with commas, capitals and an occasional number.
pub fn documents(n: usize, seed: u64) -> Vec<String> {
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move |k: usize| {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        ((rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize) % k
    };
    (0..n)
        .map(|_| {
            let sentences: Vec<String> = (0..1 + next(3))
                .map(|_| {
                    let words: Vec<String> = (0..4 + next(12))
                        .map(|i| {
                            let w = WORDS[next(WORDS.len())];
                            match (i, next(12)) {
                                (0, _) => format!("{}{}", w[..1].to_uppercase(), &w[1..]),
                                (_, 0) => format!("{w},"),
                                (_, 1) => format!("{}", next(1000)),
                                _ => w.to_string(),
                            }
                        })
                        .collect();
                    format!("{}.", words.join(" "))
                })
                .collect();
            sentences.join(" ")
        })
        .collect()
}

/// Writes `docs` as a `.jsonl` file at `path`: one object per line, `{"id": I, FIELD: DOC}`.
pub fn write_jsonl(path: &Path, docs: &[String], field: &str) {
    let lines: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut o = serde_json::Map::new();
            o.insert("id".into(), serde_json::json!(i));
            o.insert(field.into(), serde_json::json!(d));
            format!("{}\n", serde_json::Value::Object(o))
        })
        .collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create the folder");
    }
    std::fs::write(path, lines.concat()).expect("write the .jsonl file");
}

/// A corpus of `.jsonl` files and the word-level tokenizer a teacher was trained with.
#[derive(Debug, Clone)]
pub struct TextFilesCorpus {
    /// The `--data-dir`: `part-1.jsonl` (the first half) and `part-2/more.jsonl`.
    pub data_dir: PathBuf,
    /// The `--tokenizer`, beside the data directory (`tokenizer.json`).
    pub tokenizer: PathBuf,
    /// Every document in corpus order (document `i` is held out when `i % 20 == 0`).
    pub documents: Vec<String>,
    /// The tokenizer's vocabulary size, added tokens included.
    pub vocab_size: usize,
    /// Its end-of-document token, `</s>` (found by name).
    pub eos_token: &'static str,
}

impl TextFilesCorpus {
    /// `n` generated documents (seed `seed`) in two `.jsonl` files under `root/corpus`, their
    /// text in the field `text`, and a word-level tokenizer trained on them by Python's
    /// `tokenizers` in `root/tokenizer/tokenizer.json`, special tokens `<unk>` (0) and `</s>`
    /// (1).
    pub fn jsonl(root: &Path, n: usize, seed: u64) -> TextFilesCorpus {
        let documents = documents(n, seed);
        let data_dir = root.join("corpus");
        let half = n / 2;
        write_jsonl(&data_dir.join("part-1.jsonl"), &documents[..half], "text");
        write_jsonl(
            &data_dir.join("part-2/more.jsonl"),
            &documents[half..],
            "text",
        );
        let tokenizer = root.join("tokenizer").join("tokenizer.json");
        std::fs::create_dir_all(tokenizer.parent().expect("a folder")).expect("create it");
        let eos_token = "</s>";
        let vocab_size =
            train_tokenizer(&tokenizer, TokenizerKind::WordLevel, eos_token, &documents);
        TextFilesCorpus {
            data_dir,
            tokenizer,
            documents,
            vocab_size,
            eos_token,
        }
    }

    /// `--data-dir DIR --tokenizer FILE`.
    pub fn flags(&self) -> Vec<String> {
        vec![
            "--data-dir".into(),
            self.data_dir.display().to_string(),
            "--tokenizer".into(),
            self.tokenizer.display().to_string(),
        ]
    }
}
