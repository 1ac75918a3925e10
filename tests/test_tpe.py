"""The searcher's settings: `--tpe` (TPE's start-up trials, multivariate, constant liar),
`--searcher ray-optuna` (Ray's stock OptunaSearch) and `--early-stopping none`, as the Tuner
gets them, and what search.json records of them.

    pytest tests/test_tpe.py -q      # no Ray started: about a second
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from search.driver.plan import Plan
from search.driver.records import searcher_record
from search.driver.searcher import BestEpochOptuna
from search.driver.space import load_space
from search.driver.tpe import DEFAULTS, MIN_STARTUP, TpeSettings, parse_tpe
from search.driver.tuner import build_scheduler, build_searcher, reuses_actors
from trainables.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_scale_the_random_start_with_the_budget():
    ten, thirty = parse_tpe(None, 10), parse_tpe(None, 30)
    assert ten.startup == max(MIN_STARTUP, round(float(DEFAULTS["startup"]) * 10))
    assert thirty.startup == max(MIN_STARTUP, round(float(DEFAULTS["startup"]) * 30))
    assert ten.startup < 10  # Optuna's own default, 10, would make a 10-trial search random
    assert parse_tpe(None, 2).startup == MIN_STARTUP


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("startup=10,multivariate=no,liar=no", TpeSettings(10, False, False)),
        (
            "startup=0.5",
            TpeSettings(10, parse_tpe(None, 20).multivariate, parse_tpe(None, 20).liar),
        ),
        (" liar = off , multivariate=ON ", TpeSettings(parse_tpe(None, 20).startup, True, False)),
        (
            "startup=0.01",
            TpeSettings(MIN_STARTUP, parse_tpe(None, 20).multivariate, parse_tpe(None, 20).liar),
        ),
    ],
)
def test_tpe_text(text, expected):
    assert parse_tpe(text, 20) == expected
    assert parse_tpe(expected.text(), 20) == expected  # search.json's spelling reads back


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("startup=0", "startup=0"),
        ("startup=-2", "startup=-2"),
        ("startup=2.5", "startup=2.5"),
        ("startup=", "'startup='"),
        ("seed=3", "'seed=3'"),
        ("multivariate", "'multivariate'"),
        ("liar=2", "liar=2"),
    ],
)
def test_tpe_mistakes_name_the_key(text, named):
    with pytest.raises(ValueError, match=f"--tpe {named}"):
        parse_tpe(text, 20)


def test_the_sampler_has_the_settings():
    sampler = TpeSettings(4, True, True).sampler(seed=3)
    assert sampler._n_startup_trials == 4
    assert sampler._multivariate and sampler._constant_liar


def _plan(tmp_path, **kw) -> Plan:
    return Plan(name="s", storage=str(tmp_path), trials=20, metric="val_auc", mode="max", **kw)


def _space():
    return load_space(str(ROOT / "spaces" / "pneumonia-cnn.yaml"), get_task("pneumonia"))


def test_each_searcher_and_scheduler_as_the_tuner_gets_them(tmp_path):
    space = _space()
    ours = build_searcher(_plan(tmp_path, tpe="startup=7,liar=no"), space).searcher
    assert isinstance(ours, BestEpochOptuna)
    assert ours.sampler._n_startup_trials == 7 and not ours.sampler._constant_liar
    stock = build_searcher(_plan(tmp_path, searcher="ray-optuna"), space).searcher
    assert isinstance(stock, OptunaSearch)  # as a Tune script builds it: Optuna's defaults
    assert stock._sampler._n_startup_trials == 10 and not stock._sampler._multivariate
    assert isinstance(
        build_searcher(_plan(tmp_path, searcher="random"), space), BasicVariantGenerator
    )
    assert isinstance(build_scheduler(_plan(tmp_path), space, 6), ASHAScheduler)
    plain = build_scheduler(_plan(tmp_path, early_stopping="none"), space, 6)
    assert type(plain) is FIFOScheduler  # every trial runs its epochs
    with pytest.raises(ValueError, match="--early-stopping"):
        _plan(tmp_path, early_stopping="median")


def test_search_json_records_the_settings(tmp_path):
    record = searcher_record(_plan(tmp_path, tpe="startup=5"))
    assert record["early_stopping"] == "asha"
    assert parse_tpe(record["tpe"], 20) == parse_tpe("startup=5", 20)
    assert "tpe" not in searcher_record(_plan(tmp_path, searcher="random", early_stopping="none"))


def test_only_the_function_launcher_reuses_trial_processes(tmp_path):
    assert reuses_actors(_plan(tmp_path, launcher="function"))
    assert not reuses_actors(_plan(tmp_path, launcher="train"))
    assert not reuses_actors(_plan(tmp_path, launcher="function", folds=3))
