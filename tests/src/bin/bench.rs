//! `bench`: throughput of the teacher side on this machine (`make bench`; a benchmark, not a
//! test).
//!
//! One run, one machine. Each row is an independent function that measures one setting in
//! alternating rounds against the other settings of its group (A B A B ...), so slow drifts of
//! the machine (other load, frequency) hit every setting alike, and reports the median of its
//! rounds. Rows implemented:
//!
//! 1. `raw_forward`: the demo's CNN teacher (`cnn`, `[1, 28, 28]` inputs, 10 logits, random
//!    weights: speed does not depend on them) run in this process through the server's own model
//!    loader, at a request's batch (16) and at a full merged batch (256 = 16 streams × 16, the
//!    server's default `--max-batch-size`), in f32 and bf16; against PyTorch's forward of the
//!    same module (`scripts/bench_forward_pytorch.py`: the eager `nn.Module`, `no_grad`, the
//!    same thread count) at the same batches and precisions, one run of it per round.
//! 2. `server`: the real `teacher-server` release binary (beside this one) on a loopback port,
//!    driven by 1, 4 and 16 concurrent streams (each on its own connection, each keeping
//!    `--in-flight` requests of batch 16 outstanding), with dynamic batching (the defaults) and
//!    without it (`--max-batch-size 16`: every forward pass is one request).
//!
//! Also `teacher_kd_error`: the KD loss (T = 4) of a fixed student against the same teacher's
//! logits computed in bf16 and f16, relative to f32 (the same 2,048 inputs, row 1's teacher,
//! seeded so that every run measures the same weights).
//!
//! 3. `distill`: one epoch of online distillation on Fashion-MNIST (`--limit` samples, batch
//!    128, MLP-128 student, row 1's CNN teacher) with the release `teacher-server` and
//!    `student-trainer distill` on loopback (samples/s from `report.json`; student `--threads
//!    1` with the server's default threads, and with `--threads 1` on both, to measure the
//!    split of the 2 cores; and, where the CPU has native bf16, with `--precision bf16` on the
//!    server), against the PyTorch reference loop `scripts/reference/
//!    kd_pytorch.py` (its `student[kd] samples_per_s`) and against the same loop in this
//!    process (`tch`: teacher forward under `no_grad`, student step with Adam and
//!    `student_trainer::loss`).
//! 4. `wire`: bytes per sample of `LogitsResponse` messages built as teacher-server builds them
//!    (dense f32/f16/bf16, top-k 8 and 32 in f32 and bf16) for 10 classes and for a synthetic
//!    32,000-logit teacher, and the relative KD-loss error of each against dense f32 after the
//!    student's decoding. In-process, no server.
//! 5. `cache`: `distill --logit-cache DIR --epochs 3` (row 3's setup): epoch 1 online, epochs
//!    2-3 from the cache (samples/s from `metrics.jsonl`), and the cache's bytes per sample.
//!
//! 6. `compression`: what each gRPC compression (gzip and deflate at level 6 and zstd at its
//!    default level, as tonic compresses) does to a message of 128 u8 Fashion-MNIST images (a
//!    `LogitsRequest`) and of 128 dense f32 logits rows (a `LogitsResponse`, row 4's 10-class
//!    logits): bytes per sample on the wire, and samples/s through compression and
//!    decompression on one thread. In-process, no server.
//!
//! 7. `lm`: token-level distillation of a causal LM. Bytes per token of a
//!    `LogitsResponse` for 64 positions, top-32 in bf16 with the tail against dense f32, at a
//!    vocabulary of 8,192 and a synthetic 152,064 (in-process). And tokens/s of one run of
//!    `student-trainer distill` (student `lm:layers=2,d=128,heads=4`, batch 16, sequences of 128,
//!    top-32, `--lm-sequences` random sequences) from the release `teacher-server` serving
//!    `lm:layers=4,d=256,heads=4` (random weights) on loopback, against the PyTorch reference
//!    loop `scripts/reference/kd_lm_pytorch.py --synthetic` with the same sizes and steps (its
//!    `kd: ... tokens_per_s`), in alternating rounds.
//!
//! 8. `script_student`: a TorchScript student's training step. A scripted MLP (784-256-128-10,
//!    dropout) and CNN (two 3×3 convolutions with BatchNorm and pooling, dropout), exported by
//!    `scripts/bench_torchscript_student.py export` (through `scripts/export_student.py`),
//!    trained for one epoch of `--limit` Fashion-MNIST samples by `student-trainer train
//!    --student` (samples/s from `metrics.jsonl`), against the same module (the eager
//!    `nn.Module` with the file's initial weights) in a plain PyTorch loop (`... train`): batch
//!    128, 1 thread each, Adam at lr 1e-3, cross-entropy. Alternating rounds (trainer, PyTorch,
//!    per model), medians.
//!
//! 9. `opd`: on-policy distillation (`distill --on-policy`) of row 7's student from row 7's
//!    teacher: the student's generation tokens/s in this process with the key/value cache and
//!    with a full forward per token, and one epoch of `student-trainer distill --on-policy 1`
//!    against the served teacher on loopback versus `scripts/reference/opd_pytorch.py` (the
//!    teacher in process), in alternating rounds: completion tokens trained per second of the
//!    loop's wall time, with the generate / score / train split (see `bench/opd.rs`).
//!
//! It prints markdown tables (rows, the wire sizes, then the ratios with their targets, each
//! with whether it is met) and writes `bench.json` (`--out`) with every round, the CPU's
//! model name, flags and core count.

use clap::Parser;
use distill_models::CpuInfo;
use distill_proto::codec;
use distill_tests::trainer::DistillArgs;
use distill_tests::{
    Server, TEACHER_SERVICE, TeacherClient, TempDir, drive_stream, fresh_checkpoint, random_inputs,
    request, v1,
};
use prost::Message;
use serde::Serialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use student_trainer::loss::{DistillLoss, LossKind, SparseTail};
use student_trainer::soft_targets::SoftTargets;
use tch::{Kind, Tensor};
use teacher_server::model::{ModelSource, ModelSpec, Precision};

/// Row 9, on-policy distillation (a module of this binary, beside it).
#[path = "bench/opd.rs"]
mod opd;

/// The allocator of `teacher-server` and `student-trainer` (jemalloc, `malloc` overridden), so
/// that the in-process rows measure what the binaries run.
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Flags of `bench`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench",
    about = "Distillation throughput on this machine: teacher forward, teacher-server over loopback, \
             online distillation against PyTorch, wire sizes, the logit cache."
)]
struct Cli {
    /// Where to write the results as JSON.
    #[arg(long, default_value = "runs/bench/bench.json")]
    out: PathBuf,
    /// A smoke run of a few seconds: one round, short measurements (numbers are rough).
    #[arg(long)]
    quick: bool,
    /// Rounds per group (default 3; 1 with `--quick`).
    #[arg(long)]
    rounds: Option<usize>,
    /// Seconds each setting is measured per round (default 1.5; 0.2 with `--quick`).
    #[arg(long)]
    seconds: Option<f64>,
    /// The `teacher-server` binary (default: the one beside this program).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Requests each stream keeps outstanding (a student prefetches a few batches).
    #[arg(long, default_value_t = 2)]
    in_flight: usize,
    /// Only the rows whose id starts with one of these (comma-separated), e.g. `raw_forward`.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Training samples of the distillation rows 3 and 5 (the first N of Fashion-MNIST; default
    /// 12000, 256 with `--quick`).
    #[arg(long)]
    limit: Option<usize>,
    /// The `student-trainer` binary (default: the one beside this program).
    #[arg(long)]
    student: Option<PathBuf>,
    /// Training sequences (of 128 tokens) of the language-model rows (default 320 = 20 steps of
    /// 16; 32 with `--quick`).
    #[arg(long)]
    lm_sequences: Option<usize>,
    /// Training sequences (prompts) of the on-policy rows, a multiple of their batch of 16
    /// (default 64 = 4 steps; 32 with `--quick`).
    #[arg(long)]
    opd_sequences: Option<usize>,
    /// The Fashion-MNIST directory (IDX files; `make setup` downloads it). Not used by
    /// `--quick`, which writes a small synthetic dataset.
    #[arg(long, default_value = "data/fashion-mnist")]
    data_dir: PathBuf,
}

/// Settings every row reads.
#[derive(Debug)]
struct Ctx {
    rounds: usize,
    seconds: f64,
    server: PathBuf,
    in_flight: usize,
    only: Vec<String>,
    /// Whether to warm up before measuring (not with `--quick`).
    warmup: bool,
    /// A checkpoint of the demo's CNN teacher (random weights).
    teacher: PathBuf,
    /// `student-trainer`.
    student: PathBuf,
    /// Fashion-MNIST (IDX files).
    data: PathBuf,
    /// Training samples of rows 3 and 5.
    limit: usize,
    /// Training sequences of the language-model distillation row.
    lm_sequences: usize,
    /// Training sequences of the on-policy rows.
    opd_sequences: usize,
    /// `--quick`: rows 3 and 5 without the alternative thread split.
    quick: bool,
    /// Scratch space for the runs of rows 3 and 5.
    scratch: PathBuf,
}

impl Ctx {
    fn wanted(&self, id: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|p| id.starts_with(p.as_str()))
    }
}

/// The demo's teacher: `cnn` on Fashion-MNIST images.
const INPUT_SHAPE: [i64; 3] = [1, 28, 28];
const NUM_LOGITS: i64 = 10;
/// Samples per request (a student batch split into requests of this size).
const REQUEST_BATCH: i64 = 16;

/// One measured setting.
#[derive(Debug, Clone, Serialize)]
struct Row {
    /// Stable id, e.g. `server_batched_s16` (ratios refer to rows by it).
    id: String,
    /// Which numbered row of the list above it belongs to, e.g. `raw_forward`.
    group: &'static str,
    /// What was measured, in words.
    label: String,
    /// Unit of `median` and `rounds`.
    unit: &'static str,
    /// Median of the rounds.
    median: f64,
    /// Every round's value, in order.
    rounds: Vec<f64>,
    /// The setting's parameters.
    params: serde_json::Value,
}

/// A ratio of two rows' medians (or one row's median), with its target.
#[derive(Debug, Clone, Serialize)]
struct Ratio {
    name: &'static str,
    numerator: &'static str,
    /// `None`: the value is the numerator's median itself.
    denominator: Option<&'static str>,
    value: f64,
    target: &'static str,
    /// Whether the target is met (`None`: no target that applies to this machine).
    met: Option<bool>,
}

/// A target: the value must be at least (`Ge`) or at most (`Le`) the bound.
#[derive(Debug, Clone, Copy)]
enum Bound {
    Ge(f64),
    Le(f64),
    /// Informational: no target applies on a CPU (e.g. one that needs native bf16).
    None,
}

