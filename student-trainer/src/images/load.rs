//! Both splits of an image folder: scanned and checked ([`ImageFolder::open`]), the student's
//! view from the flags ([`ImageFolder::student_view`]), the teacher's view from its input shape
//! ([`teacher_view`]), and decoded ([`ImageFolder::load`]) into the student's dataset and the
//! stores the per-batch views are cut from.

use super::decode::{self, Geometry};
use super::error::ImageError;
use super::folder::{self, FolderSplit};
use super::options::{ImageOptions, per_channel};
use super::view::{Store, ViewSpec};
use crate::data::{Dataset, Normalization};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::Tensor;

/// What a checkpoint records of an image-folder run (`checkpoint.json`, `trainer.images`), so
/// that evaluation names the classes and sees the images as training did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The class names, sorted (class index = position).
    pub classes: Vec<String>,
    /// The student's view.
    pub view: ViewSpec,
    /// `--augment` of the run (`none`, `crop`, `flip`, `crop,flip`).
    pub augment: String,
}

/// An image folder, scanned: both splits' files and classes (the same), and the layout of its
/// first training image.
#[derive(Debug, Clone)]
pub struct ImageFolder {
    /// The training split.
    pub train: FolderSplit,
    /// The test split.
    pub test: FolderSplit,
    /// The first training image that decodes: its channels (1 for a grayscale file) and size.
    pub first: Geometry,
}

/// An image folder decoded for a run.
#[derive(Debug)]
pub struct ImageData {
    /// Class names, sorted.
    pub classes: Vec<String>,
    /// The training split in the student's view (un-augmented).
    pub train: Dataset,
    /// The test split in the student's view.
    pub test: Dataset,
    /// The images views are cut from per batch (the teacher's views, augmented crops), in the
    /// union of the views' layouts; `None` when no view is made per batch.
    pub train_store: Option<Store>,
    /// The same for the test split (the teacher's evaluation), when the teacher's view differs
    /// from the student's.
    pub test_store: Option<Store>,
    /// Images decoded (both splits).
    pub decoded: usize,
    /// Files skipped under `--skip-bad-images` (both splits).
    pub skipped: usize,
    /// Wall seconds of decoding.
    pub seconds: f64,
}

impl ImageFolder {
    /// Scans `root/train` and the test split (`--test-dir`, else `root/test`), checks that they
    /// have the same classes, and probes the first training image.
    ///
    /// # Errors
    /// The [`ImageError`]s of [`folder::scan`] and [`folder::check_same_classes`];
    /// [`ImageError::NoTestSplit`] without a test split; [`ImageError::Decode`] when the first
    /// training image does not decode (without `--skip-bad-images`).
    pub fn open(root: &Path, opts: &ImageOptions) -> Result<ImageFolder, ImageError> {
        let train = folder::scan(&root.join("train"))?;
        let test_dir = match &opts.test_dir {
            Some(dir) => dir.clone(),
            None if root.join("test").is_dir() => root.join("test"),
            None => {
                return Err(ImageError::NoTestSplit {
                    root: root.to_path_buf(),
                });
            }
        };
        let test = folder::scan(&test_dir)?;
        folder::check_same_classes(&train, &test)?;
        let first = decode::probe(&train.files, opts.skip_bad)?;
        Ok(ImageFolder { train, test, first })
    }

    /// The student's view: `--image-size` (else the first image's size), `--channels` (else
    /// the first image's), `--mean`/`--std` per channel (default 0 and 1).
    ///
    /// # Errors
    /// [`ImageError::View`] for a `--mean`/`--std` count that fits neither 1 nor the channels.
    pub fn student_view(&self, opts: &ImageOptions) -> Result<ViewSpec, ImageError> {
        let (height, width) = opts.size.unwrap_or((self.first.height, self.first.width));
        let geometry = Geometry {
            channels: opts.channels.unwrap_or(self.first.channels),
            height,
            width,
        };
        let shape = geometry.shape();
        Ok(ViewSpec {
            geometry,
            mean: per_channel(&opts.mean, geometry.channels, 0.0, "--mean", &shape)?,
            std: per_channel(&opts.std, geometry.channels, 1.0, "--std", &shape)?,
        })
    }

    /// The class names.
    pub fn classes(&self) -> &[String] {
        &self.train.classes
    }

    /// Decodes the test split alone in `view` (evaluation).
    ///
    /// # Errors
    /// As [`ImageFolder::load`].
    pub fn load_test(self, opts: &ImageOptions, view: &ViewSpec) -> Result<Dataset, ImageError> {
        let (test, _, d) = load_split(&self.test, opts, view, None, false)?;
        tracing::info!(
            images = d.kept.len(), skipped = d.skipped.len(),
            images_per_s = format!("{:.0}", d.kept.len() as f64 / d.seconds.max(1e-9)),
            view = %view.describe(), "test split decoded"
        );
        Ok(test)
    }

