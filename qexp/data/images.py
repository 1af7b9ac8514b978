"""Image classification datasets read from local files: ImageNet, CIFAR-10/100, MNIST.

Nothing is downloaded: ``root`` must hold the files in the layout the error message names.
Validation data is carved from the training split by seed (stratified, ``val_fraction``);
the test split is the official test (CIFAR, MNIST) or validation (ImageNet) set.
``val_fraction=0`` validates on that test split instead, as the papers do.

CIFAR and MNIST are small enough to sit in memory as uint8 tensors (normalised and augmented
per item); ImageNet stays on disk and each JPEG is decoded when the loader asks for it, so
``trainer.num_workers`` worker processes do the decoding in parallel.
"""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from qexp.data.bundle import DataBundle
from qexp.data.embedded import stratified_split
from qexp.errors import QexpError, one_line
from qexp.tasks.classification import Classification

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)


class InMemoryImages(Dataset):
    """uint8 images (N, C, H, W) held in memory; each item is normalised, optionally resized,
    and (``augment``) randomly cropped from a ``pad``-padded copy and flipped."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 augment: bool = False, pad: int = 4, flip: bool = True, image_size: int | None = None):
        self.images, self.labels = images, labels
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.augment, self.pad, self.flip, self.image_size = augment, pad, flip, image_size

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = (self.images[i].float() / 255.0 - self.mean) / self.std
        if self.image_size and tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x[None], size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)[0]
        if self.augment:
            h, w = x.shape[-2:]
            if self.pad:
                x = F.pad(x, (self.pad,) * 4)
                top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()
                x = x[:, top : top + h, left : left + w]
            if self.flip and torch.rand(()) < 0.5:
                x = x.flip(-1)
        return x, self.labels[i]


def _val_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 <= val_fraction < 1:
        raise QexpError(f"dataset.val_fraction={val_fraction} is out of range; allowed: a number in [0, 1)")
    tr, va, _ = stratified_split(labels, (val_fraction, 0.0), seed)
    return tr, va


def _in_memory_bundle(name: str, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                      num_classes: int, mean, std, seed: int, val_fraction: float, split_seed: int | None,
                      augment: bool, pad: int, flip: bool, image_size: int | None) -> DataBundle:
    (x, y), (xt, yt) = train, test
    tr, va = _val_split(y.numpy(), val_fraction, seed if split_seed is None else split_seed)
    tr_t, va_t = torch.from_numpy(tr), torch.from_numpy(va)

    def make(images, labels, aug):
        return InMemoryImages(images, labels, mean, std, aug, pad, flip, image_size)

    test_set = make(xt, yt, False)
    val_set = make(x[va_t], y[va_t], False) if len(va) else test_set
    size = image_size or x.shape[-1]
    return DataBundle(
        train=make(x[tr_t], y[tr_t], augment),
        val=val_set,
        test=test_set,
        task=Classification(num_classes),
        model_kwargs={"in_shape": (int(x.shape[1]), int(size), int(size)), "num_classes": num_classes},
        info={"name": name, "sizes": {"train": len(tr), "val": len(val_set), "test": len(test_set)},
              "val_is_test": not len(va)},
    )


def _root(root: str | None, name: str) -> Path:
    if root in (None, "", "???"):
        raise QexpError(f"dataset.root is not set; pass dataset.root=/path/to/{name} (see configs/dataset/{name}.yaml)")
    path = Path(str(root)).expanduser()
    if not path.is_dir():
        raise QexpError(f"dataset.root={root} is not a directory; pass the folder that holds {name}")
    return path


# -- CIFAR ------------------------------------------------------------------------------------

CIFAR = {
    # name: folder inside root, train files, test files, label key, classes, archive
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10,
                "cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100, "cifar-100-python.tar.gz"),
}


def read_cifar(root: str | Path, name: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (N, 3, 32, 32) uint8 and labels from the pickled batches of the Python version."""
    folder, train_files, test_files, key, _, archive = CIFAR[name]
    root = Path(root)
    base = root / folder if (root / folder).is_dir() else root
    files = [base / f for f in (train_files if train else test_files)]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise QexpError(f"dataset.root={root}: {name} not found ({', '.join(missing)} missing); extract {archive} "
                        f"(https://www.cs.toronto.edu/~kriz/cifar.html) so that {root}/{folder}/ holds "
                        f"{', '.join(train_files + test_files)}")
    images, labels = [], []
    for f in files:
        with open(f, "rb") as fh:
            entry = pickle.load(fh, encoding="latin1")
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        labels.extend(entry[key])
    return torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64)


def _cifar(name: str, mean, std, seed: int, root: str | None, val_fraction: float, split_seed: int | None,
           augment: bool, image_size: int | None) -> DataBundle:
    path = _root(root, name)
    num_classes = CIFAR[name][4]
    return _in_memory_bundle(name, read_cifar(path, name, True), read_cifar(path, name, False), num_classes, mean, std,
                             seed, val_fraction, split_seed, augment, pad=4, flip=True, image_size=image_size)