/// What `bench.json` holds.
#[derive(Debug, Serialize)]
struct Report {
    /// Seconds since the Unix epoch at the start.
    started_unix_s: u64,
    /// Wall time of the whole run.
    duration_s: f64,
    quick: bool,
    rounds: usize,
    seconds_per_measurement: f64,
    cpu: CpuReport,
    /// The 1-minute load average (`/proc/loadavg`) at the start and at the end (empty where
    /// unknown): above the core count, other processes competed for the cores, which slows
    /// multi-threaded libtorch loops far more than single-threaded ones.
    load_average: Vec<f64>,
    rows: Vec<Row>,
    ratios: Vec<Ratio>,
    /// What was skipped and why.
    notes: Vec<String>,
}

#[derive(Debug, Serialize)]
struct CpuReport {
    model_name: String,
    cores: usize,
    native_bf16: bool,
    native_f16: bool,
    flags: Vec<String>,
}

/// One entry of [`RATIOS`].
struct RatioSpec {
    name: &'static str,
    numerator: &'static str,
    denominator: Option<&'static str>,
    target: &'static str,
    bound: Bound,
}

/// The ratios reported when their rows were measured, with their targets (the speed-ups and
/// wire savings distillation over the network is meant to reach; `(measured)`: no target).
const RATIOS: &[RatioSpec] = &[
    RatioSpec {
        name: "TorchScript MLP student: student-trainer step ÷ the same module in a PyTorch loop",
        numerator: "script_student_mlp_trainer",
        denominator: Some("script_student_mlp_pytorch"),
        target: ">= 0.95",
        bound: Bound::Ge(0.95),
    },
    RatioSpec {
        name: "TorchScript CNN student: student-trainer step ÷ the same module in a PyTorch loop",
        numerator: "script_student_cnn_trainer",
        denominator: Some("script_student_cnn_pytorch"),
        target: ">= 0.95",
        bound: Bound::Ge(0.95),
    },
    RatioSpec {
        name: "LM distill tokens/s: remote teacher ÷ PyTorch in-process loop (same sizes)",
        numerator: "lm_distill_remote",
        denominator: Some("lm_distill_pytorch"),
        target: ">= 1.0",
        bound: Bound::Ge(1.0),
    },
    RatioSpec {
        name: "on-policy distill: completion tokens trained per s of loop wall time, served teacher ÷ PyTorch loop with the teacher in process",
        numerator: "opd_remote",
        denominator: Some("opd_pytorch"),
        target: ">= 1.0",
        bound: Bound::Ge(1.0),
    },
    RatioSpec {
        name: "on-policy generation tokens/s: student-trainer ÷ PyTorch loop (both with a key/value cache)",
        numerator: "opd_remote_generate",
        denominator: Some("opd_pytorch_generate"),
        target: "(measured)",
        bound: Bound::None,
    },
    RatioSpec {
        name: "on-policy scoring tokens/s: served teacher ÷ in-process teacher",
        numerator: "opd_remote_score",
        denominator: Some("opd_pytorch_score"),
        target: "(measured)",
        bound: Bound::None,
    },
    RatioSpec {
        name: "on-policy training tokens/s: student-trainer ÷ PyTorch loop",
        numerator: "opd_remote_train",
        denominator: Some("opd_pytorch_train"),
        target: "(measured)",
        bound: Bound::None,
    },
    RatioSpec {
        name: "student sampling tokens/s: key/value cache ÷ full forward per token (in process)",
        numerator: "opd_generate_kv",
        denominator: Some("opd_generate_full"),
        target: ">= 1.0",
        bound: Bound::Ge(1.0),
    },
    RatioSpec {
        name: "LM wire: top-32 bf16 ÷ dense f32 bytes per token, vocab 8,192",
        numerator: "lm_wire_v8192_top32_bf16",
        denominator: Some("lm_wire_v8192_dense_f32"),
        target: "(measured)",
        bound: Bound::None,
    },
    RatioSpec {
        name: "LM wire: top-32 bf16 ÷ dense f32 bytes per token, vocab 152,064",
        numerator: "lm_wire_v152064_top32_bf16",
        denominator: Some("lm_wire_v152064_dense_f32"),
        target: "(measured)",
        bound: Bound::None,
    },
    RatioSpec {
        name: "online distill (f32 teacher, student 1 thread + server default) ÷ PyTorch in-process loop",
        numerator: "distill_remote_s1_tdefault",
        denominator: Some("distill_pytorch"),
        target: ">= 1.0",
        bound: Bound::Ge(1.0),
    },
    RatioSpec {
        name: "online distill (f32 teacher, student 1 thread + server 1 thread) ÷ PyTorch in-process loop",
        numerator: "distill_remote_s1_t1",
        denominator: Some("distill_pytorch"),
        target: ">= 1.0",
        bound: Bound::Ge(1.0),
    },
    RatioSpec {
        name: "online distill (bf16 teacher, native bf16) ÷ PyTorch in-process loop (f32)",
        numerator: "distill_remote_bf16",
        denominator: Some("distill_pytorch"),
        target: ">= 1.8",
        bound: Bound::Ge(1.8),
    },
    RatioSpec {
        name: "in-process tch loop (this binary) ÷ PyTorch in-process loop",
        numerator: "distill_inprocess",
        denominator: Some("distill_pytorch"),
        target: ">= 1.0",
        bound: Bound::Ge(1.0),
    },
    RatioSpec {
        name: "server at 16 streams ÷ raw forward (f32, batch 256)",
        numerator: "server_batched_s16",
        denominator: Some("raw_forward_f32_b256"),
        target: ">= 0.9",
        bound: Bound::Ge(0.9),
    },
    RatioSpec {
        name: "server at 16 streams, batched ÷ unbatched",
        numerator: "server_batched_s16",
        denominator: Some("server_unbatched_s16"),
        target: ">= 1.3 on CPU (>= 3 on a GPU)",
        bound: Bound::Ge(1.3),
    },
    RatioSpec {
        name: "served forward ÷ PyTorch's forward of the same cnn (f32, batch 16)",
        numerator: "raw_forward_f32_b16",
        denominator: Some("raw_forward_pytorch_f32_b16"),
        target: ">= 0.95",
        bound: Bound::Ge(0.95),
    },
    RatioSpec {
        name: "served forward ÷ PyTorch's forward of the same cnn (f32, batch 256)",
        numerator: "raw_forward_f32_b256",
        denominator: Some("raw_forward_pytorch_f32_b256"),
        target: ">= 0.95",
        bound: Bound::Ge(0.95),
    },
    RatioSpec {
        name: "served forward ÷ PyTorch's forward of the same cnn (bf16, batch 16)",
        numerator: "raw_forward_bf16_b16",
        denominator: Some("raw_forward_pytorch_bf16_b16"),
        target: ">= 0.95",
        bound: Bound::Ge(0.95),
    },
    RatioSpec {
        name: "served forward ÷ PyTorch's forward of the same cnn (bf16, batch 256)",
        numerator: "raw_forward_bf16_b256",
        denominator: Some("raw_forward_pytorch_bf16_b256"),
        target: ">= 0.95",
        bound: Bound::Ge(0.95),
    },
    RatioSpec {
        name: "raw forward bf16 ÷ f32 (batch 256)",
        numerator: "raw_forward_bf16_b256",
        denominator: Some("raw_forward_f32_b256"),
        target: "~2 with native bf16; < 1 without (bf16 online distill >= 1.8 × PyTorch needs native bf16 or a GPU)",
        bound: Bound::None,
    },
    RatioSpec {
        name: "relative KD-loss difference of a bf16 teacher to f32 (2,048 samples)",
        numerator: "teacher_kd_error_bf16",
        denominator: None,
        target: "<= 1e-3",
        bound: Bound::Le(1e-3),
    },
    RatioSpec {
        name: "cached epochs ÷ online epoch",
        numerator: "cache_cached_epochs",
        denominator: Some("cache_online_epoch"),
        target: ">= 10",
        bound: Bound::Ge(10.0),
    },
    RatioSpec {
        name: "top-k 32 of 32k in bf16 ÷ dense f32 bytes",
        numerator: "wire_c32k_top32_bf16",
        denominator: Some("wire_c32k_dense_f32"),
        target: "<= 0.01",
        bound: Bound::Le(0.01),
    },
    RatioSpec {
        name: "relative KD-loss error, dense bf16 wire (32k logits)",
        numerator: "wire_c32k_dense_bf16_kd_error",
        denominator: None,
        target: "<= 1e-3",
        bound: Bound::Le(1e-3),
    },
    RatioSpec {
        name: "relative KD-loss error, dense bf16 wire (10 classes)",
        numerator: "wire_c10_dense_bf16_kd_error",
        denominator: None,
        target: "<= 1e-3",
        bound: Bound::Le(1e-3),
    },
];

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// Runs `settings` in alternating rounds (each round measures every setting once, in order)
/// and returns each setting's values.
fn alternate<S>(
    rounds: usize,
    settings: &mut [S],
    mut measure: impl FnMut(&mut S) -> Result<f64, String>,
) -> Result<Vec<Vec<f64>>, String> {
    let mut values = vec![Vec::with_capacity(rounds); settings.len()];
    for _ in 0..rounds {
        for (s, v) in settings.iter_mut().zip(&mut values) {
            v.push(measure(s)?);
        }
    }
    Ok(values)
}

