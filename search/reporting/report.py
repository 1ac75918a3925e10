"""Build the self-contained HTML report of one experiment folder.

    python search/report.py runs/pathology-20250101-120000    # (re)writes <folder>/report.html

    from search.reporting.report import build_report, check_complete
    check_complete("runs/pathology-20250101-120000")   # IncompleteExperiment: not a finished one
    path = build_report("runs/pathology-20250101-120000")

Reads only the folder (search.json, trials.parquet, history.parquet, test_metrics.json,
<trial>/test_predictions.npz, <trial>/attribution/*.png; `search.reporting.folder`), so a copied
folder rebuilds its report anywhere. The output is one HTML file with inline CSS and every
figure embedded as a base64 PNG: it opens offline and can be mailed. Sections: the experiment
(trials by status, wall time, split sizes), the search (best so far, parallel coordinates,
parameter importances, learning curves, every trial; `sections`), the winner (config, test
metrics with 95% CIs, confusion matrix, ROC; `winner`) and attribution (Grad-CAM and Integrated
Gradients per trial, low focus flagged; `maps`). Missing pieces become "not available" notes; a
section that fails shows its error instead of losing the report, but never replaces a report
that is there already (the page is built whole first, then written atomically).
`check_complete` is what search/report.py asks first: a finished search's search.json and
readable tables, or an `IncompleteExperiment` naming what is missing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from search.experiment.layout import (
    HISTORY_FILE,
    MANIFEST_FILE,
    REPORT_FILE,
    TEST_METRICS_FILE,
    TRIALS_FILE,
)
from search.experiment.manifest import Manifest
from search.experiment.storage import read_json
from search.experiment.tables import read_table
from search.reporting.ensemble import selection_ensemble_section
from search.reporting.folder import Experiment, load_experiment
from search.reporting.maps import attribution_section
from search.reporting.markup import box, page
from search.reporting.sections import experiment_section, search_section
from search.reporting.segmentation import segmentation_section
from search.reporting.winner import winner_section
from trainables.files import write_atomic

log = logging.getLogger("medsweep.report")

SECTIONS = (
    experiment_section,
    search_section,
    winner_section,
    selection_ensemble_section,
    segmentation_section,
    attribution_section,
)


class IncompleteExperiment(ValueError):
    """The folder is not a finished experiment; the message says what is missing and what to
    do."""


def build_report(experiment_dir: str | os.PathLike) -> str:
    """Write `<experiment_dir>/report.html` atomically; return its path. A page on which a
    section failed does not replace a report that is there (RuntimeError names the section)."""
    exp = load_experiment(experiment_dir)
    failed: list[str] = []
    body = "\n".join(_guarded(section, exp, failed) for section in SECTIONS)
    text = page(f"{exp.meta.get('name', exp.root.name)} - medsweep report", body)
    path = exp.root / REPORT_FILE
    if failed and path.exists():
        raise RuntimeError(
            f"section(s) {', '.join(failed)} failed (see the warnings above); {path} is kept "
            "as it was"
        )
    write_atomic(path, text.encode("utf-8"))  # a reader never sees half a report
    return str(path)


def _guarded(section: Callable[[Experiment], str], exp: Experiment, failed: list[str]) -> str:
    try:
        return section(exp)
    except Exception as err:  # one broken section must not cost the whole report
        log.warning("report section %s failed", section.__name__, exc_info=True)
        failed.append(section.__name__)
        return box("error", f"This section could not be built: {type(err).__name__}: {err}")


def check_complete(experiment_dir: str | os.PathLike) -> None:
    """An `IncompleteExperiment` unless the folder holds a finished search: a readable
    search.json with status finished (or in its report phase: `Manifest.reportable`),
    trials.parquet with its rows, and, when present, readable history.parquet and
    test_metrics.json. Reads only."""
    root = os.fspath(experiment_dir)
    if not os.path.isdir(root):
        what = "is a file, not a folder" if os.path.exists(root) else "does not exist"
        raise IncompleteExperiment(
            f"experiment folder {root} {what}; pass the folder a search wrote (runs/<name>)"
        )
    if not os.path.isfile(os.path.join(root, MANIFEST_FILE)):
        raise IncompleteExperiment(
            f"{root} is not an experiment folder (no {MANIFEST_FILE}); pass the folder a "
            "search wrote (runs/<name>)"
        )
    manifest = _readable(root, MANIFEST_FILE, lambda p: Manifest.read(root))
    if not manifest.reportable:
        raise IncompleteExperiment(
            f"{root}: the search is {manifest.status}, and a partial search has no report; "
            f"finish it first: python search/run.py --resume {root}"
        )
    if not os.path.isfile(os.path.join(root, TRIALS_FILE)):
        raise IncompleteExperiment(
            f"{root} has no {TRIALS_FILE}; restore the folder from a copy, or rerun the search"
        )
    trials = _readable(root, TRIALS_FILE, read_table)
    if not trials:
        raise IncompleteExperiment(
            f"{os.path.join(root, TRIALS_FILE)} holds no trial; restore the folder from a "
            "copy, or rerun the search"
        )
    for name, read in ((HISTORY_FILE, read_table), (TEST_METRICS_FILE, read_json)):
        if os.path.isfile(os.path.join(root, name)):
            _readable(root, name, read)


def _readable(root: str, name: str, read: Callable[[str], object]):
    """`read(<root>/<name>)`; an `IncompleteExperiment` when the file is damaged."""
    path = os.path.join(root, name)
    try:
        return read(path)
    except (OSError, ValueError, TypeError, KeyError) as err:  # pyarrow's ArrowInvalid too
        raise IncompleteExperiment(
            f"{path} is damaged ({type(err).__name__}: {str(err)[:120]}); restore the folder "
            "from a copy, or rerun the search"
        ) from None
