//! A replica serving different weights is refused with a message naming both fingerprints; the
//! run goes on with the consistent replica.

use distill_tests::trainer::{
    DistillArgs, batches_answered, read_json, student, write_synthetic_idx,
};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_other_weights_is_refused_naming_both_fingerprints() {
    let tmp = TempDir::new("replicas-refused");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 200, 50, 10, 5);
    let (one, two) = (tmp.path().join("one"), tmp.path().join("two"));
    fresh_checkpoint(&one, "mlp:32", &[1, 28, 28], 10);
    fresh_checkpoint(&two, "mlp:32", &[1, 28, 28], 10);
    let a = TeacherProcess::start(&one, &[] as &[&str]).await;
    let b = TeacherProcess::start(&two, &[] as &[&str]).await;
    let (fa, fb) = (a.info().await.fingerprint, b.info().await.fingerprint);
    assert_ne!(fa, fb);
    let out = tmp.path().join("out");
    let args = DistillArgs::new(&data, &out)
        .teachers(&[a.url(), b.url()])
        .arch("mlp:16")
        .epochs(1)
        .batch_size(50)
        .no_epoch_eval()
        .build();
    let run = student(&args)
        .await
        .expect_ok("distill with an inconsistent replica");
    let refusal = run
        .stderr
        .lines()
        .find(|l| l.contains("refused"))
        .unwrap_or_else(|| panic!("no refusal logged:\n{}", run.stderr));
    assert!(
        refusal.contains(&fa) && refusal.contains(&fb) && refusal.contains(&b.url()),
        "{refusal}"
    );
    let r = read_json(&out.join("report.json"));
    let answered = |url: &str| batches_answered(&r, url);
    assert_eq!(answered(&a.url()), Some(4), "{r}");
    assert_eq!(answered(&b.url()), Some(0), "{r}");
}
