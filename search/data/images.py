"""Read a folder dataset's image files into one uint8 array, in parallel, naming every bad file.

    images, channels = read_images(src, files, size=64, channels=None)   # (N, 64, 64, 3), 3

Every image is resized, whole, to `size` x `size` with bilinear filtering (Pillow's, which
antialiases when shrinking). Channels: 1 when every source image is grayscale, else 3 (a
grayscale image in a colour dataset is repeated over RGB); `channels=` forces either. 16-bit and
float images are scaled per image to 0-255. Every file is read before anything is returned, and
all unreadable files are named in one ValueError.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def read_images(
    src: str, files: list[str], size: int, channels: int | None
) -> tuple[np.ndarray, int]:
    """All images as uint8 (N, size, size[, 3]); one ValueError naming every unreadable file."""
    paths = [os.path.join(src, f) for f in files]
    with ThreadPoolExecutor(_workers()) as pool:  # Pillow releases the GIL while decoding
        modes = list(pool.map(_try(_mode), paths))
        bad = {f: m for f, m in zip(files, modes, strict=True) if isinstance(m, Exception)}
        channels = channels or (1 if all(m in _GRAY_MODES for m in modes) else 3)
        shape = (len(paths), size, size) + ((3,) if channels == 3 else ())
        images = np.empty(shape, dtype=np.uint8)
        mode = "L" if channels == 1 else "RGB"

        def load_row(i: int) -> None:
            images[i] = _load(paths[i], size, mode)

        todo = [i for i, f in enumerate(files) if f not in bad]
        errors = list(pool.map(_try(load_row), todo))
        bad.update(
            {files[i]: e for i, e in zip(todo, errors, strict=True) if isinstance(e, Exception)}
        )
    if bad:
        listing = "\n".join(f"  {os.path.join(src, f)}: {bad[f]}" for f in sorted(bad))
        raise ValueError(
            f"{len(bad)} of {len(files)} image(s) in {src} could not be read; fix or delete "
            f"them (git-lfs pointers and truncated downloads look like this):\n{listing}"
        )
    return images, channels


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cpus or 1))


def _try(fn):
    def call(path: str):
        try:
            return fn(path)
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
            return err

    return call


def _mode(path: str) -> str:
    with Image.open(path) as im:  # reads the header only
        return im.mode


def _load(path: str, size: int, mode: str) -> np.ndarray:
    with Image.open(path) as im:
        im.draft(mode, (size, size))  # JPEG only: decode at 1/2..1/8 scale, still >= size
        ImageOps.exif_transpose(im, in_place=True)  # phone and camera JPEGs
        if im.mode in _WIDE_MODES:
            im = _to_8bit(im)
        return np.asarray(im.convert(mode).resize((size, size), Image.Resampling.BILINEAR))


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit or float grayscale -> 8-bit, stretched over the image's own range."""
    x = np.asarray(im, dtype=np.float32)
    low, high = float(x.min()), float(x.max())
    x = (x - low) / (high - low) * 255.0 if high > low else np.zeros_like(x)
    return Image.fromarray(np.round(x).astype(np.uint8))
