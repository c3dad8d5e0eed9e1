//! Command line and validated configuration.
//!
//! [`Args`] is what clap parses (every flag also reads a `TEACHER_…` environment variable);
//! [`Config`] is what the server runs with, produced by `TryFrom<Args>`, which checks every value
//! and resolves what the model expects (input shape and dtype, number of logits) from flags, the
//! TorchScript sidecar `FILE.json`, or a checkpoint's `checkpoint.json`, into the model's
//! [`ModelSource`] and [`ModelSpec`] (defined with the model, in [`crate::model`]). A bad value
//! is a [`ConfigError`] naming the flag, what was expected and what was given.

use crate::model::{LoadError, ModelSource, ModelSpec, Precision, SequenceSpec};
use crate::security::{self, SecurityError, TlsSettings};
pub use distill_models::device::DeviceChoice;
use distill_models::device::DeviceError;
use distill_models::{Arch, Checkpoint};
use distill_proto::auth::Token;
use distill_proto::codec;
use serde::Deserialize;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tch::Kind;
use tonic::codec::CompressionEncoding;

/// tonic's default message limit (4 MiB): the floor of the computed `--max-message-bytes`.
pub const MIN_DEFAULT_MESSAGE_BYTES: usize = 4 << 20;

/// Why the flags do not make a configuration. The server's error mapping reports each variant as
/// its own variant of the same message (`configuration: ...`, `CONTEXT: CAUSE`, `loading the
/// model: ...`).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A flag's value, or what a sidecar or checkpoint says, is invalid.
    #[error("configuration: {0}")]
    Invalid(String),
    /// A file named by the flags (a sidecar, a tokenizer) cannot be read.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A checkpoint (or an architecture name) the flags point to cannot be read.
    #[error(transparent)]
    Load(#[from] LoadError),
}

impl From<distill_models::ModelError> for ConfigError {
    fn from(e: distill_models::ModelError) -> Self {
        ConfigError::Load(LoadError::from(e))
    }
}

impl From<SecurityError> for ConfigError {
    fn from(e: SecurityError) -> Self {
        ConfigError::Invalid(e.0)
    }
}

/// Command-line flags of `teacher-server`. A flag given twice takes its last value (so wrappers
/// can append overrides).
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "teacher-server",
    version,
    about = "Serves a teacher's logits over gRPC (distill.v1.Teacher) with dynamic batching.",
    args_override_self = true
)]
pub struct Args {
    /// Teacher to serve: a TorchScript file (`torch.jit.save`; shape/dtype/logits from the flags
    /// below or a sidecar `FILE.json`), a checkpoint directory written by `student-trainer`
    /// (holding `checkpoint.json`), or a `.safetensors` weights file together with `--arch`.
    #[arg(long, env = "TEACHER_MODEL")]
    pub model: PathBuf,

    /// Built-in architecture of a `.safetensors` weights file: `cnn`, `mlp` or `mlp:H1,H2,...`.
    #[arg(long, env = "TEACHER_ARCH")]
    pub arch: Option<String>,

    /// Per-sample input shape without the batch dimension, comma-separated (e.g. `1,28,28`).
    /// Overrides the sidecar JSON; required for a `.safetensors` file without a sidecar.
    #[arg(long, env = "TEACHER_INPUT_SHAPE", value_delimiter = ',')]
    pub input_shape: Option<Vec<i64>>,

    /// Input dtype: f32, f16, bf16, f64, u8, i32 or i64 (default f32).
    #[arg(long, env = "TEACHER_INPUT_DTYPE")]
    pub input_dtype: Option<String>,

    /// Number of logits per sample (size of the model's last output dimension; a sequence
    /// model's vocabulary size).
    #[arg(long, env = "TEACHER_NUM_LOGITS")]
    pub num_logits: Option<i64>,

    /// The TorchScript module is a causal language model: called as `forward(input_ids,
    /// attention_mask)` (both i64 [batch, seq]) and returning logits [batch, seq, vocab];
    /// `--input-shape` is then `MAX_SEQ_LEN` and `--input-dtype` i64. Also `"sequence_model":
    /// true` in the sidecar. Built-in `lm:...` checkpoints are sequence models by themselves.
    #[arg(long, env = "TEACHER_SEQUENCE_MODEL")]
    pub sequence_model: bool,

