//! `prepare` on a GCIDE-format corpus written by the test: the split, reuse of the tokenizer and
//! of the token caches, rebuilding corrupted caches, and its errors.

use super::common;

use distill_text::{
    BpeTokenizer, IGNORE_INDEX, Packed, TEST_EVERY, TextError, is_test_document, prepare,
    read_gcide, split_documents,
};
use std::path::Path;

/// The documents of packed sequences: their inputs joined (positions whose label is real, plus
/// the first input of each row), decoded and cut at `<|endoftext|>`.
fn documents_of(p: &Packed, t: &BpeTokenizer) -> Vec<String> {
    let mut ids: Vec<u32> = Vec::new();
    for n in 0..p.num_sequences {
        let row = n * p.seq_len..(n + 1) * p.seq_len;
        if n == 0 {
            ids.push(p.inputs[row.start] as u32);
        }
        ids.extend(
            p.labels[row]
                .iter()
                .filter(|&&l| l != IGNORE_INDEX)
                .map(|&l| l as u32),
        );
    }
    ids.split(|&i| i == t.eot_id())
        .filter(|d| !d.is_empty())
        .map(|d| t.decode(d).unwrap())
        .collect()
}

/// The index `NNNN` of a document whose text starts `docNNNN `.
fn doc_index(text: &str) -> usize {
    text[3..7]
        .parse()
        .unwrap_or_else(|_| panic!("not a generated document: {text:?}"))
}

#[test]
fn split_is_fixed_and_disjoint() {
    let docs: Vec<usize> = (0..103).collect();
    let (train, test) = split_documents(docs.clone());
    assert_eq!(split_documents(docs.clone()), (train.clone(), test.clone()));
    // Hand-checked: 0, 20, 40, 60, 80, 100 are held out.
    assert_eq!(test, vec![0, 20, 40, 60, 80, 100]);
    assert_eq!(train.len() + test.len(), 103);
    assert!(train.iter().all(|i| !test.contains(i)));
    assert!(is_test_document(TEST_EVERY * 7) && !is_test_document(TEST_EVERY * 7 + 1));
}

#[test]
fn prepare_trains_packs_and_keeps_the_split_apart() {
    let root = common::temp_dir("prep-split");
    let (corpus, out) = (root.join("gcide"), root.join("out"));
    common::corpus(&corpus, 10, 120);
    let p = prepare(&corpus, &out, 400, 16).unwrap();
    assert!(p.trained_tokenizer);
    assert_eq!(p.rebuilt_caches, 2);
    assert_eq!(
        (p.vocab_size, p.seq_len, p.tokenizer.vocab_size()),
        (400, 16, 400)
    );
    assert_eq!(
        p.fingerprint,
        distill_text::fingerprint(&p.tokenizer_path).unwrap()
    );
    assert_eq!(p.train.shape()[1], 16);
    assert_eq!(p.train.inputs.len(), p.train.num_sequences * 16);
    assert_eq!(p.test.labels.len(), p.test.num_sequences * 16);

    // The test sequences hold exactly documents 0, 20, ..., 100 in order, the train sequences
    // all others: no document is in both.
    let test_docs: Vec<usize> = documents_of(&p.test, &p.tokenizer)
        .iter()
        .map(|d| doc_index(d))
        .collect();
    let train_docs: Vec<usize> = documents_of(&p.train, &p.tokenizer)
        .iter()
        .map(|d| doc_index(d))
        .collect();
    assert_eq!(test_docs, vec![0, 20, 40, 60, 80, 100]);
    assert_eq!(
        train_docs,
        (0..120).filter(|i| i % 20 != 0).collect::<Vec<_>>()
    );
    // And they are the corpus documents' text, the metadata entry left out.
    let docs = read_gcide(&corpus).unwrap();
    assert_eq!(docs.len(), 120);
    assert_eq!(documents_of(&p.test, &p.tokenizer)[1], docs[20].text);
    std::fs::remove_dir_all(&root).unwrap();
}

fn overwrite_last_byte(path: &Path) {
    let mut b = std::fs::read(path).unwrap();
    *b.last_mut().unwrap() ^= 0xff;
    std::fs::write(path, b).unwrap();
}

