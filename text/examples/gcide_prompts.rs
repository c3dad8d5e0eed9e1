//! Writes the prompts file of on-policy distillation on GCIDE (`make demo-opd`): one JSON line
//! per dictionary entry, `{"prompt": ..., "completion": ...}`, the prompt being the entry's
//! first words (its headword, pronunciation and part of speech) and the completion the rest of
//! the entry (`distill_text::split_entry`), so that `prompt + completion` is the entry's text.
//!
//! ```text
//! cargo run --release -p distill-text --example gcide_prompts -- CORPUS_DIR OUT.jsonl \
//!     [--prompt-words N] [--limit N] [--tokenizer FILE [--seq-len S] [--max-new-tokens M]]
//! ```
//!
//! - `--prompt-words N` (4): whitespace-separated words in the prompt. Entries with nothing
//!   after them are skipped.
//! - `--limit N`: at most N lines.
//! - `--tokenizer FILE` (the corpus's `tokenizer.json`) with `--seq-len S` (128) and
//!   `--max-new-tokens M` (64): only the entries whose prompt has at most S − M tokens (the room
//!   `distill --on-policy` leaves a prompt) and whose completion with its end-of-sequence token
//!   at most M, so that a reference completion ends where its entry does, as a sampled one may.
//!
//! `distill --prompts` holds out lines 0, 20, 40, ... (the 1st, 21st, ...). The file puts
//! GCIDE's own held-out entries (the test split of the corpus that the teacher and the student
//! trained on) on exactly those lines and training entries on the others, each in corpus order
//! (`distill_text::merge_split`): the held-out prompts are entries neither model has seen.

use distill_text::{
    Document, PretrainedTokenizer, is_test_document, merge_split, read_gcide, split_documents,
    split_entry,
};
use std::io::Write;
use std::path::PathBuf;

const USAGE: &str = "usage: gcide_prompts CORPUS_DIR OUT.jsonl [--prompt-words N] [--limit N] \
                     [--tokenizer FILE [--seq-len S] [--max-new-tokens M]]";

/// The command line.
#[derive(Debug)]
struct Args {
    corpus: PathBuf,
    out: PathBuf,
    prompt_words: usize,
    limit: usize,
    tokenizer: Option<PathBuf>,
    seq_len: usize,
    max_new_tokens: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut args = Args {
        corpus: PathBuf::new(),
        out: PathBuf::new(),
        prompt_words: 4,
        limit: usize::MAX,
        tokenizer: None,
        seq_len: 128,
        max_new_tokens: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if !flag.starts_with("--") {
            positional.push(PathBuf::from(flag));
            continue;
        }
        let value = it.next().ok_or(format!("{flag} needs a value; {USAGE}"))?;
        let number = || {
            value
                .parse::<usize>()
                .map_err(|_| format!("{flag} {value:?} is not a number; {USAGE}"))
        };
        match flag.as_str() {
            "--prompt-words" => args.prompt_words = number()?,
            "--limit" => args.limit = number()?,
            "--seq-len" => args.seq_len = number()?,
            "--max-new-tokens" => args.max_new_tokens = number()?,
            "--tokenizer" => args.tokenizer = Some(PathBuf::from(&value)),
            _ => return Err(format!("unknown flag {flag}; {USAGE}")),
        }
    }
    let [corpus, out] = <[PathBuf; 2]>::try_from(positional).map_err(|_| USAGE.to_string())?;
    if args.prompt_words == 0 || args.max_new_tokens == 0 || args.max_new_tokens >= args.seq_len {
        return Err(format!(
            "expected --prompt-words >= 1 and 0 < --max-new-tokens < --seq-len; {USAGE}"
        ));
    }
    Ok(Args {
        corpus,
        out,
        ..args
    })
}

/// The `(prompt, completion)` of each entry of `docs` that splits and fits, in corpus order.
fn pairs(
    docs: &[Document],
    args: &Args,
    tokenizer: Option<&PretrainedTokenizer>,
) -> Result<Vec<(String, String)>, distill_text::TextError> {
    let split: Vec<(&str, &str)> = docs
        .iter()
        .filter_map(|d| split_entry(&d.text, args.prompt_words))
        .collect();
    let fits = match tokenizer {
        None => vec![true; split.len()],
        Some(tok) => {
            let prompts = tok.encode_batch(&split.iter().map(|(p, _)| *p).collect::<Vec<_>>())?;
            let completions =
                tok.encode_batch(&split.iter().map(|(_, c)| *c).collect::<Vec<_>>())?;
            let room = args.seq_len - args.max_new_tokens;
            prompts
                .iter()
                .zip(&completions)
                .map(|(p, c)| p.len() <= room && c.len() < args.max_new_tokens)
                .collect()
        }
    };
    Ok(split
        .into_iter()
        .zip(fits)
        .filter(|(_, fits)| *fits)
        .map(|((p, c), _)| (p.to_string(), c.to_string()))
        .collect())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2)
        }
    };
    let docs = read_gcide(&args.corpus)?;
    let entries = docs.len();
    let tokenizer = args
        .tokenizer
        .as_deref()
        .map(|p| PretrainedTokenizer::load(p, None))
        .transpose()?;
    let (train, test) = split_documents(docs);
    let mut lines = merge_split(
        pairs(&train, &args, tokenizer.as_ref())?,
        pairs(&test, &args, tokenizer.as_ref())?,
    );
    lines.truncate(args.limit);
    let mut out = std::io::BufWriter::new(std::fs::File::create(&args.out)?);
    for (prompt, completion) in &lines {
        writeln!(
            out,
            "{}",
            serde_json::json!({ "prompt": prompt, "completion": completion })
        )?;
    }
    out.flush()?;
    let held_out = (0..lines.len()).filter(|&i| is_test_document(i)).count();
    let fit = match &args.tokenizer {
        Some(_) => format!(
            " (prompt <= {} tokens, completion + end-of-sequence <= {})",
            args.seq_len - args.max_new_tokens,
            args.max_new_tokens
        ),
        None => String::new(),
    };
    println!(
        "{}: {} prompts, {held_out} of them held out, from {entries} GCIDE entries{fit}",
        args.out.display(),
        lines.len()
    );
    Ok(())
}
