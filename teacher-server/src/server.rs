//! Wires the pieces together and serves until shutdown.

use crate::batcher::Batcher;
use crate::config::Config;
use crate::engine::{Engine, EngineSettings, EngineThread, StartError};
use crate::error::Error;
use crate::incoming;
use crate::metrics::{Phase, ServerMetrics};
use crate::model::{self, ModelDescription, Precision, TeacherModel};
use crate::security::{self, Auth, TlsSettings};
use crate::service::{ServiceSettings, ServingModel, TeacherService};
use distill_models::CpuInfo;
use distill_proto::v1::teacher_server::TeacherServer;
use distill_telemetry::{MetricsServer, Readiness};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tch::Device;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::server::{Router, TcpIncoming};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;

/// Interval of HTTP/2 keepalive pings to idle clients.
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a keepalive ping may go unanswered before the connection is closed.
pub(crate) const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `distill.v1.Teacher`, `grpc.health.v1.Health` and gRPC reflection (`grpc.reflection.v1`
/// and `v1alpha`) on `listener` at once, while the model loads; the Teacher calls get
/// `UNAVAILABLE` with a retry hint and health reports `NOT_SERVING` until the model is loaded and
/// a warm-up forward pass has run, then `SERVING`. With `config.metrics_listen`, Prometheus
/// metrics and `/readyz` are served there too (see [`distill_telemetry`]).
///
/// On `shutdown` health turns `NOT_SERVING`, the server stops accepting connections, lets every
/// stream answer the batches it has read (bounded by `config.shutdown_grace`), stops the engine
/// thread once it has left its current forward pass, and returns. It never returns while the
/// engine thread is inside libtorch (a shutdown during the load waits for the load to end), so
/// the process may exit as soon as it returns.
///
/// # Errors
/// [`Error::Load`] or [`Error::Start`] if the model cannot be loaded, [`Error::Config`] for an
/// unusable device, [`Error::Io`] if the metrics address cannot be bound, [`Error::Transport`]
/// if serving fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run_with(config, listener, shutdown, |model| model).await
}

/// [`run`], serving `wrap(model)` instead of the loaded model: the hook for test binaries that
/// inject faults (e.g. a model that stops answering, or loads slowly). `wrap` runs on the engine
/// thread, after the model's own warm-up pass and before the server reports ready.
///
/// In order: the metrics endpoint (if any); the gRPC server ([`Front`]), answering `UNAVAILABLE`
/// while the engine thread loads the model; the batcher, after which the service goes live and
/// health turns `SERVING`; on shutdown, the drain ([`finish`]).
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
    let metrics = ServerMetrics::new(config.batching.max_batch_size)
        .map_err(|e| Error::Config(format!("registering the metrics: {e}")))?;
    let phase = SharedPhase::new(metrics.clone());
    let _metrics_server = start_metrics_endpoint(config.metrics_listen, &metrics, &phase).await?;
    let front = Front::start(&config, listener, shutdown, &phase).await?;
    tracing::info!(%addr, model = ?config.source, "loading the model (not serving until it is loaded and warmed up)");

    let engine = match start_engine(&config, device, &metrics, wrap).await {
        Ok(engine) => engine,
        Err(e) => {
            front.abandon().await;
            return Err(e.into());
        }
    };
    let (engine_tx, info, engine_thread) = engine.into_parts();
    let settings = service_settings(&config, &info);
    let mut batcher_task = None;
    let ready = check_model(&config, &info).and_then(|()| {
        let (batcher, task) = Batcher::spawn(
            config.batching.clone(),
            engine_tx,
            front.draining.clone(),
            Some(metrics.queue_depth.clone()),
        );
        batcher_task = Some(task);
        ServingModel::new(info.clone(), settings.clone(), batcher)
    });
    let ready = match ready {
        Ok(ready) => ready,
        Err(e) => {
            front.abandon().await;
            if let Some(task) = batcher_task {
                task.abort();
            }
            engine_thread.stop_and_join().await;
            return Err(e);
        }
    };
    front.go_live(ready, &info).await;
    log_serving(&config, &info, &settings, addr);
    finish(front, batcher_task, engine_thread, config.shutdown_grace).await
}

