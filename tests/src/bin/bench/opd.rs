//! Row 9, `opd`: on-policy distillation (GKD, Agarwal et al. 2024, Algorithm 1; `distill
//! --on-policy`) of row 7's student from row 7's teacher.
//!
//! - `opd_generate_kv` / `opd_generate_full`: the student's sampling in this process
//!   ([`Model::sample`], batch 16, prompts of [`PROMPT`] random tokens, [`NEW`] new tokens at
//!   temperature 1, no end-of-sequence), with the key/value cache and with a full forward over
//!   the prefix per new token: the same model, prompts and seed, alternating rounds. Unit:
//!   tokens generated per second of sampling.
//! - `opd_remote` and `opd_pytorch`, with their `_generate`, `_score` and `_train` rows: one
//!   epoch of `student-trainer distill --on-policy 1 --prompt-tokens 64 --max-new-tokens 64`
//!   from the release `teacher-server` serving the teacher on loopback (f32, its default
//!   threads), against `scripts/reference/opd_pytorch.py --lmbda 1` (the plain PyTorch loop
//!   with the teacher in process): the same architectures, threads (the machine's cores),
//!   batch, steps, prompt and completion lengths, end-of-sequence id, loss (reverse KL at
//!   T = 1) and optimizer (Adam, lr 3e-4), in alternating rounds (ours, PyTorch, ...).
//!
//! Both sides read the same token rows: a corpus of `.jsonl` documents of 127 random "words"
//! (ids 2..8192 of a word-level `tokenizer.json` written here, `<unk>` = 0, `</s>` = 1), so
//! that each document and its end-of-document token fill exactly one packed sequence of 128;
//! the PyTorch loop reads that token stream as a `.npy` file (`--tokens`), whose rows of 128
//! are the same sequences. The prompts are each sequence's first 64 tokens; completions stop at
//! `</s>` (id 1) or after 64 tokens on both sides.
//!
//! What is compared (`opd_remote` ÷ `opd_pytorch`, target ≥ 1.0): **completion tokens trained
//! per second of the training loop's wall time**: the sampled tokens the loss covers (each
//! row's completion, its `</s>` included), summed over the loop's steps, divided by the
//! seconds from the loop's start to its last optimizer step (model building, data loading and
//! process start excluded, the first step's warm-up included). That is `metrics.jsonl`'s
//! `tokens_per_s` for `student-trainer` (its real tokens are the completion positions of an
//! on-policy batch; the epoch's wall time) and the `opd:` line's `tokens_per_s` for the PyTorch
//! loop (`completion_tokens / wall_s`). The `_generate` rows are tokens generated per second
//! of generation, `_score` completion tokens per second of teacher scoring (ours: the wait for
//! the served teacher's answer after the batch was sent; PyTorch: the teacher's forward and
//! log-softmax), `_train` completion tokens per second of the student's forward, loss, backward
//! and optimizer step. The split in seconds (and ms per step) is in each row's params.
//!
//! The two losses differ in one way: `student-trainer` uses its LM default, the teacher's top
//! 32 logits per position with the tail as one bucket (what travels over the wire), where the
//! PyTorch loop takes the reverse KL over the whole vocabulary from the in-process logits.

use super::{
    Ctx, LM_BATCH, LM_SEQ, LM_STUDENT, LM_TEACHER, LM_VOCAB, Row, alternate, median,
    pytorch_lm_arch,
};
use distill_models::{ArchSpec, Model, Network, SampleOptions};
use distill_tests::trainer::DistillArgs;
use distill_tests::{Server, TEACHER_SERVICE, fresh_checkpoint};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tch::{Kind, Tensor};

/// Prompt tokens: the first P of each sequence.
const PROMPT: i64 = 64;
/// New tokens per completion at most (`PROMPT + NEW` = row 7's sequence length).
const NEW: i64 = 64;
/// The end-of-sequence id of the corpus's tokenizer (`</s>`; `<unk>` is 0).
const EOS: i64 = 1;
/// The optimizer's learning rate on both sides (`opd_pytorch.py`'s Adam at 3e-4).
const LR: f64 = 3e-4;

