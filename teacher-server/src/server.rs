//! Wires the pieces together and serves until shutdown.

use crate::batcher::Batcher;
use crate::config::{Config, Precision};
use crate::engine::{Engine, EngineSettings};
use crate::error::Error;
use crate::model::{self, TeacherModel};
use crate::security::{self, Auth};
use crate::service::{ServiceSettings, TeacherService};
use distill_models::CpuInfo;
use distill_proto::v1::teacher_server::TeacherServer;
use std::future::Future;
use std::time::Duration;
use tch::Device;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::TcpIncoming;

/// Interval of HTTP/2 keepalive pings to idle clients.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is closed.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads the model, then serves `distill.v1.Teacher`, `grpc.health.v1.Health` and gRPC
/// reflection (`grpc.reflection.v1` and `v1alpha`) on `listener` until `shutdown` completes. Then
/// it stops accepting connections, lets every stream answer the batches it has read (bounded by
/// `config.shutdown_grace`), stops the engine thread once it has left its current forward pass,
/// and returns. It never returns while the engine thread is inside libtorch, so the process may
/// exit as soon as it returns.
///
/// # Errors
/// [`Error::Load`] or [`Error::Start`] if the model cannot be loaded, [`Error::Config`] for an
/// unusable device, [`Error::Transport`] if serving fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_with(config, listener, shutdown, |model| model).await
}

/// [`run`], serving `wrap(model)` instead of the loaded model: the hook for test binaries that
/// inject faults (e.g. a model that stops answering). `wrap` runs on the engine thread.
///
/// # Errors
/// As [`run`].
pub(crate) async fn run_with<W>(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    wrap: W,
) -> Result<(), Error>
where
    W: FnOnce(Box<dyn TeacherModel>) -> Box<dyn TeacherModel> + Send + 'static,
{
    let addr = listener.local_addr().map_err(|source| Error::Io {
        context: "reading the listener's address".into(),
        source,
    })?;
    let device = config
        .device
        .resolve()
        .map_err(|e| Error::Config(format!("--device: {e}")))?;
    if let Some(warning) = precision_warning(device, config.precision, &CpuInfo::read()) {
        tracing::warn!("{warning}");
    }
    let (source, spec, precision) = (config.source.clone(), config.spec.clone(), config.precision);
    let engine = Engine::start(
        move || model::load(&source, &spec, device, precision).map(wrap),
        EngineSettings {
            threads: config.threads,
        },
    )
    .await?;
    let (engine_tx, info, engine_thread) = engine.into_parts();
    if info.input_shape != config.spec.input_shape || info.num_logits != config.spec.num_logits {
        return Err(Error::Config(format!(
            "the model takes {:?} inputs and gives {} logits; the configuration says {:?} and {}",
            info.input_shape, info.num_logits, config.spec.input_shape, config.spec.num_logits
        )));
    }
    let (drain_tx, drain_rx) = watch::channel(false);
    let drain_tx = std::sync::Arc::new(drain_tx);
    let (batcher, batcher_task) =
        Batcher::spawn(config.batching.clone(), engine_tx, drain_rx.clone());
    let service = TeacherService::new(
        info.clone(),
        ServiceSettings {
            max_batch_size: config.batching.max_batch_size,
            max_message_bytes: config.max_message_bytes,
            stream_window: config.stream_window,
        },
        batcher,
        drain_rx.clone(),
    )?;
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TeacherServer<TeacherService>>().await;
    // Both versions: grpcurl and current clients speak v1, Python's grpcio-reflection, older
    // grpcurl, Postman and Evans speak v1alpha.
    let reflection_error = |e| Error::Config(format!("building the reflection service: {e}"));
    let reflection_v1 = reflection_builder().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(reflection_error)?;
    let mut teacher = TeacherServer::new(service)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);
    for encoding in security::ACCEPTED_COMPRESSIONS {
        teacher = teacher.accept_compressed(encoding);
    }
    for &encoding in &config.send_compression {
        teacher = teacher.send_compressed(encoding);
    }

    tracing::info!(
        model = %info.name,
        version = %info.version,
        fingerprint = %info.fingerprint,
        device = %info.device,
        precision = %info.precision,
        input_shape = ?info.input_shape,
        input_dtype = ?info.input_dtype,
        num_logits = info.num_logits,
        max_batch_size = config.batching.max_batch_size,
        max_batch_delay_us = config.batching.max_batch_delay.as_micros() as u64,
        max_message_bytes = config.max_message_bytes,
        %addr,
        "teacher-server serving"
    );

    let signal = {
        let health = health.clone();
        let drain_tx = drain_tx.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: answering in-flight batches");
            health
                .set_not_serving::<TeacherServer<TeacherService>>()
                .await;
            drain_tx.send_replace(true);
        }
    };
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // Tokens guard the teacher and reflection; health stays open to probes.
    let auth = Auth::new(&config.auth_tokens);
    let serve = server_builder(&config)?
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(InterceptedService::new(reflection_v1, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, auth.clone()))
        .add_service(InterceptedService::new(teacher, auth))
        .serve_with_incoming_shutdown(incoming, signal);

    let grace = config.shutdown_grace;
    let mut drained = drain_rx.clone();
    let deadline = async move {
        let _ = drained.wait_for(|d| *d).await;
        tokio::time::sleep(grace).await;
    };
    let served = tokio::select! {
        served = serve => served.map_err(Error::from),
        () = deadline => {
            tracing::warn!(grace_s = grace.as_secs(), "shutdown grace period over: closing open streams");
            Ok(())
        }
    };
    // Whatever is still queued is dropped (every stream that finished was answered in full), and
    // the engine thread is joined: it is inside at most one forward pass, and libtorch's exit-time
    // teardown must not run under it.
    batcher_task.abort();
    let _ = batcher_task.await;
    tracing::debug!("waiting for the engine thread to finish its forward pass");
    engine_thread.stop_and_join().await;
    tracing::info!("teacher-server stopped");
    served
}