    /// Tokenizer file of a sequence model (e.g. `tokenizer.json`): its SHA-256 goes into
    /// `ModelInfo.tokenizer_fingerprint`, so that a student with another tokenizer is refused.
    /// Default: the sidecar's `"tokenizer"` (relative to the sidecar), or `tokenizer.json` in a
    /// checkpoint directory.
    #[arg(long, env = "TEACHER_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,

    /// Which output of the model's forward pass holds the logits, when it returns several (a
    /// tuple or list: `0`, `1`, ...; a `Dict[str, Tensor]`: a key). The others can be asked for
    /// beside the logits (`LogitsRequest.outputs`, e.g. features for hint distillation). Also
    /// `"logits_output"` in the sidecar. A built-in architecture's logits are `logits`.
    #[arg(long, env = "TEACHER_LOGITS_OUTPUT")]
    pub logits_output: Option<String>,

    /// Device: `auto` (CUDA when available, else CPU), `cpu`, `cuda` or `cuda:N`.
    #[arg(long, env = "TEACHER_DEVICE", default_value = "auto")]
    pub device: String,

    /// Address to listen on, `HOST:PORT`. Port 0 picks a free port (reported on stdout as
    /// `listening on HOST:PORT`). Binding all interfaces (`0.0.0.0`) is an explicit choice.
    #[arg(long, env = "TEACHER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,

    /// Largest forward pass in samples; also the largest batch one request may carry.
    #[arg(long, env = "TEACHER_MAX_BATCH_SIZE", default_value_t = 256)]
    pub max_batch_size: u32,

    /// Longest a batch waits for others to merge with before its forward pass starts, in
    /// microseconds (it never waits once the merged batch is full).
    #[arg(long, env = "TEACHER_MAX_BATCH_DELAY_US", default_value_t = 2000)]
    pub max_batch_delay_us: u64,

    /// Largest gRPC message accepted or sent, in bytes. Default: what `--max-batch-size`
    /// samples of input plus their f32 logits (and the model's other named outputs, in f32)
    /// need, doubled for headroom, at least 4 MiB.
    #[arg(long, env = "TEACHER_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,

    /// Batches (requests) that may wait for the model across all streams, at most half of them
    /// from one stream; beyond either a batch gets RESOURCE_EXHAUSTED with a retry hint.
    #[arg(long, env = "TEACHER_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,

    /// Batches one stream may have queued or running; beyond it the server stops reading that
    /// stream (HTTP/2 flow control pushes back on the client).
    #[arg(long, env = "TEACHER_STREAM_WINDOW", default_value_t = 64)]
    pub stream_window: usize,

    /// Serve Prometheus metrics (`/metrics`) and plain-HTTP readiness (`/readyz`: 200 once the
    /// model is loaded and warmed up, 503 while loading or draining) on this `HOST:PORT`; port 0
    /// picks a free port, reported on stdout as `metrics on http://HOST:PORT` after the
    /// `listening on` line. Off by default.
    #[arg(long, env = "TEACHER_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,

    /// Log format on stderr: `text` or `json` (level from `RUST_LOG`, default `info`).
    #[arg(long, env = "TEACHER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// libtorch intra-op threads of the engine thread's forward passes (default: libtorch's
    /// choice, the CPUs); the gRPC side's tensor work runs on one thread each.
    #[arg(long, env = "TEACHER_THREADS")]
    pub threads: Option<i32>,

    /// Seconds to finish in-flight batches after SIGINT/SIGTERM before exiting anyway.
    #[arg(long, env = "TEACHER_SHUTDOWN_GRACE_S", default_value_t = 10)]
    pub shutdown_grace_s: u64,

    /// Precision of the forward pass: the weights and floating-point inputs are converted to it
    /// (integer inputs are not); logits come back as f32. bf16/f16 pay only on a GPU or a CPU
    /// with native support (avx512_bf16/amx_bf16, avx512_fp16/amx_fp16); elsewhere they are
    /// slower than f32, and the server warns at start.
    #[arg(long, env = "TEACHER_PRECISION", value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,

