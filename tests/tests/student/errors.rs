//! Clear failures: each exits non-zero with exactly one `error:` line, before any training.

use distill_tests::trainer::{student, write_synthetic_idx};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};

#[tokio::test]
async fn unreachable_teacher() {
    let tmp = TempDir::new("student-unreachable");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 50, 20, 10, 5);
    let port = distill_tests::closed_port();
    let out = tmp.path().join("out");
    let run = student(&[
        "distill",
        "--teacher",
        &format!("http://127.0.0.1:{port}"),
        "--data-dir",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--connect-timeout",
        "5",
    ])
    .await;
    let e = run.one_error();
    assert!(
        e.contains("cannot reach the teacher") && e.contains(&port.to_string()),
        "{e}"
    );
    assert!(!out.join("checkpoint.json").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teacher_with_a_different_number_of_classes() {
    let tmp = TempDir::new("student-classes");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 50, 20, 10, 6);
    let ck = tmp.path().join("teacher5");
    fresh_checkpoint(&ck, "mlp:8", &[1, 28, 28], 5);
    let server = TeacherProcess::start(&ck, &[] as &[&str]).await;
    let out = tmp.path().join("out");
    let run = student(&[
        "distill",
        "--teacher",
        &server.url(),
        "--data-dir",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
    ])
    .await;
    let e = run.one_error();
    assert!(
        e.contains("number of classes") && e.contains("teacher has 5") && e.contains("has 10"),
        "{e}"
    );
    assert!(
        !out.join("checkpoint.json").exists(),
        "training started despite the mismatch"
    );
}

#[tokio::test]
async fn missing_data_dir() {
    let tmp = TempDir::new("student-nodata");
    let missing = tmp.path().join("no-such-dir");
    let m = missing.display().to_string();
    for args in [
        vec!["train", "--data-dir", &m, "--out", "unused-out"],
        vec![
            "distill",
            "--teacher",
            "http://127.0.0.1:9",
            "--data-dir",
            &m,
            "--out",
            "unused-out",
        ],
        vec!["eval", "--teacher", "http://127.0.0.1:9", "--data-dir", &m],
    ] {
        let e = student(&args).await.one_error();
        assert!(e.contains("not found") && e.contains(&m), "{args:?}: {e}");
    }
    assert!(!std::path::Path::new("unused-out").exists());
}

#[tokio::test]
async fn describe_lists_the_named_layers_and_refuses_an_unknown_arch() {
    let run = student(&["describe", "--arch", "cnn"]).await;
    assert!(run.ok(), "{}", run.stderr);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines[0], "cnn: 1199882 parameters, input [1, 28, 28]");
    assert_eq!(
        lines[2..]
            .iter()
            .map(|l| l.split_whitespace().next().unwrap_or(""))
            .collect::<Vec<_>>(),
        ["conv", "features", "logits"]
    );
    assert!(lines[2].ends_with("[64, 12, 12]"), "{}", lines[2]);
    let run = student(&["describe", "--arch", "mlp:64,32", "--num-classes", "5"]).await;
    assert!(run.ok(), "{}", run.stderr);
    assert!(
        run.stdout.contains("h2           [32]") && run.stdout.contains("logits       [5]"),
        "{}",
        run.stdout
    );
    let e = student(&["describe", "--arch", "resnet"]).await.one_error();
    assert!(e.contains("resnet"), "{e}");
}
