"""Log every trial of a search to Weights & Biases, then add its attribution maps and test figures.

    mode = resolve_mode(settings.wandb.mode)   # --wandb; None: WANDB_MODE, else online iff
                                               # logged in
    callbacks = make_callbacks(mode, "medsweep", group=name, tags=[task, searcher],
                               wandb_dir=experiment_path)   # -> tune.RunConfig(callbacks=...)
    ...                                                      # fit, collect, post-process
    log_media(mode, "medsweep", name, experiment_path, trials)

One W&B run per trial: id and name are the Tune trial id, group is the experiment name, tags
say the task and searcher, config is the trial's full config, and each epoch is one history
step. `TrialRuns`, a Tune callback, opens the runs in Tune's driver process, one
`wandb.init(reinit="create_new")` per trial, so concurrent trials never share a run. Offline runs
land in `<wandb_dir>/wandb/offline-run-<time>-<trial id>/`; `wandb sync` uploads them later.

The API key is never an argument here (Tune pickles its callbacks into the experiment folder's
`tuner.pkl`) nor a Ray runtime env (Ray logs those in plain text, as Ray's own
`WandbLoggerCallback` forwards it): W&B reads `WANDB_API_KEY` or `~/.netrc` itself, in the
driver's process. Offline no key is needed. On a cluster, run
`wandb login` on the head node (or export the key before `ray start`) to log online.

W&B cannot resume an offline run (a second offline run with the same id replaces the first
when synced), so offline the media go to a run of their own per trial: id `<trial>-media`, the
trial's name and group, job type `media`. Online, the trial's own run is resumed.
"""

from __future__ import annotations

import io
import logging
import netrc
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from numbers import Number
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ray.tune.logger import LoggerCallback

from search.experiment.layout import ATTRIBUTION_DIR, GRADCAM_PNG, IG_PNG, TEST_METRICS_FILE
from search.experiment.storage import absolute, is_uri, join_path, read_bytes, read_json

if TYPE_CHECKING:
    from ray.tune.experiment import Trial
    from wandb import Run

log = logging.getLogger("medsweep")

MODES = ("online", "offline", "off")
ATTRIBUTIONS = (GRADCAM_PNG, IG_PNG)  # logged as `attribution/<file name without .png>`
DEFAULT_HOST = "https://api.wandb.ai"
TRAINING_ITERATION = "training_iteration"  # Tune's result key: the run's history step
EXCLUDED_RESULTS = ("done", "should_checkpoint", "config")  # never in a run's history
# Tune's per-result bookkeeping that goes to the run's config, not its history (the keys Ray's
# WandbLoggerCallback moves there)
AUTO_CONFIG_KEYS = (
    "trial_id",
    "experiment_tag",
    "node_ip",
    "experiment_id",
    "hostname",
    "pid",
    "date",
)


def resolve_mode(flag: str | None) -> str:
    """`--wandb`'s value, or the default: `WANDB_MODE` if set, else online iff logged in.

    Logged in means `WANDB_API_KEY` is set or `~/.netrc` (or `$NETRC`) holds a key for the W&B
    host; nothing is sent over the network.
    """
    if flag is not None:
        if flag not in MODES:
            raise ValueError(f"--wandb {flag!r}: choose one of {', '.join(MODES)}")
        return flag
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode in ("offline", "dryrun"):
        return "offline"
    if env_mode == "disabled":
        return "off"
    return "online" if logged_in() else "offline"


