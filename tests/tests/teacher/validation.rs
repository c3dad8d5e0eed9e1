//! Every kind of bad batch gets an INVALID_ARGUMENT error naming expected vs received, and the
//! same stream then serves a valid batch; an oversized message gets RESOURCE_EXHAUSTED.

use distill_tests::*;

fn floats(n: usize, v: f32) -> Vec<u8> {
    std::iter::repeat_n(v.to_le_bytes(), n).flatten().collect()
}

fn raw(batch_id: u64, dtype: i32, shape: Vec<i64>, data: Vec<u8>) -> v1::LogitsRequest {
    v1::LogitsRequest {
        batch_id,
        inputs: Some(v1::Tensor { dtype, shape, data }),
        output_dtype: 0,
        top_k: 0,
        temperature: 0.0,
        attention_mask: None,
        outputs: Vec::new(),
        gather_ids: None,
        gathered_only: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_invalid_batch_gets_its_error_and_the_stream_stays_open() {
    let fx = fixtures();
    let teacher = TeacherProcess::start(&fx.teacher, &["--max-batch-size", "8"]).await;
    let f32_ = v1::DType::F32 as i32;
    let sample = 28 * 28;
    let mut nan = floats(2 * sample, 0.25);
    nan[4 * 100..4 * 101].copy_from_slice(&f32::NAN.to_le_bytes());
    let mut inf = floats(sample, 0.25);
    inf[4 * 7..4 * 8].copy_from_slice(&f32::NEG_INFINITY.to_le_bytes());
    let with_output = |dtype: i32| {
        let mut r = raw(0, f32_, vec![1, 1, 28, 28], floats(sample, 0.5));
        r.output_dtype = dtype;
        r
    };
    let mut missing = raw(0, f32_, vec![], vec![]);
    missing.inputs = None;
    let mut top_k = raw(0, f32_, vec![1, 1, 28, 28], floats(sample, 0.5));
    top_k.top_k = 11;
    let cases: Vec<(&str, v1::LogitsRequest, Vec<&str>)> = vec![
        ("missing inputs", missing, vec!["missing", "[1, 28, 28]"]),
        (
            "unspecified dtype",
            raw(0, 0, vec![1, 1, 28, 28], floats(sample, 0.5)),
            vec!["expected F32", "got DTYPE_UNSPECIFIED"],
        ),
        (
            "wrong dtype",
            raw(
                0,
                v1::DType::F64 as i32,
                vec![1, 1, 28, 28],
                vec![0; 8 * sample],
            ),
            vec!["expected F32", "got F64"],
        ),
        (
            "unknown dtype",
            raw(0, 42, vec![1, 1, 28, 28], floats(sample, 0.5)),
            vec!["expected F32", "got 42"],
        ),
        (
            "wrong rank",
            raw(0, f32_, vec![1, 28, 28], floats(sample, 0.5)),
            vec!["expected 4", "got 3"],
        ),
        (
            "wrong sample shape",
            raw(0, f32_, vec![1, 1, 28, 27], floats(28 * 27, 0.5)),
            vec!["expected [1, 28, 28]", "got [1, 28, 27]"],
        ),
        (
            "negative dimension",
            raw(0, f32_, vec![1, 1, -28, 28], vec![]),
            vec!["negative dimension -28"],
        ),
        (
            "absurd dimensions",
            raw(0, f32_, vec![1 << 40, 1, 1 << 20, 28], vec![]),
            vec!["more than", "1099511627776"],
        ),
        (
            "data length",
            raw(0, f32_, vec![2, 1, 28, 28], floats(2 * sample - 1, 0.5)),
            vec!["expected 6272 bytes", "6268"],
        ),
        (
            "empty batch",
            raw(0, f32_, vec![0, 1, 28, 28], vec![]),
            vec!["expected between 1 and 8", "got 0"],
        ),
        (
            "batch too large",
            raw(0, f32_, vec![9, 1, 28, 28], floats(9 * sample, 0.5)),
            vec!["expected at most 8", "got 9"],
        ),
        (
            "NaN",
            raw(0, f32_, vec![2, 1, 28, 28], nan),
            vec!["expected finite", "got 1", "index 100"],
        ),
        (
            "Inf",
            raw(0, f32_, vec![1, 1, 28, 28], inf),
            vec!["expected finite", "got 1", "index 7"],
        ),
        (
            "integer output dtype",
            with_output(v1::DType::I32 as i32),
            vec!["expected F32, F16, BF16", "got I32"],
        ),
        (
            "unknown output dtype",
            with_output(77),
            vec!["expected F32, F16, BF16", "got 77"],
        ),
        ("top_k too large", top_k, vec!["between 1 and 10", "got 11"]),
    ];
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    for (i, (what, mut req, needles)) in cases.into_iter().enumerate() {
        let id = 1000 + i as u64;
        req.batch_id = id;
        stream.send(req).await;
        let resp = stream.recv_ok().await;
        assert_eq!(resp.batch_id, id, "{what}");
        let Some(v1::logits_response::Result::Error(err)) = &resp.result else {
            panic!("{what}: expected an error, got {:?}", resp.result);
        };
        assert_eq!(
            err.code,
            tonic::Code::InvalidArgument as i32,
            "{what}: {}",
            err.message
        );
        for n in needles {
            assert!(
                err.message.contains(n),
                "{what}: {:?} should contain {n:?}",
                err.message
            );
        }
        // The same stream still serves a valid batch correctly.
        let x = random_inputs(3, &[1, 28, 28]);
        stream.send(request(i as u64, &x)).await;
        let ok = stream.recv_ok().await;
        assert_eq!(ok.batch_id, i as u64);
        let diff = max_abs_diff(&dense(&ok), &torchscript_forward(&fx.teacher, &x));
        assert!(diff <= 1e-5, "after {what}: {diff}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_gets_resource_exhausted() {
    let fx = fixtures();
    let teacher = TeacherProcess::start(
        &fx.teacher,
        &["--max-batch-size", "8", "--max-message-bytes", "1048576"],
    )
    .await;
    assert_eq!(teacher.info().await.max_message_bytes, 1 << 20);
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    // 400 samples: 1.25 MB of inputs.
    stream
        .send(request(1, &random_inputs(400, &[1, 28, 28])))
        .await;
    match stream.recv().await {
        Some(Err(status)) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            assert!(
                status.message().contains("1048576"),
                "names the limit: {status:?}"
            );
        }
        other => panic!("expected RESOURCE_EXHAUSTED, got {other:?}"),
    }
    // The server is fine: a new stream works.
    let x = random_inputs(2, &[1, 28, 28]);
    let diff = max_abs_diff(
        &teacher.logits(&x).await.0,
        &torchscript_forward(&fx.teacher, &x),
    );
    assert!(diff <= 1e-5);
}
