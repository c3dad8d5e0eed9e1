//! An ensemble of two different teachers (`--teacher-group`): every batch is answered by one
//! replica of each group, and the run trains on the mixture.

use distill_tests::trainer::{
    DistillArgs, assert_exactly_once, batches_answered, read_json, read_ledger, student,
    write_synthetic_idx,
};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_answer_every_batch() {
    let tmp = TempDir::new("ensemble");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 400, 100, 10, 7);
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    fresh_checkpoint(&one, "mlp:32", &[1, 28, 28], 10);
    fresh_checkpoint(&two, "mlp:48", &[1, 28, 28], 10);
    let a1 = TeacherProcess::start(&one, &[] as &[&str]).await;
    let a2 = TeacherProcess::start(&one, &[] as &[&str]).await;
    let b = TeacherProcess::start(&two, &[] as &[&str]).await;
    let (out, ledger) = (tmp.path().join("out"), tmp.path().join("ledger"));
    let args = DistillArgs::new(&data, &out)
        .teacher_group("a", &[a1.url(), a2.url()])
        .teacher_group("b", &[b.url()])
        .flag("--group-weight", "a=0.7")
        .flag("--group-weight", "b=0.3")
        .arch("mlp:16")
        .epochs(1)
        .batch_size(20)
        .no_epoch_eval()
        .ledger(&ledger)
        .build();
    student(&args).await.expect_ok("ensemble distill");
    let ledger = read_ledger(&ledger);
    let per = assert_exactly_once(&ledger, 1, 20);
    // Each batch names one replica of group a and the replica of group b.
    for (replicas, n) in &per {
        let parts: Vec<&str> = replicas.split('+').collect();
        assert_eq!(parts.len(), 2, "{replicas}");
        assert!(parts[0] == a1.url() || parts[0] == a2.url(), "{replicas}");
        assert_eq!(parts[1], b.url(), "{replicas} ({n})");
    }
    let r = read_json(&out.join("report.json"));
    let answered = |url: &str| batches_answered(&r, url).unwrap();
    assert_eq!(answered(&b.url()), 20, "{r}");
    assert_eq!(answered(&a1.url()) + answered(&a2.url()), 20, "{r}");
    assert!(answered(&a1.url()) > 0 && answered(&a2.url()) > 0, "{r}");
    assert!(
        r["teacher_fingerprint"].as_str().unwrap().contains('+'),
        "{r}"
    );
    let acc = r["teacher"]["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&acc), "{r}");
}
