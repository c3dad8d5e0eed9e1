//! student-trainer: supervised training, knowledge distillation from teacher-server replicas
//! (Hinton, Vinyals & Dean 2015), and evaluation, on Fashion-MNIST or a user's NPZ data.
//!
//! Layout: [`cli`] (flags) → [`config`] (validation) → [`app`] (the commands), which load
//! [`data`], talk to the teacher replicas through [`pool`] and [`client`] (the only modules that see gRPC types; [`ensemble`] mixes several teachers), and
//! run the loop of [`trainer`] on its own thread over the batch [`schedule`]; [`loss`] and
//! [`optim`] are the maths, [`eval`], [`metrics`], [`progress`] and [`report`] the outputs.

pub mod app;
pub mod cli;
pub mod client;
pub mod config;
pub mod data;
/// Device selection, shared with teacher-server (see [`distill_models::device`]).
pub use distill_models::device;
pub mod ensemble;
pub mod eval;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod pool;
pub mod progress;
pub mod report;
pub mod schedule;
pub mod signals;
pub mod trainer;

pub use app::{AppError, Finished};
