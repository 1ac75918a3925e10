"""Log every trial of a search to Weights & Biases, then add its attribution maps and test figures.

    mode = resolve_mode(settings.wandb.mode)   # --wandb; None: WANDB_MODE, else online iff
                                               # logged in
    callbacks = make_callbacks(mode, "medsweep", group=name, tags=[task, searcher],
                               wandb_dir=experiment_path)   # -> tune.RunConfig(callbacks=...)
    ...                                                      # fit, collect, post-process
    log_media(mode, "medsweep", name, experiment_path, trials)

One W&B run per trial: id and name are the Tune trial id, group is the experiment name, tags
say the task and searcher, config is the trial's full config, and each epoch is one history
step. Ray's `WandbLoggerCallback` does the logging from Tune's driver node with one logging
actor per trial, so concurrent trials never share a run. Offline runs land in
`<wandb_dir>/wandb/offline-run-<time>-<trial id>/`; `wandb sync` uploads them later.

The API key is never an argument here (Tune pickles its callbacks into the experiment folder's
`tuner.pkl`) nor a Ray runtime env (Ray logs those in plain text): W&B reads `WANDB_API_KEY` or
`~/.netrc` itself, on the driver's node. Offline no key is needed. On a cluster, run
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
from collections.abc import Sequence
from urllib.parse import urlsplit

from ray.air.integrations.wandb import WandbLoggerCallback, _WandbLoggingActor

from search.experiment.layout import ATTRIBUTION_DIR, GRADCAM_PNG, IG_PNG, TEST_METRICS_FILE
from search.experiment.storage import absolute, is_uri, join_path, read_bytes, read_json

log = logging.getLogger("medsweep")

MODES = ("online", "offline", "off")
ATTRIBUTIONS = (GRADCAM_PNG, IG_PNG)  # logged as `attribution/<file name without .png>`
DEFAULT_HOST = "https://api.wandb.ai"


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


class _FlushingLoggingActor(_WandbLoggingActor):
    """Ray's per-trial logging actor, which returns only once the run is on disk.

    With wandb 0.31, `wandb.finish()` returns before wandb-core has written the run's
    transaction log, and Tune kills the actor as soon as `run()` returns: a trial's offline run
    was left as a bare 7-byte header (seen here in about 1 run of 10). `wandb.teardown()` waits.
    """

    def run(self):
        super().run()
        self._wandb.teardown()


class TrialRunsCallback(WandbLoggerCallback):
    """Ray's W&B logger, with each run named after its trial id and the API key kept in memory.

    Ray's own setup forwards `WANDB_API_KEY` to its logging actors as a `runtime_env` env var,
    and Ray's runtime-env agent writes that env var in plain text to
    `/tmp/ray/session_*/logs/runtime_env_agent.log`. Here the actors get no runtime env: they
    run on the driver's node (Ray pins them there), where W&B finds the key as the driver does,
    in `~/.netrc` or in the environment Ray was started with.
    """

    _logger_actor_cls = _FlushingLoggingActor

    def setup(self, *args, **kwargs) -> None:
        if self.kwargs.get("mode") != "offline":
            super().setup(*args, **kwargs)  # fails early, naming the fix, when W&B has no key
        import ray
        from ray.air.util.node import _force_on_current_node

        self._remote_logger_class = ray.remote(
            num_cpus=0, **_force_on_current_node(), max_restarts=-1, max_task_retries=-1
        )(self._logger_actor_cls)

    def log_trial_start(self, trial) -> None:
        self.kwargs = {
            **self.kwargs,
            "name": trial.trial_id,
        }  # Ray names it <trainable>_<trial id>
        super().log_trial_start(trial)


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
    init = {"mode": mode, "tags": list(tags), "job_type": "trial"}
    local = _local_dir(wandb_dir)
    if local:
        os.makedirs(local, exist_ok=True)
        init["dir"] = local
    if mode == "online":
        init["resume"] = "allow"  # a restored search (--resume) continues its trials' runs
    callback = TrialRunsCallback(
        project=project, group=group, excludes=list(config_exclude), **init
    )
    return [callback]


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
