//! `teacher-server --precision bf16|f16`: the weights and inputs are converted, `ModelInfo`
//! reports the precision with the fingerprint of the source weights, and the logits stay close to
//! the f32 server's.
//!
//! Tolerances. A reduced-precision forward pass rounds the weights, each layer's input and each
//! layer's output to the kind's unit roundoff u (bf16: 8 significant bits, u = 2^-8; f16: 11
//! bits, u = 2^-11); products are accumulated in f32. Each layer thus adds at most about 3u of
//! relative error, and the test networks have 4 weight layers (cnn: 2 convolutions, 2 linear), so
//! |logit(kind) - logit(f32)| <= 12 u · max(1, max |logit(f32)|). The bf16 logits must also
//! differ from the f32 ones (a server that ignored the flag would return them bit for bit), and
//! match this process's own forward pass in the same kind within 2 ulps of the logit scale
//! (libtorch may pick other kernels for other batch sizes and thread counts).

use distill_tests::*;
use tch::{Device, Kind, Tensor};

/// Input shape of the tiny cnn (two 3×3 convolutions and a 2×2 pool: 64·2·2 = 256 features).
const SHAPE: [i64; 3] = [1, 8, 8];

/// Logits `f32 [batch, classes]` of the checkpoint's network run in `kind` in this process.
fn forward_in(ck: &distill_models::Checkpoint, x: &Tensor, kind: Kind) -> Tensor {
    let _g = tch::no_grad_guard();
    let (mut vs, net) = {
        let _rng = torch_rng();
        ck.load_network(Device::Cpu).expect("load checkpoint")
    };
    vs.set_kind(kind);
    net.forward(&x.to_kind(kind), false)
        .expect("forward")
        .to_kind(Kind::Float)
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().max().to_kind(Kind::Double).double_value(&[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_teacher_in_bf16_and_f16_reports_it_and_stays_close_to_f32() {
    let dir = TempDir::new("teacher-precision-cnn");
    let ck = fresh_checkpoint(dir.path(), "cnn", &SHAPE, 10);
    let flags = |p: &'static str| ["--max-batch-size", "16", "--precision", p];
    let f32_server = TeacherProcess::start(dir.path(), &flags("f32")).await;
    let f32_info = f32_server.info().await;
    assert_eq!(f32_info.precision, v1::DType::F32 as i32);
    assert_eq!(f32_info.fingerprint, ck.meta.fingerprint);
    // The warning (if any) comes before this line on stderr.
    f32_server
        .logs
        .wait_for("precision=f32", STARTUP_TIMEOUT)
        .await;
    let x = random_inputs(16, &SHAPE);
    let (want, _) = f32_server.logits(&x).await;
    drop(f32_server);
    let scale = max_abs(&want).max(1.0);

    for (name, dtype, kind, unit_roundoff) in [
        ("bf16", v1::DType::Bf16, Kind::BFloat16, 2f64.powi(-8)),
        ("f16", v1::DType::F16, Kind::Half, 2f64.powi(-11)),
    ] {
        let server = TeacherProcess::start(dir.path(), &flags(name)).await;
        let info = server.info().await;
        assert_eq!(info.precision, dtype as i32, "{name}");
        assert_eq!(
            info.fingerprint, ck.meta.fingerprint,
            "{name}: the fingerprint is that of the source weights"
        );
        server
            .logs
            .wait_for(&format!("precision={name}"), STARTUP_TIMEOUT)
            .await;
        let (got, _) = server.logits(&x).await;
        assert_eq!(got.kind(), Kind::Float, "{name}: F32 on the wire as asked");
        let diff = max_abs_diff(&got, &want);
        let bound = 12.0 * unit_roundoff * scale;
        assert!(
            diff <= bound,
            "{name}: max |logit - f32 logit| = {diff}, bound {bound}"
        );
        assert!(
            diff > 0.0,
            "{name}: logits equal the f32 server's bit for bit: not run in {name}"
        );
        let local = forward_in(&ck, &x, kind);
        let ulp2 = 2.0 * 2.0 * unit_roundoff * scale;
        let d = max_abs_diff(&got, &local);
        assert!(
            d <= ulp2,
            "{name}: max |server - in-process {name}| = {d}, bound {ulp2}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduced_precision_on_a_cpu_without_native_support_warns_at_start() {
    let dir = TempDir::new("teacher-precision-warn");
    fresh_checkpoint(dir.path(), "mlp:8", &[4], 3);
    let server = TeacherProcess::start(dir.path(), &["--precision", "bf16"]).await;
    // The warning comes before the serving line on stderr.
    server
        .logs
        .wait_for("teacher-server serving", STARTUP_TIMEOUT)
        .await;
    let cpu = distill_models::CpuInfo::read();
    let warned = server
        .logs
        .contains("will likely be slower than with --precision f32");
    assert_eq!(
        warned,
        !cpu.native_bf16(),
        "warning iff this CPU lacks avx512_bf16/amx_bf16 (flags: {:?}); logs:\n{}",
        cpu.flags,
        server.logs.text()
    );
    if warned {
        assert!(server.logs.contains("avx512_bf16, amx_bf16"));
    }
    let f32_server = TeacherProcess::start(dir.path(), &[] as &[&str]).await;
    f32_server
        .logs
        .wait_for("teacher-server serving", STARTUP_TIMEOUT)
        .await;
    assert!(!f32_server.logs.contains("will likely be slower"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torchscript_teacher_in_bf16() {
    let fx = fixtures();
    let x = random_inputs(8, &[1, 28, 28]);
    let want = torchscript_forward(&fx.teacher, &x);
    let f32_fp = TeacherProcess::start(&fx.teacher, &[] as &[&str])
        .await
        .info()
        .await
        .fingerprint;
    let server = TeacherProcess::start(&fx.teacher, &["--precision", "bf16"]).await;
    let info = server.info().await;
    assert_eq!(info.precision, v1::DType::Bf16 as i32);
    assert_eq!(
        info.fingerprint, f32_fp,
        "fingerprint of the source weights"
    );
    let (got, _) = server.logits(&x).await;
    let diff = max_abs_diff(&got, &want);
    let bound = 12.0 * 2f64.powi(-8) * max_abs(&want).max(1.0);
    assert!(
        diff <= bound && diff > 0.0,
        "max |diff| = {diff}, bound {bound}"
    );
}
