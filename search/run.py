"""Run a hyperparameter search for one task and write its experiment folder.

    python search/run.py --task pathology
    python search/run.py --task blood --trials 32 --gpus-per-trial 0.25
    python search/run.py --task pneumonia --data-dir data --weights none --smoke-test

Leaves `runs/<name>/trials.parquet`, `history.parquet` and `<trial>/checkpoint/model.pt`, and
prints the best trial. Exit code 0 unless every trial failed.
"""

from __future__ import annotations

import sys

from search.driver.pipeline import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
