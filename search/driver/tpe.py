"""The TPE sampler's settings: `--tpe startup=0.3,multivariate=yes,liar=yes`.

    tpe = parse_tpe("startup=5", trials=20)        # TpeSettings(startup=5, ...), or ValueError
    sampler = tpe.sampler(seed=0)                  # an optuna.samplers.TPESampler

- `startup`: trials drawn at random before TPE models anything: a count (`startup=5`), or a
  share of `--trials` (`startup=0.3`: 30%, at least `MIN_STARTUP`). Optuna's own default is
  10 whatever the budget, so a 10-trial search with it is random search.
- `multivariate`: one density over the knobs together (they interact: learning rate and
  dropout), instead of one per knob.
- `liar`: constant liar: trials still running count as bad results, so trials started at once
  are not all drawn next to the same promising point.

Keys left out keep `DEFAULTS`, chosen from `search/compare.py`'s measurements (README:
"Does the search pay?"). A value TPE cannot take is a ValueError that names the key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna

DEFAULTS = {"startup": "0.3", "multivariate": "yes", "liar": "yes"}
"""The defaults, as `--tpe` would spell them (measured: README, "Does the search pay?")."""
MIN_STARTUP = 3
"""Fewer random trials than this and TPE models noise."""
YES, NO = ("yes", "true", "1", "on"), ("no", "false", "0", "off")


@dataclass(frozen=True)
class TpeSettings:
    startup: int
    multivariate: bool
    liar: bool

    def sampler(self, seed: int | None) -> optuna.samplers.TPESampler:
        """The seeded sampler (one or several objectives alike)."""
        return optuna.samplers.TPESampler(
            n_startup_trials=self.startup,
            multivariate=self.multivariate,
            constant_liar=self.liar,
            seed=seed,
        )

    def text(self) -> str:
        """As `--tpe` would spell these settings (search.json, the report)."""
        flag = {True: "yes", False: "no"}
        return (
            f"startup={self.startup},multivariate={flag[self.multivariate]},liar={flag[self.liar]}"
        )


def parse_tpe(text: str | None, trials: int) -> TpeSettings:
    """`--tpe`'s value over `DEFAULTS` for a search of `trials` trials."""
    given = dict(DEFAULTS)
    for part in (text or "").split(","):
        if not part.strip():
            continue
        key, sep, value = (s.strip() for s in part.partition("="))
        if key not in DEFAULTS or not sep or not value:
            raise ValueError(
                f"--tpe {part.strip()!r}: expected KEY=VALUE with KEY one of "
                f"{', '.join(DEFAULTS)} (e.g. startup=0.3,multivariate=yes,liar=yes)"
            )
        given[key] = value
    return TpeSettings(
        startup=_startup(given["startup"], trials),
        multivariate=_yes(given["multivariate"], "multivariate"),
        liar=_yes(given["liar"], "liar"),
    )


def tpe_mistake(text: str | None, searcher: str, trials: int) -> str | None:
    """What is wrong with `--tpe text` for `--searcher searcher` (an `error:` line's body), or
    None: keys and values TPE takes, and only with the searcher that uses them."""
    if text is None:
        return None
    if searcher != "optuna":
        return (
            f"--tpe sets medsweep's Optuna searcher, not --searcher {searcher}; drop --tpe or "
            "use --searcher optuna"
        )
    try:
        parse_tpe(text, trials)
    except ValueError as err:
        return f"{err}; see python search/run.py --help"
    return None


def _startup(value: str, trials: int) -> int:
    """A count (an integer >= 1), or a share of `trials` in (0, 1)."""
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if number >= 1 and number.is_integer():
        return int(number)
    if 0 < number < 1:
        return max(MIN_STARTUP, round(number * trials))
    raise ValueError(
        f"--tpe startup={value}: pass a count of random trials (an integer >= 1) or a share "
        "of --trials between 0 and 1 (e.g. startup=0.3)"
    )


def _yes(value: str, key: str) -> bool:
    if value.lower() in YES:
        return True
    if value.lower() in NO:
        return False
    raise ValueError(f"--tpe {key}={value}: pass yes or no")
