//! The logit cache end to end against a real teacher-server: `distill --logit-cache` asks the
//! teacher during epoch 1 only and reads the cache afterwards; a second student trains from the
//! cache alone (no `--teacher`) to the very same weights; `capture` fills a cache offline and
//! resumes an interrupted one; a cache of other settings, or a damaged shard, is refused by name.

use distill_models::Checkpoint;
use distill_tests::trainer::{DistillArgs, read_json, read_ledger, student, write_synthetic_idx};
use distill_tests::{TeacherProcess, TempDir, fresh_checkpoint};
use std::path::Path;

const TRAIN: usize = 600;
const BATCH: usize = 50;

fn base(data: &Path, out: &Path) -> DistillArgs {
    DistillArgs::new(data, out)
        .arch("mlp:16")
        .epochs(3)
        .batch_size(BATCH)
        .flag("--labels", 100)
        .no_epoch_eval()
}

fn weights(dir: &Path) -> std::path::PathBuf {
    Checkpoint::open(dir).expect("checkpoint").weights_path()
}

/// The shard file names listed in `cache.json`.
fn shard_files(cache: &Path) -> Vec<String> {
    let manifest = read_json(&cache.join("cache.json"));
    manifest["shards"]
        .as_object()
        .expect("shards")
        .values()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_one_fills_the_cache_and_a_cache_alone_trains_the_same_student() {
    let tmp = TempDir::new("student-cache");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, TRAIN, 200, 10, 3);
    fresh_checkpoint(&tmp.path().join("teacher"), "mlp:32", &[1, 28, 28], 10);
    let server = TeacherProcess::start(&tmp.path().join("teacher"), &[] as &[&str]).await;
    let cache = tmp.path().join("cache");
    let (online, offline) = (tmp.path().join("online"), tmp.path().join("offline"));
    let ledger = tmp.path().join("ledger.jsonl");

    // With a teacher: epoch 1 from the teacher (filling the cache), epochs 2-3 from the cache.
    let args = base(&data, &online)
        .teacher(server.url())
        .wire("f16")
        .flag("--logit-cache", cache.display())
        .ledger(&ledger)
        .build();
    let run = student(&args).await.expect_ok("distill filling the cache");
    let asked = read_ledger(&ledger);
    assert_eq!(
        asked.len(),
        TRAIN / BATCH,
        "the teacher answered more than epoch 1"
    );
    assert!(asked.iter().all(|l| l["epoch"] == 0), "{asked:?}");
    let report = read_json(&online.join("report.json"));
    assert_eq!(report["cached_epochs"], 2, "{report}");
    assert_eq!(report["epochs"], 3);
    let per_sample = report["cache_bytes_per_sample"].as_f64().unwrap();
    // 10 f16 logits = 20 bytes per sample, plus the shard headers.
    assert!((20.0..30.0).contains(&per_sample), "{per_sample}");
    assert!(run.stdout.contains("logit cache"), "{}", run.stdout);
    assert!(report["trainer_waited_s"].as_f64().unwrap() >= 0.0);

    // Without a teacher: every epoch from the cache, the same weights bit for bit (same seed,
    // same soft targets: the teacher is deterministic, the cache holds its f16 rows).
    let args = base(&data, &offline)
        .wire("f16")
        .flag("--logit-cache", cache.display())
        .build();
    let run = student(&args)
        .await
        .expect_ok("distill from the cache alone");
    assert!(run.stdout.contains("n/a"), "{}", run.stdout);
    let report = read_json(&offline.join("report.json"));
    assert_eq!(report["cached_epochs"], 3);
    assert!(report["teacher"]["accuracy"].is_null());
    assert_eq!(
        distill_tests::trainer::max_abs_diff(&weights(&online), &weights(&offline)),
        0.0
    );

    // Other settings than the cache's: refused, naming what differs.
    let args = base(&data, &tmp.path().join("other"))
        .wire("bf16")
        .flag("--logit-cache", cache.display())
        .build();
    let e = student(&args).await.one_error();
    assert!(
        e.contains("--wire: cache has f16, this run has bf16"),
        "{e}"
    );
    let other_data = tmp.path().join("other-data");
    write_synthetic_idx(&other_data, TRAIN, 200, 10, 4);
    let args = base(&other_data, &tmp.path().join("other2"))
        .wire("f16")
        .flag("--logit-cache", cache.display())
        .build();
    let e = student(&args).await.one_error();
    assert!(e.contains("dataset sha256"), "{e}");

    // A damaged shard: an error naming it, never silent zeros.
    let shard = shard_files(&cache).remove(0);
    let path = cache.join(&shard);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let args = base(&data, &tmp.path().join("damaged"))
        .wire("f16")
        .flag("--logit-cache", cache.display())
        .build();
    let e = student(&args).await.one_error();
    assert!(e.contains(&shard) && e.contains("truncated"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_fills_a_sparse_cache_offline_and_resumes_an_interrupted_one() {
    let tmp = TempDir::new("student-capture");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, TRAIN, 200, 10, 5);
    fresh_checkpoint(&tmp.path().join("teacher"), "mlp:32", &[1, 28, 28], 10);
    let server = TeacherProcess::start(&tmp.path().join("teacher"), &[] as &[&str]).await;
    let cache = tmp.path().join("cache");
    let capture = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "capture",
            "--teacher",
            &server.url(),
            "--data-dir",
            &data.display().to_string(),
            "--out",
            &cache.display().to_string(),
            "--wire",
            "bf16",
            "--top-k",
            "4",
            "--temperature",
            "2",
            "--shard-samples",
            "128",
            "--batch-size",
            "64",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = student(&capture(&[])).await.expect_ok("capture");
    assert!(run.stdout.contains("5 of 5 shards to go"), "{}", run.stdout);
    assert!(run.stdout.contains("complete"), "{}", run.stdout);
    assert_eq!(shard_files(&cache).len(), 5);

    // Interrupted capture: two shards lost from the manifest (as if killed before committing
    // them); the rerun captures exactly those.
    let path = cache.join("cache.json");
    let mut manifest = read_json(&path);
    let shards = manifest["shards"].as_object_mut().unwrap();
    shards.remove("1");
    shards.remove("4");
    std::fs::write(&path, serde_json::to_string(&manifest).unwrap()).unwrap();
    let run = student(&capture(&[])).await.expect_ok("resumed capture");
    assert!(run.stdout.contains("2 of 5 shards to go"), "{}", run.stdout);
    assert!(run.stdout.contains("2 shard(s) written"), "{}", run.stdout);
    assert_eq!(shard_files(&cache).len(), 5);
    let again = student(&capture(&[]))
        .await
        .expect_ok("capture of a complete cache");
    assert!(
        again.stdout.contains("0 of 5 shards to go"),
        "{}",
        again.stdout
    );

    // The captured cache trains a student with no teacher at the same settings; another
    // temperature is refused (the tail depends on it).
    let out = tmp.path().join("student");
    let args = base(&data, &out)
        .wire("bf16")
        .top_k(4)
        .flag("--temperature", 2)
        .flag("--logit-cache", cache.display())
        .build();
    student(&args)
        .await
        .expect_ok("distill from the captured cache");
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["cached_epochs"], 3);
    assert_eq!(report["top_k"], 4);
    let args = base(&data, &tmp.path().join("hot"))
        .wire("bf16")
        .top_k(4)
        .flag("--temperature", 4)
        .flag("--logit-cache", cache.display())
        .build();
    let e = student(&args).await.one_error();
    assert!(
        e.contains("temperature: cache has 2, this run has 4"),
        "{e}"
    );

    // Several teacher groups cannot share one cache.
    let args = base(&data, &tmp.path().join("groups"))
        .teacher_group("a", &[server.url()])
        .teacher_group("b", &[server.url()])
        .flag("--logit-cache", cache.display())
        .build();
    let e = student(&args).await.one_error();
    assert!(
        e.contains("--logit-cache") && e.contains("2 teacher groups"),
        "{e}"
    );
}
