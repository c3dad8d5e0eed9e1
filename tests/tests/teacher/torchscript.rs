//! A TorchScript teacher over the wire equals the same module run in this process.

use distill_tests::*;

const MAX: i64 = 32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logits_match_in_process_forward_for_batch_sizes_1_7_and_max() {
    let fx = fixtures();
    let teacher = TeacherProcess::start(&fx.teacher, &["--max-batch-size", &MAX.to_string()]).await;
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    for (id, batch) in [1i64, 7, MAX].into_iter().enumerate() {
        let x = random_inputs(batch, &[1, 28, 28]);
        stream.send(request(id as u64, &x)).await;
        let resp = stream.recv_ok().await;
        assert_eq!(resp.batch_id, id as u64);
        let got = dense(&resp);
        assert_eq!(got.size(), vec![batch, 10]);
        assert_eq!(got.kind(), tch::Kind::Float);
        let want = torchscript_forward(&fx.teacher, &x);
        let diff = max_abs_diff(&got, &want);
        assert!(diff <= 1e-5, "batch {batch}: max |diff| = {diff}");
        // Not trivially equal: the logits depend on the inputs.
        assert!(want.abs().max().double_value(&[]) > 1e-3);
        let timing = resp.timing.expect("timing");
        assert!(timing.merged_batch_size as i64 >= batch);
        assert!(timing.merged_requests >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_module_saved_in_training_mode_is_served_in_eval_mode() {
    let fx = fixtures();
    let x = random_inputs(16, &[1, 28, 28]);
    // Sanity: in training mode its dropout really changes the output.
    let m = tch::CModule::load(&fx.teacher_train).unwrap();
    let (a, b) = {
        let _g = tch::no_grad_guard();
        let _rng = torch_rng();
        (m.forward_ts(&[&x]).unwrap(), m.forward_ts(&[&x]).unwrap())
    };
    assert!(
        max_abs_diff(&a, &b) > 1e-3,
        "the fixture should have active dropout"
    );

    let teacher = TeacherProcess::start(&fx.teacher_train, &[] as &[&str]).await;
    let (first, _) = teacher.logits(&x).await;
    let (second, _) = teacher.logits(&x).await;
    assert_eq!(max_abs_diff(&first, &second), 0.0, "dropout must be off");
    let want = torchscript_forward(&fx.teacher_train, &x);
    assert!(max_abs_diff(&first, &want) <= 1e-5);
    // Same weights as the eval-mode export.
    assert!(max_abs_diff(&first, &torchscript_forward(&fx.teacher, &x)) <= 1e-5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_precision_and_top_k_outputs() {
    let fx = fixtures();
    let teacher = TeacherProcess::start(&fx.teacher, &[] as &[&str]).await;
    let x = random_inputs(5, &[1, 28, 28]) * 3.0;
    let want = torchscript_forward(&fx.teacher, &x);
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    for (id, dtype, kind, tol) in [
        (1, v1::DType::F16, tch::Kind::Half, 1e-2),
        (2, v1::DType::Bf16, tch::Kind::BFloat16, 5e-2),
    ] {
        let mut req = request(id, &x);
        req.output_dtype = dtype as i32;
        stream.send(req).await;
        let resp = stream.recv_ok().await;
        let got = dense(&resp);
        assert_eq!(got.kind(), kind);
        let diff = max_abs_diff(&got, &want);
        assert!(
            diff <= tol * (1.0 + want.abs().max().double_value(&[])),
            "{dtype:?}: {diff}"
        );
    }
    let mut req = request(3, &x);
    req.top_k = 3;
    stream.send(req).await;
    let resp = stream.recv_ok().await;
    let Some(v1::logits_response::Result::Sparse(sparse)) = &resp.result else {
        panic!("expected sparse logits, got {:?}", resp.result);
    };
    let indices = from_wire(sparse.indices.as_ref().unwrap());
    let values = from_wire(sparse.values.as_ref().unwrap());
    let lse = from_wire(sparse.logsumexp.as_ref().unwrap());
    assert_eq!(indices.kind(), tch::Kind::Int64);
    assert_eq!(indices.size(), vec![5, 3]);
    assert_eq!(values.size(), vec![5, 3]);
    assert_eq!(lse.size(), vec![5]);
    let (want_values, want_indices) = want.topk(3, -1, true, true);
    assert!(indices.equal(&want_indices));
    assert!(max_abs_diff(&values, &want_values) <= 1e-5);
    assert!(max_abs_diff(&lse, &want.logsumexp([-1i64].as_slice(), false)) <= 1e-5);
}
