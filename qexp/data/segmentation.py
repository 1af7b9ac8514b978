"""Gland segmentation data: the MICCAI 2015 GlaS release (``dataset=glas``) and an offline
synthetic stand-in (``dataset=glands``, see :mod:`qexp.data.glands`), both as :class:`DataBundle`.

Items are dicts.  Training items: ``image`` (3,h,w) float (normalised with the training split's
per-channel mean/std) and ``target`` (h,w) int64 class per pixel (0 background, 1 gland,
2 gland contour when ``contour`` is on).  Evaluation items add ``instances``: the ground-truth
instance map at the release's own resolution, which the metrics use.  :func:`collate` pads a
batch to its largest image (``target`` padded with ``IGNORE``) and records the valid sizes.

Training augmentation (random crop to ``tile_size``, flips, 90-degree rotations) happens in
``__getitem__`` and draws from the torch RNG, so a seeded run sees the same augmentations again
(and a resumed run continues them, since checkpoints carry the RNG state).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from scipy import ndimage
from torch.utils.data import Dataset

from qexp.data.bundle import DataBundle
from qexp.data.embedded import stratified_split
from qexp.errors import QexpError
from qexp.tasks.segmentation import IGNORE, Segmentation

# ----------------------------------------------------------------------------------------------
# targets, datasets, collation
# ----------------------------------------------------------------------------------------------


def semantic_target(instances: np.ndarray, contour: bool = False, contour_width: int = 1) -> np.ndarray:
    """Class per pixel from an instance map: 1 inside glands, 0 outside, 2 on gland contours
    (pixels within ``contour_width`` of another label, inside the gland) when ``contour``."""
    inst = np.asarray(instances)
    target = (inst > 0).astype(np.int64)
    if contour and inst.max() > 0:
        size = 2 * int(contour_width) + 1
        hi = ndimage.maximum_filter(inst, size=size, mode="nearest")
        edge = hi != ndimage.minimum_filter(inst, size=size, mode="nearest")
        target[edge & (inst > 0)] = 2
    return target


class SegmentationSet(Dataset):
    """Images, class targets and (for evaluation) instance maps of one split.

    ``train``: each item is a random ``tile_size`` crop (``crops_per_image`` per image and epoch),
    randomly flipped and rotated by multiples of 90 degrees when ``augment``.  Otherwise whole
    images, no augmentation, plus ``instances``.
    """

    def __init__(self, images: Sequence[torch.Tensor], targets: Sequence[torch.Tensor],
                 instances: Sequence[torch.Tensor] | None, mean: torch.Tensor, std: torch.Tensor, train: bool,
                 tile_size: int | None = None, augment: bool = True, crops_per_image: int = 1):
        self.images, self.targets, self.instances = list(images), list(targets), instances
        self.mean, self.std = mean.reshape(3, 1, 1), std.reshape(3, 1, 1)
        self.train, self.tile_size, self.augment = train, tile_size, augment
        self.crops_per_image = max(1, int(crops_per_image)) if train else 1
        if not train and instances is None:
            raise ValueError("evaluation splits need instance maps")

    def __len__(self) -> int:
        return len(self.images) * self.crops_per_image

    def _normalise(self, img: torch.Tensor) -> torch.Tensor:
        return (img.float() / 255.0 - self.mean) / self.std

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        k = index % len(self.images)
        img, tgt = self.images[k], self.targets[k]
        if not self.train:
            inst = self.instances[k]
            return {"image": self._normalise(img), "target": tgt, "instances": inst}
        x = self._normalise(img)
        if self.tile_size:
            x, tgt = random_crop(x, tgt, self.tile_size)
        if self.augment:
            if torch.rand(()) < 0.5:
                x, tgt = x.flip(-1), tgt.flip(-1)
            if torch.rand(()) < 0.5:
                x, tgt = x.flip(-2), tgt.flip(-2)
            r = int(torch.randint(4, ()))
            if r:
                x, tgt = torch.rot90(x, r, (-2, -1)), torch.rot90(tgt, r, (-2, -1))
        return {"image": x.contiguous(), "target": tgt.contiguous()}


def random_crop(x: torch.Tensor, tgt: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``tile`` x ``tile`` crop (padded with 0 / IGNORE where the image is smaller)."""
    _, h, w = x.shape
    if h < tile or w < tile:
        ph, pw = max(0, tile - h), max(0, tile - w)
        x = torch.nn.functional.pad(x, (0, pw, 0, ph))
        tgt = torch.nn.functional.pad(tgt, (0, pw, 0, ph), value=IGNORE)
        h, w = x.shape[1:]
    r = int(torch.randint(h - tile + 1, ()))
    c = int(torch.randint(w - tile + 1, ()))
    return x[:, r : r + tile, c : c + tile], tgt[r : r + tile, c : c + tile]


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Pad to the batch's largest image; ``size``/``orig_size`` hold each item's valid extent."""
    b = len(items)
    h = max(it["image"].shape[1] for it in items)
    w = max(it["image"].shape[2] for it in items)
    image = items[0]["image"].new_zeros(b, items[0]["image"].shape[0], h, w)
    target = torch.full((b, h, w), IGNORE, dtype=torch.int64)
    size = torch.zeros(b, 2, dtype=torch.int64)
    for i, it in enumerate(items):
        ih, iw = it["image"].shape[1:]
        image[i, :, :ih, :iw] = it["image"]
        target[i, :ih, :iw] = it["target"]
        size[i] = torch.tensor([ih, iw])
    out = {"image": image, "target": target, "size": size}
    if "instances" in items[0]:
        oh = max(it["instances"].shape[0] for it in items)
        ow = max(it["instances"].shape[1] for it in items)
        inst = torch.zeros(b, oh, ow, dtype=items[0]["instances"].dtype)
        orig = torch.zeros(b, 2, dtype=torch.int64)
        for i, it in enumerate(items):
            ih, iw = it["instances"].shape
            inst[i, :ih, :iw] = it["instances"]
            orig[i] = torch.tensor([ih, iw])
        out["instances"], out["orig_size"] = inst, orig
    return out


def channel_stats(images: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (of values in [0, 1]) over a list of uint8 (3,h,w) images."""
    total = torch.zeros(3, dtype=torch.float64)
    sq = torch.zeros(3, dtype=torch.float64)
    n = 0
    for img in images:
        x = img.double().reshape(3, -1) / 255.0
        total += x.sum(1)
        sq += (x * x).sum(1)
        n += x.shape[1]
    mean = total / max(n, 1)
    std = (sq / max(n, 1) - mean * mean).clamp_min(1e-12).sqrt()
    return mean.float(), std.float()


