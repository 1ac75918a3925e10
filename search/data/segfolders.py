"""Plan an images/ + masks/ folder as a segmentation `Conversion` (no pixel read); convert it.

    from search.data.segfolders import convert_segfolder, plan_segfolder
    conversion = plan_segfolder("data/isbi2012-membranes", image_size=128)   # before Ray
    path, info = convert_segfolder("data/isbi2012-membranes", image_size=128)  # + ingest, cached
    arrays = load_npz(path, task, splits=("train", "val"))   # labels: (N, H, W) 0/1 masks

Layouts: `src/images/*.png` with `src/masks/*.png` of the same file names (also .jpg .jpeg
.bmp .tif .tiff; a mask may have another extension than its image), or pre-made splits
`src/train/{images,masks}/`, `src/val/...`, `src/test/...` (val or test may be missing: it is
then carved out of train). Without pre-made splits the images are split by a seeded
permutation, `val_frac` and `test_frac` (1/6 each: the ISBI sample's 30 images give 20/5/5).
`src` may be a URI (`s3://bucket/prefix`).

Images are resized, whole, to `image_size` x `image_size` (bilinear; channels as the folder
task reads them, `search.data.images`), masks likewise after binarising them at the
source size (mask > 0 = foreground; the resized mask keeps a pixel where at least half of its
area was foreground). Resized whole rather than cropped: every split then has one shape,
validation and test see whole images (no tiling), and the augmentation's random resized crop
still varies scale during training. The plan names every image without a mask and every mask
without an image in one error; the ingest (`search.data.ingest`, in its decode tasks) names
every unreadable file and every mask whose size differs from its image in another.

Cache: as the folder task's (`search.data.folders.convert`): `<cache>/<name>-<fingerprint>.npz`
outside src, reused while every file's path, size and mtime and the settings hold. The npz
holds `{split}_images`, `{split}_labels` (uint8 masks), `{split}_files`, `classes`
(background, foreground), `fingerprint` and `info` (JSON: split, counts, foreground share).
"""

from __future__ import annotations

import os
import posixpath
import warnings

import numpy as np
from PIL import Image

from search.data.conversion import Conversion
from search.data.folders import convert
from search.data.listing import Tree, is_folder, list_tree
from search.experiment.storage import absolute
from trainables.data import SPLITS

CLASSES = ("background", "foreground")
IMAGES, MASKS = "images", "masks"


def convert_segfolder(
    src: str,
    image_size: int,
    seed: int = 0,
    val_frac: float = 1 / 6,
    test_frac: float = 1 / 6,
    cache_dir: str | None = None,
    skip_bad: bool = False,
) -> tuple[str, dict]:
    """Convert (or reuse the cached conversion of) a segmentation folder; `(npz_path, info)`,
    info = {"split", "counts", "channels", "image_size", "foreground", "source", ...}."""
    conversion = plan_segfolder(src, image_size, seed, val_frac, test_frac)
    path, info = convert(conversion, cache_dir, skip_bad)
    return path, {**info, "source": conversion.src}


def plan_segfolder(
    src: str,
    image_size: int,
    seed: int = 0,
    val_frac: float = 1 / 6,
    test_frac: float = 1 / 6,
) -> Conversion:
    """The planned conversion (masks in `conversion.masks`): listing, pairs and split."""
    src = absolute(src if "://" in src else os.path.expanduser(src))
    if not (isinstance(image_size, int) and image_size > 0):
        raise ValueError(f"image_size must be a positive int (pixels a side), got {image_size!r}")
    tree = list_tree(src) if is_folder(src) else None
    pairs = scan(src, tree)
    parts = assign(pairs, seed, val_frac, test_frac)
    settings = {"kind": "masks", "seed": seed, "val_frac": val_frac, "test_frac": test_frac}
    extra = {"classes": np.array(CLASSES)}
    for split in SPLITS:
        extra[f"{split}_files"] = np.array([image for image, _ in parts[split]], dtype=str)
    files = [f for split in SPLITS for pair in parts[split] for f in pair]
    warn_lossy_masks(src, [mask for split in SPLITS for _, mask in parts[split]])
    return Conversion(
        src=src,
        parts={s: ([image for image, _ in parts[s]], None) for s in SPLITS},
        image_size=image_size,
        channels=None,
        settings=settings,
        name=posixpath.basename(src.rstrip("/")) or "dataset",
        masks={s: [mask for _, mask in parts[s]] for s in SPLITS},
        extra=extra,
        info={"split": "seeded" if "all" in pairs else "premade"},
        file_stats={f: tree.files[f] for f in files},
    )


