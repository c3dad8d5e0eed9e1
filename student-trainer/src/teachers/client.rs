//! Client of one `teacher-server`: connection, health, the model-info checks (against our data,
//! and between replicas), and opening a `StreamLogits` stream.
//!
//! Streaming batches over those streams, with failover, is [`crate::pool`]'s job; turning wire
//! messages into tensors is [`crate::wire`]'s.

use crate::security::ClientSecurity;
use distill_proto::auth;
use distill_proto::codec;
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

/// Why talking to the teacher failed. gRPC status codes are kept: retry policy depends on them.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL cannot be used as a gRPC endpoint.
    #[error("invalid teacher URL {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No connection could be made.
    #[error("cannot reach the teacher at {url}: {reason} (is teacher-server running there?)")]
    Unreachable {
        /// The URL given.
        url: String,
        /// The transport error and its causes.
        reason: String,
    },
    /// An RPC failed with a gRPC status.
    #[error("teacher at {url}: {rpc} failed: {code:?}: {message}")]
    Rpc {
        /// The teacher's URL.
        url: String,
        /// Which RPC.
        rpc: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
    /// The teacher refused our credentials (`UNAUTHENTICATED` or `PERMISSION_DENIED`): the
    /// replica counts as refused, not as a transient failure.
    #[error(
        "teacher at {url} refused the credentials: {rpc}: {}: {message}: check --auth-token-file / STUDENT_AUTH_TOKEN against the teacher's --auth-token-file",
        code_name(*code)
    )]
    Refused {
        /// The teacher's URL.
        url: String,
        /// Which RPC.
        rpc: &'static str,
        /// `Unauthenticated` or `PermissionDenied`.
        code: tonic::Code,
        /// The teacher's message.
        message: String,
    },
    /// The teacher does not fit the data or the student.
    #[error("teacher at {url} does not fit: {what}: teacher has {teacher}, {side} has {ours}")]
    Incompatible {
        /// The teacher's URL.
        url: String,
        /// What differs (e.g. "number of classes").
        what: &'static str,
        /// The teacher's value.
        teacher: String,
        /// Which side of ours (the data, the student, --batch-size).
        side: &'static str,
        /// Our value.
        ours: String,
    },
    /// The teacher answered one batch with a per-batch error.
    #[error(
        "teacher rejected batch {batch_id} (epoch {epoch}, batch {index} of the epoch): {code:?}: {message}"
    )]
    Batch {
        /// The request's id.
        batch_id: u64,
        /// Its epoch.
        epoch: u64,
        /// Its position in the epoch.
        index: usize,
        /// The per-batch error's gRPC status code.
        code: tonic::Code,
        /// The teacher's message.
        message: String,
    },
    /// A response that breaks the protocol (unknown or duplicate id, wrong shape, ...).
    #[error("teacher protocol violation: {0}")]
    Protocol(String),
    /// The consumer of the batches (the training loop) is gone.
    #[error("the training loop stopped receiving teacher batches")]
    ConsumerGone,
    /// Wire tensor encoding or decoding failed.
    #[error("tensor codec: {0}")]
    Codec(#[from] codec::CodecError),
    /// A libtorch failure while preparing a batch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// The teacher's `ModelInfo`, as domain values.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherInfo {
    /// Model name (architecture name for checkpoints, e.g. `cnn`).
    pub name: String,
    /// Model version string.
    pub version: String,
    /// Hex SHA-256 of the teacher's weights.
    pub fingerprint: String,
    /// Expected input dtype.
    pub input_dtype: v1::DType,
    /// Per-sample input shape, no batch dimension.
    pub input_shape: Vec<i64>,
    /// Logits per sample.
    pub num_logits: i64,
    /// Largest batch one request may carry (0: not announced).
    pub max_batch_size: u32,
    /// Device the teacher runs on.
    pub device: String,
    /// Largest gRPC message the teacher accepts (bytes; 0: not announced).
    pub max_message_bytes: u64,
    /// Random id of the serving process (hex; empty from servers that predate it): two URLs
    /// with the same id reach one server.
    pub instance_id: String,
    /// Precision of the teacher's forward pass (`teacher-server --precision`): `F32`, `Bf16`
    /// or `F16`; `F32` from servers that predate the field (they send `DTYPE_UNSPECIFIED`).
    pub precision: v1::DType,
    /// A sequence model (causal LM): token ids `i64 [batch, seq]` in, logits per position out.
    pub sequence_model: bool,
    /// A sequence model's longest sequence (0 otherwise).
    pub max_seq_len: i64,
    /// Hex SHA-256 of the teacher's tokenizer file (empty: not announced).
    pub tokenizer_fingerprint: String,
    /// The model's named outputs with their per-sample shapes (`ModelInfo.outputs`; empty from
    /// servers that predate them), the logits among them.
    pub outputs: Vec<(String, Vec<i64>)>,
}

