//! Decoding an image folder's files with the `image` crate (PNG, JPEG; the format comes from
//! the file's content) on a bounded pool of loader threads, each image converted and resized
//! into every pixel layout the run keeps.
//!
//! The threads take file indices from a shared counter and send each result through a
//! channel of `2 × threads` slots to the calling thread, which copies it into place: at most
//! that many decoded images wait between the threads and the buffers. A decoder that panics on
//! a malformed file counts as a file that does not decode.

use super::augment::CropBox;
use super::error::ImageError;
use super::pixels::{self, Image};
use image::DynamicImage;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// A pixel layout: channels (1 gray, 3 RGB) and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Geometry {
    /// 1 (gray) or 3 (RGB).
    pub channels: u8,
    /// Rows, in pixels.
    pub height: u32,
    /// Columns, in pixels.
    pub width: u32,
}

impl Geometry {
    /// Bytes of one image: `channels × height × width`.
    pub fn bytes(self) -> usize {
        usize::from(self.channels) * self.height as usize * self.width as usize
    }

    /// The tensor shape of one image, `[C, H, W]`.
    pub fn shape(self) -> Vec<i64> {
        vec![
            i64::from(self.channels),
            i64::from(self.height),
            i64::from(self.width),
        ]
    }

    /// The layout of a `[C, H, W]` shape with 1 or 3 channels, if it is one.
    pub fn from_shape(shape: &[i64]) -> Option<Geometry> {
        let [c, h, w] = shape[..] else {
            return None;
        };
        let fits = |v: i64| (1..=i64::from(u32::MAX)).contains(&v);
        ((c == 1 || c == 3) && fits(h) && fits(w)).then_some(Geometry {
            channels: c as u8,
            height: h as u32,
            width: w as u32,
        })
    }

    /// The smallest layout holding both: the larger channel count, height and width.
    pub fn union(self, other: Geometry) -> Geometry {
        Geometry {
            channels: self.channels.max(other.channels),
            height: self.height.max(other.height),
            width: self.width.max(other.width),
        }
    }
}

/// What [`decode_all`] made of a list of files.
#[derive(Debug)]
pub struct Decoded {
    /// Per requested layout, the kept images one after the other (`H × W × C` bytes each).
    pub buffers: Vec<Vec<u8>>,
    /// Positions in the file list of the kept images, ascending.
    pub kept: Vec<usize>,
    /// Files that did not decode (kept only under `skip_bad`), in list order.
    pub skipped: Vec<PathBuf>,
    /// Seconds the decoding took (wall time).
    pub seconds: f64,
}

/// Opens and decodes one file.
///
/// # Errors
/// The reason it does not decode (unreadable, unknown format, corrupt data, a decoder panic).
pub fn open(path: &Path) -> Result<DynamicImage, String> {
    let decode = || -> Result<DynamicImage, String> {
        image::ImageReader::open(path)
            .map_err(|e| e.to_string())?
            .with_guessed_format()
            .map_err(|e| e.to_string())?
            .decode()
            .map_err(|e| e.to_string())
    };
    std::panic::catch_unwind(decode).unwrap_or_else(|_| Err("the decoder panicked".into()))
}

/// The layout of the first file of `files` that decodes: 1 channel for a grayscale image, 3
/// otherwise, and its size. Files that do not decode are passed over under `skip_bad`.
///
/// # Errors
/// [`ImageError::Decode`] for the first file when it does not decode (without `skip_bad`), or
/// when none does.
pub fn probe(files: &[PathBuf], skip_bad: bool) -> Result<Geometry, ImageError> {
    let mut first_error = None;
    for path in files {
        match open(path) {
            Ok(img) => {
                return Ok(Geometry {
                    channels: if img.color().has_color() { 3 } else { 1 },
                    height: img.height(),
                    width: img.width(),
                });
            }
            Err(reason) => {
                let e = ImageError::Decode {
                    path: path.clone(),
                    reason,
                };
                if !skip_bad {
                    return Err(e);
                }
                first_error.get_or_insert(e);
            }
        }
    }
    Err(first_error.unwrap_or_else(|| ImageError::View("no image to probe".into())))
}

