//! Logits are never sent as infinities or NaN: a batch whose logits exceed the F16 range
//! (65504) when F16 is requested is refused with OUT_OF_RANGE naming BF16/F32, and a teacher
//! that produces NaN or infinite logits gets INTERNAL for that batch. Other batches on the same
//! stream are answered.

use distill_tests::*;
use tch::{Kind, Tensor};
use tonic::Code;
use v1::DType;

fn req(batch_id: u64, x: &Tensor, dtype: DType, top_k: u32) -> v1::LogitsRequest {
    v1::LogitsRequest {
        batch_id,
        inputs: Some(to_wire(x)),
        output_dtype: dtype as i32,
        top_k,
        temperature: 0.0,
        attention_mask: None,
        outputs: Vec::new(),
        gather_ids: None,
        gathered_only: false,
    }
}

/// Sends every request on one stream and returns the responses ordered by batch id.
async fn exchange(
    teacher: &TeacherProcess,
    reqs: Vec<v1::LogitsRequest>,
) -> Vec<v1::LogitsResponse> {
    let n = reqs.len();
    let mut s = LogitsStream::open(&mut teacher.client().await).await;
    for r in reqs {
        s.send(r).await;
    }
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(s.recv_ok().await);
    }
    out.sort_by_key(|r| r.batch_id);
    out
}

fn error(resp: &v1::LogitsResponse) -> &v1::Error {
    match &resp.result {
        Some(v1::logits_response::Result::Error(e)) => e,
        other => panic!("batch {}: expected an error, got {other:?}", resp.batch_id),
    }
}

fn all_finite(t: &Tensor) -> bool {
    t.to_kind(Kind::Float).isfinite().all().int64_value(&[]) == 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f16_overflow_is_refused_per_batch_with_a_hint() {
    let tmp = TempDir::new("output-range-f16");
    let ck = fresh_checkpoint(tmp.path(), "mlp:16", &[8], 4);
    let teacher = TeacherProcess::start(tmp.path(), &[] as &[&str]).await;
    let normal = random_inputs(4, &[8]);
    // A ReLU network is nearly linear in its input's scale: logits of millions, finite in f32.
    let huge = &normal * 1e7;
    let reference = checkpoint_forward(&ck, &huge);
    let largest = reference.abs().max().double_value(&[]);
    assert!(
        largest > 65504.0 && all_finite(&reference),
        "test setup: logits up to {largest} should overflow f16 only"
    );
    let r = exchange(
        &teacher,
        vec![
            req(1, &huge, DType::F16, 0),
            req(2, &huge, DType::F16, 2),
            req(3, &huge, DType::F32, 0),
            req(4, &huge, DType::Bf16, 0),
            req(5, &normal, DType::F16, 0),
        ],
    )
    .await;
    for refused in &r[..2] {
        let e = error(refused);
        assert_eq!(e.code, Code::OutOfRange as i32, "{e:?}");
        assert!(
            e.message.contains("F16")
                && e.message.contains("65504")
                && e.message.contains("BF16 or F32"),
            "{}",
            e.message
        );
    }
    let f32_logits = dense(&r[2]);
    let rel = max_abs_diff(&f32_logits, &reference) / largest;
    assert!(
        rel < 1e-5,
        "f32 logits differ from the reference by {rel} (relative)"
    );
    let bf16 = dense(&r[3]);
    assert_eq!(bf16.kind(), Kind::BFloat16);
    assert!(all_finite(&bf16));
    let f16 = dense(&r[4]);
    assert_eq!(f16.kind(), Kind::Half);
    assert!(all_finite(&f16));
    assert!(max_abs_diff(&f16, &checkpoint_forward(&ck, &normal)) < 1e-2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_finite_teacher_logits_are_refused_not_sent() {
    let tmp = TempDir::new("output-range-nan");
    // Weights of 1e30: the hidden layer holds ~1e30, the output layer overflows f32.
    let ck = scaled_checkpoint(tmp.path(), "mlp:16", &[8], 4, 1e30);
    let teacher = TeacherProcess::start(tmp.path(), &[] as &[&str]).await;
    let x = random_inputs(4, &[8]).abs() + 0.1;
    assert!(
        !all_finite(&checkpoint_forward(&ck, &x)),
        "test setup: the scaled teacher should produce non-finite logits"
    );
    let r = exchange(
        &teacher,
        vec![
            req(1, &x, DType::F32, 0),
            req(2, &x, DType::F16, 0),
            req(3, &x, DType::F32, 2),
        ],
    )
    .await;
    for resp in &r {
        let e = error(resp);
        assert_eq!(e.code, Code::Internal as i32, "{e:?}");
        assert!(e.message.contains("NaN or infinite"), "{}", e.message);
    }
    assert!(
        teacher.logs.contains("NaN or infinite"),
        "a refused batch is logged; logs:\n{}",
        teacher.logs.text()
    );
}
