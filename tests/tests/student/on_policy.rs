//! On-policy distillation end to end (`distill --on-policy`): a language-model teacher trained
//! on a generated corpus is served by two replicas; the student samples completions of corpus
//! prompts with its own weights, the teachers score them, and one replica is SIGKILLed
//! mid-epoch. Every batch is scored and trained exactly once (ledger, each marked on-policy),
//! the run finishes, and the teacher-scored reverse KL of the student's samples on held-out
//! prompts falls. The mismatches users of other systems meet are refused before training.

use distill_tests::trainer::{
    DistillArgs, assert_exactly_once, read_ledger, read_metrics, spawn_student, student,
    wait_for_ledger, write_synthetic_corpus,
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
    args.extend(["--batch-ledger".into(), ledger.to_str().unwrap().to_string()]);
    let mut run = spawn_student(&args);
    let at_kill = wait_for_ledger(&ledger, 6, &mut run).await;
    replicas[0].signal("KILL");
    let done = run.finish().await.expect_ok("on-policy distill with a replica killed");
    let lines = read_ledger(&ledger);
    let batches = lines.iter().filter(|l| l["epoch"] == 0).count() as u64;
    assert!(at_kill < (EPOCHS * batches) as usize, "the run ended before the kill");
    let per_replica = assert_exactly_once(&lines, EPOCHS, batches);
    assert!(per_replica.get(&urls[1]).copied().unwrap_or(0) > 0, "{per_replica:?}");
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
            op["heldout_reverse_kl"].as_f64().expect("held-out reverse KL")
        })
        .collect();
    assert!(
        kl.last().unwrap() < kl.first().unwrap(),
        "the teacher-scored reverse KL on held-out prompts should fall: {kl:?}\n{}",
        done.stderr
    );
    let samples = std::fs::read_to_string(out.join("samples.jsonl")).unwrap();
    let samples: Vec<serde_json::Value> =
        samples.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(samples.len() as u64, EPOCHS * 4, "4 samples per epoch");
    assert!(samples.iter().all(|s| !s["prompt"].as_str().unwrap().is_empty()));
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
