//! Errors of a command, each with the one message the user sees on stderr.

use crate::config::ConfigError;
use crate::data::DataError;
use crate::device::DeviceError;
use crate::images::ImageError;
use crate::logit_cache::CacheError;
use crate::outputs::plot::PlotError;
use crate::teachers::{ClientError, PoolError, SecurityError};
use crate::training::TrainError;
use distill_models::ModelError;
use std::path::PathBuf;

/// Errors of a command, each with the one message the user sees.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A flag's value is out of range or malformed.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A connection flag's file (TLS certificate, key, token file) cannot be used.
    #[error("{0}")]
    Security(#[from] SecurityError),
    /// The dataset could not be loaded.
    #[error("{0}")]
    Data(#[from] DataError),
    /// An image folder could not be read, decoded or viewed as the models need.
    #[error("{0}")]
    Images(#[from] ImageError),
    /// The device is not available.
    #[error("--device: {0}")]
    Device(#[from] DeviceError),
    /// The teacher is unreachable, incompatible, or failed mid-stream.
    #[error("{0}")]
    Client(#[from] ClientError),
    /// Training failed.
    #[error("{0}")]
    Train(#[from] TrainError),
    /// A checkpoint (e.g. `--baseline`, `--checkpoint`) could not be used.
    #[error("{0}")]
    Model(#[from] ModelError),
    /// Writing an output failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// `--out` names a file (or anything else that is not a directory).
    #[error(
        "--out {} is a file: expected a directory (for checkpoint.json, metrics.jsonl and report.json)",
        path.display()
    )]
    OutIsFile {
        /// The `--out` path.
        path: PathBuf,
    },
    /// `--out` does not exist and cannot be created.
    #[error("cannot create --out {}: {source}", path.display())]
    OutCreate {
        /// The `--out` path.
        path: PathBuf,
        /// Why `create_dir_all` failed.
        #[source]
        source: std::io::Error,
    },
    /// A libtorch failure outside the loop.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// The data does not fit the network, or the flags ask for something the run cannot give.
    #[error("{0}")]
    Mismatch(String),
    /// Stdout was closed by its reader (e.g. `| head -n 1`): the command stops quietly, as Unix
    /// tools do (checkpoints are written before anything is printed about them).
    #[error("stdout is closed")]
    StdoutClosed,
    /// The `--metrics-listen` endpoint could not start.
    #[error("--metrics-listen: {0}")]
    Metrics(String),
    /// The teacher pool failed (no replica reachable, fatal per-batch error, ...).
    #[error("{0}")]
    Pool(#[from] PoolError),
    /// The logit cache could not be used.
    #[error("{0}")]
    Cache(#[from] CacheError),
    /// The capture's writer thread could not start, or panicked.
    #[error("capture writer: {0}")]
    CaptureWriter(String),
    /// A text corpus could not be read, tokenized or packed.
    #[error("{0}")]
    Text(#[from] distill_text::TextError),
    /// A run directory could not be plotted, or the PNG not written.
    #[error("{0}")]
    Plot(#[from] PlotError),
    /// No teacher replica was reachable for `--teacher-wait`; a checkpoint was saved.
    #[error(
        "{cause}; checkpoint saved in {}: run the same command with --resume to carry on (with a teacher replica back)",
        dir.display()
    )]
    TeacherLost {
        /// Why the pool gave up.
        cause: Box<PoolError>,
        /// Where the checkpoint is.
        dir: PathBuf,
    },
}
