//! Command line: `student-trainer train | distill | capture | eval | plot`.
//!
//! Every flag has an environment-variable equivalent (`STUDENT_…`); the names of the common flags
//! (`--device`, `--arch`, `--data-dir`, `--epochs`, `--batch-size`, `--lr`, `--optimizer`,
//! `--seed`, `--limit`, `--out`, `--resume`) are kept stable: scripts and the README use them.
//! Parsing only checks syntax; the config validates the values. This module holds the clap
//! structs only: the domain enums the flags name come from their own modules.

use crate::ensemble::EnsembleMode;
use crate::hint::HintLoss;
use crate::images::Augment;
use crate::loss::{LossKind, SparseTail};
use crate::on_policy::OnPolicyEstimator;
use crate::optim::{LrScheduleKind, OptimizerKind};
use crate::soft_targets::WireDType;
use crate::teachers::Compression;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// `student-trainer`: supervised training, knowledge distillation from a `teacher-server`, and
/// evaluation.
#[derive(Debug, Parser)]
#[command(
    name = "student-trainer",
    version,
    about,
    long_about = None,
    after_help = "Exit status: 0 on success; 1 on an error (one `error: ...` line on stderr); \
                  130 after Ctrl-C (SIGINT) and 143 after SIGTERM, once `train` or `distill` has \
                  saved a checkpoint at the current batch (`--resume` continues from it). Signals \
                  within 1 s of the first are the same request; a second signal later than that \
                  exits at once. A closed stdout (`| head`) ends the command quietly."
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, env = "STUDENT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ordinary supervised training on labels (for the teacher, and the no-distillation baseline).
    Train(TrainArgs),
    /// Online distillation: train a student on the logits a teacher-server streams back (or on
    /// a logit cache).
    Distill(DistillArgs),
    /// Capture a teacher's soft targets for a whole dataset into a logit cache, offline.
    Capture(CaptureArgs),
    /// Accuracy (overall and per class) of a checkpoint, or of a remote teacher, on the test split.
    Eval(EvalArgs),
    /// Training curves of run directories as a PNG: loss, test accuracy and samples/s per epoch,
    /// and the final test accuracy of each run (and of the teacher, from report.json).
    Plot(PlotArgs),
    /// A built-in architecture's named layers (what a teacher serves as named outputs and a
    /// student can be hinted at) with their per-sample output shapes, and its parameter count.
    Describe(DescribeArgs),
}

