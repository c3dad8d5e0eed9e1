//! Validated configurations, built from the parsed command line with `TryFrom`.
//!
//! Validation here is pure (no file system, no network, no CUDA query), so it is unit-tested on
//! any machine; the data directory, the teacher and the device are checked when a command starts.

use crate::cli::{CaptureArgs, CommonArgs, DistillArgs, EvalArgs, PlotArgs, TrainArgs};
use crate::device::{DeviceChoice, DeviceError};
use crate::endpoint::{GroupSpec, parse_dns_url};
use crate::ensemble::EnsembleMode;
use crate::loss::{DEFAULT_JSD_BETA, DistillLoss, LossKind, check_jsd_beta};
use crate::lr_schedule::LrSchedule;
use crate::optim::OptimizerConfig;
use crate::security::ConnectionConfig;
use crate::wire::TargetRequest;
use distill_models::Arch;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A flag value that is out of range or malformed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A flag with an invalid value.
    #[error("--{flag}: {reason}")]
    Invalid {
        /// The flag, without the dashes.
        flag: &'static str,
        /// What is wrong and what is accepted.
        reason: String,
    },
    /// A malformed `--device`.
    #[error("--device: {0}")]
    Device(#[from] DeviceError),
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        flag,
        reason: reason.into(),
    }
}

/// Which training samples keep their ground-truth label in `distill` (`--labels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelPolicy {
    /// Every sample: loss `alpha * soft + (1 - alpha) * CE`.
    All,
    /// No sample: soft targets only (alpha is 1), a transfer set without labels (Hinton et al.
    /// 2015, section 2).
    None,
    /// Samples with dataset index `< N` keep their labels; the rest use soft targets only.
    First(u64),
}

impl FromStr for LabelPolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "all" => Ok(LabelPolicy::All),
            "none" | "0" => Ok(LabelPolicy::None),
            n => n
                .parse::<u64>()
                .map(LabelPolicy::First)
                .map_err(|_| format!("{s:?} is not all, none or a number of samples")),
        }
    }
}

impl fmt::Display for LabelPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelPolicy::All => write!(f, "all"),
            LabelPolicy::None => write!(f, "none"),
            LabelPolicy::First(n) => write!(f, "{n}"),
        }
    }
}

impl LabelPolicy {
    /// Whether the sample with dataset index `index` keeps its ground-truth label.
    pub fn is_labelled(self, index: i64) -> bool {
        match self {
            LabelPolicy::All => true,
            LabelPolicy::None => false,
            LabelPolicy::First(n) => index >= 0 && (index as u64) < n,
        }
    }
}

/// Settings of a training run, shared by `train` and `distill`.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// Device of the trained network (resolved when the run starts).
    pub device: DeviceChoice,
    /// Architecture of the trained network.
    pub arch: Arch,
    /// IDX directory, .npz file, or text corpus directory.
    pub data_dir: PathBuf,
    /// How a text corpus becomes sequences (`--seq-len`, `--vocab-size`).
    pub text: TextOptions,
    /// Total epochs to reach (≥ 1).
    pub epochs: u64,
    /// Samples per optimizer step (≥ 1).
    pub batch_size: usize,
    /// Optimizer and its hyper-parameters, learning-rate schedule and gradient clipping.
    pub optimizer: OptimizerConfig,
    /// Seed of initialisation, shuffling and dropout.
    pub seed: u64,
    /// Train on the first N samples only.
    pub limit: Option<usize>,
    /// Output directory (checkpoint, metrics.jsonl, report.json).
    pub out: PathBuf,
    /// Continue from the checkpoint in `out`.
    pub resume: bool,
    /// libtorch intra-op threads (`None`: libtorch's default).
    pub threads: Option<usize>,
    /// Evaluate on the test split after each epoch.
    pub epoch_eval: bool,
    /// Where to serve Prometheus metrics and `/readyz` (`--metrics-listen`), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
}

/// How a text corpus is tokenized and packed (only used when `--data-dir` is one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextOptions {
    /// Tokens per sequence (≥ 2).
    pub seq_len: usize,
    /// Vocabulary size of the BPE tokenizer, in `MIN_VOCAB_SIZE..=65536`.
    pub vocab_size: usize,
}

impl Default for TextOptions {
    fn default() -> Self {
        TextOptions {
            seq_len: 128,
            vocab_size: distill_text::DEFAULT_VOCAB_SIZE,
        }
    }
}

/// Settings of `distill`.
#[derive(Debug, Clone)]
pub struct DistillConfig {
    /// The student's training run.
    pub train: TrainConfig,
    /// Teacher groups (one for plain `--teacher` replicas; several for an ensemble), each with
    /// its replica URLs (with scheme, `http://host:port`).
    pub groups: Vec<GroupSpec>,
    /// A batch unanswered this long moves to another replica.
    pub batch_timeout: Duration,
    /// Longest wait with no replica reachable before checkpointing and exiting.
    pub teacher_wait: Duration,
    /// Test-only ledger of trained batches (JSON lines).
    pub batch_ledger: Option<PathBuf>,
    /// How often `dns://` teachers are resolved again.
    pub resolve_interval: Duration,
    /// The distillation loss (kind, temperature, alpha, sparse tail).
    pub loss: DistillLoss,
    /// What each request asks for (`--wire`, `--top-k`, at the loss's temperature).
    pub request: TargetRequest,
    /// How an ensemble's groups share batches (`--ensemble-mode`).
    pub ensemble_mode: EnsembleMode,
    /// Which samples keep their labels.
    pub labels: LabelPolicy,
    /// Batches in flight to the teacher (≥ 1).
    pub prefetch: usize,
    /// Baseline checkpoint to evaluate for the report.
    pub baseline: Option<PathBuf>,
    /// How long to wait for the teacher's connection.
    pub connect_timeout: Duration,
    /// The logit cache directory (`--logit-cache`).
    pub logit_cache: Option<PathBuf>,
    /// Hint distillation (`--hint`), if any.
    pub hint: Option<HintConfig>,
    /// TLS, bearer token and compression of the teacher connections.
    pub connection: ConnectionConfig,
}