/// Threads of the student, the PyTorch loop and the in-process sampling: the machine's cores
/// (libtorch's default, which the served teacher keeps).
fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// The generation rows: [`Model::sample`] with and without the key/value cache, on a compute
/// thread of the machine's cores as `student-trainer` samples on its training thread, the
/// process's other threads running their operators alone (see [`distill_models::threads`]:
/// when the process holds more OpenMP threads than cores, libgomp's workers sleep between
/// parallel regions, and this row lost a third).
pub(super) fn generate_rows(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    super::on_compute_thread(Some(threads()), || generate_on_this_thread(ctx, rows))
}

/// [`generate_rows`] on the calling thread.
fn generate_on_this_thread(ctx: &Ctx, rows: &mut Vec<Row>) -> Result<(), String> {
    let mut settings: Vec<(&str, bool)> = [("opd_generate_kv", true), ("opd_generate_full", false)]
        .into_iter()
        .filter(|(id, _)| ctx.wanted(id))
        .collect();
    if settings.is_empty() {
        return Ok(());
    }
    let threads = tch::get_num_threads();
    tch::manual_seed(9);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let spec = ArchSpec {
        arch: LM_STUDENT
            .parse()
            .map_err(|e| format!("{LM_STUDENT}: {e}"))?,
        input_shape: vec![LM_SEQ],
        num_classes: LM_VOCAB,
    };
    let model = Model::Builtin(Network::new(&vs.root(), &spec).map_err(|e| e.to_string())?);
    let batch = LM_BATCH as i64;
    let prompts = Tensor::randint(LM_VOCAB, [batch, PROMPT], (Kind::Int64, tch::Device::Cpu));
    let lens = vec![PROMPT; LM_BATCH];
    // --quick: a short completion (the full forward's cost grows with its square).
    let new = if ctx.quick { 8 } else { NEW };
    let sample = |kv_cache: bool| -> Result<i64, String> {
        let opts = SampleOptions {
            max_new_tokens: new,
            temperature: 1.0,
            top_p: 1.0,
            // Outside the vocabulary: never sampled, every row runs to `new` tokens.
            eos: -1,
            pad: 0,
            kv_cache,
        };
        tch::manual_seed(11);
        let g = model
            .sample(&prompts, &lens, &opts)
            .map_err(|e| format!("sampling: {e}"))?;
        Ok(g.completion_lens.iter().sum())
    };
    if ctx.warmup {
        for (_, kv) in &settings {
            sample(*kv)?;
        }
    }
    let values = alternate(ctx.rounds, &mut settings, |(_, kv)| {
        let start = Instant::now();
        let mut tokens = 0;
        while tokens == 0 || start.elapsed().as_secs_f64() < ctx.seconds {
            tokens += sample(*kv)?;
        }
        Ok(tokens as f64 / start.elapsed().as_secs_f64())
    })?;
    for ((id, kv), v) in settings.into_iter().zip(values) {
        let how = if kv {
            "key/value cache"
        } else {
            "full forward per token"
        };
        rows.push(Row {
            id: id.into(),
            group: "opd_generate",
            label: format!("student sampling in process (Model::sample), {how}"),
            unit: "tokens/s",
            median: median(&v),
            rounds: v,
            params: serde_json::json!({
                "student": LM_STUDENT, "vocab": LM_VOCAB, "batch": LM_BATCH,
                "prompt_tokens": PROMPT, "max_new_tokens": new, "temperature": 1.0,
                "kv_cache": kv, "threads": threads,
            }),
        });
    }
    Ok(())
}

/// What one on-policy loop reported (one run of either side).
#[derive(Debug, Clone, Copy)]
struct LoopRun {
    /// Completion tokens trained per second of the loop's wall time.
    tokens_per_s: f64,
    /// Tokens generated per second of generation.
    generate_tokens_per_s: f64,
    /// Completion tokens per second of scoring.
    score_tokens_per_s: f64,
    /// Completion tokens per second of training.
    train_tokens_per_s: f64,
    /// Seconds generating, scoring, training, and the loop's wall time.
    generate_s: f64,
    score_s: f64,
    train_s: f64,
    wall_s: f64,
    /// Completion tokens trained and tokens generated.
    completion_tokens: f64,
    generated_tokens: f64,
}

