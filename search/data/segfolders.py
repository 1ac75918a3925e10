"""Turn an images/ + masks/ folder into a segmentation npz (MedMNIST layout), once, cached.

    from search.data.segfolders import convert_segfolder
    path, info = convert_segfolder("data/isbi2012-membranes", image_size=128)
    arrays = load_npz(path, task, splits=("train", "val"))   # labels: (N, H, W) 0/1 masks

Layouts: `src/images/*.png` with `src/masks/*.png` of the same file names (also .jpg .jpeg
.bmp .tif .tiff; a mask may have another extension than its image), or pre-made splits
`src/train/{images,masks}/`, `src/val/...`, `src/test/...` (val or test may be missing: it is
then carved out of train). Without pre-made splits the images are split by a seeded
permutation, `val_frac` and `test_frac` (1/6 each: the ISBI sample's 30 images give 20/5/5).

Images are resized, whole, to `image_size` x `image_size` (bilinear; channels as the folder
task reads them, `search.data.images`), masks likewise after binarising them at the
source size (mask > 0 = foreground; the resized mask keeps a pixel where at least half of its
area was foreground). Resized whole rather than cropped: every split then has one shape,
validation and test see whole images (no tiling), and the augmentation's random resized crop
still varies scale during training. Every file is checked before
anything is written, and every problem (an image without a mask or a mask without an image,
an unreadable file, a mask whose size differs from its image) is named in one error.

Cache: as the folder task's (`search.data.folders`): `<src>/.medsweep/<name>_<size>_seg_s<seed>
.npz` (or the user cache when src is read-only), written atomically under a `FileLock`, reused
until the fingerprint (every file's path, size and mtime, and the settings) changes. The npz
holds `{split}_images`, `{split}_labels` (uint8 masks), `{split}_files`, `classes`
(background, foreground), `fingerprint` and `info` (JSON: split, counts, foreground share).
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from filelock import FileLock
from PIL import Image

from search.data.fingerprint import folder_fingerprint
from search.data.images import IMAGE_EXTENSIONS, read_images
from search.data.folder_split import all_files
from search.data.folders import cache_path, read_cached, write_cached
from trainables.data import SPLITS

FORMAT_VERSION = 1  # part of the fingerprint: bump it when the conversion changes
CLASSES = ("background", "foreground")
IMAGES, MASKS = "images", "masks"


def convert_segfolder(
    src: str,
    image_size: int,
    seed: int = 0,
    val_frac: float = 1 / 6,
    test_frac: float = 1 / 6,
    cache_dir: str | None = None,
) -> tuple[str, dict]:
    """Convert (or reuse the cached conversion of) a segmentation folder; `(npz_path, info)`,
    info = {"split", "counts", "channels", "image_size", "foreground", "source"}."""
    src = os.path.abspath(os.path.expanduser(src))
    if not (isinstance(image_size, int) and image_size > 0):
        raise ValueError(f"image_size must be a positive int (pixels a side), got {image_size!r}")
    pairs = scan(src)
    settings = {
        "format": FORMAT_VERSION,
        "kind": "masks",
        "image_size": image_size,
        "seed": seed,
        "val_frac": val_frac,
        "test_frac": test_frac,
    }
    layout = {group: {"": [f for pair in items for f in pair]} for group, items in pairs.items()}
    fingerprint = folder_fingerprint(src, all_files(layout), settings)
    path = cache_path(src, cache_dir, image_size, "seg", seed)
    info = read_cached(path, fingerprint)
    if info is None:
        with FileLock(path + ".lock"):
            info = read_cached(path, fingerprint)  # another process may have just built it
            if info is None:
                check_pairs(src, pairs)
                parts = assign(pairs, seed, val_frac, test_frac)
                arrays, info = build(src, parts, image_size)
                info["split"] = "seeded" if "all" in pairs else "premade"
                arrays.update(fingerprint=np.array(fingerprint), info=np.array(json.dumps(info)))
                write_cached(path, arrays)
    return path, {**info, "source": src}


def scan(src: str) -> dict[str, list[tuple[str, str]]]:
    """{"all" | split: [(image, mask) paths relative to src]}; one error names every image
    without a mask and every mask without an image."""
    expected = f"{src}/{IMAGES}/ and {src}/{MASKS}/ (or {src}/train/{IMAGES}/, ...)"
    if not os.path.isdir(src):
        raise ValueError(f"{src}: not a folder; expected {expected}")
    premade = [s for s in SPLITS if os.path.isdir(os.path.join(src, s))]
    if premade and "train" not in premade:
        raise ValueError(f"{src}: has {premade} but no train/; expected {expected}")
    groups = premade or [""]
    pairs, unmatched = {}, []
    for group in groups:
        folders = [os.path.join(src, group, d) for d in (IMAGES, MASKS)]
        if not all(os.path.isdir(f) for f in folders):
            raise ValueError(
                f"{os.path.join(src, group)}: needs {IMAGES}/ and {MASKS}/; expected {expected}"
            )
        images, masks = (_by_stem(f) for f in folders)
        unmatched += [
            os.path.join(folders[0], images[s]) + ": no mask of that name"
            for s in sorted(set(images) - set(masks))
        ]
        unmatched += [
            os.path.join(folders[1], masks[s]) + ": no image of that name"
            for s in sorted(set(masks) - set(images))
        ]
        pairs[group or "all"] = [
            (os.path.join(group, IMAGES, images[s]), os.path.join(group, MASKS, masks[s]))
            for s in sorted(set(images) & set(masks))
        ]
    if unmatched:
        raise ValueError(_listing(src, unmatched, "unpaired"))
    if not any(pairs.values()):
        raise ValueError(f"{src}: no image/mask pairs; expected {expected}")
    return pairs


def check_pairs(src: str, pairs: dict[str, list[tuple[str, str]]]) -> None:
    """One error naming every unreadable file and every mask whose size differs."""
    flat = [pair for items in pairs.values() for pair in items]
    with ThreadPoolExecutor(8) as pool:
        problems = [p for p in pool.map(lambda pair: _pair_problem(src, *pair), flat) if p]
    if problems:
        raise ValueError(_listing(src, problems, "bad"))


def assign(pairs: dict, seed: int, val_frac: float, test_frac: float) -> dict[str, list]:
    """{split: pairs}: the pre-made folders (a missing val/test carved from train), or a
    seeded permutation of all pairs."""
    if "all" in pairs:
        pool = pairs["all"]
        n_test = max(1, round(len(pool) * test_frac))
        n_val = max(1, round(len(pool) * val_frac))
        order = np.random.default_rng(seed).permutation(len(pool))
        picks = {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
        parts = {s: sorted(pool[i] for i in picks[s]) for s in SPLITS}
    else:
        parts = {s: list(pairs.get(s, [])) for s in SPLITS}
        for split, frac in (("test", test_frac), ("val", val_frac)):
            if not parts[split]:
                train = parts["train"]
                held = set(
                    np.random.default_rng(seed)
                    .permutation(len(train))[: max(1, round(len(train) * frac))]
                    .tolist()
                )
                parts[split] = [p for i, p in enumerate(train) if i in held]
                parts["train"] = [p for i, p in enumerate(train) if i not in held]
    empty = [s for s in SPLITS if not parts[s]]
    if empty:
        raise ValueError(
            f"splits {empty} would be empty ({sum(map(len, parts.values()))} "
            "image/mask pairs): add images"
        )
    return parts


def build(src: str, parts: dict[str, list], size: int) -> tuple[dict[str, np.ndarray], dict]:
    """The arrays and info of a checked split."""
    flat = [pair for s in SPLITS for pair in parts[s]]
    images, channels = read_images(src, [image for image, _ in flat], size, None)
    with ThreadPoolExecutor(8) as pool:
        masks = np.stack(list(pool.map(lambda pair: read_mask(src, pair[1], size), flat)))
    arrays, start = {"classes": np.array(CLASSES)}, 0
    counts, share = {}, {}
    for split in SPLITS:
        n = len(parts[split])
        arrays[f"{split}_images"] = images[start : start + n]
        arrays[f"{split}_labels"] = masks[start : start + n]
        arrays[f"{split}_files"] = np.array([image for image, _ in parts[split]], dtype=str)
        start += n
        labels = arrays[f"{split}_labels"].reshape(n, -1).astype(bool)
        counts[split] = {
            CLASSES[0]: int((~labels).any(1).sum()),
            CLASSES[1]: int(labels.any(1).sum()),
        }
        share[split] = float(labels.mean())
    info = {"counts": counts, "channels": channels, "image_size": size, "foreground": share}
    return arrays, info


def read_mask(src: str, rel: str, size: int) -> np.ndarray:
    """(size, size) uint8 0/1: mask > 0 at the source size, resized with bilinear filtering
    and kept where at least half a pixel's area was foreground."""
    with Image.open(os.path.join(src, rel)) as im:
        binary = np.asarray(im.convert("I") if im.mode not in ("1", "L") else im) > 0
    mask = Image.fromarray((binary * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR
    )
    return (np.asarray(mask) >= 128).astype(np.uint8)


def _pair_problem(src: str, image: str, mask: str) -> str | None:
    sizes = []
    for rel in (image, mask):
        try:
            with Image.open(os.path.join(src, rel)) as im:
                im.verify()  # reads the whole file: truncated or git-lfs pointers fail here
                sizes.append(im.size)
        except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, ...
            return f"{os.path.join(src, rel)}: cannot be read ({err})"
    if sizes[0] != sizes[1]:
        return (
            f"{os.path.join(src, mask)}: mask is {sizes[1][0]}x{sizes[1][1]}, its image "
            f"{image} is {sizes[0][0]}x{sizes[0][1]}"
        )
    return None


def _by_stem(folder: str) -> dict[str, str]:
    return {
        os.path.splitext(e.name)[0]: e.name
        for e in sorted(os.scandir(folder), key=lambda e: e.name)
        if e.is_file() and not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS)
    }


def _listing(src: str, problems: list[str], what: str) -> str:
    lines = "\n".join(f"  {p}" for p in problems)
    return (
        f"{len(problems)} {what} file(s) in {src}; every image needs a mask of the same "
        f"name and size (fix or remove them):\n{lines}"
    )