/// `distill --hint` settings (FitNets).
#[derive(Debug, Clone, PartialEq)]
pub struct HintConfig {
    /// The teacher output and the student layer.
    pub spec: crate::hint::HintSpec,
    /// MSE or cosine.
    pub loss: crate::hint::HintLoss,
    /// Weight of the hint loss in the KD stage (≥ 0; 0: hint stage only).
    pub weight: f64,
    /// Epochs of hints alone before the KD epochs.
    pub stage_epochs: u64,
}

/// Settings of `capture`.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The teacher's replicas (one group).
    pub groups: Vec<GroupSpec>,
    /// IDX directory or .npz file (its training split is captured).
    pub data_dir: PathBuf,
    /// Capture the first N training samples only.
    pub limit: Option<usize>,
    /// The cache directory.
    pub out: PathBuf,
    /// What each request asks for (wire dtype, top-k, temperature).
    pub request: TargetRequest,
    /// Samples per request (≥ 1).
    pub batch_size: usize,
    /// Samples per shard (≥ 1).
    pub shard_samples: usize,
    /// Batches in flight per replica (≥ 1).
    pub prefetch: usize,
    /// A batch unanswered this long moves to another replica.
    pub batch_timeout: Duration,
    /// Longest wait with no replica reachable.
    pub teacher_wait: Duration,
    /// How long to wait for the teacher's connection.
    pub connect_timeout: Duration,
    /// TLS, bearer token and compression of the teacher connections.
    pub connection: ConnectionConfig,
}

impl DistillConfig {
    /// Whether any sample gives the soft (teacher) term a weight. Not with `--alpha 0` and
    /// `--labels all`: every sample is labelled and weighs the soft term by alpha = 0, so the
    /// loss is the cross-entropy alone and the run needs no teacher. Under `--labels N` or
    /// `none`, unlabelled samples weigh the soft term by 1 whatever alpha is.
    pub fn needs_teacher(&self) -> bool {
        !(self.loss.alpha == 0.0 && self.labels == LabelPolicy::All)
    }
}

/// What `eval` evaluates.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalTarget {
    /// A checkpoint directory.
    Checkpoint(PathBuf),
    /// Teacher-server replicas (one group: URLs with scheme, or `dns://NAME:PORT`), evaluated
    /// through a pool with failover.
    Teachers(Vec<GroupSpec>),
}

/// Settings of `eval`.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// What to evaluate.
    pub target: EvalTarget,
    /// IDX directory, .npz file or text corpus (its test split is used).
    pub data_dir: PathBuf,
    /// How a text corpus is packed for `--teacher` (a checkpoint uses its own).
    pub text: TextOptions,
    /// Device of a checkpoint's network.
    pub device: DeviceChoice,
    /// Samples per forward pass (≥ 1).
    pub batch_size: usize,
    /// JSON on stdout instead of a table.
    pub json: bool,
    /// libtorch intra-op threads.
    pub threads: Option<usize>,
    /// How long to wait for the teacher's connection.
    pub connect_timeout: Duration,
    /// TLS, bearer token and compression of the teacher connections.
    pub connection: ConnectionConfig,
}

/// Adds `http://` to a bare `host:port` and checks the result looks like a URL.
///
/// # Errors
/// [`ConfigError::Invalid`] for an empty URL or a scheme other than http/https.
pub fn teacher_url(flag: &'static str, url: &str) -> Result<String, ConfigError> {
    let url = url.trim();
    if url.is_empty() {
        return Err(invalid(
            flag,
            "empty teacher URL: expected http://HOST:PORT",
        ));
    }
    if url.starts_with("dns://") {
        return match parse_dns_url(url) {
            Some(_) => Ok(url.to_string()),
            None => Err(invalid(flag, format!("{url:?}: expected dns://NAME:PORT"))),
        };
    }
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(invalid(
            flag,
            format!("{url:?}: expected an http:// or https:// URL"),
        ));
    }
    Ok(url)
}

/// Name of the group formed by plain `--teacher` flags.
pub const DEFAULT_GROUP: &str = "teacher";

/// The teacher groups of `distill`: the `--teacher` URLs as group [`DEFAULT_GROUP`] (if any),
/// then each `--teacher-group NAME=URL,URL`, weighted by `--group-weight NAME=W` (default 1).
///
/// # Errors
/// [`ConfigError::Invalid`] for a malformed group, a duplicate name, a group without URLs, a
/// weight for no group, or a negative weight.
pub fn teacher_groups(
    teachers: &[String],
    groups: &[String],
    weights: &[String],
) -> Result<Vec<GroupSpec>, ConfigError> {
    let mut out: Vec<GroupSpec> = Vec::new();
    let urls = |flag: &'static str, list: &mut dyn Iterator<Item = &str>| {
        list.map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| teacher_url(flag, u))
            .collect::<Result<Vec<String>, ConfigError>>()
    };
    let plain = urls("teacher", &mut teachers.iter().map(String::as_str))?;
    if !plain.is_empty() {
        out.push(GroupSpec {
            name: DEFAULT_GROUP.into(),
            weight: 1.0,
            urls: plain,
        });
    }
    for g in groups {
        let Some((name, list)) = g.split_once('=') else {
            return Err(invalid(
                "teacher-group",
                format!("{g:?}: expected NAME=URL,URL,..."),
            ));
        };
        let name = name.trim();
        if name.is_empty() || out.iter().any(|o| o.name == name) {
            return Err(invalid(
                "teacher-group",
                format!("{g:?}: group names must be non-empty and distinct"),
            ));
        }
        let u = urls("teacher-group", &mut list.split(','))?;
        if u.is_empty() {
            return Err(invalid("teacher-group", format!("{g:?}: no URL")));
        }
        out.push(GroupSpec {
            name: name.into(),
            weight: 1.0,
            urls: u,
        });
    }
    if out.is_empty() {
        return Err(invalid(
            "teacher",
            "give --teacher URL (repeatable) or --teacher-group NAME=URL,...",
        ));
    }
    for w in weights {
        let parsed = w
            .split_once('=')
            .and_then(|(n, v)| Some((n.trim(), v.trim().parse::<f64>().ok()?)));
        let Some((name, weight)) = parsed else {
            return Err(invalid("group-weight", format!("{w:?}: expected NAME=W")));
        };
        if !(weight.is_finite() && weight >= 0.0) {
            return Err(invalid("group-weight", format!("{w:?}: W must be ≥ 0")));
        }
        let Some(g) = out.iter_mut().find(|g| g.name == name) else {
            return Err(invalid(
                "group-weight",
                format!("{w:?}: no group named {name:?}"),
            ));
        };
        g.weight = weight;
    }
    if out.iter().map(|g| g.weight).sum::<f64>() <= 0.0 {
        return Err(invalid("group-weight", "the weights sum to 0"));
    }
    Ok(out)
}