/// `img` in each of `layouts`: converted to its channels (PIL's luma for RGB → gray), then
/// resized to its size (triangle filter).
pub fn to_layouts(img: &DynamicImage, layouts: &[Geometry]) -> Vec<Vec<u8>> {
    let mut converted: HashMap<u8, Vec<u8>> = HashMap::new();
    let gray_source = !img.color().has_color();
    layouts
        .iter()
        .map(|g| {
            let pixels =
                converted
                    .entry(g.channels)
                    .or_insert_with(|| match (g.channels, gray_source) {
                        (1, true) => img.to_luma8().into_raw(),
                        (1, false) => {
                            pixels::convert_channels(&img.to_rgb8().into_raw(), 3, 1).into_owned()
                        }
                        _ => img.to_rgb8().into_raw(),
                    });
            let image = Image {
                channels: g.channels,
                height: img.height(),
                width: img.width(),
                data: pixels,
            };
            let whole = CropBox::full(img.height(), img.width());
            pixels::crop_resize(image, whole, g.height, g.width)
        })
        .collect()
}

/// Decodes `files` into each of `layouts` on `threads` loader threads (see the module docs).
///
/// # Errors
/// [`ImageError::Decode`] naming the first failing file in list order among those tried
/// (without `skip_bad`: the threads stop at the first failure); [`ImageError::Loader`] when a
/// thread cannot start.
pub fn decode_all(
    files: &[PathBuf],
    layouts: &[Geometry],
    threads: usize,
    skip_bad: bool,
) -> Result<Decoded, ImageError> {
    let t0 = Instant::now();
    let n = files.len();
    let mut buffers: Vec<Vec<u8>> = layouts.iter().map(|g| vec![0u8; n * g.bytes()]).collect();
    let mut ok = vec![false; n];
    let mut failures: Vec<(usize, String)> = Vec::new();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let threads = threads.clamp(1, n.max(1));
    std::thread::scope(|scope| -> Result<(), ImageError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(2 * threads);
        for t in 0..threads {
            let (tx, next, stop) = (tx.clone(), &next, &stop);
            std::thread::Builder::new()
                .name(format!("image-loader-{t}"))
                .spawn_scoped(scope, move || {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break;
                        }
                        let result = open(&files[i]).map(|img| to_layouts(&img, layouts));
                        if tx.send((i, result)).is_err() {
                            break;
                        }
                    }
                })
                .map_err(|e| ImageError::Loader(format!("cannot start a loader thread: {e}")))?;
        }
        drop(tx);
        for (i, result) in rx {
            match result {
                Ok(parts) => {
                    for ((buf, g), part) in buffers.iter_mut().zip(layouts).zip(parts) {
                        buf[i * g.bytes()..(i + 1) * g.bytes()].copy_from_slice(&part);
                    }
                    ok[i] = true;
                }
                Err(reason) => {
                    failures.push((i, reason));
                    if !skip_bad {
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
        Ok(())
    })?;
    failures.sort();
    if !skip_bad && let Some((i, reason)) = failures.into_iter().next() {
        return Err(ImageError::Decode {
            path: files[i].clone(),
            reason,
        });
    }
    let kept: Vec<usize> = (0..n).filter(|&i| ok[i]).collect();
    compact(&mut buffers, layouts, &kept);
    Ok(Decoded {
        buffers,
        skipped: (0..n)
            .filter(|&i| !ok[i])
            .map(|i| files[i].clone())
            .collect(),
        kept,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Moves the images at positions `kept` (ascending) to the front of each buffer, in order, and
/// drops the rest.
fn compact(buffers: &mut [Vec<u8>], layouts: &[Geometry], kept: &[usize]) {
    for (buf, g) in buffers.iter_mut().zip(layouts) {
        let b = g.bytes();
        for (dst, &src) in kept.iter().enumerate() {
            if dst != src {
                buf.copy_within(src * b..(src + 1) * b, dst * b);
            }
        }
        buf.truncate(kept.len() * b);
    }
}
