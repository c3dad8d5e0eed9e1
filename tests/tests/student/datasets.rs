//! Datasets refused at load, before any training, with one error naming the file and what is
//! wrong: an empty training split, a label far beyond any class count, NaN inputs (each with a
//! valid test split, which is loaded second). And a run that diverges: the error lists the
//! likely causes.

use distill_tests::TempDir;
use distill_tests::trainer::{Run, student, write_synthetic_idx};
use std::path::Path;
use tch::{Kind, Tensor};

/// `student-trainer train` on the `.npz` dataset `data` (its test split beside it), into `out`.
async fn train(data: &Path, out: &Path) -> Run {
    student(&[
        "train",
        "--data-dir",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--arch",
        "mlp:8",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--no-epoch-eval",
    ])
    .await
}

/// Writes `arrays` as the dataset `path` (`NAME.npz`) and, so that only the training split can
/// be at fault, a valid test split beside it (`NAME_test.npz`, 4 images of 4 classes).
fn write_dataset(path: &Path, arrays: &[(&str, &Tensor)]) {
    Tensor::write_npz(arrays, path).unwrap();
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3]);
    let stem = path.file_stem().unwrap().to_string_lossy();
    let test = path.with_file_name(format!("{stem}_test.npz"));
    Tensor::write_npz(&[("inputs", &images(4, 0.5)), ("labels", &labels)], test).unwrap();
}

/// `n` images `f32 [n, 1, 28, 28]` of value `v`.
fn images(n: i64, v: f64) -> Tensor {
    Tensor::full([n, 1, 28, 28], v, (Kind::Float, tch::Device::Cpu))
}

#[tokio::test]
async fn an_empty_training_split_is_refused_naming_the_file() {
    let tmp = TempDir::new("student-empty-npz");
    let data = tmp.path().join("empty.npz");
    let labels = Tensor::zeros([0], (Kind::Int64, tch::Device::Cpu));
    write_dataset(&data, &[("inputs", &images(0, 0.0)), ("labels", &labels)]);
    let out = tmp.path().join("out");
    let e = train(&data, &out).await.one_error();
    assert_eq!(
        e,
        format!(
            "error: {}: the training split is empty (0 samples): expected at least 1 sample to \
             train on",
            data.display()
        )
    );
    assert!(!out.exists(), "nothing is written for a refused dataset");
}

#[tokio::test]
async fn a_label_of_a_trillion_is_an_error_not_a_panic() {
    let tmp = TempDir::new("student-huge-label");
    let data = tmp.path().join("huge.npz");
    // A label of 10¹²: an output layer for 10¹² classes would take 32 TB.
    let labels = Tensor::from_slice(&[3i64, 1, 1_000_000_000_000, 0]);
    write_dataset(&data, &[("inputs", &images(4, 0.5)), ("labels", &labels)]);
    let out = tmp.path().join("out");
    let e = train(&data, &out).await.one_error();
    assert!(
        e.starts_with(&format!(
            "error: {}: `labels` holds 1000000000000 at sample 2",
            data.display()
        )) && e.contains("expected a class index in 0..262144"),
        "{e}"
    );
    assert!(!out.exists());
}

#[tokio::test]
async fn nan_inputs_are_refused_at_load_naming_the_first_sample() {
    let tmp = TempDir::new("student-nan-npz");
    let data = tmp.path().join("nan.npz");
    let inputs = images(4, 0.5);
    let _ = inputs.get(2).get(0).get(3).get(4).fill_(f64::NAN);
    let labels = Tensor::from_slice(&[0i64, 1, 2, 3]);
    write_dataset(&data, &[("inputs", &inputs), ("labels", &labels)]);
    let e = train(&data, &tmp.path().join("out")).await.one_error();
    assert!(
        e.starts_with(&format!(
            "error: {}: `inputs` holds 1 value(s)",
            data.display()
        )) && e.contains("the first NaN at sample 2 (element [0, 3, 4] of each [1, 28, 28]"),
        "{e}"
    );
}

#[tokio::test]
async fn a_diverged_loss_lists_the_likely_causes() {
    // A learning rate of 1e30: Adam's first step moves every weight by about 1e30, and the
    // logits of the next batch overflow.
    let tmp = TempDir::new("student-diverge");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 40, 10, 10, 5);
    let run = student(&[
        "train",
        "--data-dir",
        &data.display().to_string(),
        "--out",
        &tmp.path().join("out").display().to_string(),
        "--arch",
        "mlp:8",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--lr",
        "1e30",
        "--no-epoch-eval",
    ])
    .await;
    let e = run.one_error();
    assert!(
        e.starts_with("error: loss is ")
            && e.contains(": training diverged; likely causes: a learning rate too high")
            && e.contains("float inputs far from unit scale")
            && e.contains("teacher outputs of extreme magnitude")
            && !e.contains("lower --lr?"),
        "{e}"
    );
}
