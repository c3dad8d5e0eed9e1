//! Image folders in torchvision's `ImageFolder` layout (`ROOT/train/CLASS/*.png|jpg|jpeg`,
//! `ROOT/test/CLASS/...`): the folder scan and its class list ([`folder`]), decoding on a
//! bounded pool of loader threads ([`decode`]), the views a model is given of an image (size,
//! channels, normalization; [`view`]), seeded augmentation ([`augment`]) and loading both
//! splits ([`load`]).
//!
//! Images are decoded once, at load, with the `image` crate, and held in memory as `u8`
//! (`N × C × H × W` bytes per kept layout). The student's un-augmented view becomes a
//! [`crate::data::Dataset`] like any other data; the views made per batch (a teacher that takes
//! another shape, augmented crops) are cut from the [`view::Store`] of each split.
//!
//! Data, not transport: imports only [`crate::data`], never tokio, tonic or the protos.

pub mod augment;
pub mod decode;
pub mod error;
pub mod folder;
pub mod load;
pub mod options;
pub mod pixels;
pub mod view;

pub use augment::{Augment, CropBox};
pub use decode::Geometry;
pub use error::ImageError;
pub use folder::{FolderSplit, is_image_folder};
pub use load::{ImageData, ImageFolder, ImageRecord, teacher_view};
pub use options::ImageOptions;
pub use view::{Store, ViewSpec};