/// The server's phase, shared by `/readyz` and the `teacher_model_state` metric.
#[derive(Clone)]
struct SharedPhase {
    phase: Arc<Mutex<Phase>>,
    metrics: ServerMetrics,
}

impl SharedPhase {
    /// Starts in [`Phase::Loading`].
    fn new(metrics: ServerMetrics) -> SharedPhase {
        SharedPhase {
            phase: Arc::new(Mutex::new(Phase::Loading)),
            metrics,
        }
    }

    /// Moves to `p`, in `/readyz` and in the metrics.
    fn set(&self, p: Phase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = p;
        self.metrics.set_phase(p);
    }

    /// `/readyz`'s answer: ready while serving, else why not.
    fn readiness(&self) -> Readiness {
        let phase = self.phase.clone();
        Arc::new(
            move || match *phase.lock().unwrap_or_else(|e| e.into_inner()) {
                Phase::Serving => Ok(()),
                Phase::Loading => Err("loading the model".into()),
                Phase::Draining => Err("draining (shutting down)".into()),
            },
        )
    }
}

/// Starts the metrics and readiness endpoint on `at` (`--metrics-listen`), if given, and prints
/// `metrics on http://HOST:PORT` on stdout.
///
/// # Errors
/// [`Error::Io`] if the address cannot be bound.
async fn start_metrics_endpoint(
    at: Option<SocketAddr>,
    metrics: &ServerMetrics,
    phase: &SharedPhase,
) -> Result<Option<MetricsServer>, Error> {
    let Some(at) = at else {
        return Ok(None);
    };
    let server = MetricsServer::start(at, metrics.registry.clone(), phase.readiness())
        .await
        .map_err(|source| Error::Io {
            context: "starting the metrics endpoint".into(),
            source,
        })?;
    crate::announce_line(&format!("metrics on http://{}", server.addr()));
    Ok(Some(server))
}

/// The gRPC services on one transport: health (open to probes), reflection and the teacher
/// (behind the bearer-token check), with keepalive and the compressions of `config` (TLS is the
/// connections', see [`serve`]).
///
/// # Errors
/// [`Error::Config`] if the reflection service cannot be built.
fn router(
    config: &Config,
    service: TeacherService,
    health_service: HealthServer<impl Health>,
) -> Result<Router, Error> {
    // Both versions: grpcurl and current clients speak v1, Python's grpcio-reflection, older
    // grpcurl, Postman and Evans speak v1alpha.
    let reflection_error = |e| Error::Config(format!("building the reflection service: {e}"));
    let reflection_v1 = reflection_builder().build_v1().map_err(reflection_error)?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(reflection_error)?;
    // Requests are bounded here; responses per request, against ModelInfo.max_message_bytes
    // (validate), which the model's named outputs may raise once it is loaded.
    let mut teacher = TeacherServer::new(service)
        .max_decoding_message_size(config.max_message_bytes)
        .max_encoding_message_size(if config.max_message_bytes_set {
            config.max_message_bytes
        } else {
            usize::MAX
        });
    for encoding in security::ACCEPTED_COMPRESSIONS {
        teacher = teacher.accept_compressed(encoding);
    }
    for &encoding in &config.send_compression {
        teacher = teacher.send_compressed(encoding);
    }
    // Tokens guard the teacher and reflection; health stays open to probes.
    let auth = Auth::new(&config.auth_tokens);
    Ok(tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(health_service)
        .add_service(InterceptedService::new(reflection_v1, auth.clone()))
        .add_service(InterceptedService::new(reflection_v1alpha, auth.clone()))
        .add_service(InterceptedService::new(teacher, auth)))
}

/// The gRPC side of the server, up before the model is loaded: until [`Front::go_live`] the
/// teacher answers `UNAVAILABLE` and health `NOT_SERVING`.
struct Front {
    service: TeacherService,
    health: HealthReporter,
    phase: SharedPhase,
    metrics: ServerMetrics,
    /// Turns `true` when the drain starts.
    draining: watch::Receiver<bool>,
    /// The gRPC server's task; it ends once the drain has started and the streams have closed.
    serve: JoinHandle<Result<(), tonic::transport::Error>>,
    /// Sent (or dropped) to start the drain if `shutdown` has not.
    stop: oneshot::Sender<()>,
}