    /// TLS certificate chain (PEM, leaf first) to serve with; needs --tls-key. Without it the
    /// server speaks plain text (and warns when listening beyond loopback).
    #[arg(long, env = "TEACHER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of --tls-cert; checked against the certificate at start.
    #[arg(long, env = "TEACHER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA certificate(s) (PEM) that clients must present a certificate from: turns on mutual
    /// TLS (clients without such a certificate are refused at the handshake). Needs --tls-cert.
    #[arg(long, env = "TEACHER_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// File of bearer tokens, one per line (blank lines and `#` comments skipped): calls to
    /// distill.v1.Teacher and reflection must carry `authorization: Bearer TOKEN` with one of
    /// them, or get UNAUTHENTICATED. Health stays open. Several lines allow rotation.
    #[arg(long, env = "TEACHER_AUTH_TOKEN_FILE")]
    pub auth_token_file: Option<PathBuf>,

    /// Compressions the server may answer with, comma-separated (gzip, deflate, zstd, or none),
    /// used when a client lists one in `grpc-accept-encoding`. Requests compressed with any of
    /// gzip, deflate and zstd are always accepted. Default zstd only: Python grpcio lists
    /// deflate and gzip on every call, compression or not, so enabling them compresses every
    /// grpcio client's logits (server CPU for little gain on floats).
    #[arg(
        long,
        env = "TEACHER_SEND_COMPRESSION",
        value_delimiter = ',',
        default_value = "zstd"
    )]
    pub send_compression: Vec<String>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Bytes of one full request and one full response (f32 logits, the widest output; top-k for a
/// sequence model; `output_bytes` per sample of named outputs beside them), plus protobuf
/// framing: the least `--max-message-bytes` that serves `max_batch_size` samples.
pub fn needed_message_bytes(max_batch_size: usize, spec: &ModelSpec, output_bytes: usize) -> usize {
    max_batch_size
        .saturating_mul(
            spec.sample_bytes()
                .saturating_add(spec.response_bytes())
                .saturating_add(output_bytes),
        )
        .saturating_add(64 << 10)
}

/// The default `--max-message-bytes` for `needed` ([`needed_message_bytes`]): doubled for
/// headroom, at least [`MIN_DEFAULT_MESSAGE_BYTES`].
pub fn default_message_bytes(needed: usize) -> usize {
    needed.saturating_mul(2).max(MIN_DEFAULT_MESSAGE_BYTES)
}

/// The command-line name of a kind the wire carries (`f32`, `bf16`, ...).
fn kind_name(kind: Kind) -> &'static str {
    codec::dtype_of(kind).map_or("unsupported", codec::dtype_name)
}

/// Parses a command-line dtype name into its kind.
fn parse_kind(s: &str) -> Result<Kind, String> {
    let dtype = codec::parse_dtype(s)?;
    codec::kind_of(dtype as i32).map_err(|e| e.to_string())
}

/// Dynamic batching settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Largest forward pass (and request) in samples, ≥ 1.
    pub max_batch_size: usize,
    /// Longest wait for more requests to merge with.
    pub max_batch_delay: Duration,
    /// Requests that may wait in the batcher's queue, ≥ 1.
    pub queue_capacity: usize,
}

