//! One server reached through two URLs (`http://127.0.0.1:P` and `http://localhost:P`) is one
//! replica: the pool sees the same `instance_id` behind both, logs it, and the report counts one
//! replica that answered every batch (counting by URL would give two, each with half the
//! batches).

use distill_tests::trainer::{DistillArgs, read_json, student_logging, write_synthetic_idx};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_urls_of_one_server_count_as_one_replica() {
    let tmp = TempDir::new("replicas-same-server");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 200, 50, 10, 9);
    let teacher = tmp.path().join("teacher");
    fresh_checkpoint(&teacher, "mlp:32", &[1, 28, 28], 10);
    let server = TeacherProcess::start(&teacher, &[] as &[&str]).await;
    let (direct, by_name) = (
        server.url(),
        format!("http://localhost:{}", server.addr.port()),
    );
    let out = tmp.path().join("out");
    let args = DistillArgs::new(&data, &out)
        .teachers(&[direct.clone(), by_name.clone()])
        .arch("mlp:16")
        .epochs(1)
        .batch_size(20)
        .no_epoch_eval()
        .build();
    let run = student_logging(&args, "info")
        .await
        .expect_ok("distill through two URLs of one server");
    let merged = run
        .stderr
        .lines()
        .find(|l| l.contains("same teacher-server"))
        .unwrap_or_else(|| panic!("no log line about the merge:\n{}", run.stderr));
    assert!(
        merged.contains(&direct) && merged.contains(&by_name),
        "{merged}"
    );
    let r = read_json(&out.join("report.json"));
    let replicas = r["replicas"].as_array().unwrap();
    assert_eq!(replicas.len(), 1, "{r}");
    assert_eq!(replicas[0]["url"], direct.as_str(), "{r}");
    assert_eq!(replicas[0]["batches_answered"], 10, "{r}");
}