def _task(contour: bool, dice_weight: float, min_size: int, fill_holes: bool, window: int | None,
          eval_chunk: int, class_weights: list[float] | None) -> Segmentation:
    return Segmentation(num_classes=3 if contour else 2, contour=contour, dice_weight=dice_weight, min_size=min_size,
                        fill_holes=fill_holes, window=window, eval_chunk=eval_chunk, class_weights=class_weights)


# ----------------------------------------------------------------------------------------------
# dataset=glands: the synthetic, cached stand-in
# ----------------------------------------------------------------------------------------------

GLANDS_VERSION = 1  # bump when the generator's output changes, so old caches are not reused


def default_cache_dir() -> Path:
    return Path(os.environ.get("QEXP_CACHE_DIR") or Path.cwd() / ".cache" / "qexp")


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def glands_tensors(data_seed: int = 0, size: int = 64, n_train: int = 256, n_val: int = 64, n_test: int = 64,
                   cache: bool = True, cache_dir: str | None = None
                   ) -> tuple[dict[str, dict[str, torch.Tensor]], str | None]:
    """The generated splits ``{split: {"images": uint8 (n,3,s,s), "instances": int16 (n,s,s)}}``
    (train, val, testA, testB) and the cache file used (None when caching is off).

    Cached at ``<cache_dir>/glands/<hash>.pt`` (default cache dir: ``$QEXP_CACHE_DIR`` or
    ``./.cache/qexp``), written atomically; an unreadable cache file is regenerated.
    """
    from qexp.data.glands import generate

    spec = {"version": GLANDS_VERSION, "seed": int(data_seed), "size": int(size), "n": [n_train, n_val, n_test]}
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / "glands" / f"{key}.pt"
    if cache and path.exists():
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            if data.get("spec") == spec:
                return data["splits"], str(path)
        except Exception:  # noqa: BLE001 - a damaged cache is simply rebuilt
            pass
    plan = {"train": (n_train, 0, False), "val": (n_val, 1, False), "testA": (n_test, 2, False),
            "testB": (n_test, 3, True)}
    splits = {}
    for name, (n, split_id, hard) in plan.items():
        images, labels = generate(int(n), int(data_seed), split_id, size=int(size), hard=hard)
        splits[name] = {"images": torch.from_numpy(images), "instances": torch.from_numpy(labels)}
    if cache:
        try:
            _atomic_torch_save({"spec": spec, "splits": splits}, path)
        except OSError:  # read-only or full disk: the data is still usable, just not cached
            return splits, None
        return splits, str(path)
    return splits, None


