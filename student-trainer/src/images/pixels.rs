//! Pixel operations on `u8` images held row-major with interleaved channels (`H × W × C`, the
//! `image` crate's layout): channel conversion (gray ↔ RGB) and crop, resize and flip.
//!
//! Resizing is the `image` crate's triangle (bilinear) filter, which widens its support when it
//! shrinks an image (area-aware, like PIL's `BILINEAR` that torchvision's `Resize` uses on PIL
//! images). RGB → gray is PIL's `convert("L")` (ITU-R 601-2 luma, `L = R·299/1000 +
//! G·587/1000 + B·114/1000`, in PIL's fixed point); gray → RGB repeats the gray value.

use super::augment::CropBox;
use image::imageops::{self, FilterType};
use image::{ImageBuffer, Luma, Pixel, Rgb};
use std::borrow::Cow;

/// `pixels` (`len = H·W·from`) with `to` channels instead of `from` (1 or 3 each).
pub fn convert_channels(pixels: &[u8], from: u8, to: u8) -> Cow<'_, [u8]> {
    match (from, to) {
        (3, 1) => Cow::Owned(pixels.chunks_exact(3).map(luma).collect()),
        (1, 3) => Cow::Owned(pixels.iter().flat_map(|&v| [v, v, v]).collect()),
        _ => Cow::Borrowed(pixels),
    }
}

/// PIL's luma of one RGB pixel: `(R·19595 + G·38470 + B·7471 + 2¹⁵) >> 16`.
pub fn luma(rgb: &[u8]) -> u8 {
    let (r, g, b) = (u32::from(rgb[0]), u32::from(rgb[1]), u32::from(rgb[2]));
    ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16) as u8
}

/// An image's pixels: `data` is `height × width × channels` bytes.
#[derive(Debug, Clone, Copy)]
pub struct Image<'a> {
    /// 1 (gray) or 3 (RGB).
    pub channels: u8,
    /// Rows.
    pub height: u32,
    /// Columns.
    pub width: u32,
    /// The bytes, row-major, channels interleaved.
    pub data: &'a [u8],
}

/// The region `crop` of `image`, resized to `height × width` (triangle filter; copied when the
/// sizes agree) and mirrored when `crop.flip`: `height × width × image.channels` bytes.
///
/// # Panics
/// If `image.data` does not hold `height × width × channels` bytes of its image (a caller's
/// bug: every image comes from a buffer of that layout).
pub fn crop_resize(image: Image<'_>, crop: CropBox, height: u32, width: u32) -> Vec<u8> {
    if (crop.height, crop.width) == (height, width) && !crop.flip {
        // A plain cut (the whole image, unchanged, included): rows copied as they are.
        let c = usize::from(image.channels);
        let row = image.width as usize * c;
        let (left, w) = (crop.left as usize * c, width as usize * c);
        let rows = crop.top as usize..(crop.top + crop.height) as usize;
        return rows
            .flat_map(|r| &image.data[r * row + left..r * row + left + w])
            .copied()
            .collect();
    }
    match image.channels {
        1 => crop_resize_as::<Luma<u8>>(image, crop, height, width),
        _ => crop_resize_as::<Rgb<u8>>(image, crop, height, width),
    }
}

fn crop_resize_as<P: Pixel<Subpixel = u8> + 'static>(
    image: Image<'_>,
    crop: CropBox,
    height: u32,
    width: u32,
) -> Vec<u8> {
    let buf: ImageBuffer<P, &[u8]> = ImageBuffer::from_raw(image.width, image.height, image.data)
        .expect("an image buffer of height × width × channels bytes");
    let sub = imageops::crop_imm(&buf, crop.left, crop.top, crop.width, crop.height);
    // `resize` copies when the sizes agree.
    let mut out = imageops::resize(&*sub, width, height, FilterType::Triangle);
    if crop.flip {
        imageops::flip_horizontal_in_place(&mut out);
    }
    out.into_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gray_is_pils_luma_and_rgb_repeats_gray() {
        assert_eq!(luma(&[255, 255, 255]), 255);
        assert_eq!(luma(&[0, 0, 0]), 0);
        // 0.299·200 + 0.587·100 + 0.114·50 = 124.2.
        assert_eq!(luma(&[200, 100, 50]), 124);
        assert_eq!(&*convert_channels(&[7, 9], 1, 3), [7, 7, 7, 9, 9, 9]);
        assert_eq!(&*convert_channels(&[200, 100, 50], 3, 1), [124]);
    }

    #[test]
    fn crops_are_resized_and_flipped() {
        // A 2 × 4 gray image.
        let data = [0, 2, 4, 6, 10, 12, 14, 17];
        let img = Image {
            channels: 1,
            height: 2,
            width: 4,
            data: &data,
        };
        let right = CropBox {
            top: 0,
            left: 2,
            height: 2,
            width: 2,
            flip: true,
        };
        assert_eq!(crop_resize(img, right, 2, 2), [6, 4, 17, 14]);
        let unflipped = CropBox {
            flip: false,
            ..right
        };
        assert_eq!(crop_resize(img, unflipped, 2, 2), [4, 6, 14, 17]);
        assert_eq!(crop_resize(img, CropBox::full(2, 4), 2, 4), data);
        // Halving each side averages 2 × 2 blocks: (0+2+10+12)/4 = 6, (4+6+14+17)/4 = 10.25.
        assert_eq!(crop_resize(img, CropBox::full(2, 4), 1, 2), [6, 10]);
    }
}
