//! The subcommands, one file each, wired from validated configs: [`train()`], [`distill()`],
//! [`capture()`], [`eval()`], [`plot()`], [`describe()`]. Each loads the data, checks the device
//! (and the teachers), runs the training loop on its own thread and prints its results on stdout
//! ([`output`]); logs go to stderr. [`error`] holds the one error type every command returns.
//!
//! Shared between commands: [`dataset`] (loading both splits), [`teachers`] (connecting the
//! pool, teacher sizes and remote evaluation) and [`views`] (the loader thread making an image
//! folder's per-batch views). Only the binary imports this folder.

pub mod capture;
pub mod dataset;
pub mod describe;
pub mod distill;
pub mod error;
pub mod eval;
pub mod on_policy;
pub mod output;
pub mod plot;
pub mod student;
pub mod teachers;
pub mod train;
pub mod views;

pub use capture::capture;
pub use describe::describe;
pub use distill::distill;
pub use error::AppError;
pub use eval::eval;
pub use output::Finished;
pub use plot::plot;
pub use train::train;
