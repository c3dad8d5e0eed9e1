//! TorchScript students (`--student FILE.pt`) end to end: exported from PyTorch by
//! `scripts/export_student.py` (the modules are in `tests/python/student_check.py`), distilled
//! from a served teacher, checked back in PyTorch (`torch.jit.load` of `student.<hash>.pt`, and
//! the user's class loaded from `model.<hash>.safetensors` with `strict=True`), served by
//! `teacher-server --model DIR`, resumed mid-epoch bit for bit, started from a checkpoint with
//! `--init`, and each bad input refused with one error line before anything is written.

use distill_models::Checkpoint;
use distill_tests::images::fashion_mnist_folder;
use distill_tests::text_files::{TextFilesCorpus, pytokenizers};
use distill_tests::trainer::{read_json, student, write_synthetic_idx};
use distill_tests::{
    TeacherProcess, TempDir, checkpoint_forward, fresh_checkpoint, max_abs_diff, python,
    random_inputs, torchscript_forward, workspace_root,
};
use std::path::{Path, PathBuf};

/// `python3 tests/python/student_check.py ARGS` with the project's torch and safetensors; its
/// stdout (panics with both streams on failure).
fn py(args: &[&str]) -> String {
    py_script("tests/python/student_check.py", args)
}

/// `python3 SCRIPT ARGS` (`script` relative to the workspace root), as [`py`].
fn py_script(script: &str, args: &[&str]) -> String {
    let mut cmd = python();
    let torch_path = cmd
        .get_envs()
        .find(|(k, _)| *k == "PYTHONPATH")
        .and_then(|(_, v)| v.map(|v| v.to_os_string()))
        .unwrap_or_default();
    let mut path = workspace_root().join(".pysafetensors").into_os_string();
    path.push(":");
    path.push(pytokenizers());
    path.push(":");
    path.push(torch_path);
    let out = cmd
        .env("PYTHONPATH", path)
        .arg(workspace_root().join(script))
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{script} {args:?} failed\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Exports the test module `kind` (see `student_check.py export`) to `dir/NAME.pt`.
fn export(dir: &Path, kind: &str, extra: &[&str]) -> PathBuf {
    let out = dir.join(format!("{kind}.pt"));
    let mut args = vec!["export", kind, out.to_str().unwrap()];
    args.extend_from_slice(extra);
    py(&args);
    out
}

/// The one file of `dir` named `PREFIX.<hash>.EXT`.
fn only(dir: &Path, prefix: &str, ext: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.starts_with(prefix) && n.ends_with(ext)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{prefix}*{ext} in {}: {found:?}",
        dir.display()
    );
    found[0].clone()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// `student-trainer eval --json ARGS`.
async fn eval_json(args: &[String]) -> serde_json::Value {
    let mut all = vec!["eval".to_string(), "--json".into()];
    all.extend_from_slice(args);
    let run = student(&all).await.expect_ok("eval");
    serde_json::from_str(run.stdout.trim()).expect("eval --json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripted_cnn_is_distilled_on_an_image_folder_and_goes_back_to_pytorch_and_teaches() {
    let tmp = TempDir::new("ts-cnn");
    // An image folder of 600 training and 200 test images from Fashion-MNIST, read in gray at
    // 28 x 28 with Fashion-MNIST's normalization (the one student_check.py applies).
    let data = tmp.path().join("images");
    fashion_mnist_folder(&data);
    let view = ["--mean", "0.2860", "--std", "0.3530"];
    let cnn = export(tmp.path(), "cnn", &[]);
    let teacher_dir = tmp.path().join("teacher");
    fresh_checkpoint(&teacher_dir, "mlp:16", &[1, 28, 28], 10);
    let teacher = TeacherProcess::start(&teacher_dir, &[] as &[&str]).await;
    let out = tmp.path().join("out");
    let run = student(&[
        "distill",
        "--teacher",
        &teacher.url(),
        "--student",
        &s(&cnn),
        "--data-dir",
        &s(&data),
        view[0],
        view[1],
        view[2],
        view[3],
        "--epochs",
        "2",
        "--batch-size",
        "40",
        "--out",
        &s(&out),
    ])
    .await
    .expect_ok("distill a TorchScript student");
    assert!(run.stdout.contains("torchscript:cnn"), "{}", run.stdout);
    let report = read_json(&out.join("report.json"));
    let accuracy = report["student"]["accuracy"].as_f64().unwrap();

    // PyTorch: the saved module and the user's class from the safetensors.
    let checked: serde_json::Value =
        serde_json::from_str(py(&["check-cnn-folder", &s(&out), &s(&data), &s(&cnn)]).trim())
            .unwrap();
    for key in ["jit_accuracy", "state_dict_accuracy"] {
        let a = checked[key].as_f64().unwrap();
        assert!(
            (a - accuracy).abs() < 1e-6,
            "{key} {a} vs report {accuracy}"
        );
    }
    assert_eq!(checked["same_logits"], true, "{checked}");
    assert_eq!(checked["running_stats_moved"], true, "{checked}");
    // 2 epochs of 15 batches, and no batch statistics during the evaluations.
    assert_eq!(checked["num_batches_tracked"], 30, "{checked}");
    let keys = checked["keys"].to_string();
    assert!(
        keys.contains("bn.running_var") && keys.contains("fc.weight"),
        "{keys}"
    );

    // eval --checkpoint (the view recorded in the checkpoint) agrees with the report.
    let v = eval_json(&[
        "--checkpoint".into(),
        s(&out),
        "--data-dir".into(),
        s(&data),
    ])
    .await;
    assert_eq!(v["accuracy"].as_f64().unwrap(), accuracy, "{v}");

    // teacher-server serves the distilled student with the module's own logits.
    drop(teacher);
    let served = TeacherProcess::start(&out, &[] as &[&str]).await;
    let x = random_inputs(5, &[1, 28, 28]);
    let (got, _) = served.logits(&x).await;
    let want = torchscript_forward(&only(&out, "student.", ".pt"), &x);
    assert!(max_abs_diff(&got, &want) <= 1e-5);
    let info = served.info().await;
    let meta = read_json(&out.join("checkpoint.json"));
    assert_eq!(info.fingerprint, meta["fingerprint"].as_str().unwrap());
    assert_eq!(info.name, "torchscript:cnn");

    // ... and teaches the next round.
    let next = tmp.path().join("next");
    student(&[
        "distill",
        "--teacher",
        &served.url(),
        "--arch",
        "mlp:16",
        "--data-dir",
        &s(&data),
        "--epochs",
        "1",
        "--out",
        &s(&next),
    ])
    .await
    .expect_ok("distill from a served TorchScript student");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traced_causal_lm_student_is_distilled_over_jsonl_and_its_perplexity_matches_pytorch() {
    const SEQ: &str = "16";
    let tmp = TempDir::new("ts-lm");
    // .jsonl files and a word-level tokenizer.json trained by Python's tokenizers.
    let corpus = TextFilesCorpus::jsonl(tmp.path(), 240, 9);
    let vocab = corpus.vocab_size.to_string();
    let lm = export(tmp.path(), "lm", &[&vocab, SEQ]);
    // The teacher: a small built-in LM trained on the labels, served with the tokenizer.
    let teacher_dir = tmp.path().join("teacher");
    let mut args: Vec<String> = [
        "train",
        "--arch",
        "lm:layers=1,d=16,heads=2",
        "--seq-len",
        SEQ,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "3e-3",
        "--out",
    ]
    .map(String::from)
    .to_vec();
    args.push(s(&teacher_dir));
    args.extend(corpus.flags());
    student(&args).await.expect_ok("train the teacher LM");
    let teacher = TeacherProcess::start(&teacher_dir, &[] as &[&str]).await;
    let out = tmp.path().join("out");
    let mut args: Vec<String> = [
        "distill",
        "--student",
        &s(&lm),
        "--seq-len",
        SEQ,
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "1e-2",
        "--teacher",
        &teacher.url(),
        "--out",
        &s(&out),
    ]
    .map(String::from)
    .to_vec();
    args.extend(corpus.flags());
    student(&args)
        .await
        .expect_ok("distill a traced TorchScript LM");
    // eval finds the test split from the checkpoint's corpus.json and tokenizer.json.
    let v = eval_json(&[
        "--checkpoint".into(),
        s(&out),
        "--data-dir".into(),
        s(&corpus.data_dir),
    ])
    .await;
    let ppl = v["perplexity"].as_f64().unwrap();
    assert!(ppl > 1.0 && ppl < corpus.vocab_size as f64, "{v}");
    // PyTorch: the held-out documents encoded by Python's tokenizers and packed, scored by the
    // exported module and by TinyLm loaded from the safetensors.
    let checked: serde_json::Value = serde_json::from_str(
        py(&[
            "check-lm-text",
            &s(&out),
            &s(&corpus.data_dir),
            &s(&corpus.tokenizer),
            SEQ,
        ])
        .trim(),
    )
    .unwrap();
    for key in ["jit_perplexity", "state_dict_perplexity"] {
        let p = checked[key].as_f64().unwrap();
        assert!((p - ppl).abs() <= 1e-5 * ppl, "{key} {p} vs eval {ppl}");
    }
    assert_eq!(checked["jit_accuracy"], v["accuracy"], "{checked} vs {v}");

    // On-policy: the traced module samples its own completions (a full forward per new token:
    // TorchScript has no key/value cache), the teacher scores them.
    let on_policy = tmp.path().join("on-policy");
    let mut args: Vec<String> = [
        "distill",
        "--student",
        &s(&lm),
        "--seq-len",
        SEQ,
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--limit",
        "32",
        "--teacher",
        &teacher.url(),
        "--on-policy",
        "1",
        "--prompt-tokens",
        "4",
        "--max-new-tokens",
        "8",
        "--eval-prompts",
        "8",
        "--temperature",
        "1",
        "--out",
        &s(&on_policy),
    ]
    .map(String::from)
    .to_vec();
    args.extend(corpus.flags());
    student(&args)
        .await
        .expect_ok("on-policy distill of a traced TorchScript LM");
    let m = &distill_tests::trainer::read_metrics(&on_policy)[0]["on_policy"];
    assert_eq!(m["on_policy_batches"], 4, "{m}");
    assert!(m["tokens_generated"].as_u64().unwrap() >= 32, "{m}");
    assert!(m["heldout_reverse_kl"].as_f64().unwrap().is_finite(), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torchscript_student_with_dropout_resumes_mid_epoch_bit_for_bit() {
    let tmp = TempDir::new("ts-resume");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 256, 50, 10, 12);
    let cnn = export(tmp.path(), "cnn", &[]);
    let run = |out: &Path, extra: &[&str]| {
        let mut args: Vec<String> = [
            "train",
            "--student",
            &s(&cnn),
            "--data-dir",
            &s(&data),
            "--epochs",
            "2",
            "--batch-size",
            "32",
            "--no-epoch-eval",
            "--out",
            &s(out),
        ]
        .map(String::from)
        .to_vec();
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let straight = tmp.path().join("straight");
    student(&run(&straight, &[]))
        .await
        .expect_ok("straight run");
    let cut = tmp.path().join("cut");
    let stopped = student(&run(&cut, &["--stop-after-steps", "11"])).await;
    assert_eq!(stopped.code, Some(143), "{}", stopped.stderr);
    let meta = read_json(&cut.join("checkpoint.json"));
    assert_eq!(
        (meta["epoch"].as_u64(), meta["step"].as_u64()),
        (Some(1), Some(11))
    );
    student(&run(&cut, &["--resume"]))
        .await
        .expect_ok("resumed run");
    let (a, b) = (
        read_json(&straight.join("checkpoint.json")),
        read_json(&cut.join("checkpoint.json")),
    );
    assert_eq!(
        a["fingerprint"], b["fingerprint"],
        "weights and buffers differ"
    );
    assert_eq!(
        std::fs::read(only(&straight, "model.", ".safetensors")).unwrap(),
        std::fs::read(only(&cut, "model.", ".safetensors")).unwrap()
    );
    assert_eq!(
        std::fs::read(only(&straight, "optimizer.", ".safetensors")).unwrap(),
        std::fs::read(only(&cut, "optimizer.", ".safetensors")).unwrap()
    );
}

/// The optimizer state's step counter and the weights fingerprint of the checkpoint in `dir`.
fn step_and_fingerprint(dir: &Path) -> (i64, String) {
    let opt = tch::Tensor::read_safetensors(only(dir, "optimizer.", ".safetensors")).unwrap();
    let step = opt
        .iter()
        .find(|(n, _)| n == "step")
        .map(|(_, t)| t.int64_value(&[]))
        .unwrap();
    let meta = read_json(&dir.join("checkpoint.json"));
    (step, meta["fingerprint"].as_str().unwrap().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_starts_built_in_and_torchscript_students_from_a_checkpoint_with_a_fresh_optimizer() {
    let tmp = TempDir::new("ts-init");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 128, 40, 10, 13);
    let cnn = export(tmp.path(), "cnn", &[]);
    let common = |out: &Path| -> Vec<String> {
        [
            "--data-dir",
            &s(&data),
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--no-epoch-eval",
            "--out",
            &s(out),
        ]
        .map(String::from)
        .to_vec()
    };
    for (name, student_flags) in [
        ("builtin", vec!["--arch".to_string(), "mlp:16".into()]),
        ("script", vec!["--student".to_string(), s(&cnn)]),
    ] {
        let first = tmp.path().join(format!("{name}-first"));
        let mut args = vec!["train".to_string()];
        args.extend(student_flags.clone());
        args.extend(common(&first));
        student(&args).await.expect_ok("the pretrained student");
        let (steps, trained) = step_and_fingerprint(&first);
        assert_eq!(steps, 4);
        // Stopped before its first step: the checkpoint holds --init's weights (buffers
        // included) and an optimizer that has taken no step.
        let second = tmp.path().join(format!("{name}-second"));
        let mut args = vec!["train".to_string()];
        args.extend(student_flags.clone());
        args.extend(["--init".to_string(), s(&first)]);
        args.extend(["--stop-after-steps".to_string(), "0".into()]);
        args.extend(common(&second));
        let run = student(&args).await;
        assert_eq!(run.code, Some(143), "{name}: {}", run.stderr);
        assert_eq!(
            step_and_fingerprint(&second),
            (0, trained.clone()),
            "{name}"
        );
        // --init alone: the checkpoint names the student.
        let third = tmp.path().join(format!("{name}-third"));
        let mut args = vec!["train".to_string(), "--init".into(), s(&first)];
        args.extend(["--stop-after-steps".to_string(), "0".into()]);
        args.extend(common(&third));
        let run = student(&args).await;
        assert_eq!(run.code, Some(143), "{name}: {}", run.stderr);
        assert_eq!(step_and_fingerprint(&third), (0, trained), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_with_named_outputs_is_hinted_at_one_of_them() {
    let tmp = TempDir::new("ts-hint");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 128, 40, 10, 14);
    let multi = export(tmp.path(), "multi", &[]);
    let teacher_dir = tmp.path().join("teacher");
    fresh_checkpoint(&teacher_dir, "mlp:16", &[1, 28, 28], 10);
    let teacher = TeacherProcess::start(&teacher_dir, &[] as &[&str]).await;
    let out = tmp.path().join("out");
    student(&[
        "distill",
        "--teacher",
        &teacher.url(),
        "--student",
        &s(&multi),
        "--student-logits-output",
        "logits",
        "--hint",
        "h1=features",
        "--hint-stage-epochs",
        "1",
        "--data-dir",
        &s(&data),
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--out",
        &s(&out),
    ])
    .await
    .expect_ok("hinted TorchScript student");
    let report = read_json(&out.join("report.json"));
    assert!(
        report["hint"].as_str().unwrap().starts_with("h1=features"),
        "{report}"
    );
    let meta = read_json(&out.join("checkpoint.json"));
    assert_eq!(meta["arch"]["arch"]["logits_output"], "logits", "{meta}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_torchscript_students_are_refused_in_one_line_before_anything_is_written() {
    let tmp = TempDir::new("ts-bad");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 64, 20, 10, 15);
    let lm_data = tmp.path().join("lm.npz");
    py(&["lmdata", &s(&lm_data), "24", "12"]);
    let dir = tmp.path();
    let cnn = export(dir, "cnn", &[]);
    let garbage = dir.join("garbage.pt");
    std::fs::write(&garbage, b"not a zip archive").unwrap();
    let twoargs = export(dir, "twoargs", &[]);
    let cnn5 = export(dir, "cnn5", &[]);
    let lmbig = export(dir, "lmbig", &["24", "12"]);
    let noparams = export(dir, "noparams", &[]);
    let multi = export(dir, "multi", &[]);
    let sidecar = dir.join("sidecar.pt");
    std::fs::copy(&cnn, &sidecar).unwrap();
    std::fs::write(dir.join("sidecar.pt.json"), r#"{"num_logits": 5}"#).unwrap();
    let builtin = dir.join("builtin");
    fresh_checkpoint(&builtin, "mlp:16", &[1, 28, 28], 10);
    let images = s(&data);
    let tokens = s(&lm_data);
    let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        (
            "not TorchScript",
            vec![
                "--student".into(),
                s(&garbage),
                "--data-dir".into(),
                images.clone(),
            ],
            vec!["garbage.pt", "not a TorchScript module"],
        ),
        (
            "other arguments",
            vec![
                "--student".into(),
                s(&twoargs),
                "--data-dir".into(),
                images.clone(),
            ],
            vec!["twoargs.pt", "missing value for argument 'y'", "forward(x)"],
        ),
        (
            "classes",
            vec![
                "--student".into(),
                s(&cnn5),
                "--data-dir".into(),
                images.clone(),
            ],
            vec!["gives 5 logits per sample", "the data has 10 classes"],
        ),
        (
            "vocabulary",
            vec![
                "--student".into(),
                s(&lmbig),
                "--data-dir".into(),
                tokens.clone(),
            ],
            vec!["[2, 8, 31]", "[batch, seq, vocab]", "vocabulary of 24"],
        ),
        (
            "no parameters",
            vec![
                "--student".into(),
                s(&noparams),
                "--data-dir".into(),
                images.clone(),
            ],
            vec!["no trainable parameters"],
        ),
        (
            "several outputs",
            vec![
                "--student".into(),
                s(&multi),
                "--data-dir".into(),
                images.clone(),
            ],
            vec!["--student-logits-output", "logits [10], features [32]"],
        ),
        (
            "sidecar",
            vec![
                "--student".into(),
                s(&sidecar),
                "--data-dir".into(),
                images.clone(),
            ],
            vec![
                "sidecar.pt.json says num_logits 5",
                "the data has 10 classes",
            ],
        ),
        (
            "sequence model on images",
            vec![
                "--student".into(),
                s(&cnn),
                "--data-dir".into(),
                tokens.clone(),
            ],
            vec![
                "cnn.pt.json says input_shape [1, 28, 28]",
                "token sequences",
            ],
        ),
        (
            "with --arch",
            vec![
                "--student".into(),
                s(&cnn),
                "--arch".into(),
                "cnn".into(),
                "--data-dir".into(),
                images.clone(),
            ],
            vec!["--arch cnn together"],
        ),
        (
            "init of another architecture",
            vec![
                "--student".into(),
                s(&cnn),
                "--init".into(),
                s(&builtin),
                "--data-dir".into(),
                images.clone(),
            ],
            vec!["holds mlp:16", "the TorchScript student cnn"],
        ),
    ];
    for (i, (what, flags, needles)) in cases.into_iter().enumerate() {
        let out = dir.join(format!("out-{i}"));
        let mut args = vec!["train".to_string()];
        args.extend(flags);
        args.extend(["--epochs".to_string(), "1".into(), "--out".into(), s(&out)]);
        let e = student(&args).await.one_error();
        for needle in needles {
            assert!(e.contains(needle), "{what}: {needle:?} not in {e}");
        }
        assert!(!out.exists(), "{what}: {} was written", out.display());
    }
}

#[test]
fn built_in_checkpoints_load_strictly_into_their_pytorch_classes() {
    let tmp = TempDir::new("ts-builtin");
    for (arch, shape, classes) in [
        ("mlp:16,8", vec![1i64, 28, 28], 10i64),
        ("cnn", vec![1, 28, 28], 10),
        ("lm:layers=1,d=16,heads=2", vec![8], 20),
    ] {
        let dir = tmp.path().join(arch.replace([':', ',', '='], "_"));
        fresh_checkpoint(&dir, arch, &shape, classes);
        let got: serde_json::Value = serde_json::from_str(
            py_script("scripts/builtin_students.py", &[&s(&dir), "--logits", "2"]).trim(),
        )
        .unwrap();
        let mut full = vec![2i64];
        full.extend(&shape);
        let numel: i64 = full.iter().product();
        let x = if arch.starts_with("lm") {
            tch::Tensor::arange(numel, (tch::Kind::Int64, tch::Device::Cpu))
                .remainder(classes)
                .reshape(full.as_slice())
        } else {
            (tch::Tensor::arange(numel, (tch::Kind::Float, tch::Device::Cpu)) / numel as f64)
                .reshape(full.as_slice())
        };
        let want = checkpoint_forward(&Checkpoint::open(&dir).unwrap(), &x);
        let want_sum = want
            .to_kind(tch::Kind::Double)
            .sum(tch::Kind::Double)
            .double_value(&[]);
        let sum = got["sum"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() <= 1e-4 * want_sum.abs().max(1.0),
            "{arch}: PyTorch {sum}, student-trainer {want_sum}"
        );
        assert_eq!(got["shape"], serde_json::json!(want.size()), "{arch}");
    }
}
