//! `plot`: training curves of finished runs as a PNG.

use super::error::AppError;
use super::output::outln;
use crate::config::PlotConfig;

/// `plot`: draws the training curves of the run directories into a PNG and prints its path.
///
/// # Errors
/// [`AppError::Plot`] for a run directory that cannot be read (naming the file and what was
/// expected) or an output that cannot be written; [`AppError::StdoutClosed`].
pub fn plot(cfg: PlotConfig) -> Result<(), AppError> {
    let runs = crate::outputs::plot::plot(&cfg.runs, &cfg.output, cfg.width, cfg.height)?;
    let names: Vec<String> = runs
        .iter()
        .map(|r| format!("{} ({} epochs)", r.label(), r.epochs()))
        .collect();
    outln!(
        "plot written to {} ({}x{} pixels): {}",
        cfg.output.display(),
        cfg.width,
        cfg.height,
        names.join(", ")
    )
}
