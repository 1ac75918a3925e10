"""Where the experiment is, for what a resumed search restores: paths kept relative to the
experiment folder, so a copied or moved folder resumes on its own files.

    with use_experiment("/data/runs/copy"):     # the folder this driver works on
        tuner = tune.Tuner.restore(...)         # its searcher opens copy/optuna.db
    inside("sqlite:////data/runs/x/optuna.db", "/data/runs/x")   # "sqlite:///optuna.db"
    located("sqlite:///optuna.db", "/data/runs/copy")            # the copy's file
    search_alg = relocatable(ConcurrencyLimiter(searcher, 2))    # TuneConfig(search_alg=...)

Ray Tune pickles the search algorithm when the Tuner is built (tuner.pkl) and saves its state
as the search runs; both name the folder they were written in. The driver names the folder it
works on (`use_experiment`, the environment variable `EXPERIMENT_ENV` for the run), and what
is restored from that state is opened there: the Optuna study (`search.driver.searcher`) and
the trials the search generator adds (`RelocatableSearch`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ray.tune.search import Searcher, SearchGenerator

from search.experiment.storage import is_uri

EXPERIMENT_ENV = "MEDSWEEP_EXPERIMENT"
"""The experiment folder this driver works on (`use_experiment`): where a study kept relative
to its experiment is opened, also by a searcher Tune restored from a copied folder's state."""
SQLITE = "sqlite:///"


@contextlib.contextmanager
def use_experiment(path: str) -> Iterator[None]:
    """Name the experiment folder this driver works on (`EXPERIMENT_ENV`) while the block
    runs: a searcher Tune restores opens its relative study there."""
    before = os.environ.get(EXPERIMENT_ENV)
    os.environ[EXPERIMENT_ENV] = path
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(EXPERIMENT_ENV, None)
        else:
            os.environ[EXPERIMENT_ENV] = before


def relocatable(search_alg):
    """`search_alg` as Tune's `SearchGenerator` that, restored, adds its trials to the folder
    the search resumes in (`RelocatableSearch`); other search algorithms unchanged."""
    return RelocatableSearch(search_alg) if isinstance(search_alg, Searcher) else search_alg


class RelocatableSearch(SearchGenerator):
    """Tune's `SearchGenerator`, but the trials a restored one creates go to the experiment
    folder of this run (`use_experiment`). Ray 2.60 restores the generator's saved
    `Experiment`, whose storage names the folder the state was saved in: resuming a copied or
    moved experiment would put every trial not yet started into the original folder."""

    def set_state(self, state: dict) -> None:
        home = os.environ.get(EXPERIMENT_ENV)
        experiment = state["experiment"]
        if home and not is_uri(home) and experiment is not None:
            for storage in (experiment.storage, experiment.spec.get("storage")):
                if storage is not None:
                    storage.storage_fs_path = os.path.dirname(home)
                    storage.experiment_dir_name = os.path.basename(home)
        super().set_state(state)


def _split(where: str) -> tuple[str, str]:
    """(`sqlite:///` or '', the file path) of a storage."""
    prefix = SQLITE if where.startswith(SQLITE) else ""
    return prefix, where[len(prefix) :]


def inside(where: str, home: str) -> str:
    """`where` relative to the folder `home` when its file lies in it, else unchanged."""
    prefix, path = _split(where)
    if is_uri(home) or not os.path.isabs(path):
        return where
    rel = os.path.relpath(path, home)
    return where if rel.startswith("..") else prefix + rel


def located(where: str, home: str) -> str:
    """A relative storage's file in the folder `home`; an absolute one unchanged."""
    prefix, path = _split(where)
    return where if os.path.isabs(path) else prefix + os.path.join(home, path)
