"""Gland segmentation: per-pixel loss, and the MICCAI 2015 GlaS challenge's object-level metrics.

Metrics (Sirinukunwattana et al., "Gland segmentation in colon histology images: the GlaS
challenge contest", MedIA 2017), computed on instance label maps (0 = background, 1..n objects)
of one image, ``S`` the segmentation and ``G`` the ground truth:

* **F1** -- a segmented object is a true positive when it covers MORE than 50 % of the
  ground-truth object it overlaps most (the official code's ``> 0.5``); the other segmented
  objects are false positives, unmatched ground-truth objects false negatives.
  ``F1 = 2 TP / (2 TP + FP + FN)``.
* **object Dice** -- ``1/2 [sum_i gamma_i Dice(G_i, S*(G_i)) + sum_j sigma_j Dice(G*(S_j), S_j)]``
  with ``gamma_i = |G_i| / sum |G|``, ``sigma_j = |S_j| / sum |S|`` and ``S*(G_i)`` the segmented
  object that overlaps ``G_i`` most (empty when none does, so Dice 0), ``G*(S_j)`` likewise.
* **object Hausdorff** -- the same weighted two-way sum of Hausdorff distances, except that an
  object overlapping nothing is paired with the nearest object of the other side (the one at the
  smallest Hausdorff distance), as the official evaluation code does.  Distances are in pixels
  of the ground truth's resolution.

The challenge computes these over the whole test set: G and S are all objects of all images,
TP/FP/FN are summed, and the weights are areas over the total area of the set's objects
(:func:`glas_set_metrics`; the task's ``f1``, ``object_dice`` and ``object_hausdorff``).  The
per-image scores (:func:`image_scores`, :func:`glas_metrics`) averaged over the images are kept
as ``f1_image_mean``, ``object_dice_image_mean`` and ``object_hausdorff_image_mean``: many
papers report those instead, and the two differ (an image with few small glands weighs as much
as one with many large glands in the mean, much less in the pooled score).

Predictions become instances by labelling the connected components of the gland class
(``scipy.ndimage.label``); with a contour channel, components of "gland and not contour" are
seeds that grow back over the contour pixels (geodesic dilation); then holes are filled and
components smaller than ``min_size`` pixels removed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from qexp.tasks.base import Task

IGNORE = -100  # target value of padded pixels

# ----------------------------------------------------------------------------------------------
# object matching and the challenge metrics (numpy, one image)
# ----------------------------------------------------------------------------------------------


def relabel(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 1..n in increasing order of their values (0 stays background)."""
    labels = np.asarray(labels)
    ids = np.unique(labels)
    ids = ids[ids != 0]
    out = np.zeros(labels.shape, dtype=np.int32)
    if ids.size:
        lut = np.zeros(int(ids.max()) + 1, dtype=np.int32)
        lut[ids] = np.arange(1, ids.size + 1, dtype=np.int32)
        pos = labels > 0
        out[pos] = lut[labels[pos]]
    return out