def cifar10(seed: int = 0, root: str | None = None, val_fraction: float = 0.1, split_seed: int | None = None,
            augment: bool = True, image_size: int | None = None) -> DataBundle:
    """CIFAR-10 (50k train / 10k test, 32x32); ``augment``: 4-pixel-pad random crop + flip."""
    return _cifar("cifar10", CIFAR10_MEAN, CIFAR10_STD, seed, root, val_fraction, split_seed, augment, image_size)


def cifar100(seed: int = 0, root: str | None = None, val_fraction: float = 0.1, split_seed: int | None = None,
             augment: bool = True, image_size: int | None = None) -> DataBundle:
    """CIFAR-100 (fine labels); same layout and augmentation as CIFAR-10."""
    return _cifar("cifar100", CIFAR100_MEAN, CIFAR100_STD, seed, root, val_fraction, split_seed, augment, image_size)


# -- MNIST ------------------------------------------------------------------------------------

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def mnist(seed: int = 0, root: str | None = None, val_fraction: float = 0.1, split_seed: int | None = None,
          augment: bool = False, image_size: int | None = None) -> DataBundle:
    """MNIST (60k train / 10k test, 28x28 grey) via torchvision, read from ``root``/MNIST/raw/."""
    from torchvision.datasets import MNIST

    path = _root(root, "mnist")
    try:
        train, test = MNIST(str(path), train=True, download=False), MNIST(str(path), train=False, download=False)
    except RuntimeError:
        raise QexpError(f"dataset.root={root}: MNIST not found; put {', '.join(MNIST_FILES)} "
                        f"(gunzipped, from the MNIST site) in {path}/MNIST/raw/") from None
    return _in_memory_bundle("mnist", (train.data[:, None], train.targets), (test.data[:, None], test.targets), 10,
                             MNIST_MEAN, MNIST_STD, seed, val_fraction, split_seed, augment, pad=2, flip=False,
                             image_size=image_size)


# -- ImageNet ---------------------------------------------------------------------------------


def imagenet_transforms(image_size: int = 224, augment: bool = True):
    """Standard training (RandomResizedCrop + flip) and evaluation (resize to size/0.875, centre crop)."""
    from torchvision import transforms as T

    normalize = [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    evaluate = T.Compose([T.Resize(int(round(image_size / 0.875))), T.CenterCrop(image_size), *normalize])
    if not augment:
        return evaluate, evaluate
    train = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), *normalize])
    return train, evaluate


def imagenet(seed: int = 0, root: str | None = None, val_fraction: float = 0.01, split_seed: int | None = None,
             image_size: int = 224, augment: bool = True) -> DataBundle:
    """ILSVRC-2012 as two ImageFolder trees: ``root``/train/<wnid>/*.JPEG and ``root``/val/<wnid>/*.JPEG.

    Validation data (``val_fraction`` of train, stratified) is carved from train; the official
    50k validation images are the test set.  Any folder tree of this shape works (fewer classes,
    other images).
    """
    from torchvision.datasets import ImageFolder

    path = _root(root, "imagenet")
    layout = (f"expected {path}/train/<class>/*.JPEG and {path}/val/<class>/*.JPEG "
              f"(ILSVRC2012 with the validation images sorted into class folders)")
    for split in ("train", "val"):
        if not (path / split).is_dir():
            raise QexpError(f"dataset.root={root}: no {split}/ folder; {layout}")
    train_tf, eval_tf = imagenet_transforms(image_size, augment)
    try:
        full = ImageFolder(str(path / "train"), transform=train_tf)
        test = ImageFolder(str(path / "val"), transform=eval_tf)
    except (FileNotFoundError, RuntimeError) as exc:
        raise QexpError(f"dataset.root={root}: {one_line(exc)}; {layout}") from None
    if test.class_to_idx != full.class_to_idx:
        raise QexpError(f"dataset.root={root}: train/ and val/ have different class folders; {layout}")
    tr, va = _val_split(np.asarray(full.targets), val_fraction, seed if split_seed is None else split_seed)
    held_out = copy.copy(full)  # same file list, evaluation transform
    held_out.transform = eval_tf
    val = Subset(held_out, va.tolist()) if len(va) else test
    num_classes = len(full.classes)
    return DataBundle(
        train=Subset(full, tr.tolist()),
        val=val,
        test=test,
        task=Classification(num_classes),
        model_kwargs={"in_shape": (3, image_size, image_size), "num_classes": num_classes},
        info={"name": "imagenet", "root": str(path), "classes": num_classes,
              "sizes": {"train": len(tr), "val": len(val), "test": len(test)}, "val_is_test": not len(va)},
    )
