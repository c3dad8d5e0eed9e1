//! Client of one `teacher-server`: connection (TLS, token, compression, keepalive), health,
//! `GetModelInfo` (retried while the server still loads), and opening a `StreamLogits` stream.
//!
//! What the model info must satisfy is [`super::info`]'s; streaming batches over those streams,
//! with failover, is [`super::pool`]'s; turning wire messages into tensors is [`super::wire`]'s.

use super::error::{ClientError, TlsSide, connect_error, error_chain, first_rpc_error, rpc_error};
use super::info::TeacherInfo;
use super::security::ClientSecurity;
use distill_proto::auth;
use distill_proto::v1::{
    self, GetModelInfoRequest, LogitsRequest, LogitsResponse, teacher_client::TeacherClient as Grpc,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

/// The gRPC service name the teacher's health service reports on.
pub(crate) const TEACHER_SERVICE: &str = "distill.v1.Teacher";

/// Largest gRPC message this client sends or accepts unless the teacher announces more (bytes).
pub(crate) const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// How long to wait for the TCP/HTTP2 connection.
    pub connect_timeout: Duration,
    /// HTTP/2 keepalive ping interval (detects a dead teacher on an idle stream).
    pub keepalive_interval: Duration,
    /// How long a keepalive ping may go unanswered before the connection is dropped.
    pub keepalive_timeout: Duration,
    /// TLS, bearer token and compression (default: plain text, none, none).
    pub security: ClientSecurity,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(20),
            security: ClientSecurity::default(),
        }
    }
}

/// A connected teacher: a gRPC channel and its model info.
#[derive(Debug, Clone)]
pub(crate) struct TeacherClient {
    url: String,
    channel: Channel,
    grpc: Grpc<Channel>,
    info: TeacherInfo,
    security: ClientSecurity,
}

/// `message` as a request carrying `authorization: Bearer TOKEN` when there is a token (the
/// metadata value is marked sensitive: HTTP/2 never indexes it).
fn authorize<T>(security: &ClientSecurity, message: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(token) = &security.token {
        // Tokens are visible ASCII (checked when read), so this always parses.
        if let Ok(mut value) = token.bearer().parse::<MetadataValue<Ascii>>() {
            value.set_sensitive(true);
            req.metadata_mut().insert(auth::AUTHORIZATION, value);
        }
    }
    req
}

