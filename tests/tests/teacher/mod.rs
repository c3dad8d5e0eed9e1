//! `teacher-server`: its command line, what it serves and how it batches, validates, and shuts
//! down.

mod batching;
mod builtin;
mod cli;
mod gather;
mod info;
mod lm;
mod output_range;
mod outputs;
mod precision;
mod reflection_v1alpha;
mod shutdown;
mod shutdown_busy;
mod sparse_tail;
mod stdout_closed;
mod torchscript;
mod validation;
mod weights_mismatch;
