//! `plot`: [`PlotConfig`] from [`PlotArgs`].

use super::error::{ConfigError, invalid};
use crate::cli::PlotArgs;
use std::path::PathBuf;

/// Settings of `plot`.
#[derive(Debug, Clone, PartialEq)]
pub struct PlotConfig {
    /// The run directories, in legend order (at least one).
    pub runs: Vec<PathBuf>,
    /// The PNG file to write (ends in `.png`).
    pub output: PathBuf,
    /// Image width in pixels, in [[`crate::outputs::plot::MIN_SIDE`], [`crate::outputs::plot::MAX_SIDE`]].
    pub width: u32,
    /// Image height in pixels, in the same range.
    pub height: u32,
}

impl TryFrom<PlotArgs> for PlotConfig {
    type Error = ConfigError;

    fn try_from(a: PlotArgs) -> Result<Self, ConfigError> {
        use crate::outputs::plot::{MAX_SIDE, MIN_SIDE};
        if a.runs.is_empty() {
            return Err(invalid("runs", "give at least one run directory"));
        }
        let is_png = a
            .output
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("png"));
        if !is_png {
            return Err(invalid(
                "output",
                format!("{}: expected a .png file name", a.output.display()),
            ));
        }
        for (flag, v) in [("width", a.width), ("height", a.height)] {
            if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
                return Err(invalid(
                    flag,
                    format!("{v} pixels: expected {MIN_SIDE} to {MAX_SIDE}"),
                ));
            }
        }
        Ok(PlotConfig {
            runs: a.runs,
            output: a.output,
            width: a.width,
            height: a.height,
        })
    }
}
