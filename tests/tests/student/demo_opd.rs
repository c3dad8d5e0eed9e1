//! `make demo-opd`'s sequence (`scripts/demo-opd.sh`) with tiny sizes, on a generated corpus in
//! the GCIDE's dictd layout: the teacher and the baseline trained, the teacher served, the
//! initial student, off-policy KD, on-policy and mixed runs from the baseline at the same
//! budget, and the table. The prompts file is written here as the gcide_prompts example writes
//! it (its token-length filter aside), so that the test needs no cargo.

use distill_tests::trainer::{read_metrics, write_synthetic_corpus};
use distill_tests::{TempDir, binary, workspace_root};
use distill_text::{merge_split, read_gcide, split_documents, split_entry};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_opd_runs_end_to_end_with_tiny_sizes() {
    let tmp = TempDir::new("student-demo-opd");
    let corpus = tmp.path().join("corpus");
    write_synthetic_corpus(&corpus, 400, 1);
    let (train, test) = split_documents(read_gcide(&corpus).unwrap());
    let pairs = |docs: &[distill_text::Document]| -> Vec<String> {
        docs.iter()
            .filter_map(|d| split_entry(&d.text, 1))
            .map(|(p, c)| serde_json::json!({ "prompt": p, "completion": c }).to_string())
            .collect()
    };
    let prompts = tmp.path().join("prompts.jsonl");
    std::fs::write(
        &prompts,
        merge_split(pairs(&train), pairs(&test)).join("\n"),
    )
    .unwrap();

    let runs = tmp.path().join("runs");
    let bin = binary("student-trainer");
    let out = tokio::process::Command::new("bash")
        .arg(workspace_root().join("scripts/demo-opd.sh"))
        .env("BIN", bin.parent().expect("binaries' folder"))
        .env("LM_DATA_DIR", &corpus)
        .env("DEMO_RUNS", &runs)
        .env("DEMO_OPD_PROMPTS_FILE", &prompts)
        .env("DEMO_OPD_TEACHER_ARCH", "lm:layers=1,d=32,heads=4")
        .env("DEMO_OPD_STUDENT_ARCH", "lm:layers=1,d=16,heads=2")
        .env("DEMO_OPD_SEQ_LEN", "24")
        .env("DEMO_OPD_VOCAB", "300")
        .env("DEMO_OPD_TEACHER_SEQUENCES", "128")
        .env("DEMO_OPD_BASELINE_SEQUENCES", "32")
        .env("DEMO_OPD_BASELINE_EPOCHS", "1")
        .env("DEMO_OPD_PROMPTS", "40")
        .env("DEMO_OPD_EVAL_PROMPTS", "8")
        .env("DEMO_OPD_MAX_NEW_TOKENS", "8")
        .env("DEMO_THREADS", "1")
        .env("RUST_LOG", "warn")
        .output()
        .await
        .expect("run scripts/demo-opd.sh");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    for row in [
        "teacher",
        "initial student",
        "off-policy KD",
        "on-policy",
        "mixed",
    ] {
        assert!(
            stdout.contains(&format!("\n{row} ")),
            "no {row:?} row:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("Teacher against the initial student"),
        "{stdout}"
    );

    let last = |run: &str| read_metrics(&runs.join(run)).pop().expect("a metrics line");
    // The initial student is the baseline: one step at learning rate 0 leaves its weights.
    let (baseline, initial) = (last("opd-baseline"), last("opd-initial"));
    assert_eq!(initial["step"], 1, "{initial}");
    assert_eq!(
        initial["test_perplexity"], baseline["test_perplexity"],
        "the initial student's weights are the baseline's"
    );
    // The same budget in each run: 40 training prompts, 3 batches of 16.
    for (run, lambda) in [
        ("opd-off-policy", 0.0),
        ("opd-on-policy", 1.0),
        ("opd-mixed", 0.5),
    ] {
        let m = last(run);
        assert_eq!(m["step"], 3, "{run}: {m}");
        let op = &m["on_policy"];
        assert_eq!(op["lambda"].as_f64(), Some(lambda), "{run}: {m}");
        assert!(
            op["heldout_reverse_kl"].as_f64().unwrap().is_finite(),
            "{run}: {m}"
        );
        if lambda == 0.0 {
            assert_eq!(op["on_policy_batches"], 0, "{run}: {m}");
        }
        if lambda == 1.0 {
            assert_eq!(op["on_policy_batches"], 3, "{run}: {m}");
        }
    }
}
