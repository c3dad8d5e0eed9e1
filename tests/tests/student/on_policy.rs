//! On-policy distillation end to end (`distill --on-policy`): a language-model teacher trained
//! on a generated corpus is served by two replicas; the student samples completions of corpus
//! prompts with its own weights, the teachers score them, and one replica is SIGKILLed
//! mid-epoch. Every batch is scored and trained exactly once (ledger, each marked on-policy),
//! the run finishes, and the teacher-scored reverse KL of the student's samples on held-out
//! prompts falls. The mismatches users of other systems meet are refused before training.

use distill_tests::text_files::{TokenizerKind, documents, train_tokenizer, write_jsonl};
use distill_tests::trainer::{
    DistillArgs, assert_exactly_once, max_abs_diff, read_json, read_ledger, read_metrics,
    spawn_student, student, wait_for_ledger, write_synthetic_corpus,
};
use distill_tests::{TeacherProcess, TempDir};
use std::path::Path;

const SEQ: &str = "16";
const VOCAB: &str = "300";
const BATCH: usize = 8;
const EPOCHS: u64 = 3;

/// Trains the teacher LM on `corpus` into `dir`.
async fn train_teacher(corpus: &Path, dir: &Path) {
    let args: Vec<String> = [
        "train",
        "--arch",
        "lm:layers=2,d=32,heads=4",
        "--epochs",
        "2",
        "--data-dir",
        corpus.to_str().unwrap(),
        "--seq-len",
        SEQ,
        "--vocab-size",
        VOCAB,
        "--device",
        "cpu",
        "--threads",
        "1",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--no-epoch-eval",
        "--out",
        dir.to_str().unwrap(),
    ]
    .map(String::from)
    .to_vec();
    student(&args).await.expect_ok("train the teacher LM");
}

