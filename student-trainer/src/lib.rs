//! student-trainer: supervised training, knowledge distillation from teacher-server replicas
//! (Hinton, Vinyals & Dean 2015), and evaluation, on Fashion-MNIST or a user's NPZ data.
//!
//! Layout: [`cli`] (flags) → [`config`] (validation; the teacher groups of [`endpoint`]) →
//! [`app`] (the commands), which load [`data`], talk to the teacher replicas through [`pool`]
//! (its `scheduler` decides, its shell talks), [`client`] and [`wire`] (the only modules
//! that see gRPC types; [`ensemble`] mixes several teachers), and run the loop of [`trainer`] on
//! its own thread over the batch [`schedule`]; [`loss`], [`optim`] and [`lr_schedule`] are the
//! maths, [`eval`] (local, no network), [`teacher_eval`] (through the pool), [`metrics`],
//! [`progress`] and [`report`] the outputs; [`plot`] draws the training curves of finished runs.

pub mod app;
pub mod cache;
pub mod capture;
pub mod cli;
mod client;
pub mod config;
pub mod data;
mod endpoint;
/// Device selection, shared with teacher-server (see [`distill_models::device`]).
pub use distill_models::device;
mod ensemble;
mod eval;
pub mod hint;
pub mod loss;
pub mod lr_schedule;
mod metrics;
pub mod monitoring;
pub mod optim;
pub mod plot;
pub mod pool;
mod progress;
mod report;
pub mod schedule;
pub mod security;
pub mod signals;
pub mod targets;
mod teacher_eval;
pub mod trainer;
mod wire;

pub use app::{AppError, Finished};
pub use ensemble::EnsembleMode;
pub use wire::{TargetRequest, WireDType};
