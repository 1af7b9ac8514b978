"""Image classification at paper scale, checked on tiny stand-in files: ImageFolder (ImageNet
layout), CIFAR pickled batches, MNIST idx files; the ResNet/VGG/AlexNet factories; the paper
experiment configs."""

import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from qexp.config import compose, group_options, validate
from qexp.data import images
from qexp.errors import QexpError
from qexp.run import build, train

FAST = ["trainer.epochs=1", "trainer.max_steps_per_epoch=1", "trainer.progress=false", "trainer.batch_size=4"]


@pytest.fixture
def imagenet_root(tmp_path):
    """root/{train,val}/<class>/*.png: 2 classes, 3 training and 2 validation images each."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for cls in ("n01440764", "n01443537"):
            folder = tmp_path / "imagenet" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{cls}_{i}.png")
    return tmp_path / "imagenet"


@pytest.fixture
def cifar_root(tmp_path):
    """root/cifar-10-batches-py/ in the Python-version layout: 5 training batches + test_batch."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", 4) for i in range(1, 6)] + [("test_batch", 10)]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "labels": [int(v) for v in rng.integers(0, 10, n)], "batch_label": name}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)
    return tmp_path / "cifar"


def test_imagenet_folder_trains_one_step(imagenet_root, tmp_path):
    cfg = compose(["dataset=imagenet", f"dataset.root={imagenet_root}", "dataset.image_size=32",
                   "dataset.val_fraction=0.34", "model=cnn", *FAST])
    record = train(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["steps"] == 1
    assert record["data"]["sizes"] == {"train": 4, "val": 2, "test": 4}
    assert tuple(record["model_kwargs"]["in_shape"]) == (3, 32, 32) and record["model_kwargs"]["num_classes"] == 2
    assert 0.0 <= record["final"]["accuracy"] <= 1.0


def test_imagenet_transforms_and_split(imagenet_root):
    bundle = images.imagenet(seed=0, root=str(imagenet_root), val_fraction=0.34, image_size=32)
    x, y = bundle.train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y in (0, 1)
    assert bundle.val[0][0].shape == (3, 32, 32)
    # validation images are training images seen with the evaluation transform (deterministic)
    assert torch.equal(bundle.val[0][0], bundle.val[0][0])
    train_files = {bundle.train.dataset.samples[i][0] for i in bundle.train.indices}
    val_files = {bundle.val.dataset.samples[i][0] for i in bundle.val.indices}
    assert not train_files & val_files


def test_cifar10_trains_one_step(cifar_root, tmp_path):
    cfg = compose(["dataset=cifar10", f"dataset.root={cifar_root}", "dataset.val_fraction=0", "model=cnn", *FAST])
    record = train(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["steps"] == 1
    assert record["data"]["sizes"] == {"train": 20, "val": 10, "test": 10} and record["data"]["val_is_test"]


def test_cifar_reader_and_augmentation(cifar_root):
    x, y = images.read_cifar(cifar_root, "cifar10", train=True)
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.shape == (20,)
    ds = images.InMemoryImages(x, y, images.CIFAR10_MEAN, images.CIFAR10_STD, augment=True)
    torch.manual_seed(0)
    a = ds[0][0]
    torch.manual_seed(0)
    assert torch.equal(a, ds[0][0]) and a.shape == (3, 32, 32)  # augmentation follows the seed


def test_mnist_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", 100), ("t10k", 10)):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + bytes(n * 784))
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + bytes(i % 10 for i in range(n)))
    bundle = images.mnist(seed=0, root=str(tmp_path), val_fraction=0.1, image_size=32)
    assert bundle.model_kwargs == {"in_shape": (1, 32, 32), "num_classes": 10}
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (90, 10, 10)
    assert bundle.train[0][0].shape == (1, 32, 32)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "imagenet"])
def test_missing_files_name_what_goes_where(name, tmp_path):
    with pytest.raises(QexpError) as err:
        getattr(images, name)(seed=0, root=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and f"dataset.root={tmp_path}" in msg
    assert {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python", "mnist": "MNIST/raw",
            "imagenet": "train/<class>"}[name] in msg


def test_cli_without_root_is_one_line_error(cli, tmp_path):
    proc = cli("train", "dataset=cifar10", "trainer.progress=false", cwd=tmp_path)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "dataset.root" in lines[-1], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_digits_resnet_sq_card_example(tmp_path):
    """`qexp train dataset=digits model=resnet quant=sq bits=2`: CIFAR ResNet-20 on 8x8 inputs."""
    cfg = compose(["dataset=digits", "model=resnet", "quant=sq", "bits=2", *FAST])
    record = train(cfg, tmp_path / "run")
    assert record["status"] == "completed" and record["quant"]["bits"] == 2
    assert record["memory"]["reduction"] > 8


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_resnet_variants():
    from qexp.models.resnet import CifarResNet, resnet

    # He et al.: ResNet-20 0.27M, ResNet-56 0.85M parameters
    assert abs(n_params(resnet((3, 32, 32), 10, 20)) - 0.27e6) < 0.01e6
    assert abs(n_params(resnet((3, 32, 32), 10, 56)) - 0.85e6) < 0.01e6
    small = resnet((1, 8, 8), 10, 20)
    assert isinstance(small, CifarResNet) and small(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    big = resnet((3, 224, 224), 1000, 18)
    assert type(big).__name__ == "ResNet" and abs(n_params(big) - 11.69e6) < 0.01e6
    assert resnet((3, 32, 32), 100, 18)(torch.zeros(2, 3, 32, 32)).shape == (2, 100)  # 3x3 stem
    assert resnet((1, 96, 96), 5, 18)(torch.zeros(1, 1, 96, 96)).shape == (1, 5)
    with pytest.raises(QexpError, match="6n\\+2"):
        resnet((3, 32, 32), 10, 21)


def test_vgg9_and_alexnet_layouts():
    from qexp.models.alexnet import alexnet_bn
    from qexp.models.vgg import vgg9

    model = vgg9((3, 32, 32), 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256]
    assert [(f.in_features, f.out_features) for f in fcs] == [(4096, 512), (512, 512), (512, 10)]
    assert vgg9((1, 8, 8), 10)(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    alex = alexnet_bn((3, 64, 64), 10)
    assert alex.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 10)
    with pytest.raises(QexpError, match="63x63"):
        alexnet_bn((3, 32, 32), 10)


PAPER_EXPERIMENTS = [e for e in group_options("experiment")
                     if e.startswith(("dong2017_", "sung2015_", "zhao2019_", "chen2021_imagenet_"))]


def test_paper_experiments_compose():
    assert len(PAPER_EXPERIMENTS) >= 20
    for name in PAPER_EXPERIMENTS:
        cfg = compose([f"experiment={name}", "dataset.root=/data"])
        validate(cfg)  # includes constructing a probe quantizer
        assert cfg.dataset._target_.startswith("qexp.data.images."), name


def test_paper_models_build_with_quantizers():
    """Paper experiments' models + quantizers on the 8x8 digits (no data files needed)."""
    from omegaconf import OmegaConf

    from qexp.data.embedded import digits

    x = digits().train.tensors[0][:2]
    for name in ["dong2017_vgg9_sq_twn", "sung2015_cnn_ternary", "zhao2019_8bit_clip_svd"]:
        cfg = compose([f"experiment={name}", "dataset=digits"])
        OmegaConf.resolve(cfg)
        _, model, handle = build(cfg)
        assert handle.quantizers, name
        assert model.eval()(x).shape == (2, 10)