/// Flags shared by `train` and `distill`.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Device of the network being trained: auto (CUDA when available), cpu, cuda, cuda:N.
    #[arg(long, env = "STUDENT_DEVICE", default_value = "auto")]
    pub device: String,
    /// Architecture: cnn, mlp (one hidden layer of 128), mlp:H1,H2,..., or a decoder-only
    /// language model lm:layers=L,d=D,heads=H (default lm:layers=2,d=128,heads=4). Default mlp
    /// (or the architecture of --init's checkpoint); not with --student.
    #[arg(long, env = "STUDENT_ARCH")]
    pub arch: Option<String>,
    /// A TorchScript student instead of --arch: a module exported from PyTorch
    /// (torch.jit.script or torch.jit.trace, then torch.jit.save; scripts/export_student.py)
    /// with its initial weights, trained in place through libtorch. Its sidecar FILE.pt.json (or
    /// FILE.json) may give input_dtype, logits_output, and input_shape, num_logits and
    /// sequence_model, which must then match the data. A causal LM is called as
    /// forward(input_ids, attention_mask). The checkpoint holds the trained module
    /// (student.<hash>.pt) and its state_dict() (model.<hash>.safetensors).
    #[arg(long, env = "STUDENT_STUDENT", value_name = "FILE.pt")]
    pub student: Option<PathBuf>,
    /// With --student: the output holding the logits when the module returns several (a tuple
    /// position 0, 1, ... or a dict key); the others are its layers for --hint.
    #[arg(long, env = "STUDENT_STUDENT_LOGITS_OUTPUT", value_name = "NAME")]
    pub student_logits_output: Option<String>,
    /// Start the student from the weights of this checkpoint (a built-in student's, or a
    /// TorchScript student's: its module, buffers included) with a fresh optimizer, at epoch 0:
    /// distilling a pretrained student. Without --arch or --student the student is the
    /// checkpoint's. Ignored when --resume finds a checkpoint in --out.
    #[arg(long, env = "STUDENT_INIT", value_name = "DIR")]
    pub init: Option<PathBuf>,
    /// Dataset: a directory of IDX files (Fashion-MNIST layout, .gz or raw), an .npz file with
    /// `inputs`/`labels` arrays (int `inputs [N, S]` with next-token `labels [N, S]` for a
    /// language model), or a text corpus directory holding the GCIDE dictionary
    /// (`gcide.dict.dz`, `make setup` puts it in data/gcide): it is tokenized with a byte-level
    /// BPE tokenizer (trained once, kept in DIR/bpe-VOCAB/tokenizer.json) and packed into
    /// sequences of --seq-len tokens, every 20th dictionary entry held out for the test split.
    /// With --tokenizer: a directory of .txt and .jsonl files (your own text).
    /// An image folder is ROOT/train/CLASS/*.png|jpg|jpeg with ROOT/test/CLASS/... (see the
    /// image flags).
    #[arg(long, env = "STUDENT_DATA_DIR", default_value = "data/fashion-mnist")]
    pub data_dir: PathBuf,
    /// How an image folder's images become the student's inputs.
    #[command(flatten)]
    pub images: ImageArgs,
    /// Image folder: augment the training images: crop (random resized crop, 8 % to 100 % of
    /// the area at aspect ratios 3/4 to 4/3, resized back; torchvision's RandomResizedCrop),
    /// flip (horizontal, p = 0.5), crop,flip, or none. Drawn from the seed, epoch, batch and
    /// sample, so a resumed run repeats them. In distill the teacher gets the same crop of each
    /// image in its own view (function matching); not with --logit-cache.
    #[arg(long, env = "STUDENT_AUGMENT", default_value = "none")]
    pub augment: Augment,
    /// Text corpus: tokens per training sequence.
    #[arg(long, env = "STUDENT_SEQ_LEN", default_value_t = 128)]
    pub seq_len: usize,
    /// Text corpus: vocabulary size of the BPE tokenizer (258 to 65536; its first two ids are
    /// <|endoftext|> and <|pad|>). Not used with --tokenizer (its vocabulary counts).
    #[arg(long, env = "STUDENT_VOCAB_SIZE", default_value_t = distill_text::DEFAULT_VOCAB_SIZE)]
    pub vocab_size: usize,
    /// Your own text files, read with the teacher's tokenizer.
    #[command(flatten)]
    pub text_files: TextFilesArgs,
    /// Total number of epochs (with --resume: the epoch count to reach, not extra epochs).
    #[arg(long, env = "STUDENT_EPOCHS", default_value_t = 5)]
    pub epochs: u64,
    /// Samples per optimizer step.
    #[arg(long, env = "STUDENT_BATCH_SIZE", default_value_t = 128)]
    pub batch_size: usize,
    /// Learning rate (with --lr-schedule: the peak, reached after the warm-up).
    #[arg(long, env = "STUDENT_LR", default_value_t = 1e-3)]
    pub lr: f64,
    /// Optimizer: adam (torch.optim.Adam), adamw (torch.optim.AdamW: decoupled weight decay)
    /// or sgd (torch.optim.SGD).
    #[arg(long, env = "STUDENT_OPTIMIZER", value_enum, ignore_case = true, default_value_t = OptimizerKind::Adam)]
    pub optimizer: OptimizerKind,
    /// Momentum of SGD (ignored by Adam and AdamW).
    #[arg(long, env = "STUDENT_MOMENTUM", default_value_t = 0.9)]
    pub momentum: f64,
    /// Weight decay. adam and sgd: an L2 penalty added to the gradients (default 0). adamw:
    /// decoupled, every weight shrinks by lr × this before each update (default 0.01, as
    /// torch.optim.AdamW).
    #[arg(long, env = "STUDENT_WEIGHT_DECAY")]
    pub weight_decay: Option<f64>,
    /// Learning-rate schedule over the run's optimizer steps (epochs × batches per epoch):
    /// constant, or cosine (decays from --lr to --min-lr at the end of the run), both after
    /// --warmup-steps of linear warm-up from 0 (as Hugging Face transformers' schedules).
    #[arg(long, env = "STUDENT_LR_SCHEDULE", value_enum, ignore_case = true, default_value_t = LrScheduleKind::Constant)]
    pub lr_schedule: LrScheduleKind,
    /// Optimizer steps of linear learning-rate warm-up from 0 to --lr.
    #[arg(long, env = "STUDENT_WARMUP_STEPS", default_value_t = 0)]
    pub warmup_steps: u64,
    /// The learning rate the cosine schedule ends at (needs --lr-schedule cosine).
    #[arg(long, env = "STUDENT_MIN_LR", default_value_t = 0.0)]
    pub min_lr: f64,
    /// Clip the gradients to this total L2 norm before each step
    /// (torch.nn.utils.clip_grad_norm_); off by default. A NaN or infinite norm stops the run.
    #[arg(long, env = "STUDENT_CLIP_GRAD_NORM")]
    pub clip_grad_norm: Option<f64>,
    /// Seed of weight initialisation, shuffling and dropout; the same seed gives the same run.
    #[arg(long, env = "STUDENT_SEED", default_value_t = 0)]
    pub seed: u64,
    /// Use only the first N training samples (quick runs, the small-data baseline).
    #[arg(long, env = "STUDENT_LIMIT")]
    pub limit: Option<usize>,
    /// Output directory: checkpoint (checkpoint.json naming model.<hash>.safetensors and
    /// optimizer.<hash>.safetensors, saved atomically), metrics.jsonl, report.json.
    #[arg(long, env = "STUDENT_OUT", default_value = "runs/student")]
    pub out: PathBuf,
    /// Continue from the checkpoint in --out: weights, optimizer state, epoch, step, position.
    #[arg(long, env = "STUDENT_RESUME")]
    pub resume: bool,
    /// libtorch intra-op threads of the training thread, which samples too (default: libtorch's
    /// choice, the CPUs); the process's other threads run their tensor work on one thread each.
    #[arg(long, env = "STUDENT_THREADS")]
    pub threads: Option<usize>,
    /// Skip the test-split evaluation at the end of each epoch.
    #[arg(long, env = "STUDENT_NO_EPOCH_EVAL")]
    pub no_epoch_eval: bool,
    /// Serve Prometheus metrics (`/metrics`: samples trained, epoch, step, loss, waits, and per
    /// teacher replica in-flight batches, latency, answers, re-sends, state) and `/readyz` over
    /// plain HTTP on this `HOST:PORT` while the run lasts; port 0 picks a free port (logged).
    /// Off by default.
    #[arg(long, env = "STUDENT_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Test-only: once this process has taken N optimizer steps, raise the stop flag a SIGTERM
    /// raises, so the run saves a checkpoint at the next batch and exits with 143 as after
    /// SIGTERM (a run that ends first ends as usual). A deterministic mid-epoch cut for the
    /// resume tests, without racing a signal against the loop.
    #[arg(long, env = "STUDENT_STOP_AFTER_STEPS", hide = true)]
    pub stop_after_steps: Option<u64>,
}