impl From<v1::ModelInfo> for TeacherInfo {
    fn from(m: v1::ModelInfo) -> Self {
        // Destructured so that a new field cannot be ignored silently.
        let v1::ModelInfo {
            name,
            version,
            fingerprint,
            input_dtype,
            input_shape,
            num_logits,
            max_batch_size,
            device,
            max_message_bytes,
            precision,
            instance_id,
            sequence_model,
            max_seq_len,
            tokenizer_fingerprint,
            outputs,
            // Which output holds the logits is the server's business: they come as logits.
            logits_output: _,
        } = m;
        TeacherInfo {
            name,
            version,
            fingerprint,
            input_dtype: v1::DType::try_from(input_dtype).unwrap_or_default(),
            input_shape,
            num_logits,
            max_batch_size,
            device,
            max_message_bytes,
            instance_id,
            // Servers before issue 8 ran f32 only and leave the field unset.
            precision: match v1::DType::try_from(precision) {
                Ok(v1::DType::DtypeUnspecified) => v1::DType::F32,
                Ok(d) => d,
                // A number this client does not know: kept distinct from every known one.
                Err(_) => v1::DType::DtypeUnspecified,
            },
            sequence_model,
            max_seq_len,
            tokenizer_fingerprint,
            outputs: outputs.into_iter().map(|o| (o.name, o.shape)).collect(),
        }
    }
}

impl TeacherInfo {
    /// Checks the teacher against our data and student, before any training: input dtype and
    /// per-sample shape (the data is `f32`; token sequences `i64 [S]` need a sequence model
    /// taking S tokens), number of logits = classes (a language model's vocabulary), the batch
    /// size, and for token data the tokenizer (both fingerprints known and different: refused).
    ///
    /// # Errors
    /// [`ClientError::Incompatible`] naming the first mismatch, with both values.
    pub fn check(&self, url: &str, expect: &crate::pool::Expect) -> Result<(), ClientError> {
        let bad = |what, teacher: String, side, ours: String| ClientError::Incompatible {
            url: url.to_string(),
            what,
            teacher,
            side,
            ours,
        };
        let sample_shape = expect.sample_shape.as_slice();
        if expect.tokens {
            if !self.sequence_model {
                return Err(bad(
                    "kind of model",
                    format!(
                        "a classifier of {:?} {} inputs",
                        self.input_shape,
                        codec::dtype_name(self.input_dtype)
                    ),
                    "the data",
                    format!("token sequences {sample_shape:?} (a sequence model is needed)"),
                ));
            }
            let seq = sample_shape.first().copied().unwrap_or(0);
            if seq > self.max_seq_len {
                return Err(bad(
                    "longest sequence (max_seq_len)",
                    self.max_seq_len.to_string(),
                    "the data's sequence length",
                    seq.to_string(),
                ));
            }
            if let Some(ours) = &expect.tokenizer_fingerprint
                && !self.tokenizer_fingerprint.is_empty()
                && *ours != self.tokenizer_fingerprint
            {
                return Err(bad(
                    "tokenizer fingerprint (SHA-256 of tokenizer.json)",
                    self.tokenizer_fingerprint.clone(),
                    "the data's tokenizer",
                    ours.clone(),
                ));
            }
        } else if self.sequence_model {
            return Err(bad(
                "kind of model",
                format!(
                    "a sequence model (token ids up to {} long)",
                    self.max_seq_len
                ),
                "the data",
                format!("{sample_shape:?} f32 samples (a classifier is needed)"),
            ));
        } else {
            if self.input_dtype != v1::DType::F32 {
                return Err(bad(
                    "input dtype",
                    codec::dtype_name(self.input_dtype).into(),
                    "the data",
                    "f32".into(),
                ));
            }
            if self.input_shape != sample_shape {
                return Err(bad(
                    "per-sample input shape",
                    format!("{:?}", self.input_shape),
                    "the data",
                    format!("{sample_shape:?}"),
                ));
            }
        }
        if self.num_logits != expect.num_classes {
            return Err(bad(
                if expect.tokens {
                    "vocabulary size (logits)"
                } else {
                    "number of classes (logits)"
                },
                self.num_logits.to_string(),
                "the data and student",
                expect.num_classes.to_string(),
            ));
        }
        if self.max_batch_size > 0 && expect.batch_size > self.max_batch_size as usize {
            return Err(bad(
                "maximum batch size",
                self.max_batch_size.to_string(),
                "--batch-size",
                expect.batch_size.to_string(),
            ));
        }
        if let Some(name) = &expect.hint_output
            && !self.outputs.iter().any(|(n, _)| n == name)
        {
            let have: Vec<String> = self
                .outputs
                .iter()
                .map(|(n, shape)| format!("{n} {shape:?}"))
                .collect();
            return Err(bad(
                "named outputs",
                if have.is_empty() {
                    "none (a classifier with one output, or a server older than named outputs)"
                        .into()
                } else {
                    have.join(", ")
                },
                "--hint",
                format!("an output named {name}"),
            ));
        }
        Ok(())
    }
}

