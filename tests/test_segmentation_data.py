"""Segmentation data and model: the synthetic generator, the GlaS loader, the FCN, short runs."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from qexp.config import compose, group_options
from qexp.data.glands import generate
from qexp.data.segmentation import collate, glands, glands_tensors, semantic_target
from qexp.errors import QexpError
from qexp.models.fcn import fcn
from qexp.run import train

FAST = ["trainer.progress=false"]
TINY_GLANDS = ["dataset=glands", "model=fcn", "dataset.size=32", "dataset.n_train=16", "dataset.n_val=4",
               "dataset.n_test=4", "model.widths=[8,16]"]


# -- the synthetic generator --------------------------------------------------------------------


def test_generator_same_seed_same_tensors(tmp_path):
    a, _ = glands_tensors(data_seed=3, size=32, n_train=6, n_val=2, n_test=2, cache=False)
    b, _ = glands_tensors(data_seed=3, size=32, n_train=6, n_val=2, n_test=2, cache=False)
    c, _ = glands_tensors(data_seed=4, size=32, n_train=6, n_val=2, n_test=2, cache=False)
    for split in ("train", "val", "testA", "testB"):
        assert torch.equal(a[split]["images"], b[split]["images"])
        assert torch.equal(a[split]["instances"], b[split]["instances"])
    assert not torch.equal(a["train"]["images"], c["train"]["images"])
    # tile i does not depend on how many tiles are generated
    more, _ = glands_tensors(data_seed=3, size=32, n_train=9, n_val=2, n_test=2, cache=False)
    assert torch.equal(more["train"]["images"][:6], a["train"]["images"])


def test_generator_instances_are_exact():
    images, labels = generate(8, seed=0, split=0, size=48)
    assert images.dtype == np.uint8 and images.shape == (8, 3, 48, 48)
    from scipy import ndimage

    for lab in labels:
        ids = np.unique(lab[lab > 0])
        assert ids.tolist() == list(range(1, len(ids) + 1))  # consecutive labels
        for k in ids:
            assert ndimage.label(lab == k)[1] == 1  # each gland one connected component
    assert labels.max(axis=(1, 2)).min() >= 1  # every tile has glands


def test_glands_cache_is_written_once_and_reused(tmp_path):
    kw = dict(data_seed=1, size=32, n_train=4, n_val=2, n_test=2, cache_dir=str(tmp_path))
    first, path = glands_tensors(**kw)
    assert path is not None and Path(path).exists() and Path(path).parent == tmp_path / "glands"
    assert not [p for p in (tmp_path / "glands").iterdir() if p.suffix == ".tmp"]  # atomic: no leftovers
    mtime = Path(path).stat().st_mtime_ns
    again, path2 = glands_tensors(**kw)
    assert path2 == path and Path(path).stat().st_mtime_ns == mtime
    assert torch.equal(first["testB"]["images"], again["testB"]["images"])
    Path(path).write_bytes(b"garbage")  # a damaged cache is regenerated
    fixed, _ = glands_tensors(**kw)
    assert torch.equal(fixed["train"]["instances"], first["train"]["instances"])


def test_augmentation_follows_the_torch_rng(tmp_path):
    bundle = glands(size=32, n_train=4, n_val=2, n_test=2, cache_dir=str(tmp_path))
    torch.manual_seed(5)
    a = [bundle.train[i] for i in range(4)]
    torch.manual_seed(5)
    b = [bundle.train[i] for i in range(4)]
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["target"], y["target"])
    batch = collate([bundle.val[0], bundle.val[1]])
    assert set(batch) == {"image", "target", "size", "instances", "orig_size"}
    assert bundle.model_kwargs == {"in_shape": (3, 32, 32), "num_classes": 3}  # contour class by default


def test_semantic_target_contour():
    inst = np.zeros((10, 10), dtype=np.int16)
    inst[1:9, 1:5] = 1
    inst[1:9, 5:9] = 2  # touching
    t = semantic_target(inst, contour=True, contour_width=1)
    assert t[4, 4] == 2 and t[4, 5] == 2  # the shared border is contour on both sides
    assert t[4, 2] == 1 and t[0, 0] == 0


# -- the model --------------------------------------------------------------------------------


@pytest.mark.parametrize("block,upsample", [("basic", "bilinear"), ("bottleneck", "transposed")])
def test_fcn_any_size_per_pixel_logits(block, upsample):
    model = fcn((3, 64, 64), 3, widths=[8, 16, 32], block=block, upsample=upsample, decoder_blocks=1).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 37, 50)).shape == (2, 3, 37, 50)
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_fcn_bad_option_is_one_line():
    with pytest.raises(QexpError, match="model.block"):
        fcn((3, 32, 32), 2, block="dense")


# -- the GlaS loader ----------------------------------------------------------------------------


def make_glas_folder(root: Path) -> Path:
    """A tiny folder laid out like the GlaS release: BMP images, instance-label BMPs, Grade.csv."""
    root.mkdir(parents=True, exist_ok=True)
    images, labels = generate(8, seed=0, split=0, size=48)
    plan = [("train", 1, "benign"), ("train", 2, "malignant"), ("train", 3, "benign"), ("train", 4, "malignant"),
            ("testA", 1, "benign"), ("testA", 2, "malignant"), ("testB", 1, "malignant")]
    rows = ["name,patient ID,grade (GlaS),grade (Sirinukunwattana et al. 2015)"]
    for k, (part, i, grade) in enumerate(plan):
        img = images[k].transpose(1, 2, 0)
        lab = labels[k].astype(np.uint8)
        if k % 2:  # releases have two image sizes; make the folder non-uniform too
            img, lab = img[:, :40], lab[:, :40]
        Image.fromarray(img).save(root / f"{part}_{i}.bmp")
        Image.fromarray(lab, mode="L").save(root / f"{part}_{i}_anno.bmp")
        rows.append(f"{part}_{i},{k},{grade},adenomatous")
    (root / "Grade.csv").write_text("\n".join(rows) + "\n")
    return root


GLAS_TINY = ["dataset=glas", "model=fcn", "model.widths=[8,16]", "dataset.scale=0.5", "dataset.tile_size=16",
             "dataset.crops_per_image=1", "dataset.min_size=4", "dataset.val_fraction=0.25", "trainer.epochs=1",
             "trainer.max_steps_per_epoch=1", "trainer.batch_size=2", "trainer.eval_batch_size=2", "quant=uniform",
             "bits=5"]


def test_glas_folder_trains_one_step(tmp_path):
    root = make_glas_folder(tmp_path / "glas")
    cfg = compose([*FAST, *GLAS_TINY, f"dataset.root={root}"])
    record = train(cfg, tmp_path / "run")
    on_disk = json.loads((tmp_path / "run" / "record.json").read_text())
    assert on_disk["metric"] == "f1" == record["metric"]
    for key in ("f1", "object_dice", "object_hausdorff", "pixel_dice", "f1_testA", "f1_testB", "object_dice_testB"):
        assert key in on_disk["final"] and key in on_disk["best"]
    assert on_disk["final"]["f1"] == on_disk["final"]["f1_testA"]
    assert on_disk["data"]["sizes"] == {"train": 3, "val": 1, "testA": 2, "testB": 1}
    assert on_disk["steps"] == 1


def test_glas_missing_or_malformed_root(tmp_path):
    with pytest.raises(QexpError, match=r"train_<i>\.bmp \+ train_<i>_anno\.bmp"):
        compose_and_build(["dataset=glas", f"dataset.root={tmp_path / 'nowhere'}"])
    with pytest.raises(QexpError, match="dataset.root"):
        compose_and_build(["dataset=glas"])
    root = make_glas_folder(tmp_path / "glas")
    (root / "testB_1_anno.bmp").unlink()
    with pytest.raises(QexpError, match="testB_1_anno.bmp"):
        compose_and_build(["dataset=glas", f"dataset.root={root}"])
    (root / "testB_1_anno.bmp").write_bytes(b"not a bmp")
    with pytest.raises(QexpError, match="cannot read"):
        compose_and_build(["dataset=glas", f"dataset.root={root}"])


def compose_and_build(overrides):
    from qexp.run import build_data

    return build_data(compose([*FAST, *overrides]))


# -- configs and short runs ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["chen2021_glas_fp32", "chen2021_glas_fixed", "chen2021_glas_inq"])
def test_chen2021_glas_experiments_compose(name):
    quant = {"chen2021_glas_fp32": "fp32", "chen2021_glas_fixed": "fixed", "chen2021_glas_inq": "inq"}[name]
    if quant not in group_options("quant"):
        pytest.skip(f"quant={quant} is not available yet")
    cfg = compose([f"experiment={name}", "dataset.root=/data/glas"])
    assert cfg.dataset._target_ == "qexp.data.segmentation.glas" and cfg.model._target_ == "qexp.models.fcn.fcn"
    assert cfg.quant.name == quant and cfg.dataset.contour is True
    if quant != "fp32":
        assert cfg.bits == 5


def test_glands_tiny_run(tmp_path):
    overrides = [*FAST, *TINY_GLANDS, "trainer.epochs=1", "trainer.batch_size=8", "quant=uniform", "bits=5",
                 f"dataset.cache_dir={tmp_path / 'cache'}"]
    record = train(compose(overrides), tmp_path / "run")
    assert record["metric"] == "f1" and {"f1", "object_dice", "object_hausdorff", "f1_testB"} <= set(record["final"])
    assert record["model_kwargs"]["num_classes"] == 3  # gland, background, contour by default
    assert record["data"]["synthetic"] is True


@pytest.mark.slow
def test_glands_default_run_learns(tmp_path, cli):
    """The documented smoke command: default trainer, 5-bit weights, object Dice >= 0.7."""
    quant = "fixed" if "fixed" in group_options("quant") else "uniform"
    res = cli("train", "dataset=glands", "model=fcn", f"quant={quant}", "bits=5", "trainer.progress=false",
              f"hydra.run.dir={tmp_path / 'run'}")
    assert res.returncode == 0, res.stderr
    r = json.loads((tmp_path / "run" / "record.json").read_text())
    assert r["metric"] == "f1"
    for key in ("final", "best"):
        assert {"f1", "object_dice", "object_hausdorff"} <= set(r[key])
    assert r["final"]["object_dice"] >= 0.7
    assert r["memory"]["reduction"] >= 5