/// Every replica URL of `groups`.
fn group_urls(groups: &[GroupSpec]) -> impl Iterator<Item = &str> {
    groups
        .iter()
        .flat_map(|g| g.urls.iter().map(String::as_str))
}

fn timeout(flag: &'static str, seconds: f64) -> Result<Duration, ConfigError> {
    if seconds.is_finite() && seconds > 0.0 && seconds < 1e6 {
        Ok(Duration::from_secs_f64(seconds))
    } else {
        Err(invalid(
            flag,
            format!("{seconds} is not a positive number of seconds"),
        ))
    }
}

fn threads(t: Option<usize>) -> Result<Option<usize>, ConfigError> {
    match t {
        Some(0) => Err(invalid("threads", "must be at least 1")),
        t => Ok(t),
    }
}

impl TryFrom<CommonArgs> for TrainConfig {
    type Error = ConfigError;

    fn try_from(a: CommonArgs) -> Result<Self, ConfigError> {
        TrainConfig::from_common(a, 1)
    }
}

impl TrainConfig {
    /// The settings of `a`, which must ask for at least `min_epochs` epochs (1; 0 for a
    /// `distill` run whose hint stage is all it trains).
    fn from_common(a: CommonArgs, min_epochs: u64) -> Result<Self, ConfigError> {
        let arch = a
            .arch
            .parse::<Arch>()
            .map_err(|e| invalid("arch", e.to_string()))?;
        if a.epochs < min_epochs {
            return Err(invalid("epochs", format!("must be at least {min_epochs}")));
        }
        if a.batch_size == 0 {
            return Err(invalid("batch-size", "must be at least 1"));
        }
        if !(a.lr.is_finite() && a.lr > 0.0) {
            return Err(invalid(
                "lr",
                format!("{} is not a positive learning rate", a.lr),
            ));
        }
        if !(a.momentum.is_finite() && (0.0..1.0).contains(&a.momentum)) {
            return Err(invalid(
                "momentum",
                format!("{} is not in [0, 1)", a.momentum),
            ));
        }
        let kind = a.optimizer;
        // Unset: PyTorch's default for the optimizer (AdamW 0.01, Adam and SGD 0).
        let weight_decay = a
            .weight_decay
            .unwrap_or_else(|| kind.default_weight_decay());
        if !(weight_decay.is_finite() && weight_decay >= 0.0) {
            return Err(invalid(
                "weight-decay",
                format!("{weight_decay} is not a weight decay ≥ 0"),
            ));
        }
        let schedule = LrSchedule {
            kind: a.lr_schedule,
            warmup_steps: a.warmup_steps,
            min_lr: a.min_lr,
        };
        schedule
            .validate(a.lr)
            .map_err(|reason| invalid("min-lr", reason))?;
        if let Some(max) = a.clip_grad_norm
            && !(max.is_finite() && max > 0.0)
        {
            return Err(invalid(
                "clip-grad-norm",
                format!("{max} is not a positive gradient norm"),
            ));
        }
        if a.limit == Some(0) {
            return Err(invalid("limit", "must be at least 1 sample"));
        }
        if a.seq_len < 2 {
            return Err(invalid(
                "seq-len",
                format!(
                    "{} is not a sequence length of at least 2 tokens",
                    a.seq_len
                ),
            ));
        }
        if !(distill_text::MIN_VOCAB_SIZE..=65536).contains(&a.vocab_size) {
            return Err(invalid(
                "vocab-size",
                format!(
                    "expected {} to 65536 tokens, got {}",
                    distill_text::MIN_VOCAB_SIZE,
                    a.vocab_size
                ),
            ));
        }
        Ok(TrainConfig {
            device: a.device.parse()?,
            arch,
            data_dir: a.data_dir,
            text: TextOptions {
                seq_len: a.seq_len,
                vocab_size: a.vocab_size,
            },
            epochs: a.epochs,
            batch_size: a.batch_size,
            optimizer: OptimizerConfig {
                kind,
                lr: a.lr,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay,
                momentum: a.momentum,
                schedule,
                clip_grad_norm: a.clip_grad_norm,
            },
            seed: a.seed,
            limit: a.limit,
            out: a.out,
            resume: a.resume,
            threads: threads(a.threads)?,
            epoch_eval: !a.no_epoch_eval,
            metrics_listen: a
                .metrics_listen
                .as_deref()
                .map(|m| {
                    use std::net::ToSocketAddrs;
                    m.to_socket_addrs()
                        .map_err(|e| {
                            invalid(
                                "metrics-listen",
                                format!("expected HOST:PORT, got {m:?}: {e}"),
                            )
                        })?
                        .next()
                        .ok_or_else(|| {
                            invalid("metrics-listen", format!("{m:?} resolves to no address"))
                        })
                })
                .transpose()?,
        })
    }
}

