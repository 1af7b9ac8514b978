"""dataset=fashion_mnist: the idx reader on small files written here (good, truncated, corrupt),
the one-line errors, batched fetching, provenance, and the real files when Debian's package is installed."""

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from qexp.data.fashion_mnist import DEFAULT_ROOT, FILES, IMAGES_MAGIC, LABELS_MAGIC, collate, fashion_mnist, read_idx
from qexp.errors import QexpError

REAL = Path(DEFAULT_ROOT)
HAS_REAL = all((REAL / f"{name}.gz").is_file() for pair in FILES.values() for name in pair)
needs_real = pytest.mark.skipif(not HAS_REAL, reason=f"{DEFAULT_ROOT} absent: `make data` installs dataset-fashion-mnist")


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake(root: Path, n_train: int = 40, n_test: int = 20, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Four idx files of a tiny Fashion-MNIST: image i has every pixel = i (mod 256), label i % 10."""
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for split, n in (("train", n_train), ("test", n_test)):
        images = (np.arange(n)[:, None, None] * np.ones((1, 28, 28))).astype(np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        for name, arr, magic in zip(FILES[split], (images, labels), (IMAGES_MAGIC, LABELS_MAGIC)):
            data = idx_bytes(arr, magic)
            (root / (f"{name}.gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
        out.append(images)
    return out[0], out[1]


def test_reads_small_idx_files_with_stratified_split(tmp_path):
    write_fake(tmp_path)
    b = fashion_mnist(seed=3, root=str(tmp_path), val_fraction=0.25)
    assert b.info["sizes"] == {"train": 30, "val": 10, "test": 20}
    assert torch.bincount(b.val.labels, minlength=10).tolist() == [1] * 10  # one per class: stratified
    assert b.model_kwargs == {"in_shape": (1, 28, 28), "num_classes": 10}
    # seed decides the split; split_seed pins it
    assert fashion_mnist(seed=3, root=str(tmp_path), val_fraction=0.25).val.labels.tolist() == b.val.labels.tolist()
    other = fashion_mnist(seed=4, root=str(tmp_path), val_fraction=0.25)
    assert other.val.images[:, 0, 0, 0].tolist() != b.val.images[:, 0, 0, 0].tolist()
    # test image 7 holds the value 7 everywhere and label 7; normalised with the training mean/std
    x, y = b.test[7]
    assert y.item() == 7 and x.shape == (1, 28, 28)
    assert x[0, 0, 0].item() == pytest.approx((7 / 255 - 0.2860) / 0.3530, rel=1e-6)
    assert set(b.info["sha256"]) == {f"{n}.gz" for pair in FILES.values() for n in pair}


def test_batches_are_fetched_whole_and_equal_item_by_item(tmp_path):
    write_fake(tmp_path)
    b = fashion_mnist(root=str(tmp_path), val_fraction=0.0)
    loader = torch.utils.data.DataLoader(b.test, batch_size=8, shuffle=False, collate_fn=b.collate_fn)
    x, y = next(iter(loader))
    assert x.shape == (8, 1, 28, 28) and y.tolist() == list(range(8))
    expected = torch.stack([b.test[i][0] for i in range(8)])
    assert torch.equal(x, expected)
    calls = []
    original = type(b.test).__getitem__
    type(b.test).__getitem__ = lambda self, i: calls.append(i) or original(self, i)
    try:
        for _ in loader:
            pass
    finally:
        type(b.test).__getitem__ = original
    assert calls == []  # no per-image call: __getitems__ serves every batch
    assert torch.equal(collate([b.test[0], b.test[1]])[1], torch.tensor([0, 1]))  # plain items still collate


def test_uncompressed_files_are_read_too(tmp_path):
    write_fake(tmp_path, gz=False)
    assert fashion_mnist(root=str(tmp_path)).info["sizes"]["test"] == 20


def test_missing_root_names_package_and_key(tmp_path):
    with pytest.raises(QexpError) as err:
        fashion_mnist(root=str(tmp_path / "nope"))
    msg = str(err.value)
    assert "dataset-fashion-mnist" in msg and "dataset.root" in msg and "\n" not in msg


def test_missing_file(tmp_path):
    write_fake(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(QexpError, match="t10k-labels-idx1-ubyte.gz not found.*dataset-fashion-mnist"):
        fashion_mnist(root=str(tmp_path))


def test_truncated_gzip_is_one_line_error(tmp_path):
    write_fake(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(QexpError) as err:
        fashion_mnist(root=str(tmp_path))
    assert "train-images-idx3-ubyte.gz" in str(err.value) and "truncated" in str(err.value)
    assert "\n" not in str(err.value)


def test_not_gzip_is_one_line_error(tmp_path):
    write_fake(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip at all")
    with pytest.raises(QexpError, match="train-labels-idx1-ubyte.gz: cannot be read as gzip"):
        fashion_mnist(root=str(tmp_path))


def test_wrong_magic_number(tmp_path):
    write_fake(tmp_path)
    labels = np.arange(20, dtype=np.uint8) % 10
    with pytest.raises(QexpError, match=r"magic 0x00000801, expected 0x00000803"):
        read_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", IMAGES_MAGIC)  # a label file read as images
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels, IMAGES_MAGIC)))
    with pytest.raises(QexpError, match=r"magic 0x00000803, expected 0x00000801"):
        fashion_mnist(root=str(tmp_path))


def test_data_shorter_than_header_says(tmp_path):
    write_fake(tmp_path)
    images = np.zeros((40, 28, 28), np.uint8)
    data = idx_bytes(images, IMAGES_MAGIC)[:-28]  # valid gzip of a truncated idx file
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(data))
    with pytest.raises(QexpError, match=r"announces 40x28x28 values but the file holds 31332 bytes"):
        fashion_mnist(root=str(tmp_path))


def test_image_and_label_counts_must_agree(tmp_path):
    write_fake(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_bytes(np.zeros(19, np.uint8), LABELS_MAGIC)))
    with pytest.raises(QexpError, match="20 images but t10k-labels-idx1-ubyte.gz 19 labels"):
        fashion_mnist(root=str(tmp_path))


def test_cli_missing_root_is_one_line_and_leaves_no_run_folder(tmp_path, cli):
    done = cli("train", "dataset=fashion_mnist", f"dataset.root={tmp_path / 'nope'}", "trainer.progress=false",
               f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "dataset-fashion-mnist" in lines[0] and "dataset.root" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()  # checked before Hydra makes the run folder


def test_cli_trains_a_cnn_on_small_files_and_records_provenance(tmp_path, cli):
    write_fake(tmp_path / "data", n_train=60, n_test=20)
    done = cli("train", "dataset=fashion_mnist", f"dataset.root={tmp_path / 'data'}", "model=cnn",
               "model.widths=[4,8]", "trainer.epochs=1", "trainer.progress=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["data"]["name"] == "fashion_mnist" and rec["data"]["sizes"] == {"train": 50, "val": 10, "test": 20}  # 1 of 6 per class
    stored = (tmp_path / "data" / "t10k-labels-idx1-ubyte.gz").read_bytes()  # hashed as stored (gzipped)
    assert rec["data"]["sha256"]["t10k-labels-idx1-ubyte.gz"] == hashlib.sha256(stored).hexdigest()
    assert rec["data"]["package"] is None  # files in a temporary folder belong to no Debian package


@needs_real
def test_real_files_load_with_provenance():
    b = fashion_mnist(seed=0)
    assert b.info["sizes"] == {"train": 54000, "val": 6000, "test": 10000}
    assert torch.bincount(b.test.labels).tolist() == [1000] * 10
    assert b.info["sha256"]["t10k-labels-idx1-ubyte.gz"] == (
        "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05")
    package = b.info["package"]
    assert package is None or (package["package"] == "dataset-fashion-mnist" and package["version"])
    x = b.train.images.float() / 255
    assert x.mean().item() == pytest.approx(0.2860, abs=2e-3) and x.std().item() == pytest.approx(0.3530, abs=2e-3)


@needs_real
@pytest.mark.slow
def test_real_files_cli_cnn_completes(tmp_path, cli):
    done = cli("train", "dataset=fashion_mnist", "model=cnn", "trainer.epochs=1", "trainer.max_steps_per_epoch=20",
               "trainer.progress=false", f"hydra.run.dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["final"]["accuracy"] > 0.5 and len(rec["data"]["sha256"]) == 4
