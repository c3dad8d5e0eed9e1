//! Command line and validated configuration.
//!
//! [`Args`] is what clap parses (every flag also reads a `TEACHER_…` environment variable);
//! [`Config`] is what the server runs with, produced by `TryFrom<Args>`, which checks every value
//! and resolves what the model expects (input shape and dtype, number of logits) from flags, the
//! TorchScript sidecar `FILE.json`, or a checkpoint's `checkpoint.json`.

use crate::error::Error;
use crate::security::{self, TlsSettings};
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

    /// Batches (requests) that may wait for the model across all streams; beyond it a batch gets
    /// RESOURCE_EXHAUSTED with a retry hint.
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

    /// libtorch intra-op threads for the forward pass (default: libtorch's choice).
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

/// Precision of the teacher's forward pass (`--precision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Precision {
    /// 32-bit floats: the weights as trained.
    #[default]
    F32,
    /// bfloat16 (8-bit exponent, 7-bit mantissa: f32's range, ~3 significant digits).
    Bf16,
    /// IEEE half (5-bit exponent, 10-bit mantissa: values up to 65504).
    F16,
}

impl Precision {
    /// The libtorch kind: `Float`, `BFloat16` or `Half`.
    pub fn kind(self) -> Kind {
        match self {
            Precision::F32 => Kind::Float,
            Precision::Bf16 => Kind::BFloat16,
            Precision::F16 => Kind::Half,
        }
    }

    /// The wire `DType` reported in `ModelInfo.precision`.
    pub fn dtype(self) -> distill_proto::v1::DType {
        match self {
            Precision::F32 => distill_proto::v1::DType::F32,
            Precision::Bf16 => distill_proto::v1::DType::Bf16,
            Precision::F16 => distill_proto::v1::DType::F16,
        }
    }

    /// The flag's spelling: `f32`, `bf16` or `f16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::F16 => "f16",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where the teacher's weights come from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A TorchScript module saved with `torch.jit.save`.
    TorchScript {
        /// The `.pt` file.
        path: PathBuf,
    },
    /// A checkpoint directory (`checkpoint.json`, the manifest naming its weights file).
    Checkpoint {
        /// The directory.
        dir: PathBuf,
    },
    /// A built-in architecture with weights from a safetensors file.
    Safetensors {
        /// The `.safetensors` file.
        path: PathBuf,
        /// The architecture.
        arch: Arch,
    },
}

/// What the model takes and returns.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Per-sample input shape (no batch dimension), every dimension ≥ 1.
    pub input_shape: Vec<i64>,
    /// Input dtype: one of the kinds the wire carries (f32, f16, bf16, f64, u8, i32, i64).
    pub input_dtype: Kind,
    /// Logits per sample (per position of a sequence model: the vocabulary size).
    pub num_logits: i64,
    /// `Some` for a sequence model (a causal LM): `input_shape` is `[max_seq_len]`, the input
    /// dtype i64 token ids, and logits are `[batch, seq, num_logits]`.
    pub sequence: Option<SequenceSpec>,
    /// The output holding the logits (`--logits-output`); `None`: the model's only output (a
    /// model with several is refused at load).
    pub logits_output: Option<String>,
}

/// What a sequence model (a causal language model) adds to its [`ModelSpec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceSpec {
    /// Longest sequence accepted, in tokens (= `input_shape[0]`).
    pub max_seq_len: i64,
    /// Hex SHA-256 of the tokenizer file's bytes; empty when none was given.
    pub tokenizer_fingerprint: String,
}

/// Top-k per position that the default `--max-message-bytes` of a sequence model makes room
/// for (dense logits of a large vocabulary are refused per batch with a hint to use top-k).
pub const SEQUENCE_DEFAULT_TOP_K: usize = 64;

impl ModelSpec {
    /// Bytes of one sample's input (a sequence model: a full-length sequence and its i64 mask).
    pub fn sample_bytes(&self) -> usize {
        let input = self.input_shape.iter().product::<i64>() as usize
            * self.input_dtype.elt_size_in_bytes();
        match &self.sequence {
            Some(s) => input + s.max_seq_len as usize * 8,
            None => input,
        }
    }

    /// Bytes of one sample's largest default response: f32 logits, or for a sequence model
    /// [`SEQUENCE_DEFAULT_TOP_K`] f32 values and i64 indices per position plus two f32
    /// log-sum-exps.
    pub fn response_bytes(&self) -> usize {
        match &self.sequence {
            Some(s) => s.max_seq_len as usize * (SEQUENCE_DEFAULT_TOP_K * 12 + 8),
            None => self.num_logits as usize * 4,
        }
    }
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
#[derive(Debug, Deserialize)]
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

fn parse_listen(flag: &str, s: &str) -> Result<SocketAddr, Error> {
    s.to_socket_addrs()
        .map_err(|e| Error::Config(format!("{flag}: expected HOST:PORT, got {s:?}: {e}")))?
        .next()
        .ok_or_else(|| Error::Config(format!("{flag}: {s:?} resolves to no address")))
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        context: format!("reading {}", path.display()),
        source,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::Config(format!("{}: malformed JSON: {e}", path.display())))
}

