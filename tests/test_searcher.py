"""Optuna learns each trial's best epoch (search.driver.searcher), and its study is on disk.

The fast tests drive the searcher through Tune's Searcher protocol as the TuneController does
(suggest, on_trial_result for every result but the one that made the scheduler stop the
trial, on_trial_complete with the last result), against a real SQLite study. The slow test runs
a real search and compares optuna.db with trials.parquet and history.parquet.
"""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from ray import tune

from search.driver.searcher import BestEpochOptuna, on_network_fs, open_storage, study_storage

SPACE = {"lr": tune.loguniform(1e-4, 1e-2)}


def _searcher(tmp_path, mode="max", epochs=3, name="s"):
    _, where = study_storage(str(tmp_path), name)
    return BestEpochOptuna(
        epochs, storage=where, study_name=name, seed=0, space=SPACE, metric="val_auc", mode=mode
    )


def _result(epoch: int, value: float) -> dict:
    return {"epoch": epoch, "training_iteration": epoch, "val_auc": value}


def _run(
    searcher,
    trial_id: str,
    values: list[float],
    stop_after: int | None = None,
    error: bool = False,
) -> None:
    """Feed `values` as Tune would; with `stop_after`, the scheduler stops it at that epoch."""
    assert searcher.suggest(trial_id)["lr"] > 0
    last = len(values) if stop_after is None else stop_after
    for epoch, value in enumerate(values[: last - 1], start=1):
        searcher.on_trial_result(trial_id, _result(epoch, value))
    final = _result(last, values[last - 1])
    if stop_after is None and not error:  # a trial that ends by itself reports its last result
        searcher.on_trial_result(trial_id, final)
    searcher.on_trial_complete(trial_id, result=None if error else final, error=error)


def _study(tmp_path, name="s") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path / 'optuna.db'}")


def test_optuna_hears_the_best_epoch_pruned_for_asha_stops_fail_for_errors(tmp_path):
    searcher = _searcher(tmp_path)
    _run(searcher, "full", [0.6, 0.9, 0.8])  # best 0.9 at epoch 2; Ray would tell 0.8
    _run(searcher, "stopped", [0.7, 0.75, 0.72], stop_after=1)
    _run(searcher, "broken", [0.5, 0.6], error=True)
    _run(searcher, "nan", [float("nan")] * 3)
    _run(searcher, "at_max_t", [0.6, 0.95, 0.7], stop_after=3)  # ASHA's STOP at the last rung
    trials = _study(tmp_path).get_trials(deepcopy=False)
    by_state = [(t.state, t.value) for t in trials]
    assert by_state[0] == (TrialState.COMPLETE, 0.9)
    assert by_state[1] == (TrialState.PRUNED, 0.7)  # the last value seen, as an intermediate
    assert trials[1].intermediate_values == {1: 0.7}
    assert by_state[2] == (TrialState.FAIL, None)
    assert by_state[3] == (TrialState.FAIL, None)  # never a finite score: never "complete"
    assert trials[0].intermediate_values == {1: 0.6, 2: 0.9, 3: 0.8}
    assert by_state[4] == (TrialState.COMPLETE, 0.95)  # ran its budget: complete, its best
    assert trials[4].intermediate_values == {1: 0.6, 2: 0.95, 3: 0.7}


def test_mode_min_keeps_the_lowest(tmp_path):
    searcher = _searcher(tmp_path, mode="min")
    _run(searcher, "a", [0.5, 0.2, 0.4])
    (trial,) = _study(tmp_path).get_trials()
    assert (trial.state, trial.value) == (TrialState.COMPLETE, 0.2)


def test_save_and_restore_continue_the_study(tmp_path):
    """--resume: Tune restores the searcher from its saved state; the study goes on on disk."""
    searcher = _searcher(tmp_path)
    _run(searcher, "a", [0.6, 0.7, 0.65])
    searcher.suggest("b")
    searcher.on_trial_result("b", _result(1, 0.8))  # interrupted mid-trial
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = BestEpochOptuna(3)
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_result("b", _result(2, 0.85))
    restored.on_trial_complete("b", result=_result(3, 0.82))
    _run(restored, "c", [0.1, 0.2, 0.3])
    values = [(t.state, t.value) for t in _study(tmp_path).get_trials()]
    assert values == [
        (TrialState.COMPLETE, 0.7),
        (TrialState.COMPLETE, 0.85),
        (TrialState.COMPLETE, 0.3),
    ]


