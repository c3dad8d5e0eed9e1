//! Bad image folders and files: each refused with one error line naming the folder (and the
//! classes) or the file, before anything is trained or written; undecodable files skipped and
//! counted under `--skip-bad-images`; image flags refused for other data; a student trained on
//! a folder records its classes, and `eval` names them.

use distill_tests::TempDir;
use distill_tests::images::{FolderSpec, write_image_folder};
use distill_tests::trainer::{read_json, student, student_logging, write_synthetic_idx};
use std::path::Path;

/// `train` on `data` into `out`, with `extra` flags.
fn train_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--arch",
        "mlp:8",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--data-dir",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// Runs `train` on `data`, expects one error line and no output directory; returns the line.
async fn refused(data: &Path, out: &Path, extra: &[&str]) -> String {
    let run = student(&train_args(data, out, extra)).await;
    let line = run.one_error();
    assert!(!out.exists(), "{} was written: {line}", out.display());
    line
}

#[tokio::test]
async fn bad_folders_are_refused_naming_the_folder_and_the_classes() {
    let tmp = TempDir::new("images-bad-folders");
    let out = tmp.path().join("out");
    let root = tmp.path().join("folder");
    std::fs::create_dir_all(root.join("train")).unwrap();
    let train = root.join("train").display().to_string();
    assert_eq!(
        refused(&root, &out, &[]).await,
        format!(
            "error: {train}: no class folders: expected {train}/CLASS/*.png|jpg|jpeg, one folder \
             per class"
        )
    );

    write_image_folder(&root, &FolderSpec::gray(2, 2, 8));
    std::fs::create_dir_all(root.join("train/c2")).unwrap();
    std::fs::write(root.join("train/c2/notes.txt"), "not an image").unwrap();
    assert_eq!(
        refused(&root, &out, &[]).await,
        format!(
            "error: {train}: class `c2` holds no .png, .jpg or .jpeg file: expected at least one \
             image per class (classes: c0, c1, c2)"
        )
    );

    std::fs::remove_dir_all(root.join("train/c2")).unwrap();
    std::fs::rename(root.join("test/c1"), root.join("test/other")).unwrap();
    assert_eq!(
        refused(&root, &out, &[]).await,
        format!(
            "error: {train} and {} have different classes: only in train: c1; only in test: \
             other (train: c0, c1; test: c0, other)",
            root.join("test").display()
        )
    );

    std::fs::remove_dir_all(root.join("test")).unwrap();
    let line = refused(&root, &out, &[]).await;
    assert!(line.contains("no test split: expected"), "{line}");
    assert!(line.ends_with("or --test-dir DIR"), "{line}");
}

#[tokio::test]
async fn an_undecodable_file_is_named_or_skipped_and_counted() {
    let tmp = TempDir::new("images-bad-file");
    let root = tmp.path().join("folder");
    write_image_folder(&root, &FolderSpec::gray(2, 4, 8));
    let bad = root.join("train/c1/0002.png");
    std::fs::write(&bad, b"\x89PNG but not really").unwrap();
    let out = tmp.path().join("out");
    let line = refused(&root, &out, &[]).await;
    assert!(
        line.starts_with(&format!(
            "error: {}: cannot decode the image: ",
            bad.display()
        )),
        "{line}"
    );
    assert!(line.contains("--skip-bad-images"), "{line}");

    let run = student_logging(&train_args(&root, &out, &["--skip-bad-images"]), "info")
        .await
        .expect_ok("train skipping the bad file");
    assert!(run.stderr.contains("images=11 skipped=1"), "{}", run.stderr);
    assert!(
        run.stderr.contains(&bad.display().to_string()),
        "{}",
        run.stderr
    );
    let ck = read_json(&out.join("checkpoint.json"));
    assert_eq!(ck["trainer"]["train_samples"], 7, "{ck}");
}

#[tokio::test]
async fn image_flags_are_refused_for_other_data() {
    let tmp = TempDir::new("images-flags-idx");
    let data = tmp.path().join("idx");
    write_synthetic_idx(&data, 20, 10, 3, 1);
    let out = tmp.path().join("out");
    let line = refused(&data, &out, &["--image-size", "8,8"]).await;
    assert_eq!(
        line,
        format!(
            "error: --image-size applies to image folders (--data-dir ROOT holding \
             ROOT/train/CLASS/*.png|jpg|jpeg), and {} is not one",
            data.display()
        )
    );
    let root = tmp.path().join("folder");
    write_image_folder(&root, &FolderSpec::gray(2, 2, 8));
    let line = refused(&root, &out, &["--mean", "0.1,0.2"]).await;
    assert_eq!(
        line,
        "error: --mean has 2 values: expected 1 (the [1, 8, 8] view has one channel)"
    );
    let line = refused(&root, &out, &["--channels", "2"]).await;
    assert_eq!(
        line,
        "error: --channels: expected 1 (gray) or 3 (RGB), got 2"
    );
}

/// A student trained on a folder records its classes and view; `eval --checkpoint` sees the
/// test split as it was trained (no image flags needed) and names every class.
#[tokio::test]
async fn a_trained_student_records_its_classes_and_eval_names_them() {
    let tmp = TempDir::new("images-eval");
    let root = tmp.path().join("folder");
    let mut spec = FolderSpec::gray(3, 6, 12);
    spec.classes = vec!["zebra".into(), "ant".into(), "moth".into()];
    write_image_folder(&root, &spec);
    let out = tmp.path().join("out");
    let flags = [
        "--image-size",
        "10,10",
        "--channels",
        "3",
        "--mean",
        "0.5",
        "--std",
        "0.25",
    ];
    student(&train_args(&root, &out, &flags))
        .await
        .expect_ok("train on the folder");
    let ck = read_json(&out.join("checkpoint.json"));
    let images = &ck["trainer"]["images"];
    assert_eq!(
        images["classes"],
        serde_json::json!(["ant", "moth", "zebra"])
    );
    assert_eq!(images["view"]["geometry"]["channels"], 3, "{images}");
    assert_eq!(ck["arch"]["input_shape"], serde_json::json!([3, 10, 10]));

    let d = root.display().to_string();
    let o = out.display().to_string();
    let run = student(&["eval", "--checkpoint", &o, "--data-dir", &d])
        .await
        .expect_ok("eval of the checkpoint");
    for (i, class) in ["ant", "moth", "zebra"].iter().enumerate() {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{i} {class}"))),
            "{}",
            run.stdout
        );
    }
    let json = student(&["eval", "--checkpoint", &o, "--data-dir", &d, "--json"])
        .await
        .expect_ok("eval --json");
    let v: serde_json::Value = serde_json::from_str(json.stdout.trim()).unwrap();
    assert_eq!(v["classes"], serde_json::json!(["ant", "moth", "zebra"]));
    assert_eq!(v["total"], 9);

    // Another class set is refused, naming both.
    std::fs::rename(root.join("train/moth"), root.join("train/wasp")).unwrap();
    std::fs::rename(root.join("test/moth"), root.join("test/wasp")).unwrap();
    let run = student(&["eval", "--checkpoint", &o, "--data-dir", &d]).await;
    assert_eq!(
        run.one_error(),
        format!(
            "error: checkpoint {o} was trained on the classes [ant, moth, zebra], and {d} holds \
             [ant, wasp, zebra]"
        )
    );
}
