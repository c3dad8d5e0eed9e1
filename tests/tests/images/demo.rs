//! `make demo-byo`'s sequence (`scripts/demo-byo.sh`) with tiny sizes, on a synthetic IDX
//! dataset written as an image folder by `scripts/idx_to_image_folder.py`: the RGB teacher
//! trained on the folder, served, the user's PyTorch student (`scripts/demo_students.py`)
//! exported as TorchScript and distilled in gray with augmented crops, the student's evaluation
//! naming the classes, and the trained student loaded back in PyTorch both ways.

use distill_tests::trainer::{read_json, write_synthetic_idx};
use distill_tests::{TempDir, binary, workspace_root};

#[tokio::test]
async fn demo_byo_runs_end_to_end_with_tiny_sizes() {
    let tmp = TempDir::new("images-demo-byo");
    let idx = tmp.path().join("idx");
    write_synthetic_idx(&idx, 120, 60, 10, 7);
    let runs = tmp.path().join("runs");
    let bin = binary("student-trainer");
    let out = tokio::process::Command::new("bash")
        .arg(workspace_root().join("scripts/demo-byo.sh"))
        .env("BIN", bin.parent().expect("binaries' folder"))
        .env("STUDENT_DATA_DIR", &idx)
        .env("DEMO_RUNS", &runs)
        .env("DEMO_BYO_IMAGES", tmp.path().join("images"))
        .env("DEMO_BYO_PER_CLASS", "8")
        .env("DEMO_BYO_TEACHER_EPOCHS", "1")
        .env("DEMO_BYO_DISTILL_EPOCHS", "1")
        .env("DEMO_THREADS", "1")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run scripts/demo-byo.sh");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report = read_json(&runs.join("byo-distilled/report.json"));
    assert_eq!(report["classes"][0], "0_t-shirt_top", "{report}");
    assert_eq!(report["classes"][9], "9_ankle_boot", "{report}");
    assert_eq!(report["augment"], "crop,flip");
    assert!(report["teacher"]["accuracy"].as_f64().is_some(), "{report}");
    let ck = read_json(&runs.join("byo-distilled/checkpoint.json"));
    assert_eq!(ck["arch"]["input_shape"], serde_json::json!([1, 20, 20]));
    assert!(
        stdout.contains("distilling torchscript:byo-student"),
        "{stdout}"
    );
    // Step 6: PyTorch reads the trained student both ways, to the same logits.
    assert!(
        stdout.contains("strict=True) give the same logits"),
        "{stdout}"
    );
    let teacher = read_json(&runs.join("byo-teacher/checkpoint.json"));
    assert_eq!(
        teacher["arch"]["input_shape"],
        serde_json::json!([3, 28, 28])
    );
    // Step 5: the per-class table names the classes.
    assert!(
        stdout.contains("9 ankle") || stdout.contains("9_ankle_boot"),
        "{stdout}"
    );
}
