//! Flag values that pass their own checks but do not fit the run: an `--out` that is a file or
//! cannot be created is refused before anything is written, and a warm-up longer than the run is
//! warned about with both numbers.

use distill_tests::TempDir;
use distill_tests::trainer::{student, write_synthetic_idx};
use std::path::Path;

/// `student-trainer train` of a tiny MLP for one epoch on `data` into `out`, with `extra` flags.
async fn train(data: &Path, out: &Path, extra: &[&str]) -> distill_tests::trainer::Run {
    let (d, o) = (data.display().to_string(), out.display().to_string());
    let mut args = vec![
        "train",
        "--data-dir",
        &d,
        "--out",
        &o,
        "--arch",
        "mlp:8",
        "--epochs",
        "1",
        "--batch-size",
        "20",
        "--no-epoch-eval",
    ];
    args.extend_from_slice(extra);
    student(&args).await
}

#[tokio::test]
async fn an_out_that_is_a_file_or_cannot_be_created_is_refused_up_front() {
    let tmp = TempDir::new("student-out-file");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 40, 10, 10, 3);
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let e = train(&data, &file, &[]).await.one_error();
    assert_eq!(
        e,
        format!(
            "error: --out {} is a file: expected a directory (for checkpoint.json, metrics.jsonl \
             and report.json)",
            file.display()
        )
    );
    // A parent that is a file: the directory asked for is named, not a file inside it.
    let below = file.join("run");
    let e = train(&data, &below, &[]).await.one_error();
    assert!(
        e.starts_with(&format!("error: cannot create --out {}: ", below.display()))
            && !e.contains("metrics.jsonl"),
        "{e}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"not a directory");
}

#[tokio::test]
async fn a_warmup_longer_than_the_run_is_warned_about_once() {
    let tmp = TempDir::new("student-long-warmup");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 40, 10, 10, 4);
    let out = tmp.path().join("out");
    // 40 samples in batches of 20, one epoch: 2 optimizer steps.
    let run = train(&data, &out, &["--warmup-steps", "1000"])
        .await
        .expect_ok("train with a long warm-up");
    let warning = "--warmup-steps 1000 is not shorter than the run's 2 optimizer steps";
    assert_eq!(run.stderr.matches(warning).count(), 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("never reaches --lr (the last step uses 0.1 % of it)"),
        "{}",
        run.stderr
    );
    // A warm-up shorter than the run says nothing.
    let run = train(&data, &tmp.path().join("out2"), &["--warmup-steps", "1"])
        .await
        .expect_ok("train with a short warm-up");
    assert!(!run.stderr.contains("--warmup-steps"), "{}", run.stderr);
}
