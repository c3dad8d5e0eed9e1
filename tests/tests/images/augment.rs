//! `--augment crop,flip`: the teacher sees exactly the augmented view the student sees
//! (function matching); the crops are a function of the schedule position, so a run cut
//! mid-epoch and resumed ends with the straight run's weights bit for bit; `--logit-cache`
//! with `--augment` is refused naming both flags.

use distill_models::Checkpoint;
use distill_tests::images::{FolderSpec, write_image_folder};
use distill_tests::trainer::{
    DistillArgs, max_abs_diff, read_json, read_metrics, student, write_synthetic_idx,
};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};
use std::path::{Path, PathBuf};

fn weights(dir: &Path) -> PathBuf {
    Checkpoint::open(dir).expect("checkpoint").weights_path()
}

fn optimizer(dir: &Path) -> PathBuf {
    Checkpoint::open(dir)
        .expect("checkpoint")
        .optimizer_path()
        .expect("optimizer state")
}

/// The teacher is the student's own initial network (`train --stop-after-steps 0` saves the
/// weights seed 3 draws, before any step), and the student does not move (`--lr 1e-30`): the
/// MSE between their logits is zero on every batch exactly when the teacher gets the very
/// crops and flips the student trains on. A teacher given other inputs (another mean) is far
/// from zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_teacher_sees_exactly_the_augmented_view_the_student_sees() {
    let tmp = TempDir::new("images-function-matching");
    let root = tmp.path().join("folder");
    write_image_folder(&root, &FolderSpec::gray(3, 8, 16));
    let (d, init) = (root.display().to_string(), tmp.path().join("init"));
    let i = init.display().to_string();
    let run = student(&[
        "train",
        "--arch",
        "mlp:8",
        "--seed",
        "3",
        "--data-dir",
        &d,
        "--batch-size",
        "8",
        "--epochs",
        "1",
        "--stop-after-steps",
        "0",
        "--out",
        &i,
    ])
    .await;
    assert_eq!(run.code, Some(143), "{}", run.stderr);
    let server = TeacherProcess::start(&init, &[] as &[&str]).await;
    let distill = |out: &Path, extra: &[(&str, &str)]| {
        extra.iter().fold(
            DistillArgs::new(&root, out)
                .teacher(server.url())
                .arch("mlp:8")
                .flag("--seed", 3)
                .epochs(2)
                .batch_size(8)
                .no_epoch_eval()
                .flag("--augment", "crop,flip")
                .flag("--loss", "mse")
                .flag("--alpha", 1)
                .flag("--labels", "none")
                .flag("--lr", "1e-30"),
            |a, (k, v)| a.flag(k, v),
        )
    };
    let same = tmp.path().join("same");
    student(&distill(&same, &[]).build())
        .await
        .expect_ok("distill with augmented views");
    let losses: Vec<f64> = read_metrics(&same)
        .iter()
        .map(|m| m["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(losses.len(), 2);
    assert!(losses.iter().all(|l| *l < 1e-9), "{losses:?}");

    let other = tmp.path().join("other");
    student(&distill(&other, &[("--teacher-mean", "0.4")]).build())
        .await
        .expect_ok("distill with another teacher view");
    let loss = read_metrics(&other)[0]["loss"].as_f64().unwrap();
    assert!(
        loss > 1e-4,
        "a teacher given other inputs matched too: {loss}"
    );
}

/// A 3 × 32 × 32 teacher, a gray 1 × 28 × 28 student, augmented: cut after 4 of 6 steps
/// (mid-epoch; exit 143 as after SIGTERM) and resumed, the run ends with the straight run's
/// weights and optimizer state bit for bit, both views' crops repeated. Without `--augment`
/// the weights differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_augmented_run_cut_mid_epoch_resumes_to_the_straight_runs_weights() {
    let tmp = TempDir::new("images-augment-resume");
    let root = tmp.path().join("folder");
    write_image_folder(&root, &FolderSpec::gray(3, 8, 28));
    let teacher = tmp.path().join("teacher");
    fresh_checkpoint(&teacher, "mlp:16", &[3, 32, 32], 3);
    // One request per forward pass: the teacher's logits of a batch then do not depend on
    // which requests the server happened to batch together (a matrix product's rounding may
    // depend on its row count), so the two runs get the same soft targets bit for bit.
    let server = TeacherProcess::start(&teacher, &["--max-batch-size", "8"]).await;
    let args = |out: &Path| {
        DistillArgs::new(&root, out)
            .teacher(server.url())
            .arch("mlp:8")
            .flag("--seed", 5)
            .flag("--channels", 1)
            .epochs(2)
            .batch_size(8)
            .no_epoch_eval()
    };
    let augmented = |out: &Path| args(out).flag("--augment", "crop,flip");
    let straight = tmp.path().join("straight");
    student(&augmented(&straight).build())
        .await
        .expect_ok("straight run");
    let report = read_json(&straight.join("report.json"));
    assert_eq!(report["augment"], "crop,flip", "{report}");
    assert!(report["trainer_data_waited_s"].as_f64().unwrap() >= 0.0);

    let cut = tmp.path().join("cut");
    let run = student(&augmented(&cut).flag("--stop-after-steps", 4).build()).await;
    assert_eq!(run.code, Some(143), "{}", run.stderr);
    let meta = read_json(&cut.join("checkpoint.json"));
    assert_eq!(
        (
            meta["epoch"].as_u64(),
            meta["trainer"]["next_batch"].as_u64()
        ),
        (Some(1), Some(1)),
        "{meta}"
    );
    student(&augmented(&cut).resume().build())
        .await
        .expect_ok("resumed run");
    assert_eq!(max_abs_diff(&weights(&straight), &weights(&cut)), 0.0);
    assert_eq!(max_abs_diff(&optimizer(&straight), &optimizer(&cut)), 0.0);

    let plain = tmp.path().join("plain");
    student(&args(&plain).build())
        .await
        .expect_ok("run without --augment");
    assert!(max_abs_diff(&weights(&straight), &weights(&plain)) > 0.0);
}

#[tokio::test]
async fn augmentation_is_online_only_and_for_image_folders() {
    let tmp = TempDir::new("images-augment-refused");
    let root = tmp.path().join("folder");
    write_image_folder(&root, &FolderSpec::gray(2, 2, 8));
    let out = tmp.path().join("out");
    let args = DistillArgs::new(&root, &out)
        .teacher("http://127.0.0.1:1")
        .flag("--augment", "crop")
        .flag("--logit-cache", tmp.path().join("cache").display())
        .build();
    let run = student(&args).await;
    assert_eq!(
        run.one_error(),
        "error: --augment: --augment crop makes new views of the images every epoch, and \
         --logit-cache holds the soft targets of one view: use one or the other"
    );
    assert!(!out.exists());

    let idx = tmp.path().join("idx");
    write_synthetic_idx(&idx, 20, 10, 3, 1);
    let run = student(&[
        "train",
        "--augment",
        "flip",
        "--data-dir",
        &idx.display().to_string(),
        "--out",
        &out.display().to_string(),
    ])
    .await;
    assert!(
        run.one_error()
            .starts_with("error: --augment applies to image folders")
    );
    assert!(!out.exists());
}