LOSSY = (".jpg", ".jpeg")
"""Mask formats whose compression noise would count as foreground (mask > 0)."""


def warn_lossy_masks(src: str, masks: list[str]) -> None:
    """A warning when masks are stored lossy (JPEG): compression noise around every edge
    reads as foreground at `mask > 0`; a few such masks are opened to show how many values
    they hold (a binary mask has two)."""
    lossy = [m for m in masks if m.lower().endswith(LOSSY)]
    if not lossy:
        return
    values = []
    if "://" not in src:
        for rel in lossy[:3]:
            with Image.open(os.path.join(src, rel)) as im:
                values.append(len(np.unique(np.asarray(im.convert("L")))))
    seen = f" (the first hold {', '.join(map(str, values))} grey values)" if values else ""
    warnings.warn(
        f"{src}: {len(lossy)} of {len(masks)} masks are JPEG{seen}: compression noise is "
        "counted as foreground (mask > 0); export the masks as PNG",
        stacklevel=2,
    )


def scan(src: str, tree: Tree | None) -> dict[str, list[tuple[str, str]]]:
    """{"all" | split: [(image, mask) paths relative to src]}; one error names every image
    without a mask and every mask without an image."""
    expected = f"{src}/{IMAGES}/ and {src}/{MASKS}/ (or {src}/train/{IMAGES}/, ...)"
    if tree is None:
        raise ValueError(f"{src}: not a folder; expected {expected}")
    premade = [s for s in SPLITS if s in tree.subfolders("")]
    if premade and "train" not in premade:
        raise ValueError(f"{src}: has {premade} but no train/; expected {expected}")
    pairs, unmatched = {}, []
    for group in premade or [""]:
        folders = [posixpath.join(group, d) for d in (IMAGES, MASKS)]
        if not all(tree.is_dir(f) for f in folders):
            raise ValueError(
                f"{tree.path(group)}: needs {IMAGES}/ and {MASKS}/; expected {expected}"
            )
        images, masks = (_by_stem(tree, f) for f in folders)
        unmatched += [
            tree.path(images[s]) + ": no mask of that name"
            for s in sorted(set(images) - set(masks))
        ]
        unmatched += [
            tree.path(masks[s]) + ": no image of that name"
            for s in sorted(set(masks) - set(images))
        ]
        pairs[group or "all"] = [(images[s], masks[s]) for s in sorted(set(images) & set(masks))]
    if unmatched:
        raise ValueError(_listing(src, unmatched, "unpaired"))
    if not any(pairs.values()):
        raise ValueError(f"{src}: no image/mask pairs; expected {expected}")
    return pairs


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


def _by_stem(tree: Tree, folder: str) -> dict[str, str]:
    """{file name without extension: path relative to the root} of the images in `folder`."""
    return {posixpath.splitext(posixpath.basename(f))[0]: f for f in tree.images_in(folder)}


def _listing(src: str, problems: list[str], what: str) -> str:
    lines = "\n".join(f"  {p}" for p in problems)
    return (
        f"{len(problems)} {what} file(s) in {src}; every image needs a mask of the same "
        f"name and size (fix or remove them):\n{lines}"
    )
