//! `teacher-server` binary: parse flags and run the process (see [`teacher_server::serve`]).

use clap::Parser;
use teacher_server::Args;

/// jemalloc serves every allocation of the process: Rust's, and (through the overridden `malloc`
/// family) libtorch's and gRPC's. Under glibc malloc the server's resident memory kept climbing
/// under sustained load (~30 MB per minute, never returned at rest): libtorch's large,
/// differently sized activation buffers fragment glibc's heaps once its dynamic mmap threshold
/// has risen. jemalloc reuses and returns them, and RSS plateaus (`make soak`).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    teacher_server::serve(args, teacher_server::shutdown_signal(), |model| model).await?;
    Ok(())
}
