"""DICOM through `search.data.images`: real PneumoniaMNIST pixels written as DICOM with pydicom
(16-bit with rescale and window, MONOCHROME1 with inverted stored values, RGB, YBR, several
frames) decode back to the source pixels; broken files give one ValueError naming the file.

    pytest tests/test_dicom.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space, get_decoder

from search.data.images import (
    IMAGE_EXTENSIONS,
    decode,
    decode_mask,
    image_mode,
    image_size,
    read_images,
)

PNEUMONIA = Path(__file__).resolve().parents[1] / "data" / "pneumoniamnist.npz"
DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
# Stored = 4p + 100 (12 bits), HU = 0.5 * stored - 1000 = 2p - 950; the window maps exactly
# HU -950..-440 to 0..1 (DICOM's LINEAR: centre - 0.5 +- (width - 1) / 2).
RESCALE = {"RescaleSlope": 0.5, "RescaleIntercept": -1000, "WindowCenter": -694.5}
RESCALE["WindowWidth"] = 511


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    with np.load(PNEUMONIA) as data:
        return data["train_images"][:6]


def write_dicom(path: Path, arr: np.ndarray, photometric: str, bits: int, **elements) -> Path:
    """A DICOM file (Explicit VR Little Endian unless `TransferSyntaxUID` is given)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.Modality = DX, "DX"
    ds.set_pixel_data(arr, photometric, bits)
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for key, value in elements.items():
        setattr(meta if key == "TransferSyntaxUID" else ds, key, value)
    if meta.TransferSyntaxUID.is_compressed:
        ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return path


def monochrome2(path: Path, p: np.ndarray) -> Path:
    return write_dicom(path, (4 * p.astype(np.uint16) + 100), "MONOCHROME2", 12, **RESCALE)


def monochrome1(path: Path, p: np.ndarray) -> Path:
    """Stored 3995 - 4p with no rescale: bright stored = dark shown; the window covers it."""
    stored = (3995 - 4 * p.astype(np.int32)).astype(np.uint16)
    return write_dicom(path, stored, "MONOCHROME1", 12, WindowCenter=3485.5, WindowWidth=1021)


def close(a: np.ndarray, b: np.ndarray, levels: int = 1) -> bool:
    return int(np.abs(a.astype(int) - b.astype(int)).max()) <= levels


def test_monochrome_decodes_to_the_source_pixels(tmp_path, pixels):
    for i, p in enumerate(pixels[:3]):
        two = monochrome2(tmp_path / f"m2_{i}.dcm", p)
        one = monochrome1(tmp_path / f"m1_{i}.dcm", p)
        for path in (two, one):
            assert image_mode(str(path)) == "L"
            out = decode(str(path), 28, "L")
            assert out.shape == (28, 28) and out.dtype == np.uint8
            assert close(out, p), path.name
            assert close(decode(str(path), 28, "RGB"), np.repeat(p[..., None], 3, -1))


def test_resized_like_the_same_image_as_png(tmp_path, pixels):
    p = pixels[0]
    Image.fromarray(p).save(tmp_path / "x.png")
    png = decode(str(tmp_path / "x.png"), 64, "L")
    assert close(decode(str(monochrome1(tmp_path / "x.dcm", p)), 64, "L"), png)
    assert png.shape == (64, 64) and not close(png[:, :32], png[:, 32:], 0)


def test_no_window_stretches_the_image_range(tmp_path, pixels):
    p = pixels[1].astype(np.float64)
    path = write_dicom(tmp_path / "raw.dcm", (4 * p + 100).astype(np.uint16), "MONOCHROME2", 12)
    expected = np.rint((p - p.min()) / (p.max() - p.min()) * 255)
    assert close(decode(str(path), 28, "L"), expected)


def test_colour_and_frames(tmp_path, pixels):
    rgb = np.stack(pixels[:3], axis=-1)
    path = write_dicom(tmp_path / "rgb.dcm", rgb, "RGB", 8)
    assert image_mode(str(path)) == "RGB"
    assert np.array_equal(decode(str(path), 28, "RGB"), rgb)
    wide = write_dicom(tmp_path / "wide.dcm", pixels[0][:14], "MONOCHROME2", 8)
    assert image_size(str(wide)) == (28, 14) == image_size(wide.read_bytes())  # as Pillow's
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    path = write_dicom(tmp_path / "ybr.dcm", ybr, "YBR_FULL", 8)
    assert image_mode(str(path)) == "RGB" and close(decode(str(path), 28, "RGB"), rgb, 2)
    window = {"WindowCenter": 128, "WindowWidth": 256}  # 0..255 shown as stored
    frames = write_dicom(tmp_path / "cine.dcm", pixels[:3], "MONOCHROME2", 8, **window)
    assert np.array_equal(decode(str(frames), 28, "L"), pixels[1])  # the middle frame


