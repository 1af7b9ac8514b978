"""GlaS challenge metrics on hand-made masks with known answers, and prediction post-processing."""

import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import directed_hausdorff

from qexp.tasks.segmentation import (
    Segmentation,
    glas_metrics,
    hausdorff,
    object_dice,
    object_f1,
    object_hausdorff,
    pixel_scores,
    soft_dice_loss,
    to_instances,
)


def canvas(shape=(20, 20)):
    return np.zeros(shape, dtype=np.int32)


def two_squares():
    g = canvas()
    g[2:6, 2:6] = 1  # 4x4 at columns 2..5
    g[2:6, 12:16] = 2  # 4x4 at columns 12..15
    return g


def test_perfect_match_with_other_label_ids():
    g = two_squares()
    s = np.where(g == 1, 7, np.where(g == 2, 3, 0))  # same objects, different ids
    m = glas_metrics(s, g)
    assert m["f1"] == 1.0 and m["object_dice"] == 1.0 and m["object_hausdorff"] == 0.0
    assert m["pixel_dice"] == 1.0 and m["pixel_iou"] == 1.0
    assert (m["tp"], m["fp"], m["fn"]) == (2, 0, 0)


def test_one_missed_object():
    g = two_squares()
    s = np.where(g == 1, 1, 0)
    assert object_f1(s, g) == pytest.approx(2 / 3)  # TP 1, FP 0, FN 1
    # segmented side: Dice 1 (weight 1); ground-truth side: 1 * 1/2 + 0 * 1/2
    assert object_dice(s, g) == pytest.approx(0.5 * (1 + 0.5))
    # the missed square is paired with the nearest segmented object: Hausdorff 10 (columns 2 -> 12)
    assert object_hausdorff(s, g) == pytest.approx(0.5 * (0 + 0.5 * 10))
    assert pixel_scores(s, g)[0] == pytest.approx(2 * 16 / (16 + 32))


def test_one_split_object():
    g = canvas()
    g[0:4, 0:8] = 1  # 32 pixels
    s = canvas()
    s[0:4, 0:5] = 1  # 20 px = 62.5 % of the gland: true positive
    s[0:4, 5:8] = 2  # 12 px = 37.5 %: false positive
    assert object_f1(s, g) == pytest.approx(2 / 3)  # TP 1, FP 1, FN 0
    d_left, d_right = 2 * 20 / (20 + 32), 2 * 12 / (12 + 32)
    seg_side = 20 / 32 * d_left + 12 / 32 * d_right
    assert object_dice(s, g) == pytest.approx(0.5 * (seg_side + d_left))
    # Hausdorff: left part to gland 3 (column 7 -> 4), right part to gland 5 (column 0 -> 5)
    assert object_hausdorff(s, g) == pytest.approx(0.5 * ((20 / 32 * 3 + 12 / 32 * 5) + 3))


def test_each_ground_truth_matched_once():
    g = canvas()
    g[0:4, 0:8] = 1
    s = canvas()
    s[0:4, 0:4] = 1  # exactly 50 % each: only one may count
    s[0:4, 4:8] = 2
    assert object_f1(s, g) == pytest.approx(2 / 3)


def test_empty_prediction_and_empty_image():
    g = two_squares()
    empty = canvas()
    m = glas_metrics(empty, g)
    assert m["f1"] == 0.0 and m["object_dice"] == 0.0 and m["pixel_dice"] == 0.0
    assert m["object_hausdorff"] == pytest.approx(math.hypot(20, 20))  # the diagonal, not infinity
    both = glas_metrics(empty, empty)
    assert both["f1"] == 1.0 and both["object_dice"] == 1.0 and both["object_hausdorff"] == 0.0


def test_hausdorff_matches_scipy_point_sets():
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.random((30, 25)) < 0.05
        b = rng.random((30, 25)) < 0.05
        a[0, 0] = b[-1, -1] = True
        pa, pb = np.argwhere(a), np.argwhere(b)
        want = max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])
        assert hausdorff(a, b) == pytest.approx(want)


def test_to_instances_contour_separates_touching_glands():
    classes = canvas((12, 20))
    classes[2:10, 2:18] = 2  # one blob of gland + contour
    classes[3:9, 3:9] = 1  # two interiors separated by a contour column
    classes[3:9, 11:17] = 1
    merged = to_instances(np.where(classes > 0, 1, 0))
    assert merged.max() == 1
    inst = to_instances(classes, contour=True)
    assert inst.max() == 2
    assert (inst > 0).sum() == (classes > 0).sum()  # contour pixels grown back onto the glands


def test_to_instances_min_size_and_holes():
    classes = canvas()
    classes[2:10, 2:10] = 1
    classes[5:7, 5:7] = 0  # a lumen-like hole
    classes[15, 15] = 1  # speck
    inst = to_instances(classes, min_size=5)
    assert inst.max() == 1 and inst[5, 5] == 1 and inst[15, 15] == 0


def test_task_evaluate_perfect_logits():
    """A 'model' that returns the ground truth as logits scores F1 = Dice = 1."""
    g = torch.from_numpy(two_squares()).to(torch.int16)
    target = (g > 0).long()
    batch = {"image": target[None, None].float(), "target": target[None], "instances": g[None],
             "size": torch.tensor([[20, 20]]), "orig_size": torch.tensor([[20, 20]])}

    def model(x):
        fg = x[:, 0]
        return torch.stack([1 - fg, fg], 1) * 10

    task = Segmentation(num_classes=2)
    out = task.evaluate(model, [batch], torch.device("cpu"))
    assert out["f1"] == 1.0 and out["object_dice"] == 1.0 and out["object_hausdorff"] == 0.0
    assert out["f1_pooled"] == 1.0


def test_soft_dice_loss_ignores_padding():
    target = torch.tensor([[[1, 0], [-100, -100]]])
    logits = torch.stack([1 - target.clamp_min(0), target.clamp_min(0)], 1).float() * 50
    assert soft_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-3)