/// `train` flags.
#[derive(Debug, Clone, Args)]
pub struct TrainArgs {
    /// Flags shared with `distill`.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// `distill` flags.
#[derive(Debug, Clone, Args)]
#[command(mut_arg("teacher", |a| a.required_unless_present_any(["teacher_group", "logit_cache"])))]
pub struct DistillArgs {
    /// Flags shared with `train`.
    #[command(flatten)]
    pub common: CommonArgs,
    /// The teacher replicas and how to reach them.
    #[command(flatten)]
    pub teachers: TeacherArgs,
    /// The normalization of the teacher's view of an image folder.
    #[command(flatten)]
    pub teacher_view: TeacherViewArgs,
    /// An ensemble member: `NAME=URL,URL,...`, the replicas of one teacher (repeat the flag for
    /// each teacher). Each batch goes to one replica of every group; the soft target is the
    /// weighted mean of the groups' probabilities at temperature T (see --group-weight).
    #[arg(long, env = "STUDENT_TEACHER_GROUP", value_delimiter = ';')]
    pub teacher_group: Vec<String>,
    /// Weight of a group in the ensemble, `NAME=W` (default 1 each; normalised to sum 1).
    #[arg(long, env = "STUDENT_GROUP_WEIGHT", value_delimiter = ';')]
    pub group_weight: Vec<String>,
    /// Test-only: append one JSON line per trained batch (epoch, index, batch_id, replica) to
    /// this file.
    #[arg(long, env = "STUDENT_BATCH_LEDGER", hide = true)]
    pub batch_ledger: Option<PathBuf>,
    /// Softmax temperature T of the soft targets (Hinton et al. 2015, eq. 1), from 0.01 to 100:
    /// the range where the T²-scaled loss stays finite and non-zero in f32 (below it the soft
    /// term vanishes, above it the distributions round to uniform; for logit matching use --loss
    /// mse).
    #[arg(long, env = "STUDENT_TEMPERATURE", default_value_t = 4.0)]
    pub temperature: f64,
    /// Weight of the soft-target term for labelled samples; (1 - alpha) weighs their
    /// hard-label cross-entropy. Unlabelled samples (see --labels N or none) keep the soft term
    /// at weight 1 whatever alpha is. With --alpha 0 and --labels all no sample uses the
    /// teacher: distill then trains on the labels alone without contacting it, and warns.
    #[arg(long, env = "STUDENT_ALPHA", default_value_t = 0.9)]
    pub alpha: f64,
    /// Soft-target loss, each at temperature T and scaled by T²: kl (forward KL(teacher ‖
    /// student)), rkl (reverse KL(student ‖ teacher)), jsd (the generalized Jensen–Shannon
    /// divergence of GKD at --jsd-beta) or mse (on raw logits). Default kl, and rkl with
    /// --on-policy (GKD's and on-policy distillation's choice).
    #[arg(long, env = "STUDENT_LOSS", value_enum, ignore_case = true)]
    pub loss: Option<LossKind>,
    /// β of --loss jsd, in (0, 1) (default 0.5): β·KL(p ‖ m) + (1 − β)·KL(q ‖ m) with
    /// m = β·p + (1 − β)·q, p the teacher and q the student (the GKD paper's convention; as β → 0
    /// it tends to β × the forward KL, as β → 1 to (1 − β) × the reverse KL).
    #[arg(long, env = "STUDENT_JSD_BETA")]
    pub jsd_beta: Option<f64>,
    /// The dtype the teacher's logits travel in (converted to f32 on arrival): f32 (exact), f16
    /// or bf16 (half the bytes).
    #[arg(long, env = "STUDENT_WIRE", value_enum, ignore_case = true, default_value_t = WireDType::F32)]
    pub wire: WireDType,
    /// Soft targets as the teacher's top K logits of each sample (of each position, for a
    /// language model) plus the log-sum-exp of the rest at temperature T (computed by the
    /// teacher from the full row); 0: dense rows. Default 0, and 32 for a language model (--arch
    /// lm...). Needs --loss kl, rkl or jsd, and --ensemble-mode sample with several teacher
    /// groups.
    #[arg(long, env = "STUDENT_TOP_K")]
    pub top_k: Option<u32>,
    /// With --top-k: what the divergence does with the teacher's mass outside the top K.
    /// bucket: one extra outcome against the student's own mass outside the same K classes;
    /// uniform: spread evenly over the other classes; renorm: dropped, both sides renormalised
    /// over the K.
    #[arg(long, env = "STUDENT_SPARSE_TAIL", value_enum, ignore_case = true, default_value_t = SparseTail::Bucket)]
    pub sparse_tail: SparseTail,
    /// With several --teacher-group: mix (every group answers every batch; probabilities mixed)
    /// or sample (one group per batch, drawn with the group weights from the seed, epoch and
    /// batch index: one teacher forward per batch).
    #[arg(long, env = "STUDENT_ENSEMBLE_MODE", value_enum, ignore_case = true, default_value_t = EnsembleMode::Mix)]
    pub ensemble_mode: EnsembleMode,
    /// Which samples keep their ground-truth labels: all, none (soft targets only, alpha is
    /// then 1), or N (the samples with index < N keep labels and use --alpha; the rest use the
    /// soft term alone, at weight 1).
    #[arg(long, env = "STUDENT_LABELS", default_value = "all")]
    pub labels: String,
    /// A checkpoint of the same student trained without distillation, evaluated for the report.
    #[arg(long, env = "STUDENT_BASELINE")]
    pub baseline: Option<PathBuf>,
    /// A logit cache directory. With --teacher: the first epoch asks the teacher and fills the
    /// cache (in the --wire/--top-k format), later epochs read it without calling the teacher.
    /// Without --teacher: every epoch reads a complete cache (from `student-trainer capture`
    /// or an earlier run). A cache whose teacher, precision, wire format, top-k, temperature or
    /// dataset differs from this run's is refused. Needs a single teacher (no --teacher-group).
    #[arg(long, env = "STUDENT_LOGIT_CACHE")]
    pub logit_cache: Option<PathBuf>,
    /// Hint distillation (FitNets, Romero et al. 2015): TEACHER_OUTPUT=STUDENT_LAYER, e.g.
    /// features=h2. The teacher's named output (its ModelInfo lists them) is the target of the
    /// student's named layer (`student-trainer describe --arch ...` lists them) through a learned
    /// regressor: linear for vectors, 1x1 conv for feature maps of the same spatial size. Needs
    /// one teacher group and no --logit-cache.
    #[arg(long, env = "STUDENT_HINT")]
    pub hint: Option<String>,
    /// The hint loss: mse (mean over the batch and every element; FitNets' ½‖·‖² sum differs
    /// by a constant) or cosine (mean of 1 − cosine similarity per sample).
    #[arg(long, env = "STUDENT_HINT_LOSS", value_enum, ignore_case = true, default_value_t = HintLoss::Mse)]
    pub hint_loss: HintLoss,
    /// Weight of the hint loss added to the KD loss after the hint stage; 0: hints in the hint
    /// stage only.
    #[arg(long, env = "STUDENT_HINT_WEIGHT", default_value_t = 1.0)]
    pub hint_weight: f64,
    /// Epochs of hint training alone before the --epochs of KD (FitNets' stage 1): only the
    /// student's layers up to the hinted one and the regressor learn; the optimizer (and its
    /// learning-rate schedule) starts afresh for KD.
    #[arg(long, env = "STUDENT_HINT_STAGE_EPOCHS", default_value_t = 0)]
    pub hint_stage_epochs: u64,
    /// On-policy distillation of a language model.
    #[command(flatten)]
    pub on_policy: OnPolicyArgs,
}

/// On-policy distillation flags of `distill` (language-model students).
#[derive(Debug, Clone, Args)]
pub struct OnPolicyArgs {
    /// On-policy distillation (GKD, Agarwal et al. 2024): each batch is, with probability
    /// LAMBDA (drawn from --seed, the epoch and the batch), the student's own completions of its
    /// prompts, sampled with its current weights and scored by the teacher; otherwise the
    /// off-policy batch (the prompts with their reference completions). The loss covers the
    /// completion tokens only. 0 to 1; language-model students only.
    #[arg(long, env = "STUDENT_ON_POLICY", value_name = "LAMBDA")]
    pub on_policy: Option<f64>,
    /// New tokens the student samples per prompt at most (a completion also ends at the
    /// tokenizer's end-of-sequence token). Default 128.
    #[arg(long, env = "STUDENT_MAX_NEW_TOKENS")]
    pub max_new_tokens: Option<i64>,
    /// Temperature of the student's sampling (0: greedy). Default 1.
    #[arg(long, env = "STUDENT_SAMPLE_TEMPERATURE")]
    pub sample_temperature: Option<f64>,
    /// Nucleus sampling (Holtzman et al. 2020): sample from the smallest set of most probable
    /// tokens whose probability reaches P, in (0, 1]. Default 1 (every token).
    #[arg(long, env = "STUDENT_TOP_P", value_name = "P")]
    pub top_p: Option<f64>,
    /// Prompts as a JSON-lines file, one object per line with the prompt text in
    /// --prompt-field (and a reference completion in --completion-field for the off-policy
    /// batches), tokenized with the corpus's tokenizer. One line in 20 (the 1st, 21st, ...) is
    /// held out for the reverse-KL measurement.
    #[arg(long, env = "STUDENT_PROMPTS", value_name = "FILE.jsonl")]
    pub prompts: Option<PathBuf>,
    /// The field of each --prompts line that holds the prompt.
    #[arg(long, env = "STUDENT_PROMPT_FIELD", default_value = "prompt")]
    pub prompt_field: String,
    /// The field of each --prompts line that holds a reference completion (needed when
    /// --on-policy is below 1: the off-policy batches train on it).
    #[arg(long, env = "STUDENT_COMPLETION_FIELD")]
    pub completion_field: Option<String>,
    /// Prompts from the corpus: the first P tokens of each training sequence (its reference
    /// completion is the rest); the held-out prompts come from the test split.
    #[arg(long, env = "STUDENT_PROMPT_TOKENS", value_name = "P")]
    pub prompt_tokens: Option<usize>,
    /// Cut prompts longer than the context leaves room for (max sequence length −
    /// --max-new-tokens) from the left instead of refusing them.
    #[arg(long, env = "STUDENT_TRUNCATE_PROMPTS")]
    pub truncate_prompts: bool,
    /// The loss of on-policy batches: full (--loss over each position's whole teacher
    /// distribution: dense, or top-k with the tail bucket) or k1 (the sampled-token estimator:
    /// log q(x) − log p(x) at the sampled token as a negative advantage, REINFORCE-style; needs
    /// only the teacher's log-probability of each sampled token).
    #[arg(long, env = "STUDENT_ON_POLICY_ESTIMATOR", value_enum, ignore_case = true, default_value_t = OnPolicyEstimator::Full)]
    pub on_policy_estimator: OnPolicyEstimator,
    /// Held-out prompts on which the teacher-scored reverse KL of the student's own samples is
    /// measured after every epoch (0: not measured).
    #[arg(long, env = "STUDENT_EVAL_PROMPTS", default_value_t = 64)]
    pub eval_prompts: usize,
    /// Decoded held-out prompt/completion pairs kept per epoch in OUT/samples.jsonl.
    #[arg(long, env = "STUDENT_SAMPLES_PER_EPOCH", default_value_t = 4)]
    pub samples_per_epoch: usize,
}

/// `capture` flags.
#[derive(Debug, Clone, Args)]
#[command(mut_arg("teacher", |a| a.required(true)))]
pub struct CaptureArgs {
    /// The teacher replicas and how to reach them.
    #[command(flatten)]
    pub teachers: TeacherArgs,
    /// Dataset: a directory of IDX files, an .npz file, a GCIDE text corpus directory (its
    /// default 8192-token BPE), with --tokenizer a directory of .txt and .jsonl files, or an
    /// image folder; its training split is captured.
    #[arg(long, env = "STUDENT_DATA_DIR", default_value = "data/fashion-mnist")]
    pub data_dir: PathBuf,
    /// Text corpus: tokens per sequence (must match the students' --seq-len).
    #[arg(long, env = "STUDENT_SEQ_LEN", default_value_t = 128)]
    pub seq_len: usize,
    /// Your own text files, read with the teacher's tokenizer (as the students read them).
    #[command(flatten)]
    pub text_files: TextFilesArgs,
    /// An image folder's student view (the students' flags: the cache is keyed by it).
    #[command(flatten)]
    pub images: ImageArgs,
    /// The normalization of the teacher's view of an image folder.
    #[command(flatten)]
    pub teacher_view: TeacherViewArgs,
    /// Capture only the first N training samples (must match the students' --limit).
    #[arg(long, env = "STUDENT_LIMIT")]
    pub limit: Option<usize>,
    /// The logit cache directory to write (created; an interrupted capture is resumed).
    #[arg(long, env = "STUDENT_CACHE_OUT")]
    pub out: PathBuf,
    /// The dtype the logits travel in and are stored in: f32, f16 or bf16.
    #[arg(long, env = "STUDENT_WIRE", value_enum, ignore_case = true, default_value_t = WireDType::F32)]
    pub wire: WireDType,
    /// Store the top K logits of each sample with the log-sum-exp of the rest at --temperature;
    /// 0: dense rows.
    #[arg(long, env = "STUDENT_TOP_K", default_value_t = 0)]
    pub top_k: u32,
    /// Temperature T of the tail's log-sum-exp (top-k only; students must distill at this T),
    /// from 0.01 to 100, the range --temperature of distill accepts.
    #[arg(long, env = "STUDENT_TEMPERATURE", default_value_t = 4.0)]
    pub temperature: f64,
    /// Samples per request (capped by the teacher's max batch size).
    #[arg(long, env = "STUDENT_BATCH_SIZE", default_value_t = 256)]
    pub batch_size: usize,
    /// Samples per shard file.
    #[arg(long, env = "STUDENT_SHARD_SAMPLES", default_value_t = crate::logit_cache::DEFAULT_SHARD_SAMPLES)]
    pub shard_samples: usize,
}

/// `eval` flags.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// A checkpoint directory to evaluate.
    #[arg(
        long,
        env = "STUDENT_CHECKPOINT",
        conflicts_with = "teacher",
        required_unless_present_any = ["teacher", "student"]
    )]
    pub checkpoint: Option<PathBuf>,
    /// A TorchScript student file to evaluate as it is (see `train --student`; its sidecar
    /// applies).
    #[arg(long, env = "STUDENT_STUDENT", value_name = "FILE.pt", conflicts_with_all = ["teacher", "checkpoint"])]
    pub student: Option<PathBuf>,
    /// With --student: the output holding the logits.
    #[arg(long, env = "STUDENT_STUDENT_LOGITS_OUTPUT", value_name = "NAME")]
    pub student_logits_output: Option<String>,
    /// The teacher replicas to evaluate instead of a checkpoint (batches are balanced over them
    /// and a failed replica's batches move to the others, as in distill), and how to reach them.
    #[command(flatten)]
    pub teachers: TeacherArgs,
    /// Dataset directory (IDX), .npz file, image folder, or text corpus directory; its test
    /// split is evaluated (a language model: perplexity and next-token top-1 accuracy). An
    /// image folder is seen as the checkpoint recorded (its classes, size, channels and
    /// normalization; image flags override), or in a teacher's own size and channels.
    #[arg(long, env = "STUDENT_DATA_DIR", default_value = "data/fashion-mnist")]
    pub data_dir: PathBuf,
    /// How an image folder's images become inputs.
    #[command(flatten)]
    pub images: ImageArgs,
    /// The normalization of the teacher's view of an image folder (`--teacher`).
    #[command(flatten)]
    pub teacher_view: TeacherViewArgs,
    /// Text corpus with --teacher: tokens per sequence (a checkpoint's own length is used with
    /// --checkpoint).
    #[arg(long, env = "STUDENT_SEQ_LEN", default_value_t = 128)]
    pub seq_len: usize,
    /// Text corpus with --teacher: vocabulary size of the BPE tokenizer (a checkpoint's own with
    /// --checkpoint).
    #[arg(long, env = "STUDENT_VOCAB_SIZE", default_value_t = distill_text::DEFAULT_VOCAB_SIZE)]
    pub vocab_size: usize,
    /// Your own text files: with --teacher, read as given here; with --checkpoint, read as the
    /// checkpoint's corpus.json says (its tokenizer.json beside it), and a flag given here must
    /// say the same.
    #[command(flatten)]
    pub text_files: TextFilesArgs,
    /// Device of the checkpoint's network: auto, cpu, cuda, cuda:N.
    #[arg(long, env = "STUDENT_DEVICE", default_value = "auto")]
    pub device: String,
    /// Samples per forward pass (capped by the teacher's max batch size).
    #[arg(long, env = "STUDENT_EVAL_BATCH_SIZE", default_value_t = 500)]
    pub batch_size: usize,
    /// Print the result as JSON on stdout instead of a table.
    #[arg(long, env = "STUDENT_JSON")]
    pub json: bool,
    /// libtorch intra-op threads of the evaluation (default: libtorch's choice, the CPUs).
    #[arg(long, env = "STUDENT_THREADS")]
    pub threads: Option<usize>,
}

