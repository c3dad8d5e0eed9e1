//! A replica that accepts batches but never answers them (`stalling-teacher-server`, a test-only
//! binary of this crate): its batches move to the other replica after `--batch-timeout`, and every
//! batch is still trained exactly once.

use distill_tests::trainer::{
    DistillArgs, assert_exactly_once, read_json, read_ledger, student, write_synthetic_idx,
};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_replicas_batches_move_after_the_batch_timeout() {
    let tmp = TempDir::new("replicas-stall");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 600, 100, 10, 4);
    let teacher = tmp.path().join("teacher");
    fresh_checkpoint(&teacher, "mlp:32", &[1, 28, 28], 10);
    let good = TeacherProcess::start(&teacher, &[] as &[&str]).await;
    // The test-only binary: the real server, whose model hangs after 3 forward passes; batches
    // of 20 samples do not merge under --max-batch-size 20, so that is 3 batches.
    let stalled = TeacherProcess::start_binary(
        "stalling-teacher-server",
        &teacher,
        &["--stall-after", "3", "--max-batch-size", "20"],
    )
    .await;
    let (out, ledger) = (tmp.path().join("out"), tmp.path().join("ledger"));
    let args = DistillArgs::new(&data, &out)
        .teachers(&[stalled.url(), good.url()])
        .arch("mlp:16")
        .epochs(1)
        .batch_size(20)
        .prefetch(2)
        .flag("--batch-timeout", 1)
        .no_epoch_eval()
        .ledger(&ledger)
        .build();
    let run = student(&args)
        .await
        .expect_ok("distill with a stalled replica");
    assert!(
        run.stderr.contains("no answer within --batch-timeout"),
        "{}",
        run.stderr
    );
    let per_replica = assert_exactly_once(&read_ledger(&ledger), 1, 30);
    assert!(
        per_replica.get(&stalled.url()).copied().unwrap_or(0) <= 3,
        "{per_replica:?}"
    );
    let r = read_json(&out.join("report.json"));
    assert!(r["batches_resent"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["samples_trained"].as_u64(), Some(600), "{r}");
}