    /// Decodes both splits (the training split cut to its first `limit` files) on
    /// `--loader-threads` threads: the student's view of each as a [`Dataset`], and a
    /// [`Store`] of each in `store` when views are cut per batch (`keep_test_store`: the test
    /// split's too, for a teacher whose view differs).
    ///
    /// # Errors
    /// [`ImageError::Decode`] for a file that does not decode (without `--skip-bad-images`),
    /// [`ImageError::NoDecodable`] when skipping leaves a training class empty,
    /// [`ImageError::Loader`], [`ImageError::Torch`].
    pub fn load(
        self,
        opts: &ImageOptions,
        student: &ViewSpec,
        store: Option<Geometry>,
        keep_test_store: bool,
        limit: Option<usize>,
    ) -> Result<ImageData, ImageError> {
        let classes = self.train.classes.clone();
        let train = match limit {
            Some(n) => self.train.limit(n),
            None => self.train,
        };
        let (train, train_store, a) = load_split(&train, opts, student, store, true)?;
        let test_store_layout = store.filter(|_| keep_test_store);
        let (test, test_store, b) =
            load_split(&self.test, opts, student, test_store_layout, false)?;
        Ok(ImageData {
            classes,
            train,
            test,
            train_store,
            test_store,
            decoded: a.kept.len() + b.kept.len(),
            skipped: a.skipped.len() + b.skipped.len(),
            seconds: a.seconds + b.seconds,
        })
    }
}

/// One split decoded: its student dataset, its store (in layout `store`, if any), and what the
/// decoder did. `train`: a class without any decodable image is an error.
fn load_split(
    split: &FolderSplit,
    opts: &ImageOptions,
    student: &ViewSpec,
    store: Option<Geometry>,
    train: bool,
) -> Result<(Dataset, Option<Store>, decode::Decoded), ImageError> {
    let mut layouts = vec![student.geometry];
    if let Some(g) = store.filter(|g| *g != student.geometry) {
        layouts.push(g);
    }
    let mut d = decode::decode_all(&split.files, &layouts, opts.threads(), opts.skip_bad)?;
    let labels: Vec<i64> = d.kept.iter().map(|&i| split.labels[i]).collect();
    if train {
        check_every_class_kept(split, &labels)?;
    }
    for path in d.skipped.iter().take(5) {
        tracing::warn!(file = %path.display(), "--skip-bad-images: not an image that decodes, skipped");
    }
    let n = d.kept.len();
    let inputs = student.normalize(&d.buffers[0], n)?;
    let store = store.map(|g| Store {
        geometry: g,
        len: n,
        data: if g == student.geometry {
            d.buffers.swap_remove(0)
        } else {
            d.buffers.pop().unwrap_or_default()
        },
    });
    let dataset = Dataset {
        inputs,
        labels: Tensor::from_slice(&labels),
        num_classes: split.classes.len() as i64,
        tokenizer_fingerprint: None,
        normalization: uniform_normalization(student),
    };
    Ok((dataset, store, d))
}

/// Under `--skip-bad-images`, every class of the training split must keep an image.
fn check_every_class_kept(split: &FolderSplit, kept_labels: &[i64]) -> Result<(), ImageError> {
    for (c, class) in split.classes.iter().enumerate() {
        if !kept_labels.contains(&(c as i64)) {
            let skipped = split.labels.iter().filter(|&&l| l == c as i64).count();
            return Err(ImageError::NoDecodable {
                folder: split.dir.clone(),
                class: class.clone(),
                skipped,
            });
        }
    }
    Ok(())
}

/// The dataset's [`Normalization`] when every channel has the same mean and std.
fn uniform_normalization(view: &ViewSpec) -> Option<Normalization> {
    let same = |v: &[f64]| v.windows(2).all(|w| w[0] == w[1]);
    (same(&view.mean) && same(&view.std)).then(|| Normalization {
        mean: view.mean[0],
        std: view.std[0],
    })
}

