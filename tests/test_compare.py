"""The searcher comparison: rows, table and page from synthetic search folders, then one real run.

Run: pytest tests/test_compare.py -q   (a second without the slow end-to-end run, which starts
three searches in subprocesses: about 1-2 min on 2 cores)
"""

import base64
import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from search.compare import parse_args
from search.driver.comparison import (
    parse_methods,
    read_sweep,
    resume_command,
    search_command,
    search_env,
)
from search.experiment.manifest import Manifest
from search.experiment.tables import (
    ERRORED,
    FINISHED,
    history_rows,
    read_table,
    trial_row,
    write_tables,
)
from search.reporting.anytime import curves, mean_band, time_to_target
from search.reporting.compare_page import write_html
from search.reporting.compare_table import format_table, searcher_table
from search.reporting.comparison import summarise, sweep_rows
from trainables.evaluation import write_json
from trainables.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]

T0 = 1_800_000_000.0


def make_run(folder, trials: list[tuple], started=T0, argv=None, test=None) -> str:
    """A search folder written by the search's own writers (`trial_row`, `history_rows`,
    `write_tables`, `Manifest.write`); trials: (id, value, status, end offset s, wall s), where
    an errored trial reported nothing."""
    rows, history = [], []
    for trial_id, value, status, end, wall in trials:
        results = (
            []
            if status == ERRORED
            else [
                {
                    "epoch": 2 if status == FINISHED else 1,
                    "val_auc": value,
                    "timestamp": started + end,
                    "time_total_s": wall,
                }
            ]
        )
        error = RuntimeError("boom") if status == ERRORED else None
        rows.append(trial_row(trial_id, results, {}, error, str(folder), "val_auc", "max", 2))
        history += history_rows(trial_id, results)
    write_tables(str(folder), rows, history)
    Manifest(
        name=os.path.basename(folder),
        task="blood",
        kind="multiclass",
        classes=["a", "b"],
        metric="val_auc",
        mode="max",
        searcher="optuna",
        seed=0,
        trials=len(trials),
        epochs=2,
        launcher="function",
        knobs=["lr"],
        space={},
        started_at=started,
        argv=argv or [],
    ).write(str(folder))
    if test:
        write_json(
            os.path.join(folder, "test_metrics.json"),
            {"best_trial": test[0], "trials": {test[0]: {"auroc": {"value": test[1]}}}},
        )
    return str(folder)


@pytest.fixture
def two_searchers(tmp_path) -> list[dict]:
    """optuna and random, two repeats each; 3 trials per search."""
    argv = ["--task", "blood", "--cpus-per-worker", "2", "--gpus-per-trial", "0.5"]
    dirs = {
        ("optuna", 0): make_run(
            tmp_path / "o0",
            [
                ("a", 0.70, "finished", 20, 10.0),
                ("b", 0.60, "finished", 10, 5.0),
                ("c", None, "errored", None, None),
            ],
            argv=argv,
            test=("a", 0.68),
        ),
        ("optuna", 1): make_run(
            tmp_path / "o1",
            [
                ("a", 0.80, "finished", 5, 5.0),
                ("b", 0.90, "stopped_early", 8, 2.0),
                ("c", 0.85, "finished", 30, 10.0),
            ],
            argv=argv,
            test=("b", 0.88),
        ),
        ("random", 0): make_run(
            tmp_path / "r0",
            [
                ("x", 0.50, "stopped_early", 3, 3.0),
                ("y", 0.55, "finished", 40, 20.0),
                ("z", 0.52, "stopped_early", 50, 4.0),
            ],
        ),
        ("random", 1): make_run(tmp_path / "r1", [("x", 0.65, "finished", 6, 6.0)]),
    }
    return summarise(dirs, "val_auc", "max")