/// Validated configuration of the server.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the weights come from.
    pub source: ModelSource,
    /// What the model takes and returns.
    pub spec: ModelSpec,
    /// Requested device.
    pub device: DeviceChoice,
    /// Address to bind.
    pub listen: SocketAddr,
    /// Dynamic batching.
    pub batching: BatchConfig,
    /// Largest gRPC message in bytes (decoding and encoding).
    pub max_message_bytes: usize,
    /// Whether `--max-message-bytes` was given; if not, the server raises `max_message_bytes`
    /// once the model's named outputs are known, to fit them at `--max-batch-size`.
    pub max_message_bytes_set: bool,
    /// Batches one stream may have in flight before the server stops reading it.
    pub stream_window: usize,
    /// Address of the metrics and readiness endpoint (`--metrics-listen`), if any.
    pub metrics_listen: Option<SocketAddr>,
    /// Log format.
    pub log_format: LogFormat,
    /// libtorch intra-op threads, if set.
    pub threads: Option<i32>,
    /// Bound on graceful shutdown.
    pub shutdown_grace: Duration,
    /// Precision of the forward pass.
    pub precision: Precision,
    /// TLS material (`--tls-cert`, `--tls-key`, `--tls-client-ca`), read and checked; `None`:
    /// plain text.
    pub tls: Option<TlsSettings>,
    /// Accepted bearer tokens (`--auth-token-file`); empty: no token check.
    pub auth_tokens: Vec<Token>,
    /// Compressions responses may use (`--send-compression`).
    pub send_compression: Vec<CompressionEncoding>,
}

/// Sidecar `FILE.json` next to a TorchScript file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sidecar {
    input_shape: Option<Vec<i64>>,
    input_dtype: Option<String>,
    num_logits: Option<i64>,
    /// A causal LM called as `forward(input_ids, attention_mask)`.
    #[serde(default)]
    sequence_model: bool,
    /// The tokenizer file, relative to the sidecar's folder.
    tokenizer: Option<PathBuf>,
    /// The output holding the logits (`--logits-output`).
    logits_output: Option<String>,
}

/// Path of the sidecar JSON of a TorchScript file: `FILE.json` (e.g. `teacher.pt.json`).
pub fn sidecar_path(model: &Path) -> PathBuf {
    let mut s = model.as_os_str().to_owned();
    s.push(".json");
    PathBuf::from(s)
}

fn parse_listen(flag: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.to_socket_addrs()
        .map_err(|e| ConfigError::Invalid(format!("{flag}: expected HOST:PORT, got {s:?}: {e}")))?
        .next()
        .ok_or_else(|| ConfigError::Invalid(format!("{flag}: {s:?} resolves to no address")))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| ConfigError::Invalid(format!("{}: malformed JSON: {e}", path.display())))
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    /// Checks the flags group by group, in this order (the first problem found is reported):
    /// the model and its spec, batching and threads, the message limit, TLS, tokens,
    /// compression, the device, and the two listen addresses.
    fn try_from(a: Args) -> Result<Config, ConfigError> {
        let (source, spec) = model(&a)?;
        let batching = batching(&a)?;
        if a.threads.is_some_and(|t| t < 1) {
            return Err(ConfigError::Invalid(format!(
                "--threads: expected >= 1, got {}",
                a.threads.unwrap_or_default()
            )));
        }
        let max_message_bytes = max_message_bytes(&a, &spec, batching.max_batch_size)?;
        let tls = tls(&a)?;
        let auth_tokens = match &a.auth_token_file {
            Some(path) => security::load_tokens(path)?,
            None => Vec::new(),
        };
        let send_compression = send_compression(&a.send_compression)?;
        Ok(Config {
            source,
            spec,
            device: a
                .device
                .parse()
                .map_err(|e: DeviceError| ConfigError::Invalid(format!("--device: {e}")))?,
            listen: parse_listen("--listen", &a.listen)?,
            batching,
            max_message_bytes,
            max_message_bytes_set: a.max_message_bytes.is_some(),
            stream_window: a.stream_window,
            metrics_listen: a
                .metrics_listen
                .as_deref()
                .map(|m| parse_listen("--metrics-listen", m))
                .transpose()?,
            log_format: a.log_format,
            threads: a.threads,
            shutdown_grace: Duration::from_secs(a.shutdown_grace_s),
            precision: a.precision,
            tls,
            auth_tokens,
            send_compression,
        })
    }
}

/// What `--model` says of the spec by itself (a checkpoint's manifest, a sidecar, a built-in
/// architecture), before the flags override it.
struct Described {
    /// Where the weights come from.
    source: ModelSource,
    /// Per-sample input shape.
    input_shape: Option<Vec<i64>>,
    /// Input kind (a built-in architecture's is fixed).
    input_dtype: Option<Kind>,
    /// Logits per sample.
    num_logits: Option<i64>,
    /// Whether the model is a causal language model.
    sequence: bool,
    /// The tokenizer file of a sequence model.
    tokenizer: Option<PathBuf>,
    /// The output holding the logits.
    logits_output: Option<String>,
}