/// The rows of one side and what their values are.
const SIDES: [(&str, &str); 2] = [
    (
        "opd_remote",
        "on-policy distill, student-trainer + teacher-server on loopback",
    ),
    (
        "opd_pytorch",
        "on-policy distill, PyTorch loop with the teacher in process (opd_pytorch.py)",
    ),
];
const PARTS: [(&str, &str); 4] = [
    ("", "completion tokens trained per s of loop wall time"),
    ("_generate", "tokens generated per s of generation"),
    ("_score", "completion tokens per s of teacher scoring"),
    ("_train", "completion tokens per s of training"),
];

impl LoopRun {
    /// The value of row suffix `part` (see [`PARTS`]).
    fn part(&self, part: &str) -> f64 {
        match part {
            "_generate" => self.generate_tokens_per_s,
            "_score" => self.score_tokens_per_s,
            "_train" => self.train_tokens_per_s,
            _ => self.tokens_per_s,
        }
    }
}

/// The on-policy loop rows: ours against the PyTorch loop in alternating rounds.
pub(super) async fn distill_rows(
    ctx: &Ctx,
    rows: &mut Vec<Row>,
    notes: &mut Vec<String>,
) -> Result<(), String> {
    let wanted = |side: &str| PARTS.iter().any(|(p, _)| ctx.wanted(&format!("{side}{p}")));
    let remote = wanted("opd_remote");
    let pytorch = wanted("opd_pytorch") && !ctx.quick;
    if !remote && !pytorch {
        return Ok(());
    }
    let n = ctx.opd_sequences.max(LM_BATCH) / LM_BATCH * LM_BATCH;
    let steps = n / LM_BATCH;
    let dir = ctx.scratch.join("opd");
    let corpus = write_corpus(&dir, n)?;
    let mut server = None;
    if remote {
        let teacher = dir.join("teacher");
        fresh_checkpoint(&teacher, LM_TEACHER, &[LM_SEQ], LM_VOCAB);
        let args = [
            OsString::from("--model"),
            teacher.into_os_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
        ];
        let mut s = Server::spawn(&ctx.server, args).await;
        s.wait_healthy(TEACHER_SERVICE).await;
        server = Some(s);
    }
    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    for round in 0..ctx.rounds {
        if let Some(s) = &server {
            let out = dir.join(format!("student-{round}"));
            ours.push(remote_once(ctx, &s.url(), &corpus, &out).await?);
            let _ = std::fs::remove_dir_all(&out);
        }
        if pytorch {
            reference.push(pytorch_once(&corpus.npy, steps).await?);
        }
    }
    for ((side, label), runs) in SIDES.into_iter().zip([ours, reference]) {
        push_side(rows, (side, label), &runs, steps);
    }
    notes.push(format!(
        "row 9: {} alternating rounds of one on-policy epoch ({steps} steps of {LM_BATCH} prompts \
         of {PROMPT} tokens, up to {NEW} new tokens each) per side; ratio = completion tokens \
         trained per second of the loop's wall time",
        ctx.rounds
    ));
    Ok(())
}