impl TryFrom<TrainArgs> for TrainConfig {
    type Error = ConfigError;

    fn try_from(a: TrainArgs) -> Result<Self, ConfigError> {
        TrainConfig::try_from(a.common)
    }
}

impl TryFrom<DistillArgs> for DistillConfig {
    type Error = ConfigError;

    fn try_from(a: DistillArgs) -> Result<Self, ConfigError> {
        // `--epochs 0` with a hint stage: the hint stage alone (FitNets' stage 1); a later
        // `--resume` with more epochs distills from there.
        let hint_stage = a.hint.is_some() && a.hint_stage_epochs > 0;
        let train = TrainConfig::from_common(a.common, if hint_stage { 0 } else { 1 })?;
        // Top-32 per position by default for a language model: dense rows of a vocabulary of
        // thousands per token would dwarf the inputs (issue 10).
        let top_k = a.top_k.unwrap_or(if train.arch.is_sequence_model() {
            32
        } else {
            0
        });
        if !(a.temperature.is_finite() && a.temperature > 0.0) {
            return Err(invalid(
                "temperature",
                format!("{} is not positive", a.temperature),
            ));
        }
        if !(a.alpha.is_finite() && (0.0..=1.0).contains(&a.alpha)) {
            return Err(invalid("alpha", format!("{} is not in [0, 1]", a.alpha)));
        }
        let kind = a.loss;
        let jsd_beta = match (kind, a.jsd_beta) {
            (LossKind::Jsd, beta) => {
                let beta = beta.unwrap_or(DEFAULT_JSD_BETA);
                check_jsd_beta(beta).map_err(|reason| invalid("jsd-beta", reason))?;
                beta
            }
            (_, None) => DEFAULT_JSD_BETA,
            (other, Some(beta)) => {
                return Err(invalid(
                    "jsd-beta",
                    format!("{beta} given, but only --loss jsd uses it (got --loss {other})"),
                ));
            }
        };
        let labels: LabelPolicy = a.labels.parse().map_err(|e: String| invalid("labels", e))?;
        if a.prefetch == 0 {
            return Err(invalid("prefetch", "must be at least 1 batch"));
        }
        // Without labels the soft targets carry the whole loss (Hinton et al. 2015, section 2).
        let alpha = if labels == LabelPolicy::None {
            1.0
        } else {
            a.alpha
        };
        let groups = if a.teacher.is_empty() && a.teacher_group.is_empty() {
            // --logit-cache alone (clap requires one of the three).
            Vec::new()
        } else {
            teacher_groups(&a.teacher, &a.teacher_group, &a.group_weight)?
        };
        if a.logit_cache.is_some() && groups.len() > 1 {
            return Err(invalid(
                "logit-cache",
                format!(
                    "a logit cache holds the soft targets of one teacher, got {} teacher groups \
                     (use one --teacher, or no --logit-cache)",
                    groups.len()
                ),
            ));
        }
        if top_k > 0 && kind == LossKind::Mse {
            return Err(invalid(
                "top-k",
                format!(
                    "--loss mse needs every logit, got --top-k {top_k} (use --loss kl, rkl or jsd, \
                     or --top-k 0)"
                ),
            ));
        }
        let hint = match a.hint.as_deref() {
            None => {
                if a.hint_stage_epochs > 0 {
                    return Err(invalid(
                        "hint-stage-epochs",
                        format!(
                            "trains on hints alone, got {} epochs without --hint",
                            a.hint_stage_epochs
                        ),
                    ));
                }
                None
            }
            Some(h) => {
                let spec: crate::hint::HintSpec = h
                    .parse()
                    .map_err(|e: crate::hint::HintError| invalid("hint", e.to_string()))?;
                if a.logit_cache.is_some() {
                    return Err(invalid(
                        "hint",
                        "hints are online only: the logit cache holds no features (drop --logit-cache)",
                    ));
                }
                if groups.len() != 1 {
                    return Err(invalid(
                        "hint",
                        format!(
                            "hints come from one teacher, got {} teacher groups (use one --teacher)",
                            groups.len()
                        ),
                    ));
                }
                if train.arch.is_sequence_model() {
                    return Err(invalid(
                        "hint",
                        "a language-model student has no named hidden layers to hint",
                    ));
                }
                if !(a.hint_weight.is_finite() && a.hint_weight >= 0.0) {
                    return Err(invalid(
                        "hint-weight",
                        format!("expected a finite number >= 0, got {}", a.hint_weight),
                    ));
                }
                Some(HintConfig {
                    spec,
                    loss: a.hint_loss,
                    weight: a.hint_weight,
                    stage_epochs: a.hint_stage_epochs,
                })
            }
        };
        if top_k > 0 && a.ensemble_mode == EnsembleMode::Mix && groups.len() > 1 {
            return Err(invalid(
                "top-k",
                format!(
                    "--ensemble-mode mix mixes dense probabilities of every group, got --top-k {top_k} \
                     with {} teacher groups (use --ensemble-mode sample, or --top-k 0)",
                    groups.len()
                ),
            ));
        }
        Ok(DistillConfig {
            train,
            batch_timeout: timeout("batch-timeout", a.batch_timeout)?,
            teacher_wait: timeout("teacher-wait", a.teacher_wait)?,
            batch_ledger: a.batch_ledger,
            resolve_interval: timeout("resolve-interval", a.resolve_interval)?,
            loss: DistillLoss {
                kind,
                temperature: a.temperature,
                alpha,
                sparse_tail: a.sparse_tail,
                jsd_beta,
            },
            request: TargetRequest {
                wire: a.wire,
                top_k,
                temperature: a.temperature,
                hint_output: hint.as_ref().map(|h| h.spec.teacher_output.clone()),
            },
            ensemble_mode: a.ensemble_mode,
            labels,
            prefetch: a.prefetch,
            baseline: a.baseline,
            connect_timeout: timeout("connect-timeout", a.connect_timeout)?,
            logit_cache: a.logit_cache,
            hint,
            connection: ConnectionConfig::from_args(a.connection, group_urls(&groups))?,
            groups,
        })
    }
}

