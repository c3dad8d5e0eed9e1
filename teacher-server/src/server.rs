//! Wires the pieces together and serves until shutdown.

use crate::batcher::Batcher;
use crate::config::Config;
use crate::engine::{Engine, EngineSettings};
use crate::error::Error;
use crate::model;
use crate::service::{ServiceSettings, TeacherService};
use distill_proto::v1::teacher_server::TeacherServer;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

/// Interval of HTTP/2 keepalive pings to idle clients.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Loads the model, then serves `distill.v1.Teacher`, `grpc.health.v1.Health` and gRPC
/// reflection on `listener` until `shutdown` completes. Then it stops accepting connections, lets
/// every stream answer the batches it has read (bounded by `config.shutdown_grace`), and returns.
///
/// # Errors
/// [`Error::Load`] if the model cannot be loaded, [`Error::Config`] for an unusable device,
/// [`Error::Transport`] if serving fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let addr = listener.local_addr().map_err(|source| Error::Io {
        context: "reading the listener's address".into(),
        source,
    })?;
    let device = config
        .device
        .resolve()
        .map_err(|e| Error::Config(format!("--device: {e}")))?;
    let (source, spec) = (config.source.clone(), config.spec.clone());
    let engine = Engine::start(
        move || model::load(&source, &spec, device),
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
            fault_stall_after: config.fault_stall_after,
        },
        batcher,
        drain_rx.clone(),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<TeacherServer<TeacherService>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(distill_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Config(format!("building the reflection service: {e}")))?;
    let teacher = TeacherServer::new(service)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(config.max_message_bytes);

    tracing::info!(
        model = %info.name,
        version = %info.version,
        fingerprint = %info.fingerprint,
        device = %info.device,
        input_shape = ?info.input_shape,
        input_dtype = info.input_dtype.as_str_name(),
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
    let serve = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(teacher)
        .serve_with_incoming_shutdown(incoming, signal);

    let grace = config.shutdown_grace;
    let mut drained = drain_rx.clone();
    let deadline = async move {
        let _ = drained.wait_for(|d| *d).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        served = serve => served?,
        _ = deadline => {
            tracing::warn!(grace_s = grace.as_secs(), "shutdown grace period over: closing open streams");
            return Ok(());
        }
    }
    // Every stream is done and the service is dropped: the batcher flushes and the engine exits.
    let _ = tokio::time::timeout(grace, async {
        let _ = batcher_task.await;
        engine_thread.join().await;
    })
    .await;
    tracing::info!("teacher-server stopped");
    Ok(())
}
