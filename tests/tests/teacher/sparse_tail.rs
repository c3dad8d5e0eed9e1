//! Sparse (top-k) logits carry the log-sum-exp of the rest of the row at the request's
//! temperature (`SparseLogits.tail_logsumexp`), computed by the real teacher-server from the full
//! row: it and the top-k values agree with the dense response to the same inputs. A request
//! without a temperature (an old client) gets T = 1; a negative, NaN or infinite temperature gets
//! a per-batch INVALID_ARGUMENT and the stream keeps serving.

use distill_tests::*;
use tch::{Kind, Tensor};
use tonic::Code;
use v1::DType;

fn req(batch_id: u64, x: &Tensor, top_k: u32, temperature: f32) -> v1::LogitsRequest {
    v1::LogitsRequest {
        batch_id,
        inputs: Some(to_wire(x)),
        output_dtype: DType::F32 as i32,
        top_k,
        temperature,
        attention_mask: None,
        outputs: Vec::new(),
        gather_ids: None,
        gathered_only: false,
    }
}

fn sparse(resp: &v1::LogitsResponse) -> (Tensor, Tensor, Tensor, Tensor) {
    match &resp.result {
        Some(v1::logits_response::Result::Sparse(s)) => {
            let get = |t: &Option<v1::Tensor>, what: &str| {
                from_wire(t.as_ref().unwrap_or_else(|| panic!("{what} missing")))
            };
            (
                get(&s.indices, "indices"),
                get(&s.values, "values"),
                get(&s.logsumexp, "logsumexp"),
                get(&s.tail_logsumexp, "tail_logsumexp"),
            )
        }
        other => panic!(
            "batch {}: expected sparse logits, got {other:?}",
            resp.batch_id
        ),
    }
}

/// log-sum-exp of `dense[b] / t` over the classes not in `top[b]`, per row, in float64.
fn tail_from_dense(dense: &Tensor, top: &Tensor, t: f64) -> Tensor {
    (dense.to_kind(Kind::Double) / t)
        .scatter_value(1, top, f64::NEG_INFINITY)
        .logsumexp([-1i64].as_slice(), false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_agrees_with_the_dense_row_and_bad_temperatures_are_refused_per_batch() {
    let tmp = TempDir::new("sparse-tail");
    fresh_checkpoint(tmp.path(), "mlp:16", &[8], 10);
    let teacher = TeacherProcess::start(tmp.path(), &[] as &[&str]).await;
    let x = random_inputs(5, &[8]) * 4.0;
    let mut s = LogitsStream::open(&mut teacher.client().await).await;
    let reqs = vec![
        req(1, &x, 0, 0.0),
        req(2, &x, 3, 1.0),
        req(3, &x, 3, 2.5),
        req(4, &x, 3, 0.0),
        req(5, &x, 3, -1.0),
        req(6, &x, 3, f32::NAN),
        req(7, &x, 3, f32::INFINITY),
        req(8, &x, 10, 2.0),
        req(9, &x, 4, 2.5),
    ];
    let n = reqs.len();
    for r in reqs {
        s.send(r).await;
    }
    let mut r = Vec::new();
    for _ in 0..n {
        r.push(s.recv_ok().await);
    }
    r.sort_by_key(|r| r.batch_id);
    let full = dense(&r[0]);
    assert_eq!(full.size(), [5, 10]);
    for (resp, t) in [(&r[1], 1.0), (&r[2], 2.5), (&r[3], 1.0), (&r[8], 2.5)] {
        let (indices, values, logsumexp, tail) = sparse(resp);
        let k = indices.size()[1];
        assert_eq!(values.size(), [5, k]);
        assert_eq!(tail.size(), [5]);
        assert_eq!(tail.kind(), Kind::Float);
        // The values are the dense row's entries at the indices, and its k largest.
        let gathered = full.gather(1, &indices, false);
        assert!(max_abs_diff(&gathered, &values) < 1e-6);
        let (top, _) = full.topk(k, -1, true, true);
        assert!(max_abs_diff(&top, &values) < 1e-6);
        let want = tail_from_dense(&full, &indices, t);
        let err = max_abs_diff(&want, &tail);
        assert!(
            err < 1e-4,
            "batch {} (T {t}): tail {tail:?}, from the dense row {want:?}",
            resp.batch_id
        );
        // logsumexp keeps its meaning: the raw row at T = 1.
        let raw = full
            .to_kind(Kind::Double)
            .logsumexp([-1i64].as_slice(), false);
        assert!(max_abs_diff(&raw, &logsumexp) < 1e-4);
    }
    // An old client's temperature 0 is T = 1: the same tail as an explicit 1.
    assert!(max_abs_diff(&sparse(&r[3]).3, &sparse(&r[1]).3) < 1e-5);
    assert!(
        max_abs_diff(&sparse(&r[2]).3, &sparse(&r[1]).3) > 1e-3,
        "T must matter"
    );
    for (resp, got) in [(&r[4], "got -1"), (&r[5], "got NaN"), (&r[6], "got inf")] {
        match &resp.result {
            Some(v1::logits_response::Result::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{e:?}");
                assert!(
                    e.message.contains("temperature: expected > 0 (or 0 for 1)")
                        && e.message.contains(got),
                    "{}",
                    e.message
                );
            }
            other => panic!("batch {}: expected an error, got {other:?}", resp.batch_id),
        }
    }
    // k = num_logits: nothing outside the top k, the tail is -inf.
    let (_, _, _, all) = sparse(&r[7]);
    assert_eq!(Vec::<f32>::try_from(&all).unwrap(), [f32::NEG_INFINITY; 5]);
    // The stream still serves after the refused batches.
    s.send(req(10, &x, 0, 0.0)).await;
    let again = s.recv_ok().await;
    assert_eq!(again.batch_id, 10);
    assert!(max_abs_diff(&dense(&again), &full) < 1e-5);
}
