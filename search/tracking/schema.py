"""W&B's sweep-config schema, with messages that name the key and the fix.

    cfg = validate_sweep_config(yaml.safe_load(open("spaces/pathology.yaml")))
    # ValueError: invalid W&B sweep config:
    #   parameters.lr.distribution: 'log_uniform_value' is not one of [...]

The checks are the open-source `sweeps` package's (the JSON schema behind W&B's sweep
controller, and its extra checks such as min < max); this module only words them: one line per
violation with its key path, and for a parameter that fits no distribution, why not.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from copy import deepcopy
from typing import Any

import jsonschema

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # pydantic 2 warns about a v1 config key in sweeps' SweepRun
    import sweeps
    from sweeps.config.schema import fill_validate_metric, fill_validate_schema, validator


def validate_sweep_config(cfg: dict) -> dict:
    """Check `cfg` against W&B's sweep-config schema; return a filled copy.

    Raises `ValueError` listing each violation with its key path and the schema's message.
    The copy has W&B's defaults filled in (`distribution` inferred, `metric.goal`, hyperband's
    `eta`, ...); nested parameter groups are kept as given.
    """
    if not isinstance(cfg, dict):
        raise ValueError(f"a sweep config must be a mapping, got {type(cfg).__name__}")
    problems = [_describe(error) for error in validator.iter_errors(cfg)]
    problems += _extra_violations(cfg, problems)
    if problems:
        raise ValueError("invalid W&B sweep config:\n  " + "\n  ".join(problems))
    filled = fill_validate_metric(fill_validate_schema(cfg))
    for name, spec in cfg.get("parameters", {}).items():
        filled["parameters"].setdefault(name, deepcopy(spec))  # sweeps drops nested groups
    return filled


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    """One line per schema error; for a parameter that fits no distribution, say why."""
    line = f"{_path(error)}: {error.message}"
    if error.validator == "anyOf" and error.context:
        line += "\n    because " + "\n    and ".join(_anyof_causes(error))
    return line


def _anyof_causes(error: jsonschema.ValidationError) -> list[str]:
    causes = _closest_branch(error)
    if causes is not None:
        return [_with_hint(cause) for cause in causes]
    wrong = [e for e in _descendants(error) if list(e.relative_path) == ["distribution"]]
    names = sorted({name for e in wrong if e.validator == "enum" for name in e.validator_value})
    return [f"{_path(wrong[0])}: {wrong[0].instance!r} is not one of {names}"]


def _closest_branch(
    error: jsonschema.ValidationError,
) -> list[jsonschema.ValidationError] | None:
    """Errors of the anyOf branch with the given distribution and fewest complaints.

    None when no branch accepts the parameter's `distribution` (a misspelt name).
    """
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.schema_path[0], []).append(sub)
    candidates = []
    for errors in branches.values():
        if any(_rejects_distribution(e) for e in errors):
            continue
        leaves = []
        for e in errors:
            nested = _closest_branch(e) if e.validator == "anyOf" else [e]
            if nested is None:
                break
            leaves += nested
        else:
            candidates.append(leaves)
    return min(candidates, key=len) if candidates else None


def _rejects_distribution(error: jsonschema.ValidationError) -> bool:
    """A branch of another distribution, or the nested-group branch (`parameters:`)."""
    nested_group = error.validator == "required" and "parameters" in error.validator_value
    return list(error.relative_path) == ["distribution"] or nested_group


def _descendants(error: jsonschema.ValidationError) -> Iterator[jsonschema.ValidationError]:
    for sub in error.context or []:
        yield sub
        yield from _descendants(sub)


def _with_hint(error: jsonschema.ValidationError) -> str:
    line = f"{_path(error)}: {error.message}"
    if isinstance(error.instance, str) and _parses_as_float(error.instance):
        line += " (a string: YAML reads 1e-4 and quoted numbers as strings; write 1.0e-4)"
    return line


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _extra_violations(cfg: dict, reported: list[str]) -> list[str]:
    """sweeps' checks beyond the JSON schema (min < max, probabilities, deprecated names)."""
    try:
        messages = sweeps.schema_violations_from_proposed_config(cfg)
    except TypeError:  # sweeps 0.2.0 compares a string bound the schema already rejected
        return []
    extra = []
    for message in messages:
        duplicate = any(message in line for line in reported + extra)
        consequence = message.startswith("invalid hyperparameter configuration")
        if not duplicate and not consequence:
            extra.append(_locate(message, cfg.get("parameters") or {}))
    return extra


def _locate(message: str, parameters: dict) -> str:
    """Prefix the key path of the parameter a sweeps message names."""
    for name in parameters:
        if message.startswith((f"{name}:", f"{name} ", f"Parameter {name}:")):
            return f"parameters.{name}: {message}"
    return f"<top level>: {message}"