/// The model group of flags (`--model`, `--arch`, `--input-shape`, `--input-dtype`,
/// `--num-logits`, `--sequence-model`, `--tokenizer`, `--logits-output`): where the weights come
/// from and the spec, the flags overriding what the model's files say.
fn model(a: &Args) -> Result<(ModelSource, ModelSpec), ConfigError> {
    let flag_dtype = a
        .input_dtype
        .as_deref()
        .map(|s| parse_kind(s).map_err(|e| ConfigError::Invalid(format!("--input-dtype: {e}"))))
        .transpose()?;
    if !a.model.exists() {
        return Err(ConfigError::Invalid(format!(
            "--model {}: no such file or directory",
            a.model.display()
        )));
    }
    let described = if a.model.is_dir() {
        describe_checkpoint(a)?
    } else {
        describe_file(a)?
    };
    let spec = model_spec(a, flag_dtype, &described)?;
    Ok((described.source, spec))
}

/// A checkpoint directory: its manifest gives the architecture and so the whole spec.
fn describe_checkpoint(a: &Args) -> Result<Described, ConfigError> {
    if !Checkpoint::exists(&a.model) {
        return Err(ConfigError::Invalid(format!(
            "--model {}: a directory must be a checkpoint holding checkpoint.json",
            a.model.display()
        )));
    }
    let ck = Checkpoint::open(&a.model)?;
    if let Some(arch) = &a.arch
        && arch.parse::<Arch>()? != ck.meta.arch.arch
    {
        return Err(ConfigError::Invalid(format!(
            "--arch {arch} does not match the checkpoint's architecture {}",
            ck.meta.arch.arch
        )));
    }
    let spec = ck.meta.arch;
    let tokenizer = a.model.join("tokenizer.json");
    // A TorchScript student's checkpoint names its own logits output.
    let logits_output = match &spec.arch {
        Arch::TorchScript(s) => s.logits_output.clone(),
        _ => distill_models::LOGITS_LAYER.to_string(),
    };
    Ok(Described {
        source: ModelSource::Checkpoint {
            dir: a.model.clone(),
        },
        input_shape: Some(spec.input_shape),
        input_dtype: Some(spec.arch.input_kind()),
        num_logits: Some(spec.num_classes),
        sequence: spec.arch.is_sequence_model(),
        tokenizer: tokenizer.is_file().then_some(tokenizer),
        logits_output: Some(logits_output),
    })
}

/// A file: a TorchScript module, or `.safetensors` weights of `--arch`; its sidecar `FILE.json`
/// (if any) gives what a built-in architecture does not fix.
fn describe_file(a: &Args) -> Result<Described, ConfigError> {
    let sidecar_file = sidecar_path(&a.model);
    let sidecar: Option<Sidecar> = if sidecar_file.is_file() {
        Some(read_json(&sidecar_file)?)
    } else {
        None
    };
    let side_dtype = sidecar
        .as_ref()
        .and_then(|s| s.input_dtype.as_deref())
        .map(|s| {
            parse_kind(s).map_err(|e| {
                ConfigError::Invalid(format!("{}: input_dtype: {e}", sidecar_file.display()))
            })
        })
        .transpose()?;
    let source = file_source(a)?;
    let side = sidecar.unwrap_or_default();
    let tokenizer = side.tokenizer.map(|t| {
        sidecar_file
            .parent()
            .map_or_else(|| t.clone(), |dir| dir.join(&t))
    });
    let (input_dtype, sequence, logits_output) = match &source {
        ModelSource::Safetensors { arch, .. } => (
            Some(arch.input_kind()),
            arch.is_sequence_model(),
            Some(distill_models::LOGITS_LAYER.to_string()),
        ),
        _ => (side_dtype, side.sequence_model, side.logits_output),
    };
    Ok(Described {
        source,
        input_shape: side.input_shape,
        input_dtype,
        num_logits: side.num_logits,
        sequence,
        tokenizer,
        logits_output,
    })
}

