//! `prepare_files` on `.txt` and `.jsonl` corpora with a tokenizer trained by Python's
//! `tokenizers`: the same ids as Python encodes, the end-of-document token after every document,
//! packing, the held-out split (every N-th document, or other files) and the token caches.

use super::common;

use distill_tests::text_files::{
    TokenizerKind, documents, python_encode, train_tokenizer, write_jsonl,
};
use distill_text::{
    CACHE_DIR, Documents, FilesSpec, IGNORE_INDEX, Packed, TestSplit, pack_stream, prepare_files,
};
use std::path::Path;

/// The token stream packed sequences were cut from: the first input, then every real label.
fn stream_of(p: &Packed) -> Vec<u32> {
    let mut s = vec![p.inputs[0] as u32];
    s.extend(
        p.labels
            .iter()
            .filter(|&&l| l != IGNORE_INDEX)
            .map(|&l| l as u32),
    );
    s
}

/// Every document's ids followed by `eos`.
fn with_eos(ids: &[Vec<u32>], eos: u32) -> Vec<u32> {
    ids.iter()
        .flat_map(|d| d.iter().copied().chain([eos]))
        .collect()
}

/// A byte-level BPE of 400 tokens trained by Python on generated text, `<|endoftext|>` its one
/// special token (id 0), in `dir/tokenizer.json`.
fn python_bpe(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("tokenizer.json");
    let vocab = train_tokenizer(
        &path,
        TokenizerKind::ByteLevelBpe(400),
        "<|endoftext|>",
        &documents(300, 1),
    );
    assert_eq!(vocab, 400);
    path
}

fn spec(tokenizer: &Path, documents: Documents, test: TestSplit) -> FilesSpec {
    FilesSpec {
        tokenizer: tokenizer.to_path_buf(),
        documents,
        text_field: "text".into(),
        eos_token: None,
        test,
    }
}

/// Writes `docs` as `.txt` files under `dir/name` as `mode` reads them back, with white space
/// that the reader must skip; returns the documents the reader must find.
fn write_txt(dir: &Path, name: &str, docs: &[String], mode: Documents) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    match mode {
        Documents::File => {
            // One file per document, several lines and the final newline kept; files sort in
            // the order of their numbers.
            let expected: Vec<String> = docs
                .iter()
                .map(|d| format!("{}\n", d.replace(". ", ".\n")))
                .collect();
            std::fs::create_dir_all(dir.join(name)).unwrap();
            for (i, d) in expected.iter().enumerate() {
                std::fs::write(dir.join(name).join(format!("{i:03}.txt")), d).unwrap();
            }
            std::fs::write(dir.join(name).join("blank.txt"), " \n\n").unwrap();
            expected
        }
        Documents::Lines => {
            let mut text = docs.join("\n");
            text.insert_str(docs[0].len(), "\n   \n\r");
            std::fs::write(dir.join(format!("{name}.txt")), format!("{text}\r\n")).unwrap();
            docs.to_vec()
        }
        Documents::BlankLines => {
            let expected: Vec<String> = docs.iter().map(|d| d.replace(". ", ".\n")).collect();
            let text = expected.join("\n\n").replacen("\n\n", "\n \t\n\n", 1);
            std::fs::write(dir.join(format!("{name}.txt")), format!("\n{text}\n")).unwrap();
            expected
        }
    }
}