/// The teacher's view of the images, for a teacher taking `teacher_shape` (its `ModelInfo`):
/// its layout, normalized with `--teacher-mean`/`--teacher-std` (else `--mean`/`--std`).
/// `None` when the student's view serves it as it is (same shape and normalization).
///
/// # Errors
/// [`ImageError::View`] naming both shapes when the teacher does not take `[C, H, W]` images
/// with 1 or 3 channels, or takes another channel count than the student without `--channels`
/// (which allows converting); or for a `--teacher-mean`/`--teacher-std` count that does not fit.
pub fn teacher_view(
    student: &ViewSpec,
    teacher_shape: &[i64],
    opts: &ImageOptions,
) -> Result<Option<ViewSpec>, ImageError> {
    let ours = student.shape();
    let Some(geometry) = Geometry::from_shape(teacher_shape) else {
        return Err(ImageError::View(format!(
            "the teacher takes inputs {teacher_shape:?} and the student's view of the images is \
             {ours:?}: an image teacher must take [C, H, W] with 1 or 3 channels"
        )));
    };
    if geometry.channels != student.geometry.channels && opts.channels.is_none() {
        return Err(ImageError::View(format!(
            "the teacher takes images {teacher_shape:?} and the student's view is {ours:?}: {} \
             channel(s) against {} (pass --channels 1 or --channels 3 to convert between gray \
             and RGB)",
            geometry.channels, student.geometry.channels
        )));
    }
    let mean = opts.teacher_mean.as_deref().unwrap_or(&opts.mean);
    let std = opts.teacher_std.as_deref().unwrap_or(&opts.std);
    let mean_flag = if opts.teacher_mean.is_some() {
        "--teacher-mean"
    } else {
        "--mean"
    };
    let std_flag = if opts.teacher_std.is_some() {
        "--teacher-std"
    } else {
        "--std"
    };
    let view = ViewSpec {
        geometry,
        mean: per_channel(mean, geometry.channels, 0.0, mean_flag, teacher_shape)?,
        std: per_channel(std, geometry.channels, 1.0, std_flag, teacher_shape)?,
    };
    Ok((view != *student).then_some(view))
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{GrayImage, Luma, Rgb, RgbImage};
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("st-images-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A 2 × 2 RGB image whose pixels are `(v, 2v, 3v)` for v = base, base+10, base+20,
    /// base+30 (row-major).
    fn rgb(path: &Path, base: u8) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut img = RgbImage::new(2, 2);
        for (k, p) in img.pixels_mut().enumerate() {
            let v = base + 10 * k as u8;
            *p = Rgb([v, 2 * v, 3 * v]);
        }
        img.save(path).unwrap();
    }

    /// A folder of two classes, `a` (RGB images with base 10 and 20) and `b` (a gray image and
    /// an RGB one), in both splits.
    fn folder(name: &str) -> PathBuf {
        let root = tmp(name);
        for split in ["train", "test"] {
            let d = root.join(split);
            rgb(&d.join("a/1.png"), 10);
            rgb(&d.join("a/2.png"), 20);
            std::fs::create_dir_all(d.join("b")).unwrap();
            GrayImage::from_pixel(2, 2, Luma([200]))
                .save(d.join("b/1.png"))
                .unwrap();
            rgb(&d.join("b/2.jpg"), 30);
        }
        root
    }

    #[test]
    fn a_folder_becomes_normalized_views_checked_by_hand() {
        let root = folder("hand");
        let opts = ImageOptions {
            size: Some((1, 1)),
            channels: Some(1),
            mean: vec![0.5],
            std: vec![0.25],
            loader_threads: Some(3),
            ..ImageOptions::default()
        };
        let f = ImageFolder::open(&root, &opts).unwrap();
        assert_eq!(f.classes(), ["a", "b"]);
        // The first training image (a/1.png) is RGB, 2 × 2.
        assert_eq!(f.first.shape(), [3, 2, 2]);
        let view = f.student_view(&opts).unwrap();
        assert_eq!(view.shape(), [1, 1, 1]);
        let d = f.load(&opts, &view, None, false, None).unwrap();
        assert_eq!(Vec::<i64>::try_from(&d.train.labels).unwrap(), [0, 0, 1, 1]);
        assert_eq!(d.train.num_classes, 2);
        // a/1.png: lumas of (v, 2v, 3v) for v = 10, 20, 30, 40 (PIL: 1.815·v), averaged by the
        // 2 × 2 → 1 × 1 resize, scaled to [0, 1] and normalized.
        let lumas: Vec<f64> = [10u8, 20, 30, 40]
            .iter()
            .map(|&v| f64::from(crate::images::pixels::luma(&[v, 2 * v, 3 * v])))
            .collect();
        let pixel = (lumas.iter().sum::<f64>() / 4.0).round();
        let want = (pixel / 255.0 - 0.5) / 0.25;
        let got = d.train.inputs.double_value(&[0, 0, 0, 0]);
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        // b/1.png is gray 200 everywhere.
        let got = d.train.inputs.double_value(&[2, 0, 0, 0]);
        assert!((got - (200.0 / 255.0 - 0.5) / 0.25).abs() < 1e-6, "{got}");
        assert_eq!((d.decoded, d.skipped), (8, 0));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn rgb_views_keep_channels_and_stores_hold_the_union_layout() {
        let root = folder("rgb");
        let opts = ImageOptions::default();
        let f = ImageFolder::open(&root, &opts).unwrap();
        let view = f.student_view(&opts).unwrap();
        assert_eq!(
            (view.shape(), view.mean.clone()),
            (vec![3, 2, 2], vec![0.0; 3])
        );
        let store = Geometry {
            channels: 3,
            height: 4,
            width: 4,
        };
        let d = f.load(&opts, &view, Some(store), true, Some(3)).unwrap();
        assert_eq!(d.train.len(), 3, "--limit 3");
        let s = d.train_store.unwrap();
        assert_eq!((s.len, s.data.len()), (3, 3 * 48));
        assert_eq!(d.test_store.unwrap().len, 4);
        // Pixel (0, 1) of a/2.png, green: 2 × (20 + 10).
        let got = d.train.inputs.double_value(&[1, 1, 0, 1]);
        assert!((got - 60.0 / 255.0).abs() < 1e-6, "{got}");
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_undecodable_file_is_named_or_skipped_and_counted() {
        let root = folder("bad");
        let bad = root.join("train/b/3.png");
        std::fs::write(&bad, b"not a png").unwrap();
        let opts = ImageOptions {
            loader_threads: Some(2),
            ..ImageOptions::default()
        };
        let f = ImageFolder::open(&root, &opts).unwrap();
        let view = f.student_view(&opts).unwrap();
        let e = f
            .clone()
            .load(&opts, &view, None, false, None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}: cannot decode the image: ", bad.display())),
            "{e}"
        );
        assert!(
            e.ends_with("--skip-bad-images skips such files and counts them)"),
            "{e}"
        );
        let skip = ImageOptions {
            skip_bad: true,
            ..opts.clone()
        };
        let d = f.load(&skip, &view, None, false, None).unwrap();
        assert_eq!((d.train.len(), d.skipped), (4, 1));
        // A class with nothing that decodes is refused even when skipping.
        for f in ["1.png", "2.jpg"] {
            std::fs::write(root.join("train/b").join(f), b"junk").unwrap();
        }
        let f = ImageFolder::open(&root, &skip).unwrap();
        let e = f
            .load(&skip, &view, None, false, None)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!(
                "{}: class `b` has no image that decodes (3 skipped under --skip-bad-images): \
                 expected at least one per class",
                root.join("train").display()
            )
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_missing_test_split_and_other_classes_are_refused() {
        let root = folder("splits");
        std::fs::remove_dir_all(root.join("test")).unwrap();
        let e = ImageFolder::open(&root, &ImageOptions::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains(": no test split: expected"), "{e}");
        let other = root.join("elsewhere");
        rgb(&other.join("a/1.png"), 10);
        rgb(&other.join("c/1.png"), 10);
        let opts = ImageOptions {
            test_dir: Some(other.clone()),
            ..ImageOptions::default()
        };
        let e = ImageFolder::open(&root, &opts).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{} and {} have different classes: only in train: b; only in test: c (train: a, \
                 b; test: a, c)",
                root.join("train").display(),
                other.display()
            )
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn the_teachers_view_follows_its_shape_and_refuses_what_cannot_be_bridged() {
        let student = ViewSpec {
            geometry: Geometry {
                channels: 1,
                height: 28,
                width: 28,
            },
            mean: vec![0.5],
            std: vec![0.5],
        };
        let opts = ImageOptions {
            mean: vec![0.5],
            std: vec![0.5],
            ..ImageOptions::default()
        };
        assert_eq!(teacher_view(&student, &[1, 28, 28], &opts).unwrap(), None);
        let bigger = teacher_view(&student, &[1, 32, 32], &opts)
            .unwrap()
            .unwrap();
        assert_eq!((bigger.shape(), bigger.mean), (vec![1, 32, 32], vec![0.5]));
        let e = teacher_view(&student, &[3, 32, 32], &opts)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "the teacher takes images [3, 32, 32] and the student's view is [1, 28, 28]: 3 \
             channel(s) against 1 (pass --channels 1 or --channels 3 to convert between gray and \
             RGB)"
        );
        let converting = ImageOptions {
            channels: Some(1),
            teacher_mean: Some(vec![0.1, 0.2, 0.3]),
            ..opts.clone()
        };
        let rgb = teacher_view(&student, &[3, 32, 32], &converting)
            .unwrap()
            .unwrap();
        assert_eq!((rgb.mean, rgb.std), (vec![0.1, 0.2, 0.3], vec![0.5; 3]));
        let e = teacher_view(&student, &[784], &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains("an image teacher must take [C, H, W]"), "{e}");
        let renormalized = ImageOptions {
            teacher_std: Some(vec![0.25]),
            ..opts
        };
        let v = teacher_view(&student, &[1, 28, 28], &renormalized)
            .unwrap()
            .unwrap();
        assert_eq!(v.std, [0.25]);
    }
}
