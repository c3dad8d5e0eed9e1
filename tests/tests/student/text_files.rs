//! Your own text with the teacher's tokenizer, end to end: `.jsonl` files and a word-level
//! `tokenizer.json` trained by Python's `tokenizers`; `train --tokenizer` trains a built-in LM
//! teacher (keeping the tokenizer and the corpus record beside it), `teacher-server` serves it
//! with that tokenizer's fingerprint, `distill` trains an LM student from it (and from the
//! logit cache `capture` fills), `eval` of either checkpoint finds the same test split (and the
//! same perplexity as training, as does `eval --teacher`), and a student with another tokenizer
//! file is refused naming both fingerprints. Bad input is one error line
//! with nothing written.

use distill_tests::text_files::{TextFilesCorpus, write_jsonl};
use distill_tests::trainer::{DistillArgs, read_metrics, student};
use distill_tests::{TeacherProcess, TempDir};
use std::path::Path;

const SEQ: &str = "16";

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).unwrap()))
}

/// `student-trainer eval --json --device cpu ARGS`: the perplexity it reports.
async fn eval_perplexity(args: &[String]) -> f64 {
    let mut all: Vec<String> = ["eval", "--json"].map(String::from).to_vec();
    all.extend(args.iter().cloned());
    let run = student(&all).await.expect_ok("eval");
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    v["perplexity"].as_f64().expect("perplexity in eval --json")
}

fn checkpoint_eval_args(checkpoint: &Path, data: &Path) -> Vec<String> {
    vec![
        "--checkpoint".into(),
        checkpoint.display().to_string(),
        "--data-dir".into(),
        data.display().to_string(),
    ]
}

