//! Compression of the channel: clients that compress their requests with gzip, deflate or zstd (as a
//! Python grpcio client with channel compression does) get answers to `GetModelInfo` and
//! `StreamLogits`, equal to uncompressed ones; the server answers compressed in the encodings of
//! `--send-compression` (default zstd) when the client accepts them; and a student run with
//! `--compression zstd` trains.

use distill_tests::trainer::{DistillArgs, read_json, student, write_synthetic_idx};
use distill_tests::*;
use tonic::codec::CompressionEncoding;

/// The encoding a response came in (`grpc-encoding`; `None`: uncompressed).
fn encoding(meta: &tonic::metadata::MetadataMap) -> Option<String> {
    meta.get("grpc-encoding")
        .map(|v| v.to_str().unwrap_or("?").to_string())
}

/// `GetModelInfo` and one batch through a client that compresses with `enc` and accepts it;
/// returns the logits and the encodings of the two answers.
async fn ask(
    teacher: &TeacherProcess,
    enc: CompressionEncoding,
    inputs: &tch::Tensor,
) -> (tch::Tensor, Option<String>, Option<String>) {
    let mut c = teacher
        .client()
        .await
        .send_compressed(enc)
        .accept_compressed(enc);
    let info = c
        .get_model_info(v1::GetModelInfoRequest {})
        .await
        .unwrap_or_else(|s| panic!("GetModelInfo with {enc:?}: {s}"));
    assert_eq!(info.get_ref().num_logits, 10);
    let info_encoding = encoding(info.metadata());
    let resp = c
        .stream_logits(tokio_stream::iter(vec![request(1, inputs)]))
        .await
        .unwrap_or_else(|s| panic!("StreamLogits with {enc:?}: {s}"));
    let stream_encoding = encoding(resp.metadata());
    let mut stream = resp.into_inner();
    let answer = stream
        .message()
        .await
        .unwrap_or_else(|s| panic!("{enc:?}: {s}"))
        .expect("one response");
    (dense(&answer), info_encoding, stream_encoding)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_requests_are_answered_in_every_encoding() {
    let tmp = TempDir::new("compression");
    let model = tmp.path().join("teacher");
    let ck = fresh_checkpoint(&model, "mlp:16", &[1, 28, 28], 10);
    let inputs = random_inputs(4, &[1, 28, 28]);
    let expected = checkpoint_forward(&ck, &inputs);

    let default = TeacherProcess::start(&model, &[] as &[&str]).await;
    for (enc, answered_in) in [
        (CompressionEncoding::Gzip, None),
        (CompressionEncoding::Deflate, None),
        (CompressionEncoding::Zstd, Some("zstd")),
    ] {
        let (logits, info_enc, stream_enc) = ask(&default, enc, &inputs).await;
        assert!(max_abs_diff(&logits, &expected) < 1e-5, "{enc:?}");
        assert_eq!(
            info_enc.as_deref(),
            answered_in,
            "GetModelInfo answer, {enc:?}"
        );
        assert_eq!(
            stream_enc.as_deref(),
            answered_in,
            "StreamLogits answer, {enc:?}"
        );
    }

    let all = TeacherProcess::start(&model, &["--send-compression", "gzip,deflate,zstd"]).await;
    for (enc, name) in [
        (CompressionEncoding::Gzip, "gzip"),
        (CompressionEncoding::Deflate, "deflate"),
        (CompressionEncoding::Zstd, "zstd"),
    ] {
        let (logits, info_enc, stream_enc) = ask(&all, enc, &inputs).await;
        assert!(max_abs_diff(&logits, &expected) < 1e-5, "{enc:?}");
        assert_eq!(info_enc.as_deref(), Some(name));
        assert_eq!(stream_enc.as_deref(), Some(name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_distills_with_zstd_compression() {
    let tmp = TempDir::new("compression-student");
    let data = tmp.path().join("data");
    write_synthetic_idx(&data, 100, 20, 10, 3);
    let model = tmp.path().join("teacher");
    fresh_checkpoint(&model, "mlp:8", &[1, 28, 28], 10);
    let teacher = TeacherProcess::start(&model, &[] as &[&str]).await;
    for compression in ["zstd", "gzip"] {
        let out = tmp.path().join(compression);
        let args = DistillArgs::new(&data, &out)
            .teacher(teacher.url())
            .flag("--compression", compression)
            .arch("mlp:8")
            .epochs(1)
            .batch_size(50)
            .no_epoch_eval()
            .build();
        student(&args)
            .await
            .expect_ok(&format!("distill --compression {compression}"));
        let report = read_json(&out.join("report.json"));
        assert_eq!(report["replicas"][0]["batches_answered"], 2, "{report}");
    }
}