impl TryFrom<CaptureArgs> for CaptureConfig {
    type Error = ConfigError;

    fn try_from(a: CaptureArgs) -> Result<Self, ConfigError> {
        if !(a.temperature.is_finite() && a.temperature > 0.0) {
            return Err(invalid(
                "temperature",
                format!("{} is not positive", a.temperature),
            ));
        }
        for (flag, v) in [
            ("batch-size", a.batch_size),
            ("shard-samples", a.shard_samples),
            ("prefetch", a.prefetch),
        ] {
            if v == 0 {
                return Err(invalid(flag, "must be at least 1"));
            }
        }
        let groups = teacher_groups(&a.teacher, &[], &[])?;
        Ok(CaptureConfig {
            connection: ConnectionConfig::from_args(a.connection, group_urls(&groups))?,
            groups,
            data_dir: a.data_dir,
            limit: a.limit,
            out: a.out,
            request: TargetRequest {
                wire: a.wire,
                top_k: a.top_k,
                temperature: a.temperature,
                hint_output: None,
            },
            batch_size: a.batch_size,
            shard_samples: a.shard_samples,
            prefetch: a.prefetch,
            batch_timeout: timeout("batch-timeout", a.batch_timeout)?,
            teacher_wait: timeout("teacher-wait", a.teacher_wait)?,
            connect_timeout: timeout("connect-timeout", a.connect_timeout)?,
        })
    }
}

impl TryFrom<EvalArgs> for EvalConfig {
    type Error = ConfigError;

    fn try_from(a: EvalArgs) -> Result<Self, ConfigError> {
        let target = match (a.checkpoint, a.teacher.is_empty()) {
            (Some(dir), true) => EvalTarget::Checkpoint(dir),
            (None, false) => EvalTarget::Teachers(teacher_groups(&a.teacher, &[], &[])?),
            _ => {
                return Err(invalid(
                    "checkpoint",
                    "give exactly one of --checkpoint DIR or --teacher URL",
                ));
            }
        };
        if a.batch_size == 0 {
            return Err(invalid("batch-size", "must be at least 1"));
        }
        let connection = match &target {
            EvalTarget::Teachers(groups) => {
                ConnectionConfig::from_args(a.connection, group_urls(groups))?
            }
            EvalTarget::Checkpoint(_) => ConnectionConfig::default(),
        };
        Ok(EvalConfig {
            connection,
            target,
            data_dir: a.data_dir,
            text: TextOptions {
                seq_len: a.seq_len,
                vocab_size: a.vocab_size,
            },
            device: a.device.parse()?,
            batch_size: a.batch_size,
            json: a.json,
            threads: threads(a.threads)?,
            connect_timeout: timeout("connect-timeout", a.connect_timeout)?,
        })
    }
}

/// Settings of `plot`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotConfig {
    /// The run directories, in legend order (at least one).
    pub runs: Vec<PathBuf>,
    /// The PNG file to write (ends in `.png`).
    pub output: PathBuf,
    /// Image width in pixels, in [[`crate::plot::MIN_SIDE`], [`crate::plot::MAX_SIDE`]].
    pub width: u32,
    /// Image height in pixels, in the same range.
    pub height: u32,
}

impl TryFrom<PlotArgs> for PlotConfig {
    type Error = ConfigError;

