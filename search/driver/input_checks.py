"""The checks of what the flags name, once it is read: the space's values (by the trials' own
check), the data against the search (before Ray starts), and the cluster (right after Ray
connects). Each mistake is a `UserError` (`search.driver.checks`): one line, exit code 2.

    check_space(space)                # non-numeric constants, named by file and key
    check_space_values(space, values)   # both ends of every range, every listed value
    check_data(path, task, size, labels)   # image shape vs the image size, classes per split
    check_cluster(plan, view)         # requests no node has or can add (after Ray connects)
"""

from __future__ import annotations

from search.driver.checks import UserError

# --- space and data files (after they are read, before Ray starts) ---------------------------


def check_space(space) -> None:
    """A numeric setting fixed (or listed) as something else: name the file and the key."""
    import dataclasses

    from trainables.train import TrainConfig

    numeric = {
        f.name: f.default
        for f in dataclasses.fields(TrainConfig)
        if type(f.default) in (int, float)
    }
    for key, spec in space.sweep_config["parameters"].items():
        if key not in numeric or not isinstance(spec, dict):
            continue
        values = [spec["value"]] if "value" in spec else list(spec.get("values") or [])
        bad = [v for v in values if isinstance(v, bool) or not isinstance(v, int | float)]
        if bad:
            raise UserError(
                f"{space.path}: parameter {key!r}: {bad[0]!r} is not a number; "
                f"write a number, e.g. {key}: {{value: {numeric[key]}}}"
            )


def check_space_values(space, values: dict) -> None:
    """Every value a searched setting can take, checked by the trials' own check
    (`TrainConfig`): both ends of a range and every listed value, each with the fixed
    settings. A space that would fail some trials fails here, naming the file and the key."""
    from trainables.train import TrainConfig

    fixed = {k: v for k, v in values.items() if k not in space.searched}
    for key in space.searched:
        for value in corner_values(values[key]):
            try:
                TrainConfig.from_dict({**fixed, key: value})
            except (TypeError, ValueError) as err:
                raise UserError(
                    f"{space.path}: parameter {key!r} can take {value!r}, which a trial "
                    f"refuses ({err}); narrow its range or list only valid values"
                ) from None


def corner_values(domain) -> list:
    """What a Tune domain can reach at its ends: every category, or the lowest and (just
    under) the highest value of a range."""
    from ray.tune.search.sample import Categorical, Float, Integer

    if isinstance(domain, Categorical):
        return list(domain.categories)
    if isinstance(domain, Integer):
        return [domain.lower, domain.upper - 1]  # randint's upper bound is exclusive
    if isinstance(domain, Float):
        return [domain.lower, domain.upper - (domain.upper - domain.lower) * 1e-9]
    return [domain]


def check_models(space, values: dict, task) -> None:
    """Every model the space can pick fits the task's kind (`trainables.models.check_model`,
    the trials' own check), and `weights` given as a file loads into each of them (the
    trials' own loader: a missing file, something that is not a state dict, or another
    architecture's weights are refused now, not in every trial)."""
    from trainables.models import build_model, check_model

    models = corner_values(values.get("model") or task.model)
    for name in models:
        try:
            check_model(name or task.model, task.kind_ops)
        except ValueError as err:
            raise UserError(f"{space.path}: {err}") from None
    weights = [w for w in corner_values(values.get("weights", "none")) if w not in SPECIAL]
    size = values.get("image_size") or task.image_size
    for path in weights:
        for name in models:
            try:
                build_model(name or task.model, task.num_outputs, task.channels, size, 0.0, path)
            except Exception as err:  # torch.load and load_state_dict raise many kinds
                raise UserError(
                    f"--weights {path}: does not load into {name or task.model} ({err}); pass "
                    "a state-dict file of that architecture, imagenet, or none"
                ) from None


SPECIAL = ("none", "imagenet")
"""`weights` values that are not a file."""


