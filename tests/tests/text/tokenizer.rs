//! Training, saving, loading and fingerprinting the byte-level BPE.

use super::common;

use distill_text::{BpeTokenizer, EOT_TOKEN, MIN_VOCAB_SIZE, PAD_TOKEN, TextError, fingerprint};

#[test]
fn trains_the_requested_vocab_size_and_round_trips_text() {
    let texts = common::sentences(1, 400);
    for vocab in [MIN_VOCAB_SIZE, 300, 600] {
        let t = BpeTokenizer::train(texts.iter(), vocab).unwrap();
        assert_eq!(t.vocab_size(), vocab);
        assert_eq!(
            (t.eot_id(), t.pad_id()),
            (0, 1),
            "special tokens come first"
        );
        for text in [
            texts[0].as_str(),
            "Caf\u{e9} na\u{ef}ve \u{2014} \u{4e2d}\u{6587} \u{1f600}\n\ttabs  and  spaces ",
            "",
        ] {
            let ids = t.encode(text).unwrap();
            assert!(ids.iter().all(|&i| (i as usize) < vocab));
            assert_eq!(t.decode(&ids).unwrap(), text);
        }
    }
    // Merges make common text shorter than its bytes; with no merges it is one id per byte.
    let (small, big) = (
        BpeTokenizer::train(texts.iter(), MIN_VOCAB_SIZE).unwrap(),
        BpeTokenizer::train(texts.iter(), 600).unwrap(),
    );
    assert_eq!(small.encode(&texts[0]).unwrap().len(), texts[0].len());
    assert!(big.encode(&texts[0]).unwrap().len() < texts[0].len() / 2);
}

#[test]
fn special_tokens_in_text_are_single_ids() {
    let t = BpeTokenizer::train(common::sentences(2, 200).iter(), 300).unwrap();
    let ids = t
        .encode(&format!("an be{EOT_TOKEN}cor{PAD_TOKEN}"))
        .unwrap();
    assert!(
        ids.contains(&t.eot_id()) && ids.contains(&t.pad_id()),
        "{ids:?}"
    );
}

#[test]
fn training_is_deterministic_and_save_load_keeps_the_fingerprint() {
    let dir = common::temp_dir("tok-save");
    let texts = common::sentences(3, 300);
    let a = BpeTokenizer::train(texts.iter(), 400).unwrap();
    let b = BpeTokenizer::train(texts.iter(), 400).unwrap();
    assert_eq!(a.fingerprint(), b.fingerprint());
    let path = dir.join("tokenizer.json");
    a.save(&path).unwrap();
    // The fingerprint is the SHA-256 of the file, computed here by sha2 directly.
    let direct = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&path).unwrap()))
    };
    assert_eq!(fingerprint(&path).unwrap(), direct);
    assert_eq!(a.fingerprint(), direct);
    let loaded = BpeTokenizer::load(&path).unwrap();
    assert_eq!(loaded.fingerprint(), direct);
    assert_eq!(
        loaded.encode(&texts[5]).unwrap(),
        a.encode(&texts[5]).unwrap()
    );
    // No temporary file is left next to it.
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("tokenizer.json")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn fingerprint_changes_when_the_file_changes() {
    let dir = common::temp_dir("tok-fp");
    let path = dir.join("tokenizer.json");
    BpeTokenizer::train(common::sentences(4, 200).iter(), 300)
        .unwrap()
        .save(&path)
        .unwrap();
    let before = fingerprint(&path).unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes.push(b'\n'); // same JSON, other bytes
    std::fs::write(&path, &bytes).unwrap();
    let after = fingerprint(&path).unwrap();
    assert_ne!(before, after);
    assert_eq!(BpeTokenizer::load(&path).unwrap().fingerprint(), after);
    // A different vocabulary is a different file.
    BpeTokenizer::train(common::sentences(4, 200).iter(), 301)
        .unwrap()
        .save(&path)
        .unwrap();
    assert_ne!(fingerprint(&path).unwrap(), before);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_vocab_sizes_are_errors() {
    let texts = common::sentences(5, 50);
    let err = BpeTokenizer::train(texts.iter(), 257).unwrap_err();
    assert!(matches!(
        err,
        TextError::VocabSizeTooSmall {
            requested: 257,
            minimum: 258
        }
    ));
    assert_eq!(
        err.to_string(),
        "vocab size 257 is too small: expected at least 258 (256 byte-level tokens + 2 special tokens)"
    );
    // Three short texts have far fewer than 5,000 distinct pairs to merge.
    let err = BpeTokenizer::train(["ab ab", "abc", "b a"].iter(), 5000).unwrap_err();
    assert!(
        matches!(err, TextError::VocabNotReached { requested: 5000, learned } if learned < 300),
        "{err}"
    );
    assert!(err.to_string().contains("the corpus is too small"), "{err}");
}

#[test]
fn unreadable_or_invalid_tokenizer_files_are_errors_naming_the_path() {
    let dir = common::temp_dir("tok-bad");
    let missing = dir.join("nope.json");
    let err = BpeTokenizer::load(&missing).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot read tokenizer file {}", missing.display())),
        "{err}"
    );
    assert!(fingerprint(&missing).is_err());

    let garbage = dir.join("garbage.json");
    std::fs::write(&garbage, b"{\"not\": \"a tokenizer\"}").unwrap();
    let err = BpeTokenizer::load(&garbage).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "{} is not a usable tokenizer.json",
            garbage.display()
        )),
        "{err}"
    );

    // A valid tokenizer.json without <|pad|>: rename the token in the JSON.
    let path = dir.join("tokenizer.json");
    BpeTokenizer::train(common::sentences(6, 100).iter(), 300)
        .unwrap()
        .save(&path)
        .unwrap();
    let json = std::fs::read_to_string(&path)
        .unwrap()
        .replace(PAD_TOKEN, "<|padding|>");
    std::fs::write(&path, json).unwrap();
    let err = BpeTokenizer::load(&path).unwrap_err().to_string();
    assert!(err.ends_with("it has no special token <|pad|>"), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn saving_where_no_directory_can_be_made_is_a_write_error() {
    let dir = common::temp_dir("tok-write");
    let file = dir.join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let path = file.join("tokenizer.json");
    let t = BpeTokenizer::train(common::sentences(9, 100).iter(), 300).unwrap();
    let err = t.save(&path).unwrap_err();
    assert!(matches!(err, TextError::Write { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot write {}: ", path.display())),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