impl Front {
    /// Starts serving on `listener`: health (`NOT_SERVING`), reflection and the teacher (not
    /// ready). The drain starts on `shutdown`, or when [`Front::stop`] is sent or dropped.
    ///
    /// # Errors
    /// As [`router`].
    async fn start(
        config: &Config,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
        phase: &SharedPhase,
    ) -> Result<Front, Error> {
        let (drain_tx, drain_rx) = watch::channel(false);
        let service = TeacherService::new(drain_rx.clone(), phase.metrics.clone());
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_not_serving::<TeacherServer<TeacherService>>()
            .await;
        let router = router(config, service.clone(), health_service)?;
        // Serving starts now; `stop` ends it (on the shutdown signal, or when the load fails).
        let (stop, stop_rx) = oneshot::channel::<()>();
        let drain = Drain {
            health: health.clone(),
            phase: phase.clone(),
            draining: drain_tx,
        };
        let serve = serve(
            router,
            listener,
            config.tls.as_ref(),
            drain.after(shutdown, stop_rx),
        );
        Ok(Front {
            service,
            health,
            phase: phase.clone(),
            metrics: phase.metrics.clone(),
            draining: drain_rx,
            serve,
            stop,
        })
    }

    /// Stops serving before the model went live (it did not load, or does not fit the
    /// configuration) and waits for the gRPC server to end.
    async fn abandon(self) {
        let _ = self.stop.send(());
        let _ = self.serve.await;
    }

    /// Serves `model` (described by `info`, also in the metrics) and, unless a shutdown during
    /// the load has already started the drain, turns the phase and health to serving.
    async fn go_live(&self, model: ServingModel, info: &ModelDescription) {
        self.service.set_ready(model);
        self.metrics.set_model([
            &info.name,
            &info.version,
            &info.fingerprint,
            &info.device,
            &info.precision.to_string(),
        ]);
        // A shutdown that came during the load has already set draining: stay NOT_SERVING.
        if !*self.draining.borrow() {
            self.phase.set(Phase::Serving);
            self.health
                .set_serving::<TeacherServer<TeacherService>>()
                .await;
        }
    }
}

/// What turns when the server starts draining: health, the phase, and the service's drain flag.
struct Drain {
    health: HealthReporter,
    phase: SharedPhase,
    draining: watch::Sender<bool>,
}

impl Drain {
    /// The gRPC server's shutdown signal: completes on `shutdown` or `stop` (sent or dropped),
    /// after turning health `NOT_SERVING`, the phase to draining, and the drain flag on.
    async fn after(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        stop: oneshot::Receiver<()>,
    ) {
        tokio::select! {
            () = shutdown => {}
            _ = stop => {}
        }
        tracing::info!("shutting down: answering in-flight batches");
        self.phase.set(Phase::Draining);
        self.health
            .set_not_serving::<TeacherServer<TeacherService>>()
            .await;
        self.draining.send_replace(true);
    }
}

/// Starts the engine thread and loads `wrap(model)` there (see [`model::load`]).
///
/// # Errors
/// As [`Engine::start`].
async fn start_engine<W>(
    config: &Config,
    device: Device,
    metrics: &ServerMetrics,
    wrap: W,
) -> Result<Engine, StartError>
where
    W: FnOnce(Box<dyn TeacherModel>) -> Box<dyn TeacherModel> + Send + 'static,
{
    let (source, spec, precision) = (config.source.clone(), config.spec.clone(), config.precision);
    Engine::start(
        move || model::load(&source, &spec, device, precision).map(wrap),
        EngineSettings {
            threads: config.threads,
            metrics: Some(metrics.clone()),
        },
    )
    .await
}

/// Fails unless the loaded model takes the inputs and gives the logits the configuration says.
fn check_model(config: &Config, info: &ModelDescription) -> Result<(), Error> {
    if info.input_shape != config.spec.input_shape || info.num_logits != config.spec.num_logits {
        return Err(Error::Config(format!(
            "the model takes {:?} inputs and gives {} logits; the configuration says {:?} and {}",
            info.input_shape, info.num_logits, config.spec.input_shape, config.spec.num_logits
        )));
    }
    Ok(())
}