#[test]
fn prepare_reuses_the_tokenizer_and_caches_and_rebuilds_corrupted_ones() {
    let root = common::temp_dir("prep-reuse");
    let (corpus, out) = (root.join("gcide"), root.join("out"));
    common::corpus(&corpus, 11, 60);
    let first = prepare(&corpus, &out, 350, 8).unwrap();

    let again = prepare(&corpus, &out, 350, 8).unwrap();
    assert!(!again.trained_tokenizer);
    assert_eq!(again.rebuilt_caches, 0);
    assert_eq!((&again.train, &again.test), (&first.train, &first.test));
    assert_eq!(again.fingerprint, first.fingerprint);

    // Another S reuses the same streams (they do not depend on S).
    let other_len = prepare(&corpus, &out, 350, 5).unwrap();
    assert_eq!(other_len.rebuilt_caches, 0);
    assert_eq!(
        other_len.train.num_real_tokens(),
        first.train.num_real_tokens()
    );

    // A corrupted cache is rejected and rebuilt to the same content.
    overwrite_last_byte(&out.join("tokens-train.bin"));
    let rebuilt = prepare(&corpus, &out, 350, 8).unwrap();
    assert_eq!(rebuilt.rebuilt_caches, 1);
    assert_eq!(rebuilt.train, first.train);
    std::fs::write(out.join("tokens-test.bin"), b"garbage").unwrap();
    assert_eq!(prepare(&corpus, &out, 350, 8).unwrap().rebuilt_caches, 1);

    // A new tokenizer (other fingerprint) invalidates both caches.
    std::fs::remove_file(out.join("tokenizer.json")).unwrap();
    let texts = common::sentences(99, 300);
    BpeTokenizer::train(texts.iter(), 350)
        .unwrap()
        .save(&out.join("tokenizer.json"))
        .unwrap();
    let swapped = prepare(&corpus, &out, 350, 8).unwrap();
    assert!(!swapped.trained_tokenizer);
    assert_ne!(swapped.fingerprint, first.fingerprint);
    assert_eq!(swapped.rebuilt_caches, 2);

    // A changed corpus invalidates both caches too.
    common::corpus(&corpus, 12, 60);
    assert_eq!(prepare(&corpus, &out, 350, 8).unwrap().rebuilt_caches, 2);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn prepare_errors() {
    let root = common::temp_dir("prep-errors");
    let (corpus, out) = (root.join("gcide"), root.join("out"));

    let err = prepare(&corpus, &out, 400, 16).unwrap_err().to_string();
    assert!(
        err.contains("gcide.dict.dz not found: run `make setup`"),
        "{err}"
    );
    assert!(matches!(
        prepare(&corpus, &out, 100, 16),
        Err(TextError::VocabSizeTooSmall { .. })
    ));
    assert!(matches!(
        prepare(&corpus, &out, 400, 0),
        Err(TextError::BadSeqLen(0))
    ));

    // An existing tokenizer of another size is not replaced.
    common::corpus(&corpus, 13, 40);
    prepare(&corpus, &out, 300, 8).unwrap();
    let err = prepare(&corpus, &out, 320, 8).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{} has a vocabulary of 300 tokens but 320 were requested: delete it to train a new one, or ask for 300",
            out.join("tokenizer.json").display()
        )
    );
    // An unreadable one is an error, not a silent retrain.
    std::fs::write(out.join("tokenizer.json"), b"{").unwrap();
    assert!(matches!(
        prepare(&corpus, &out, 300, 8),
        Err(TextError::TokenizerInvalid { .. })
    ));

    // A corpus of one document: it is the test split, the train split is empty.
    std::fs::remove_dir_all(&out).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    BpeTokenizer::train(common::sentences(14, 200).iter(), 300)
        .unwrap()
        .save(&out.join("tokenizer.json"))
        .unwrap();
    common::write_corpus(&corpus, &["Only one.".to_string()]);
    let err = prepare(&corpus, &out, 300, 8).unwrap_err().to_string();
    assert_eq!(
        err,
        "the train split has 0 tokens: at least 2 are needed for one sequence"
    );
    std::fs::remove_dir_all(&root).unwrap();
}