impl TeacherClient {
    /// Connects to `url` (with HTTP/2 keepalive and raised message limits) and fetches
    /// `GetModelInfo`.
    ///
    /// # Errors
    /// [`ClientError::Url`], [`ClientError::Unreachable`], [`ClientError::Tls`] when the
    /// connection breaks over a probable TLS mistake (a client certificate missing or refused,
    /// TLS on one side only), or [`ClientError::Rpc`] for a failing `GetModelInfo`.
    pub(crate) async fn connect(
        url: &str,
        options: &ClientOptions,
    ) -> Result<TeacherClient, ClientError> {
        let started = tokio::time::Instant::now();
        let bad_url = |reason: String| ClientError::Url {
            url: url.to_string(),
            reason,
        };
        let mut endpoint = Endpoint::from_shared(url.to_string())
            .map_err(|e| bad_url(error_chain(&e)))?
            .connect_timeout(options.connect_timeout)
            .http2_keep_alive_interval(options.keepalive_interval)
            .keep_alive_timeout(options.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        let security = &options.security;
        if url.starts_with("https://") {
            let tls = security
                .tls
                .clone()
                .unwrap_or_else(|| ClientTlsConfig::new().with_native_roots());
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|e| bad_url(error_chain(&e)))?;
        }
        let side = TlsSide {
            tls: url.starts_with("https://"),
            client_certificate: security.client_certificate,
        };
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| connect_error(url, side, &e))?;
        let mut grpc = Grpc::new(channel.clone())
            .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES);
        if let Some(c) = security.compression {
            grpc = grpc.send_compressed(c).accept_compressed(c);
        }
        let info: TeacherInfo = model_info_when_ready(&mut grpc, url, started, options, side)
            .await?
            .into();
        if info.max_message_bytes as usize > DEFAULT_MAX_MESSAGE_BYTES {
            let n = info.max_message_bytes as usize;
            grpc = grpc
                .max_decoding_message_size(n)
                .max_encoding_message_size(n);
        }
        Ok(TeacherClient {
            url: url.to_string(),
            channel,
            grpc,
            info,
            security: security.clone(),
        })
    }

    /// Asks the teacher's `grpc.health.v1.Health` service whether `distill.v1.Teacher` is
    /// serving.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] or [`ClientError::Rpc`] when the check itself fails.
    pub(crate) async fn serving(&self) -> Result<bool, ClientError> {
        use tonic_health::pb::{
            HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
        };
        let mut health = HealthClient::new(self.channel.clone());
        let status = health
            .check(HealthCheckRequest {
                service: TEACHER_SERVICE.to_string(),
            })
            .await
            .map_err(|s| rpc_error(&self.url, "Health/Check", s))?
            .into_inner()
            .status;
        Ok(status == ServingStatus::Serving as i32)
    }

    /// Opens one `StreamLogits` call fed by `requests`; the returned stream yields the responses
    /// in completion order.
    ///
    /// # Errors
    /// [`ClientError::Unreachable`] or [`ClientError::Rpc`] when the call is refused.
    pub(crate) async fn open_stream(
        &self,
        requests: mpsc::Receiver<LogitsRequest>,
    ) -> Result<tonic::Streaming<LogitsResponse>, ClientError> {
        let mut grpc = self.grpc.clone();
        Ok(grpc
            .stream_logits(authorize(&self.security, ReceiverStream::new(requests)))
            .await
            .map_err(|s| rpc_error(&self.url, "StreamLogits", s))?
            .into_inner())
    }

    /// The teacher's URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The teacher's model info (from `GetModelInfo` at connect time).
    pub(crate) fn info(&self) -> &TeacherInfo {
        &self.info
    }
}

/// `GetModelInfo`, retried while the server answers `UNAVAILABLE` (a teacher-server still
/// loading its model answers so at once, with a `grpc-retry-pushback-ms` hint) until
/// `options.connect_timeout` has passed since `started`. The waits follow the server's hint
/// (100 ms to 2 s; 200 ms without one).
///
/// # Errors
/// [`ClientError::Unreachable`] once the time is up (or for any other `UNAVAILABLE`),
/// [`ClientError::Tls`] when the connection broke over a TLS mistake (see [`first_rpc_error`]),
/// [`ClientError::Rpc`] for any other failure.
async fn model_info_when_ready(
    grpc: &mut Grpc<Channel>,
    url: &str,
    started: tokio::time::Instant,
    options: &ClientOptions,
    side: TlsSide,
) -> Result<v1::ModelInfo, ClientError> {
    let security = &options.security;
    let deadline = started + options.connect_timeout;
    let mut logged = false;
    loop {
        let status = match grpc
            .get_model_info(authorize(security, GetModelInfoRequest {}))
            .await
        {
            Ok(r) => return Ok(r.into_inner()),
            Err(status) => status,
        };
        let now = tokio::time::Instant::now();
        if status.code() != tonic::Code::Unavailable || now >= deadline {
            return Err(first_rpc_error(url, "GetModelInfo", side, status));
        }
        let hint = status
            .metadata()
            .get(distill_proto::RETRY_PUSHBACK_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map_or(Duration::from_millis(200), Duration::from_millis)
            .clamp(Duration::from_millis(100), Duration::from_secs(2));
        if !logged {
            logged = true;
            tracing::info!(
                %url, reason = status.message(),
                connect_timeout_s = options.connect_timeout.as_secs_f64(),
                "teacher not ready yet; retrying GetModelInfo until --connect-timeout"
            );
        }
        // A back-off the server asked for, bounded by the connect timeout.
        tokio::time::sleep_until((now + hint).min(deadline)).await;
    }
}
