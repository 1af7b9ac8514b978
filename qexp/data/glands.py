"""Synthetic H&E-like gland tiles with exact instance masks -- offline data for smoke runs and tests.

NOT real histology: the tiles only mimic the look of colon gland sections closely enough that
a segmentation network has something GlaS-shaped to learn (and quantization something to lose).
Use ``dataset=glas`` with the real MICCAI 2015 release for any reported number.

Each tile is painted as stain concentrations and converted to RGB with the Beer-Lambert law:

* stroma: eosin with low-frequency texture, fibre streaks and scattered small stromal nuclei;
* glands: irregular ellipses (random radii, aspect, rotation, low-order boundary harmonics),
  an epithelial rim of hematoxylin-dark nuclei, paler cytoplasm and a near-white lumen (absent
  in some "solid" glands); some glands are placed touching a neighbour, and glands are cut by the
  tile border as in real crops;
* per-tile stain colour jitter (hematoxylin/eosin vectors and strengths), illumination,
  Gaussian blur and sensor noise.

The instance map gives every gland its own label 1..n (0 = background), each one connected
component.  Generation is a pure function of (seed, split, index, parameters): tile ``i`` does
not depend on how many tiles are generated.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Ruifrok & Johnston optical-density stain vectors (RGB), normalised below
_H = np.array([0.65, 0.70, 0.29])
_E = np.array([0.07, 0.99, 0.11])


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma) -> np.ndarray:
    """Gaussian-filtered white noise scaled to zero mean, unit std."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-8)


def _blobs(rng: np.random.Generator, shape: tuple[int, int], count: int, radius: tuple[float, float],
           where: np.ndarray | None = None) -> np.ndarray:
    """A map with ``count`` small elliptical dots (value 1), optionally centred inside ``where``."""
    h, w = shape
    out = np.zeros(shape)
    if count <= 0:
        return out
    if where is not None:
        cand = np.flatnonzero(where)
        if cand.size == 0:
            return out
        picks = rng.choice(cand, size=count)
        cy, cx = np.unravel_index(picks, shape)
    else:
        cy, cx = rng.uniform(0, h, count), rng.uniform(0, w, count)
    yy, xx = np.mgrid[0:h, 0:w]
    for y, x in zip(cy, cx):
        ra = rng.uniform(*radius)
        rb = ra * rng.uniform(0.5, 1.0)
        t = rng.uniform(0, np.pi)
        dy, dx = yy - y, xx - x
        u = dx * np.cos(t) + dy * np.sin(t)
        v = -dx * np.sin(t) + dy * np.cos(t)
        r0, r1 = max(0, int(y - ra - 1)), min(h, int(y + ra + 2))
        c0, c1 = max(0, int(x - ra - 1)), min(w, int(x + ra + 2))
        sub = (u[r0:r1, c0:c1] / ra) ** 2 + (v[r0:r1, c0:c1] / rb) ** 2 <= 1.0
        out[r0:r1, c0:c1] = np.maximum(out[r0:r1, c0:c1], sub)
    return out


