//! `student-trainer distill` against a real `teacher-server` process: a small teacher trained by
//! `student-trainer train` on synthetic data, a baseline, then distillation on a few thousand
//! samples with labels for a tenth of them.

use distill_tests::TeacherProcess;
use distill_tests::TempDir;
use distill_tests::trainer::{DistillArgs, read_json, read_metrics, student, write_synthetic_idx};

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distill_from_a_served_teacher_learns_and_reports() {
    let tmp = TempDir::new("student-distill");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 3000, 500, 10, 1);
    let (teacher, baseline, out) = (
        tmp.path().join("teacher"),
        tmp.path().join("baseline"),
        tmp.path().join("out"),
    );
    let d = path(&data);

    student(&[
        "train",
        "--arch",
        "mlp:256",
        "--epochs",
        "2",
        "--data-dir",
        &d,
        "--out",
        &path(&teacher),
    ])
    .await
    .expect_ok("teacher training");
    student(&[
        "train",
        "--arch",
        "mlp:32",
        "--epochs",
        "3",
        "--limit",
        "300",
        "--data-dir",
        &d,
        "--out",
        &path(&baseline),
    ])
    .await
    .expect_ok("baseline training");

    let server = TeacherProcess::start(&teacher, &[] as &[&str]).await;
    let url = server.url();
    let args = DistillArgs::new(&data, &out)
        .teacher(&url)
        .arch("mlp:32")
        .epochs(3)
        .flag("--labels", 300)
        .prefetch(3)
        .flag("--baseline", path(&baseline))
        .build();
    let run = student(&args).await.expect_ok("distill");
    assert!(
        run.stdout.contains("distilled student"),
        "no report table:\n{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("25450"),
        "student parameter count not printed:\n{}",
        run.stdout
    );

    // Loss decreases epoch over epoch.
    let metrics = read_metrics(&out);
    assert_eq!(metrics.len(), 3, "{metrics:?}");
    let loss: Vec<f64> = metrics
        .iter()
        .map(|m| m["loss"].as_f64().unwrap())
        .collect();
    assert!(
        loss[2] < loss[0] && loss[1] < loss[0],
        "loss did not decrease: {loss:?}"
    );
    assert!(
        metrics
            .iter()
            .all(|m| m["soft_loss"].as_f64().unwrap() > 0.0)
    );

    // report.json is there and sane.
    let r = read_json(&out.join("report.json"));
    let frac = |v: &serde_json::Value| {
        let a = v["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "accuracy {a} not a fraction");
        a
    };
    let (t, s, b) = (
        frac(&r["teacher"]),
        frac(&r["student"]),
        frac(&r["baseline"]),
    );
    assert!(t > 0.6, "teacher accuracy {t}");
    assert!(
        s > 0.5,
        "distilled student accuracy {s} not well above chance (0.1)"
    );
    assert!(b > 0.1, "baseline accuracy {b}");
    assert_eq!(r["teacher"]["params"], 784 * 256 + 256 + 256 * 10 + 10);
    assert_eq!(r["student"]["params"], 784 * 32 + 32 + 32 * 10 + 10);
    assert_eq!(r["baseline"]["params"], r["student"]["params"]);
    let c = r["compression"].as_f64().unwrap();
    assert!((c - 203_530.0 / 25_450.0).abs() < 1e-9, "compression {c}");
    assert_eq!(r["epochs"], 3);
    assert_eq!(r["temperature"], 4.0);
    assert_eq!(r["alpha"], 0.9);
    assert_eq!(r["labels"], "300");
    assert_eq!(r["train_samples"], 3000);
    assert!(r["samples_per_s"].as_f64().unwrap() > 0.0);
    assert!(r["wall_s"].as_f64().unwrap() > 0.0);
    assert_eq!(
        r["teacher_fingerprint"].as_str().unwrap(),
        read_json(&teacher.join("checkpoint.json"))["fingerprint"]
            .as_str()
            .unwrap()
    );

    // `eval` agrees with the report, for the remote teacher and for the student's checkpoint.
    let ev = student(&["eval", "--teacher", &url, "--data-dir", &d, "--json"])
        .await
        .expect_ok("eval --teacher");
    let ev: serde_json::Value = serde_json::from_str(ev.stdout.trim()).unwrap();
    assert_eq!(ev["accuracy"].as_f64().unwrap(), t);
    assert_eq!(ev["total"], 500);
    assert_eq!(ev["per_class"].as_array().unwrap().len(), 10);
    let ev = student(&[
        "eval",
        "--checkpoint",
        &path(&out),
        "--data-dir",
        &d,
        "--json",
    ])
    .await
    .expect_ok("eval --checkpoint");
    let ev: serde_json::Value = serde_json::from_str(ev.stdout.trim()).unwrap();
    assert_eq!(ev["accuracy"].as_f64().unwrap(), s);
}

/// `--labels none`: the student learns from the teacher's soft targets alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distill_without_labels_learns_from_soft_targets_alone() {
    let tmp = TempDir::new("student-nolabels");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 2000, 400, 10, 2);
    let (teacher, out) = (tmp.path().join("teacher"), tmp.path().join("out"));
    let d = path(&data);
    student(&[
        "train",
        "--arch",
        "mlp:64",
        "--epochs",
        "2",
        "--data-dir",
        &d,
        "--out",
        &path(&teacher),
    ])
    .await
    .expect_ok("teacher training");
    let server = TeacherProcess::start(&teacher, &[] as &[&str]).await;
    let args = DistillArgs::new(&data, &out)
        .teacher(server.url())
        .arch("mlp:32")
        .epochs(2)
        .flag("--labels", "none")
        .flag("--loss", "mse")
        .build();
    student(&args).await.expect_ok("distill --labels none");
    let r = read_json(&out.join("report.json"));
    assert_eq!(
        r["alpha"], 1.0,
        "--labels none must weigh soft targets only"
    );
    assert!(r["baseline"].is_null());
    assert_eq!(r["loss"], "mse");
    let s = r["student"]["accuracy"].as_f64().unwrap();
    assert!(s > 0.5, "student accuracy {s} from soft targets alone");
    let metrics = read_metrics(&out);
    assert!(
        metrics
            .iter()
            .all(|m| m["hard_loss"].as_f64().unwrap() == 0.0),
        "{metrics:?}"
    );
}
