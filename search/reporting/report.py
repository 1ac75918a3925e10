"""Build the self-contained HTML report of one experiment folder.

    python search/report.py runs/pathology-20250101-120000    # (re)writes <folder>/report.html

    from search.reporting.report import build_report
    path = build_report("runs/pathology-20250101-120000")

Reads only the folder (search.json, trials.parquet, history.parquet, test_metrics.json,
<trial>/test_predictions.npz, <trial>/attribution/*.png; `search.reporting.folder`), so a copied
folder rebuilds its report anywhere. The output is one HTML file with inline CSS and every
figure embedded as a base64 PNG: it opens offline and can be mailed. Sections: the experiment
(trials by status, wall time, split sizes), the search (best so far, parallel coordinates,
parameter importances, learning curves, every trial; `sections`), the winner (config, test
metrics with 95% CIs, confusion matrix, ROC; `winner`) and attribution (Grad-CAM and Integrated
Gradients per trial, low focus flagged; `maps`). Missing pieces become "not available" notes; a
section that fails shows its error instead of losing the report.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

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
    segmentation_section,
    attribution_section,
)


def build_report(experiment_dir: str | os.PathLike) -> str:
    """Write `<experiment_dir>/report.html` atomically; return its path."""
    exp = load_experiment(experiment_dir)
    body = "\n".join(_guarded(section, exp) for section in SECTIONS)
    text = page(f"{exp.meta.get('name', exp.root.name)} - medsweep report", body)
    path = exp.root / "report.html"
    write_atomic(path, text.encode("utf-8"))  # a reader never sees half a report
    return str(path)


def _guarded(section: Callable[[Experiment], str], exp: Experiment) -> str:
    try:
        return section(exp)
    except Exception as err:  # one broken section must not cost the whole report
        log.warning("report section %s failed", section.__name__, exc_info=True)
        return box("error", f"This section could not be built: {type(err).__name__}: {err}")