def check_data(path: str, task, image_size: int, labels: dict) -> None:
    """The npz against the search: images at the image size, 2+ classes in train and val,
    and the test split's format: its labels in range and its images' header, so a broken
    file fails now and not after hours of search. No test image is read and nothing is
    scored on the test labels here: the test split is evaluated once, after the search
    (`search.experiment.after`)."""
    from trainables.data import inspect_npz, npz_headers

    for key, (shape, _) in sorted(npz_headers(path).items()):
        if (
            key.endswith("_images")
            and len(shape) >= 3
            and tuple(shape[1:3]) != (image_size, image_size)
        ):
            raise UserError(
                f"{path}: {key} are {shape[1]}x{shape[2]} px but the search "
                f"trains at {image_size} px; pass --image-size {shape[1]} or a "
                f"file made at {image_size} px"
            )
    n = len(task.classes)
    for name, split_labels in labels.items():
        if not name.endswith("_labels"):
            continue
        counts = task.kind_ops.class_counts(split_labels, n)
        present = [c for c, k in zip(task.classes, counts, strict=True) if k > 0]
        if n >= 2 and len(present) < 2:
            raise UserError(
                f"{path} [{name[:-7]}]: only {present or 'no'} class(es) present of "
                f"{list(task.classes)}; a search needs at least 2 classes in train "
                "and in val: add images of the other class(es)"
            )
    inspect_npz(path, task, splits=("test",))  # ValueError naming the file and split


# --- resources (right after Ray connects) -----------------------------------------------------


def check_cluster(plan, view) -> None:
    """Refuse a trial whose worker no node of `view` (a `search.driver.resources.ClusterView`:
    the nodes up and the node types the autoscaler can add) has room for: such trials would
    wait PENDING forever."""
    from search.driver.plan import worker_request
    from search.driver.resources import fits

    request = worker_request(plan)
    capacity = view.capacity()
    if any(fits(node, request) for node in capacity):
        return
    asks = ", ".join(f"{v:g} {k}" for k, v in request.items())
    if request.get("GPU", 0) > 0 and view.total("GPU") <= 0:
        raise UserError(
            f"--gpus-per-trial {plan.gpus_per_trial:g}: this Ray cluster has no GPU "
            f"and can add none ({view.describe()}); pass --gpus-per-trial 0 (CPU) "
            "or --address of a cluster with GPUs"
        )
    largest = max((n.get("CPU", 0) for n in capacity), default=0)
    raise UserError(
        f"each trial worker asks for {asks}, more than any node has or can add "
        f"(largest: {largest:g} CPU; {view.describe()}); lower --cpus-per-worker "
        "or --gpus-per-trial"
    )


RESUME_COPIES = 3
"""Checkpoints a running trial holds at once: its best, its latest and the one being written
(Ray deletes the older after the new one is in place)."""
STATE_FACTOR = 3
"""A resume checkpoint's size over its weights': the weights plus AdamW's two moments."""


def check_disk(limit: int, concurrent: int, protect: int, values: dict, task) -> None:
    """`--max-disk` against what the running trials' checkpoints need at least: `concurrent`
    trials x RESUME_COPIES x STATE_FACTOR x the largest model's weights, plus the weights of
    the `protect` best trials; refused when it cannot hold them."""
    from search.experiment.quota import human

    name, weights = largest_model(values, task)
    running = concurrent * RESUME_COPIES * STATE_FACTOR * weights
    need = running + protect * weights
    if limit < need:
        raise UserError(
            f"--max-disk {human(limit)} cannot hold the search: {concurrent} trial(s) at once "
            f"x {RESUME_COPIES} checkpoints of about {human(STATE_FACTOR * weights)} ({name}: "
            f"weights and optimizer state) plus the {protect} best trials' weights "
            f"= {human(need)}; pass --max-disk {human(need * 1.5)} or more"
        )


def largest_model(values: dict, task) -> tuple[str, int]:
    """(name, bytes of its weights) of the largest model the space can pick."""
    from trainables.models import build_model

    size = values.get("image_size") or task.image_size
    sizes = []
    for name in corner_values(values.get("model") or task.model):
        model = build_model(name or task.model, task.num_outputs, task.channels, size, 0.0, "none")
        state = model.state_dict().values()
        sizes.append((sum(t.numel() * t.element_size() for t in state), name or task.model))
    nbytes, name = max(sizes)
    return name, nbytes
