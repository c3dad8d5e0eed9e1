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

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Only the engine's thread computes with several cores; the gRPC side's tensor work runs
    // without OpenMP teams of its own, which would slow the engine's operators.
    distill_models::threads::helper_thread();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(distill_models::threads::helper_thread)
        .build()?;
    rt.block_on(teacher_server::serve(
        args,
        teacher_server::shutdown_signal(),
        |model| model,
    ))?;
    Ok(())
}
