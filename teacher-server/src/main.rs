//! `teacher-server` binary: parse flags and run the process (see [`teacher_server::serve`]).

use clap::Parser;
use teacher_server::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    teacher_server::serve(args, teacher_server::shutdown_signal(), |model| model).await?;
    Ok(())
}
