//! `train` (and the training half of `distill`): [`TrainConfig`] from [`CommonArgs`].

use super::error::{ConfigError, invalid, threads};
use super::images::image_options;
use super::text::files_options;
use crate::cli::{CommonArgs, TrainArgs};
use crate::data::TextOptions;
use crate::optim::{LrSchedule, OptimizerConfig};
use crate::training::TrainConfig;
use distill_models::Arch;
use std::net::SocketAddr;

impl TryFrom<CommonArgs> for TrainConfig {
    type Error = ConfigError;

    fn try_from(a: CommonArgs) -> Result<Self, ConfigError> {
        from_common(a, 1)
    }
}

impl TryFrom<TrainArgs> for TrainConfig {
    type Error = ConfigError;

    fn try_from(a: TrainArgs) -> Result<Self, ConfigError> {
        TrainConfig::try_from(a.common)
    }
}

/// The settings of `a`, which must ask for at least `min_epochs` epochs (1; 0 for a `distill`
/// run whose hint stage is all it trains).
pub(super) fn from_common(a: CommonArgs, min_epochs: u64) -> Result<TrainConfig, ConfigError> {
    if let (Some(student), Some(arch)) = (&a.student, &a.arch) {
        return Err(invalid(
            "student",
            format!(
                "{} and --arch {arch} together: a student is a TorchScript file (--student) or a \
                 built-in architecture (--arch), not both",
                student.display()
            ),
        ));
    }
    if let (Some(name), None) = (&a.student_logits_output, &a.student) {
        return Err(invalid(
            "student-logits-output",
            format!("{name} names an output of a TorchScript student: it needs --student FILE.pt"),
        ));
    }
    let arch = a
        .arch
        .as_deref()
        .unwrap_or("mlp")
        .parse::<Arch>()
        .map_err(|e| invalid("arch", e.to_string()))?;
    if a.epochs < min_epochs {
        return Err(invalid("epochs", format!("must be at least {min_epochs}")));
    }
    if a.batch_size == 0 {
        return Err(invalid("batch-size", "must be at least 1"));
    }
    let optimizer = optimizer(&a)?;
    if a.limit == Some(0) {
        return Err(invalid("limit", "must be at least 1 sample"));
    }
    let text = text_options(&a)?;
    let images = image_options(a.images, None, a.augment)?;
    Ok(TrainConfig {
        device: a.device.parse()?,
        arch,
        arch_given: a.arch.is_some(),
        student: a.student,
        student_logits_output: a.student_logits_output,
        init: a.init,
        text,
        images,
        data_dir: a.data_dir,
        epochs: a.epochs,
        batch_size: a.batch_size,
        optimizer,
        seed: a.seed,
        limit: a.limit,
        out: a.out,
        resume: a.resume,
        threads: threads(a.threads)?,
        epoch_eval: !a.no_epoch_eval,
        metrics_listen: metrics_listen(a.metrics_listen.as_deref())?,
        stop_after_steps: a.stop_after_steps,
    })
}

/// `--optimizer`, `--lr`, `--momentum`, `--weight-decay`, the learning-rate schedule and
/// `--clip-grad-norm`.
fn optimizer(a: &CommonArgs) -> Result<OptimizerConfig, ConfigError> {
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
    Ok(OptimizerConfig {
        kind,
        lr: a.lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay,
        momentum: a.momentum,
        schedule,
        clip_grad_norm: a.clip_grad_norm,
    })
}

/// `--seq-len`, `--vocab-size` and the text-file flags of a text corpus.
fn text_options(a: &CommonArgs) -> Result<TextOptions, ConfigError> {
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
    Ok(TextOptions {
        seq_len: a.seq_len,
        vocab_size: a.vocab_size,
        files: files_options(&a.text_files, true)?,
    })
}

/// `--metrics-listen HOST:PORT`, resolved to its first address.
fn metrics_listen(m: Option<&str>) -> Result<Option<SocketAddr>, ConfigError> {
    use std::net::ToSocketAddrs;
    m.map(|m| {
        m.to_socket_addrs()
            .map_err(|e| {
                invalid(
                    "metrics-listen",
                    format!("expected HOST:PORT, got {m:?}: {e}"),
                )
            })?
            .next()
            .ok_or_else(|| invalid("metrics-listen", format!("{m:?} resolves to no address")))
    })
    .transpose()
}