def test_rows_follow_finishing_order_with_best_so_far(two_searchers):
    run = [r for r in two_searchers if r["searcher"] == "optuna" and r["repeat"] == 0]
    assert [r["trial_id"] for r in run] == ["b", "a", "c"]  # by finish; no result last
    assert [r["trial_order"] for r in run] == [1, 2, 3]
    assert [r["best_so_far"] for r in run] == [0.60, 0.70, 0.70]
    assert [r["wall_time_s"] for r in run] == [10.0, 20.0, None]
    assert [r["status"] for r in run] == ["finished", "finished", "errored"]
    assert run[1]["cpus"] == 2.0 and run[1]["gpus"] == 0.5  # read back from the argv
    assert run[1]["cpu_s"] == 20.0 and run[1]["gpu_s"] == 5.0
    assert [r["test_metric"] for r in run] == [None, 0.68, None]  # the evaluated trial only
    assert {r["test_metric_name"] for r in run} == {"auroc"}
    no_argv = [r for r in two_searchers if r["searcher"] == "random"]
    assert all(r["cpus"] is None and r["cpu_s"] is None for r in no_argv)


def test_minimised_metric_keeps_the_lowest(tmp_path):
    folder = make_run(
        tmp_path / "m",
        [
            ("a", 0.5, "finished", 1, 1.0),
            ("b", 0.7, "finished", 2, 1.0),
            ("c", 0.3, "finished", 3, 1.0),
        ],
    )
    rows = summarise({("optuna", 0): folder}, "val_auc", "min")
    assert [r["best_so_far"] for r in rows] == [0.5, 0.5, 0.3]


def test_a_search_without_tables_is_left_out(tmp_path, capsys):
    os.makedirs(tmp_path / "failed")
    assert summarise({("optuna", 0): str(tmp_path / "failed")}, "val_auc", "max") == []
    assert "no trials.parquet" in capsys.readouterr().out


def test_searcher_table_and_plain_text(two_searchers):
    table = {t["searcher"]: t for t in searcher_table(two_searchers, "max")}
    optuna, random = table["optuna"], table["random"]
    assert optuna["repeats"] == 2 and optuna["trials"] == 6
    mean, std, n = optuna["best"]
    assert (mean, n) == (pytest.approx(0.8), 2) and std == pytest.approx(
        np.std([0.7, 0.9], ddof=1)
    )
    assert optuna["test"][0] == pytest.approx(0.78)
    assert (optuna["stopped_early"], optuna["errored"]) == (1, 1)
    assert optuna["cpu_h"] == pytest.approx(((15 + 17) * 2 / 2) / 3600)  # (Σ wall × 2 CPUs)
    assert random["test"] is None and random["cpu_h"] is None
    assert random["best"][0] == pytest.approx((0.55 + 0.65) / 2)
    assert random["stopped_early"] == 2
    # the target: random's final mean best, (0.55 + 0.65) / 2; optuna reached it at 10 s (r0,
    # trial 1) and 5 s (r1, trial 1); random's r0 never did (counts with its 50 s, 3 trials)
    assert optuna["target"] == pytest.approx(0.60) and optuna["reference"] == "random"
    assert optuna["reach"].seconds == pytest.approx(7.5) and optuna["reach"].trials == 1
    assert (random["reach"].reached, random["reach"].repeats) == (1, 2)
    assert random["reach"].seconds == pytest.approx(28.0) and random["reach"].trials == 2
    assert optuna["vs_reference"] == pytest.approx(7.5 / 28.0) and random["vs_reference"] == 1
    text = format_table(searcher_table(two_searchers, "max"), "val_auc", "auroc")
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["searcher", "repeats", "trials", "best"]
    assert lines[2].startswith("optuna ") and lines[3].startswith("random ")
    assert "0.8000 ± 0.1414 (n=2)" in lines[2] and "2/4" in lines[3]
    assert "8 (1.0) 2/2" in lines[2] and "0.27" in lines[2] and ">=28 (>=2.0) 1/2" in lines[3]
    assert "random's final mean best" in text and "0.6000" in text
    assert "CPU·h / GPU·h" in text


def test_time_to_target_when_minimising(two_searchers):
    """Lower is better: a best at or below the target reaches it."""
    flipped = [
        {**r, "best_so_far": -r["best_so_far"]} if r["best_so_far"] else r for r in two_searchers
    ]
    reach = time_to_target(flipped, "optuna", -0.75, "min")  # r0's best is -0.70: never
    assert (reach.reached, reach.seconds, reach.trials) == (1, pytest.approx((20 + 5) / 2), 2)
    never = time_to_target(flipped, "random", -0.99, "min")
    assert never.reached == 0 and never.seconds == pytest.approx((50 + 6) / 2)