/// The service's settings once the model is loaded (its message limit fits the model's named
/// outputs, see [`message_bytes_for_outputs`]).
fn service_settings(config: &Config, info: &ModelDescription) -> ServiceSettings {
    ServiceSettings {
        max_batch_size: config.batching.max_batch_size,
        max_message_bytes: message_bytes_for_outputs(config, info),
        stream_window: config.stream_window,
    }
}

/// The start-up line of a server that serves: the model and the settings it serves with.
fn log_serving(
    config: &Config,
    info: &ModelDescription,
    settings: &ServiceSettings,
    addr: SocketAddr,
) {
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
        max_message_bytes = settings.max_message_bytes,
        outputs = %model::list_outputs(&info.outputs),
        logits_output = %info.logits_output,
        %addr,
        "teacher-server serving"
    );
}

/// Waits for the gRPC server to end after the drain (at most `grace` once the drain has
/// started), then drops whatever is still queued in the `batcher` and joins the `engine` thread.
///
/// # Errors
/// [`Error::Transport`] if serving failed, [`Error::Config`] if the server task panicked.
async fn finish(
    front: Front,
    batcher: Option<JoinHandle<()>>,
    engine: EngineThread,
    grace: Duration,
) -> Result<(), Error> {
    let mut drained = front.draining.clone();
    let deadline = async move {
        let _ = drained.wait_for(|d| *d).await;
        tokio::time::sleep(grace).await;
    };
    let served = tokio::select! {
        served = front.serve => match served {
            Ok(r) => r.map_err(Error::from),
            Err(e) => Err(Error::Config(format!("the gRPC server task failed: {e}"))),
        },
        () = deadline => {
            tracing::warn!(grace_s = grace.as_secs(), "shutdown grace period over: closing open streams");
            Ok(())
        }
    };
    drop(front.stop);
    // Whatever is still queued is dropped (every stream that finished was answered in full), and
    // the engine thread is joined: it is inside at most one forward pass, and libtorch's exit-time
    // teardown must not run under it.
    if let Some(task) = batcher {
        task.abort();
        let _ = task.await;
    }
    tracing::debug!("waiting for the engine thread to finish its forward pass");
    engine.stop_and_join().await;
    tracing::info!("teacher-server stopped");
    served
}

/// `--max-message-bytes` once the model is loaded: as given, or the default recomputed to fit
/// `--max-batch-size` samples of every named output beside the logits (f32; a sequence model's
/// per-position outputs at `max_seq_len`).
fn message_bytes_for_outputs(config: &Config, info: &ModelDescription) -> usize {
    if config.max_message_bytes_set {
        return config.max_message_bytes;
    }
    let positions = info.sequence.as_ref().map_or(1, |s| s.max_seq_len.max(1)) as usize;
    let output_bytes: usize = info
        .outputs
        .iter()
        .filter(|o| o.name != info.logits_output)
        .map(|o| {
            let per = if o.per_position() { positions } else { 1 };
            (o.elements().max(0) as usize)
                .saturating_mul(per)
                .saturating_mul(4)
        })
        .fold(0, usize::saturating_add);
    let needed = crate::config::needed_message_bytes(
        config.batching.max_batch_size,
        &config.spec,
        output_bytes,
    );
    config
        .max_message_bytes
        .max(crate::config::default_message_bytes(needed))
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

/// Serves `router` on `listener` on a task until `signal` completes: plain TCP, or with
/// `--tls-cert` TLS connections (mutual TLS with `--tls-client-ca`) whose failed handshakes are
/// logged (see [`incoming`]). Connections have `TCP_NODELAY` either way.
fn serve(
    router: Router,
    listener: TcpListener,
    tls: Option<&TlsSettings>,
    signal: impl Future<Output = ()> + Send + 'static,
) -> JoinHandle<Result<(), tonic::transport::Error>> {
    match tls {
        Some(tls) => {
            let connections = incoming::tls(listener, tls.server_config());
            tokio::spawn(router.serve_with_incoming_shutdown(connections, signal))
        }
        None => {
            let connections = TcpIncoming::from(listener).with_nodelay(Some(true));
            tokio::spawn(router.serve_with_incoming_shutdown(connections, signal))
        }
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
