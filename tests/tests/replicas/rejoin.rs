//! A replica killed and restarted on the same address rejoins the pool (health check and
//! fingerprint) and receives work again, while the pool keeps serving from the other one.

use distill_tests::trainer::run_once;
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};
use std::time::Duration;
use student_trainer::teachers::pool::{Expect, GroupSpec, Pool, PoolOptions};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_rejoins_and_receives_work() {
    let tmp = TempDir::new("replicas-rejoin");
    let teacher = tmp.path().join("teacher");
    fresh_checkpoint(&teacher, "mlp:32", &[1, 28, 28], 10);
    let mut a = TeacherProcess::start(&teacher, &[] as &[&str]).await;
    let b = TeacherProcess::start(&teacher, &[] as &[&str]).await;
    let (addr_a, url_a) = (a.addr, a.url());
    let mut pool = Pool::connect(
        vec![GroupSpec {
            name: "teacher".into(),
            weight: 1.0,
            urls: vec![url_a.clone(), b.url()],
        }],
        PoolOptions {
            prefetch: 2,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_millis(400),
            ..PoolOptions::default()
        },
        Expect {
            sample_shape: vec![1, 28, 28],
            num_classes: 10,
            batch_size: 8,
            tokens: false,
            tokenizer_fingerprint: None,
            hint_output: None,
            top_k: 0,
            image_views: false,
        },
    )
    .await
    .expect("pool");
    let first = run_once(&mut pool).await;
    assert!(
        first.contains(&url_a) && first.contains(&b.url()),
        "{first:?}"
    );

    a.signal("KILL");
    a.wait(Duration::from_secs(10)).await;
    // The pool keeps serving from B alone.
    let during = run_once(&mut pool).await;
    assert!(during.iter().all(|r| *r == b.url()), "{during:?}");

    // Restart A on the same address: it rejoins and answers again.
    let _a2 = TeacherProcess::start(&teacher, &["--listen", &addr_a.to_string()]).await;
    let mut rejoined = false;
    for _ in 0..500 {
        if run_once(&mut pool).await.contains(&url_a) {
            rejoined = true;
            break;
        }
    }
    assert!(rejoined, "A never rejoined: {:?}", pool.replica_stats());
}
