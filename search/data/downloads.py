"""Find (or download, once per node, under a file lock) the npz file a task needs.

    path = ensure_dataset(task, image_size=28, data_dir=None)   # medmnist's root by default

A missing MedMNIST file is fetched with medmnist's own URL and MD5 (`medmnist.INFO`) through
torchvision's downloader, as medmnist does; offline, the error names the file, the folder it
was expected in and the URL to fetch it from by hand.
"""

from __future__ import annotations

import os

from filelock import FileLock

from trainables.data import npz_name
from trainables.tasks import Task


def default_data_dir() -> str:
    """medmnist's own root (`~/.medmnist`), or `$MEDMNIST_ROOT`."""
    return os.environ.get("MEDMNIST_ROOT", os.path.expanduser("~/.medmnist"))


def ensure_dataset(task: Task, image_size: int, data_dir: str | None = None) -> str:
    """The path of the task's npz file at `image_size`, downloading it if it is missing."""
    root = os.path.abspath(os.path.expanduser(data_dir or default_data_dir()))
    filename = npz_name(task.flag, image_size)
    path = os.path.join(root, filename)
    if os.path.isfile(path):
        return path
    os.makedirs(root, exist_ok=True)
    with FileLock(path + ".lock"):
        if not os.path.isfile(path):  # another process on this node may have fetched it
            _download(task.flag, image_size, root, filename)
    return path


def _download(flag: str, image_size: int, root: str, filename: str) -> None:
    from medmnist import INFO
    from torchvision.datasets.utils import download_url

    suffix = "" if image_size == 28 else f"_{image_size}"
    url, md5 = INFO[flag][f"url{suffix}"], INFO[flag][f"MD5{suffix}"]
    try:
        download_url(url, root=root, filename=filename, md5=md5)
    except Exception as err:  # URLError, HTTPError, socket errors, a bad checksum
        partial = os.path.join(root, filename)
        if os.path.exists(partial):
            os.remove(partial)
        raise RuntimeError(
            f"{filename} is not in {root} and could not be downloaded "
            f"({type(err).__name__}: {err}). Fetch {url} by hand into {root}, or point "
            f"--data-dir at the folder that holds {filename}."
        ) from err