def glands(seed: int = 0, data_seed: int | None = 0, size: int = 64, n_train: int = 256, n_val: int = 64,
           n_test: int = 64, contour: bool = True, contour_width: int = 1, augment: bool = True,
           dice_weight: float = 0.5, min_size: int = 8, fill_holes: bool = True, window: int | None = None,
           eval_chunk: int = 64, class_weights: list[float] | None = None, cache: bool = True,
           cache_dir: str | None = None) -> DataBundle:
    """Synthetic H&E-like gland tiles (:mod:`qexp.data.glands`) -- for smoke runs and tests only.

    Test sets ``testA`` (drawn like the training tiles) and ``testB`` (harder: more touching and
    irregular glands, stronger stain variation).  ``data_seed`` fixes the data (null: the run's
    seed), so runs with different seeds share one cached dataset by default.
    """
    for key, value in {"size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test}.items():
        if int(value) < 1:
            raise QexpError(f"dataset.{key}={value} is out of range; allowed: an integer >= 1")
    if int(size) < 16:
        raise QexpError(f"dataset.size={size} is out of range; allowed: an integer >= 16")
    splits, cache_path = glands_tensors(seed if data_seed is None else data_seed, size, n_train, n_val, n_test,
                                        cache, cache_dir)
    mean, std = channel_stats(list(splits["train"]["images"]))

    def make(name: str, train: bool) -> SegmentationSet:
        imgs = list(splits[name]["images"])
        inst = list(splits[name]["instances"])
        tgts = [torch.from_numpy(semantic_target(i.numpy(), contour, contour_width)) for i in inst]
        return SegmentationSet(imgs, tgts, None if train else inst, mean, std, train=train, augment=augment)

    task = _task(contour, dice_weight, min_size, fill_holes, window, eval_chunk, class_weights)
    return DataBundle(
        train=make("train", True),
        val=make("val", False),
        test={"testA": make("testA", False), "testB": make("testB", False)},
        task=task,
        model_kwargs={"in_shape": (3, int(size), int(size)), "num_classes": task.num_classes},
        collate_fn=collate,
        info={"name": "glands", "synthetic": True, "data_seed": seed if data_seed is None else data_seed,
              "sizes": {k: int(v["images"].shape[0]) for k, v in splits.items()}, "tile": int(size),
              "cache": cache_path, "mean": mean.tolist(), "std": std.tolist()},
    )


# ----------------------------------------------------------------------------------------------
# dataset=glas: the MICCAI 2015 Gland Segmentation challenge release
# ----------------------------------------------------------------------------------------------

GLAS_LAYOUT = ("the GlaS release (Warwick QU dataset): train_<i>.bmp + train_<i>_anno.bmp (85), "
               "testA_<i>.bmp + testA_<i>_anno.bmp (60), testB_<i>.bmp + testB_<i>_anno.bmp (20) and Grade.csv "
               "in one folder")
_NAME = re.compile(r"^(train|testA|testB)_(\d+)(_anno)?\.bmp$", re.IGNORECASE)
_PART = {"train": "train", "testa": "testA", "testb": "testB"}


def _find_release(root: Path) -> Path:
    def has_files(p: Path) -> bool:
        return p.is_dir() and any(_NAME.match(f.name) for f in p.iterdir())

    if has_files(root):
        return root
    subs = [p for p in sorted(root.iterdir()) if has_files(p)] if root.is_dir() else []
    if len(subs) == 1:  # e.g. root/"Warwick QU Dataset (Released 2016_07_08)"
        return subs[0]
    raise QexpError(f"dataset=glas: no GlaS release under dataset.root={root}; expected {GLAS_LAYOUT}")


def read_grades(path: Path) -> dict[str, str]:
    """``{image name: GlaS grade (benign/malignant)}`` from the release's Grade.csv."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = [[c.strip() for c in row] for row in csv.reader(fh) if row]
    except (OSError, UnicodeDecodeError) as exc:
        raise QexpError(f"dataset=glas: cannot read {path}: {exc}") from None
    header = [h.lower() for h in rows[0]] if rows else []
    name_col = next((i for i, h in enumerate(header) if h == "name"), None)
    grade_col = next((i for i, h in enumerate(header) if "glas" in h), None)
    if name_col is None or grade_col is None:
        raise QexpError(f"dataset=glas: {path} is malformed; expected a header 'name, patient ID, grade (GlaS), "
                        f"grade (Sirinukunwattana et al. 2015)'")
    return {r[name_col]: r[grade_col].lower() for r in rows[1:] if len(r) > max(name_col, grade_col)}


def _read_pair(image_path: Path, anno_path: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    try:
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
        with Image.open(anno_path) as an:
            anno = np.asarray(an)
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds
        raise QexpError(f"dataset=glas: cannot read {image_path.name}/{anno_path.name}: "
                        f"{type(exc).__name__}: {exc}") from None
    if anno.ndim == 3:  # an RGB-saved label map: channels are equal
        anno = anno[..., 0]
    if anno.shape != image.shape[:2]:
        raise QexpError(f"dataset=glas: {anno_path.name} is {anno.shape[1]}x{anno.shape[0]} but {image_path.name} "
                        f"is {image.shape[1]}x{image.shape[0]}; the annotation must be the image's instance label map")
    return image, anno.astype(np.int16)


def scan_glas(root: str | os.PathLike) -> tuple[dict[str, list[tuple[str, Path, Path]]], dict[str, str]]:
    """``({part: [(name, image, anno)]}, grades)`` of a GlaS folder; QexpError if incomplete."""
    folder = _find_release(Path(root).expanduser())
    found: dict[tuple[str, int], dict[str, Path]] = {}
    for f in folder.iterdir():
        m = _NAME.match(f.name)
        if m:
            found.setdefault((_PART[m.group(1).lower()], int(m.group(2))), {})["anno" if m.group(3) else "image"] = f
    parts: dict[str, list[tuple[str, Path, Path]]] = {"train": [], "testA": [], "testB": []}
    for (part, idx), files in sorted(found.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        name = f"{part}_{idx}"
        if "image" not in files or "anno" not in files:
            missing = f"{name}_anno.bmp" if "anno" not in files else f"{name}.bmp"
            raise QexpError(f"dataset=glas: {folder} lacks {missing}; expected {GLAS_LAYOUT}")
        parts[part].append((name, files["image"], files["anno"]))
    empty = [p for p, items in parts.items() if not items]
    if empty:
        raise QexpError(f"dataset=glas: {folder} has no {'/'.join(empty)} images; expected {GLAS_LAYOUT}")
    grades_path = folder / "Grade.csv"
    grades = read_grades(grades_path) if grades_path.exists() else {}
    return parts, grades


def _resize(image: np.ndarray, anno: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    if scale == 1.0:
        return image, anno
    from PIL import Image

    h, w = anno.shape
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))
    lab = np.asarray(Image.fromarray(anno.astype(np.int32)).resize(size, Image.NEAREST)).astype(np.int16)
    return img, lab


def glas(root: str | None = None, seed: int = 0, split_seed: int | None = None, val_fraction: float = 0.2,
         scale: float = 0.5, tile_size: int | None = 256, crops_per_image: int = 4, augment: bool = True,
         contour: bool = False, contour_width: int = 2, dice_weight: float = 0.5, min_size: int = 100,
         fill_holes: bool = True, window: int | None = None, eval_chunk: int = 4,
         class_weights: list[float] | None = None) -> DataBundle:
    """MICCAI 2015 GlaS: 85 training images (a seeded, grade-stratified validation share carved
    out of them), Test A (60) and Test B (20) as two named test sets.

    Images are resized by ``scale`` for the network; training draws ``crops_per_image`` random
    ``tile_size`` crops per image and epoch; evaluation runs on whole images (or a sliding window
    of ``window`` pixels) and scores instances at the release's full resolution, ``min_size``
    pixels being the smallest object kept at that resolution.
    """
    if not root:
        raise QexpError(f"dataset=glas needs dataset.root=<folder>; expected {GLAS_LAYOUT}")
    if not 0 < float(val_fraction) < 1:
        raise QexpError(f"dataset.val_fraction={val_fraction} is out of range; allowed: a number in (0, 1)")
    if not 0 < float(scale) <= 4:
        raise QexpError(f"dataset.scale={scale} is out of range; allowed: a number in (0, 4]")
    parts, grades = scan_glas(root)
    if len(parts["train"]) < 2:
        raise QexpError(f"dataset=glas: need at least 2 training images to carve a validation split, "
                        f"found {len(parts['train'])}")
    loaded: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
    for part, items in parts.items():
        loaded[part] = []
        for name, img_path, anno_path in items:
            image, anno = _read_pair(img_path, anno_path)
            small_img, small_anno = _resize(image, anno, float(scale))
            target = semantic_target(small_anno, contour, contour_width)
            loaded[part].append((torch.from_numpy(np.ascontiguousarray(small_img.transpose(2, 0, 1))),
                                 torch.from_numpy(target), torch.from_numpy(anno)))
    names = [n for n, _, _ in parts["train"]]
    labels = np.array([grades.get(n, "?") for n in names])
    tr, va, _ = stratified_split(labels, (float(val_fraction), 0.0), seed if split_seed is None else split_seed)
    if len(va) == 0:  # tiny folders: at least one validation image
        tr, va = tr[1:], tr[:1]
    if len(tr) == 0:
        tr, va = va[1:], va[:1]
    train_imgs = [loaded["train"][i][0] for i in tr]
    mean, std = channel_stats(train_imgs)

    def make(rows: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], train: bool) -> SegmentationSet:
        return SegmentationSet([r[0] for r in rows], [r[1] for r in rows], None if train else [r[2] for r in rows],
                               mean, std, train=train, tile_size=tile_size if train else None, augment=augment,
                               crops_per_image=crops_per_image)

    task = _task(contour, dice_weight, min_size, fill_holes, window, eval_chunk, class_weights)
    return DataBundle(
        train=make([loaded["train"][i] for i in tr], True),
        val=make([loaded["train"][i] for i in va], False),
        test={"testA": make(loaded["testA"], False), "testB": make(loaded["testB"], False)},
        task=task,
        model_kwargs={"in_shape": (3, int(tile_size) if tile_size else int(train_imgs[0].shape[1]),
                                   int(tile_size) if tile_size else int(train_imgs[0].shape[2])),
                      "num_classes": task.num_classes},
        collate_fn=collate,
        info={"name": "glas", "root": str(root), "scale": float(scale),
              "sizes": {"train": len(tr), "val": len(va), "testA": len(parts["testA"]), "testB": len(parts["testB"])},
              "val_images": [names[i] for i in va], "grades": bool(grades), "mean": mean.tolist(),
              "std": std.tolist()},
    )
