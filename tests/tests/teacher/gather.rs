//! `LogitsRequest.gather_ids`: the teacher's log-probabilities at ids the caller chooses, per
//! row or per position, at the request's temperature; with `gathered_only` alone. Checked
//! against `log_softmax(logits / T)` of the dense logits the same server returns, for a causal
//! LM and a classifier; ids outside the vocabulary fail the batch, naming row, position and id,
//! and the stream goes on.

use distill_proto::codec;
use distill_tests::*;
use tch::{Device, Kind, Tensor};

const VOCAB: i64 = 24;
const T: f64 = 2.0;

/// The gathered tensor of a response, as `f32`.
fn gathered(r: &v1::LogitsResponse) -> Tensor {
    codec::decode(r.gathered.as_ref().expect("a gathered tensor")).expect("decodes")
}

/// `log_softmax(logits / T)` at `ids` along the last dimension, computed here.
fn reference(logits: &Tensor, ids: &Tensor) -> Tensor {
    (logits.to_kind(Kind::Double) / T)
        .log_softmax(-1, Kind::Double)
        .gather(-1, ids, false)
        .to_kind(Kind::Float)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lm_returns_log_probs_at_the_ids_asked_for_with_or_without_its_logits() {
    let dir = TempDir::new("teacher-gather-lm");
    let ck = dir.path().join("lm");
    scaled_checkpoint(&ck, "lm:layers=1,d=16,heads=2", &[8], VOCAB, 3.0);
    let teacher = TeacherProcess::start(&ck, &[] as &[&str]).await;
    let (ids, gather) = {
        let _rng = torch_rng();
        (
            Tensor::randint(VOCAB, [2, 5], (Kind::Int64, Device::Cpu)),
            Tensor::randint(VOCAB, [2, 5, 3], (Kind::Int64, Device::Cpu)),
        )
    };
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    let mut both = request(1, &ids);
    both.temperature = T as f32;
    both.gather_ids = Some(to_wire(&gather));
    let mut alone = both.clone();
    alone.batch_id = 2;
    alone.gathered_only = true;
    stream.send(both).await;
    stream.send(alone).await;
    let (r1, r2) = (stream.recv_ok().await, stream.recv_ok().await);
    let (r1, r2) = if r1.batch_id == 1 { (r1, r2) } else { (r2, r1) };
    let logits = dense(&r1);
    assert_eq!(logits.size(), vec![2, 5, VOCAB]);
    let want = reference(&logits, &gather);
    let got = gathered(&r1);
    assert_eq!(got.size(), vec![2, 5, 3]);
    assert_eq!(got.kind(), Kind::Float);
    assert!(max_abs_diff(&got, &want) <= 1e-5, "{got} vs {want}");
    // gathered_only: the same values, and no logits.
    assert!(r2.result.is_none(), "{:?}", r2.result);
    assert!(max_abs_diff(&gathered(&r2), &want) <= 1e-5);
    // Probabilities: each id's exp(log p) is its softmax share at T.
    let p = gathered(&r1).exp();
    assert!(p.max().double_value(&[]) <= 1.0 && p.min().double_value(&[]) > 0.0);

    // An id outside the vocabulary fails that batch only, naming row, position and id.
    let bad = gather.copy();
    let _ = bad.get(1).get(3).get(2).fill_(VOCAB + 5);
    let mut wrong = request(3, &ids);
    wrong.gather_ids = Some(to_wire(&bad));
    stream.send(wrong).await;
    let r = stream.recv_ok().await;
    let Some(v1::logits_response::Result::Error(e)) = &r.result else {
        panic!("expected an error, got {r:?}")
    };
    assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
    assert!(
        e.message.contains("gather_ids")
            && e.message.contains(&format!("{}", VOCAB + 5))
            && e.message.contains("batch row 1, position 3"),
        "{}",
        e.message
    );
    // A shape that is not the inputs' plus m, and gathered_only alone, are refused too.
    let mut shape = request(4, &ids);
    shape.gather_ids = Some(to_wire(&Tensor::zeros(
        [2, 4, 1],
        (Kind::Int64, Device::Cpu),
    )));
    let mut only = request(5, &ids);
    only.gathered_only = true;
    stream.send(shape).await;
    stream.send(only).await;
    for _ in 0..2 {
        let r = stream.recv_ok().await;
        let Some(v1::logits_response::Result::Error(e)) = &r.result else {
            panic!("expected an error, got {r:?}")
        };
        let expected = if r.batch_id == 4 {
            "gather_ids shape: expected [batch, seq, m]"
        } else {
            "gathered_only: set without gather_ids"
        };
        assert!(e.message.contains(expected), "{}", e.message);
    }
    // The stream still serves.
    stream.send(request(6, &ids)).await;
    assert_eq!(dense(&stream.recv_ok().await).size(), vec![2, 5, VOCAB]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classifier_returns_log_probs_per_row_exact_whatever_the_wire_dtype() {
    let dir = TempDir::new("teacher-gather-cls");
    let ck = dir.path().join("mlp");
    scaled_checkpoint(&ck, "mlp:16", &[1, 28, 28], 10, 4.0);
    let teacher = TeacherProcess::start(&ck, &[] as &[&str]).await;
    let x = random_inputs(3, &[1, 28, 28]);
    let gather = Tensor::from_slice(&[0i64, 9, 4, 4, 2, 7]).reshape([3, 2]);
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    let mut dense_f32 = request(1, &x);
    dense_f32.temperature = T as f32;
    let mut bf16 = request(2, &x);
    bf16.temperature = T as f32;
    bf16.output_dtype = v1::DType::Bf16 as i32;
    bf16.top_k = 3;
    bf16.gather_ids = Some(to_wire(&gather));
    stream.send(dense_f32).await;
    stream.send(bf16).await;
    let (r1, r2) = (stream.recv_ok().await, stream.recv_ok().await);
    let (r1, r2) = if r1.batch_id == 1 { (r1, r2) } else { (r2, r1) };
    let want = reference(&dense(&r1), &gather);
    // The values travel as F32 computed from the full row, though the logits go as bf16 top-3.
    let got = gathered(&r2);
    assert_eq!(got.size(), vec![3, 2]);
    assert!(max_abs_diff(&got, &want) <= 1e-5, "{got} vs {want}");
    assert!(matches!(
        r2.result,
        Some(v1::logits_response::Result::Sparse(_))
    ));
}

/// Sequences of different lengths sent together are merged into one forward pass (padded to
/// the longest); each gets back its own top-k logits and the log-probabilities at its own ids,
/// equal to `log_softmax` in float64 of the logits computed in this process from the checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gathered_values_of_merged_sequences_of_different_lengths_match_the_model_in_process() {
    let dir = TempDir::new("teacher-gather-merged");
    let ck = dir.path().join("lm");
    scaled_checkpoint(&ck, "lm:layers=1,d=16,heads=2", &[8], VOCAB, 3.0);
    // A 50 ms window: requests arriving together are merged.
    let teacher = TeacherProcess::start(
        &ck,
        &["--max-batch-size", "64", "--max-batch-delay-us", "50000"],
    )
    .await;
    let checkpoint = distill_models::Checkpoint::open(&ck).unwrap();
    let lengths = [3i64, 8, 5];
    let (inputs, gathers): (Vec<Tensor>, Vec<Tensor>) = {
        let _rng = torch_rng();
        lengths
            .iter()
            .map(|&s| {
                (
                    Tensor::randint(VOCAB, [2, s], (Kind::Int64, Device::Cpu)),
                    Tensor::randint(VOCAB, [2, s, 4], (Kind::Int64, Device::Cpu)),
                )
            })
            .unzip()
    };
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    for (i, (x, g)) in inputs.iter().zip(&gathers).enumerate() {
        let mut r = request(i as u64, x);
        r.temperature = T as f32;
        r.top_k = 4;
        r.gather_ids = Some(to_wire(g));
        stream.send(r).await;
    }
    let mut merged = 0;
    for _ in 0..lengths.len() {
        let r = stream.recv_ok().await;
        let i = r.batch_id as usize;
        merged = merged.max(r.timing.as_ref().expect("timing").merged_requests);
        let Some(v1::logits_response::Result::Sparse(sparse)) = &r.result else {
            panic!("expected top-k logits, got {:?}", r.result)
        };
        let values = codec::decode(sparse.values.as_ref().unwrap()).unwrap();
        assert_eq!(values.size(), vec![2, lengths[i], 4]);
        let logits = checkpoint_forward(&checkpoint, &inputs[i]);
        let want = reference(&logits, &gathers[i]);
        let got = gathered(&r);
        assert_eq!(got.size(), vec![2, lengths[i], 4]);
        let d = max_abs_diff(&got, &want);
        assert!(d <= 1e-4, "sequence {i} (length {}): {d}", lengths[i]);
    }
    assert!(merged > 1, "the three requests were never merged");
}
