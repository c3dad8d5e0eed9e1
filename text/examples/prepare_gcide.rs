//! Prepares the real corpus and prints what it took:
//! `cargo run --release -p distill-text --example prepare_gcide -- [CORPUS_DIR] [OUT_DIR] [VOCAB] [SEQ_LEN]`
//! (defaults `data/gcide`, `runs/text`, 8192, 128). A second run reuses the tokenizer and caches.

use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let (corpus, out) = (
        PathBuf::from(arg(0, "data/gcide")),
        PathBuf::from(arg(1, "runs/text")),
    );
    let (vocab, seq_len): (usize, usize) = (arg(2, "8192").parse()?, arg(3, "128").parse()?);

    let t = Instant::now();
    let docs = distill_text::read_gcide(&corpus)?;
    let bytes: usize = docs.iter().map(|d| d.text.len()).sum();
    println!(
        "read {} documents, {} bytes of text, in {:.2} s",
        docs.len(),
        bytes,
        t.elapsed().as_secs_f64()
    );

    let tokenizer_path = out.join(distill_text::TOKENIZER_FILE);
    if !tokenizer_path.exists() {
        // Train as prepare would (on the train split), timed on its own; prepare then reuses it.
        let (train, _) = distill_text::split_documents(docs);
        let t = Instant::now();
        let tok = distill_text::BpeTokenizer::train(train.iter().map(|d| d.text.as_str()), vocab)?;
        println!(
            "BPE training on {} train documents: {:.2} s",
            train.len(),
            t.elapsed().as_secs_f64()
        );
        tok.save(&tokenizer_path)?;
    }

    let t = Instant::now();
    let p = distill_text::prepare(&corpus, &out, vocab, seq_len)?;
    println!(
        "prepare: {:.2} s (tokenizer {}, {} token caches rebuilt)",
        t.elapsed().as_secs_f64(),
        if p.trained_tokenizer {
            "trained"
        } else {
            "reused"
        },
        p.rebuilt_caches
    );
    println!(
        "tokenizer {} sha256 {}",
        p.tokenizer_path.display(),
        p.fingerprint
    );
    for (name, s) in [("train", &p.train), ("test", &p.test)] {
        println!(
            "{name}: {:?} sequences x len, {} real tokens",
            s.shape(),
            s.num_real_tokens()
        );
    }
    println!(
        "bytes per token (train): {:.2}",
        bytes as f64 * 0.95 / p.train.num_real_tokens() as f64
    );
    let sample = &p.test.inputs[..p.seq_len.min(48)];
    let ids: Vec<u32> = sample.iter().map(|&i| i as u32).collect();
    println!("first test sequence: {:?}", p.tokenizer.decode(&ids)?);
    Ok(())
}
