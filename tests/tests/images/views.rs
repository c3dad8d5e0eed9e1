//! A teacher that takes another input shape than the student (3 × 32 × 32 RGB against the
//! student's 1 × 28 × 28 gray) gets its own view of every image: the soft targets the run
//! received (kept by `--logit-cache`) equal the teacher's forward pass of the view this test
//! computes itself from the files (converted to RGB, resized, normalized with
//! `--teacher-mean`/`--teacher-std`). Channels that cannot be bridged without `--channels` are
//! refused naming both shapes.

use distill_tests::images::{FolderSpec, view_of, write_image_folder};
use distill_tests::trainer::{DistillArgs, read_json, student};
use distill_tests::{TeacherProcess, TempDir, checkpoint_forward, fresh_checkpoint};
use std::path::Path;
use tch::{Kind, Tensor};

/// The dense soft targets of a (single-shard) logit cache, `f32 [N, classes]` in dataset order.
fn cached_values(cache: &Path) -> Tensor {
    let manifest = read_json(&cache.join("cache.json"));
    let shards = manifest["shards"].as_object().expect("shards");
    assert_eq!(shards.len(), 1, "{manifest}");
    let name = shards.values().next().unwrap()["name"].as_str().unwrap();
    let tensors = Tensor::read_safetensors(cache.join(name)).expect("read shard");
    let (_, values) = tensors
        .into_iter()
        .find(|(n, _)| n == "values")
        .expect("values in the shard");
    values.to_kind(Kind::Float)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_teacher_of_another_shape_gets_its_own_view_of_every_image() {
    let tmp = TempDir::new("images-views");
    let root = tmp.path().join("folder");
    let files = write_image_folder(&root, &FolderSpec::gray(3, 8, 28));
    let teacher_dir = tmp.path().join("teacher");
    let ck = fresh_checkpoint(&teacher_dir, "mlp:16", &[3, 32, 32], 3);
    let server = TeacherProcess::start(&teacher_dir, &[] as &[&str]).await;
    let (cache, out) = (tmp.path().join("cache"), tmp.path().join("student"));
    let base = DistillArgs::new(&root, &out)
        .teacher(server.url())
        .arch("mlp:8")
        .epochs(2)
        .batch_size(8)
        .no_epoch_eval()
        .flag("--mean", 0.5)
        .flag("--std", 0.5)
        .flag("--teacher-mean", "0.1,0.2,0.3")
        .flag("--teacher-std", 0.3);

    // Gray files, an RGB teacher: without --channels the run cannot know what is meant.
    let run = student(&base.clone().build()).await;
    assert_eq!(
        run.one_error(),
        "error: the teacher takes images [3, 32, 32] and the student's view is [1, 28, 28]: 3 \
         channel(s) against 1 (pass --channels 1 or --channels 3 to convert between gray and RGB)"
    );
    assert!(!out.join("checkpoint.json").exists());

    let args = base
        .flag("--channels", 1)
        .flag("--logit-cache", cache.display())
        .build();
    student(&args)
        .await
        .expect_ok("distill from a 3x32x32 teacher");
    let got = cached_values(&cache);
    assert_eq!(got.size(), [24, 3]);
    let views: Vec<Tensor> = files
        .iter()
        .map(|f| view_of(f, 3, 32, &[0.1, 0.2, 0.3], &[0.3; 3]))
        .collect();
    let want = checkpoint_forward(&ck, &Tensor::stack(&views, 0));
    let diff = (&got - &want).abs().max().double_value(&[]);
    assert!(
        diff < 1e-4,
        "soft targets differ from the teacher's own view by {diff}"
    );
    // The same images with the student's normalization give other logits: the teacher got its
    // own.
    let student_view: Vec<Tensor> = files
        .iter()
        .map(|f| view_of(f, 3, 32, &[0.5; 3], &[0.5; 3]))
        .collect();
    let other = checkpoint_forward(&ck, &Tensor::stack(&student_view, 0));
    assert!((&got - &other).abs().max().double_value(&[]) > 1e-2);
    let key = read_json(&cache.join("cache.json"));
    assert!(
        key.to_string()
            .contains("[3, 32, 32] mean [0.1, 0.2, 0.3] std [0.3, 0.3, 0.3]"),
        "{key}"
    );

    // The report names the classes; the teacher was evaluated in its own view of the test
    // split, as `eval --teacher` evaluates it.
    let report = read_json(&out.join("report.json"));
    assert_eq!(report["classes"], serde_json::json!(["c0", "c1", "c2"]));
    let teacher_acc = report["teacher"]["accuracy"]
        .as_f64()
        .expect("teacher accuracy");
    let d = root.display().to_string();
    let url = server.url();
    let eval = [
        "eval",
        "--teacher",
        &url,
        "--data-dir",
        &d,
        "--teacher-mean",
        "0.1,0.2,0.3",
        "--teacher-std",
        "0.3",
        "--json",
    ];
    let run = student(&eval)
        .await
        .expect_ok("eval --teacher on the folder");
    let v: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(v["accuracy"].as_f64(), Some(teacher_acc), "{v} vs {report}");
    assert_eq!(v["total"], 12);
}