fn assert_close(a: f64, b: f64, what: &str) {
    assert!((a - b).abs() <= 1e-3 * b, "{what}: {a} vs {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_lm_trained_on_jsonl_with_its_tokenizer_is_distilled() {
    let tmp = TempDir::new("text-files-lm");
    let corpus = TextFilesCorpus::jsonl(tmp.path(), 300, 5);
    let teacher_dir = tmp.path().join("teacher");

    let mut args: Vec<String> = [
        "train",
        "--arch",
        "lm:layers=1,d=32,heads=4",
        "--epochs",
        "1",
        "--seq-len",
        SEQ,
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--out",
    ]
    .map(String::from)
    .to_vec();
    args.push(teacher_dir.display().to_string());
    args.extend(corpus.flags());
    student(&args).await.expect_ok("train the teacher LM");
    assert_eq!(
        std::fs::read(teacher_dir.join("tokenizer.json")).unwrap(),
        std::fs::read(&corpus.tokenizer).unwrap(),
        "the teacher's tokenizer kept beside the checkpoint"
    );
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(teacher_dir.join("corpus.json")).unwrap()).unwrap();
    assert_eq!(record["eos_token"], "</s>");
    assert_eq!(record["files"][1]["path"], "part-2/more.jsonl");
    let metrics = read_metrics(&teacher_dir);
    let (tokens, ppl) = (
        metrics[0]["tokens"].as_u64().unwrap(),
        metrics[0]["test_perplexity"].as_f64().unwrap(),
    );
    assert!(
        ppl.is_finite() && ppl > 1.0 && ppl < corpus.vocab_size as f64,
        "{ppl}"
    );

    // eval of the checkpoint reads the same test split from its corpus.json and tokenizer.json.
    let eval_args = checkpoint_eval_args(&teacher_dir, &corpus.data_dir);
    assert_close(
        eval_perplexity(&eval_args).await,
        ppl,
        "eval against training",
    );
    // A flag that says otherwise is refused, naming both values.
    let mut other = eval_args.clone();
    other.extend(["--documents", "lines"].map(String::from));
    let mut all = vec!["eval".to_string()];
    all.extend(other);
    let e = student(&all).await.one_error();
    assert!(
        e.contains("--documents lines differs from the checkpoint's file"),
        "{e}"
    );

    // Served with the tokenizer beside it: its fingerprint and vocabulary.
    let teacher = TeacherProcess::start(&teacher_dir, &[] as &[&str]).await;
    let info = teacher.info().await;
    let fingerprint = sha256_hex(&corpus.tokenizer);
    assert_eq!(info.tokenizer_fingerprint, fingerprint);
    assert_eq!(info.num_logits as usize, corpus.vocab_size);

    // The served teacher's perplexity from its full logits, on the split the flags describe.
    let mut served = vec![
        "--teacher".to_string(),
        teacher.url(),
        "--seq-len".into(),
        SEQ.into(),
    ];
    served.extend(corpus.flags());
    let teacher_ppl = eval_perplexity(&served).await;
    assert_close(teacher_ppl, ppl, "served teacher against training");

    let out = tmp.path().join("student");
    let mut args = DistillArgs::new(&corpus.data_dir, &out)
        .teacher(teacher.url())
        .arch("lm:layers=1,d=16,heads=2")
        .epochs(1)
        .batch_size(8)
        .top_k(8)
        .build();
    args.extend(["--seq-len", SEQ, "--tokenizer"].map(String::from));
    args.push(corpus.tokenizer.display().to_string());
    student(&args).await.expect_ok("distill the student LM");
    let m = read_metrics(&out);
    assert_eq!(
        m[0]["tokens"].as_u64(),
        Some(tokens),
        "the same tokens as the teacher's run"
    );
    let student_ppl = m[0]["test_perplexity"].as_f64().unwrap();
    let eval_args = checkpoint_eval_args(&out, &corpus.data_dir);
    assert_close(
        eval_perplexity(&eval_args).await,
        student_ppl,
        "student eval",
    );

    // capture takes the same flags: its logit cache then stands in for the teacher.
    let cache = tmp.path().join("logit-cache");
    let mut args: Vec<String> = ["capture", "--top-k", "8", "--seq-len", SEQ, "--teacher"]
        .map(String::from)
        .to_vec();
    args.extend([teacher.url(), "--out".into(), cache.display().to_string()]);
    args.extend(corpus.flags());
    student(&args).await.expect_ok("capture");
    let cached = tmp.path().join("cached-student");
    let mut args = DistillArgs::new(&corpus.data_dir, &cached)
        .arch("lm:layers=1,d=16,heads=2")
        .epochs(1)
        .batch_size(8)
        .top_k(8)
        .no_epoch_eval()
        .build();
    args.extend(["--seq-len", SEQ, "--logit-cache"].map(String::from));
    args.extend([cache.display().to_string(), "--tokenizer".into()]);
    args.push(corpus.tokenizer.display().to_string());
    student(&args)
        .await
        .expect_ok("distill from the captured cache");
    assert_eq!(read_metrics(&cached)[0]["tokens"].as_u64(), Some(tokens));

    // The same tokenizer in other bytes (written compactly) is another fingerprint: refused.
    let compact = tmp.path().join("compact-tokenizer.json");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&corpus.tokenizer).unwrap()).unwrap();
    std::fs::write(&compact, json.to_string()).unwrap();
    let mut args = DistillArgs::new(&corpus.data_dir, &tmp.path().join("refused"))
        .teacher(teacher.url())
        .arch("lm:layers=1,d=16,heads=2")
        .epochs(1)
        .build();
    args.extend(["--seq-len", SEQ, "--tokenizer"].map(String::from));
    args.push(compact.display().to_string());
    let e = student(&args).await.one_error();
    assert!(
        e.contains("tokenizer fingerprint")
            && e.contains(&fingerprint)
            && e.contains(&sha256_hex(&compact)),
        "{e}"
    );

    // A corpus file edited after training: eval refuses, naming the file.
    let mut docs = corpus.documents[150..].to_vec();
    docs[0].push_str(" Edited.");
    write_jsonl(&corpus.data_dir.join("part-2/more.jsonl"), &docs, "text");
    let mut all = vec!["eval".to_string()];
    all.extend(checkpoint_eval_args(&teacher_dir, &corpus.data_dir));
    let e = student(&all).await.one_error();
    assert!(
        e.contains("not what the checkpoint was trained on: data file part-2/more.jsonl changed"),
        "{e}"
    );
}

