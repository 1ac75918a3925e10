"""The names inside an experiment folder, defined once (import-light: no Ray, no torch).

runs/<experiment>/
  search.json  trials.parquet  history.parquet  test_metrics.json  report.html
  <trial>/checkpoint/model.pt
  <trial>/attribution/gradcam.png, integrated_gradients.png, maps.npz
  <trial>/test_predictions.npz
  optuna.db            the Optuna study (optuna-dashboard sqlite:///runs/<experiment>/optuna.db)
  repeats/             --repeat-best: the best configuration retrained with new seeds
  .lock                held by the search running in the folder (its pid and host inside)
"""

from __future__ import annotations

MANIFEST_FILE = "search.json"
TRIALS_FILE = "trials.parquet"
HISTORY_FILE = "history.parquet"
TEST_METRICS_FILE = "test_metrics.json"
REPORT_FILE = "report.html"
CHECKPOINT_DIR = "checkpoint"
"""In each trial's folder: the trial's best checkpoint, exported after the search."""
ATTRIBUTION_DIR = "attribution"
"""In each explained trial's folder."""
GRADCAM_PNG = "gradcam.png"
IG_PNG = "integrated_gradients.png"
MAPS_FILE = "maps.npz"
ATTRIBUTION_TITLES = {GRADCAM_PNG: "Grad-CAM", IG_PNG: "Integrated Gradients"}
TEST_PREDICTIONS_FILE = "test_predictions.npz"
"""In each tested trial's folder."""
OPTUNA_FILE = "optuna.db"
"""The Optuna study on disk (SQLite; `optuna-dashboard sqlite:///<experiment>/optuna.db`)."""
LOCK_FILE = ".lock"
"""Locked by the search that runs in the folder (`search.driver.resume.claim`)."""
REPEATS_DIR = "repeats"
"""--repeat-best N: the Tune experiment retraining the best configuration with N seeds."""

FOCUS_GAP = 0.2
"""A trial whose attribution focus is this far below the median of all is flagged."""
