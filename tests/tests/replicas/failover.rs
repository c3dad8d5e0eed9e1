//! Three teacher replicas; one is SIGKILLed mid-epoch. The run completes, every batch is trained
//! exactly once (batch ledger), and the accuracy matches an undisturbed run.

use distill_tests::trainer::{
    DistillArgs, assert_exactly_once, read_json, read_ledger, spawn_student, wait_for_ledger,
    write_synthetic_idx,
};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};
use std::path::Path;

const TRAIN: usize = 2000;
const BATCH: usize = 10;
const EPOCHS: u64 = 3;

fn args(urls: &[String], data: &Path, out: &Path, ledger: &Path) -> Vec<String> {
    DistillArgs::new(data, out)
        .teachers(urls)
        .arch("mlp:32")
        .epochs(EPOCHS)
        .batch_size(BATCH)
        .flag("--alpha", 0.5)
        .prefetch(2)
        .flag("--batch-timeout", 20)
        .ledger(ledger)
        .no_epoch_eval()
        .build()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_epoch_costs_no_batch() {
    let tmp = TempDir::new("replicas-failover");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, TRAIN, 300, 10, 3);
    let teacher = tmp.path().join("teacher");
    fresh_checkpoint(&teacher, "mlp:64", &[1, 28, 28], 10);
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(TeacherProcess::start(&teacher, &[] as &[&str]).await);
    }
    let urls: Vec<String> = replicas.iter().map(|r| r.url()).collect();
    let batches = TRAIN.div_ceil(BATCH) as u64;

    // Undisturbed reference run.
    let (out_a, ledger_a) = (tmp.path().join("a"), tmp.path().join("a.ledger"));
    let a = spawn_student(&args(&urls, &data, &out_a, &ledger_a))
        .finish()
        .await
        .expect_ok("undisturbed distill");
    drop(a);
    assert_exactly_once(&read_ledger(&ledger_a), EPOCHS, batches);
    let report_a = read_json(&out_a.join("report.json"));

    // Disturbed run: kill replica 0 in the middle of the second epoch.
    let (out_b, ledger_b) = (tmp.path().join("b"), tmp.path().join("b.ledger"));
    let mut student = spawn_student(&args(&urls, &data, &out_b, &ledger_b));
    let at_kill = wait_for_ledger(&ledger_b, batches as usize + 50, &mut student).await;
    replicas[0].signal("KILL");
    assert!(
        at_kill < (EPOCHS * batches) as usize,
        "the run ended before the kill"
    );
    let run = student
        .finish()
        .await
        .expect_ok("distill with a replica killed");
    let ledger = read_ledger(&ledger_b);
    let per_replica = assert_exactly_once(&ledger, EPOCHS, batches);
    // The survivors answered after the kill; the killed one answered only before (what it
    // answered before the kill is trained within the next few batches: window + channel).
    let late: Vec<&serde_json::Value> = ledger[at_kill + 40..].iter().collect();
    assert!(
        late.iter().all(|l| l["replica"] != urls[0].as_str()),
        "killed replica still credited late in the run"
    );
    assert!(
        per_replica.get(&urls[1]).copied().unwrap_or(0) > 0
            && per_replica.get(&urls[2]).copied().unwrap_or(0) > 0,
        "{per_replica:?}"
    );

    let report_b = read_json(&out_b.join("report.json"));
    assert_eq!(
        report_b["samples_trained"].as_u64(),
        Some(EPOCHS * TRAIN as u64),
        "{report_b}"
    );
    let answered: u64 = report_b["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["batches_answered"].as_u64().unwrap())
        .sum();
    assert_eq!(answered, EPOCHS * batches, "{report_b}");
    let (acc_a, acc_b) = (
        report_a["student"]["accuracy"].as_f64().unwrap(),
        report_b["student"]["accuracy"].as_f64().unwrap(),
    );
    assert!(
        (acc_a - acc_b).abs() <= 0.02,
        "accuracy {acc_b} after a failover vs {acc_a} undisturbed\n{}",
        run.stderr
    );
}
