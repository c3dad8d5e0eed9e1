//! Seeded augmentation for distillation (`--augment crop,flip`): torchvision's random resized
//! crop (scale 0.08 to 1 of the area, aspect ratio 3/4 to 4/3) and horizontal flip (p = 0.5),
//! drawn as a pure function of (seed, epoch, batch index, sample).
//!
//! The same [`CropBox`] cuts the student's view and the teacher's view of an image, each
//! resized to its own shape: the teacher sees exactly the augmented view the student sees
//! ("function matching", Beyer et al. 2022, *Knowledge distillation: A good teacher is patient
//! and consistent*). Being a function of the schedule position, a resumed run repeats the
//! crops of the uninterrupted one.

use crate::data::{SPLITMIX64_GAMMA, splitmix64_mix};
use std::fmt;
use std::str::FromStr;

/// Which augmentations the training images get (`--augment`; none by default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Augment {
    /// Random resized crop (`torchvision.transforms.RandomResizedCrop`'s parameters).
    pub crop: bool,
    /// Horizontal flip with probability 0.5.
    pub flip: bool,
}

impl Augment {
    /// Whether any augmentation is on.
    pub fn any(self) -> bool {
        self.crop || self.flip
    }
}

impl FromStr for Augment {
    type Err = String;

    /// `crop`, `flip`, `crop,flip` (any order), or `none`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut a = Augment::default();
        for part in s.split(',').map(|p| p.trim().to_ascii_lowercase()) {
            match part.as_str() {
                "crop" => a.crop = true,
                "flip" => a.flip = true,
                "none" | "" => {}
                other => {
                    return Err(format!(
                        "unknown augmentation {other:?}: expected crop, flip, crop,flip or none"
                    ));
                }
            }
        }
        Ok(a)
    }
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.crop, self.flip) {
            (true, true) => write!(f, "crop,flip"),
            (true, false) => write!(f, "crop"),
            (false, true) => write!(f, "flip"),
            (false, false) => write!(f, "none"),
        }
    }
}

/// The region of an image a view shows, in pixels of the image it is cut from, and whether it
/// is mirrored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropBox {
    /// First row.
    pub top: u32,
    /// First column.
    pub left: u32,
    /// Rows (≥ 1).
    pub height: u32,
    /// Columns (≥ 1).
    pub width: u32,
    /// Mirrored left to right after cropping.
    pub flip: bool,
}

impl CropBox {
    /// The whole `height × width` image, not mirrored.
    pub fn full(height: u32, width: u32) -> CropBox {
        CropBox {
            top: 0,
            left: 0,
            height,
            width,
            flip: false,
        }
    }
}

/// Tag of the augmentation's SplitMix64 stream (the fractional part of √5, SHA-512's third
/// initial word): keeps the crops apart from the other hashes of the run seed (sample order,
/// step seeds, ensemble draws).
const AUGMENT_STREAM: u64 = 0x3c6e_f372_fe94_f82b;

/// torchvision's `RandomResizedCrop` scale range (fraction of the area).
const SCALE: (f64, f64) = (0.08, 1.0);
/// torchvision's `RandomResizedCrop` aspect-ratio range (width / height).
const RATIO: (f64, f64) = (3.0 / 4.0, 4.0 / 3.0);

/// The crop and flip of dataset sample `sample` in batch `index` of `epoch`, for an image of
/// `height × width` pixels: a pure function of its arguments.
///
/// The crop is `RandomResizedCrop.get_params` (torchvision): up to 10 draws of an area (scale
/// 0.08 to 1) and a log-uniform aspect ratio (3/4 to 4/3), the first that fits placed
/// uniformly; else the central crop with the ratio clamped to that range. Draws come from
/// SplitMix64 (Steele, Lea & Flood 2014) keyed like [`crate::schedule::step_seed`].
pub fn crop_box(
    seed: u64,
    (epoch, index, sample): (u64, usize, i64),
    height: u32,
    width: u32,
    augment: Augment,
) -> CropBox {
    let epoch_key = splitmix64_mix(splitmix64_mix(seed ^ AUGMENT_STREAM).wrapping_add(epoch));
    let batch_key = splitmix64_mix(
        epoch_key.wrapping_add(
            (index as u64)
                .wrapping_add(1)
                .wrapping_mul(SPLITMIX64_GAMMA),
        ),
    );
    let mut rng = Draws(splitmix64_mix(batch_key ^ (sample as u64)));
    let mut b = if augment.crop {
        random_resized_crop(&mut rng, height, width)
    } else {
        CropBox::full(height, width)
    };
    b.flip = augment.flip && rng.uniform() < 0.5;
    b
}

