"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from the four idx files of the original release.

Debian's ``dataset-fashion-mnist`` package (``make data``) installs them, gzipped, in
``/usr/share/datasets/fashion-mnist`` (the default ``dataset.root``); any folder holding the same
files (gzipped or not) works.  Nothing is downloaded.  60,000 training images (validation carved
from them by seed, stratified) and the official 10,000 test images, 28x28 grey, 10 classes.

The whole set sits in memory as uint8 (47 MB) and the loader fetches a batch with one index and
one normalisation (``__getitems__``), so an epoch costs no per-image Python call.  The record
keeps provenance: each file's SHA-256 and the Debian package version that owns the files.
"""

from __future__ import annotations

import gzip
import hashlib
import shutil
import subprocess
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from qexp.data.bundle import DataBundle
from qexp.errors import QexpError, one_line
from qexp.tasks.classification import Classification

PACKAGE = "dataset-fashion-mnist"
DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FILES = {  # split: (images, labels)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801  # idx: uint8 data, 3 resp. 1 dimensions
MEAN, STD = 0.2860, 0.3530  # over the 60,000 training images
CLASSES = 10


class ImageTensors(Dataset):
    """uint8 images (N, C, H, W) and labels in memory, normalised a whole batch at a time."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return images.float().div_(255.0).sub_(self.mean).div_(self.std)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._normalise(self.images[i]), self.labels[i]

    def __getitems__(self, indices: Sequence[int]) -> "Batch":
        idx = torch.as_tensor(indices, dtype=torch.int64)
        return Batch((self._normalise(self.images[idx]), self.labels[idx]))


class Batch(tuple):
    """A batch the dataset already assembled; :func:`collate` passes it through."""


def collate(items):
    return tuple(items) if isinstance(items, Batch) else default_collate(items)


def _missing(root: Path, what: str) -> QexpError:
    return QexpError(f"dataset.root={root}: {what}; install the Debian package {PACKAGE} (make data, or "
                     f"apt-get install {PACKAGE}) or set dataset.root to a folder holding "
                     f"{', '.join(f + '.gz' for pair in FILES.values() for f in pair)}")


def _locate(root: Path, name: str) -> Path:
    for candidate in (root / f"{name}.gz", root / name):
        if candidate.is_file():
            return candidate
    raise _missing(root, f"{name}.gz not found")


def read_idx(path: Path, magic: int) -> tuple[np.ndarray, str]:
    """The array in an idx file (gzipped when the name ends in .gz) and the file's SHA-256."""
    try:
        raw = path.read_bytes()
        data = gzip.decompress(raw) if path.suffix == ".gz" else raw
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError; truncation an EOFError
        raise QexpError(f"{path}: cannot be read as gzip ({one_line(exc)}); the file is corrupt "
                        f"or truncated: reinstall {PACKAGE}") from None
    if len(data) < 8 or int.from_bytes(data[:4], "big") != magic:
        found = f"0x{int.from_bytes(data[:4], 'big'):08x}" if len(data) >= 4 else "no header"
        raise QexpError(f"{path}: not an idx file of this kind (magic {found}, expected 0x{magic:08x}); "
                        f"the file is corrupt or not Fashion-MNIST")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        raise QexpError(f"{path}: the header announces {'x'.join(map(str, dims))} values but the file holds "
                        f"{len(data) - header} bytes of data; the file is truncated or corrupt: reinstall {PACKAGE}")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    return array, hashlib.sha256(raw).hexdigest()


def debian_version(path: Path) -> dict[str, str] | None:
    """The Debian package owning ``path`` and its version, when dpkg knows the file."""
    if shutil.which("dpkg-query") is None:
        return None
    try:
        owner = subprocess.run(["dpkg-query", "-S", str(path.resolve())], capture_output=True, text=True, timeout=20)
        if owner.returncode != 0:
            return None
        package = owner.stdout.split(":", 1)[0].strip()
        version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                                 timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return {"package": package, "version": version.stdout.strip()} if version.returncode == 0 else None


def read_split(root: Path, split: str) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """Images (N, 1, 28, 28) uint8, labels int64, and {file name: SHA-256}."""
    image_path, label_path = (_locate(root, name) for name in FILES[split])
    images, image_sha = read_idx(image_path, IMAGES_MAGIC)
    labels, label_sha = read_idx(label_path, LABELS_MAGIC)
    if len(images) != len(labels):
        raise QexpError(f"dataset.root={root}: {image_path.name} holds {len(images)} images but {label_path.name} "
                        f"{len(labels)} labels; reinstall {PACKAGE}")
    if len(labels) and labels.max() >= CLASSES:
        raise QexpError(f"{label_path}: label {int(labels.max())} is not a Fashion-MNIST class (0..{CLASSES - 1})")
    sha = {image_path.name: image_sha, label_path.name: label_sha}
    return torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)), sha


def fashion_mnist(seed: int = 0, root: str | None = DEFAULT_ROOT, val_fraction: float = 0.1,
                  split_seed: int | None = None) -> DataBundle:
    """Fashion-MNIST from ``root``: train minus a stratified ``val_fraction`` (by ``split_seed``,
    default the run's seed), validation, and the official test set (``val_fraction=0``: validate on it)."""
    from qexp.data.images import _val_split

    path = Path(str(root or DEFAULT_ROOT)).expanduser()
    if not path.is_dir():
        raise _missing(path, "no such folder")
    x, y, sha = read_split(path, "train")
    xt, yt, sha_test = read_split(path, "test")
    tr, va = _val_split(y.numpy(), val_fraction, seed if split_seed is None else split_seed)
    tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)
    test = ImageTensors(xt, yt, MEAN, STD)
    val = ImageTensors(x[va_t], y[va_t], MEAN, STD) if len(va) else test
    return DataBundle(
        train=ImageTensors(x[tr_t], y[tr_t], MEAN, STD),
        val=val,
        test=test,
        task=Classification(CLASSES),
        model_kwargs={"in_shape": tuple(x.shape[1:]), "num_classes": CLASSES},
        collate_fn=collate,
        info={"name": "fashion_mnist", "root": str(path), "sha256": {**sha, **sha_test},
              "package": debian_version(_locate(path, FILES["test"][1])),
              "sizes": {"train": len(tr), "val": len(val), "test": len(test)}, "val_is_test": not len(va)},
    )
