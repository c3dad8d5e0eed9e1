//! Every replica down: the run waits `--teacher-wait`, saves a checkpoint and exits with a clear
//! message; `--resume` with a replica back finishes the run, and no batch is trained twice or
//! lost.

use distill_tests::trainer::{
    DistillArgs, assert_exactly_once, read_json, read_ledger, spawn_student, student,
    wait_for_ledger, write_synthetic_idx,
};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_replica_the_run_checkpoints_and_resume_finishes_it() {
    let tmp = TempDir::new("replicas-outage");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 1000, 100, 10, 6);
    let teacher = tmp.path().join("teacher");
    fresh_checkpoint(&teacher, "mlp:32", &[1, 28, 28], 10);
    let (out, ledger) = (tmp.path().join("out"), tmp.path().join("ledger"));
    let args = |url: &str, resume: bool| {
        let a = DistillArgs::new(&data, &out)
            .teacher(url)
            .arch("mlp:16")
            .epochs(2)
            .batch_size(10)
            .prefetch(2)
            .flag("--teacher-wait", 2)
            .no_epoch_eval()
            .ledger(&ledger);
        let a = if resume { a.resume() } else { a };
        a.build()
    };

    let first = TeacherProcess::start(&teacher, &[] as &[&str]).await;
    let mut run = spawn_student(&args(&first.url(), false));
    wait_for_ledger(&ledger, 130, &mut run).await;
    first.signal("KILL");
    let run = run.finish().await;
    assert!(!run.ok(), "the run should fail without a teacher");
    let errors = run.error_lines();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    let e = errors[0];
    assert!(
        e.contains("no teacher replica reachable")
            && e.contains("--resume")
            && e.contains("checkpoint saved"),
        "{e}"
    );
    assert!(
        run.stderr.contains("training waits"),
        "no waiting log:\n{}",
        run.stderr
    );
    assert!(out.join("checkpoint.json").is_file());
    let trained_before = read_ledger(&ledger).len();
    assert!((130..200).contains(&trained_before), "{trained_before}");

    let second = TeacherProcess::start(&teacher, &[] as &[&str]).await;
    student(&args(&second.url(), true))
        .await
        .expect_ok("resumed distill");
    let ledger = read_ledger(&ledger);
    assert_exactly_once(&ledger, 2, 100);
    let r = read_json(&out.join("report.json"));
    assert_eq!(r["samples_trained"].as_u64(), Some(2000), "{r}");
}
