//! A closed stdout (`student-trainer ... | head -n 1`) ends the command quietly with status 0,
//! after the checkpoint is saved, instead of a panic (exit 101).

use distill_tests::TempDir;
use distill_tests::trainer::{read_json, student, student_trainer_bin, write_synthetic_idx};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

fn spawn(args: &[String]) -> tokio::process::Child {
    tokio::process::Command::new(student_trainer_bin())
        .args(args)
        .env("STUDENT_DEVICE", "cpu")
        .env("STUDENT_THREADS", "1")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn student-trainer")
}

async fn finish(mut child: tokio::process::Child) -> (Option<i32>, String) {
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    (child.wait().await.unwrap().code(), stderr)
}

#[tokio::test]
async fn train_piped_into_head_ends_quietly_after_the_checkpoint() {
    let tmp = TempDir::new("student-epipe-train");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 1000, 50, 10, 4);
    let out = tmp.path().join("out");
    let args: Vec<String> = [
        "train",
        "--epochs",
        "1",
        "--limit",
        "1000",
        "--data-dir",
        &data.display().to_string(),
        "--out",
        &out.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    let mut child = spawn(&args);
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).await.unwrap();
    assert!(first.starts_with("training"), "{first}");
    drop(stdout); // what `head -n 1` does after its line
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("error"),
        "{stderr}"
    );
    assert_eq!(read_json(&out.join("checkpoint.json"))["epoch"], 1);
}

#[tokio::test]
async fn eval_into_a_closed_pipe_ends_quietly() {
    let tmp = TempDir::new("student-epipe-eval");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 100, 50, 10, 4);
    let (d, out) = (data.display().to_string(), tmp.path().join("out"));
    student(&[
        "train",
        "--epochs",
        "1",
        "--arch",
        "mlp:8",
        "--data-dir",
        &d,
        "--out",
        &out.display().to_string(),
    ])
    .await
    .expect_ok("train");
    let mut child = spawn(
        &[
            "eval",
            "--checkpoint",
            &out.display().to_string(),
            "--data-dir",
            &d,
        ]
        .map(String::from),
    );
    drop(child.stdout.take()); // the reader is gone before the first line
    let (code, stderr) = finish(child).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