def logged_in() -> bool:
    """True when W&B would find an API key: the environment or a netrc entry for its host."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_HOST).hostname or ""
    path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


class TrialRuns(LoggerCallback):
    """A Tune callback that logs each trial as its own W&B run, from Tune's driver process.

    `wandb.init(reinit="create_new")` opens one run per trial when the trial starts; each
    result becomes one history step (step = `training_iteration`), and the run is finished
    when the trial ends or errors. Runs still open when the experiment ends (an interrupted
    search) are finished then, and `wandb.teardown()` waits until every run is on disk: with
    wandb 0.31, `run.finish()` returns before wandb-core has written the run's transaction log
    (offline, 6 of 40 runs read right after their `finish()` had no exit record yet).

    No actor, no runtime env: W&B reads the API key as the driver does, from the environment
    or `~/.netrc`. A trial start costs the driver one `wandb.init` (offline: about 0.8 s for
    the first, which starts wandb-core, then 0.1 s each; online add W&B's round trip). A W&B
    error is logged as a warning and never stops the search; that trial then goes unlogged.
    """

    def __init__(self, init: dict, config_exclude: Sequence[str] = ()):
        self.init = dict(init)  # wandb.init's keyword arguments shared by every trial's run
        self.excludes = list(config_exclude)  # out of the config and the history
        self._runs: dict[str, Run | None] = {}  # None: its wandb.init failed

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_runs": {}}  # Tune pickles its callbacks (tuner.pkl)

    def setup(self, **info) -> None:
        if self.init["mode"] == "online" and not logged_in():
            raise ValueError(
                "W&B online needs an API key: run `wandb login` (or set WANDB_API_KEY), "
                "or pass --wandb offline"
            )

    def log_trial_start(self, trial: Trial) -> None:
        if trial.trial_id not in self._runs:  # a recovered trial goes on with its open run
            self._runs[trial.trial_id] = self._open_run(trial)

    def log_trial_result(self, iteration: int, trial: Trial, result: dict) -> None:
        if trial.trial_id not in self._runs:
            self.log_trial_start(trial)
        run = self._runs[trial.trial_id]
        if run is None:
            return
        config, metrics = split_result(result, [*EXCLUDED_RESULTS, *self.excludes])
        with _warn_on_error("result", trial.trial_id):
            run.config.update(config, allow_val_change=True)
            run.log(metrics, step=result.get(TRAINING_ITERATION))

    def log_trial_end(self, trial: Trial, failed: bool = False) -> None:
        self._finish(trial.trial_id)

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        import wandb

        for trial_id in list(self._runs):
            self._finish(trial_id)
        wandb.teardown()  # returns once every run is written (and, online, uploaded)

    def _open_run(self, trial: Trial) -> Run | None:
        import wandb

        config = plain(without(trial.config, self.excludes))
        config["trial_log_path"] = trial.local_path
        init = {**self.init, "id": trial.trial_id, "name": trial.trial_id, "config": config}
        init["group"] = self.init.get("group") or trial.experiment_dir_name
        if "dir" not in init:
            init["dir"] = _default_dir(trial)
        with _warn_on_error("start", trial.trial_id):
            settings = wandb.Settings(console="off")  # not the driver's console in every run
            return wandb.init(**init, reinit="create_new", settings=settings)
        return None

    def _finish(self, trial_id: str) -> None:
        run = self._runs.pop(trial_id, None)
        if run is not None:
            with _warn_on_error("finish", trial_id):
                run.finish()


@contextmanager
def _warn_on_error(step: str, trial_id: str) -> Iterator[None]:
    """W&B unreachable or refusing: say so and let the search go on (Tune's files stay)."""
    try:
        yield
    except Exception as err:
        log.warning(
            "W&B: %s of trial %s not logged (%s: %s)", step, trial_id, type(err).__name__, err
        )


def _default_dir(trial: Trial) -> str | None:
    """Where W&B writes when make_callbacks got no local folder: `$WANDB_DIR`, else the
    trial's local folder (which Tune syncs to storage)."""
    if os.environ.get("WANDB_DIR"):
        return None  # W&B reads it itself
    os.makedirs(trial.local_path, exist_ok=True)
    return trial.local_path


def split_result(result: dict, excludes: Sequence[str]) -> tuple[dict, dict]:
    """(config update, metrics) of one Tune result: the trial's config and Tune's bookkeeping
    strings (`AUTO_CONFIG_KEYS`) go to the run's config; numbers, flattened with `/`, to its
    history; other values and the excluded keys (and everything under them) nowhere."""
    config = plain(without(result.get("config", {}), excludes))
    metrics = {}
    for key, value in _flatten(result).items():
        if _excluded(key, excludes):
            continue
        if _excluded(key, AUTO_CONFIG_KEYS):
            config[key] = plain(value)
        elif isinstance(value, Number):
            metrics[key] = value
    return config, metrics


def without(config: dict, excludes: Sequence[str]) -> dict:
    """The config minus the excluded keys and Tune's `callbacks`."""
    return {k: v for k, v in config.items() if k not in excludes and k != "callbacks"}


def plain(value):
    """A value W&B's config can hold: containers kept, numbers and strings as they are, numpy
    scalars as Python numbers, anything else as its string."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [plain(v) for v in value]
    if value is None or isinstance(value, str | Number):
        return value.item() if hasattr(value, "item") else value
    return str(value)


def _flatten(result: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in result.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _excluded(key: str, names: Sequence[str]) -> bool:
    return any(key == name or key.startswith(f"{name}/") for name in names)


def make_callbacks(
    mode: str,
    project: str,
    group: str,
    tags: list[str],
    config_exclude: Sequence[str] = (),
    wandb_dir: str | None = None,
) -> list:
    """The Tune callbacks that log each trial as a W&B run; `[]` when mode is "off".

    `wandb_dir`: the folder W&B writes under (`<dir>/wandb/...`), e.g. the experiment folder;
    a storage URI (s3://, gs://) or None leaves W&B's default (`$WANDB_DIR`, else the trial's
    local folder, which Tune syncs to storage). `config_exclude` keeps keys out of the config
    and the history.
    """
    if mode not in MODES:
        raise ValueError(f"W&B mode {mode!r}: choose one of {', '.join(MODES)}")
    if mode == "off":
        return []
    init = {"mode": mode, "project": project, "group": group, "tags": list(tags)}
    init["job_type"] = "trial"
    local = _local_dir(wandb_dir)
    if local:
        os.makedirs(local, exist_ok=True)
        init["dir"] = local
    if mode == "online":
        init["resume"] = "allow"  # a restored search (--resume) continues its trials' runs
    return [TrialRuns(init, config_exclude)]


def _local_dir(path: str | None) -> str | None:
    """An absolute local folder, or None for no folder and for a storage URI."""
    return None if not path or is_uri(path) else absolute(path)


def media_run_id(trial_id: str, mode: str) -> str:
    """The W&B run that gets a trial's media: the trial's own online, `<trial>-media` offline."""
    return trial_id if mode == "online" else f"{trial_id}-media"


def log_media(
    mode: str, project: str, group: str, experiment_dir: str, trials: list[dict]
) -> None:
    """Add each trial's attribution grids and test confusion matrix to W&B as images.

    Reads `<experiment_dir>/<trial>/attribution/{gradcam,integrated_gradients}.png` and the
    confusion matrices in `<experiment_dir>/test_metrics.json`; missing files are skipped, and
    a trial with nothing to show gets no run. Local folders and s3:// / gs:// URIs alike.
    """
    if mode == "off":
        return
    import wandb

    tested = read_json(join_path(experiment_dir, TEST_METRICS_FILE)) or {}
    for trial in trials:
        trial_id = trial["trial_id"]
        media = trial_media(experiment_dir, trial_id, tested.get("trials", {}).get(trial_id))
        if not media:
            continue
        online = mode == "online"
        init = {
            "project": project,
            "group": group,
            "name": trial_id,
            "mode": mode,
            "id": media_run_id(trial_id, mode),
            "resume": "allow" if online else None,
            "job_type": "trial" if online else "media",
            "dir": _local_dir(experiment_dir),
        }
        try:
            with wandb.init(**init, reinit="create_new") as run:
                run.log({name: wandb.Image(image) for name, image in media.items()})
        except Exception as err:  # W&B unreachable or refusing: the files stay on disk anyway
            log.warning(
                "W&B: media of trial %s not logged (%s: %s)", trial_id, type(err).__name__, err
            )
    wandb.teardown()  # finish() returns before W&B has written the runs; this waits for it


def trial_media(experiment_dir: str, trial_id: str, test_result: dict | None) -> dict:
    """{W&B key: PIL image} for one trial; only what exists."""
    from PIL import Image

    media = {}
    for png in ATTRIBUTIONS:
        data = read_bytes(join_path(experiment_dir, trial_id, ATTRIBUTION_DIR, png))
        if data is not None:
            key = f"attribution/{png.removesuffix('.png')}"
            media[key] = Image.open(io.BytesIO(data)).convert("RGB")
    matrix = (test_result or {}).get("confusion_matrix")
    if matrix:
        media["test/confusion_matrix"] = confusion_image(matrix)
    return media


def confusion_image(matrix: dict):
    """A PIL image of a confusion matrix as `trainables.evaluation` writes it.

    One class per image: `{"labels": [...], "matrix": [[...]]}` (rows true, columns
    predicted); otherwise (multi-label) `{label: [[tn, fp], [fn, tp]]}`, drawn as one small
    matrix per label.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    if "matrix" in matrix:
        panels = [("", matrix["matrix"], matrix["labels"])]
    else:
        panels = [(name, cm, ["neg", "pos"]) for name, cm in matrix.items()]
    cols = min(len(panels), 4)
    rows = -(-len(panels) // cols)
    side = 1.0 + 0.5 * max(len(p[2]) for p in panels)
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols, side * rows), squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax, (title, cm, labels) in zip(axes.flat, panels, strict=False):
        _draw_matrix(ax, cm, labels, title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def _draw_matrix(ax, cm: list[list[int]], labels: list[str], title: str) -> None:
    ax.imshow(cm, cmap="Blues")
    top = max((max(row) for row in cm), default=0)
    for i, row in enumerate(cm):
        for j, count in enumerate(row):
            colour = "white" if count > top / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=colour, fontsize=8)
    ticks = range(len(labels))
    ax.set_xticks(ticks, [str(x)[:12] for x in labels], rotation=90, fontsize=7)
    ax.set_yticks(ticks, [str(x)[:12] for x in labels], fontsize=7)
    ax.set_xlabel("predicted", fontsize=8)
    ax.set_ylabel("true", fontsize=8)
    ax.set_title(title, fontsize=8)
