//! The view a model gets of an image: its layout (channels and size) and normalization
//! ([`ViewSpec`]); the images a run keeps to cut views from ([`Store`]); and making the views
//! of a batch ([`render`]): crop, resize, flip, channels, then `(x / 255 − mean[c]) / std[c]`.

use super::augment::CropBox;
use super::decode::Geometry;
use super::error::ImageError;
use super::pixels::{self, Image};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How a model sees an image: `f32 [C, H, W]`, pixels scaled to `[0, 1]` then normalized per
/// channel (`torchvision.transforms.Normalize(mean, std)` after `ToTensor`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewSpec {
    /// Channels and size.
    pub geometry: Geometry,
    /// Mean subtracted from each channel, one value per channel.
    pub mean: Vec<f64>,
    /// Standard deviation each channel is divided by, one value per channel, each > 0.
    pub std: Vec<f64>,
}

impl ViewSpec {
    /// The per-sample tensor shape, `[C, H, W]`.
    pub fn shape(&self) -> Vec<i64> {
        self.geometry.shape()
    }

    /// `[C, H, W] mean [...] std [...]`, for logs, the cache key and messages.
    pub fn describe(&self) -> String {
        format!("{:?} mean {:?} std {:?}", self.shape(), self.mean, self.std)
    }

    /// `n` images of this view's layout (`n × H × W × C` bytes, channels interleaved) as the
    /// normalized `f32 [n, C, H, W]` tensor.
    ///
    /// # Errors
    /// [`ImageError::Torch`] (e.g. a byte count that is not `n` images).
    pub fn normalize(&self, bytes: &[u8], n: usize) -> Result<Tensor, ImageError> {
        let g = self.geometry;
        let c = i64::from(g.channels);
        let per_channel = |v: &[f64]| {
            Tensor::from_slice(v)
                .f_to_kind(Kind::Float)
                .and_then(|t| t.f_view([1, c, 1, 1]))
        };
        let (mean, std) = (per_channel(&self.mean)?, per_channel(&self.std)?);
        Ok(Tensor::from_slice(bytes)
            .f_view([n as i64, i64::from(g.height), i64::from(g.width), c])?
            .f_permute([0, 3, 1, 2])?
            .f_to_kind(Kind::Float)?
            .f_div_scalar(255.0)?
            .f_sub(&mean)?
            .f_div(&std)?
            .f_contiguous()?)
    }
}

/// The images of one split kept in memory to cut views from: `len` images of `geometry`,
/// `H × W × C` bytes each, in dataset order (`len × C × H × W` bytes in all).
#[derive(Debug, Clone, PartialEq)]
pub struct Store {
    /// The layout every image is held in.
    pub geometry: Geometry,
    /// Number of images.
    pub len: usize,
    /// The bytes.
    pub data: Vec<u8>,
}

impl Store {
    /// Image `i` (`i < len`).
    ///
    /// # Panics
    /// On `i ≥ len`.
    pub fn image(&self, i: usize) -> Image<'_> {
        let b = self.geometry.bytes();
        Image {
            channels: self.geometry.channels,
            height: self.geometry.height,
            width: self.geometry.width,
            data: &self.data[i * b..(i + 1) * b],
        }
    }

    /// The whole-image box of this store's images.
    pub fn full(&self) -> CropBox {
        CropBox::full(self.geometry.height, self.geometry.width)
    }
}

/// Output bytes of a batch from which [`render`] splits the work over threads.
const RENDER_SPLIT_BYTES: usize = 1 << 20;