/// `RandomResizedCrop.get_params` on a `height × width` image.
fn random_resized_crop(rng: &mut Draws, height: u32, width: u32) -> CropBox {
    let (h_img, w_img) = (f64::from(height), f64::from(width));
    let area = h_img * w_img;
    let (log_lo, log_hi) = (RATIO.0.ln(), RATIO.1.ln());
    for _ in 0..10 {
        let target = area * (SCALE.0 + (SCALE.1 - SCALE.0) * rng.uniform());
        let aspect = (log_lo + (log_hi - log_lo) * rng.uniform()).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w > 0.0 && w <= w_img && h > 0.0 && h <= h_img {
            let (h, w) = (h as u32, w as u32);
            let top = rng.below(u64::from(height - h) + 1) as u32;
            let left = rng.below(u64::from(width - w) + 1) as u32;
            return CropBox {
                top,
                left,
                height: h,
                width: w,
                flip: false,
            };
        }
    }
    // The central crop, its ratio clamped to RATIO.
    let ratio = w_img / h_img;
    let (h, w) = if ratio < RATIO.0 {
        ((w_img / RATIO.0).round().min(h_img), w_img)
    } else if ratio > RATIO.1 {
        (h_img, (h_img * RATIO.1).round().min(w_img))
    } else {
        (h_img, w_img)
    };
    let (h, w) = ((h as u32).max(1), (w as u32).max(1));
    CropBox {
        top: (height - h) / 2,
        left: (width - w) / 2,
        height: h,
        width: w,
        flip: false,
    }
}

/// SplitMix64 draws.
struct Draws(u64);

impl Draws {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(SPLITMIX64_GAMMA);
        splitmix64_mix(self.0)
    }

    /// Uniform in `[0, 1)` (53 bits).
    fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..bound` (`bound > 0`), Lemire's multiply-and-reject method.
    fn below(&mut self, bound: u64) -> u64 {
        let threshold = bound.wrapping_neg() % bound;
        loop {
            let m = u128::from(self.next_u64()) * u128::from(bound);
            if (m as u64) >= threshold {
                return (m >> 64) as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: Augment = Augment {
        crop: true,
        flip: true,
    };

    #[test]
    fn augment_flags_parse_and_print() {
        assert_eq!("crop,flip".parse::<Augment>().unwrap(), BOTH);
        assert_eq!("flip, crop".parse::<Augment>().unwrap(), BOTH);
        assert!(!"none".parse::<Augment>().unwrap().any());
        assert_eq!("flip".parse::<Augment>().unwrap().to_string(), "flip");
        let e = "rotate".parse::<Augment>().unwrap_err();
        assert!(e.contains("unknown augmentation \"rotate\""), "{e}");
    }

    #[test]
    fn crops_are_a_pure_function_of_the_schedule_position() {
        let a = crop_box(7, (2, 3, 41), 64, 48, BOTH);
        assert_eq!(a, crop_box(7, (2, 3, 41), 64, 48, BOTH));
        let others = [
            crop_box(8, (2, 3, 41), 64, 48, BOTH),
            crop_box(7, (3, 3, 41), 64, 48, BOTH),
            crop_box(7, (2, 4, 41), 64, 48, BOTH),
            crop_box(7, (2, 3, 42), 64, 48, BOTH),
        ];
        assert!(others.iter().all(|o| *o != a), "{a:?} vs {others:?}");
    }

    #[test]
    fn crops_stay_inside_the_image_within_torchvisions_ranges() {
        let (mut flips, n) = (0, 2000);
        for s in 0..n {
            let b = crop_box(1, (0, 0, s), 40, 30, BOTH);
            assert!(b.top + b.height <= 40 && b.left + b.width <= 30, "{b:?}");
            let area = f64::from(b.height * b.width) / 1200.0;
            let ratio = f64::from(b.width) / f64::from(b.height);
            // Rounding to whole pixels widens the ranges slightly.
            assert!((0.06..=1.0).contains(&area), "{b:?}: area {area}");
            assert!((0.6..=1.5).contains(&ratio), "{b:?}: ratio {ratio}");
            flips += usize::from(b.flip);
        }
        // p = 0.5: 1000 ± 5 standard deviations (22).
        assert!((890..=1110).contains(&flips), "{flips} flips of {n}");
        let plain = crop_box(1, (0, 0, 3), 40, 30, Augment::default());
        assert_eq!(plain, CropBox::full(40, 30));
        let flip_only = crop_box(1, (0, 0, 3), 40, 30, "flip".parse().unwrap());
        assert_eq!((flip_only.height, flip_only.width), (40, 30));
    }
}