    fn try_from(a: PlotArgs) -> Result<Self, ConfigError> {
        use crate::plot::{MAX_SIDE, MIN_SIDE};
        if a.runs.is_empty() {
            return Err(invalid("runs", "give at least one run directory"));
        }
        let is_png = a
            .output
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !is_png {
            return Err(invalid(
                "output",
                format!("{}: expected a .png file name", a.output.display()),
            ));
        }
        for (flag, v) in [("width", a.width), ("height", a.height)] {
            if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
                return Err(invalid(
                    flag,
                    format!("{v} pixels: expected {MIN_SIDE} to {MAX_SIDE}"),
                ));
            }
        }
        Ok(PlotConfig {
            runs: a.runs,
            output: a.output,
            width: a.width,
            height: a.height,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use crate::loss::LossKind;
    use crate::optim::OptimizerKind;
    use clap::Parser;

    fn parse(args: &[&str]) -> Command {
        let mut v = vec!["student-trainer"];
        v.extend_from_slice(args);
        Cli::try_parse_from(v).expect("parses").command
    }

    fn distill(args: &[&str]) -> Result<DistillConfig, ConfigError> {
        let mut v = vec!["distill", "--teacher", "127.0.0.1:50051"];
        v.extend_from_slice(args);
        match parse(&v) {
            Command::Distill(a) => DistillConfig::try_from(a),
            other => panic!("{other:?}"),
        }
    }

    fn train(args: &[&str]) -> Result<TrainConfig, ConfigError> {
        let mut v = vec!["train"];
        v.extend_from_slice(args);
        match parse(&v) {
            Command::Train(a) => TrainConfig::try_from(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_match_the_reference_loop() {
        let c = distill(&[]).unwrap();
        assert_eq!(c.groups.len(), 1);
        assert_eq!(c.groups[0].urls, ["http://127.0.0.1:50051"]);
        assert_eq!(c.loss.temperature, 4.0);
        assert_eq!(c.loss.alpha, 0.9);
        assert_eq!(c.labels, LabelPolicy::All);
        assert!(c.prefetch >= 2);
        let t = &c.train;
        assert_eq!((t.batch_size, t.optimizer.lr, t.seed), (128, 1e-3, 0));
        assert_eq!(t.optimizer.kind, OptimizerKind::Adam);
        assert_eq!(t.arch.to_string(), "mlp");
        assert_eq!(t.data_dir, PathBuf::from("data/fashion-mnist"));
        assert_eq!(t.device, DeviceChoice::Auto);
        assert!(!t.resume && t.limit.is_none());
    }

    #[test]
    fn flags_are_carried_over() {
        let c = distill(&[
            "--arch",
            "mlp:64,32",
            "--labels",
            "1000",
            "--loss",
            "mse",
            "--temperature",
            "2",
            "--alpha",
            "0.5",
            "--prefetch",
            "8",
            "--device",
            "cuda:1",
            "--limit",
            "500",
            "--optimizer",
            "sgd",
            "--resume",
            "--epochs",
            "3",
            "--seed",
            "7",
        ])
        .unwrap();
        assert_eq!(c.labels, LabelPolicy::First(1000));
        assert_eq!(c.loss.kind, LossKind::Mse);
        assert_eq!(
            (c.loss.temperature, c.loss.alpha, c.prefetch),
            (2.0, 0.5, 8)
        );
        assert_eq!(c.train.device, DeviceChoice::Cuda(1));
        assert_eq!(
            c.train.arch,
            Arch::Mlp {
                hidden: vec![64, 32]
            }
        );
        assert_eq!(c.train.optimizer.kind, OptimizerKind::Sgd);
        assert_eq!(
            (c.train.limit, c.train.epochs, c.train.seed),
            (Some(500), 3, 7)
        );
        assert!(c.train.resume);
    }

    #[test]
    fn soft_target_flags_parse_and_bad_combinations_name_the_flags() {
        let c = distill(&[
            "--wire",
            "bf16",
            "--top-k",
            "3",
            "--sparse-tail",
            "uniform",
            "--temperature",
            "2",
        ])
        .unwrap();
        assert_eq!(
            c.request,
            TargetRequest {
                wire: crate::wire::WireDType::Bf16,
                top_k: 3,
                temperature: 2.0,
                hint_output: None,
            }
        );
        assert_eq!(c.loss.sparse_tail, crate::loss::SparseTail::Uniform);
        assert_eq!(c.ensemble_mode, EnsembleMode::Mix);
        let d = distill(&[]).unwrap();
        assert_eq!(
            (d.request.wire.to_string(), d.request.top_k),
            ("f32".into(), 0)
        );
        assert_eq!(d.loss.sparse_tail.to_string(), "bucket");
        let e = distill(&["--loss", "mse", "--top-k", "4"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--top-k") && e.contains("--loss mse"), "{e}");
        let groups = [
            "--teacher-group",
            "a=127.0.0.1:1",
            "--teacher-group",
            "b=127.0.0.1:2",
        ];
        let mut two = vec!["distill"];
        two.extend_from_slice(&groups);
        two.extend_from_slice(&["--top-k", "2"]);
        let Command::Distill(args) = parse(&two) else {
            panic!("distill")
        };
        let e = DistillConfig::try_from(args.clone())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--top-k")
                && e.contains("--ensemble-mode")
                && e.contains("2 teacher groups"),
            "{e}"
        );
        let mut hinted = vec!["distill"];
        hinted.extend_from_slice(&groups);
        hinted.extend_from_slice(&["--hint", "features=h1"]);
        let Command::Distill(hinted_args) = parse(&hinted) else {
            panic!("distill")
        };
        let e = DistillConfig::try_from(hinted_args)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("one teacher") && e.contains("2 teacher groups"),
            "{e}"
        );
        let d = distill(&[
            "--hint",
            "conv=c2",
            "--hint-loss",
            "cosine",
            "--hint-weight",
            "0",
            "--hint-stage-epochs",
            "3",
        ])
        .unwrap();
        let h = d.hint.unwrap();
        assert_eq!(
            (h.spec.to_string(), h.loss, h.weight, h.stage_epochs),
            ("conv=c2".to_string(), crate::hint::HintLoss::Cosine, 0.0, 3)
        );
        assert_eq!(d.request.hint_output.as_deref(), Some("conv"));
        let sampled = DistillConfig::try_from(DistillArgs {
            ensemble_mode: EnsembleMode::Sample,
            ..args
        })
        .unwrap();
        assert_eq!(sampled.ensemble_mode, EnsembleMode::Sample);
    }

    #[test]
    fn optimizer_schedule_and_clipping_flags() {
        use crate::lr_schedule::LrScheduleKind;
        let t = train(&[
            "--optimizer",
            "adamw",
            "--lr",
            "3e-4",
            "--lr-schedule",
            "cosine",
            "--warmup-steps",
            "100",
            "--min-lr",
            "3e-5",
            "--clip-grad-norm",
            "1.0",
        ])
        .unwrap();
        let o = t.optimizer;
        assert_eq!(o.kind, OptimizerKind::AdamW);
        // AdamW's weight decay defaults to PyTorch's 0.01.
        assert_eq!((o.lr, o.weight_decay), (3e-4, 0.01));
        assert_eq!(
            o.schedule,
            LrSchedule {
                kind: LrScheduleKind::Cosine,
                warmup_steps: 100,
                min_lr: 3e-5
            }
        );
        assert_eq!(o.clip_grad_norm, Some(1.0));
        assert!(o.validate().is_ok());
        // An explicit --weight-decay wins; Adam and SGD default to 0.
        let t = train(&["--optimizer", "adamw", "--weight-decay", "0"]).unwrap();
        assert_eq!(t.optimizer.weight_decay, 0.0);
        let t = train(&["--optimizer", "adam", "--weight-decay", "0.1"]).unwrap();
        assert_eq!(t.optimizer.weight_decay, 0.1);
        for opt in ["adam", "sgd"] {
            assert_eq!(
                train(&["--optimizer", opt]).unwrap().optimizer.weight_decay,
                0.0
            );
        }
        // Defaults: constant rate, no warm-up, no clipping.
        let d = train(&[]).unwrap().optimizer;
        assert_eq!(
            (d.schedule, d.clip_grad_norm),
            (LrSchedule::default(), None)
        );
        // A constant schedule with warm-up.
        let w = train(&["--warmup-steps", "10"]).unwrap().optimizer.schedule;
        assert_eq!((w.kind, w.warmup_steps), (LrScheduleKind::Constant, 10));
    }

    #[test]
    fn rkl_and_jsd_losses_parse_with_beta() {
        let c = distill(&["--loss", "rkl", "--top-k", "8"]).unwrap();
        assert_eq!((c.loss.kind, c.request.top_k), (LossKind::Rkl, 8));
        let c = distill(&["--loss", "jsd"]).unwrap();
        assert_eq!((c.loss.kind, c.loss.jsd_beta), (LossKind::Jsd, 0.5));
        let c = distill(&["--loss", "jsd", "--jsd-beta", "0.1", "--top-k", "4"]).unwrap();
        assert_eq!(c.loss.jsd_beta, 0.1);
        for beta in ["0", "1", "1.5", "-0.2", "nan"] {
            let e = distill(&["--loss", "jsd", &format!("--jsd-beta={beta}")])
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("--jsd-beta: ") && e.contains("0 < beta < 1"),
                "{beta}: {e}"
            );
        }
        let e = distill(&["--loss", "kl", "--jsd-beta", "0.3"])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--jsd-beta: ") && e.contains("--loss jsd") && e.contains("--loss kl"),
            "{e}"
        );
    }

    #[test]
    fn only_alpha_zero_with_every_label_needs_no_teacher() {
        assert!(!distill(&["--alpha", "0"]).unwrap().needs_teacher());
        assert!(distill(&["--alpha", "0.1"]).unwrap().needs_teacher());
        // Unlabelled samples keep the soft term at weight 1.
        assert!(
            distill(&["--alpha", "0", "--labels", "10"])
                .unwrap()
                .needs_teacher()
        );
        assert!(
            distill(&["--alpha", "0", "--labels", "none"])
                .unwrap()
                .needs_teacher()
        );
    }

    #[test]
    fn labels_none_forces_alpha_one() {
        let c = distill(&["--labels", "none", "--alpha", "0.3"]).unwrap();
        assert_eq!(c.labels, LabelPolicy::None);
        assert_eq!(c.loss.alpha, 1.0);
    }

    #[test]
    fn label_policy_marks_the_first_n_samples() {
        let p = LabelPolicy::First(3);
        let marks: Vec<bool> = (0..5).map(|i| p.is_labelled(i)).collect();
        assert_eq!(marks, [true, true, true, false, false]);
        assert!(LabelPolicy::All.is_labelled(10_000));
        assert!(!LabelPolicy::None.is_labelled(0));
        assert_eq!("1000".parse::<LabelPolicy>().unwrap().to_string(), "1000");
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["--temperature", "0"], "--temperature"),
            (&["--alpha", "1.5"], "--alpha"),
            (&["--labels", "some"], "--labels"),
            (&["--prefetch", "0"], "--prefetch"),
            (&["--epochs", "0"], "--epochs"),
            (&["--batch-size", "0"], "--batch-size"),
            (&["--lr=-1"], "--lr"),
            (&["--arch", "resnet"], "--arch"),
            (&["--device", "tpu"], "--device"),
            (&["--limit", "0"], "--limit"),
            (&["--connect-timeout", "0"], "--connect-timeout"),
            (&["--batch-timeout", "0"], "--batch-timeout"),
            (&["--teacher-wait", "0"], "--teacher-wait"),
            (&["--weight-decay=-1"], "--weight-decay"),
            (&["--min-lr=-1", "--lr-schedule", "cosine"], "--min-lr"),
            (&["--min-lr", "1", "--lr-schedule", "cosine"], "--min-lr"),
            (&["--min-lr", "1e-5"], "--min-lr"),
            (&["--clip-grad-norm", "0"], "--clip-grad-norm"),
            (&["--clip-grad-norm=-1"], "--clip-grad-norm"),
            (&["--clip-grad-norm", "inf"], "--clip-grad-norm"),
        ];
        for (args, flag) in cases {
            let err = distill(args).unwrap_err().to_string();
            assert!(err.starts_with(flag), "{args:?}: {err}");
        }
        // Hints: what each refusal names.
        let hint_cases: &[(&[&str], &str, &str)] = &[
            (
                &["--hint", "features"],
                "--hint",
                "TEACHER_OUTPUT=STUDENT_LAYER",
            ),
            (
                &["--hint-stage-epochs", "2"],
                "--hint-stage-epochs",
                "without --hint",
            ),
            (
                &["--hint", "features=h1", "--logit-cache", "/tmp/c"],
                "--hint",
                "online only",
            ),
            (
                &["--hint", "features=h1", "--arch", "lm"],
                "--hint",
                "language-model",
            ),
            (
                &["--hint", "features=h1", "--hint-weight=-1"],
                "--hint-weight",
                "-1",
            ),
        ];
        for (args, flag, what) in hint_cases {
            let err = distill(args).unwrap_err().to_string();
            assert!(
                err.starts_with(flag) && err.contains(what),
                "{args:?}: {err}"
            );
        }
        assert!(train(&["--threads", "0"]).is_err());
        // Enumerated flags are checked by clap, which lists the accepted values.
        for args in [
            ["distill", "--teacher", "h:1", "--loss", "hinge"],
            ["train", "--optimizer", "lbfgs", "--lr", "1"],
            ["train", "--lr-schedule", "linear", "--lr", "1"],
        ] {
            let mut v = vec!["student-trainer"];
            v.extend_from_slice(&args);
            let e = Cli::try_parse_from(v).unwrap_err().to_string();
            assert!(e.contains("possible values"), "{args:?}: {e}");
        }
        // A negative or fractional warm-up is refused by clap, naming the flag.
        for bad in ["--warmup-steps=-5", "--warmup-steps=1.5"] {
            let e = Cli::try_parse_from(["student-trainer", "train", bad])
                .unwrap_err()
                .to_string();
            assert!(e.contains("--warmup-steps"), "{bad}: {e}");
        }
        let Command::Distill(a) = parse(&["distill", "--teacher", "ftp://x"]) else {
            panic!()
        };
        let e = DistillConfig::try_from(a).unwrap_err().to_string();
        assert!(e.contains("http"), "{e}");
    }

    #[test]
    fn replicas_and_groups_parse_with_weights() {
        let c = distill(&["--teacher", "b:2,c:3", "--batch-timeout", "2"]).unwrap();
        assert_eq!(
            c.groups[0].urls,
            ["http://127.0.0.1:50051", "http://b:2", "http://c:3"]
        );
        assert_eq!(c.batch_timeout, Duration::from_secs(2));
        assert_eq!(c.teacher_wait, Duration::from_secs(300));
        let g = teacher_groups(
            &[],
            &["a=h:1,h:2".into(), "b=h:3".into()],
            &["a=0.7".into(), "b=0.3".into()],
        )
        .unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].name.as_str(), g[0].weight), ("a", 0.7));
        assert_eq!(g[0].urls, ["http://h:1", "http://h:2"]);
        assert_eq!(
            (g[1].name.as_str(), g[1].weight, g[1].urls.len()),
            ("b", 0.3, 1)
        );
        for (groups, weights) in [
            (vec!["a"], vec![]),
            (vec!["a=h:1", "a=h:2"], vec![]),
            (vec!["a="], vec![]),
            (vec!["a=h:1"], vec!["b=1"]),
            (vec!["a=h:1"], vec!["a=-1"]),
            (vec!["a=h:1"], vec!["a=0"]),
        ] {
            let groups: Vec<String> = groups.into_iter().map(String::from).collect();
            let weights: Vec<String> = weights.into_iter().map(String::from).collect();
            assert!(
                teacher_groups(&[], &groups, &weights).is_err(),
                "{groups:?} {weights:?}"
            );
        }
        assert!(teacher_groups(&[], &[], &[]).is_err());
    }

    #[test]
    fn eval_needs_exactly_one_target() {
        let mk = |args: &[&str]| {
            let mut v = vec!["student-trainer", "eval"];
            v.extend_from_slice(args);
            Cli::try_parse_from(v)
        };
        assert!(mk(&[]).is_err());
        assert!(mk(&["--checkpoint", "a", "--teacher", "b"]).is_err());
        assert!(
            mk(&[
                "--checkpoint",
                "a",
                "--data-dir",
                "d",
                "--device",
                "cpu",
                "--json"
            ])
            .is_ok()
        );
        let teachers = |args: &[&str]| {
            let Command::Eval(a) = mk(args).unwrap().command else {
                panic!()
            };
            match EvalConfig::try_from(a).unwrap().target {
                EvalTarget::Teachers(groups) => groups,
                other => panic!("{other:?}"),
            }
        };
        let one = teachers(&["--teacher", "localhost:1"]);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].urls, ["http://localhost:1"]);
        // Several replicas and dns:// names form one group, as in distill.
        let many = teachers(&["--teacher", "a:1", "--teacher", "dns://teachers:50051,b:2"]);
        assert_eq!(many.len(), 1);
        assert_eq!(
            many[0].urls,
            ["http://a:1", "dns://teachers:50051", "http://b:2"]
        );
        let Command::Eval(a) = mk(&["--teacher", "dns://nameonly"]).unwrap().command else {
            panic!()
        };
        let e = EvalConfig::try_from(a).unwrap_err().to_string();
        assert!(e.contains("dns://NAME:PORT"), "{e}");
    }

    fn plot(args: &[&str]) -> Result<PlotConfig, ConfigError> {
        let mut v = vec!["plot"];
        v.extend_from_slice(args);
        match parse(&v) {
            Command::Plot(a) => PlotConfig::try_from(a),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn plot_takes_run_dirs_a_png_and_a_bounded_size() {
        let c = plot(&["runs/baseline", "runs/distilled", "-o", "runs/report.png"]).unwrap();
        assert_eq!(
            c.runs,
            [
                PathBuf::from("runs/baseline"),
                PathBuf::from("runs/distilled")
            ]
        );
        assert_eq!(c.output, PathBuf::from("runs/report.png"));
        assert_eq!(
            (c.width, c.height),
            (crate::plot::DEFAULT_WIDTH, crate::plot::DEFAULT_HEIGHT)
        );
        let c = plot(&[
            "r", "--output", "x.PNG", "--width", "640", "--height", "480",
        ])
        .unwrap();
        assert_eq!((c.width, c.height), (640, 480));
        let e = plot(&["r", "-o", "curves.jpg"]).unwrap_err().to_string();
        assert!(e.contains("--output") && e.contains(".png"), "{e}");
        let e = plot(&["r", "--width", "10"]).unwrap_err().to_string();
        assert!(e.contains("--width: 10 pixels"), "{e}");
        let e = plot(&["r", "--height", "100000"]).unwrap_err().to_string();
        assert!(e.contains("--height"), "{e}");
        assert!(Cli::try_parse_from(["student-trainer", "plot"]).is_err());
    }
}