/// The `view` of the images of `store` at `indices` (dataset positions): each converted to the
/// view's channels, cut to its box in `crops` (the whole image when `None`), resized to the
/// view's size, mirrored if its box says so, and normalized: `f32 [indices.len(), C, H, W]`.
/// The pixel work is split over `threads` scoped threads (contiguous parts of the batch) when
/// the batch's views hold a MiB or more.
///
/// # Errors
/// [`ImageError::View`] for an index outside the store or a box outside its images;
/// [`ImageError::Loader`] when a thread cannot start; [`ImageError::Torch`] from the
/// normalization.
pub fn render(
    store: &Store,
    indices: &[i64],
    crops: Option<&[CropBox]>,
    view: &ViewSpec,
    threads: usize,
) -> Result<Tensor, ImageError> {
    let boxes: Vec<CropBox> = (0..indices.len())
        .map(|k| {
            crops
                .and_then(|c| c.get(k))
                .copied()
                .unwrap_or(store.full())
        })
        .collect();
    // Below a MiB of pixels a batch is made on the calling thread (spawning costs more).
    let threads = if indices.len() * view.geometry.bytes() < RENDER_SPLIT_BYTES {
        1
    } else {
        threads.max(1)
    };
    if threads == 1 {
        let bytes = render_bytes(store, indices, &boxes, view.geometry)?;
        return view.normalize(&bytes, indices.len());
    }
    let per = indices.len().div_ceil(threads).max(1);
    let parts: Vec<Result<Vec<u8>, ImageError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = indices
            .chunks(per)
            .zip(boxes.chunks(per))
            .map(|(idx, b)| {
                std::thread::Builder::new()
                    .name("image-render".into())
                    .spawn_scoped(scope, move || render_bytes(store, idx, b, view.geometry))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(ImageError::Loader("a render thread panicked".into()))),
                Err(e) => Err(ImageError::Loader(format!(
                    "cannot start a render thread: {e}"
                ))),
            })
            .collect()
    });
    let mut bytes = Vec::with_capacity(indices.len() * view.geometry.bytes());
    for part in parts {
        bytes.extend(part?);
    }
    view.normalize(&bytes, indices.len())
}

/// The pixels (`H × W × C` each, in the layout `g`) of the images of `store` at `indices`, cut
/// to `boxes`.
fn render_bytes(
    store: &Store,
    indices: &[i64],
    boxes: &[CropBox],
    g: Geometry,
) -> Result<Vec<u8>, ImageError> {
    let s = store.geometry;
    let mut bytes = Vec::with_capacity(indices.len() * g.bytes());
    for (&i, &crop) in indices.iter().zip(boxes) {
        let i = usize::try_from(i)
            .ok()
            .filter(|&i| i < store.len)
            .ok_or_else(|| {
                ImageError::View(format!("sample {i} is outside the {} images", store.len))
            })?;
        if crop.top + crop.height > s.height || crop.left + crop.width > s.width {
            return Err(ImageError::View(format!(
                "crop {crop:?} is outside the {}×{} images",
                s.height, s.width
            )));
        }
        let image = store.image(i);
        let converted = pixels::convert_channels(image.data, s.channels, g.channels);
        let image = Image {
            channels: g.channels,
            data: &converted,
            ..image
        };
        bytes.extend(pixels::crop_resize(image, crop, g.height, g.width));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Store {
        // Two 2 × 2 RGB images: the second is the first + 100.
        let a: Vec<u8> = (0..12).map(|v| v * 10).collect();
        let b: Vec<u8> = a.iter().map(|v| v + 100).collect();
        Store {
            geometry: Geometry {
                channels: 3,
                height: 2,
                width: 2,
            },
            len: 2,
            data: [a, b].concat(),
        }
    }

    #[test]
    fn views_are_normalized_per_channel_in_chw_order() {
        let view = ViewSpec {
            geometry: Geometry {
                channels: 3,
                height: 2,
                width: 2,
            },
            mean: vec![0.0, 0.5, 0.25],
            std: vec![1.0, 0.5, 2.0],
        };
        let t = render(&store(), &[1], None, &view, 2).unwrap();
        assert_eq!(t.size(), [1, 3, 2, 2]);
        // Channel 1 (G) of image 1: bytes 110, 140, 170, 200 at pixels 0..4.
        let g: Vec<f32> = Vec::try_from(t.get(0).get(1).flatten(0, -1)).unwrap();
        let expected = [110.0, 140.0, 170.0, 200.0].map(|v: f64| (v / 255.0 - 0.5) / 0.5);
        for (got, want) in g.iter().zip(expected) {
            assert!(
                (f64::from(*got) - want).abs() < 1e-6,
                "{g:?} vs {expected:?}"
            );
        }
    }

    #[test]
    fn gray_views_use_pils_luma_and_out_of_range_samples_are_errors() {
        let view = ViewSpec {
            geometry: Geometry {
                channels: 1,
                height: 1,
                width: 1,
            },
            mean: vec![0.0],
            std: vec![1.0],
        };
        let t = render(&store(), &[0], None, &view, 1).unwrap();
        let lumas: Vec<u32> = store().data[..12]
            .chunks(3)
            .map(|p| u32::from(pixels::luma(p)))
            .collect();
        // One pixel: the mean of the four lumas (2 × 2 → 1 × 1), rounded.
        let mean = (f64::from(lumas.iter().sum::<u32>()) / 4.0).round();
        assert!((t.double_value(&[0, 0, 0, 0]) - mean / 255.0).abs() < 1e-6);
        let e = render(&store(), &[2], None, &view, 1)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "sample 2 is outside the 2 images");
    }
}
