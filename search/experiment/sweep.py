"""W&B sweep-config syntax shared by the space loader, the W&B engine and the report.

infer_distribution({"min": 1e-4, "max": 1e-2})   # "uniform"
"""

from __future__ import annotations


def infer_distribution(spec) -> str | None:
    """A W&B parameter's distribution, inferred by W&B's rules when it is omitted."""
    if not isinstance(spec, dict):
        return None
    if "distribution" in spec:
        return spec["distribution"]
    if "value" in spec:
        return "constant"
    if "values" in spec:
        return "categorical"
    if "min" in spec and "max" in spec:
        both_int = all(isinstance(spec[k], int) for k in ("min", "max"))
        return "int_uniform" if both_int else "uniform"
    return None
