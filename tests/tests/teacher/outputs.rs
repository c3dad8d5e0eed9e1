//! Teachers with several outputs (hint distillation reads an intermediate one beside the
//! logits): a TorchScript module returning a tuple or a dict is inspected at load, its logits
//! chosen with `--logits-output`, and its other outputs served by name beside the logits;
//! outputs a server cannot serve are refused at load, never per batch.
//! The built-in CNN serves its penultimate features and last conv block.

use distill_tests::*;
use tch::{Kind, Tensor};

/// `features · Wᵀ + b` with the head's weights read from the TorchScript file.
fn head_of(path: &std::path::Path, features: &Tensor) -> Tensor {
    let m = tch::CModule::load(path).expect("load TorchScript");
    let params: std::collections::HashMap<String, Tensor> =
        m.named_parameters().unwrap().into_iter().collect();
    features.matmul(&params["head.weight"].tr()) + &params["head.bias"]
}

/// The response's named output `name`, decoded.
fn output(resp: &v1::LogitsResponse, name: &str) -> Tensor {
    let t = resp
        .outputs
        .iter()
        .find(|o| o.name == name)
        .unwrap_or_else(|| panic!("no output {name} in {:?}", resp.outputs));
    from_wire(t.tensor.as_ref().expect("a tensor"))
}

fn outputs_of(info: &v1::ModelInfo) -> Vec<(String, Vec<i64>, i32)> {
    info.outputs
        .iter()
        .map(|o| (o.name.clone(), o.shape.clone(), o.dtype))
        .collect()
}