/// Row 1: the teacher's forward pass in this process, through `teacher_server::model::load`
/// (the server's own loader and precision conversion), f32 and bf16 at batch 16 and 256.
fn raw_forward(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    let _no_grad = tch::no_grad_guard();
    let spec = ModelSpec {
        input_shape: INPUT_SHAPE.to_vec(),
        input_dtype: tch::Kind::Float,
        num_logits: NUM_LOGITS,
        sequence: None,
        logits_output: None,
    };
    let source = ModelSource::Checkpoint {
        dir: ctx.teacher.clone(),
    };
    struct Setting {
        id: String,
        precision: Precision,
        batch: i64,
        model: Box<dyn teacher_server::TeacherModel>,
        x: tch::Tensor,
    }
    let mut settings = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        for batch in [REQUEST_BATCH, 256] {
            let id = format!("raw_forward_{precision}_b{batch}");
            if !ctx.wanted(&id) {
                continue;
            }
            let model = teacher_server::model::load(&source, &spec, tch::Device::Cpu, precision)
                .map_err(|e| e.to_string())?;
            settings.push(Setting {
                id,
                precision,
                batch,
                model,
                x: random_inputs(batch, &INPUT_SHAPE),
            });
        }
    }
    let (seconds, warmup) = (ctx.seconds, ctx.warmup);
    let threads = tch::get_num_threads();
    let python =
        pytorch_forward_wanted(ctx) && !ctx.quick && distill_tests::torch_pythonpath().is_some();
    let mut values = vec![Vec::new(); settings.len()];
    let mut reference: Vec<(String, Vec<f64>)> = Vec::new();
    // Alternating: this process's settings, then PyTorch's, each round.
    for _ in 0..ctx.rounds {
        let round = alternate(1, &mut settings, |s| {
            // One warm-up pass (allocations, kernel choice; skipped by --quick), then whole
            // passes for `seconds` (at least one).
            if warmup {
                drop(s.model.forward(&s.x).map_err(|e| e.to_string())?);
            }
            let start = Instant::now();
            let mut samples = 0i64;
            while samples == 0 || start.elapsed().as_secs_f64() < seconds {
                drop(s.model.forward(&s.x).map_err(|e| e.to_string())?);
                samples += s.batch;
            }
            Ok(samples as f64 / start.elapsed().as_secs_f64())
        })?;
        for (v, r) in values.iter_mut().zip(round) {
            v.extend(r);
        }
        if python {
            for (id, rate) in pytorch_forward(ctx, threads)? {
                match reference.iter_mut().find(|(i, _)| *i == id) {
                    Some((_, v)) => v.push(rate),
                    None => reference.push((id, vec![rate])),
                }
            }
        }
    }
    for (id, v) in reference {
        let (precision, batch) = id
            .strip_prefix("raw_forward_pytorch_")
            .and_then(|r| r.split_once("_b"))
            .unwrap_or(("?", "?"));
        rows.push(Row {
            label: format!(
                "PyTorch forward of the same cnn (eager nn.Module, no_grad), {precision}, batch {batch}"
            ),
            params: serde_json::json!({
                "precision": precision,
                "batch": batch.parse::<i64>().ok(),
                "threads": threads,
                "script": "scripts/bench_forward_pytorch.py",
            }),
            id,
            group: "raw_forward",
            unit: "samples/s",
            median: median(&v),
            rounds: v,
        });
    }
    for (s, v) in settings.iter().zip(values) {
        rows.push(Row {
            id: s.id.clone(),
            group: "raw_forward",
            label: format!("in-process cnn forward, {}, batch {}", s.precision, s.batch),
            unit: "samples/s",
            median: median(&v),
            rounds: v,
            params: serde_json::json!({
                "precision": s.precision.name(),
                "batch": s.batch,
                "threads": tch::get_num_threads(),
            }),
        });
    }
    Ok(())
}

/// Whether one of row 1's PyTorch rows is wanted (`--only`).
fn pytorch_forward_wanted(ctx: &Ctx) -> bool {
    [Precision::F32, Precision::Bf16].iter().any(|p| {
        [REQUEST_BATCH, 256]
            .iter()
            .any(|b| ctx.wanted(&format!("raw_forward_pytorch_{p}_b{b}")))
    })
}

/// Row 1's PyTorch side: `scripts/bench_forward_pytorch.py` (the same cnn as an eager
/// `nn.Module`) at row 1's batches and precisions with `threads` threads; `(row id, samples/s)`
/// per setting, e.g. `raw_forward_pytorch_f32_b16`.
fn pytorch_forward(ctx: &Ctx, threads: i32) -> Result<Vec<(String, f64)>, String> {
    let script = distill_tests::workspace_root().join("scripts/bench_forward_pytorch.py");
    let run = distill_tests::python()
        .arg(&script)
        .args(["--threads", &threads.to_string()])
        .args(["--seconds", &ctx.seconds.to_string()])
        .args(["--batches", &format!("{REQUEST_BATCH},256")])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    if !run.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            run.status,
            String::from_utf8_lossy(&run.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| format!("{}: {e}: {line}", script.display()))?;
            let rate = v["samples_per_s"].as_f64().ok_or("no samples_per_s")?;
            let id = format!(
                "raw_forward_pytorch_{}_b{}",
                v["precision"].as_str().unwrap_or("?"),
                v["batch"]
            );
            Ok((id, rate))
        })
        .collect()
}

/// Samples per second answered by `server` to `streams` concurrent streams of `batch`-sample
/// requests (each keeping `in_flight` outstanding), over at least `seconds` after a warm-up.
async fn streams_throughput(
    server: &Server,
    streams: usize,
    batch: i64,
    in_flight: usize,
    seconds: f64,
) -> Result<f64, String> {
    let wire = request(0, &random_inputs(batch, &INPUT_SHAPE));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..streams {
        let client = TeacherClient::new(server.channel().await);
        tasks.spawn(drive_stream(
            client,
            wire.clone(),
            batch as u64,
            in_flight.max(1),
            stop.clone(),
            answered.clone(),
        ));
    }
    // Warm-up: every outstanding request answered once (connections up, batches flowing) and
    // at least a quarter of the window. Then the window: at least `seconds`, and at least one
    // more answer per outstanding request (a slow forward pass may take longer than `seconds`).
    // Polled every 5 ms: a benchmark's clock, not a synchronisation.
    let cycle = (streams * in_flight.max(1)) as u64 * batch as u64;
    let poll = Duration::from_millis(5);
    let window = async {
        let start = Instant::now();
        while answered.load(Ordering::Relaxed) < cycle
            || start.elapsed().as_secs_f64() < seconds / 4.0
        {
            tokio::time::sleep(poll).await;
        }
        let (t0, n0) = (Instant::now(), answered.load(Ordering::Relaxed));
        while answered.load(Ordering::Relaxed) - n0 < cycle || t0.elapsed().as_secs_f64() < seconds
        {
            tokio::time::sleep(poll).await;
        }
        (answered.load(Ordering::Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64()
    };
    let rate = tokio::select! {
        rate = window => rate,
        Some(done) = tasks.join_next() => {
            return Err(match done {
                Ok(Ok(())) => "a stream ended early".into(),
                Ok(Err(e)) => e,
                Err(e) => format!("a stream task failed: {e}"),
            });
        }
    };
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("a stream task failed: {e}")),
        }
    }
    Ok(rate)
}

/// Starts `teacher-server` on the demo teacher with `extra` flags; waits until it is healthy.
async fn start_server(ctx: &Ctx, extra: &[&str]) -> Server {
    let mut args: Vec<OsString> = ["--model".into(), ctx.teacher.clone().into_os_string()].into();
    for a in ["--device", "cpu", "--listen", "127.0.0.1:0"]
        .iter()
        .chain(extra)
    {
        args.push(a.into());
    }
    let mut server = Server::spawn(&ctx.server, args).await;
    server.wait_healthy(TEACHER_SERVICE).await;
    server
}

/// Row 2: `teacher-server` over loopback, 1, 4 and 16 streams of batch 16, with dynamic batching
/// (defaults) and without (`--max-batch-size 16`). Both servers run side by side (idle while
/// the other is measured), measured in alternating rounds.
async fn server_streams(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    let modes: [(&str, &[&str]); 2] =
        [("batched", &[]), ("unbatched", &["--max-batch-size", "16"])];
    let mut settings = Vec::new();
    let mut servers = Vec::new();
    for (mode, flags) in modes {
        let ids: Vec<(String, usize)> = [1usize, 4, 16]
            .into_iter()
            .map(|s| (format!("server_{mode}_s{s}"), s))
            .filter(|(id, _)| ctx.wanted(id))
            .collect();
        if ids.is_empty() {
            continue;
        }
        servers.push(start_server(ctx, flags).await);
        for (id, streams) in ids {
            settings.push((id, mode, flags, streams, servers.len() - 1));
        }
    }
    let mut values = vec![Vec::new(); settings.len()];
    for _ in 0..ctx.rounds {
        for ((_, _, _, streams, server), v) in settings.iter().zip(&mut values) {
            v.push(
                streams_throughput(
                    &servers[*server],
                    *streams,
                    REQUEST_BATCH,
                    ctx.in_flight,
                    ctx.seconds,
                )
                .await?,
            );
        }
    }
    for ((id, mode, flags, streams, _), v) in settings.into_iter().zip(values) {
        rows.push(Row {
            id,
            group: "server",
            label: format!(
                "teacher-server over loopback, {streams} stream(s) × batch {REQUEST_BATCH}, {mode}"
            ),
            unit: "samples/s",
            median: median(&v),
            rounds: v,
            params: serde_json::json!({
                "streams": streams,
                "batch": REQUEST_BATCH,
                "in_flight": ctx.in_flight,
                "dynamic_batching": mode == "batched",
                "server_flags": flags,
            }),
        });
    }
    Ok(())
}

/// Temperature of the KD losses measured here (the student's default `--temperature`).
const KD_T: f64 = 4.0;

/// The KD loss the wire and precision rows are judged by (`T² · KL` at [`KD_T`], alpha 1,
/// `bucket` tail for top-k): the student's default loss.
fn kd_loss() -> DistillLoss {
    DistillLoss {
        kind: LossKind::Kl,
        temperature: KD_T,
        alpha: 1.0,
        sparse_tail: SparseTail::Bucket,
        jsd_beta: student_trainer::loss::DEFAULT_JSD_BETA,
    }
}

/// The KD loss of `student` (`f32 [B, C]`) against `targets`, as a number.
fn kd_value(student: &Tensor, targets: &SoftTargets) -> Result<f64, String> {
    let labels = Tensor::zeros([student.size()[0]], (Kind::Int64, tch::Device::Cpu));
    kd_loss()
        .compute_targets(student, targets, &labels, None)
        .and_then(|p| p.total.f_double_value(&[]))
        .map_err(|e| format!("KD loss: {e}"))
}

/// A row measured once (no rounds to alternate: a deterministic quantity).
fn single(
    id: String,
    group: &'static str,
    label: String,
    unit: &'static str,
    value: f64,
    params: serde_json::Value,
) -> Row {
    Row {
        id,
        group,
        label,
        unit,
        median: value,
        rounds: vec![value],
        params,
    }
}

/// Samples and batches of [`teacher_kd_error`].
const KD_ERROR_BATCHES: i64 = 16;
const KD_ERROR_BATCH: i64 = 128;

