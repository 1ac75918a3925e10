"""Apply a trained model to new images: predictions.csv, and Grad-CAM overlays on request.

    python search/predict.py runs/pneu-x/trial_0003/checkpoint/model.pt a.png b.jpg
    python search/predict.py runs/pneu-x/ensemble.json --data-dir new_xrays/ --out preds.csv
    python search/predict.py runs/pneu-x/ensemble.json --data-dir new_xrays/ --cam cams/

MODEL is a trial's checkpoint (model.pt or its folder) or an experiment's ensemble.json
(`--ensemble K`). Images are PNG, JPEG, TIFF or DICOM, any size: each is read by the search's
own decoder (`search.data.images.decode`: DICOM rescale/window, 16-bit scaling), converted to
the model's channels and resized (bilinear) to its image size, then normalised as in training;
a line on stderr says how many were resized or converted. A file that cannot be read is
refused, naming it. predictions.csv has the path, each class's probability (`p_<class>`) and
the label at the saved operating point (the threshold chosen on validation, from the
experiment's test_metrics.json or the ensemble's file). Batched; on the GPU when there is one.
A mistake is one line, `error: <what>; <what to do>`, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from search.driver.options import Parser

IMAGE_TYPES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".dcm", ".bmp")


class _Parser(Parser):
    def error(self, message: str):
        sys.stderr.write(f"error: {message}; see python search/predict.py --help\n")
        sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model.pt (or its checkpoint folder) or an ensemble.json")
    p.add_argument("images", nargs="*", help="image files (PNG, JPEG, TIFF, DICOM)")
    p.add_argument("--data-dir", help="predict every image under this folder")
    p.add_argument("--out", default="predictions.csv", help="the CSV written")
    p.add_argument("--cam", metavar="DIR", help="write <stem>_gradcam.png overlays here")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    args = p.parse_args(argv)
    try:
        paths = image_paths(args.images, args.data_dir)
        run(args, paths)
    except (OSError, ValueError) as err:
        text = " ".join(str(err).split())
        text = text if "; " in text else f"{text}; check the files named"
        print(f"error: {text}", file=sys.stderr)
        return 2
    return 0


def image_paths(images: list[str], data_dir: str | None) -> list[str]:
    """The files named, then every image under `data_dir` (sorted); a ValueError for none or a
    missing one."""
    paths = list(images)
    if data_dir:
        if not os.path.isdir(data_dir):
            raise ValueError(f"--data-dir {data_dir} is not a folder; pass a folder of images")
        for root, _, files in sorted(os.walk(data_dir)):
            paths += [os.path.join(root, f) for f in sorted(files) if _is_image(f)]
    if not paths:
        raise ValueError("no images given; pass image files or --data-dir DIR")
    missing = [x for x in paths if not os.path.isfile(x)]
    if missing:
        raise ValueError(f"image {missing[0]} does not exist; pass existing image files")
    return paths


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_TYPES) or "." not in name  # DICOM often has no suffix


def run(args, paths: list[str]) -> None:
    from search.experiment.predict import (
        labels_at_threshold,
        load_model,
        predict_images,
        write_cams,
        write_predictions,
    )

    if args.batch_size < 1:
        raise ValueError(f"--batch-size {args.batch_size} must be >= 1; pass 1 or more")
    model = load_model(args.model)
    read = Images(paths)
    probs = predict_images(model, read, args.batch_size)
    write_predictions(args.out, paths, model, probs, labels_at_threshold(model, probs))
    print(f"{len(paths)} images -> {args.out}")
    for line in filter(None, [model.note, *read.notes()]):
        print(f"note: {line}", file=sys.stderr)
    if args.cam:
        written = write_cams(args.cam, paths, model, read, probs)
        print(f"{len(written)} Grad-CAM overlays -> {args.cam}")


class Images:
    """`read(size, mode)`: every image decoded at the model's input (cached per input), each
    file's original size and mode counted for the note on what was resized or converted."""

    def __init__(self, paths: list[str]) -> None:
        self.paths = paths
        self.cache: dict[tuple[int, str], object] = {}
        self.resized = self.converted = 0

    def __call__(self, size: int, mode: str):
        import numpy as np

        from search.data.images import decode, image_mode, image_size

        if (size, mode) not in self.cache:
            images = []
            for path in self.paths:
                try:
                    images.append(decode(path, size, mode))
                    if not self.cache:  # counted for the first input only
                        self.resized += image_size(path) != (size, size)
                        self.converted += image_mode(path) != mode
                except (OSError, ValueError) as err:
                    raise ValueError(f"{path} could not be read as an image ({err})") from None
            self.cache[(size, mode)] = np.stack(images)
        return self.cache[(size, mode)]

    def notes(self) -> list[str]:
        (size, mode), n = next(iter(self.cache)), len(self.paths)
        out = []
        if self.resized:
            out.append(f"{self.resized} of {n} images resized to {size}x{size} (the model's)")
        if self.converted:
            out.append(f"{self.converted} of {n} images converted to {mode} (the model's)")
        return out


if __name__ == "__main__":
    sys.exit(main())