/// The source of a `--model` file: `.safetensors` weights need `--arch`; any other file is a
/// TorchScript module, which takes no `--arch`.
fn file_source(a: &Args) -> Result<ModelSource, ConfigError> {
    let is_safetensors = a
        .model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    match (&a.arch, is_safetensors) {
        (Some(arch), true) => Ok(ModelSource::Safetensors {
            path: a.model.clone(),
            arch: arch
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("--arch: {e}")))?,
        }),
        (None, true) => Err(ConfigError::Invalid(format!(
            "--model {}: a .safetensors file needs --arch (cnn, mlp, mlp:H1,H2,...)",
            a.model.display()
        ))),
        (Some(arch), false) => Err(ConfigError::Invalid(format!(
            "--arch {arch} applies to .safetensors weights or checkpoint directories, not to TorchScript file {}",
            a.model.display()
        ))),
        (None, false) => Ok(ModelSource::TorchScript {
            path: a.model.clone(),
        }),
    }
}

/// The spec: the flags, else what the model's files say (`described`), else the defaults (f32
/// inputs, i64 for a sequence model); checked for sense.
fn model_spec(
    a: &Args,
    flag_dtype: Option<Kind>,
    described: &Described,
) -> Result<ModelSpec, ConfigError> {
    let logits_output = a
        .logits_output
        .clone()
        .or_else(|| described.logits_output.clone());
    let sequence = described.sequence || a.sequence_model;
    let tokenizer = a.tokenizer.clone().or_else(|| described.tokenizer.clone());
    let input_shape = a
        .input_shape
        .clone()
        .or_else(|| described.input_shape.clone())
        .ok_or_else(|| required("--input-shape", &a.model))?;
    let num_logits = a
        .num_logits
        .or(described.num_logits)
        .ok_or_else(|| required("--num-logits", &a.model))?;
    let input_dtype = flag_dtype.or(described.input_dtype).unwrap_or(if sequence {
        Kind::Int64
    } else {
        Kind::Float
    });
    if input_shape.is_empty()
        || input_shape.len() >= codec::MAX_RANK
        || input_shape.iter().any(|&d| d < 1)
    {
        return Err(ConfigError::Invalid(format!(
            "input shape: expected 1 to {} dimensions, each >= 1, got {input_shape:?}",
            codec::MAX_RANK - 1
        )));
    }
    if num_logits < 1 {
        return Err(ConfigError::Invalid(format!(
            "--num-logits: expected >= 1, got {num_logits}"
        )));
    }
    check_builtin_dtype(described, input_dtype)?;
    let sequence = if sequence {
        Some(sequence_spec(
            &input_shape,
            input_dtype,
            tokenizer.as_deref(),
        )?)
    } else {
        if let Some(t) = &a.tokenizer {
            return Err(ConfigError::Invalid(format!(
                "--tokenizer {}: only sequence models have a tokenizer (see --sequence-model)",
                t.display()
            )));
        }
        None
    };
    Ok(ModelSpec {
        input_shape,
        input_dtype,
        num_logits,
        sequence,
        logits_output,
    })
}

/// The error for a spec value (`flag`) that neither the flags nor a sidecar give.
fn required(flag: &str, model: &Path) -> ConfigError {
    ConfigError::Invalid(format!(
        "{flag} is required for {} (no sidecar {} found)",
        model.display(),
        sidecar_path(model).display()
    ))
}

/// A built-in architecture (a checkpoint's or `--arch`'s) takes one input kind: `input_dtype`
/// must be it.
fn check_builtin_dtype(described: &Described, input_dtype: Kind) -> Result<(), ConfigError> {
    let builtin = match &described.source {
        ModelSource::TorchScript { .. } => None,
        ModelSource::Safetensors { arch, .. } => Some(arch.input_kind()),
        ModelSource::Checkpoint { .. } => described.input_dtype,
    };
    match builtin {
        Some(kind) if input_dtype != kind => Err(ConfigError::Invalid(format!(
            "--input-dtype: this built-in architecture takes {}, got {}",
            kind_name(kind),
            kind_name(input_dtype)
        ))),
        _ => Ok(()),
    }
}

