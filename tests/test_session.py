"""Interrupts (search.driver.session): SIGINT / SIGTERM end a search's Tune run gracefully
through the SIGUSR1 handler Ray Tune installs while it runs, a Ray internal we lean on.

    pytest tests/test_session.py -q          # the slow one runs a real, tiny Tune run

If a Ray upgrade drops or moves that handler, the slow test fails naming it.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
from ray import tune

from search.driver.session import Interrupts, check_storage, interrupted_code

RAY_INTERNAL = (
    "Ray Tune no longer stops tuner.fit() through the SIGUSR1 handler it installs in "
    "ray.tune.tune._setup_signal_catching (signal_interrupt_tune_run); "
    "search.driver.session.Interrupts hands SIGINT/SIGTERM to it so that an interrupted "
    "search saves its state. Find Tune's new stop hook (or stop the run through a Tune "
    "Callback/Stopper) and change Interrupts._handle"
)


def test_outside_a_run_an_interrupt_is_a_keyboard_interrupt_and_handlers_come_back():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), Interrupts() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs at the next bytecode; never reached
    assert stop.signal == signal.SIGTERM and interrupted_code(stop.signal) == 143
    assert signal.getsignal(signal.SIGINT) is before
    assert interrupted_code(signal.SIGINT) == 130


def test_check_storage_resolves_without_changing_anything(ray_cluster):
    assert check_storage(None) == "runs"  # one node: the local default is fine
    assert check_storage("s3://bucket/x") == "s3://bucket/x"


class SendSigint(tune.Callback):
    """Interrupts this process once the trial has reported twice."""

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        if result["training_iteration"] == 2:
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.slow
def test_an_interrupt_stops_the_run_through_tunes_sigusr1_handler(ray_cluster, tmp_path):
    from search.driver.resume import has_tune_state

    def trainable(config: dict) -> None:  # nested: pickled by value for Ray's workers
        for i in range(100):
            time.sleep(0.05)
            tune.report({"i": i})

    tuner = tune.Tuner(
        trainable,
        run_config=tune.RunConfig(
            name="interrupted",
            storage_path=str(tmp_path),
            callbacks=[SendSigint()],
            verbose=0,
        ),
    )
    with Interrupts() as stop, stop.fitting():
        try:
            grid = tuner.fit()
        except KeyboardInterrupt:
            pytest.fail(RAY_INTERNAL)
    assert stop.signal == signal.SIGINT
    assert grid[0].metrics["i"] < 99, RAY_INTERNAL  # the run ended early, not at its end
    assert has_tune_state(str(tmp_path / "interrupted")), "no state saved to --resume from"


def test_the_session_folder_is_named_through_public_ray_calls(ray_cluster):
    from search.driver.session import session_dir

    folder = session_dir()
    assert folder and os.path.basename(folder).startswith("session_"), folder
    assert os.path.isdir(os.path.join(folder, "logs"))
