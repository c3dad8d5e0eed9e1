//! Python's `tokenizers` (installed by `make setup` into the cache next to torch, linked as
//! `.pytokenizers` in the repository root) loads the tokenizer.json that Rust trained and
//! encodes to the same ids.

use super::common;

use distill_text::BpeTokenizer;
use std::io::Write;
use std::process::{Command, Stdio};

#[test]
fn python_tokenizers_loads_the_rust_tokenizer_and_encodes_the_same_ids() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is in the workspace");
    let pylib = root.join(".pytokenizers");
    assert!(
        pylib.join("tokenizers").is_dir(),
        "Python's tokenizers is not installed at {}: run `make setup`",
        pylib.display()
    );
    let dir = common::temp_dir("python");
    let path = dir.join("tokenizer.json");
    let tokenizer = BpeTokenizer::train(common::sentences(7, 500).iter(), 500).unwrap();
    tokenizer.save(&path).unwrap();

    let mut texts = common::sentences(8, 20); // other sentences than the training ones
    texts.extend(
        [
            "Serpolet \\Ser\"po*let\\, n. [F.] (Bot.) Wild thyme.",
            "  leading spaces, trailing tab\t",
            "Caf\u{e9} \u{2014} na\u{ef}ve \u{4e2d}\u{6587} \u{1f600}",
            "line one\nline two\r\n",
            "end<|endoftext|>start<|pad|>",
            "",
        ]
        .map(String::from),
    );
    let rust: Vec<Vec<u32>> = texts.iter().map(|t| tokenizer.encode(t).unwrap()).collect();

    let script = "import json, sys\n\
from tokenizers import Tokenizer\n\
t = Tokenizer.from_file(sys.argv[1])\n\
texts = json.load(sys.stdin)\n\
print(json.dumps({'vocab': t.get_vocab_size(with_added_tokens=True),\n\
                  'ids': [t.encode(s, add_special_tokens=False).ids for s in texts]}))\n";
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .arg("-c")
        .arg(script)
        .arg(&path)
        .env("PYTHONPATH", &pylib)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&serde_json::to_vec(&texts).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["vocab"], 500);
    let python_ids: Vec<Vec<u32>> = serde_json::from_value(answer["ids"].clone()).unwrap();
    assert_eq!(python_ids.len(), texts.len());
    for ((text, r), p) in texts.iter().zip(&rust).zip(&python_ids) {
        assert_eq!(r, p, "ids of {text:?}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