/// A corpus of your own text files tokenized with the teacher's tokenizer: shared by `train`,
/// `distill`, `capture` and `eval`. --tokenizer turns it on; the other flags need it.
#[derive(Debug, Clone, Default, Args)]
pub struct TextFilesArgs {
    /// The teacher's Hugging Face tokenizer.json (as `AutoTokenizer.save_pretrained` or
    /// `Tokenizer.save` writes it): --data-dir is then read as text files, every .txt and
    /// .jsonl under it (subfolders included, sorted by path, names starting with '.' skipped),
    /// each document followed by the end-of-document token and packed into --seq-len windows;
    /// the vocabulary is the tokenizer's (added tokens included). Token caches go to
    /// DATA/.distill-cache/.
    #[arg(long, env = "STUDENT_TOKENIZER")]
    pub tokenizer: Option<PathBuf>,
    /// How a .txt file is cut into documents: file (the whole file), lines (each non-blank
    /// line) or blank-lines (paragraphs separated by blank lines). Default file. A .jsonl file
    /// holds one document per line.
    #[arg(long, env = "STUDENT_DOCUMENTS")]
    pub documents: Option<distill_text::Documents>,
    /// The field of each .jsonl object that holds its text (default text).
    #[arg(long, env = "STUDENT_TEXT_FIELD")]
    pub text_field: Option<String>,
    /// The end-of-document token (default: the eos_token of a tokenizer_config.json beside the
    /// tokenizer, else the first of <|endoftext|>, </s>, <|end_of_text|>, <eos>, <|eos|>, [EOS]
    /// the tokenizer has).
    #[arg(long, env = "STUDENT_EOS_TOKEN")]
    pub eos_token: Option<String>,
    /// Hold out document i of the corpus (files in path order, documents in file order) for
    /// the test split when i % N == 0 (default 20, as for GCIDE).
    #[arg(long, env = "STUDENT_TEST_EVERY", conflicts_with = "test_data")]
    pub test_every: Option<usize>,
    /// The test split from these text files (a .txt/.jsonl file or a directory of them) instead;
    /// every document of --data-dir then trains (test files inside it are left out).
    #[arg(long, env = "STUDENT_TEST_DATA")]
    pub test_data: Option<PathBuf>,
}

