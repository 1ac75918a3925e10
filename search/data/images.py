"""Decode image files (PNG, JPEG, TIFF, BMP, DICOM) to uint8 arrays of one size; read a folder's.

    from search.data.images import decode, image_mode, decode_mask, read_images
    mode = image_mode("a/x.dcm")                        # "L" or "RGB", header only
    width, height = image_size("a/x.dcm")               # at the source, header only
    pixels = decode(data, 224, mode, name="s3://b/x.jpg")  # (224, 224) or (224, 224, 3) uint8
    mask = decode_mask("masks/x.png", 224)              # (224, 224) uint8 0/1
    images, channels = read_images(src, files, size=64, channels=None)   # (N, 64, 64, 3), 3

A source is a local path or the file's bytes (as read from object storage through
`pyarrow.fs`; `name` then names it in messages and gives the extension). Every image is
resized, whole, to `size` x `size` with bilinear filtering (Pillow's, which antialiases when
shrinking; JPEGs are first decoded at the smallest 1/2..1/8 scale still >= size, and turned by
their EXIF orientation). 16-bit and float images are scaled per image to 0-255. DICOM files
(.dcm, .dicom, or the `DICM` marker at byte 128 of a file not named .png/.jpg/...) go through
`search.data.dicom` (pydicom: rescale, VOI LUT or window, MONOCHROME1 inverted), then are
resized the same way.

`read_images` reads many files with a thread pool. Channels: 1 when every source image is
grayscale, else 3 (a grayscale image in a colour dataset is repeated over RGB); `channels=`
forces either. Every file is read before anything is returned, and all unreadable files are
named in one ValueError. Each function here raises ValueError naming the file when it cannot
read it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
from PIL import Image, ImageOps

from search.data.dicom import (
    DICOM_EXTENSIONS,
    dicom_mask,
    dicom_mode,
    dicom_pixels,
    dicom_size,
    is_dicom,
)
from search.data.dicom import label as _label

_RASTER = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")  # trusted: no DICM sniffing
IMAGE_EXTENSIONS = (*_RASTER, *DICOM_EXTENSIONS)
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}
_WIDE_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


def decode(source: str | bytes, size: int, mode: str, name: str | None = None) -> np.ndarray:
    """One image as uint8 (size, size) for mode "L", (size, size, 3) for "RGB"."""
    where = _label(source, name)
    with _named(where):
        dicom = _is_dicom(source, where)
    if dicom:
        return _fit(Image.fromarray(dicom_pixels(source, where)), size, mode)
    with _named(where, source), Image.open(_file(source)) as im:
        im.draft(mode, (size, size))  # JPEG only: decode at 1/2..1/8 scale, still >= size
        ImageOps.exif_transpose(im, in_place=True)  # phone and camera JPEGs
        if im.mode in _WIDE_MODES:
            im = _to_8bit(im)
        return _fit(im, size, mode)


def image_mode(source: str | bytes, name: str | None = None) -> str:
    """ "L" when the image is grayscale (every MONOCHROME DICOM too), else "RGB"; header only."""
    where = _label(source, name)
    with _named(where):
        dicom = _is_dicom(source, where)
    if dicom:
        return dicom_mode(source, where)
    with _named(where, source), Image.open(_file(source)) as im:  # reads the header only
        return "L" if im.mode in _GRAY_MODES else "RGB"


def image_size(source: str | bytes, name: str | None = None) -> tuple[int, int]:
    """(width, height) at the source, as Pillow's `Image.size`; header only."""
    where = _label(source, name)
    with _named(where):
        dicom = _is_dicom(source, where)
    if dicom:
        return dicom_size(source, where)
    with _named(where, source), Image.open(_file(source)) as im:
        return im.size


def decode_mask(source: str | bytes, size: int, name: str | None = None) -> np.ndarray:
    """(size, size) uint8 0/1: mask > 0 at the source size, resized with bilinear filtering
    and kept where at least half a pixel's area was foreground."""
    where = _label(source, name)
    with _named(where):
        dicom = _is_dicom(source, where)
    if dicom:
        binary = dicom_mask(source, where)
    else:
        with _named(where, source), Image.open(_file(source)) as im:
            binary = np.asarray(im.convert("I") if im.mode not in ("1", "L") else im) > 0
    mask = Image.fromarray((binary * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return (np.asarray(mask) >= 128).astype(np.uint8)


def read_images(
    src: str, files: list[str], size: int, channels: int | None
) -> tuple[np.ndarray, int]:
    """All images as uint8 (N, size, size[, 3]); one ValueError naming every unreadable file."""
    paths = [os.path.join(src, f) for f in files]
    with ThreadPoolExecutor(_workers()) as pool:  # Pillow releases the GIL while decoding
        modes = list(pool.map(_try(image_mode), paths))
        bad = {f: m for f, m in zip(files, modes, strict=True) if isinstance(m, Exception)}
        channels = channels or (1 if all(m == "L" for m in modes) else 3)
        shape = (len(paths), size, size) + ((3,) if channels == 3 else ())
        images = np.empty(shape, dtype=np.uint8)
        mode = "L" if channels == 1 else "RGB"

        def load_row(i: int) -> None:
            images[i] = decode(paths[i], size, mode)

        todo = [i for i, f in enumerate(files) if f not in bad]
        errors = list(pool.map(_try(load_row), todo))
        bad.update(
            {files[i]: e for i, e in zip(todo, errors, strict=True) if isinstance(e, Exception)}
        )
    if bad:
        listing = "\n".join(_problem(os.path.join(src, f), bad[f]) for f in sorted(bad))
        raise ValueError(
            f"{len(bad)} of {len(files)} image(s) in {src} could not be read; fix or delete "
            f"them (git-lfs pointers and truncated downloads look like this):\n{listing}"
        )
    return images, channels


def _is_dicom(source: str | bytes, where: str) -> bool:
    """By name; content is sniffed for the DICM marker unless the name is a raster format's
    (that costs an open per file; a DICOM misnamed .png is then named as such in the error)."""
    return is_dicom(source, where, sniff=not where.lower().endswith(_RASTER))


@contextmanager
def _named(where: str, source: str | bytes | None = None) -> Iterator[None]:
    """Any failure reading `where` becomes one ValueError that names it."""
    try:
        yield
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
        hint = "fix or remove it"
        if source is not None and _sniffs_dicom(source, where):
            hint = "it is a DICOM file: rename it .dcm"
        raise ValueError(f"{where}: cannot be read as an image ({err}); {hint}") from err


def _sniffs_dicom(source: str | bytes, where: str) -> bool:
    try:
        return is_dicom(source, where)
    except OSError:
        return False


def _file(source: str | bytes):
    return source if isinstance(source, str | os.PathLike) else io.BytesIO(source)


def _fit(im: Image.Image, size: int, mode: str) -> np.ndarray:
    return np.asarray(im.convert(mode).resize((size, size), Image.Resampling.BILINEAR))


def _problem(path: str, err: Exception) -> str:
    text = str(err)
    return f"  {text}" if text.startswith(path) else f"  {path}: {text}"


def _workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cpus or 1))


def _try(fn):
    def call(path: str):
        try:
            return fn(path)
        except Exception as err:
            return err

    return call


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit or float grayscale -> 8-bit, stretched over the image's own range."""
    x = np.asarray(im, dtype=np.float32)
    low, high = float(x.min()), float(x.max())
    x = (x - low) / (high - low) * 255.0 if high > low else np.zeros_like(x)
    return Image.fromarray(np.round(x).astype(np.uint8))