/// What a sequence model adds to its spec: its longest sequence (i64 token ids of input shape
/// `[max_seq_len]`) and the fingerprint of its tokenizer file, if any.
fn sequence_spec(
    input_shape: &[i64],
    input_dtype: Kind,
    tokenizer: Option<&Path>,
) -> Result<SequenceSpec, ConfigError> {
    if input_shape.len() != 1 || input_dtype != Kind::Int64 {
        return Err(ConfigError::Invalid(format!(
            "a sequence model takes i64 token ids of input shape [max_seq_len], got {} {input_shape:?}",
            kind_name(input_dtype)
        )));
    }
    let tokenizer_fingerprint = match tokenizer {
        Some(path) => distill_models::fingerprint::file_fingerprint(path).map_err(|source| {
            ConfigError::Io {
                context: format!("reading the tokenizer {}", path.display()),
                source,
            }
        })?,
        None => String::new(),
    };
    Ok(SequenceSpec {
        max_seq_len: input_shape[0],
        tokenizer_fingerprint,
    })
}

/// The batching group (`--max-batch-size`, `--max-batch-delay-us`, `--queue-capacity`) and
/// `--stream-window`, each count at least 1.
fn batching(a: &Args) -> Result<BatchConfig, ConfigError> {
    if a.max_batch_size == 0 {
        return Err(ConfigError::Invalid(
            "--max-batch-size: expected >= 1, got 0".into(),
        ));
    }
    if a.queue_capacity == 0 || a.stream_window == 0 {
        return Err(ConfigError::Invalid(format!(
            "--queue-capacity and --stream-window: expected >= 1, got {} and {}",
            a.queue_capacity, a.stream_window
        )));
    }
    Ok(BatchConfig {
        max_batch_size: a.max_batch_size as usize,
        max_batch_delay: Duration::from_micros(a.max_batch_delay_us),
        queue_capacity: a.queue_capacity,
    })
}

/// `--max-message-bytes`: as given, if it fits `max_batch_size` samples of `spec`, or the
/// default for them ([`default_message_bytes`]).
fn max_message_bytes(
    a: &Args,
    spec: &ModelSpec,
    max_batch_size: usize,
) -> Result<usize, ConfigError> {
    let needed = needed_message_bytes(max_batch_size, spec, 0);
    match a.max_message_bytes {
        Some(n) if n < needed => Err(ConfigError::Invalid(format!(
            "--max-message-bytes: expected at least {needed} to fit --max-batch-size {max_batch_size} samples of {:?} {} inputs and their logits, got {n}",
            spec.input_shape,
            kind_name(spec.input_dtype)
        ))),
        Some(n) => Ok(n),
        None => Ok(default_message_bytes(needed)),
    }
}

/// The TLS group (`--tls-cert`, `--tls-key`, `--tls-client-ca`): the files read and checked, or
/// `None` for plain text.
fn tls(a: &Args) -> Result<Option<TlsSettings>, ConfigError> {
    match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Ok(Some(TlsSettings::load(
            cert,
            key,
            a.tls_client_ca.as_deref(),
        )?)),
        (None, None) if a.tls_client_ca.is_some() => Err(ConfigError::Invalid(
            "--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key".into(),
        )),
        (None, None) => Ok(None),
        _ => Err(ConfigError::Invalid(
            "--tls-cert and --tls-key: expected both or neither, got one".into(),
        )),
    }
}

