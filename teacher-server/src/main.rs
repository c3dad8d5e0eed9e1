//! `teacher-server` binary: parse flags and run the process (see [`teacher_server::serve`]).

use clap::Parser;
use teacher_server::Args;

/// jemalloc serves every allocation of the process: Rust's, and (through the overridden `malloc`
/// family) libtorch's and gRPC's. Reason: under sustained load glibc malloc was reported to keep
/// resident memory climbing and never return it at rest; jemalloc returns freed pages. Whether
/// it is needed and sufficient is measured with `make soak` (see the README).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    teacher_server::serve(args, teacher_server::shutdown_signal(), |model| model).await?;
    Ok(())
}
