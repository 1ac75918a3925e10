"""A real search whose data is above the resident budget (set low): trials stream from one
node-local copy, attribution and test metrics run as Ray tasks, the report is written; the node's
memory (PSS of the cache's pages in the processes that map it, psutil) shows the data is held
once per node, not once per trial.

    pytest -m slow tests/test_streaming_search.py -s     # prints the memory figures
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from search.experiment.tables import FINISHED, TRIALS_FILE, read_table

TRIALS = 2  # --smoke-test: 2 trials, 1 epoch, 3 batches each
# 224-px RGB, as the seeds train: 0.6 GB of train+val images, more than a trial process's own
# memory, so a copy per trial would show; few steps (--smoke-test) keep it quick.
N_TRAIN, N_VAL, N_TEST, SIZE = 4_000, 120, 60, 224


def _write_dataset(path: Path) -> int:
    """A synthetic 224-px RGB PathMNIST-layout npz (9 classes); train+val image bytes."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", N_TRAIN), ("val", N_VAL), ("test", N_TEST)):
        labels = (np.arange(n) % 9).reshape(-1, 1).astype(np.uint8)
        images = rng.integers(0, 60, (n, SIZE, SIZE, 3), dtype=np.uint8)
        cell = SIZE // 3
        for c in range(9):  # each class a bright square in its own place
            r, q = divmod(c, 3)
            images[
                labels[:, 0] == c, r * cell : r * cell + cell // 2, q * cell : q * cell + cell // 2
            ] = 220
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    np.savez(path, **arrays)  # stored, not deflated: what a 224-px MedMNIST member is like
    return arrays["train_images"].nbytes + arrays["val_images"].nbytes


class MemorySampler:
    """Every 0.3 s: each process that maps a file under `cache`, its PSS, its private memory
    beside the cache, and the PSS of its cache mappings; keeps the largest figures seen."""

    def __init__(self, cache: Path):
        self.cache, self.stop = str(cache), threading.Event()
        self.peak_total_pss = self.peak_cache_pss = self.peak_cache_rss = self.peak_private = 0
        self.pids: set[int] = set()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil  # Ray's bundled copy: importable once ray is

        total = cache_pss = cache_rss = 0
        for proc in psutil.process_iter(["pid"]):
            if not self._maps_the_cache(proc.pid):
                continue
            try:
                maps = [m for m in proc.memory_maps(grouped=True) if m.path.startswith(self.cache)]
                if not maps:
                    continue
                full = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied, FileNotFoundError):
                continue
            self.pids.add(proc.pid)
            total += full.pss
            cache_pss += sum(m.pss for m in maps)
            cache_rss += sum(m.rss for m in maps)  # as if each reader held its own copy
            # private memory beside the cache's own pages (which count as private while one
            # process alone maps them): a copy of the data per trial would land here
            own = full.uss - sum(m.private_clean + m.private_dirty for m in maps)
            self.peak_private = max(self.peak_private, own)
        self.peak_total_pss = max(self.peak_total_pss, total)
        self.peak_cache_pss = max(self.peak_cache_pss, cache_pss)
        self.peak_cache_rss = max(self.peak_cache_rss, cache_rss)

    def _maps_the_cache(self, pid: int) -> bool:
        """From /proc/PID/maps, cheap: psutil's per-mapping figures (smaps) cost ~7 ms per
        process, and a sampler reading them for every process of the machine would take a
        core from the search it measures."""
        try:
            with open(f"/proc/{pid}/maps") as f:
                return self.cache in f.read()
        except OSError:
            return False

    def _run(self) -> None:
        while not self.stop.wait(0.3):
            self._sample()

    def __enter__(self):
        import ray  # noqa: F401  (puts its bundled psutil on the path)

        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


@pytest.mark.slow
def test_a_search_above_the_budget_streams_from_one_copy_per_node(tmp_path, write_space, searches):
    data_dir, cache = tmp_path / "data", tmp_path / "node-cache"
    data_dir.mkdir()
    dataset = _write_dataset(data_dir / "pathmnist_224.npz")
    lr = {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e-2}
    space = write_space(tmp_path / "space.yaml", image_size={"value": SIZE}, lr=lr)
    args = [
        "--task",
        "pathology",
        "--data-dir",
        str(data_dir),
        "--space",
        space,
        "--smoke-test",
        "--storage",
        str(tmp_path / "runs"),
        "--name",
        "big",
        "--resident-budget-mb",
        "20",
        "--explain-top",
        "1",
        "--ig-samples",
        "1",
        "--ig-steps",
        "4",
    ]
    with MemorySampler(cache) as memory:
        proc = searches.run(*args, env={"MEDSWEEP_NODE_CACHE": str(cache)})
    assert proc.returncode == 0
    log = proc.stdout + proc.stderr
    assert "resident budget 20.0 MB (--resident-budget-mb) -> stream" in log

    exp = tmp_path / "runs" / "big"
    trials = read_table(str(exp / TRIALS_FILE))
    assert [t["status"] for t in trials] == [FINISHED] * TRIALS
    for t in trials:
        result = json.loads((exp / t["trial_id"] / "result.json").read_text().splitlines()[-1])
        assert result["streamed"] == 1
    best = json.loads((exp / "test_metrics.json").read_text())["best_trial"]
    assert (exp / best / "attribution" / "gradcam.png").is_file()  # --explain-top 1
    assert (exp / "report.html").is_file()

    # one copy on the node: the cache holds each array once, and every reader maps it
    (folder,) = [p for p in cache.iterdir() if p.is_dir()]
    images = sorted(p.name for p in folder.glob("*_images.npy"))
    assert images == ["test_images.npy", "train_images.npy", "val_images.npy"]
    cached = sum((folder / f"{s}_images.npy").stat().st_size for s in ("train", "val"))
    assert dataset <= cached < dataset * 1.01
    mb = 2**20
    print(
        f"dataset {dataset / mb:.0f} MB; {len(memory.pids)} processes mapped the cache; peak "
        f"PSS of them all {memory.peak_total_pss / mb:.0f} MB, of their cache mappings "
        f"{memory.peak_cache_pss / mb:.0f} MB (their RSS summed {memory.peak_cache_rss / mb:.0f} "
        f"MB); peak private memory of one process beside the cache {memory.peak_private / mb:.0f} "
        "MB (the model's activations at 224 px)"
    )
    # every trial read the node's one copy (a file mapping, not a private array) ...
    assert len(memory.pids) >= TRIALS and memory.peak_cache_pss > 0
    # ... and the data is in the node's memory once, however many processes read it: the PSS
    # of the cache's pages, summed over its readers, never exceeds the cache itself. (Their
    # summed RSS, what a copy per reader would hold, exceeds it only when the readers overlap
    # in time, which a 3-batch smoke trial need not: printed above, not asserted.)
    assert memory.peak_cache_pss <= cached * 1.05