/// How an image folder (`--data-dir ROOT` holding `ROOT/train/CLASS/*.png|jpg|jpeg` and
/// `ROOT/test/CLASS/...`, torchvision's ImageFolder layout; classes are the sorted folder names)
/// becomes the student's inputs: shared by `train`, `distill`, `capture` and `eval`. Refused for
/// other data.
#[derive(Debug, Clone, Default, Args)]
pub struct ImageArgs {
    /// Image folder: the student's image size `H,W` in pixels (one number for a square); every
    /// image is resized to it (bilinear, area-aware when shrinking). Default: the first
    /// training image's size.
    #[arg(long, env = "STUDENT_IMAGE_SIZE")]
    pub image_size: Option<String>,
    /// Image folder: 1 (gray) or 3 (RGB) channels for the student; images are converted (RGB to
    /// gray as PIL's convert("L")), and a teacher may then take the other count. Default: the
    /// first training image's (1 for a grayscale file, 3 otherwise), and a teacher must take
    /// the same.
    #[arg(long, env = "STUDENT_CHANNELS")]
    pub channels: Option<u8>,
    /// Image folder: mean subtracted from each channel after scaling pixels to [0, 1]
    /// (torchvision's Normalize): one value, or one per channel (e.g. 0.485,0.456,0.406).
    /// Default 0.
    #[arg(
        long,
        env = "STUDENT_MEAN",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub mean: Vec<f64>,
    /// Image folder: standard deviation each channel is divided by after the mean: one value,
    /// or one per channel (e.g. 0.229,0.224,0.225), each > 0. Default 1.
    #[arg(long, env = "STUDENT_STD", value_delimiter = ',')]
    pub std: Vec<f64>,
    /// Image folder: the test split's folder (CLASS/*.png|jpg|jpeg, the same classes as the
    /// training split) instead of ROOT/test.
    #[arg(long, env = "STUDENT_TEST_DIR")]
    pub test_dir: Option<PathBuf>,
    /// Image folder: skip files that do not decode (logged, and counted in the load line)
    /// instead of stopping with an error naming the first one.
    #[arg(long, env = "STUDENT_SKIP_BAD_IMAGES")]
    pub skip_bad_images: bool,
    /// Image folder: threads decoding the images at load (default: the CPUs, at most 8).
    #[arg(long, env = "STUDENT_LOADER_THREADS")]
    pub loader_threads: Option<usize>,
}

