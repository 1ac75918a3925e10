"""Explain a trained checkpoint's predictions on your own images: probabilities and maps.

    python search/explain.py runs/blood-x/trial_0003/checkpoint cell1.png cell2.jpg
    python search/explain.py runs/chest-x/t1/checkpoint/model.pt xray.png --out-dir maps/

For each image (PNG, JPEG, any size): converted to the checkpoint's channels (grey or RGB),
resized to its square image size (bilinear, as the MedMNIST preprocessing), normalised as in
training; prints the predicted class and every class's probability, and writes
`<stem>_gradcam.png` and `<stem>_ig.png` (the image | the map over it) next to the image, or in
--out-dir. Multi-class: the predicted class is explained; binary: the one logit, P(positive);
multi-label: every label predicted present (or the likeliest one when none is), a row each.
The work is in `search.reporting.explanations`. An experiment's
ensemble.json (`--ensemble K`) prints the ensemble's probabilities and label at its saved
threshold, and writes each member's maps in `<out-dir>/<trial>/`
(`search.reporting.ensemble_explain`). A mistake (a missing file, a file that is not
a checkpoint or an image, a file as --out-dir) is one line, `error: ...; ...`, exit code 2.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys

from search.driver.options import Parser
from search.reporting.ensemble_explain import explain_ensemble
from search.reporting.explanations import describe, explain_images

CHECKPOINT_HINT = (
    "pass a trial's checkpoint folder (runs/<name>/<trial>/checkpoint) or its model.pt"
)


def main(argv: list[str] | None = None) -> int:
    p = Parser(
        prog="search/explain.py",
        description=__doc__,
        formatter_class=argparse.RawTextHelpFormatter,
    )
    p.add_argument(
        "checkpoint", help="a model.pt file, the checkpoint folder holding one, or ensemble.json"
    )
    p.add_argument("images", nargs="+", help="PNG or JPEG files, any size")
    p.add_argument("--out-dir", help="write the maps here (default: beside each image)")
    p.add_argument("--steps", type=int, default=16, help="Integrated Gradients steps (16)")
    p.add_argument("--samples", type=int, default=4, help="NoiseTunnel samples per image (4)")
    args = p.parse_args(argv)
    try:
        check_request(args.checkpoint, args.out_dir)
        explain = explain_ensemble if args.checkpoint.endswith(".json") else explain_images
        results = explain(args.checkpoint, args.images, args.out_dir, args.steps, args.samples)
    except (OSError, ValueError) as err:
        text = str(err) if "; " in str(err) else f"{err}; check the files named"
        print(f"error: {text}", file=sys.stderr)
        return 2
    for result in results:
        print(describe(result))
    return 0


def check_request(checkpoint: str, out_dir: str | None) -> None:
    """A ValueError for an --out-dir that is a file, or a checkpoint that does not load."""
    from trainables.checkpoint import load_checkpoint

    if out_dir and os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ValueError(f"--out-dir {out_dir} is a file; pass a folder (made if missing)")
    if checkpoint.endswith(".json"):  # an ensemble.json (--ensemble K): its members load
        from search.experiment.ensemble import read_ensemble

        read_ensemble(checkpoint)
        return
    try:
        load_checkpoint(checkpoint)
    except FileNotFoundError as err:
        raise ValueError(f"{err}; {CHECKPOINT_HINT}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, AttributeError, ValueError) as err:
        what = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise ValueError(
            f"{checkpoint} is not a medsweep checkpoint ({what}); {CHECKPOINT_HINT}"
        ) from None


if __name__ == "__main__":
    sys.exit(main())
