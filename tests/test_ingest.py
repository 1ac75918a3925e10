"""`search.data.ingest`: Ray Data and threads give the same arrays, a second ingest decodes only
what changed, bad files are named (or skipped and listed), nothing is written into the source,
and a folder on S3 (moto's server on loopback) ingests like a local one.

Every dataset is a few dozen tiny PNGs made here; the cache folder is a tmp folder.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from search.data.conversion import cache_file
from search.data.folders import plan_folder
from search.data.ingest import run
from search.data.segfolders import plan_segfolder
from trainables.data import SPLITS


@pytest.fixture
def shapes(tmp_path, write_png):
    """A folder per class (a, b, c), 12 PNGs each of three sizes; one class grayscale."""
    root = tmp_path / "shapes"
    for c, name in enumerate(("a", "b", "c")):
        for i in range(12):
            mode = "L" if name == "c" else "RGB"
            write_png(root / name / f"img_{i:03d}.png", (40 + 7 * (i % 3), 36), 40 + 60 * c, mode)
    return root


def _arrays(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k != "info"}


def _ingest(src: Path, cache: Path, **kwargs) -> tuple[str, dict]:
    _, conversion = plan_folder(str(src), 16, **kwargs)
    path = cache_file(conversion, str(cache))
    return path, run(conversion, path)


def _run_without_ray(conversion, path: str, tmp_path: Path) -> dict:
    """`run` in a fresh process, where Ray is not initialised (the session may connect this
    one): the thread pool's path. Its info."""
    code = (
        "import json, pickle, sys; from search.data.ingest import run; "
        "print(json.dumps(run(pickle.load(open(sys.argv[1], 'rb')), sys.argv[2])))"
    )
    pickled = tmp_path / "conversion.pkl"
    pickled.write_bytes(pickle.dumps(conversion))
    out = subprocess.run(
        [sys.executable, "-c", code, str(pickled), path],
        check=True,
        timeout=120,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.splitlines()[-1])


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


def test_threads_write_the_layout_the_trainers_read(shapes, tmp_path):
    before = _snapshot(shapes)
    path, info = _ingest(shapes, tmp_path / "cache")
    assert _snapshot(shapes) == before  # nothing written into the data folder
    assert info["channels"] == 3 and info["decoded"] == 36 and info["skipped"] == []
    arrays = _arrays(path)
    assert sum(len(arrays[f"{s}_images"]) for s in SPLITS) == 36
    assert arrays["train_images"].dtype == np.uint8
    assert arrays["train_images"].shape[1:] == (16, 16, 3)
    with zipfile.ZipFile(path) as zf:  # stored, not deflated: node caches copy raw .npy
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    gray, info = _ingest(shapes, tmp_path / "cache", channels=1)
    assert info["channels"] == 1 and _arrays(gray)["val_images"].shape[1:] == (16, 16)


@pytest.mark.slow
def test_ray_data_gives_the_same_arrays_as_threads(shapes, tmp_path, ray_cluster):
    _, conversion = plan_folder(str(shapes), 16)
    on_ray = run(conversion, str(tmp_path / "ray" / "d.npz"))
    assert on_ray["decoded"] == 36
    node = ray_cluster.get_runtime_context().get_node_id()
    assert on_ray["decode_nodes"] == {node: 36}  # the session's head: one node
    out = str(tmp_path / "threads" / "d.npz")
    assert _run_without_ray(conversion, out, tmp_path)["decode_nodes"] == {"local": 36}
    threads, ray_made = _arrays(out), _arrays(str(tmp_path / "ray" / "d.npz"))
    assert threads.keys() == ray_made.keys()
    for key in threads:
        np.testing.assert_array_equal(threads[key], ray_made[key], err_msg=key)


def test_a_second_ingest_decodes_only_added_and_changed_files(shapes, tmp_path, write_png):
    _ingest(shapes, tmp_path / "cache")
    write_png(shapes / "a" / "img_000.png", (50, 50), 200)  # changed
    write_png(shapes / "b" / "new.png", (30, 30), 90)  # added
    (shapes / "c" / "img_001.png").unlink()  # removed
    path, info = _ingest(shapes, tmp_path / "cache")
    assert (info["decoded"], info["reused"]) == (2, 34)
    fresh, fresh_info = _ingest(shapes, tmp_path / "fresh")
    assert fresh_info["decoded"] == 36
    again, cached = _arrays(path), _arrays(fresh)
    assert again.keys() == cached.keys()
    for key in cached:  # the same bytes whatever the history
        np.testing.assert_array_equal(again[key], cached[key], err_msg=key)