impl TryFrom<Args> for Config {
    type Error = Error;

    fn try_from(a: Args) -> Result<Config, Error> {
        let flag_dtype = a
            .input_dtype
            .as_deref()
            .map(|s| parse_kind(s).map_err(|e| Error::Config(format!("--input-dtype: {e}"))))
            .transpose()?;
        if !a.model.exists() {
            return Err(Error::Config(format!(
                "--model {}: no such file or directory",
                a.model.display()
            )));
        }
        let (source, shape, dtype, logits, sequence, tokenizer, logits_output) = if a.model.is_dir()
        {
            if !Checkpoint::exists(&a.model) {
                return Err(Error::Config(format!(
                    "--model {}: a directory must be a checkpoint holding checkpoint.json",
                    a.model.display()
                )));
            }
            let ck = Checkpoint::open(&a.model)?;
            if let Some(arch) = &a.arch
                && arch.parse::<Arch>()? != ck.meta.arch.arch
            {
                return Err(Error::Config(format!(
                    "--arch {arch} does not match the checkpoint's architecture {}",
                    ck.meta.arch.arch
                )));
            }
            let spec = ck.meta.arch;
            let tokenizer = a.model.join("tokenizer.json");
            (
                ModelSource::Checkpoint {
                    dir: a.model.clone(),
                },
                Some(spec.input_shape),
                Some(spec.arch.input_kind()),
                Some(spec.num_classes),
                spec.arch.is_sequence_model(),
                tokenizer.is_file().then_some(tokenizer),
                Some(distill_models::LOGITS_LAYER.to_string()),
            )
        } else {
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
                        Error::Config(format!("{}: input_dtype: {e}", sidecar_file.display()))
                    })
                })
                .transpose()?;
            let is_safetensors = a
                .model
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
            let source = match (&a.arch, is_safetensors) {
                (Some(arch), true) => ModelSource::Safetensors {
                    path: a.model.clone(),
                    arch: arch
                        .parse()
                        .map_err(|e| Error::Config(format!("--arch: {e}")))?,
                },
                (None, true) => {
                    return Err(Error::Config(format!(
                        "--model {}: a .safetensors file needs --arch (cnn, mlp, mlp:H1,H2,...)",
                        a.model.display()
                    )));
                }
                (Some(arch), false) => {
                    return Err(Error::Config(format!(
                        "--arch {arch} applies to .safetensors weights or checkpoint directories, not to TorchScript file {}",
                        a.model.display()
                    )));
                }
                (None, false) => ModelSource::TorchScript {
                    path: a.model.clone(),
                },
            };
            let side = sidecar.unwrap_or(Sidecar {
                input_shape: None,
                input_dtype: None,
                num_logits: None,
                sequence_model: false,
                tokenizer: None,
                logits_output: None,
            });
            let sequence = match &source {
                ModelSource::Safetensors { arch, .. } => arch.is_sequence_model(),
                _ => side.sequence_model,
            };
            let tokenizer = side.tokenizer.map(|t| {
                sidecar_file
                    .parent()
                    .map_or_else(|| t.clone(), |dir| dir.join(&t))
            });
            let dtype = match &source {
                ModelSource::Safetensors { arch, .. } => Some(arch.input_kind()),
                _ => side_dtype,
            };
            let logits_output = match &source {
                ModelSource::Safetensors { .. } => Some(distill_models::LOGITS_LAYER.to_string()),
                _ => side.logits_output,
            };
            (
                source,
                side.input_shape,
                dtype,
                side.num_logits,
                sequence,
                tokenizer,
                logits_output,
            )
        };
        let logits_output = a.logits_output.clone().or(logits_output);
        let sequence = sequence || a.sequence_model;
        let tokenizer = a.tokenizer.clone().or(tokenizer);
        let input_shape = a.input_shape.clone().or(shape).ok_or_else(|| {
            Error::Config(format!(
                "--input-shape is required for {} (no sidecar {} found)",
                a.model.display(),
                sidecar_path(&a.model).display()
            ))
        })?;
        let num_logits = a.num_logits.or(logits).ok_or_else(|| {
            Error::Config(format!(
                "--num-logits is required for {} (no sidecar {} found)",
                a.model.display(),
                sidecar_path(&a.model).display()
            ))
        })?;
        let input_dtype =
            flag_dtype
                .or(dtype)
                .unwrap_or(if sequence { Kind::Int64 } else { Kind::Float });
        if input_shape.is_empty()
            || input_shape.len() >= codec::MAX_RANK
            || input_shape.iter().any(|&d| d < 1)
        {
            return Err(Error::Config(format!(
                "input shape: expected 1 to {} dimensions, each >= 1, got {input_shape:?}",
                codec::MAX_RANK - 1
            )));
        }
        if num_logits < 1 {
            return Err(Error::Config(format!(
                "--num-logits: expected >= 1, got {num_logits}"
            )));
        }
        let builtin = match &source {
            ModelSource::TorchScript { .. } => None,
            ModelSource::Safetensors { arch, .. } => Some(arch.input_kind()),
            ModelSource::Checkpoint { .. } => dtype,
        };
        if let Some(kind) = builtin
            && input_dtype != kind
        {
            return Err(Error::Config(format!(
                "--input-dtype: this built-in architecture takes {}, got {}",
                kind_name(kind),
                kind_name(input_dtype)
            )));
        }
        let sequence = if sequence {
            if input_shape.len() != 1 || input_dtype != Kind::Int64 {
                return Err(Error::Config(format!(
                    "a sequence model takes i64 token ids of input shape [max_seq_len], got {} {input_shape:?}",
                    kind_name(input_dtype)
                )));
            }
            let tokenizer_fingerprint = match &tokenizer {
                Some(path) => {
                    distill_models::fingerprint::file_fingerprint(path).map_err(|source| {
                        Error::Io {
                            context: format!("reading the tokenizer {}", path.display()),
                            source,
                        }
                    })?
                }
                None => String::new(),
            };
            Some(SequenceSpec {
                max_seq_len: input_shape[0],
                tokenizer_fingerprint,
            })
        } else {
            if let Some(t) = &a.tokenizer {
                return Err(Error::Config(format!(
                    "--tokenizer {}: only sequence models have a tokenizer (see --sequence-model)",
                    t.display()
                )));
            }
            None
        };
        let spec = ModelSpec {
            input_shape,
            input_dtype,
            num_logits,
            sequence,
            logits_output,
        };
        if a.max_batch_size == 0 {
            return Err(Error::Config(
                "--max-batch-size: expected >= 1, got 0".into(),
            ));
        }
        if a.queue_capacity == 0 || a.stream_window == 0 {
            return Err(Error::Config(format!(
                "--queue-capacity and --stream-window: expected >= 1, got {} and {}",
                a.queue_capacity, a.stream_window
            )));
        }
        if a.threads.is_some_and(|t| t < 1) {
            return Err(Error::Config(format!(
                "--threads: expected >= 1, got {}",
                a.threads.unwrap_or_default()
            )));
        }
        let max_batch_size = a.max_batch_size as usize;
        let needed = needed_message_bytes(max_batch_size, &spec, 0);
        let max_message_bytes = match a.max_message_bytes {
            Some(n) if n < needed => {
                return Err(Error::Config(format!(
                    "--max-message-bytes: expected at least {needed} to fit --max-batch-size {max_batch_size} samples of {:?} {} inputs and their logits, got {n}",
                    spec.input_shape,
                    kind_name(spec.input_dtype)
                )));
            }
            Some(n) => n,
            None => default_message_bytes(needed),
        };
        let tls = match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => {
                Some(TlsSettings::load(cert, key, a.tls_client_ca.as_deref())?)
            }
            (None, None) if a.tls_client_ca.is_some() => {
                return Err(Error::Config(
                    "--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key".into(),
                ));
            }
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "--tls-cert and --tls-key: expected both or neither, got one".into(),
                ));
            }
        };
        let auth_tokens = match &a.auth_token_file {
            Some(path) => security::load_tokens(path)?,
            None => Vec::new(),
        };
        let mut send_compression = Vec::new();
        for item in &a.send_compression {
            if let Some(c) = security::parse_compression(item)
                .map_err(|e| Error::Config(format!("--send-compression: {e}")))?
                && !send_compression.contains(&c)
            {
                send_compression.push(c);
            }
        }
        Ok(Config {
            source,
            spec,
            device: a
                .device
                .parse()
                .map_err(|e: DeviceError| Error::Config(format!("--device: {e}")))?,
            listen: parse_listen("--listen", &a.listen)?,
            batching: BatchConfig {
                max_batch_size,
                max_batch_delay: Duration::from_micros(a.max_batch_delay_us),
                queue_capacity: a.queue_capacity,
            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> Result<Config, Error> {
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
