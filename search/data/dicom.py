"""Decode a DICOM file's pixels to uint8 as a viewer shows them (pydicom 3, `pydicom.pixels`).

    from search.data.dicom import is_dicom, dicom_mode, dicom_pixels
    pixels = dicom_pixels("scan.dcm")                # (rows, cols) uint8, or (rows, cols, 3)
    mode = dicom_mode(data, name="s3://b/scan.dcm")  # "L" or "RGB", from the header only

`search.data.images.decode` calls these for every .dcm/.dicom file and every file with the
`DICM` marker at byte 128; use that, not this module, to read images.

Grayscale (MONOCHROME1/2): the modality LUT (rescale slope and intercept, or a Modality LUT
Sequence), then the VOI LUT Sequence or else the first window centre/width, mapped to 0-255
over the output range that VOI defines (pydicom's own: the window's y_min..y_max, the LUT's
lowest..highest entry); with neither, the image's own min-max. MONOCHROME1 is inverted at the
end, so bright = dense as in MONOCHROME2. Colour: YBR_* converted to RGB, PALETTE COLOR through
its palette, samples above 8 bits scaled down. Multi-frame files (a CT/MR series or a cine in
one file) give their MIDDLE frame: one image per file, as a classifier of files needs; only
that frame is decoded. Per-frame functional groups (enhanced CT/MR) are not read, so their
images take the min-max fallback.

Errors are one ValueError naming the file: not DICOM, corrupt or truncated, no pixel data, or
a compressed transfer syntax whose decoder plugin is not installed (naming the syntax and the
pip packages that decode it, from pydicom's own plugin table).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi,
    apply_windowing,
    convert_color_space,
    get_decoder,
)

DICOM_EXTENSIONS = (".dcm", ".dicom")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PIP_NAMES = {"gdcm": "python-gdcm"}  # pydicom names the import, pip needs the distribution


class DicomError(ValueError):
    """A DICOM file that cannot be read; the text names it and says what to do."""


def is_dicom(source: str | bytes, name: str | None = None, sniff: bool = True) -> bool:
    """True for a .dcm/.dicom name, or (when `sniff`) the `DICM` marker at byte 128."""
    if label(source, name).lower().endswith(DICOM_EXTENSIONS):
        return True
    if not sniff:
        return False
    if isinstance(source, str | os.PathLike):
        with open(source, "rb") as f:
            head = f.read(132)
    else:
        head = bytes(memoryview(source)[:132])
    return head[128:132] == b"DICM"


def dicom_mode(source: str | bytes, name: str | None = None) -> str:
    """ "L" for MONOCHROME1/2 (or no photometric interpretation), else "RGB"; header only."""
    where = label(source, name)
    with _reading(where):
        ds = _read(source, where, header_only=True)
        grey = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).startswith("MONOCHROME")
    return "L" if grey else "RGB"


def dicom_size(source: str | bytes, name: str | None = None) -> tuple[int, int]:
    """(width, height) = (Columns, Rows), as Pillow's `size`; header only."""
    where = label(source, name)
    with _reading(where):
        ds = _read(source, where, header_only=True)
        return int(ds.Columns), int(ds.Rows)


def dicom_pixels(source: str | bytes, name: str | None = None) -> np.ndarray:
    """The (middle frame's) pixels as uint8 (rows, cols) for grayscale, else (rows, cols, 3)."""
    where = label(source, name)
    with _reading(where):
        ds = _read(source, where)
        pixels, photometric = _decode(ds, where)
        if photometric.startswith("MONOCHROME"):
            return _grayscale(pixels, ds, invert=photometric == "MONOCHROME1")
        return _colour(pixels, ds, photometric, where)


def dicom_mask(source: str | bytes, name: str | None = None) -> np.ndarray:
    """bool (rows, cols): the stored (middle frame's) values > 0, no LUT applied."""
    where = label(source, name)
    with _reading(where):
        pixels, _ = _decode(_read(source, where), where)
    return (pixels > 0).any(-1) if pixels.ndim == 3 else pixels > 0


def label(source: str | bytes, name: str | None) -> str:
    """How messages name the file: `name`, else the path, else "<bytes>"."""
    if name is not None:
        return str(name)
    return os.fspath(source) if isinstance(source, str | os.PathLike) else "<bytes>"


@contextmanager
def _reading(where: str) -> Iterator[None]:
    """pydicom converts elements when first used, so a bad value raises anywhere: name it."""
    try:
        yield
    except DicomError:
        raise
    except Exception as err:
        raise DicomError(
            f"{where}: DICOM file cannot be read ({_why(err)}); re-export it or remove it"
        ) from err