/// The first difference between a replica's `ModelInfo` (`got`) and its group's reference that
/// makes the replica unfit to stand in for it, if any: the weights fingerprint, the input shape
/// and dtype, the number of logits, the precision of the forward pass (a bf16 replica's logits
/// differ from an f32 one's in the third significant digit). The message names both values.
///
/// Not compared, by design: the name and version (labels), and what differs per process or
/// machine (`max_batch_size`, `device`, `max_message_bytes`, `instance_id`).
pub(crate) fn inconsistency(reference: &TeacherInfo, got: &TeacherInfo) -> Option<String> {
    // Destructured so that a new field has to be sorted into compared or not compared.
    let TeacherInfo {
        name: _,
        version: _,
        fingerprint,
        input_dtype,
        input_shape,
        num_logits,
        max_batch_size: _,
        device: _,
        max_message_bytes: _,
        instance_id: _,
        precision,
        sequence_model,
        max_seq_len,
        tokenizer_fingerprint,
        // What the model returns besides its logits follows from the weights (fingerprint).
        outputs: _,
    } = got;
    if *fingerprint != reference.fingerprint {
        return Some(format!(
            "fingerprint {fingerprint} differs from the group's {}",
            reference.fingerprint
        ));
    }
    if *input_shape != reference.input_shape || *input_dtype != reference.input_dtype {
        return Some(format!(
            "input {input_shape:?} {} differs from the group's {:?} {} (fingerprints {fingerprint} and {})",
            codec::dtype_name(*input_dtype),
            reference.input_shape,
            codec::dtype_name(reference.input_dtype),
            reference.fingerprint
        ));
    }
    if *num_logits != reference.num_logits {
        return Some(format!(
            "{num_logits} logits differ from the group's {} (fingerprints {fingerprint} and {})",
            reference.num_logits, reference.fingerprint
        ));
    }
    if *precision != reference.precision {
        return Some(format!(
            "precision {} differs from the group's {} (teacher-server --precision; same fingerprint {fingerprint})",
            precision_name(*precision),
            precision_name(reference.precision)
        ));
    }
    if (*sequence_model, *max_seq_len) != (reference.sequence_model, reference.max_seq_len) {
        return Some(format!(
            "sequence model {sequence_model} (max_seq_len {max_seq_len}) differs from the group's {} ({})",
            reference.sequence_model, reference.max_seq_len
        ));
    }
    if *tokenizer_fingerprint != reference.tokenizer_fingerprint {
        return Some(format!(
            "tokenizer fingerprint {tokenizer_fingerprint:?} differs from the group's {:?}",
            reference.tokenizer_fingerprint
        ));
    }
    None
}

