//! Ctrl-C (SIGINT) during training saves a checkpoint at the current batch and exits with 130;
//! SIGTERM (what Kubernetes sends an evicted pod) does the same and exits with 143. `--resume`
//! then finishes the run, equal to an uninterrupted one (exact even when resumed mid-epoch). A
//! burst of signals (GNU `timeout` signals the process and its group) is one request.

use distill_tests::TempDir;
use distill_tests::trainer::{
    max_abs_diff, read_json, student, student_trainer_bin, write_synthetic_idx,
};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};

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
    let (mut child, mut lines) = start_training(&args(&stopped)).await;
    kill(signal, &child);
    let rest = rest_of(&mut lines).await;
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

/// Two SIGTERMs 10 ms apart, as GNU `timeout` sends them (to the process, then to its group),
/// are one request: the run still saves its checkpoint and exits with 143, and says the second
/// was the same request. The second goes 10 ms after the student has acknowledged the first:
/// tokio folds signals that arrive before its handler runs into one, which on a busy machine
/// would let the test pass without a second request being judged. The student (two hidden
/// layers of 2048) takes about 0.1 s a batch and 0.3 s to save, so the second signal arrives
/// while the first is being served.
#[tokio::test]
async fn two_sigterms_10_ms_apart_still_save_the_checkpoint() {
    let tmp = TempDir::new("student-sigburst");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 2_048, 50, 10, 8);
    let out = tmp.path().join("out");
    let args = [
        "train",
        "--arch",
        "mlp:2048,2048",
        "--epochs",
        "1",
        "--data-dir",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
        "--no-epoch-eval",
    ]
    .map(String::from);
    let (mut child, mut lines) = start_training(&args).await;
    kill("TERM", &child);
    let mut rest = String::new();
    while !rest.contains("SIGTERM: saving a checkpoint") {
        let line = lines.next_line().await.unwrap();
        let line = line.unwrap_or_else(|| panic!("exited before the second signal:\n{rest}"));
        rest.push_str(&line);
        rest.push('\n');
    }
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    kill("TERM", &child);
    rest.push_str(&rest_of(&mut lines).await);
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(143), "{rest}");
    assert!(!rest.contains("without waiting"), "{rest}");
    assert!(rest.contains("checkpoint saved"), "{rest}");
    assert!(
        rest.contains("SIGTERM again within 1 s: the same request"),
        "{rest}"
    );
    let meta = read_json(&out.join("checkpoint.json"));
    assert!(
        meta["epoch"].as_u64() == Some(0) && meta["step"].as_u64() < Some(16),
        "the run was not interrupted: {meta}"
    );
}

/// Starts `student-trainer ARGS` (CPU, one thread, `info` logs on a pipe) and returns once the
/// loop has logged `training arch=…`, just before its first batch: the moment to signal it.
async fn start_training(
    args: &[String],
) -> (
    tokio::process::Child,
    Lines<BufReader<tokio::process::ChildStderr>>,
) {
    let mut child = tokio::process::Command::new(student_trainer_bin())
        .args(args)
        .env("STUDENT_DEVICE", "cpu")
        .env("STUDENT_THREADS", "1")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines
            .next_line()
            .await
            .unwrap()
            .expect("trainer exited before training");
        if line.contains("training arch=") {
            return (child, lines);
        }
    }
}

/// Sends SIG`signal` to `child`.
fn kill(signal: &str, child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .unwrap()
            .success()
    );
}

/// The rest of the log, up to the process's end.
async fn rest_of(lines: &mut Lines<BufReader<tokio::process::ChildStderr>>) -> String {
    let mut rest = String::new();
    while let Some(l) = lines.next_line().await.unwrap() {
        rest.push_str(&l);
        rest.push('\n');
    }
    rest
}

/// The weights file of the checkpoint in `dir` (named in its manifest).
fn weights(dir: &std::path::Path) -> std::path::PathBuf {
    distill_models::Checkpoint::open(dir)
        .unwrap()
        .weights_path()
}
