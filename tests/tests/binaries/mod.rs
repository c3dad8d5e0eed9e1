//! The built binaries themselves: how they link libtorch, and the benchmark tool.

mod bench_smoke;
mod linking;