const F32: i32 = v1::DType::F32 as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dict_teacher_needs_logits_output_and_serves_its_features() {
    let fx = fixtures();
    // Several outputs and no choice: refused at start, listing them with their shapes.
    let (code, stderr) = serve_to_exit(&fx.multi_dict, &[]).await;
    let e = error_line(code, &stderr);
    assert!(
        e.contains("--logits-output") && e.contains("logits [10]") && e.contains("features [64]"),
        "{e}"
    );
    let (code, stderr) = serve_to_exit(&fx.multi_dict, &["--logits-output", "probs"]).await;
    let e = error_line(code, &stderr);
    assert!(
        e.contains("--logits-output probs") && e.contains("logits [10], features [64]"),
        "{e}"
    );

    let teacher = TeacherProcess::start(&fx.multi_dict, &["--logits-output", "logits"]).await;
    let info = teacher.info().await;
    assert_eq!(
        outputs_of(&info),
        [
            ("logits".to_string(), vec![10], F32),
            ("features".to_string(), vec![64], F32)
        ]
    );
    assert_eq!(info.logits_output, "logits");
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    let x = random_inputs(5, &[1, 28, 28]);
    let mut r = request(1, &x);
    r.outputs = vec!["features".into()];
    stream.send(r.clone()).await;
    let resp = stream.recv_ok().await;
    let (logits, features) = (dense(&resp), output(&resp, "features"));
    assert_eq!(features.size(), vec![5, 64]);
    assert!(features.min().double_value(&[]) >= 0.0, "after the ReLU");
    let diff = max_abs_diff(&logits, &head_of(&fx.multi_dict, &features));
    assert!(diff < 1e-5, "logits = head(features): max |diff| {diff}");

    // In the requested dtype, beside top-k logits.
    r.batch_id = 2;
    r.output_dtype = v1::DType::Bf16 as i32;
    r.top_k = 3;
    stream.send(r.clone()).await;
    let resp = stream.recv_ok().await;
    assert!(matches!(
        resp.result,
        Some(v1::logits_response::Result::Sparse(_))
    ));
    let bf = &resp.outputs[0].tensor.as_ref().unwrap();
    assert_eq!(bf.dtype, v1::DType::Bf16 as i32);
    let diff = max_abs_diff(&output(&resp, "features"), &features);
    assert!(
        diff > 0.0 && diff <= 0.01 * features.abs().max().double_value(&[]),
        "bf16 rounding: {diff}"
    );

    // An unknown name fails that batch only, naming the outputs that exist.
    for (id, bad) in [(3u64, "feature"), (4, "logits")] {
        let mut r = request(id, &x);
        r.outputs = vec![bad.into()];
        stream.send(r).await;
        let resp = stream.recv_ok().await;
        let Some(v1::logits_response::Result::Error(e)) = resp.result else {
            panic!("expected an error for {bad}, got {resp:?}");
        };
        assert_eq!(e.code, tonic::Code::InvalidArgument as i32);
        assert!(
            e.message.contains(&format!("unknown output \"{bad}\""))
                && e.message.contains("(features)"),
            "{}",
            e.message
        );
        assert!(resp.outputs.is_empty());
    }
    stream.send(request(5, &x)).await;
    let resp = stream.recv_ok().await;
    assert!(resp.outputs.is_empty(), "none asked for, none sent");
    assert_eq!(max_abs_diff(&dense(&resp), &logits), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tuple_teacher_names_its_outputs_by_position() {
    let fx = fixtures();
    let (code, stderr) = serve_to_exit(&fx.multi_tuple, &[]).await;
    let e = error_line(code, &stderr);
    assert!(e.contains("0 [10], 1 [64]"), "{e}");
    let teacher = TeacherProcess::start(&fx.multi_tuple, &["--logits-output", "0"]).await;
    let info = teacher.info().await;
    assert_eq!(
        outputs_of(&info),
        [
            ("0".to_string(), vec![10], F32),
            ("1".to_string(), vec![64], F32)
        ]
    );
    // Requests of different outputs merge into one forward pass and each gets its own.
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    let (a, b) = (
        random_inputs(3, &[1, 28, 28]),
        random_inputs(4, &[1, 28, 28]),
    );
    let mut ra = request(1, &a);
    ra.outputs = vec!["1".into()];
    stream.send(ra).await;
    stream.send(request(2, &b)).await;
    for _ in 0..2 {
        let resp = stream.recv_ok().await;
        match resp.batch_id {
            1 => {
                let f = output(&resp, "1");
                assert_eq!(f.size(), vec![3, 64]);
                let diff = max_abs_diff(&dense(&resp), &head_of(&fx.multi_tuple, &f));
                assert!(diff < 1e-5, "{diff}");
            }
            _ => {
                assert!(resp.outputs.is_empty());
                assert_eq!(dense(&resp).size(), vec![4, 10]);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_that_cannot_be_served_are_refused_at_load() {
    let fx = fixtures();
    let (code, stderr) = serve_to_exit(&fx.multi_batchless, &["--logits-output", "0"]).await;
    let e = error_line(code, &stderr);
    assert!(
        e.contains("output 1")
            && e.contains("[64]")
            && e.contains("first dimension must be the batch"),
        "{e}"
    );
    let (code, stderr) = serve_to_exit(&fx.multi_int, &["--logits-output", "0"]).await;
    let e = error_line(code, &stderr);
    assert!(
        e.contains("an int at output 1") && e.contains("Dict[str, Tensor]"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builtin_cnn_serves_its_features_and_last_conv_block() {
    let dir = TempDir::new("teacher-outputs-cnn");
    let ck = fresh_checkpoint(dir.path(), "cnn", &[1, 28, 28], 10);
    let teacher = TeacherProcess::start(dir.path(), &[] as &[&str]).await;
    let info = teacher.info().await;
    assert_eq!(
        outputs_of(&info),
        [
            ("conv".to_string(), vec![64, 12, 12], F32),
            ("features".to_string(), vec![128], F32),
            ("logits".to_string(), vec![10], F32),
        ]
    );
    assert_eq!(info.logits_output, "logits");
    // The default message limit is recomputed to fit 256 samples of every output: the conv
    // block alone is 256 · 9216 · 4 bytes = 9.4 MB.
    assert!(
        info.max_message_bytes >= 256 * (64 * 12 * 12 + 128 + 10) * 4,
        "{}",
        info.max_message_bytes
    );
    let mut client = teacher.client().await;
    let mut stream = LogitsStream::open(&mut client).await;
    let x = random_inputs(256, &[1, 28, 28]);
    let mut r = request(1, &x);
    r.outputs = vec!["features".into(), "conv".into()];
    stream.send(r).await;
    let resp = stream.recv_ok().await;
    assert_eq!(
        resp.outputs
            .iter()
            .map(|o| o.name.as_str())
            .collect::<Vec<_>>(),
        ["features", "conv"]
    );
    let conv = output(&resp, "conv");
    assert_eq!(conv.size(), vec![256, 64, 12, 12]);
    let features = output(&resp, "features");
    let want = checkpoint_forward(&ck, &x);
    assert!(max_abs_diff(&dense(&resp), &want) <= 1e-5);
    let (vs, _net) = {
        let _rng = torch_rng();
        ck.load_network(tch::Device::Cpu).unwrap()
    };
    let v = vs.variables();
    let head = features.matmul(&v["f2.weight"].tr()) + &v["f2.bias"];
    assert!(max_abs_diff(&head, &want) <= 1e-4);
    assert_eq!(conv.kind(), Kind::Float);
}