/// `f32`, `bf16`, ... as `--precision` spells it; `unknown` for a dtype number this client does
/// not know.
fn precision_name(d: v1::DType) -> &'static str {
    match d {
        v1::DType::DtypeUnspecified => "unknown",
        d => codec::dtype_name(d),
    }
}

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

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_text = s.to_string();
        if !parts.iter().any(|p| p.contains(&s_text)) {
            parts.push(s_text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

impl TeacherClient {
    /// Connects to `url` (with HTTP/2 keepalive and raised message limits) and fetches
    /// `GetModelInfo`.
    ///
    /// # Errors
    /// [`ClientError::Url`], [`ClientError::Unreachable`], or [`ClientError::Rpc`] for a failing
    /// `GetModelInfo`.
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
        let channel = endpoint.connect().await.map_err(|e| {
            let reason = error_chain(&e);
            let hint = if reason.contains("certificate") || reason.contains("Certificate") {
                " (TLS: check --tls-ca, --tls-server-name, and --tls-cert/--tls-key for mutual TLS)"
            } else {
                ""
            };
            ClientError::Unreachable {
                url: url.to_string(),
                reason: format!("{reason}{hint}"),
            }
        })?;
        let mut grpc = Grpc::new(channel.clone())
            .max_decoding_message_size(DEFAULT_MAX_MESSAGE_BYTES)
            .max_encoding_message_size(DEFAULT_MAX_MESSAGE_BYTES);
        if let Some(c) = security.compression {
            grpc = grpc.send_compressed(c).accept_compressed(c);
        }
        let info: TeacherInfo = model_info_when_ready(&mut grpc, url, started, options, security)
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
/// [`ClientError::Rpc`] for any other failure.
async fn model_info_when_ready(
    grpc: &mut Grpc<Channel>,
    url: &str,
    started: tokio::time::Instant,
    options: &ClientOptions,
    security: &ClientSecurity,
) -> Result<v1::ModelInfo, ClientError> {
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
            return Err(rpc_error(url, "GetModelInfo", status));
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

/// The gRPC spelling of the codes an auth refusal carries (`UNAUTHENTICATED`, ...).
fn code_name(code: tonic::Code) -> String {
    match code {
        tonic::Code::Unauthenticated => "UNAUTHENTICATED".into(),
        tonic::Code::PermissionDenied => "PERMISSION_DENIED".into(),
        other => format!("{other:?}"),
    }
}

impl ClientError {
    /// Whether the teacher refused our credentials ([`ClientError::Refused`]).
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, ClientError::Refused { .. })
    }
}

/// Whether a status refuses our credentials.
pub(crate) fn is_auth_refusal(code: tonic::Code) -> bool {
    matches!(
        code,
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
    )
}

pub(crate) fn rpc_error(url: &str, rpc: &'static str, s: tonic::Status) -> ClientError {
    if is_auth_refusal(s.code()) {
        return ClientError::Refused {
            url: url.to_string(),
            rpc,
            code: s.code(),
            message: s.message().to_string(),
        };
    }
    if s.code() == tonic::Code::Unavailable {
        return ClientError::Unreachable {
            url: url.to_string(),
            reason: format!("{rpc}: {}", s.message()),
        };
    }
    ClientError::Rpc {
        url: url.to_string(),
        rpc,
        code: s.code(),
        message: s.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> TeacherInfo {
        TeacherInfo {
            name: "cnn".into(),
            version: "1".into(),
            fingerprint: "ab".into(),
            input_dtype: v1::DType::F32,
            input_shape: vec![1, 28, 28],
            num_logits: 10,
            max_batch_size: 256,
            device: "cpu".into(),
            max_message_bytes: 0,
            instance_id: String::new(),
            precision: v1::DType::F32,
            sequence_model: false,
            max_seq_len: 0,
            tokenizer_fingerprint: String::new(),
            outputs: vec![("0".into(), vec![10]), ("1".into(), vec![64])],
        }
    }

    fn expect(sample_shape: &[i64], num_classes: i64, batch_size: usize) -> crate::pool::Expect {
        crate::pool::Expect {
            sample_shape: sample_shape.to_vec(),
            num_classes,
            batch_size,
            tokens: false,
            tokenizer_fingerprint: None,
            hint_output: None,
        }
    }

    #[test]
    fn a_language_model_checks_kind_length_vocabulary_and_tokenizer() {
        let lm = TeacherInfo {
            input_dtype: v1::DType::I64,
            input_shape: vec![256],
            num_logits: 8192,
            sequence_model: true,
            max_seq_len: 256,
            tokenizer_fingerprint: "aa".into(),
            ..info()
        };
        let tokens = |seq: i64, vocab: i64, tok: Option<&str>| crate::pool::Expect {
            tokens: true,
            tokenizer_fingerprint: tok.map(str::to_string),
            hint_output: None,
            ..expect(&[seq], vocab, 16)
        };
        lm.check("u", &tokens(128, 8192, Some("aa"))).unwrap();
        lm.check("u", &tokens(256, 8192, None)).unwrap();
        let e = lm
            .check("u", &tokens(128, 8192, Some("bb")))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("tokenizer") && e.contains("aa") && e.contains("bb"),
            "{e}"
        );
        let e = lm
            .check("u", &tokens(257, 8192, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_seq_len") && e.contains("257"), "{e}");
        let e = lm
            .check("u", &tokens(128, 4096, None))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("vocabulary") && e.contains("8192") && e.contains("4096"),
            "{e}"
        );
        let e = info()
            .check("u", &tokens(128, 10, None))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a sequence model is needed"), "{e}");
        let e = lm
            .check("u", &expect(&[256], 8192, 16))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a classifier is needed"), "{e}");
    }

    #[test]
    fn model_info_check_names_the_mismatch() {
        let i = info();
        i.check("u", &expect(&[1, 28, 28], 10, 128)).unwrap();
        let e = i
            .check("u", &expect(&[1, 28, 28], 5, 128))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("number of classes") && e.contains("10") && e.contains('5'),
            "{e}"
        );
        let e = i
            .check("u", &expect(&[784], 10, 128))
            .unwrap_err()
            .to_string();
        assert!(e.contains("input shape"), "{e}");
        let e = i
            .check("u", &expect(&[1, 28, 28], 10, 512))
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch size"), "{e}");
        let mut f16 = info();
        f16.input_dtype = v1::DType::F16;
        assert!(
            f16.check("u", &expect(&[1, 28, 28], 10, 1))
                .unwrap_err()
                .to_string()
                .contains("dtype")
        );
    }

    #[test]
    fn inconsistency_names_both_fingerprints_and_ignores_per_process_fields() {
        let fp = |f: &str| TeacherInfo {
            fingerprint: f.into(),
            ..info()
        };
        assert_eq!(inconsistency(&fp("aa"), &fp("aa")), None);
        let why = inconsistency(&fp("aa"), &fp("bb")).unwrap();
        assert!(why.contains("aa") && why.contains("bb"), "{why}");
        let other = TeacherInfo {
            num_logits: 5,
            ..fp("aa")
        };
        assert!(inconsistency(&fp("aa"), &other).unwrap().contains("logits"));
        let other = TeacherInfo {
            input_shape: vec![784],
            ..fp("aa")
        };
        assert!(inconsistency(&fp("aa"), &other).unwrap().contains("input"));
        // Replicas differ in these by design.
        let other = TeacherInfo {
            instance_id: "another-process".into(),
            device: "cuda:1".into(),
            max_batch_size: 64,
            max_message_bytes: 1 << 20,
            ..fp("aa")
        };
        assert_eq!(inconsistency(&fp("aa"), &other), None);
    }

    #[test]
    fn a_replica_of_another_precision_is_refused_naming_both() {
        let bf16 = TeacherInfo {
            precision: v1::DType::Bf16,
            ..info()
        };
        let why = inconsistency(&info(), &bf16).unwrap();
        assert!(
            why.contains("precision bf16") && why.contains("group's f32"),
            "{why}"
        );
        let why = inconsistency(&bf16, &info()).unwrap();
        assert!(
            why.contains("precision f32") && why.contains("group's bf16"),
            "{why}"
        );
        assert_eq!(inconsistency(&bf16, &bf16.clone()), None);
    }

    #[test]
    fn precision_from_model_info_defaults_to_f32_for_old_servers() {
        let wire = |precision: i32| v1::ModelInfo {
            precision,
            ..v1::ModelInfo::default()
        };
        let old = TeacherInfo::from(wire(v1::DType::DtypeUnspecified as i32));
        assert_eq!(old.precision, v1::DType::F32);
        assert_eq!(inconsistency(&info(), &old.clone().with_basics()), None);
        assert_eq!(
            TeacherInfo::from(wire(v1::DType::Bf16 as i32)).precision,
            v1::DType::Bf16
        );
        assert_eq!(
            TeacherInfo::from(wire(v1::DType::F16 as i32)).precision,
            v1::DType::F16
        );
        let future = TeacherInfo::from(wire(99));
        let why = inconsistency(&info(), &future.with_basics()).unwrap();
        assert!(why.contains("precision unknown"), "{why}");
    }

    impl TeacherInfo {
        /// This info with [`info()`]'s fingerprint, shapes and logits, keeping its precision.
        fn with_basics(self) -> TeacherInfo {
            TeacherInfo {
                precision: self.precision,
                ..info()
            }
        }
    }
}
