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
//!    server's default `--max-batch-size`), in f32 and bf16.
//! 2. `server`: the real `teacher-server` release binary (beside this one) on a loopback port,
//!    driven by 1, 4 and 16 concurrent streams (each on its own connection, each keeping
//!    `--in-flight` requests of batch 16 outstanding), with dynamic batching (the defaults) and
//!    without it (`--max-batch-size 16`: every forward pass is one request).
//!
//! It prints a markdown table (rows, then the ratios the issue sets targets for) and writes
//! `bench.json` (`--out`) with every round, the CPU's model name, flags and core count.

use clap::Parser;
use distill_models::CpuInfo;
use distill_tests::{
    Server, TEACHER_SERVICE, TeacherClient, TempDir, fresh_checkpoint, random_inputs, request, v1,
};
use serde::Serialize;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use teacher_server::config::{ModelSource, ModelSpec, Precision};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Flags of `bench`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "bench",
    about = "Teacher throughput on this machine: in-process forward and teacher-server over loopback."
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
    /// Which row of the list it belongs to, e.g. `raw_forward`.
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

/// A ratio of two rows' medians, with the target.
#[derive(Debug, Clone, Serialize)]
struct Ratio {
    name: &'static str,
    numerator: &'static str,
    denominator: &'static str,
    value: f64,
    target: &'static str,
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
    rows: Vec<Row>,
    ratios: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
struct CpuReport {
    model_name: String,
    cores: usize,
    native_bf16: bool,
    native_f16: bool,
    flags: Vec<String>,
}

/// The ratios reported when both of their rows were measured: (name, numerator, denominator,
/// target from issue 8).
const RATIOS: &[(&str, &str, &str, &str)] = &[
    (
        "server at 16 streams ÷ raw forward (f32, batch 256)",
        "server_batched_s16",
        "raw_forward_f32_b256",
        ">= 0.9",
    ),
    (
        "server at 16 streams, batched ÷ unbatched",
        "server_batched_s16",
        "server_unbatched_s16",
        ">= 1.3 on CPU, >= 3 on a GPU",
    ),
    (
        "raw forward bf16 ÷ f32 (batch 256)",
        "raw_forward_bf16_b256",
        "raw_forward_f32_b256",
        "~2 with native bf16; < 1 without",
    ),
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
    let values = alternate(ctx.rounds, &mut settings, |s| {
        // One warm-up pass (allocations, kernel choice; skipped by --quick), then whole passes
        // for `seconds` (at least one).
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

/// One stream: keeps `in_flight` requests outstanding until `stop`, adding each answer's samples
/// to `answered`.
async fn drive(
    mut client: TeacherClient,
    wire: v1::LogitsRequest,
    batch: u64,
    in_flight: usize,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> Result<(), String> {
    let (tx, rx) = mpsc::channel(in_flight);
    let mut responses = client
        .stream_logits(ReceiverStream::new(rx))
        .await
        .map_err(|e| format!("StreamLogits: {e}"))?
        .into_inner();
    let mut next_id = 0u64;
    let mut send = |tx: &mpsc::Sender<v1::LogitsRequest>| {
        let mut r = wire.clone();
        r.batch_id = next_id;
        next_id += 1;
        tx.try_send(r).map_err(|e| format!("send: {e}"))
    };
    for _ in 0..in_flight {
        send(&tx)?;
    }
    let mut outstanding = in_flight;
    while outstanding > 0 {
        let resp = responses
            .message()
            .await
            .map_err(|e| format!("stream failed: {e}"))?
            .ok_or("stream ended early")?;
        if let Some(v1::logits_response::Result::Error(e)) = resp.result {
            return Err(format!("batch {} refused: {}", resp.batch_id, e.message));
        }
        answered.fetch_add(batch, Ordering::Relaxed);
        outstanding -= 1;
        if !stop.load(Ordering::Relaxed) {
            send(&tx)?;
            outstanding += 1;
        }
    }
    Ok(())
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
        tasks.spawn(drive(
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

fn ratios(rows: &[Row]) -> Vec<Ratio> {
    let get = |id: &str| rows.iter().find(|r| r.id == id).map(|r| r.median);
    RATIOS
        .iter()
        .filter_map(|&(name, numerator, denominator, target)| {
            Some(Ratio {
                name,
                numerator,
                denominator,
                value: get(numerator)? / get(denominator)?,
                target,
            })
        })
        .collect()
}

fn markdown(report: &Report) -> String {
    let mut s = format!(
        "CPU: {} ({} cores; native bf16: {}, native f16: {}); {} round(s) of {:.1} s per setting, medians\n\n",
        if report.cpu.model_name.is_empty() {
            "unknown"
        } else {
            &report.cpu.model_name
        },
        report.cpu.cores,
        if report.cpu.native_bf16 { "yes" } else { "no" },
        if report.cpu.native_f16 { "yes" } else { "no" },
        report.rounds,
        report.seconds_per_measurement
    );
    s.push_str("| row | setting | median | rounds |\n|---|---|---:|---|\n");
    for r in &report.rows {
        let rounds: Vec<String> = r.rounds.iter().map(|v| format!("{v:.0}")).collect();
        s.push_str(&format!(
            "| `{}` | {} | {:.0} {} | {} |\n",
            r.id,
            r.label,
            r.median,
            r.unit,
            rounds.join(", ")
        ));
    }
    if !report.ratios.is_empty() {
        s.push_str("\n| ratio | value | target |\n|---|---:|---|\n");
        for r in &report.ratios {
            s.push_str(&format!("| {} | {:.2} | {} |\n", r.name, r.value, r.target));
        }
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

fn run(cli: Cli) -> Result<Report, String> {
    let started = Instant::now();
    let started_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let server = cli.server.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("path of this program");
        exe.with_file_name(format!("teacher-server{}", std::env::consts::EXE_SUFFIX))
    });
    if !server.is_file() {
        return Err(format!(
            "{} is missing: build it first (`cargo build --release --bins`; `make bench` does)",
            server.display()
        ));
    }
    let tmp = TempDir::new("bench");
    fresh_checkpoint(tmp.path(), "cnn", &INPUT_SHAPE, NUM_LOGITS);
    let ctx = Ctx {
        rounds: cli.rounds.unwrap_or(if cli.quick { 1 } else { 3 }).max(1),
        seconds: cli.seconds.unwrap_or(if cli.quick { 0.2 } else { 1.5 }),
        server,
        in_flight: cli.in_flight,
        only: cli.only.clone(),
        warmup: !cli.quick,
        teacher: tmp.path().to_path_buf(),
    };
    let mut rows = Vec::new();
    raw_forward(&ctx, &mut rows)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the tokio runtime: {e}"))?;
    runtime.block_on(server_streams(&ctx, &mut rows))?;
    let cpu = CpuInfo::read();
    Ok(Report {
        started_unix_s,
        duration_s: started.elapsed().as_secs_f64(),
        quick: cli.quick,
        rounds: ctx.rounds,
        seconds_per_measurement: ctx.seconds,
        ratios: ratios(&rows),
        rows,
        cpu: CpuReport {
            model_name: cpu.model_name.clone(),
            cores: cpu.cores,
            native_bf16: cpu.native_bf16(),
            native_f16: cpu.native_f16(),
            flags: cpu.flags.into_iter().collect(),
        },
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