/// The normalization of the teacher's view of an image folder, where the teacher was trained
/// with other values than the student's `--mean`/`--std` (its size and channels come from its
/// ModelInfo): shared by `distill`, `capture` and `eval --teacher`.
#[derive(Debug, Clone, Default, Args)]
pub struct TeacherViewArgs {
    /// Image folder: the teacher's view's mean per channel (one value, or one per channel of
    /// the teacher's input). Default: --mean.
    #[arg(
        long,
        env = "STUDENT_TEACHER_MEAN",
        value_delimiter = ',',
        allow_hyphen_values = true
    )]
    pub teacher_mean: Option<Vec<f64>>,
    /// Image folder: the teacher's view's standard deviation per channel. Default: --std.
    #[arg(long, env = "STUDENT_TEACHER_STD", value_delimiter = ',')]
    pub teacher_std: Option<Vec<f64>>,
}

/// Where the teacher replicas are, how long to wait for them and how to reach them: shared by
/// `distill`, `capture` and `eval --teacher`.
#[derive(Debug, Clone, Args)]
pub struct TeacherArgs {
    /// URL of a teacher-server replica, e.g. http://127.0.0.1:50051, or dns://NAME:PORT for
    /// every address of NAME (a Kubernetes headless service). Repeat the flag (or give a
    /// comma-separated list) for several replicas of the same teacher: each batch goes to the
    /// replica with the fewest batches outstanding, and a failed replica's batches move to the
    /// others.
    #[arg(long, env = "STUDENT_TEACHER", value_delimiter = ',')]
    pub teacher: Vec<String>,
    /// Seconds a batch may go unanswered before its replica counts as failed and its batches
    /// are re-sent to the other replicas.
    #[arg(long, env = "STUDENT_BATCH_TIMEOUT", default_value_t = 30.0)]
    pub batch_timeout: f64,
    /// Seconds to wait with no teacher replica reachable before giving up (non-zero exit):
    /// `distill` saves a checkpoint first (`--resume` carries on later), `capture` keeps the
    /// shards written so far (run it again to resume).
    #[arg(long, env = "STUDENT_TEACHER_WAIT", default_value_t = 300.0)]
    pub teacher_wait: f64,
    /// Seconds between re-resolutions of `dns://NAME:PORT` teachers (new addresses join as
    /// replicas, vanished ones are retired).
    #[arg(long, env = "STUDENT_RESOLVE_INTERVAL", default_value_t = 30.0)]
    pub resolve_interval: f64,
    /// Seconds to wait for the teacher's connection before giving up.
    #[arg(long, env = "STUDENT_CONNECT_TIMEOUT", default_value_t = 10.0)]
    pub connect_timeout: f64,
    /// Batches in flight per teacher replica (sent and not yet answered), so the teacher's
    /// forward pass overlaps the student's step.
    #[arg(long, env = "STUDENT_PREFETCH", default_value_t = 4)]
    pub prefetch: usize,
    /// TLS, bearer token and compression of the teacher connections.
    #[command(flatten)]
    pub connection: ConnectionArgs,
}

