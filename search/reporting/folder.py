"""Read one experiment folder for the report and the comparison: what the search wrote, as data.

    exp = load_experiment("runs/pathology-20250101-120000")
    exp.metric, exp.mode, exp.knobs, exp.ranked(), exp.winner(), exp.curve("trial_0001")
    info = read_manifest("runs/pathology-20250101-120000")   # search.json as a dict, or {}

Only `search.experiment` is used to read it (the manifest, the tables, storage), never the
driver: a copied folder reads the same anywhere. A missing or unreadable file reads as empty,
with a warning; the report turns what is missing into notes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from search.experiment.layout import HISTORY_FILE, MANIFEST_FILE, TEST_METRICS_FILE, TRIALS_FILE
from search.experiment.manifest import Manifest
from search.experiment.storage import join_path, read_json
from search.experiment.sweep import infer_distribution
from search.experiment.tables import CONFIG_PREFIX, read_table
from trainables import scores
from trainables.scores import is_finite
from trainables.tasks import Task

log = logging.getLogger("medsweep.report")

_TASK_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Task)}
DEFAULT_METRIC = _TASK_DEFAULTS["metric"]  # for a folder without search.json
DEFAULT_MODE = _TASK_DEFAULTS["mode"]


@dataclass
class Experiment:
    """Everything read from one experiment folder; missing files leave empty values."""

    root: Path
    meta: dict
    """search.json (`search.experiment.manifest.Manifest.to_dict()`), {} when missing."""
    trials: list[dict]
    """trials.parquet's rows, in start order."""
    history: list[dict]
    tests: dict | None
    """test_metrics.json."""
    metric: str = field(init=False)
    mode: str = field(init=False)

    def __post_init__(self) -> None:
        self.metric = self.meta.get("metric", DEFAULT_METRIC)
        self.mode = self.meta.get("mode", DEFAULT_MODE)

    @property
    def knobs(self) -> list[str]:
        if "knobs" in self.meta:
            return list(self.meta["knobs"])
        params = self.meta.get("space", {}).get("parameters")
        if params:
            return [k for k, spec in params.items() if infer_distribution(spec) != "constant"]
        # no search.json: the settings that differ between trials
        keys = sorted({k for t in self.trials for k in t if k.startswith(CONFIG_PREFIX)})
        varied = [k for k in keys if len({repr(t.get(k)) for t in self.trials}) > 1]
        return [k[len(CONFIG_PREFIX) :] for k in varied]

    def value(self, trial: dict) -> float:
        v = trial.get(self.metric)
        return float(v) if is_finite(v) else math.nan

    def ranked(self) -> list[dict]:
        """Trials with a finite metric, best first."""
        return scores.ranked(self.trials, self.metric, self.mode)

    def unranked(self) -> list[dict]:
        """Trials without a finite metric, in start order."""
        return [t for t in self.trials if not is_finite(t.get(self.metric))]

    def winner(self) -> dict | None:
        best = (self.tests or {}).get("best_trial")
        by_id = {t["trial_id"]: t for t in self.trials}
        ranked = self.ranked()
        return by_id.get(best) or (ranked[0] if ranked else None)

    def curve(self, trial_id: str) -> list[dict]:
        rows = [h for h in self.history if h.get("trial_id") == trial_id]
        return sorted(rows, key=lambda h: h.get("epoch") or 0)


def load_experiment(experiment_dir: str | os.PathLike) -> Experiment:
    """The folder's search.json, tables and test metrics; FileNotFoundError when it is none."""
    root = Path(experiment_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"experiment folder {root} does not exist; pass runs/<name>")
    trials, history = read_rows(root, TRIALS_FILE), read_rows(root, HISTORY_FILE)
    starts = {}
    for h in history:
        if is_finite(h.get("timestamp")) and is_finite(h.get("time_total_s")):
            start = h["timestamp"] - h["time_total_s"]
            starts[h["trial_id"]] = min(start, starts.get(h["trial_id"], math.inf))
    trials.sort(key=lambda t: starts.get(t.get("trial_id"), math.inf))  # stable: else as stored
    return Experiment(root, read_manifest(root), trials, history, read_tests(root))


def read_manifest(folder: str | os.PathLike) -> dict:
    """search.json as a dict ({} when missing). A file the `Manifest` does not fit (written by
    hand, or by an older medsweep) is read as plain JSON, so what it holds is still used."""
    folder = os.fspath(folder)
    try:
        manifest = Manifest.read_optional(folder)
    except (TypeError, ValueError, OSError):
        log.warning("%s is not a complete manifest; reading it as plain JSON", folder)
        return _optional_json(join_path(folder, MANIFEST_FILE)) or {}
    return {} if manifest is None else manifest.to_dict()


def read_tests(folder: str | os.PathLike) -> dict | None:
    """test_metrics.json (`search.experiment.after`), or None."""
    return _optional_json(join_path(os.fspath(folder), TEST_METRICS_FILE))


def read_rows(folder: str | os.PathLike, name: str) -> list[dict]:
    """A table's rows ([] when missing or unreadable)."""
    path = join_path(os.fspath(folder), name)
    if not os.path.isfile(path):
        return []
    try:
        return read_table(path)
    except (OSError, ValueError):  # pyarrow's ArrowInvalid is a ValueError
        log.warning("could not read %s; treating it as missing", path, exc_info=True)
        return []


def _optional_json(path: str) -> dict | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        log.warning("could not read %s; treating it as missing", path, exc_info=True)
        return None