def _overlaps(s: np.ndarray, g: np.ndarray, ns: int, ng: int) -> np.ndarray:
    """(ns+1, ng+1) pixel counts of every (segmented label, ground-truth label) pair."""
    idx = s.astype(np.int64).ravel() * (ng + 1) + g.astype(np.int64).ravel()
    return np.bincount(idx, minlength=(ns + 1) * (ng + 1)).reshape(ns + 1, ng + 1)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(1))
    cols = np.flatnonzero(mask.any(0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def hausdorff(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric Hausdorff distance (pixels, Euclidean) between two non-empty binary masks."""
    r0a, r1a, c0a, c1a = _bbox(a)
    r0b, r1b, c0b, c1b = _bbox(b)
    r0, r1, c0, c1 = min(r0a, r0b), max(r1a, r1b), min(c0a, c0b), max(c1a, c1b)
    a, b = a[r0:r1, c0:c1], b[r0:r1, c0:c1]  # both sets lie inside: distances stay exact
    d_to_b = ndimage.distance_transform_edt(~b)
    d_to_a = ndimage.distance_transform_edt(~a)
    return float(max(d_to_b[a].max(), d_to_a[b].max()))


def _counts(lab: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(lab.ravel(), minlength=n + 1)


@dataclass
class ImageObjects:
    """The per-object terms of one image, from which both the image's own scores and the
    test-set (pooled) scores are summed.  ``*_haus`` is NaN for an object whose image has no
    object on the other side (resolved against the whole set by :func:`glas_set_metrics`)."""

    shape: tuple[int, int]
    tp: int
    fp: int
    fn: int
    seg_area: np.ndarray
    seg_dice: np.ndarray
    seg_haus: np.ndarray
    gt_area: np.ndarray
    gt_dice: np.ndarray
    gt_haus: np.ndarray


def image_objects(s: np.ndarray, g: np.ndarray) -> ImageObjects:
    """Match the objects of one image and measure each one against its counterpart.

    A segmented object's counterpart is the ground-truth object it overlaps most (and the other
    way round); it is a true positive when the overlap is MORE than half of that ground-truth
    object (the official code's ``> 0.5``; a gland split exactly in half by two segments has no
    true positive, and no two segments can both cover more than half of one gland).  An object
    that overlaps nothing has Dice 0 and is paired, for Hausdorff, with the nearest object of
    the other side in its image.
    """
    s, g, ns, ng = _relabelled(s, g)
    area_s, area_g = _counts(s, ns)[1:].astype(float), _counts(g, ng)[1:].astype(float)
    ov = _overlaps(s, g, ns, ng)[1:, 1:]  # (ns, ng)
    best_g = np.where(ov.max(1, initial=0) > 0, ov.argmax(1) if ng else 0, -1)
    best_s = np.where(ov.max(0, initial=0) > 0, ov.argmax(0) if ns else 0, -1)
    rows = np.arange(ns)
    tp = int(sum(1 for j in rows if best_g[j] >= 0 and ov[j, best_g[j]] > 0.5 * area_g[best_g[j]]))

    def dice(inter: float, a: float, b: float) -> float:
        return 2.0 * inter / (a + b)

    seg_dice = np.array([dice(ov[j, best_g[j]], area_s[j], area_g[best_g[j]]) if best_g[j] >= 0 else 0.0
                         for j in rows], dtype=float)
    gt_dice = np.array([dice(ov[best_s[i], i], area_s[best_s[i]], area_g[i]) if best_s[i] >= 0 else 0.0
                        for i in range(ng)], dtype=float)
    cache: dict[tuple[int, int], float] = {}

    def dist(j: int, i: int) -> float:  # segmented j, ground truth i
        if (j, i) not in cache:
            cache[(j, i)] = hausdorff(s == j + 1, g == i + 1)
        return cache[(j, i)]

    seg_haus = np.array([dist(j, best_g[j]) if best_g[j] >= 0 else
                         (min(dist(j, i) for i in range(ng)) if ng else math.nan) for j in rows], dtype=float)
    gt_haus = np.array([dist(best_s[i], i) if best_s[i] >= 0 else
                        (min(dist(j, i) for j in rows) if ns else math.nan) for i in range(ng)], dtype=float)
    return ImageObjects(tuple(s.shape), tp, ns - tp, ng - tp, area_s, seg_dice, seg_haus, area_g, gt_dice, gt_haus)


def _two_way(seg_area, seg_vals, gt_area, gt_vals) -> float:
    """The challenge's 1/2 [sum_i gamma_i x_i + sum_j sigma_j x_j], weights = area / side's total."""
    return 0.5 * (float(seg_area @ seg_vals) / seg_area.sum() + float(gt_area @ gt_vals) / gt_area.sum())


def image_scores(o: ImageObjects) -> dict[str, float]:
    """One image's F1, object Dice and object Hausdorff (its own objects, its own weights).

    Both sides empty: F1 = Dice = 1, Hausdorff 0; one side empty: F1 = Dice = 0 and Hausdorff =
    the image diagonal (the official code returns infinity, which would make any mean infinite)."""
    f1 = f1_from_counts(o.tp, o.fp, o.fn)
    ns, ng = o.seg_area.size, o.gt_area.size
    if ns == 0 and ng == 0:
        return {"f1": f1, "object_dice": 1.0, "object_hausdorff": 0.0}
    if ns == 0 or ng == 0:
        return {"f1": f1, "object_dice": 0.0, "object_hausdorff": float(math.hypot(*o.shape))}
    return {"f1": f1, "object_dice": _two_way(o.seg_area, o.seg_dice, o.gt_area, o.gt_dice),
            "object_hausdorff": _two_way(o.seg_area, o.seg_haus, o.gt_area, o.gt_haus)}


def object_f1_counts(s: np.ndarray, g: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) of the challenge's object-level detection rule for one image."""
    o = image_objects(s, g)
    return o.tp, o.fp, o.fn


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    if tp + fp + fn == 0:
        return 1.0
    return 2.0 * tp / (2.0 * tp + fp + fn)


def object_f1(s: np.ndarray, g: np.ndarray) -> float:
    return f1_from_counts(*object_f1_counts(s, g))


def _relabelled(s: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Both label maps renumbered 1..n, with their object counts."""
    s, g = relabel(s), relabel(g)
    return s, g, int(s.max(initial=0)), int(g.max(initial=0))


def object_dice(s: np.ndarray, g: np.ndarray) -> float:
    """The challenge's weighted object-level Dice of one image."""
    return image_scores(image_objects(s, g))["object_dice"]


def object_hausdorff(s: np.ndarray, g: np.ndarray) -> float:
    """The challenge's weighted object-level Hausdorff distance of one image (pixels)."""
    return image_scores(image_objects(s, g))["object_hausdorff"]


def pixel_scores(s: np.ndarray, g: np.ndarray) -> tuple[float, float]:
    """Foreground (any object) pixel Dice and IoU; 1.0 when both are empty."""
    a, b = np.asarray(s) > 0, np.asarray(g) > 0
    inter = np.logical_and(a, b).sum()
    total = a.sum() + b.sum()
    if total == 0:
        return 1.0, 1.0
    return float(2.0 * inter / total), float(inter / (total - inter))


def glas_metrics(s: np.ndarray, g: np.ndarray) -> dict[str, float]:
    """Every per-image metric of one (segmentation, ground truth) pair of instance maps."""
    o = image_objects(s, g)
    pdice, piou = pixel_scores(s, g)
    return {**image_scores(o), "pixel_dice": pdice, "pixel_iou": piou, "tp": o.tp, "fp": o.fp, "fn": o.fn}


def _padded(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    out[: mask.shape[0], : mask.shape[1]] = mask
    return out


def _extent(mask: np.ndarray) -> np.ndarray:
    r0, r1, c0, c1 = _bbox(mask)
    return np.array([r0, r1 - 1, c0, c1 - 1])


def _nearest_in_set(mask: np.ndarray, others: list[np.ndarray], extents: np.ndarray) -> float:
    """Hausdorff distance from ``mask`` to the nearest of ``others`` (masks of other images,
    compared in one pixel frame: each image's own coordinates from its top-left corner).

    Exact, with pruning: the Hausdorff distance is at least the largest difference of the two
    objects' extreme rows/columns (the extreme pixel of one is that far from every pixel of the
    other), so candidates are visited by that bound and the search stops once it reaches the
    best distance found."""
    bound = np.abs(extents - _extent(mask)[None, :]).max(axis=1)
    best = math.inf
    for k in np.argsort(bound, kind="stable"):
        if bound[k] >= best:
            break
        other = others[k]
        shape = (max(mask.shape[0], other.shape[0]), max(mask.shape[1], other.shape[1]))
        best = min(best, hausdorff(_padded(mask, shape), _padded(other, shape)))
    return best


def glas_set_metrics(predictions: list[np.ndarray], truths: list[np.ndarray]) -> dict[str, float]:
    """The GlaS challenge's object-level metrics over a whole test set, and per-image means.

    ``predictions`` and ``truths`` are equal-length lists of instance label maps (0 =
    background).  The challenge defines its metrics over the set: G and S are all ground-truth
    and all segmented objects of all images, so

    * ``f1`` = 2 TP / (2 TP + FP + FN) with TP, FP, FN summed over the images;
    * ``object_dice`` / ``object_hausdorff`` = 1/2 [sum_i gamma_i x(G_i) + sum_j sigma_j x(S_j)]
      with gamma_i = |G_i| / (total area of all ground-truth objects in the set), sigma_j
      likewise over all segmented objects; each object is matched inside its own image.

    An image with objects on one side only: its objects have Dice 0, and for Hausdorff each is
    compared with its nearest object of the other side in the set (the objects of the other
    images, all in one pixel frame), as the official rule pairs an unmatched object with its
    nearest object.  When a whole side of the set is empty there is nothing to compare with:
    F1 = Dice = 0 and Hausdorff = the diagonal of the largest image (the official code would give
    infinity); both sides empty gives F1 = Dice = 1, Hausdorff 0.  No value is ever NaN.

    ``f1_image_mean``, ``object_dice_image_mean``, ``object_hausdorff_image_mean``: the same
    scores per image (each with its own objects and weights, :func:`image_scores`) averaged over
    the images; ``pixel_dice``, ``pixel_iou``: per-image foreground pixel scores, averaged.
    """
    if len(predictions) != len(truths):
        raise ValueError(f"{len(predictions)} predictions for {len(truths)} ground truths")
    images = [image_objects(s, g) for s, g in zip(predictions, truths)]
    n = max(len(images), 1)
    out: dict[str, float] = {}
    per_image = [image_scores(o) for o in images]
    for key in ("f1", "object_dice", "object_hausdorff"):
        out[f"{key}_image_mean"] = float(sum(p[key] for p in per_image) / n)
    pixels = [pixel_scores(s, g) for s, g in zip(predictions, truths)]
    out["pixel_dice"] = float(sum(p[0] for p in pixels) / n)
    out["pixel_iou"] = float(sum(p[1] for p in pixels) / n)

    tp, fp, fn = (sum(getattr(o, k) for o in images) for k in ("tp", "fp", "fn"))
    out["f1"] = f1_from_counts(tp, fp, fn)
    seg_area = np.concatenate([o.seg_area for o in images] or [np.zeros(0)])
    gt_area = np.concatenate([o.gt_area for o in images] or [np.zeros(0)])
    if seg_area.size == 0 or gt_area.size == 0:
        empty = seg_area.size == 0 and gt_area.size == 0
        diagonal = math.hypot(max((o.shape[0] for o in images), default=0), max((o.shape[1] for o in images), default=0))
        out["object_dice"] = 1.0 if empty else 0.0
        out["object_hausdorff"] = 0.0 if empty else float(diagonal)
        return out
    seg_dice = np.concatenate([o.seg_dice for o in images])
    gt_dice = np.concatenate([o.gt_dice for o in images])
    out["object_dice"] = float(_two_way(seg_area, seg_dice, gt_area, gt_dice))

    def masks(maps: list[np.ndarray]) -> list[np.ndarray]:
        labelled = [relabel(m) for m in maps]
        return [lab == v for lab in labelled for v in range(1, int(lab.max(initial=0)) + 1)]

    def resolved(side: str) -> np.ndarray:
        """Each image's ``side`` Hausdorff terms, images without the other side filled in."""
        mine, theirs = (predictions, truths) if side == "seg" else (truths, predictions)
        others: list[np.ndarray] | None = None  # every object of the other side, built once
        parts = []
        for k, o in enumerate(images):
            haus = getattr(o, f"{side}_haus")
            if np.isnan(haus).any():  # this image has no object of the other side
                if others is None:
                    others = masks(theirs)
                    extents = np.array([_extent(m) for m in others])
                lab = relabel(mine[k])
                haus = np.array([_nearest_in_set(lab == v + 1, others, extents) for v in range(haus.size)])
            parts.append(haus)
        return np.concatenate(parts)

    out["object_hausdorff"] = float(_two_way(seg_area, resolved("seg"), gt_area, resolved("gt")))
    return out


# ----------------------------------------------------------------------------------------------
# predictions -> instances
# ----------------------------------------------------------------------------------------------


def grow_seeds(seeds: np.ndarray, region: np.ndarray, max_steps: int = 256) -> np.ndarray:
    """Grow labelled ``seeds`` one pixel per step inside ``region`` (geodesic dilation, so a seed
    never jumps over background); region parts no seed reaches become objects of their own."""
    labels = np.where(region, seeds, 0)
    for _ in range(max_steps):
        grown = ndimage.grey_dilation(labels, size=3)
        new = region & (labels == 0) & (grown > 0)
        if not new.any():
            break
        labels = np.where(new, grown, labels)
    rest = region & (labels == 0)
    if rest.any():
        extra, _ = ndimage.label(rest)
        labels = np.where(rest, extra + labels.max(), labels)
    return labels


def _drop_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 0 or labels.max() == 0:
        return labels
    sizes = np.bincount(labels.ravel())
    small = sizes < min_size
    small[0] = False
    return np.where(small[labels], 0, labels)


def to_instances(classes: np.ndarray, contour: bool = False, min_size: int = 0, fill_holes: bool = True) -> np.ndarray:
    """Instance label map from a per-pixel class map (0 background, 1 gland, 2 contour).

    Without contour: connected components of the gland class.  With contour: components of the
    gland class (at least ``min_size`` pixels) are seeds that grow over the gland and contour
    pixels around them.  Then holes are filled and objects under ``min_size`` pixels removed.
    """
    classes = np.asarray(classes)
    labels, _ = ndimage.label(classes == 1)
    if contour:
        labels = grow_seeds(_drop_small(labels, min_size), classes > 0)
    if fill_holes and labels.max() > 0:
        filled = ndimage.binary_fill_holes(labels > 0)
        holes = filled & (labels == 0)
        if holes.any():  # a hole takes the label of its enclosing object
            _, (ri, ci) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
            labels = np.where(holes, labels[ri, ci], labels)
    return relabel(_drop_small(labels, min_size))


# ----------------------------------------------------------------------------------------------
# the task
# ----------------------------------------------------------------------------------------------


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean soft Dice over the foreground classes (1..C-1) on the non-ignored pixels."""
    valid = (target != IGNORE).unsqueeze(1)
    prob = logits.float().softmax(1) * valid
    onehot = F.one_hot(target.clamp_min(0), logits.shape[1]).permute(0, 3, 1, 2).float() * valid
    dims = (0, 2, 3)
    inter = (prob * onehot).sum(dims)[1:]
    total = (prob + onehot).sum(dims)[1:]
    return 1.0 - ((2 * inter + eps) / (total + eps)).mean()


def sliding_window(model, x: torch.Tensor, window: int, overlap: float = 0.25) -> torch.Tensor:
    """Logits of ``x`` from overlapping ``window`` x ``window`` tiles, averaged where they overlap."""
    _, _, h, w = x.shape
    if h <= window and w <= window:
        return model(x)
    stride = max(1, int(window * (1 - overlap)))

    def starts(n: int) -> list[int]:
        if n <= window:
            return [0]
        out = list(range(0, n - window, stride))
        return out + [n - window]

    out = cnt = None
    for r in starts(h):
        for c in starts(w):
            y = model(x[:, :, r : r + window, c : c + window])
            if out is None:
                out = x.new_zeros(x.shape[0], y.shape[1], h, w)
                cnt = x.new_zeros(1, 1, h, w)
            out[:, :, r : r + y.shape[2], c : c + y.shape[3]] += y
            cnt[:, :, r : r + y.shape[2], c : c + y.shape[3]] += 1
    return out / cnt


def _compact(labels: np.ndarray) -> np.ndarray:
    """A relabelled map in the smallest integer type that holds it (a split's maps are kept
    until the set metrics are computed)."""
    return labels.astype(np.uint16) if labels.max(initial=0) < 2**16 else labels


class Segmentation(Task):
    """Semantic training (cross-entropy + optional Dice), instance evaluation with GlaS metrics.

    Batches are dicts: ``image`` (B,3,H,W), ``target`` (B,H,W) class per pixel (IGNORE on padding),
    and for evaluation ``instances`` (B,H0,W0) ground-truth label maps at the resolution the
    metrics use, ``size`` (B,2) the valid image size, ``orig_size`` (B,2) the valid instance size.
    """

    metric = "f1"
    higher_is_better = True

    def __init__(self, num_classes: int = 2, contour: bool = False, dice_weight: float = 0.0, min_size: int = 0,
                 fill_holes: bool = True, window: int | None = None, window_overlap: float = 0.25,
                 eval_chunk: int = 8, class_weights: list[float] | None = None):
        self.num_classes = int(num_classes)
        self.contour = bool(contour)
        self.dice_weight = float(dice_weight)
        self.min_size = int(min_size)
        self.fill_holes = bool(fill_holes)
        self.window = int(window) if window else None
        self.window_overlap = float(window_overlap)
        self.eval_chunk = max(1, int(eval_chunk))
        self.class_weights = list(class_weights) if class_weights else None

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        weight = None
        if self.class_weights is not None:
            weight = torch.tensor(self.class_weights, dtype=torch.float32, device=logits.device)
        return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE, reduction=reduction)

    def loss(self, model, batch):
        x, y = batch["image"], batch["target"]
        logits = model(x)
        loss = self._ce(logits, y)
        if self.dice_weight > 0:
            loss = loss + self.dice_weight * soft_dice_loss(logits, y)
        return loss, x.shape[0]

    def predict(self, model, x: torch.Tensor) -> torch.Tensor:
        """Whole-image logits (or sliding-window logits when ``window`` is set)."""
        if self.window:
            return sliding_window(model, x, self.window, self.window_overlap)
        return model(x)

    def instances(self, logits: torch.Tensor) -> np.ndarray:
        """Instance label map from one image's logits (C,H,W)."""
        classes = logits.argmax(0).cpu().numpy()
        return to_instances(classes, contour=self.contour, min_size=self.min_size, fill_holes=self.fill_holes)

    @torch.no_grad()
    def evaluate(self, model, batches: Iterable[Any], device) -> dict[str, float]:
        """Loss per pixel, and the GlaS metrics of the whole split (:func:`glas_set_metrics`)."""
        predictions: list[np.ndarray] = []
        truths: list[np.ndarray] = []
        loss_sum = 0.0
        n_pixels = 0
        for batch in batches:
            x, y = batch["image"], batch["target"]
            for lo in range(0, x.shape[0], self.eval_chunk):
                xs = x[lo : lo + self.eval_chunk].to(device)
                ys = y[lo : lo + self.eval_chunk].to(device)
                logits = self.predict(model, xs).float()
                loss_sum += self._ce(logits, ys, reduction="sum").item()
                n_pixels += int((ys != IGNORE).sum())
                for k in range(xs.shape[0]):
                    b = lo + k
                    h, w = (int(v) for v in batch["size"][b])
                    oh, ow = (int(v) for v in batch["orig_size"][b])
                    lg = logits[k, :, :h, :w]
                    if (oh, ow) != (h, w):
                        lg = F.interpolate(lg[None], size=(oh, ow), mode="bilinear", align_corners=False)[0]
                    predictions.append(_compact(self.instances(lg)))
                    truths.append(_compact(relabel(batch["instances"][b, :oh, :ow].numpy())))
        out = glas_set_metrics(predictions, truths)
        out["loss"] = loss_sum / max(n_pixels, 1)
        return out


__all__ = ["Segmentation", "glas_metrics", "glas_set_metrics", "image_objects", "image_scores", "object_f1", "object_dice", "object_hausdorff", "hausdorff",
           "pixel_scores", "to_instances", "IGNORE"]
