//! `capture`: [`CaptureConfig`] from [`CaptureArgs`].

use super::distill::temperature;
use super::error::{ConfigError, invalid};
use super::images::image_options;
use super::teachers::{TeacherConfig, teacher_groups};
use super::text::files_options;
use crate::cli::CaptureArgs;
use crate::data::TextOptions;
use crate::images::{Augment, ImageOptions};
use crate::soft_targets::TargetRequest;
use std::path::PathBuf;

/// Settings of `capture`.
#[derive(Debug, Clone)]
pub struct CaptureConfig {
    /// The teacher's replicas (one group).
    pub teachers: TeacherConfig,
    /// IDX directory, .npz file or text corpus (its training split is captured).
    pub data_dir: PathBuf,
    /// How a text corpus is packed: `--seq-len`, the default vocabulary of the GCIDE's BPE, and
    /// the text-file flags.
    pub text: TextOptions,
    /// Capture the first N training samples only.
    pub limit: Option<usize>,
    /// An image folder's student view (the cache's key) and the teacher's normalization.
    pub images: ImageOptions,
    /// The cache directory.
    pub out: PathBuf,
    /// What each request asks for (wire dtype, top-k, temperature).
    pub request: TargetRequest,
    /// Samples per request (≥ 1).
    pub batch_size: usize,
    /// Samples per shard (≥ 1).
    pub shard_samples: usize,
}

impl TryFrom<CaptureArgs> for CaptureConfig {
    type Error = ConfigError;

    fn try_from(a: CaptureArgs) -> Result<Self, ConfigError> {
        let temperature = temperature(a.temperature)?;
        for (flag, v) in [
            ("batch-size", a.batch_size),
            ("shard-samples", a.shard_samples),
        ] {
            if v == 0 {
                return Err(invalid(flag, "must be at least 1"));
            }
        }
        if a.seq_len < 2 {
            return Err(invalid(
                "seq-len",
                format!(
                    "{} is not a sequence length of at least 2 tokens",
                    a.seq_len
                ),
            ));
        }
        let text = TextOptions {
            seq_len: a.seq_len,
            files: files_options(&a.text_files, true)?,
            ..TextOptions::default()
        };
        let groups = teacher_groups(&a.teachers.teacher, &[], &[])?;
        let images = image_options(a.images, Some(a.teacher_view), Augment::default())?;
        Ok(CaptureConfig {
            text,
            teachers: TeacherConfig::from_args(a.teachers, groups)?,
            data_dir: a.data_dir,
            limit: a.limit,
            images,
            out: a.out,
            request: TargetRequest {
                wire: a.wire,
                top_k: a.top_k,
                temperature,
                hint_output: None,
            },
            batch_size: a.batch_size,
            shard_samples: a.shard_samples,
        })
    }
}
