//! Weights that do not fit the architecture are refused at startup with one line naming the
//! tensor and both shapes (libtorch would broadcast a `[1]` bias over `[128]` and serve wrong
//! logits without a word), from a checkpoint directory and from a bare `.safetensors` file.

use distill_tests::{TempDir, command, fresh_checkpoint};
use std::path::Path;
use std::time::Duration;
use tch::Tensor;

/// Rewrites the safetensors file `path` with `f1.bias` of shape `[1]`, keeping the rest.
fn shrink_f1_bias(path: &Path) {
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .map(|(name, t)| {
            if name == "f1.bias" {
                (name, Tensor::from_slice(&[0.25f32]))
            } else {
                (name, t)
            }
        })
        .collect();
    assert!(tensors.iter().any(|(n, _)| n == "f1.bias"));
    Tensor::write_safetensors(&tensors, path).unwrap();
}

/// Runs `teacher-server --model MODEL EXTRA...` to its exit and returns (exit code, stderr).
/// A server that is still up after a minute is serving the weights: killed, and the test fails.
async fn serve(model: &Path, extra: &[&str]) -> (Option<i32>, String) {
    let child = tokio::process::Command::from(command("teacher-server"))
        .arg("--model")
        .arg(model)
        .args(["--device", "cpu", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run teacher-server");
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("teacher-server kept serving weights that do not fit")
        .expect("wait for teacher-server");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one error line, checked to be the only error output and free of libtorch frame dumps.
fn error_line(code: Option<i32>, stderr: &str) -> String {
    assert!(
        code.is_some_and(|c| c != 0),
        "expected a failure:\n{stderr}"
    );
    assert!(
        !stderr.contains("frame #")
            && !stderr.contains("Caused by")
            && !stderr.contains("panicked"),
        "{stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("Error:")).collect();
    assert_eq!(errors.len(), 1, "expected one error line:\n{stderr}");
    errors[0].to_string()
}

#[tokio::test]
async fn checkpoint_with_a_broadcastable_bias_is_refused() {
    let dir = TempDir::new("teacher-bias-dir");
    let ck = fresh_checkpoint(dir.path(), "mlp", &[1, 28, 28], 10);
    shrink_f1_bias(&ck.weights_path());
    let (code, stderr) = serve(dir.path(), &[]).await;
    let e = error_line(code, &stderr);
    assert!(
        e.contains("f1.bias: checkpoint [1], architecture mlp expects [128]"),
        "{e}"
    );
    assert!(e.contains(&ck.weights_path().display().to_string()), "{e}");
}

#[tokio::test]
async fn safetensors_file_with_a_broadcastable_bias_is_refused() {
    let dir = TempDir::new("teacher-bias-file");
    let ck = fresh_checkpoint(dir.path(), "mlp", &[1, 28, 28], 10);
    let file = dir.path().join("weights.safetensors");
    std::fs::copy(ck.weights_path(), &file).unwrap();
    shrink_f1_bias(&file);
    let (code, stderr) = serve(
        &file,
        &[
            "--arch",
            "mlp",
            "--input-shape",
            "1,28,28",
            "--num-logits",
            "10",
        ],
    )
    .await;
    let e = error_line(code, &stderr);
    assert!(
        e.contains("f1.bias: checkpoint [1], architecture mlp expects [128]"),
        "{e}"
    );
}

#[tokio::test]
async fn checkpoint_weights_that_are_not_the_recorded_ones_are_refused() {
    // Same shapes, other values: only the manifest's hash (and the fingerprint) can tell.
    let (a, b) = (
        TempDir::new("teacher-swap-a"),
        TempDir::new("teacher-swap-b"),
    );
    let ck = fresh_checkpoint(a.path(), "mlp:16", &[1, 28, 28], 10);
    let other = fresh_checkpoint(b.path(), "mlp:16", &[1, 28, 28], 10);
    std::fs::copy(other.weights_path(), ck.weights_path()).unwrap();
    let (code, stderr) = serve(a.path(), &[]).await;
    let e = error_line(code, &stderr);
    assert!(
        e.contains(&ck.weights_path().display().to_string())
            && e.contains("differ from checkpoint.json"),
        "{e}"
    );
}