/// Runs `train` on `data` with `tokenizer` (and `extra` flags) into a fresh `--out`; returns the
/// one error line, after checking that nothing was written: no `--out`, no token cache.
async fn refused(tmp: &Path, data: &Path, tokenizer: &Path, extra: &[&str]) -> String {
    let out = tmp.join("never-written");
    let mut args: Vec<String> = [
        "train",
        "--arch",
        "lm:layers=1,d=16,heads=2",
        "--seq-len",
        SEQ,
    ]
    .map(String::from)
    .to_vec();
    args.extend(
        [
            "--data-dir",
            data.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from),
    );
    args.extend(extra.iter().map(|s| s.to_string()));
    let e = student(&args).await.one_error();
    assert!(!out.exists(), "{} was written", out.display());
    if data.is_dir() {
        assert!(
            !data.join(distill_text::CACHE_DIR).exists(),
            "a token cache was written"
        );
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_text_files_and_tokenizers_are_one_error_line_and_nothing_written() {
    let tmp = TempDir::new("text-files-errors");
    let corpus = TextFilesCorpus::jsonl(tmp.path(), 40, 6);
    let bad = tmp.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let bad_file = bad.join("b.jsonl");
    let tok = &corpus.tokenizer;

    std::fs::write(&bad_file, "{\"text\": \"fine\"}\n\n{\"text\": \"cut off\n").unwrap();
    let e = refused(tmp.path(), &bad, tok, &[]).await;
    assert!(
        e.starts_with(&format!(
            "error: {} line 3: expected a JSON object with a string field \"text\", got text that is not JSON (",
            bad_file.display()
        )),
        "{e}"
    );

    std::fs::write(
        &bad_file,
        "{\"text\": \"fine\"}\n{\"content\": \"no text\"}\n",
    )
    .unwrap();
    let e = refused(tmp.path(), &bad, tok, &[]).await;
    assert_eq!(
        e,
        format!(
            "error: {} line 2: expected a string field \"text\" (--text-field), got the fields [\"content\"]",
            bad_file.display()
        )
    );
    let e = refused(tmp.path(), &bad, tok, &["--text-field", "content"]).await;
    assert!(
        e.contains("line 1: expected a string field \"content\""),
        "{e}"
    );

    // A tokenizer file that does not parse.
    let broken = tmp.path().join("broken.json");
    std::fs::write(&broken, "{\"model\": {\"type\": \"WordLevel\"").unwrap();
    let e = refused(tmp.path(), &corpus.data_dir, &broken, &[]).await;
    assert!(
        e.starts_with(&format!(
            "error: {} is not a usable tokenizer.json: ",
            broken.display()
        )),
        "{e}"
    );

    // A tokenizer with no end-of-document token: its special tokens are listed.
    let no_eos = tmp.path().join("no-eos.json");
    let json = std::fs::read_to_string(tok)
        .unwrap()
        .replace("</s>", "<sep>");
    std::fs::write(&no_eos, json).unwrap();
    let e = refused(tmp.path(), &corpus.data_dir, &no_eos, &[]).await;
    assert!(
        e.ends_with("or --eos-token TOKEN; its special tokens are <unk>, <sep>"),
        "{e}"
    );
    let e = refused(tmp.path(), &corpus.data_dir, tok, &["--eos-token", "<end>"]).await;
    assert!(
        e.ends_with("has no end-of-document token \"<end>\" (from --eos-token); its special tokens are <unk>, </s>"),
        "{e}"
    );

    // No text files at all, and text files without --tokenizer.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = refused(tmp.path(), &empty, tok, &[]).await;
    assert!(e.contains("holds no .txt or .jsonl file"), "{e}");
    let args: Vec<String> = ["train", "--arch", "lm:layers=1,d=16,heads=2", "--data-dir"]
        .map(String::from)
        .into_iter()
        .chain([corpus.data_dir.display().to_string()])
        .collect();
    let e = student(&args).await.one_error();
    assert!(e.ends_with("holds .txt/.jsonl text files: give --tokenizer FILE (the teacher's tokenizer.json) to read them"), "{e}");
}
