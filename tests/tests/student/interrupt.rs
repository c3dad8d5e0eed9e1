//! Ctrl-C (SIGINT) during training saves a checkpoint at the current batch and exits with 130;
//! SIGTERM (what Kubernetes sends an evicted pod) does the same and exits with 143. `--resume`
//! then finishes the run, equal to an uninterrupted one (MLP: no dropout, so exact even when
//! resumed mid-epoch).

use distill_tests::TempDir;
use distill_tests::trainer::{
    max_abs_diff, read_json, student, student_trainer_bin, write_synthetic_idx,
};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn sigint_saves_a_checkpoint_and_resume_finishes_the_run() {
    interrupt_and_resume("INT", 130, None).await;
}

#[tokio::test]
async fn sigterm_saves_a_checkpoint_and_exits_143() {
    interrupt_and_resume("TERM", 143, Some("SIGTERM: saving a checkpoint")).await;
}

/// Sends SIG`signal` to a training run just before its first batch, expects exit `code` (and the
/// log line `log`), then checks that `--resume` ends where an uninterrupted run ends.
async fn interrupt_and_resume(signal: &str, code: i32, log: Option<&str>) {
    let tmp = TempDir::new(&format!("student-sig{}", signal.to_lowercase()));
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 20_000, 100, 10, 7);
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
    // The loop logs `training arch=…` just before its first batch: interrupt then.
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
            .args([format!("-{signal}"), pid])
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
    assert_eq!(status.code(), Some(code), "{rest}");
    assert!(rest.contains("checkpoint saved"), "{rest}");
    if let Some(log) = log {
        assert!(rest.contains(log), "{rest}");
    }
    let meta = read_json(&stopped.join("checkpoint.json"));
    assert!(
        meta["epoch"].as_u64().unwrap() < 2,
        "the run was not interrupted: {meta}"
    );

    let mut resume = args(&stopped);
    resume.push("--resume".into());
    student(&resume).await.expect_ok("resumed run");
    student(&args(&straight)).await.expect_ok("straight run");
    let (a, b) = (
        read_json(&straight.join("checkpoint.json")),
        read_json(&stopped.join("checkpoint.json")),
    );
    assert_eq!((&a["epoch"], &a["step"]), (&b["epoch"], &b["step"]));
    let w = max_abs_diff(&weights(&straight), &weights(&stopped));
    assert!(
        w <= 1e-6,
        "interrupted + resumed weights differ from the straight run by {w}"
    );
}

/// The weights file of the checkpoint in `dir` (named in its manifest).
fn weights(dir: &std::path::Path) -> std::path::PathBuf {
    distill_models::Checkpoint::open(dir)
        .unwrap()
        .weights_path()
}
