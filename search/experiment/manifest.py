"""`search.json`: what one search was, written by the pipeline and read by the report,
compare.py and `--resume`.

    m = Manifest(name=..., task="pneumonia", kind="binary", ...)
    m.write(experiment_path)                 # <experiment>/search.json, atomically
    m = Manifest.read(experiment_path)       # FileNotFoundError names the file when missing

Unknown keys in an older or newer file are kept in `extra`, so reading never fails on them.
`status` is `running` (written before the first trial), `interrupted` (Ctrl-C / SIGTERM: the
state is saved, `--resume` continues it) or `finished`; a file without one is finished when it
has `finished_at`. `phase` is the phase the search is in (or was in when it was interrupted),
`phases_done` the phases it finished, in the order of `PHASES`: search (the trials, their tables
and checkpoints), attribution, test (the test split, read once), repeat (`--repeat-best`),
report. Each boundary rewrites the file; `--resume` redoes none of `phases_done`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from search.experiment.layout import MANIFEST_FILE as FILENAME
from search.experiment.storage import join_path, read_json, write_text

RUNNING, INTERRUPTED, FINISHED = "running", "interrupted", "finished"
STATUSES = (RUNNING, INTERRUPTED, FINISHED)
SEARCH, ATTRIBUTION, TEST, REPEAT, REPORT = "search", "attribution", "test", "repeat", "report"
PHASES = (SEARCH, ATTRIBUTION, TEST, REPEAT, REPORT)


@dataclass
class Manifest:
    """One search: its task, metric, searcher, budget, space, splits and the command."""

    name: str
    """Experiment name; the folder is `<storage>/<name>`."""
    task: str
    kind: str
    """The task's kind (`trainables.kinds`)."""
    classes: list[str]
    metric: str
    """The metric the search optimised (the task's unless the space says otherwise)."""
    mode: str
    searcher: str
    seed: int
    trials: int
    epochs: int
    launcher: str
    knobs: list[str]
    """The searched settings, in the space file's order."""
    space: dict
    """The space file as loaded (W&B sweep syntax)."""
    started_at: float
    finished_at: float | None = None
    """None while the search runs (or after an interrupt)."""
    wall_time_s: float | None = None
    """Seconds the search itself ran (over every resumed part), without the work after it."""
    split_counts: dict = field(default_factory=dict)
    """{split: {class: images}} of the splits the search read (train, val)."""
    argv: list[str] = field(default_factory=list)
    """The command line, replayed by `--resume`."""
    resources_per_trial: dict = field(default_factory=dict)
    foreground: str | None = None
    """What the attribution focus measures against (`Task.foreground`; None: no focus)."""
    status: str | None = None
    """running | interrupted | finished (None: finished if `finished_at` is set, else running,
    as files written before the field existed read)."""
    phase: str | None = None
    """The phase (`PHASES`) it is in, or was in when interrupted; None once finished (and in
    files written before the field existed)."""
    phases_done: list[str] = field(default_factory=list)
    """The phases it finished, in order: `--resume` redoes none of them."""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status is None:
            self.status = FINISHED if self.finished_at is not None else RUNNING
        if self.status not in STATUSES:
            raise ValueError(f"search.json status {self.status!r} is not one of {STATUSES}")

    @property
    def finished(self) -> bool:
        return self.status == FINISHED

    @property
    def reportable(self) -> bool:
        """Every result the report shows is written: finished, or in its report phase."""
        return self.finished or self.phase == REPORT

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        return {**d.pop("extra"), **d}

    def write(self, experiment_path: str) -> str:
        path = join_path(experiment_path, FILENAME)
        write_text(path, json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in d.items() if k in names}
        return cls(**known, extra={k: v for k, v in d.items() if k not in names})

    @classmethod
    def read(cls, experiment_path: str) -> Manifest:
        path = join_path(experiment_path, FILENAME)
        d = read_json(path)
        if d is None:
            raise FileNotFoundError(f"{path} does not exist: is this an experiment folder?")
        return cls.from_dict(d)

    @classmethod
    def read_optional(cls, experiment_path: str) -> Manifest | None:
        try:
            return cls.read(experiment_path)
        except FileNotFoundError:
            return None
