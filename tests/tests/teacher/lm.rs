//! Sequence models (causal LMs) served by the real teacher-server: `ModelInfo` of a sequence
//! model, per-position logits equal to the model run alone in this process (merged with longer,
//! padded sequences included), top-k per position, per-batch errors for bad token batches, and a
//! TorchScript LM exported from PyTorch equal to PyTorch and to the built-in `lm` architecture.

use distill_models::{ArchSpec, Checkpoint, Network};
use distill_tests::*;
use std::path::Path;
use tch::{Device, Kind, Tensor, nn};

const VOCAB: i64 = 64;
const MAX_LEN: i64 = 16;
const ARCH: &str = "lm:layers=2,d=32,heads=4";

/// Random token ids `i64 [batch, seq]` in `0..VOCAB`.
fn random_ids(batch: i64, seq: i64) -> Tensor {
    let _rng = torch_rng();
    Tensor::randint(VOCAB, [batch, seq], (Kind::Int64, Device::Cpu))
}

fn lm_request(id: u64, ids: &Tensor, mask: Option<&Tensor>, top_k: u32) -> v1::LogitsRequest {
    let mut r = request(id, ids);
    r.attention_mask = mask.map(to_wire);
    r.top_k = top_k;
    r.temperature = 2.0;
    r
}

