//! Validated configurations, built from the parsed command line with `TryFrom`: one file per
//! command, [`teachers`] for the teacher flags `distill`, `capture` and `eval` share, and `text`
//! for the text-file flags, [`images`] for the image-folder flags.
//!
//! Validation here is pure (no file system, no network, no CUDA query), so it is unit-tested on
//! any machine; the data directory, the teacher and the device are checked when a command starts.

pub mod capture;
pub mod distill;
pub mod error;
pub mod eval;
pub mod images;
pub mod plot;
pub mod teachers;
mod text;
pub mod train;

pub use capture::CaptureConfig;
pub use distill::DistillConfig;
pub use error::ConfigError;
pub use eval::{EvalConfig, EvalTarget};
pub use plot::PlotConfig;
pub use teachers::{DEFAULT_GROUP, KEEPALIVE, TeacherConfig, teacher_groups, teacher_url};

#[cfg(test)]
mod tests;