def test_the_band_is_the_95_percent_interval_of_the_mean():
    ys = np.array([[1.0, np.nan], [2.0, 5.0], [3.0, np.nan]])
    mean, low, high = mean_band(ys)
    assert list(mean) == [2.0, 5.0]
    half = 4.302652729911275 / np.sqrt(3)  # t(0.975, 2) x sd 1 / sqrt(3)
    assert low[0] == pytest.approx(2.0 - half) and high[0] == pytest.approx(2.0 + half)
    assert np.isnan(low[1]) and np.isnan(high[1])  # one repeat: no band


def test_curves_hold_the_last_best_and_share_one_time_grid(two_searchers):
    by_trial = curves(two_searchers, "trial_order")
    xs, mean, low, high = by_trial["random"]
    assert list(xs) == [1, 2, 3]
    assert list(mean) == pytest.approx([0.575, 0.60, 0.60])  # r1 keeps its 0.65
    by_time = curves(two_searchers, "wall_time_s", points=11)
    assert np.array_equal(by_time["optuna"][0], by_time["random"][0])
    xs, mean, low, high = by_time["optuna"]
    assert xs[0] == 0 and xs[-1] == pytest.approx(52.5)
    assert np.isnan(mean[0]) and mean[-1] == pytest.approx(0.8)  # final bests 0.7 and 0.9


def test_html_is_self_contained(two_searchers, tmp_path):
    path = tmp_path / "out" / "compare.html"
    write_html(two_searchers, str(path), "val_auc", "max", "blood")
    page = path.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 2 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "http" not in page.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert "<td>optuna</td>" in page and "<td>random</td>" in page
    assert "test auroc" in page and "CPU·h" in page and "time to target" in page


def test_sweep_runs_become_one_more_searcher():
    def run(run_id, state, auc, start, runtime):
        return SimpleNamespace(
            id=run_id,
            state=state,
            created_at=start,
            summary_metrics={"val_auc": auc, "_runtime": runtime, "epoch": 3},
        )

    runs = [
        run("r1", "finished", 0.7, "2026-01-01T00:00:00Z", 50),
        run("r2", "killed", 0.6, "2026-01-01T00:00:10Z", 10),
        run("r3", "running", 0.9, "2026-01-01T00:00:20Z", 5),  # not over: left out
        run("r4", "crashed", None, "2026-01-01T00:00:30Z", 1),
    ]
    rows = sweep_rows(runs, "val_auc", "max")
    assert [r["trial_id"] for r in rows] == ["r2", "r4", "r1"]
    assert [r["status"] for r in rows] == ["stopped_early", "errored", "finished"]
    assert [r["best_so_far"] for r in rows] == [0.6, 0.6, 0.7]
    assert [r["wall_time_s"] for r in rows] == [20.0, 31.0, 50.0]
    assert {r["searcher"] for r in rows} == {"wandb-sweep"}
    first_two = sweep_rows(runs, "val_auc", "max", limit=2)  # the others' trial budget
    assert [r["trial_id"] for r in first_two] == ["r2", "r1"]


