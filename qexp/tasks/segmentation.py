"""Gland segmentation: per-pixel loss, and the MICCAI 2015 GlaS challenge's object-level metrics.

Metrics (Sirinukunwattana et al., "Gland segmentation in colon histology images: the GlaS
challenge contest", MedIA 2017), computed on instance label maps (0 = background, 1..n objects)
of one image, ``S`` the segmentation and ``G`` the ground truth:

* **F1** -- a segmented object is a true positive when it covers at least 50 % of the ground-truth
  object it overlaps most (each ground-truth object is matched at most once); the other segmented
  objects are false positives, unmatched ground-truth objects false negatives.
  ``F1 = 2 TP / (2 TP + FP + FN)``.
* **object Dice** -- ``1/2 [sum_i gamma_i Dice(G_i, S*(G_i)) + sum_j sigma_j Dice(G*(S_j), S_j)]``
  with ``gamma_i = |G_i| / sum |G|``, ``sigma_j = |S_j| / sum |S|`` and ``S*(G_i)`` the segmented
  object that overlaps ``G_i`` most (empty when none does, so Dice 0), ``G*(S_j)`` likewise.
* **object Hausdorff** -- the same weighted two-way sum of Hausdorff distances, except that an
  object overlapping nothing is paired with the nearest object of the other side (the one at the
  smallest Hausdorff distance), as the official evaluation code does.  Distances are in pixels
  of the ground truth's resolution.

Conventions for degenerate images: both empty -> F1 = Dice = 1, Hausdorff 0; exactly one side
empty -> F1 = Dice = 0 and Hausdorff = the image diagonal (the official code returns infinity,
which would make every average infinite).

The task averages the per-image values over the images of a split (and also reports ``f1_pooled``
from the split's summed TP/FP/FN).  Predictions become instances by labelling the connected
components of the gland class (``scipy.ndimage.label``); with a contour channel, components of
"gland and not contour" are seeds that grow back over the contour pixels (geodesic dilation);
then holes are filled and components smaller than ``min_size`` pixels removed.
"""

from __future__ import annotations

import math
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


def object_f1_counts(s: np.ndarray, g: np.ndarray) -> tuple[int, int, int]:
    """(TP, FP, FN) of the challenge's object-level detection rule for one image."""
    s, g = relabel(s), relabel(g)
    ns, ng = int(s.max()), int(g.max())
    if ns == 0 or ng == 0:
        return 0, ns, ng
    ov = _overlaps(s, g, ns, ng)[1:, 1:]  # (ns, ng)
    area_g = _counts(g, ng)[1:]
    matched = np.zeros(ng, dtype=bool)
    tp = 0
    for j in range(ns):
        if ov[j].max() == 0:
            continue
        i = int(ov[j].argmax())
        if not matched[i] and ov[j, i] >= 0.5 * area_g[i]:
            matched[i] = True
            tp += 1
    return tp, ns - tp, ng - tp


def f1_from_counts(tp: int, fp: int, fn: int) -> float:
    if tp + fp + fn == 0:
        return 1.0
    return 2.0 * tp / (2.0 * tp + fp + fn)


def object_f1(s: np.ndarray, g: np.ndarray) -> float:
    return f1_from_counts(*object_f1_counts(s, g))


def _relabelled(s: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Both label maps renumbered 1..n, with their object counts."""
    s, g = relabel(s), relabel(g)
    return s, g, int(s.max()), int(g.max())


def _object_overlaps(s: np.ndarray, g: np.ndarray, ns: int, ng: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel overlaps between every predicted and ground-truth object, and each object's area."""
    return _overlaps(s, g, ns, ng)[1:, 1:], _counts(s, ns)[1:], _counts(g, ng)[1:]


def object_dice(s: np.ndarray, g: np.ndarray) -> float:
    """The challenge's weighted object-level Dice of one image."""
    s, g, ns, ng = _relabelled(s, g)
    if ns == 0 and ng == 0:
        return 1.0
    if ns == 0 or ng == 0:
        return 0.0
    ov, area_s, area_g = _object_overlaps(s, g, ns, ng)

    def side(ov_rows: np.ndarray, area_self: np.ndarray, area_other: np.ndarray) -> float:
        total = 0.0
        for k in range(ov_rows.shape[0]):
            best = int(ov_rows[k].argmax())
            inter = ov_rows[k, best]
            dice = 2.0 * inter / (area_self[k] + area_other[best]) if inter > 0 else 0.0
            total += area_self[k] / area_self.sum() * dice
        return total

    return 0.5 * (side(ov.T, area_g, area_s) + side(ov, area_s, area_g))


def object_hausdorff(s: np.ndarray, g: np.ndarray) -> float:
    """The challenge's weighted object-level Hausdorff distance of one image (pixels)."""
    s, g, ns, ng = _relabelled(s, g)
    if ns == 0 and ng == 0:
        return 0.0
    if ns == 0 or ng == 0:
        return float(math.hypot(*s.shape))
    ov, area_s, area_g = _object_overlaps(s, g, ns, ng)
    s_masks = [None] * ns
    g_masks = [None] * ng
    cache: dict[tuple[int, int], float] = {}

    def mask(which: str, k: int) -> np.ndarray:
        store, lab = (s_masks, s) if which == "s" else (g_masks, g)
        if store[k] is None:
            store[k] = lab == k + 1
        return store[k]

    def dist(j: int, i: int) -> float:  # segmented j, ground truth i
        if (j, i) not in cache:
            cache[(j, i)] = hausdorff(mask("s", j), mask("g", i))
        return cache[(j, i)]

    seg_side = 0.0
    for j in range(ns):
        if ov[j].max() > 0:
            h = dist(j, int(ov[j].argmax()))
        else:
            h = min(dist(j, i) for i in range(ng))
        seg_side += area_s[j] / area_s.sum() * h
    gt_side = 0.0
    for i in range(ng):
        if ov[:, i].max() > 0:
            h = dist(int(ov[:, i].argmax()), i)
        else:
            h = min(dist(j, i) for j in range(ns))
        gt_side += area_g[i] / area_g.sum() * h
    return 0.5 * (seg_side + gt_side)


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
    tp, fp, fn = object_f1_counts(s, g)
    pdice, piou = pixel_scores(s, g)
    return {"f1": f1_from_counts(tp, fp, fn), "object_dice": float(object_dice(s, g)),
            "object_hausdorff": float(object_hausdorff(s, g)), "pixel_dice": pdice, "pixel_iou": piou,
            "tp": tp, "fp": fp, "fn": fn}


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
        sums: dict[str, float] = {}
        n_images = 0
        loss_sum = 0.0
        n_pixels = 0
        tp = fp = fn = 0
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
                    pred = self.instances(lg)
                    gt = batch["instances"][b, :oh, :ow].numpy()
                    m = glas_metrics(pred, gt)
                    tp, fp, fn = tp + m.pop("tp"), fp + m.pop("fp"), fn + m.pop("fn")
                    for key, v in m.items():
                        sums[key] = sums.get(key, 0.0) + v
                    n_images += 1
        out = {k: v / max(n_images, 1) for k, v in sums.items()}
        out["f1_pooled"] = f1_from_counts(tp, fp, fn)
        out["loss"] = loss_sum / max(n_pixels, 1)
        return out


__all__ = ["Segmentation", "glas_metrics", "object_f1", "object_dice", "object_hausdorff", "hausdorff",
           "pixel_scores", "to_instances", "IGNORE"]
