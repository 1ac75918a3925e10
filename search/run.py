"""Run a hyperparameter search for one task and write its experiment folder.

    python search/run.py --task pneumonia --data-dir data --space spaces/pneumonia-cnn.yaml
    python search/run.py --task blood --trials 32 --gpus-per-trial 0.25
    python search/run.py --task pneumonia --data-dir data --weights none --smoke-test
    python search/run.py --resume runs/<name>     # after Ctrl-C: continue where it stopped

Leaves `runs/<name>/trials.parquet`, `history.parquet`, `report.html` and
`<trial>/checkpoint/model.pt`, and prints the best trial. Exit code 0 unless every trial failed
(1); 2 for a mistake in the command (one line: `error: ...`); 130 after Ctrl-C, 143 after
SIGTERM (the search is saved: `--resume` continues it).
"""

from __future__ import annotations

import sys

from search.driver.pipeline import main

if __name__ == "__main__":
    sys.exit(main(description=__doc__))