/// How the teacher connections are secured and compressed: TLS, bearer token, compression.
/// Shared by `distill`, `capture` and `eval --teacher`.
#[derive(Debug, Clone, Default, Args)]
pub struct ConnectionArgs {
    /// CA certificate(s) (PEM) that the teachers' certificates must chain to; turns on TLS
    /// (`dns://` replicas are then reached over https). `https://` URLs without it use the
    /// system's roots.
    #[arg(long, env = "STUDENT_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for teachers that require mutual TLS; needs --tls-key.
    #[arg(long, env = "STUDENT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, env = "STUDENT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the teachers' certificate is checked against, instead of each URL's host: the
    /// service name for `dns://` replicas (whose pod addresses are not in the certificate).
    #[arg(long, env = "STUDENT_TLS_SERVER_NAME")]
    pub tls_server_name: Option<String>,
    /// File holding the bearer token sent to the teachers (`authorization: Bearer TOKEN`; one
    /// line). The token can also come from the STUDENT_AUTH_TOKEN environment variable.
    #[arg(long, env = "STUDENT_AUTH_TOKEN_FILE", conflicts_with = "auth_token")]
    pub auth_token_file: Option<PathBuf>,
    /// The bearer token itself. Prefer the environment variable or --auth-token-file: a value
    /// on the command line is visible to other users (`ps`).
    #[arg(long, env = "STUDENT_AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<TokenArg>,
    /// Compression of the requests sent to the teachers (and asked for the answers): none, gzip
    /// or zstd.
    #[arg(long, env = "STUDENT_COMPRESSION", value_enum, ignore_case = true, default_value_t = Compression::None)]
    pub compression: Compression,
}

