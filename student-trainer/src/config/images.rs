//! The image-folder flags of every command: [`image_options`] from [`ImageArgs`] (and the
//! teacher's view flags, and `--augment`). Pure: the folder is read when the command starts.

use super::error::{ConfigError, invalid};
use crate::cli::{ImageArgs, TeacherViewArgs};
use crate::images::options::parse_size;
use crate::images::{Augment, ImageOptions};

/// The [`ImageOptions`] of `images`, with the teacher's normalization `teacher` (commands that
/// talk to teachers) and `augment` (`train` and `distill`).
///
/// # Errors
/// [`ConfigError::Invalid`] naming the flag: a malformed `--image-size`, `--channels` other than
/// 1 or 3, a mean that is not finite, a std that is not finite and positive, `--loader-threads
/// 0`.
pub(crate) fn image_options(
    images: ImageArgs,
    teacher: Option<TeacherViewArgs>,
    augment: Augment,
) -> Result<ImageOptions, ConfigError> {
    let size = images
        .image_size
        .as_deref()
        .map(parse_size)
        .transpose()
        .map_err(|e| invalid("image-size", e))?;
    if let Some(c) = images.channels
        && c != 1
        && c != 3
    {
        return Err(invalid(
            "channels",
            format!("expected 1 (gray) or 3 (RGB), got {c}"),
        ));
    }
    if images.loader_threads == Some(0) {
        return Err(invalid("loader-threads", "must be at least 1"));
    }
    let teacher = teacher.unwrap_or_default();
    check_values("mean", &images.mean, false)?;
    check_values("std", &images.std, true)?;
    check_values(
        "teacher-mean",
        teacher.teacher_mean.as_deref().unwrap_or(&[]),
        false,
    )?;
    check_values(
        "teacher-std",
        teacher.teacher_std.as_deref().unwrap_or(&[]),
        true,
    )?;
    Ok(ImageOptions {
        size,
        channels: images.channels,
        mean: images.mean,
        std: images.std,
        teacher_mean: teacher.teacher_mean,
        teacher_std: teacher.teacher_std,
        test_dir: images.test_dir,
        skip_bad: images.skip_bad_images,
        loader_threads: images.loader_threads,
        augment,
    })
}

/// Normalization values of `--flag`: finite, and positive for a standard deviation.
fn check_values(flag: &'static str, values: &[f64], positive: bool) -> Result<(), ConfigError> {
    match values
        .iter()
        .find(|v| !v.is_finite() || (positive && **v <= 0.0))
    {
        Some(v) if positive => Err(invalid(
            flag,
            format!("expected finite values > 0 (one, or one per channel), got {v}"),
        )),
        Some(v) => Err(invalid(
            flag,
            format!("expected finite values (one, or one per channel), got {v}"),
        )),
        None => Ok(()),
    }
}
