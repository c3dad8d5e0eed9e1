//! SIGTERM (what Kubernetes sends an evicted pod) is handled like Ctrl-C: a checkpoint at the
//! current batch, then exit 143; `--resume` finishes the run, equal to an uninterrupted one.

use distill_tests::TempDir;
use distill_tests::trainer::{
    max_abs_diff, read_json, student, student_trainer_bin, write_synthetic_idx,
};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

fn weights(dir: &std::path::Path) -> std::path::PathBuf {
    distill_models::Checkpoint::open(dir)
        .unwrap()
        .weights_path()
}

#[tokio::test]
async fn sigterm_saves_a_checkpoint_and_exits_143() {
    let tmp = TempDir::new("student-sigterm");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 20_000, 100, 10, 8);
    let d = data.display().to_string();
    let (straight, stopped) = (tmp.path().join("straight"), tmp.path().join("stopped"));
    let args = |out: &std::path::Path| {
        vec![
            "train".to_string(),
            "--arch".into(),
            "mlp".into(),
            "--epochs".into(),
            "2".into(),
            "--data-dir".into(),
            d.clone(),
            "--out".into(),
            out.display().to_string(),
            "--no-epoch-eval".into(),
        ]
    };
    let mut child = tokio::process::Command::new(student_trainer_bin())
        .args(args(&stopped))
        .env("STUDENT_DEVICE", "cpu")
        .env("STUDENT_THREADS", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // The loop logs `training arch=…` just before its first batch: terminate then.
    loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("trainer exited before training");
        if line.contains("training arch=") {
            break;
        }
    }
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut rest = String::new();
    while let Some(l) = lines.next_line().await.unwrap() {
        rest.push_str(&l);
        rest.push('\n');
    }
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(143), "{rest}");
    assert!(rest.contains("SIGTERM: saving a checkpoint"), "{rest}");
    assert!(rest.contains("checkpoint saved"), "{rest}");
    let meta = read_json(&stopped.join("checkpoint.json"));
    assert!(
        meta["epoch"].as_u64().unwrap() < 2,
        "the run was not interrupted: {meta}"
    );

    let mut resume = args(&stopped);
    resume.push("--resume".into());
    student(&resume).await.expect_ok("resumed run");
    student(&args(&straight)).await.expect_ok("straight run");
    let w = max_abs_diff(&weights(&straight), &weights(&stopped));
    assert!(w <= 1e-6, "terminated + resumed weights differ by {w}");
}