#[test]
fn txt_and_jsonl_files_give_the_ids_python_gives_in_each_documents_mode() {
    let root = common::temp_dir("files-python");
    let tokenizer = python_bpe(&root);
    for (k, mode) in [Documents::File, Documents::Lines, Documents::BlankLines]
        .into_iter()
        .enumerate()
    {
        let dir = root.join(mode.name());
        let docs = documents(45, 10 + k as u64);
        // Corpus order: the a… text, then m.jsonl, then z… text.
        let mut expected = write_txt(&dir, "a", &docs[..15], mode);
        write_jsonl(&dir.join("m.jsonl"), &docs[15..30], "text");
        expected.extend(docs[15..30].iter().cloned());
        expected.extend(write_txt(&dir.join("z"), "z", &docs[30..], mode));
        assert_eq!(expected.len(), 45);

        let p = prepare_files(&dir, &spec(&tokenizer, mode, TestSplit::Every(7)), 12).unwrap();
        let eos = p.tokenizer.eos_id();
        assert_eq!(
            (p.tokenizer.eos_token(), eos, p.tokenizer.vocab_size()),
            ("<|endoftext|>", 0, 400)
        );
        let ids = python_encode(&tokenizer, &expected);
        let (test, train): (Vec<_>, Vec<_>) = ids
            .iter()
            .cloned()
            .enumerate()
            .partition(|(i, _)| i % 7 == 0);
        let strip = |v: Vec<(usize, Vec<u32>)>| v.into_iter().map(|(_, d)| d).collect::<Vec<_>>();
        let (train, test) = (with_eos(&strip(train), eos), with_eos(&strip(test), eos));
        assert_eq!(stream_of(&p.train), train, "{mode} train ids");
        assert_eq!(stream_of(&p.test), test, "{mode} test ids");
        // Windows of S + 1 tokens, the short last one padded with the EOS id, labels -100.
        assert_eq!(p.train, pack_stream(&train, 12, eos).unwrap());
        assert_eq!(p.test, pack_stream(&test, 12, eos).unwrap());
        let n = p.train.num_sequences;
        let real = train.len() - 1 - (n - 1) * 12; // real labels in the last window
        assert!((1..=12).contains(&real));
        let (inputs, labels) = (
            &p.train.inputs[(n - 1) * 12..],
            &p.train.labels[(n - 1) * 12..],
        );
        assert_eq!(labels[real - 1], i64::from(eos), "the corpus ends with EOS");
        assert!(labels[real..].iter().all(|&l| l == IGNORE_INDEX));
        assert!(inputs[real..].iter().all(|&i| i == i64::from(eos)));
    }
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn test_data_files_are_the_held_out_split() {
    let root = common::temp_dir("files-test-data");
    let tokenizer = python_bpe(&root);
    let dir = root.join("corpus");
    let docs = documents(30, 3);
    write_jsonl(&dir.join("train.jsonl"), &docs[..20], "body");
    // Test files inside the data directory are left out of training.
    write_jsonl(&dir.join("held-out/test.jsonl"), &docs[20..], "body");
    let mut s = spec(
        &tokenizer,
        Documents::File,
        TestSplit::Data(dir.join("held-out")),
    );
    s.text_field = "body".into();
    let p = prepare_files(&dir, &s, 16).unwrap();
    let eos = p.tokenizer.eos_id();
    assert_eq!(
        stream_of(&p.train),
        with_eos(&python_encode(&tokenizer, &docs[..20]), eos)
    );
    assert_eq!(
        stream_of(&p.test),
        with_eos(&python_encode(&tokenizer, &docs[20..]), eos)
    );
    let roles: Vec<(&str, &str)> = p
        .record
        .files
        .iter()
        .map(|f| (f.role.as_str(), f.path.as_str()))
        .collect();
    assert_eq!(roles, [("data", "train.jsonl"), ("test", "test.jsonl")]);
    // A single test file outside the data directory works the same.
    std::fs::rename(dir.join("held-out/test.jsonl"), root.join("test.jsonl")).unwrap();
    s.test = TestSplit::Data(root.join("test.jsonl"));
    let q = prepare_files(&dir, &s, 16).unwrap();
    assert_eq!((q.train, q.test), (p.train, p.test));
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_token_cache_is_reused_and_rebuilt_when_a_file_or_the_tokenizer_changes() {
    let root = common::temp_dir("files-cache");
    let tokenizer = python_bpe(&root);
    let dir = root.join("corpus");
    let docs = documents(40, 4);
    write_jsonl(&dir.join("a.jsonl"), &docs[..20], "text");
    write_jsonl(&dir.join("b/c.jsonl"), &docs[20..], "text");
    let s = spec(&tokenizer, Documents::File, TestSplit::Every(5));
    let first = prepare_files(&dir, &s, 8).unwrap();
    assert_eq!(first.rebuilt_caches, 2);
    let caches: Vec<String> = std::fs::read_dir(dir.join(CACHE_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(caches.len(), 2, "{caches:?}");
    let rebuilt = |s: &FilesSpec, seq: usize| prepare_files(&dir, s, seq).unwrap().rebuilt_caches;

    // Reused as is, and for another S (the streams do not depend on it).
    let again = prepare_files(&dir, &s, 8).unwrap();
    assert_eq!(
        (again.rebuilt_caches, &again.train, &again.test),
        (0, &first.train, &first.test)
    );
    assert_eq!(rebuilt(&s, 5), 0);
    // The same bytes written again: still the same files.
    write_jsonl(&dir.join("b/c.jsonl"), &docs[20..], "text");
    assert_eq!(rebuilt(&s, 8), 0);
    // An edited file re-tokenizes, and so does a corrupted cache (only that one).
    write_jsonl(&dir.join("b/c.jsonl"), &docs[21..], "text");
    let edited = prepare_files(&dir, &s, 8).unwrap();
    assert_eq!(edited.rebuilt_caches, 2);
    assert_ne!(
        edited.record.corpus_fingerprint,
        first.record.corpus_fingerprint
    );
    let train_cache = dir
        .join(CACHE_DIR)
        .join(caches.iter().find(|c| c.ends_with("-train.bin")).unwrap());
    let mut bytes = std::fs::read(&train_cache).unwrap();
    *bytes.last_mut().unwrap() ^= 0x01;
    std::fs::write(&train_cache, bytes).unwrap();
    assert_eq!(rebuilt(&s, 8), 1);
    // Another split rule re-tokenizes (and so does going back); the same end-of-document token
    // named explicitly does not.
    let mut named = s.clone();
    named.eos_token = Some("<|endoftext|>".into());
    assert_eq!(rebuilt(&named, 8), 0);
    assert_eq!(
        rebuilt(&spec(&tokenizer, Documents::File, TestSplit::Every(4)), 8),
        2
    );
    assert_eq!(rebuilt(&s, 8), 2);
    // Another tokenizer file (the same tokenizer written compactly: other bytes, other
    // fingerprint) re-tokenizes to the same ids.
    let compact = root.join("compact.json");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&tokenizer).unwrap()).unwrap();
    std::fs::write(&compact, json.to_string()).unwrap();
    let mut other = s.clone();
    other.tokenizer = compact;
    let swapped = prepare_files(&dir, &other, 8).unwrap();
    assert_eq!(swapped.rebuilt_caches, 2);
    assert_ne!(
        swapped.tokenizer.fingerprint(),
        edited.tokenizer.fingerprint()
    );
    assert_eq!((swapped.train, swapped.test), (edited.train, edited.test));
    std::fs::remove_dir_all(&root).unwrap();
}
