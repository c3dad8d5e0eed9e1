//! A checkpoint whose files do not belong together (what renaming three files one after another
//! could leave after `kill -9`) is refused by `--resume` and `eval`, naming the file, instead of
//! loading one epoch's weights as another's.

use distill_models::Checkpoint;
use distill_tests::TempDir;
use distill_tests::trainer::{Run, student, write_synthetic_idx};

fn train_args(data: &str, out: &std::path::Path, epochs: &str) -> Vec<String> {
    [
        "train",
        "--arch",
        "mlp:16",
        "--data-dir",
        data,
        "--limit",
        "200",
        "--batch-size",
        "50",
        "--no-epoch-eval",
        "--epochs",
        epochs,
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([out.display().to_string()])
    .collect()
}

fn refused(run: &Run, file: &std::path::Path) {
    assert_eq!(run.code, Some(1), "{}", run.stderr);
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains(&file.display().to_string())
            && errors[0].contains("differ from checkpoint.json"),
        "{}",
        errors[0]
    );
}

#[tokio::test]
async fn resume_and_eval_refuse_files_of_another_epoch() {
    let tmp = TempDir::new("student-torn");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 200, 50, 10, 9);
    let d = data.display().to_string();
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    student(&train_args(&d, &one, "1"))
        .await
        .expect_ok("epoch 1");
    student(&train_args(&d, &two, "2"))
        .await
        .expect_ok("epochs 1-2");
    let (ck1, ck2) = (
        Checkpoint::open(&one).unwrap(),
        Checkpoint::open(&two).unwrap(),
    );
    // Epoch 2's weights and optimizer state under the names epoch 1's checkpoint.json gives.
    std::fs::copy(ck2.weights_path(), ck1.weights_path()).unwrap();
    let mut resume = train_args(&d, &one, "2");
    resume.push("--resume".into());
    refused(&student(&resume).await, &ck1.weights_path());
    refused(
        &student(&[
            "eval",
            "--checkpoint",
            &one.display().to_string(),
            "--data-dir",
            &d,
        ])
        .await,
        &ck1.weights_path(),
    );
    // Epoch 1 saved again (same seed: same files, the torn one replaced), then its optimizer
    // state torn: still refused, naming the optimizer file.
    student(&train_args(&d, &one, "1"))
        .await
        .expect_ok("epoch 1 again");
    let ck1 = Checkpoint::open(&one).unwrap();
    let opt1 = ck1.optimizer_path().unwrap();
    std::fs::copy(ck2.optimizer_path().unwrap(), &opt1).unwrap();
    refused(&student(&resume).await, &opt1);
}
