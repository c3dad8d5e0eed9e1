//! Weights that do not fit the architecture are refused at startup with one line naming the
//! tensor and both shapes (libtorch would broadcast a `[1]` bias over `[128]` and serve wrong
//! logits without a word), from a checkpoint directory and from a bare `.safetensors` file.

use distill_tests::{TempDir, error_line, fresh_checkpoint, serve_to_exit as serve};
use std::path::Path;
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
