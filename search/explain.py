"""Explain a trained checkpoint's predictions on your own images: probabilities and maps.

    python search/explain.py runs/blood-x/trial_0003/checkpoint cell1.png cell2.jpg
    python search/explain.py runs/chest-x/t1/checkpoint/model.pt xray.png --out-dir maps/

For each image (PNG, JPEG, any size): converted to the checkpoint's channels (grey or RGB),
resized to its square image size (bilinear, as the MedMNIST preprocessing), normalised as in
training; prints the predicted class and every class's probability, and writes
`<stem>_gradcam.png` and `<stem>_ig.png` (the image | the map over it) next to the image, or in
--out-dir. Multi-class: the predicted class is explained; binary: the one logit, P(positive);
multi-label: every label predicted present (or the likeliest one when none is), a row each.
The work is in `search.reporting.explanations`.
"""

from __future__ import annotations

import argparse
import sys

from search.reporting.explanations import describe, explain_images


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("checkpoint", help="a model.pt file or the checkpoint folder holding one")
    p.add_argument("images", nargs="+", help="PNG or JPEG files, any size")
    p.add_argument("--out-dir", help="write the maps here (default: beside each image)")
    p.add_argument("--steps", type=int, default=16, help="Integrated Gradients steps (16)")
    p.add_argument("--samples", type=int, default=4, help="NoiseTunnel samples per image (4)")
    args = p.parse_args(argv)
    try:
        results = explain_images(
            args.checkpoint, args.images, args.out_dir, args.steps, args.samples
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for result in results:
        print(describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
