//! student-trainer: supervised training, knowledge distillation from teacher-server replicas
//! (Hinton, Vinyals & Dean 2015), and evaluation, on Fashion-MNIST, a user's NPZ data or a text
//! corpus.
//!
//! # Layout
//!
//! A folder or file per concern; what each may import is checked by the architecture test
//! (`tests/tests/layout/imports.rs` in the workspace):
//!
//! - [`cli`]: the clap structs only (flags and their help). Imports domain enums, never
//!   [`config`], [`commands`] or [`training`].
//! - [`config`]: flags → validated settings, one file per command and [`config::teachers`] for
//!   the teacher flags; owns [`config::ConfigError`]. Pure: no file, network or device.
//! - [`commands`]: one file per subcommand, the stdout they print and [`commands::AppError`].
//!   Only the binary imports it.
//! - [`teachers`]: everything that talks to teachers, and the only folder that uses tonic or the
//!   generated protos: endpoints, security, the client, teacher identity and what is expected
//!   of it, wire conversion, the replica pool. Never imports training, losses, optimizers, data,
//!   the logit cache, config, cli or commands.
//! - [`training`]: the loop on its own thread (job, epoch loop, step, where soft targets come
//!   from, checkpoints and resume). Never imports teachers, config, cli, commands, tonic or the
//!   protos.
//! - [`soft_targets`]: the hand-off between teachers and training (wire dtype, what a run asks
//!   for, a batch's soft targets).
//! - The maths and data, importing only each other, downward, and none of tokio, tonic or the
//!   protos: [`data`], [`images`] (image folders: decoding, views, augmentation),
//!   [`schedule`], [`soft_targets`], [`ensemble`], [`loss`], [`optim`], [`hint`],
//!   [`logit_cache`], [`eval`], [`on_policy`] (which batches are on-policy, prompts, the
//!   sampled batches' labels, the teacher-scored reverse KL).
//! - [`outputs`]: metrics log, report, plot, progress, Prometheus, the test-only ledger.
//! - [`signals`]: Ctrl-C and SIGTERM for the binary, and when a repeat forces the exit.

pub mod cli;
pub mod commands;
pub mod config;
pub mod data;
/// Device selection, shared with teacher-server (see [`distill_models::device`]).
pub use distill_models::device;
mod ensemble;
mod eval;
mod hint;
pub mod images;
mod logit_cache;
pub mod loss;
pub mod on_policy;
pub mod optim;
mod outputs;
pub mod schedule;
pub mod signals;
pub mod soft_targets;
pub mod teachers;
pub mod training;

pub use ensemble::EnsembleMode;
pub use eval::Accuracy;
pub use hint::{HintConfig, HintLoss, HintPlan};
pub use logit_cache::CachePlan;
pub use outputs::metrics::EpochMetrics;
pub use outputs::monitoring::StudentMetrics;