def _gland_shape(rng: np.random.Generator, shape: tuple[int, int], cy: float, cx: float, radius: float,
                 irregularity: float) -> np.ndarray:
    """Normalised radial coordinate rho (<= 1 inside) of one irregular elliptical gland."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    aspect = rng.uniform(0.55, 1.0)
    t = rng.uniform(0, np.pi)
    dy, dx = yy - cy, xx - cx
    u = dx * np.cos(t) + dy * np.sin(t)
    v = (-dx * np.sin(t) + dy * np.cos(t)) / aspect
    theta = np.arctan2(v, u)
    bound = np.ones_like(theta)
    for k in (2, 3, 4, 5):
        bound += rng.uniform(0, irregularity) / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(u, v) / (radius * np.clip(bound, 0.5, None))


def make_tile(rng: np.random.Generator, size: int = 64, glands: tuple[int, int] = (2, 5),
              radius: tuple[float, float] = (0.13, 0.24), touch_prob: float = 0.3, irregularity: float = 0.5,
              solid_prob: float = 0.15, stain_jitter: float = 0.05, noise: float = 3.0,
              blur: tuple[float, float] = (0.4, 0.9)) -> tuple[np.ndarray, np.ndarray]:
    """One RGB tile (3, size, size) uint8 and its instance map (size, size) int16."""
    shape = (size, size)
    labels = np.zeros(shape, dtype=np.int16)
    rhos: list[np.ndarray] = []
    looks: list[tuple[float, float]] = []
    centres: list[tuple[float, float, float]] = []
    target = int(rng.integers(glands[0], glands[1] + 1))
    attempts = 0
    while len(rhos) < target and attempts < 12 * target:
        attempts += 1
        r = rng.uniform(*radius) * size
        if centres and rng.random() < touch_prob:  # touch a neighbour: centres ~ one radius sum apart
            py, px, pr = centres[int(rng.integers(len(centres)))]
            a = rng.uniform(0, 2 * np.pi)
            d = (pr + r) * rng.uniform(0.85, 0.98)
            cy, cx = py + d * np.sin(a), px + d * np.cos(a)
        else:
            cy, cx = rng.uniform(0.1, 0.9, 2) * size
        rho = _gland_shape(rng, shape, cy, cx, r, irregularity)
        inside = rho <= 1.0
        area = inside.sum()
        if area < 0.25 * np.pi * r * r * 0.55:  # mostly outside the tile
            continue
        if (inside & (labels > 0)).sum() > 0.12 * area:  # too much overlap
            continue
        labels[inside & (labels == 0)] = len(rhos) + 1
        rhos.append(rho)
        centres.append((cy, cx, r))
        lumen = 0.0 if rng.random() < solid_prob else rng.uniform(0.25, 0.55)
        looks.append((lumen, rng.uniform(0.22, 0.38)))
    # every instance one connected component of a reasonable size; renumber 1..n
    out = np.zeros(shape, dtype=np.int16)
    keep: list[int] = []
    for k in range(1, len(rhos) + 1):
        comp, n = ndimage.label(labels == k)
        if n == 0:
            continue
        sizes = np.bincount(comp.ravel())[1:]
        if sizes.max() < 12:
            continue
        keep.append(k)
        out[comp == (int(sizes.argmax()) + 1)] = len(keep)
    labels = out

    # stain concentrations: stroma first, glands painted over it
    hema = 0.06 + 0.03 * _smooth_noise(rng, shape, size / 10)
    eosin = 0.32 + 0.07 * _smooth_noise(rng, shape, size / 8)
    eosin += 0.07 * _smooth_noise(rng, shape, (0.6, 3.0) if rng.random() < 0.5 else (3.0, 0.6))  # fibres
    eosin = np.clip(eosin, 0.05, None)
    stroma_nuclei = _blobs(rng, shape, int(rng.integers(size // 8, size // 4)), (1.0, 1.8))
    hema += 0.55 * stroma_nuclei
    fine = _smooth_noise(rng, shape, 0.7)
    for new, k in enumerate(keep, start=1):
        mask = labels == new
        rho = rhos[k - 1]
        lumen, rim = looks[k - 1]
        outer = mask & (rho > 1.0 - rim)
        inner = mask & ~outer
        hole = inner & (rho < lumen)
        cyto = inner & ~hole
        nuclei = _blobs(rng, shape, max(3, int(outer.sum() / 9)), (1.2, 2.0), where=outer) > 0
        hema[mask] = 0.22 + 0.05 * fine[mask]
        eosin[mask] = 0.24 + 0.04 * fine[mask]
        hema[outer] = 0.45 + 0.1 * fine[outer]
        hema[outer & nuclei] = 0.95 + 0.1 * fine[outer & nuclei]
        hema[cyto] = 0.16 + 0.04 * fine[cyto]
        eosin[cyto] = 0.18 + 0.04 * fine[cyto]
        hema[hole] = 0.02
        eosin[hole] = 0.04 + 0.02 * np.abs(fine[hole])
    hema = np.clip(hema, 0.0, None)

    # Beer-Lambert with jittered stains, then blur and noise
    hv = np.abs(_H + rng.normal(0, stain_jitter, 3))
    ev = np.abs(_E + rng.normal(0, stain_jitter, 3))
    hv, ev = hv / np.linalg.norm(hv), ev / np.linalg.norm(ev)
    od = (hema * rng.uniform(0.8, 1.2))[..., None] * hv + (eosin * rng.uniform(0.8, 1.2))[..., None] * ev
    rgb = 255.0 * rng.uniform(0.93, 1.0) * np.power(10.0, -od)
    rgb = ndimage.gaussian_filter(rgb, (rng.uniform(*blur), rng.uniform(*blur), 0))
    rgb += rng.normal(0, noise, rgb.shape)
    image = np.clip(np.round(rgb), 0, 255).astype(np.uint8).transpose(2, 0, 1)
    return np.ascontiguousarray(image), labels


HARD = {"touch_prob": 0.5, "irregularity": 0.8, "solid_prob": 0.3, "stain_jitter": 0.09}


def generate(n: int, seed: int, split: int, size: int = 64, hard: bool = False, **kw) -> tuple[np.ndarray, np.ndarray]:
    """``n`` tiles of one split: images (n, 3, size, size) uint8, instance maps (n, size, size) int16.

    ``hard`` tiles (the second test set) have more touching, more irregular and more solid glands
    and stronger stain variation, as GlaS Test B has more malignant glands than Test A.
    """
    params = {**(HARD if hard else {}), **kw}
    images = np.zeros((n, 3, size, size), dtype=np.uint8)
    labels = np.zeros((n, size, size), dtype=np.int16)
    for i in range(n):
        rng = np.random.default_rng([int(seed), int(split), i])
        images[i], labels[i] = make_tile(rng, size=size, **params)
    return images, labels