def test_bad_files_are_counted_named_and_skipped_on_request(shapes, tmp_path):
    for i in range(7):
        (shapes / "a" / f"bad_{i}.png").write_bytes(b"\x89PNG\r\n\x1a\nnot an image")
    _, conversion = plan_folder(str(shapes), 16)
    path = str(tmp_path / "cache" / "d.npz")
    with pytest.raises(ValueError, match=r"^7 of 43 image\(s\) in .*could not be read") as err:
        run(conversion, path)
    text = str(err.value)
    assert "a/bad_0.png" in text and "a/bad_4.png" in text and "a/bad_5.png" not in text
    assert text.endswith("\n  (and 2 more)") and "; fix or delete them" in text
    assert "--skip-bad" in text.splitlines()[0]
    assert not os.path.exists(path)
    info = run(conversion, path, skip_bad=True)
    assert info["decoded"] == 7 and info["reused"] == 36  # the good rows came from the shards
    assert [s["file"] for s in info["skipped"]] == [f"a/bad_{i}.png" for i in range(7)]
    arrays = _arrays(path)
    for split in SPLITS:
        n = len(arrays[f"{split}_images"])
        assert len(arrays[f"{split}_labels"]) == len(arrays[f"{split}_files"]) == n
        assert not any("bad_" in f for f in arrays[f"{split}_files"])
    assert sum(sum(c.values()) for c in info["counts"].values()) == 36


def test_masks_are_decoded_with_their_images(isbi_path, tmp_path):
    conversion = plan_segfolder(str(isbi_path), 32)
    info = run(conversion, str(tmp_path / "seg.npz"))
    arrays = _arrays(str(tmp_path / "seg.npz"))
    assert arrays["train_labels"].shape == (20, 32, 32) and info["channels"] == 1
    assert set(np.unique(arrays["train_labels"])) == {0, 1}
    assert info["foreground"]["train"] == pytest.approx(arrays["train_labels"].mean())
    assert info["counts"]["val"] == {"background": 5, "foreground": 5}


# --- a folder on S3 ---------------------------------------------------------------------------


@pytest.fixture
def s3_bucket(s3_server, monkeypatch):
    """moto's S3 server (conftest's `s3_server`) with a bucket `data`; this process's AWS
    settings point at it. The pyarrow filesystem to fill it."""
    env, fs = s3_server
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    fs.create_dir("data")
    return fs


@pytest.mark.slow
def test_a_folder_on_s3_ingests_like_the_local_one(shapes, tmp_path, s3_bucket):
    for file in shapes.rglob("*.png"):
        rel = file.relative_to(shapes).as_posix()
        with s3_bucket.open_output_stream(f"data/shapes/{rel}") as out:
            out.write(file.read_bytes())
    classes, conversion = plan_folder("s3://data/shapes", 16)
    assert classes == ["a", "b", "c"] and len(conversion.file_stats) == 36
    info = _run_without_ray(conversion, str(tmp_path / "s3.npz"), tmp_path)  # AWS_* env here
    assert info["decoded"] == 36
    local, _ = _ingest(shapes, tmp_path / "local")
    remote = _arrays(str(tmp_path / "s3.npz"))
    for key in ("train_images", "train_labels", "test_files"):
        np.testing.assert_array_equal(remote[key], _arrays(local)[key], err_msg=key)
    shutil.rmtree(tmp_path / "local")


@pytest.mark.slow
def test_the_bench_section_measures_every_reader(tmp_path, monkeypatch):
    """`python search/bench.py --sections ingest --smoke-test`'s rows (figures not judged)."""
    import torch

    from search.benchmarks.core import Bench, BenchSettings, sizes_for
    from search.benchmarks.ingest import ingest

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the set is written there
    device = torch.device("cpu")
    b = Bench(BenchSettings(smoke_test=True), device, sizes_for(True, True, device))
    ingest(b)
    rows = b.results["ingest"]
    readers = ("read_images", "threads", "ray")
    assert {f"rate/{r}" for r in readers} <= rows.keys()
    assert {f"rss/{r}_{n}" for r in readers for n in (50, 200)} <= rows.keys()
    assert rows["rate/ray"]["ratio"] > 0 and rows["rss/threads_200"]["ratio"] > 0
    assert "2 decoded, 198 reused" in rows["incremental/again_s"]["note"]
