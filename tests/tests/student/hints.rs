//! Hint distillation (FitNets, Romero et al. 2015) end to end: a served CNN teacher's
//! `features` guide a thin MLP student's `h1` through a learned regressor. The hint stage trains only the layers up
//! to the hinted one (and the regressor) on the hint loss alone; distillation follows with a
//! fresh optimizer; the regressor is checkpointed beside the network and every stop resumes
//! exactly; what cannot work is refused before training, naming what was expected.

use distill_tests::trainer::{max_abs_diff, read_json, read_metrics, student, write_synthetic_idx};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};
use std::path::{Path, PathBuf};
use tch::Tensor;

const ARCH: &str = "mlp:24,16";

fn common(teacher: &str, data: &Path, out: &Path, stage: &str, epochs: &str) -> Vec<String> {
    [
        "distill",
        "--teacher",
        teacher,
        "--data-dir",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--arch",
        ARCH,
        "--seed",
        "3",
        "--batch-size",
        "32",
        "--hint",
        "features=h1",
        "--hint-weight",
        "0.5",
        "--hint-stage-epochs",
        stage,
        "--epochs",
        epochs,
        "--no-epoch-eval",
    ]
    .map(String::from)
    .to_vec()
}

fn ck(dir: &Path) -> distill_models::Checkpoint {
    distill_models::Checkpoint::open(dir).unwrap()
}

fn weights(dir: &Path) -> PathBuf {
    ck(dir).weights_path()
}

