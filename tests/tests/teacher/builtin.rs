//! A built-in architecture with safetensors weights, served from a checkpoint directory or a bare
//! `.safetensors` file, equals the same network run in this process.

use distill_tests::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoint_directory_of_the_cnn() {
    let dir = TempDir::new("teacher-builtin-cnn");
    let ck = fresh_checkpoint(dir.path(), "cnn", &[1, 28, 28], 10);
    let teacher = TeacherProcess::start(dir.path(), &["--max-batch-size", "16"]).await;
    let info = teacher.info().await;
    assert_eq!(info.name, "cnn");
    assert_eq!(
        info.fingerprint, ck.meta.fingerprint,
        "fingerprint of the weights as loaded"
    );
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    for (id, batch) in [1i64, 7, 16].into_iter().enumerate() {
        let x = random_inputs(batch, &[1, 28, 28]);
        stream.send(request(id as u64, &x)).await;
        let got = dense(&stream.recv_ok().await);
        let want = checkpoint_forward(&ck, &x);
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= 1e-5, "batch {batch}: max |diff| = {diff}");
    }
    // Eval mode: the cnn's dropout is off.
    let x = random_inputs(4, &[1, 28, 28]);
    assert_eq!(
        max_abs_diff(&teacher.logits(&x).await.0, &teacher.logits(&x).await.0),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safetensors_file_with_arch_flag() {
    let dir = TempDir::new("teacher-builtin-mlp");
    let ck = fresh_checkpoint(dir.path(), "mlp:32", &[1, 28, 28], 10);
    let weights = ck.weights_path();
    let teacher = TeacherProcess::start(
        &weights,
        &[
            "--arch",
            "mlp:32",
            "--input-shape",
            "1,28,28",
            "--num-logits",
            "10",
            "--max-batch-size",
            "8",
        ],
    )
    .await;
    let info = teacher.info().await;
    assert_eq!(info.name, "mlp:32");
    assert_eq!(info.input_shape, vec![1, 28, 28]);
    assert_eq!(info.fingerprint, ck.meta.fingerprint);
    for batch in [1, 7, 8] {
        let x = random_inputs(batch, &[1, 28, 28]);
        let (got, _) = teacher.logits(&x).await;
        let diff = max_abs_diff(&got, &checkpoint_forward(&ck, &x));
        assert!(diff <= 1e-5, "batch {batch}: max |diff| = {diff}");
    }
}
