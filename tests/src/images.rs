//! Helpers for the image-folder tests: image folders in torchvision's `ImageFolder` layout
//! written from generated images (PNG or JPEG, with the `image` crate), and the test's own
//! computation of a view of one file.

use image::imageops::{self, FilterType};
use image::{GrayImage, Luma, Rgb, RgbImage};
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

/// What [`write_image_folder`] writes.
#[derive(Debug, Clone)]
pub struct FolderSpec {
    /// Class folder names (written as given; the classes are their sorted order).
    pub classes: Vec<String>,
    /// Images per class in `train/`.
    pub train_per_class: usize,
    /// Images per class in `test/`.
    pub test_per_class: usize,
    /// Image size in pixels (square).
    pub size: u32,
    /// RGB files (else grayscale).
    pub rgb: bool,
    /// Seed of the noise.
    pub seed: u64,
}

impl FolderSpec {
    /// `classes` classes named `c0`, `c1`, ..., `per_class` training and `per_class / 2` (at
    /// least 1) test images each, gray, `size × size`.
    pub fn gray(classes: usize, per_class: usize, size: u32) -> FolderSpec {
        FolderSpec {
            classes: (0..classes).map(|c| format!("c{c}")).collect(),
            train_per_class: per_class,
            test_per_class: (per_class / 2).max(1),
            size,
            rgb: false,
            seed: 1,
        }
    }
}

/// Writes `root/{train,test}/CLASS/NNNN.png`: noise with a bright block whose position (and,
/// in RGB, colour) depends on the class, so a small network can learn the classes. Returns the
/// training files in the order the trainer reads them (classes sorted, files sorted).
pub fn write_image_folder(root: &Path, spec: &FolderSpec) -> Vec<PathBuf> {
    let mut rng = spec.seed.wrapping_mul(6364136223846793005) | 1;
    let mut next = move || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        (rng.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as u32
    };
    let s = spec.size;
    let block = (s / 4).max(1);
    for (split, n) in [
        ("train", spec.train_per_class),
        ("test", spec.test_per_class),
    ] {
        for (c, class) in spec.classes.iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).expect("create class folder");
            let (r0, c0) = (
                (c as u32 * block) % (s - block),
                (c as u32 * 2 * block) % (s - block),
            );
            for k in 0..n {
                let pixel = |x: u32, y: u32, noise: u32| -> u8 {
                    let inside = (r0..r0 + block).contains(&y) && (c0..c0 + block).contains(&x);
                    if inside {
                        160 + (noise % 90) as u8
                    } else {
                        (noise % 80) as u8
                    }
                };
                let path = dir.join(format!("{k:04}.png"));
                if spec.rgb {
                    let img = RgbImage::from_fn(s, s, |x, y| {
                        let v = pixel(x, y, next());
                        Rgb([v, v / (1 + c as u8 % 3), 255 - v])
                    });
                    img.save(&path).expect("write png");
                } else {
                    let img = GrayImage::from_fn(s, s, |x, y| Luma([pixel(x, y, next())]));
                    img.save(&path).expect("write png");
                }
            }
        }
    }
    let mut files: Vec<PathBuf> = Vec::new();
    let mut classes = spec.classes.clone();
    classes.sort();
    for class in classes {
        let mut here: Vec<PathBuf> = std::fs::read_dir(root.join("train").join(class))
            .expect("list class")
            .map(|e| e.expect("entry").path())
            .collect();
        here.sort();
        files.extend(here);
    }
    files
}

/// The view of the image file `path` a model taking `[channels, size, size]` gets, computed
/// here with the `image` crate: converted to RGB (or gray), resized with the triangle filter,
/// scaled to [0, 1] and normalized per channel: `f32 [channels, size, size]`.
pub fn view_of(path: &Path, channels: u8, size: u32, mean: &[f64], std: &[f64]) -> Tensor {
    let img = image::open(path).expect("decode test image");
    let (bytes, c) = if channels == 3 {
        let rgb = imageops::resize(&img.to_rgb8(), size, size, FilterType::Triangle);
        (rgb.into_raw(), 3)
    } else {
        let gray = imageops::resize(&img.to_luma8(), size, size, FilterType::Triangle);
        (gray.into_raw(), 1)
    };
    let s = i64::from(size);
    let t = Tensor::from_slice(&bytes)
        .view([s, s, c])
        .permute([2, 0, 1])
        .to_kind(Kind::Float)
        / 255.0;
    let per = |v: &[f64]| Tensor::from_slice(v).to_kind(Kind::Float).view([c, 1, 1]);
    ((t - per(mean)) / per(std)).contiguous()
}

/// The Fashion-MNIST slice kept in the repository (`tests/data/fashion-mnist-slice`: the first
/// 600 training and 200 test images of Debian's `dataset-fashion-mnist`, gzipped IDX files).
pub fn fashion_mnist_slice() -> PathBuf {
    crate::workspace_root().join("tests/data/fashion-mnist-slice")
}

/// Writes [`fashion_mnist_slice`] as an image folder under `root` with
/// `scripts/idx_to_image_folder.py` (8-bit gray PNGs, class folders `0_t-shirt_top` ...
/// `9_ankle_boot`), as `make demo-byo` writes the full dataset.
///
/// # Panics
/// When the script fails, with its output.
pub fn fashion_mnist_folder(root: &Path) {
    let out =
        std::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
            .arg(crate::workspace_root().join("scripts/idx_to_image_folder.py"))
            .arg("--idx")
            .arg(fashion_mnist_slice())
            .arg("--out")
            .arg(root)
            .output()
            .expect("run scripts/idx_to_image_folder.py");
    assert!(
        out.status.success(),
        "idx_to_image_folder.py failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