/// `--send-compression`: the encodings named, in order, without repeats (`none` adds nothing).
fn send_compression(items: &[String]) -> Result<Vec<CompressionEncoding>, ConfigError> {
    let mut send_compression = Vec::new();
    for item in items {
        if let Some(c) = security::parse_compression(item)
            .map_err(|e| ConfigError::Invalid(format!("--send-compression: {e}")))?
            && !send_compression.contains(&c)
        {
            send_compression.push(c);
        }
    }
    Ok(send_compression)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Result<Config, ConfigError> {
        let mut v = vec!["teacher-server"];
        v.extend_from_slice(extra);
        Config::try_from(Args::try_parse_from(v).unwrap())
    }

    fn torchscript_file(name: &str, sidecar: Option<&str>) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("teacher-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, b"not read by Config").unwrap();
        if let Some(s) = sidecar {
            std::fs::write(sidecar_path(&p), s).unwrap();
        }
        p
    }

    #[test]
    fn sidecar_and_flags_resolve_the_spec() {
        let p = torchscript_file(
            "a.pt",
            Some(r#"{"input_shape":[1,28,28],"input_dtype":"f32","num_logits":10}"#),
        );
        let c = args(&["--model", p.to_str().unwrap(), "--listen", "127.0.0.1:0"]).unwrap();
        assert_eq!(c.spec.input_shape, vec![1, 28, 28]);
        assert_eq!(c.spec.num_logits, 10);
        assert_eq!(c.max_message_bytes, MIN_DEFAULT_MESSAGE_BYTES);
        assert_eq!(c.batching.max_batch_size, 256);
        let c = args(&[
            "--model",
            p.to_str().unwrap(),
            "--input-shape",
            "3,8",
            "--num-logits",
            "5",
            "--max-batch-size",
            "100000",
        ])
        .unwrap();
        assert_eq!(c.spec.input_shape, vec![3, 8]);
        assert_eq!(c.spec.num_logits, 5);
        // 100000 * (96 + 20) bytes + framing, doubled: above tonic's 4 MiB.
        assert_eq!(c.max_message_bytes, 2 * (100_000 * 116 + 65536));
        assert_eq!(c.listen, "127.0.0.1:50051".parse().unwrap());
        // The last occurrence of a flag wins.
        let c = args(&[
            "--model",
            p.to_str().unwrap(),
            "--device",
            "cpu",
            "--device",
            "cuda:1",
        ])
        .unwrap();
        assert_eq!(c.device, DeviceChoice::Cuda(1));
        assert_eq!(c.precision, Precision::F32, "f32 by default");
        for (flag, want) in [
            ("bf16", Precision::Bf16),
            ("f16", Precision::F16),
            ("f32", Precision::F32),
        ] {
            let c = args(&["--model", p.to_str().unwrap(), "--precision", flag]).unwrap();
            assert_eq!(c.precision, want);
            assert_eq!(want.to_string(), flag);
        }
    }

    #[test]
    fn rejects_bad_values_with_expected_and_got() {
        let p = torchscript_file("b.pt", None);
        let m = p.to_str().unwrap();
        let e = args(&["--model", m]).unwrap_err().to_string();
        assert!(e.contains("--input-shape is required"), "{e}");
        let base = ["--model", m, "--input-shape", "1,4", "--num-logits", "3"];
        let with = |x: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(x);
            args(&v).unwrap_err().to_string()
        };
        let e = with(&["--device", "tpu"]);
        assert!(
            e.contains("\"tpu\"") && e.contains("expected auto, cpu, cuda or cuda:N"),
            "{e}"
        );
        assert!(with(&["--max-batch-size", "0"]).contains("expected >= 1"));
        assert!(with(&["--input-dtype", "f8"]).contains("unknown dtype"));
        let e = Args::try_parse_from(["teacher-server", "--model", m, "--precision", "fp8"])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fp8") && e.contains("f32") && e.contains("bf16") && e.contains("f16"),
            "{e}"
        );
        assert!(with(&["--max-message-bytes", "10"]).contains("expected at least"));
        assert!(with(&["--listen", "nonsense"]).contains("--listen"));
        assert!(with(&["--arch", "cnn"]).contains("not to TorchScript"));
        let e = args(&["--model", m, "--input-shape", "0,4", "--num-logits", "3"]).unwrap_err();
        assert!(e.to_string().contains("got [0, 4]"), "{e}");
        let e = args(&["--model", "/nonexistent/x.pt"]).unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
    }

    #[test]
    fn devices_parse() {}
}