def test_bytes_and_names_without_extension(tmp_path, pixels):
    path = monochrome2(tmp_path / "IM0001", pixels[0])  # DICOM exports often have no extension
    assert close(decode(str(path), 28, "L"), pixels[0])
    data = path.read_bytes()
    assert close(decode(data, 28, "L", name="s3://bucket/IM0001"), pixels[0])
    assert image_mode(data) == "L"
    assert {".dcm", ".dicom"} <= set(IMAGE_EXTENSIONS)


def test_read_images_over_png_and_dicom(tmp_path, pixels):
    files = []
    for i, p in enumerate(pixels):
        if i % 2:
            monochrome1(tmp_path / f"{i}.dcm", p)
            files.append(f"{i}.dcm")
        else:
            Image.fromarray(p).save(tmp_path / f"{i}.png")
            files.append(f"{i}.png")
    images, channels = read_images(str(tmp_path), files, 28, None)
    assert channels == 1 and images.shape == (6, 28, 28)
    assert all(close(a, b) for a, b in zip(images, pixels, strict=True))


def test_broken_files_are_named(tmp_path, pixels):
    good = monochrome2(tmp_path / "good.dcm", pixels[0]).read_bytes()
    (tmp_path / "cut.dcm").write_bytes(good[: len(good) // 2])
    Image.fromarray(pixels[0]).save(tmp_path / "png.dcm", format="PNG")
    for name in ("cut.dcm", "png.dcm"):
        path = str(tmp_path / name)
        with pytest.raises(
            ValueError, match=f"^{re.escape(path)}: .*DICOM.*re-export it.* or remove it"
        ):
            decode(path, 28, "L")
    (tmp_path / "misnamed.png").write_bytes(good)
    with pytest.raises(ValueError, match="misnamed.png: .*it is a DICOM file: rename it .dcm"):
        image_mode(str(tmp_path / "misnamed.png"))
    with pytest.raises(ValueError, match="2 of 3 image") as err:
        read_images(str(tmp_path), ["good.dcm", "cut.dcm", "png.dcm"], 28, None)
    assert "cut.dcm" in str(err.value) and "png.dcm" in str(err.value)


def _compressed(path: Path, p: np.ndarray, syntax: str) -> Path:
    """A file claiming `syntax`, with bytes that are no such stream, encapsulated."""
    bogus = encapsulate([b"\xff\xd8 not a real JPEG stream \xff\xd9"])
    return write_dicom(path, p, "MONOCHROME2", 8, TransferSyntaxUID=syntax, PixelData=bogus)


def test_compressed_without_a_plugin_says_what_to_install(tmp_path, pixels):
    if get_decoder(uid.JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder plugin is installed here")
    path = str(_compressed(tmp_path / "lossless.dcm", pixels[0], uid.JPEGLosslessSV1))
    with pytest.raises(
        ValueError, match=f"^{re.escape(path)}: .*JPEG Lossless.*pip install pylibjpeg "
    ):
        decode(path, 28, "L")
    assert image_mode(path) == "L"  # the header alone needs no plugin


def test_corrupt_compressed_data_is_named(tmp_path, pixels):
    if not get_decoder(uid.JPEGBaseline8Bit).is_available:
        pytest.skip("no JPEG Baseline decoder plugin here (pydicom uses Pillow's)")
    path = str(_compressed(tmp_path / "baseline.dcm", pixels[0], uid.JPEGBaseline8Bit))
    with pytest.raises(
        ValueError, match=f"^{re.escape(path)}: DICOM pixel data .* cannot be decoded"
    ):
        decode(path, 28, "L")


def test_masks_keep_pixels_at_least_half_foreground(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[:, :4] = 255  # left half
    mask[0, 4] = 255  # one pixel: a quarter of its 2x2 block at 4 px
    Image.fromarray(mask).save(tmp_path / "m.png")
    expected = np.zeros((4, 4), np.uint8)
    expected[:, :2] = 1
    assert np.array_equal(decode_mask(str(tmp_path / "m.png"), 4), expected)
    path = write_dicom(tmp_path / "m.dcm", (mask > 0).astype(np.uint8), "MONOCHROME2", 8)
    assert np.array_equal(decode_mask(str(path), 4), expected)


def test_signed_ct_values_and_a_voi_lut_sequence(tmp_path, pixels):
    p = pixels[2]
    ct = (2 * p.astype(np.int16) - 300).astype(np.int16)  # HU = stored - 1024: -1324..-814
    window = {"RescaleSlope": 1, "RescaleIntercept": -1024}
    window.update(WindowCenter=-1068.5, WindowWidth=511)
    path = write_dicom(tmp_path / "ct.dcm", ct, "MONOCHROME2", 12, **window)
    assert close(decode(str(path), 28, "L"), p)
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]  # 256 entries from stored value 0, 8 bits each
    item.add_new("LUTData", "US", [10 + v // 2 for v in range(256)])  # output 10..137
    path = write_dicom(tmp_path / "lut.dcm", p, "MONOCHROME2", 8, VOILUTSequence=[item])
    expected = np.rint((10 + p // 2 - 10) / 127 * 255)
    assert close(decode(str(path), 28, "L"), expected)