/// `distill --on-policy` flags for a student of `corpus` into `out`.
fn on_policy_args(corpus: &Path, out: &Path, urls: &[String], extra: &[&str]) -> Vec<String> {
    let mut args = DistillArgs::new(corpus, out)
        .teachers(urls)
        .arch("lm:layers=1,d=16,heads=2")
        .batch_size(BATCH)
        .flag("--temperature", 1)
        .flag("--lr", "3e-3")
        .build();
    args.extend(["--seq-len", SEQ, "--vocab-size", VOCAB].map(String::from));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_policy_batches_are_scored_once_through_a_failover_and_the_reverse_kl_falls() {
    let tmp = TempDir::new("student-on-policy");
    let corpus = tmp.path().join("corpus");
    write_synthetic_corpus(&corpus, 400, 1);
    let teacher_dir = tmp.path().join("teacher");
    train_teacher(&corpus, &teacher_dir).await;
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(TeacherProcess::start(&teacher_dir, &[] as &[&str]).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();

    let (out, ledger) = (tmp.path().join("student"), tmp.path().join("ledger"));
    let mut args = on_policy_args(
        &corpus,
        &out,
        &urls,
        &[
            "--on-policy",
            "1",
            "--prompt-tokens",
            "6",
            "--max-new-tokens",
            "10",
            "--eval-prompts",
            "32",
            "--top-k",
            "16",
            "--batch-timeout",
            "20",
            "--prefetch",
            "2",
        ],
    );
    args.extend(["--epochs".into(), EPOCHS.to_string()]);
    args.extend([
        "--batch-ledger".into(),
        ledger.to_str().unwrap().to_string(),
    ]);
    let mut run = spawn_student(&args);
    let at_kill = wait_for_ledger(&ledger, 6, &mut run).await;
    replicas[0].signal("KILL");
    let done = run
        .finish()
        .await
        .expect_ok("on-policy distill with a replica killed");
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
    assert!(
        lines.iter().all(|l| l["on_policy"] == true),
        "--on-policy 1: every batch is the student's own"
    );

    let metrics = read_metrics(&out);
    assert_eq!(metrics.len() as u64, EPOCHS);
    let kl: Vec<f64> = metrics
        .iter()
        .map(|m| {
            let op = &m["on_policy"];
            assert_eq!(op["on_policy_fraction"].as_f64(), Some(1.0), "{m}");
            assert!(op["tokens_generated"].as_u64().unwrap() > 0, "{m}");
            assert!(op["generation_tokens_per_s"].as_f64().unwrap() > 0.0, "{m}");
            let len = op["mean_completion_len"].as_f64().unwrap();
            assert!((1.0..=10.0).contains(&len), "{m}");
            assert!(m["test_perplexity"].as_f64().unwrap().is_finite(), "{m}");
            op["heldout_reverse_kl"]
                .as_f64()
                .expect("held-out reverse KL")
        })
        .collect();
    assert!(
        kl.last().unwrap() < kl.first().unwrap(),
        "the teacher-scored reverse KL on held-out prompts should fall: {kl:?}\n{}",
        done.stderr
    );
    let samples = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
    let samples: Vec<serde_json::Value> = samples
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len() as u64, EPOCHS * 4, "4 samples per epoch");
    assert!(
        samples
            .iter()
            .all(|s| !s["prompt"].as_str().unwrap().is_empty())
    );

    let report = read_json(&out.join("report.json"));
    let last = &report["on_policy"]["last_epoch"];
    assert_eq!(
        last["heldout_reverse_kl"].as_f64(),
        kl.last().copied(),
        "{report}"
    );

    mixed_k1_run_from_a_prompts_file(tmp.path(), &corpus, &urls[1..]).await;
    stopped_mid_epoch_and_resumed_equals_straight(tmp.path(), &corpus, &urls[1..]).await;
    mismatches_are_refused_before_training(tmp.path(), &corpus, &urls[1..]).await;
}

/// `--prompts FILE.jsonl` with reference completions, λ = 0.5 and the sampled-token estimator:
/// both kinds of batch are trained, every one once, and the epoch's on-policy fraction is the
/// ledger's.
async fn mixed_k1_run_from_a_prompts_file(tmp: &Path, corpus: &Path, urls: &[String]) {
    let words = ["plant", "animal", "water", "river", "stone"];
    let lines: Vec<String> = (0..60)
        .map(|i| {
            serde_json::json!({
                "prompt": words[i % 5],
                "completion": format!("{} {}", words[(i + 2) % 5], words[(i / 3) % 5]),
            })
            .to_string()
        })
        .collect();
    let prompts = tmp.join("prompts.jsonl");
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let (out, ledger) = (tmp.join("mixed"), tmp.join("mixed.ledger"));
    let p = prompts.to_str().unwrap();
    let mut args = on_policy_args(
        corpus,
        &out,
        urls,
        &[
            "--on-policy",
            "0.5",
            "--prompts",
            p,
            "--completion-field",
            "completion",
            "--on-policy-estimator",
            "k1",
            "--max-new-tokens",
            "6",
            "--epochs",
            "2",
            "--eval-prompts",
            "3",
        ],
    );
    args.extend([
        "--batch-ledger".into(),
        ledger.to_str().unwrap().to_string(),
    ]);
    let run = student(&args)
        .await
        .expect_ok("a mixed k1 run from a prompts file");
    let lines = read_ledger(&ledger);
    // 60 lines, one in 20 held out: 57 training prompts in batches of 8.
    assert_exactly_once(&lines, 2, 57usize.div_ceil(BATCH) as u64);
    let on = lines.iter().filter(|l| l["on_policy"] == true).count();
    assert!(
        0 < on && on < lines.len(),
        "λ = 0.5: {on} of {} on-policy",
        lines.len()
    );
    // Off-policy batches (a word of prompt, two of completion and the end-of-sequence token per
    // row, right-padded to the context) go to the teachers cut after their last labelled
    // position, not as wide as the context.
    let seq: i64 = SEQ.parse().unwrap();
    let positions = |on: bool| -> Vec<i64> {
        lines
            .iter()
            .filter(|l| l["on_policy"] == on)
            .map(|l| l["positions"].as_i64().unwrap())
            .collect()
    };
    let (sampled, reference) = (positions(true), positions(false));
    assert!(
        sampled
            .iter()
            .chain(&reference)
            .all(|&p| 1 <= p && p <= seq)
            && reference.iter().any(|&p| p < seq),
        "positions of the on-policy batches {sampled:?} and the off-policy ones {reference:?}"
    );
    let metrics = read_metrics(&out);
    let fraction: f64 = metrics
        .iter()
        .map(|m| m["on_policy"]["on_policy_fraction"].as_f64().unwrap())
        .sum::<f64>()
        / 2.0;
    assert!(
        (fraction - on as f64 / lines.len() as f64).abs() < 1e-9,
        "{fraction} vs the ledger's {on}/{}\n{}",
        lines.len(),
        run.stderr
    );
    assert!(
        metrics
            .iter()
            .all(|m| m["loss"].as_f64().unwrap().is_finite())
    );
    assert!(
        metrics[1]["on_policy"]["heldout_reverse_kl"]
            .as_f64()
            .unwrap()
            .is_finite()
    );
}

/// An on-policy run stopped mid-epoch (SIGTERM's path) and resumed samples the same completions
/// and ends with the uninterrupted run's weights exactly: each batch's on-policy draw and
/// sampling seed are functions of its place in the schedule.
async fn stopped_mid_epoch_and_resumed_equals_straight(tmp: &Path, corpus: &Path, urls: &[String]) {
    let flags = [
        "--on-policy",
        "0.5",
        "--prompt-tokens",
        "6",
        "--max-new-tokens",
        "8",
        "--epochs",
        "2",
        "--limit",
        "48",
        "--eval-prompts",
        "8",
        "--seed",
        "11",
    ];
    let straight = tmp.join("opd-straight");
    student(&on_policy_args(corpus, &straight, urls, &flags))
        .await
        .expect_ok("straight on-policy run");
    let cut = tmp.join("opd-cut");
    let mut stop = on_policy_args(corpus, &cut, urls, &flags);
    stop.extend(["--stop-after-steps".into(), "8".into()]);
    let run = student(&stop).await;
    assert_eq!(run.code, Some(143), "{}", run.stderr);
    let mut resume = on_policy_args(corpus, &cut, urls, &flags);
    resume.push("--resume".into());
    student(&resume).await.expect_ok("resumed on-policy run");
    let weights = |d: &Path| distill_models::Checkpoint::open(d).unwrap().weights_path();
    let w = max_abs_diff(&weights(&straight), &weights(&cut));
    assert_eq!(w, 0.0, "resumed on-policy weights differ by {w}");
    let (a, b) = (read_metrics(&straight), read_metrics(&cut));
    assert_eq!(
        a[1]["on_policy"]["heldout_reverse_kl"],
        b.last().unwrap()["on_policy"]["heldout_reverse_kl"]
    );
}

/// A prompt longer than the context leaves room for, a teacher of another tokenizer, and a
/// tokenizer without an end-of-sequence token: each refused with one error line before any
/// training.
async fn mismatches_are_refused_before_training(tmp: &Path, corpus: &Path, urls: &[String]) {
    let refused = |args: Vec<String>| async move { student(&args).await.one_error() };
    let long = [
        "--on-policy",
        "1",
        "--prompt-tokens",
        "8",
        "--max-new-tokens",
        "10",
    ];
    let e = refused(on_policy_args(corpus, &tmp.join("long"), urls, &long)).await;
    assert!(
        e.contains("has 8 tokens")
            && e.contains("--max-new-tokens 10")
            && e.contains("--truncate-prompts"),
        "{e}"
    );
    assert!(!tmp.join("long").join("checkpoint.json").exists());
    // --truncate-prompts keeps the last 6 tokens of each prompt instead.
    let mut cut = long.to_vec();
    cut.extend([
        "--truncate-prompts",
        "--epochs",
        "1",
        "--limit",
        "16",
        "--eval-prompts",
        "0",
    ]);
    student(&on_policy_args(corpus, &tmp.join("cut"), urls, &cut))
        .await
        .expect_ok("--truncate-prompts");

    let other = tmp.join("other-corpus");
    write_synthetic_corpus(&other, 400, 2);
    let ok = [
        "--on-policy",
        "1",
        "--prompt-tokens",
        "6",
        "--max-new-tokens",
        "4",
    ];
    let e = refused(on_policy_args(&other, &tmp.join("other"), urls, &ok)).await;
    assert!(e.contains("tokenizer fingerprint"), "{e}");

    // Text files whose tokenizer knows no end-of-sequence token.
    let dir = tmp.join("no-eos");
    std::fs::create_dir_all(&dir).unwrap();
    let docs = documents(40, 3);
    write_jsonl(&dir.join("docs.jsonl"), &docs, "text");
    let tok = tmp.join("no-eos-tokenizer.json");
    train_tokenizer(&tok, TokenizerKind::WordLevel, "[SEP]", &docs);
    let mut args = on_policy_args(&dir, &tmp.join("no-eos-out"), urls, &ok);
    args.extend(["--tokenizer".into(), tok.to_str().unwrap().to_string()]);
    let e = refused(args).await;
    assert!(e.contains("end-of-document token"), "{e}");
}

/// A prompts file (`--prompts`, with reference completions) written from `corpus`'s entries:
/// the first `words` words the prompt, the rest the completion; line `i` held out when
/// `i % 20 == 0`.
fn write_prompts(corpus: &Path, path: &Path, words: usize) -> usize {
    let docs = distill_text::read_gcide(corpus).unwrap();
    let lines: Vec<String> = docs
        .iter()
        .filter_map(|d| distill_text::split_entry(&d.text, words))
        .map(|(p, c)| serde_json::json!({ "prompt": p, "completion": c }).to_string())
        .collect();
    std::fs::write(path, lines.join("\n")).unwrap();
    lines.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompts_file_trains_its_first_limit_prompts_and_keeps_its_held_out_lines() {
    let tmp = TempDir::new("student-on-policy-limit");
    let corpus = tmp.path().join("corpus");
    write_synthetic_corpus(&corpus, 400, 1);
    let teacher_dir = tmp.path().join("teacher");
    train_teacher(&corpus, &teacher_dir).await;
    let teacher = TeacherProcess::start(&teacher_dir, &[] as &[&str]).await;
    let prompts = tmp.path().join("prompts.jsonl");
    let lines = write_prompts(&corpus, &prompts, 1);
    assert!(lines > 100, "{lines} prompts");

    // 20 training prompts of the file's ~380: 3 batches of 8 (the last one short), at
    // lambda 0.5; the held-out prompts are still measured.
    let out = tmp.path().join("student");
    let mut args = on_policy_args(
        &corpus,
        &out,
        &[teacher.url()],
        &[
            "--on-policy",
            "0.5",
            "--prompts",
            prompts.to_str().unwrap(),
            "--completion-field",
            "completion",
            "--max-new-tokens",
            "6",
            "--eval-prompts",
            "8",
            "--limit",
            "20",
        ],
    );
    args.extend(["--epochs".into(), "1".into()]);
    student(&args)
        .await
        .expect_ok("on-policy distill from a prompts file with --limit");
    let metrics = read_metrics(&out);
    assert_eq!(metrics.len(), 1);
    let m = &metrics[0];
    assert_eq!(m["samples"], 20, "--limit 20 trains 20 prompts: {m}");
    assert_eq!(m["step"], 3, "{m}");
    let op = &m["on_policy"];
    assert!(
        op["heldout_reverse_kl"].as_f64().unwrap().is_finite(),
        "{m}"
    );
    assert!(op["heldout_completion_len"].as_f64().unwrap() > 0.0, "{m}");
}