/// `sha256sum FILE`, as a reference independent of the server's own hashing.
fn sha256sum(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("run sha256sum");
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// A built-in LM checkpoint with weights scaled ×3 (visibly different logits per token) and a
/// tokenizer file beside it.
fn lm_checkpoint(dir: &Path) -> Checkpoint {
    let ck = scaled_checkpoint(dir, ARCH, &[MAX_LEN], VOCAB, 3.0);
    std::fs::write(
        dir.join("tokenizer.json"),
        br#"{"model": "test tokenizer"}"#,
    )
    .unwrap();
    ck
}

/// Logits `[b, s, V]` of `ids` by the checkpoint's network alone, in this process.
fn alone(ck: &Checkpoint, ids: &Tensor) -> Tensor {
    checkpoint_forward(ck, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_lm_reports_a_sequence_model_and_merged_padded_batches_change_no_real_logit() {
    let dir = TempDir::new("teacher-lm");
    let ck_dir = dir.path().join("lm");
    let ck = lm_checkpoint(&ck_dir);
    // A batch is cut only when 4 samples are queued (or after 5 s): the two requests below merge.
    let teacher = TeacherProcess::start(
        &ck_dir,
        &["--max-batch-size", "4", "--max-batch-delay-us", "5000000"],
    )
    .await;
    let info = teacher.info().await;
    assert!(info.sequence_model);
    assert_eq!(info.max_seq_len, MAX_LEN);
    assert_eq!(info.input_shape, vec![MAX_LEN]);
    assert_eq!(info.input_dtype, v1::DType::I64 as i32);
    assert_eq!(info.num_logits, VOCAB);
    assert_eq!(
        info.tokenizer_fingerprint,
        sha256sum(&ck_dir.join("tokenizer.json"))
    );

    // A: one sequence of 5 tokens, no mask. B: three of 12, the middle one padded after 7.
    let a = random_ids(1, 5);
    let b = random_ids(3, 12);
    let b_mask = Tensor::ones([3, 12], (Kind::Uint8, Device::Cpu));
    let _ = b_mask.get(1).narrow(0, 7, 5).fill_(0);
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    stream.send(lm_request(1, &a, None, 0)).await;
    stream.send(lm_request(2, &b, Some(&b_mask), 0)).await;
    let mut got = std::collections::HashMap::new();
    for _ in 0..2 {
        let r = stream.recv_ok().await;
        let timing = r.timing.expect("timing");
        assert_eq!(
            (timing.merged_requests, timing.merged_batch_size),
            (2, 4),
            "the two requests should share one forward pass"
        );
        got.insert(r.batch_id, dense(&r));
    }
    let ya = &got[&1];
    assert_eq!(ya.size(), vec![1, 5, VOCAB]);
    // 1e-3 relative to the logits' scale. Merging changes the shapes libtorch computes on: a
    // sequence alone runs causal attention without a mask (a fused kernel), a merged one runs it
    // with a boolean mask over 12 keys (another kernel, another summation order), and the GEMM
    // blocking differs with the batch. Those move float32 logits by 1e-6 to a few 1e-5 of their
    // scale, depending on the CPU (this machine: 2e-6; CI once: 2.4e-5). A merge or
    // cut that put a wrong row or position here would differ by the logits' whole scale.
    let close = |got: &Tensor, want: &Tensor, what: &str| {
        let d = max_abs_diff(got, want);
        let scale = want.abs().max().double_value(&[]).max(1.0);
        assert!(
            d <= 1e-3 * scale,
            "{what}: max |diff| {d}, logits up to {scale}"
        );
    };
    close(ya, &alone(&ck, &a), "A merged with longer sequences");
    let yb = &got[&2];
    assert_eq!(yb.size(), vec![3, 12, VOCAB]);
    for row in [0, 2] {
        close(
            &yb.get(row),
            &alone(&ck, &b.narrow(0, row, 1)).get(0),
            &format!("B row {row}"),
        );
    }
    // The padded row: its 7 real positions equal the 7 tokens alone; padding carries zeros.
    let real = alone(&ck, &b.narrow(0, 1, 1).narrow(1, 0, 7)).get(0);
    close(&yb.get(1).narrow(0, 0, 7), &real, "B row 1 (padded)");
    assert_eq!(yb.get(1).narrow(0, 7, 5).abs().max().double_value(&[]), 0.0);
    assert!(
        real.abs().max().double_value(&[]) > 0.1,
        "logits are not trivial"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_k_per_position_and_bad_token_batches_get_per_batch_errors() {
    let dir = TempDir::new("teacher-lm-topk");
    let ck_dir = dir.path().join("lm");
    let ck = lm_checkpoint(&ck_dir);
    let teacher = TeacherProcess::start(&ck_dir, &[] as &[&str]).await;
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;

    let x = random_ids(3, 9);
    stream.send(lm_request(1, &x, None, 5)).await;
    let r = stream.recv_ok().await;
    let Some(v1::logits_response::Result::Sparse(s)) = &r.result else {
        panic!("expected sparse logits, got {:?}", r.result);
    };
    let indices = from_wire(s.indices.as_ref().unwrap());
    let values = from_wire(s.values.as_ref().unwrap());
    let lse = from_wire(s.logsumexp.as_ref().unwrap());
    let tail = from_wire(s.tail_logsumexp.as_ref().unwrap());
    assert_eq!(indices.size(), vec![3, 9, 5]);
    assert_eq!(values.size(), vec![3, 9, 5]);
    assert_eq!((lse.size(), tail.size()), (vec![3, 9], vec![3, 9]));
    let full = alone(&ck, &x);
    let (want_v, want_i) = full.topk(5, -1, true, true);
    assert!(indices.equal(&want_i));
    assert!(max_abs_diff(&values, &want_v) <= 1e-5);
    assert!(max_abs_diff(&lse, &full.logsumexp([-1i64].as_slice(), false)) <= 1e-5);
    // The tail at T = 2, in float64 from the full rows.
    let z = full.to_kind(Kind::Double) / 2.0;
    let want_tail = z
        .scatter_value(-1, &want_i, f64::NEG_INFINITY)
        .logsumexp([-1i64].as_slice(), false);
    assert!(max_abs_diff(&tail, &want_tail) <= 1e-4);

    // Bad batches: each gets its own error; the stream stays open.
    let out_of_vocab = random_ids(2, 4);
    let _ = out_of_vocab.get(1).get(2).fill_(VOCAB);
    let too_long = random_ids(1, MAX_LEN + 1);
    let mask = Tensor::ones([2, 3], (Kind::Uint8, Device::Cpu));
    let cases: Vec<(v1::LogitsRequest, &[&str])> = vec![
        (
            lm_request(2, &out_of_vocab, None, 5),
            &["token ids in 0..64", "first: 64 at batch row 1, position 2"],
        ),
        (
            lm_request(3, &too_long, None, 5),
            &["between 1 and 16 tokens", "got 17"],
        ),
        (
            lm_request(4, &random_ids(1, 4), Some(&mask), 5),
            &["attention_mask shape", "[1, 4]", "[2, 3]"],
        ),
    ];
    for (req, needles) in cases {
        let id = req.batch_id;
        stream.send(req).await;
        let r = stream.recv_ok().await;
        assert_eq!(r.batch_id, id);
        let Some(v1::logits_response::Result::Error(e)) = &r.result else {
            panic!("batch {id}: expected an error, got {:?}", r.result);
        };
        assert_eq!(e.code, tonic::Code::InvalidArgument as i32, "{}", e.message);
        for n in needles {
            assert!(
                e.message.contains(n),
                "{:?} should contain {n:?}",
                e.message
            );
        }
    }
    stream.send(lm_request(9, &x, None, 5)).await;
    assert_eq!(stream.recv_ok().await.batch_id, 9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torchscript_lm_matches_pytorch_and_the_builtin_architecture() {
    let fx = fixtures();
    let teacher = TeacherProcess::start(&fx.lm, &[] as &[&str]).await;
    let info = teacher.info().await;
    assert!(info.sequence_model && info.max_seq_len == MAX_LEN);
    assert_eq!(
        info.tokenizer_fingerprint,
        sha256sum(&fx.dir.join("lm_tokenizer.json"))
    );
    let ids = random_ids(2, 10);
    let mask = Tensor::ones([2, 10], (Kind::Int64, Device::Cpu));
    let _ = mask.get(0).narrow(0, 6, 4).fill_(0);
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    stream.send(lm_request(1, &ids, Some(&mask), 0)).await;
    let got = dense(&stream.recv_ok().await);

    let _g = tch::no_grad_guard();
    let mut module = tch::CModule::load(&fx.lm).unwrap();
    module.set_eval();
    let want = module.forward_ts(&[&ids, &mask]).unwrap();
    assert_eq!(got.size(), vec![2, 10, VOCAB]);
    let d = max_abs_diff(&got.get(1), &want.get(1));
    assert!(d <= 1e-4, "full row: {d}");
    let d = max_abs_diff(&got.get(0).narrow(0, 0, 6), &want.get(0).narrow(0, 0, 6));
    assert!(d <= 1e-4, "padded row's real positions: {d}");

    // The built-in `lm` architecture with PyTorch's weights (same names) gives PyTorch's logits.
    let spec = ArchSpec {
        arch: ARCH.parse().unwrap(),
        input_shape: vec![MAX_LEN],
        num_classes: VOCAB,
    };
    let vs = nn::VarStore::new(Device::Cpu);
    let net = {
        let _rng = torch_rng();
        Network::new(&vs.root(), &spec).unwrap()
    };
    let params: std::collections::HashMap<String, Tensor> =
        module.named_parameters().unwrap().into_iter().collect();
    let mut vars = vs.variables();
    assert_eq!(params.len(), vars.len());
    for (name, var) in &mut vars {
        let src = params
            .get(name)
            .unwrap_or_else(|| panic!("{name} not in PyTorch's module"));
        var.copy_(src);
    }
    let ours = net.forward_masked(&ids, Some(&mask), false).unwrap();
    let d = max_abs_diff(&ours.get(1), &want.get(1));
    assert!(d <= 1e-4, "built-in lm vs PyTorch: {d}");
    assert!(
        want.abs().max().double_value(&[]) > 0.5,
        "logits are not trivial"
    );
}