/// The rows of `side` from its `runs` (none: not measured), the split in their params.
fn push_side(rows: &mut Vec<Row>, (side, label): (&str, &str), runs: &[LoopRun], steps: usize) {
    if runs.is_empty() {
        return;
    }
    let med = |f: fn(&LoopRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let (generate_s, score_s, train_s, wall_s) = (
        med(|r| r.generate_s),
        med(|r| r.score_s),
        med(|r| r.train_s),
        med(|r| r.wall_s),
    );
    let ms = |s: f64| 1000.0 * s / steps.max(1) as f64;
    let params = serde_json::json!({
        "teacher": LM_TEACHER, "student": LM_STUDENT, "vocab": LM_VOCAB, "seq": LM_SEQ,
        "batch": LM_BATCH, "steps": steps, "prompt_tokens": PROMPT, "max_new_tokens": NEW,
        "eos": EOS, "lambda": 1.0, "loss": "rkl", "temperature": 1.0,
        "top_k": if side == "opd_remote" { serde_json::json!(32) } else { serde_json::json!(null) },
        "threads": threads(), "lr": LR,
        "split_s": {
            "generate": generate_s, "score": score_s, "train": train_s,
            "other": (wall_s - generate_s - score_s - train_s).max(0.0), "wall": wall_s,
        },
        "split_ms_per_step": {
            "generate": ms(generate_s), "score": ms(score_s), "train": ms(train_s),
            "wall": ms(wall_s),
        },
        "completion_tokens": med(|r| r.completion_tokens),
        "generated_tokens": med(|r| r.generated_tokens),
    });
    for (part, what) in PARTS {
        let v: Vec<f64> = runs.iter().map(|r| r.part(part)).collect();
        rows.push(Row {
            id: format!("{side}{part}"),
            group: "opd",
            label: format!("{label}: {what}"),
            unit: "tokens/s",
            median: median(&v),
            rounds: v,
            params: params.clone(),
        });
    }
}

/// Row 9's data in `dir`: the training documents, a held-out file, the tokenizer and the same
/// token stream as a `.npy` file for the PyTorch loop.
struct Corpus {
    /// `--data-dir`: `train.jsonl`, `n` documents.
    data: PathBuf,
    /// `--test-data`: a few documents more.
    test: PathBuf,
    /// `--tokenizer`.
    tokenizer: PathBuf,
    /// The training token stream (each document then `</s>`), `int64 [n * 128]`.
    npy: PathBuf,
}

/// Writes [`Corpus`] for `n` training sequences (see the module docs).
fn write_corpus(dir: &Path, n: usize) -> Result<Corpus, String> {
    let data = dir.join("corpus");
    std::fs::create_dir_all(&data).map_err(|e| format!("{}: {e}", data.display()))?;
    let tokenizer = dir.join("tokenizer.json");
    write_tokenizer(&tokenizer)?;
    let test_docs = LM_BATCH as i64;
    tch::manual_seed(13);
    let words = Tensor::randint_low(
        EOS + 1,
        LM_VOCAB,
        [n as i64 + test_docs, LM_SEQ - 1],
        (Kind::Int64, tch::Device::Cpu),
    );
    let ids = Vec::<Vec<i64>>::try_from(&words).map_err(|e| e.to_string())?;
    let jsonl = |docs: &[Vec<i64>]| -> String {
        docs.iter()
            .map(|d| {
                let text: Vec<String> = d.iter().map(|i| format!("w{i}")).collect();
                format!("{}\n", serde_json::json!({ "text": text.join(" ") }))
            })
            .collect()
    };
    let write = |path: &Path, text: String| {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&data.join("train.jsonl"), jsonl(&ids[..n]))?;
    let test = dir.join("test.jsonl");
    write(&test, jsonl(&ids[n..]))?;
    let eos = Tensor::full([n as i64, 1], EOS, (Kind::Int64, tch::Device::Cpu));
    let stream = Tensor::cat(&[words.narrow(0, 0, n as i64), eos], 1).reshape([-1]);
    let npy = dir.join("tokens.npy");
    stream.write_npy(&npy).map_err(|e| e.to_string())?;
    Ok(Corpus {
        data,
        test,
        tokenizer,
        npy,
    })
}

/// A word-level Hugging Face `tokenizer.json` of exactly [`LM_VOCAB`] ids: `<unk>` (0), `</s>`
/// (1, the end of document) and the words `w2` ... `w8191`, split on whitespace.
fn write_tokenizer(path: &Path) -> Result<(), String> {
    let special = |id: i64, content: &str| {
        serde_json::json!({
            "id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true,
        })
    };
    let mut vocab = serde_json::Map::new();
    vocab.insert("<unk>".into(), 0.into());
    vocab.insert("</s>".into(), EOS.into());
    for i in EOS + 1..LM_VOCAB {
        vocab.insert(format!("w{i}"), i.into());
    }
    let json = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(EOS, "</s>")],
        "normalizer": null,
        "pre_tokenizer": { "type": "WhitespaceSplit" },
        "post_processor": null,
        "decoder": null,
        "model": { "type": "WordLevel", "vocab": vocab, "unk_token": "<unk>" },
    });
    std::fs::write(path, json.to_string()).map_err(|e| format!("{}: {e}", path.display()))
}