/// The raw value of `--auth-token` / `STUDENT_AUTH_TOKEN`: any string (so that clap never quotes
/// it in a parse error), with a redacting `Debug`; the config checks it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TokenArg(pub String);

impl std::fmt::Debug for TokenArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenArg(<redacted>)")
    }
}

impl std::str::FromStr for TokenArg {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(TokenArg(s.to_string()))
    }
}

/// `plot` flags.
#[derive(Debug, Clone, Args)]
pub struct PlotArgs {
    /// Run directories (the --out of `train` or `distill`), each holding metrics.jsonl (one JSON
    /// line per epoch) and, after `distill`, report.json. Several are overlaid, one colour each,
    /// named by their directory: e.g. runs/baseline runs/distilled.
    #[arg(value_name = "RUN_DIR", required = true)]
    pub runs: Vec<PathBuf>,
    /// The PNG file to write (replaced if it exists; its directory must exist).
    #[arg(short, long, env = "STUDENT_PLOT_OUTPUT", default_value = "curves.png")]
    pub output: PathBuf,
    /// Image width in pixels.
    #[arg(long, env = "STUDENT_PLOT_WIDTH", default_value_t = crate::outputs::plot::DEFAULT_WIDTH)]
    pub width: u32,
    /// Image height in pixels.
    #[arg(long, env = "STUDENT_PLOT_HEIGHT", default_value_t = crate::outputs::plot::DEFAULT_HEIGHT)]
    pub height: u32,
}

/// `describe` flags.
#[derive(Debug, Clone, Args)]
pub struct DescribeArgs {
    /// Architecture: cnn, mlp, mlp:H1,H2,..., lm:layers=L,d=D,heads=H.
    #[arg(long, env = "STUDENT_ARCH", default_value = "mlp")]
    pub arch: String,
    /// Per-sample input shape, comma-separated (a language model: the sequence length).
    #[arg(long, value_delimiter = ',', default_value = "1,28,28")]
    pub input_shape: Vec<i64>,
    /// Classes (a language model: the vocabulary size).
    #[arg(long, default_value_t = 10)]
    pub num_classes: i64,
}
