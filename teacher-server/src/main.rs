//! `teacher-server` binary: parse flags and run the process (see [`teacher_server::serve`]).

use clap::Parser;
use teacher_server::Args;

/// jemalloc serves every allocation of the process: Rust's, and (through the overridden `malloc`
/// family) libtorch's and gRPC's. Reasons: under sustained load glibc malloc was reported to keep
/// resident memory climbing and never return it at rest, and jemalloc returns freed pages
/// (measured with `make soak`, see the README); and glibc maps each buffer above its `mmap`
/// threshold (at most 32 MiB) afresh per batch, so a forward pass pays a page fault per 4 KiB of
/// its activations, where jemalloc reuses them: the demo CNN's f32 forward at batch 256 ran
/// ~1.8 × faster with jemalloc than with glibc (2-core Intel Xeon, Sapphire Rapids).
#[cfg(all(target_os = "linux", not(target_env = "musl")))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    teacher_server::serve(args, teacher_server::shutdown_signal(), |model| model).await?;
    Ok(())
}