/// One epoch of `student-trainer distill --on-policy 1` from the teacher at `url`, read from
/// its `metrics.jsonl`.
async fn remote_once(ctx: &Ctx, url: &str, c: &Corpus, out: &Path) -> Result<LoopRun, String> {
    let _ = std::fs::remove_dir_all(out);
    let args = DistillArgs::new(&c.data, out)
        .teacher(url.to_string())
        .arch(LM_STUDENT)
        .batch_size(LM_BATCH)
        .epochs(1)
        .flag("--tokenizer", c.tokenizer.display())
        .flag("--test-data", c.test.display())
        .flag("--seq-len", LM_SEQ)
        .flag("--on-policy", 1)
        .flag("--prompt-tokens", PROMPT)
        .flag("--max-new-tokens", NEW)
        .flag("--sample-temperature", 1)
        .flag("--top-p", 1)
        .flag("--temperature", 1)
        .flag("--lr", LR)
        .flag("--threads", threads())
        .flag("--eval-prompts", 0)
        .flag("--samples-per-epoch", 0)
        .flag("--device", "cpu")
        .no_epoch_eval()
        .build();
    super::run_student(ctx, &args, "distill --on-policy").await?;
    let path = out.join("metrics.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let m: serde_json::Value = text
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| format!("{}: no metrics line", path.display()))?;
    let get = |v: &serde_json::Value, key: &str| {
        v[key]
            .as_f64()
            .ok_or_else(|| format!("{}: no {key} in {v}", path.display()))
    };
    let op = &m["on_policy"];
    let tokens = get(&m, "tokens")?;
    let (score_s, train_s) = (get(op, "score_s")?, get(op, "train_s")?);
    let per = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(LoopRun {
        tokens_per_s: get(&m, "tokens_per_s")?,
        generate_tokens_per_s: get(op, "generation_tokens_per_s")?,
        score_tokens_per_s: per(tokens, score_s),
        train_tokens_per_s: per(tokens, train_s),
        generate_s: get(op, "generate_s")?,
        score_s,
        train_s,
        wall_s: get(&m, "wall_s")?,
        completion_tokens: tokens,
        generated_tokens: get(op, "tokens_generated")?,
    })
}

/// One run of `scripts/reference/opd_pytorch.py --lmbda 1` on the token stream `npy` for
/// `steps` steps at row 9's sizes: its `opd: ...` line.
async fn pytorch_once(npy: &Path, steps: usize) -> Result<LoopRun, String> {
    let script = distill_tests::workspace_root().join("scripts/reference/opd_pytorch.py");
    let run = tokio::process::Command::from(distill_tests::python())
        .arg(&script)
        .arg("--tokens")
        .arg(npy)
        .args([
            "--vocab",
            &LM_VOCAB.to_string(),
            "--seq",
            &LM_SEQ.to_string(),
        ])
        .args(["--bs", &LM_BATCH.to_string(), "--steps", &steps.to_string()])
        .args([
            "--teacher",
            &pytorch_lm_arch(LM_TEACHER),
            "--student",
            &pytorch_lm_arch(LM_STUDENT),
        ])
        .args([
            "--T",
            "1",
            "--threads",
            &threads().to_string(),
            "--seed",
            "0",
        ])
        .args(["--lmbda", "1", "--prompt-tokens", &PROMPT.to_string()])
        .args([
            "--max-new-tokens",
            &NEW.to_string(),
            "--eos",
            &EOS.to_string(),
        ])
        .args(["--sample-temperature", "1", "--top-p", "1", "--loss", "rkl"])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| format!("running {}: {e}", script.display()))?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("opd:"))
        .ok_or_else(|| {
            format!(
                "{}: no `opd: ...` line ({}): {}",
                script.display(),
                run.status,
                String::from_utf8_lossy(&run.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            )
        })?;
    let get = |key: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("{}: no {key}=N in {line}", script.display()))
    };
    Ok(LoopRun {
        tokens_per_s: get("tokens_per_s")?,
        generate_tokens_per_s: get("gen_tokens_per_s")?,
        score_tokens_per_s: get("score_tokens_per_s")?,
        train_tokens_per_s: get("train_tokens_per_s")?,
        generate_s: get("gen_s")?,
        score_s: get("score_s")?,
        train_s: get("train_s")?,
        wall_s: get("wall_s")?,
        completion_tokens: get("completion_tokens")?,
        generated_tokens: get("generated_tokens")?,
    })
}
