//! Compact soft targets end to end against real teacher-server processes: `--wire bf16
//! --top-k 3` trains a student that learns; `--ensemble-mode sample` sends each batch to one
//! group, drawn from the seed (the same groups on a rerun); and the bad combinations fail at
//! start, naming the flags.

use distill_tests::trainer::{
    DistillArgs, assert_exactly_once, read_json, read_ledger, read_metrics, student,
    write_synthetic_idx,
};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bf16_top_3_targets_train_a_student_that_learns() {
    let tmp = TempDir::new("student-sparse");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 3000, 500, 10, 1);
    let (teacher, out) = (tmp.path().join("teacher"), tmp.path().join("out"));
    student(&[
        "train",
        "--arch",
        "mlp:256",
        "--epochs",
        "2",
        "--data-dir",
        &data.display().to_string(),
        "--out",
        &teacher.display().to_string(),
    ])
    .await
    .expect_ok("teacher training");
    let server = TeacherProcess::start(&teacher, &[] as &[&str]).await;
    let args = DistillArgs::new(&data, &out)
        .teacher(server.url())
        .arch("mlp:32")
        .epochs(3)
        .flag("--labels", 300)
        .wire("bf16")
        .top_k(3)
        .no_epoch_eval()
        .build();
    let run = student(&args).await.expect_ok("sparse distill");
    assert!(
        run.stdout.contains("top-3 bf16 (tail: bucket)"),
        "{}",
        run.stdout
    );
    let metrics = read_metrics(&out);
    let loss: Vec<f64> = metrics
        .iter()
        .map(|m| m["loss"].as_f64().unwrap())
        .collect();
    assert_eq!(loss.len(), 3);
    assert!(
        loss[2] < loss[0] && loss[1] < loss[0],
        "loss did not decrease: {loss:?}"
    );
    assert!(
        metrics
            .iter()
            .all(|m| m["soft_loss"].as_f64().unwrap() > 0.0)
    );
    let r = read_json(&out.join("report.json"));
    let (t, s) = (
        r["teacher"]["accuracy"].as_f64().unwrap(),
        r["student"]["accuracy"].as_f64().unwrap(),
    );
    assert!(t > 0.6, "teacher accuracy {t}");
    assert!(
        s > 0.5,
        "student accuracy {s} from top-3 targets not well above chance (0.1)"
    );
    assert_eq!(r["wire"], "bf16");
    assert_eq!(r["top_k"], 3);
    assert_eq!(r["sparse_tail"], "bucket");
    assert_eq!(r["ensemble_mode"], "mix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampled_ensembles_send_each_batch_to_one_group_chosen_by_the_seed() {
    let tmp = TempDir::new("student-sample");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 400, 100, 10, 7);
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    fresh_checkpoint(&one, "mlp:32", &[1, 28, 28], 10);
    fresh_checkpoint(&two, "mlp:48", &[1, 28, 28], 10);
    let a = TeacherProcess::start(&one, &[] as &[&str]).await;
    let b = TeacherProcess::start(&two, &[] as &[&str]).await;
    let mut runs = Vec::new();
    for name in ["first", "again"] {
        let (out, ledger) = (
            tmp.path().join(name),
            tmp.path().join(format!("{name}.ledger")),
        );
        let args = DistillArgs::new(&data, &out)
            .teacher_group("a", &[a.url()])
            .teacher_group("b", &[b.url()])
            .ensemble_mode("sample")
            .top_k(4)
            .sparse_tail("uniform")
            .arch("mlp:16")
            .epochs(2)
            .batch_size(20)
            .flag("--seed", 11)
            .no_epoch_eval()
            .ledger(&ledger)
            .build();
        student(&args).await.expect_ok("sampled ensemble distill");
        let ledger = read_ledger(&ledger);
        assert_exactly_once(&ledger, 2, 20);
        let picks: Vec<(u64, u64, String)> = ledger
            .iter()
            .map(|l| {
                let groups = l["groups"].as_array().unwrap();
                assert_eq!(groups.len(), 1, "one group per batch: {l}");
                let g = groups[0].as_str().unwrap().to_string();
                let replica = l["replica"].as_str().unwrap();
                let url = if g == "a" { a.url() } else { b.url() };
                assert_eq!(replica, url, "batch answered by its group's replica: {l}");
                (
                    l["epoch"].as_u64().unwrap(),
                    l["index"].as_u64().unwrap(),
                    g,
                )
            })
            .collect();
        let count = |g: &str| picks.iter().filter(|p| p.2 == g).count();
        assert!(
            count("a") > 0 && count("b") > 0,
            "both groups used: {picks:?}"
        );
        let r = read_json(&out.join("report.json"));
        assert_eq!(r["ensemble_mode"], "sample");
        let answered: u64 = r["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["batches_answered"].as_u64().unwrap())
            .sum();
        // 40 training batches, one part each (teacher accuracy is evaluated separately).
        assert!(answered >= 40, "{r}");
        runs.push(picks);
    }
    assert_eq!(runs[0], runs[1], "the same seed picks the same groups");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_soft_target_flags_fail_at_start_naming_them() {
    let tmp = TempDir::new("student-sparse-errors");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 60, 20, 10, 3);
    let ck = tmp.path().join("teacher");
    fresh_checkpoint(&ck, "mlp:8", &[1, 28, 28], 10);
    let server = TeacherProcess::start(&ck, &[] as &[&str]).await;
    let out = tmp.path().join("out");
    let base = || {
        DistillArgs::new(&data, &out)
            .arch("mlp:8")
            .epochs(1)
            .no_epoch_eval()
    };

    let run = student(
        &base()
            .teacher(server.url())
            .flag("--loss", "mse")
            .top_k(3)
            .build(),
    )
    .await;
    let e = run.one_error();
    assert!(e.contains("--top-k") && e.contains("--loss mse"), "{e}");

    let run = student(
        &base()
            .teacher_group("a", &[server.url()])
            .teacher_group("b", &[server.url()])
            .top_k(3)
            .build(),
    )
    .await;
    let e = run.one_error();
    assert!(
        e.contains("--top-k") && e.contains("--ensemble-mode") && e.contains("2 teacher groups"),
        "{e}"
    );

    let run = student(&base().teacher(server.url()).top_k(11).build()).await;
    let e = run.one_error();
    assert!(
        e.contains("teacher has 10") && e.contains("--top-k has 11"),
        "{e}"
    );
    assert!(!out.join("checkpoint.json").exists(), "nothing trained");
}