/// The start-up warning for a reduced `precision` on a CPU `device` without native support for
/// it (see [`CpuInfo::missing_for`]), naming the missing flags; `None` on a GPU, for f32, or
/// where the CPU has the support.
fn precision_warning(device: Device, precision: Precision, cpu: &CpuInfo) -> Option<String> {
    if device != Device::Cpu {
        return None;
    }
    let missing = cpu.missing_for(precision.kind())?;
    let model = if cpu.model_name.is_empty() {
        "this CPU".to_string()
    } else {
        format!("this CPU ({})", cpu.model_name)
    };
    Some(format!(
        "--precision {precision}: {model} has none of {} (native {precision} matrix products), so the forward pass will likely be slower than with --precision f32",
        missing.join(", ")
    ))
}

/// The transport's builder: with `--tls-cert`, serving TLS (and mutual TLS with
/// `--tls-client-ca`).
fn server_builder(config: &Config) -> Result<tonic::transport::Server, Error> {
    let builder = tonic::transport::Server::builder();
    match &config.tls {
        Some(tls) => Ok(builder.tls_config(tls.server_config())?),
        None => Ok(builder),
    }
}

/// The reflection services' builder: this crate's contract and `grpc.health.v1`.
fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(distill_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reduced_precision_on_a_cpu_without_support_warns_naming_the_flags() {
        let avx2 = CpuInfo::parse("model name : AMD EPYC\nflags : avx avx2 fma\n");
        let w = precision_warning(Device::Cpu, Precision::Bf16, &avx2).unwrap();
        assert!(
            w.contains("--precision bf16")
                && w.contains("AMD EPYC")
                && w.contains("avx512_bf16, amx_bf16")
                && w.contains("slower"),
            "{w}"
        );
        let w = precision_warning(Device::Cpu, Precision::F16, &avx2).unwrap();
        assert!(w.contains("avx512_fp16, amx_fp16"), "{w}");
        assert_eq!(precision_warning(Device::Cpu, Precision::F32, &avx2), None);
        assert_eq!(
            precision_warning(Device::Cuda(0), Precision::Bf16, &avx2),
            None
        );
        let amx = CpuInfo::parse("flags : avx2 amx_bf16\n");
        assert_eq!(precision_warning(Device::Cpu, Precision::Bf16, &amx), None);
        let unknown = precision_warning(Device::Cpu, Precision::Bf16, &CpuInfo::default()).unwrap();
        assert!(unknown.contains("this CPU has none of"), "{unknown}");
    }
}
