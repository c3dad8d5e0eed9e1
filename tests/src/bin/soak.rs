//! `soak`: memory soak of `teacher-server` under load (`make soak`; not a test).
//!
//! Starts a `teacher-server` (by default the one built beside this binary) on a fresh `cnn`
//! checkpoint (or `--model`), drives `--streams` concurrent streams, each sending batches of
//! `--batch` samples and reading every answer, for `--minutes`, and samples the server's resident
//! memory (`VmRSS` of `/proc/PID/status`) every `--interval-s` seconds. It prints the curve and
//! the growth over the second half of the run (the least-squares trend of the samples over that
//! half, relative to their mean), and exits 1 when that growth is above `--max-growth-pct` (a
//! plateau is expected: memory grows at first, then stays flat).

use clap::Parser;
use distill_tests::{
    Server, TEACHER_SERVICE, TeacherClient, TempDir, drive_stream, fresh_checkpoint, random_inputs,
    request,
};
use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Flags of `soak`.
#[derive(Debug, Parser)]
#[command(
    name = "soak",
    about = "Resident memory of teacher-server under sustained load."
)]
struct Cli {
    /// The `teacher-server` binary (default: the one beside this program).
    #[arg(long)]
    server: Option<PathBuf>,
    /// Model to serve (default: a freshly initialised `cnn` for 1×28×28 inputs, 10 logits).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Per-sample input shape of `--model`.
    #[arg(long, value_delimiter = ',', default_value = "1,28,28")]
    input_shape: Vec<i64>,
    /// Concurrent streams, each on its own connection.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Samples per request.
    #[arg(long, default_value_t = 8)]
    batch: i64,
    /// Requests each stream keeps in flight.
    #[arg(long, default_value_t = 2)]
    in_flight: usize,
    /// Duration of the load, in minutes.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seconds between RSS samples.
    #[arg(long, default_value_t = 10)]
    interval_s: u64,
    /// libtorch threads of the server.
    #[arg(long, default_value_t = 1)]
    threads: u32,
    /// Largest acceptable RSS growth over the second half of the run, in percent.
    #[arg(long, default_value_t = 5.0)]
    max_growth_pct: f64,
}

/// Resident set size of `pid` in MiB.
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let server_bin = cli.server.clone().unwrap_or_else(|| {
        let exe = std::env::current_exe().expect("path of this program");
        exe.with_file_name(format!("teacher-server{}", std::env::consts::EXE_SUFFIX))
    });
    let tmp = TempDir::new("soak");
    let model = cli.model.clone().unwrap_or_else(|| {
        fresh_checkpoint(tmp.path(), "cnn", &cli.input_shape, 10);
        tmp.path().to_path_buf()
    });
    let threads = cli.threads.to_string();
    let args: [&OsStr; 8] = [
        OsStr::new("--model"),
        model.as_os_str(),
        OsStr::new("--device"),
        OsStr::new("cpu"),
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--threads"),
        OsStr::new(&threads),
    ];
    let mut server = Server::spawn(&server_bin, args).await;
    server.wait_healthy(TEACHER_SERVICE).await;
    let pid = server.pid();
    let wire = request(0, &random_inputs(cli.batch, &cli.input_shape));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..cli.streams {
        let client = TeacherClient::new(server.channel().await);
        streams.spawn(drive_stream(
            client,
            wire.clone(),
            1,
            cli.in_flight.max(1),
            stop.clone(),
            answered.clone(),
        ));
    }
    println!(
        "soak: {} streams × batch {} against {} (pid {pid}) for {} min, RSS every {} s",
        cli.streams,
        cli.batch,
        server_bin.display(),
        cli.minutes,
        cli.interval_s
    );
    println!("{:>7} {:>9} {:>10}", "t_s", "rss_mib", "answered");
    let start = Instant::now();
    let total = Duration::from_secs_f64(cli.minutes * 60.0);
    let mut curve: Vec<(f64, f64)> = Vec::new();
    let mut failed = None;
    loop {
        let t = start.elapsed();
        let Some(rss) = rss_mib(pid) else {
            failed = Some(format!("the server is gone; logs:\n{}", server.logs.text()));
            break;
        };
        curve.push((t.as_secs_f64(), rss));
        println!(
            "{:>7.0} {:>9.1} {:>10}",
            t.as_secs_f64(),
            rss,
            answered.load(Ordering::Relaxed)
        );
        if t >= total {
            break;
        }
        let next = start + Duration::from_secs(cli.interval_s * curve.len() as u64);
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            Some(done) = streams.join_next() => {
                let why = match done {
                    Ok(Ok(())) => "a stream ended early".to_string(),
                    Ok(Err(e)) => e,
                    Err(e) => format!("a stream task failed: {e}"),
                };
                failed = Some(why);
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    while let Some(done) = streams.join_next().await {
        if let Ok(Err(e)) = done {
            failed.get_or_insert(e);
        }
    }
    if let Some(rest) = rss_mib(pid) {
        println!("at rest after the load: {rest:.1} MiB");
    }
    if let Some(why) = failed {
        eprintln!("soak failed: {why}");
        return ExitCode::FAILURE;
    }
    let half = total.as_secs_f64() / 2.0;
    let mid = curve
        .iter()
        .find(|(t, _)| *t >= half)
        .copied()
        .unwrap_or_default();
    let (_, last) = curve.last().copied().unwrap_or_default();
    let peak_first = curve
        .iter()
        .filter(|(t, _)| *t < half)
        .map(|&(_, r)| r)
        .fold(0.0, f64::max);
    // Samples are noisy (±10 % between neighbours as buffers come and go), so the growth is the
    // least-squares trend over the second half, times its length, relative to its mean.
    let second: Vec<(f64, f64)> = curve.iter().copied().filter(|(t, _)| *t >= half).collect();
    let n = second.len() as f64;
    let (mean_t, mean_r) = (
        second.iter().map(|p| p.0).sum::<f64>() / n,
        second.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let var_t: f64 = second.iter().map(|p| (p.0 - mean_t).powi(2)).sum();
    let cov: f64 = second.iter().map(|p| (p.0 - mean_t) * (p.1 - mean_r)).sum();
    let slope = if var_t > 0.0 { cov / var_t } else { 0.0 };
    let span = second.last().map_or(0.0, |p| p.0) - second.first().map_or(0.0, |p| p.0);
    let growth = if mean_r > 0.0 {
        slope * span / mean_r * 100.0
    } else {
        0.0
    };
    println!(
        "RSS: {:.1} MiB at start, {:.1} MiB peak in the first half, {:.1} MiB at {:.0} s, {:.1} MiB at the end: {growth:+.1} % trend over the second half (limit {} %); {} batches answered",
        curve.first().map_or(0.0, |c| c.1),
        peak_first,
        mid.1,
        mid.0,
        last,
        cli.max_growth_pct,
        answered.load(Ordering::Relaxed)
    );
    if growth > cli.max_growth_pct {
        eprintln!("soak failed: RSS grew {growth:.1} % over the second half of the run");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
