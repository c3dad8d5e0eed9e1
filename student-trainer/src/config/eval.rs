//! `eval`: [`EvalConfig`] from [`EvalArgs`].

use super::error::{ConfigError, invalid, threads};
use super::images::image_options;
use super::teachers::{TeacherConfig, teacher_groups};
use super::text::files_options;
use crate::cli::EvalArgs;
use crate::data::TextOptions;
use crate::device::DeviceChoice;
use crate::images::{Augment, ImageOptions};
use std::path::PathBuf;

/// What `eval` evaluates.
#[derive(Debug, Clone)]
pub enum EvalTarget {
    /// A checkpoint directory.
    Checkpoint(PathBuf),
    /// A TorchScript student file as exported (`--student`), with `--student-logits-output`.
    Student {
        /// The `.pt` file.
        file: PathBuf,
        /// The output holding the logits, when named.
        logits_output: Option<String>,
    },
    /// Teacher-server replicas (one group: URLs with scheme, or `dns://NAME:PORT`), evaluated
    /// through a pool with failover.
    Teachers(Box<TeacherConfig>),
}

/// Settings of `eval`.
#[derive(Debug, Clone)]
pub struct EvalConfig {
    /// What to evaluate.
    pub target: EvalTarget,
    /// IDX directory, .npz file or text corpus (its test split is used).
    pub data_dir: PathBuf,
    /// How a text corpus is packed for `--teacher` (a checkpoint uses its own length and
    /// vocabulary, and its corpus record for text files).
    pub text: TextOptions,
    /// How an image folder's test split becomes inputs (defaults: the checkpoint's record, or
    /// the teacher's shape).
    pub images: ImageOptions,
    /// Device of a checkpoint's network.
    pub device: DeviceChoice,
    /// Samples per forward pass (≥ 1).
    pub batch_size: usize,
    /// JSON on stdout instead of a table.
    pub json: bool,
    /// libtorch intra-op threads.
    pub threads: Option<usize>,
}

impl TryFrom<EvalArgs> for EvalConfig {
    type Error = ConfigError;

    fn try_from(a: EvalArgs) -> Result<Self, ConfigError> {
        let files = files_options(&a.text_files, a.checkpoint.is_none())?;
        let images = image_options(a.images, Some(a.teacher_view), Augment::default())?;
        let target = match (a.checkpoint, a.teachers.teacher.is_empty()) {
            (None, true) if a.student.is_some() => EvalTarget::Student {
                file: a.student.unwrap_or_default(),
                logits_output: a.student_logits_output,
            },
            (Some(dir), true) if a.student.is_none() => EvalTarget::Checkpoint(dir),
            (None, false) if a.student.is_none() => {
                let groups = teacher_groups(&a.teachers.teacher, &[], &[])?;
                EvalTarget::Teachers(Box::new(TeacherConfig::from_args(a.teachers, groups)?))
            }
            _ => {
                return Err(invalid(
                    "checkpoint",
                    "give exactly one of --checkpoint DIR, --student FILE.pt or --teacher URL",
                ));
            }
        };
        if a.batch_size == 0 {
            return Err(invalid("batch-size", "must be at least 1"));
        }
        Ok(EvalConfig {
            target,
            data_dir: a.data_dir,
            images,
            text: TextOptions {
                seq_len: a.seq_len,
                vocab_size: a.vocab_size,
                files,
            },
            device: a.device.parse()?,
            batch_size: a.batch_size,
            json: a.json,
            threads: threads(a.threads)?,
        })
    }
}