/// The student's initial weights for the seed: what `distill` draws before its first step.
fn initial(seed: i64) -> Vec<(String, Tensor)> {
    let _rng = distill_tests::torch_rng();
    tch::manual_seed(seed);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let spec = distill_models::ArchSpec {
        arch: ARCH.parse().unwrap(),
        input_shape: vec![1, 28, 28],
        num_classes: 10,
    };
    distill_models::Network::new(&vs.root(), &spec).unwrap();
    distill_models::checkpoint::sorted_variables(&vs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hint_stage_then_distillation_resumes_exactly() {
    let tmp = TempDir::new("student-hints");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 256, 64, 10, 11);
    let teacher_dir = tmp.path().join("teacher");
    fresh_checkpoint(&teacher_dir, "cnn", &[1, 28, 28], 10);
    let teacher = TeacherProcess::start(&teacher_dir, &[] as &[&str]).await;
    let url = teacher.url();

    // The hint stage alone (--epochs 0): only f1 (up to h1) and the regressor learn.
    let staged = tmp.path().join("staged");
    student(&common(&url, &data, &staged, "1", "0"))
        .await
        .expect_ok("hint stage");
    let first = ck(&staged);
    assert_eq!(first.meta.epoch, 1);
    let (vs, _) = {
        let _rng = distill_tests::torch_rng();
        first.load_network(tch::Device::Cpu).unwrap()
    };
    let after: std::collections::HashMap<String, Tensor> = vs.variables();
    for (name, init) in initial(3) {
        let moved = (&after[&name] - &init).abs().max().double_value(&[]);
        if name.starts_with("f1.") {
            assert!(moved > 0.0, "{name} should train in the hint stage");
        } else {
            assert_eq!(moved, 0.0, "{name} changed in the hint stage");
        }
    }
    let aux = first.load_aux().unwrap();
    let names: Vec<&str> = aux.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["hint.regressor.bias", "hint.regressor.weight"]);
    assert_eq!(
        aux[1].1.size(),
        vec![128, 24],
        "linear regressor h1 [24] -> features [128]"
    );
    let m = read_metrics(&staged);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["soft_loss"], 0.0);
    assert_eq!(m[0]["hard_loss"], 0.0);
    assert_eq!(
        m[0]["loss"], m[0]["hint_loss"],
        "the hint stage trains on the hint alone"
    );

    // Resumed into distillation (after the stage boundary, and mid-distillation) equals a
    // straight run of the same settings.
    let mut again = common(&url, &data, &staged, "1", "1");
    again.push("--resume".into());
    student(&again).await.expect_ok("first distillation epoch");
    let mut again = common(&url, &data, &staged, "1", "2");
    again.push("--resume".into());
    student(&again).await.expect_ok("second distillation epoch");
    let straight = tmp.path().join("straight");
    student(&common(&url, &data, &straight, "1", "2"))
        .await
        .expect_ok("straight run");
    let (a, b) = (
        read_json(&straight.join("checkpoint.json")),
        read_json(&staged.join("checkpoint.json")),
    );
    assert_eq!(a["epoch"], 3);
    assert_eq!((&a["epoch"], &a["step"]), (&b["epoch"], &b["step"]));
    let w = max_abs_diff(&weights(&straight), &weights(&staged));
    assert!(
        w <= 1e-6,
        "resumed weights differ from the straight run by {w}"
    );
    let (ra, rb) = (
        ck(&straight).load_aux().unwrap(),
        ck(&staged).load_aux().unwrap(),
    );
    for ((na, ta), (nb, tb)) in ra.iter().zip(&rb) {
        assert_eq!(na, nb);
        let d = (ta - tb).abs().max().double_value(&[]);
        assert!(d <= 1e-6, "{na} differs by {d}");
    }
    let m = read_metrics(&straight);
    assert_eq!(m.len(), 3);
    for e in &m[1..] {
        let (soft, hint) = (
            e["soft_loss"].as_f64().unwrap(),
            e["hint_loss"].as_f64().unwrap(),
        );
        assert!(soft > 0.0 && hint > 0.0, "{e}");
    }
    let hinted = read_metrics(&staged);
    assert_eq!(hinted.last().unwrap()["loss"], m[2]["loss"]);
    let report = read_json(&straight.join("report.json"));
    assert_eq!(
        report["hint"], "features=h1 mse weight=0.5 stage_epochs=1",
        "{report}"
    );
    // The student checkpoint serves and evaluates as a plain mlp.
    let eval = student(&[
        "eval",
        "--checkpoint",
        &straight.display().to_string(),
        "--data-dir",
        &data.display().to_string(),
    ])
    .await;
    assert!(eval.ok(), "{}", eval.stderr);

    // Other hint settings on resume are refused, naming both.
    let mut other = common(&url, &data, &straight, "1", "3");
    let weight = other.iter().position(|a| a == "0.5").unwrap();
    other[weight] = "1".into();
    other.push("--resume".into());
    let e = student(&other).await.one_error();
    assert!(e.contains("weight=0.5") && e.contains("weight=1"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_that_cannot_work_are_refused_before_training() {
    let tmp = TempDir::new("student-hints-errors");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 64, 16, 10, 12);
    let teacher_dir = tmp.path().join("teacher");
    fresh_checkpoint(&teacher_dir, "cnn", &[1, 28, 28], 10);
    let teacher = TeacherProcess::start(&teacher_dir, &[] as &[&str]).await;
    let url = teacher.url();
    let out = tmp.path().join("out");
    let run = |hint: &str| {
        let mut args = common(&url, &data, &out, "1", "1");
        let i = args.iter().position(|a| a == "features=h1").unwrap();
        args[i] = hint.to_string();
        args
    };
    // A teacher output it does not have: the error lists those it has.
    let e = student(&run("penultimate=h1")).await.one_error();
    assert!(
        e.contains("penultimate")
            && e.contains("features [128]")
            && e.contains("conv [64, 12, 12]"),
        "{e}"
    );
    // A student layer it does not have: the error lists the student's layers.
    let e = student(&run("features=h3")).await.one_error();
    assert!(e.contains("h3") && e.contains("h1 [24], h2 [16]"), "{e}");
    // A feature map against a vector: no regressor joins them.
    let e = student(&run("conv=h1")).await.one_error();
    assert!(
        e.contains("[64, 12, 12]") && e.contains("two vectors"),
        "{e}"
    );
    assert!(!out.join("checkpoint.json").exists());
}
