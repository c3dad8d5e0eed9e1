//! How an image folder becomes tensors: the image flags, validated ([`ImageOptions`]), and the
//! per-channel normalization values a view gets from them ([`per_channel`]).

use super::augment::Augment;
use super::error::ImageError;
use std::path::PathBuf;

/// The image-folder flags of a command, checked for syntax and range (the folder itself is
/// read when the command starts).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageOptions {
    /// `--image-size H,W`: the student's view, in pixels (default: the first training image's
    /// size).
    pub size: Option<(u32, u32)>,
    /// `--channels 1|3`: gray or RGB for the student's view; also allows a teacher of the other
    /// channel count (converted). Default: the first training image's (1 for a grayscale file,
    /// 3 otherwise), and a teacher must then take the same.
    pub channels: Option<u8>,
    /// `--mean`: subtracted after scaling pixels to `[0, 1]`, one value for every channel or one
    /// per channel (empty: 0).
    pub mean: Vec<f64>,
    /// `--std`: divided by after the mean, one value or one per channel, each > 0 (empty: 1).
    pub std: Vec<f64>,
    /// `--teacher-mean`: the teacher's view's mean, when it differs from `--mean`.
    pub teacher_mean: Option<Vec<f64>>,
    /// `--teacher-std`: the teacher's view's std, when it differs from `--std`.
    pub teacher_std: Option<Vec<f64>>,
    /// `--test-dir DIR`: the test split's folder instead of `ROOT/test`.
    pub test_dir: Option<PathBuf>,
    /// `--skip-bad-images`: skip (and count) files that do not decode instead of failing.
    pub skip_bad: bool,
    /// `--loader-threads N`: decoding threads (`None`: the machine's CPUs, at most 8).
    pub loader_threads: Option<usize>,
    /// `--augment`: random resized crop and/or horizontal flip of the training images.
    pub augment: Augment,
}

impl ImageOptions {
    /// Whether any flag that only an image folder uses was given (they are refused for other
    /// data).
    pub fn any_given(&self) -> Option<&'static str> {
        [
            (self.size.is_some(), "--image-size"),
            (self.channels.is_some(), "--channels"),
            (!self.mean.is_empty(), "--mean"),
            (!self.std.is_empty(), "--std"),
            (self.teacher_mean.is_some(), "--teacher-mean"),
            (self.teacher_std.is_some(), "--teacher-std"),
            (self.test_dir.is_some(), "--test-dir"),
            (self.skip_bad, "--skip-bad-images"),
            (self.augment.any(), "--augment"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }

    /// Decoding threads: `--loader-threads`, else the machine's CPUs (at most 8, at least 1).
    pub fn threads(&self) -> usize {
        self.loader_threads.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(8)
        })
    }
}

/// The values of `flag` for a view of `channels` channels: `default` for each when none were
/// given, the one value repeated, or one per channel as given.
///
/// # Errors
/// [`ImageError::View`] naming the flag, the count given and the view's shape when the count
/// is neither 1 nor `channels`.
pub fn per_channel(
    values: &[f64],
    channels: u8,
    default: f64,
    flag: &str,
    shape: &[i64],
) -> Result<Vec<f64>, ImageError> {
    match values.len() {
        0 => Ok(vec![default; channels as usize]),
        1 => Ok(vec![values[0]; channels as usize]),
        n if n == channels as usize => Ok(values.to_vec()),
        n if channels == 1 => Err(ImageError::View(format!(
            "{flag} has {n} values: expected 1 (the {shape:?} view has one channel)"
        ))),
        n => Err(ImageError::View(format!(
            "{flag} has {n} values: expected 1 (every channel) or {channels} (one per channel of \
             the {shape:?} view)"
        ))),
    }
}

/// Parses `H,W` (or one number for a square) of `--image-size`: each from 1 to 16384 pixels.
///
/// # Errors
/// What was expected and what came, for the config to attach to the flag.
pub fn parse_size(s: &str) -> Result<(u32, u32), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let nums: Result<Vec<u32>, _> = parts.iter().map(|p| p.parse::<u32>()).collect();
    match nums.as_deref() {
        Ok([h, w]) if (1..=16384).contains(h) && (1..=16384).contains(w) => Ok((*h, *w)),
        Ok([s]) if (1..=16384).contains(s) => Ok((*s, *s)),
        _ => Err(format!(
            "expected H,W (or one size for a square), each 1 to 16384 pixels, got {s:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_as_height_then_width() {
        assert_eq!(parse_size("32,48"), Ok((32, 48)));
        assert_eq!(parse_size("28"), Ok((28, 28)));
        for bad in ["0,3", "a,b", "1,2,3", ""] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains("expected H,W"), "{bad}: {e}");
        }
    }

    #[test]
    fn per_channel_values_repeat_one_value_or_take_one_per_channel() {
        assert_eq!(
            per_channel(&[], 3, 1.0, "--std", &[3, 8, 8]).unwrap(),
            [1.0; 3]
        );
        assert_eq!(
            per_channel(&[0.5], 3, 0.0, "--mean", &[3, 8, 8]).unwrap(),
            [0.5; 3]
        );
        assert_eq!(
            per_channel(&[0.1, 0.2, 0.3], 3, 0.0, "--mean", &[3, 8, 8]).unwrap(),
            [0.1, 0.2, 0.3]
        );
        let e = per_channel(&[0.1, 0.2], 3, 0.0, "--mean", &[3, 8, 8])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "--mean has 2 values: expected 1 (every channel) or 3 (one per channel of the [3, 8, \
             8] view)"
        );
    }
}
