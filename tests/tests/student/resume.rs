//! `--resume`: a run stopped after epoch 1 and resumed to epoch 2 equals a straight 2-epoch run
//! (same seed, CPU, Adam): weights and optimizer state to 1e-6. A run stopped mid-epoch (the
//! test-only `--stop-after-steps`, which takes SIGTERM's path) and resumed ends with the straight
//! run's weights exactly, dropout included: each step's draws are seeded by its place in the
//! schedule.

use distill_tests::TempDir;
use distill_tests::trainer::{max_abs_diff, read_json, read_metrics, student, write_synthetic_idx};

async fn resumed_equals_straight(arch: &str, samples: usize) {
    let tmp = TempDir::new("student-resume");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, samples, 100, 10, 3);
    let d = data.display().to_string();
    let (straight, resumed) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    let common = |out: &std::path::Path, epochs: &'static str| {
        vec![
            "train".to_string(),
            "--arch".into(),
            arch.into(),
            "--data-dir".into(),
            d.clone(),
            "--seed".into(),
            "5".into(),
            "--batch-size".into(),
            "32".into(),
            "--epochs".into(),
            epochs.into(),
            "--out".into(),
            out.display().to_string(),
        ]
    };
    student(&common(&straight, "2"))
        .await
        .expect_ok("straight run");
    student(&common(&resumed, "1"))
        .await
        .expect_ok("first epoch");
    assert_eq!(read_json(&resumed.join("checkpoint.json"))["epoch"], 1);
    let mut again = common(&resumed, "2");
    again.push("--resume".into());
    student(&again).await.expect_ok("resumed run");

    let (a, b) = (
        read_json(&straight.join("checkpoint.json")),
        read_json(&resumed.join("checkpoint.json")),
    );
    assert_eq!((&a["epoch"], &a["step"]), (&b["epoch"], &b["step"]));
    assert_eq!(a["epoch"], 2);
    let w = max_abs_diff(&weights(&straight), &weights(&resumed));
    assert!(
        w <= 1e-6,
        "{arch}: resumed weights differ from the straight run by {w}"
    );
    let o = max_abs_diff(&optimizer(&straight), &optimizer(&resumed));
    assert!(o <= 1e-6, "{arch}: resumed optimizer state differs by {o}");
    // The resumed run appended its epoch to the same metrics log.
    assert_eq!(read_metrics(&resumed).len(), 2);
    assert_eq!(
        read_metrics(&resumed)[1]["loss"],
        read_metrics(&straight)[1]["loss"]
    );

    // A third run at the target epoch has nothing to do and leaves the weights as they are.
    student(&again)
        .await
        .expect_ok("resume at the target epoch");
    assert_eq!(max_abs_diff(&weights(&straight), &weights(&resumed)), w);
}

#[tokio::test]
async fn mlp_resumed_at_epoch_one_equals_a_straight_run() {
    resumed_equals_straight("mlp", 1000).await;
}

/// The CNN has dropout: the per-step seeding makes its masks resume-safe too.
#[tokio::test]
async fn cnn_with_dropout_resumed_at_epoch_one_equals_a_straight_run() {
    resumed_equals_straight("cnn", 200).await;
}

/// The CNN (dropout) cut at two mid-epoch steps, one in each epoch, in two separate runs; each
/// cut exits as after SIGTERM (143, checkpoint at the next batch) and `--resume` finishes it
/// with the straight run's weights and optimizer state bit for bit (CPU, one thread). With a
/// generator seeded once per epoch, the resumed steps drew other dropout masks.
#[tokio::test]
async fn cnn_cut_mid_epoch_resumes_to_the_straight_runs_weights_exactly() {
    const BATCHES: u64 = 8; // 256 samples in batches of 32
    let tmp = TempDir::new("student-resume-mid");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 256, 50, 10, 11);
    let d = data.display().to_string();
    let args = |out: &std::path::Path| {
        [
            "train",
            "--arch",
            "cnn",
            "--data-dir",
            &d,
            "--seed",
            "3",
            "--batch-size",
            "32",
            "--epochs",
            "2",
            "--lr-schedule",
            "cosine",
            "--no-epoch-eval",
            "--out",
            &out.display().to_string(),
        ]
        .map(String::from)
        .to_vec()
    };
    let straight = tmp.path().join("straight");
    student(&args(&straight)).await.expect_ok("straight run");
    let a = read_json(&straight.join("checkpoint.json"));
    assert_eq!(
        (a["epoch"].as_u64(), a["step"].as_u64()),
        (Some(2), Some(2 * BATCHES))
    );

    for cut in [3, BATCHES + 5] {
        let out = tmp.path().join(format!("cut-{cut}"));
        let mut stop = args(&out);
        stop.extend(["--stop-after-steps".into(), cut.to_string()]);
        let run = student(&stop).await;
        assert_eq!(run.code, Some(143), "cut at {cut}:\n{}", run.stderr);
        assert!(run.stderr.contains("checkpoint saved"), "{}", run.stderr);
        let meta = read_json(&out.join("checkpoint.json"));
        assert_eq!(meta["step"].as_u64(), Some(cut), "{meta}");
        assert_eq!(meta["epoch"].as_u64(), Some(cut / BATCHES), "{meta}");
        assert_eq!(
            meta["trainer"]["next_batch"].as_u64(),
            Some(cut % BATCHES),
            "{meta}"
        );

        let mut resume = args(&out);
        resume.push("--resume".into());
        student(&resume).await.expect_ok("resumed run");
        let b = read_json(&out.join("checkpoint.json"));
        assert_eq!((&a["epoch"], &a["step"]), (&b["epoch"], &b["step"]));
        let w = max_abs_diff(&weights(&straight), &weights(&out));
        assert_eq!(w, 0.0, "cut at step {cut}: resumed weights differ by {w}");
        let o = max_abs_diff(&optimizer(&straight), &optimizer(&out));
        assert_eq!(
            o, 0.0,
            "cut at step {cut}: resumed optimizer state differs by {o}"
        );
    }
}

#[tokio::test]
async fn resume_refuses_a_checkpoint_of_another_architecture() {
    let tmp = TempDir::new("student-resume-arch");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 100, 50, 10, 4);
    let (d, out) = (
        data.display().to_string(),
        tmp.path().join("out").display().to_string(),
    );
    student(&[
        "train",
        "--arch",
        "mlp:16",
        "--epochs",
        "1",
        "--data-dir",
        &d,
        "--out",
        &out,
    ])
    .await
    .expect_ok("first");
    let run = student(&[
        "train",
        "--arch",
        "mlp:32",
        "--epochs",
        "2",
        "--resume",
        "--data-dir",
        &d,
        "--out",
        &out,
    ])
    .await;
    assert_eq!(run.code, Some(1));
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains("cannot resume") && errors[0].contains("mlp:16"),
        "{}",
        errors[0]
    );
}

/// The weights file of the checkpoint in `dir` (named in its manifest).
fn weights(dir: &std::path::Path) -> std::path::PathBuf {
    distill_models::Checkpoint::open(dir)
        .unwrap()
        .weights_path()
}

/// The optimizer state file of the checkpoint in `dir`.
fn optimizer(dir: &std::path::Path) -> std::path::PathBuf {
    distill_models::Checkpoint::open(dir)
        .unwrap()
        .optimizer_path()
        .unwrap()
}
