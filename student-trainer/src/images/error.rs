//! What goes wrong with an image folder: each message is one line naming the folder, the file
//! or the classes concerned, and what was expected.

use std::path::PathBuf;

/// Errors of an image folder.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The folder (or a split of it) does not exist.
    #[error(
        "{}: not found: expected an image folder (ROOT/train/CLASS/*.png|jpg|jpeg and \
         ROOT/test/CLASS/..., torchvision's ImageFolder layout)",
        path.display()
    )]
    Missing {
        /// The path looked for.
        path: PathBuf,
    },
    /// The image folder has no test split.
    #[error(
        "{}: no test split: expected {}/test/CLASS/... beside {}/train, or --test-dir DIR",
        root.display(), root.display(), root.display()
    )]
    NoTestSplit {
        /// `--data-dir`.
        root: PathBuf,
    },
    /// A split holds no class folder.
    #[error(
        "{}: no class folders: expected {}/CLASS/*.png|jpg|jpeg, one folder per class",
        folder.display(), folder.display()
    )]
    NoClasses {
        /// The split's folder.
        folder: PathBuf,
    },
    /// A class folder holds no image file.
    #[error(
        "{}: class `{class}` holds no .png, .jpg or .jpeg file: expected at least one image per \
         class (classes: {classes})",
        folder.display()
    )]
    EmptyClass {
        /// The split's folder.
        folder: PathBuf,
        /// The empty class.
        class: String,
        /// Every class of the split, comma-separated.
        classes: String,
    },
    /// The training and test splits have different class folders.
    #[error(
        "{} and {} have different classes: {detail} (train: {train_classes}; test: \
         {test_classes})",
        train.display(), test.display()
    )]
    ClassesDiffer {
        /// The training split's folder.
        train: PathBuf,
        /// The test split's folder.
        test: PathBuf,
        /// Which classes are missing where.
        detail: String,
        /// The training split's classes, comma-separated.
        train_classes: String,
        /// The test split's classes, comma-separated.
        test_classes: String,
    },
    /// A file that does not decode (without `--skip-bad-images`).
    #[error(
        "{}: cannot decode the image: {reason} (expected a PNG or JPEG file; --skip-bad-images \
         skips such files and counts them)",
        path.display()
    )]
    Decode {
        /// The file.
        path: PathBuf,
        /// The decoder's reason.
        reason: String,
    },
    /// Under `--skip-bad-images`, a class kept no image.
    #[error(
        "{}: class `{class}` has no image that decodes ({skipped} skipped under \
         --skip-bad-images): expected at least one per class",
        folder.display()
    )]
    NoDecodable {
        /// The split's folder.
        folder: PathBuf,
        /// The class.
        class: String,
        /// Files of that class that did not decode.
        skipped: usize,
    },
    /// A folder could not be listed.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The flags ask for a view that cannot be made (normalization values, channels, shapes).
    #[error("{0}")]
    View(String),
    /// A loader thread could not start or panicked.
    #[error("image loader: {0}")]
    Loader(String),
    /// A libtorch failure while turning pixels into tensors.
    #[error("image tensors: {0}")]
    Torch(#[from] tch::TchError),
}