def test_sweep_is_skipped_with_a_message_offline(monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert read_sweep("me/proj/abc123", "val_auc", "max") == []
    assert "skipped, W&B is offline" in capsys.readouterr().out


def test_command_line_of_each_search(tmp_path, monkeypatch):
    args, passthrough = parse_args(
        [
            "--task",
            "blood",
            "--searchers",
            "optuna,random",
            "--trials",
            "4",
            "--repeats",
            "2",
            "--epochs",
            "1",
            "--",
            "--max-concurrent",
            "1",
        ]
    )
    args = dataclasses.replace(args, out=str(tmp_path), gpus_per_trial=0.0)
    cmd = search_command(args, "random[stop=none]", 1, passthrough)
    flat = " ".join(cmd[2:])
    for part in (
        "--task blood",
        "--name compare-blood-random-stop-none-r1",
        f"--storage {tmp_path}",
        "--searcher random --early-stopping none",
        "--seed 1",
        "--trials 4",
        "--epochs 1",
        "--gpus-per-trial 0.0",
        "--explain-top 0",
    ):
        assert part in flat
    assert cmd[-2:] == ["--max-concurrent", "1"]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert search_env([])["RAY_ADDRESS"] == "local"  # never another user's cluster
    assert "RAY_ADDRESS" not in search_env(["--address", "auto"])
    with pytest.raises(SystemExit):
        parse_args(["--task", "blood", "--searchers", "optuna,tpe"])
    again = resume_command(
        "/x/compare-blood-random-r1", ["--max-concurrent", "1", "--address", "a:1"]
    )
    assert again[2:] == ["--resume", "/x/compare-blood-random-r1", "--address", "a:1"]
    tpe = search_command(args, "optuna[startup=10,liar=no]", 0, [])
    assert " --tpe startup=10,liar=no" in " ".join(tpe)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("random[startup=3]", "'startup=3' is not a setting"),
        ("optuna[stop=maybe]", "'stop=maybe'"),
        ("optuna[startup=3", "expected"),
        ("optuna,optuna", "named twice"),
        ("", "at least one"),
        ("optuna;random", "expected ','"),
        ("optuna[startup=abc]", "--tpe startup=abc"),
    ],
)
def test_searcher_specs_refused(text, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_methods(text)


def test_compare_refuses_a_bad_spec_in_one_line(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_args(["--task", "blood", "--searchers", "random[liar=no]"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --searchers 'random[liar=no]'") and err.count("\n") == 1


@pytest.mark.slow
def test_compare_end_to_end(tmp_path, make_npz, ray_head):
    """Optuna against W&B's engine x 1 repeat x 2 trials x 1 epoch, through run.py in
    subprocesses (random search is the same code path with another searcher), on the
    session's Ray head (`-- --address`, passed through to every search)."""
    make_npz(get_task("pneumonia"), n=48)
    space = {
        "method": "bayes",
        "metric": {"name": "val_auc", "goal": "maximize"},
        "parameters": {
            "model": {"value": "simple_cnn"},
            "weights": {"value": "none"},
            "batch_size": {"value": 16},
            "lr": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-2},
        },
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    out = tmp_path / "cmp"
    cmd = [
        sys.executable,
        str(ROOT / "search" / "compare.py"),
        "--task",
        "pneumonia",
        "--searchers",
        "optuna,wandb-bayes",
        "--trials",
        "2",
        "--repeats",
        "1",
        "--epochs",
        "1",
        "--launcher",
        "function",
        "--data-dir",
        str(tmp_path),
        "--space",
        str(tmp_path / "space.yaml"),
        "--out",
        str(out),
        "--",
        "--address",
        ray_head.address,
    ]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    print(proc.stdout[-4000:], proc.stderr[-4000:])
    assert proc.returncode == 0

    rows = read_table(str(out / "compare.parquet"))
    searchers = ("optuna", "wandb-bayes")
    for searcher in searchers:
        mine = [r for r in rows if r["searcher"] == searcher]
        assert [r["trial_order"] for r in mine] == [1, 2], searcher
        assert all(r["status"] == "finished" and r["metric"] is not None for r in mine)
        assert all(r["wall_time_s"] > 0 and r["cpus"] == 1.0 for r in mine)
        assert sum(r["test_metric"] is not None for r in mine) == 1  # the best trial, on test
    page = (out / "compare.html").read_text()
    assert all(f"<td>{s}</td>" in page for s in searchers)
    table = proc.stdout[proc.stdout.index("searcher  ") :]
    assert all(re.search(rf"^{s}\s", table, re.M) for s in searchers)


def test_plot_limits_show_where_the_curves_settle():
    """A diverged first trial (val_loss 40) must not flatten the curves into one line."""
    from search.reporting.figures import y_range

    settled = np.r_[40.0, np.full(30, 0.5), np.full(30, 0.3)]
    lo, hi = y_range([settled, np.r_[np.nan, np.full(59, 0.4), 0.35]])
    assert lo < 0.3 and 0.5 < hi < 1.0
    assert y_range([np.full(3, np.nan)]) is None
