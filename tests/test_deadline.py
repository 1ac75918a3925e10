"""`--time-budget`: no trial starts after the deadline, and the running ones finish whole
(search/driver/deadline.py), with the real Tune controller and both searcher kinds."""

from __future__ import annotations

import time

import pytest
from ray import tune
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from search.driver.deadline import DeadlineSearcher, DeadlineVariants

pytestmark = pytest.mark.slow
EPOCHS = 3
EPOCH_S = 1.0


def _make_trial():
    """A nested function, so Ray ships it by value (this test module is not importable there)."""
    epochs, epoch_s = EPOCHS, EPOCH_S

    def trial(config: dict) -> None:
        start = time.time()
        for epoch in range(epochs):
            time.sleep(epoch_s)
            tune.report({"score": config["x"] + epoch, "started": start})

    return trial


def _fit(search_alg, tmp_path, budget_s: float):
    tuner = tune.Tuner(
        tune.with_resources(_make_trial(), {"cpu": 1}),
        param_space={"x": tune.uniform(0, 1)},
        tune_config=tune.TuneConfig(
            metric="score", mode="max", search_alg=search_alg, num_samples=50
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    )
    t0 = time.time()
    grid = tuner.fit()
    return grid, t0, budget_s


@pytest.mark.parametrize("kind", ["searcher", "variants"])
def test_no_trial_starts_after_the_deadline_and_running_ones_finish(ray_cluster, tmp_path, kind):
    budget = 4.0
    if kind == "searcher":
        alg = ConcurrencyLimiter(DeadlineSearcher(OptunaSearch(seed=0), budget), max_concurrent=1)
    else:
        alg = DeadlineVariants(budget, random_state=0, max_concurrent=1)
    grid, t0, _ = _fit(alg, tmp_path, budget)
    results = [r for r in grid if r.metrics]
    assert 1 <= len(results) < 50, "the budget cut the number of trials"
    for r in results:
        assert r.error is None
        assert r.metrics["training_iteration"] == EPOCHS, "a running trial was cut short"
    # The deadline starts at the first suggestion; a trial is only started before it.
    first = min(r.metrics["started"] for r in results)
    last = max(r.metrics["started"] for r in results)
    assert last - first < budget + 1.0