/// The KD-loss difference a bf16 (and f16) teacher causes: row 1's teacher (random weights,
/// seeded) loaded in f32, bf16 and f16 through the server's loader, the same 16 batches of 128
/// inputs, the KD loss at T = 4 of a fixed student (logits N(0, 1)) against each over all 2,048
/// samples; relative to f32. The largest per-batch relative difference is in the row's params
/// (one batch's value varies with the draw by a factor of ~3).
fn teacher_kd_error(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    if ![Precision::Bf16, Precision::F16]
        .iter()
        .any(|p| ctx.wanted(&format!("teacher_kd_error_{p}")))
    {
        return Ok(());
    }
    let _no_grad = tch::no_grad_guard();
    let spec = ModelSpec {
        input_shape: INPUT_SHAPE.to_vec(),
        input_dtype: Kind::Float,
        num_logits: NUM_LOGITS,
        sequence: None,
        logits_output: None,
    };
    let source = ModelSource::Checkpoint {
        dir: ctx.teacher.clone(),
    };
    tch::manual_seed(41);
    let n = KD_ERROR_BATCHES * KD_ERROR_BATCH;
    let x = random_inputs(n, &INPUT_SHAPE);
    let student = Tensor::randn([n, NUM_LOGITS], (Kind::Float, tch::Device::Cpu));
    let logits = |precision: Precision| -> Result<Tensor, String> {
        let model = teacher_server::model::load(&source, &spec, tch::Device::Cpu, precision)
            .map_err(|e| e.to_string())?;
        let outs = x
            .split(KD_ERROR_BATCH, 0)
            .iter()
            .map(|b| model.forward(b).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Tensor::cat(&outs, 0)
            .f_to_kind(Kind::Float)
            .map_err(|e| e.to_string())
    };
    // The KD loss over all samples, and per batch.
    let losses = |t: &Tensor| -> Result<(f64, Vec<f64>), String> {
        let all = kd_value(&student, &SoftTargets::Dense(t.shallow_clone()))?;
        let batches = student
            .split(KD_ERROR_BATCH, 0)
            .iter()
            .zip(t.split(KD_ERROR_BATCH, 0))
            .map(|(s, t)| kd_value(s, &SoftTargets::Dense(t)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((all, batches))
    };
    let reference = logits(Precision::F32)?;
    let (l32, b32) = losses(&reference)?;
    for precision in [Precision::Bf16, Precision::F16] {
        let id = format!("teacher_kd_error_{precision}");
        if !ctx.wanted(&id) {
            continue;
        }
        let t = logits(precision)?;
        let (l, b) = losses(&t)?;
        let worst_batch = b
            .iter()
            .zip(&b32)
            .map(|(l, r)| (l - r).abs() / r)
            .fold(0.0, f64::max);
        rows.push(single(
            id,
            "teacher_kd_error",
            format!(
                "KD loss (T = 4) of a {precision} teacher over {n} samples: relative difference \
                 to f32"
            ),
            "relative",
            (l - l32).abs() / l32,
            serde_json::json!({
                "precision": precision.name(),
                "kd_loss": l,
                "kd_loss_f32": l32,
                "max_abs_logit_diff": distill_tests::max_abs_diff(&t, &reference),
                "samples": n,
                "worst_batch_of_128": worst_batch,
            }),
        ));
    }
    Ok(())
}

/// `"10"` or `"32k"`: the class count in row ids.
fn class_tag(classes: i64) -> String {
    if classes >= 1000 && classes % 1000 == 0 {
        format!("{}k", classes / 1000)
    } else {
        classes.to_string()
    }
}

/// The `LogitsResponse` teacher-server sends for `logits` (`f32 [B, V]`) asked for in `wire`
/// with `top_k` (0: dense) at temperature `t` (see `shape_output` in teacher-server's engine
/// and `SparseLogits` in the .proto).
fn wire_response(
    logits: &Tensor,
    wire: v1::DType,
    top_k: i64,
    t: f64,
) -> Result<v1::LogitsResponse, String> {
    let result = if top_k == 0 {
        v1::logits_response::Result::Logits(
            codec::encode_as(logits, wire).map_err(|e| e.to_string())?,
        )
    } else {
        let (values, indices) = logits.topk(top_k, -1, true, true);
        let logsumexp = logits.logsumexp([-1i64].as_slice(), false);
        let tail = logits
            .f_div_scalar(t)
            .and_then(|s| s.f_scatter_value(-1, &indices, f64::NEG_INFINITY))
            .and_then(|m| m.f_logsumexp([-1i64].as_slice(), false))
            .map_err(|e| e.to_string())?;
        let enc = |t: &Tensor| codec::encode(t).map_err(|e| e.to_string());
        v1::logits_response::Result::Sparse(v1::SparseLogits {
            indices: Some(enc(&indices)?),
            values: Some(codec::encode_as(&values, wire).map_err(|e| e.to_string())?),
            logsumexp: Some(enc(&logsumexp)?),
            tail_logsumexp: Some(enc(&tail)?),
        })
    };
    let b = logits.size()[0] as u32;
    Ok(v1::LogitsResponse {
        batch_id: 1234,
        result: Some(result),
        timing: Some(v1::Timing {
            queue_us: 250,
            compute_us: 8000,
            merged_batch_size: b,
            merged_requests: 1,
            ..Default::default()
        }),
        outputs: Vec::new(),
        gathered: None,
    })
}

/// The soft targets the student decodes from `resp` (f16/bf16 converted to f32).
fn wire_targets(resp: &v1::LogitsResponse) -> Result<SoftTargets, String> {
    let dec = |t: &Option<v1::Tensor>| -> Result<Tensor, String> {
        let t = t.as_ref().ok_or("missing tensor")?;
        codec::decode(t).map_err(|e| e.to_string())
    };
    let float = |t: Tensor| t.f_to_kind(Kind::Float).map_err(|e| e.to_string());
    match &resp.result {
        Some(v1::logits_response::Result::Logits(t)) => Ok(SoftTargets::Dense(float(
            codec::decode(t).map_err(|e| e.to_string())?,
        )?)),
        Some(v1::logits_response::Result::Sparse(s)) => Ok(SoftTargets::Sparse {
            indices: dec(&s.indices)?,
            values: float(dec(&s.values)?)?,
            tail_logsumexp: float(dec(&s.tail_logsumexp)?)?,
        }),
        _ => Err("no logits in the response".into()),
    }
}

/// Row 4: bytes per sample of `LogitsResponse` (batch 128) for dense f32/f16/bf16 and top-k 8
/// and 32 in f32 and bf16, for 10 classes and for 32,000; teacher logits N(0, 3²), a fixed
/// student `teacher + N(0, 1)` (a student that has partly learned: small KD losses make the
/// relative error harder to meet), KD loss at T = 4 (`bucket` tail) after the student's
/// decoding, relative to dense f32.
fn wire_bytes(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    let _no_grad = tch::no_grad_guard();
    const BATCH: i64 = 128;
    let cpu = (Kind::Float, tch::Device::Cpu);
    let variants: [(i64, v1::DType); 7] = [
        (0, v1::DType::F32),
        (0, v1::DType::F16),
        (0, v1::DType::Bf16),
        (8, v1::DType::F32),
        (8, v1::DType::Bf16),
        (32, v1::DType::F32),
        (32, v1::DType::Bf16),
    ];
    for classes in [NUM_LOGITS, 32_000] {
        tch::manual_seed(classes);
        let teacher = Tensor::randn([BATCH, classes], cpu) * 3.0;
        let student = &teacher + Tensor::randn([BATCH, classes], cpu);
        let reference = kd_value(&student, &SoftTargets::Dense(teacher.shallow_clone()))?;
        for (k, wire) in variants {
            if k > classes {
                continue;
            }
            let name = codec::dtype_name(wire);
            let form = if k == 0 {
                "dense".to_string()
            } else {
                format!("top{k}")
            };
            let id = format!("wire_c{}_{form}_{name}", class_tag(classes));
            if !ctx.wanted(&id) {
                continue;
            }
            let resp = wire_response(&teacher, wire, k, KD_T)?;
            let bytes = resp.encoded_len() as f64 / BATCH as f64;
            let l = kd_value(&student, &wire_targets(&resp)?)?;
            let err = (l - reference).abs() / reference;
            // Mean teacher probability mass at T inside the k classes (1 for dense).
            let mass = if k == 0 {
                1.0
            } else {
                let scaled = teacher.f_div_scalar(KD_T).map_err(|e| e.to_string())?;
                let lse = scaled.logsumexp([-1i64].as_slice(), false);
                let (top, _) = scaled.topk(k, -1, true, true);
                (top.logsumexp([-1i64].as_slice(), false) - lse)
                    .exp()
                    .mean(Kind::Double)
                    .double_value(&[])
            };
            let what = if k == 0 {
                format!("dense {name}")
            } else {
                format!("top-{k} {name} + tail")
            };
            let params = serde_json::json!({
                "classes": classes,
                "top_k": k,
                "wire": name,
                "batch": BATCH,
                "kd_loss": l,
                "kd_loss_dense_f32": reference,
                "kd_loss_rel_error": err,
                "teacher_mass_in_k": mass,
                "temperature": KD_T,
                "sparse_tail": "bucket",
            });
            rows.push(single(
                id.clone(),
                "wire_bytes",
                format!("{classes} logits, {what}"),
                "bytes/sample",
                bytes,
                params.clone(),
            ));
            rows.push(single(
                format!("{id}_kd_error"),
                "wire_kd_error",
                format!("{classes} logits, {what}: KD-loss relative difference to dense f32"),
                "relative",
                err,
                params,
            ));
        }
    }
    Ok(())
}

/// Row 7a: bytes per token of the `LogitsResponse` of 64 positions (`[1, 64, V]`, logits
/// N(0, 3²)) as dense f32 and as top-32 bf16 with the tail, at V = 8,192 and 152,064.
fn lm_wire_bytes(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    let _no_grad = tch::no_grad_guard();
    const POSITIONS: i64 = 64;
    for vocab in [8_192i64, 152_064] {
        tch::manual_seed(vocab);
        let logits = Tensor::randn([1, POSITIONS, vocab], (Kind::Float, tch::Device::Cpu)) * 3.0;
        for (k, wire) in [(0, v1::DType::F32), (32, v1::DType::Bf16)] {
            let form = if k == 0 {
                "dense".to_string()
            } else {
                format!("top{k}")
            };
            let name = codec::dtype_name(wire);
            let id = format!("lm_wire_v{vocab}_{form}_{name}");
            if !ctx.wanted(&id) {
                continue;
            }
            let resp = wire_response(&logits, wire, k, 2.0)?;
            let bytes = resp.encoded_len() as f64 / POSITIONS as f64;
            rows.push(single(
                id,
                "lm_wire_bytes",
                format!("vocab {vocab}, {form} {name}"),
                "bytes/token",
                bytes,
                serde_json::json!({"vocab": vocab, "top_k": k, "wire": name, "positions": POSITIONS}),
            ));
        }
    }
    Ok(())
}

/// Row 7b's sizes: teacher and student architectures, tokens and steps (row 9's models too).
const LM_SEQ: i64 = 128;
const LM_VOCAB: i64 = 8_192;
const LM_BATCH: usize = 16;
const LM_TEACHER: &str = "lm:layers=4,d=256,heads=4";
const LM_STUDENT: &str = "lm:layers=2,d=128,heads=4";

/// Row 7b: LM distillation tokens/s, the served teacher against the PyTorch reference loop, in
/// alternating rounds (served, PyTorch, served, ...): one teacher-server for all rounds.
async fn lm_distill(ctx: &Ctx, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<(), String> {
    let remote = ctx.wanted("lm_distill_remote");
    let pytorch = ctx.wanted("lm_distill_pytorch") && !ctx.quick;
    if !remote && !pytorch {
        return Ok(());
    }
    let n = ctx.lm_sequences.max(LM_BATCH) as i64;
    let steps = n as usize / LM_BATCH;
    let params = serde_json::json!({
        "teacher": LM_TEACHER, "student": LM_STUDENT,
        "seq": LM_SEQ, "vocab": LM_VOCAB, "batch": LM_BATCH, "steps": steps, "top_k": 32,
        "temperature": 2.0, "alpha": 0.5,
    });
    let dir = ctx.scratch.join("lm");
    let setup = if remote {
        Some(lm_setup(ctx, &dir, n).await?)
    } else {
        None
    };
    let (mut served, mut reference) = (Vec::new(), Vec::new());
    for _ in 0..ctx.rounds {
        if let Some((server, data)) = &setup {
            served.push(lm_remote_once(ctx, &server.url(), data, &dir.join("student")).await?);
        }
        if pytorch {
            reference.push(lm_pytorch_once(steps).await?);
        }
    }
    for (id, label, v) in [
        (
            "lm_distill_remote",
            "LM distill, teacher-server on loopback (student 1 thread, server default)",
            served,
        ),
        (
            "lm_distill_pytorch",
            "LM distill, PyTorch reference loop in process (2 threads)",
            reference,
        ),
    ] {
        if !v.is_empty() {
            rows.push(Row {
                id: id.into(),
                group: "lm_distill",
                label: label.into(),
                unit: "tokens/s",
                median: median(&v),
                rounds: v,
                params: params.clone(),
            });
        }
    }
    notes.push(format!(
        "row 7: {} alternating rounds of {steps} steps of {LM_BATCH} x {LM_SEQ} tokens each side",
        ctx.rounds
    ));
    Ok(())
}

/// A built-in `lm:layers=L,d=D,heads=H` as the reference scripts' `--teacher`/`--student`
/// value `L,D,H` (empty for another architecture, which the scripts refuse).
fn pytorch_lm_arch(spec: &str) -> String {
    match spec.parse::<distill_models::Arch>() {
        Ok(distill_models::Arch::Lm(c)) => format!("{},{},{}", c.layers, c.d, c.heads),
        _ => String::new(),
    }
}

/// Row 7b's teacher (random weights) served on a loopback port, and its data: `n` random
/// token sequences in `dir/tokens.npz` (next-token labels; the loss's value does not matter).
async fn lm_setup(ctx: &Ctx, dir: &Path, n: i64) -> Result<(Server, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let teacher = dir.join("teacher");
    fresh_checkpoint(&teacher, LM_TEACHER, &[LM_SEQ], LM_VOCAB);
    tch::manual_seed(7);
    let ids = Tensor::randint(LM_VOCAB, [n, LM_SEQ + 1], (Kind::Int64, tch::Device::Cpu));
    let data = dir.join("tokens.npz");
    for path in [data.clone(), dir.join("tokens_test.npz")] {
        Tensor::write_npz(
            &[
                ("inputs", ids.narrow(1, 0, LM_SEQ)),
                ("labels", ids.narrow(1, 1, LM_SEQ)),
                ("vocab_size", Tensor::from(LM_VOCAB)),
            ],
            &path,
        )
        .map_err(|e| e.to_string())?;
    }
    let args = [
        OsString::from("--model"),
        teacher.into_os_string(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    Ok((Server::spawn(&ctx.server, args).await, data))
}

/// One `student-trainer distill` of row 7b's student from the served teacher at `url`: its
/// tokens/s from `metrics.jsonl`.
async fn lm_remote_once(ctx: &Ctx, url: &str, data: &Path, out: &Path) -> Result<f64, String> {
    let _ = std::fs::remove_dir_all(out);
    let args = DistillArgs::new(data, out)
        .teacher(url.to_string())
        .arch(LM_STUDENT)
        .batch_size(LM_BATCH)
        .epochs(1)
        .top_k(32)
        .flag("--temperature", 2)
        .flag("--alpha", 0.5)
        .flag("--threads", 1)
        .no_epoch_eval()
        .build();
    run_student(ctx, &args, "distill (LM)").await?;
    let line = std::fs::read_to_string(out.join("metrics.jsonl")).map_err(|e| e.to_string())?;
    let m: serde_json::Value = line
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or("no metrics line")?;
    m["tokens_per_s"]
        .as_f64()
        .ok_or_else(|| "no tokens_per_s in metrics.jsonl".into())
}

/// One run of `scripts/reference/kd_lm_pytorch.py --synthetic` at row 7b's sizes for `steps`
/// steps: its `kd: ... tokens_per_s=N`.
async fn lm_pytorch_once(steps: usize) -> Result<f64, String> {
    let script = distill_tests::workspace_root().join("scripts/reference/kd_lm_pytorch.py");
    let mut cmd = tokio::process::Command::from(distill_tests::python());
    let run = cmd
        .arg(&script)
        .args([
            "--synthetic",
            "--vocab",
            "8192",
            "--seq",
            "128",
            "--bs",
            "16",
        ])
        .args([
            "--teacher",
            &pytorch_lm_arch(LM_TEACHER),
            "--student",
            &pytorch_lm_arch(LM_STUDENT),
            "--top-k",
            "32",
        ])
        .args(["--T", "2", "--alpha", "0.5", "--threads", "2"])
        .arg("--steps")
        .arg(steps.to_string())
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    stdout
        .lines()
        .filter(|l| l.starts_with("kd:"))
        .flat_map(str::split_whitespace)
        .find_map(|w| w.strip_prefix("tokens_per_s="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| {
            format!(
                "{}: no `kd: ... tokens_per_s=N` line ({}): {}",
                script.display(),
                run.status,
                String::from_utf8_lossy(&run.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )
        })
}

/// Row 8: TorchScript students trained by `student-trainer` against the same modules in a
/// PyTorch loop (see the module docs).
async fn script_student_rows(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    let models = ["mlp", "cnn"];
    let wanted: Vec<&str> = models
        .into_iter()
        .filter(|m| {
            ctx.wanted(&format!("script_student_{m}_trainer"))
                || ctx.wanted(&format!("script_student_{m}_pytorch"))
        })
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let script = distill_tests::workspace_root().join("scripts/bench_torchscript_student.py");
    let dir = ctx.scratch.join("script-students");
    let script = &script;
    let python = |args: Vec<OsString>| async move {
        let run = tokio::process::Command::from(distill_tests::python())
            .arg(script)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .map_err(|e| format!("running {}: {e}", script.display()))?;
        if !run.status.success() {
            return Err(format!(
                "{} {args:?} failed ({}): {}",
                script.display(),
                run.status,
                String::from_utf8_lossy(&run.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            ));
        }
        Ok(String::from_utf8_lossy(&run.stdout).into_owned())
    };
    python(vec![
        "export".into(),
        "--out-dir".into(),
        dir.clone().into(),
    ])
    .await?;
    let limit = ctx.limit.to_string();
    let mut values: Vec<(String, Vec<f64>)> = Vec::new();
    for round in 0..ctx.rounds {
        for m in &wanted {
            let pt = dir.join(format!("{m}.pt"));
            // student-trainer: one epoch, samples/s of its metrics line.
            let out = ctx.scratch.join(format!("script-{m}-{round}"));
            let run = tokio::process::Command::new(&ctx.student)
                .args(["train", "--student"])
                .arg(&pt)
                .arg("--data-dir")
                .arg(&ctx.data)
                .args(["--limit", &limit, "--epochs", "1", "--batch-size", "128"])
                .args([
                    "--threads",
                    "1",
                    "--device",
                    "cpu",
                    "--no-epoch-eval",
                    "--out",
                ])
                .arg(&out)
                .env_remove("RUST_LOG")
                .stdin(std::process::Stdio::null())
                .output()
                .await
                .map_err(|e| format!("running {}: {e}", ctx.student.display()))?;
            if !run.status.success() {
                return Err(format!(
                    "student-trainer train --student {} failed: {}",
                    pt.display(),
                    String::from_utf8_lossy(&run.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                ));
            }
            let metrics = std::fs::read_to_string(out.join("metrics.jsonl"))
                .map_err(|e| format!("{}: {e}", out.display()))?;
            let m0: serde_json::Value = metrics
                .lines()
                .next()
                .and_then(|l| serde_json::from_str(l).ok())
                .ok_or("no metrics line")?;
            let trainer = m0["samples_per_s"].as_f64().ok_or("no samples_per_s")?;
            // The PyTorch loop.
            let stdout = python(vec![
                "train".into(),
                "--model".into(),
                (*m).into(),
                "--pt".into(),
                pt.clone().into(),
                "--data-dir".into(),
                ctx.data.clone().into(),
                "--limit".into(),
                limit.clone().into(),
            ])
            .await?;
            let pytorch: f64 = stdout
                .split_whitespace()
                .find_map(|w| w.strip_prefix("samples_per_s="))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("no samples_per_s=N in {stdout}"))?;
            for (side, v) in [("trainer", trainer), ("pytorch", pytorch)] {
                let id = format!("script_student_{m}_{side}");
                match values.iter_mut().find(|(i, _)| *i == id) {
                    Some((_, list)) => list.push(v),
                    None => values.push((id, vec![v])),
                }
            }
            let _ = std::fs::remove_dir_all(&out);
        }
    }
    for (id, rounds) in values {
        let (label, side) = if id.ends_with("_trainer") {
            ("student-trainer train --student (libtorch)", "trainer")
        } else {
            ("the same module, eager, in a PyTorch loop", "pytorch")
        };
        let model = if id.contains("_mlp_") { "MLP" } else { "CNN" };
        rows.push(Row {
            group: "script_student",
            label: format!("TorchScript {model} student, one epoch: {label}"),
            unit: "samples/s",
            median: median(&rounds),
            rounds,
            params: serde_json::json!({
                "model": model, "side": side, "batch": 128, "threads": 1,
                "optimizer": "adam lr 1e-3", "samples": ctx.limit,
            }),
            id,
        });
    }
    Ok(())
}

/// The first `n` training images of the IDX dataset in `dir` (`train-images-idx3-ubyte`, raw
/// or `.gz`), as `u8 [n, 1, 28, 28]`.
fn idx_images(dir: &Path, n: usize) -> Result<Tensor, String> {
    use std::io::Read;
    let raw = dir.join("train-images-idx3-ubyte");
    let gz = dir.join("train-images-idx3-ubyte.gz");
    let mut bytes = Vec::new();
    if raw.is_file() {
        bytes = std::fs::read(&raw).map_err(|e| format!("{}: {e}", raw.display()))?;
    } else {
        flate2::read::GzDecoder::new(
            std::fs::File::open(&gz).map_err(|e| format!("{}: {e}", gz.display()))?,
        )
        .take((16 + n * 784) as u64)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: {e}", gz.display()))?;
    }
    let pixels = bytes
        .get(16..16 + n * 784)
        .ok_or_else(|| format!("{}: fewer than {n} images", dir.display()))?;
    Ok(Tensor::from_slice(pixels).view([n as i64, 1, 28, 28]))
}

/// The compressions of row 6, as tonic applies them.
const COMPRESSIONS: [&str; 4] = ["none", "gzip", "deflate", "zstd"];

/// `bytes` compressed with `name` (see [`COMPRESSIONS`]), and decompressed again (checked).
fn round_trip(name: &str, bytes: &[u8]) -> Result<usize, String> {
    use std::io::Read;
    let err = |e: std::io::Error| format!("{name}: {e}");
    let level = flate2::Compression::new(6);
    let (packed, unpacked) = match name {
        "none" => return Ok(bytes.len()),
        "gzip" => {
            let mut z = Vec::new();
            flate2::read::GzEncoder::new(bytes, level)
                .read_to_end(&mut z)
                .map_err(err)?;
            let mut back = Vec::with_capacity(bytes.len());
            flate2::read::GzDecoder::new(z.as_slice())
                .read_to_end(&mut back)
                .map_err(err)?;
            (z.len(), back)
        }
        "deflate" => {
            let mut z = Vec::new();
            flate2::read::ZlibEncoder::new(bytes, level)
                .read_to_end(&mut z)
                .map_err(err)?;
            let mut back = Vec::with_capacity(bytes.len());
            flate2::read::ZlibDecoder::new(z.as_slice())
                .read_to_end(&mut back)
                .map_err(err)?;
            (z.len(), back)
        }
        "zstd" => {
            let z = zstd::encode_all(bytes, zstd::DEFAULT_COMPRESSION_LEVEL).map_err(err)?;
            let back = zstd::decode_all(z.as_slice()).map_err(err)?;
            (z.len(), back)
        }
        other => return Err(format!("unknown compression {other}")),
    };
    if unpacked != bytes {
        return Err(format!("{name}: the round trip changed the message"));
    }
    Ok(packed)
}

/// Row 6: bytes per sample and samples/s (compress + decompress, one thread) of each
/// compression, for a request of 128 u8 images and a response of 128 dense f32 logits rows;
/// the compressions measured in alternating rounds.
fn compression(ctx: &Ctx, rows: &mut Vec<Row>, notes: &mut Vec<String>) -> Result<(), String> {
    const BATCH: i64 = 128;
    let mut payloads: Vec<(&str, String, Vec<u8>)> = Vec::new();
    match idx_images(&ctx.data, BATCH as usize) {
        Ok(images) => {
            let mut req = request(0, &images);
            req.output_dtype = v1::DType::F32 as i32;
            payloads.push((
                "images_u8",
                format!(
                    "request, {BATCH} u8 images 1×28×28 ({})",
                    ctx.data.file_name().map_or_else(
                        || ctx.data.display().to_string(),
                        |n| n.to_string_lossy().into_owned()
                    )
                ),
                req.encode_to_vec(),
            ));
        }
        Err(e) => notes.push(format!("row 6 skips the u8 images: {e}")),
    }
    tch::manual_seed(NUM_LOGITS);
    let logits = Tensor::randn([BATCH, NUM_LOGITS], (Kind::Float, tch::Device::Cpu)) * 3.0;
    payloads.push((
        "logits_f32",
        format!("response, {BATCH} × {NUM_LOGITS} dense f32 logits"),
        wire_response(&logits, v1::DType::F32, 0, KD_T)?.encode_to_vec(),
    ));
    for (payload, what, bytes) in payloads {
        let settings: Vec<(String, &str)> = COMPRESSIONS
            .iter()
            .map(|c| (format!("compression_{payload}_{c}"), *c))
            .filter(|(id, _)| ctx.wanted(id))
            .collect();
        let mut rates = vec![Vec::new(); settings.len()];
        let mut sizes = vec![0usize; settings.len()];
        for _ in 0..ctx.rounds {
            for ((_, c), (rate, size)) in settings.iter().zip(rates.iter_mut().zip(&mut sizes)) {
                if *c == "none" {
                    *size = bytes.len();
                    continue;
                }
                let start = Instant::now();
                let mut passes = 0u64;
                while passes == 0 || start.elapsed().as_secs_f64() < ctx.seconds / 4.0 {
                    *size = round_trip(c, &bytes)?;
                    passes += 1;
                }
                rate.push(passes as f64 * BATCH as f64 / start.elapsed().as_secs_f64());
            }
        }
        for ((id, c), (v, size)) in settings.into_iter().zip(rates.into_iter().zip(sizes)) {
            let params = serde_json::json!({
                "payload": payload,
                "compression": c,
                "batch": BATCH,
                "message_bytes": bytes.len(),
                "compressed_bytes": size,
                "level": match c { "gzip" | "deflate" => "6", "zstd" => "3 (default)", _ => "-" },
            });
            rows.push(single(
                id.clone(),
                "compression_bytes",
                format!("{what}, {c}"),
                "bytes/sample",
                size as f64 / BATCH as f64,
                params.clone(),
            ));
            if c == "none" {
                continue;
            }
            rows.push(Row {
                id: format!("{id}_rate"),
                group: "compression_rate",
                label: format!("{what}, {c}: compress + decompress, 1 thread"),
                unit: "samples/s",
                median: median(&v),
                rounds: v,
                params,
            });
        }
    }
    Ok(())
}

/// Output of one `student-trainer distill` run.
struct DistillRun {
    report: serde_json::Value,
    metrics: Vec<serde_json::Value>,
}

/// Runs `student-trainer` with `args` (logging off, no stdin) and returns its output.
///
/// # Errors
/// It could not start, or it failed: `what`, its exit status and the last lines of its stderr.
async fn run_student(
    ctx: &Ctx,
    args: &[String],
    what: &str,
) -> Result<std::process::Output, String> {
    let run = tokio::process::Command::new(&ctx.student)
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", ctx.student.display()))?;
    if !run.status.success() {
        let err = String::from_utf8_lossy(&run.stderr);
        let tail: Vec<&str> = err.lines().rev().take(5).collect();
        return Err(format!(
            "student-trainer {what} failed ({}): {}",
            run.status,
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    Ok(run)
}

/// Runs `student-trainer distill` (row 3's setup: `--arch mlp`, batch 128, `--limit`, no
/// per-epoch evaluation) with `extra` flags into a fresh `out`.
async fn distill_run(ctx: &Ctx, out: &Path, extra: &[String]) -> Result<DistillRun, String> {
    let _ = std::fs::remove_dir_all(out);
    let mut args = DistillArgs::new(&ctx.data, out)
        .arch("mlp")
        .batch_size(128)
        .flag("--limit", ctx.limit)
        .no_epoch_eval()
        .build();
    args.extend(extra.iter().cloned());
    run_student(ctx, &args, &format!("distill {extra:?}")).await?;
    let read = |name: &str| {
        std::fs::read_to_string(out.join(name))
            .map_err(|e| format!("{}: {e}", out.join(name).display()))
    };
    let report = serde_json::from_str(&read("report.json")?).map_err(|e| e.to_string())?;
    let metrics = read("metrics.jsonl")?
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Ok(DistillRun { report, metrics })
}

/// `student[kd] ... samples_per_s=N` of the PyTorch reference loop (one epoch, `--limit`).
async fn pytorch_run(ctx: &Ctx) -> Result<f64, String> {
    let script = distill_tests::workspace_root().join("scripts/reference/kd_pytorch.py");
    let mut cmd = tokio::process::Command::from(distill_tests::python());
    let run = cmd
        .arg(&script)
        .args([
            "--teacher-epochs",
            "0",
            "--student-epochs",
            "1",
            "--bs",
            "128",
        ])
        .arg("--limit")
        .arg(ctx.limit.to_string())
        .env("FASHION_MNIST_DIR", &ctx.data)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    if !run.status.success() {
        return Err(format!(
            "{} failed ({}): {}",
            script.display(),
            run.status,
            String::from_utf8_lossy(&run.stderr)
                .lines()
                .last()
                .unwrap_or("")
        ));
    }
    stdout
        .lines()
        .filter(|l| l.starts_with("student[kd]"))
        .flat_map(str::split_whitespace)
        .find_map(|w| w.strip_prefix("samples_per_s="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no `student[kd] ... samples_per_s=N` line in:\n{stdout}"))
}

/// The loop of `kd_pytorch.py` in this process with `tch`: the row-1 teacher's forward under
/// `no_grad`, an MLP-128 student step with Adam (lr 1e-3) and the KD loss of
/// `student_trainer::loss` (T = 4, alpha 0.9); samples/s over one epoch of `--limit` samples.
/// Runs with the calling thread's count (the caller: a compute thread of 2, `kd_pytorch.py`'s).
fn inprocess_run(ctx: &Ctx) -> Result<f64, String> {
    use student_trainer::data::{Split, load};
    use student_trainer::optim::{Optimizer, OptimizerConfig};
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let data = load(&ctx.data, Split::Train)
        .map_err(|e| err(&e))?
        .limit(ctx.limit);
    let spec = ModelSpec {
        input_shape: INPUT_SHAPE.to_vec(),
        input_dtype: Kind::Float,
        num_logits: NUM_LOGITS,
        sequence: None,
        logits_output: None,
    };
    let teacher = teacher_server::model::load(
        &ModelSource::Checkpoint {
            dir: ctx.teacher.clone(),
        },
        &spec,
        tch::Device::Cpu,
        Precision::F32,
    )
    .map_err(|e| err(&e))?;
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let student = distill_models::Network::new(
        &vs.root(),
        &distill_models::ArchSpec {
            arch: distill_models::Arch::Mlp { hidden: vec![128] },
            input_shape: INPUT_SHAPE.to_vec(),
            num_classes: NUM_LOGITS,
        },
    )
    .map_err(|e| err(&e))?;
    let mut opt =
        Optimizer::for_var_store(OptimizerConfig::adam(1e-3), &vs).map_err(|e| err(&e))?;
    let loss = DistillLoss {
        alpha: 0.9,
        ..kd_loss()
    };
    let order = student_trainer::data::epoch_permutation(0, 1, data.len());
    let start = Instant::now();
    let mut samples = 0usize;
    for idx in order.chunks(128) {
        let (x, y) = data.try_batch(idx).map_err(|e| err(&e))?;
        let t = {
            let _no_grad = tch::no_grad_guard();
            teacher.forward(&x).map_err(|e| err(&e))?
        };
        opt.zero_grad();
        let s = student.forward(&x, true).map_err(|e| err(&e))?;
        let parts = loss.compute(&s, &t, &y, None).map_err(|e| err(&e))?;
        parts.total.f_backward().map_err(|e| err(&e))?;
        opt.step().map_err(|e| err(&e))?;
        samples += idx.len();
    }
    Ok(samples as f64 / start.elapsed().as_secs_f64())
}

/// Rows 3 and 5: online distillation against PyTorch and the in-process loop, and the logit
/// cache, with teacher-server processes started here (default threads, and `--threads 1`).
async fn distill_rows(
    ctx: &Ctx,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let want3 = [
        "distill_remote_s1_tdefault",
        "distill_remote_bf16",
        "distill_remote_s1_t1",
        "distill_pytorch",
        "distill_inprocess",
    ]
    .iter()
    .any(|id| ctx.wanted(id));
    let want5 = [
        "cache_online_epoch",
        "cache_cached_epochs",
        "cache_bytes_per_sample",
    ]
    .iter()
    .any(|id| ctx.wanted(id));
    if !want3 && !want5 {
        return Ok(());
    }
    if !ctx.data.join("train-images-idx3-ubyte.gz").is_file()
        && !ctx.data.join("train-images-idx3-ubyte").is_file()
    {
        return Err(format!(
            "{} holds no Fashion-MNIST: run `make setup` first",
            ctx.data.display()
        ));
    }
    if !ctx.student.is_file() {
        return Err(format!(
            "{} is missing: build it first (`cargo build --release --bins`; `make bench` does)",
            ctx.student.display()
        ));
    }
    let server = start_server(ctx, &[]).await;
    let url = server.url();
    let out = ctx.scratch.join("student");
    let student_flags = |url: &str, threads: usize| -> Vec<String> {
        vec![
            "--teacher".into(),
            url.into(),
            "--threads".into(),
            threads.to_string(),
            "--epochs".into(),
            "1".into(),
        ]
    };
    if want3 {
        #[derive(Clone, Copy, PartialEq)]
        enum Kind3 {
            Remote { one_thread_server: bool },
            RemoteBf16,
            PyTorch,
            InProcess,
        }
        let mut settings: Vec<(&str, Kind3)> = vec![(
            "distill_remote_s1_tdefault",
            Kind3::Remote {
                one_thread_server: false,
            },
        )];
        if !ctx.quick {
            settings.push((
                "distill_remote_s1_t1",
                Kind3::Remote {
                    one_thread_server: true,
                },
            ));
        }
        if !ctx.quick && distill_models::cpu::native_bf16() {
            settings.push(("distill_remote_bf16", Kind3::RemoteBf16));
        } else if !ctx.quick {
            notes.push(
                "distill_remote_bf16 was skipped: this CPU has no native bf16 (avx512_bf16 or \
                 amx_bf16), where a bf16 teacher runs slower than f32"
                    .into(),
            );
        }
        if ctx.quick {
            notes.push(
                "--quick runs rows 3 and 5 on a small synthetic dataset (512 training, 128 test \
                 samples) and skips the PyTorch reference (its start-up alone takes ~15 s) and \
                 the in-process loop"
                    .into(),
            );
        } else if distill_tests::torch_pythonpath().is_some() {
            settings.push(("distill_pytorch", Kind3::PyTorch));
        } else {
            notes.push(
                "no PyTorch found beside libtorch (`make setup` installs it): the PyTorch \
                 reference row was skipped"
                    .into(),
            );
        }
        if !ctx.quick {
            settings.push(("distill_inprocess", Kind3::InProcess));
        }
        settings.retain(|(id, _)| ctx.wanted(id));
        let one_thread = if settings.iter().any(|(_, k)| {
            *k == Kind3::Remote {
                one_thread_server: true,
            }
        }) {
            Some(start_server(ctx, &["--threads", "1"]).await)
        } else {
            None
        };
        let bf16 = if settings.iter().any(|(_, k)| *k == Kind3::RemoteBf16) {
            Some(start_server(ctx, &["--precision", "bf16"]).await)
        } else {
            None
        };
        let mut values = vec![Vec::new(); settings.len()];
        let mut extras = vec![Vec::new(); settings.len()];
        for _ in 0..ctx.rounds {
            for ((_, kind), (v, extra)) in settings.iter().zip(values.iter_mut().zip(&mut extras)) {
                let value = match kind {
                    Kind3::Remote { .. } | Kind3::RemoteBf16 => {
                        let url = match (kind, &one_thread, &bf16) {
                            (
                                Kind3::Remote {
                                    one_thread_server: true,
                                },
                                Some(s),
                                _,
                            ) => s.url(),
                            (Kind3::RemoteBf16, _, Some(s)) => s.url(),
                            _ => url.clone(),
                        };
                        let run = distill_run(ctx, &out, &student_flags(&url, 1)).await?;
                        let r = &run.report;
                        extra.push(serde_json::json!({
                            "trainer_waited_s": r["trainer_waited_s"],
                            "teacher_backpressure_s": r["teacher_backpressure_s"],
                            "wall_s": r["wall_s"],
                        }));
                        r["samples_per_s"]
                            .as_f64()
                            .ok_or("report.json has no samples_per_s")?
                    }
                    Kind3::PyTorch => pytorch_run(ctx).await?,
                    Kind3::InProcess => tokio::task::block_in_place(|| {
                        on_compute_thread(Some(2), || inprocess_run(ctx))
                    })?,
                };
                v.push(value);
            }
        }
        for ((id, kind), (v, extra)) in settings.into_iter().zip(values.into_iter().zip(extras)) {
            let (label, params) = match kind {
                Kind3::Remote { one_thread_server } => (
                    format!(
                        "online distill, teacher-server over loopback (student 1 thread, server {})",
                        if one_thread_server { "1 thread" } else { "default threads" }
                    ),
                    serde_json::json!({
                        "student_threads": 1,
                        "server_threads": if one_thread_server { serde_json::json!(1) } else { serde_json::json!("default") },
                        "per_round": extra,
                    }),
                ),
                Kind3::RemoteBf16 => (
                    "online distill, bf16 teacher-server over loopback (student 1 thread, server default threads, --precision bf16)".into(),
                    serde_json::json!({
                        "student_threads": 1,
                        "server_threads": "default",
                        "server_precision": "bf16",
                        "per_round": extra,
                    }),
                ),
                Kind3::PyTorch => (
                    "PyTorch reference loop, teacher in process (scripts/reference/kd_pytorch.py, 2 threads)".into(),
                    serde_json::json!({"threads": 2}),
                ),
                Kind3::InProcess => (
                    "same loop in this binary (tch, teacher in process, 2 threads)".into(),
                    serde_json::json!({"threads": 2}),
                ),
            };
            let mut params = params;
            params["samples"] = ctx.limit.into();
            params["batch"] = 128.into();
            params["epochs"] = 1.into();
            rows.push(Row {
                id: id.into(),
                group: "distill",
                label: format!("{label}, 1 epoch of {} samples", ctx.limit),
                unit: "samples/s",
                median: median(&v),
                rounds: v,
                params,
            });
        }
    }
    if want5 {
        let cache = ctx.scratch.join("cache");
        let (mut online, mut cached, mut bytes) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ctx.rounds {
            let _ = std::fs::remove_dir_all(&cache);
            let mut flags = student_flags(&url, 1);
            flags.truncate(4);
            flags.extend([
                "--epochs".into(),
                "3".into(),
                "--logit-cache".into(),
                cache.display().to_string(),
            ]);
            let run = distill_run(ctx, &out, &flags).await?;
            let epoch_rate = |pred: &dyn Fn(u64) -> bool| -> Vec<f64> {
                run.metrics
                    .iter()
                    .filter(|m| m["epoch"].as_u64().is_some_and(pred))
                    .filter_map(|m| m["samples_per_s"].as_f64())
                    .collect()
            };
            let first = epoch_rate(&|e| e == 1);
            let later = epoch_rate(&|e| e >= 2);
            if first.len() != 1 || later.len() != 2 {
                return Err(format!(
                    "metrics.jsonl: expected epochs 1-3 with samples_per_s, got {:?}",
                    run.metrics
                ));
            }
            online.push(first[0]);
            cached.push(later.iter().sum::<f64>() / later.len() as f64);
            bytes.push(
                run.report["cache_bytes_per_sample"]
                    .as_f64()
                    .ok_or("report.json has no cache_bytes_per_sample")?,
            );
        }
        let params =
            serde_json::json!({"samples": ctx.limit, "batch": 128, "wire": "f32", "top_k": 0});
        for (id, label, unit, v) in [
            (
                "cache_online_epoch",
                "distill --logit-cache, epoch 1 (online, fills the cache)",
                "samples/s",
                online,
            ),
            (
                "cache_cached_epochs",
                "distill --logit-cache, epochs 2-3 (from the cache; mean of the two)",
                "samples/s",
                cached,
            ),
            (
                "cache_bytes_per_sample",
                "logit cache size (dense f32, 10 classes)",
                "bytes/sample",
                bytes,
            ),
        ] {
            if ctx.wanted(id) {
                rows.push(Row {
                    id: id.into(),
                    group: "cache",
                    label: label.into(),
                    unit,
                    median: median(&v),
                    rounds: v,
                    params: params.clone(),
                });
            }
        }
    }
    Ok(())
}

fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let get = |id: &str| rows.iter().find(|r| r.id == id).map(|r| r.median);
    RATIOS
        .iter()
        .filter_map(|r| {
            let value = match r.denominator {
                Some(d) => get(r.numerator)? / get(d)?,
                None => get(r.numerator)?,
            };
            Some(Ratio {
                name: r.name,
                numerator: r.numerator,
                denominator: r.denominator,
                value,
                target: r.target,
                met: match r.bound {
                    Bound::Ge(b) => Some(value >= b),
                    Bound::Le(b) => Some(value <= b),
                    Bound::None => None,
                },
            })
        })
        .collect()
}

/// A value in its unit's precision.
fn show(v: f64, unit: &str) -> String {
    match unit {
        "samples/s" | "tokens/s" => format!("{v:.0}"),
        "bytes/sample" => format!("{v:.1}"),
        _ if v == 0.0 => "0".into(),
        _ if v.abs() < 0.01 => format!("{v:.2e}"),
        _ => format!("{v:.4}"),
    }
}

/// Groups shown in the wire and compression tables instead of the main one.
const WIRE_GROUPS: [&str; 4] = [
    "wire_bytes",
    "wire_kd_error",
    "compression_bytes",
    "compression_rate",
];

fn markdown(report: &Report) -> String {
    let mut s = format!(
        "CPU: {} ({} cores; native bf16: {}, native f16: {}); {} round(s) of {:.1} s per setting \
         (rows 1-2), medians; load average {}\n\n",
        if report.cpu.model_name.is_empty() {
            "unknown"
        } else {
            &report.cpu.model_name
        },
        report.cpu.cores,
        if report.cpu.native_bf16 { "yes" } else { "no" },
        if report.cpu.native_f16 { "yes" } else { "no" },
        report.rounds,
        report.seconds_per_measurement,
        match report.load_average.as_slice() {
            [a, b] => format!("{a:.1} at the start, {b:.1} at the end"),
            _ => "unknown".into(),
        }
    );
    s.push_str("| row | setting | median | rounds |\n|---|---|---:|---|\n");
    for r in report
        .rows
        .iter()
        .filter(|r| !WIRE_GROUPS.contains(&r.group))
    {
        let rounds: Vec<String> = r.rounds.iter().map(|v| show(*v, r.unit)).collect();
        s.push_str(&format!(
            "| `{}` | {} | {} {} | {} |\n",
            r.id,
            r.label,
            show(r.median, r.unit),
            r.unit,
            rounds.join(", ")
        ));
    }
    let wire: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| r.group == "wire_bytes")
        .collect();
    if !wire.is_empty() {
        s.push_str(
            "\n| `LogitsResponse` (batch 128) | bytes/sample | ÷ dense f32 | KD-loss rel. error vs dense f32 | teacher mass in the k at T = 4 |\n\
             |---|---:|---:|---:|---:|\n",
        );
        for r in wire {
            let classes = r.params["classes"].as_i64().unwrap_or(0);
            let dense = report
                .rows
                .iter()
                .find(|d| d.id == format!("wire_c{}_dense_f32", class_tag(classes)))
                .map_or(f64::NAN, |d| d.median);
            let err = report
                .rows
                .iter()
                .find(|e| e.id == format!("{}_kd_error", r.id))
                .map_or(f64::NAN, |e| e.median);
            s.push_str(&format!(
                "| {} | {:.1} | {} | {} | {} |\n",
                r.label,
                r.median,
                show(r.median / dense, ""),
                show(err, ""),
                show(
                    r.params["teacher_mass_in_k"].as_f64().unwrap_or(f64::NAN),
                    ""
                )
            ));
        }
    }
    let compressed: Vec<&Row> = report
        .rows
        .iter()
        .filter(|r| r.group == "compression_bytes")
        .collect();
    if !compressed.is_empty() {
        s.push_str(
            "\n| gRPC compression (batch 128) | bytes/sample | ÷ none | samples/s (compress + decompress, 1 thread) |\n\
             |---|---:|---:|---:|\n",
        );
        for r in compressed {
            let none = report
                .rows
                .iter()
                .find(|d| {
                    d.group == "compression_bytes"
                        && d.params["payload"] == r.params["payload"]
                        && d.params["compression"] == "none"
                })
                .map_or(f64::NAN, |d| d.median);
            let rate = report
                .rows
                .iter()
                .find(|e| e.id == format!("{}_rate", r.id))
                .map_or("-".to_string(), |e| show(e.median, e.unit));
            s.push_str(&format!(
                "| {} | {:.1} | {} | {rate} |\n",
                r.label,
                r.median,
                show(r.median / none, ""),
            ));
        }
    }
    if !report.ratios.is_empty() {
        s.push_str("\n| ratio | value | target | met |\n|---|---:|---|---|\n");
        for r in &report.ratios {
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                r.name,
                show(r.value, ""),
                r.target,
                match r.met {
                    Some(true) => "yes",
                    Some(false) => "**no**",
                    None => "n/a",
                }
            ));
        }
    }
    for n in &report.notes {
        s.push_str(&format!("\nNote: {n}\n"));
    }
    s
}

fn write_json(path: &Path, report: &Report) -> Result<(), String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("json.partial");
    std::fs::write(&tmp, text + "\n")
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The 1-minute load average, where the system tells it (`/proc/loadavg`).
fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// A note when a load average in `load` exceeds the `cores`.
fn busy_note(load: &[f64], cores: usize) -> Option<String> {
    let busy = load
        .iter()
        .copied()
        .filter(|l| *l > cores as f64)
        .reduce(f64::max)?;
    Some(format!(
        "the machine was busy (1-minute load average up to {busy:.1} on {cores} cores): \
         multi-threaded timings, the PyTorch loops' above all, are unreliable"
    ))
}

fn run(cli: Cli) -> Result<Report, String> {
    // As in `student-trainer` and `teacher-server`: the threads that are measured compute with
    // several cores ([`on_compute_thread`]), the others run their operators alone.
    distill_models::threads::helper_thread();
    let started = Instant::now();
    let load_at_start = load_average();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let beside = |name: &str| {
        let exe = std::env::current_exe().expect("path of this program");
        exe.with_file_name(format!("{name}{}", std::env::consts::EXE_SUFFIX))
    };
    let server = cli
        .server
        .clone()
        .unwrap_or_else(|| beside("teacher-server"));
    if !server.is_file() {
        return Err(format!(
            "{} is missing: build it first (`cargo build --release --bins`; `make bench` does)",
            server.display()
        ));
    }
    let tmp = TempDir::new("bench");
    let teacher = tmp.path().join("teacher");
    // The same random teacher every run: row 1's KD-loss differences depend on its weights.
    tch::manual_seed(0);
    fresh_checkpoint(&teacher, "cnn", &INPUT_SHAPE, NUM_LOGITS);
    let data = if cli.quick {
        // A small synthetic dataset in the Fashion-MNIST layout: the student's report evaluates
        // the teacher on the whole test split, 10,000 CNN forwards of Fashion-MNIST.
        let dir = tmp.path().join("synthetic");
        distill_tests::trainer::write_synthetic_idx(&dir, 512, 128, NUM_LOGITS as u8, 8);
        dir
    } else if cli.data_dir.is_relative() && !cli.data_dir.exists() {
        distill_tests::workspace_root().join(&cli.data_dir)
    } else {
        cli.data_dir.clone()
    };
    let ctx = Ctx {
        rounds: cli.rounds.unwrap_or(if cli.quick { 1 } else { 3 }).max(1),
        seconds: cli.seconds.unwrap_or(if cli.quick { 0.2 } else { 1.5 }),
        server,
        in_flight: cli.in_flight,
        only: cli.only.clone(),
        warmup: !cli.quick,
        teacher,
        student: cli
            .student
            .clone()
            .unwrap_or_else(|| beside("student-trainer")),
        data: std::path::absolute(&data).unwrap_or(data),
        limit: cli.limit.unwrap_or(if cli.quick { 256 } else { 12_000 }),
        lm_sequences: cli.lm_sequences.unwrap_or(if cli.quick { 32 } else { 320 }),
        opd_sequences: cli.opd_sequences.unwrap_or(if cli.quick { 32 } else { 64 }),
        quick: cli.quick,
        scratch: tmp.path().to_path_buf(),
    };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    // Progress on stderr (the table goes to stdout).
    let step =
        |what: &str, t: Instant| eprintln!("bench: {what} ({:.1} s)", t.elapsed().as_secs_f64());
    let t = Instant::now();
    on_compute_thread(None, || {
        raw_forward(&ctx, &mut rows)?;
        teacher_kd_error(&ctx, &mut rows)
    })?;
    step("row 1, in-process forward", t);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(distill_models::threads::helper_thread)
        .build()
        .map_err(|e| format!("starting the tokio runtime: {e}"))?;
    let t = Instant::now();
    runtime.block_on(server_streams(&ctx, &mut rows))?;
    step("row 2, teacher-server streams", t);
    let t = Instant::now();
    runtime.block_on(distill_rows(&ctx, &mut rows, &mut notes))?;
    step("rows 3 and 5, distillation and the logit cache", t);
    let t = Instant::now();
    on_compute_thread(None, || wire_bytes(&ctx, &mut rows))?;
    step("row 4, wire sizes", t);
    let t = Instant::now();
    on_compute_thread(None, || compression(&ctx, &mut rows, &mut notes))?;
    step("row 6, gRPC compression", t);
    let t = Instant::now();
    on_compute_thread(None, || lm_wire_bytes(&ctx, &mut rows))?;
    runtime.block_on(lm_distill(&ctx, &mut rows, &mut notes))?;
    step("row 7, language models", t);
    let t = Instant::now();
    runtime.block_on(script_student_rows(&ctx, &mut rows))?;
    step("row 8, TorchScript students", t);
    let t = Instant::now();
    opd::generate_rows(&ctx, &mut rows)?;
    runtime.block_on(opd::distill_rows(&ctx, &mut rows, &mut notes))?;
    step("row 9, on-policy distillation", t);
    let cpu = CpuInfo::read();
    let load: Vec<f64> = [load_at_start, load_average()]
        .into_iter()
        .flatten()
        .collect();
    notes.extend(busy_note(&load, cpu.cores));
    Ok(Report {
        load_average: load,
        started_unix_s,
        duration_s: started.elapsed().as_secs_f64(),
        quick: cli.quick,
        rounds: ctx.rounds,
        seconds_per_measurement: ctx.seconds,
        ratios: ratios(&rows),
        rows,
        notes,
        cpu: CpuReport {
            model_name: cpu.model_name.clone(),
            cores: cpu.cores,
            native_bf16: cpu.native_bf16(),
            native_f16: cpu.native_f16(),
            flags: cpu.flags.into_iter().collect(),
        },
    })
}

/// Runs `f` on a thread of its own whose libtorch operators use `threads` cores (`None`:
/// libtorch's default), as `student-trainer`'s training thread and `teacher-server`'s engine
/// do ([`distill_models::threads::compute_thread`]); the thread's OpenMP team ends with it.
///
/// # Panics
/// If `f` panics.
fn on_compute_thread<T: Send>(threads: Option<usize>, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("bench-compute".into())
            .spawn_scoped(s, || {
                distill_models::threads::compute_thread(threads);
                f()
            })
            .expect("spawning a thread")
            .join()
            .expect("the measuring thread panicked")
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let out = cli.out.clone();
    match run(cli).and_then(|report| {
        print!("{}", markdown(&report));
        write_json(&out, &report)?;
        println!("\nwrote {} ({:.0} s)", out.display(), report.duration_s);
        Ok(())
    }) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench failed: {e}");
            ExitCode::FAILURE
        }
    }
}
