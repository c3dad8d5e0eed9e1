//! `distill-text`: the byte-level BPE tokenizer, `prepare` on a GCIDE-format corpus, Python's
//! `tokenizers` reading what Rust wrote, and `.txt`/`.jsonl` corpora with a tokenizer Python
//! trained.

mod common;
mod files;
mod prepare;
mod python;
mod tokenizer;
