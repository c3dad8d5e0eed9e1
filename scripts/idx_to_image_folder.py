#!/usr/bin/env python3
"""Writes an MNIST-family IDX dataset (Fashion-MNIST by default) as an image folder in
torchvision's ImageFolder layout: ROOT/train/CLASS/NNNNN.png and ROOT/test/CLASS/NNNNN.png,
one 8-bit grayscale PNG per image.

Class folders are named `<label>_<name>` (Fashion-MNIST's names: `0_t-shirt_top`, ...,
`9_ankle_boot`), so that their sorted order, which is the class order of an image folder, is
the label order of the IDX files: a teacher trained on the IDX labels keeps its meaning.

Python's standard library only (gzip, zlib, struct): a minimal PNG writer, no Pillow. The folder
is written under ROOT.partial and renamed into place, so an interrupted run leaves no half
folder; an existing ROOT written with the same arguments is kept (ROOT/.complete records them).

  python3 scripts/idx_to_image_folder.py --idx data/fashion-mnist --out data/fashion-mnist-images \
      [--per-class N]
"""
import argparse
import gzip
import os
import shutil
import struct
import sys
import zlib

FASHION_MNIST = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                 "sneaker", "bag", "ankle_boot"]


def read_idx(folder, name, magic):
    """The dimensions and bytes of folder/name[.gz], checking its IDX magic number."""
    for path, opener in ((os.path.join(folder, name + ".gz"), gzip.open),
                         (os.path.join(folder, name), open)):
        if os.path.isfile(path):
            with opener(path, "rb") as f:
                data = f.read()
            break
    else:
        sys.exit(f"idx_to_image_folder: {os.path.join(folder, name)}[.gz] not found")
    got, = struct.unpack(">I", data[:4])
    if got != magic:
        sys.exit(f"idx_to_image_folder: {path}: magic {got:#010x}, expected {magic:#010x}")
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return dims, data[4 + 4 * ndim:]


def png_gray(width, height, pixels):
    """An 8-bit grayscale PNG of `pixels` (row-major bytes)."""
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF))
    rows = b"".join(b"\x00" + pixels[r * width:(r + 1) * width] for r in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows, 6))
            + chunk(b"IEND", b""))


def class_names(num_classes):
    """Folder names whose sorted order is the label order."""
    digits = len(str(num_classes - 1))
    names = FASHION_MNIST if num_classes <= len(FASHION_MNIST) else []
    return [f"{c:0{digits}d}_{names[c] if c < len(names) else 'class'}" for c in range(num_classes)]


def read_split(idx, prefix):
    """The image count, size, pixels and labels of one split."""
    (n, rows, cols), images = read_idx(idx, f"{prefix}-images-idx3-ubyte", 0x803)
    (n_labels,), labels = read_idx(idx, f"{prefix}-labels-idx1-ubyte", 0x801)
    if n != n_labels:
        sys.exit(f"idx_to_image_folder: {prefix}: {n} images but {n_labels} labels")
    return n, rows, cols, images, labels


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--idx", required=True, help="folder of the IDX files (.gz or raw)")
    p.add_argument("--out", required=True, help="the image folder to write")
    p.add_argument("--per-class", type=int, default=0,
                   help="at most this many images per class and split (0: all)")
    a = p.parse_args()
    stamp = f"idx={os.path.abspath(a.idx)} per_class={a.per_class}\n"
    done = os.path.join(a.out, ".complete")
    if os.path.isfile(done) and open(done).read() == stamp:
        print(f"idx_to_image_folder: {a.out} is up to date")
        return
    splits = {s: read_split(a.idx, prefix)
              for s, prefix in (("train", "train"), ("test", "t10k"))}
    num_classes = max(max(s[4]) for s in splits.values()) + 1
    names = class_names(num_classes)
    tmp = a.out.rstrip("/") + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    written = {}
    for split, (n, rows, cols, images, labels) in splits.items():
        counts = [0] * num_classes
        for c in names:
            os.makedirs(os.path.join(tmp, split, c), exist_ok=True)
        for i in range(n):
            c = labels[i]
            if a.per_class and counts[c] >= a.per_class:
                continue
            counts[c] += 1
            pixels = images[i * rows * cols:(i + 1) * rows * cols]
            with open(os.path.join(tmp, split, names[c], f"{i:05d}.png"), "wb") as f:
                f.write(png_gray(cols, rows, pixels))
        written[split] = sum(counts)
    with open(os.path.join(tmp, ".complete"), "w") as f:
        f.write(stamp)
    shutil.rmtree(a.out, ignore_errors=True)
    os.rename(tmp, a.out)
    print(f"idx_to_image_folder: {a.out}: {num_classes} classes, {written['train']} train and "
          f"{written['test']} test images")


if __name__ == "__main__":
    main()
