//! `student-trainer`: parse flags, set up logging and Ctrl-C, run one command.
//!
//! Exit status: 0 on success; 1 with one `error: …` line on stderr on failure; 130 after Ctrl-C
//! (a checkpoint was saved first; `--resume` continues). A second Ctrl-C exits at once.

use anyhow::Context as _;
use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use student_trainer::cli::{Cli, Command, LogFormat};
use student_trainer::config::{DistillConfig, EvalConfig, TrainConfig};
use student_trainer::{Finished, app};
use tracing_subscriber::EnvFilter;

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
    match run(cli.command) {
        Ok(Finished::Done) => ExitCode::SUCCESS,
        Ok(Finished::Interrupted) => ExitCode::from(130),
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, leaving out causes its message already quotes.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !msg.contains(&text) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&text);
        }
    }
    msg.replace('\n', " ")
}

fn run(command: Command) -> anyhow::Result<Finished> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    rt.spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            if flag.swap(true, Ordering::SeqCst) {
                eprintln!("second Ctrl-C: exiting without waiting for the checkpoint");
                std::process::exit(130);
            }
            eprintln!("Ctrl-C: saving a checkpoint, then exiting (Ctrl-C again to exit now)");
        }
    });
    rt.block_on(async move {
        Ok(match command {
            Command::Train(a) => app::train(TrainConfig::try_from(a)?, stop).await?,
            Command::Distill(a) => app::distill(DistillConfig::try_from(a)?, stop).await?,
            Command::Eval(a) => {
                app::eval(EvalConfig::try_from(a)?).await?;
                Finished::Done
            }
        })
    })
}