def test_restore_tells_an_interrupted_trial_pruned_with_every_step_and_keeps_the_journal(
    tmp_path,
):
    """A trial interrupted mid-way and stopped after the restore: its intermediate values from
    both runs are in the study, and it is PRUNED; a journal study (network filesystems)
    restores as SQLite does."""
    where = str(tmp_path / "optuna.journal")
    searcher = BestEpochOptuna(3, storage=where, study_name="j", seed=0)
    assert searcher.set_search_properties("val_auc", "max", {**SPACE, "epochs": 3})
    assert not searcher.set_search_properties("val_auc", "max", SPACE)  # set once, as Ray's
    searcher.suggest("b")
    searcher.on_trial_result("b", _result(1, 0.8))
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = BestEpochOptuna(1)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert (restored.metric, restored.mode, restored.epochs) == ("val_auc", "max", 3)
    restored.on_trial_complete("b", result=_result(2, 0.7))  # ASHA's STOP at epoch 2
    study = optuna.load_study(study_name="j", storage=open_storage(where))
    (trial,) = study.get_trials()
    assert (trial.state, trial.value) == (TrialState.PRUNED, 0.7)
    assert trial.intermediate_values == {1: 0.8, 2: 0.7}


def test_a_broken_study_warns_and_the_search_goes_on(tmp_path, caplog):
    searcher = _searcher(tmp_path)
    _run(searcher, "a", [0.6, 0.7, 0.65])
    searcher.suggest("b")
    searcher.on_trial_result("b", _result(1, 0.5))
    searcher.study.tell(searcher.study.trials[-1].number, 0.5)  # finished behind its back
    with caplog.at_level("WARNING", logger="medsweep"):
        searcher.on_trial_complete("b", result=_result(3, 0.9))
    assert "could not record trial b" in caplog.text
    _run(searcher, "c", [0.1, 0.2, 0.3])
    assert len(_study(tmp_path).get_trials()) == 3


def test_a_mode_per_metric(tmp_path):  # several objectives: tests/test_objectives.py
    with pytest.raises(ValueError, match="one 'max' or 'min' per metric"):
        BestEpochOptuna(3, metric=["val_auc"], mode=["max", "min"])


def test_study_storage_local_uri_and_network_filesystems(tmp_path, monkeypatch):
    _, where = study_storage(str(tmp_path / "exp"), "exp")
    assert where == f"sqlite:///{tmp_path / 'exp' / 'optuna.db'}"
    monkeypatch.chdir(tmp_path)
    _, where = study_storage("s3://bucket/medsweep/exp", "exp")  # no database on S3
    assert where == f"sqlite:///{tmp_path / 'runs' / 'exp' / 'optuna.db'}"
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\nserver:/x {tmp_path / 'nfs'} nfs4 rw 0 0\n")
    assert on_network_fs(str(tmp_path / "nfs" / "exp"), str(mounts))
    assert not on_network_fs(str(tmp_path / "exp"), str(mounts))
    assert not on_network_fs(str(tmp_path / "nfsx"), str(mounts))


@pytest.mark.slow
def test_asha_and_the_study_agree_with_the_tables_on_real_tune(ray_cluster, tmp_path):
    """Real Tune, ASHA from epoch 1 (eta 2), our searcher, one trial at a time, scripted
    scores (the later trials worse, so ASHA stops some): every Optuna trial has the state and
    value trials.parquet and history.parquet give it."""
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import ConcurrencyLimiter

    from search.experiment.tables import collect

    def trainable(config: dict) -> None:  # nested: Ray's workers get it by value
        for epoch in range(1, 4):
            score = 0.9 - config["lr"] * 10 + (0.05 if epoch == 2 else 0.01 * epoch)
            tune.report({"epoch": epoch, "val_auc": score})

    where = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = BestEpochOptuna(3, storage=where, study_name="asha", seed=0)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 0.01}),
        param_space={"lr": tune.uniform(0.0, 0.05), "epochs": 3},
        tune_config=tune.TuneConfig(
            metric="val_auc",
            mode="max",
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=1),
            scheduler=ASHAScheduler(max_t=3, grace_period=1, reduction_factor=2),
            num_samples=6,
        ),
        run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path), verbose=0),
    )
    rows, history = collect(tuner.fit(), "val_auc", "max", 3, str(tmp_path / "asha"))
    trials = optuna.load_study(study_name="asha", storage=where).get_trials()
    assert len(trials) == len(rows) == 6
    expected = {"finished": TrialState.COMPLETE, "stopped_early": TrialState.PRUNED}
    for row in rows:
        trial = next(t for t in trials if t.params["lr"] == pytest.approx(row["config/lr"]))
        assert trial.state == expected[row["status"]], row
        assert max(trial.intermediate_values) == row["epochs_run"]
        epochs = [h for h in history if h["trial_id"] == row["trial_id"]]
        if row["status"] == "finished":  # the best epoch (2), not the last
            assert trial.value == pytest.approx(row["val_auc"])
            assert row["best_epoch"] == 2 and trial.value > epochs[-1]["val_auc"]
        else:
            last = max(epochs, key=lambda h: h["epoch"])
            assert trial.value == pytest.approx(last["val_auc"])
    assert {r["status"] for r in rows} == {"finished", "stopped_early"}
