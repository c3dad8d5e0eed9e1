//! `student-trainer`: parse flags, set up logging and the stop signals, run one command.
//!
//! Exit status: 0 on success; 1 with one `error: …` line on stderr on failure; 130 after Ctrl-C
//! and 143 after SIGTERM (a checkpoint was saved first; `--resume` continues). Signals within
//! [`student_trainer::signals::REPEAT_WINDOW`] (1 s) of the first are the same request (GNU
//! `timeout` signals the process and its group); a second signal later than that exits at once.
//! A closed stdout (`| head`) ends the command quietly with 0, once what it was doing is saved.

use anyhow::Context as _;
use clap::Parser;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Instant;
use student_trainer::cli::{Cli, Command, LogFormat};
use student_trainer::commands::{self, AppError, Finished};
use student_trainer::config::{CaptureConfig, DistillConfig, EvalConfig, PlotConfig};
use student_trainer::signals::{ShutdownSignals, StopRequest, StopRequests, StopSignal};
use student_trainer::training::TrainConfig;
use tracing_subscriber::EnvFilter;

/// jemalloc serves every allocation of the process: Rust's, and (through the overridden `malloc`
/// family) libtorch's tensor buffers. With glibc's malloc, a buffer above its `mmap` threshold
/// (at most 32 MiB) is mapped afresh for each batch and the kernel zeroes every page on first
/// touch: the in-process KD loop of `kd_pytorch.py`'s shape (the demo CNN teacher at batch
/// 128) ran at ~3,600 samples/s with glibc and ~5,700 with jemalloc, which reuses the freed
/// buffers (2-core Intel Xeon, Sapphire Rapids; teacher-server uses it too).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    // The exit status of an interrupted run: the signal's, stored when it arrives; a stop that no
    // signal asked for (the test-only `--stop-after-steps`) exits as after SIGTERM.
    let signal = Arc::new(AtomicU8::new(StopSignal::Terminate.exit_code()));
    match run(cli.command, signal.clone()) {
        Ok(Finished::Done) => ExitCode::SUCCESS,
        Ok(Finished::Interrupted) => ExitCode::from(signal.load(Ordering::SeqCst)),
        Err(e) if matches!(e.downcast_ref::<AppError>(), Some(AppError::StdoutClosed)) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::debug!(error = ?e, "full error");
            say(&format!("error: {}", one_line(&e)));
            ExitCode::FAILURE
        }
    }
}

/// Writes a line to stderr, ignoring failures (a closed stderr must not panic).
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The error and its causes on one line, leaving out causes its message already quotes and
/// libtorch's C++ frame dumps (the full text is in the `debug` log).
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let full = cause.to_string();
        let text = distill_models::first_line(&full);
        if !msg.contains(text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(text);
        }
    }
    msg
}

fn run(command: Command, signal: Arc<AtomicU8>) -> anyhow::Result<Finished> {
    // Tensor work outside the training thread (answers, batches, evaluation set-up) runs
    // without OpenMP teams of its own, which would slow the training thread's operators.
    distill_models::threads::helper_thread();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .on_thread_start(distill_models::threads::helper_thread)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stop = Arc::new(AtomicBool::new(false));
    if matches!(
        command,
        Command::Train(_) | Command::Distill(_) | Command::Capture(_)
    ) {
        let mut signals = {
            let _rt = rt.enter();
            ShutdownSignals::install().context("cannot listen for Ctrl-C and SIGTERM")?
        };
        let flag = stop.clone();
        rt.spawn(async move {
            let mut requests = StopRequests::default();
            let window = requests.window().as_secs_f64();
            loop {
                let got = signals.shutdown_signal().await;
                let name = got.name();
                match requests.on_signal(Instant::now()) {
                    StopRequest::First => {
                        // The status first: the loop may return as soon as the flag is up.
                        signal.store(got.exit_code(), Ordering::SeqCst);
                        flag.store(true, Ordering::SeqCst);
                        say(&format!(
                            "{name}: saving a checkpoint, then exiting ({name} again after \
                             {window} s exits at once)"
                        ));
                    }
                    StopRequest::Repeat => say(&format!(
                        "{name} again within {window} s: the same request, still saving the \
                         checkpoint"
                    )),
                    StopRequest::ExitNow => {
                        say(&format!(
                            "second {name}: exiting without waiting for the checkpoint"
                        ));
                        std::process::exit(got.exit_code().into());
                    }
                }
            }
        });
    }
    rt.block_on(async move {
        Ok(match command {
            Command::Train(a) => commands::train(TrainConfig::try_from(a)?, stop).await?,
            Command::Distill(a) => commands::distill(DistillConfig::try_from(a)?, stop).await?,
            Command::Capture(a) => commands::capture(CaptureConfig::try_from(a)?, stop).await?,
            Command::Eval(a) => {
                commands::eval(EvalConfig::try_from(a)?).await?;
                Finished::Done
            }
            Command::Plot(a) => {
                commands::plot(PlotConfig::try_from(a)?)?;
                Finished::Done
            }
            Command::Describe(a) => {
                commands::describe(&a.arch, &a.input_shape, a.num_classes)?;
                Finished::Done
            }
        })
    })
}
