"""`--time-budget N`: stop starting trials N seconds into the search; running ones finish.

    searcher = DeadlineSearcher(searcher, budget_s=3600)     # wraps any Tune Searcher
    variants = DeadlineVariants(3600, random_state=0, max_concurrent=2)   # random / repeated

Tune's own `time_budget_s` stops every running trial at the deadline too, and such trials look
like ASHA stops (`stopped_early`). Here the searcher simply has no more suggestions after the
deadline: Tune then waits for the trials it started, and the search ends with every trial whole
(finished, stopped by ASHA, or errored). The clock starts at the first suggestion, so a resumed
search gets the budget again from its restart.
"""

from __future__ import annotations

import logging
import time

from ray.tune.search import Searcher
from ray.tune.search.basic_variant import BasicVariantGenerator

log = logging.getLogger("medsweep")


class _Clock:
    def __init__(self, budget_s: float) -> None:
        self.budget_s = budget_s
        self.deadline: float | None = None
        self.said = False

    def passed(self) -> bool:
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.budget_s
        if now < self.deadline:
            return False
        if not self.said:
            log.info(
                "time budget of %g s reached: no new trials; the running ones finish",
                self.budget_s,
            )
            self.said = True
        return True


class DeadlineSearcher(Searcher):
    """A Searcher that hands out its inner searcher's suggestions until the deadline."""

    def __init__(self, searcher: Searcher, budget_s: float) -> None:
        super().__init__(metric=searcher.metric, mode=searcher.mode)
        self.searcher = searcher
        self._clock = _Clock(budget_s)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        if self._clock.passed():
            return Searcher.FINISHED
        return self.searcher.suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)

    # Tune saves each wrapper's own state (and the base searcher's separately); the clock is
    # this run's, so a resumed search starts its budget afresh.
    def get_state(self) -> dict:
        return {}

    def set_state(self, state: dict) -> None:
        pass


class DeadlineVariants(BasicVariantGenerator):
    """Random / repeated configurations (BasicVariantGenerator) until the deadline."""

    def __init__(self, budget_s: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self._clock = _Clock(budget_s)

    def next_trial(self):
        if self._clock.passed():
            self.set_finished()
            return None
        return super().next_trial()

    def get_state(self):
        state = super().get_state()
        if state:  # the clock is this run's: a resumed search starts its budget afresh
            state.pop("_clock", None)
        return state
