//! Token-level distillation of a language model end to end, on a generated text corpus in the
//! GCIDE's dictd layout: `train --arch lm:...` trains the teacher (and keeps its tokenizer
//! beside the checkpoint), two teacher-server replicas serve it, `distill` trains a smaller LM
//! from top-k per position while one replica is killed mid-epoch (every batch trained exactly
//! once, every real token counted once per epoch), `eval` reports perplexity, and a student whose
//! tokenizer differs is refused at start.

use distill_tests::trainer::{
    DistillArgs, assert_exactly_once, read_json, read_ledger, read_metrics, spawn_student, student,
    wait_for_ledger, write_synthetic_corpus,
};
use distill_tests::{TeacherProcess, TempDir, command};
use std::path::Path;

const SEQ: &str = "16";
const VOCAB: &str = "300";
const BATCH: usize = 8;
const EPOCHS: u64 = 2;

fn text_flags(data: &Path) -> Vec<String> {
    [
        "--data-dir",
        data.to_str().unwrap(),
        "--seq-len",
        SEQ,
        "--vocab-size",
        VOCAB,
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    .map(String::from)
    .to_vec()
}

/// `student-trainer eval --json` with `flags`: the perplexity it reports.
fn eval_perplexity<S: AsRef<std::ffi::OsStr>>(flags: &[S]) -> f64 {
    let out = command("student-trainer")
        .args(["eval", "--json"])
        .args(flags)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["perplexity"].as_f64().expect("perplexity in eval --json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_language_model_is_distilled_token_by_token_through_a_failover() {
    let tmp = TempDir::new("student-lm");
    let corpus = tmp.path().join("corpus");
    write_synthetic_corpus(&corpus, 400, 1);
    let teacher_dir = tmp.path().join("teacher");

    // The teacher: a 2-block LM trained on the next-token labels.
    let mut args: Vec<String> = [
        "train",
        "--arch",
        "lm:layers=2,d=32,heads=4",
        "--epochs",
        "1",
    ]
    .map(String::from)
    .to_vec();
    args.extend(text_flags(&corpus));
    args.extend(
        [
            "--batch-size",
            "16",
            "--lr",
            "3e-3",
            "--out",
            teacher_dir.to_str().unwrap(),
        ]
        .map(String::from),
    );
    student(&args).await.expect_ok("train the teacher LM");
    assert!(
        teacher_dir.join("tokenizer.json").is_file(),
        "tokenizer kept beside the checkpoint"
    );
    let teacher_metrics = read_metrics(&teacher_dir);
    let tokens = teacher_metrics[0]["tokens"]
        .as_u64()
        .expect("tokens in metrics.jsonl");
    let ppl = teacher_metrics[0]["test_perplexity"]
        .as_f64()
        .expect("test perplexity");
    assert!(
        ppl.is_finite() && ppl > 1.0 && ppl < 300.0,
        "teacher perplexity {ppl}"
    );

    // `eval` of the checkpoint reports the same perplexity on the held-out split (sequence
    // length and vocabulary from the checkpoint).
    let eval_ppl = eval_perplexity(&[
        "--checkpoint",
        teacher_dir.to_str().unwrap(),
        "--data-dir",
        corpus.to_str().unwrap(),
        "--device",
        "cpu",
    ]);
    assert!(
        (eval_ppl - ppl).abs() <= 1e-3 * ppl,
        "eval {eval_ppl} vs training's {ppl}"
    );

    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(TeacherProcess::start(&teacher_dir, &[] as &[&str]).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();
    let info = replicas[0].info().await;
    assert!(info.sequence_model && info.max_seq_len == 16 && info.num_logits == 300);

    // The student: a 1-block LM, top-8 per position, one replica killed in epoch 1.
    let (out_dir, ledger) = (tmp.path().join("student"), tmp.path().join("ledger"));
    let mut args = DistillArgs::new(&corpus, &out_dir)
        .teachers(&urls)
        .arch("lm:layers=1,d=16,heads=2")
        .epochs(EPOCHS)
        .batch_size(BATCH)
        .top_k(8)
        .prefetch(2)
        .flag("--batch-timeout", 20)
        .ledger(&ledger)
        .build();
    args.extend(["--seq-len", SEQ, "--vocab-size", VOCAB].map(String::from));
    let mut run = spawn_student(&args);
    let at_kill = wait_for_ledger(&ledger, 6, &mut run).await;
    replicas[0].signal("KILL");
    let done = run
        .finish()
        .await
        .expect_ok("distill with a replica killed");
    let lines = read_ledger(&ledger);
    let batches = lines.iter().filter(|l| l["epoch"] == 0).count() as u64;
    assert!(
        at_kill < (EPOCHS * batches) as usize,
        "the run ended before the kill"
    );
    let per_replica = assert_exactly_once(&lines, EPOCHS, batches);
    assert!(
        per_replica.get(&urls[1]).copied().unwrap_or(0) > 0,
        "{per_replica:?}"
    );
    let metrics = read_metrics(&out_dir);
    assert_eq!(metrics.len() as u64, EPOCHS);
    for m in &metrics {
        assert_eq!(
            m["tokens"].as_u64(),
            Some(tokens),
            "every real token once per epoch: {m}"
        );
        assert!(m["test_perplexity"].as_f64().unwrap().is_finite(), "{m}");
        assert!(m["tokens_per_s"].as_f64().unwrap() > 0.0, "{m}");
    }
    let report = read_json(&out_dir.join("report.json"));
    assert!(
        report.to_string().contains("perplexity"),
        "{report}\n{}",
        done.stderr
    );

    // The logit cache holds per-position targets: epoch 1 from the teacher fills it, epoch 2
    // reads it; the same tokens are trained, and a cache of another sequence length is refused.
    let cached_out = tmp.path().join("cached");
    let cache_dir = tmp.path().join("logit-cache");
    let mut args = DistillArgs::new(&corpus, &cached_out)
        .teachers(&urls[1..])
        .arch("lm:layers=1,d=16,heads=2")
        .epochs(2)
        .batch_size(BATCH)
        .top_k(8)
        .no_epoch_eval()
        .build();
    args.extend(["--seq-len", SEQ, "--vocab-size", VOCAB, "--logit-cache"].map(String::from));
    args.push(cache_dir.to_str().unwrap().to_string());
    let run = student(&args).await.expect_ok("distill with a logit cache");
    let report = read_json(&cached_out.join("report.json"));
    assert_eq!(
        report["cached_epochs"].as_u64(),
        Some(1),
        "{report}\n{}",
        run.stderr
    );
    for m in read_metrics(&cached_out) {
        assert_eq!(m["tokens"].as_u64(), Some(tokens), "{m}");
    }
    let mut args = DistillArgs::new(&corpus, &tmp.path().join("cached-32"))
        .arch("lm:layers=1,d=16,heads=2")
        .epochs(1)
        .top_k(8)
        .build();
    args.extend(["--seq-len", "32", "--vocab-size", VOCAB, "--logit-cache"].map(String::from));
    args.push(cache_dir.to_str().unwrap().to_string());
    let e = student(&args).await.one_error();
    assert!(e.contains("sequence length"), "{e}");

    // The served teacher's perplexity from its full logits equals its checkpoint's.
    let mut flags = vec!["--teacher".to_string(), urls[1].clone()];
    flags.extend(text_flags(&corpus));
    let served_ppl = eval_perplexity(&flags);
    assert!(
        (served_ppl - eval_ppl).abs() <= 1e-3 * eval_ppl,
        "served {served_ppl} vs checkpoint {eval_ppl}"
    );

    // Another corpus, hence another tokenizer: refused at start, naming both fingerprints.
    let other = tmp.path().join("other-corpus");
    write_synthetic_corpus(&other, 400, 2);
    let mut args = DistillArgs::new(&other, &tmp.path().join("refused"))
        .teachers(&urls[1..])
        .arch("lm:layers=1,d=16,heads=2")
        .epochs(1)
        .build();
    args.extend(["--seq-len", SEQ, "--vocab-size", VOCAB].map(String::from));
    let refused = student(&args).await;
    let e = refused.one_error();
    assert!(
        e.contains("tokenizer fingerprint") && e.contains(info.tokenizer_fingerprint.as_str()),
        "{e}"
    );
}
