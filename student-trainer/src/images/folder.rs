//! The files of an image folder in torchvision's `ImageFolder` order: classes are the sorted
//! names of the split's sub-folders (class index = position in that list), and each class's
//! files are its `.png`, `.jpg` and `.jpeg` files (any letter case), its sub-folders included,
//! visited in sorted order as `torchvision.datasets.folder.make_dataset` does. Other files are
//! ignored; so are folders whose name starts with a dot (`.ipynb_checkpoints`, ...).

use super::error::ImageError;
use std::path::{Path, PathBuf};

/// File extensions read as images (compared without regard to case).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Whether `dir` is an image folder: it holds a `train` folder.
pub fn is_image_folder(dir: &Path) -> bool {
    dir.join("train").is_dir()
}

/// One split of an image folder: its classes and files.
#[derive(Debug, Clone, PartialEq)]
pub struct FolderSplit {
    /// The split's folder (`ROOT/train`, `ROOT/test` or `--test-dir`).
    pub dir: PathBuf,
    /// Class names, sorted.
    pub classes: Vec<String>,
    /// Image files, class by class in the order of `classes`.
    pub files: Vec<PathBuf>,
    /// Class index of each file, `0..classes.len()`.
    pub labels: Vec<i64>,
}

impl FolderSplit {
    /// The first `n` files (and their labels); the classes are kept.
    pub fn limit(mut self, n: usize) -> FolderSplit {
        self.files.truncate(n);
        self.labels.truncate(n);
        self
    }

    /// The classes, comma-separated, for messages.
    pub fn class_list(&self) -> String {
        self.classes.join(", ")
    }
}

/// Lists the split in `dir`.
///
/// # Errors
/// [`ImageError::Missing`] when `dir` is not a folder, [`ImageError::NoClasses`] when it holds
/// no class folder, [`ImageError::EmptyClass`] naming the first class without an image,
/// [`ImageError::Io`] when a folder cannot be listed.
pub fn scan(dir: &Path) -> Result<FolderSplit, ImageError> {
    if !dir.is_dir() {
        return Err(ImageError::Missing {
            path: dir.to_path_buf(),
        });
    }
    let mut classes: Vec<String> = entries(dir)?
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| !n.starts_with('.'))
        .collect();
    classes.sort();
    if classes.is_empty() {
        return Err(ImageError::NoClasses {
            folder: dir.to_path_buf(),
        });
    }
    let (mut files, mut labels) = (Vec::new(), Vec::new());
    for (c, class) in classes.iter().enumerate() {
        let found = class_files(&dir.join(class))?;
        if found.is_empty() {
            return Err(ImageError::EmptyClass {
                folder: dir.to_path_buf(),
                class: class.clone(),
                classes: classes.join(", "),
            });
        }
        labels.extend(std::iter::repeat_n(c as i64, found.len()));
        files.extend(found);
    }
    Ok(FolderSplit {
        dir: dir.to_path_buf(),
        classes,
        files,
        labels,
    })
}

/// Checks that both splits have the same classes.
///
/// # Errors
/// [`ImageError::ClassesDiffer`] naming both folders, the classes only one of them has, and
/// both class lists.
pub fn check_same_classes(train: &FolderSplit, test: &FolderSplit) -> Result<(), ImageError> {
    if train.classes == test.classes {
        return Ok(());
    }
    let only = |a: &FolderSplit, b: &FolderSplit| -> Vec<String> {
        a.classes
            .iter()
            .filter(|c| !b.classes.contains(c))
            .cloned()
            .collect()
    };
    let (in_train, in_test) = (only(train, test), only(test, train));
    let mut parts = Vec::new();
    if !in_train.is_empty() {
        parts.push(format!("only in train: {}", in_train.join(", ")));
    }
    if !in_test.is_empty() {
        parts.push(format!("only in test: {}", in_test.join(", ")));
    }
    Err(ImageError::ClassesDiffer {
        train: train.dir.clone(),
        test: test.dir.clone(),
        detail: parts.join("; "),
        train_classes: train.class_list(),
        test_classes: test.class_list(),
    })
}

/// The image files under a class folder: the folder and its sub-folders visited in sorted
/// order of their paths, each folder's files sorted by name.
fn class_files(class_dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let mut dirs = vec![class_dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        let subs: Vec<PathBuf> = entries(&dirs[i])?
            .into_iter()
            .filter(|p| p.is_dir())
            .collect();
        dirs.extend(subs);
        i += 1;
    }
    dirs.sort();
    let mut files = Vec::new();
    for d in &dirs {
        let mut here: Vec<PathBuf> = entries(d)?
            .into_iter()
            .filter(|p| p.is_file() && is_image_file(p))
            .collect();
        here.sort();
        files.extend(here);
    }
    Ok(files)
}

/// Whether `path` ends in one of [`IMAGE_EXTENSIONS`].
fn is_image_file(path: &Path) -> bool {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.as_str()))
}

/// The entries of `dir`.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let io = |source| ImageError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()).map_err(io))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("st-folder-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"x").unwrap();
    }

    #[test]
    fn classes_are_sorted_and_files_follow_torchvisions_order() {
        let d = tmp("order");
        for f in [
            "b/2.png",
            "b/1.JPG",
            "b/sub/0.jpeg",
            "a/z.png",
            "a/notes.txt",
            "c/x.jpg",
            ".hidden/y.png",
        ] {
            touch(&d.join(f));
        }
        let s = scan(&d).unwrap();
        assert_eq!(s.classes, ["a", "b", "c"]);
        let names: Vec<String> = s
            .files
            .iter()
            .map(|p| p.strip_prefix(&d).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            ["a/z.png", "b/1.JPG", "b/2.png", "b/sub/0.jpeg", "c/x.jpg"]
        );
        assert_eq!(s.labels, [0, 1, 1, 1, 2]);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bad_folders_are_named_with_their_classes() {
        let d = tmp("bad");
        let e = scan(&d).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: no class folders: expected {}/CLASS/*.png|jpg|jpeg, one folder per class",
                d.display(),
                d.display()
            )
        );
        touch(&d.join("cat/1.png"));
        touch(&d.join("dog/readme.txt"));
        let e = scan(&d).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "{}: class `dog` holds no .png, .jpg or .jpeg file: expected at least one image \
                 per class (classes: cat, dog)",
                d.display()
            )
        );
        let e = scan(&d.join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope: not found"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn splits_with_other_classes_are_refused_naming_both() {
        let split = |dir: &str, classes: &[&str]| FolderSplit {
            dir: PathBuf::from(dir),
            classes: classes.iter().map(|c| c.to_string()).collect(),
            files: Vec::new(),
            labels: Vec::new(),
        };
        check_same_classes(
            &split("r/train", &["a", "b"]),
            &split("r/test", &["a", "b"]),
        )
        .unwrap();
        let e = check_same_classes(
            &split("r/train", &["a", "b"]),
            &split("r/test", &["a", "c"]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "r/train and r/test have different classes: only in train: b; only in test: c \
             (train: a, b; test: a, c)"
        );
    }
}
