"""The disk flags' values, import-light (the flag checks run before torch or Ray load).

parse_size("5GB") -> 5_000_000_000        # --max-disk
parse_keep("top-3") -> ("top", 3)          # --keep-checkpoints
human(14_200_000) -> "14.2 MB"
"""

from __future__ import annotations

import re

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_UNITS |= {"KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6}
_UNITS |= {"G": 10**9, "T": 10**12}


def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `1.5GiB`, `2000000` -> bytes; ValueError naming the accepted forms."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
    unit = found.group(2).upper() if found else None
    if found is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size; write it as 5GB, 500MB or 2GiB")
    size = int(float(found.group(1)) * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"{text!r} is no space at all; give a positive size such as 5GB")
    return size


def parse_keep(text: str) -> tuple[str, int]:
    """`--keep-checkpoints`: `all` -> ("all", 0), `none` -> ("none", 0), `top-3` ->
    ("top", 3); ValueError otherwise."""
    if text in ("all", "none"):
        return text, 0
    found = re.fullmatch(r"top-([0-9]+)", text or "")
    if found is None or int(found.group(1)) < 1:
        raise ValueError(f"{text!r} is not all, none or top-K (K >= 1, e.g. top-3)")
    return "top", int(found.group(1))


def human(size: float) -> str:
    """Bytes as `12.3 MB` (powers of 1000, as --max-disk reads them)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
