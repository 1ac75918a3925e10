"""Weights & Biases: runs (one W&B run per trial, media after the search), engine (W&B's sweep
engine as a Ray Tune searcher) and schema (sweep-config checks with readable messages)."""
