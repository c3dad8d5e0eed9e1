//! `student-trainer`: distillation runs against real teachers, their stops and resumes, errors,
//! evaluation, plots, and the pool's pairing of answers with samples.

mod alpha_zero;
mod broken_pipe;
mod datasets;
mod demo_opd;
mod distill;
mod ensemble;
mod errors;
mod eval_remote;
mod hints;
mod interrupt;
mod lm;
mod logit_cache;
mod on_policy;
mod plot;
mod pool_reordering;
mod resume;
mod sparse;
mod text_files;
mod torchscript;
mod torn_checkpoint;
mod values;
