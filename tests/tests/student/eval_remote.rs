//! `eval --teacher` streams through the pool, like `distill`: several `--teacher` replicas, a
//! `dns://NAME:PORT` name (here `localhost`, through the system resolver), and a dead replica
//! among live ones all give the accuracy of one replica.

use distill_tests::trainer::{student, write_synthetic_idx};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};

/// `eval --teacher T ... --batch-size 20 --json`, parsed.
async fn eval(teachers: &[String], data: &std::path::Path) -> serde_json::Value {
    let mut args: Vec<String> = vec!["eval".into()];
    for t in teachers {
        args.extend(["--teacher".into(), t.clone()]);
    }
    args.extend([
        "--data-dir".into(),
        data.display().to_string(),
        "--batch-size".into(),
        "20".into(),
        "--json".into(),
    ]);
    let run = student(&args)
        .await
        .expect_ok(&format!("eval --teacher {teachers:?}"));
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_takes_several_replicas_and_dns_names() {
    let tmp = TempDir::new("eval-remote");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 100, 300, 10, 8);
    let teacher = tmp.path().join("teacher");
    fresh_checkpoint(&teacher, "mlp:32", &[1, 28, 28], 10);
    let a = TeacherProcess::start(&teacher, &[] as &[&str]).await;
    let b = TeacherProcess::start(&teacher, &[] as &[&str]).await;

    let one = eval(&[a.url()], &data).await;
    assert_eq!(one["total"], 300, "{one}");
    let same = |v: &serde_json::Value, what: &str| {
        assert_eq!(
            (&v["correct"], &v["total"], &v["per_class"]),
            (&one["correct"], &one["total"], &one["per_class"]),
            "{what}: {v} vs one replica {one}"
        );
    };

    let two = eval(&[a.url(), b.url()], &data).await;
    same(&two, "two replicas");
    let model = two["model"].as_str().unwrap();
    assert!(
        model.contains(&a.url()) && model.contains(&b.url()),
        "{model}"
    );

    let dns = format!("dns://localhost:{}", a.addr.port());
    same(&eval(&[dns], &data).await, "dns://localhost");

    // A replica that refuses connections (a port just freed) is retried in the background;
    // the live one answers everything.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    same(
        &eval(&[dead, b.url()], &data).await,
        "a dead and a live replica",
    );
}
