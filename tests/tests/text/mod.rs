//! `distill-text`: the byte-level BPE tokenizer, `prepare` on a GCIDE-format corpus, and
//! Python's `tokenizers` reading what Rust wrote.

mod common;
mod prepare;
mod python;
mod tokenizer;
