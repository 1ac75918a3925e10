"""Section `ingest`: the new ingest (`search.data.ingest`) against today's threaded reader.

    ingest(b)   # images/s, driver peak RSS at 1/4 and all of the set, a re-ingest after 1%
    python search/bench.py --sections ingest

The bench writes a synthetic CheXpert-layout set into a temporary folder (`$TMPDIR`):
`CheXpert-v1.0-small/train/patient*/study*/view1_frontal.jpg`, grayscale JPEGs of 320x390
(a few hundred distinct images with some structure, each file made unique by a JPEG comment,
so writing 20,000 takes seconds), and `train.csv` with `Path`, `Frontal/Lateral`, `AP/PA` and
the 14 observation columns (1, 0, -1 and blanks). The conversion is planned by the table source
(`search.data.table.plan_table`, task `chexpert`) when it can, else from the CSV here (the
rows say which). Images are decoded to 224 px (`--smoke-test`: 32).

Every reader runs in a fresh subprocess that plans, reads and writes the npz as a search's
driver does, and reports its own peak RSS (`resource.getrusage(...).ru_maxrss`):
- `read_images`: today's reader (`search.data.images.read_images`, a thread pool filling one
  array) + `np.savez`, as the folder source did before the ingest;
- `threads`: `search.data.ingest.run` without Ray (its thread pool);
- `ray`: `run` on a fresh local Ray (`ray.init(address="local", num_cpus=2)`), Ray Data tasks.
The readers take turns, `ROUNDS` times. Rows: images/s of each on the same cores (the best
turn; ratio to `read_images`, target >= 0.9), peak RSS with the whole set over a quarter of it
(target <= 1.2 for the new ingest), and the time of a second ingest after 1% of the files were
rewritten over the first (target <= 0.10). On the fake autoscaling cluster (cluster/local.yaml)
the `ray` child's `decode_nodes` would list the worker nodes; that run is not part of this
section.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

from search.benchmarks.core import Bench
from trainables.tasks import CHEXPERT_OBSERVATIONS

OBSERVATIONS = CHEXPERT_OBSERVATIONS
ROOT = "CheXpert-v1.0-small"
DISTINCT = 300
"""Distinct JPEGs encoded; every file is one of them plus its own comment segment."""
CHANGED = 0.01
READERS = ("read_images", "threads", "ray")
ROUNDS = 2
"""Turns each reader gets on each size (the best time counts; `--smoke-test`: 1)."""


def ingest(b: Bench) -> None:
    """The new ingest against `read_images`: images/s, peak RSS (quarter vs whole), 1% again."""
    add = b.rows("ingest")
    n = 200 if b.settings.smoke_test else 5000 if b.settings.quick else 20000
    size = 32 if b.settings.smoke_test else 224
    with tempfile.TemporaryDirectory(prefix="medsweep-ingest-") as tmp:
        started = time.perf_counter()
        make_chexpert(tmp, n)
        wrote = time.perf_counter() - started
        note = (
            f"{n} grayscale JPEGs 320x390 -> {size} px, CheXpert layout + train.csv "
            f"(14 observations incl. -1 and blanks), written in {wrote:.1f} s"
        )
        add("images", n, "files", note)
        runs = _interleaved_runs(tmp, n, size, 1 if b.settings.smoke_test else ROUNDS)
        _rate_rows(add, runs, n)
        _memory_rows(add, runs, n)
        _incremental_rows(add, tmp, runs[("threads", n)][0], n, size)


def _interleaved_runs(tmp: str, n: int, size: int, rounds: int) -> dict[tuple, list[dict]]:
    """{(reader, images): one result per round}; the readers take turns (the machine's load
    drifts), each run from an empty cache, deleted after (but the first `threads` run's on the
    whole set: the incremental rows reuse it)."""
    runs: dict[tuple, list[dict]] = {}
    for turn in range(rounds):
        for count in (n // 4, n):
            for reader in READERS:
                cache = f"{reader}-{count}-{turn}"
                runs.setdefault((reader, count), []).append(
                    _child(tmp, reader, count, size, cache)
                )
                if (reader, count, turn) != ("threads", n, 0):
                    shutil.rmtree(os.path.join(tmp, "cache", cache), ignore_errors=True)
    return runs


def _rate_rows(add: Callable, runs: dict, n: int) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for reader in READERS:
        run = min(runs[(reader, n)], key=lambda r: r["seconds"])
        times = "/".join(f"{r['seconds']:.1f}" for r in runs[(reader, n)])
        add(
            f"rate/{reader}",
            n / run["seconds"],
            "img/s",
            f"best of {times} s to read + write the npz on {cores} cores "
            f"(planning {run['plan_s']:.1f} s not counted; planned by {run['planner']})"
            + (f"; decode nodes {run['nodes']}" if run.get("nodes") else ""),
            vs=None if reader == "read_images" else "rate/read_images",
        )


def _memory_rows(add: Callable, runs: dict, n: int) -> None:
    for reader in READERS:
        small = max(r["maxrss_mb"] for r in runs[(reader, n // 4)])
        big = max(r["maxrss_mb"] for r in runs[(reader, n)])
        add(f"rss/{reader}_{n // 4}", small, "MB", "driver peak RSS (the child's, most of rounds)")
        add(
            f"rss/{reader}_{n}",
            big,
            "MB",
            f"{n} images over {n // 4}; target <= 1.2 for the new ingest",
            vs=f"rss/{reader}_{n // 4}",
        )


def _incremental_rows(add: Callable, tmp: str, first: dict, n: int, size: int) -> None:
    rng = random.Random(1)
    files = sorted(_image_files(tmp))
    changed = rng.sample(files, max(1, int(len(files) * CHANGED)))
    bases = _bases(3, seed=99)
    for i, rel in enumerate(changed):  # rewritten: new bytes, size and mtime
        _write_jpeg(os.path.join(tmp, rel), bases[i % len(bases)], f"changed {i}")
    again = _child(tmp, "threads", n, size, f"threads-{n}-0")  # the first run's cache
    add("incremental/first_s", first["seconds"], "s", f"threads, {first['decoded']} decoded")
    add(
        "incremental/again_s",
        again["seconds"],
        "s",
        f"after {len(changed)} files ({CHANGED:.0%}) were rewritten: {again['decoded']} decoded, "
        f"{again['reused']} reused from the shards; target <= 0.10",
        vs="incremental/first_s",
    )


# --- the synthetic set ----------------------------------------------------------------------


def _bases(count: int, seed: int = 0) -> list[bytes]:
    """`count` distinct grayscale JPEGs of 320x390 with some structure (a chest-like blob, ribs
    as bands, noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:390, 0:320].astype(np.float32)
    out = []
    for _ in range(count):
        cx, cy, r = rng.uniform(120, 200), rng.uniform(150, 240), rng.uniform(80, 140)
        body = 170 * np.exp(-(((x - cx) ** 2 + ((y - cy) * 0.8) ** 2) / (2 * r**2)))
        ribs = 25 * np.sin(y / rng.uniform(9, 15) + rng.uniform(0, 6))
        pixels = np.clip(body + ribs + rng.normal(40, 12, y.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def _write_jpeg(path: str, base: bytes, comment: str) -> None:
    """`base` with a COM segment after SOI: other bytes, the same pixels."""
    text = comment.encode()
    segment = b"\xff\xfe" + (len(text) + 2).to_bytes(2, "big") + text
    with open(path, "wb") as f:
        f.write(base[:2] + segment + base[2:])


def make_chexpert(tmp: str, n: int) -> None:
    """`n` images in CheXpert's layout and `train.csv` (plus `train_<n // 4>.csv`, its head)."""
    bases = _bases(min(DISTINCT, n))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        patient, study = divmod(i, 3)
        rel = f"{ROOT}/train/patient{patient:05d}/study{study + 1}/view1_frontal.jpg"
        os.makedirs(os.path.join(tmp, os.path.dirname(rel)), exist_ok=True)
        _write_jpeg(os.path.join(tmp, rel), bases[i % len(bases)], f"image {i}")
        values = rng.choice(
            ["1.0", "0.0", "-1.0", ""], size=len(OBSERVATIONS), p=[0.2, 0.3, 0.1, 0.4]
        )
        rows.append([rel, "Female", "60", "Frontal", "AP", *values])
    header = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *OBSERVATIONS]
    for name, count in (("train.csv", n), (f"train_{n // 4}.csv", n // 4)):
        with open(os.path.join(tmp, ROOT, name), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(rows[:count])


def _image_files(tmp: str) -> list[str]:
    found = []
    for folder, _, names in os.walk(os.path.join(tmp, ROOT)):
        found += [
            os.path.relpath(os.path.join(folder, f), tmp) for f in names if f.endswith(".jpg")
        ]
    return found


# --- one reader in a fresh process -------------------------------------------------------


def _child(tmp: str, reader: str, n: int, size: int, cache: str) -> dict:
    """Run `child_main` in a fresh interpreter; what it printed (JSON)."""
    args = json.dumps({"tmp": tmp, "reader": reader, "n": n, "size": size, "cache": cache})
    code = "import sys; from search.benchmarks.ingest import child_main; child_main(sys.argv[1])"
    env = {**os.environ, "RAY_DEDUP_LOGS": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code, args], capture_output=True, text=True, env=env, timeout=3600
    )
    if out.returncode != 0:
        raise RuntimeError(f"{reader} on {n} images failed: {out.stderr[-1500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def child_main(arg: str) -> None:
    """One reader on the set (the `_child` process): plan, read, write the npz; print JSON
    {seconds, plan_s, planner, maxrss_mb, decoded, reused, nodes}."""
    import resource

    a = json.loads(arg)
    if a["reader"] == "ray":  # connected before the clock starts, as a search's driver is
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    conversion, planner = plan_set(a["tmp"], a["n"], a["size"])
    planned = time.perf_counter()
    cache = os.path.join(a["tmp"], "cache", a["cache"])
    if a["reader"] == "read_images":
        result = _today(conversion, os.path.join(cache, "data.npz"))
    else:
        from search.data.ingest import run

        info = run(conversion, os.path.join(cache, "data.npz"))
        result = {"decoded": info["decoded"], "reused": info["reused"]}
        result["nodes"] = len(info["decode_nodes"])
    result["seconds"] = time.perf_counter() - planned
    result["plan_s"], result["planner"] = planned - started, planner
    result["maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _today(conversion, path: str) -> dict:
    """What the folder source did before the ingest: one array from `read_images`, np.savez."""
    from search.data.images import read_images
    from trainables.files import write_atomic

    splits = list(conversion.parts)
    files = [f for s in splits for f in conversion.parts[s][0]]
    images, _ = read_images(conversion.src, files, conversion.image_size, None)
    arrays, start = {}, 0
    for split in splits:
        names, labels = conversion.parts[split]
        arrays[f"{split}_images"] = images[start : start + len(names)]
        arrays[f"{split}_labels"] = labels
        start += len(names)
    write_atomic(path, lambda f: np.savez(f, **arrays))
    return {"decoded": len(files), "reused": 0}


def plan_set(tmp: str, n: int, size: int):
    """(the planned conversion of the first `n` rows, who planned it): the table source's
    `plan_table` (task chexpert) when it takes the set, else this bench's CSV reader."""
    table = os.path.join(tmp, ROOT, f"train_{n}.csv")
    table = table if os.path.exists(table) else os.path.join(tmp, ROOT, "train.csv")
    try:
        from search.data.settings import DataSettings
        from search.data.table import plan_table
        from trainables.tasks import get_task

        data = DataSettings(data_dir=tmp, labels=table, cache_dir=os.path.join(tmp, "cache"))
        return plan_table(get_task("chexpert"), data, size, 0)[1], "plan_table"
    except Exception as err:  # the table source is not there or refuses the set: say so
        return _plan_csv(tmp, table, size), f"the bench's CSV reader ({type(err).__name__})"


def _plan_csv(tmp: str, table: str, size: int):
    """A Conversion straight from the CSV: blank = 0, -1 kept (ignored in the loss), a patient
    split (every tenth patient test, the next tenth val)."""
    from search.data.conversion import Conversion, stat_files

    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    value = {"1.0": 1, "0.0": 0, "-1.0": -1, "": 0}
    parts: dict[str, tuple[list[str], list]] = {s: ([], []) for s in ("train", "val", "test")}
    for row in rows:
        patient = int(row["Path"].split("/")[2][len("patient") :])
        split = {0: "test", 1: "val"}.get(patient % 10, "train")
        parts[split][0].append(row["Path"])
        parts[split][1].append([value[row[c]] for c in OBSERVATIONS])
    files = [f for names, _ in parts.values() for f in names]
    return Conversion(
        src=tmp,
        parts={s: (names, np.array(labels, np.int8)) for s, (names, labels) in parts.items()},
        image_size=size,
        channels=None,
        settings={"bench": "chexpert", "rows": len(rows)},
        name="chexpert-bench",
        extra={"classes": np.array(OBSERVATIONS)},
        info={"split": "patient"},
        file_stats=stat_files(tmp, files),
    )
