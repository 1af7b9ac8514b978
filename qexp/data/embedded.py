"""Embedded datasets that need no download: scikit-learn's handwritten digits."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from qexp.data.bundle import DataBundle
from qexp.tasks.classification import Classification


def stratified_split(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> tuple[np.ndarray, ...]:
    """Indices for train/val/test with each class split in the same proportions."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[], [], []]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val = int(round(fractions[0] * len(idx)))
        n_test = int(round(fractions[1] * len(idx)))
        parts[1].extend(idx[:n_val])
        parts[2].extend(idx[n_val : n_val + n_test])
        parts[0].extend(idx[n_val + n_test :])
    return tuple(np.sort(np.asarray(p, dtype=np.int64)) for p in parts)


def digits(seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15, split_seed: int | None = None,
           label_smoothing: float = 0.0, image_size: int | None = None) -> DataBundle:
    """The 1,797 8x8 handwritten digits bundled with scikit-learn (UCI optdigits test set).

    Pixel values 0..16 are scaled to [0, 1] and standardised with the training mean/std.
    The stratified split depends on ``split_seed`` (default: the run's seed).
    ``image_size`` resizes the 8x8 images (bilinear) for models that need larger inputs.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(data.target, dtype=torch.int64)
    tr, va, te = stratified_split(data.target, (val_fraction, test_fraction), seed if split_seed is None else split_seed)
    mean, std = x[tr].mean(), x[tr].std()
    x = (x - mean) / std
    if image_size and image_size != 8:
        x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    split = lambda idx: TensorDataset(x[idx], y[idx])  # noqa: E731
    return DataBundle(
        train=split(tr),
        val=split(va),
        test=split(te),
        task=Classification(num_classes=10, label_smoothing=label_smoothing),
        model_kwargs={"in_shape": tuple(x.shape[1:]), "num_classes": 10},
        info={"name": "digits", "sizes": {"train": len(tr), "val": len(va), "test": len(te)}},
    )