def _read(source: str | bytes, where: str, header_only: bool = False) -> Dataset:
    handle = source if isinstance(source, str | os.PathLike) else io.BytesIO(source)
    try:
        return dcmread(handle, stop_before_pixels=header_only)
    except InvalidDicomError as err:  # no preamble + 'DICM' + file meta (or not DICOM at all)
        raise DicomError(
            f"{where}: not a DICOM file (no 'DICM' marker and file meta header); "
            "re-export it as a DICOM Part 10 file or remove it"
        ) from err
    except Exception as err:  # EOFError, struct.error, ... from a damaged header
        raise DicomError(
            f"{where}: not a readable DICOM file ({_why(err)}); re-export it or remove it"
        ) from err


def _decode(ds: Dataset, where: str) -> tuple[np.ndarray, str]:
    """The middle frame, decoded, and its photometric interpretation after decoding."""
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise DicomError(f"{where}: DICOM file without pixel data (a report?); remove it")
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax is None:
        raise DicomError(f"{where}: DICOM file without a transfer syntax; re-export it")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as err:
        raise DicomError(
            f"{where}: pydicom cannot decode transfer syntax {syntax.name} ({syntax}); "
            "convert it to an uncompressed or JPEG syntax (e.g. `gdcmconv --raw`)"
        ) from err
    if not decoder.is_available:
        raise DicomError(_missing_plugin(where, syntax, decoder.missing_dependencies))
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    try:
        pixels, meta = decoder.as_array(ds, index=frames // 2)
    except Exception as err:  # each decoder plugin raises its own kind
        fix = "the file is corrupt or truncated: re-export it or remove it"
        if syntax.is_compressed and decoder.missing_dependencies:  # e.g. 12-bit JPEG, Pillow
            fix = "the file is corrupt, or the installed decoder cannot read it: " + _install(
                decoder.missing_dependencies
            )
        raise DicomError(
            f"{where}: DICOM pixel data ({syntax.name}) cannot be decoded ({_why(err)}); {fix}"
        ) from err
    return pixels, str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))


def _missing_plugin(where: str, syntax, missing: list[str]) -> str:
    return (
        f"{where}: pixel data compressed as {syntax.name} ({syntax}) and no installed package "
        f"decodes it; {_install(missing)}"
    )


def _install(missing: list[str]) -> str:
    """ "install one of: `pip install a b` or `pip install c`", from pydicom's
    `missing_dependencies` lines ("plugin - requires pkg>=v and pkg2>=v")."""
    options = []
    for line in missing:
        needs = line.split(" - requires ", 1)[-1].split(" and ")
        names = [n.split(">=")[0].strip() for n in needs]
        options.append(" ".join(_PIP_NAMES.get(n, n) for n in names if n != "numpy"))
    choices = " or ".join(f"`pip install {o}`" for o in options) or "a pydicom decoder plugin"
    return f"install one of: {choices}"


def _why(err: Exception) -> str:
    """An exception's text on one line (plugin errors span several), or its type."""
    return " ".join(str(err).split()) or type(err).__name__


def _grayscale(pixels: np.ndarray, ds: Dataset, invert: bool) -> np.ndarray:
    values, low, high = _voi(apply_modality_lut(pixels, ds), ds)
    span = high - low
    scaled = (np.asarray(values, np.float64) - low) * (255.0 / span if span > 0 else 0.0)
    out = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return 255 - out if invert else out


def _voi(values: np.ndarray, ds: Dataset) -> tuple[np.ndarray, float, float]:
    """(values after the VOI LUT or window, lowest and highest value that VOI can give);
    pydicom's apply_voi_lut order: the LUT first when both exist."""
    items = ds.get("VOILUTSequence")
    if items and "LUTDescriptor" in items[0] and "LUTData" in items[0]:
        entries, first = items[0].LUTDescriptor[0] or 2**16, items[0].LUTDescriptor[1]
        table = apply_voi(np.arange(first, first + entries), ds)
        indices = np.rint(values).astype(np.int64)  # a LUT indexes integers
        return apply_voi(indices, ds), float(table.min()), float(table.max())
    if ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)  # the window's y range
        return apply_windowing(values, ds), float(low), float(high)
    return values, float(np.min(values)), float(np.max(values))


def _colour(pixels: np.ndarray, ds: Dataset, photometric: str, where: str) -> np.ndarray:
    try:
        if photometric == "PALETTE COLOR":
            pixels = apply_color_lut(pixels, ds)
            top = np.iinfo(pixels.dtype).max
        else:
            if photometric.startswith("YBR"):
                pixels = convert_color_space(pixels, photometric, "RGB")
            elif photometric != "RGB":
                raise ValueError(f"photometric interpretation {photometric} is not supported")
            top = 2 ** int(ds.get("BitsStored", 8)) - 1
    except Exception as err:  # a bad palette, or a YBR pydicom cannot convert
        raise DicomError(
            f"{where}: DICOM colour cannot be read ({err}); re-export as RGB"
        ) from err
    if pixels.dtype == np.uint8 and top == 255:
        return pixels
    return np.clip(np.rint(pixels.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
